//! The delivery report: one record per pixel and per postback, from the moment it is queued.
//!
//! "Did my pixel fire, and with which URL?" is the question affiliate managers ask most, so every pixel
//! and postback carries its own record: where it came from (event, definition, template), what exactly was
//! fired (the final URL, or a digest of the code), and what happened to it (status, timestamps, attempts).
//! The record is also the pixel's idempotency entry, so there is one place for its state, never two that
//! could disagree. It is kept for the report retention after the pixel reaches a final state.

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{DefinitionId, EventId, PixelId, PlayerId};
use crate::pixel::{Origin, PixelBody};

/// Longest response excerpt kept per postback attempt.
pub const RESPONSE_EXCERPT_BYTES: usize = 256;

/// Where a pixel or postback is in its life.
///
/// Client pixels go `queued` → `delivered` (sent to a browser, not yet acknowledged) → `fired`, or end
/// `cancelled`, `expired` or `dropped` (the queue cap); a browser without the player's consent turns a
/// `queued` or `delivered` pixel `waiting_consent` until a browser with it takes the pixel. Postbacks go
/// `queued` → `pending_retry` (an attempt failed and another is scheduled) → `fired` (the endpoint
/// answered 2xx) or `failed` (no attempt left, or an answer that retrying cannot change). Only `queued`,
/// `delivered`, `waiting_consent` and `pending_retry` can still change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PixelStatus {
    /// Waiting: in the player's queue, or in the postback outbox before its first attempt.
    Queued,
    /// Sent to a browser of the player at least once and not yet acknowledged; still in the queue.
    Delivered,
    /// Held in the queue: a browser of the player had no consent to fire it (the brand's `consent`
    /// setting). Sent again to the next browser that has consent; expires at its TTL like any other.
    WaitingConsent,
    /// The browser acknowledged firing it, or the postback endpoint answered 2xx.
    Fired,
    /// The postback ran out of attempts, or was refused with a status retrying cannot change.
    Failed,
    /// Its TTL ran out before any browser of the player came online; never fired.
    Expired,
    /// Cancelled through the API before it fired.
    Cancelled,
    /// A postback attempt failed; the next one is scheduled.
    PendingRetry,
    /// Removed unfired to keep the player's queue under its cap (policy `drop-oldest`).
    Dropped,
}

impl PixelStatus {
    /// Every status, in the order of the docs.
    pub const ALL: [PixelStatus; 9] = [
        PixelStatus::Queued,
        PixelStatus::Delivered,
        PixelStatus::WaitingConsent,
        PixelStatus::Fired,
        PixelStatus::Failed,
        PixelStatus::Expired,
        PixelStatus::Cancelled,
        PixelStatus::PendingRetry,
        PixelStatus::Dropped,
    ];

    /// The snake_case name used by the API and CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            PixelStatus::Queued => "queued",
            PixelStatus::Delivered => "delivered",
            PixelStatus::WaitingConsent => "waiting_consent",
            PixelStatus::Fired => "fired",
            PixelStatus::Failed => "failed",
            PixelStatus::Expired => "expired",
            PixelStatus::Cancelled => "cancelled",
            PixelStatus::PendingRetry => "pending_retry",
            PixelStatus::Dropped => "dropped",
        }
    }

    /// Reads a name as [`PixelStatus::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether it can still fire (and so still change).
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            PixelStatus::Queued
                | PixelStatus::Delivered
                | PixelStatus::WaitingConsent
                | PixelStatus::PendingRetry
        )
    }
}

/// One attempt to send a postback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix milliseconds when it started.
    pub at_ms: u64,
    /// How long it took, until the answer's head (or the failure).
    pub duration_ms: u64,
    /// The HTTP status, when an answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// What went wrong without an answer (connection refused, timeout, bad redirect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first bytes of the answer's body, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

thread_local! {
    /// Set while a row is serialized for an engine ([`as_stored`]).
    static STORING: Cell<bool> = const { Cell::new(false) };
}

/// Whether a row's field is left out: unset, in a row being stored. The API's rows keep every field,
/// `null` or not; a stored row leaves out what is not set, and reads back the same.
fn unset_when_stored<T>(value: &Option<T>) -> bool {
    value.is_none() && STORING.get()
}

/// [`unset_when_stored`] for a list: empty, in a row being stored.
fn empty_when_stored<T>(value: &[T]) -> bool {
    value.is_empty() && STORING.get()
}

/// Serializes `value` as engines store it: every [`Delivery`] in it without its unset fields. A pending
/// pixel's row is mostly unset fields; written whole it was some 600 bytes of an 800-byte queue entry,
/// every byte of which goes through the journal and sled (batches of a hundred went a third faster
/// without them).
pub fn as_stored<S: serde::Serializer>(
    value: &impl Serialize,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    /// Puts the flag back as it was, however serializing ends.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            STORING.set(self.0);
        }
    }
    let _restore = Restore(STORING.replace(true));
    value.serialize(serializer)
}

/// A row of the delivery report: one pixel or postback and everything known about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The pixel's or postback's id.
    pub id: PixelId,
    /// Whose it is.
    pub player_id: PlayerId,
    /// `image`, `iframe`, `script`, `js`, `facebook` or `s2s`.
    pub kind: String,
    /// See [`PixelStatus`].
    pub status: PixelStatus,
    /// What fired it: the event type or a caller's label.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub trigger: Option<String>,
    /// See [`Origin::event_id`].
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub event_id: Option<EventId>,
    /// See [`Origin::definition_id`].
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub definition_id: Option<DefinitionId>,
    /// See [`Origin::definition_name`].
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub definition_name: Option<String>,
    /// See [`Origin::template`].
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub template: Option<String>,
    /// The URL requested, filled in: by the browser (image, iframe, script; Meta's pixel request for
    /// `facebook`) or by the hub (s2s).
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub final_url: Option<String>,
    /// For `js` pixels, `sha256:` and the first 16 hex digits of the code's digest: enough to tell two
    /// renderings apart without storing code twice.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub code_digest: Option<String>,
    /// See [`Origin::click_id`].
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub click_id: Option<String>,
    /// See [`Origin::click_source`].
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub click_source: Option<crate::attribution::Source>,
    /// See [`Origin::affiliate_id`].
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub affiliate_id: Option<String>,
    /// See [`Origin::missing`].
    #[serde(default, skip_serializing_if = "empty_when_stored")]
    pub missing: Vec<String>,
    /// `GET` or `POST`, for postbacks.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub method: Option<String>,
    /// Unix milliseconds when it was queued (durable).
    pub queued_at_ms: u64,
    /// First time it was sent to a browser, or the first postback attempt.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub sent_at_ms: Option<u64>,
    /// When the browser acknowledged it, or the postback endpoint answered 2xx.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub fired_at_ms: Option<u64>,
    /// When anything about it last changed.
    pub updated_at_ms: u64,
    /// Client pixels: when it expires unless fired.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub expires_at_ms: Option<u64>,
    /// Times sent to a browser, or postback attempts made.
    pub attempts: u32,
    /// Postbacks: the last attempt's HTTP status.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub http_status: Option<u16>,
    /// Postbacks: the first bytes of the last answer's body.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub response: Option<String>,
    /// Why it failed without being sent, as a stable code: a definition that could not render for the
    /// event's values (`invalid_url`, `kind_not_allowed`…; see [`crate::definition::RenderError`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Postbacks: the last attempt's error, when no answer came; a render failure's message.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub error: Option<String>,
    /// Postbacks: when the next attempt is due.
    #[serde(default, skip_serializing_if = "unset_when_stored")]
    pub next_attempt_at_ms: Option<u64>,
    /// Postbacks: every attempt, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<Attempt>,
}

impl Delivery {
    /// A new record for a client pixel or postback queued at `now`.
    pub fn new(
        id: PixelId,
        player_id: PlayerId,
        target: Target<'_>,
        trigger: Option<String>,
        origin: Option<Origin>,
        now: u64,
    ) -> Self {
        let origin = origin.unwrap_or_default();
        let (kind, final_url, code_digest, method) = match target {
            Target::Client(body) => {
                let (url, digest) = match body {
                    PixelBody::Image { url }
                    | PixelBody::Iframe { url }
                    | PixelBody::Script { url } => (Some(url.clone()), None),
                    PixelBody::Js { code } => (None, Some(code_digest(code))),
                    PixelBody::Facebook {
                        pixel_id,
                        event,
                        event_id,
                        ..
                    } => (
                        Some(facebook_url(pixel_id, event, event_id.as_deref())),
                        None,
                    ),
                };
                (body.kind(), url, digest, None)
            }
            Target::S2s { url, post } => (
                "s2s",
                Some(url.to_owned()),
                None,
                Some(if post { "POST" } else { "GET" }.to_owned()),
            ),
        };
        Delivery {
            id,
            player_id,
            kind: kind.to_owned(),
            status: PixelStatus::Queued,
            trigger,
            event_id: origin.event_id,
            definition_id: origin.definition_id,
            definition_name: origin.definition_name,
            template: origin.template,
            final_url,
            code_digest,
            click_id: origin.click_id,
            click_source: origin.click_source,
            affiliate_id: origin.affiliate_id,
            missing: origin.missing,
            method,
            queued_at_ms: now,
            sent_at_ms: None,
            fired_at_ms: None,
            updated_at_ms: now,
            expires_at_ms: None,
            attempts: 0,
            http_status: None,
            response: None,
            reason: None,
            error: None,
            next_attempt_at_ms: None,
            attempt_log: Vec::new(),
        }
    }

    /// The row of a definition that could not render for an event: failed at `now`, never sent.
    pub fn render_failed(player_id: PlayerId, failure: &NewFailure, now: u64) -> Self {
        Delivery {
            kind: failure.kind.to_owned(),
            status: PixelStatus::Failed,
            final_url: None,
            method: None,
            reason: Some(failure.reason.to_owned()),
            error: Some(failure.error.clone()),
            ..Delivery::new(
                failure.id.clone(),
                player_id,
                Target::S2s {
                    url: "",
                    post: false,
                },
                Some(failure.trigger.clone()),
                Some(failure.origin.clone()),
                now,
            )
        }
    }

    /// Moves it to `status` at `now`, stamping `fired_at_ms` when it fired.
    pub fn set_status(&mut self, status: PixelStatus, now: u64) {
        self.status = status;
        self.updated_at_ms = now;
        if status == PixelStatus::Fired {
            self.fired_at_ms = Some(now);
        }
        if !status.is_pending() {
            self.next_attempt_at_ms = None;
        }
    }

    /// Notes one more send to a browser (client pixels) at `now`.
    pub fn note_sent(&mut self, now: u64) {
        self.sent_at_ms.get_or_insert(now);
        self.attempts += 1;
        self.updated_at_ms = now;
        if matches!(
            self.status,
            PixelStatus::Queued | PixelStatus::WaitingConsent
        ) {
            self.status = PixelStatus::Delivered;
        }
    }

    /// Adds a postback attempt and the state it leads to: `next_at` when another attempt is scheduled.
    pub fn note_attempt(&mut self, attempt: Attempt, status: PixelStatus, next_at: Option<u64>) {
        let end = attempt.at_ms + attempt.duration_ms;
        self.sent_at_ms.get_or_insert(attempt.at_ms);
        self.attempts += 1;
        self.http_status = attempt.http_status;
        self.response.clone_from(&attempt.response);
        self.error.clone_from(&attempt.error);
        self.attempt_log.push(attempt);
        self.set_status(status, end);
        self.next_attempt_at_ms = next_at;
    }
}

/// A definition that could not render, for the store to record as a failed row of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct NewFailure {
    /// The row's id, as in the event's answer.
    pub id: PixelId,
    /// The trigger it matched.
    pub trigger: String,
    /// The definition's kind (`image`, `s2s`…).
    pub kind: &'static str,
    /// See [`crate::event::RenderFailure::reason`].
    pub reason: &'static str,
    /// See [`crate::event::RenderFailure::error`].
    pub error: String,
    /// Event, definition and template, for the report.
    pub origin: Origin,
}

/// Longest browser error message kept.
pub const BROWSER_MESSAGE_CHARS: usize = 200;

/// What the browser said about one pixel it handled, beyond "done".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserReport {
    /// False when the pixel did not fire cleanly: its request may still have reached the affiliate, so
    /// it is never fired again, but the report shows it failed and why.
    pub fired: bool,
    /// Stable code (see docs/protocol.md): `image_error`, `script_error`, `js_threw`, `js_syntax`,
    /// `fb_image_fallback` (Meta's script was unavailable; the `/tr` image was sent instead),
    /// `fb_image_error`, `timeout`; `other` for a code this hub does not know.
    pub reason: String,
    /// The browser's own words (an exception's message), at most [`BROWSER_MESSAGE_CHARS`] characters.
    pub message: Option<String>,
}

/// Codes a browser may report; anything else is kept as `other`.
pub const BROWSER_REASONS: [&str; 7] = [
    "image_error",
    "script_error",
    "js_threw",
    "js_syntax",
    "fb_image_fallback",
    "fb_image_error",
    "timeout",
];

/// Whether a report row's reason is one a browser gave (rather than a render failure's).
pub fn is_browser_reason(reason: &str) -> bool {
    reason == "other" || BROWSER_REASONS.contains(&reason)
}

impl BrowserReport {
    /// A report as the browser sent it, its code checked and its message cut to size. Without a message
    /// of its own (the client sends only an exception's), the reason's description stands in, so the
    /// report always says what happened; the client stays small.
    pub fn new(fired: bool, reason: &str, message: Option<&str>) -> Self {
        let reason = if BROWSER_REASONS.contains(&reason) {
            reason
        } else {
            "other"
        };
        let message = message
            .map(|m| m.chars().take(BROWSER_MESSAGE_CHARS).collect::<String>())
            .filter(|m| !m.trim().is_empty())
            .or_else(|| Some(describe(reason).to_owned()));
        BrowserReport {
            fired,
            reason: reason.to_owned(),
            message,
        }
    }
}

/// What a browser reason means, for the report.
fn describe(reason: &str) -> &'static str {
    match reason {
        "image_error" => {
            "the image request got an error event: blocked, an error status, or an answer that is not an image (the request was sent)"
        }
        "script_error" => {
            "the script request got an error event: blocked, an error status, or not JavaScript"
        }
        "js_threw" => "the code threw",
        "js_syntax" => "the code does not parse; nothing of it ran",
        "fb_image_fallback" => "Meta's script was unavailable; sent as its /tr image",
        "fb_image_error" => "Meta's script was unavailable and its /tr image got an error event",
        "timeout" => "no load or error event within 15 s",
        _ => "the browser reported a reason this hub does not know",
    }
}

/// One pixel a browser acknowledged, and what it said about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The pixel.
    pub id: PixelId,
    /// The browser's report; none from a client that only says "done" (it fired).
    pub report: Option<BrowserReport>,
}

impl Ack {
    /// A plain acknowledgement: the pixel fired.
    pub fn fired(id: PixelId) -> Self {
        Ack { id, report: None }
    }

    /// The status it leaves the pixel in.
    pub fn status(&self) -> PixelStatus {
        match &self.report {
            Some(report) if !report.fired => PixelStatus::Failed,
            _ => PixelStatus::Fired,
        }
    }
}

/// What a record is about: a client pixel's body, or a postback's request.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// A pixel for the browser.
    Client(&'a PixelBody),
    /// A postback the hub sends.
    S2s {
        /// Its final URL.
        url: &'a str,
        /// Whether it is sent as `POST` with a body.
        post: bool,
    },
}

/// `sha256:` and 16 hex digits of `code`'s SHA-256.
pub fn code_digest(code: &str) -> String {
    let digest = Sha256::digest(code.as_bytes());
    format!("sha256:{}", crate::ids::hex(&digest[..8]))
}

/// The request Meta's pixel makes for this event (the client's image fallback makes exactly this one).
fn facebook_url(pixel_id: &str, event: &str, event_id: Option<&str>) -> String {
    let mut url = url::Url::parse("https://www.facebook.com/tr").expect("a literal URL parses");
    url.query_pairs_mut()
        .append_pair("id", pixel_id)
        .append_pair("ev", event);
    if let Some(event_id) = event_id {
        url.query_pairs_mut().append_pair("eid", event_id);
    }
    url.into()
}

/// The first bytes of an answer's body as text, cut at a character boundary.
pub fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(RESPONSE_EXCERPT_BYTES)];
    let text = String::from_utf8_lossy(cut);
    text.trim_end_matches('\u{FFFD}').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_group_holds_browser_reasons_and_no_render_reason() {
        for reason in BROWSER_REASONS.iter().chain(&["other"]) {
            assert!(is_browser_reason(reason), "{reason}");
        }
        for reason in [
            "invalid_url",
            "invalid_field",
            "kind_not_allowed",
            "https_required",
            "invalid_body",
        ] {
            assert!(!is_browser_reason(reason), "{reason}");
        }
    }

    #[test]
    fn a_stored_row_has_no_unset_fields_and_reads_back_whole() {
        use crate::definition::PostBody;
        use crate::store::queues::Record;
        let stored = |record: &Record| serde_json::to_string(&record.stored()).unwrap();
        let body = PixelBody::Image {
            url: "https://a.example/p".into(),
        };
        let pending = Record {
            seq: 3,
            post: None,
            delivery: record(Target::Client(&body)),
        };
        let json = stored(&pending);
        assert!(!json.contains("null") && !json.contains("[]"), "{json}");
        let full = serde_json::to_string(&pending).unwrap();
        assert!(
            full.contains(r#""fired_at_ms":null"#),
            "the API's rows keep every field"
        );
        assert!(
            json.len() * 2 < full.len(),
            "{} against {}",
            json.len(),
            full.len()
        );
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), pending);
        // Written whole before, it reads as it did.
        assert_eq!(serde_json::from_str::<Record>(&full).unwrap(), pending);

        // Every field set: every one is kept.
        let mut every = pending.clone();
        let d = &mut every.delivery;
        d.event_id = Some(EventId::parse("e1").unwrap());
        d.definition_id = Some(DefinitionId::parse("d1").unwrap());
        d.definition_name = Some("sale pixel".into());
        d.template = Some("https://a.example/{{event_id}}".into());
        d.code_digest = Some("sha256:00".into());
        d.click_id = Some("c1".into());
        d.affiliate_id = Some("a1".into());
        d.missing = vec!["amount".into()];
        d.method = Some("POST".into());
        d.sent_at_ms = Some(101);
        d.fired_at_ms = Some(102);
        d.http_status = Some(200);
        d.response = Some("ok".into());
        d.reason = Some("timeout".into());
        d.error = Some("slow".into());
        d.next_attempt_at_ms = Some(103);
        d.attempt_log = vec![Attempt {
            at_ms: 101,
            duration_ms: 4,
            http_status: Some(200),
            error: None,
            response: None,
        }];
        every.post = Some(PostBody {
            content_type: "application/json".into(),
            body: "{}".into(),
        });
        let json = stored(&every);
        assert!(!json.contains("null"), "{json}");
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), every);
    }

    fn record(target: Target<'_>) -> Delivery {
        Delivery::new(
            PixelId::parse("p1").unwrap(),
            PlayerId::parse("pl").unwrap(),
            target,
            Some("ftd".into()),
            None,
            100,
        )
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in PixelStatus::ALL {
            assert_eq!(PixelStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        assert_eq!(PixelStatus::parse("sent"), None);
    }

    #[test]
    fn each_kind_reports_what_actually_fires() {
        let image = PixelBody::Image {
            url: "https://t.example/?a=1".into(),
        };
        assert_eq!(
            record(Target::Client(&image)).final_url.as_deref(),
            Some("https://t.example/?a=1")
        );
        let js = PixelBody::Js { code: "f()".into() };
        let js_record = record(Target::Client(&js));
        assert_eq!(js_record.final_url, None);
        assert_eq!(
            js_record.code_digest.as_deref(),
            Some("sha256:19c1041342240f32")
        );
        let fb = PixelBody::Facebook {
            pixel_id: "123".into(),
            event: "Purchase".into(),
            params: None,
            event_id: Some("p1".into()),
        };
        assert_eq!(
            record(Target::Client(&fb)).final_url.as_deref(),
            Some("https://www.facebook.com/tr?id=123&ev=Purchase&eid=p1")
        );
        let s2s = record(Target::S2s {
            url: "https://a.example/pb",
            post: true,
        });
        assert_eq!(
            (s2s.kind.as_str(), s2s.method.as_deref()),
            ("s2s", Some("POST"))
        );
    }

    #[test]
    fn attempts_keep_the_last_answer_and_the_whole_log() {
        let mut r = record(Target::S2s {
            url: "https://a.example/pb",
            post: false,
        });
        r.note_attempt(
            Attempt {
                at_ms: 200,
                duration_ms: 5,
                http_status: Some(500),
                error: None,
                response: Some("oops".into()),
            },
            PixelStatus::PendingRetry,
            Some(1000),
        );
        r.note_attempt(
            Attempt {
                at_ms: 1000,
                duration_ms: 7,
                http_status: Some(200),
                error: None,
                response: Some("OK".into()),
            },
            PixelStatus::Fired,
            None,
        );
        assert_eq!(r.status, PixelStatus::Fired);
        assert_eq!(
            (r.attempts, r.sent_at_ms, r.fired_at_ms),
            (2, Some(200), Some(1007))
        );
        assert_eq!(
            (r.http_status, r.response.as_deref()),
            (Some(200), Some("OK"))
        );
        assert_eq!(r.next_attempt_at_ms, None);
        assert_eq!(r.attempt_log.len(), 2);
    }

    #[test]
    fn excerpts_stop_at_a_character_boundary() {
        let long = "é".repeat(200);
        let cut = excerpt(long.as_bytes());
        assert!(cut.len() <= RESPONSE_EXCERPT_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}

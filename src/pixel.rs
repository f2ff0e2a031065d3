//! What a pixel is, and the one place where a caller's JSON becomes one.
//!
//! Validation happens here, before anything touches the store, so a batch is refused whole with the path of
//! the first bad field (`pixels[3].url`) and nothing half-written. What is stored and what is sent to the
//! browser is the validated, normalised form.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{DefinitionId, EventId, PixelId, PixelTag};
use crate::input::{Fields, InputError, one_or_many};

/// Largest `js` pixel, in bytes of source.
pub const MAX_JS_BYTES: usize = 64 * 1024;
/// Largest batch one request may queue by default (`--max-batch`).
pub const MAX_BATCH: usize = 1000;
/// Longest TTL a caller may ask for: a year. A conversion older than that is no longer worth paying.
pub const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;

/// What the browser does with a pixel. The `kind` tag and field names are the HTTP API's and the wire
/// protocol's, so one serde shape serves the store, the API and the WebSocket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PixelBody {
    /// Loaded with `new Image()`; load or error both mean the request went out.
    Image {
        /// Absolute http(s) URL, normalised.
        url: String,
    },
    /// Loaded in a hidden 1×1 iframe that is removed after load.
    Iframe {
        /// Absolute http(s) URL, normalised.
        url: String,
    },
    /// An external script (`<script src>`), the conversion tag some DSPs issue; loaded once, not kept.
    Script {
        /// Absolute http(s) URL, normalised.
        url: String,
    },
    /// JavaScript run in the brand's page.
    Js {
        /// Source, at most [`MAX_JS_BYTES`].
        code: String,
    },
    /// A Meta (Facebook) pixel event, tracked through `fbq` or its image fallback.
    Facebook {
        /// Meta's numeric pixel id.
        pixel_id: String,
        /// Standard or custom event name, e.g. `Purchase`.
        event: String,
        /// Event parameters such as `value` and `currency`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        params: Option<Map<String, Value>>,
        /// Deduplication key shared with Meta's Conversions API; the pixel's own id when not given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
}

/// A pixel's kind without its fields: what a brand allows, and the `kind` label of metrics.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PixelKind {
    /// See [`PixelBody::Image`].
    Image,
    /// See [`PixelBody::Iframe`].
    Iframe,
    /// See [`PixelBody::Script`].
    Script,
    /// See [`PixelBody::Js`].
    Js,
    /// See [`PixelBody::Facebook`].
    Facebook,
}

impl PixelKind {
    /// Every kind.
    pub const ALL: [PixelKind; 5] = [
        PixelKind::Image,
        PixelKind::Iframe,
        PixelKind::Script,
        PixelKind::Js,
        PixelKind::Facebook,
    ];

    /// What a new brand allows: everything but the kinds that run code of the pixel's author in the brand's
    /// page (`script`, `js`), which a brand must turn on knowingly.
    pub const SAFE: [PixelKind; 3] = [PixelKind::Image, PixelKind::Iframe, PixelKind::Facebook];

    /// The `kind` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            PixelKind::Image => "image",
            PixelKind::Iframe => "iframe",
            PixelKind::Script => "script",
            PixelKind::Js => "js",
            PixelKind::Facebook => "facebook",
        }
    }

    /// The kind named `tag`, if any.
    pub fn parse(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == tag)
    }
}

/// What a brand lets pixels do in its pages, checked on every pixel before it is queued: by hand, or
/// rendered from a definition (after rendering, so no macro value can get round it).
#[derive(Clone, Copy, Debug)]
pub struct PixelPolicy<'a> {
    /// Kinds the brand accepts.
    pub allowed_kinds: &'a [PixelKind],
    /// Whether image, iframe and script URLs must be `https`.
    pub https_only: bool,
}

/// A pixel the brand's [`PixelPolicy`] refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRefusal {
    /// Stable error code: `kind_not_allowed` or `https_required`.
    pub code: &'static str,
    /// The field at fault: `kind` or `url`.
    pub field: &'static str,
    /// Human sentence.
    pub message: String,
}

impl PolicyRefusal {
    /// The refusal as an API input error about the pixel found at `path` (`pixels[2]`, `definition`).
    pub fn at(self, path: &str) -> InputError {
        InputError::new(self.code, format!("{path}.{}", self.field), self.message)
    }
}

impl PixelPolicy<'static> {
    /// Every kind, any http(s) URL: for tests, and for pixels a brand does not send (the demo's).
    pub const ANY: PixelPolicy<'static> = PixelPolicy {
        allowed_kinds: &PixelKind::ALL,
        https_only: false,
    };
}

impl PixelPolicy<'_> {
    /// Whether the brand accepts `body`.
    pub fn check(&self, body: &PixelBody) -> Result<(), PolicyRefusal> {
        self.check_kind(body.kind_of())?;
        body.url().map_or(Ok(()), |url| self.check_url(url))
    }

    /// Whether the brand accepts pixels of `kind`.
    pub fn check_kind(&self, kind: PixelKind) -> Result<(), PolicyRefusal> {
        if self.allowed_kinds.contains(&kind) {
            return Ok(());
        }
        let allowed: Vec<&str> = self.allowed_kinds.iter().map(|k| k.as_str()).collect();
        Err(PolicyRefusal {
            code: "kind_not_allowed",
            field: "kind",
            message: format!(
                "{} pixels are not allowed for this brand (allowed_kinds: {}); they would run in the brand's pages, so the brand must allow them first",
                kind.as_str(),
                allowed.join(", ")
            ),
        })
    }

    /// Whether the brand accepts a pixel loading `url` (already checked to be http or https).
    pub fn check_url(&self, url: &str) -> Result<(), PolicyRefusal> {
        let https = url
            .get(..8)
            .is_some_and(|head| head.eq_ignore_ascii_case("https://"));
        if self.https_only && !https {
            return Err(PolicyRefusal {
                code: "https_required",
                field: "url",
                message: "must be an https URL: this brand is https_only".into(),
            });
        }
        Ok(())
    }
}

impl PixelBody {
    /// The `kind` tag, for logs and stats.
    pub fn kind(&self) -> &'static str {
        self.kind_of().as_str()
    }

    /// The kind, for policies.
    pub fn kind_of(&self) -> PixelKind {
        match self {
            PixelBody::Image { .. } => PixelKind::Image,
            PixelBody::Iframe { .. } => PixelKind::Iframe,
            PixelBody::Script { .. } => PixelKind::Script,
            PixelBody::Js { .. } => PixelKind::Js,
            PixelBody::Facebook { .. } => PixelKind::Facebook,
        }
    }

    /// The URL the browser loads, for the kinds that load one.
    pub fn url(&self) -> Option<&str> {
        match self {
            PixelBody::Image { url } | PixelBody::Iframe { url } | PixelBody::Script { url } => {
                Some(url)
            }
            PixelBody::Js { .. } | PixelBody::Facebook { .. } => None,
        }
    }

    /// Fills defaults that depend on the pixel's final id: a Facebook `event_id` defaults to the pixel id, so
    /// Meta can deduplicate it against the same conversion sent through the Conversions API.
    pub fn with_defaults(mut self, id: &PixelId) -> Self {
        if let PixelBody::Facebook {
            event_id: event_id @ None,
            ..
        } = &mut self
        {
            *event_id = Some(id.to_string());
        }
        self
    }
}

/// A validated pixel a caller asked to queue.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPixel {
    /// The caller's idempotency key, if any.
    pub id: Option<PixelId>,
    /// Free label such as `ftd`.
    pub trigger: Option<String>,
    /// Time to live; `None` takes the configured default.
    pub ttl_seconds: Option<u64>,
    /// The IAB TCF vendor the pixel reports to: under the brand's `tcf` consent, it fires only with the
    /// player's consent for that vendor too.
    pub tcf_vendor_id: Option<u32>,
    /// What to fire.
    pub body: PixelBody,
    /// Event and definition it came from, for the delivery report; `None` when queued by hand.
    pub origin: Option<Origin>,
}

/// A pixel in a player's queue, as stored and as listed by the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedPixel {
    /// Unique within the player's queue.
    pub id: PixelId,
    /// What to fire.
    #[serde(flatten)]
    pub body: PixelBody,
    /// The caller's label, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// See [`NewPixel::tcf_vendor_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcf_vendor_id: Option<u32>,
    /// Unix milliseconds when the pixel became durable.
    pub queued_at_ms: u64,
    /// Unix milliseconds after which the pixel is dropped instead of fired.
    pub expires_at_ms: u64,
}

/// The highest IAB TCF vendor id a pixel may name.
pub const MAX_TCF_VENDOR_ID: u64 = 65_535;

/// Parses a request body: one pixel object, or an array of 1 to `max` of them.
pub fn parse_batch(body: Value, max: usize) -> Result<Vec<NewPixel>, InputError> {
    one_or_many(body, max, ("pixel", "pixels"), parse_pixel)
}

/// Parses one pixel object found at `path`. Pixels rendered from definitions go through here too, so a
/// rendered pixel meets exactly the rules of one queued by hand.
pub fn parse_pixel(value: Value, path: &str) -> Result<NewPixel, InputError> {
    let Value::Object(mut obj) = value else {
        return Err(InputError::new(
            "invalid_pixel",
            path,
            "a pixel must be a JSON object",
        ));
    };
    let mut fields = Fields::new(&mut obj, path);

    let kind = fields.required_str("kind")?;
    let id = fields
        .optional_str("id")?
        .map(|id| fields.id::<PixelTag>("id", &id))
        .transpose()?;
    let trigger = fields.optional_str("trigger")?;
    if let Some(trigger) = &trigger {
        fields.check_label("trigger", trigger, 64)?;
    }
    let ttl_seconds = fields.optional_u64("ttl_seconds", 1..=MAX_TTL_SECONDS, "seconds")?;
    let tcf_vendor_id = fields
        .optional_u64("tcf_vendor_id", 1..=MAX_TCF_VENDOR_ID, "a TCF vendor id")?
        .map(|id| id as u32);

    let body = match kind.as_str() {
        "image" => PixelBody::Image {
            url: fields.url("url")?,
        },
        "iframe" => PixelBody::Iframe {
            url: fields.url("url")?,
        },
        "script" => PixelBody::Script {
            url: fields.url("url")?,
        },
        "js" => {
            let code = fields.required_str("code")?;
            if code.trim().is_empty() {
                return Err(fields.error("invalid_field", "code", "must not be empty"));
            }
            if code.len() > MAX_JS_BYTES {
                return Err(fields.error(
                    "code_too_large",
                    "code",
                    format!(
                        "is {} bytes; at most {MAX_JS_BYTES} are allowed",
                        code.len()
                    ),
                ));
            }
            PixelBody::Js { code }
        }
        "facebook" => {
            let pixel_id = fields.required_str("pixel_id")?;
            if pixel_id.is_empty()
                || pixel_id.len() > 32
                || !pixel_id.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(fields.error(
                    "invalid_field",
                    "pixel_id",
                    "must be Meta's numeric pixel id",
                ));
            }
            let event = fields.required_str("event")?;
            fields.check_label("event", &event, 100)?;
            let params = match fields.obj.remove("params") {
                None | Some(Value::Null) => None,
                Some(Value::Object(map)) => Some(map),
                Some(_) => {
                    return Err(fields.error("invalid_field", "params", "must be a JSON object"));
                }
            };
            let event_id = fields.optional_str("event_id")?;
            if let Some(event_id) = &event_id {
                fields.check_label("event_id", event_id, 128)?;
            }
            PixelBody::Facebook {
                pixel_id,
                event,
                params,
                event_id,
            }
        }
        other => {
            return Err(fields.error(
                "unknown_kind",
                "kind",
                format!("{other:?} is not a pixel kind; use image, iframe, script, js or facebook"),
            ));
        }
    };

    fields.finish(&format!("a {kind} pixel"))?;
    Ok(NewPixel {
        origin: None,
        id,
        trigger,
        ttl_seconds,
        tcf_vendor_id,
        body,
    })
}

/// Where a pixel produced by a definition came from; absent for pixels queued by hand.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    /// The event that produced it.
    pub event_id: Option<EventId>,
    /// The definition that produced it.
    pub definition_id: Option<DefinitionId>,
    /// That definition's name at the time.
    pub definition_name: Option<String>,
    /// The template as the definition held it at the time (URL, code, or Meta pixel id and event).
    pub template: Option<String>,
    /// The affiliate's click id, when the event or the registration carried one.
    pub click_id: Option<String>,
    /// Where the click id came from: the event or the brand's reported registration (`event`), or the
    /// client script's capture on the player's landing page (`browser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_source: Option<crate::attribution::Source>,
    /// The affiliate credited: the event's, else the registration's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliate_id: Option<String>,
    /// Macros rendered empty for want of a value.
    pub missing: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> InputError {
        parse_batch(v, MAX_BATCH).unwrap_err()
    }

    #[test]
    fn parses_every_kind_with_its_options() {
        let pixels = parse_batch(json!([
            {"kind": "image", "url": "https://a.example/p?x=1 2", "id": "ftd-1", "trigger": "ftd", "ttl_seconds": 60},
            {"kind": "iframe", "url": "http://b.example/"},
            {"kind": "script", "url": "https://dsp.example/conv.js?c=1"},
            {"kind": "js", "code": "window.x = 1"},
            {"kind": "facebook", "pixel_id": "123", "event": "Purchase", "params": {"value": 50}},
        ]), MAX_BATCH)
        .unwrap();

        assert_eq!(
            pixels[0].body,
            PixelBody::Image {
                url: "https://a.example/p?x=1%202".into()
            }
        );
        assert_eq!(pixels[0].id.as_ref().map(|i| i.as_str()), Some("ftd-1"));
        assert_eq!(pixels[0].trigger.as_deref(), Some("ftd"));
        assert_eq!(pixels[0].ttl_seconds, Some(60));
        assert_eq!(pixels[2].body.kind(), "script");
        assert_eq!(pixels[3].body.kind(), "js");
        let id = PixelId::parse("px1").unwrap();
        match pixels[4].body.clone().with_defaults(&id) {
            PixelBody::Facebook { event_id, .. } => assert_eq!(event_id.as_deref(), Some("px1")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_single_object_is_a_batch_of_one() {
        assert_eq!(
            parse_batch(json!({"kind": "js", "code": "1"}), MAX_BATCH)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn refuses_bad_input_with_the_path_of_the_problem() {
        let e = err(
            json!([{"kind": "image", "url": "https://ok.example/"}, {"kind": "image", "url": "javascript:alert(1)"}]),
        );
        assert_eq!((e.code, e.path.as_str()), ("invalid_url", "pixels[1].url"));

        assert_eq!(
            err(json!({"kind": "gif", "url": "https://a.example/"})).code,
            "unknown_kind"
        );
        assert_eq!(
            err(json!({"url": "https://a.example/"})).code,
            "missing_field"
        );
        assert_eq!(err(json!({"kind": "image"})).path, "pixel.url");
        assert_eq!(
            err(json!({"kind": "image", "url": "/relative"})).code,
            "invalid_url"
        );
        assert_eq!(
            err(json!({"kind": "image", "url": "ftp://a.example/"})).code,
            "invalid_url"
        );
        assert_eq!(
            err(json!({"kind": "image", "url": "https://a.example/", "colour": 1})).code,
            "unknown_field"
        );
        assert_eq!(
            err(json!({"kind": "image", "url": 5})).code,
            "invalid_field"
        );
        assert_eq!(
            err(json!({"kind": "js", "code": "x".repeat(MAX_JS_BYTES + 1)})).code,
            "code_too_large"
        );
        assert_eq!(
            err(json!({"kind": "js", "code": "  "})).code,
            "invalid_field"
        );
        assert_eq!(
            err(json!({"kind": "facebook", "pixel_id": "12a", "event": "Purchase"})).path,
            "pixel.pixel_id"
        );
        assert_eq!(
            err(json!({"kind": "facebook", "pixel_id": "1", "event": "P", "params": [1]})).path,
            "pixel.params"
        );
        assert_eq!(
            err(json!({"kind": "js", "code": "1", "id": "has space"})).path,
            "pixel.id"
        );
        assert_eq!(
            err(json!({"kind": "js", "code": "1", "ttl_seconds": 0})).path,
            "pixel.ttl_seconds"
        );
        assert_eq!(
            err(json!({"kind": "js", "code": "1", "ttl_seconds": -5})).path,
            "pixel.ttl_seconds"
        );
        assert_eq!(err(json!("image")).code, "invalid_pixel");
        assert_eq!(err(json!([])).code, "empty_batch");
        let too_many: Vec<Value> = (0..=MAX_BATCH)
            .map(|_| json!({"kind": "js", "code": "1"}))
            .collect();
        assert_eq!(err(Value::Array(too_many)).code, "batch_too_large");
    }
}

//! The WebSocket wire protocol, version 1 (specified for people in `docs/protocol.md`).
//!
//! Every frame is a JSON text message with a `type`. Unknown fields are ignored so that newer clients and
//! servers can add fields without breaking older peers; a new meaning for an existing field needs a new
//! protocol version. Every way a session can end has a [`CloseReason`] with a code in 4000–4999 that tells
//! the client whether reconnecting can help.

use serde::{Deserialize, Serialize};

use crate::ids::{BrandId, InvalidId, PixelId, SessionId};
use crate::pixel::{PixelBody, QueuedPixel};

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Most ids one `ack` message may carry; keeps a single message's work bounded.
pub const MAX_ACK_IDS: usize = 256;

/// A message from the browser.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message of every session: who is on the page.
    Hello {
        /// Protocol version the client speaks.
        v: u32,
        /// The brand, as a string or (as brand snippets often pass it) a JSON number.
        brand_id: BrandRef,
        /// The player.
        player_id: String,
        /// The brand's signed player token (see [`crate::player_token`]); required when the brand says so.
        #[serde(default)]
        token: Option<String>,
        /// The affiliate click the client captured on a landing page, sent once the player is known
        /// (see [`crate::attribution`]).
        #[serde(default)]
        attribution: Option<crate::attribution::CapturedClick>,
    },
    /// Pixels that fired in the browser, or that it had already fired before (redelivery).
    Ack {
        /// Pixel ids, at most [`MAX_ACK_IDS`].
        ids: Vec<String>,
        /// What the browser saw of some of them (optional; a plain ack means each fired cleanly), at most
        /// [`MAX_ACK_IDS`]. A result's pixel is acknowledged whether or not `ids` lists it.
        #[serde(default)]
        results: Vec<PixelResult>,
    },
    /// Answer to a server [`ServerMessage::Ping`].
    Pong,
    /// Whether the page has the player's consent to fire pixels (brands with a `consent` setting): the
    /// hub sends nothing before `true`; `false` makes the player's pending pixels wait for consent.
    /// Sent again whenever the page's answer changes.
    Consent {
        /// The page's answer.
        granted: bool,
    },
    /// Pixels the page was sent but may not fire (no consent for the vendor a pixel names): they wait
    /// for consent, and this session is not sent them again.
    Withheld {
        /// Pixel ids, at most [`MAX_ACK_IDS`].
        ids: Vec<String>,
    },
}

/// What the browser saw when it fired one pixel.
#[derive(Debug, Deserialize, PartialEq)]
pub struct PixelResult {
    /// The pixel.
    pub id: String,
    /// `fired` or `failed`.
    pub result: AckResult,
    /// Why (see [`crate::delivery::BrowserReport::reason`]).
    pub reason: String,
    /// The browser's words, such as an exception's message; cut to 200 characters by the hub.
    #[serde(default)]
    pub message: Option<String>,
}

/// How a pixel ended in the browser.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AckResult {
    /// It fired (perhaps by a fallback, which `reason` names).
    Fired,
    /// It did not fire cleanly: an error event, an exception, a timeout.
    Failed,
}

/// A brand id as written in the snippet: `brandId: 12345` means the same brand as `"12345"`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum BrandRef {
    /// `"12345"` or `"casino-x"`.
    Text(String),
    /// `12345`.
    Number(u64),
}

impl BrandRef {
    /// The brand id this names, validated.
    pub fn to_brand_id(&self) -> Result<BrandId, InvalidId> {
        match self {
            BrandRef::Text(s) => BrandId::parse(s),
            BrandRef::Number(n) => BrandId::parse(&n.to_string()),
        }
    }
}

impl ClientMessage {
    /// Parses one text frame, mapping every failure to the close reason the client gets.
    pub fn parse(text: &str) -> Result<Self, CloseReason> {
        serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                CloseReason::BadMessage
            }
            _ if text.contains("\"hello\"") => CloseReason::InvalidHello,
            _ => CloseReason::BadMessage,
        })
    }
}

/// A message to the browser.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// The hello was accepted; the session is live.
    Welcome {
        /// Protocol version of the server.
        v: u32,
        /// This session's id, for support and logs.
        session_id: SessionId,
        /// How often the server pings; a client that hears nothing for about twice this should reconnect.
        heartbeat_ms: u64,
        /// The `sandbox` attribute the brand gives its iframe pixels.
        iframe_sandbox: &'a str,
        /// The `referrerpolicy` the brand gives its image, iframe and script pixels.
        referrer_policy: &'a str,
        /// Where the page must find the player's consent before it fires anything; absent when the
        /// brand asks for none.
        #[serde(skip_serializing_if = "Option::is_none")]
        consent: Option<ConsentAsk<'a>>,
    },
    /// Pixels to fire, in queue order.
    Deliver {
        /// The pixels.
        pixels: Vec<WirePixel<'a>>,
    },
    /// Liveness check; the client answers with `pong`.
    Ping,
}

impl ServerMessage<'_> {
    /// The frame's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages serialise infallibly")
    }
}

/// What the welcome tells the page to ask about consent (the brand's settings).
#[derive(Debug, Serialize)]
pub struct ConsentAsk<'a> {
    /// `tcf`, `google` or `callback`.
    pub mode: crate::brand::ConsentMode,
    /// TCF purposes the player must have consented to (`tcf`).
    #[serde(skip_serializing_if = "<[u8]>::is_empty")]
    pub purposes: &'a [u8],
    /// How long to wait for the page's answer; none by then means no consent.
    pub timeout_ms: u32,
}

/// A pixel as the browser sees it: its id and what to fire, nothing of the queue's bookkeeping.
#[derive(Debug, Serialize)]
pub struct WirePixel<'a> {
    /// The id to acknowledge and to remember as fired.
    pub id: &'a PixelId,
    /// What to fire.
    #[serde(flatten)]
    pub body: &'a PixelBody,
    /// The IAB TCF vendor whose consent it also needs, when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcf_vendor_id: Option<u32>,
}

impl<'a> From<&'a QueuedPixel> for WirePixel<'a> {
    fn from(p: &'a QueuedPixel) -> Self {
        Self {
            id: &p.id,
            body: &p.body,
            tcf_vendor_id: p.tcf_vendor_id,
        }
    }
}

/// Why a session ended. Codes 4000–4499 mean "reconnect (with backoff)", 4500–4999 mean "do not reconnect:
/// the same request would fail again".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The server is shutting down or draining; reconnect, possibly to another instance.
    Shutdown,
    /// No message (not even a pong) within two heartbeat intervals.
    HeartbeatTimeout,
    /// No hello within the hello timeout after the upgrade.
    HelloTimeout,
    /// The client did not take our frames within the write timeout.
    SlowClient,
    /// The server failed (e.g. storage); nothing was lost, try again.
    InternalError,
    /// The client sent more messages than `--ws-max-messages-per-second` allows; back off, then retry.
    RateLimited,
    /// The player holds `--max-sessions-per-player` sessions already; retry when a tab closes.
    TooManySessions,
    /// Not JSON, not a text frame, or an unknown message type.
    BadMessage,
    /// The hello asked for a protocol version this server does not speak.
    UnsupportedVersion,
    /// The hello's brand or player id is missing or malformed.
    InvalidHello,
    /// The hello named a brand that does not exist.
    UnknownBrand,
    /// A frame exceeded the size limit.
    MessageTooBig,
    /// A valid message at the wrong time: a second hello, an ack before hello, too many ids in an ack.
    UnexpectedMessage,
    /// The page's Origin is not in the brand's `allowed_origins`.
    OriginNotAllowed,
    /// The brand requires a player token and the hello's is missing, malformed or not signed for this
    /// brand and player.
    InvalidToken,
    /// The hello's player token is genuine but expired; the page needs a fresh one.
    TokenExpired,
}

impl CloseReason {
    /// Every reason, for documentation checks and metrics.
    pub const ALL: [CloseReason; 16] = [
        CloseReason::Shutdown,
        CloseReason::HeartbeatTimeout,
        CloseReason::HelloTimeout,
        CloseReason::SlowClient,
        CloseReason::InternalError,
        CloseReason::RateLimited,
        CloseReason::TooManySessions,
        CloseReason::BadMessage,
        CloseReason::UnsupportedVersion,
        CloseReason::InvalidHello,
        CloseReason::UnknownBrand,
        CloseReason::MessageTooBig,
        CloseReason::UnexpectedMessage,
        CloseReason::OriginNotAllowed,
        CloseReason::InvalidToken,
        CloseReason::TokenExpired,
    ];

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Shutdown => 4000,
            CloseReason::HeartbeatTimeout => 4001,
            CloseReason::HelloTimeout => 4002,
            CloseReason::SlowClient => 4003,
            CloseReason::InternalError => 4004,
            CloseReason::RateLimited => 4005,
            CloseReason::TooManySessions => 4006,
            CloseReason::BadMessage => 4500,
            CloseReason::UnsupportedVersion => 4501,
            CloseReason::InvalidHello => 4502,
            CloseReason::UnknownBrand => 4503,
            CloseReason::MessageTooBig => 4504,
            CloseReason::UnexpectedMessage => 4505,
            CloseReason::OriginNotAllowed => 4506,
            CloseReason::InvalidToken => 4507,
            CloseReason::TokenExpired => 4508,
        }
    }

    /// The close frame's reason text: stable snake_case, also used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::HelloTimeout => "hello_timeout",
            CloseReason::SlowClient => "slow_client",
            CloseReason::InternalError => "internal_error",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::TooManySessions => "too_many_sessions",
            CloseReason::BadMessage => "bad_message",
            CloseReason::UnsupportedVersion => "unsupported_version",
            CloseReason::InvalidHello => "invalid_hello",
            CloseReason::UnknownBrand => "unknown_brand",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::UnexpectedMessage => "unexpected_message",
            CloseReason::OriginNotAllowed => "origin_not_allowed",
            CloseReason::InvalidToken => "invalid_token",
            CloseReason::TokenExpired => "token_expired",
        }
    }

    /// The limit this close enforces, if it is one.
    pub fn limit(self) -> Option<crate::limits::Limit> {
        use crate::limits::Limit;
        Some(match self {
            CloseReason::HelloTimeout => Limit::HelloTimeout,
            CloseReason::MessageTooBig => Limit::WsMessageBytes,
            CloseReason::RateLimited => Limit::WsMessageRate,
            CloseReason::TooManySessions => Limit::SessionsPerPlayer,
            _ => return None,
        })
    }

    /// Whether a client should reconnect after this close.
    pub fn should_reconnect(self) -> bool {
        self.code() < 4500
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hello_with_a_numeric_or_text_brand() {
        let m = ClientMessage::parse(
            r#"{"type":"hello","v":1,"brand_id":12345,"player_id":"p1","extra":true}"#,
        );
        let Ok(ClientMessage::Hello { brand_id, .. }) = m else {
            panic!("{m:?}")
        };
        assert_eq!(brand_id.to_brand_id().unwrap().as_str(), "12345");
        let m =
            ClientMessage::parse(r#"{"type":"hello","v":1,"brand_id":"12345","player_id":"p1"}"#);
        let Ok(ClientMessage::Hello { brand_id, .. }) = m else {
            panic!("{m:?}")
        };
        assert_eq!(brand_id.to_brand_id().unwrap().as_str(), "12345");
    }

    #[test]
    fn maps_bad_frames_to_their_close_reason() {
        assert_eq!(
            ClientMessage::parse("{not json"),
            Err(CloseReason::BadMessage)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe"}"#),
            Err(CloseReason::BadMessage)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"hello","v":1,"brand_id":-1,"player_id":"p"}"#),
            Err(CloseReason::InvalidHello)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"hello","v":1,"player_id":"p"}"#),
            Err(CloseReason::InvalidHello)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"ack","ids":"x"}"#),
            Err(CloseReason::BadMessage)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"pong"}"#),
            Ok(ClientMessage::Pong)
        );
    }

    #[test]
    fn codes_are_unique_split_by_meaning_and_documented() {
        let doc = include_str!("../docs/protocol.md");
        let mut codes: Vec<u16> = CloseReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), CloseReason::ALL.len());
        for reason in CloseReason::ALL {
            assert!((4000..5000).contains(&reason.code()));
            let row = format!(
                "| {} | `{}` | {} |",
                reason.code(),
                reason.as_str(),
                if reason.should_reconnect() {
                    "reconnect"
                } else {
                    "final"
                }
            );
            assert!(doc.contains(&row), "docs/protocol.md lacks the row: {row}");
        }
    }

    #[test]
    fn deliver_frames_carry_the_id_and_the_pixel_fields_only() {
        let id = PixelId::parse("px1").unwrap();
        let body = PixelBody::Image {
            url: "https://a.example/".into(),
        };
        let json = ServerMessage::Deliver {
            pixels: vec![WirePixel {
                id: &id,
                body: &body,
                tcf_vendor_id: None,
            }],
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"deliver","pixels":[{"id":"px1","kind":"image","url":"https://a.example/"}]}"#
        );
    }
}

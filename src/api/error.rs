//! Every HTTP error the hub can answer, and the one place that maps them to a status and a body.
//!
//! Bodies are always `{"error":{"code":"<snake_case>","message":"<human sentence>"}}`. Codes are stable and
//! documented; messages may improve. 5xx bodies stay opaque: the cause goes to the log, not to the caller.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::InvalidId;
use crate::input::InputError;
use crate::store::StoreError;

/// The `WWW-Authenticate` of a 401: Bearer for API clients; Basic so a browser asks for the token (as the
/// password) when someone opens the dashboard.
const CHALLENGE: &str = "Bearer realm=\"pixelhub\", Basic realm=\"pixelhub\", charset=\"UTF-8\"";

/// The body of every error answer, named in the OpenAPI document so clients can rely on its shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error: a stable code for programs, a sentence for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `brand_not_found`; the README lists them all.
    #[schema(example = "brand_not_found")]
    pub code: &'static str,
    /// A sentence naming the field or resource at fault; wording may improve between releases.
    pub message: String,
}

/// The code of an error answer, left in the response's extensions for the middleware that counts
/// limits hit.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// An error answer of the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or wrong `Authorization: Bearer` token.
    #[error(
        "a valid admin token or brand API key is required: send Authorization: Bearer <token> (a browser may send the admin token as the Basic password, for GET)"
    )]
    Unauthorized,
    /// A valid brand API key, used on another brand or on a route only the admin token may use.
    #[error("{0}")]
    Forbidden(String),
    /// A WebSocket upgrade from a page outside the brand's `allowed_origins`.
    #[error(
        "this page's Origin is not in the brand's allowed_origins; add it with PUT /api/v1/brands/{{brand_id}}"
    )]
    OriginNotAllowed,
    /// An inbound postback URL whose brand or token is wrong.
    #[error(
        "this postback URL's token is not valid for the brand; copy the URL from GET /api/v1/brands/{{brand_id}}/inbound"
    )]
    InvalidInboundToken,
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A path segment is not a valid id.
    #[error("{0}")]
    InvalidId(String),
    /// A field of the body (pixel, definition, event) is invalid.
    #[error("{0}")]
    InvalidInput(#[from] InputError),
    /// Another body field is invalid; `code` names the problem.
    #[error("{message}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// Human sentence naming the field.
        message: String,
    },
    /// The body is over the configured limit.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The brand in the path was never registered.
    #[error("brand {0} does not exist; create it with PUT /api/v1/brands/{0}")]
    UnknownBrand(String),
    /// The definition in the path is unknown for that brand.
    #[error("pixel definition {0} does not exist for this brand")]
    UnknownDefinition(String),
    /// The event in the path was never reported to that brand (or its record is gone).
    #[error("event {0} is not known for this brand")]
    UnknownEvent(String),
    /// The pixel in the path is unknown for that player.
    #[error("pixel {0} is not known for this player")]
    UnknownPixel(String),
    /// Another resource in the path does not exist; `code` names which.
    #[error("{message}")]
    NotFound {
        /// Stable code.
        code: &'static str,
        /// Human sentence.
        message: String,
    },
    /// The request conflicts with the resource's state.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Human sentence.
        message: String,
    },
    /// No route matches.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The route exists, the method does not.
    #[error("method not allowed for this route")]
    MethodNotAllowed,
    /// The player's queue is at its cap and the policy is to refuse.
    #[error(
        "the queue of player {player} holds {pending} pixels and its cap is {cap}; nothing was queued. Wait for the player's browser to fire them, or purge the queue"
    )]
    QueueFull {
        /// The player.
        player: String,
        /// Pixels pending.
        pending: u64,
        /// The cap.
        cap: u64,
    },
    /// A limit on how often something may be asked was reached; retry after `retry_after`.
    #[error("{message}")]
    RateLimited {
        /// Which limit, for the metrics.
        limit: crate::limits::Limit,
        /// When a retry may succeed.
        retry_after: std::time::Duration,
        /// Human sentence.
        message: String,
    },
    /// A brand's quota (events a day, players, outbox) or the demo's cap is reached.
    #[error("{message}")]
    QuotaExceeded {
        /// When a retry may succeed, if time alone will help.
        retry_after: Option<std::time::Duration>,
        /// Human sentence naming the quota and its setting.
        message: String,
    },
    /// The request body did not arrive in time.
    #[error(
        "the request body did not arrive within {seconds} s; send it faster, or in smaller pieces"
    )]
    BodyTimeout {
        /// The configured limit.
        seconds: u64,
    },
    /// The client's address holds `--max-connections-per-ip` connections already.
    #[error("too many connections from your address; close some, or retry later")]
    TooManyConnections,
    /// The hub is draining for shutdown and takes no new sessions.
    #[error("the hub is shutting down; connect to another instance or retry shortly")]
    Draining,
    /// The store is closing; the request was not carried out.
    #[error("the hub is shutting down; retry shortly")]
    Unavailable,
    /// The store refuses writes that would grow it: the disk is (nearly) full.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The store did not answer in time, or failed; the message says which.
    #[error("{0}")]
    StoreUnavailable(String),
    /// Anything else; the caller sees only that it failed.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidInboundToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            ApiError::InvalidInput(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.code),
            ApiError::Invalid { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::UnknownBrand(_) => (StatusCode::NOT_FOUND, "brand_not_found"),
            ApiError::UnknownPixel(_) => (StatusCode::NOT_FOUND, "pixel_not_found"),
            ApiError::UnknownDefinition(_) => (StatusCode::NOT_FOUND, "definition_not_found"),
            ApiError::UnknownEvent(_) => (StatusCode::NOT_FOUND, "event_not_found"),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::QueueFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            ApiError::TooManyConnections => (StatusCode::TOO_MANY_REQUESTS, "too_many_connections"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            ApiError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::InsufficientStorage(_) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ApiError::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownBrand(brand) => ApiError::UnknownBrand(brand.to_string()),
            StoreError::UnknownDefinition(id) => ApiError::UnknownDefinition(id.to_string()),
            StoreError::DefinitionExists(id) => ApiError::Conflict {
                code: "definition_exists",
                message: format!(
                    "pixel definition {id} already exists; change it with PUT, or leave out the id"
                ),
            },
            StoreError::QueueFull {
                player,
                pending,
                cap,
            } => ApiError::QueueFull {
                player: player.to_string(),
                pending,
                cap,
            },
            StoreError::NotAllowed(e) => ApiError::InvalidInput(e),
            StoreError::Closed => ApiError::Unavailable,
            StoreError::UnknownEventType(e) => ApiError::Invalid {
                code: "unknown_event_type",
                message: format!(
                    "events[{}]: {e}. Use one of them (or a name affiliate platforms use for one, see docs/definitions.md), or save a definition that fires on it first; nothing of this request was recorded",
                    e.index
                ),
            },
            e @ StoreError::QuotaExceeded { resets_in, .. } => ApiError::QuotaExceeded {
                retry_after: resets_in,
                message: format!("{e}; nothing of this request was recorded"),
            },
            e @ StoreError::Backend(_) => ApiError::Internal(chain(&e)),
            StoreError::Full(why) => ApiError::InsufficientStorage(format!(
                "{why}, so this write was refused. Reads, acks and deletes go on, and writes resume by themselves once there is room"
            )),
            StoreError::Unavailable(why) => ApiError::StoreUnavailable(format!(
                "{why}; retry later (the same ids are never queued twice)"
            )),
            StoreError::Failed(cause) => {
                tracing::error!(%cause, "request failed: the store failed");
                ApiError::StoreUnavailable(
                    "the store failed and the hub is restarting; retry shortly (the same ids are never queued twice)".into(),
                )
            }
        }
    }
}

impl From<InvalidId> for ApiError {
    fn from(e: InvalidId) -> Self {
        ApiError::InvalidId(e.to_string())
    }
}

impl ApiError {
    /// The status and body this error answers with; also for the one answer given outside axum (a
    /// connection over its address's cap, refused by the accept loop).
    pub fn status_and_body(&self) -> (StatusCode, ErrorBody) {
        let (status, code) = self.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        (status, body)
    }
}

/// A `503` with an error body, for the probes, whose codes (`unhealthy`, `draining`, `store_failed`…)
/// describe the hub rather than a request.
pub fn service_unavailable(code: &'static str, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail { code, message },
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "request failed");
        }
        let (status, body) = self.status_and_body();
        let code = body.error.code;
        let retry_after = match &self {
            ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            ApiError::QuotaExceeded { retry_after, .. } => *retry_after,
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        if let ApiError::RateLimited { limit, .. } = &self {
            response.extensions_mut().insert(*limit);
        }
        if let Some(wait) = retry_after {
            // Whole seconds, rounded up: a client that waits that long finds a token.
            let seconds = wait.as_millis().div_ceil(1000).max(1);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&seconds.to_string()).expect("digits are a valid header"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
        }
        response
    }
}

/// An error and its sources, outermost first (`a: b: c`), for the log: a store failure's message alone
/// often hides what failed underneath.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_keeps_what_it_came_from() {
        let io = std::io::Error::other("disk on fire");
        let error = StoreError::Backend(std::sync::Arc::new(io));
        assert!(
            std::error::Error::source(&error).is_some(),
            "the engine's error is the source"
        );
        assert_eq!(
            chain(&error),
            "storage engine failure: disk on fire",
            "a source already in the message is not repeated"
        );
        let ApiError::Internal(logged) = ApiError::from(StoreError::corrupt("no record")) else {
            panic!("a backend failure is an internal error");
        };
        assert_eq!(
            logged,
            "storage engine failure: corrupt store data: no record"
        );
    }
}

//! Request extractors whose failures are API errors, never axum's plain-text rejections.

use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query, RawPathParams, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::ids::{ID_RULE, is_dot_segment};

/// A JSON body read within the configured size limit. An empty body reads as `{}`, so `PUT` with no body
/// means "defaults".
pub struct JsonBody(pub Value);

impl<S> FromRequest<S> for JsonBody
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = AppState::from_ref(state).config.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        // Without a Content-Length the size limit is enforced while reading; a failure here is that
        // limit, or the body's time limit.
        let seconds = AppState::from_ref(state)
            .config
            .body_timeout_ms
            .div_ceil(1000);
        let bytes = axum::body::to_bytes(req.into_body(), limit as usize)
            .await
            .map_err(|e| {
                if super::body::timed_out(&e) {
                    ApiError::BodyTimeout { seconds }
                } else {
                    ApiError::PayloadTooLarge { limit }
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Value::Object(Default::default())));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidJson(e.to_string()))
    }
}

/// Path parameters, deserialised into validated id types.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Ids deserialise as stored data does; a caller's `.` or `..` is refused here.
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await
            && let Some((name, _)) = raw.iter().find(|(_, value)| is_dot_segment(value))
        {
            return Err(ApiError::InvalidId(format!("{name} {ID_RULE}")));
        }
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::InvalidId(path_error(rejection))),
        }
    }
}

/// A path parameter's error in the words of every other error: the parameter, its value and what is
/// wrong, without axum's "Invalid URL:" framing.
fn path_error(rejection: axum::extract::rejection::PathRejection) -> String {
    use axum::extract::path::ErrorKind;
    use axum::extract::rejection::PathRejection;
    let PathRejection::FailedToDeserializePathParams(failed) = rejection else {
        return rejection.body_text();
    };
    match failed.into_kind() {
        ErrorKind::DeserializeError {
            key,
            value,
            message,
        } => {
            let message = message.strip_prefix(&key).unwrap_or(&message).trim_start();
            format!("{key} {value:?}: {message}")
        }
        ErrorKind::ParseErrorAtKey {
            key,
            value,
            expected_type,
        } => format!("{key} {value:?}: not a valid {expected_type}"),
        ErrorKind::InvalidUtf8InPathParam { key } => format!("{key}: not valid UTF-8"),
        other => other.to_string(),
    }
}

/// Query parameters, refusing unknown ones (when the type says so) with `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        if let Some((name, _)) =
            url::form_urlencoded::parse(query.as_bytes()).find(|(_, value)| is_dot_segment(value))
        {
            return Err(ApiError::Invalid {
                code: "invalid_query",
                message: format!("{name} {ID_RULE}"),
            });
        }
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::Invalid {
                code: "invalid_query",
                message: rejection.body_text(),
            }),
        }
    }
}

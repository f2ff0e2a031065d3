//! Events that arrive by URL: inbound GET postbacks (`/postback/{brand_id}/{token}[/{event_type}]`), and
//! the admin routes that show those URLs ready to copy and rotate their token.
//!
//! The token in the path is the brand's inbound secret, not the admin token: it goes into operators' back
//! ends and affiliate platforms, so it can only report events for its own brand, and it can be rotated
//! with a grace period while those systems are moved over.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::BrandPath;
use super::extract::{ApiPath, JsonBody};
use super::{ApiError, AppState};
use crate::ids::BrandId;
use crate::inbound::{COUNTERS, events_from_query};
use crate::input::Fields;
use crate::store::{InboundTokens, StoreError, now_ms};

/// Longest grace period a rotation may give the old token: 30 days.
const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

#[derive(Deserialize)]
pub(super) struct PostbackPath {
    brand_id: String,
    token: String,
    #[serde(default)]
    event_type: Option<String>,
}

/// `GET /postback/{brand_id}/{token}[/{event_type}]`: one event (or one per counter), durable before the
/// `200 OK`.
pub(super) async fn receive(
    State(state): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<PostbackPath>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    // An unknown brand and a wrong token look alike, so the URL cannot be used to probe for brands.
    let brand = BrandId::parse(&path.brand_id).map_err(|_| ApiError::InvalidInboundToken)?;
    let tokens = match state.store.inbound_tokens(&brand).await {
        Ok(tokens) => tokens,
        Err(StoreError::UnknownBrand(_)) => return Err(ApiError::InvalidInboundToken),
        Err(e) => return Err(e.into()),
    };
    if !tokens.accepts(&path.token, now_ms()) {
        return Err(ApiError::InvalidInboundToken);
    }
    let events = events_from_query(path.event_type.as_deref(), query.as_deref())?;
    state.store.ingest(&brand, events).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "OK\n",
    ))
}

/// `GET /api/v1/brands/{brand_id}/inbound`: the brand's inbound URLs, ready to paste into a back end.
pub(super) async fn show(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tokens = state.store.inbound_tokens(&path.brand_id).await?;
    Ok(Json(describe(&path.brand_id, &tokens, &headers)))
}

/// `POST /api/v1/brands/{brand_id}/inbound/rotate` with `{"grace_seconds": N}` (default 0): a new token;
/// the old one keeps working for the grace period.
pub(super) async fn rotate(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::Invalid {
            code: "invalid_body",
            message: "the body must be a JSON object such as {\"grace_seconds\": 86400}".into(),
        });
    };
    let mut fields = Fields::new(&mut obj, "body");
    let grace = fields
        .optional_u64("grace_seconds", 0..=MAX_GRACE_SECONDS, "seconds")?
        .unwrap_or(0);
    fields.finish("a rotation")?;
    let tokens = state
        .store
        .rotate_inbound_token(&path.brand_id, grace * 1000)
        .await?;
    Ok(Json(describe(&path.brand_id, &tokens, &headers)))
}

/// The answer of both admin routes: the token, and URLs built on the address the caller used.
fn describe(brand: &BrandId, tokens: &InboundTokens, headers: &HeaderMap) -> Value {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    let base = format!("{scheme}://{host}/postback/{brand}/{}", tokens.current);
    let by_type: serde_json::Map<String, Value> = crate::definition::STANDARD_TRIGGERS
        .iter()
        .map(|t| {
            let example = match *t {
                "deposit" | "ftd" | "qftd" | "sale" => {
                    "?player_id={player_id}&event_id={transaction_id}&amount={amount}&currency={currency}"
                }
                _ => "?player_id={player_id}&event_id={event_id}&clickid={clickid}",
            };
            (t.to_string(), json!(format!("{base}/{t}{example}")))
        })
        .collect();
    let counters: Vec<Value> = COUNTERS
        .iter()
        .map(|(name, kind)| json!({ "param": name, "type": kind }))
        .collect();
    json!({
        "brand_id": brand,
        "token": tokens.current,
        "previous_token_valid_until_ms": tokens.previous_valid_until_ms,
        "rotated_at_ms": tokens.rotated_at_ms,
        "urls": by_type,
        "counter_url": format!("{base}?signups=1&player_id={{player_id}}&clickid={{clickid}}"),
        "counters": counters,
    })
}

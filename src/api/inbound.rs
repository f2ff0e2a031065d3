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
use utoipa::IntoParams;

use super::admin::BrandPath;
use super::extract::{ApiPath, JsonBody};
use super::{ApiError, AppState, ErrorBody};
use std::time::Instant;

use crate::brand::{BrandSecret, SecretKind};
use crate::event::EventOutcome;
use crate::ids::{BrandId, PlayerId};
use crate::inbound::{COUNTERS, click_without_player, events_from_query, names_player};
use crate::input::Fields;
use crate::limits::{Limit, TokenBucket};
use crate::store::StoreError;

/// Longest grace period a rotation may give the old token: 30 days.
const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct PostbackPath {
    /// The brand.
    brand_id: String,
    /// The brand's inbound token (not the admin token), from `GET /api/v1/brands/{brand_id}/inbound`.
    token: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct TypedPostbackPath {
    /// The brand.
    brand_id: String,
    /// The brand's inbound token.
    token: String,
    /// The event type (`registration`, `deposit`, `ftd`…); the query's `type` may say it instead.
    event_type: String,
}

/// Report events by URL
///
/// For back ends and affiliate platforms that can only call a URL: the query is the event
/// (`player_id`, `event_id`, `type`, `amount`…), or counters (`signups=1`) that each become one. Durable
/// before the `200 OK`. Copy the URLs from `GET /api/v1/brands/{brand_id}/inbound`.
#[utoipa::path(
    get,
    path = "/postback/{brand_id}/{token}",
    operation_id = "receivePostback",
    tag = "inbound",
    params(PostbackPath),
    responses(
        (status = 200, description = "Recorded: `OK`.", body = String, content_type = "text/plain"),
        (status = 401, description = "Unknown brand or wrong token, alike (`invalid_token`).", body = ErrorBody),
        (status = 422, description = "A bad query; the message names the parameter.", body = ErrorBody),
        (status = 429, description = "The player's queue is at its cap (`queue_full`).", body = ErrorBody),
    )
)]
pub(super) async fn receive(
    State(state): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<PostbackPath>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    accept(&state, &path.brand_id, &path.token, None, query).await
}

/// Report an event of one type by URL
///
/// As `/postback/{brand_id}/{token}`, with the event type in the path.
#[utoipa::path(
    get,
    path = "/postback/{brand_id}/{token}/{event_type}",
    operation_id = "receiveTypedPostback",
    tag = "inbound",
    params(TypedPostbackPath),
    responses(
        (status = 200, description = "Recorded: `OK`.", body = String, content_type = "text/plain"),
        (status = 401, description = "Unknown brand or wrong token, alike (`invalid_token`).", body = ErrorBody),
        (status = 422, description = "A bad query; the message names the parameter.", body = ErrorBody),
        (status = 429, description = "The player's queue is at its cap (`queue_full`).", body = ErrorBody),
    )
)]
pub(super) async fn receive_typed(
    State(state): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<TypedPostbackPath>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let event_type = Some(path.event_type.as_str());
    accept(&state, &path.brand_id, &path.token, event_type, query).await
}

/// Both postback routes: one event (or one per counter), durable before the `200 OK`.
async fn accept(
    state: &AppState,
    brand_id: &str,
    token: &str,
    event_type: Option<&str>,
    query: Option<String>,
) -> Result<impl IntoResponse + use<>, ApiError> {
    // An unknown brand and a wrong token look alike, so the URL cannot be used to probe for brands.
    let brand = BrandId::parse(brand_id).map_err(|_| ApiError::InvalidInboundToken)?;
    let tokens = match state.ledger.secret(&brand, SecretKind::Inbound).await {
        Ok(tokens) => tokens,
        Err(StoreError::UnknownBrand(_)) => return Err(ApiError::InvalidInboundToken),
        Err(e) => return Err(e.into()),
    };
    if !tokens.accepts(token, state.clock.now_ms()) {
        return Err(ApiError::InvalidInboundToken);
    }
    // The rate is counted per brand once the token is right: a wrong token costs nobody else's.
    let admitted = state
        .inbound_rates
        .entry(brand.clone())
        .or_insert_with(|| {
            let rate = f64::from(state.config.inbound_rate);
            TokenBucket::new(rate, rate * 2.0, Instant::now())
        })
        .take(Instant::now());
    if let Err(retry_after) = admitted {
        return Err(ApiError::RateLimited {
            limit: Limit::InboundRate,
            retry_after,
            message: format!(
                "brand {brand}'s inbound URLs take {} calls a second (--inbound-rate); slow down and retry",
                state.config.inbound_rate
            ),
        });
    }
    let player = find_player(state, &brand, query.as_deref()).await?;
    let events = events_from_query(event_type, query.as_deref(), player.as_ref())?;
    let limits = state.config.param_limits();
    events
        .iter()
        .try_for_each(|event| limits.check(event, ""))?;
    let outcomes = state.ledger.ingest(&brand, events).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        answer(&outcomes),
    ))
}

/// For a query that names no player but carries a click id: the player who registered with it.
async fn find_player(
    state: &AppState,
    brand: &BrandId,
    query: Option<&str>,
) -> Result<Option<PlayerId>, ApiError> {
    // Most postbacks name their player; only the others cost a read of the brand.
    if names_player(query) {
        return Ok(None);
    }
    let settings = match state.ledger.brand(brand).await? {
        Some(found) => found.settings,
        None => return Err(ApiError::InvalidInboundToken),
    };
    let Some(click) = click_without_player(query, &settings.click_id_params) else {
        return Ok(None);
    };
    match state.ledger.player_by_click_id(brand, &click).await? {
        Some(player) => Ok(Some(player)),
        None => {
            state.metrics.unknown_click_id(brand);
            Err(ApiError::Invalid {
                code: "unknown_click_id",
                message: format!(
                    "this call names no player and no registration of brand {brand} came with the click id {click:?}; report the registration (with this click id in its params) first, or send player_id"
                ),
            })
        }
    }
}

/// The text answer of a postback: `OK`, then what its events did, one `name: value` per line, so
/// that a person testing the URL in a browser sees at once whether anything fired.
fn answer(outcomes: &[EventOutcome]) -> String {
    let mut out = String::from("OK\n");
    let count = |f: fn(&EventOutcome) -> usize| outcomes.iter().map(f).sum::<usize>();
    out.push_str(&format!("pixels: {}\n", count(|o| o.pixels.len())));
    out.push_str(&format!("failed: {}\n", count(|o| o.failed.len())));
    out.push_str(&format!("skipped: {}\n", count(|o| o.skipped.len())));
    for outcome in outcomes {
        if outcome.duplicate {
            out.push_str(&format!("duplicate: {}\n", outcome.event_id));
        }
        if let Some(why) = &outcome.unmatched {
            out.push_str(&format!("unmatched: {why}\n"));
        }
        for failure in &outcome.failed {
            out.push_str(&format!(
                "failed {}: {}\n",
                failure.definition_id, failure.error
            ));
        }
    }
    out
}

/// A brand's inbound postback URLs
///
/// The brand's inbound token and the postback URLs built on it, one per event type, ready to paste into a
/// back end.
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/inbound",
    operation_id = "getInboundUrls",
    tag = "inbound",
    params(BrandPath),
    responses(
        (status = 200, description = "`{\"brand_id\", \"token\", \"urls\", \"counter_url\", \"counters\", …}`.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn show(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let tokens = state
        .ledger
        .secret(&path.brand_id, SecretKind::Inbound)
        .await?;
    Ok(Json(describe(&state, &path.brand_id, &tokens, &headers)))
}

/// Rotate the inbound token
///
/// A new token; the old one keeps working for `grace_seconds` (default 0, at most 30 days) while back
/// ends move over.
#[utoipa::path(
    post,
    path = "/brands/{brand_id}/inbound/rotate",
    operation_id = "rotateInboundToken",
    tag = "inbound",
    params(BrandPath),
    request_body(content = Object, description = "`{\"grace_seconds\": N}`; empty means 0.", example = json!({"grace_seconds": 86400})),
    responses(
        (status = 200, description = "The new token and URLs, as `GET …/inbound`.", body = Object),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 422, description = "A bad `grace_seconds` (`invalid_body`, or the field's code).", body = ErrorBody),
    )
)]
pub(super) async fn rotate(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let grace = rotation_grace(body, 0)?;
    let tokens = state
        .ledger
        .rotate_secret(&path.brand_id, SecretKind::Inbound, grace * 1000)
        .await?;
    Ok(Json(describe(&state, &path.brand_id, &tokens, &headers)))
}

/// The `grace_seconds` of a rotation's body (`default` when absent): how long the old secret still works.
pub(super) fn rotation_grace(body: Value, default: u64) -> Result<u64, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::Invalid {
            code: "invalid_body",
            message: "the body must be a JSON object such as {\"grace_seconds\": 86400}".into(),
        });
    };
    let mut fields = Fields::new(&mut obj, "body");
    let grace = fields
        .optional_u64("grace_seconds", 0..=MAX_GRACE_SECONDS, "seconds")?
        .unwrap_or(default);
    fields.finish("a rotation")?;
    Ok(grace)
}

/// The answer of both admin routes: the token, and URLs built on the hub's public URL (or the address the
/// caller used, when none is configured).
fn describe(state: &AppState, brand: &BrandId, tokens: &BrandSecret, headers: &HeaderMap) -> Value {
    let base = format!(
        "{}/postback/{brand}/{}",
        super::public_base(state, headers),
        tokens.current
    );
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

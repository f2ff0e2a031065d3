//! The demo: a page that plays a brand site, and a pixel receiver that shows what fired.
//!
//! It exists so a newcomer sees the whole loop in a minute without writing a line: queue a pixel, watch the
//! snippet receive it, fire it, and the receiver record the hit. It only ever touches the `demo` brand, and
//! its pixels point back at the hub (`--public-url`, or the address the page was loaded from). On a hub
//! listening on loopback that address must be a loopback one, so nobody can make demo pages request
//! another host.
//!
//! It needs no credentials, so it must not be a way to fill the store: it is on only when the hub listens
//! on loopback (or the operator turns it on, and is warned at start-up), it takes a few requests a second
//! ([`DEMO_RATE`], bursts of [`DEMO_BURST`]), and it queues at most [`DEMO_PER_PLAYER`] pending pixels a
//! player and [`DEMO_TOTAL`] in all; past these it answers `429` and writes nothing.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Query, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::extract::{ApiPath, JsonBody};
use super::{ApiError, AppState};
use crate::ids::{BrandId, PlayerId, PlayerKey};
use crate::limits::{Limit, TokenBucket};
use crate::pixel::{NewPixel, PixelBody};

/// The brand the demo page plays.
pub const DEMO_BRAND: &str = "demo";
const DEMO_HTML: &str = include_str!("../../static/demo.html");
/// Hits remembered for the page to show.
const HIT_LOG: usize = 200;
/// Demo pixels queued per second, on average: a few people clicking, not a script.
pub const DEMO_RATE: f64 = 2.0;
/// Demo pixels queued at once in a burst.
pub const DEMO_BURST: f64 = 20.0;
/// Pending demo pixels one player may have.
pub const DEMO_PER_PLAYER: usize = 20;
/// Pending demo pixels over all players.
pub const DEMO_TOTAL: u64 = 1_000;
/// A transparent 1×1 GIF: the body an image pixel receiver answers with.
const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// What the demo receiver saw, newest last; and the demo's rate.
pub struct DemoLog {
    hits: Mutex<VecDeque<Hit>>,
    counter: AtomicU64,
    rate: Mutex<TokenBucket>,
}

impl Default for DemoLog {
    fn default() -> Self {
        DemoLog {
            hits: Mutex::default(),
            counter: AtomicU64::default(),
            rate: Mutex::new(TokenBucket::new(DEMO_RATE, DEMO_BURST, Instant::now())),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Hit {
    player: String,
    n: u64,
    kind: String,
    /// The whole query string, so a pixel rendered from a definition shows its filled-in macros.
    query: String,
    at_ms: u64,
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/demo") }))
        .route("/demo", get(|| async { Html(DEMO_HTML) }))
        .route("/demo/api/pixels", post(queue_demo_pixel))
        .route("/demo/api/players/{player_id}", get(player_view))
        .route("/demo/hit", get(hit))
}

#[derive(Deserialize)]
struct PlayerPath {
    player_id: PlayerId,
}

fn demo_key(player: PlayerId) -> PlayerKey {
    PlayerKey::new(
        BrandId::parse(DEMO_BRAND).expect("a valid literal id"),
        player,
    )
}

/// Queues one pixel of the asked kind for a demo player; the pixel reports back to [`hit`].
async fn queue_demo_pixel(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let invalid = |message: &str| ApiError::Invalid {
        code: "invalid_demo_request",
        message: message.into(),
    };
    let player = body
        .get("player_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("player_id is required"))?;
    let player = PlayerId::parse(player)?;
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or("image");

    let base = url::Url::parse(&format!("{}/", super::public_base(&state, &headers)))
        .ok()
        .filter(|url| url.username().is_empty() && url.host_str().is_some())
        .ok_or_else(|| invalid("the Host header is not a host[:port]"))?;
    if state.config.listen.ip().is_loopback() && !is_loopback(&base) {
        return Err(invalid(
            "this hub listens on loopback; the demo only queues pixels for loopback hosts",
        ));
    }
    let key = demo_key(player.clone());
    admit(&state, &key).await?;
    let n = state.demo.counter.fetch_add(1, Ordering::Relaxed) + 1;
    let hit_url = |kind: &str| format!("{base}demo/hit?player={player}&n={n}&kind={kind}");
    let body = match kind {
        "image" => PixelBody::Image {
            url: hit_url("image"),
        },
        "iframe" => PixelBody::Iframe {
            url: hit_url("iframe"),
        },
        "js" => PixelBody::Js {
            code: format!("(new Image()).src = {};", json!(hit_url("js"))),
        },
        _ => return Err(invalid("kind must be image, iframe or js")),
    };
    let pixel = NewPixel {
        id: None,
        trigger: Some("demo".into()),
        ttl_seconds: Some(24 * 3600),
        tcf_vendor_id: None,
        body,
        origin: None,
    };
    let queued = state.ledger.enqueue(&key, vec![pixel]).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "pixels": queued.pixels, "n": n })),
    ))
}

/// Lets a demo request through its rate and caps, or answers 429.
async fn admit(state: &AppState, key: &PlayerKey) -> Result<(), ApiError> {
    let waited = state
        .demo
        .rate
        .lock()
        .map_err(|_| ApiError::Internal("demo rate poisoned".into()))?
        .take(Instant::now());
    if let Err(retry_after) = waited {
        return Err(ApiError::RateLimited {
            limit: Limit::Demo,
            retry_after,
            message: format!(
                "the demo queues at most {DEMO_RATE} pixels a second (bursts of {DEMO_BURST}); retry in a moment"
            ),
        });
    }
    let full = |message: String| {
        state.metrics.limit_hit(Limit::Demo);
        ApiError::QuotaExceeded {
            retry_after: None,
            message,
        }
    };
    if state.ledger.pending(key).await?.len() >= DEMO_PER_PLAYER {
        return Err(full(format!(
            "this demo player has {DEMO_PER_PLAYER} pixels pending already; open the page to fire them"
        )));
    }
    let depth = state
        .ledger
        .stats()
        .await?
        .brands
        .get(&key.brand)
        .map_or(0, |b| b.queue_depth);
    if depth >= DEMO_TOTAL {
        return Err(full(format!(
            "the demo holds {DEMO_TOTAL} pending pixels already; fire some, or purge a demo player's queue"
        )));
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The player's pending queue and the receiver's hits for that player, for the page to poll.
async fn player_view(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PlayerPath>,
) -> Result<Json<Value>, ApiError> {
    let player = path.player_id.to_string();
    let pending = state.ledger.pending(&demo_key(path.player_id)).await?;
    let hits: Vec<Hit> = state
        .demo
        .hits
        .lock()
        .map_err(|_| ApiError::Internal("demo log poisoned".into()))?
        .iter()
        .filter(|h| h.player == player)
        .cloned()
        .collect();
    Ok(Json(json!({ "pending": pending, "hits": hits })))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HitQuery {
    player: String,
    n: u64,
    kind: String,
}

/// The demo's affiliate pixel server: records the hit and answers like a real one.
async fn hit(
    State(state): State<AppState>,
    Query(q): Query<HitQuery>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Ok(mut hits) = state.demo.hits.lock() {
        if hits.len() == HIT_LOG {
            hits.pop_front();
        }
        hits.push_back(Hit {
            player: q.player,
            n: q.n,
            kind: q.kind.clone(),
            query: query.unwrap_or_default(),
            at_ms: state.clock.now_ms(),
        });
    }
    let no_store = (CACHE_CONTROL, "no-store");
    match q.kind.as_str() {
        "iframe" => ([no_store], Html("<!doctype html><title>pixel</title>")).into_response(),
        _ => ([no_store, (CONTENT_TYPE, "image/gif")], PIXEL_GIF).into_response(),
    }
}

//! The HTTP surface: the admin API under `/api/v1`, the browser-facing routes, and the demo.
//!
//! Handlers are thin: they validate input into domain types, call the store (the source of truth), and
//! shape the answer. Nothing here keeps state of its own, so any number of hub processes can serve the
//! same API in front of one shared store.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use base64::Engine;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::postback::SenderStats;
use crate::store::Store;

mod admin;
mod definitions;
mod deliveries;
mod demo;
mod error;
mod extract;
mod imports;
mod inbound;
mod ops;
mod public;

pub use public::CLIENT_JS;

pub use demo::{DEMO_BRAND, DemoLog};
pub use error::ApiError;
pub use ops::{History, spawn_sampler};

/// What every handler may use. Cheap to clone: all handles.
#[derive(Clone)]
pub struct AppState {
    /// The durable queues.
    pub store: Arc<dyn Store>,
    /// This process's live sessions.
    pub hub: Hub,
    /// Settings.
    pub config: Arc<Config>,
    /// The admin bearer token.
    pub admin_token: Arc<str>,
    /// Cancelled at shutdown; sessions watch it.
    pub shutdown: CancellationToken,
    /// Set when shutdown begins: `/readyz` answers 503 and new sessions are refused.
    pub draining: Arc<AtomicBool>,
    /// Tracks upgraded WebSocket tasks, which axum's graceful shutdown does not wait for.
    pub sessions: TaskTracker,
    /// Pixel hits seen by the demo receiver.
    pub demo: Arc<DemoLog>,
    /// This process's S2S sender counters.
    pub postbacks: Arc<SenderStats>,
    /// This process's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The last minutes of stats, for the dashboard.
    pub history: Arc<History>,
    /// Serialises scrapes of `/metrics`, whose gauges are set, then encoded.
    pub metrics_scrape: Arc<tokio::sync::Mutex<()>>,
}

/// The whole application's routes, shared by the binary and the tests.
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route(
            "/brands/{brand_id}",
            put(admin::put_brand).get(admin::get_brand),
        )
        .route(
            "/brands/{brand_id}/players/{player_id}/pixels",
            get(admin::list_pixels)
                .post(admin::enqueue)
                .delete(ops::purge),
        )
        .route(
            "/brands/{brand_id}/players/{player_id}/sessions",
            get(ops::player_sessions),
        )
        .route("/brands/{brand_id}/queue", get(ops::brand_queue))
        .route("/backlogs", get(ops::backlogs))
        .route("/stats/history", get(ops::history))
        .route(
            "/brands/{brand_id}/players/{player_id}/pixels/{pixel_id}",
            axum::routing::delete(admin::cancel),
        )
        .route(
            "/brands/{brand_id}/players/{player_id}/attribution",
            get(definitions::attribution),
        )
        .route(
            "/brands/{brand_id}/pixel-definitions",
            get(definitions::list).post(definitions::create),
        )
        .route(
            "/brands/{brand_id}/pixel-definitions/{definition_id}",
            get(definitions::get)
                .put(definitions::replace)
                .delete(definitions::delete),
        )
        .route(
            "/brands/{brand_id}/pixel-definitions/{definition_id}/preview",
            post(definitions::preview),
        )
        .route(
            "/brands/{brand_id}/pixel-definitions/{definition_id}/test",
            post(definitions::test),
        )
        .route("/brands/{brand_id}/events", post(definitions::ingest))
        .route(
            "/brands/{brand_id}/events/{event_id}",
            get(definitions::get_event),
        )
        .route("/brands/{brand_id}/deliveries", get(deliveries::list))
        .route("/brands/{brand_id}/imports", post(imports::import))
        .route("/brands/{brand_id}/inbound", get(inbound::show))
        .route("/brands/{brand_id}/inbound/rotate", post(inbound::rotate))
        .route("/stats", get(ops::stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));

    let dashboard = Router::new()
        .route("/dashboard", get(ops::dashboard))
        .route("/dashboard/dashboard.js", get(ops::dashboard_js))
        .route("/dashboard/dashboard.css", get(ops::dashboard_css))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let mut metrics = Router::new().route("/metrics", get(ops::metrics));
    if !state.config.public_metrics {
        metrics = metrics.route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    }

    let mut app = Router::new()
        .nest("/api/v1", admin)
        .merge(dashboard)
        .merge(metrics)
        .route("/healthz", get(public::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/postback/{brand_id}/{token}", get(inbound::receive))
        .route(
            "/postback/{brand_id}/{token}/{event_type}",
            get(inbound::receive),
        )
        .route("/aff-client-pixel.js", get(public::client_script))
        .route("/websocket", get(public::websocket));
    if state.config.demo {
        app = app.merge(demo::routes());
    }
    app.fallback(public::no_route)
        .method_not_allowed_fallback(public::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Wraps every request in a span named by its route template, and counts it with its latency. The
/// template, never the path: `/postback/{brand_id}/{token}` must not put a secret in a log or a label.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let span = tracing::info_span!("request", %method, %route);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .http_request(&route, method.as_str(), status, took);
    span.in_scope(|| {
        tracing::debug!(status, took_us = took.as_micros() as u64, "answered");
    });
    response
}

/// Lets a request through only with the admin token, compared in constant time: as
/// `Authorization: Bearer <token>`, or, for reads only, as the password of HTTP Basic (any user name), which
/// is how a browser opening the dashboard sends it. Basic is refused for changes, so a page elsewhere
/// cannot ride on a browser's remembered credentials to change anything.
async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    let presented = match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(token.trim().to_owned())
        }
        Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") && read_only => {
            basic_password(encoded.trim())
        }
        _ => None,
    };
    match presented {
        Some(token) if bool::from(token.as_bytes().ct_eq(state.admin_token.as_bytes())) => {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}

/// The password of an HTTP Basic credential (`base64(user:password)`).
fn basic_password(encoded: &str) -> Option<String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

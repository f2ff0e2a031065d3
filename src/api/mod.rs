//! The HTTP surface: the admin API under `/api/v1`, the browser-facing routes, and the demo.
//!
//! Handlers are thin: they validate input into domain types, call the store (the source of truth), and
//! shape the answer. Nothing here keeps state of its own, so any number of hub processes can serve the
//! same API in front of one shared store.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::Hub;
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
mod public;

pub use public::CLIENT_JS;

pub use demo::{DEMO_BRAND, DemoLog};
pub use error::ApiError;

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
    /// Tracks upgraded WebSocket tasks, which axum's graceful shutdown does not wait for.
    pub sessions: TaskTracker,
    /// Pixel hits seen by the demo receiver.
    pub demo: Arc<DemoLog>,
    /// This process's S2S sender counters.
    pub postbacks: Arc<SenderStats>,
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
            get(admin::list_pixels).post(admin::enqueue),
        )
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
        .route("/stats", get(admin::stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));

    let mut app = Router::new()
        .nest("/api/v1", admin)
        .route("/healthz", get(public::healthz))
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
        .with_state(state)
}

/// Lets a request through only with `Authorization: Bearer <admin token>`, compared in constant time.
async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if bool::from(token.as_bytes().ct_eq(state.admin_token.as_bytes())) => {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}

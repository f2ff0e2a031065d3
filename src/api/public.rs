//! Routes the browser and load balancers use: no authentication.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{
    ACCEPT_ENCODING, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE,
    ETAG, IF_NONE_MATCH, ORIGIN, USER_AGENT, VARY,
};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::ApiQuery;
use super::{ApiError, AppState, ErrorBody};
use crate::ids::BrandId;
use crate::session::{self, SessionContext, SessionLimits};

/// The browser client, served as written: readable, no build step.
pub const CLIENT_JS: &str = include_str!("../../js-client/aff-client-pixel.js");

/// Read buffer per WebSocket, kept for the session's life. Client frames are small (hello, acks, pongs);
/// tungstenite's default of 128 KiB per connection would cost 2.4 GiB at 19,000 sessions. A larger frame
/// (an ack of many ids) grows the buffer as it needs. 1 KiB instead of 4 KiB took the hub from 9.8 KiB to
/// 6.7 KiB of resident memory per idle session, and 512 bytes instead of 1 KiB from 5,912 to 5,399 bytes
/// (docs/benchmarks.md).
const WS_READ_BUFFER: usize = 512;

static CLIENT_ETAG: LazyLock<String> = LazyLock::new(|| {
    let mut hasher = DefaultHasher::new();
    CLIENT_JS.hash(&mut hasher);
    format!("\"{}-{:016x}\"", env!("CARGO_PKG_VERSION"), hasher.finish())
});

/// The client, gzip-compressed once: every brand page loads it, so 11 KiB travel as 4.
static CLIENT_JS_GZIP: LazyLock<Vec<u8>> = LazyLock::new(|| {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(CLIENT_JS.as_bytes())
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
});

/// Liveness
///
/// 200 while the hub can go on by itself, draining or not (readiness is `/readyz`). 503 `unhealthy` when
/// it cannot and must be restarted: its store failed to write (never retried), or has not answered for
/// three `--store-timeout-ms`. Answered from memory, at once, whatever the store does.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "getHealth",
    tag = "ops",
    responses(
        (status = 200, description = "`{\"status\": \"ok\"}`.", body = Object),
        (status = 503, description = "`unhealthy`: restart the hub; the message says why.", body = ErrorBody),
    )
)]
pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    match state.store_health.live() {
        Ok(()) => Json(json!({ "status": "ok" })).into_response(),
        Err(why) => super::error::service_unavailable("unhealthy", why.message),
    }
}

/// The browser client
///
/// `aff-client-pixel.js`, which brand pages load and start with `_sm_aff_client_pixel.init({…})`.
///
/// Served with a short public cache and an ETag, so brand pages revalidate cheaply and pick up a new
/// client within minutes of a deploy; gzip-compressed when the browser accepts it.
#[utoipa::path(
    get,
    path = "/aff-client-pixel.js",
    operation_id = "getClientScript",
    tag = "browser",
    responses(
        (status = 200, description = "The script.", body = String, content_type = "application/javascript"),
        (status = 304, description = "Unchanged since the `If-None-Match` ETag."),
    )
)]
pub(super) async fn client_script(headers: HeaderMap) -> Response {
    let etag = CLIENT_ETAG.as_str();
    let cache = [
        (CACHE_CONTROL, "public, max-age=300"),
        (ETAG, etag),
        (VARY, "accept-encoding"),
    ];
    let header_has = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().starts_with(token)))
    };
    if header_has(IF_NONE_MATCH, etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    let javascript = (CONTENT_TYPE, "application/javascript; charset=utf-8");
    if header_has(ACCEPT_ENCODING, "gzip") {
        let gzip = [javascript, (CONTENT_ENCODING, "gzip")];
        return (cache, gzip, CLIENT_JS_GZIP.as_slice()).into_response();
    }
    (cache, [javascript], CLIENT_JS).into_response()
}

/// What the client script captures on a brand's landing pages
///
/// The brand's `capture_params`, `capture_touch` and `capture_window_days`, for the client script on a
/// page where no player is known yet. Readable from the brand's own pages only when it lists
/// `allowed_origins` (CORS); a page from another origin is refused, so it captures nothing.
#[utoipa::path(
    get,
    path = "/client/v1/brands/{brand_id}/capture",
    operation_id = "getCaptureSettings",
    tag = "browser",
    params(super::admin::BrandPath),
    responses(
        (status = 200, description = "`{\"params\": [\"clickid\", \"utm_*\", …], \"touch\": \"last\", \"window_days\": 30}`.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 403, description = "The page's Origin is not in the brand's `allowed_origins` (`origin_not_allowed`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn capture_settings(
    State(state): State<AppState>,
    super::extract::ApiPath(path): super::extract::ApiPath<super::admin::BrandPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let brand = state.ledger.require_brand(&path.brand_id).await?;
    let settings = &brand.settings;
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    if !session::origin_allowed(&settings.allowed_origins, origin) {
        return Err(ApiError::OriginNotAllowed);
    }
    // A brand open to any origin answers any page; one with a list answers its own pages by name.
    let allow = match (settings.allowed_origins.is_empty(), origin) {
        (false, Some(origin)) => origin.to_owned(),
        _ => "*".to_owned(),
    };
    let body = Json(json!({
        "params": settings.capture_params,
        "touch": settings.capture_touch,
        "window_days": settings.capture_window_days,
    }));
    let headers = [
        (CACHE_CONTROL, "public, max-age=300".to_owned()),
        (VARY, "origin".to_owned()),
        (ACCESS_CONTROL_ALLOW_ORIGIN, allow),
    ];
    Ok((headers, body).into_response())
}

/// Longest `User-Agent` kept with a session.
const MAX_USER_AGENT: usize = 256;

/// The players' WebSocket
///
/// Upgrade to the pixel protocol: the page says hello (brand and player), the hub pushes that player's
/// pending pixels, the page fires and acknowledges each. Close codes and messages: docs/protocol.md.
#[utoipa::path(
    get,
    path = "/websocket",
    operation_id = "openWebSocket",
    tag = "browser",
    params(WebSocketQuery),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol."),
        (status = 400, description = "Not a WebSocket upgrade request.", body = String, content_type = "text/plain"),
        (status = 403, description = "The page's Origin is not in the brand's `allowed_origins` (`origin_not_allowed`).", body = ErrorBody),
        (status = 422, description = "A malformed or repeated `brand_id` (`invalid_query`).", body = ErrorBody),
        (status = 429, description = "The client's address holds `--max-connections-per-ip` connections already (`too_many_connections`).", body = ErrorBody),
        (status = 503, description = "The hub is draining for shutdown (`draining`); reconnect elsewhere.", body = ErrorBody),
    )
)]
pub(super) async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiQuery(query): ApiQuery<WebSocketQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        // The client's backoff brings it back, through the load balancer, to an instance that serves.
        return Err(ApiError::Draining);
    }
    let client_ip = state.proxies.client_ip(peer, &headers);
    // A direct client's connection is counted by the accept loop; one behind a trusted proxy is
    // counted here, by the address the proxy forwarded, for as long as the session lives.
    let slot = if state.proxies.trusts(peer.ip()) {
        Some(
            state
                .per_ip
                .acquire(client_ip)
                .ok_or(ApiError::TooManyConnections)?,
        )
    } else {
        None
    };
    let origin = headers
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(brand) = &query.brand_id {
        // A brand that does not exist is the hello's to refuse (4503), like one named only there.
        if let Some(brand) = state.ledger.brand(brand).await?
            && !session::origin_allowed(&brand.settings.allowed_origins, origin.as_deref())
        {
            return Err(ApiError::OriginNotAllowed);
        }
    }
    let config = &state.config;
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut user_agent = header(USER_AGENT);
    if let Some(ua) = &mut user_agent {
        let mut end = ua.len().min(MAX_USER_AGENT);
        while !ua.is_char_boundary(end) {
            end -= 1;
        }
        ua.truncate(end);
    }
    // Boxed until the upgrade: axum keeps the callback's captures in the connection's task for its whole
    // life, so a context captured inline would be paid twice per session.
    let ctx = Box::new(SessionContext {
        ledger: state.ledger.clone(),
        hub: state.hub.clone(),
        shutdown: state.shutdown.clone(),
        limits: SessionLimits {
            hello_timeout: config.hello_timeout(),
            write_timeout: config.write_timeout(),
            window: config.delivery_window as usize,
            heartbeat: config.heartbeat(),
            messages_per_second: config.ws_max_messages_per_second,
            sessions_per_player: config.max_sessions_per_player as usize,
        },
        client_ip,
        origin,
        url_brand: query.brand_id,
        user_agent,
        metrics: Arc::clone(&state.metrics),
        clock: Arc::clone(&state.clock),
    });
    let max_message = config.ws_max_message_bytes as usize;
    let sessions = state.sessions.clone();
    Ok(upgrade
        .read_buffer_size(WS_READ_BUFFER)
        // Write each frame straight through instead of collecting 128 KiB first.
        .write_buffer_size(0)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            ctx.metrics.ws_connected();
            let session = session::run(socket, *ctx);
            sessions.track_future(async move {
                session.await;
                drop(slot);
            })
        }))
}

/// The WebSocket URL's optional query. Other parameters are ignored: a deployment may route on its own.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WebSocketQuery {
    /// The brand the page belongs to. When given, a page from an Origin outside the brand's
    /// `allowed_origins` is refused here, before the upgrade (403), and the hello must name this brand.
    /// The browser client always sends it.
    brand_id: Option<BrandId>,
}

/// This document
///
/// The OpenAPI 3.1 description of the whole HTTP API, generated from the routes the hub runs.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "getOpenApiDocument",
    tag = "ops",
    responses((status = 200, description = "The document.", body = Object))
)]
pub(super) async fn openapi_json(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Json<utoipa::openapi::OpenApi> {
    let mut doc = super::openapi(&state);
    // Where this document was fetched from is where its operations are: `--public-url`, or the address
    // the caller used.
    let server = utoipa::openapi::server::Server::new(super::public_base(&state, &headers));
    doc.servers = Some(vec![server]);
    Json(doc)
}

pub(super) async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute(format!("{method} {}", uri.path()))
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

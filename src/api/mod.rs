//! The HTTP surface: the admin API under `/api/v1`, the browser-facing routes, and the demo.
//!
//! Handlers are thin: they validate input into domain types, call the store (the source of truth), and
//! shape the answer. Nothing here keeps state of its own, so any number of hub processes can serve the
//! same API in front of one shared store.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use base64::Engine;
use sha2::Digest;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::hub::Hub;
use crate::ids::{BrandId, DefinitionId, EventId, PixelId, PlayerId};
use crate::metrics::Metrics;
use crate::postback::SenderStats;

mod admin;
mod body;
mod definitions;
mod deliveries;
mod demo;
mod error;
mod extract;
mod imports;
mod inbound;
mod ops;
mod public;
mod security;

pub use public::CLIENT_JS;

pub use demo::{DEMO_BRAND, DemoLog};
pub use error::{ApiError, ErrorBody, ErrorCode, ErrorDetail};
pub use ops::{History, spawn_sampler};

/// What every handler may use, behind one reference count: axum clones the state for every request
/// (each middleware and the handler take their own), and one count to move is cheaper than a score of
/// handles.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Shares `shared` with every handler.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Which engine the hub runs on and, when the operator accepted it, why it may lose acknowledged
/// writes: shown in `/api/v1/stats`, so nobody takes a relaxed Redis for a durable one.
#[derive(Clone, Debug, Default)]
pub struct StoreInfo {
    /// `sled`, `memory` or `redis`.
    pub engine: &'static str,
    /// Whether what the hub acknowledges survives a crash: not on the memory engine, nor on a Redis
    /// whose settings were accepted as relaxed.
    pub durable: bool,
    /// Each setting that can lose an acknowledged write (`--store-durability relaxed`); empty when
    /// none can.
    pub relaxed: Vec<String>,
}

/// The handles [`AppState`] gives every handler.
pub struct Shared {
    /// The rules and the durable state behind them.
    pub ledger: crate::ledger::Ledger,
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
    /// Where postbacks may go; definitions are checked against it when saved.
    pub egress: Arc<crate::egress::Egress>,
    /// The store's room, deadline and failure state, for the probes (read from memory, never waiting).
    pub store_health: Arc<crate::store::StoreHealth>,
    /// This process's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The last minutes of stats, for the dashboard.
    pub history: Arc<History>,
    /// Serialises scrapes of `/metrics`, whose gauges are set, then encoded.
    pub metrics_scrape: Arc<tokio::sync::Mutex<()>>,
    /// Open connections per client address, shared with the accept loop.
    pub per_ip: Arc<crate::limits::PerIp>,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub proxies: crate::limits::TrustedProxies,
    /// Per brand, the rate of its inbound postback URLs (`--inbound-rate`): one small bucket a brand.
    pub inbound_rates: Arc<dashmap::DashMap<BrandId, crate::limits::TokenBucket>>,
    /// What "now" is, for everything the API stamps or compares with a stored time.
    pub clock: crate::clock::SharedClock,
    /// Which engine the hub runs on, and what it may lose.
    pub store_info: StoreInfo,
}

/// The whole application's routes, shared by the binary and the tests.
pub fn router(state: AppState) -> Router {
    let (mut app, _) = documented_routes(&state).split_for_parts();
    if state.config.demo_enabled() {
        app = app.merge(demo::routes());
    }
    app.fallback(public::no_route)
        .method_not_allowed_fallback(public::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), body::limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The OpenAPI document of the HTTP API, served at `/api/v1/openapi.json`. It is built from the very
/// routes the server runs, so a route cannot exist without its documentation, nor the other way round.
pub fn openapi(state: &AppState) -> utoipa::openapi::OpenApi {
    let mut doc = documented_routes(state).into_openapi();
    // An operation without `security` inherits the document's; say outright that these need none, as
    // linters and client generators expect.
    for item in doc.paths.paths.values_mut() {
        let all = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in all.into_iter().flatten() {
            operation.security.get_or_insert_with(Vec::new);
        }
    }
    doc
}

/// The document's frame; its paths come from [`documented_routes`].
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "pixelhub",
        description = "Delivers affiliate conversion pixels to players' browsers, exactly once, over \
WebSocket. The admin API (`/api/v1`) takes the admin token as `Authorization: Bearer <token>` (reads \
also accept it as the HTTP Basic password), or a brand API key, which acts for its own brand only. Errors are `{\"error\":{\"code\",\"message\"}}`. The \
WebSocket protocol is in docs/protocol.md."
    ),
    // Ids that only path parameters name are not collected from the routes; they are listed here.
    components(schemas(ErrorBody, BrandId, PlayerId, PixelId, DefinitionId, EventId)),
    tags(
        (name = "brands", description = "Brands and their settings."),
        (name = "queues", description = "Pixels queued by hand, a player's queue, its sessions."),
        (name = "definitions", description = "Pixel definitions: which events fire which pixels."),
        (name = "events", description = "Events the brand reports, and a player's attribution."),
        (name = "deliveries", description = "The delivery report: every pixel and postback and what became of it."),
        (name = "imports", description = "Bulk upload of events as CSV or JSON lines."),
        (name = "inbound", description = "Events reported by GET postback URLs."),
        (name = "ops", description = "Queue figures, backlogs, metrics, health and the dashboard."),
        (name = "browser", description = "What a brand's page loads: the client script and its WebSocket."),
    )
)]
struct ApiDoc;

/// Every route but the demo's, each with its OpenAPI operation (`routes!` reads both from the handler's
/// `#[utoipa::path]`), and the admin token required where the API says so.
fn documented_routes(state: &AppState) -> OpenApiRouter<AppState> {
    let admin = OpenApiRouter::new()
        .routes(routes!(
            admin::put_brand,
            admin::get_brand,
            admin::patch_brand
        ))
        .routes(routes!(admin::list_pixels, admin::enqueue, ops::purge))
        .routes(routes!(admin::cancel))
        .routes(routes!(ops::player_sessions))
        .routes(routes!(ops::brand_queue))
        .routes(routes!(ops::backlogs))
        .routes(routes!(ops::stats))
        .routes(routes!(ops::history))
        .routes(routes!(definitions::attribution))
        .routes(routes!(definitions::params_seen))
        .routes(routes!(definitions::list, definitions::create))
        .routes(routes!(
            definitions::get,
            definitions::replace,
            definitions::patch,
            definitions::delete
        ))
        .routes(routes!(definitions::preview))
        .routes(routes!(definitions::test))
        .routes(routes!(definitions::ingest))
        .routes(routes!(definitions::get_event))
        .routes(routes!(deliveries::list))
        .routes(routes!(imports::import))
        .routes(routes!(inbound::show))
        .routes(routes!(inbound::rotate))
        .routes(routes!(security::create_key, security::list_keys))
        .routes(routes!(security::revoke_key))
        .routes(routes!(security::signing_secret))
        .routes(routes!(security::rotate_signing_secret));
    let dashboard = OpenApiRouter::new()
        .routes(routes!(ops::dashboard))
        .routes(routes!(ops::dashboard_js))
        .routes(routes!(ops::dashboard_css));
    let mut metrics = OpenApiRouter::new().routes(routes!(ops::metrics));
    if !state.config.public_metrics {
        metrics = secured(metrics, state);
    }
    let routes = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", secured(admin, state))
        .merge(secured(dashboard, state))
        .merge(metrics)
        .routes(routes!(public::openapi_json))
        .routes(routes!(public::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(inbound::receive))
        .routes(routes!(inbound::receive_typed))
        .routes(routes!(public::client_script))
        .routes(routes!(public::capture_settings))
        .routes(routes!(public::websocket));
    with_store_answers(routes)
}

/// Says in the document what any route that uses the store may answer when the store cannot: `503
/// store_unavailable` (it did not answer in time, or failed), and for writes `507 insufficient_storage`
/// (the disk is under its free-space floor). Added here once, like the 401 and 403 of [`secured`].
fn with_store_answers(mut routes: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    use utoipa::openapi::{ResponseBuilder, content::ContentBuilder};
    let answer = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    let unavailable = answer(
        "The store did not answer within `--store-timeout-ms`, or failed (`store_unavailable`); retry later.",
    );
    let full = answer(
        "The disk is under `--store-min-free-mb` (or the store at `--store-max-bytes`): the write was refused (`insufficient_storage`; of an import, the batches before it are in, and re-running is safe). Reads go on; retry once there is room.",
    );
    // Routes that never touch the store.
    const STORELESS: [&str; 7] = [
        "/healthz",
        "/readyz",
        "/aff-client-pixel.js",
        "/api/v1/openapi.json",
        "/dashboard",
        "/dashboard/dashboard.js",
        "/dashboard/dashboard.css",
    ];
    for (path, item) in routes.get_openapi_mut().paths.paths.iter_mut() {
        if STORELESS.contains(&path.as_str()) {
            continue;
        }
        let writes = [&mut item.post, &mut item.put, &mut item.patch];
        for operation in writes.into_iter().flatten() {
            operation
                .responses
                .responses
                .insert("507".into(), full.clone().into());
        }
        let all = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for operation in all.into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("503".into())
                .or_insert_with(|| unavailable.clone().into());
        }
    }
    routes
}

/// The base of URLs the API hands out: `--public-url` when set, else the scheme and `Host` the request
/// came with (`X-Forwarded-Proto: https` from a proxy counts). No trailing slash.
pub(crate) fn public_base(state: &AppState, headers: &axum::http::HeaderMap) -> String {
    if let Some(base) = &state.config.public_url {
        return base.clone();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// Routes without a brand in the path that a brand API key may read, answered for its own brand only: the
/// dashboard and the figures it shows, so a brand's own people can watch their pixels without the admin
/// token.
const SCOPED_TO_THE_KEY: [&str; 6] = [
    "/stats",
    "/stats/history",
    "/backlogs",
    "/dashboard",
    "/dashboard/dashboard.js",
    "/dashboard/dashboard.css",
];

/// Who made a request that [`authorize`] let through; handlers of [`SCOPED_TO_THE_KEY`] routes answer a
/// brand key for its brand only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The admin token: everything.
    Admin,
    /// A brand API key: that brand only.
    Brand(BrandId),
}

impl Caller {
    /// Whether the caller may see `brand`.
    pub fn sees(&self, brand: &BrandId) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Brand(own) => own == brand,
        }
    }
}

/// Whether a brand API key may use the route `path` (relative to `/api/v1`) with `method`: the routes
/// of its own brand (checked by [`authorize`]), except changing the brand's settings and managing keys,
/// which need the admin token. Everything else (stats, backlogs over all brands, metrics, the dashboard)
/// is the admin's.
fn brand_key_may(method: &Method, path: &str) -> bool {
    if SCOPED_TO_THE_KEY.contains(&path) {
        return true;
    }
    let Some(rest) = path.strip_prefix("/brands/{brand_id}") else {
        return false;
    };
    !(rest.starts_with("/api-keys")
        || (rest.is_empty() && (*method == Method::PUT || *method == Method::PATCH)))
}

/// Puts `routes` behind [`authorize`], and says so in their documentation: each operation gets the
/// security schemes it accepts (`brand_key` where [`brand_key_may`]) and its 401 and 403 answers.
fn secured(routes: OpenApiRouter<AppState>, state: &AppState) -> OpenApiRouter<AppState> {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
    use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};

    let mut routes = routes.route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let doc = routes.get_openapi_mut();
    let schemes = doc.components.get_or_insert_with(Default::default);
    schemes.add_security_scheme(
        "admin_token",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    schemes.add_security_scheme(
        "admin_basic",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
    );
    schemes.add_security_scheme(
        "brand_key",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    let answer = |description: &str| -> RefOr<utoipa::openapi::Response> {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
            .into()
    };
    let unauthorized = answer("No admin token or brand API key, or a wrong one (`unauthorized`).");
    let forbidden = answer(
        "A brand API key of another brand, or on a route that needs the admin token (`forbidden`).",
    );
    let scheme = |name: &str| SecurityRequirement::new(name, Vec::<String>::new());
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            (Method::GET, &mut item.get),
            (Method::HEAD, &mut item.head),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let mut security = vec![scheme("admin_token")];
            // Basic only for reads, as `authorize` enforces.
            if matches!(method, Method::GET | Method::HEAD) {
                security.push(scheme("admin_basic"));
            }
            let responses = &mut operation.responses.responses;
            responses.insert("401".into(), unauthorized.clone());
            responses.insert("403".into(), forbidden.clone());
            if brand_key_may(&method, path) {
                security.push(scheme("brand_key"));
            }
            operation.security = Some(security);
        }
    }
    routes
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
    let limit = response.extensions().get::<crate::limits::Limit>().copied();
    if let Some(limit) = limit.or_else(|| {
        response
            .extensions()
            .get::<ErrorCode>()
            .and_then(|code| crate::limits::Limit::of_error_code(code.0))
    }) {
        state.metrics.limit_hit(limit);
    }
    state
        .metrics
        .http_request(&route, method.as_str(), status, took);
    span.in_scope(|| {
        tracing::debug!(status, took_us = took.as_micros() as u64, "answered");
    });
    response
}

/// Lets a request through with the admin token, or with an API key of the brand in the path where
/// [`brand_key_may`] allows one. Secrets are compared in constant time and never logged.
///
/// The admin token comes as `Authorization: Bearer <token>` or, for reads only, as the password of HTTP
/// Basic (any user name), which is how a browser opening the dashboard sends it. Basic is refused for
/// changes, so a page elsewhere cannot ride on a browser's remembered credentials to change anything.
async fn authorize(
    State(state): State<AppState>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let read_only = matches!(*request.method(), Method::GET | Method::HEAD);
    // The Basic password (a browser opening the dashboard) is taken for reads only.
    let presented = match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(token.trim().to_owned())
        }
        Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") && read_only => {
            basic_password(encoded.trim())
        }
        _ => None,
    };
    let Some(presented) = presented else {
        return Err(ApiError::Unauthorized);
    };
    // Digests of equal length, so the comparison's time tells nothing, not even the token's length.
    let digest = |text: &str| sha2::Sha256::digest(text.as_bytes());
    let mut request = request;
    if bool::from(digest(&presented).ct_eq(&digest(&state.admin_token))) {
        request.extensions_mut().insert(Caller::Admin);
        return Ok(next.run(request).await);
    }
    let key = match crate::api_key::id_of(&presented) {
        Some(id) => state.ledger.api_key(id).await?,
        _ => None,
    };
    let Some(key) = key.filter(|key| crate::api_key::matches(key, &presented)) else {
        return Err(ApiError::Unauthorized);
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    if !brand_key_may(request.method(), route) {
        return Err(ApiError::Forbidden(
            "brand API keys cannot use this route; it needs the admin token".into(),
        ));
    }
    if SCOPED_TO_THE_KEY.contains(&route) {
        request
            .extensions_mut()
            .insert(Caller::Brand(key.brand_id.clone()));
        return Ok(next.run(request).await);
    }
    // A path that is not UTF-8 names no brand, so no key may use it.
    let path_brand = params.as_ref().ok().and_then(|params| {
        params
            .iter()
            .find_map(|(name, value)| (name == "brand_id").then_some(value))
    });
    if path_brand != Some(key.brand_id.as_str()) {
        return Err(ApiError::Forbidden(format!(
            "this API key acts for brand {} only",
            key.brand_id
        )));
    }
    Ok(next.run(request).await)
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

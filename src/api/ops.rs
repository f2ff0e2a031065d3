//! What ops look at: stats and their recent history, backlogs, live sessions, `/metrics`, `/readyz`,
//! and the dashboard that shows them.
//!
//! Queue figures come from the store (shared by every process, exact); session figures and counters are
//! this process's. One function, [`overview`], reads both, so `/api/v1/stats`, the dashboard's history
//! and the Prometheus gauges can never tell different stories.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;
use utoipa::{IntoParams, ToSchema};

use super::admin::{BrandPath, PlayerPath, require_brand};
use super::extract::{ApiPath, ApiQuery};
use super::{ApiError, AppState, Caller, ErrorBody};
use crate::hub::BrandSessions;
use crate::hub::SessionInfo;
use crate::ids::BrandId;
use crate::metrics::{self, BrandGauges};
use crate::store::{Backlog, BrandQueue, ProcessPresence, Purged};

/// How often the dashboard's history is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How much history is kept: the dashboard's chart window.
const HISTORY_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Longest a readiness probe waits for the store's write and flush.
const READY_PROBE: Duration = Duration::from_secs(2);
/// Most backlogs one request lists.
const MAX_BACKLOGS: usize = 1000;

/// One brand in [`Overview`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BrandOverview {
    /// Its queue (from the store).
    #[serde(flatten)]
    pub queue: BrandQueue,
    /// Its sessions here.
    #[serde(flatten)]
    pub sessions: BrandSessions,
    /// Pixels and postbacks of the brand fired in this process since it started.
    pub fired_total: u64,
    /// Pixels and postbacks of the brand that failed without firing in this process since it started:
    /// definitions that could not render, pixels the browser reported as failed.
    pub failed_total: u64,
}

/// The hub at a glance.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Overview {
    /// Pending client pixels over all brands.
    pub queue_depth: u64,
    /// Sessions in this process; on a shared store, in every live process.
    pub sessions: usize,
    /// Players with a session in this process; on a shared store, summed over every live process (a
    /// player with tabs on two processes counts in each).
    pub players_online: usize,
    /// Every registered brand.
    pub brands: BTreeMap<BrandId, BrandOverview>,
    /// On a shared store, every live process with its sessions (whose sums the figures above are);
    /// empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessPresence>,
}

/// Every live process of a shared store, this one's figures as of now (its last report may be 2 s
/// old); empty on a store of one process.
async fn processes(state: &AppState) -> Result<Vec<ProcessPresence>, ApiError> {
    if !state.ledger.shared() {
        return Ok(Vec::new());
    }
    let mut all = state.ledger.presences().await?;
    all.retain(|p| p.id != state.hub.process_id());
    all.push(state.hub.presence(state.clock.now_ms()));
    all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Ok(all)
}

/// Sessions per brand: this process's, or on a shared store every live process's, summed.
fn sessions_per_brand(
    state: &AppState,
    processes: &[ProcessPresence],
) -> BTreeMap<BrandId, BrandSessions> {
    if processes.is_empty() {
        return state.hub.brand_sessions();
    }
    let mut sum: BTreeMap<BrandId, BrandSessions> = BTreeMap::new();
    for process in processes {
        for (brand, counts) in &process.brands {
            let total = sum.entry(brand.clone()).or_default();
            total.sessions += counts.sessions;
            total.players_online += counts.players_online;
        }
    }
    sum
}

/// Reads the overview from the store and this process (every process, on a shared store).
async fn overview(state: &AppState) -> Result<(Overview, crate::store::StoreStats), ApiError> {
    let mut stats = state.ledger.stats().await?;
    let processes = processes(state).await?;
    let mut online = sessions_per_brand(state, &processes);
    let fired = state.metrics.fired_per_brand();
    let failed = state.metrics.failed_per_brand();
    let brands: BTreeMap<BrandId, BrandOverview> = std::mem::take(&mut stats.brands)
        .into_iter()
        .map(|(brand, queue)| {
            let overview = BrandOverview {
                queue,
                sessions: online.remove(&brand).unwrap_or_default(),
                fired_total: fired.get(brand.as_str()).copied().unwrap_or(0),
                failed_total: failed.get(brand.as_str()).copied().unwrap_or(0),
            };
            (brand, overview)
        })
        .collect();
    let sessions = if processes.is_empty() {
        state.hub.session_count()
    } else {
        processes.iter().map(|p| p.sessions).sum()
    };
    let overview = Overview {
        queue_depth: stats.queue_depth,
        sessions,
        players_online: brands.values().map(|b| b.sessions.players_online).sum(),
        brands,
        processes,
    };
    Ok((overview, stats))
}

fn draining(state: &AppState) -> bool {
    state.draining.load(Ordering::Acquire)
}

/// Queue figures
///
/// Pending pixels over all brands and per brand (exact, from the store), the oldest pending pixel, this
/// process's sessions and fired counts, S2S sender figures and whether the hub is draining.
#[utoipa::path(
    get,
    path = "/stats",
    operation_id = "getStats",
    tag = "ops",
    responses((status = 200, description = "`{\"queue_depth\", \"brands\": {…}, \"sessions\", \"players_online\", \"postbacks\", \"draining\", \"now_ms\", …}`.", body = Object))
)]
pub(super) async fn stats(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let (mut overview, store) = overview(&state).await?;
    if let Caller::Brand(own) = &caller {
        // A brand key sees its own brand, and totals that are its brand's; nothing of the others.
        overview.brands.retain(|id, _| id == own);
        let figures = overview.brands.get(own).cloned().unwrap_or_default();
        overview.queue_depth = figures.queue.queue_depth;
        overview.sessions = figures.sessions.sessions;
        overview.players_online = figures.sessions.players_online;
        let mut brands = serde_json::Map::new();
        let mut value = serde_json::to_value(&figures).expect("figures serialise");
        value["flagged_definitions"] = json!(super::deliveries::flagged(&state, own).await?.len());
        brands.insert(own.to_string(), value);
        return Ok(Json(json!({
            "brand_id": own,
            "queue_depth": overview.queue_depth,
            "sessions": overview.sessions,
            "players_online": overview.players_online,
            "draining": draining(&state),
            "now_ms": state.clock.now_ms(),
            "brands": brands,
        })));
    }
    let mut brands = serde_json::Map::new();
    for (brand, figures) in &overview.brands {
        let mut value = serde_json::to_value(figures).expect("figures serialise");
        let flagged = super::deliveries::flagged(&state, brand).await?.len();
        value["flagged_definitions"] = json!(flagged);
        brands.insert(brand.to_string(), value);
    }
    Ok(Json(json!({
        "queue_depth": overview.queue_depth,
        "sessions": overview.sessions,
        "players_online": overview.players_online,
        "draining": draining(&state),
        "now_ms": state.clock.now_ms(),
        "expired_total": store.expired_total,
        "store": {
            "engine": state.store_info.engine,
            "durable": state.store_info.durable,
            "relaxed": state.store_info.relaxed,
            "flushes": store.flushes,
            "flushed_writes": store.flushed_writes,
        },
        "s2s": state.postbacks.snapshot(),
        "brands": brands,
        "processes": overview.processes,
    })))
}

/// One brand in a [`Sample`].
#[derive(Clone, Debug, PartialEq, Serialize)]
struct BrandSample {
    queue_depth: u64,
    sessions: usize,
    fired_total: u64,
}

/// The hub at one moment, for the dashboard's chart and rates.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct Sample {
    at_ms: u64,
    queue_depth: u64,
    sessions: usize,
    fired_total: u64,
    s2s_failed_total: u64,
    brands: BTreeMap<BrandId, BrandSample>,
}

impl Sample {
    /// The sample as a brand key sees it: its brand's figures, and totals that are its brand's.
    fn only(&mut self, brand: &BrandId) {
        self.brands.retain(|id, _| id == brand);
        let own = self.brands.get(brand);
        self.queue_depth = own.map_or(0, |b| b.queue_depth);
        self.sessions = own.map_or(0, |b| b.sessions);
        self.fired_total = own.map_or(0, |b| b.fired_total);
        self.s2s_failed_total = 0;
    }
}

/// The last minutes of samples, oldest first; kept in memory (a restart starts a fresh chart).
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let oldest_kept = sample
            .at_ms
            .saturating_sub(HISTORY_WINDOW.as_millis() as u64);
        while samples.front().is_some_and(|s| s.at_ms < oldest_kept) {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    fn since(&self, since_ms: u64) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples
            .iter()
            .filter(|s| s.at_ms > since_ms)
            .cloned()
            .collect()
    }
}

async fn sample(state: &AppState) -> Result<Sample, ApiError> {
    let (overview, _) = overview(state).await?;
    let brands: BTreeMap<BrandId, BrandSample> = overview
        .brands
        .into_iter()
        .map(|(brand, b)| {
            let sample = BrandSample {
                queue_depth: b.queue.queue_depth,
                sessions: b.sessions.sessions,
                fired_total: b.fired_total,
            };
            (brand, sample)
        })
        .collect();
    Ok(Sample {
        at_ms: state.clock.now_ms(),
        queue_depth: overview.queue_depth,
        sessions: overview.sessions,
        fired_total: brands.values().map(|b| b.fired_total).sum(),
        s2s_failed_total: state.postbacks.snapshot().failed,
        brands,
    })
}

/// Starts the sampler that feeds the dashboard's history, on `tracker`, until shutdown.
pub fn spawn_sampler(state: AppState, tracker: &TaskTracker) {
    tracker.spawn(async move {
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match sample(&state).await {
                Ok(sample) => state.history.push(sample),
                Err(e) => tracing::warn!(error = ?e, "could not sample the stats"),
            }
        }
    });
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    /// Only samples taken after this Unix millisecond, to poll for what is new.
    since_ms: Option<u64>,
}

/// Queue figures over the last 15 minutes
///
/// A sample every 2 s, kept by this process (the dashboard's chart).
#[utoipa::path(
    get,
    path = "/stats/history",
    operation_id = "getStatsHistory",
    tag = "ops",
    params(HistoryQuery),
    responses(
        (status = 200, description = "`{\"interval_ms\", \"window_ms\", \"now_ms\", \"samples\": [...]}`.", body = Object),
        (status = 422, description = "An unknown or bad query parameter (`invalid_query`).", body = ErrorBody),
    )
)]
pub(super) async fn history(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut samples = state.history.since(query.since_ms.unwrap_or(0));
    if let Caller::Brand(own) = &caller {
        for sample in &mut samples {
            sample.only(own);
        }
    }
    Ok(Json(json!({
        "interval_ms": SAMPLE_EVERY.as_millis() as u64,
        "window_ms": HISTORY_WINDOW.as_millis() as u64,
        "now_ms": state.clock.now_ms(),
        "samples": samples,
    })))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct BacklogQuery {
    /// Only this brand's players.
    brand: Option<BrandId>,
    /// How many, 1 to 1000 (default 20).
    limit: Option<usize>,
}

fn limit_of(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(20) {
        n @ 1..=MAX_BACKLOGS => Ok(n),
        _ => Err(ApiError::Invalid {
            code: "invalid_query",
            message: format!("limit must be 1 to {MAX_BACKLOGS}"),
        }),
    }
}

/// The biggest backlogs
///
/// The players with the most pending pixels, over all brands or one, biggest first.
#[utoipa::path(
    get,
    path = "/backlogs",
    operation_id = "listBacklogs",
    tag = "ops",
    params(BacklogQuery),
    responses(
        (status = 200, description = "`{\"players\": [...]}`.", body = inline(BacklogsAnswer)),
        (status = 422, description = "An unknown or bad query parameter (`invalid_query`).", body = ErrorBody),
    )
)]
pub(super) async fn backlogs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<BacklogQuery>,
) -> Result<Json<BacklogsAnswer>, ApiError> {
    let limit = limit_of(query.limit)?;
    let brand = match (&caller, query.brand) {
        (Caller::Brand(own), Some(asked)) if &asked != own => {
            return Err(ApiError::Forbidden(format!(
                "this API key acts for brand {own} only"
            )));
        }
        (Caller::Brand(own), _) => Some(own.clone()),
        (Caller::Admin, asked) => asked,
    };
    let players = state.ledger.backlogs(brand.as_ref(), limit).await?;
    Ok(Json(BacklogsAnswer { players }))
}

/// The answer of [`backlogs`].
#[derive(Serialize, ToSchema)]
pub(super) struct BacklogsAnswer {
    /// Biggest first.
    players: Vec<Backlog>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitQuery {
    /// How many backlogs, 1 to 1000 (default 20).
    limit: Option<usize>,
}

/// A brand's queue
///
/// Depth, oldest pending pixel, sessions and the biggest backlogs of one brand.
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/queue",
    operation_id = "getBrandQueue",
    tag = "ops",
    params(BrandPath, LimitQuery),
    responses(
        (status = 200, description = "`{\"brand_id\", \"queue_depth\", \"oldest_queued_at_ms\", \"oldest_age_ms\", \"sessions\", \"players_online\", \"fired_total\", \"biggest_backlogs\"}`.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 422, description = "An unknown or bad query parameter (`invalid_query`).", body = ErrorBody),
    )
)]
pub(super) async fn brand_queue(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    ApiQuery(query): ApiQuery<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit_of(query.limit)?;
    require_brand(&state, &path.brand_id).await?;
    let (overview, _) = overview(&state).await?;
    let figures = overview
        .brands
        .get(&path.brand_id)
        .cloned()
        .unwrap_or_default();
    let backlogs = state.ledger.backlogs(Some(&path.brand_id), limit).await?;
    let mut value = serde_json::to_value(&figures).expect("figures serialise");
    value["brand_id"] = json!(path.brand_id);
    value["oldest_age_ms"] = json!(
        figures
            .queue
            .oldest_queued_at_ms
            .map(|at| state.clock.now_ms().saturating_sub(at))
    );
    value["biggest_backlogs"] = json!(backlogs);
    Ok(Json(value))
}

/// A player's live sessions
///
/// The player's sessions in the process that answers: tabs and devices, each with its user agent, origin
/// and when it connected.
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/players/{player_id}/sessions",
    operation_id = "listPlayerSessions",
    tag = "queues",
    params(PlayerPath),
    responses(
        (status = 200, description = "`{\"sessions\": [...]}`.", body = inline(SessionsAnswer)),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn player_sessions(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PlayerPath>,
) -> Result<Json<SessionsAnswer>, ApiError> {
    require_brand(&state, &path.brand_id).await?;
    let key = path.key();
    let sessions = match state.ledger.sessions_of(&key).await? {
        // Every process's, on a shared store.
        Some(infos) => {
            let mut sessions: Vec<SessionInfo> = infos
                .iter()
                .filter_map(|info| serde_json::from_str(info).ok())
                .collect();
            sessions.sort_by_key(|s| s.connected_since_ms);
            sessions
        }
        None => state.hub.sessions_of(&key),
    };
    Ok(Json(SessionsAnswer { sessions }))
}

/// The answer of [`player_sessions`].
#[derive(Serialize, ToSchema)]
pub(super) struct SessionsAnswer {
    /// Oldest first.
    sessions: Vec<SessionInfo>,
}

/// Purge a player's queue
///
/// Cancels the player's whole queue (recorded `cancelled`), except pixels a browser holds right now,
/// which may be firing.
#[utoipa::path(
    delete,
    path = "/brands/{brand_id}/players/{player_id}/pixels",
    operation_id = "purgePlayerQueue",
    tag = "queues",
    params(PlayerPath),
    responses(
        (status = 200, description = "How many were cancelled, and kept because in flight.", body = Purged),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn purge(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PlayerPath>,
) -> Result<Json<Purged>, ApiError> {
    let key = path.key();
    let purged = state.ledger.purge(&key).await?;
    tracing::info!(player = %key.player, cancelled = purged.cancelled, in_flight = purged.in_flight, "queue purged");
    Ok(Json(purged))
}

/// Prometheus metrics
///
/// OpenMetrics text: counters as they are, gauges read from the store and hub now. Every metric is in
/// docs/metrics.md. Needs the admin token unless the hub runs with `--public-metrics true`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "ops",
    responses((status = 200, description = "The exposition.", body = String, content_type = "application/openmetrics-text"))
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (overview, _) = overview(&state).await?;
    let now = state.clock.now_ms();
    // Sessions are this process's: Prometheus sums them over the processes it scrapes. The queue's
    // figures are the store's, the same from every process of a shared store.
    let local = state.hub.brand_sessions();
    let gauges = overview.brands.iter().map(|(brand, b)| {
        let here = local.get(brand).copied().unwrap_or_default();
        let oldest_age = b
            .queue
            .oldest_queued_at_ms
            .map_or(0, |at| now.saturating_sub(at));
        let figures = BrandGauges {
            queue_depth: b.queue.queue_depth,
            oldest_age: Duration::from_millis(oldest_age),
            sessions: here.sessions as u64,
            players_online: here.players_online as u64,
            players: b.queue.players,
            outbox: b.queue.outbox,
            events_today: b.queue.events_today,
            waiting_consent: b.queue.waiting_consent,
        };
        (brand, figures)
    });
    // One scrape at a time: the gauges are cleared and set, then encoded.
    let text = {
        let _one = state.metrics_scrape.lock().await;
        state.metrics.set_gauges(
            gauges,
            state.postbacks.snapshot().in_flight,
            draining(&state),
        );
        state.metrics.encode()
    };
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// Readiness
///
/// 200 while the hub takes traffic: `{"status": "ready"}`, or `{"status": "degraded", "error": …}` while
/// the disk is under its free-space floor (growing writes get 507; sessions, reads, acks and deletes go
/// on, so the hub stays in rotation). 503 while it drains for shutdown, or when the store cannot write
/// (`store_unavailable`, `store_failed`).
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "getReadiness",
    tag = "ops",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`, or `{\"status\": \"degraded\", \"error\": {\"code\": \"insufficient_storage\", …}}` while the disk is under its floor.", body = Object),
        (status = 503, description = "`draining`, `store_failed` or `store_unavailable`; the message says why.", body = ErrorBody),
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let unready =
        |code: &'static str, message: &str| super::error::service_unavailable(code, message.into());
    if draining(&state) {
        return unready(
            "draining",
            "the hub is shutting down; send traffic elsewhere",
        );
    }
    let health = &state.store_health;
    if let Err(why) = health.live() {
        return unready(why.code, &why.message);
    }
    // Still ready: sessions fire and ack what is queued, reads and deletes work, and taking the only
    // engine out of rotation would stop all of that. The answer says what is refused, and why.
    if let Some(why) = health.full() {
        let degraded = json!({
            "status": "degraded",
            "error": {
                "code": "insufficient_storage",
                "message": format!("{why}: writes that grow the store are refused (507); reads, sessions, acks and deletes go on"),
            },
        });
        return Json(degraded).into_response();
    }
    match tokio::time::timeout(READY_PROBE, state.ledger.check_writable()).await {
        Ok(Ok(())) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness probe: the store cannot write");
            unready("store_unavailable", "the store cannot take writes")
        }
        Err(_) => unready(
            "store_unavailable",
            "the store did not confirm a write in time",
        ),
    }
}

/// The dashboard's files, served as written.
const DASHBOARD_HTML: &str = include_str!("../../static/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../../static/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../static/dashboard.css");

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// The ops dashboard
///
/// Live queue depth per brand, sessions, fired/min, backlogs and a brand drill-down. A browser sends the
/// admin token as the Basic password.
#[utoipa::path(get, path = "/dashboard",
    operation_id = "getDashboard", tag = "ops", responses((status = 200, description = "The page.", body = String, content_type = "text/html")))]
pub(super) async fn dashboard() -> Response {
    static_file("text/html; charset=utf-8", DASHBOARD_HTML)
}

/// The dashboard's script
#[utoipa::path(get, path = "/dashboard/dashboard.js",
    operation_id = "getDashboardJs", tag = "ops", responses((status = 200, description = "The script.", body = String, content_type = "application/javascript")))]
pub(super) async fn dashboard_js() -> Response {
    static_file("application/javascript; charset=utf-8", DASHBOARD_JS)
}

/// The dashboard's style sheet
#[utoipa::path(get, path = "/dashboard/dashboard.css",
    operation_id = "getDashboardCss", tag = "ops", responses((status = 200, description = "The style sheet.", body = String, content_type = "text/css")))]
pub(super) async fn dashboard_css() -> Response {
    static_file("text/css; charset=utf-8", DASHBOARD_CSS)
}

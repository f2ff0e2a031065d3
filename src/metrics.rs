//! Prometheus metrics: what ops graph and alert on, served at `GET /metrics`.
//!
//! Every metric is named `pixelhub_<subsystem>_<name>` and documented in `docs/metrics.md`; the test
//! `every_metric_is_documented` keeps the two in step. Labels are bounded on purpose: a brand (created
//! by the admin API), a pixel kind, a close reason, a route template, a status; never a player, a pixel
//! or anything a client can choose freely.
//!
//! Counters and histograms are updated where things happen (store, sessions, sender, HTTP layer). Gauges
//! that describe shared state (queue depth, oldest pending pixel, sessions online) are set from the
//! source of truth at scrape time by [`Metrics::set_gauges`], so they are exact and can never drift.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::ids::BrandId;

/// The exposition's content type: OpenMetrics text, which Prometheus reads natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label set of per-brand gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrandLabel {
    /// The brand id.
    pub brand: String,
}

/// Label set of pixel counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PixelLabels {
    /// The brand id.
    pub brand: String,
    /// `image`, `iframe`, `script`, `js`, `facebook` or `s2s`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    reason: &'static str,
    enforced: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    result: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    brand: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenderLabels {
    brand: String,
    reason: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrowserLabels {
    brand: String,
    kind: String,
    result: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    brand: String,
    quota: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// What happened to a pixel or postback, as the pixel counters count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelEvent {
    /// Written to a player's queue or to the postback outbox.
    Queued,
    /// Sent to a browser for the first time.
    Delivered,
    /// Sent to a browser again (the session that had it ended without an ack).
    Redelivered,
    /// Acknowledged by a browser, or answered 2xx by a postback endpoint; with the time since it was queued.
    Fired(Duration),
    /// Its TTL ran out.
    Expired,
    /// Cancelled or purged through the API.
    Cancelled,
    /// Removed unfired to keep the player's queue under its cap.
    Dropped,
    /// A postback that ran out of attempts or was refused for good.
    Failed,
    /// Held back by a browser without the player's consent: it waits in the queue.
    Withheld,
}

/// How a postback attempt ended, for `pixelhub_s2s_attempts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// 2xx.
    Fired,
    /// Another attempt is scheduled.
    Retry,
    /// No further attempt.
    Failed,
}

/// The upkeep work counted in `pixelhub_upkeep_items_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upkeep {
    /// Pixels whose TTL ran out, dropped from their queue.
    Expired,
    /// Final pixel and postback records forgotten after the report retention.
    RecordsForgotten,
    /// Event records forgotten after the report retention.
    EventsForgotten,
}

/// Scrape-time figures of one brand, from the store and this process's hub.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrandGauges {
    /// Pending client pixels, exact.
    pub queue_depth: u64,
    /// Age of the oldest pending client pixel; zero when the queue is empty.
    pub oldest_age: Duration,
    /// This process's sessions of the brand.
    pub sessions: u64,
    /// This process's distinct players of the brand online.
    pub players_online: u64,
    /// Players with an attribution context.
    pub players: u64,
    /// Postbacks in the outbox.
    pub outbox: u64,
    /// New events today, in this process.
    pub events_today: u64,
    /// Pending client pixels waiting for consent, exact.
    pub waiting_consent: u64,
}

/// The process's metrics. One per [`crate::Application`], so tests running several hubs in one process
/// see only their own.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    queue_depth: Family<BrandLabel, Gauge>,
    queue_oldest_age: Family<BrandLabel, Gauge<f64, AtomicU64>>,
    sessions_online: Family<BrandLabel, Gauge>,
    players_online: Family<BrandLabel, Gauge>,
    draining: Gauge,
    pixels_queued: Family<PixelLabels, Counter>,
    pixels_delivered: Family<PixelLabels, Counter>,
    pixels_redelivered: Family<PixelLabels, Counter>,
    pixels_fired: Family<PixelLabels, Counter>,
    pixels_expired: Family<PixelLabels, Counter>,
    pixels_cancelled: Family<PixelLabels, Counter>,
    pixels_dropped: Family<PixelLabels, Counter>,
    pixels_failed: Family<PixelLabels, Counter>,
    pixels_withheld: Family<PixelLabels, Counter>,
    fire_latency: Family<KindLabel, Histogram>,
    events: Family<EventLabels, Counter>,
    ws_connects: Counter,
    ws_closes: Family<ReasonLabel, Counter>,
    tokens_refused: Family<TokenLabels, Counter>,
    limits_hit: Family<LimitLabel, Counter>,
    tls_reloads: Family<ResultLabel, Counter>,
    s2s_attempts: Family<AttemptLabels, Counter>,
    s2s_refused: Family<ReasonLabel, Counter>,
    quota_refused: Family<QuotaLabels, Counter>,
    unknown_click_ids: Family<BrandLabel, Counter>,
    render_failures: Family<RenderLabels, Counter>,
    browser_reports: Family<BrowserLabels, Counter>,
    brand_players: Family<BrandLabel, Gauge>,
    brand_outbox: Family<BrandLabel, Gauge>,
    brand_events_today: Family<BrandLabel, Gauge>,
    brand_waiting_consent: Family<BrandLabel, Gauge>,
    store_free: Gauge,
    store_size: Gauge,
    store_refused: Family<ReasonLabel, Counter>,
    store_timeouts: Counter,
    store_unreachable: Counter,
    store_failed: Gauge,
    s2s_duration: Histogram,
    s2s_in_flight: Gauge,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram>,
    fsync_duration: Histogram,
    commit_batch: Histogram,
    upkeep_runs: Counter,
    upkeep_failures: Counter,
    upkeep_duration: Histogram,
    upkeep_items: Family<ActionLabel, Counter>,
    /// The fired counter again, per brand only: a Family cannot be read back.
    fired_by_brand: dashmap::DashMap<String, u64>,
    /// Pixels and postbacks that failed without firing (render failures, browser errors), per brand,
    /// for the dashboard.
    failed_by_brand: dashmap::DashMap<String, u64>,
}

/// Buckets of request, attempt and fsync durations: 0.1 ms to ~26 s, ×4 apart.
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 4.0, 10)
}

/// Buckets of enqueue-to-fire latency: from a player online now (under a second) to one who comes back
/// weeks later.
const FIRE_LATENCY_BUCKETS: [f64; 14] = [
    0.05,
    0.25,
    1.0,
    5.0,
    30.0,
    120.0,
    600.0,
    1800.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86_400.0,
    7.0 * 86_400.0,
    30.0 * 86_400.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pixelhub");
        let m = Metrics {
            queue_depth: Family::default(),
            queue_oldest_age: Family::default(),
            sessions_online: Family::default(),
            players_online: Family::default(),
            draining: Gauge::default(),
            pixels_queued: Family::default(),
            pixels_delivered: Family::default(),
            pixels_redelivered: Family::default(),
            pixels_fired: Family::default(),
            pixels_expired: Family::default(),
            pixels_cancelled: Family::default(),
            pixels_dropped: Family::default(),
            pixels_failed: Family::default(),
            pixels_withheld: Family::default(),
            fire_latency: Family::new_with_constructor(|| {
                Histogram::new(FIRE_LATENCY_BUCKETS.iter().copied())
            }),
            events: Family::default(),
            ws_connects: Counter::default(),
            ws_closes: Family::default(),
            tokens_refused: Family::default(),
            limits_hit: Family::default(),
            tls_reloads: Family::default(),
            s2s_attempts: Family::default(),
            s2s_refused: Family::default(),
            quota_refused: Family::default(),
            unknown_click_ids: Family::default(),
            render_failures: Family::default(),
            browser_reports: Family::default(),
            brand_players: Family::default(),
            brand_outbox: Family::default(),
            brand_events_today: Family::default(),
            brand_waiting_consent: Family::default(),
            store_free: Gauge::default(),
            store_size: Gauge::default(),
            store_refused: Family::default(),
            store_timeouts: Counter::default(),
            store_unreachable: Counter::default(),
            store_failed: Gauge::default(),
            s2s_duration: Histogram::new(duration_buckets()),
            s2s_in_flight: Gauge::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            fsync_duration: Histogram::new(duration_buckets()),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            upkeep_runs: Counter::default(),
            upkeep_failures: Counter::default(),
            upkeep_duration: Histogram::new(duration_buckets()),
            upkeep_items: Family::default(),
            fired_by_brand: dashmap::DashMap::new(),
            failed_by_brand: dashmap::DashMap::new(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "queue_depth",
            "Pending client pixels per brand (exact, read from the store at scrape time)",
            m.queue_depth.clone(),
        );
        r.register_with_unit(
            "queue_oldest_pending_age",
            "Age of the oldest pending client pixel per brand; 0 when the queue is empty",
            Unit::Seconds,
            m.queue_oldest_age.clone(),
        );
        r.register(
            "sessions_online",
            "WebSocket sessions past their hello, per brand, in this process",
            m.sessions_online.clone(),
        );
        r.register(
            "sessions_players_online",
            "Distinct players with at least one session, per brand, in this process",
            m.players_online.clone(),
        );
        r.register(
            "lifecycle_draining",
            "1 while the process drains for shutdown (readyz answers 503), else 0",
            m.draining.clone(),
        );
        let pixel_counters = [
            (
                "pixels_queued",
                "Pixels and postbacks written to a queue or the outbox",
                &m.pixels_queued,
            ),
            (
                "pixels_delivered",
                "Client pixels sent to a browser for the first time",
                &m.pixels_delivered,
            ),
            (
                "pixels_redelivered",
                "Client pixels sent to a browser again after an unacknowledged delivery",
                &m.pixels_redelivered,
            ),
            (
                "pixels_fired",
                "Pixels acknowledged by a browser, and postbacks answered 2xx",
                &m.pixels_fired,
            ),
            (
                "pixels_expired",
                "Client pixels whose TTL ran out before they fired",
                &m.pixels_expired,
            ),
            (
                "pixels_cancelled",
                "Pixels and postbacks cancelled or purged through the API",
                &m.pixels_cancelled,
            ),
            (
                "pixels_dropped",
                "Client pixels removed unfired to keep a player's queue under its cap (policy drop-oldest)",
                &m.pixels_dropped,
            ),
            (
                "pixels_failed",
                "Postbacks that ran out of attempts or were refused for good",
                &m.pixels_failed,
            ),
            (
                "pixels_withheld",
                "Client pixels a browser held back for want of the player's consent (brand setting consent); each waits in the queue",
                &m.pixels_withheld,
            ),
        ];
        for (name, help, family) in pixel_counters {
            r.register(name, help, family.clone());
        }
        r.register_with_unit(
            "pixels_fire_latency",
            "Time from queueing to firing (browser ack, or postback 2xx), per kind",
            Unit::Seconds,
            m.fire_latency.clone(),
        );
        r.register(
            "events_ingested",
            "Events taken in per brand; result is new or duplicate",
            m.events.clone(),
        );
        r.register(
            "websocket_connects",
            "WebSocket upgrades accepted",
            m.ws_connects.clone(),
        );
        r.register(
            "websocket_closes",
            "WebSocket connections ended (with or without a hello), by close reason; client_gone when the client closed or vanished",
            m.ws_closes.clone(),
        );
        r.register(
            "websocket_player_tokens_refused",
            "Hellos whose player token failed (reason missing, malformed, bad_signature or expired); enforced=false when the brand does not require tokens yet and the session went on",
            m.tokens_refused.clone(),
        );
        r.register(
            "limits_hit",
            "Requests, connections and WebSocket sessions refused or closed at a configured limit, by limit (docs/metrics.md lists them with their answers)",
            m.limits_hit.clone(),
        );
        r.register(
            "tls_reloads",
            "Reloads of the TLS certificate and key after a change or SIGHUP; result=failed kept the previous certificate",
            m.tls_reloads.clone(),
        );
        r.register(
            "s2s_attempts",
            "Postback attempts; result is fired, retry or failed, outcome what the endpoint did",
            m.s2s_attempts.clone(),
        );
        r.register(
            "s2s_refused",
            "Postbacks refused because their destination is not a public address (reason loopback, private, link_local, shared_address_space, multicast, unspecified or reserved); each failed for good",
            m.s2s_refused.clone(),
        );
        r.register_with_unit(
            "s2s_attempt_duration",
            "Time of a postback attempt: until its status and the first bytes of a text answer, or the failure",
            Unit::Seconds,
            m.s2s_duration.clone(),
        );
        r.register(
            "s2s_in_flight",
            "Postback attempts running now in this process",
            m.s2s_in_flight.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request (to the response head), by route template and method",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register_with_unit(
            "store_fsync_duration",
            "Duration of one group-commit flush (fsync)",
            Unit::Seconds,
            m.fsync_duration.clone(),
        );
        r.register(
            "store_commit_batch_size",
            "Writers made durable by one flush: the group-commit batch",
            m.commit_batch.clone(),
        );
        r.register(
            "quota_refused",
            "Event batches refused (429 quota_exceeded) because the brand is at a quota: events_per_day, players or outbox",
            m.quota_refused.clone(),
        );
        r.register(
            "render_failures",
            "Definitions that matched an event but could not render a valid pixel for its values (a failed row in the delivery report), by reason and kind",
            m.render_failures.clone(),
        );
        r.register(
            "browser_reports",
            "Pixels a browser reported on when it acknowledged them: result fired (with a note such as fb_image_fallback) or failed, by kind and reason",
            m.browser_reports.clone(),
        );
        r.register(
            "unknown_click_ids",
            "Inbound calls that named no player and a click id no registration of the brand came with (422 unknown_click_id)",
            m.unknown_click_ids.clone(),
        );
        r.register(
            "brand_players",
            "Players whose attribution context the hub keeps, per brand (against --quota-players)",
            m.brand_players.clone(),
        );
        r.register(
            "brand_outbox",
            "Postbacks in the outbox, per brand (against --quota-outbox)",
            m.brand_outbox.clone(),
        );
        r.register(
            "brand_waiting_consent",
            "Pending client pixels waiting for the player's consent, per brand (brand setting consent)",
            m.brand_waiting_consent.clone(),
        );
        r.register(
            "brand_events_today",
            "New events reported today (UTC) per brand, counted by this process since it started (against --quota-events-per-day)",
            m.brand_events_today.clone(),
        );
        r.register_with_unit(
            "store_free",
            "Free space of the filesystem holding the store, as last measured (four times a second)",
            Unit::Bytes,
            m.store_free.clone(),
        );
        r.register_with_unit(
            "store_size",
            "Space the store takes on disk, as last measured",
            Unit::Bytes,
            m.store_size.clone(),
        );
        r.register(
            "store_writes_refused",
            "Writes that would grow the store refused (507) because free space is under --store-min-free-mb (reason min_free) or the store is at --store-max-bytes (max_bytes)",
            m.store_refused.clone(),
        );
        r.register(
            "store_timeouts",
            "Store calls that did not answer within --store-timeout-ms (the caller got 503 store_unavailable)",
            m.store_timeouts.clone(),
        );
        r.register(
            "store_unreachable",
            "Store calls that found a shared engine (Redis) unreachable or refusing work (the caller got 503 store_unavailable; nothing of the call was acknowledged)",
            m.store_unreachable.clone(),
        );
        r.register(
            "store_failed",
            "1 once the store has failed to write (never retried: the hub stops and restarts from disk); 0 otherwise",
            m.store_failed.clone(),
        );
        r.register(
            "upkeep_runs",
            "Background upkeep passes (TTL expiry, report retention)",
            m.upkeep_runs.clone(),
        );
        r.register(
            "upkeep_failures",
            "Upkeep passes that failed (the next pass retries)",
            m.upkeep_failures.clone(),
        );
        r.register_with_unit(
            "upkeep_duration",
            "Duration of one upkeep pass",
            Unit::Seconds,
            m.upkeep_duration.clone(),
        );
        r.register(
            "upkeep_items",
            "Entries handled by upkeep: expired pixels, forgotten records, forgotten events",
            m.upkeep_items.clone(),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Always 1; the version is the label", build);
        Metrics { registry, ..m }
    }

    /// The exposition, in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Sets the scrape-time gauges from the source of truth; brands not listed are removed.
    pub fn set_gauges<'a>(
        &self,
        brands: impl IntoIterator<Item = (&'a BrandId, BrandGauges)>,
        s2s_in_flight: u64,
        draining: bool,
    ) {
        self.queue_depth.clear();
        self.queue_oldest_age.clear();
        self.sessions_online.clear();
        self.players_online.clear();
        self.brand_players.clear();
        self.brand_outbox.clear();
        self.brand_events_today.clear();
        self.brand_waiting_consent.clear();
        for (brand, g) in brands {
            let label = BrandLabel {
                brand: brand.to_string(),
            };
            self.queue_depth
                .get_or_create(&label)
                .set(g.queue_depth as i64);
            self.queue_oldest_age
                .get_or_create(&label)
                .set(g.oldest_age.as_secs_f64());
            self.sessions_online
                .get_or_create(&label)
                .set(g.sessions as i64);
            self.players_online
                .get_or_create(&label)
                .set(g.players_online as i64);
            self.brand_players
                .get_or_create(&label)
                .set(g.players as i64);
            self.brand_outbox.get_or_create(&label).set(g.outbox as i64);
            self.brand_events_today
                .get_or_create(&label)
                .set(g.events_today as i64);
            self.brand_waiting_consent
                .get_or_create(&label)
                .set(g.waiting_consent as i64);
        }
        self.s2s_in_flight.set(s2s_in_flight as i64);
        self.draining.set(i64::from(draining));
    }

    /// Counts what one call did to pixels or postbacks of one brand: each `(kind, event)` is one pixel
    /// of that kind going through that event. A lease or an ack moves many pixels at once, so every
    /// counter is looked up (its labels built, its family's lock taken) once per kind and event, not
    /// once per pixel; each fired one's latency is still observed.
    pub fn pixels(&self, brand: &BrandId, transitions: &[(String, PixelEvent)]) {
        let mut fired = 0;
        for group in transitions.chunk_by(|a, b| a.0 == b.0) {
            let kind = group[0].0.as_str();
            let mut counts: Vec<(&Family<PixelLabels, Counter>, u64)> = Vec::new();
            let mut latencies = Vec::new();
            for (_, event) in group {
                if let PixelEvent::Fired(latency) = event {
                    latencies.push(latency.as_secs_f64());
                }
                let family = self.pixel_family(*event);
                match counts.iter_mut().find(|(f, _)| std::ptr::eq(*f, family)) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((family, 1)),
                }
            }
            if !latencies.is_empty() {
                let histogram = self
                    .fire_latency
                    .get_or_create(&KindLabel { kind: kind.into() });
                latencies.iter().for_each(|&s| histogram.observe(s));
            }
            fired += latencies.len() as u64;
            let labels = PixelLabels {
                brand: brand.to_string(),
                kind: kind.into(),
            };
            for (family, n) in counts {
                family.get_or_create(&labels).inc_by(n);
            }
        }
        if fired > 0 {
            match self.fired_by_brand.get_mut(brand.as_str()) {
                Some(mut count) => *count += fired,
                None => *self.fired_by_brand.entry(brand.to_string()).or_insert(0) += fired,
            }
        }
    }

    /// The counter family an event of a pixel's counts in.
    fn pixel_family(&self, event: PixelEvent) -> &Family<PixelLabels, Counter> {
        match event {
            PixelEvent::Queued => &self.pixels_queued,
            PixelEvent::Delivered => &self.pixels_delivered,
            PixelEvent::Redelivered => &self.pixels_redelivered,
            PixelEvent::Fired(_) => &self.pixels_fired,
            PixelEvent::Expired => &self.pixels_expired,
            PixelEvent::Cancelled => &self.pixels_cancelled,
            PixelEvent::Dropped => &self.pixels_dropped,
            PixelEvent::Failed => &self.pixels_failed,
            PixelEvent::Withheld => &self.pixels_withheld,
        }
    }

    /// Pixels and postbacks fired in this process since it started, per brand: the dashboard's fired/min.
    pub fn fired_per_brand(&self) -> std::collections::BTreeMap<String, u64> {
        self.fired_by_brand
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect()
    }

    /// Render failures and browser errors in this process since it started, per brand: the dashboard's
    /// "Failed" column.
    pub fn failed_per_brand(&self) -> std::collections::BTreeMap<String, u64> {
        self.failed_by_brand
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect()
    }

    /// Counts an event batch's events of one brand.
    pub fn events(&self, brand: &BrandId, new: u64, duplicate: u64) {
        for (result, n) in [("new", new), ("duplicate", duplicate)] {
            if n > 0 {
                self.events
                    .get_or_create(&EventLabels {
                        brand: brand.to_string(),
                        result,
                    })
                    .inc_by(n);
            }
        }
    }

    /// Counts an accepted WebSocket upgrade.
    pub fn ws_connected(&self) {
        self.ws_connects.inc();
    }

    /// Counts a session's end by its close reason (`client_gone` when the client left first).
    pub fn ws_closed(&self, reason: &'static str) {
        self.ws_closes.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a hello whose player token failed; `enforced` says whether the session was refused for it.
    pub fn player_token_refused(&self, reason: &'static str, enforced: bool) {
        let enforced = if enforced { "true" } else { "false" };
        self.tokens_refused
            .get_or_create(&TokenLabels { reason, enforced })
            .inc();
    }

    /// Counts a client stopped by one of the hub's limits.
    pub fn limit_hit(&self, limit: crate::limits::Limit) {
        let limit = limit.as_str();
        self.limits_hit.get_or_create(&LimitLabel { limit }).inc();
    }

    /// Counts a TLS certificate reload.
    pub fn tls_reload(&self, ok: bool) {
        let result = if ok { "reloaded" } else { "failed" };
        self.tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts a postback attempt; `outcome` is a bounded word such as `http_2xx` or `timeout`.
    pub fn s2s_attempt(&self, result: AttemptResult, outcome: &'static str, took: Duration) {
        let result = match result {
            AttemptResult::Fired => "fired",
            AttemptResult::Retry => "retry",
            AttemptResult::Failed => "failed",
        };
        self.s2s_attempts
            .get_or_create(&AttemptLabels { result, outcome })
            .inc();
        self.s2s_duration.observe(took.as_secs_f64());
    }

    /// Counts a postback refused by the egress guard; `reason` is one of [`crate::egress::Reason`]'s labels.
    pub fn s2s_refused(&self, reason: &'static str) {
        self.s2s_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts an event batch refused at one of its brand's quotas.
    pub fn quota_refused(&self, brand: &BrandId, quota: &'static str) {
        self.quota_refused
            .get_or_create(&QuotaLabels {
                brand: brand.to_string(),
                quota,
            })
            .inc();
    }

    /// Counts a definition that could not render for an event.
    pub fn render_failure(&self, brand: &BrandId, reason: &'static str, kind: &'static str) {
        *self.failed_by_brand.entry(brand.to_string()).or_insert(0) += 1;
        self.render_failures
            .get_or_create(&RenderLabels {
                brand: brand.to_string(),
                reason,
                kind,
            })
            .inc();
    }

    /// Counts what a browser reported about a pixel of `kind` it acknowledged.
    pub fn browser_report(
        &self,
        brand: &BrandId,
        kind: &str,
        report: &crate::delivery::BrowserReport,
    ) {
        if !report.fired {
            *self.failed_by_brand.entry(brand.to_string()).or_insert(0) += 1;
        }
        self.browser_reports
            .get_or_create(&BrowserLabels {
                brand: brand.to_string(),
                kind: kind.to_owned(),
                result: if report.fired { "fired" } else { "failed" },
                reason: report.reason.clone(),
            })
            .inc();
    }

    /// Counts an inbound call refused because no registration came with its click id.
    pub fn unknown_click_id(&self, brand: &BrandId) {
        self.unknown_click_ids
            .get_or_create(&BrandLabel {
                brand: brand.to_string(),
            })
            .inc();
    }

    /// Sets the store's room gauges from a measurement.
    pub fn store_room(&self, free_bytes: u64, store_bytes: u64) {
        self.store_free.set(free_bytes as i64);
        self.store_size.set(store_bytes as i64);
    }

    /// Counts a growing write refused for want of room; `reason` is `min_free` or `max_bytes`.
    pub fn store_write_refused(&self, reason: &'static str) {
        self.store_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a store call past its deadline.
    pub fn store_timeout(&self) {
        self.store_timeouts.inc();
    }

    /// Counts a store call that found a shared engine unreachable.
    pub fn store_unreachable(&self) {
        self.store_unreachable.inc();
    }

    /// Marks the store failed.
    pub fn store_failed(&self) {
        self.store_failed.set(1);
    }

    /// Counts an answered HTTP request; `route` must be a route template, never a concrete path. A
    /// method outside the standard ones is counted as `other`, so a client cannot mint series.
    pub fn http_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        const STANDARD: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
        ];
        let method = if STANDARD.contains(&method) {
            method
        } else {
            "other"
        };
        self.http_requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                method: method.into(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.into(),
                method: method.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records one group-commit flush and the writers it made durable.
    pub fn flushed(&self, took: Duration, writers: usize) {
        self.fsync_duration.observe(took.as_secs_f64());
        self.commit_batch.observe(writers as f64);
    }

    /// Records one upkeep pass.
    pub fn upkeep_pass(&self, took: Duration, ok: bool) {
        self.upkeep_runs.inc();
        if !ok {
            self.upkeep_failures.inc();
        }
        self.upkeep_duration.observe(took.as_secs_f64());
    }

    /// Counts upkeep work.
    pub fn upkeep(&self, what: Upkeep, n: u64) {
        if n == 0 {
            return;
        }
        let action = match what {
            Upkeep::Expired => "expired",
            Upkeep::RecordsForgotten => "records_forgotten",
            Upkeep::EventsForgotten => "events_forgotten",
        };
        self.upkeep_items
            .get_or_create(&ActionLabel { action })
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family, with one series each, so the exposition lists them all.
    fn exercised() -> Metrics {
        let m = Metrics::new();
        let brand = BrandId::parse("b").unwrap();
        m.set_gauges([(&brand, BrandGauges::default())], 0, false);
        let events = [
            PixelEvent::Queued,
            PixelEvent::Delivered,
            PixelEvent::Redelivered,
            PixelEvent::Fired(Duration::from_secs(1)),
            PixelEvent::Expired,
            PixelEvent::Cancelled,
            PixelEvent::Dropped,
            PixelEvent::Failed,
            PixelEvent::Withheld,
        ];
        m.pixels(&brand, &events.map(|e| ("image".to_owned(), e)));
        m.events(&brand, 1, 1);
        m.ws_connected();
        m.ws_closed("shutdown");
        m.s2s_attempt(AttemptResult::Fired, "http_2xx", Duration::ZERO);
        m.s2s_refused("loopback");
        m.quota_refused(&brand, "outbox");
        m.store_room(1, 1);
        m.store_write_refused("min_free");
        m.store_timeout();
        m.http_request("/healthz", "GET", 200, Duration::ZERO);
        m.flushed(Duration::ZERO, 1);
        m.upkeep_pass(Duration::ZERO, true);
        m.upkeep(Upkeep::Expired, 1);
        m
    }

    #[test]
    fn every_metric_is_documented() {
        let docs = include_str!("../docs/metrics.md");
        let text = exercised().encode();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() >= 29, "{names:?}");
        for name in names {
            assert!(name.starts_with("pixelhub_"), "{name}");
            let counter = format!("`{name}_total`");
            assert!(
                docs.contains(&format!("`{name}`")) || docs.contains(&counter),
                "{name} is not in docs/metrics.md"
            );
        }
    }

    #[test]
    fn a_call_that_moved_many_pixels_counts_each_one() {
        let m = Metrics::new();
        let brand = BrandId::parse("b").unwrap();
        let second = Duration::from_secs(1);
        let moved = [
            ("image", PixelEvent::Fired(second)),
            ("image", PixelEvent::Fired(second * 3)),
            ("js", PixelEvent::Delivered),
            ("image", PixelEvent::Delivered),
            ("image", PixelEvent::Fired(second)),
        ];
        m.pixels(&brand, &moved.map(|(k, e)| (k.to_owned(), e)));
        m.pixels(&brand, &[("js".to_owned(), PixelEvent::Delivered)]);
        let text = m.encode();
        for line in [
            r#"pixelhub_pixels_fired_total{brand="b",kind="image"} 3"#,
            r#"pixelhub_pixels_delivered_total{brand="b",kind="image"} 1"#,
            r#"pixelhub_pixels_delivered_total{brand="b",kind="js"} 2"#,
            r#"pixelhub_pixels_fire_latency_seconds_count{kind="image"} 3"#,
            r#"pixelhub_pixels_fire_latency_seconds_sum{kind="image"} 5.0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert_eq!(m.fired_per_brand().get("b"), Some(&3));

        // Each event reaches its own family: one call with every event a different number of times.
        let m = Metrics::new();
        let every = [
            ("queued", PixelEvent::Queued),
            ("delivered", PixelEvent::Delivered),
            ("redelivered", PixelEvent::Redelivered),
            ("fired", PixelEvent::Fired(second)),
            ("expired", PixelEvent::Expired),
            ("cancelled", PixelEvent::Cancelled),
            ("dropped", PixelEvent::Dropped),
            ("failed", PixelEvent::Failed),
        ];
        let moved: Vec<(String, PixelEvent)> = every
            .iter()
            .enumerate()
            .flat_map(|(i, &(_, event))| std::iter::repeat_n(("js".to_owned(), event), i + 1))
            .collect();
        m.pixels(&brand, &moved);
        let text = m.encode();
        for (i, (family, _)) in every.iter().enumerate() {
            let line = format!(
                r#"pixelhub_pixels_{family}_total{{brand="b",kind="js"}} {}"#,
                i + 1
            );
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn clients_cannot_mint_label_values() {
        let m = Metrics::new();
        m.http_request("unmatched", "FOOBAR", 405, Duration::ZERO);
        let text = m.encode();
        assert!(!text.contains("FOOBAR"));
        assert!(text.contains("method=\"other\""));
    }
}

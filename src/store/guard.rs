//! The store as the rest of the hub sees it: every call bounded in time, writes that would grow the store
//! refused before the disk is full, and a failed engine reported (and the hub stopped), never a hang.
//!
//! # Why
//! An engine call can block for ever: on a full disk sled's flush waited without end for a write that had
//! failed, and every later call queued behind it, so probes, sessions and even SIGTERM froze. And an
//! engine that runs out of disk cannot be trusted afterwards: sled's error is sticky, and a write the
//! operating system failed to make durable may have been dropped from its cache, so a retry proves
//! nothing.
//!
//! # What [`GuardedStore`] does
//! - **A deadline on every call** (`--store-timeout-ms`): past it the caller gets
//!   [`StoreError::Unavailable`] (`503 store_unavailable`) and the hub goes on; the engine's work, on its
//!   own blocking thread, finishes or not. The monitor also probes the engine every second with a small
//!   write and flush; when neither the probe nor anything else got through for three deadlines, the hub
//!   is unhealthy (`/healthz` 503) so an orchestrator restarts it. (Only the probe clears that clock:
//!   some calls are answered from the engine's memory and prove nothing about its disk.)
//! - **Room before the disk is full**: a monitor measures the free space of the data dir's filesystem and
//!   the store's size four times a second. Under the floor (`--store-min-free-mb`) or at the cap
//!   (`--store-max-bytes`), calls that grow the store (queueing, events, definitions, brands, keys) are
//!   refused with [`StoreError::Full`] (`507 insufficient_storage`), counted; reads, acks, cancels, purges,
//!   postback attempts and the sweeper go on, so the hub keeps serving and frees what it can. When there
//!   is room again, writes resume by themselves.
//! - **A failed engine stops the hub**: the first [`StoreError::Failed`] (an I/O error, a failed flush)
//!   is never retried. Every later call is answered `503` at once, `/healthz` turns unhealthy, and
//!   [`StoreHealth::fatal`] fires, on which the server shuts down and exits non-zero; its next start
//!   recovers from what is on disk (and, if the disk is still full, refuses writes until there is room).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::catalog::{self, Applied, Catalog, Change, Entry};
use super::queues::{DueEntry, Mode, Queues, Scope, Work};
use super::{
    Backlog, DefinitionHealth, DeliveryPage, DeliveryQuery, LaneDue, Store, StoreError, StoreStats,
};
use crate::api_key::ApiKeyRecord;
use crate::definition::Definition;
use crate::event::PlayerContext;
use crate::ids::{BrandId, DefinitionId, EventId, PlayerId, PlayerKey, SessionId};
use crate::metrics::Metrics;

/// How often the room is measured.
const MEASURE_EVERY: Duration = Duration::from_millis(250);
/// Measurements between two probes of the engine (a small write and flush): one a second.
const PROBE_EVERY_MEASURES: u32 = 4;

/// Why the hub cannot go on by itself: `/healthz`'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unhealthy {
    /// `store_failed` or `store_unavailable`.
    pub code: &'static str,
    /// A sentence for the operator.
    pub message: String,
}

/// The guard's settings, from the config.
#[derive(Clone, Debug)]
pub struct GuardOptions {
    /// Longest a caller waits for one store call.
    pub timeout: Duration,
    /// Free bytes the data dir's filesystem must keep; under it, growing writes are refused.
    pub min_free_bytes: u64,
    /// Most bytes the store may take on disk; `None` for no cap.
    pub max_bytes: Option<u64>,
    /// Whether a store that completes no write for three deadlines makes the hub unhealthy, so an
    /// orchestrator restarts it: yes for an embedded engine (stuck in this process, which a restart
    /// clears), no for a shared one (Redis down is not this process's fault; restarting every hub would
    /// close every session and fix nothing, while `/readyz` says 503 and sessions wait for it).
    pub restart_when_stuck: bool,
}

/// How much room the store has, as last measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    /// Bytes an unprivileged writer can still use on the data dir's filesystem.
    pub free_bytes: u64,
    /// Bytes the store takes on disk.
    pub store_bytes: u64,
}

/// Measures the store's [`Room`]; run on a blocking thread (a statvfs on a hung disk blocks too).
pub type Measure = Arc<dyn Fn() -> std::io::Result<Room> + Send + Sync>;

/// What the probes and the metrics read: the store's room, whether it answers, whether it failed. Read
/// from memory only, so `/healthz` answers at once whatever the engine does.
pub struct StoreHealth {
    options: GuardOptions,
    /// The last measurement, and why growing writes are refused (`None`: they are not).
    room: Mutex<(Option<Room>, Option<Refusal>)>,
    failed: OnceLock<String>,
    fatal: CancellationToken,
    /// Since when calls time out with no answer in between; `None` while the engine answers. tokio's clock,
    /// so tests can pause it.
    unanswered_since: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

/// Why growing writes are refused now.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Refusal {
    /// The metric label: `min_free` or `max_bytes`.
    reason: &'static str,
    message: String,
}

impl StoreHealth {
    fn new(options: GuardOptions, metrics: Arc<Metrics>) -> Self {
        StoreHealth {
            options,
            room: Mutex::new((None, None)),
            failed: OnceLock::new(),
            fatal: CancellationToken::new(),
            unanswered_since: Mutex::new(None),
            metrics,
        }
    }

    /// Why the store failed, once it has; the hub is then stopping.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Cancelled when the store fails: the server shuts down on it.
    pub fn fatal(&self) -> CancellationToken {
        self.fatal.clone()
    }

    /// Why writes that grow the store are refused now, if they are.
    pub fn full(&self) -> Option<String> {
        self.lock_room().1.as_ref().map(|r| r.message.clone())
    }

    /// The last measurement of the store's room.
    pub fn room(&self) -> Option<Room> {
        self.lock_room().0
    }

    /// How long calls have gone unanswered (each timing out), if they have.
    pub fn unanswered_for(&self) -> Option<Duration> {
        self.lock_unanswered().map(|since| since.elapsed())
    }

    /// Liveness: an error when the hub cannot recover by itself and must be restarted (the store failed,
    /// or has not answered its probe for three deadlines).
    pub fn live(&self) -> Result<(), Unhealthy> {
        if let Some(cause) = self.failed() {
            return Err(Unhealthy {
                code: "store_failed",
                message: format!(
                    "the store failed ({cause}); a failed write is never retried: the hub is stopping, restart it"
                ),
            });
        }
        match self.unanswered_for() {
            Some(stuck) if self.options.restart_when_stuck && stuck >= self.options.timeout * 3 => {
                Err(Unhealthy {
                    code: "store_unavailable",
                    message: format!(
                        "the store has not completed a write for {} s; restart the hub",
                        stuck.as_secs()
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    fn lock_room(&self) -> std::sync::MutexGuard<'_, (Option<Room>, Option<Refusal>)> {
        self.room.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_unanswered(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.unanswered_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a measurement: decides whether growing writes are refused, and sets the gauges.
    fn measured(&self, room: Room) {
        let refusal = if room.free_bytes < self.options.min_free_bytes {
            Some(Refusal {
                reason: "min_free",
                message: format!(
                    "the disk holding the store has {} free, under the floor of {} (--store-min-free-mb)",
                    mib(room.free_bytes),
                    mib(self.options.min_free_bytes)
                ),
            })
        } else {
            self.options
                .max_bytes
                .filter(|&cap| room.store_bytes >= cap)
                .map(|cap| Refusal {
                    reason: "max_bytes",
                    message: format!(
                        "the store takes {} on disk, at its cap of {} (--store-max-bytes)",
                        mib(room.store_bytes),
                        mib(cap)
                    ),
                })
        };
        self.metrics.store_room(room.free_bytes, room.store_bytes);
        let mut state = self.lock_room();
        match (&state.1, &refusal) {
            (None, Some(r)) => {
                tracing::warn!(why = %r.message, "store: refusing writes that grow it")
            }
            (Some(_), None) => tracing::info!("store: room again, writes resume"),
            _ => {}
        }
        *state = (Some(room), refusal);
    }

    /// Refuses a growing write while there is no room.
    fn check_room(&self) -> Result<(), StoreError> {
        match &self.lock_room().1 {
            Some(refusal) => {
                self.metrics.store_write_refused(refusal.reason);
                Err(StoreError::Full(refusal.message.clone()))
            }
            None => Ok(()),
        }
    }

    /// Takes what the engine's probe returned: a write made durable clears the unanswered clock.
    fn probed(&self, result: &Result<(), StoreError>) {
        if result.is_ok() {
            *self.lock_unanswered() = None;
        }
        self.answered(result);
    }

    /// Takes what a call returned: a failure is final.
    fn answered<T>(&self, result: &Result<T, StoreError>) {
        if let Err(StoreError::Unavailable(_)) = result {
            self.metrics.store_unreachable();
        }
        if let Err(StoreError::Failed(cause)) = result
            && self.failed.set(cause.to_string()).is_ok()
        {
            tracing::error!(%cause, "the store failed; a failed write is never retried: stopping the hub");
            self.metrics.store_failed();
            self.fatal.cancel();
        }
    }

    fn timed_out(&self) {
        self.metrics.store_timeout();
        self.lock_unanswered().get_or_insert_with(Instant::now);
    }
}

/// Megabytes, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

/// Whether a call makes the store bigger (refused while there is no room) or not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Grows,
    Other,
}

/// A [`Store`] in front of an engine, adding deadlines, the room check and failure handling. See the
/// module docs.
pub struct GuardedStore {
    engine: Arc<dyn Store>,
    catalog: Arc<dyn Catalog>,
    queues: Arc<dyn Queues>,
    health: Arc<StoreHealth>,
    measure: Measure,
}

impl GuardedStore {
    /// Guards an engine's parts; `measure` tells their room. Measures once now, so the first writes
    /// are checked.
    pub fn new(
        engine: Arc<dyn Store>,
        catalog: Arc<dyn Catalog>,
        queues: Arc<dyn Queues>,
        options: GuardOptions,
        measure: Measure,
        metrics: Arc<Metrics>,
    ) -> Self {
        let health = Arc::new(StoreHealth::new(options, metrics));
        match measure() {
            Ok(room) => health.measured(room),
            Err(e) => tracing::warn!(error = %e, "measuring the store's room failed"),
        }
        GuardedStore {
            engine,
            catalog,
            queues,
            health,
            measure,
        }
    }

    /// The health the probes read.
    pub fn health(&self) -> Arc<StoreHealth> {
        Arc::clone(&self.health)
    }

    /// Starts the monitor that measures the room and probes the engine, until `stop`.
    pub fn spawn_monitor(&self, stop: CancellationToken, tracker: &TaskTracker) {
        let (health, measure) = (Arc::clone(&self.health), Arc::clone(&self.measure));
        let engine = Arc::clone(&self.engine);
        tracker.spawn(async move {
            let mut ticks = 0u32;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(MEASURE_EVERY) => {}
                }
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(PROBE_EVERY_MEASURES) && health.failed().is_none() {
                    match tokio::time::timeout(health.options.timeout, engine.check_writable())
                        .await
                    {
                        Ok(probed) => health.probed(&probed),
                        Err(_) => health.timed_out(),
                    }
                }
                let measure = Arc::clone(&measure);
                let measured = tokio::time::timeout(
                    health.options.timeout,
                    tokio::task::spawn_blocking(move || measure()),
                )
                .await;
                match measured {
                    Ok(Ok(Ok(room))) => health.measured(room),
                    Ok(Ok(Err(e))) => {
                        tracing::warn!(error = %e, "measuring the store's room failed")
                    }
                    Ok(Err(_)) | Err(_) => {
                        tracing::warn!("measuring the store's room did not finish")
                    }
                }
            }
        });
    }

    async fn call<T>(
        &self,
        call: Call,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if let Some(cause) = self.health.failed() {
            return Err(StoreError::Unavailable(format!(
                "the store failed ({cause}) and the hub is stopping"
            )));
        }
        if call == Call::Grows {
            self.health.check_room()?;
        }
        match tokio::time::timeout(self.health.options.timeout, work).await {
            Ok(result) => {
                self.health.answered(&result);
                result
            }
            Err(_) => {
                self.health.timed_out();
                Err(StoreError::Unavailable(format!(
                    "the store did not answer within {} ms",
                    self.health.options.timeout.as_millis()
                )))
            }
        }
    }
}

#[async_trait]
impl Catalog for GuardedStore {
    async fn read(&self, entry: &Entry) -> Result<catalog::Value, StoreError> {
        self.call(Call::Other, self.catalog.read(entry)).await
    }

    async fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError> {
        self.call(Call::Other, self.catalog.definitions(brand))
            .await
    }

    async fn api_keys(&self, brand: &BrandId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.call(Call::Other, self.catalog.api_keys(brand)).await
    }

    async fn apply(&self, change: Change) -> Result<Applied, StoreError> {
        // Only deletes never grow the store; anything that writes a value may.
        let grows = change
            .writes
            .iter()
            .any(|(_, value)| *value != catalog::Value::Absent);
        let call = if grows { Call::Grows } else { Call::Other };
        self.call(call, self.catalog.apply(change)).await
    }
}

#[async_trait]
impl Queues for GuardedStore {
    async fn transact(
        &self,
        scope: Scope,
        mode: Mode,
        work: Work,
    ) -> Result<Box<dyn Any + Send>, StoreError> {
        let call = if mode.grows { Call::Grows } else { Call::Other };
        self.call(call, self.queues.transact(scope, mode, work))
            .await
    }

    fn announce(&self, key: &PlayerKey) {
        self.queues.announce(key)
    }

    fn announce_postbacks(&self) {
        self.queues.announce_postbacks()
    }

    async fn lanes(&self) -> Result<Vec<LaneDue>, StoreError> {
        self.call(Call::Other, self.queues.lanes()).await
    }

    async fn due_entries(
        &self,
        until_ms: u64,
        after: Option<DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.call(Call::Other, self.queues.due_entries(until_ms, after, limit))
            .await
    }

    async fn due_events(
        &self,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, BrandId, EventId)>, StoreError> {
        self.call(Call::Other, self.queues.due_events(until_ms, limit))
            .await
    }

    fn surely_idle(&self, key: &PlayerKey) -> bool {
        self.queues.surely_idle(key)
    }
}

#[async_trait]
impl Store for GuardedStore {
    async fn player_context(&self, key: &PlayerKey) -> Result<PlayerContext, StoreError> {
        self.call(Call::Other, self.engine.player_context(key))
            .await
    }

    async fn player_by_click_id(
        &self,
        brand: &BrandId,
        click_id: &str,
    ) -> Result<Option<PlayerId>, StoreError> {
        self.call(Call::Other, self.engine.player_by_click_id(brand, click_id))
            .await
    }

    async fn deliveries(
        &self,
        brand: &BrandId,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        self.call(Call::Other, self.engine.deliveries(brand, query))
            .await
    }

    async fn definition_health(
        &self,
        brand: &BrandId,
    ) -> Result<BTreeMap<DefinitionId, DefinitionHealth>, StoreError> {
        self.call(Call::Other, self.engine.definition_health(brand))
            .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.call(Call::Other, self.engine.stats()).await
    }

    async fn backlogs(
        &self,
        brand: Option<&BrandId>,
        limit: usize,
    ) -> Result<Vec<Backlog>, StoreError> {
        self.call(Call::Other, self.engine.backlogs(brand, limit))
            .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.call(Call::Grows, self.engine.check_writable()).await
    }

    async fn postbacks_added(&self) {
        self.engine.postbacks_added().await
    }

    fn subscribe(&self) -> broadcast::Receiver<super::Announcement> {
        self.engine.subscribe()
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.health.failed().is_some() {
            // A failed engine is not flushed again; what is on disk is what the next start reads.
            return Ok(());
        }
        self.call(Call::Other, self.engine.close()).await
    }

    fn shared(&self) -> bool {
        self.engine.shared()
    }

    async fn report_presence(&self, presence: &super::ProcessPresence) -> Result<(), StoreError> {
        self.call(Call::Other, self.engine.report_presence(presence))
            .await
    }

    async fn forget_presence(&self, id: &str) -> Result<(), StoreError> {
        self.call(Call::Other, self.engine.forget_presence(id))
            .await
    }

    async fn presences(&self, now_ms: u64) -> Result<Vec<super::ProcessPresence>, StoreError> {
        self.call(Call::Other, self.engine.presences(now_ms)).await
    }

    async fn claim_session(
        &self,
        key: &PlayerKey,
        session: SessionId,
        info: &str,
        max: usize,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let claim = self.engine.claim_session(key, session, info, max, now_ms);
        self.call(Call::Other, claim).await
    }

    async fn release_session(&self, key: &PlayerKey, session: SessionId) -> Result<(), StoreError> {
        self.call(Call::Other, self.engine.release_session(key, session))
            .await
    }

    async fn renew_sessions(
        &self,
        sessions: &[(PlayerKey, SessionId)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.call(Call::Other, self.engine.renew_sessions(sessions, now_ms))
            .await
    }

    async fn sessions_of(
        &self,
        key: &PlayerKey,
        now_ms: u64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        self.call(Call::Other, self.engine.sessions_of(key, now_ms))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::brand::BrandSettings;
    use crate::ledger::Ledger;
    use crate::store::{SledOptions, SledStore};

    const DEADLINE: Duration = Duration::from_millis(200);

    /// A guarded sled store in a temp dir whose free space the test sets through the returned handle.
    fn guarded(dir: &tempfile::TempDir) -> (GuardedStore, Arc<AtomicU64>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let engine = SledStore::open(
            dir.path(),
            SledOptions {
                cache_bytes: 8 << 20,
                journal_segment_bytes: 1 << 20,
                metrics: Arc::clone(&metrics),
                clock: crate::clock::system(),
            },
        )
        .unwrap();
        let free = Arc::new(AtomicU64::new(1 << 30));
        let reported = Arc::clone(&free);
        let measure: Measure = Arc::new(move || {
            Ok(Room {
                free_bytes: reported.load(Ordering::Relaxed),
                store_bytes: 1 << 20,
            })
        });
        let options = GuardOptions {
            timeout: DEADLINE,
            min_free_bytes: 100 << 20,
            max_bytes: Some(2 << 20),
            restart_when_stuck: true,
        };
        let engine = Arc::new(engine);
        let guard = GuardedStore::new(
            engine.clone(),
            engine.clone(),
            engine,
            options,
            measure,
            Arc::clone(&metrics),
        );
        (guard, free, metrics)
    }

    fn brand() -> BrandId {
        BrandId::parse("b").unwrap()
    }

    #[tokio::test]
    async fn under_the_floor_growing_writes_are_refused_and_the_rest_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (store, free, metrics) = guarded(&dir);
        let store = Arc::new(store);
        let engines = crate::ledger::Engines::one(store.clone());
        let options = crate::ledger::Options::default();
        let ledger = Ledger::new(engines, options, metrics.clone(), crate::clock::system());
        ledger
            .put_brand(&brand(), BrandSettings::default())
            .await
            .unwrap();

        free.store(10 << 20, Ordering::Relaxed);
        store.health.measured((store.measure)().unwrap());
        let refused = ledger
            .put_brand(&brand(), BrandSettings::default())
            .await
            .unwrap_err();
        let StoreError::Full(why) = refused else {
            panic!("{refused:?}")
        };
        assert!(
            why.contains("10.0 MB free, under the floor of 100.0 MB"),
            "{why}"
        );
        assert!(
            ledger.brand(&brand()).await.unwrap().is_some(),
            "reads go on"
        );
        let key = PlayerKey::new(brand(), crate::ids::PlayerId::parse("p").unwrap());
        assert_eq!(
            ledger.purge(&key).await.unwrap(),
            crate::store::Purged::default(),
            "deletes go on"
        );
        assert!(
            metrics
                .encode()
                .contains("pixelhub_store_writes_refused_total{reason=\"min_free\"} 1")
        );
        assert!(store.health.full().is_some());

        // Room again: the next measurement lets writes through, no restart.
        free.store(1 << 30, Ordering::Relaxed);
        store.health.measured((store.measure)().unwrap());
        assert!(store.health.full().is_none());
        ledger
            .put_brand(&brand(), BrandSettings::default())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn at_its_size_cap_the_store_refuses_to_grow() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _) = guarded(&dir);
        store.health.measured(Room {
            free_bytes: 1 << 30,
            store_bytes: 2 << 20,
        });
        let refused = store.check_writable().await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Full(why) if why.contains("at its cap of 2.0 MB (--store-max-bytes)")),
            "{refused:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_is_cut_at_the_deadline_and_then_the_hub_is_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, metrics) = guarded(&dir);
        let started = tokio::time::Instant::now();
        let stuck = store
            .call(
                Call::Other,
                std::future::pending::<Result<(), StoreError>>(),
            )
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), DEADLINE, "answered at the deadline");
        assert!(
            matches!(stuck, StoreError::Unavailable(ref m) if m.contains("within 200 ms")),
            "{stuck:?}"
        );
        assert!(
            store.health.live().is_ok(),
            "one slow call is not a dead store"
        );

        // Calls answered from the engine's memory meanwhile prove nothing about its disk.
        tokio::time::advance(DEADLINE * 3).await;
        store.call(Call::Other, async { Ok(()) }).await.unwrap();
        let e = store.health.live().unwrap_err();
        assert_eq!(e.code, "store_unavailable");
        assert!(e.message.contains("has not completed a write"), "{e:?}");
        assert!(metrics.encode().contains("pixelhub_store_timeouts_total 1"));

        // A probe that makes a write durable clears it.
        store.health.probed(&Ok(()));
        assert!(store.health.live().is_ok());
    }

    #[tokio::test]
    async fn a_failed_write_is_final_the_engine_is_not_called_again_and_the_hub_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, metrics) = guarded(&dir);
        let fatal = store.health.fatal();
        let failed = store
            .call(Call::Other, async {
                Err::<(), _>(StoreError::Failed(Arc::new(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "No space left on device",
                ))))
            })
            .await
            .unwrap_err();
        assert!(matches!(failed, StoreError::Failed(_)));
        assert!(fatal.is_cancelled(), "the server is told to stop");
        assert!(
            store
                .health
                .live()
                .unwrap_err()
                .message
                .contains("No space left on device")
        );
        assert!(metrics.encode().contains("pixelhub_store_failed 1"));

        let called = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&called);
        let later = store
            .call(Call::Other, async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(later, StoreError::Unavailable(_)), "{later:?}");
        assert_eq!(called.load(Ordering::Relaxed), 0, "never retried");
    }
}

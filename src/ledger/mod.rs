//! The ledger: every business rule of the hub, written once, over the engines' narrow traits.
//!
//! The API, the sessions and the postback sender ask the ledger; the ledger decides (a brand's secrets
//! are made with it, a definition id is taken once, a `PATCH` changes only what it names) and writes
//! through the engines ([`crate::store`]), which persist and index and decide nothing. So a second engine
//! implements storage, never the rules, and the rules are tested once, on every engine.
//!
//! The rules, one concern a file: the catalog (`catalog`: brands, secrets, definitions, keys), a
//! player's queue (`queue`), the lease and acks (`lease`), events (`events`), the outbox (`outbox`) and
//! upkeep (`upkeep`). What engines still answer without a rule (the report's reads, stats, backlogs, the
//! click lookup) is reached through [`Store`] by methods of the same names, so callers speak to the
//! ledger alone.

mod attribution;
mod catalog;
mod events;
mod lease;
mod outbox;
mod queue;
mod upkeep;

pub use attribution::Captured;
pub use lease::Leased;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::clock::SharedClock;
use crate::event::PlayerContext;
use crate::ids::{BrandId, DefinitionId, EventId, PlayerId, PlayerKey, SessionId};
use crate::metrics::{Metrics, PixelEvent};
use crate::store::catalog::Catalog;
use crate::store::queues::{Mode, Queues, Scope, Tx};
use crate::store::{
    Backlog, DefinitionHealth, DeliveryPage, DeliveryQuery, ProcessPresence, QueueCap, Quotas,
    Store, StoreError, StoreStats,
};

/// How many times a change is decided again when another writer changed what it read. Catalog writes
/// are rare, so a few rounds only ever run out when something writes the same entry in a loop.
const MAX_ROUNDS: usize = 16;

/// The rules, over the engines. Cheap to clone: one per process, shared by everything that asks.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<dyn Catalog>,
    queues: Arc<dyn Queues>,
    store: Arc<dyn Store>,
    options: Millis,
    quotas: Quotas,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    /// Pixels expired since this process started (the stats' `expired_total`).
    expired: std::sync::atomic::AtomicU64,
    /// Brands seen to exist. A brand is never deleted, so once seen it is known for good, and the hot
    /// paths (queueing) skip the catalog read.
    known_brands: dashmap::DashSet<BrandId>,
    /// Parameter names seen by this process and not yet merged into the catalog.
    params_tally: attribution::Tally,
}

/// The settings the rules follow.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// TTL of a pixel queued without `ttl_seconds`.
    pub default_ttl: Duration,
    /// How long a record (its report row and idempotency entry) is kept once final.
    pub retention: Duration,
    /// The per-player queue cap.
    pub queue_cap: QueueCap,
    /// How long a player's lease lasts unless its holder renews it (each delivery and heartbeat does):
    /// a holder that died frees the queue by itself after it.
    pub lease_ttl: Duration,
    /// What one brand may make the store hold.
    pub quotas: Quotas,
}

impl Default for Options {
    /// The hub's defaults: pixels live 30 days, records 90 days once final, 1,000 pending pixels a
    /// player (refusing more), leases of 75 s (three default heartbeats).
    fn default() -> Self {
        Options {
            default_ttl: Duration::from_secs(30 * 24 * 3600),
            retention: Duration::from_secs(90 * 24 * 3600),
            queue_cap: QueueCap {
                max_per_player: 1000,
                on_full: crate::store::OnFull::Reject,
            },
            lease_ttl: Duration::from_secs(75),
            quotas: Quotas::default(),
        }
    }
}

/// [`Options`] in the milliseconds the rules count in.
#[derive(Clone, Copy, Debug)]
struct Millis {
    default_ttl_ms: u64,
    retention_ms: u64,
    queue_cap: QueueCap,
    lease_ttl_ms: u64,
}

/// What a transition of a pixel or postback counts in the metrics: its kind, and what happened.
type Transition = (String, PixelEvent);

/// The engines a ledger works through: today one engine serves all three.
pub struct Engines {
    /// Brands, secrets, definitions, API keys.
    pub catalog: Arc<dyn Catalog>,
    /// Per-player queues, records and leases.
    pub queues: Arc<dyn Queues>,
    /// What has not moved under the ledger yet: events, the outbox, the report, stats.
    pub store: Arc<dyn Store>,
}

impl Engines {
    /// One engine serving every part, as the embedded engine does.
    pub fn one<E: Catalog + Queues + Store>(engine: Arc<E>) -> Self {
        Engines {
            catalog: engine.clone(),
            queues: engine.clone(),
            store: engine,
        }
    }
}

impl Ledger {
    /// The ledger over `engines`, following `options`, counting into `metrics`, on `clock`.
    pub fn new(
        engines: Engines,
        options: Options,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> Self {
        let ms = |d: Duration| d.as_millis() as u64;
        Ledger {
            inner: Arc::new(Inner {
                catalog: engines.catalog,
                queues: engines.queues,
                store: engines.store,
                options: Millis {
                    default_ttl_ms: ms(options.default_ttl),
                    retention_ms: ms(options.retention),
                    queue_cap: options.queue_cap,
                    lease_ttl_ms: ms(options.lease_ttl),
                },
                quotas: options.quotas,
                metrics,
                clock,
                known_brands: dashmap::DashSet::new(),
                params_tally: Default::default(),
                expired: Default::default(),
            }),
        }
    }

    fn catalog(&self) -> &dyn Catalog {
        self.inner.catalog.as_ref()
    }

    fn queues(&self) -> &dyn Queues {
        self.inner.queues.as_ref()
    }

    /// Runs `work` as one transaction of the queues' engine over the players in `keys` (see
    /// [`Queues::transact`]), typed.
    async fn transact<T: Send + 'static>(
        &self,
        keys: Vec<PlayerKey>,
        mode: Mode,
        work: impl FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.transact_events(keys, Vec::new(), mode, work).await
    }

    /// [`Ledger::transact`] over events as well as players.
    async fn transact_events<T: Send + 'static>(
        &self,
        players: Vec<PlayerKey>,
        events: Vec<(BrandId, EventId)>,
        mode: Mode,
        mut work: impl FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let work = Box::new(move |tx: &mut dyn Tx| {
            work(tx).map(|out| Box::new(out) as Box<dyn Any + Send>)
        });
        let scope = Scope { players, events };
        let out = self.queues().transact(scope, mode, work).await?;
        Ok(*out
            .downcast::<T>()
            .expect("an engine returns what the work returned"))
    }

    /// Counts applied transitions of the brand's pixels and postbacks.
    fn count(&self, brand: &BrandId, transitions: Vec<Transition>) {
        let expired = transitions
            .iter()
            .filter(|(_, event)| *event == PixelEvent::Expired)
            .count();
        if expired > 0 {
            self.inner
                .expired
                .fetch_add(expired as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.metrics.pixels(brand, &transitions);
    }

    fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// Now, on the ledger's clock.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// See [`Store::player_context`].
    pub async fn player_context(&self, key: &PlayerKey) -> Result<PlayerContext, StoreError> {
        self.store().player_context(key).await
    }

    /// See [`Store::player_by_click_id`].
    pub async fn player_by_click_id(
        &self,
        brand: &BrandId,
        click_id: &str,
    ) -> Result<Option<PlayerId>, StoreError> {
        self.store().player_by_click_id(brand, click_id).await
    }

    /// See [`Store::deliveries`].
    pub async fn deliveries(
        &self,
        brand: &BrandId,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        self.store().deliveries(brand, query).await
    }

    /// See [`Store::definition_health`].
    pub async fn definition_health(
        &self,
        brand: &BrandId,
    ) -> Result<BTreeMap<DefinitionId, DefinitionHealth>, StoreError> {
        self.store().definition_health(brand).await
    }

    /// Queue figures per brand, exact, with this process's count of expired pixels.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut stats = self.store().stats().await?;
        stats.expired_total = self
            .inner
            .expired
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(stats)
    }

    /// See [`Store::backlogs`].
    pub async fn backlogs(
        &self,
        brand: Option<&BrandId>,
        limit: usize,
    ) -> Result<Vec<Backlog>, StoreError> {
        self.store().backlogs(brand, limit).await
    }

    /// See [`Store::check_writable`].
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.store().check_writable().await
    }

    /// See [`Store::postbacks_added`].
    pub async fn postbacks_added(&self) {
        self.store().postbacks_added().await
    }

    /// See [`Store::subscribe`].
    pub fn subscribe(&self) -> broadcast::Receiver<crate::store::Announcement> {
        self.store().subscribe()
    }

    /// See [`Store::close`].
    pub async fn close(&self) -> Result<(), StoreError> {
        self.store().close().await
    }

    /// See [`Store::shared`].
    pub fn shared(&self) -> bool {
        self.store().shared()
    }

    /// See [`Store::report_presence`].
    pub async fn report_presence(&self, presence: &ProcessPresence) -> Result<(), StoreError> {
        self.store().report_presence(presence).await
    }

    /// See [`Store::forget_presence`].
    pub async fn forget_presence(&self, id: &str) -> Result<(), StoreError> {
        self.store().forget_presence(id).await
    }

    /// See [`Store::presences`], as of now.
    pub async fn presences(&self) -> Result<Vec<ProcessPresence>, StoreError> {
        self.store().presences(self.now_ms()).await
    }

    /// See [`Store::claim_session`], as of now.
    pub async fn claim_session(
        &self,
        key: &PlayerKey,
        session: SessionId,
        info: &str,
        max: usize,
    ) -> Result<bool, StoreError> {
        let now = self.now_ms();
        self.store()
            .claim_session(key, session, info, max, now)
            .await
    }

    /// See [`Store::release_session`].
    pub async fn release_session(
        &self,
        key: &PlayerKey,
        session: SessionId,
    ) -> Result<(), StoreError> {
        self.store().release_session(key, session).await
    }

    /// See [`Store::renew_sessions`], as of now.
    pub async fn renew_sessions(
        &self,
        sessions: &[(PlayerKey, SessionId)],
    ) -> Result<(), StoreError> {
        self.store().renew_sessions(sessions, self.now_ms()).await
    }

    /// See [`Store::sessions_of`], as of now.
    pub async fn sessions_of(&self, key: &PlayerKey) -> Result<Option<Vec<String>>, StoreError> {
        self.store().sessions_of(key, self.now_ms()).await
    }
}

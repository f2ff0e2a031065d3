//! The ledger: every business rule of the hub, written once, over the engines' narrow traits.
//!
//! The API, the sessions and the postback sender ask the ledger; the ledger decides (a brand's secrets
//! are made with it, a definition id is taken once, a `PATCH` changes only what it names) and writes
//! through the engines ([`crate::store`]), which persist and index and decide nothing. So a second engine
//! implements storage, never the rules, and the rules are tested once, on every engine.
//!
//! The catalog's rules live here ([`catalog`]). The queue, event and outbox rules still sit in the
//! embedded engine behind [`Store`] and are reached through the ledger's methods of the same names, so
//! callers already speak to the ledger alone while the rules move under it.

mod catalog;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::clock::SharedClock;
use crate::delivery::{Ack, Attempt};
use crate::event::{Event, EventOutcome, PlayerContext};
use crate::ids::{BrandId, DefinitionId, EventId, PixelId, PlayerId, PlayerKey, SessionId};
use crate::pixel::{NewPixel, QueuedPixel};
use crate::store::catalog::Catalog;
use crate::store::{
    Backlog, CancelOutcome, DefinitionHealth, DeliveryPage, DeliveryQuery, DuePostback,
    EnqueueOutcome, Lane, LaneDue, PendingPixel, Purged, Store, StoreError, StoreStats, Verdict,
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
    store: Arc<dyn Store>,
    clock: SharedClock,
}

impl Ledger {
    /// The ledger over a catalog and the queues' store, on `clock`.
    pub fn new(catalog: Arc<dyn Catalog>, store: Arc<dyn Store>, clock: SharedClock) -> Self {
        Ledger {
            inner: Arc::new(Inner {
                catalog,
                store,
                clock,
            }),
        }
    }

    fn catalog(&self) -> &dyn Catalog {
        self.inner.catalog.as_ref()
    }

    fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// See [`Store::enqueue`].
    pub async fn enqueue(
        &self,
        key: &PlayerKey,
        pixels: Vec<NewPixel>,
    ) -> Result<EnqueueOutcome, StoreError> {
        self.store().enqueue(key, pixels).await
    }

    /// See [`Store::pending`].
    pub async fn pending(&self, key: &PlayerKey) -> Result<Vec<PendingPixel>, StoreError> {
        self.store().pending(key).await
    }

    /// See [`Store::cancel`].
    pub async fn cancel(&self, key: &PlayerKey, id: &PixelId) -> Result<CancelOutcome, StoreError> {
        self.store().cancel(key, id).await
    }

    /// See [`Store::purge`].
    pub async fn purge(&self, key: &PlayerKey) -> Result<Purged, StoreError> {
        self.store().purge(key).await
    }

    /// See [`Store::lease`].
    pub async fn lease(
        &self,
        key: &PlayerKey,
        session: SessionId,
        max_in_flight: usize,
    ) -> Result<Vec<QueuedPixel>, StoreError> {
        self.store().lease(key, session, max_in_flight).await
    }

    /// Records that the browser fired these pixels: [`Ledger::acknowledge`] with nothing to report.
    pub async fn ack(&self, key: &PlayerKey, ids: &[PixelId]) -> Result<usize, StoreError> {
        let acks: Vec<Ack> = ids.iter().cloned().map(Ack::fired).collect();
        self.acknowledge(key, &acks).await
    }

    /// See [`Store::acknowledge`].
    pub async fn acknowledge(&self, key: &PlayerKey, acks: &[Ack]) -> Result<usize, StoreError> {
        self.store().acknowledge(key, acks).await
    }

    /// See [`Store::release`].
    pub async fn release(&self, key: &PlayerKey, session: SessionId) -> Result<(), StoreError> {
        self.store().release(key, session).await
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

    /// See [`Store::ingest`].
    pub async fn ingest(
        &self,
        brand: &BrandId,
        events: Vec<Event>,
    ) -> Result<Vec<EventOutcome>, StoreError> {
        self.store().ingest(brand, events).await
    }

    /// See [`Store::event`].
    pub async fn event(
        &self,
        brand: &BrandId,
        id: &EventId,
    ) -> Result<Option<EventOutcome>, StoreError> {
        self.store().event(brand, id).await
    }

    /// See [`Store::deliveries`].
    pub async fn deliveries(
        &self,
        brand: &BrandId,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        self.store().deliveries(brand, query).await
    }

    /// See [`Store::postback_lanes`].
    pub async fn postback_lanes(&self) -> Result<Vec<LaneDue>, StoreError> {
        self.store().postback_lanes().await
    }

    /// See [`Store::due_postbacks`].
    pub async fn due_postbacks(
        &self,
        lane: &Lane,
        now: u64,
        limit: usize,
    ) -> Result<Vec<DuePostback>, StoreError> {
        self.store().due_postbacks(lane, now, limit).await
    }

    /// See [`Store::claim_postback`].
    pub async fn claim_postback(&self, due: &DuePostback, until: u64) -> Result<bool, StoreError> {
        self.store().claim_postback(due, until).await
    }

    /// See [`Store::record_attempt`].
    pub async fn record_attempt(
        &self,
        due: &DuePostback,
        claimed_until: u64,
        attempt: Attempt,
        verdict: Verdict,
    ) -> Result<Option<DefinitionHealth>, StoreError> {
        self.store()
            .record_attempt(due, claimed_until, attempt, verdict)
            .await
    }

    /// See [`Store::definition_health`].
    pub async fn definition_health(
        &self,
        brand: &BrandId,
    ) -> Result<BTreeMap<DefinitionId, DefinitionHealth>, StoreError> {
        self.store().definition_health(brand).await
    }

    /// See [`Store::stats`].
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.store().stats().await
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
    pub fn subscribe(&self) -> broadcast::Receiver<PlayerKey> {
        self.store().subscribe()
    }

    /// See [`Store::close`].
    pub async fn close(&self) -> Result<(), StoreError> {
        self.store().close().await
    }
}

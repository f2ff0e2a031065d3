//! The memory engine's queues: every player's queue, record, lease, context and event in ordered maps
//! under one lock. A transaction runs its work on the maps as they are and applies its writes after it;
//! one lock serialises them all, which a development engine can afford.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use async_trait::async_trait;

use super::{MemoryStore, lock};
use crate::event::{EventOutcome, PlayerContext};
use crate::ids::{BrandId, DefinitionId, EventId, PixelId, PlayerId, PlayerKey};
use crate::pixel::QueuedPixel;
use crate::store::queues::{DueEntry, Lease, Mode, Queues, Record, Scope, Tx, Usage, Work, Write};
use crate::store::{DefinitionHealth, Lane, LaneDue, StoreError};

/// Everything hot, by player, with the indexes the traits read.
#[derive(Default)]
pub(super) struct Hot {
    pub(super) queues: HashMap<PlayerKey, BTreeMap<u64, QueuedPixel>>,
    pub(super) records: HashMap<PlayerKey, HashMap<PixelId, Record>>,
    /// Per brand: every record's `(queued_at_ms, player, id)`, the report's order.
    pub(super) report: HashMap<BrandId, BTreeSet<(u64, PlayerId, PixelId)>>,
    expiry: BTreeMap<(u64, PlayerKey, u64), Option<PixelId>>,
    pub(super) outbox: BTreeMap<Lane, BTreeSet<(u64, PlayerKey, PixelId)>>,
    pub(super) contexts: HashMap<PlayerKey, PlayerContext>,
    pub(super) clicks: HashMap<(BrandId, String), PlayerId>,
    events: HashMap<(BrandId, EventId), EventOutcome>,
    event_forgets: BTreeSet<(u64, BrandId, EventId)>,
    pub(super) health: BTreeMap<(BrandId, DefinitionId), DefinitionHealth>,
    leases: HashMap<PlayerKey, Lease>,
    /// Per brand: the UTC day and the new events on it.
    pub(super) events_today: HashMap<BrandId, (u64, u64)>,
}

impl Hot {
    /// Players of the brand with a context: what its players quota counts.
    pub(super) fn players(&self, brand: &BrandId) -> u64 {
        self.contexts.keys().filter(|k| k.brand == *brand).count() as u64
    }

    /// Postbacks in the brand's lanes.
    pub(super) fn outbox_size(&self, brand: &BrandId) -> u64 {
        self.outbox
            .iter()
            .filter(|(lane, _)| lane.brand == *brand)
            .map(|(_, entries)| entries.len() as u64)
            .sum()
    }

    /// Pending pixels of the brand waiting for consent, counted from the records themselves.
    pub(super) fn waiting_consent(&self, brand: &BrandId) -> u64 {
        self.records
            .iter()
            .filter(|(key, _)| key.brand == *brand)
            .flat_map(|(_, records)| records.values())
            .filter(|r| r.delivery.status == crate::delivery::PixelStatus::WaitingConsent)
            .count() as u64
    }

    /// New events of the brand on UTC day `day`.
    pub(super) fn events_on(&self, brand: &BrandId, day: u64) -> u64 {
        self.events_today
            .get(brand)
            .filter(|(d, _)| *d == day)
            .map_or(0, |(_, n)| *n)
    }

    fn put_record(&mut self, key: &PlayerKey, record: Record) {
        let d = &record.delivery;
        self.report.entry(key.brand.clone()).or_default().insert((
            d.queued_at_ms,
            key.player.clone(),
            d.id.clone(),
        ));
        self.records
            .entry(key.clone())
            .or_default()
            .insert(d.id.clone(), record);
    }

    fn apply(&mut self, write: Write) {
        match write {
            Write::AddPixel { key, pixel, record } => {
                self.expiry.insert(
                    (pixel.expires_at_ms, key.clone(), record.seq),
                    Some(pixel.id.clone()),
                );
                self.queues
                    .entry(key.clone())
                    .or_default()
                    .insert(record.seq, pixel);
                self.put_record(&key, record);
            }
            Write::UpdateRecord { key, record } => {
                self.records
                    .entry(key)
                    .or_default()
                    .insert(record.delivery.id.clone(), record);
            }
            Write::Finalize {
                key,
                record,
                forget_at_ms,
            } => {
                if let Some(expires_at_ms) = record.delivery.expires_at_ms {
                    if let Some(queue) = self.queues.get_mut(&key) {
                        queue.remove(&record.seq);
                        if queue.is_empty() {
                            self.queues.remove(&key);
                        }
                    }
                    self.expiry
                        .remove(&(expires_at_ms, key.clone(), record.seq));
                }
                self.expiry.insert(
                    (forget_at_ms, key.clone(), record.seq),
                    Some(record.delivery.id.clone()),
                );
                self.records
                    .entry(key)
                    .or_default()
                    .insert(record.delivery.id.clone(), record);
            }
            Write::AddPostback {
                key,
                record,
                lane,
                due_ms,
            } => {
                self.outbox.entry(lane).or_default().insert((
                    due_ms,
                    key.clone(),
                    record.delivery.id.clone(),
                ));
                self.put_record(&key, record);
            }
            Write::AddFailed {
                key,
                record,
                forget_at_ms,
            } => {
                self.expiry.insert(
                    (forget_at_ms, key.clone(), record.seq),
                    Some(record.delivery.id.clone()),
                );
                self.put_record(&key, record);
            }
            Write::PutContext {
                key,
                context,
                click_id,
            } => {
                if let Some(click) = click_id {
                    self.clicks
                        .insert((key.brand.clone(), click), key.player.clone());
                }
                self.contexts.insert(key, context);
            }
            Write::PutEvent {
                brand,
                outcome,
                forget_at_ms,
            } => {
                let id = outcome.event_id.clone();
                self.event_forgets
                    .insert((forget_at_ms, brand.clone(), id.clone()));
                self.events.insert((brand, id), outcome);
            }
            // Counted from the records themselves.
            Write::CountWaiting { .. } => {}
            Write::CountUsage {
                brand, day, events, ..
            } => {
                // Players are counted from the contexts themselves.
                let today = self.events_today.entry(brand).or_insert((day, 0));
                if today.0 != day {
                    *today = (day, 0);
                }
                today.1 += events;
            }
            Write::Schedule {
                key,
                id,
                lane,
                due_ms,
            } => {
                self.outbox
                    .entry(lane)
                    .or_default()
                    .insert((due_ms, key, id));
            }
            Write::Unschedule {
                key,
                id,
                lane,
                due_ms,
            } => {
                if let Some(entries) = self.outbox.get_mut(&lane) {
                    entries.remove(&(due_ms, key, id));
                    if entries.is_empty() {
                        self.outbox.remove(&lane);
                    }
                }
            }
            Write::PutHealth {
                brand,
                definition,
                health,
            } => match health {
                Some(health) => {
                    self.health.insert((brand, definition), health);
                }
                None => {
                    self.health.remove(&(brand, definition));
                }
            },
            Write::DropDue(entry) => {
                self.expiry.remove(&(entry.due_ms, entry.key, entry.seq));
            }
            Write::Forget { key, record } => {
                let d = &record.delivery;
                if let Some(records) = self.records.get_mut(&key) {
                    records.remove(&d.id);
                }
                if let Some(report) = self.report.get_mut(&key.brand) {
                    report.remove(&(d.queued_at_ms, key.player.clone(), d.id.clone()));
                }
            }
            Write::ForgetEvent { brand, id, due_ms } => {
                self.event_forgets
                    .remove(&(due_ms, brand.clone(), id.clone()));
                self.events.remove(&(brand, id));
            }
            Write::PutLease { key, lease } => match lease {
                Some(lease) => {
                    self.leases.insert(key, lease);
                }
                None => {
                    self.leases.remove(&key);
                }
            },
        }
    }
}

/// A transaction: reads of the maps as they were when it began, writes staged.
struct MemoryTx<'a> {
    hot: &'a Hot,
    store: &'a MemoryStore,
    writes: Vec<Write>,
}

impl Tx for MemoryTx<'_> {
    fn next_seq(&mut self) -> Result<u64, StoreError> {
        Ok(self.store.backing.seq.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn record(&mut self, key: &PlayerKey, id: &PixelId) -> Result<Option<Record>, StoreError> {
        Ok(self.hot.records.get(key).and_then(|r| r.get(id)).cloned())
    }

    fn pending_count(&mut self, key: &PlayerKey) -> Result<u64, StoreError> {
        Ok(self.hot.queues.get(key).map_or(0, |q| q.len() as u64))
    }

    fn queue(
        &mut self,
        key: &PlayerKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, QueuedPixel)>, StoreError> {
        let Some(queue) = self.hot.queues.get(key) else {
            return Ok(Vec::new());
        };
        let from = after.map_or(0, |seq| seq + 1);
        Ok(queue
            .range(from..)
            .take(limit)
            .map(|(seq, pixel)| (*seq, pixel.clone()))
            .collect())
    }

    fn undurable_from(&mut self, _key: &PlayerKey) -> Option<u64> {
        None // applied is as durable as this engine gets
    }

    fn lease(&mut self, key: &PlayerKey) -> Result<Option<Lease>, StoreError> {
        Ok(self.hot.leases.get(key).cloned())
    }

    fn context(&mut self, key: &PlayerKey) -> Result<Option<PlayerContext>, StoreError> {
        Ok(self.hot.contexts.get(key).cloned())
    }

    fn event(&mut self, brand: &BrandId, id: &EventId) -> Result<Option<EventOutcome>, StoreError> {
        Ok(self.hot.events.get(&(brand.clone(), id.clone())).cloned())
    }

    fn usage(&mut self, brand: &BrandId, day: u64) -> Result<Usage, StoreError> {
        Ok(Usage {
            events_today: self.hot.events_on(brand, day),
            players: self.hot.players(brand),
            outbox: self.hot.outbox_size(brand),
        })
    }

    fn scheduled(
        &mut self,
        lane: &Lane,
        due_ms: u64,
        key: &PlayerKey,
        id: &PixelId,
    ) -> Result<bool, StoreError> {
        Ok(self
            .hot
            .outbox
            .get(lane)
            .is_some_and(|e| e.contains(&(due_ms, key.clone(), id.clone()))))
    }

    fn due(
        &mut self,
        lane: &Lane,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PlayerKey, PixelId)>, StoreError> {
        Ok(self.hot.outbox.get(lane).map_or_else(Vec::new, |entries| {
            entries
                .iter()
                .take_while(|(due, _, _)| *due <= until_ms)
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    fn holds_due(&mut self, entry: &DueEntry) -> Result<bool, StoreError> {
        Ok(self
            .hot
            .expiry
            .contains_key(&(entry.due_ms, entry.key.clone(), entry.seq)))
    }

    fn health(
        &mut self,
        brand: &BrandId,
        definition: &DefinitionId,
    ) -> Result<Option<DefinitionHealth>, StoreError> {
        Ok(self
            .hot
            .health
            .get(&(brand.clone(), definition.clone()))
            .cloned())
    }

    fn write(&mut self, write: Write) {
        self.writes.push(write);
    }
}

#[async_trait]
impl Queues for MemoryStore {
    async fn transact(
        &self,
        _scope: Scope,
        _mode: Mode,
        mut work: Work,
    ) -> Result<Box<dyn Any + Send>, StoreError> {
        self.check_open()?;
        let mut hot = lock(&self.backing.hot);
        let mut tx = MemoryTx {
            hot: &hot,
            store: self,
            writes: Vec::new(),
        };
        let out = work(&mut tx)?;
        let writes = tx.writes;
        for write in writes {
            hot.apply(write);
        }
        Ok(out)
    }

    fn announce(&self, key: &PlayerKey) {
        let _ = self
            .backing
            .announce
            .send(crate::store::Announcement::Player(key.clone()));
    }

    fn announce_postbacks(&self) {
        // Every handle's sender, waiting now or at its next look.
        self.backing.postbacks.notify_waiters();
        self.backing.postbacks.notify_one();
    }

    fn surely_idle(&self, _key: &PlayerKey) -> bool {
        false // never worth the bookkeeping here
    }

    async fn lanes(&self) -> Result<Vec<LaneDue>, StoreError> {
        Ok(lock(&self.backing.hot)
            .outbox
            .iter()
            .filter_map(|(lane, entries)| {
                entries.first().map(|(next_ms, _, _)| LaneDue {
                    lane: lane.clone(),
                    next_ms: *next_ms,
                })
            })
            .collect())
    }

    async fn due_entries(
        &self,
        until_ms: u64,
        after: Option<DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let hot = lock(&self.backing.hot);
        let entries = hot.expiry.iter().filter(|((due, key, seq), _)| {
            after
                .as_ref()
                .is_none_or(|a| (*due, key, *seq) > (a.due_ms, &a.key, a.seq))
        });
        Ok(entries
            .take_while(|((due, _, _), _)| *due <= until_ms)
            .take(limit)
            .map(|((due_ms, key, seq), id)| DueEntry {
                due_ms: *due_ms,
                key: key.clone(),
                seq: *seq,
                id: id.clone(),
            })
            .collect())
    }

    async fn due_events(
        &self,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, BrandId, EventId)>, StoreError> {
        Ok(lock(&self.backing.hot)
            .event_forgets
            .iter()
            .take_while(|(due, _, _)| *due <= until_ms)
            .take(limit)
            .cloned()
            .collect())
    }
}

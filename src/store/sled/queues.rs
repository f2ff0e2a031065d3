//! The embedded engine's queue transactions: the ledger's work runs under the stripe locks of the
//! players it names, reads the `data` tree, and its typed writes become one sled batch with every index
//! they imply (`q` queue, `i` record, `r` report, `x` forget times, `n` the player's pending summary),
//! applied by [`Inner::apply`]. Leases live in memory (a restart frees them, which is what a lease's end does).

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use async_trait::async_trait;

use super::{Changes, Held, Inner, SledStore, entry, json, keys, lock};
use crate::event::{EventOutcome, PlayerContext};
use crate::ids::{BrandId, DefinitionId, EventId, PixelId, PlayerKey};
use crate::pixel::QueuedPixel;
use crate::store::Announcement;
use crate::store::queues::{
    DueEntry, Durability, Lease, Mode, Queues, Record, Scope, Tx, Usage, Work, Write,
};
use crate::store::{DefinitionHealth, Lane, LaneDue, StoreError};

/// A transaction in progress: what it staged, and the queue positions it adds per player (a delivery
/// barrier until they are flushed).
struct SledTx<'a> {
    inner: &'a Inner,
    changes: Changes,
    leases: Vec<(PlayerKey, Option<Lease>)>,
    added: HashMap<PlayerKey, (u64, u64)>,
    /// Per brand: the day, new events and new players to count once applied.
    usage: Vec<(BrandId, u64, u64, u64)>,
    /// The stripe locks held, in ascending order: a player's pending ids may be indexed only under
    /// its own.
    stripes: Vec<usize>,
    /// Queue entries holding their record that this transaction read, by pixel id: their player and
    /// where they are. A lease reads a pixel's entry, then its record; and a changed record is
    /// written back into its entry.
    entries: HashMap<PixelId, Vec<(PlayerKey, Held)>>,
    /// Entries this transaction queues, per player, by position: paged when it ends.
    queued: HashMap<PlayerKey, BTreeMap<u64, Vec<u8>>>,
    /// Pages of the queue this transaction changes, by player and key: what they will hold.
    pages: HashMap<(PlayerKey, u64), PageEdit>,
    /// The first failure of a staged write that had to read (writes cannot fail): the transaction
    /// fails with it, writing nothing.
    failed: Option<StoreError>,
}

/// A page of the queue as a transaction leaves it.
struct PageEdit {
    /// Its entries by position.
    entries: BTreeMap<u64, Vec<u8>>,
    /// The last position whose record the transaction rewrote: a lease's window ends there.
    stamped: Option<u64>,
}

impl SledTx<'_> {
    fn holds_stripe(&self, key: &PlayerKey) -> bool {
        self.stripes
            .binary_search(&self.inner.stripe_index(key))
            .is_ok()
    }

    /// The pending pixel's entry, if it holds its record, as the queue held it when read: from what
    /// this transaction read, or from the queue.
    fn entry(&mut self, key: &PlayerKey, id: &PixelId) -> Result<Option<Held>, StoreError> {
        let cached = self.entries.get(id).into_iter().flatten();
        if let Some((_, held)) = cached.into_iter().find(|(player, _)| player == key) {
            return Ok(Some(held.clone()));
        }
        let found = if self.holds_stripe(key) {
            match self.inner.pending_seq(key, id)? {
                Some(seq) => match self.inner.entry_at(key, seq)? {
                    Some(held) if entry::id(held.entry()?)? == Some(id.as_str().as_bytes()) => {
                        Some(held)
                    }
                    _ => None,
                },
                None => None,
            }
        } else if self.inner.pending_count(key) > 0 {
            self.inner.find_queued(key, id)?
        } else {
            None
        };
        if let Some(held) = &found {
            self.remember(key, id, held);
        }
        Ok(found)
    }

    fn remember(&mut self, key: &PlayerKey, id: &PixelId, held: &Held) {
        let read = self.entries.entry(id.clone()).or_default();
        read.push((key.clone(), held.clone()));
    }

    /// The page holding the player's entry at `seq` (pixel `id`), as this transaction leaves it so far:
    /// `None` when no page holds it.
    fn page_edit(
        &mut self,
        key: &PlayerKey,
        seq: u64,
        id: &PixelId,
    ) -> Result<Option<&mut PageEdit>, StoreError> {
        let edited = self
            .pages
            .iter()
            .find(|((player, _), page)| player == key && page.entries.contains_key(&seq))
            .map(|(at, _)| at.clone());
        let at = match edited {
            Some(at) => at,
            None => {
                // What this transaction read (an ack reads each record before it ends the pixel),
                // else the queue.
                let mut read = self.entries.get(id).into_iter().flatten();
                let cached = read
                    .find(|(player, held)| player == key && held.seq == seq)
                    .map(|(_, held)| held.clone());
                let held = match cached {
                    Some(held) => held,
                    None => match self.inner.entry_at(key, seq)? {
                        Some(held) => held,
                        None => return Ok(None),
                    },
                };
                let mut entries = BTreeMap::new();
                for queued in entry::entries(held.page, &held.value) {
                    let (at, bytes) = queued?;
                    entries.insert(at, bytes.to_vec());
                }
                let at = (key.clone(), held.page);
                if self.pages.contains_key(&at) {
                    // The page was read before this transaction took the entry out of it.
                    return Ok(None);
                }
                let page = PageEdit {
                    entries,
                    stamped: None,
                };
                self.pages.insert(at.clone(), page);
                at
            }
        };
        Ok(self.pages.get_mut(&at))
    }

    /// Writes a pending pixel's changed record back into its entry; false for an entry of the old
    /// kind (its record is in `i`) or one no longer queued.
    fn restamp(&mut self, key: &PlayerKey, record: &Record) -> Result<bool, StoreError> {
        let seq = record.seq;
        if let Some(bytes) = self.queued.get_mut(key).and_then(|q| q.get_mut(&seq)) {
            return match entry::with_record(bytes, record)? {
                Some(value) => {
                    *bytes = value;
                    Ok(true)
                }
                None => Ok(false),
            };
        }
        // The entry as queued: its page may have changed in this transaction, its bytes not.
        let Some(page) = self.page_edit(key, seq, &record.delivery.id)? else {
            return Ok(false);
        };
        let bytes = page.entries.get_mut(&seq).expect("the page holds it");
        match entry::with_record(bytes, record)? {
            Some(value) => {
                *bytes = value;
                page.stamped = Some(page.stamped.map_or(seq, |s| s.max(seq)));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Takes the entry at `seq` (pixel `id`) out of the player's queue.
    fn unqueue(&mut self, key: &PlayerKey, seq: u64, id: &PixelId) -> Result<(), StoreError> {
        if let Some(queued) = self.queued.get_mut(key)
            && queued.remove(&seq).is_some()
        {
            return Ok(());
        }
        if let Some(page) = self.page_edit(key, seq, id)? {
            page.entries.remove(&seq);
        }
        Ok(())
    }

    /// Stages the pages this transaction queued and changed. New entries go in new pages (whose
    /// keys sled has never held); a changed page is written back whole under its key, or removed
    /// when empty; and one whose records were rewritten (a lease) up to a point before its end is
    /// split there, the rest under a new key, so the window's acks remove a page of their own.
    fn finish_pages(&mut self) {
        for (key, queued) in std::mem::take(&mut self.queued) {
            for page in entry::paginate(queued.into_iter().collect()) {
                let first = page[0].0;
                self.changes
                    .insert_fresh(keys::queue(&key, first), entry::page(first, page));
            }
        }
        for ((key, first), edit) in std::mem::take(&mut self.pages) {
            let mut entries: Vec<(u64, Vec<u8>)> = edit.entries.into_iter().collect();
            let cut = edit.stamped.map_or(entries.len(), |last| {
                entries.partition_point(|(seq, _)| *seq <= last)
            });
            let rest = entries.split_off(cut);
            if entries.is_empty() {
                self.changes.remove(keys::queue(&key, first));
            } else {
                self.changes
                    .insert(keys::queue(&key, first), entry::page(first, entries));
            }
            if let Some(&(at, _)) = rest.first() {
                // A position inside this page: no page has ever had it for its key.
                self.changes
                    .insert_fresh(keys::queue(&key, at), entry::page(at, rest));
            }
        }
    }
}

impl Tx for SledTx<'_> {
    fn next_seq(&mut self) -> Result<u64, StoreError> {
        Ok(self.inner.log.next_seq())
    }

    fn record(&mut self, key: &PlayerKey, id: &PixelId) -> Result<Option<Record>, StoreError> {
        if !self.holds_stripe(key) {
            // A postback's sender or an event's statuses: `i` first (postbacks are only there), the
            // queue only when that misses.
            return self.inner.record(key, id, None);
        }
        match self.entry(key, id)? {
            Some(held) => entry::record(held.entry()?),
            // Final, a postback, or pending in an entry of the old kind.
            None => self.inner.read(&keys::index(key, id)),
        }
    }

    fn pending_count(&mut self, key: &PlayerKey) -> Result<u64, StoreError> {
        Ok(self.inner.pending_count(key))
    }

    fn queue(
        &mut self,
        key: &PlayerKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, QueuedPixel)>, StoreError> {
        // The walk starts at the page holding the first position wanted.
        let first = match after {
            Some(seq) => self.inner.page_of(key, seq + 1)?.map(|(first, _)| first),
            None => None,
        };
        let start = keys::queue(key, first.or(after.map(|seq| seq + 1)).unwrap_or(0));
        let prefix = keys::queue_prefix(key);
        let end = keys::queue(key, u64::MAX);
        let mut out = Vec::new();
        let range = self
            .inner
            .log
            .range(Bound::Included(&start), Bound::Included(&end), false);
        'pages: for page in range {
            let (k, value) = page?;
            if !k.starts_with(&prefix) {
                break;
            }
            let (_, first) =
                keys::parse_queue(&k).ok_or_else(|| StoreError::corrupt("corrupt queue key"))?;
            for queued in entry::entries(first, &value) {
                let (seq, bytes) = queued?;
                if after.is_some_and(|after| seq <= after) {
                    continue;
                }
                if out.len() == limit {
                    break 'pages;
                }
                let pixel = entry::pixel(bytes)?;
                if entry::id(bytes)?.is_some() {
                    let held = Held {
                        seq,
                        page: first,
                        value: value.clone(),
                    };
                    self.remember(key, &pixel.id, &held);
                }
                out.push((seq, pixel));
            }
        }
        Ok(out)
    }

    fn undurable_from(&mut self, key: &PlayerKey) -> Option<u64> {
        self.inner
            .unflushed
            .get(key)
            .and_then(|ranges| ranges.iter().map(|r| r.0).min())
    }

    fn lease(&mut self, key: &PlayerKey) -> Result<Option<Lease>, StoreError> {
        Ok(self.inner.leases.get(key).map(|l| l.clone()))
    }

    fn context(&mut self, key: &PlayerKey) -> Result<Option<PlayerContext>, StoreError> {
        self.inner.read(&keys::context(key))
    }

    fn event(&mut self, brand: &BrandId, id: &EventId) -> Result<Option<EventOutcome>, StoreError> {
        self.inner.read(&keys::event(brand, id))
    }

    fn scheduled(
        &mut self,
        lane: &Lane,
        due_ms: u64,
        key: &PlayerKey,
        id: &PixelId,
    ) -> Result<bool, StoreError> {
        self.inner.scheduled(lane, due_ms, key, id)
    }

    fn due(
        &mut self,
        lane: &Lane,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PlayerKey, PixelId)>, StoreError> {
        let start = keys::outbox_prefix(lane);
        let end = [start.as_slice(), &until_ms.saturating_add(1).to_be_bytes()].concat();
        let mut out = Vec::new();
        let range = self
            .inner
            .log
            .range(Bound::Included(&start), Bound::Excluded(&end), false);
        for entry in range.keys() {
            if out.len() == limit {
                break;
            }
            let k = entry?;
            let (_, due_ms, key, id) =
                keys::parse_outbox(&k).ok_or_else(|| StoreError::corrupt("corrupt outbox key"))?;
            out.push((due_ms, key, id));
        }
        Ok(out)
    }

    fn holds_due(&mut self, entry: &DueEntry) -> Result<bool, StoreError> {
        // A final record's forget time is an `x` key; a pending pixel's expiry is its queue entry.
        let log = &self.inner.log;
        if log.contains(&keys::expiry(entry.due_ms, &entry.key, entry.seq))? {
            return Ok(true);
        }
        match self.inner.entry_at(&entry.key, entry.seq)? {
            Some(held) => Ok(entry::pixel(held.entry()?)?.expires_at_ms == entry.due_ms),
            None => Ok(false),
        }
    }

    fn health(
        &mut self,
        brand: &BrandId,
        definition: &DefinitionId,
    ) -> Result<Option<DefinitionHealth>, StoreError> {
        self.inner.read(&keys::health(brand, definition))
    }

    fn usage(&mut self, brand: &BrandId, day: u64) -> Result<Usage, StoreError> {
        let inner = self.inner;
        Ok(Usage {
            events_today: inner.events_on(brand, day),
            players: inner.players.get(brand).map_or(0, |n| *n),
            outbox: inner.outbox_size.get(brand).map_or(0, |n| *n),
        })
    }

    fn write(&mut self, write: Write) {
        if let Write::AddPixel { key, .. }
        | Write::AddPostback { key, .. }
        | Write::AddFailed { key, .. }
        | Write::Forget { key, .. } = &write
        {
            // Their report rows are read and written back whole (`Inner::apply`).
            debug_assert!(
                self.holds_stripe(key),
                "a report row changed without its player's lock"
            );
        }
        if let Write::UpdateRecord { key, record } = &write
            && record.is_client_pixel()
            && record.delivery.status.is_pending()
        {
            match self.restamp(key, record) {
                Ok(true) => return,
                Ok(false) => {} // an entry of the old kind: the record is in `i`
                Err(e) => {
                    self.failed.get_or_insert(e);
                    return;
                }
            }
        }
        match &write {
            Write::AddPixel { key, pixel, record } => {
                // In a new page (`finish_pages`), under a key with a new sequence number: a pixel
                // acknowledged before the next checkpoint costs sled nothing for it. Its expiry and
                // age are in the player's summary, its record in its entry; the report row says
                // where that is.
                let queued = self.queued.entry(key.clone()).or_default();
                queued.insert(record.seq, entry::encode(pixel, record));
            }
            Write::Finalize { key, record, .. } if record.delivery.expires_at_ms.is_some() => {
                if let Err(e) = self.unqueue(key, record.seq, &record.delivery.id) {
                    self.failed.get_or_insert(e);
                    return;
                }
            }
            _ => {}
        }
        let batch = &mut self.changes;
        match write {
            Write::AddPixel { key, pixel, record } => {
                let seq = record.seq;
                batch
                    .pending
                    .entry(key.clone())
                    .or_default()
                    .add(pixel.queued_at_ms, pixel.expires_at_ms);
                batch.add_report_row(&key, pixel.queued_at_ms, &pixel.id, Some(seq));
                batch.ids.push((key.clone(), pixel.id, Some(seq)));
                let range = self.added.entry(key).or_insert((seq, seq));
                range.0 = range.0.min(seq);
                range.1 = range.1.max(seq);
            }
            Write::UpdateRecord { key, record } => {
                batch.insert(
                    keys::index(&key, &record.delivery.id),
                    json(&record.stored()),
                );
            }
            Write::Finalize {
                key,
                record,
                forget_at_ms,
            } => {
                let d = &record.delivery;
                if let Some(expires_at_ms) = d.expires_at_ms {
                    batch.pending.entry(key.clone()).or_default().end();
                    batch.ids.push((key.clone(), d.id.clone(), None));
                    if record.seq < self.inner.legacy_below {
                        batch.remove(keys::expiry(expires_at_ms, &key, record.seq));
                        batch.remove(keys::legacy_age(&key, d.queued_at_ms, record.seq));
                    }
                }
                batch.insert(
                    keys::expiry(forget_at_ms, &key, record.seq),
                    d.id.as_str().as_bytes(),
                );
                batch.insert(keys::index(&key, &d.id), json(&record.stored()));
            }
            Write::AddPostback {
                key,
                record,
                lane,
                due_ms,
            } => {
                batch.schedule(&lane, due_ms, &key, &record.delivery.id);
                self.inner.stage_record(batch, &key, &record);
            }
            Write::AddFailed {
                key,
                record,
                forget_at_ms,
            } => {
                batch.insert(
                    keys::expiry(forget_at_ms, &key, record.seq),
                    record.delivery.id.as_str().as_bytes(),
                );
                self.inner.stage_record(batch, &key, &record);
            }
            Write::PutContext {
                key,
                context,
                click_id,
            } => {
                if let Some(click) = click_id {
                    batch.insert(
                        keys::click(&key.brand, &click),
                        key.player.as_str().as_bytes(),
                    );
                }
                batch.insert(keys::context(&key), json(&context));
            }
            Write::PutEvent {
                brand,
                outcome,
                forget_at_ms,
            } => {
                batch.insert(
                    keys::forget_event(forget_at_ms, &brand, &outcome.event_id),
                    &[],
                );
                batch.insert(keys::event(&brand, &outcome.event_id), json(&outcome));
            }
            Write::CountUsage {
                brand,
                day,
                events,
                players,
            } => self.usage.push((brand, day, events, players)),
            Write::CountWaiting { key, delta } => {
                self.changes.pending.entry(key).or_default().waiting += delta;
            }
            Write::Schedule {
                key,
                id,
                lane,
                due_ms,
            } => batch.schedule(&lane, due_ms, &key, &id),
            Write::Unschedule {
                key,
                id,
                lane,
                due_ms,
            } => batch.unschedule(&lane, due_ms, &key, &id),
            Write::PutHealth {
                brand,
                definition,
                health,
            } => match health {
                Some(health) => batch.insert(keys::health(&brand, &definition), json(&health)),
                None => batch.remove(keys::health(&brand, &definition)),
            },
            Write::DropDue(entry) => {
                batch.remove(keys::expiry(entry.due_ms, &entry.key, entry.seq));
            }
            Write::Forget { key, record } => {
                let d = &record.delivery;
                batch.remove(keys::index(&key, &d.id));
                batch.remove_report_row(&key, &record);
            }
            Write::ForgetEvent { brand, id, due_ms } => {
                batch.remove(keys::forget_event(due_ms, &brand, &id));
                batch.remove(keys::event(&brand, &id));
            }
            Write::PutLease { key, lease } => self.leases.push((key, lease)),
        }
    }
}

#[async_trait]
impl Queues for SledStore {
    async fn transact(
        &self,
        scope: Scope,
        mode: Mode,
        mut work: Work,
    ) -> Result<Box<dyn Any + Send>, StoreError> {
        let (out, added, durable) = self
            .blocking(move |inner| {
                inner.check_open()?;
                let players = scope.players.iter().map(|k| inner.stripe_index(k));
                let events = scope.events.iter().map(|(b, e)| inner.stripe_index((b, e)));
                let mut stripes: Vec<usize> = players.chain(events).collect();
                stripes.sort_unstable();
                stripes.dedup();
                let _guards: Vec<_> = stripes.iter().map(|&i| lock(&inner.stripes[i])).collect();
                let mut tx = SledTx {
                    inner,
                    changes: Changes::default(),
                    leases: Vec::new(),
                    added: HashMap::new(),
                    usage: Vec::new(),
                    stripes,
                    entries: HashMap::new(),
                    queued: HashMap::new(),
                    pages: HashMap::new(),
                    failed: None,
                };
                let out = work(&mut tx)?;
                tx.finish_pages();
                let SledTx {
                    changes,
                    leases,
                    added,
                    usage,
                    failed,
                    ..
                } = tx;
                if let Some(e) = failed {
                    return Err(e);
                }
                // New pixels are a delivery barrier until durable, so a transaction that adds any
                // waits for its sync whatever it asked; any other lazy one costs no sync of its own.
                let wait = mode.durability == Durability::Wait || !added.is_empty();
                let durable = inner.apply(changes, wait)?;
                for (brand, day, events, players) in usage {
                    inner.count_usage(&brand, day, events, players);
                }
                for (key, lease) in leases {
                    match lease {
                        Some(lease) => inner.leases.insert(key, lease),
                        None => inner.leases.remove(&key).map(|(_, l)| l),
                    };
                }
                for (key, range) in &added {
                    inner.unflushed.entry(key.clone()).or_default().push(*range);
                }
                // A transaction that must be durable and wrote nothing may still have read what
                // others wrote and are waiting to sync: it answers after them.
                let durable = match durable {
                    Some(durable) => Some(durable),
                    None if mode.durability == Durability::Wait => Some(inner.log.sync_point()?),
                    None => None,
                };
                Ok((out, added, durable))
            })
            .await?;
        if let Some(durable) = durable {
            let synced = durable.wait().await;
            for (key, range) in &added {
                self.inner.flushed(key, *range);
            }
            synced?;
        }
        Ok(out)
    }

    fn announce(&self, key: &PlayerKey) {
        // No receiver is fine: nobody online for now, the pixels wait.
        let _ = self.inner.announce.send(Announcement::Player(key.clone()));
    }

    fn announce_postbacks(&self) {
        self.inner.outbox.notify_one();
    }

    async fn due_entries(
        &self,
        until_ms: u64,
        after: Option<DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.blocking(move |inner| inner.due_entries(until_ms, after.as_ref(), limit))
            .await
    }

    async fn due_events(
        &self,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, BrandId, EventId)>, StoreError> {
        self.blocking(move |inner| {
            let end = keys::due_bound(b'y', until_ms);
            let mut out = Vec::new();
            for k in inner
                .log
                .range(Bound::Included(b"y"), Bound::Excluded(&end), false)
                .keys()
                .take(limit)
            {
                let k = k?;
                let (brand, id) = keys::parse_forget_event(&k)
                    .ok_or_else(|| StoreError::corrupt("corrupt event key"))?;
                let due_ms =
                    keys::due_of(&k).ok_or_else(|| StoreError::corrupt("corrupt event key"))?;
                out.push((due_ms, brand, id));
            }
            Ok(out)
        })
        .await
    }

    async fn lanes(&self) -> Result<Vec<LaneDue>, StoreError> {
        let lanes = lock(&self.inner.lanes);
        Ok(lanes
            .iter()
            .filter_map(|(lane, times)| {
                times.keys().next().map(|&next_ms| LaneDue {
                    lane: lane.clone(),
                    next_ms,
                })
            })
            .collect())
    }

    fn surely_idle(&self, key: &PlayerKey) -> bool {
        // Exact: a player's count rises when its batch applies (under its stripe), before its flush,
        // and its pixels become leasable only after that, when the ledger announces them and the
        // session asks again. With nothing pending, a lease with nothing in flight is not renewed by
        // asking: the answer would be nothing, and nothing written.
        self.inner.check_open().is_ok()
            && self.inner.pending_count(key) == 0
            && self
                .inner
                .leases
                .get(key)
                .is_none_or(|lease| lease.in_flight.is_empty())
    }
}

/// Players one [`Inner::due_entries`] call surveys at most: a bound on its work when many floors have
/// gone stale (an old data dir's first sweep, or many queues drained half-way).
pub(super) const SURVEY_BUDGET: usize = 1024;
/// Players one call surveys at most when none of them had anything to list yet: so a call whose
/// budget went on stale floors still lists what comes after them, up to this bound on its work.
const SURVEY_CAP: usize = 16 * SURVEY_BUDGET;
/// Players surveyed between two looks at whether the call has found enough.
const SURVEY_CHUNK: usize = 64;

/// What one upkeep pass (the calls of [`Inner::due_entries`] with one `until_ms`, the first without a
/// cursor) has learnt: the players whose due pixels all lie at or before the pass's cursor. The cursor
/// only moves on, so they have nothing for the rest of the pass; without this, players holding expired
/// pixels that a browser has (passed over by the upkeep) would be surveyed again by every call and
/// use up its budget. A memory, not a rule: forgetting it costs surveys, never an entry; a new pass
/// starts afresh.
#[derive(Default)]
pub(super) struct Sweep {
    until_ms: u64,
    done: HashSet<PlayerKey>,
}

/// Where a due entry sits in the order the upkeep walks.
pub(super) fn position(entry: &DueEntry) -> (u64, &PlayerKey, u64) {
    (entry.due_ms, &entry.key, entry.seq)
}

impl Inner {
    /// Due entries after `after`, in order, at most `limit`: the forget times of final records (`x`)
    /// merged with the pending pixels whose expiry has come, found by surveying the players whose
    /// expiry floor has come, lowest first. Entries past what either source listed whole (the `x`
    /// range cut at `limit`, the first player not surveyed) are left for the next call, so the
    /// order holds.
    pub(super) fn due_entries(
        &self,
        until_ms: u64,
        after: Option<&DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let end = keys::due_bound(b'x', until_ms);
        let from = match after {
            Some(e) => [keys::expiry(e.due_ms, &e.key, e.seq).as_slice(), &[0]].concat(),
            None => b"x".to_vec(),
        };
        let mut due = Vec::new();
        for entry in self
            .log
            .range(Bound::Included(&from), Bound::Excluded(&end), false)
            .take(limit)
        {
            let (k, id) = entry?;
            let (key, seq) =
                keys::parse_expiry(&k).ok_or_else(|| StoreError::corrupt("corrupt expiry key"))?;
            let due_ms =
                keys::due_of(&k).ok_or_else(|| StoreError::corrupt("corrupt expiry key"))?;
            let id = std::str::from_utf8(&id)
                .ok()
                .and_then(|s| PixelId::parse_stored(s).ok());
            due.push(DueEntry {
                due_ms,
                key,
                seq,
                id,
            });
        }
        // The stored list stops at its last entry when it was cut at `limit`.
        let stored_cut = (due.len() == limit).then(|| due.last().cloned()).flatten();
        let wanted = |e: &DueEntry| {
            after.is_none_or(|a| position(e) > position(a))
                && stored_cut
                    .as_ref()
                    .is_none_or(|c| position(e) <= position(c))
        };
        // A player not surveyed has nothing due before its floor, and its entries follow those of
        // players before it at that floor: an entry before the first such player is in its place.
        let placed = |e: &DueEntry, first: &Option<(u64, PlayerKey)>| {
            first
                .as_ref()
                .is_none_or(|(floor, key)| position(e) < (*floor, key, 0))
        };
        let mut sweep = std::mem::take(&mut *lock(&self.sweep));
        if after.is_none() || sweep.until_ms != until_ms {
            sweep = Sweep {
                until_ms,
                done: HashSet::new(),
            };
        }
        let mut surveyed = HashSet::new();
        let skip = |k: &PlayerKey, surveyed: &HashSet<PlayerKey>, done: &HashSet<PlayerKey>| {
            surveyed.contains(k) || done.contains(k)
        };
        let unsurveyed = loop {
            let (players, _) = self.summaries().expiring(
                until_ms,
                |k| skip(k, &surveyed, &sweep.done),
                SURVEY_CHUNK,
            );
            if players.is_empty() {
                break None;
            }
            for key in players {
                let pixels = self.survey(&key, until_ms)?.0;
                if pixels
                    .iter()
                    .all(|e| after.is_some_and(|a| position(e) <= position(a)))
                {
                    // Nothing after the cursor, now or later in this pass.
                    sweep.done.insert(key.clone());
                }
                due.extend(pixels);
                surveyed.insert(key);
            }
            // Surveys move floors: the first player left is looked up afresh.
            let first = self
                .summaries()
                .expiring(until_ms, |k| skip(k, &surveyed, &sweep.done), 0)
                .1;
            let ready = due
                .iter()
                .filter(|e| wanted(e) && placed(e, &first))
                .count();
            let spent = surveyed.len() >= SURVEY_BUDGET && ready > 0;
            if first.is_none() || ready >= limit || spent || surveyed.len() >= SURVEY_CAP {
                break first;
            }
        };
        *lock(&self.sweep) = sweep;
        due.retain(|e| wanted(e) && placed(e, &unsurveyed));
        due.sort_by(|a, b| position(a).cmp(&position(b)));
        due.dedup_by(|a, b| position(a) == position(b));
        due.truncate(limit);
        Ok(due)
    }
}

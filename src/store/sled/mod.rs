//! The embedded engine: one sled tree, group-committed.
//!
//! # Layout of the `data` tree
//! Everything lives in one tree so that a change touching a queue entry, its record and its player's
//! summary is a single atomic change. Keys start with a one-byte table tag; ids never contain NUL (see
//! [`crate::ids`]), so NUL separates them:
//!
//! | key | value |
//! |---|---|
//! | `b` brand | [`Brand`] JSON |
//! | `q` brand NUL player NUL seq(u64 BE) | the queue, in order, in pages: the pending [`QueuedPixel`](crate::pixel::QueuedPixel)s one transaction queued for the player, each with its own seq and its [`Record`], under the lowest seq ([`entry`]; a page of one at its own seq is the entry alone; entries written before hold the pixel's JSON alone, their record in `i`) |
//! | `i` brand NUL player NUL pixel-id | [`Record`] JSON: the record (status, report row, idempotency entry) and queue seq of a postback, or of a pixel once it ended |
//! | `r` brand NUL queued-at(u64 BE ms) player NUL | the report's time index: the rows of the player's records queued in that millisecond, by id ([`report::Bucket`]); a client pixel's row holds its queue seq, where its record is while it is pending (once it ends, `i` has it, and the seq stays unused). Past [`report::MAX_BUCKET_ROWS`] rows, and in data dirs written before buckets, a row has a key of its own, `r` … player NUL pixel-id, valued empty or the seq, read beside the bucket |
//! | `x` due(u64 BE ms) brand NUL player NUL seq | record id: when a final record is forgotten |
//! | `l` brand NUL host NUL due(u64 BE ms) player NUL postback-id | empty: the S2S outbox, one lane per brand and host (`host:port`), each by next attempt (or end of claim) |
//! | `d` brand NUL definition-id | [`Definition`] JSON |
//! | `h` brand NUL definition-id | [`DefinitionHealth`] JSON: the definition's postback failures in a row |
//! | `c` brand NUL player | [`PlayerContext`] JSON: attribution and first-deposit marker |
//! | `e` brand NUL event-id | [`EventOutcome`] JSON: what the event produced, kept as its idempotency record |
//! | `y` due(u64 BE ms) brand NUL event-id | empty: when the event's record is forgotten |
//! | `t` brand | [`BrandSecret`] JSON: the secret of the brand's inbound postback URLs |
//! | `g` brand | [`BrandSecret`] JSON: the key the brand signs player tokens with |
//! | `a` key-id | [`ApiKeyRecord`] JSON: a brand API key's hash, found by the id the key carries |
//! | `o` brand NUL key-id | empty: the brand's API keys |
//! | `f` brand | [`ParamsSeen`](crate::attribution::ParamsSeen) JSON: the parameter names the brand has seen |
//! | `n` brand NUL player NUL | the player's pending summary ([`backlog::Summary`]): count, queued floor, expiry floor (3 × u64 BE), and while some wait for consent their count (a 4th) |
//! | `m` name | engine metadata, e.g. which derived tables have been built |
//!
//! The lanes of the outbox and their due times are also kept in memory (rebuilt at open), so the sender
//! can see which lanes have due work without reading the disk. (`s` due NUL brand… was the outbox of one
//! global line before lanes; a data dir that has it is moved to `l` at open.)
//!
//! `n` is derived from `q`: every change to a queue goes through [`Changes`], which writes the player's
//! summary in the same journal record. A pending pixel costs sled at most two keys, its queue entry
//! (with its record) and its report row, and pixels queued together share their page's key and their
//! report rows' key;
//! what used to be three keys more per pixel (its expiry `x`, its age `p`, the count `n`) is one key
//! per player, and the orders over it (biggest backlogs, oldest pixels, earliest expiries) live in
//! memory ([`backlog`]),
//! rebuilt from `n` at open. A data dir written before the summaries gets them at open, once
//! ([`migrate::summarise_queues`]).
//!
//! `seq` comes from sled's persistent monotonic id generator, so queue order survives restarts. A record
//! (`i`, `r`) and an event record (`e`) are forgotten a retention period after they can no longer change,
//! and never while a pixel they describe could still fire: that is what keeps retries idempotent.
//!
//! # Concurrency
//! sled is single-process (it locks its directory), so process-local locks are enough here: every change
//! to one player's queue happens under that player's stripe lock, which makes "check the id index, then
//! write" atomic. An event batch takes the stripes of all its players and event ids, in ascending order
//! (every other path holds one stripe at most, so no cycle can form). The lock is never held across an `.await`; the fsync wait happens after it is released.
//! Leases live in memory: they die with the process, exactly as the trait allows.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::sled::{Db, IVec};
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{Notify, broadcast};

mod backlog;
mod catalog;
mod entry;
mod keys;
mod log;
mod migrate;
mod overlay;
mod pending;
mod queues;
mod report;
mod threads;

use self::backlog::{Backlogs, Summary};
use self::log::WriteLog;
use self::migrate::{
    add_missing_secrets, drop_backlog_ranking, move_outbox_to_lanes, summarise_queues,
};
use self::overlay::Op;
use self::pending::{Lookup, PendingIds};
use self::threads::StoreThreads;

use super::journal::{self, JournalOptions};
use super::{Lane, StoreError};
use crate::brand::SecretKind;
use crate::clock::SharedClock;
use crate::definition::Definition;
use crate::ids::{BrandId, DefinitionId, EventId, PixelId, PlayerId, PlayerKey};
use crate::metrics::Metrics;
use crate::store::queues::{DueEntry, Lease, Record};

/// Milliseconds in a day: the unit of the events quota (UTC days).
const DAY_MS: u64 = 24 * 3600 * 1000;
/// Lock stripes for per-player serialisation; enough that unrelated players rarely share one.
const STRIPES: usize = 1024;
/// How long `open` waits for a directory lock held by a store closing in this process.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);
/// Between two tries of the lock.
const LOCK_RETRY: Duration = Duration::from_millis(20);
/// Announcements buffered per subscriber before it lags (and then resynchronises).
const ANNOUNCE_CAPACITY: usize = 16 * 1024;

/// The engine's directory in the hub's data dir.
pub const STORE_DIR: &str = "sled";
/// The journal's directory in the engine's.
pub const JOURNAL_DIR: &str = "journal";

/// Options of the embedded engine.
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// Bytes of sled's page cache: most of the hub's memory under a large data set.
    pub cache_bytes: u64,
    /// Bytes of each journal segment.
    pub journal_segment_bytes: u64,
    /// Where pixel transitions, flushes and upkeep are counted.
    pub metrics: Arc<Metrics>,
    /// What "now" is, for expiry, retention, the sweeper and every timestamp written.
    pub clock: SharedClock,
}

/// The embedded, single-process [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The journal, the overlay and sled behind them: every read and write of the `data` tree goes
    /// through it.
    log: Arc<WriteLog>,
    stripes: Box<[Mutex<()>]>,
    stripe_hasher: RandomState,
    /// Serialises catalog changes, so each one's expectations hold when it is applied.
    catalog_lock: Mutex<()>,
    leases: DashMap<PlayerKey, Lease>,
    /// Every player's pending summary, each brand's depth and the orders over them: rebuilt from `n`
    /// at open, changed only under a player's stripe lock after the record that changed its queue
    /// was written. Taken after a stripe lock, never before one.
    backlogs: Mutex<Backlogs>,
    /// Players the current upkeep pass surveyed and found nothing due after its cursor: pixels a
    /// browser holds, which the upkeep passes over. Later calls of the pass skip them, so a pass goes on
    /// past any number of them (see [`queues::Sweep`]).
    sweep: Mutex<queues::Sweep>,
    /// Pixels with a lower sequence number were queued before the pending summaries and may still have
    /// an age key `p` and an expiry key `x`: they are removed when the pixel ends (an `x` key left
    /// behind would forget the final record at the pixel's old expiry time).
    legacy_below: u64,
    announce: broadcast::Sender<crate::store::Announcement>,
    /// Woken when an ingest adds postbacks, so the sender does not wait for its next poll.
    outbox: Notify,
    /// The threads store calls run on.
    threads: StoreThreads,
    /// The outbox's lanes: per lane, how many entries are due at each time. Rebuilt from `l` at open and
    /// changed by [`Inner::apply`] after the batch that changed `l`, under the player's stripe lock.
    lanes: Mutex<HashMap<Lane, BTreeMap<u64, u32>>>,
    /// Outbox entries per brand, for its quota; changed with `lanes`.
    outbox_size: DashMap<BrandId, u64>,
    /// Players with an attribution context (`c`) per brand, for its quota; rebuilt at open.
    players: DashMap<BrandId, u64>,
    /// New events per brand on one UTC day (the day's number, the count), for its quota. In memory:
    /// a restart starts the day's count afresh.
    events_today: DashMap<BrandId, (u64, u64)>,
    clock: SharedClock,
    /// Sequence ranges per player that are written but not yet flushed. `lease` never hands out a pixel
    /// at or after one of them: a browser must not fire what a crash could still erase (the caller, who
    /// got no 202, would queue it again).
    unflushed: DashMap<PlayerKey, Vec<(u64, u64)>>,
    /// Set by `close`; every later change is refused.
    closed: AtomicBool,
    /// Where each pending pixel's record is, by id, for the players looked up lately.
    pending_ids: PendingIds,
    /// Catalog entries as last read, until they are written (filled and emptied under `catalog_lock`).
    catalog_cache: DashMap<crate::store::catalog::Entry, crate::store::catalog::Value>,
}

/// Where a pending pixel's queue entry is: its position, and the page holding it (its key's position
/// and its value as read).
#[derive(Clone)]
struct Held {
    seq: u64,
    page: u64,
    value: IVec,
}

impl Held {
    /// The entry's bytes.
    fn entry(&self) -> Result<&[u8], StoreError> {
        entry::find(self.page, &self.value, self.seq)?
            .ok_or_else(|| StoreError::corrupt("queue entry missing from its page"))
    }
}

/// A batch of changes and what it does to queues, applied together by [`Inner::apply`]: the pending
/// counts and backlog ranking (`n`, `k`), the brand depth and the metrics all follow from it, so no path
/// can change a queue and forget one of them.
#[derive(Default)]
struct Changes {
    ops: Vec<Op>,
    /// Per change, whether it puts a key the engine does not hold (one with a new sequence number, or
    /// the summary of a player with nothing pending): then sled does not hold it either, unless the
    /// overlay still has a removal of it to write, and the overlay knows that ([`overlay`]).
    fresh: Vec<bool>,
    /// Per player, the client pixels the batch adds or finalizes.
    pending: HashMap<PlayerKey, backlog::Change>,
    /// Outbox entries the batch adds (true) or removes (false): lane and due time.
    outbox: Vec<(Lane, u64, bool)>,
    /// Pending pixels whose entry holds their record, queued (at that position) or ended (`None`):
    /// what [`PendingIds`] follows.
    ids: Vec<(PlayerKey, PixelId, Option<u64>)>,
    /// Report rows to add or remove, by bucket ([`report::Bucket`]): read, changed and written back
    /// by [`Inner::apply`], under the player's stripe lock.
    report_rows: BTreeMap<Vec<u8>, Vec<report::RowEdit>>,
}

impl Changes {
    fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.ops.push((key.into(), Some(value.into())));
        self.fresh.push(false);
    }

    /// Puts a key the engine does not hold: one with a sequence number [`Tx::next_seq`] just gave out
    /// (a new queue page), a position inside a page that is split off it (a page's key is its lowest
    /// position, so no page ever had it), or a summary where none is.
    fn insert_fresh(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.insert(key, value);
        *self.fresh.last_mut().expect("just pushed") = true;
    }

    fn remove(&mut self, key: impl Into<IVec>) {
        self.ops.push((key.into(), None));
        self.fresh.push(false);
    }

    /// Adds a record's report row: `seq` says where a pending pixel's queue entry is.
    fn add_report_row(
        &mut self,
        key: &PlayerKey,
        queued_at_ms: u64,
        id: &PixelId,
        seq: Option<u64>,
    ) {
        self.report_rows
            .entry(keys::report_bucket(key, queued_at_ms))
            .or_default()
            .push(report::RowEdit::Add(id.clone(), seq));
    }

    /// Removes a record's report row, from its bucket or its own key, wherever it is.
    fn remove_report_row(&mut self, key: &PlayerKey, record: &Record) {
        let d = &record.delivery;
        self.report_rows
            .entry(keys::report_bucket(key, d.queued_at_ms))
            .or_default()
            .push(report::RowEdit::Remove(d.id.clone()));
    }

    /// Puts a postback in its lane of the outbox, due at `due`.
    fn schedule(&mut self, lane: &Lane, due: u64, key: &PlayerKey, id: &PixelId) {
        self.insert(keys::outbox(lane, due, key, id), &[]);
        self.outbox.push((lane.clone(), due, true));
    }

    /// Takes out an outbox entry the caller has seen (under the player's stripe lock).
    fn unschedule(&mut self, lane: &Lane, due: u64, key: &PlayerKey, id: &PixelId) {
        self.remove(keys::outbox(lane, due, key, id));
        self.outbox.push((lane.clone(), due, false));
    }
}

/// A failure of the engine. sled's I/O errors (a full disk among them), corruption and bugs leave it
/// unusable (its error is sticky), so they are [`StoreError::Failed`]; anything else (a stored value that
/// does not parse) fails only the call.
fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> StoreError {
    let fatal = (&e as &dyn std::any::Any)
        .downcast_ref::<::sled::Error>()
        .is_some_and(|e| {
            matches!(
                e,
                ::sled::Error::Io(_)
                    | ::sled::Error::Corruption { .. }
                    | ::sled::Error::ReportableBug(_)
            )
        });
    if fatal {
        StoreError::Failed(Arc::new(e))
    } else {
        StoreError::Backend(Arc::new(e))
    }
}

/// Takes one of the engine's mutexes. A mutex poisoned by a panic elsewhere is taken all the same: the
/// stripes guard no data, only ordering, and the in-memory indexes behind the others are changed by
/// code that does not panic half-way; one failed request must not stop every other.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SledStore {
    /// Opens (or creates) the store in `dir` and starts its group-commit and expiry tasks. Must be called
    /// inside a tokio runtime.
    pub fn open(dir: &Path, options: SledOptions) -> Result<Self, StoreError> {
        let db = open_db(dir, options.cache_bytes)?;
        let data = db.open_tree("data").map_err(backend)?;
        // Replays the journal into sled first: what follows reads sled directly.
        let journal = JournalOptions {
            segment_bytes: options.journal_segment_bytes,
            ..JournalOptions::new(Arc::clone(&options.metrics))
        };
        let log = WriteLog::open(dir, db.clone(), data.clone(), journal)?;

        let legacy_below = summarise_queues(&data, log.seq_bound())?;
        drop_backlog_ranking(&data)?;
        // Depths and orders from the per-player summaries: one small key per player, where the
        // queue is a key per pixel with its body (5 million pixels took 11 s to scan, warm).
        let mut backlogs = Backlogs::default();
        for entry in data.scan_prefix(b"n") {
            let (k, v) = entry.map_err(backend)?;
            let key = keys::parse_summary(&k)
                .ok_or_else(|| StoreError::corrupt("corrupt summary key"))?;
            backlogs.set(&key, Summary::decode(&v)?);
        }
        add_missing_secrets(&data, options.clock.now_ms())?;
        move_outbox_to_lanes(&data)?;
        let mut lanes: HashMap<Lane, BTreeMap<u64, u32>> = HashMap::new();
        let outbox_size = DashMap::new();
        for entry in data.scan_prefix(b"l").keys() {
            let k = entry.map_err(backend)?;
            let (lane, due, _, _) =
                keys::parse_outbox(&k).ok_or_else(|| StoreError::corrupt("corrupt outbox key"))?;
            *outbox_size.entry(lane.brand.clone()).or_insert(0u64) += 1;
            *lanes.entry(lane).or_default().entry(due).or_insert(0) += 1;
        }
        let players = DashMap::new();
        for entry in data.scan_prefix(b"c").keys() {
            let k = entry.map_err(backend)?;
            let brand = keys::parse_context_brand(&k)
                .ok_or_else(|| StoreError::corrupt("corrupt context key"))?;
            *players.entry(brand).or_insert(0u64) += 1;
        }

        // The migrations' writes are durable before the journal's records can build on them.
        log.settle()?;
        let inner = Arc::new(Inner {
            log,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            stripe_hasher: RandomState::new(),
            catalog_lock: Mutex::new(()),
            leases: DashMap::new(),
            backlogs: Mutex::new(backlogs),
            sweep: Mutex::default(),
            legacy_below,
            unflushed: DashMap::new(),
            closed: AtomicBool::new(false),
            pending_ids: PendingIds::default(),
            catalog_cache: DashMap::new(),
            announce: broadcast::channel(ANNOUNCE_CAPACITY).0,
            outbox: Notify::new(),
            threads: StoreThreads::start().map_err(backend)?,
            lanes: Mutex::new(lanes),
            outbox_size,
            players,
            events_today: DashMap::new(),
            clock: options.clock,
        });
        Ok(Self { inner })
    }

    /// Runs `work` on one of the store's own threads ([`StoreThreads`]). sled's calls block (on the disk,
    /// on its own locks; after a failed write, for ever), so none runs on an async worker: a stuck store
    /// must never freeze sessions, probes or shutdown. The caller bounds how long it waits.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .threads
            .handle
            .spawn_blocking(move || work(&inner))
            .await
            .unwrap_or_else(|e| Err(backend(e)))
    }

    /// About how many bytes of changes the journal holds that sled does not yet: disk the next
    /// checkpoint will take, which the guard counts as taken.
    pub fn pending_bytes(&self) -> u64 {
        self.inner.log.pending_bytes()
    }

    /// Bytes the database takes on disk (its files); the guard's size cap reads it.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.log.size_on_disk()
    }
}

impl Inner {
    fn stripe_index(&self, what: impl std::hash::Hash) -> usize {
        (self.stripe_hasher.hash_one(what) as usize) % STRIPES
    }

    fn read<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.log.get(key)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(backend),
            None => Ok(None),
        }
    }

    fn brand_exists(&self, brand: &BrandId) -> Result<(), StoreError> {
        if self.log.contains(&keys::brand(brand))? {
            Ok(())
        } else {
            Err(StoreError::UnknownBrand(brand.clone()))
        }
    }

    fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError> {
        self.log
            .scan_prefix(&keys::definition_prefix(brand))
            .map(|entry| {
                let (_, v) = entry?;
                serde_json::from_slice(&v).map_err(backend)
            })
            .collect()
    }

    /// Stages a record and its report index entry.
    fn stage_record(&self, batch: &mut Changes, key: &PlayerKey, record: &Record) {
        let d = &record.delivery;
        batch.insert(keys::index(key, &d.id), json(&record.stored()));
        batch.add_report_row(key, d.queued_at_ms, &d.id, None);
    }

    /// The record under a pixel's or postback's id, read without the player's stripe lock (the
    /// report, an event's statuses, the postback sender): `seq`, when known (a report row says it), is
    /// where a pending pixel's entry would be.
    fn record(
        &self,
        key: &PlayerKey,
        id: &PixelId,
        seq: Option<u64>,
    ) -> Result<Option<Record>, StoreError> {
        if let Some(record) = self.read(&keys::index(key, id))? {
            return Ok(Some(record));
        }
        let found = match seq {
            Some(seq) => self.entry_at(key, seq)?,
            None if self.pending_count(key) > 0 => self.find_queued(key, id)?,
            None => None,
        };
        if let Some(found) = found {
            let entry = found.entry()?;
            if entry::id(entry)? == Some(id.as_str().as_bytes()) {
                return entry::record(entry);
            }
        }
        // The pixel may have ended since `i` was read.
        self.read(&keys::index(key, id))
    }

    /// The page of the player's queue that would hold position `seq`: the one with the greatest key
    /// at or before it (a page's key is its lowest position); its key's position and value.
    fn page_of(&self, key: &PlayerKey, seq: u64) -> Result<Option<(u64, IVec)>, StoreError> {
        // Most pages are one entry under its own position: one look-up.
        if let Some(value) = self.log.get(&keys::queue(key, seq))? {
            return Ok(Some((seq, value)));
        }
        let (low, high) = (keys::queue_prefix(key), keys::queue(key, seq));
        let below = self
            .log
            .range(Bound::Included(&low), Bound::Included(&high), true)
            .next();
        match below {
            Some(item) => {
                let (k, v) = item?;
                let (_, first) = keys::parse_queue(&k)
                    .ok_or_else(|| StoreError::corrupt("corrupt queue key"))?;
                Ok(Some((first, v)))
            }
            None => Ok(None),
        }
    }

    /// The player's queue entry at position `seq`, if one is there.
    fn entry_at(&self, key: &PlayerKey, seq: u64) -> Result<Option<Held>, StoreError> {
        let Some((page, value)) = self.page_of(key, seq)? else {
            return Ok(None);
        };
        let held = Held { seq, page, value };
        Ok(entry::find(page, &held.value, seq)?
            .is_some()
            .then_some(held))
    }

    /// Calls `visit` with the id of each of the player's queue entries that hold their record and
    /// where it is, in queue order, until it returns false.
    fn walk_entries(
        &self,
        key: &PlayerKey,
        mut visit: impl FnMut(&[u8], &Held) -> bool,
    ) -> Result<(), StoreError> {
        for item in self.log.scan_prefix(&keys::queue_prefix(key)) {
            let (k, value) = item?;
            let (_, page) =
                keys::parse_queue(&k).ok_or_else(|| StoreError::corrupt("corrupt queue key"))?;
            for queued in entry::entries(page, &value) {
                let (seq, bytes) = queued?;
                if let Some(id) = entry::id(bytes)? {
                    let held = Held {
                        seq,
                        page,
                        value: value.clone(),
                    };
                    if !visit(id, &held) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// The player's queue entry holding pixel `id` with its record, read from the queue.
    fn find_queued(&self, key: &PlayerKey, id: &PixelId) -> Result<Option<Held>, StoreError> {
        let mut found = None;
        self.walk_entries(key, |queued, held| {
            if queued == id.as_str().as_bytes() {
                found = Some(held.clone());
            }
            found.is_none()
        })?;
        Ok(found)
    }

    /// Where the player's pending pixel `id` is, if its entry holds its record: from [`PendingIds`],
    /// indexing the player first when it is not. Call under the player's stripe lock.
    fn pending_seq(&self, key: &PlayerKey, id: &PixelId) -> Result<Option<u64>, StoreError> {
        // The count is exact (every change of the queue writes it), but an empty queue is cheap to
        // confirm, and a retried id must never be missed.
        if self.pending_count(key) == 0
            && self
                .log
                .scan_prefix(&keys::queue_prefix(key))
                .next()
                .is_none()
        {
            return Ok(None);
        }
        let bytes = id.as_str().as_bytes();
        match self.pending_ids.find(key, bytes) {
            Lookup::At(seq) => Ok(Some(seq)),
            Lookup::Absent => Ok(None),
            Lookup::Shared => Ok(self.find_queued(key, id)?.map(|held| held.seq)),
            Lookup::Unknown => {
                let mut queue = Vec::new();
                self.walk_entries(key, |queued, held| {
                    queue.push((queued.to_vec(), held.seq));
                    true
                })?;
                self.pending_ids.fill(
                    key,
                    queue.iter().map(|(queued, seq)| (queued.as_slice(), *seq)),
                );
                let found = queue.iter().find(|(queued, _)| queued == bytes);
                Ok(found.map(|(_, seq)| *seq))
            }
        }
    }

    /// Whether the postback has an outbox entry at `due` in `lane`.
    fn scheduled(
        &self,
        lane: &Lane,
        due: u64,
        key: &PlayerKey,
        id: &PixelId,
    ) -> Result<bool, StoreError> {
        self.log.contains(&keys::outbox(lane, due, key, id))
    }

    /// Applies `changes` atomically, with the pending counts and backlog ranking of every player they
    /// touch, as one journal record; then adjusts the brand depths and counts the transitions. Call
    /// under the stripe locks of those players (the counts are read, then written). With `wait`, the
    /// answer says when the record is durable; without, the record is synced with the next one somebody
    /// waits for ([`WriteLog::commit_lazy`]) and the answer is `None`, as it is when there was nothing
    /// to write.
    fn apply(
        &self,
        mut changes: Changes,
        wait: bool,
    ) -> Result<Option<journal::Durable>, StoreError> {
        for (bucket_key, edits) in std::mem::take(&mut changes.report_rows) {
            let mut bucket = match self.log.get(&bucket_key)? {
                Some(value) => report::Bucket::decode(&value)?,
                None => report::Bucket::default(),
            };
            let mut changed = false;
            for edit in edits {
                match bucket.edit(edit) {
                    report::Edited::Bucket => changed = true,
                    report::Edited::Own(id, value) => {
                        let own = keys::report_own(&bucket_key, &id);
                        match value {
                            Some(value) => changes.insert(own, value),
                            None => changes.remove(own),
                        }
                    }
                }
            }
            if !changed {
                continue;
            }
            if bucket.is_empty() {
                changes.remove(bucket_key);
            } else {
                changes.insert(bucket_key, bucket.encode());
            }
        }
        if changes.ops.is_empty() {
            return Ok(None); // nothing to write (a lease that found nothing, an ack of unknown ids)
        }
        let mut summaries = Vec::with_capacity(changes.pending.len());
        let ids = std::mem::take(&mut changes.ids);
        {
            let backlogs = self.summaries();
            for (key, change) in changes.pending.drain() {
                let (before, after) = {
                    let before = backlogs.summary(&key);
                    (before, before.after(change))
                };
                if before != after {
                    summaries.push((key, before.count == 0, after));
                }
            }
        }
        for (key, was_empty, after) in &summaries {
            if after.count == 0 {
                changes.remove(keys::summary(key));
            } else if *was_empty {
                // A player with nothing pending has no summary: one put now and removed before the
                // next checkpoint (a pixel delivered as it arrives) costs sled nothing.
                changes.insert_fresh(keys::summary(key), after.encode().as_slice());
            } else {
                changes.insert(keys::summary(key), after.encode().as_slice());
            }
        }
        let durable = if wait {
            Some(self.log.commit(changes.ops, &changes.fresh)?)
        } else {
            self.log.commit_lazy(changes.ops, &changes.fresh)?;
            None
        };
        if !changes.outbox.is_empty() {
            let mut lanes = lock(&self.lanes);
            for (lane, due, added) in changes.outbox {
                let mut size = self.outbox_size.entry(lane.brand.clone()).or_insert(0);
                *size = if added {
                    *size + 1
                } else {
                    size.saturating_sub(1)
                };
                drop(size);
                let times = lanes.entry(lane.clone()).or_default();
                let count = times.entry(due).or_insert(0);
                if added {
                    *count += 1;
                } else {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        times.remove(&due);
                    }
                }
                if times.is_empty() {
                    lanes.remove(&lane);
                }
            }
        }
        for (key, id, seq) in &ids {
            self.pending_ids.change(key, id.as_str().as_bytes(), *seq);
        }
        if !summaries.is_empty() {
            let mut backlogs = self.summaries();
            for (key, _, after) in &summaries {
                backlogs.set(key, *after);
            }
        }
        Ok(durable)
    }

    fn summaries(&self) -> MutexGuard<'_, Backlogs> {
        lock(&self.backlogs)
    }

    /// Pending client pixels of a player.
    fn pending_count(&self, key: &PlayerKey) -> u64 {
        self.summaries().summary(key).count
    }

    /// Reads the player's queue under its stripe lock and makes its floors exact (a floor only says
    /// no pixel is older or expires earlier; one that ended may have left it low). Returns the pixels
    /// that expire at or before `until_ms`, by sequence number, and the exact summary.
    fn survey(
        &self,
        key: &PlayerKey,
        until_ms: u64,
    ) -> Result<(Vec<DueEntry>, Summary), StoreError> {
        let _stripe = lock(&self.stripes[self.stripe_index(key)]);
        let prefix = keys::queue_prefix(key);
        let mut due = Vec::new();
        let mut exact = Summary {
            count: 0,
            queued_floor: u64::MAX,
            expiry_floor: u64::MAX,
            waiting: 0,
        };
        for page in self.log.scan_prefix(&prefix) {
            let (k, v) = page?;
            let (_, first) =
                keys::parse_queue(&k).ok_or_else(|| StoreError::corrupt("corrupt queue key"))?;
            for queued in entry::entries(first, &v) {
                let (seq, bytes) = queued?;
                let pixel = entry::pixel(bytes)?;
                exact.count += 1;
                // Not the head's time: two writers read the clock before taking the stripe, so a
                // lower sequence number may carry a later time.
                exact.queued_floor = exact.queued_floor.min(pixel.queued_at_ms);
                exact.expiry_floor = exact.expiry_floor.min(pixel.expires_at_ms);
                if pixel.expires_at_ms <= until_ms {
                    due.push(DueEntry {
                        due_ms: pixel.expires_at_ms,
                        key: key.clone(),
                        seq,
                        id: Some(pixel.id),
                    });
                }
            }
        }
        let mut backlogs = self.summaries();
        let held = backlogs.summary(key);
        if held.count > 0 && exact.count > 0 {
            // The counts stay the ones `n` holds: the queue cap's and the waiting one, kept in step by
            // every transaction.
            exact.count = held.count;
            exact.waiting = held.waiting;
            backlogs.set(key, exact);
        } else {
            exact = held;
        }
        Ok((due, exact))
    }

    /// Counts what an applied batch added (the outbox counts itself in `apply`).
    fn count_usage(&self, brand: &BrandId, day: u64, events: u64, players: u64) {
        let mut today = self.events_today.entry(brand.clone()).or_insert((day, 0));
        if today.0 != day {
            *today = (day, 0);
        }
        today.1 += events;
        drop(today);
        *self.players.entry(brand.clone()).or_insert(0) += players;
    }

    /// New events of the brand on UTC day `day`.
    fn events_on(&self, brand: &BrandId, day: u64) -> u64 {
        self.events_today
            .get(brand)
            .filter(|today| today.0 == day)
            .map_or(0, |today| today.1)
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            self.log.check()
        }
    }

    /// Lifts the delivery barrier of a batch once its flush has finished (successfully or not).
    fn flushed(&self, key: &PlayerKey, range: (u64, u64)) {
        if let dashmap::Entry::Occupied(mut entry) = self.unflushed.entry(key.clone()) {
            entry.get_mut().retain(|r| *r != range);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }
}

/// Opens the database in `dir`. A store closed a moment ago in this process (a restart in place) may
/// still hold the directory lock while sled's own background thread winds down, so a held lock is
/// retried for a short while before it is reported; another live process would still hold it then.
fn open_db(dir: &Path, cache_bytes: u64) -> Result<Db, StoreError> {
    let mut waited = Duration::ZERO;
    loop {
        match ::sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // sled's own flusher (every 500 ms by default) buys nothing here: durability is the
            // journal's, and each checkpoint flushes and syncs sled itself. Without it, sled writes its
            // log as its buffers fill and at each checkpoint; paired runs drained 16% faster.
            .flush_every_ms(None)
            .open()
        {
            // sled reports a held lock only in its message (its error kind is `Other`).
            Err(::sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && waited < LOCK_PATIENCE =>
            {
                std::thread::sleep(LOCK_RETRY);
                waited += LOCK_RETRY;
            }
            result => return result.map_err(backend),
        }
    }
}

/// Bytes reserved for a stored value's JSON: a record's (the most written) is 600 to 700, so it is
/// written without regrowing its buffer.
const JSON_ROOM: usize = 1024;

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(JSON_ROOM);
    serde_json::to_writer(&mut out, value).expect("our stored types serialise infallibly");
    out
}

#[cfg(test)]
mod tests;

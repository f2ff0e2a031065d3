//! The embedded engine: one sled tree, group-committed.
//!
//! # Layout of the `data` tree
//! Everything lives in one tree so that a change touching a queue entry, its id index and its expiry entry
//! is a single atomic `apply_batch`. Keys start with a one-byte table tag; ids never contain NUL (see
//! [`crate::ids`]), so NUL separates them:
//!
//! | key | value |
//! |---|---|
//! | `b` brand | [`Brand`] JSON |
//! | `q` brand NUL player NUL seq(u64 BE) | [`QueuedPixel`] JSON: the queue, in order |
//! | `i` brand NUL player NUL pixel-id | [`IndexRecord`] JSON: id → seq and status, kept as a tombstone after the pixel leaves the queue |
//! | `x` due(u64 BE ms) brand NUL player NUL seq | pixel id: when the pixel expires, or when its tombstone is forgotten |
//! | `d` brand NUL definition-id | [`Definition`] JSON |
//! | `c` brand NUL player | [`PlayerContext`] JSON: attribution and first-deposit marker |
//! | `e` brand NUL event-id | [`EventOutcome`] JSON: what the event produced, kept as its idempotency record |
//! | `o` brand NUL postback-id | [`Postback`](crate::event::Postback) JSON: the S2S outbox, in creation order |
//!
//! `seq` comes from sled's persistent monotonic id generator, so queue order survives restarts.
//!
//! # Concurrency
//! sled is single-process (it locks its directory), so process-local locks are enough here: every change
//! to one player's queue happens under that player's stripe lock, which makes "check the id index, then
//! write" atomic. An event batch takes the stripes of all its players and event ids, in ascending order
//! (every other path holds one stripe at most, so no cycle can form). The lock is never held across an `.await`; the fsync wait happens after it is released.
//! Leases live in memory: they die with the process, exactly as the trait allows.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ::sled::{Batch, Db, IVec, Tree};
use async_trait::async_trait;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::commit::GroupCommit;
use super::{
    Brand, BrandSettings, CancelOutcome, Enqueued, PendingPixel, PixelStatus, Store, StoreError,
    StoreStats, now_ms,
};
use crate::definition::{Definition, DefinitionInput};
use crate::event::{self, Event, EventOutcome, PlayerContext, ProducedOutput};
use crate::ids::{BrandId, DefinitionId, EventId, PixelId, PlayerId, PlayerKey, SessionId};
use crate::pixel::{NewPixel, QueuedPixel};

/// Lock stripes for per-player serialisation; enough that unrelated players rarely share one.
const STRIPES: usize = 1024;
/// How long an id is remembered after its pixel fired, was cancelled or expired, so that a retried
/// enqueue with the same id is recognised instead of queued again.
pub const TOMBSTONE_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// How often due expiry entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Most expiry entries handled per sweep step, so one sweep never holds up writers for long.
const SWEEP_CHUNK: usize = 1000;
/// Announcements buffered per subscriber before it lags (and then resynchronises).
const ANNOUNCE_CAPACITY: usize = 16 * 1024;

/// Options of the embedded engine.
#[derive(Clone, Debug)]
pub struct SledOptions {
    /// TTL of a pixel queued without `ttl_seconds`.
    pub default_ttl: Duration,
}

/// The embedded, single-process [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    data: Tree,
    db: Db,
    commit: GroupCommit,
    stripes: Box<[Mutex<()>]>,
    stripe_hasher: RandomState,
    /// Serialises brand create-or-update so `created` is exact.
    brand_lock: Mutex<()>,
    leases: DashMap<PlayerKey, Lease>,
    /// Exact queue depth per brand, rebuilt from the queue at open and changed only under a stripe lock
    /// after the batch that changed the queue was applied.
    depth: DashMap<BrandId, u64>,
    expired_total: AtomicU64,
    announce: broadcast::Sender<PlayerKey>,
    default_ttl_ms: u64,
    /// Sequence ranges per player that are written but not yet flushed. `lease` never hands out a pixel
    /// at or after one of them: a browser must not fire what a crash could still erase (the caller, who
    /// got no 202, would queue it again).
    unflushed: DashMap<PlayerKey, Vec<(u64, u64)>>,
    /// Set by `close`; every later change is refused.
    closed: AtomicBool,
    stop: CancellationToken,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Which session holds a player's queue, and which queue entries it has been sent but not acknowledged.
struct Lease {
    session: SessionId,
    /// Sequence numbers in flight; never more than the session's window, so a Vec beats a set.
    in_flight: Vec<u64>,
}

/// The id index entry: where the pixel is in the queue while queued, and its final status afterwards.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct IndexRecord {
    seq: u64,
    status: PixelStatus,
    expires_at_ms: u64,
    /// When the status last changed.
    at_ms: u64,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The mutexes guard no data, only ordering; a panic elsewhere cannot leave anything inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SledStore {
    /// Opens (or creates) the store in `dir` and starts its group-commit and expiry tasks. Must be called
    /// inside a tokio runtime.
    pub fn open(dir: &Path, options: SledOptions) -> Result<Self, StoreError> {
        let db = ::sled::Config::new().path(dir).open().map_err(backend)?;
        let data = db.open_tree("data").map_err(backend)?;

        let depth = DashMap::new();
        for entry in data.scan_prefix(b"q") {
            let (key, _) = entry.map_err(backend)?;
            let (player_key, _) =
                keys::parse_queue(&key).ok_or_else(|| backend("corrupt queue key"))?;
            *depth.entry(player_key.brand).or_insert(0u64) += 1;
        }

        let inner = Arc::new(Inner {
            commit: GroupCommit::start(db.clone()),
            data,
            db,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            stripe_hasher: RandomState::new(),
            brand_lock: Mutex::new(()),
            leases: DashMap::new(),
            depth,
            expired_total: AtomicU64::new(0),
            unflushed: DashMap::new(),
            closed: AtomicBool::new(false),
            announce: broadcast::channel(ANNOUNCE_CAPACITY).0,
            default_ttl_ms: options.default_ttl.as_millis() as u64,
            stop: CancellationToken::new(),
            sweeper: Mutex::new(None),
        });
        let sweeper = tokio::spawn(sweep_forever(Arc::downgrade(&inner), inner.stop.clone()));
        *inner.sweeper.lock().unwrap_or_else(|p| p.into_inner()) = Some(sweeper);
        Ok(Self { inner })
    }

    /// Drops expired pixels and forgets old tombstones that are due at `now`. Runs by itself every few
    /// seconds; public so tests and tools can force it.
    pub fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        self.inner.sweep(now)
    }
}

impl Inner {
    fn stripe(&self, key: &PlayerKey) -> &Mutex<()> {
        &self.stripes[self.stripe_index(key)]
    }

    fn stripe_index(&self, what: impl std::hash::Hash) -> usize {
        (self.stripe_hasher.hash_one(what) as usize) % STRIPES
    }

    fn read<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.data.get(key).map_err(backend)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(backend),
            None => Ok(None),
        }
    }

    fn brand_exists(&self, brand: &BrandId) -> Result<(), StoreError> {
        if self
            .data
            .contains_key(keys::brand(brand))
            .map_err(backend)?
        {
            Ok(())
        } else {
            Err(StoreError::UnknownBrand(brand.clone()))
        }
    }

    fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError> {
        self.data
            .scan_prefix(keys::definition_prefix(brand))
            .map(|entry| {
                let (_, v) = entry.map_err(backend)?;
                serde_json::from_slice(&v).map_err(backend)
            })
            .collect()
    }

    /// Stages a new pixel of `key` in `batch`: its queue entry, id index and expiry entry. Returns its
    /// sequence number; the caller applies the batch and adjusts the depth.
    fn stage_pixel(
        &self,
        batch: &mut Batch,
        key: &PlayerKey,
        id: &PixelId,
        pixel: NewPixel,
        now: u64,
    ) -> Result<u64, StoreError> {
        let seq = self.db.generate_id().map_err(backend)?;
        let ttl_ms = pixel.ttl_seconds.map_or(self.default_ttl_ms, |s| s * 1000);
        let queued = QueuedPixel {
            body: pixel.body.with_defaults(id),
            id: id.clone(),
            trigger: pixel.trigger,
            queued_at_ms: now,
            expires_at_ms: now + ttl_ms,
        };
        let rec = IndexRecord {
            seq,
            status: PixelStatus::Queued,
            expires_at_ms: queued.expires_at_ms,
            at_ms: now,
        };
        batch.insert(keys::queue(key, seq), json(&queued));
        batch.insert(keys::index(key, id), json(&rec));
        batch.insert(
            keys::expiry(rec.expires_at_ms, key, seq),
            id.as_str().as_bytes(),
        );
        Ok(seq)
    }

    /// Reads an event's record and brings its client pixels' statuses up to date.
    fn event_record(
        &self,
        brand: &BrandId,
        id: &EventId,
    ) -> Result<Option<EventOutcome>, StoreError> {
        let Some(mut outcome) = self.read::<EventOutcome>(&keys::event(brand, id))? else {
            return Ok(None);
        };
        let key = PlayerKey::new(brand.clone(), outcome.player_id.clone());
        for produced in &mut outcome.pixels {
            if let ProducedOutput::Client(_) = produced.output {
                if let Some(rec) = self.record(&key, &produced.id)? {
                    produced.status = serde_json::to_value(rec.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| produced.status.clone());
                }
            }
        }
        Ok(Some(outcome))
    }

    /// Saves a definition under the brand lock: `replace` names the one it must replace.
    fn save_definition(
        &self,
        brand: &BrandId,
        input: DefinitionInput,
        replace: Option<&DefinitionId>,
    ) -> Result<Definition, StoreError> {
        self.check_open()?;
        let _guard = lock(&self.brand_lock);
        self.brand_exists(brand)?;
        let id = match (replace, &input.id) {
            (Some(id), _) => id.clone(),
            (None, Some(id)) => id.clone(),
            (None, None) => DefinitionId::generate(),
        };
        let key = keys::definition(brand, &id);
        let existing: Option<Definition> = self.read(&key)?;
        let now = now_ms();
        let created_at = match (replace, existing) {
            (Some(_), Some(old)) => old.created_at_ms,
            (Some(_), None) => return Err(StoreError::UnknownDefinition(id)),
            (None, Some(_)) => return Err(StoreError::DefinitionExists(id)),
            (None, None) => now,
        };
        let definition = input.into_definition(id, created_at, now);
        self.data.insert(key, json(&definition)).map_err(backend)?;
        Ok(definition)
    }

    fn record(&self, key: &PlayerKey, id: &PixelId) -> Result<Option<IndexRecord>, StoreError> {
        self.read(&keys::index(key, id))
    }

    /// Moves a queued pixel to a final status within `batch`: out of the queue, its expiry entry replaced
    /// by one that forgets the tombstone later. The caller applies the batch and adjusts the depth.
    fn finalize(
        &self,
        batch: &mut Batch,
        key: &PlayerKey,
        id: &PixelId,
        rec: IndexRecord,
        status: PixelStatus,
        now: u64,
    ) {
        batch.remove(keys::queue(key, rec.seq));
        batch.remove(keys::expiry(rec.expires_at_ms, key, rec.seq));
        let tombstone = IndexRecord {
            status,
            at_ms: now,
            ..rec
        };
        batch.insert(keys::index(key, id), json(&tombstone));
        batch.insert(
            keys::expiry(now + TOMBSTONE_RETENTION_MS, key, rec.seq),
            id.as_str().as_bytes(),
        );
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
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

    fn sub_depth(&self, brand: &BrandId, n: u64) {
        if n > 0 {
            if let Some(mut d) = self.depth.get_mut(brand) {
                *d = d.saturating_sub(n);
            }
        }
    }

    fn in_flight(&self, key: &PlayerKey, seq: u64) -> bool {
        self.leases
            .get(key)
            .is_some_and(|l| l.in_flight.contains(&seq))
    }

    fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        let mut handled = 0;
        let end = keys::expiry_bound(now);
        // A cursor, not a restart from the top: entries that must stay (in flight) are passed over.
        let mut from = b"x".to_vec();
        loop {
            let due: Vec<(IVec, IVec)> = self
                .data
                .range(from.as_slice()..end.as_slice())
                .take(SWEEP_CHUNK)
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            let Some((last, _)) = due.last() else {
                return Ok(handled);
            };
            from = [last.as_ref(), &[0]].concat();
            for (x_key, id) in due {
                let (key, seq) =
                    keys::parse_expiry(&x_key).ok_or_else(|| backend("corrupt expiry key"))?;
                let id = std::str::from_utf8(&id)
                    .ok()
                    .and_then(|s| PixelId::parse(s).ok());
                let _guard = lock(self.stripe(&key));
                // The snapshot was read without the lock: an ack, cancel or lease may have moved this
                // entry since. Only an entry still present describes the record's current state.
                if !self.data.contains_key(&x_key).map_err(backend)? {
                    continue;
                }
                let mut batch = Batch::default();
                batch.remove(x_key.clone());
                let mut expired = 0;
                if let Some(id) = id {
                    match self.record(&key, &id)? {
                        Some(rec) if rec.seq != seq => {} // a stale entry of an older pixel
                        Some(rec) if rec.status == PixelStatus::Queued => {
                            if self.in_flight(&key, rec.seq) {
                                // Sent already: the browser may be firing it. Let its ack or release decide.
                                continue;
                            }
                            self.finalize(&mut batch, &key, &id, rec, PixelStatus::Expired, now);
                            expired = 1;
                        }
                        Some(_) => batch.remove(keys::index(&key, &id)),
                        None => {}
                    }
                }
                self.data.apply_batch(batch).map_err(backend)?;
                self.sub_depth(&key.brand, expired);
                self.expired_total.fetch_add(expired, Ordering::Relaxed);
                handled += 1;
            }
        }
    }
}

async fn sweep_forever(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.sweep(now_ms()) {
            tracing::error!(error = %e, "expiry sweep failed");
        }
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("our stored types serialise infallibly")
}

#[async_trait]
impl Store for SledStore {
    async fn put_brand(
        &self,
        id: &BrandId,
        settings: BrandSettings,
    ) -> Result<(Brand, bool), StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let (brand, created) = {
            let _guard = lock(&inner.brand_lock);
            let key = keys::brand(id);
            let existing: Option<Brand> = inner.read(&key)?;
            let now = now_ms();
            let brand = Brand {
                id: id.clone(),
                name: settings.name,
                allowed_origins: settings.allowed_origins,
                created_at_ms: existing.as_ref().map_or(now, |b| b.created_at_ms),
                updated_at_ms: now,
            };
            inner.data.insert(key, json(&brand)).map_err(backend)?;
            inner.depth.entry(id.clone()).or_insert(0);
            (brand, existing.is_none())
        };
        inner.commit.wait().await?;
        Ok((brand, created))
    }

    async fn get_brand(&self, id: &BrandId) -> Result<Option<Brand>, StoreError> {
        self.inner.read(&keys::brand(id))
    }

    async fn enqueue(
        &self,
        key: &PlayerKey,
        pixels: Vec<NewPixel>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let (answers, range) = {
            let _guard = lock(inner.stripe(key));
            inner.brand_exists(&key.brand)?;
            let now = now_ms();
            let mut batch = Batch::default();
            let mut answers: Vec<Enqueued> = Vec::with_capacity(pixels.len());
            let mut seen_in_batch: HashMap<PixelId, usize> = HashMap::new();
            let mut added = 0u64;
            // The batch's first and last sequence numbers; `None` when every pixel was a duplicate.
            let mut range: Option<(u64, u64)> = None;
            for pixel in pixels {
                if let Some(id) = &pixel.id {
                    if let Some(&first) = seen_in_batch.get(id) {
                        answers.push(Enqueued {
                            duplicate: true,
                            ..answers[first].clone()
                        });
                        continue;
                    }
                    if let Some(rec) = inner.record(key, id)? {
                        seen_in_batch.insert(id.clone(), answers.len());
                        answers.push(Enqueued {
                            id: id.clone(),
                            status: rec.status,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let id = pixel.id.clone().unwrap_or_else(PixelId::generate);
                let seq = inner.stage_pixel(&mut batch, key, &id, pixel, now)?;
                range = Some((range.map_or(seq, |r| r.0), seq));
                seen_in_batch.insert(id.clone(), answers.len());
                answers.push(Enqueued {
                    id,
                    status: PixelStatus::Queued,
                    duplicate: false,
                });
                added += 1;
            }
            inner.data.apply_batch(batch).map_err(backend)?;
            *inner.depth.entry(key.brand.clone()).or_insert(0) += added;
            if let Some(range) = range {
                inner.unflushed.entry(key.clone()).or_default().push(range);
            }
            (answers, range)
        };
        let flushed = inner.commit.wait().await;
        if let Some(range) = range {
            inner.flushed(key, range);
        }
        flushed?;
        if range.is_some() {
            // No receiver is fine: nobody online for now, the pixels wait.
            let _ = inner.announce.send(key.clone());
        }
        Ok(answers)
    }

    async fn pending(&self, key: &PlayerKey) -> Result<Vec<PendingPixel>, StoreError> {
        let now = now_ms();
        let mut out = Vec::new();
        for entry in self.inner.data.scan_prefix(keys::queue_prefix(key)) {
            let (k, v) = entry.map_err(backend)?;
            let pixel: QueuedPixel = serde_json::from_slice(&v).map_err(backend)?;
            if pixel.expires_at_ms <= now {
                continue;
            }
            let seq = keys::parse_queue(&k)
                .map(|(_, seq)| seq)
                .ok_or_else(|| backend("corrupt queue key"))?;
            out.push(PendingPixel {
                in_flight: self.inner.in_flight(key, seq),
                pixel,
            });
        }
        Ok(out)
    }

    async fn cancel(&self, key: &PlayerKey, id: &PixelId) -> Result<CancelOutcome, StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let outcome = 'locked: {
            let _guard = lock(inner.stripe(key));
            let Some(rec) = inner.record(key, id)? else {
                break 'locked CancelOutcome::NotFound;
            };
            if rec.status != PixelStatus::Queued {
                break 'locked CancelOutcome::AlreadyFinal(rec.status);
            }
            if inner.in_flight(key, rec.seq) {
                break 'locked CancelOutcome::InFlight;
            }
            let now = now_ms();
            let status = if rec.expires_at_ms <= now {
                PixelStatus::Expired
            } else {
                PixelStatus::Cancelled
            };
            let mut batch = Batch::default();
            inner.finalize(&mut batch, key, id, rec, status, now);
            inner.data.apply_batch(batch).map_err(backend)?;
            inner.sub_depth(&key.brand, 1);
            if status == PixelStatus::Expired {
                inner.expired_total.fetch_add(1, Ordering::Relaxed);
                break 'locked CancelOutcome::AlreadyFinal(PixelStatus::Expired);
            }
            CancelOutcome::Cancelled
        };
        // Also when nothing changed here: the state we report may be another call's unflushed write.
        inner.commit.wait().await?;
        Ok(outcome)
    }

    async fn lease(
        &self,
        key: &PlayerKey,
        session: SessionId,
        max_in_flight: usize,
    ) -> Result<Vec<QueuedPixel>, StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let _guard = lock(inner.stripe(key));
        let held: Vec<u64> = match inner.leases.get(key) {
            Some(lease) if lease.session != session => return Ok(Vec::new()),
            Some(lease) => lease.in_flight.clone(),
            None => Vec::new(),
        };
        if held.len() >= max_in_flight {
            return Ok(Vec::new());
        }
        let barrier = inner
            .unflushed
            .get(key)
            .and_then(|r| r.iter().map(|r| r.0).min());
        let now = now_ms();
        let mut batch = Batch::default();
        let mut expired = 0;
        let mut out = Vec::new();
        let mut seqs = Vec::new();
        for entry in inner.data.scan_prefix(keys::queue_prefix(key)) {
            let (k, v) = entry.map_err(backend)?;
            let seq = keys::parse_queue(&k)
                .map(|(_, seq)| seq)
                .ok_or_else(|| backend("corrupt queue key"))?;
            if barrier.is_some_and(|first_unflushed| seq >= first_unflushed) {
                break; // not durable yet; its enqueue announces it once it is
            }
            if held.contains(&seq) {
                continue;
            }
            let pixel: QueuedPixel = serde_json::from_slice(&v).map_err(backend)?;
            if pixel.expires_at_ms <= now {
                let rec = IndexRecord {
                    seq,
                    status: PixelStatus::Queued,
                    expires_at_ms: pixel.expires_at_ms,
                    at_ms: now,
                };
                inner.finalize(&mut batch, key, &pixel.id, rec, PixelStatus::Expired, now);
                expired += 1;
                continue;
            }
            seqs.push(seq);
            out.push(pixel);
            if held.len() + out.len() >= max_in_flight {
                break;
            }
        }
        if expired > 0 {
            // Not waited on: losing this write in a crash only means the pixels are found expired again.
            inner.data.apply_batch(batch).map_err(backend)?;
            inner.sub_depth(&key.brand, expired);
            inner.expired_total.fetch_add(expired, Ordering::Relaxed);
        }
        if !out.is_empty() {
            inner
                .leases
                .entry(key.clone())
                .or_insert_with(|| Lease {
                    session,
                    in_flight: Vec::new(),
                })
                .in_flight
                .extend(seqs);
        }
        Ok(out)
    }

    async fn ack(&self, key: &PlayerKey, ids: &[PixelId]) -> Result<usize, StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let removed = {
            let _guard = lock(inner.stripe(key));
            let now = now_ms();
            let mut batch = Batch::default();
            let mut removed_seqs = Vec::new();
            let mut distinct: Vec<&PixelId> = ids.iter().collect();
            distinct.sort();
            distinct.dedup();
            for id in distinct {
                if let Some(rec) = inner.record(key, id)? {
                    if rec.status == PixelStatus::Queued {
                        inner.finalize(&mut batch, key, id, rec, PixelStatus::Fired, now);
                        removed_seqs.push(rec.seq);
                    }
                }
            }
            if removed_seqs.is_empty() {
                return Ok(0);
            }
            inner.data.apply_batch(batch).map_err(backend)?;
            inner.sub_depth(&key.brand, removed_seqs.len() as u64);
            if let Some(mut lease) = inner.leases.get_mut(key) {
                lease.in_flight.retain(|seq| !removed_seqs.contains(seq));
            }
            removed_seqs.len()
        };
        inner.commit.wait().await?;
        Ok(removed)
    }

    async fn release(&self, key: &PlayerKey, session: SessionId) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _guard = lock(inner.stripe(key));
        if inner
            .leases
            .remove_if(key, |_, lease| lease.session == session)
            .is_some()
        {
            let pending = inner
                .data
                .scan_prefix(keys::queue_prefix(key))
                .next()
                .is_some();
            if pending {
                let _ = inner.announce.send(key.clone());
            }
        }
        Ok(())
    }

    async fn create_definition(
        &self,
        brand: &BrandId,
        input: DefinitionInput,
    ) -> Result<Definition, StoreError> {
        let definition = self.inner.save_definition(brand, input, None)?;
        self.inner.commit.wait().await?;
        Ok(definition)
    }

    async fn replace_definition(
        &self,
        brand: &BrandId,
        id: &DefinitionId,
        input: DefinitionInput,
    ) -> Result<Definition, StoreError> {
        let definition = self.inner.save_definition(brand, input, Some(id))?;
        self.inner.commit.wait().await?;
        Ok(definition)
    }

    async fn delete_definition(
        &self,
        brand: &BrandId,
        id: &DefinitionId,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let existed = {
            let _guard = lock(&inner.brand_lock);
            inner.brand_exists(brand)?;
            inner
                .data
                .remove(keys::definition(brand, id))
                .map_err(backend)?
                .is_some()
        };
        inner.commit.wait().await?;
        Ok(existed)
    }

    async fn definitions(&self, brand: &BrandId) -> Result<Vec<Definition>, StoreError> {
        self.inner.brand_exists(brand)?;
        self.inner.definitions(brand)
    }

    async fn definition(
        &self,
        brand: &BrandId,
        id: &DefinitionId,
    ) -> Result<Option<Definition>, StoreError> {
        self.inner.brand_exists(brand)?;
        self.inner.read(&keys::definition(brand, id))
    }

    async fn player_context(&self, key: &PlayerKey) -> Result<PlayerContext, StoreError> {
        self.inner.brand_exists(&key.brand)?;
        Ok(self.inner.read(&keys::context(key))?.unwrap_or_default())
    }

    async fn ingest(
        &self,
        brand: &BrandId,
        events: Vec<Event>,
    ) -> Result<Vec<EventOutcome>, StoreError> {
        let inner = &self.inner;
        inner.check_open()?;
        let (outcomes, ranges) = {
            let mut stripes: Vec<usize> = events
                .iter()
                .flat_map(|e| {
                    [
                        inner.stripe_index(PlayerKey::new(brand.clone(), e.player_id.clone())),
                        inner.stripe_index((brand, &e.event_id)),
                    ]
                })
                .collect();
            stripes.sort_unstable();
            stripes.dedup();
            let _guards: Vec<_> = stripes.iter().map(|&i| lock(&inner.stripes[i])).collect();
            inner.brand_exists(brand)?;
            let definitions = inner.definitions(brand)?;
            let now = now_ms();
            let mut batch = Batch::default();
            let mut contexts: HashMap<PlayerId, PlayerContext> = HashMap::new();
            let mut answered: HashMap<EventId, usize> = HashMap::new();
            let mut outcomes: Vec<EventOutcome> = Vec::with_capacity(events.len());
            // Per player, the first and last sequence numbers this batch adds.
            let mut ranges: HashMap<PlayerKey, (u64, u64)> = HashMap::new();
            let mut added = 0u64;
            for event in &events {
                if let Some(&first) = answered.get(&event.event_id) {
                    let again = EventOutcome {
                        duplicate: true,
                        ..outcomes[first].clone()
                    };
                    outcomes.push(again);
                    continue;
                }
                answered.insert(event.event_id.clone(), outcomes.len());
                if let Some(recorded) = inner.event_record(brand, &event.event_id)? {
                    outcomes.push(EventOutcome {
                        duplicate: true,
                        ..recorded
                    });
                    continue;
                }
                let key = PlayerKey::new(brand.clone(), event.player_id.clone());
                let context = match contexts.entry(event.player_id.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(inner.read(&keys::context(&key))?.unwrap_or_default())
                    }
                };
                let plan = event::plan(brand, event, context, &definitions, now);
                for pixel in plan.pixels {
                    let id = pixel.id.clone().expect("planned pixels carry their ids");
                    let seq = inner.stage_pixel(&mut batch, &key, &id, pixel, now)?;
                    let range = ranges.entry(key.clone()).or_insert((seq, seq));
                    range.1 = seq;
                    added += 1;
                }
                for postback in &plan.postbacks {
                    batch.insert(keys::postback(brand, &postback.id), json(postback));
                }
                if let Some(changed) = plan.context {
                    batch.insert(keys::context(&key), json(&changed));
                    *context = changed;
                }
                batch.insert(keys::event(brand, &event.event_id), json(&plan.outcome));
                outcomes.push(plan.outcome);
            }
            inner.data.apply_batch(batch).map_err(backend)?;
            *inner.depth.entry(brand.clone()).or_insert(0) += added;
            for (key, range) in &ranges {
                inner.unflushed.entry(key.clone()).or_default().push(*range);
            }
            (outcomes, ranges)
        };
        // Also when every event was a duplicate: the record we answer with may be another call's
        // unflushed write.
        let flushed = inner.commit.wait().await;
        for (key, range) in &ranges {
            inner.flushed(key, *range);
        }
        flushed?;
        for key in ranges.into_keys() {
            let _ = inner.announce.send(key);
        }
        Ok(outcomes)
    }

    async fn event(
        &self,
        brand: &BrandId,
        id: &EventId,
    ) -> Result<Option<EventOutcome>, StoreError> {
        self.inner.brand_exists(brand)?;
        self.inner.event_record(brand, id)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let inner = &self.inner;
        let commits = inner.commit.counters();
        let mut stats = StoreStats {
            expired_total: inner.expired_total.load(Ordering::Relaxed),
            flushes: commits.flushes.load(Ordering::Relaxed),
            flushed_writes: commits.waiters.load(Ordering::Relaxed),
            ..Default::default()
        };
        for entry in inner.data.scan_prefix(b"b") {
            let (k, _) = entry.map_err(backend)?;
            let brand = keys::parse_brand(&k).ok_or_else(|| backend("corrupt brand key"))?;
            let depth = inner.depth.get(&brand).map_or(0, |d| *d);
            stats.queue_depth += depth;
            stats.brands.insert(brand, depth);
        }
        Ok(stats)
    }

    fn subscribe(&self) -> broadcast::Receiver<PlayerKey> {
        self.inner.announce.subscribe()
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.stop.cancel();
        let sweeper = self
            .inner
            .sweeper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        self.inner.commit.close().await;
        Ok(())
    }
}

/// Key encoding for the `data` tree (see the module docs).
mod keys {
    use super::*;

    fn push_player(out: &mut Vec<u8>, key: &PlayerKey) {
        out.extend_from_slice(key.brand.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(key.player.as_str().as_bytes());
        out.push(0);
    }

    pub fn brand(brand: &BrandId) -> Vec<u8> {
        [b"b".as_slice(), brand.as_str().as_bytes()].concat()
    }

    pub fn parse_brand(k: &[u8]) -> Option<BrandId> {
        BrandId::parse(std::str::from_utf8(k.strip_prefix(b"b")?).ok()?).ok()
    }

    /// `tag brand NUL`: the start of every key of that table for the brand.
    fn brand_table(tag: u8, brand: &BrandId) -> Vec<u8> {
        let mut k = vec![tag];
        k.extend_from_slice(brand.as_str().as_bytes());
        k.push(0);
        k
    }

    pub fn definition_prefix(brand: &BrandId) -> Vec<u8> {
        brand_table(b'd', brand)
    }

    pub fn definition(brand: &BrandId, id: &DefinitionId) -> Vec<u8> {
        [definition_prefix(brand), id.as_str().as_bytes().to_vec()].concat()
    }

    pub fn event(brand: &BrandId, id: &EventId) -> Vec<u8> {
        [brand_table(b'e', brand), id.as_str().as_bytes().to_vec()].concat()
    }

    pub fn postback(brand: &BrandId, id: &PixelId) -> Vec<u8> {
        [brand_table(b'o', brand), id.as_str().as_bytes().to_vec()].concat()
    }

    pub fn context(key: &PlayerKey) -> Vec<u8> {
        let mut k = vec![b'c'];
        push_player(&mut k, key);
        k
    }

    pub fn queue_prefix(key: &PlayerKey) -> Vec<u8> {
        let mut k = vec![b'q'];
        push_player(&mut k, key);
        k
    }

    pub fn queue(key: &PlayerKey, seq: u64) -> Vec<u8> {
        let mut k = queue_prefix(key);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    pub fn index(key: &PlayerKey, id: &PixelId) -> Vec<u8> {
        let mut k = vec![b'i'];
        push_player(&mut k, key);
        k.extend_from_slice(id.as_str().as_bytes());
        k
    }

    pub fn expiry(due_ms: u64, key: &PlayerKey, seq: u64) -> Vec<u8> {
        let mut k = vec![b'x'];
        k.extend_from_slice(&due_ms.to_be_bytes());
        push_player(&mut k, key);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// First expiry key that is not yet due at `now`.
    pub fn expiry_bound(now: u64) -> Vec<u8> {
        let mut k = vec![b'x'];
        k.extend_from_slice(&(now + 1).to_be_bytes());
        k
    }

    /// Splits `brand NUL player NUL seq(8)`.
    fn parse_player_seq(rest: &[u8]) -> Option<(PlayerKey, u64)> {
        let (ids, seq) = rest.split_at_checked(rest.len().checked_sub(8)?)?;
        let ids = ids.strip_suffix(&[0])?;
        let nul = ids.iter().position(|&b| b == 0)?;
        let brand = BrandId::parse(std::str::from_utf8(&ids[..nul]).ok()?).ok()?;
        let player = PlayerId::parse(std::str::from_utf8(&ids[nul + 1..]).ok()?).ok()?;
        Some((
            PlayerKey::new(brand, player),
            u64::from_be_bytes(seq.try_into().ok()?),
        ))
    }

    pub fn parse_queue(k: &[u8]) -> Option<(PlayerKey, u64)> {
        parse_player_seq(k.strip_prefix(b"q")?)
    }

    pub fn parse_expiry(k: &[u8]) -> Option<(PlayerKey, u64)> {
        parse_player_seq(k.strip_prefix(b"x")?.get(8..)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::{self, store_contract};
    use super::*;

    /// A fresh temporary directory; every `open` opens the same database in it.
    struct SledHarness {
        dir: tempfile::TempDir,
    }

    impl SledHarness {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("a temp dir"),
            }
        }
    }

    impl contract::Harness for SledHarness {
        async fn open(&self) -> Arc<dyn Store> {
            let options = SledOptions {
                default_ttl: Duration::from_secs(3600),
            };
            Arc::new(SledStore::open(self.dir.path(), options).expect("the store opens"))
        }
    }

    store_contract!(SledHarness::new());

    fn open(harness: &SledHarness) -> SledStore {
        let options = SledOptions {
            default_ttl: Duration::from_secs(3600),
        };
        SledStore::open(harness.dir.path(), options).unwrap()
    }

    async fn with_brand(store: &SledStore) -> PlayerKey {
        let brand = BrandId::parse("b").unwrap();
        store
            .put_brand(&brand, BrandSettings::default())
            .await
            .unwrap();
        PlayerKey::new(brand, PlayerId::parse("p").unwrap())
    }

    fn js(id: &str, ttl_seconds: Option<u64>) -> NewPixel {
        NewPixel {
            id: Some(PixelId::parse(id).unwrap()),
            trigger: None,
            ttl_seconds,
            body: crate::pixel::PixelBody::Js { code: "1".into() },
        }
    }

    #[tokio::test]
    async fn nothing_written_but_not_yet_flushed_is_leased() {
        let harness = SledHarness::new();
        let store = open(&harness);
        let key = with_brand(&store).await;
        store
            .enqueue(&key, vec![js("a", None), js("b", None)])
            .await
            .unwrap();
        let seq_b = store
            .inner
            .record(&key, &PixelId::parse("b").unwrap())
            .unwrap()
            .unwrap()
            .seq;

        // As if `b` belonged to a batch whose fsync is still running.
        store
            .inner
            .unflushed
            .entry(key.clone())
            .or_default()
            .push((seq_b, seq_b));
        let session = SessionId::generate();
        let first = store.lease(&key, session, 10).await.unwrap();
        assert_eq!(
            first.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["a"],
            "stops before the unflushed"
        );

        store.inner.flushed(&key, (seq_b, seq_b));
        let rest = store.lease(&key, session, 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[tokio::test]
    async fn the_sweeper_expires_pixels_and_later_forgets_their_ids() {
        let harness = SledHarness::new();
        let store = open(&harness);
        let key = with_brand(&store).await;
        store
            .enqueue(&key, vec![js("short", Some(60)), js("fired", None)])
            .await
            .unwrap();
        store
            .ack(&key, &[PixelId::parse("fired").unwrap()])
            .await
            .unwrap();
        let now = now_ms();

        assert_eq!(store.sweep(now).unwrap(), 0, "nothing is due yet");
        store.sweep(now + 61_000).unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.queue_depth, stats.expired_total), (0, 1));
        let again = store
            .enqueue(&key, vec![js("short", None), js("fired", None)])
            .await
            .unwrap();
        assert!(
            again.iter().all(|e| e.duplicate),
            "ids are remembered after the pixels are gone"
        );

        store.sweep(now + 61_000 + TOMBSTONE_RETENTION_MS).unwrap();
        let later = store
            .enqueue(&key, vec![js("short", None), js("fired", None)])
            .await
            .unwrap();
        assert!(
            later
                .iter()
                .all(|e| !e.duplicate && e.status == PixelStatus::Queued),
            "and forgotten after retention"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_one_flush() {
        let harness = SledHarness::new();
        let options = SledOptions {
            default_ttl: Duration::from_secs(3600),
        };
        let store = SledStore::open(harness.dir.path(), options).unwrap();
        let brand = BrandId::parse("b").unwrap();
        store
            .put_brand(&brand, BrandSettings::default())
            .await
            .unwrap();
        let before = store
            .inner
            .commit
            .counters()
            .flushes
            .load(Ordering::Relaxed);

        let writers: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                let key = PlayerKey::new(brand.clone(), PlayerId::parse(&format!("p{i}")).unwrap());
                let pixel = NewPixel {
                    id: None,
                    trigger: None,
                    ttl_seconds: None,
                    body: crate::pixel::PixelBody::Js { code: "1".into() },
                };
                tokio::spawn(async move { store.enqueue(&key, vec![pixel]).await.unwrap() })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let flushes = store
            .inner
            .commit
            .counters()
            .flushes
            .load(Ordering::Relaxed)
            - before;
        assert!(
            flushes < 200,
            "200 concurrent writers needed {flushes} flushes: group commit is not grouping"
        );
    }

    #[test]
    fn keys_round_trip_even_when_the_sequence_holds_nul_bytes() {
        let key = PlayerKey::new(
            BrandId::parse("b-1").unwrap(),
            PlayerId::parse("p:1@x").unwrap(),
        );
        for seq in [0, 1, 256, u64::MAX] {
            assert_eq!(
                keys::parse_queue(&keys::queue(&key, seq)),
                Some((key.clone(), seq))
            );
            assert_eq!(
                keys::parse_expiry(&keys::expiry(12345, &key, seq)),
                Some((key.clone(), seq))
            );
        }
        assert_eq!(
            keys::parse_brand(&keys::brand(&key.brand)),
            Some(key.brand.clone())
        );
    }

    #[test]
    fn a_player_prefix_never_matches_another_player_that_extends_it() {
        let a = PlayerKey::new(BrandId::parse("b").unwrap(), PlayerId::parse("p").unwrap());
        let b = PlayerKey::new(BrandId::parse("b").unwrap(), PlayerId::parse("p2").unwrap());
        assert!(!keys::queue(&b, 1).starts_with(&keys::queue_prefix(&a)));
    }
}

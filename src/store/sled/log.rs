//! The embedded engine's write path: the journal makes a transaction durable, the overlay serves it to
//! readers, and a checkpoint thread moves it into sled off the request path.
//!
//! A transaction's key changes become one journal record ([`overlay::encode`]), appended under the
//! overlay's write lock, so journal order and overlay order are one order; the caller awaits the
//! journal's `fdatasync` ([`journal::Durable`]) and nothing else. sled's own costs (its tree, its log,
//! its page cache) are paid by the checkpointer, a thread at a lower scheduling priority (requests get
//! a core first), which runs when the overlay holds [`CHECKPOINT_BYTES`] or a second has passed:
//!
//! 1. `P` = the journal's durable position; take every key's value as of `P` from the overlay;
//! 2. write them to sled key by key, letting the overlay drop each [`CHECKPOINT_SLICE`] keys as they
//!    land, and resting after each slice as long as it took while the overlay has room
//!    ([`rest_after`]); then `flush` sled and `fdatasync` its files (sled alone syncs with
//!    `sync_file_range`, which is not durable), and only then write `P` itself (`m`
//!    [`CHECKPOINT_KEY`]) with the sequence counter, and sync again;
//! 3. delete the journal segments wholly before `P`, and drop the overlay's versions up to `P`.
//!
//! A crash anywhere in that leaves sled holding the journal up to some checkpoint `P₀`, perhaps with
//! some keys already at their value of a later position (slices of a checkpoint that did not finish).
//! Opening replays every record after `P₀`, in order, into the overlay, then checkpoints them before
//! the hub takes any request. A change is an absolute value (put this, remove that), and every key a
//! half-done checkpoint wrote is written again by a record after `P₀`, so whatever sled held, the
//! replay ends at the journal's state.
//!
//! Writers wait when the overlay holds [`MAX_OVERLAY_BYTES`] (sled has fallen that far behind): memory
//! stays bounded, and the time to replay after a crash with it.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use ::sled::{Batch, Db, IVec, Tree};

use super::overlay::{self, Merged, Op, Overlay};
use super::{backend, lock};
use crate::store::journal::{self, Journal, JournalOptions};
use crate::store::{Cause, StoreError};

/// The overlay's size at which the checkpointer starts without waiting for its second.
pub(super) const CHECKPOINT_BYTES: usize = 16 << 20;
/// The overlay's size at which writers wait for the checkpointer.
pub(super) const MAX_OVERLAY_BYTES: usize = 128 << 20;
/// Key changes a checkpoint writes to sled between two trims of the overlay: the overlay lets them go
/// (readers find them in sled now, writers waiting for room get it) under its write lock, once per slice
/// rather than once per key.
const CHECKPOINT_SLICE: usize = 256;
/// The longest a change waits in the overlay alone when the hub is quiet.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Where sled records the journal position it holds everything up to.
pub(super) const CHECKPOINT_KEY: &[u8] = b"mjournal-checkpoint";
/// Where sled records the sequence counter as of that checkpoint.
const SEQ_KEY: &[u8] = b"mjournal-seq";

/// A range of the `data` tree, the overlay's newest versions over sled's.
pub(super) type Range = Merged<Box<dyn Iterator<Item = ::sled::Result<(IVec, IVec)>> + Send>>;

/// The journal, the overlay and the checkpointer of one data dir.
pub(super) struct WriteLog {
    journal: Journal,
    overlay: RwLock<Overlay>,
    /// The overlay's size, readable without its lock.
    overlay_bytes: AtomicUsize,
    data: Tree,
    db: Db,
    dir: PathBuf,
    /// The next queue position or record number.
    seq: AtomicU64,
    /// Set when a checkpoint failed: the engine takes nothing more (like a failed journal sync).
    failed: OnceLock<Cause>,
    /// One checkpoint at a time (the thread's, or the last one at close).
    checkpointing: Mutex<()>,
    /// Wakes the checkpointer; writers waiting for room wait on it too.
    wake: Condvar,
    waiting: Mutex<()>,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: Counters,
    /// Tests: every sync of sled's files fails.
    #[cfg(test)]
    settle_fails: AtomicBool,
    /// The background checkpointer skips its turns (tests that count what one checkpoint writes).
    #[cfg(test)]
    checkpointer_paused: AtomicBool,
    /// Journal records appended (tests count transactions that wrote).
    #[cfg(test)]
    pub(super) commits: AtomicU64,
}

/// What checkpoints did, for the stats.
#[derive(Default)]
pub(super) struct Counters {
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Key changes they wrote to sled.
    pub keys: AtomicU64,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Failed(Arc::new(e))
}

fn read_u64(data: &Tree, key: &[u8]) -> Result<Option<u64>, StoreError> {
    Ok(data
        .get(key)
        .map_err(backend)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

impl WriteLog {
    /// Opens the journal under `dir/journal`, replays what sled does not hold yet and checkpoints it,
    /// then starts the checkpointer.
    pub(super) fn open(
        dir: &Path,
        db: Db,
        data: Tree,
        options: JournalOptions,
    ) -> Result<Arc<Self>, StoreError> {
        let held = read_u64(&data, CHECKPOINT_KEY)?.unwrap_or(0);
        let mut seq = read_u64(&data, SEQ_KEY)?.unwrap_or(0);
        // Data dirs from before the journal numbered with sled's own generator.
        seq = seq.max(db.generate_id().map_err(backend)?);
        let mut replayed = Overlay::default();
        let (mut records, mut skipped) = (0u64, 0u64);
        let started = Instant::now();
        let journal = Journal::open(
            &dir.join(super::JOURNAL_DIR),
            JournalOptions {
                start: held,
                ..options
            },
            |position, record| {
                if position <= held {
                    skipped += 1;
                    return Ok(());
                }
                let (high, ops) = overlay::decode(record)?;
                seq = seq.max(high);
                replayed.add(ops, |_| false, position);
                records += 1;
                Ok(())
            },
        )?;
        if journal.position() < held {
            return Err(StoreError::Backend(Arc::new(std::io::Error::other(
                format!(
                    "the journal ends at position {} but the store holds it up to {held}: \
                 this is not the data dir's journal",
                    journal.position()
                ),
            ))));
        }
        if records > 0 {
            tracing::info!(
                records,
                skipped,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "journal: replayed what the last checkpoint did not hold"
            );
        }
        let log = Arc::new(WriteLog {
            journal,
            overlay_bytes: AtomicUsize::new(replayed.bytes()),
            overlay: RwLock::new(replayed),
            data,
            db,
            dir: dir.to_owned(),
            seq: AtomicU64::new(seq + 1),
            failed: OnceLock::new(),
            checkpointing: Mutex::new(()),
            wake: Condvar::new(),
            waiting: Mutex::new(()),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            counters: Counters::default(),
            #[cfg(test)]
            settle_fails: AtomicBool::new(false),
            #[cfg(test)]
            checkpointer_paused: AtomicBool::new(false),
            #[cfg(test)]
            commits: AtomicU64::new(0),
        });
        log.checkpoint()?;
        let weak = Arc::downgrade(&log);
        let thread = std::thread::Builder::new()
            .name("pixelhub-checkpoint".into())
            .spawn(move || checkpointer(weak))
            .map_err(io)?;
        *lock(&log.thread) = Some(thread);
        Ok(log)
    }

    /// A number above every one given out before, across restarts.
    /// Every sequence number given out so far is below this one.
    pub(super) fn seq_bound(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Fails once a checkpoint has failed.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(cause) => Err(StoreError::Failed(cause.clone())),
            None => Ok(()),
        }
    }

    /// Appends `ops` as one journal record and shows them to readers; the answer says when they are
    /// durable. `fresh[i]` (missing: false) says the `i`th puts a key never held before. Waits first
    /// while the overlay is full.
    pub(super) fn commit(
        &self,
        ops: Vec<Op>,
        fresh: &[bool],
    ) -> Result<journal::Durable, StoreError> {
        self.add(ops, fresh, |journal, record| {
            let durable = journal.append(record)?;
            Ok((durable.position(), durable))
        })
    }

    /// [`WriteLog::commit`] for a writer that does not wait: the record is synced with the next one
    /// somebody waits for, or by the checkpointer's next turn ([`Journal::append_lazy`]).
    pub(super) fn commit_lazy(&self, ops: Vec<Op>, fresh: &[bool]) -> Result<(), StoreError> {
        self.add(ops, fresh, |journal, record| {
            Ok((journal.append_lazy(record)?, ()))
        })
    }

    /// Appends `ops` as one journal record with `append` (which says the position after it), and shows
    /// them to readers, at that position, under the overlay's write lock: journal order and overlay
    /// order are one order.
    fn add<T>(
        &self,
        ops: Vec<Op>,
        fresh: &[bool],
        append: impl FnOnce(&Journal, &[&[u8]]) -> Result<(u64, T), StoreError>,
    ) -> Result<T, StoreError> {
        self.check()?;
        if self.overlay_bytes.load(Ordering::Relaxed) >= MAX_OVERLAY_BYTES {
            self.wait_for_room()?;
        }
        let record = overlay::encode(self.seq.load(Ordering::Relaxed), &ops);
        if record.len() > journal::frame::MAX_PAYLOAD {
            return Err(StoreError::Backend(Arc::new(std::io::Error::other(
                format!(
                    "one transaction of {} bytes is more than a journal record holds ({} bytes)",
                    record.len(),
                    journal::frame::MAX_PAYLOAD
                ),
            ))));
        }
        let mut overlay = self.overlay.write().unwrap_or_else(|p| p.into_inner());
        let (position, appended) = append(&self.journal, &[record.as_slice()])?;
        #[cfg(test)]
        self.commits.fetch_add(1, Ordering::Relaxed);
        overlay.add(ops, |i| fresh.get(i).copied().unwrap_or(false), position);
        let bytes = overlay.bytes();
        drop(overlay);
        let before = self.overlay_bytes.swap(bytes, Ordering::Relaxed);
        if before < CHECKPOINT_BYTES && bytes >= CHECKPOINT_BYTES {
            self.wake.notify_all();
        }
        Ok(appended)
    }

    /// Says when everything appended so far is durable.
    pub(super) fn sync_point(&self) -> Result<journal::Durable, StoreError> {
        self.check()?;
        self.journal.sync_point()
    }

    fn wait_for_room(&self) -> Result<(), StoreError> {
        let mut guard = lock(&self.waiting);
        self.wake.notify_all();
        while self.overlay_bytes.load(Ordering::Relaxed) >= MAX_OVERLAY_BYTES {
            self.check()?;
            if self.stop.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            guard = self
                .wake
                .wait_timeout(guard, CHECKPOINT_EVERY)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// The value of `key`, the overlay's if it has one.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        let newest = self
            .overlay
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key);
        match newest {
            Some(value) => Ok(value),
            None => self.data.get(key).map_err(backend),
        }
    }

    /// Whether `key` has a value.
    pub(super) fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(key)?.is_some())
    }

    /// The keys from `low` to `high`, in order (`rev`: descending).
    pub(super) fn range(&self, low: Bound<&[u8]>, high: Bound<&[u8]>, rev: bool) -> Range {
        let newest = self
            .overlay
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .range(low, high, rev);
        let low = low.map(IVec::from);
        let high = high.map(IVec::from);
        let sled = self.data.range::<IVec, _>((low, high));
        let sled: Box<dyn Iterator<Item = _> + Send> = if rev {
            Box::new(sled.rev())
        } else {
            Box::new(sled)
        };
        Merged::new(newest, sled, rev)
    }

    /// The keys starting with `prefix`, in order.
    pub(super) fn scan_prefix(&self, prefix: &[u8]) -> Range {
        match prefix_end(prefix) {
            Some(end) => self.range(Bound::Included(prefix), Bound::Excluded(&end), false),
            None => self.range(Bound::Included(prefix), Bound::Unbounded, false),
        }
    }

    /// Writes to sled what the journal holds durably and sled does not, makes sled durable, and
    /// lets the journal delete what it no longer needs. At full speed: for opening and closing, where
    /// nothing else runs.
    pub(super) fn checkpoint(&self) -> Result<(), StoreError> {
        self.write_checkpoint(false)
    }

    /// [`WriteLog::checkpoint`], resting between slices when `paced` (see [`rest_after`]).
    fn write_checkpoint(&self, paced: bool) -> Result<(), StoreError> {
        let _one = lock(&self.checkpointing);
        let upto = self.journal.durable();
        let held = read_u64(&self.data, CHECKPOINT_KEY)?.unwrap_or(0);
        if upto <= held {
            return Ok(());
        }
        let started = Instant::now();
        let ops = self
            .overlay
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot(upto);
        let keys = ops.len() as u64;
        // Key by key, not in sled batches: a batch takes a lock every other sled call waits on (one of
        // 100,000 keys held up every request that read sled for 1.7 s), and costs more per key (10.6
        // against 7.0 µs for the three keys a pixel had then, alone on a core:
        // `pixelhub-bench --sled-keys`).
        // After each slice the overlay lets its keys go, so readers find them in sled and writers
        // waiting for room get it.
        for slice in ops.chunks(CHECKPOINT_SLICE) {
            let began = Instant::now();
            for (key, value) in slice {
                match value {
                    Some(value) => self.data.insert(key, value.clone()).map(drop),
                    None => self.data.remove(key).map(drop),
                }
                .map_err(backend)?;
            }
            self.pruned(|overlay| overlay.prune_keys(slice.iter().map(|(k, _)| k), upto));
            if paced {
                let room = self.overlay_bytes.load(Ordering::Relaxed);
                std::thread::sleep(rest_after(began.elapsed(), room));
            }
        }
        // The removals left out (keys sled never held) go too.
        self.pruned(|overlay| overlay.prune(upto));
        // `P` only once everything before it is durable in sled: then no crash can leave sled
        // claiming a position whose keys it lost, whatever order sled's own log recovers in.
        self.settle()?;
        let mut mark = Batch::default();
        mark.insert(CHECKPOINT_KEY, upto.to_be_bytes().as_slice());
        mark.insert(
            SEQ_KEY,
            self.seq.load(Ordering::Relaxed).to_be_bytes().as_slice(),
        );
        self.data.apply_batch(mark).map_err(backend)?;
        self.settle()?;
        self.journal.release(upto)?;
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counters.keys.fetch_add(keys, Ordering::Relaxed);
        tracing::debug!(
            keys,
            upto,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        Ok(())
    }

    /// One turn of the checkpointer: syncs what lazy commits left pending (so a change nobody waited
    /// for is durable within a turn, whether or not a waiting writer came), then checkpoints.
    pub(super) fn turn(&self) -> Result<(), StoreError> {
        self.journal.sync_point()?.wait_blocking()?;
        self.write_checkpoint(true)
    }

    /// The journal, for tests that watch its syncs.
    #[cfg(test)]
    pub(super) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Runs `prune` on the overlay, then lets writers waiting for room try again.
    fn pruned(&self, prune: impl FnOnce(&mut Overlay)) {
        let mut overlay = self.overlay.write().unwrap_or_else(|p| p.into_inner());
        prune(&mut overlay);
        self.overlay_bytes.store(overlay.bytes(), Ordering::Relaxed);
        drop(overlay);
        self.wake.notify_all();
    }

    /// Flushes sled and syncs its files: what sled's own flush leaves undone (it writes with
    /// `sync_file_range`, which neither flushes the device's cache nor a file's size).
    pub(super) fn settle(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        if self.settle_fails.load(Ordering::Relaxed) {
            return Err(io(std::io::Error::other(
                "a sync of sled's files failed (test)",
            )));
        }
        self.db.flush().map_err(backend)?;
        sync_sled_files(&self.dir).map_err(io)
    }

    /// The journal's syncs and the appends they answered; the checkpoints.
    pub(super) fn counters(&self) -> (&journal::Counters, &Counters) {
        (self.journal.counters(), &self.counters)
    }

    /// About how many bytes the overlay holds: what sled has yet to take.
    pub(super) fn pending_bytes(&self) -> u64 {
        self.overlay_bytes.load(Ordering::Relaxed) as u64
    }

    /// Bytes the data dir takes: sled's files and the journal's segments.
    pub(super) fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk().map_err(backend)? + self.journal_bytes())
    }

    /// Bytes the journal's segments take.
    fn journal_bytes(&self) -> u64 {
        let dir = self.dir.join(super::JOURNAL_DIR);
        let starts = journal::segment::list(&dir).unwrap_or_default();
        starts
            .iter()
            .filter_map(|start| std::fs::metadata(journal::segment::path(&dir, *start)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Makes every later sync of sled's files fail, for tests of what a checkpoint leaves behind.
    #[cfg(test)]
    pub(super) fn fail_settles(&self) {
        self.settle_fails.store(true, Ordering::Relaxed);
    }

    /// Stops the background checkpointer's turns, once the one running (if any) is done: only the
    /// test's own checkpoints write sled from then on.
    #[cfg(test)]
    pub(super) fn pause_checkpointer(&self) -> Result<(), StoreError> {
        self.checkpointer_paused.store(true, Ordering::Release);
        self.checkpoint()
    }

    /// What a checkpoint now would write to sled.
    #[cfg(test)]
    pub(super) fn unwritten(&self) -> Vec<Op> {
        self.overlay
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot(u64::MAX)
    }

    /// The sled tree itself, for tests that write a data dir as an older version left it.
    #[cfg(test)]
    pub(super) fn sled_tree(&self) -> &Tree {
        &self.data
    }

    /// Stops the checkpointer, writes what the journal still holds pending, and checkpoints it all, so
    /// the next open replays nothing.
    pub(super) fn close(&self) -> Result<(), StoreError> {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_all();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
        self.journal.close();
        self.check()?;
        self.checkpoint()
    }

    fn fail(&self, e: StoreError) {
        tracing::error!(error = %e, "checkpoint failed; the store takes nothing more");
        let cause: Cause = match e {
            StoreError::Failed(cause) | StoreError::Backend(cause) => cause,
            other => Arc::new(std::io::Error::other(other.to_string())),
        };
        let _ = self.failed.set(cause);
        // sled flushes when its last handle goes, and after a failed write that flush waits for ever
        // (it waits for the write to become stable): a handle kept for good means it never runs. The
        // process is stopping; what is on disk is what the next start recovers.
        std::mem::forget(self.db.clone());
        self.wake.notify_all();
    }
}

impl Drop for WriteLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_all();
    }
}

/// The checkpointer's loop: holds the log only while it works, so dropping the store ends it.
fn checkpointer(log: Weak<WriteLog>) {
    background_priority();
    loop {
        let Some(log) = log.upgrade() else { return };
        {
            let guard = lock(&log.waiting);
            if !log.stop.load(Ordering::Acquire)
                && log.overlay_bytes.load(Ordering::Relaxed) < CHECKPOINT_BYTES
            {
                let _ = log.wake.wait_timeout(guard, CHECKPOINT_EVERY);
            }
        }
        if log.stop.load(Ordering::Acquire) {
            return;
        }
        #[cfg(test)]
        if log.checkpointer_paused.load(Ordering::Acquire) {
            // Not a spin, even with a full overlay (which never waits above).
            std::thread::sleep(CHECKPOINT_EVERY / 10);
            continue;
        }
        if let Err(e) = log.turn() {
            log.fail(e);
            return;
        }
    }
}

/// How long the checkpointer rests after a slice that took `took`, with `overlay` bytes waiting: as
/// long again while the overlay is under [`CHECKPOINT_BYTES`], so a turn takes at most half a core; not
/// at all once it is over, so sled keeps up with any write rate. A lower priority alone was not enough:
/// a turn that kept a core for its 150 ms left every request on two cores waiting behind it: an online
/// p99 over 30 s of 16 to 27 ms, where rested turns gave 11 to 12 ms (docs/benchmarks.md, "The online
/// tail over 30 seconds").
pub(super) fn rest_after(took: Duration, overlay: usize) -> Duration {
    if overlay < CHECKPOINT_BYTES {
        took
    } else {
        Duration::ZERO
    }
}

/// Lowers the calling thread's scheduling priority (nice 10), so request threads get a core first and
/// the checkpointer takes what they leave; it still runs as much as a loaded machine allows, and writers
/// wait for it only when the overlay is full.
fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours; on Linux a
    // PRIO_PROCESS priority set for a thread id applies to that thread alone.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// The first key after every key starting with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `fdatasync`s sled's files in `dir` (its log and page file `db`, its blobs) and the directories
/// that name them.
fn sync_sled_files(dir: &Path) -> std::io::Result<()> {
    let mut files = vec![dir.join("db"), dir.join("conf")];
    let blobs = dir.join("blobs");
    if let Ok(entries) = std::fs::read_dir(&blobs) {
        for entry in entries {
            files.push(entry?.path());
        }
        journal::segment::sync_dir(&blobs)?;
    }
    for file in files {
        match std::fs::File::open(&file) {
            Ok(file) => file.sync_data()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    journal::segment::sync_dir(dir)
}

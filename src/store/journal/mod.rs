//! The journal: an append-only log of records, durable when `fdatasync` returned, group-committed.
//!
//! It is the embedded engine's durability point. A writer [`Journal::append`]s its records (framed with a
//! CRC, [`frame`]) into the pending group and awaits [`Durable::wait`]; one thread writes the whole group
//! to the current segment with one `write` and one `fdatasync`, then answers every writer in it. Writers
//! arriving while that sync runs form the next group, so under load a sync covers many writers and no
//! timer ever delays one: an idle journal syncs a lone record at once. A writer that need not wait
//! ([`Journal::append_lazy`]: a delivery stamp) costs no sync of its own: its records go with the next
//! group someone waits for.
//!
//! `fdatasync` (`File::sync_data`) is what makes a record durable: it returns once the data, and the
//! metadata needed to read it back (the file's size), reached stable storage, through the device's write
//! cache. `sync_file_range` would not be (it neither flushes that cache nor the size). A failed sync is
//! never retried, since the kernel may have dropped the pages it could not write: the journal fails every
//! waiting and later writer with [`StoreError::Failed`], and the hub stops; its next start replays what
//! reached the disk.
//!
//! Segments ([`segment`]) hold records in order; a new one starts once the current one passes
//! [`JournalOptions::segment_bytes`] (64 MiB by default: one file handle, a few seconds of peak writes,
//! and a checkpoint granularity that frees disk promptly). Each segment is zero-filled ahead of use, on a
//! thread of its own while the previous one fills, so a sync writes data only, never a new file size
//! (0.12 ms against 0.16 ms here, docs/benchmarks.md); replay stops at the zeros, which are no frame. Records are addressed by *position* (LSN): the
//! journal's byte count after them, across segments. Once the engine's checkpoint holds everything up
//! to a position, [`Journal::release`] deletes the segments wholly before it.
//!
//! Opening replays every record in order. The last segment's tail may be torn (a crash mid-write): the
//! frames stop and nothing intact follows, so it is cleared back to zeros, since no writer was answered
//! for it.
//! Damage anywhere else (a frame that fails its CRC with intact frames after it, a segment missing,
//! a foreign header) is never skipped silently: opening fails with [`Damaged`], naming the file and the
//! byte, and [`repair`] (`pixelhub repair-journal`) keeps every intact record, turning the damaged bytes
//! into holes so the positions of the records after them do not change, and reports what it dropped.

pub mod frame;
mod repair;
pub mod segment;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

pub use self::repair::{Dropped, Repaired, repair};
use self::segment::{BadHeader, End};
use super::{Cause, StoreError};
use crate::metrics::Metrics;

/// How a segment's data is made durable: `File::sync_data` (`fdatasync`). Tests put a failing one in.
pub type SyncFn = fn(&File) -> std::io::Result<()>;

/// Settings of a journal.
#[derive(Clone)]
pub struct JournalOptions {
    /// A new segment starts once the current one holds this many bytes.
    pub segment_bytes: u64,
    /// What makes written data durable.
    pub sync: SyncFn,
    /// Where syncs and their group sizes are counted.
    pub metrics: Arc<Metrics>,
    /// Where an empty journal starts counting positions: the engine's checkpoint, so a journal
    /// whose segments were all released never hands out a position the checkpoint already covers.
    pub start: u64,
}

impl JournalOptions {
    /// 64 MiB segments, `fdatasync`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            segment_bytes: 64 << 20,
            sync: File::sync_data,
            metrics,
            start: 0,
        }
    }
}

/// A journal that cannot be replayed as it is: the file and byte where the damage starts. Nothing was
/// skipped; `pixelhub repair-journal` keeps what can be kept.
#[derive(Debug, thiserror::Error)]
#[error(
    "the journal is damaged: {} at byte {offset} ({why}); the hub will not start on it. \
     `pixelhub repair-journal --data-dir <dir>` keeps every intact record and reports what it drops",
    file.display()
)]
pub struct Damaged {
    /// The segment.
    pub file: PathBuf,
    /// Where in it.
    pub offset: u64,
    /// What was found there.
    pub why: &'static str,
}

/// The journal's handle. Dropping it closes the journal (the pending group is still written).
pub struct Journal {
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Segments no longer written to, as (start, end) positions, oldest first.
    sealed: Mutex<Vec<(u64, u64)>>,
    /// The position up to which every record is durable.
    durable: AtomicU64,
    dir: PathBuf,
    counters: Counters,
}

/// The group being formed.
struct Pending {
    /// Frames not yet written.
    buf: Vec<u8>,
    /// Who waits for them, with the position after their last record.
    waiters: Vec<(Reply, u64)>,
    /// The position after the last record appended.
    next: u64,
    state: State,
}

enum State {
    Open,
    Closing,
    Failed(Cause),
}

impl State {
    /// Whether an append (or a sync point) may join the group: not once closing or failed.
    fn accepting(&self) -> Result<(), StoreError> {
        match self {
            State::Open => Ok(()),
            State::Closing => Err(StoreError::Closed),
            State::Failed(cause) => Err(StoreError::Failed(cause.clone())),
        }
    }
}

type Reply = oneshot::Sender<Result<u64, StoreError>>;

/// How well grouping works.
#[derive(Default)]
pub struct Counters {
    /// `fdatasync` calls that answered writers.
    pub syncs: AtomicU64,
    /// Appends answered; `appends / syncs` is the average group.
    pub appends: AtomicU64,
}

/// An append's records, on their way to disk.
#[must_use = "records are durable only once `wait` returns"]
pub struct Durable {
    answer: oneshot::Receiver<Result<u64, StoreError>>,
    position: u64,
}

impl Durable {
    /// The position after the appended records (known at once; durable once `wait` returns).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Returns the position after the appended records once they are durable.
    pub async fn wait(self) -> Result<u64, StoreError> {
        self.answer.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Durable::wait`] for a thread outside the async runtime (the engine's checkpointer); panics
    /// when called on one of its workers.
    pub fn wait_blocking(self) -> Result<u64, StoreError> {
        self.answer
            .blocking_recv()
            .map_err(|_| StoreError::Closed)?
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("journal state is changed whole under its lock; a panic leaves it consistent")
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Backend(Arc::new(e))
}

fn damaged(dir: &Path, start: u64, offset: usize, why: &'static str) -> StoreError {
    StoreError::Backend(Arc::new(Damaged {
        file: segment::path(dir, start),
        offset: offset as u64,
        why,
    }))
}

impl Journal {
    /// Opens the journal in `dir` (created if missing), calling `replay` with each record and the
    /// position after it, oldest first, then starts its writer thread. A torn tail of the last segment
    /// is cleared; any other damage fails with [`Damaged`] (inside [`StoreError::Backend`]).
    pub fn open(
        dir: &Path,
        options: JournalOptions,
        mut replay: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<Journal, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        segment::forget_leftovers(dir).map_err(io)?;
        let starts = segment::list(dir).map_err(io)?;
        let mut sealed = Vec::new();
        let mut current: Option<(u64, File, u64)> = None;
        let mut end: Option<u64> = None;
        for (i, &start) in starts.iter().enumerate() {
            let last = i + 1 == starts.len();
            if end.is_some_and(|end| end != start) {
                return Err(damaged(dir, start, 0, "the segment before it is missing"));
            }
            let read = match segment::read(dir, start).map_err(io)? {
                Ok(read) => read,
                Err(BadHeader::Unwritten) if last => {
                    // Created by a rotation the crash interrupted: it holds no record.
                    std::fs::remove_file(segment::path(dir, start)).map_err(io)?;
                    segment::sync_dir(dir).map_err(io)?;
                    end = Some(start);
                    continue;
                }
                Err(BadHeader::Unwritten) => {
                    return Err(damaged(dir, start, 0, "no segment header"));
                }
                Err(BadHeader::Foreign) => {
                    return Err(damaged(dir, start, 0, "not this segment's header"));
                }
            };
            for (position, range) in &read.records {
                replay(*position, &read.bytes[range.clone()])?;
            }
            let length = match read.end {
                End::Clean { at } => at,
                End::Torn { at } if last => {
                    let dropped =
                        clear_torn(&segment::path(dir, start), &read.bytes, at).map_err(io)?;
                    tracing::warn!(
                        segment = %segment::path(dir, start).display(),
                        at,
                        dropped,
                        "journal: cleared a torn last write (no writer was answered for it)"
                    );
                    at
                }
                End::Torn { at } => {
                    return Err(damaged(
                        dir,
                        start,
                        at,
                        "a record cut short, and more segments follow",
                    ));
                }
                End::Damaged { at, .. } => {
                    return Err(damaged(
                        dir,
                        start,
                        at,
                        "a record fails its CRC, and intact records follow",
                    ));
                }
            };
            let segment_end = segment::position(start, length);
            end = Some(segment_end);
            if last {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(segment::path(dir, start))
                    .map_err(io)?;
                current = Some((start, file, length as u64));
            } else {
                sealed.push((start, segment_end));
            }
        }
        let (start, file, length) = match current {
            Some(current) => current,
            None => {
                let start = end.unwrap_or(options.start);
                let room = segment::prepare(dir, options.segment_bytes, options.segment_bytes)
                    .map_err(io)?;
                let file = segment::install(dir, room, start).map_err(io)?;
                (start, file, segment::HEADER as u64)
            }
        };
        let next = segment::position(start, length as usize);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                waiters: Vec::new(),
                next,
                state: State::Open,
            }),
            wake: Condvar::new(),
            sealed: Mutex::new(sealed),
            durable: AtomicU64::new(next),
            dir: dir.to_owned(),
            counters: Counters::default(),
        });
        let next = prepare_next(dir, options.segment_bytes);
        let writer = Writer {
            shared: Arc::clone(&shared),
            options,
            file,
            start,
            length,
            next,
        };
        let thread = std::thread::Builder::new()
            .name("pixelhub-journal".into())
            .spawn(move || writer.run())
            .map_err(io)?;
        Ok(Journal {
            shared,
            writer: Mutex::new(Some(thread)),
        })
    }

    /// Adds `records` to the group being formed, in this order and after every earlier append, and
    /// returns at once; [`Durable::wait`] says when they are on stable storage. Fails at once when the
    /// journal is closed or a sync failed. Each record is 1 byte to [`frame::MAX_PAYLOAD`]; the caller
    /// keeps to that, and appends at least one (else this panics, before any lock is taken).
    pub fn append(&self, records: &[&[u8]]) -> Result<Durable, StoreError> {
        let (reply, answer) = oneshot::channel();
        let position = self.push(records, Some(reply))?;
        Ok(Durable { answer, position })
    }

    /// Adds `records` like [`Journal::append`], for a writer that does not wait for them: they are
    /// written and synced with the next group someone waits for (every later append's sync covers
    /// them, since the journal is one order), or by the next [`Journal::sync_point`]. So a change whose
    /// loss in a crash costs nothing that matters (a delivery stamp) never costs a sync of its own.
    /// Returns the position after them.
    pub fn append_lazy(&self, records: &[&[u8]]) -> Result<u64, StoreError> {
        self.push(records, None)
    }

    /// Frames `records` into the pending group; with a `reply`, wakes the writer if nobody in the
    /// group waits yet (when somebody does, the writer is awake already or about to be).
    fn push(&self, records: &[&[u8]], reply: Option<Reply>) -> Result<u64, StoreError> {
        // Framed (and checksummed) before the lock, which then covers only a copy.
        let size = records.iter().map(|r| frame::HEADER + r.len()).sum();
        let mut framed = Vec::with_capacity(size);
        for &record in records {
            frame::encode(record, &mut framed);
        }
        assert!(!framed.is_empty(), "an append holds at least one record");
        let mut pending = lock(&self.shared.pending);
        pending.state.accepting()?;
        pending.buf.extend_from_slice(&framed);
        pending.next += framed.len() as u64;
        let position = pending.next;
        let Some(reply) = reply else {
            return Ok(position);
        };
        let first = pending.waiters.is_empty();
        pending.waiters.push((reply, position));
        drop(pending);
        if first {
            self.shared.wake.notify_one();
        }
        Ok(position)
    }

    /// The position after the last record appended (durable or not yet).
    pub fn position(&self) -> u64 {
        lock(&self.shared.pending).next
    }

    /// The position up to which every record is durable: what a checkpoint may take.
    pub fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Says when every record appended so far is durable, without appending one: for a transaction
    /// that wrote nothing but read what others wrote, and must not answer before that is durable. It
    /// also gets what lazy appends left pending written, whether or not its answer is awaited.
    pub fn sync_point(&self) -> Result<Durable, StoreError> {
        let (reply, answer) = oneshot::channel();
        let mut pending = lock(&self.shared.pending);
        pending.state.accepting()?;
        let position = pending.next;
        if self.durable() >= position {
            let _ = reply.send(Ok(position));
        } else {
            let first = pending.waiters.is_empty();
            pending.waiters.push((reply, position));
            drop(pending);
            if first {
                self.shared.wake.notify_one();
            }
        }
        Ok(Durable { answer, position })
    }

    /// Deletes the segments that end at or before `position`: everything in them is held elsewhere
    /// (the engine's checkpoint). Returns how many were deleted.
    pub fn release(&self, position: u64) -> Result<usize, StoreError> {
        // Taken off the list under its lock, deleted after it: the writer takes the lock to seal a
        // segment, and a deletion takes milliseconds.
        let done: Vec<(u64, u64)> = {
            let mut sealed = lock(&self.shared.sealed);
            let n = sealed
                .iter()
                .take_while(|(_, end)| *end <= position)
                .count();
            sealed.drain(..n).collect()
        };
        for (start, _) in &done {
            segment::delete(&self.shared.dir, *start).map_err(io)?;
        }
        Ok(done.len())
    }

    /// How many syncs ran and how many appends they answered.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Writes what is pending, then stops the writer; later appends fail with [`StoreError::Closed`].
    pub fn close(&self) {
        {
            let mut pending = lock(&self.shared.pending);
            if matches!(pending.state, State::Open) {
                pending.state = State::Closing;
            }
        }
        self.shared.wake.notify_one();
        let thread = lock(&self.writer).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Writes zeros over the torn write that starts at `at` of the segment at `path` (read whole as
/// `bytes`) and syncs it, keeping the room after it; returns how many bytes the write had reached.
/// Only the bytes up to the last non-zero one are written: the rest is the room, zeros already.
fn clear_torn(path: &Path, bytes: &[u8], at: usize) -> std::io::Result<usize> {
    let torn = bytes[at..]
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |last| last + 1);
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(&vec![0u8; torn], at as u64)?;
    file.sync_data()?;
    Ok(torn)
}

/// The next segment's file, being zero-filled on a thread of its own.
type Preparing = std::thread::JoinHandle<std::io::Result<File>>;

/// Starts filling the next segment's file; `None` if no thread could be started (the rotation then
/// fills it itself).
fn prepare_next(dir: &Path, bytes: u64) -> Option<Preparing> {
    let dir = dir.to_owned();
    std::thread::Builder::new()
        .name("pixelhub-journal-fill".into())
        .spawn(move || segment::prepare(&dir, bytes, segment::FILL_PIECE))
        .ok()
}

/// The writer thread's own state: the segment being written, and the next one being filled.
struct Writer {
    shared: Arc<Shared>,
    options: JournalOptions,
    file: File,
    start: u64,
    /// Where in `file` the next group goes: after the last frame.
    length: u64,
    next: Option<Preparing>,
}

impl Drop for Writer {
    /// A fill still running would write into the next journal's preparation: it ends with the writer.
    fn drop(&mut self) {
        if let Some(filling) = self.next.take() {
            let _ = filling.join();
        }
    }
}

impl Writer {
    fn run(mut self) {
        let mut group = Vec::new();
        let mut replies = Vec::new();
        let mut upto;
        loop {
            {
                let mut pending = lock(&self.shared.pending);
                // Lazy appends alone wake nobody: they go with the next group someone waits for.
                while pending.waiters.is_empty() && matches!(pending.state, State::Open) {
                    pending = self
                        .shared
                        .wake
                        .wait(pending)
                        .expect("journal state is changed whole under its lock");
                }
                if pending.buf.is_empty() {
                    // Sync points only: what they wait for was synced before this turn.
                    let waiters = std::mem::take(&mut pending.waiters);
                    let done = waiters.is_empty();
                    drop(pending);
                    for (reply, position) in waiters {
                        let _ = reply.send(Ok(position));
                    }
                    if done {
                        return;
                    }
                    continue;
                }
                upto = pending.next;
                std::mem::swap(&mut pending.buf, &mut group);
                std::mem::swap(&mut pending.waiters, &mut replies);
            }
            let started = Instant::now();
            let written = self
                .file
                .write_all_at(&group, self.length)
                .and_then(|()| (self.options.sync)(&self.file));
            if let Err(e) = written {
                self.fail(e, &mut replies);
                return;
            }
            self.length += group.len() as u64;
            self.shared.durable.store(upto, Ordering::Release);
            self.options
                .metrics
                .flushed(started.elapsed(), replies.len());
            let counters = &self.shared.counters;
            counters.syncs.fetch_add(1, Ordering::Relaxed);
            counters
                .appends
                .fetch_add(replies.len() as u64, Ordering::Relaxed);
            for (reply, position) in replies.drain(..) {
                let _ = reply.send(Ok(position));
            }
            group.clear();
            if self.length >= self.options.segment_bytes
                && let Err(e) = self.rotate()
            {
                self.fail(e, &mut replies);
                return;
            }
        }
    }

    /// Seals the current segment and starts the next where it ends.
    fn rotate(&mut self) -> std::io::Result<()> {
        let end = segment::position(self.start, self.length as usize);
        let dir = &self.shared.dir;
        let room = match self.next.take().map(std::thread::JoinHandle::join) {
            Some(Ok(filled)) => filled?,
            Some(Err(_)) | None => {
                segment::prepare(dir, self.options.segment_bytes, self.options.segment_bytes)?
            }
        };
        let file = segment::install(dir, room, end)?;
        self.next = prepare_next(dir, self.options.segment_bytes);
        lock(&self.shared.sealed).push((self.start, end));
        self.file = file;
        self.start = end;
        self.length = segment::HEADER as u64;
        Ok(())
    }

    /// A write or sync failed: every writer of this group, every one waiting and every later one is
    /// told so, and the journal takes nothing more.
    fn fail(&self, e: std::io::Error, replies: &mut Vec<(Reply, u64)>) {
        tracing::error!(error = %e, segment = %segment::path(&self.shared.dir, self.start).display(), "journal write or fdatasync failed; nothing more is accepted");
        let cause: Cause = Arc::new(e);
        let mut pending = lock(&self.shared.pending);
        pending.state = State::Failed(cause.clone());
        pending.buf.clear();
        replies.append(&mut pending.waiters);
        drop(pending);
        for (reply, _) in replies.drain(..) {
            let _ = reply.send(Err(StoreError::Failed(cause.clone())));
        }
    }
}

#[cfg(test)]
mod tests;

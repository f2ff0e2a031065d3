//! Group commit: many writers, one fsync.
//!
//! An fsync costs about 0.2 ms on the machines we target, so one per request would cap ingestion near 5,000
//! requests per second. Instead a writer applies its change in memory, then calls [`GroupCommit::wait`]. A
//! single flusher task takes every waiter that has arrived, runs one flush, and answers them all; waiters
//! arriving during that flush are served by the next one. Because a waiter registers only after its change
//! was applied, the flush that answers it always covers that change.
//!
//! The flusher steps aside once ([`tokio::task::yield_now`]) before it collects. Woken by a writer, it
//! would otherwise run next (tokio's LIFO slot) and flush that writer alone, while the writers already
//! queued behind it each start a flush of their own right after. A flush costs CPU, not only disk time
//! (sled seals a buffer and hands it to a thread), so on two cores back-to-back flushes of two or three
//! writers starve the writers they wait for. Measured with 64 concurrent single-pixel requests, the yield
//! took batches from 3.5 to about 30 writers a flush, flushes from ~1,240/s to ~150/s, and throughput up
//! 14% (docs/benchmarks.md has the runs). When nothing else is runnable the yield returns at once: an
//! idle hub adds no latency.
//!
//! A failed flush is never retried: the operating system may have dropped the pages it could not write,
//! so a later flush that "succeeds" would prove nothing. Every waiter of that flush and every later one
//! gets [`StoreError::Failed`], and the hub stops; its next start recovers from what is on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Cause, StoreError};
use crate::metrics::Metrics;

type Reply = oneshot::Sender<Result<(), StoreError>>;

enum Request {
    Wait(Reply),
    Close(oneshot::Sender<()>),
}

/// Handle to the flusher task. Dropping every handle stops the task after a final flush.
pub(super) struct GroupCommit {
    requests: mpsc::UnboundedSender<Request>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

/// How well batching works; read by benchmarks and, later, metrics.
#[derive(Default)]
pub(super) struct Counters {
    /// Flushes run.
    pub flushes: AtomicU64,
    /// Waiters answered; `waiters / flushes` is the average batch.
    pub waiters: AtomicU64,
}

impl GroupCommit {
    /// Starts the flusher for `db`. Must be called inside a tokio runtime.
    pub(super) fn start(db: ::sled::Db, metrics: Arc<Metrics>) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(flusher(db, rx, Arc::clone(&counters), metrics));
        Self {
            requests,
            task: std::sync::Mutex::new(Some(task)),
            counters,
        }
    }

    /// Returns once everything applied before this call is on stable storage.
    pub(super) async fn wait(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Wait(tx))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a last flush and stops the flusher; waits for it to finish so the database can be reopened.
    pub(super) async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let task = self
            .task
            .lock()
            .expect("the lock guards no invariant that a panic could break")
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    pub(super) fn counters(&self) -> &Counters {
        &self.counters
    }
}

async fn flusher(
    db: ::sled::Db,
    mut rx: mpsc::UnboundedReceiver<Request>,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
) {
    let mut waiters: Vec<Reply> = Vec::new();
    let mut failed: Option<Cause> = None;
    while let Some(first) = rx.recv().await {
        tokio::task::yield_now().await;
        let mut close = None;
        for request in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match request {
                Request::Wait(reply) => waiters.push(reply),
                Request::Close(done) => close = Some(done),
            }
        }
        if let Some(cause) = &failed {
            for reply in waiters.drain(..) {
                let _ = reply.send(Err(StoreError::Failed(cause.clone())));
            }
        } else if !waiters.is_empty() || close.is_some() {
            let started = Instant::now();
            let result = flush(&db).await;
            if let Err(cause) = &result {
                failed = Some(cause.clone());
            }
            metrics.flushed(started.elapsed(), waiters.len());
            counters.flushes.fetch_add(1, Ordering::Relaxed);
            counters
                .waiters
                .fetch_add(waiters.len() as u64, Ordering::Relaxed);
            for reply in waiters.drain(..) {
                let _ = reply.send(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| StoreError::Failed(e.clone())),
                );
            }
        }
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
    // Every handle was dropped without close: still leave the data durable.
    if failed.is_none() {
        let _ = flush(&db).await;
    }
}

async fn flush(db: &::sled::Db) -> Result<(), Cause> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || db.flush()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "store flush failed");
            Err(Arc::new(e))
        }
        Err(e) => Err(Arc::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writers that are already runnable when the first one registers share its flush. On the
    /// multi-threaded runtime a task woken by the one running goes next (tokio's LIFO slot), so without
    /// stepping aside the flusher would flush the first writer alone and the other nine in a second flush.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn runnable_writers_share_one_flush() {
        // Everything is spawned from one task on the single worker, so the writers sit queued behind
        // each other in a known order before any of them runs.
        let counters = tokio::spawn(async {
            let db = ::sled::Config::new().temporary(true).open().unwrap();
            let commit = Arc::new(GroupCommit::start(db, Arc::new(Metrics::new())));
            let writers: Vec<_> = (0..10)
                .map(|_| {
                    let commit = Arc::clone(&commit);
                    tokio::spawn(async move { commit.wait().await })
                })
                .collect();
            for writer in writers {
                writer.await.unwrap().unwrap();
            }
            let counted = (
                commit.counters().waiters.load(Ordering::Relaxed),
                commit.counters().flushes.load(Ordering::Relaxed),
            );
            commit.close().await;
            counted
        })
        .await
        .unwrap();
        assert_eq!(counters, (10, 1), "(waiters, flushes)");
    }
}

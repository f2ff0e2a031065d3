//! The threads the embedded engine's calls run on.

/// The threads store calls run on: a pool of the store's own, 2 per core and at least 4, apart from the
/// process's other blocking work.
///
/// Apart, so that store calls stuck on a disk never take the threads DNS lookups, uploads and the
/// group-commit flush need, nor those the store. Bounded, because more threads only fight over sled's
/// locks: with tokio's shared pool (up to 512 threads) the soak grew to ~230 threads and ~100 MB more
/// RSS, and 64 threads against 8 took online p50 from 7 to 17 ms and drain from 10,976 to 8,770
/// pixels/s on two cores (docs/benchmarks.md). A pool's own queue keeps its threads busy: a semaphore in
/// front of a shared pool, tried first, handed each freed turn to a task that first had to wait for an
/// async worker, and online p50 went to 862 ms. Fewer threads than calls in flight also means a thread
/// that finishes a call takes the next one queued instead of sleeping while another is woken: 4
/// threads on two cores made 13% more single durable calls a second than 8, and 3 made 18% more, with
/// drain unchanged (docs/benchmarks.md, "What bounds the write path"); 2 per core keeps a few disk reads
/// of a cold backlog in flight at once. The pool is a tokio runtime used for its blocking pool
/// only; calls beyond its threads queue there, within the store's deadline.
pub(super) struct StoreThreads {
    pub(super) handle: tokio::runtime::Handle,
    /// Kept to be shut down without waiting (dropping a runtime waits for its threads, which a stuck
    /// call would make for ever, and is refused inside async code).
    runtime: Option<tokio::runtime::Runtime>,
}

impl StoreThreads {
    pub(super) fn start() -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads((cores * 2).max(4))
            .thread_name("pixelhub-store")
            .build()?;
        Ok(StoreThreads {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }
}

impl Drop for StoreThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

//! Giving freed memory back to the operating system.
//!
//! glibc's allocator keeps memory a program frees, for reuse, and returns it only from the top of each
//! heap. The store allocates and frees its cache's pages all the time, from many threads, so freed
//! memory ends up scattered inside the heaps: measured on a 3.1 GB data dir with a 64 MB cache, the
//! process held 350 MB of which 204 MB were in use; one `malloc_trim` brought it to 265 MB. So the hub
//! trims every [`TRIM_EVERY`], on a blocking thread: RSS then follows what is in use, and
//! `--store-cache-mb` bounds what it says instead of being the floor of a heap that only grows. Other
//! allocators (musl's) return memory by themselves; there this does nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Between two trims: often enough that RSS follows a cache that shrinks, rarely enough to cost nothing
/// (a trim of a few hundred megabytes takes a few milliseconds, holding each heap's lock in turn).
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns the free memory of every heap to the operating system, where the allocator is glibc's.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks; it is safe to
    // call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Starts the trimming task, until `stop`.
pub fn spawn_trimmer(stop: CancellationToken, tracker: &TaskTracker) {
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TRIM_EVERY) => {}
            }
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident bytes of this process, from `/proc/self/statm` (pages).
    fn rss() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn a_trim_gives_back_memory_freed_inside_the_heap() {
        // On a thread of its own, so the blocks share one heap: 96 MB of small blocks, then all freed but
        // the last few, which keep the heap's top in place, as a store's live pages do.
        let (before, freed, trimmed) = std::thread::spawn(|| {
            let mut blocks: Vec<Box<[u8; 96]>> =
                (0..1_000_000).map(|i| Box::new([i as u8; 96])).collect();
            let kept = blocks.split_off(blocks.len() - 1_000);
            let before = rss();
            drop(blocks);
            let freed = rss();
            trim();
            let trimmed = rss();
            drop(kept);
            (before, freed, trimmed)
        })
        .join()
        .unwrap();
        let mb = |b: u64| b >> 20;
        assert!(
            freed + (48 << 20) > before,
            "glibc kept the freed memory: {} MB then {} MB",
            mb(before),
            mb(freed)
        );
        assert!(
            trimmed + (48 << 20) < freed,
            "a trim gave it back: {} MB before, {} MB after",
            mb(freed),
            mb(trimmed)
        );
    }
}

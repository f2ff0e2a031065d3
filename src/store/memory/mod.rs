//! The memory engine: everything in this process's memory, nothing durable. For development and fast
//! tests; a restart forgets every brand, pixel and event.
//!
//! A [`MemoryStore`] is a handle on a backing store; [`MemoryStore::handle`] opens another handle on the
//! same one, which is what two hub processes on one shared database are. The contract's two-handle
//! checks run on it, so the rules above are proven against concurrent writers before any shared engine
//! exists.

mod catalog;
mod queues;
mod report;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, broadcast};

use crate::clock::SharedClock;
use crate::store::StoreError;

/// Announcements buffered per subscriber before it lags (and then resynchronises).
const ANNOUNCE_CAPACITY: usize = 16 * 1024;

/// A handle on a memory backing store. Cheap to clone (a clone is the same handle: closing one closes
/// both).
#[derive(Clone)]
pub struct MemoryStore {
    backing: Arc<Backing>,
    clock: SharedClock,
    closed: Arc<AtomicBool>,
}

/// What every handle on one backing store shares: the "database", and its announcements, which reach
/// every handle as a shared engine's pub/sub would.
struct Backing {
    catalog: Mutex<catalog::Entries>,
    hot: Mutex<queues::Hot>,
    seq: AtomicU64,
    announce: broadcast::Sender<crate::store::Announcement>,
    postbacks: Notify,
}

impl MemoryStore {
    /// A new, empty backing store and a handle on it, on `clock`.
    pub fn new(clock: SharedClock) -> Self {
        MemoryStore {
            backing: Arc::new(Backing {
                catalog: Mutex::default(),
                hot: Mutex::default(),
                seq: AtomicU64::new(0),
                announce: broadcast::channel(ANNOUNCE_CAPACITY).0,
                postbacks: Notify::new(),
            }),
            clock,
            closed: Arc::default(),
        }
    }

    /// Another handle on the same backing store, as a second hub process would open on one database:
    /// it sees everything the first writes, and shares none of its process-local state (closing it
    /// leaves the other open).
    pub fn handle(&self) -> Self {
        MemoryStore {
            backing: Arc::clone(&self.backing),
            clock: Arc::clone(&self.clock),
            closed: Arc::default(),
        }
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }
}

/// Locks one part of the backing store. A panic while it was held cannot leave a half-applied change
/// behind (changes are checked first, then applied without a fallible step), so a poisoned lock is
/// taken over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::ledger::Ledger;
    use crate::store::catalog::Catalog;
    use crate::store::contract::catalog::CatalogHarness;
    use crate::store::contract::rules::{self, Harness};

    /// A new backing store; every call opens another handle on it.
    struct MemoryHarness(MemoryStore);

    impl CatalogHarness for MemoryHarness {
        async fn catalog(&self) -> Arc<dyn Catalog> {
            Arc::new(self.0.handle())
        }
    }

    crate::catalog_contract!(MemoryHarness(MemoryStore::new(crate::clock::system())));

    /// One backing store on a clock the checks move; every `open` is a new handle on it (a reopened
    /// process sees what the last one wrote, as on a shared database).
    struct RulesHarness {
        store: MemoryStore,
        clock: Arc<ManualClock>,
    }

    impl RulesHarness {
        fn new() -> Self {
            let clock = ManualClock::starting_now();
            RulesHarness {
                store: MemoryStore::new(clock.clone()),
                clock,
            }
        }
    }

    impl Harness for RulesHarness {
        async fn open(&self) -> Ledger {
            rules::ledger_over(Arc::new(self.store.handle()), self.clock.clone())
        }

        fn clock(&self) -> &ManualClock {
            &self.clock
        }
    }

    crate::rules_contract!(RulesHarness::new());
}

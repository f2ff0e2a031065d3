//! The memory engine: everything in this process's memory, nothing durable. For development and fast
//! tests; a restart forgets every brand, pixel and event.
//!
//! A [`MemoryStore`] is a handle on a backing store; [`MemoryStore::handle`] opens another handle on the
//! same one, which is what two hub processes on one shared database are. The contract's two-handle
//! checks run on it, so the rules above are proven against concurrent writers before any shared engine
//! exists.

mod catalog;

use std::sync::{Arc, Mutex, MutexGuard};

/// A handle on a memory backing store. Cheap to clone (a clone is the same handle).
#[derive(Clone, Default)]
pub struct MemoryStore {
    backing: Arc<Backing>,
}

/// What every handle on one backing store shares: the "database".
#[derive(Default)]
struct Backing {
    catalog: Mutex<catalog::Entries>,
}

impl MemoryStore {
    /// A new, empty backing store and a handle on it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another handle on the same backing store, as a second hub process would open on one database:
    /// it sees everything the first writes, and shares none of its process-local state.
    pub fn handle(&self) -> Self {
        MemoryStore {
            backing: Arc::clone(&self.backing),
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
    use crate::store::catalog::Catalog;
    use crate::store::contract::catalog::CatalogHarness;

    /// A new backing store; every call opens another handle on it.
    struct MemoryHarness(MemoryStore);

    impl CatalogHarness for MemoryHarness {
        async fn catalog(&self) -> Arc<dyn Catalog> {
            Arc::new(self.0.handle())
        }
    }

    crate::catalog_contract!(MemoryHarness(MemoryStore::new()));
}

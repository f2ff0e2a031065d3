//! The wall clock, as one injectable handle.
//!
//! Everything that reads the time of day (a pixel's expiry, the report's retention, a postback's next
//! attempt, a lease's end, a player token's validity, the sweeper's "due by now") reads it from a
//! [`Clock`], never from [`SystemTime`] directly. The hub runs on [`SystemClock`]; tests and the store
//! contract run on a [`ManualClock`] and move it forward, so "an hour later" takes no time and never
//! depends on how busy the machine is.
//!
//! Durations the hub only waits for (heartbeats, timeouts, retry sleeps) are tokio timers, which tests
//! control with tokio's paused time; a clock is for instants that are stored or compared with stored ones.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch, now. Never goes backwards for a [`ManualClock`]; a
    /// [`SystemClock`] follows the system's clock, which an operator may set back.
    fn now_ms(&self) -> u64;
}

/// A clock shared by every part of one hub.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        system_now_ms()
    }
}

/// The system clock, shared: what a hub runs on.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Milliseconds since the Unix epoch by the system's clock; 0 before 1970. Only for what orders
/// without deciding (a generated id's millisecond); every rule reads a [`Clock`].
pub(crate) fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A clock that moves only when told: for tests and the store contract, where "a TTL later" must be
/// exact and instant.
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock stopped at `ms` since the epoch.
    pub fn at(ms: u64) -> Arc<Self> {
        Arc::new(ManualClock {
            ms: AtomicU64::new(ms),
        })
    }

    /// A clock stopped at the system's time now, so times it gives look real in reports and logs.
    pub fn starting_now() -> Arc<Self> {
        Self::at(system_now_ms())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3_000);
        let shared: SharedClock = clock.clone();
        assert_eq!(
            shared.now_ms(),
            3_000,
            "a shared handle reads the same clock"
        );
    }

    #[test]
    fn the_system_clock_is_the_time_of_day() {
        let before = system_now_ms();
        let now = SystemClock.now_ms();
        assert!(now >= before && now < before + 60_000);
        assert!(now > 1_700_000_000_000, "after 2023: {now}");
    }
}

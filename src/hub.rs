//! The registry of this process's live sessions, and the wake-ups that reach them.
//!
//! The hub knows nothing durable and decides nothing about delivery: the store's lease decides which
//! session may send a player's pixels. The hub only answers "which sessions of player P are connected to
//! *this* process?" and wakes them when the store announces that P may have something deliverable, or when
//! a heartbeat is due. Several hub processes can share one store; each sees only its own sessions.
//!
//! To stay at a few KiB per session with ~19,000 sessions, a session owns no timer and no extra task:
//! one hub-wide ticker raises a heartbeat flag on the sessions whose beat is due, and one task turns store
//! announcements into pokes. A session's wake-up is an `Arc<Signal>`: a `Notify` plus flag bits, coalescing
//! any number of wake-ups into one.
//!
//! Heartbeats are spread over the interval, not raised on every session at once: each session beats in one
//! of [`BEAT_SLOTS`] slots, and the ticker raises the slots one after the other. A heartbeat costs a ping
//! and a look at the queue (which renews the lease); 10,000 of them in one burst held every request behind
//! them for 150 to 450 ms (docs/benchmarks.md, "The online tail over 30 seconds").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ids::{BrandId, PlayerKey, SessionId};
use crate::ledger::Ledger;
use crate::store::{Announcement, ProcessPresence};

/// Wake-up reasons, as bits in [`Signal`]'s flags.
pub mod wake {
    /// The player's queue may have something to deliver.
    pub const POKE: u8 = 1;
    /// A heartbeat interval passed.
    pub const HEARTBEAT: u8 = 2;
}

/// What ops see of a live session: enough to tell a player's tabs and devices apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// The session id, as sent in its welcome.
    #[schema(value_type = String)]
    pub session_id: SessionId,
    /// Unix milliseconds of its hello.
    pub connected_since_ms: u64,
    /// The upgrade request's `User-Agent`, cut to 256 bytes.
    pub user_agent: Option<String>,
    /// The upgrade request's `Origin`: the page that opened it.
    pub origin: Option<String>,
    /// The client's address: the connection's peer, or the address a trusted proxy forwarded.
    #[schema(value_type = String)]
    pub client_ip: std::net::IpAddr,
}

/// How often a process on a shared store reports its sessions (well within
/// [`crate::store::PRESENCE_TTL_MS`]).
const PRESENCE_EVERY: Duration = Duration::from_secs(2);

/// Reports between two renewals of the sessions' claims: every 6 s, well within
/// [`crate::store::SESSION_CLAIM_TTL_MS`].
const RENEW_EVERY_REPORTS: u32 = 3;

/// The host's name and this process's id: how ops tell processes apart.
fn process_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".into()
    };
    format!("{host}:{}", std::process::id())
}

/// How many heartbeat slots the sessions are spread over: one slot's sessions beat together, each slot
/// once an interval.
pub const BEAT_SLOTS: usize = 256;

/// The ticker wakes no more often than this, however short the interval: a short interval (in tests)
/// raises several slots a tick instead.
const MIN_BEAT_TICK: Duration = Duration::from_millis(10);

/// How the hub wakes one session.
#[derive(Debug)]
pub struct Signal {
    /// The session this signal belongs to.
    pub session: SessionId,
    notify: Notify,
    flags: AtomicU8,
    /// Its heartbeat slot, below [`BEAT_SLOTS`].
    slot: usize,
    /// Pixels sent to the session and not acknowledged, as the session counts them: while any are, the
    /// hub wakes it every third of the lease's lifetime so it renews the lease (a heartbeat may come too
    /// late).
    in_flight: AtomicU32,
    /// Whether another session held the player's queue at the session's last ask: the hub wakes it
    /// with the holders, so it takes the queue soon after a dead holder's lease runs out.
    waiting: std::sync::atomic::AtomicBool,
    info: SessionInfo,
}

impl Signal {
    fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::Release);
        self.notify.notify_one();
    }

    /// Waits until something was raised since the last [`Signal::take`]; cancel-safe.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Returns and clears the raised flags.
    pub fn take(&self) -> u8 {
        self.flags.swap(0, Ordering::Acquire)
    }

    /// The session sent `n` pixels.
    pub fn sent(&self, n: usize) {
        self.in_flight.fetch_add(n as u32, Ordering::Relaxed);
    }

    /// The session passed `n` acks to the store.
    pub fn acked(&self, n: usize) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                Some(held.saturating_sub(n as u32))
            });
    }

    /// The session gave its whole lease up (its page has no consent): nothing is in flight.
    pub fn released(&self) {
        self.in_flight.store(0, Ordering::Relaxed);
        self.waiting.store(false, Ordering::Relaxed);
    }

    /// Whether another session held the player's queue at this one's last ask.
    pub fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed);
    }

    /// Whether the session holds pixels in flight, or waits for another's lease to end: either way, it
    /// must ask again within a lease's lifetime.
    fn holding(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0 || self.waiting.load(Ordering::Relaxed)
    }
}

pub use crate::store::BrandSessions;

/// Cheap-to-clone handle to the registry.
#[derive(Clone, Default)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    /// Sessions per player. A player rarely has more than a few, so a Vec is the right size.
    players: DashMap<PlayerKey, Vec<Arc<Signal>>>,
    /// Sessions per heartbeat slot, filled in turn so the slots stay even.
    beats: Box<[Mutex<Vec<Arc<Signal>>>]>,
    /// Sessions ever registered: the next one's slot, modulo [`BEAT_SLOTS`].
    registered: AtomicUsize,
    sessions: AtomicUsize,
    /// This process's id among a shared store's processes.
    process: String,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            players: DashMap::new(),
            beats: (0..BEAT_SLOTS).map(|_| Mutex::default()).collect(),
            registered: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            process: uuid::Uuid::now_v7().simple().to_string(),
        }
    }
}

impl Shared {
    /// One heartbeat slot's sessions. Held only to push, remove or raise, never across an await.
    fn beat(&self, slot: usize) -> std::sync::MutexGuard<'_, Vec<Arc<Signal>>> {
        self.beats[slot]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Which heartbeat slots are due, given the time since the ticker started: slot `n % BEAT_SLOTS` is due
/// `n / BEAT_SLOTS` intervals and `n % BEAT_SLOTS` slot widths after the start, so every slot beats once
/// an interval, evenly apart, however the ticks fall.
#[derive(Debug, Default)]
struct BeatClock {
    /// Slots raised so far, counted from the start (not wrapped).
    raised: u64,
}

impl BeatClock {
    /// The slots due by `elapsed` and not yet raised, oldest first. After a stall of more than an
    /// interval, each slot is due once, not once per interval missed (a raised flag coalesces anyway).
    fn due(
        &mut self,
        elapsed: Duration,
        interval: Duration,
    ) -> impl Iterator<Item = usize> + use<> {
        let slots = BEAT_SLOTS as u128;
        let due = (elapsed.as_nanos() * slots / interval.as_nanos().max(1)) as u64;
        let from = self.raised.max(due.saturating_sub(BEAT_SLOTS as u64));
        self.raised = self.raised.max(due);
        (from..due).map(|n| (n % BEAT_SLOTS as u64) as usize)
    }
}

/// A session's place in the hub; dropping it unregisters the session.
pub struct Registration {
    hub: Hub,
    key: PlayerKey,
    signal: Arc<Signal>,
}

impl Registration {
    /// The signal the session waits on.
    pub fn signal(&self) -> &Signal {
        &self.signal
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub
            .shared
            .beat(self.signal.slot)
            .retain(|s| !Arc::ptr_eq(s, &self.signal));
        let players = &self.hub.shared.players;
        if let dashmap::Entry::Occupied(mut entry) = players.entry(self.key.clone()) {
            entry.get_mut().retain(|s| !Arc::ptr_eq(s, &self.signal));
            if entry.get().is_empty() {
                entry.remove();
            }
        }
        self.hub.shared.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// Adds a session for `key`, unless the player holds `max` sessions in this process already. The
    /// returned registration is born with a poke raised, so the session's first wake-up looks at the queue.
    pub fn register(&self, key: PlayerKey, info: SessionInfo, max: usize) -> Option<Registration> {
        let slot = self.shared.registered.fetch_add(1, Ordering::Relaxed) % BEAT_SLOTS;
        let signal = Arc::new(Signal {
            session: info.session_id,
            notify: Notify::new(),
            flags: AtomicU8::new(0),
            slot,
            in_flight: AtomicU32::new(0),
            waiting: Default::default(),
            info,
        });
        signal.raise(wake::POKE);
        {
            let mut sessions = self.shared.players.entry(key.clone()).or_default();
            if sessions.len() >= max {
                return None;
            }
            sessions.push(Arc::clone(&signal));
        }
        self.shared.beat(slot).push(Arc::clone(&signal));
        self.shared.sessions.fetch_add(1, Ordering::Relaxed);
        Some(Registration {
            hub: self.clone(),
            key,
            signal,
        })
    }

    /// Wakes every session of the player in this process. Only the lease holder (or, if none holds it, the
    /// first to ask) will get pixels; the others find nothing, which costs one store lookup each.
    pub fn poke(&self, key: &PlayerKey) {
        if let Some(sessions) = self.shared.players.get(key) {
            sessions.iter().for_each(|s| s.raise(wake::POKE));
        }
    }

    /// Wakes every session, e.g. after missing store announcements.
    pub fn poke_all(&self) {
        for entry in self.shared.players.iter() {
            entry.value().iter().for_each(|s| s.raise(wake::POKE));
        }
    }

    /// Live connections in this process.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.load(Ordering::Relaxed)
    }

    /// The player's sessions in this process, oldest first.
    pub fn sessions_of(&self, key: &PlayerKey) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .shared
            .players
            .get(key)
            .map(|sessions| sessions.iter().map(|s| s.info.clone()).collect())
            .unwrap_or_default();
        out.sort_by_key(|s| s.connected_since_ms);
        out
    }

    /// Sessions and players online per brand, in this process.
    pub fn brand_sessions(&self) -> BTreeMap<BrandId, BrandSessions> {
        let mut out: BTreeMap<BrandId, BrandSessions> = BTreeMap::new();
        for entry in self.shared.players.iter() {
            let stats = out.entry(entry.key().brand.clone()).or_default();
            stats.sessions += entry.value().len();
            stats.players_online += 1;
        }
        out
    }

    /// Raises a heartbeat on the sessions of one slot.
    fn beat(&self, slot: usize) {
        self.shared
            .beat(slot)
            .iter()
            .for_each(|s| s.raise(wake::HEARTBEAT));
    }

    /// Starts the hub's two background tasks: store announcements to pokes, and the heartbeat ticker.
    /// Both stop when `shutdown` is cancelled.
    pub fn spawn_background(
        &self,
        ledger: &Ledger,
        heartbeat: Duration,
        lease_ttl: Duration,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let mut announcements = ledger.subscribe();
        let hub = self.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            loop {
                let key = tokio::select! {
                    _ = stop.cancelled() => return,
                    key = announcements.recv() => key,
                };
                match key {
                    Ok(Announcement::Player(key)) => hub.poke(&key),
                    Ok(Announcement::Everyone) => {
                        tracing::info!(
                            "the store's announcements were lost and are back; waking every session"
                        );
                        hub.poke_all();
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "fell behind store announcements; waking every session"
                        );
                        hub.poke_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });

        if ledger.shared() {
            self.spawn_presence(ledger.clone(), shutdown.clone(), tracker);
        }
        self.spawn_renewals(lease_ttl / 3, shutdown.clone(), tracker);
        self.spawn_heartbeats(heartbeat, shutdown, tracker);
    }

    /// Wakes, every `every`, the sessions holding pixels in flight, so each renews its lease before it
    /// runs out (its heartbeat may be further apart than the lease's lifetime), and those waiting for
    /// another session's lease, so one takes the queue soon after a dead holder's lease ran out. One pass
    /// over the sessions, with no timer of their own.
    fn spawn_renewals(&self, every: Duration, shutdown: CancellationToken, tracker: &TaskTracker) {
        let hub = self.clone();
        tracker.spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => hub.wake_holders(),
                }
            }
        });
    }

    /// Wakes every session holding pixels in flight or waiting for another's lease.
    fn wake_holders(&self) {
        for entry in self.shared.players.iter() {
            entry
                .value()
                .iter()
                .filter(|s| s.holding())
                .for_each(|s| s.raise(wake::POKE));
        }
    }

    /// This process's id among the processes of a shared store (unique to its run).
    pub fn process_id(&self) -> &str {
        &self.shared.process
    }

    /// This process's report, as of `now_ms`.
    pub fn presence(&self, now_ms: u64) -> ProcessPresence {
        let brands = self.brand_sessions();
        ProcessPresence {
            id: self.shared.process.clone(),
            name: process_name(),
            reported_at_ms: now_ms,
            sessions: self.session_count(),
            players_online: brands.values().map(|b| b.players_online).sum(),
            brands,
        }
    }

    /// Every live session, with its player.
    fn all_sessions(&self) -> Vec<(PlayerKey, SessionId)> {
        let mut out = Vec::with_capacity(self.session_count());
        for entry in self.shared.players.iter() {
            out.extend(
                entry
                    .value()
                    .iter()
                    .map(|s| (entry.key().clone(), s.session)),
            );
        }
        out
    }

    /// On a shared store: reports this process's sessions every [`PRESENCE_EVERY`], and renews its
    /// sessions' claims every [`RENEW_EVERY_REPORTS`] reports, so every process's stats show the whole
    /// hub and the per-player limit holds across processes. A report or renewal that fails (the store
    /// is away) is tried again at the next turn.
    fn spawn_presence(&self, ledger: Ledger, shutdown: CancellationToken, tracker: &TaskTracker) {
        let hub = self.clone();
        tracker.spawn(async move {
            let mut ticker = tokio::time::interval(PRESENCE_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut turn = 0u32;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Stopping: the others' stats lose this process now, not when its report ages out.
                        if let Err(e) = ledger.forget_presence(hub.process_id()).await {
                            tracing::debug!(error = %e, "could not take this process's report away");
                        }
                        return;
                    }
                    _ = ticker.tick() => {}
                }
                let presence = hub.presence(ledger.now_ms());
                if let Err(e) = ledger.report_presence(&presence).await {
                    tracing::debug!(error = %e, "could not report this process's sessions");
                }
                turn += 1;
                if turn.is_multiple_of(RENEW_EVERY_REPORTS)
                    && let Err(e) = ledger.renew_sessions(&hub.all_sessions()).await
                {
                    tracing::debug!(error = %e, "could not renew this process's session claims");
                }
            }
        });
    }

    /// Starts the heartbeat ticker: every session beats once every `heartbeat`, at its slot's turn.
    fn spawn_heartbeats(
        &self,
        heartbeat: Duration,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let hub = self.clone();
        tracker.spawn(async move {
            let tick = (heartbeat / BEAT_SLOTS as u32).max(MIN_BEAT_TICK);
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = tokio::time::Instant::now();
            let mut clock = BeatClock::default();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => {
                        clock.due(started.elapsed(), heartbeat).for_each(|slot| hub.beat(slot));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PlayerId, SessionId};

    fn info() -> SessionInfo {
        SessionInfo {
            session_id: SessionId::generate(),
            connected_since_ms: 1,
            user_agent: None,
            origin: None,
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    fn register(hub: &Hub, key: PlayerKey) -> Registration {
        hub.register(key, info(), 16).expect("under the cap")
    }

    fn key(brand: &str, player: &str) -> PlayerKey {
        PlayerKey::new(
            BrandId::parse(brand).unwrap(),
            PlayerId::parse(player).unwrap(),
        )
    }

    #[test]
    fn counts_sessions_and_players_per_brand_and_forgets_dropped_ones() {
        let hub = Hub::default();
        let a1 = register(&hub, key("b1", "a"));
        let a2 = register(&hub, key("b1", "a"));
        let _c = register(&hub, key("b2", "c"));

        let stats = hub.brand_sessions();
        assert_eq!(
            stats[&BrandId::parse("b1").unwrap()],
            BrandSessions {
                sessions: 2,
                players_online: 1
            }
        );
        assert_eq!(hub.session_count(), 3);

        drop(a1);
        drop(a2);
        assert!(
            !hub.brand_sessions()
                .contains_key(&BrandId::parse("b1").unwrap())
        );
        assert_eq!(hub.session_count(), 1);
    }

    /// With paused time: each renewal tick wakes the sessions holding pixels in flight, and only them,
    /// until their acks come back; and those waiting for another session's lease.
    #[tokio::test(start_paused = true)]
    async fn sessions_with_pixels_in_flight_are_woken_to_renew_their_lease() {
        let hub = Hub::default();
        let (holder, idle) = (register(&hub, key("b", "a")), register(&hub, key("b", "z")));
        holder.signal().take();
        idle.signal().take();
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        hub.spawn_renewals(Duration::from_secs(5), stop.clone(), &tracker);
        holder.signal().sent(3);
        for tick in 1..=2 {
            tokio::time::sleep(Duration::from_millis(5_001)).await;
            assert_eq!(holder.signal().take(), wake::POKE, "tick {tick}");
            assert_eq!(idle.signal().take(), 0, "tick {tick}");
        }
        holder.signal().acked(2);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(holder.signal().take(), wake::POKE, "one still in flight");
        holder.signal().acked(5);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(holder.signal().take(), 0, "all acked: no more renewals");
        idle.signal().set_waiting(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            idle.signal().take(),
            wake::POKE,
            "waiting for another's lease"
        );
        stop.cancel();
    }

    #[test]
    fn a_player_holds_at_most_max_sessions() {
        let hub = Hub::default();
        let first = hub.register(key("b", "a"), info(), 2).unwrap();
        let _second = hub.register(key("b", "a"), info(), 2).unwrap();
        assert!(hub.register(key("b", "a"), info(), 2).is_none());
        assert!(
            hub.register(key("b", "z"), info(), 2).is_some(),
            "per player"
        );
        assert_eq!(hub.session_count(), 2, "the refused one is not counted");
        drop(first);
        assert!(hub.register(key("b", "a"), info(), 2).is_some());
    }

    #[test]
    fn pokes_reach_only_the_players_sessions_and_coalesce() {
        let hub = Hub::default();
        let a = register(&hub, key("b", "a"));
        let other = register(&hub, key("b", "z"));
        assert_eq!(a.signal().take(), wake::POKE, "born with a poke");
        other.signal().take();

        hub.poke(&key("b", "a"));
        hub.poke(&key("b", "a"));
        hub.beat(a.signal().slot);
        hub.beat(other.signal().slot);
        assert_eq!(a.signal().take(), wake::POKE | wake::HEARTBEAT);
        assert_eq!(other.signal().take(), wake::HEARTBEAT);
        assert_eq!(a.signal().take(), 0);
    }

    /// `n` sessions of distinct players, their born pokes taken.
    fn sessions(hub: &Hub, n: usize) -> Vec<Registration> {
        let all: Vec<Registration> = (0..n)
            .map(|i| register(hub, key("b", &format!("p{i}"))))
            .collect();
        all.iter().for_each(|r| {
            r.signal().take();
        });
        all
    }

    fn beating(all: &[Registration]) -> usize {
        all.iter()
            .filter(|r| r.signal().take() & wake::HEARTBEAT != 0)
            .count()
    }

    #[test]
    fn sessions_fill_the_heartbeat_slots_evenly_and_leave_theirs_when_dropped() {
        let hub = Hub::default();
        let mut all = sessions(&hub, 2 * BEAT_SLOTS + 1);
        let sizes: Vec<usize> = (0..BEAT_SLOTS).map(|s| hub.shared.beat(s).len()).collect();
        assert_eq!(sizes[0], 3);
        assert!(sizes[1..].iter().all(|n| *n == 2), "{sizes:?}");

        hub.beat(1);
        assert_eq!(beating(&all), 2, "one slot's sessions, and only them");

        let gone = all.remove(1);
        let slot = gone.signal().slot;
        drop(gone);
        assert_eq!(hub.shared.beat(slot).len(), 1);
    }

    #[test]
    fn every_slot_beats_once_an_interval_whatever_the_ticks() {
        let interval = Duration::from_secs(25);
        let width = interval / BEAT_SLOTS as u32;
        let mut clock = BeatClock::default();
        assert_eq!(clock.due(Duration::ZERO, interval).count(), 0);
        assert_eq!(clock.due(width, interval).collect::<Vec<_>>(), [0]);
        assert_eq!(clock.due(width * 3, interval).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(clock.due(width * 3, interval).count(), 0, "nothing twice");

        // Uneven ticks over the rest of the interval: each slot once, in order.
        let mut raised: Vec<usize> = Vec::new();
        let mut at = width * 3;
        while at < interval {
            at += Duration::from_millis(37);
            raised.extend(clock.due(at.min(interval), interval));
        }
        assert_eq!(raised, (3..BEAT_SLOTS).collect::<Vec<_>>());

        // A stall of three intervals: each slot once, not three times.
        let mut after_stall: Vec<usize> = clock.due(interval * 4, interval).collect();
        after_stall.sort_unstable();
        assert_eq!(after_stall, (0..BEAT_SLOTS).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_are_spread_over_the_interval_not_raised_at_once() {
        let hub = Hub::default();
        let all = sessions(&hub, 4 * BEAT_SLOTS);
        let interval = Duration::from_millis(100) * BEAT_SLOTS as u32;
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        hub.spawn_heartbeats(interval, shutdown.clone(), &tracker);

        // Looked at halfway between two ticks.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut per_tick = Vec::new();
        for _ in 0..BEAT_SLOTS {
            tokio::time::sleep(Duration::from_millis(100)).await;
            per_tick.push(beating(&all));
        }
        assert!(
            per_tick.iter().all(|n| *n == 4),
            "each 100 ms tick raises one slot's four sessions: {per_tick:?}"
        );
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
    }
}

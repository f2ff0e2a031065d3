//! The hot half of an engine: per-player queues, the record of every pixel and postback, and the
//! per-player delivery lease.
//!
//! The ledger decides; the engine runs the ledger's decision as one transaction over the players it
//! names ([`Queues::transact`]): the work reads through [`Tx`] and stages typed writes ([`Write`]),
//! which the engine applies all together, with every index that follows from them (queue order, pending
//! counts, backlog ranking, expiry and age), and makes durable. The work is a pure function of what it
//! reads, so an engine with optimistic transactions may run it again on a conflict; an engine that
//! locks runs it once.

use std::any::Any;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{DefinitionHealth, Lane, LaneDue, StoreError};
use crate::definition::PostBody;
use crate::delivery::Delivery;
use crate::event::{EventOutcome, PlayerContext};
use crate::ids::{BrandId, DefinitionId, EventId, PixelId, PlayerKey, SessionId};
use crate::pixel::QueuedPixel;

/// What is kept under a pixel's or postback's id: its delivery record, and what the engine needs to find
/// its other entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Client pixels: the queue position. Postbacks: a unique number, so stale index entries are told
    /// apart.
    pub seq: u64,
    /// Postbacks sent as `POST`: the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<PostBody>,
    /// The report's row.
    pub delivery: Delivery,
}

impl Record {
    /// Whether it is a client pixel (in a player's queue) rather than a postback: only pixels expire.
    pub fn is_client_pixel(&self) -> bool {
        self.delivery.expires_at_ms.is_some()
    }

    /// The record as an engine stores it: without its row's unset fields
    /// ([`crate::delivery::as_stored`]); it reads back as a `Record`.
    pub fn stored(&self) -> StoredRecord<'_> {
        StoredRecord(self)
    }
}

/// A [`Record`] as engines store it ([`Record::stored`]).
pub struct StoredRecord<'a>(&'a Record);

impl Serialize for StoredRecord<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::delivery::as_stored(self.0, serializer)
    }
}

/// Which session holds a player's queue, until when, and what it was sent and has not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The holder.
    pub session: SessionId,
    /// Grows by one at each new holder of the player's queue: a write that carries an older token comes
    /// from a holder that lost the lease.
    pub token: u64,
    /// Unix milliseconds after which the lease is no one's unless renewed: a holder that died (its process
    /// with it) frees the queue by itself.
    pub expires_at_ms: u64,
    /// Sequence numbers of the pixels sent to the holder and not acknowledged; never more than its
    /// window.
    pub in_flight: Vec<u64>,
}

/// One change a transaction stages; the engine applies them in order, atomically, with their indexes.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// A new client pixel at the end of its player's queue (its sequence number from
    /// [`Tx::next_seq`]), with its record, due to expire at its `expires_at_ms`.
    AddPixel {
        /// Whose.
        key: PlayerKey,
        /// The queue entry.
        pixel: QueuedPixel,
        /// Its record (`seq` as the queue entry's).
        record: Record,
    },
    /// A record changed in place (a pixel sent, a note from the browser): its indexes stay.
    UpdateRecord {
        /// Whose.
        key: PlayerKey,
        /// The record, as it is now.
        record: Record,
    },
    /// A pending pixel or postback became final: a client pixel leaves its player's queue and its
    /// expiry; the record stays, to be forgotten at `forget_at_ms`.
    Finalize {
        /// Whose.
        key: PlayerKey,
        /// The record, final.
        record: Record,
        /// When it may be forgotten.
        forget_at_ms: u64,
    },
    /// A new postback with its record, due at `due_ms` in its lane of the outbox.
    AddPostback {
        /// Whose.
        key: PlayerKey,
        /// Its record.
        record: Record,
        /// Its lane: the brand and the host it goes to.
        lane: Lane,
        /// When its first attempt is due.
        due_ms: u64,
    },
    /// A record final from its start (a definition that could not render), forgotten at
    /// `forget_at_ms`.
    AddFailed {
        /// Whose.
        key: PlayerKey,
        /// Its record.
        record: Record,
        /// When it may be forgotten.
        forget_at_ms: u64,
    },
    /// What the hub remembers of a player between events; `click_id`, when set, is a click id the
    /// player is now found by.
    PutContext {
        /// Whose.
        key: PlayerKey,
        /// The context.
        context: PlayerContext,
        /// A click id to index to this player.
        click_id: Option<String>,
    },
    /// An event's record, kept (and its id known) until `forget_at_ms`.
    PutEvent {
        /// Whose event.
        brand: BrandId,
        /// What it did.
        outcome: EventOutcome,
        /// When it may be forgotten.
        forget_at_ms: u64,
    },
    /// Events and players a batch added against the brand's quotas, the events counted on UTC day
    /// `day` (the outbox counts itself, from [`Write::AddPostback`]).
    CountUsage {
        /// The brand.
        brand: BrandId,
        /// Days since the epoch.
        day: u64,
        /// New events.
        events: u64,
        /// Players whose first context this batch wrote.
        players: u64,
    },
    /// Puts a postback in its lane of the outbox, due at `due_ms`.
    Schedule {
        /// Whose.
        key: PlayerKey,
        /// Which postback.
        id: PixelId,
        /// Its lane.
        lane: Lane,
        /// When it is due.
        due_ms: u64,
    },
    /// Takes a postback's outbox entry out (one [`Tx::scheduled`] found).
    Unschedule {
        /// Whose.
        key: PlayerKey,
        /// Which postback.
        id: PixelId,
        /// Its lane.
        lane: Lane,
        /// When the entry was due.
        due_ms: u64,
    },
    /// A definition's postback health, or none (it starts afresh).
    PutHealth {
        /// The brand.
        brand: BrandId,
        /// The definition.
        definition: DefinitionId,
        /// Its health.
        health: Option<DefinitionHealth>,
    },
    /// Takes out an entry of the expiry index (handled, or stale).
    DropDue(DueEntry),
    /// Forgets a final record: the record and its report row.
    Forget {
        /// Whose.
        key: PlayerKey,
        /// The record.
        record: Record,
    },
    /// Forgets an event's record (its retention ran out), and the entry that said when.
    ForgetEvent {
        /// The brand.
        brand: BrandId,
        /// The event.
        id: EventId,
        /// When it was due to be forgotten.
        due_ms: u64,
    },
    /// The player's pixels waiting for consent ([`crate::delivery::PixelStatus::WaitingConsent`]) grew or
    /// shrank by `delta`: the engine keeps the brand's count for ops.
    CountWaiting {
        /// Whose.
        key: PlayerKey,
        /// Pixels that began (positive) or stopped (negative) waiting.
        delta: i64,
    },
    /// The player's lease, or none.
    PutLease {
        /// Whose queue.
        key: PlayerKey,
        /// The lease; `None` frees the queue.
        lease: Option<Lease>,
    },
}

/// An entry of the expiry index: at `due_ms`, the record `seq` (pixel or postback `id`) of `key` is
/// due for upkeep: a pending pixel expires, a final record is forgotten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueEntry {
    /// When it is due.
    pub due_ms: u64,
    /// Whose record.
    pub key: PlayerKey,
    /// The record's number: an entry whose record now has another is stale.
    pub seq: u64,
    /// The record's id (`None` when the stored id no longer reads: the entry is only dropped).
    pub id: Option<PixelId>,
}

/// What a brand holds (or a batch adds) against its quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// New events on the day asked.
    pub events_today: u64,
    /// Players with an attribution context.
    pub players: u64,
    /// Postbacks in the outbox.
    pub outbox: u64,
}

/// What a transaction covers: the players and events whose state cannot change under it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Players.
    pub players: Vec<PlayerKey>,
    /// Events, by brand and id (two batches of one event id must not both record it).
    pub events: Vec<(BrandId, EventId)>,
}

/// What a transaction's work reads and writes through. Reads see the state as it was when the
/// transaction began (not its own staged writes).
pub trait Tx: Send {
    /// A number above every one this engine gave before: new queue positions and record numbers.
    fn next_seq(&mut self) -> Result<u64, StoreError>;

    /// The record under a pixel's or postback's id.
    fn record(&mut self, key: &PlayerKey, id: &PixelId) -> Result<Option<Record>, StoreError>;

    /// How many client pixels the player has pending.
    fn pending_count(&mut self, key: &PlayerKey) -> Result<u64, StoreError>;

    /// Up to `limit` entries of the player's queue after position `after` (from its head for `None`),
    /// in order: each one's sequence number and pixel.
    fn queue(
        &mut self,
        key: &PlayerKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, QueuedPixel)>, StoreError>;

    /// The first queue position of the player that is not durable yet (another transaction's, waiting
    /// for its flush), if any: nothing from there on may be delivered, since a crash could erase it.
    fn undurable_from(&mut self, key: &PlayerKey) -> Option<u64>;

    /// The player's lease, if one was ever taken and not freed (it may have expired: the ledger judges).
    fn lease(&mut self, key: &PlayerKey) -> Result<Option<Lease>, StoreError>;

    /// What the hub remembers of the player, if anything.
    fn context(&mut self, key: &PlayerKey) -> Result<Option<PlayerContext>, StoreError>;

    /// An event's record, as written (statuses as they were then).
    fn event(&mut self, brand: &BrandId, id: &EventId) -> Result<Option<EventOutcome>, StoreError>;

    /// What the brand holds against its quotas, with the events of UTC day `day`.
    fn usage(&mut self, brand: &BrandId, day: u64) -> Result<Usage, StoreError>;

    /// Whether the postback has an outbox entry due at `due_ms` in `lane`.
    fn scheduled(
        &mut self,
        lane: &Lane,
        due_ms: u64,
        key: &PlayerKey,
        id: &PixelId,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` outbox entries of `lane` due at or before `until_ms`, earliest first: each one's due
    /// time, player and postback id.
    fn due(
        &mut self,
        lane: &Lane,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PlayerKey, PixelId)>, StoreError>;

    /// Whether the expiry index still holds `entry` (another transaction may have handled it since it
    /// was listed).
    fn holds_due(&mut self, entry: &DueEntry) -> Result<bool, StoreError>;

    /// A definition's postback health, if it has sent any since it was last saved.
    fn health(
        &mut self,
        brand: &BrandId,
        definition: &DefinitionId,
    ) -> Result<Option<DefinitionHealth>, StoreError>;

    /// Stages a write.
    fn write(&mut self, write: Write);
}

/// What a transaction does, as the engine and its guard need to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// When its writes must be durable.
    pub durability: Durability,
    /// Whether it may grow the store (new pixels): refused while the disk is under its free-space
    /// floor, when acks, cancels and leases still go on.
    pub grows: bool,
}

impl Mode {
    /// Durable on return, may grow the store: queueing.
    pub const GROW: Mode = Mode {
        durability: Durability::Wait,
        grows: true,
    };
    /// Durable on return, never grows the store (beyond a record's status): acks, cancels.
    pub const SETTLE: Mode = Mode {
        durability: Durability::Wait,
        grows: false,
    };
    /// Flushed whenever the engine next flushes: leases, delivery stamps, reads.
    pub const LAZY: Mode = Mode {
        durability: Durability::Lazy,
        grows: false,
    };
}

/// When a transaction's writes must be durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Before `transact` returns (fsync'd, with concurrent transactions sharing the flush).
    Wait,
    /// Whenever the engine next flushes: for writes whose loss in a crash costs a report timestamp,
    /// never a pixel.
    Lazy,
}

/// A transaction's work, boxed so the trait can be a trait object; [`crate::ledger`] wraps and unwraps
/// its typed result.
pub type Work = Box<dyn FnMut(&mut dyn Tx) -> Result<Box<dyn Any + Send>, StoreError> + Send>;

/// The queue half of an engine.
#[async_trait]
pub trait Queues: Send + Sync + 'static {
    /// Runs `work` as one transaction over `scope` (its players' and events' state cannot change under it)
    /// and applies what it staged, all or nothing; returns what it returned once the writes are durable
    /// as `mode` says. An error from `work` writes nothing.
    async fn transact(
        &self,
        scope: Scope,
        mode: Mode,
        work: Work,
    ) -> Result<Box<dyn Any + Send>, StoreError>;

    /// Tells every handle (every hub process) that the player's queue may have something deliverable.
    fn announce(&self, key: &PlayerKey);

    /// Tells every handle's postback sender that postbacks were added, so it need not wait for its
    /// next look.
    fn announce_postbacks(&self);

    /// Every lane that holds a postback (due, scheduled or claimed), with its earliest entry: what the
    /// sender chooses from, and when it must look again.
    async fn lanes(&self) -> Result<Vec<LaneDue>, StoreError>;

    /// Up to `limit` entries of the expiry index due at or before `until_ms`, in order, after `after`
    /// (the last entry of the previous page) when given. An engine may bound the work of one call and
    /// answer with fewer, even none while more are due (the embedded engine, after surveying many
    /// queues with nothing to list): an empty page ends the caller's pass, and the next pass, a few
    /// seconds later, goes on from where the engine got to. Nothing due is ever skipped for good.
    async fn due_entries(
        &self,
        until_ms: u64,
        after: Option<DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError>;

    /// Up to `limit` event records due to be forgotten at or before `until_ms`, earliest first: when,
    /// and which.
    async fn due_events(
        &self,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, BrandId, EventId)>, StoreError>;

    /// Whether the engine knows, from memory alone, that a lease of the player's queue would send
    /// nothing and write nothing: no pixel pending for the player, and none in flight to a session.
    /// What an idle session's heartbeat asks thousands of times a second, and every session after each
    /// ack; `false` when unsure, and once the engine is closed (so the caller hears it).
    fn surely_idle(&self, key: &PlayerKey) -> bool;
}

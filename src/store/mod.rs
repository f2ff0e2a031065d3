//! The durable side of the hub: brands and per-player pixel queues.
//!
//! The store is the source of truth. Everything that must survive a crash lives here, and everything that
//! must hold across processes (which connection may deliver a player's pixels right now) is decided here,
//! so that a Redis engine can later replace the embedded one behind the same [`Store`] trait without the
//! hub, sessions or API changing. The contract every engine must honour is written on the trait's methods
//! and checked by the shared contract test in `contract.rs`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::definition::PostBody;
use crate::delivery::Delivery;
pub use crate::delivery::PixelStatus;
use crate::event::PlayerContext;
use crate::ids::{BrandId, DefinitionId, PixelId, PlayerId, PlayerKey, SessionId};
use crate::pixel::QueuedPixel;

pub mod catalog;
#[cfg(any(test, feature = "contract"))]
pub mod contract;
mod guard;
pub mod journal;
pub mod memory;
pub mod queues;
pub mod redis;
mod sled;

pub use self::guard::{GuardOptions, GuardedStore, Measure, Room, StoreHealth, Unhealthy};
pub use self::sled::{JOURNAL_DIR, STORE_DIR, SledOptions, SledStore};

/// The answer for one pixel of an enqueue batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Enqueued {
    /// The pixel's id (generated, or the caller's).
    pub id: PixelId,
    /// `queued` for a new pixel; for a repeated caller id, the status of the pixel that id already names.
    pub status: PixelStatus,
    /// True when the caller's id named an existing pixel and nothing new was queued.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// The answer to an enqueue: one entry per pixel asked for, and what the queue cap pushed out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EnqueueOutcome {
    /// One per pixel of the batch, in order.
    pub pixels: Vec<Enqueued>,
    /// Older pixels of the player dropped unfired to make room (policy [`OnFull::DropOldest`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<PixelId>,
}

/// What happens when a batch would take a player's queue over its cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFull {
    /// Refuse the whole batch ([`StoreError::QueueFull`]; the API answers 429).
    Reject,
    /// Drop the player's oldest pending pixels that no browser holds, recording them `dropped`.
    DropOldest,
}

/// The per-player queue cap, which keeps one runaway integration from filling the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueCap {
    /// Most pending client pixels per player.
    pub max_per_player: u64,
    /// What happens at the cap.
    pub on_full: OnFull,
}

/// What one brand may make the store hold, so that one brand (or a leaked inbound token of it) cannot
/// fill the disk for all: the events it may report a day (UTC), the players whose attribution the hub
/// keeps, and the postbacks waiting in its outbox. 0 means no quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quotas {
    /// New events a brand may report per UTC day (duplicates are not counted).
    pub events_per_day: u64,
    /// Players whose attribution context the hub keeps for a brand.
    pub players: u64,
    /// Postbacks of a brand waiting in the outbox (due, scheduled for a retry, or being sent).
    pub outbox: u64,
}

/// One of the [`Quotas`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    /// [`Quotas::events_per_day`].
    EventsPerDay,
    /// [`Quotas::players`].
    Players,
    /// [`Quotas::outbox`].
    Outbox,
}

impl Quota {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::EventsPerDay => "events_per_day",
            Quota::Players => "players",
            Quota::Outbox => "outbox",
        }
    }

    /// What it counts and its setting, for messages.
    pub fn describe(self, limit: u64) -> String {
        match self {
            Quota::EventsPerDay => format!(
                "{limit} new events a day (--quota-events-per-day); it resets at midnight UTC"
            ),
            Quota::Players => {
                format!("{limit} players with an attribution context (--quota-players)")
            }
            Quota::Outbox => format!(
                "{limit} postbacks waiting in the outbox (--quota-outbox); they leave it as they are sent"
            ),
        }
    }
}

/// One player's backlog, for ops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Backlog {
    /// The brand.
    pub brand_id: BrandId,
    /// The player.
    pub player_id: PlayerId,
    /// Pending client pixels.
    pub pending: u64,
    /// Unix milliseconds when the oldest of them was queued.
    pub oldest_queued_at_ms: Option<u64>,
}

/// What a purge of a player's queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Purged {
    /// Pixels removed unfired (recorded `cancelled`).
    pub cancelled: u64,
    /// Pixels kept because a browser holds them and may be firing them right now.
    pub in_flight: u64,
}

/// A brand's queue and what it holds against its [`Quotas`], for ops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BrandQueue {
    /// Pending client pixels, exact.
    pub queue_depth: u64,
    /// Unix milliseconds when the oldest of them was queued; `None` when the queue is empty.
    pub oldest_queued_at_ms: Option<u64>,
    /// Players whose attribution context the hub keeps.
    pub players: u64,
    /// Postbacks in the outbox.
    pub outbox: u64,
    /// New events reported today (UTC), counted by this process since it started.
    pub events_today: u64,
    /// Pending pixels a browser of their player had no consent to fire, exact.
    pub waiting_consent: u64,
}

/// A queued pixel as the API lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PendingPixel {
    /// The pixel itself.
    #[serde(flatten)]
    pub pixel: QueuedPixel,
    /// Sent to a live connection and awaiting its acknowledgement.
    pub in_flight: bool,
    /// `queued`, `delivered` (sent before, not acknowledged), or `waiting_consent` (a browser of the
    /// player had no consent to fire it).
    pub status: PixelStatus,
}

/// Result of a cancel request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Removed from the queue; it will not fire.
    Cancelled,
    /// No pixel with that id is known for this player.
    NotFound,
    /// Already sent to a browser, which may be firing it right now; it cannot be recalled.
    InFlight,
    /// Already in a final state (fired, cancelled or expired).
    AlreadyFinal(PixelStatus),
}

/// Queue figures for ops.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StoreStats {
    /// Pending pixels over all brands.
    pub queue_depth: u64,
    /// Queue of every registered brand (empty ones included).
    pub brands: BTreeMap<BrandId, BrandQueue>,
    /// Pixels dropped because their TTL ran out, since this process started.
    pub expired_total: u64,
    /// Group commit since this process started: fsyncs run, and writes they made durable. Their ratio is
    /// the average batch; near 1 under load means writers are not being grouped.
    pub flushes: u64,
    /// See [`StoreStats::flushes`].
    pub flushed_writes: u64,
}

/// A line of the outbox: one brand's postbacks to one host. The sender takes due postbacks lane by lane,
/// in turn, so a brand or an endpoint with a backlog never stands in front of another's due work.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    /// Whose postbacks.
    pub brand: BrandId,
    /// Where they go: `host:port` of the URL (the unit of per-host concurrency).
    pub host: String,
}

impl Lane {
    /// The lane of a postback of `brand` to `url`.
    pub fn of(brand: &BrandId, url: &str) -> Self {
        let host = match url::Url::parse(url) {
            Ok(url) => format!(
                "{}:{}",
                url.host_str().unwrap_or(""),
                url.port_or_known_default().unwrap_or(0)
            ),
            Err(_) => String::new(),
        };
        Lane {
            brand: brand.clone(),
            host,
        }
    }
}

/// A lane of the outbox and when its earliest postback is due (or its claim ends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneDue {
    /// The lane.
    pub lane: Lane,
    /// Unix milliseconds of its earliest entry.
    pub next_ms: u64,
}

/// A postback whose next attempt is due, with what the sender needs to make it.
#[derive(Clone, Debug, PartialEq)]
pub struct DuePostback {
    /// Its lane.
    pub lane: Lane,
    /// Whose postback it is.
    pub key: PlayerKey,
    /// Its id.
    pub id: PixelId,
    /// When the attempt was due; with the id, names its place in the schedule.
    pub due_ms: u64,
    /// The final URL.
    pub url: String,
    /// The body, when it is sent as `POST`.
    pub post: Option<PostBody>,
    /// The definition that produced it, whose health the attempt counts towards.
    pub definition_id: Option<DefinitionId>,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// Where a postback goes after an attempt; the sender decides from the answer and its retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint answered 2xx: never send it again.
    Fired,
    /// Try again at this Unix millisecond.
    Retry {
        /// When.
        at_ms: u64,
    },
    /// Give up: no attempt left, or an answer that retrying cannot change.
    Failed,
}

/// How a definition's postbacks have been doing lately: what flags a dead endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DefinitionHealth {
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// Unix milliseconds of the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_at_ms: Option<u64>,
    /// What the last failed attempt got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix milliseconds of the last 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at_ms: Option<u64>,
}

/// Which report rows to list. Rows come newest first (by `queued_at_ms`, then player and id).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryQuery {
    /// Only this player's.
    pub player: Option<PlayerId>,
    /// Only rows in this status.
    pub status: Option<PixelStatus>,
    /// Only rows of this trigger.
    pub trigger: Option<String>,
    /// Only rows of this kind (`image`, `s2s`…).
    pub kind: Option<String>,
    /// Only rows this definition produced.
    pub definition: Option<DefinitionId>,
    /// Only rows credited to this affiliate.
    pub affiliate: Option<String>,
    /// Only rows with this failure reason (a render failure's, or one a browser reported); `browser` for
    /// every row a browser reported a problem with.
    pub reason: Option<String>,
    /// Queued at or after this Unix millisecond.
    pub from_ms: Option<u64>,
    /// Queued before this Unix millisecond.
    pub to_ms: Option<u64>,
    /// Most rows to return.
    pub limit: usize,
    /// Continue after this row (from the previous page's `next`).
    pub after: Option<Cursor>,
}

impl DeliveryQuery {
    /// Whether a row passes every filter but the page bounds (`limit`, `after`), which the engine
    /// applies as it walks its index.
    pub fn matches(&self, d: &Delivery) -> bool {
        self.status.is_none_or(|s| s == d.status)
            && self
                .trigger
                .as_ref()
                .is_none_or(|t| d.trigger.as_ref() == Some(t))
            && self.kind.as_ref().is_none_or(|k| &d.kind == k)
            && self
                .definition
                .as_ref()
                .is_none_or(|id| d.definition_id.as_ref() == Some(id))
            && self
                .affiliate
                .as_ref()
                .is_none_or(|a| d.affiliate_id.as_ref() == Some(a))
            && self.reason.as_deref().is_none_or(|wanted| {
                d.reason.as_deref().is_some_and(|reason| {
                    reason == wanted
                        || (wanted == BROWSER_REASON_GROUP
                            && crate::delivery::is_browser_reason(reason))
                })
            })
            && self.from_ms.is_none_or(|from| d.queued_at_ms >= from)
            && self.to_ms.is_none_or(|to| d.queued_at_ms < to)
    }
}

/// The `reason` filter that stands for every reason a browser may report.
pub const BROWSER_REASON_GROUP: &str = "browser";

/// A place in the report's order, to continue a listing from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The row's `queued_at_ms`.
    pub queued_at_ms: u64,
    /// Its player.
    pub player: PlayerId,
    /// Its id.
    pub id: PixelId,
}

impl Cursor {
    /// Where `row` is in the report's order.
    pub fn of(row: &Delivery) -> Cursor {
        Cursor {
            queued_at_ms: row.queued_at_ms,
            player: row.player_id.clone(),
            id: row.id.clone(),
        }
    }
}

impl DeliveryQuery {
    /// A page of one player's rows, from all of them (a player's records are few, so engines read
    /// them whole): those the query wants, after its cursor, newest first, at most `limit`.
    pub fn page_of(&self, rows: impl IntoIterator<Item = Delivery>) -> DeliveryPage {
        let mut rows: Vec<Delivery> = rows
            .into_iter()
            .filter(|d| {
                self.matches(d)
                    && self
                        .after
                        .as_ref()
                        .is_none_or(|after| Cursor::of(d) < *after)
            })
            .collect();
        rows.sort_by_key(|d| std::cmp::Reverse(Cursor::of(d)));
        let mut page = DeliveryPage::default();
        if rows.len() > self.limit {
            rows.truncate(self.limit);
            page.next = rows.last().map(Cursor::of);
        }
        page.rows = rows;
        page
    }
}

impl Backlog {
    /// The `limit` biggest of `all`, biggest first (ties by brand, then player): what
    /// [`Store::backlogs`] answers, from each brand's candidates.
    pub fn biggest(mut all: Vec<Backlog>, limit: usize) -> Vec<Backlog> {
        all.sort_by_key(|b| {
            (
                std::cmp::Reverse(b.pending),
                b.brand_id.clone(),
                b.player_id.clone(),
            )
        });
        all.truncate(limit);
        all
    }
}

impl std::fmt::Display for Cursor {
    /// `<ms>~<player>~<id>`: ids never contain `~`, so it reads back unambiguously.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}~{}~{}", self.queued_at_ms, self.player, self.id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.splitn(3, '~');
        let (Some(ms), Some(player), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(());
        };
        Ok(Cursor {
            queued_at_ms: ms.parse().map_err(|_| ())?,
            player: PlayerId::parse(player).map_err(|_| ())?,
            id: PixelId::parse(id).map_err(|_| ())?,
        })
    }
}

/// One page of the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryPage {
    /// The rows, newest first.
    pub rows: Vec<Delivery>,
    /// Where the next page starts; `None` when the listing is complete. A page may hold fewer rows than
    /// asked and still have a next one: each page looks at a bounded number of records, so a filter that
    /// matches rarely cannot make one request scan the whole brand.
    pub next: Option<Cursor>,
}

/// Live sessions of one brand: connections, and distinct players with at least one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BrandSessions {
    /// Connections.
    pub sessions: usize,
    /// Distinct players with at least one connection.
    pub players_online: usize,
}

/// What one hub process reports of itself to a shared engine, so that every process's stats show the
/// whole hub; a report older than [`PRESENCE_TTL_MS`] is a process that is gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessPresence {
    /// Unique to the process's run.
    pub id: String,
    /// Where it runs: host name and process id.
    pub name: String,
    /// When it reported, Unix milliseconds.
    pub reported_at_ms: u64,
    /// Its sessions.
    pub sessions: usize,
    /// Its players online (a player with tabs on two processes counts in each).
    pub players_online: usize,
    /// Per brand.
    pub brands: BTreeMap<BrandId, BrandSessions>,
}

/// How long a process's report counts: five reports (each process reports every 2 s).
pub const PRESENCE_TTL_MS: u64 = 10_000;

/// How long a session's claim on its player's session count lasts unless its process renews it (it
/// renews every live session's every 5 s): a process that dies frees its players' counts after it.
pub const SESSION_CLAIM_TTL_MS: u64 = 20_000;

/// What a store tells the hub may have work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// The player's queue may have something deliverable.
    Player(PlayerKey),
    /// Any player's may: announcements were missed (a shared engine's channel was lost and is back), so
    /// every session looks at its queue again.
    Everyone,
}

/// Everything that can go wrong in a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The brand was never registered.
    #[error("brand {0} does not exist")]
    UnknownBrand(BrandId),
    /// The engine failed (I/O, corruption, connection). The caller must treat the operation as not done.
    #[error("storage engine failure: {0}")]
    Backend(#[source] Cause),
    /// No definition with this id exists for the brand.
    #[error("pixel definition {0} does not exist")]
    UnknownDefinition(DefinitionId),
    /// A definition with this id already exists for the brand.
    #[error("pixel definition {0} already exists")]
    DefinitionExists(DefinitionId),
    /// The batch would take the player's queue over its cap, and the policy is to refuse it (or nothing
    /// could be dropped to make room: every pending pixel is in flight).
    #[error("the queue of player {player} holds {pending} pixels; its cap is {cap}")]
    QueueFull {
        /// Whose queue.
        player: PlayerId,
        /// Pending now.
        pending: u64,
        /// The cap.
        cap: u64,
    },
    /// The brand's pixel policy does not allow a pixel or definition (its kind, or an `http` URL for
    /// an `https_only` brand); nothing was written. Says which one and where, as the request named it.
    #[error(transparent)]
    NotAllowed(crate::input::InputError),
    /// The store was closed; the process is shutting down.
    #[error("the store is closed")]
    Closed,
    /// An event of the batch has a type that neither the hub nor the brand's definitions know; nothing of
    /// the batch was written.
    #[error(transparent)]
    UnknownEventType(#[from] crate::event::UnknownType),
    /// The brand is at one of its [`Quotas`]; nothing of the batch was written.
    #[error("brand {brand} is at its quota of {}", quota.describe(*limit))]
    QuotaExceeded {
        /// The brand.
        brand: BrandId,
        /// Which quota.
        quota: Quota,
        /// Its value.
        limit: u64,
        /// When the quota frees up by itself (the daily one, at midnight UTC); `None` for the others,
        /// which free up as the brand's data shrinks.
        resets_in: Option<std::time::Duration>,
    },
    /// A write that would grow the store was refused: the disk's free space is under the floor, or the
    /// store is at its size cap. Reads, acks and deletes go on; writes resume by themselves when there is
    /// room again.
    #[error("{0}")]
    Full(String),
    /// The engine did not answer within the store's deadline, or is not usable; the operation may or
    /// may not have happened (a retry with the same ids is safe).
    #[error("{0}")]
    Unavailable(String),
    /// The engine failed to write or to make writes durable. Such a failure is never retried (the
    /// operating system may have dropped the data it could not write): the hub stops, and its next
    /// start recovers from what is on disk.
    #[error("the store failed: {0}")]
    Failed(#[source] Cause),
}

/// What an engine failure came from (sled's error, a value that does not parse…), kept whole for the
/// log; shared, since one failed flush is the answer of every writer that waited on it.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// A stored value that breaks what the engine knows of its own layout: a bug, or a damaged file.
#[derive(Debug, thiserror::Error)]
#[error("corrupt store data: {0}")]
pub struct Corrupt(pub &'static str);

impl StoreError {
    /// The engine found data it cannot read ([`Corrupt`]).
    pub fn corrupt(what: &'static str) -> Self {
        StoreError::Backend(std::sync::Arc::new(Corrupt(what)))
    }
}

/// What an engine answers beside its [`catalog::Catalog`] and [`queues::Queues`] halves: reads that need
/// no rule (a player's context, the click index, the delivery report, stats, backlogs, definitions'
/// health), the readiness probe, the postback wake-up and the player announcements, and closing. The
/// ledger reaches them by methods of the same names.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// What the hub remembers of a player between events (empty for a player never seen).
    async fn player_context(&self, key: &PlayerKey) -> Result<PlayerContext, StoreError>;

    /// The player whose attribution holds `click_id` under one of the brand's click-id params, kept
    /// with the context ([`queues::Write::PutContext`]): how a conversion call that names only the click finds its
    /// player. When two players came with the same click id, the later one.
    async fn player_by_click_id(
        &self,
        brand: &BrandId,
        click_id: &str,
    ) -> Result<Option<PlayerId>, StoreError>;

    /// A page of the brand's delivery report (see [`DeliveryQuery`]).
    async fn deliveries(
        &self,
        brand: &BrandId,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError>;

    /// The postback health of the brand's definitions that have sent any.
    async fn definition_health(
        &self,
        brand: &BrandId,
    ) -> Result<BTreeMap<DefinitionId, DefinitionHealth>, StoreError>;

    /// Queue depth per brand: exact, not estimated.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// The players with the most pending client pixels, biggest first: of one brand, or of all.
    async fn backlogs(
        &self,
        brand: Option<&BrandId>,
        limit: usize,
    ) -> Result<Vec<Backlog>, StoreError>;

    /// Writes and flushes a probe: the readiness check, failing when the store cannot take writes.
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Completes when postbacks may have been added since the last call (by this process; by any, for
    /// shared engines), so the sender need not wait for its next poll. Spurious wake-ups are allowed.
    async fn postbacks_added(&self);

    /// Announcements of players whose queue may have something deliverable (after an enqueue or a release,
    /// from any process). A lagging receiver must assume every player may have pending pixels, as it
    /// must on [`Announcement::Everyone`].
    fn subscribe(&self) -> broadcast::Receiver<Announcement>;

    /// Flushes and stops background work. Later calls fail with [`StoreError::Closed`].
    async fn close(&self) -> Result<(), StoreError>;

    /// Whether every hub process on this store shares it (Redis): then sessions, their per-player
    /// limit and the stats' session counts are kept in the store too. An embedded engine is one
    /// process's, which its hub counts in memory.
    fn shared(&self) -> bool {
        false
    }

    /// Records this process's report (a shared engine; a no-op otherwise).
    async fn report_presence(&self, _presence: &ProcessPresence) -> Result<(), StoreError> {
        Ok(())
    }

    /// Takes a stopping process's report away at once (a dead one's ages out).
    async fn forget_presence(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// The reports of every live process, as of `now_ms` (reports past [`PRESENCE_TTL_MS`] are gone);
    /// empty for an engine that is not shared.
    async fn presences(&self, _now_ms: u64) -> Result<Vec<ProcessPresence>, StoreError> {
        Ok(Vec::new())
    }

    /// Counts a new session of the player against `max` across every process: true when it may stay
    /// (its claim lasts [`SESSION_CLAIM_TTL_MS`] from `now_ms` unless renewed). `info` is the session as
    /// ops list it (JSON). Always true for an engine that is not shared.
    async fn claim_session(
        &self,
        _key: &PlayerKey,
        _session: SessionId,
        _info: &str,
        _max: usize,
        _now_ms: u64,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Ends a session's claim.
    async fn release_session(
        &self,
        _key: &PlayerKey,
        _session: SessionId,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Renews the claims of this process's live sessions, as of `now_ms`.
    async fn renew_sessions(
        &self,
        _sessions: &[(PlayerKey, SessionId)],
        _now_ms: u64,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// The player's sessions on every process (their `info`, oldest claim first), as of `now_ms`; `None`
    /// for an engine that is not shared (the hub lists its own).
    async fn sessions_of(
        &self,
        _key: &PlayerKey,
        _now_ms: u64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        Ok(None)
    }
}

//! The queues on Redis: optimistic transactions, committed by one script, with no thread of their own.
//!
//! A transaction first reads a snapshot of the players in its scope: each one's version (raised by
//! every commit that writes the player's state) with what nearly every transaction of a player reads
//! (lease, context, pending count, the head of the queue), in one atomic round trip; a transaction
//! that grows the store draws a block of numbers with it. The work (a pure function of its reads,
//! [`Queues::transact`] says so) then runs on the caller's task over that cache. A read the cache does
//! not hold is noted and answered with nothing; after the run, everything it missed is read in one
//! atomic round trip, with the versions of the players it concerns, and the work runs again. A version
//! that moved means another process committed in between: the transaction starts over from a new
//! snapshot. A run that missed nothing has read a consistent state; its staged writes become one commit
//! script ([`COMMIT`]) that first checks that every version, and every value read outside a player's
//! state (an event's record, a definition's health, an outbox entry the work takes out) is still as
//! read; only then does it write, with every index the writes imply. A commit that finds a change
//! writes nothing, and the transaction starts over.
//!
//! Redis answers a script after its append-only file is synced (`appendfsync always`, which the hub
//! checks at start), so a commit is durable when it returns, in every [`Mode`]. Queue positions and
//! record numbers come from the brand's counter, drawn after the snapshot: any commit of the player
//! before this transaction began used lower numbers, and any after it makes this one start over, so a
//! player's queue is in the order its pixels were committed.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::{FromRedisValue, Script};
use serde::{Deserialize, Serialize};

use super::keys::{self, BrandKeys, Counts, SEP, pad};
use super::{RedisStore, backend, corrupt};
use crate::event::{EventOutcome, PlayerContext};
use crate::ids::{BrandId, DefinitionId, EventId, PixelId, PlayerId, PlayerKey, SessionId};
use crate::pixel::QueuedPixel;
use crate::store::queues::{DueEntry, Lease, Mode, Queues, Record, Scope, Tx, Usage, Work, Write};
use crate::store::{DefinitionHealth, Lane, LaneDue, StoreError};

/// The commit script (see its header for the steps).
const COMMIT: &str = include_str!("commit.lua");

/// [`COMMIT`], hashed once.
static COMMIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT));

/// How many times a transaction runs again after another process changed what it read, before the
/// caller is told the store is too busy to answer. Each round waits a little longer, at random, so two
/// processes that keep colliding on one player drift apart.
const MAX_ROUNDS: u32 = 32;

/// Numbers one transaction draws from the counter at once: one round trip for a batch's positions.
const SEQ_BLOCK: u64 = 64;

/// A lease as stored.
#[derive(Serialize, Deserialize)]
struct StoredLease {
    session: SessionId,
    token: u64,
    expires_at_ms: u64,
    in_flight: Vec<u64>,
}

/// Entries of a player's queue read with its snapshot: a lease sends at most its window (10 by
/// default), so the head usually answers it whole.
const HEAD: usize = 32;

/// One player's part of a snapshot, as Redis answers it: version, lease, context, pending count, the
/// queue's head.
type HeadRead = (
    Option<u64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    u64,
    Vec<Vec<u8>>,
);

/// A scoped player's state as the transaction began, read in one round trip.
struct Snapshot {
    version: u64,
    lease: Option<Vec<u8>>,
    context: Option<Vec<u8>>,
    pending: u64,
    /// The first entries of the queue, in order.
    head: Vec<(u64, QueuedPixel)>,
    /// Whether `head` is the whole queue.
    whole: bool,
    /// Whether the records of every `head` entry were read (together, at the first one asked).
    head_records: bool,
}

/// Entries of a player's queue: position and pixel.
type Page = Vec<(u64, QueuedPixel)>;

/// A due outbox entry: when, whose, which postback.
type DueOutbox = (u64, PlayerKey, PixelId);

/// Everything one transaction has read, as of its snapshot. The work runs on it; what it does not
/// hold yet is noted as a [`Miss`], fetched, and the work runs again, until a run finds everything
/// it reads here.
#[derive(Default)]
struct Cache {
    snapshots: HashMap<PlayerKey, Snapshot>,
    /// Records by player and id (`None`: no such record).
    records: HashMap<(PlayerKey, PixelId), Option<Vec<u8>>>,
    /// Pages of queues beyond their heads: player, after, limit.
    pages: HashMap<(PlayerKey, Option<u64>, usize), Page>,
    /// Hash fields read outside a player's state, checked again at commit (events, health), and the
    /// lease or context of a player outside the scope (not checked).
    values: HashMap<(String, String), Option<Vec<u8>>>,
    /// Pending counts of players outside the scope.
    pending: HashMap<PlayerKey, u64>,
    usage: HashMap<(BrandId, u64), Usage>,
    /// Whether an outbox entry (lane key, member) is there.
    scheduled: HashMap<(String, String), bool>,
    /// Listings of due outbox entries: lane, until, limit.
    due: HashMap<(Lane, u64, usize), Vec<DueOutbox>>,
    /// Whether an expiry entry (key, prefix) is there.
    holds: HashMap<(String, String), bool>,
    /// Numbers drawn for [`Tx::next_seq`], in order.
    seqs: Vec<u64>,
    /// The counter they are drawn from: the first scoped player's brand's, so it is in the same slot
    /// as what the transaction writes.
    seq_key: String,
    /// A read after the snapshot found a player's version moved: the transaction starts over.
    stale: bool,
}

/// Something a run of the work read that the cache did not hold.
#[derive(Clone, Debug, PartialEq)]
enum Miss {
    /// The records of the player's queue head (`head`) or one record.
    Record(PlayerKey, PixelId, bool),
    Page(PlayerKey, Option<u64>, usize),
    Value(String, String),
    Pending(PlayerKey),
    Usage(BrandId, u64),
    Scheduled(PlayerKey, String, String),
    Due(Lane, u64, usize),
    Holds(PlayerKey, String, String),
    /// This many more numbers.
    Seqs(usize),
}

impl Miss {
    /// The player whose version the read must be made with, when it is of a scoped player's state.
    fn player<'a>(&'a self, cache: &Cache) -> Option<&'a PlayerKey> {
        match self {
            Miss::Record(key, ..)
            | Miss::Page(key, ..)
            | Miss::Scheduled(key, ..)
            | Miss::Holds(key, ..) => Some(key).filter(|k| cache.snapshots.contains_key(*k)),
            _ => None,
        }
    }

    /// The hash tag its keys are under: a brand's, or the global counter's.
    fn slot(&self, cache: &Cache) -> String {
        match self {
            Miss::Record(key, ..) | Miss::Page(key, ..) | Miss::Pending(key) => {
                key.brand.as_str().to_owned()
            }
            Miss::Scheduled(key, ..) | Miss::Holds(key, ..) => key.brand.as_str().to_owned(),
            Miss::Usage(brand, _) => brand.as_str().to_owned(),
            Miss::Due(lane, ..) => lane.brand.as_str().to_owned(),
            Miss::Value(hash, _) => hash.clone(),
            Miss::Seqs(_) => cache.seq_key.clone(),
        }
    }
}

impl RedisStore {
    /// One transaction: a snapshot, the work run on the cache until it misses nothing, then the
    /// commit; all of it on the caller's task, each round trip awaited.
    async fn run(
        &self,
        scope: &Scope,
        mode: Mode,
        work: &mut Work,
    ) -> Result<Box<dyn Any + Send>, StoreError> {
        let mut conflicts = 0u32;
        let mut cache = self.snapshot(&scope.players, mode).await?;
        let mut fills = 0u32;
        loop {
            let mut tx = RedisTx {
                cache: &cache,
                misses: Vec::new(),
                read: Vec::new(),
                writes: Vec::new(),
                next_seq: 0,
            };
            let out = work(&mut tx);
            let (misses, read, writes) = (tx.misses, tx.read, tx.writes);
            if misses.is_empty() && !cache.stale {
                let out = out?;
                if writes.is_empty() {
                    return Ok(out);
                }
                if Commit::of(&cache, &read, &writes)?.run(self).await? {
                    return Ok(out);
                }
            } else if !cache.stale {
                // The run read stand-ins for what the cache lacked: its answer is thrown away.
                fills += 1;
                if fills > MAX_FILLS {
                    return Err(StoreError::Unavailable(
                        "a transaction kept reading more than the store could answer at once; try again".into(),
                    ));
                }
                self.fill(&mut cache, misses).await?;
                if !cache.stale {
                    continue;
                }
            }
            // Another process committed to a player the transaction read: from the start.
            conflicts += 1;
            if conflicts >= MAX_ROUNDS {
                return Err(StoreError::Unavailable(format!(
                    "a transaction found its players changed by other processes {MAX_ROUNDS} times in a row; try again"
                )));
            }
            // Each round waits a little longer, at random, so two processes that keep colliding on
            // one player drift apart.
            let pause = getrandom::u64().unwrap_or(0) % (u64::from(conflicts.min(10)) * 500 + 1);
            tokio::time::sleep(Duration::from_micros(pause)).await;
            cache = self.snapshot(&scope.players, mode).await?;
            fills = 0;
        }
    }

    /// What a transaction begins with: each scoped player's version and the state nearly every
    /// transaction of a player reads (its lease, context, pending count and the head of its queue), in
    /// one atomic round trip per brand; for one that grows the store, a block of numbers with them.
    async fn snapshot(&self, players: &[PlayerKey], mode: Mode) -> Result<Cache, StoreError> {
        let mut by_brand: HashMap<&BrandId, Vec<&PlayerKey>> = HashMap::new();
        for key in players {
            let keys = by_brand.entry(&key.brand).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let mut cache = Cache {
            seq_key: players.first().map_or_else(
                || keys::SEQ.to_owned(),
                |key| BrandKeys::new(&key.brand).seq(),
            ),
            ..Cache::default()
        };
        let mut draw = mode.grows;
        for (brand, keys) in by_brand {
            let names = BrandKeys::new(brand);
            let mut pipe = redis::pipe();
            pipe.atomic();
            // The numbers come from the first player's brand's counter, in this brand's slot.
            let drawing = draw && names.seq() == cache.seq_key;
            if drawing {
                draw = false;
                pipe.cmd("INCRBY").arg(&cache.seq_key).arg(SEQ_BLOCK);
            }
            for key in &keys {
                let player = key.player.as_str();
                pipe.hget(names.versions(), player)
                    .hget(names.leases(), player)
                    .hget(names.contexts(), player)
                    .zcard(names.queue(&key.player))
                    .cmd("ZRANGEBYSCORE")
                    .arg(names.queue(&key.player))
                    .arg("-inf")
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(HEAD);
            }
            let mut answers: Vec<redis::Value> =
                pipe.query_async(&mut self.conn()).await.map_err(backend)?;
            if drawing {
                let last: u64 = from_value(Some(answers.remove(0)))?;
                cache.seqs.extend(last + 1 - SEQ_BLOCK..=last);
            }
            // Five answers a player.
            let found: Vec<HeadRead> = answers
                .chunks(5)
                .map(|answer| from_value(Some(redis::Value::Array(answer.to_vec()))))
                .collect::<Result<_, _>>()?;
            for (key, (version, lease, context, pending, head)) in keys.into_iter().zip(found) {
                let head = head
                    .iter()
                    .map(|member| parse_queue_member(member))
                    .collect::<Result<Vec<_>, _>>()?;
                let snapshot = Snapshot {
                    version: version.unwrap_or(0),
                    lease,
                    context,
                    whole: head.len() as u64 == pending,
                    pending,
                    head,
                    head_records: false,
                };
                cache.snapshots.insert(key.clone(), snapshot);
            }
        }
        Ok(cache)
    }

    /// Reads what a run missed: one atomic round trip per slot, each with the versions of the scoped
    /// players whose state it reads; a version that moved makes the cache stale.
    async fn fill(&self, cache: &mut Cache, misses: Vec<Miss>) -> Result<(), StoreError> {
        let mut by_slot: HashMap<String, Vec<Miss>> = HashMap::new();
        for miss in misses {
            let group = by_slot.entry(miss.slot(cache)).or_default();
            if !group.contains(&miss) {
                group.push(miss);
            }
        }
        for (_, misses) in by_slot {
            let mut players: Vec<PlayerKey> = Vec::new();
            for miss in &misses {
                if let Some(key) = miss.player(cache)
                    && !players.contains(key)
                {
                    players.push(key.clone());
                }
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for key in &players {
                pipe.hget(BrandKeys::new(&key.brand).versions(), key.player.as_str());
            }
            let seqs_wanted: usize = misses
                .iter()
                .map(|m| if let Miss::Seqs(n) = m { *n } else { 0 })
                .sum();
            let mut asked = Vec::new();
            for miss in &misses {
                match miss {
                    Miss::Seqs(_) => continue, // one draw for all below
                    _ => asked.push(miss.clone()),
                }
                add_read(&mut pipe, miss, cache);
            }
            if seqs_wanted > 0 {
                pipe.cmd("INCRBY")
                    .arg(&cache.seq_key)
                    .arg(seqs_wanted.max(SEQ_BLOCK as usize));
            }
            let answers: Vec<redis::Value> =
                pipe.query_async(&mut self.conn()).await.map_err(backend)?;
            let mut answers = answers.into_iter();
            for key in &players {
                let version: Option<u64> = from_value(answers.next())?;
                if version.unwrap_or(0) != cache.snapshots[key].version {
                    cache.stale = true;
                }
            }
            for miss in asked {
                take_read(cache, miss, answers.next())?;
            }
            if seqs_wanted > 0 {
                let last: u64 = from_value(answers.next())?;
                let drawn = seqs_wanted.max(SEQ_BLOCK as usize) as u64;
                cache.seqs.extend(last + 1 - drawn..=last);
            }
        }
        Ok(())
    }
}

/// How many times a run may miss and be run again before a transaction gives up: each pass of the
/// ledger's reads is a few dependent steps (a lease, then its queue, then the records).
const MAX_FILLS: u32 = 64;

/// One answer of a fill, as `T`.
fn from_value<T: FromRedisValue>(value: Option<redis::Value>) -> Result<T, StoreError> {
    let value = value.ok_or_else(|| StoreError::corrupt("a read's answer is missing"))?;
    redis::from_redis_value(value).map_err(|e| StoreError::Backend(std::sync::Arc::new(e)))
}

/// Adds the command answering `miss` to `pipe`.
fn add_read(pipe: &mut redis::Pipeline, miss: &Miss, cache: &Cache) {
    match miss {
        Miss::Record(key, id, head) => {
            let hash = BrandKeys::new(&key.brand).records(&key.player);
            let snapshot = cache.snapshots.get(key);
            match snapshot.filter(|_| *head) {
                Some(snapshot) => {
                    let mut hmget = redis::cmd("HMGET");
                    hmget.arg(&hash);
                    for (_, pixel) in &snapshot.head {
                        hmget.arg(pixel.id.as_str());
                    }
                    pipe.add_command(hmget);
                }
                None => {
                    pipe.hget(hash, id.as_str());
                }
            }
        }
        Miss::Page(key, after, limit) => {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(BrandKeys::new(&key.brand).queue(&key.player))
                .arg(after.map_or_else(|| "-inf".to_owned(), |seq| format!("({seq}")))
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(*limit);
        }
        Miss::Value(hash, field) => {
            pipe.hget(hash, field);
        }
        Miss::Pending(key) => {
            pipe.zcard(BrandKeys::new(&key.brand).queue(&key.player));
        }
        Miss::Usage(brand, _) => {
            // One answer for both reads: a nested pipeline is not a thing, so a tiny script.
            pipe.cmd("EVAL")
                .arg(USAGE)
                .arg(2)
                .arg(BrandKeys::new(brand).counts())
                .arg(BrandKeys::new(brand).contexts());
        }
        Miss::Scheduled(_, lane, member) => {
            pipe.zscore(lane, member);
        }
        Miss::Due(lane, until, limit) => {
            pipe.cmd("ZRANGEBYLEX")
                .arg(BrandKeys::new(&lane.brand).lane(&lane.host))
                .arg("-")
                .arg(keys::up_to(*until))
                .arg("LIMIT")
                .arg(0)
                .arg(*limit);
        }
        Miss::Holds(_, expiry, prefix) => {
            let (low, high) = keys::prefix_range(prefix);
            pipe.cmd("ZRANGEBYLEX")
                .arg(expiry)
                .arg(low)
                .arg(high)
                .arg("LIMIT")
                .arg(0)
                .arg(1);
        }
        Miss::Seqs(_) => {}
    }
}

/// A brand's counters and players in one answer: `depth`, `outbox`, `day`, `events`, players.
const USAGE: &str = "local c = redis.call('HMGET', KEYS[1], 'depth', 'outbox', 'day', 'events') \
                     c[5] = redis.call('HLEN', KEYS[2]) return c";

/// Puts the answer to `miss` in the cache.
fn take_read(
    cache: &mut Cache,
    miss: Miss,
    answer: Option<redis::Value>,
) -> Result<(), StoreError> {
    match miss {
        Miss::Record(key, id, head) => match cache.snapshots.get_mut(&key).filter(|_| head) {
            Some(snapshot) => {
                let values: Vec<Option<Vec<u8>>> = from_value(answer)?;
                snapshot.head_records = true;
                let ids: Vec<PixelId> = snapshot.head.iter().map(|(_, p)| p.id.clone()).collect();
                for (id, value) in ids.into_iter().zip(values) {
                    cache.records.insert((key.clone(), id), value);
                }
            }
            None => {
                cache.records.insert((key, id), from_value(answer)?);
            }
        },
        Miss::Page(key, after, limit) => {
            let members: Vec<Vec<u8>> = from_value(answer)?;
            let page = members
                .iter()
                .map(|m| parse_queue_member(m))
                .collect::<Result<_, _>>()?;
            cache.pages.insert((key, after, limit), page);
        }
        Miss::Value(hash, field) => {
            cache.values.insert((hash, field), from_value(answer)?);
        }
        Miss::Pending(key) => {
            cache.pending.insert(key, from_value(answer)?);
        }
        Miss::Usage(brand, day) => {
            let (depth, outbox, counted, events, players): (
                Option<u64>,
                Option<u64>,
                Option<u64>,
                Option<u64>,
                u64,
            ) = from_value(answer)?;
            let counts = Counts::new((depth, outbox, counted, events, None), players);
            let usage = Usage {
                events_today: counts.events_on(day),
                players: counts.players,
                outbox: counts.outbox,
            };
            cache.usage.insert((brand, day), usage);
        }
        Miss::Scheduled(_, lane, member) => {
            let score: Option<f64> = from_value(answer)?;
            cache.scheduled.insert((lane, member), score.is_some());
        }
        Miss::Due(lane, until, limit) => {
            let members: Vec<String> = from_value(answer)?;
            let due = members
                .iter()
                .map(|member| parse_lane_member(&lane, member))
                .collect::<Result<_, _>>()?;
            cache.due.insert((lane, until, limit), due);
        }
        Miss::Holds(_, expiry, prefix) => {
            let found: Vec<Vec<u8>> = from_value(answer)?;
            cache.holds.insert((expiry, prefix), !found.is_empty());
        }
        Miss::Seqs(_) => {}
    }
    Ok(())
}

/// An outbox entry of `lane` read back: due time, player, postback id.
fn parse_lane_member(lane: &Lane, member: &str) -> Result<(u64, PlayerKey, PixelId), StoreError> {
    let bad = || StoreError::corrupt("an outbox entry does not parse");
    let [due, player, id] = keys::fields::<3>(member).ok_or_else(bad)?;
    let due = due.parse().map_err(|_| bad())?;
    let player = PlayerId::parse_stored(player).map_err(|_| bad())?;
    let id = PixelId::parse_stored(id).map_err(|_| bad())?;
    Ok((due, PlayerKey::new(lane.brand.clone(), player), id))
}

/// One run of the work over the cache: reads it holds are answered; reads it does not are noted as
/// misses and answered with nothing (the run's answer is then thrown away); writes are staged.
struct RedisTx<'a> {
    cache: &'a Cache,
    misses: Vec<Miss>,
    /// Values read outside a player's state, as the commit must find them: hash, field, tagged value.
    read: Vec<(String, String, Vec<u8>)>,
    writes: Vec<Write>,
    /// The next of the cache's numbers to hand out.
    next_seq: usize,
}

impl RedisTx<'_> {
    /// A hash field outside a player's state, noted for the commit's check.
    fn noted(&mut self, hash: String, field: &str) -> Option<Vec<u8>> {
        let at = (hash, field.to_owned());
        match self.cache.values.get(&at) {
            Some(value) => {
                self.read.push((at.0, at.1, tagged(value.as_deref())));
                value.clone()
            }
            None => {
                self.misses.push(Miss::Value(at.0, at.1));
                None
            }
        }
    }

    /// A hash field of a player outside the scope (not checked: nothing is written for them).
    fn plain(&mut self, hash: String, field: &str) -> Option<Vec<u8>> {
        let at = (hash, field.to_owned());
        match self.cache.values.get(&at) {
            Some(value) => value.clone(),
            None => {
                self.misses.push(Miss::Value(at.0, at.1));
                None
            }
        }
    }
}

/// A value as the commit script compares it: empty for absent, `=` and the value otherwise.
fn tagged(value: Option<&[u8]>) -> Vec<u8> {
    value.map_or_else(Vec::new, |v| [b"=".as_slice(), v].concat())
}

fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(corrupt(what))
}

/// A queue member: position, `queued_at_ms`, JSON.
fn queue_member(seq: u64, pixel: &QueuedPixel) -> Result<Vec<u8>, StoreError> {
    let mut member = format!("{}{}", pad(seq), pad(pixel.queued_at_ms)).into_bytes();
    serde_json::to_writer(&mut member, pixel).map_err(corrupt("a pixel would not encode"))?;
    Ok(member)
}

/// A queue member read back: its position and pixel.
fn parse_queue_member(member: &[u8]) -> Result<(u64, QueuedPixel), StoreError> {
    let seq = member
        .get(..20)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| StoreError::corrupt("a queue entry without its position"))?;
    let json = member
        .get(40..)
        .ok_or_else(|| StoreError::corrupt("a queue entry without its pixel"))?;
    Ok((seq, parse(json, "a queued pixel does not parse")?))
}

impl Tx for RedisTx<'_> {
    fn next_seq(&mut self) -> Result<u64, StoreError> {
        match self.cache.seqs.get(self.next_seq) {
            Some(seq) => {
                self.next_seq += 1;
                Ok(*seq)
            }
            None => {
                // Counted, so one draw covers all this run wants; a stand-in meanwhile.
                match self.misses.iter_mut().find_map(|m| match m {
                    Miss::Seqs(n) => Some(n),
                    _ => None,
                }) {
                    Some(n) => *n += 1,
                    None => self.misses.push(Miss::Seqs(1)),
                }
                Ok(0)
            }
        }
    }

    fn record(&mut self, key: &PlayerKey, id: &PixelId) -> Result<Option<Record>, StoreError> {
        let found = match self.cache.records.get(&(key.clone(), id.clone())) {
            Some(found) => found.clone(),
            None => {
                // The first record asked of a queue's head: the records of the whole head, at once.
                let head = self.cache.snapshots.get(key).is_some_and(|snapshot| {
                    !snapshot.head_records && snapshot.head.iter().any(|(_, p)| p.id == *id)
                });
                self.misses
                    .push(Miss::Record(key.clone(), id.clone(), head));
                None
            }
        };
        found
            .map(|bytes| parse(&bytes, "a record does not parse"))
            .transpose()
    }

    fn pending_count(&mut self, key: &PlayerKey) -> Result<u64, StoreError> {
        if let Some(snapshot) = self.cache.snapshots.get(key) {
            return Ok(snapshot.pending);
        }
        match self.cache.pending.get(key) {
            Some(n) => Ok(*n),
            None => {
                self.misses.push(Miss::Pending(key.clone()));
                Ok(0)
            }
        }
    }

    fn queue(
        &mut self,
        key: &PlayerKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, QueuedPixel)>, StoreError> {
        if let Some(snapshot) = self.cache.snapshots.get(key) {
            let from_head: Vec<(u64, QueuedPixel)> = snapshot
                .head
                .iter()
                .filter(|(seq, _)| after.is_none_or(|after| *seq > after))
                .take(limit)
                .cloned()
                .collect();
            if from_head.len() == limit || snapshot.whole {
                return Ok(from_head);
            }
        }
        match self.cache.pages.get(&(key.clone(), after, limit)) {
            Some(page) => Ok(page.clone()),
            None => {
                self.misses.push(Miss::Page(key.clone(), after, limit));
                Ok(Vec::new())
            }
        }
    }

    fn undurable_from(&mut self, _key: &PlayerKey) -> Option<u64> {
        None // a commit is durable when it returns
    }

    fn lease(&mut self, key: &PlayerKey) -> Result<Option<Lease>, StoreError> {
        let found = match self.cache.snapshots.get(key) {
            Some(snapshot) => snapshot.lease.clone(),
            None => self.plain(BrandKeys::new(&key.brand).leases(), key.player.as_str()),
        };
        let Some(bytes) = found else {
            return Ok(None);
        };
        let stored: StoredLease = parse(&bytes, "a lease does not parse")?;
        Ok(Some(Lease {
            session: stored.session,
            token: stored.token,
            expires_at_ms: stored.expires_at_ms,
            in_flight: stored.in_flight,
        }))
    }

    fn context(&mut self, key: &PlayerKey) -> Result<Option<PlayerContext>, StoreError> {
        let found = match self.cache.snapshots.get(key) {
            Some(snapshot) => snapshot.context.clone(),
            None => self.plain(BrandKeys::new(&key.brand).contexts(), key.player.as_str()),
        };
        found
            .map(|bytes| parse(&bytes, "a player context does not parse"))
            .transpose()
    }

    fn event(&mut self, brand: &BrandId, id: &EventId) -> Result<Option<EventOutcome>, StoreError> {
        self.noted(BrandKeys::new(brand).events(), id.as_str())
            .map(|bytes| parse(&bytes, "an event record does not parse"))
            .transpose()
    }

    fn usage(&mut self, brand: &BrandId, day: u64) -> Result<Usage, StoreError> {
        // Not checked at commit: concurrent batches of one brand on several processes may each pass a
        // quota the sum of them goes over (docs/scaling.md).
        match self.cache.usage.get(&(brand.clone(), day)) {
            Some(usage) => Ok(*usage),
            None => {
                self.misses.push(Miss::Usage(brand.clone(), day));
                Ok(Usage::default())
            }
        }
    }

    fn scheduled(
        &mut self,
        lane: &Lane,
        due_ms: u64,
        key: &PlayerKey,
        id: &PixelId,
    ) -> Result<bool, StoreError> {
        let at = (
            BrandKeys::new(&lane.brand).lane(&lane.host),
            keys::lane_member(due_ms, &key.player, id.as_str()),
        );
        match self.cache.scheduled.get(&at) {
            Some(there) => Ok(*there),
            None => {
                self.misses.push(Miss::Scheduled(key.clone(), at.0, at.1));
                Ok(false)
            }
        }
    }

    fn due(
        &mut self,
        lane: &Lane,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PlayerKey, PixelId)>, StoreError> {
        match self.cache.due.get(&(lane.clone(), until_ms, limit)) {
            Some(due) => Ok(due.clone()),
            None => {
                self.misses.push(Miss::Due(lane.clone(), until_ms, limit));
                Ok(Vec::new())
            }
        }
    }

    fn holds_due(&mut self, entry: &DueEntry) -> Result<bool, StoreError> {
        let at = (
            BrandKeys::new(&entry.key.brand).expiry(),
            keys::expiry_prefix(entry.due_ms, &entry.key.player, entry.seq),
        );
        match self.cache.holds.get(&at) {
            Some(there) => Ok(*there),
            None => {
                self.misses.push(Miss::Holds(entry.key.clone(), at.0, at.1));
                Ok(false)
            }
        }
    }

    fn health(
        &mut self,
        brand: &BrandId,
        definition: &DefinitionId,
    ) -> Result<Option<DefinitionHealth>, StoreError> {
        self.noted(BrandKeys::new(brand).health(), definition.as_str())
            .map(|bytes| parse(&bytes, "a definition's health does not parse"))
            .transpose()
    }

    fn write(&mut self, write: Write) {
        self.writes.push(write);
    }
}

/// A transaction's commit as the script takes it: its keys and its steps.
#[derive(Default)]
struct Commit {
    keys: Vec<String>,
    index: HashMap<String, usize>,
    checks: Vec<Vec<u8>>,
    steps: Vec<Vec<u8>>,
    /// Players whose state the writes change, and those whose queue they change.
    touched: BTreeSet<PlayerKey>,
    queues: BTreeSet<PlayerKey>,
}

impl Commit {
    /// The commit of a run's staged `writes`, checking every scoped player's version and what it
    /// `read` outside them.
    fn of(
        cache: &Cache,
        read: &[(String, String, Vec<u8>)],
        writes: &[Write],
    ) -> Result<Commit, StoreError> {
        let mut commit = Commit::default();
        for (key, version) in cache.snapshots.iter().map(|(k, s)| (k, s.version)) {
            let versions = commit.key(BrandKeys::new(&key.brand).versions());
            let check = [
                b"VER".to_vec(),
                versions,
                key.player.as_str().into(),
                version.to_string().into_bytes(),
            ];
            commit.checks.extend(check);
        }
        for (hash, field, value) in read {
            let hash = commit.key(hash.clone());
            commit.checks.extend([
                b"VAL".to_vec(),
                hash,
                field.clone().into_bytes(),
                value.clone(),
            ]);
        }
        for write in writes {
            commit.write(write)?;
        }
        for key in std::mem::take(&mut commit.queues) {
            let keys = BrandKeys::new(&key.brand);
            let step = [
                b"QUEUE".to_vec(),
                commit.key(keys.queue(&key.player)),
                commit.key(keys.backlog()),
                commit.key(keys.oldest()),
                commit.key(keys.counts()),
                key.player.as_str().into(),
            ];
            commit.checks.extend(step);
        }
        for key in std::mem::take(&mut commit.touched) {
            if !cache.snapshots.contains_key(&key) {
                let versions = commit.key(BrandKeys::new(&key.brand).versions());
                commit
                    .steps
                    .extend([b"BUMP".to_vec(), versions, key.player.as_str().into()]);
            }
        }
        Ok(commit)
    }

    /// The argument naming `key`: its place in `KEYS`, from 1.
    fn key(&mut self, key: String) -> Vec<u8> {
        let next = self.keys.len() + 1;
        let at = *self.index.entry(key.clone()).or_insert_with(|| {
            self.keys.push(key);
            next
        });
        at.to_string().into_bytes()
    }

    fn step<const N: usize>(&mut self, op: &str, args: [Vec<u8>; N]) {
        self.steps.push(op.as_bytes().to_vec());
        self.steps.extend(args);
    }

    fn record(&mut self, key: &PlayerKey, record: &Record) -> Result<(), StoreError> {
        let json =
            serde_json::to_vec(&record.stored()).map_err(corrupt("a record would not encode"))?;
        let hash = self.key(BrandKeys::new(&key.brand).records(&key.player));
        self.step("HSET", [hash, record.delivery.id.as_str().into(), json]);
        self.touched.insert(key.clone());
        Ok(())
    }

    fn report(&mut self, key: &PlayerKey, record: &Record) {
        let d = &record.delivery;
        let report = self.key(BrandKeys::new(&key.brand).report());
        let member = keys::report_member(d.queued_at_ms, &key.player, d.id.as_str());
        self.step("ZADD", [report, b"0".to_vec(), member.into_bytes()]);
    }

    fn expiry_add(&mut self, key: &PlayerKey, due_ms: u64, seq: u64, id: &PixelId) {
        let expiry = self.key(BrandKeys::new(&key.brand).expiry());
        let member = keys::expiry_prefix(due_ms, &key.player, seq) + id.as_str();
        self.step("ZADD", [expiry, b"0".to_vec(), member.into_bytes()]);
    }

    fn expiry_remove(&mut self, key: &PlayerKey, due_ms: u64, seq: u64) {
        let expiry = self.key(BrandKeys::new(&key.brand).expiry());
        let (low, high) = keys::prefix_range(&keys::expiry_prefix(due_ms, &key.player, seq));
        self.step("ZREMPREFIX", [expiry, low, high]);
    }

    fn lane(&mut self, op: &str, lane: &Lane, key: &PlayerKey, id: &PixelId, due_ms: u64) {
        let keys = BrandKeys::new(&lane.brand);
        let member = keys::lane_member(due_ms, &key.player, id.as_str()).into_bytes();
        let (lane_key, lanes, counts) = (
            self.key(keys.lane(&lane.host)),
            self.key(keys.lanes()),
            self.key(keys.counts()),
        );
        self.step(
            op,
            [
                lane_key,
                lanes,
                lane.host.clone().into_bytes(),
                member,
                counts,
            ],
        );
        self.touched.insert(key.clone());
    }

    fn write(&mut self, write: &Write) -> Result<(), StoreError> {
        match write {
            Write::AddPixel { key, pixel, record } => {
                let queue = self.key(BrandKeys::new(&key.brand).queue(&key.player));
                let member = queue_member(record.seq, pixel)?;
                self.step("ZADD", [queue, record.seq.to_string().into_bytes(), member]);
                self.expiry_add(key, pixel.expires_at_ms, record.seq, &pixel.id);
                self.record(key, record)?;
                self.report(key, record);
                self.queues.insert(key.clone());
            }
            Write::UpdateRecord { key, record } => self.record(key, record)?,
            Write::Finalize {
                key,
                record,
                forget_at_ms,
            } => {
                if let Some(expires_at_ms) = record.delivery.expires_at_ms {
                    let queue = self.key(BrandKeys::new(&key.brand).queue(&key.player));
                    self.step("ZREMSCORE", [queue, record.seq.to_string().into_bytes()]);
                    self.expiry_remove(key, expires_at_ms, record.seq);
                    self.queues.insert(key.clone());
                }
                self.expiry_add(key, *forget_at_ms, record.seq, &record.delivery.id);
                self.record(key, record)?;
            }
            Write::AddPostback {
                key,
                record,
                lane,
                due_ms,
            } => {
                self.lane("LADD", lane, key, &record.delivery.id, *due_ms);
                self.record(key, record)?;
                self.report(key, record);
            }
            Write::AddFailed {
                key,
                record,
                forget_at_ms,
            } => {
                self.expiry_add(key, *forget_at_ms, record.seq, &record.delivery.id);
                self.record(key, record)?;
                self.report(key, record);
            }
            Write::PutContext {
                key,
                context,
                click_id,
            } => {
                let keys = BrandKeys::new(&key.brand);
                let json =
                    serde_json::to_vec(context).map_err(corrupt("a context would not encode"))?;
                let contexts = self.key(keys.contexts());
                self.step("HSET", [contexts, key.player.as_str().into(), json]);
                if let Some(click) = click_id {
                    let clicks = self.key(keys.clicks());
                    self.step(
                        "HSET",
                        [
                            clicks,
                            click.clone().into_bytes(),
                            key.player.as_str().into(),
                        ],
                    );
                }
                self.touched.insert(key.clone());
            }
            Write::PutEvent {
                brand,
                outcome,
                forget_at_ms,
            } => {
                let keys = BrandKeys::new(brand);
                let id = outcome.event_id.as_str();
                let json =
                    serde_json::to_vec(outcome).map_err(corrupt("an event would not encode"))?;
                let (events, forgets) = (self.key(keys.events()), self.key(keys.event_forgets()));
                self.step("HSET", [events, id.into(), json]);
                let member = keys::event_forget_member(*forget_at_ms, id);
                self.step("ZADD", [forgets, b"0".to_vec(), member.into_bytes()]);
            }
            Write::CountUsage {
                brand, day, events, ..
            } => {
                // Players are counted from the contexts themselves.
                let counts = self.key(BrandKeys::new(brand).counts());
                self.step(
                    "DAY",
                    [
                        counts,
                        day.to_string().into_bytes(),
                        events.to_string().into_bytes(),
                    ],
                );
            }
            Write::CountWaiting { key, delta } => {
                let counts = self.key(BrandKeys::new(&key.brand).counts());
                self.step("WAIT", [counts, delta.to_string().into_bytes()]);
            }
            Write::Schedule {
                key,
                id,
                lane,
                due_ms,
            } => self.lane("LADD", lane, key, id, *due_ms),
            Write::Unschedule {
                key,
                id,
                lane,
                due_ms,
            } => {
                // The entry was read outside the player's state (a listing of the lane): it must still
                // be there, or another process took it first.
                let lane_key = self.key(BrandKeys::new(&lane.brand).lane(&lane.host));
                let member = keys::lane_member(*due_ms, &key.player, id.as_str()).into_bytes();
                self.checks.extend([b"HAS".to_vec(), lane_key, member]);
                self.lane("LREM", lane, key, id, *due_ms);
            }
            Write::PutHealth {
                brand,
                definition,
                health,
            } => {
                let hash = self.key(BrandKeys::new(brand).health());
                let field = definition.as_str().as_bytes().to_vec();
                match health {
                    Some(health) => {
                        let json = serde_json::to_vec(health)
                            .map_err(corrupt("a health would not encode"))?;
                        self.step("HSET", [hash, field, json]);
                    }
                    None => self.step("HDEL", [hash, field]),
                }
            }
            Write::DropDue(entry) => {
                self.expiry_remove(&entry.key, entry.due_ms, entry.seq);
                self.touched.insert(entry.key.clone());
            }
            Write::Forget { key, record } => {
                let keys = BrandKeys::new(&key.brand);
                let d = &record.delivery;
                let records = self.key(keys.records(&key.player));
                self.step("HDEL", [records, d.id.as_str().into()]);
                let report = self.key(keys.report());
                let member = keys::report_member(d.queued_at_ms, &key.player, d.id.as_str());
                self.step("ZREM", [report, member.into_bytes()]);
                self.touched.insert(key.clone());
            }
            Write::ForgetEvent { brand, id, due_ms } => {
                let keys = BrandKeys::new(brand);
                let forgets = self.key(keys.event_forgets());
                let member = keys::event_forget_member(*due_ms, id.as_str());
                self.step("ZREM", [forgets, member.into_bytes()]);
                let events = self.key(keys.events());
                self.step("HDEL", [events, id.as_str().into()]);
            }
            Write::PutLease { key, lease } => {
                let leases = self.key(BrandKeys::new(&key.brand).leases());
                let player = key.player.as_str().as_bytes().to_vec();
                match lease {
                    Some(lease) => {
                        let stored = StoredLease {
                            session: lease.session,
                            token: lease.token,
                            expires_at_ms: lease.expires_at_ms,
                            in_flight: lease.in_flight.clone(),
                        };
                        let json = serde_json::to_vec(&stored)
                            .map_err(corrupt("a lease would not encode"))?;
                        self.step("HSET", [leases, player, json]);
                    }
                    None => self.step("HDEL", [leases, player]),
                }
                self.touched.insert(key.clone());
            }
        }
        Ok(())
    }

    /// Runs the script: true when it wrote, false when what the transaction read had changed.
    async fn run(self, store: &RedisStore) -> Result<bool, StoreError> {
        let mut invocation = COMMIT_SCRIPT.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        for arg in self.checks.iter().chain(&self.steps) {
            invocation.arg(arg.as_slice());
        }
        let written: i64 = invocation
            .invoke_async(&mut store.conn())
            .await
            .map_err(backend)?;
        Ok(written == 1)
    }
}

#[async_trait]
impl Queues for RedisStore {
    async fn transact(
        &self,
        scope: Scope,
        mode: Mode,
        mut work: Work,
    ) -> Result<Box<dyn Any + Send>, StoreError> {
        self.check_open()?;
        self.run(&scope, mode, &mut work).await
    }

    fn announce(&self, key: &PlayerKey) {
        self.publish_player(key);
    }

    fn announce_postbacks(&self) {
        self.publish_postbacks();
    }

    fn surely_idle(&self, _key: &PlayerKey) -> bool {
        false // another process may have queued since: only Redis knows
    }

    async fn lanes(&self) -> Result<Vec<LaneDue>, StoreError> {
        let mut found = Vec::new();
        for brand in self.brand_ids().await? {
            let keys = BrandKeys::new(&brand);
            let hosts: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(keys.lanes())).await?;
            if hosts.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for host in &hosts {
                pipe.zrange(keys.lane(host), 0, 0);
            }
            let heads: Vec<Vec<String>> =
                pipe.query_async(&mut self.conn()).await.map_err(backend)?;
            for (host, head) in hosts.into_iter().zip(heads) {
                let Some(next_ms) = head
                    .first()
                    .and_then(|m| keys::fields::<3>(m))
                    .and_then(|[due, ..]| due.parse().ok())
                else {
                    continue; // emptied since the hosts were listed
                };
                found.push(LaneDue {
                    lane: Lane {
                        brand: brand.clone(),
                        host,
                    },
                    next_ms,
                });
            }
        }
        Ok(found)
    }

    async fn due_entries(
        &self,
        until_ms: u64,
        after: Option<DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        // Ordered by (due, brand, player, seq) across brands: each brand's index from where `after`
        // leaves it, the pages merged.
        let mut found: Vec<(u64, BrandId, String, DueEntry)> = Vec::new();
        for brand in self.brand_ids().await? {
            let low = match &after {
                None => "-".to_owned(),
                Some(a) if brand < a.key.brand => format!("[{}", pad(a.due_ms.saturating_add(1))),
                Some(a) if brand > a.key.brand => format!("[{}", pad(a.due_ms)),
                Some(a) => {
                    // Past every member of the entry, whatever id it carries.
                    let mut low =
                        format!("({}", keys::expiry_prefix(a.due_ms, &a.key.player, a.seq));
                    low.push('\u{7f}');
                    low
                }
            };
            let members: Vec<String> = self
                .query(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(BrandKeys::new(&brand).expiry())
                        .arg(low)
                        .arg(keys::up_to(until_ms))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit),
                )
                .await?;
            for member in members {
                let entry = parse_due(&brand, &member)?;
                let prefix = member.rsplit_once(SEP).map_or("", |(p, _)| p).to_owned();
                found.push((entry.due_ms, brand.clone(), prefix, entry));
            }
        }
        found.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        Ok(found.into_iter().take(limit).map(|(.., e)| e).collect())
    }

    async fn due_events(
        &self,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, BrandId, EventId)>, StoreError> {
        let mut found = Vec::new();
        for brand in self.brand_ids().await? {
            let members: Vec<String> = self
                .query(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(BrandKeys::new(&brand).event_forgets())
                        .arg("-")
                        .arg(keys::up_to(until_ms))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit),
                )
                .await?;
            for member in members {
                let [due, id] = keys::fields::<2>(&member)
                    .ok_or_else(|| StoreError::corrupt("an event's forget entry does not parse"))?;
                let due = due
                    .parse()
                    .map_err(|_| StoreError::corrupt("an event's forget time"))?;
                let id =
                    EventId::parse_stored(id).map_err(|_| StoreError::corrupt("an event's id"))?;
                found.push((due, brand.clone(), id));
            }
        }
        found.sort();
        found.truncate(limit);
        Ok(found)
    }
}

/// An expiry member of `brand` read back as the entry it is.
fn parse_due(brand: &BrandId, member: &str) -> Result<DueEntry, StoreError> {
    let bad = || StoreError::corrupt("an expiry entry does not parse");
    let [due, player, seq, id] = keys::fields::<4>(member).ok_or_else(bad)?;
    Ok(DueEntry {
        due_ms: due.parse().map_err(|_| bad())?,
        key: PlayerKey::new(
            brand.clone(),
            PlayerId::parse_stored(player).map_err(|_| bad())?,
        ),
        seq: seq.parse().map_err(|_| bad())?,
        id: PixelId::parse_stored(id).ok(),
    })
}

//! The queues on Redis: optimistic transactions, committed by one script.
//!
//! A transaction first reads the versions of the players in its scope (one per player, raised by every
//! commit that writes the player's state). Its work then runs on a blocking thread, each read a call to
//! Redis made atomically with a look at the player's version: a read that finds another version means
//! another process committed in between, and the work is run again from the start on what is there
//! now (the work is a pure function of its reads, [`Queues::transact`] says so). The staged writes
//! become one commit script ([`COMMIT`]) that first checks that every version, and every value read
//! outside a player's state (an event's record, a definition's health, an outbox entry the work takes
//! out) is still as read; only then does it write, with every index the writes imply. A commit that
//! finds a change writes nothing, and the work runs again.
//!
//! Redis answers a script after its append-only file is synced (`appendfsync always`, which the hub
//! checks at start), so a commit is durable when it returns, in every [`Mode`]. Queue positions and
//! record numbers come from one counter, drawn in blocks after the versions are read: any commit of the
//! player before this transaction began used lower numbers, and any after it makes this one run again,
//! so a player's queue is in the order its pixels were committed.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::{Cmd, FromRedisValue, Script};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

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

/// What a read found changed: the work's answer is thrown away and it runs again.
#[derive(Debug, thiserror::Error)]
#[error("another process changed what this transaction read")]
struct Changed;

impl RedisStore {
    /// One transaction, run to its commit on this (blocking) thread; `rt` runs the calls to Redis.
    fn run(
        &self,
        rt: &Handle,
        scope: &Scope,
        work: &mut Work,
    ) -> Result<Box<dyn Any + Send>, StoreError> {
        for round in 0..MAX_ROUNDS {
            if round > 0 {
                let pause = getrandom::u64().unwrap_or(0) % (u64::from(round.min(10)) * 500 + 1);
                std::thread::sleep(Duration::from_micros(pause));
            }
            let snapshots = self.snapshot(rt, &scope.players)?;
            let mut tx = RedisTx {
                store: self,
                rt,
                snapshots,
                read: Vec::new(),
                writes: Vec::new(),
                seqs: 0..0,
                changed: false,
            };
            let out = work(&mut tx);
            if tx.changed {
                continue;
            }
            let out = out?;
            if tx.writes.is_empty() {
                return Ok(out);
            }
            let commit = Commit::of(&tx)?;
            if commit.run(self, rt)? {
                return Ok(out);
            }
        }
        Err(StoreError::Unavailable(format!(
            "a transaction found its players changed by other processes {MAX_ROUNDS} times in a row; try again"
        )))
    }

    /// What a transaction begins with: each scoped player's version and the state nearly every
    /// transaction of a player reads (its lease, context, pending count and the head of its queue), in
    /// one atomic round trip per brand.
    fn snapshot(
        &self,
        rt: &Handle,
        players: &[PlayerKey],
    ) -> Result<HashMap<PlayerKey, Snapshot>, StoreError> {
        let mut by_brand: HashMap<&BrandId, Vec<&PlayerKey>> = HashMap::new();
        for key in players {
            let keys = by_brand.entry(&key.brand).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let mut snapshots = HashMap::new();
        for (brand, keys) in by_brand {
            let names = BrandKeys::new(brand);
            let mut pipe = redis::pipe();
            pipe.atomic();
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
            let found: Vec<HeadRead> = rt
                .block_on(pipe.query_async(&mut self.conn()))
                .map_err(backend)?;
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
                    records: HashMap::new(),
                    records_read: false,
                };
                snapshots.insert(key.clone(), snapshot);
            }
        }
        Ok(snapshots)
    }
}

/// One player's part of a snapshot, as Redis answers it: version, lease, context, pending count, the
/// queue's head.
type HeadRead = (
    Option<u64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    u64,
    Vec<Vec<u8>>,
);

/// Entries of a player's queue read with its snapshot: a lease sends at most its window (10 by
/// default), so the head usually answers it whole.
const HEAD: usize = 32;

/// A scoped player's state as the transaction began, read in one round trip; what it does not hold is
/// read when asked for, checked against `version`.
struct Snapshot {
    version: u64,
    lease: Option<Vec<u8>>,
    context: Option<Vec<u8>>,
    pending: u64,
    /// The first entries of the queue, in order.
    head: Vec<(u64, QueuedPixel)>,
    /// Whether `head` is the whole queue.
    whole: bool,
    /// Records read so far, by id (`None`: no such record).
    records: HashMap<PixelId, Option<Vec<u8>>>,
    /// Whether the records of every `head` entry were read (together, at the first record asked).
    records_read: bool,
}

/// A transaction's view of Redis: reads checked against the versions it began with, writes staged.
struct RedisTx<'a> {
    store: &'a RedisStore,
    rt: &'a Handle,
    snapshots: HashMap<PlayerKey, Snapshot>,
    /// Values read outside a player's state, as the commit must find them: hash, field, tagged value.
    read: Vec<(String, String, Vec<u8>)>,
    writes: Vec<Write>,
    seqs: Range<u64>,
    changed: bool,
}

impl RedisTx<'_> {
    /// Runs `cmd`; when it reads the state of a player in scope, atomically with a look at the
    /// player's version, which must be the one the transaction began with.
    fn read<T: FromRedisValue>(
        &mut self,
        key: Option<&PlayerKey>,
        cmd: Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.store.conn();
        let Some((key, expected)) = key.and_then(|k| self.snapshots.get(k).map(|s| (k, s.version)))
        else {
            return self
                .rt
                .block_on(cmd.query_async(&mut conn))
                .map_err(backend);
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hget(BrandKeys::new(&key.brand).versions(), key.player.as_str())
            .add_command(cmd);
        let (version, value): (Option<u64>, T) = self
            .rt
            .block_on(pipe.query_async(&mut conn))
            .map_err(backend)?;
        if version.unwrap_or(0) != expected {
            self.changed = true;
            return Err(StoreError::Backend(std::sync::Arc::new(Changed)));
        }
        Ok(value)
    }

    /// Reads a hash field outside a player's state and notes it for the commit's check.
    fn read_noted(&mut self, hash: String, field: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut hget = redis::cmd("HGET");
        hget.arg(&hash).arg(field);
        let value: Option<Vec<u8>> = self.read(None, hget)?;
        self.read
            .push((hash, field.to_owned(), tagged(value.as_deref())));
        Ok(value)
    }
}

/// A value as the commit script compares it: empty for absent, `=` and the value otherwise.
fn tagged(value: Option<&[u8]>) -> Vec<u8> {
    value.map_or_else(Vec::new, |v| [b"=".as_slice(), v].concat())
}

fn hget(hash: String, field: &str) -> Cmd {
    let mut cmd = redis::cmd("HGET");
    cmd.arg(hash).arg(field);
    cmd
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
        if self.seqs.is_empty() {
            let mut incr = redis::cmd("INCRBY");
            incr.arg(keys::SEQ).arg(SEQ_BLOCK);
            let last: u64 = self.read(None, incr)?;
            self.seqs = last + 1 - SEQ_BLOCK..last + 1;
        }
        Ok(self.seqs.next().expect("refilled just above"))
    }

    fn record(&mut self, key: &PlayerKey, id: &PixelId) -> Result<Option<Record>, StoreError> {
        let found = match self.snapshots.get(key) {
            Some(snapshot) if snapshot.records.contains_key(id) => snapshot.records[id].clone(),
            // The first record asked of a queue's head: the records of the whole head, at once.
            Some(snapshot)
                if !snapshot.records_read && snapshot.head.iter().any(|(_, p)| p.id == *id) =>
            {
                let ids: Vec<PixelId> = snapshot.head.iter().map(|(_, p)| p.id.clone()).collect();
                let mut hmget = redis::cmd("HMGET");
                hmget.arg(BrandKeys::new(&key.brand).records(&key.player));
                for head_id in &ids {
                    hmget.arg(head_id.as_str());
                }
                let values: Vec<Option<Vec<u8>>> = self.read(Some(key), hmget)?;
                let snapshot = self.snapshots.get_mut(key).expect("matched above");
                snapshot.records.extend(ids.into_iter().zip(values));
                snapshot.records_read = true;
                snapshot.records.get(id).cloned().flatten()
            }
            _ => {
                let hash = BrandKeys::new(&key.brand).records(&key.player);
                self.read(Some(key), hget(hash, id.as_str()))?
            }
        };
        found
            .map(|bytes| parse(&bytes, "a record does not parse"))
            .transpose()
    }

    fn pending_count(&mut self, key: &PlayerKey) -> Result<u64, StoreError> {
        if let Some(snapshot) = self.snapshots.get(key) {
            return Ok(snapshot.pending);
        }
        let mut zcard = redis::cmd("ZCARD");
        zcard.arg(BrandKeys::new(&key.brand).queue(&key.player));
        self.read(None, zcard)
    }

    fn queue(
        &mut self,
        key: &PlayerKey,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, QueuedPixel)>, StoreError> {
        if let Some(snapshot) = self.snapshots.get(key) {
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
        let mut range = redis::cmd("ZRANGEBYSCORE");
        range
            .arg(BrandKeys::new(&key.brand).queue(&key.player))
            .arg(after.map_or_else(|| "-inf".to_owned(), |seq| format!("({seq}")))
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let members: Vec<Vec<u8>> = self.read(Some(key), range)?;
        members.iter().map(|m| parse_queue_member(m)).collect()
    }

    fn undurable_from(&mut self, _key: &PlayerKey) -> Option<u64> {
        None // a commit is durable when it returns
    }

    fn lease(&mut self, key: &PlayerKey) -> Result<Option<Lease>, StoreError> {
        let found = match self.snapshots.get(key) {
            Some(snapshot) => snapshot.lease.clone(),
            None => {
                let hash = BrandKeys::new(&key.brand).leases();
                self.read(None, hget(hash, key.player.as_str()))?
            }
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
        let found = match self.snapshots.get(key) {
            Some(snapshot) => snapshot.context.clone(),
            None => {
                let hash = BrandKeys::new(&key.brand).contexts();
                self.read(None, hget(hash, key.player.as_str()))?
            }
        };
        found
            .map(|bytes| parse(&bytes, "a player context does not parse"))
            .transpose()
    }

    fn event(&mut self, brand: &BrandId, id: &EventId) -> Result<Option<EventOutcome>, StoreError> {
        self.read_noted(BrandKeys::new(brand).events(), id.as_str())?
            .map(|bytes| parse(&bytes, "an event record does not parse"))
            .transpose()
    }

    fn usage(&mut self, brand: &BrandId, day: u64) -> Result<Usage, StoreError> {
        // Not checked at commit: concurrent batches of one brand on several processes may each pass a
        // quota the sum of them goes over (docs/scaling.md).
        let mut pipe = redis::pipe();
        Counts::ask(&mut pipe, &BrandKeys::new(brand));
        let counts: Counts = self
            .rt
            .block_on(pipe.query_async(&mut self.store.conn()))
            .map_err(backend)?;
        Ok(Usage {
            events_today: counts.events_on(day),
            players: counts.players,
            outbox: counts.outbox,
        })
    }

    fn scheduled(
        &mut self,
        lane: &Lane,
        due_ms: u64,
        key: &PlayerKey,
        id: &PixelId,
    ) -> Result<bool, StoreError> {
        let mut zscore = redis::cmd("ZSCORE");
        zscore
            .arg(BrandKeys::new(&lane.brand).lane(&lane.host))
            .arg(keys::lane_member(due_ms, &key.player, id.as_str()));
        let score: Option<f64> = self.read(Some(key), zscore)?;
        Ok(score.is_some())
    }

    fn due(
        &mut self,
        lane: &Lane,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PlayerKey, PixelId)>, StoreError> {
        let mut range = redis::cmd("ZRANGEBYLEX");
        range
            .arg(BrandKeys::new(&lane.brand).lane(&lane.host))
            .arg("-")
            .arg(keys::up_to(until_ms))
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let members: Vec<String> = self.read(None, range)?;
        members
            .iter()
            .map(|member| {
                let [due, player, id] = keys::fields::<3>(member)
                    .ok_or_else(|| StoreError::corrupt("an outbox entry does not parse"))?;
                let due = due
                    .parse()
                    .map_err(|_| StoreError::corrupt("an outbox entry's time"))?;
                let player = PlayerId::parse_stored(player)
                    .map_err(|_| StoreError::corrupt("an outbox entry's player"))?;
                let id = PixelId::parse_stored(id)
                    .map_err(|_| StoreError::corrupt("an outbox entry's id"))?;
                Ok((due, PlayerKey::new(lane.brand.clone(), player), id))
            })
            .collect()
    }

    fn holds_due(&mut self, entry: &DueEntry) -> Result<bool, StoreError> {
        let prefix = keys::expiry_prefix(entry.due_ms, &entry.key.player, entry.seq);
        let (low, high) = keys::prefix_range(&prefix);
        let mut range = redis::cmd("ZRANGEBYLEX");
        range
            .arg(BrandKeys::new(&entry.key.brand).expiry())
            .arg(low)
            .arg(high)
            .arg("LIMIT")
            .arg(0)
            .arg(1);
        let found: Vec<Vec<u8>> = self.read(Some(&entry.key), range)?;
        Ok(!found.is_empty())
    }

    fn health(
        &mut self,
        brand: &BrandId,
        definition: &DefinitionId,
    ) -> Result<Option<DefinitionHealth>, StoreError> {
        self.read_noted(BrandKeys::new(brand).health(), definition.as_str())?
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
    /// The commit of `tx`'s staged writes, checking what it read.
    fn of(tx: &RedisTx<'_>) -> Result<Commit, StoreError> {
        let mut commit = Commit::default();
        for (key, version) in tx.snapshots.iter().map(|(k, s)| (k, s.version)) {
            let versions = commit.key(BrandKeys::new(&key.brand).versions());
            let check = [
                b"VER".to_vec(),
                versions,
                key.player.as_str().into(),
                version.to_string().into_bytes(),
            ];
            commit.checks.extend(check);
        }
        for (hash, field, value) in &tx.read {
            let hash = commit.key(hash.clone());
            commit.checks.extend([
                b"VAL".to_vec(),
                hash,
                field.clone().into_bytes(),
                value.clone(),
            ]);
        }
        for write in &tx.writes {
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
            if !tx.snapshots.contains_key(&key) {
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
    fn run(self, store: &RedisStore, rt: &Handle) -> Result<bool, StoreError> {
        let mut invocation = COMMIT_SCRIPT.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        for arg in self.checks.iter().chain(&self.steps) {
            invocation.arg(arg.as_slice());
        }
        let written: i64 = rt
            .block_on(invocation.invoke_async(&mut store.conn()))
            .map_err(backend)?;
        Ok(written == 1)
    }
}

#[async_trait]
impl Queues for RedisStore {
    async fn transact(
        &self,
        scope: Scope,
        _mode: Mode,
        mut work: Work,
    ) -> Result<Box<dyn Any + Send>, StoreError> {
        self.check_open()?;
        let (store, rt) = (self.clone(), Handle::current());
        tokio::task::spawn_blocking(move || store.run(&rt, &scope, &mut work))
            .await
            .map_err(|e| StoreError::Unavailable(format!("a store call did not finish: {e}")))?
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

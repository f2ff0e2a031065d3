//! The embedded engine's migrations: what a data dir written by an earlier version lacks is built at
//! open, once, and marked done.

use std::collections::HashMap;

use ::sled::{Batch, IVec, Tree};

use super::backlog::{Change, Summary};
use super::{backend, entry, json, keys};
use crate::brand::{BrandSecret, SecretKind};
use crate::ids::{BrandId, PlayerKey};
use crate::store::queues::Record;
use crate::store::{Lane, StoreError};

/// Gives a data dir written before the pending summaries its summaries, once: each player's `n` from its
/// queue (count, oldest pixel, earliest expiry). Returns the sequence number below which a pixel may
/// still have the keys the summaries replaced (an age key `p` and an expiry key `x`, written before
/// them): those go when the pixel ends ([`super::Inner::legacy_below`]), so the migration itself
/// writes one key per player, not two removals per pixel (5 million pending pixels took 300 s that
/// way, 20 s this way).
///
/// In batches of [`MIGRATION_BATCH`] changes, so millions of players need no batch of millions in
/// memory. Every summary is worked out from the queue, which the migration does not change, so a crash
/// half-way is finished by the next open: the marker, holding the bound, goes in last.
pub(super) fn summarise_queues(data: &Tree, seq_bound: u64) -> Result<u64, StoreError> {
    const DONE: &[u8] = b"mpending-summaries-v2";
    if let Some(bound) = data.get(DONE).map_err(backend)? {
        return Ok(<[u8; 8]>::try_from(bound.as_ref()).map_or(0, u64::from_be_bytes));
    }
    let mut summaries: HashMap<PlayerKey, Summary> = HashMap::new();
    for entry in data.scan_prefix(b"q") {
        let (k, v) = entry.map_err(backend)?;
        let (key, first) =
            keys::parse_queue(&k).ok_or_else(|| StoreError::corrupt("corrupt queue key"))?;
        let mut change = Change::default();
        for queued in entry::entries(first, &v) {
            let pixel = entry::pixel(queued?.1)?;
            change.add(pixel.queued_at_ms, pixel.expires_at_ms);
        }
        let summary = summaries.entry(key).or_default();
        *summary = summary.after(change);
    }
    // A data dir with no queue has no legacy keys either.
    let bound = if summaries.is_empty() { 0 } else { seq_bound };
    let mut batches = Batches::new(data);
    for k in data.scan_prefix(b"n").keys() {
        let k = k.map_err(backend)?;
        let key =
            keys::parse_summary(&k).ok_or_else(|| StoreError::corrupt("corrupt summary key"))?;
        if !summaries.contains_key(&key) {
            batches.remove(k)?;
        }
    }
    for (key, summary) in summaries.drain() {
        batches.insert(keys::summary(&key), summary.encode().as_slice())?;
    }
    batches.insert(DONE.to_vec(), &bound.to_be_bytes())?;
    batches.finish()?;
    data.flush().map_err(backend)?;
    Ok(bound)
}

/// Changes per batch of a migration that may touch millions of keys (a handful in tests, so they cross
/// batches).
const MIGRATION_BATCH: usize = if cfg!(test) { 3 } else { 10_000 };

/// A migration's changes, applied every [`MIGRATION_BATCH`].
struct Batches<'a> {
    data: &'a Tree,
    batch: Batch,
    len: usize,
}

impl<'a> Batches<'a> {
    fn new(data: &'a Tree) -> Self {
        Self {
            data,
            batch: Batch::default(),
            len: 0,
        }
    }

    fn insert(&mut self, key: Vec<u8>, value: &[u8]) -> Result<(), StoreError> {
        self.batch.insert(key, value);
        self.counted()
    }

    fn remove(&mut self, key: IVec) -> Result<(), StoreError> {
        self.batch.remove(key);
        self.counted()
    }

    fn counted(&mut self) -> Result<(), StoreError> {
        self.len += 1;
        if self.len == MIGRATION_BATCH {
            self.finish()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        self.len = 0;
        let batch = std::mem::take(&mut self.batch);
        self.data.apply_batch(batch).map_err(backend)
    }
}

/// Moves the outbox of a data dir written before lanes (`s` due brand NUL player NUL id) to its lanes (`l`),
/// in one batch, so a crash half-way leaves the old outbox whole.
pub(super) fn move_outbox_to_lanes(data: &Tree) -> Result<(), StoreError> {
    const MOVED: &[u8] = b"moutbox-lanes-v1";
    if data.contains_key(MOVED).map_err(backend)? {
        return Ok(());
    }
    let mut batch = Batch::default();
    for entry in data.scan_prefix(b"s").keys() {
        let k = entry.map_err(backend)?;
        let (due, key, id) = keys::parse_global_outbox(&k)
            .ok_or_else(|| StoreError::corrupt("corrupt outbox key"))?;
        let record = data
            .get(keys::index(&key, &id))
            .map_err(backend)?
            .map(|v| serde_json::from_slice::<Record>(&v))
            .transpose()
            .map_err(backend)?;
        if let Some(url) = record.and_then(|r| r.delivery.final_url) {
            batch.insert(
                keys::outbox(&Lane::of(&key.brand, &url), due, &key, &id),
                &[],
            );
        }
        batch.remove(k);
    }
    batch.insert(MOVED, &[]);
    data.apply_batch(batch).map_err(backend)?;
    data.flush().map_err(backend)?;
    Ok(())
}

/// Gives every brand the secrets it lacks: brands saved before a kind of secret existed get theirs at the
/// first start of the version that has it.
pub(super) fn add_missing_secrets(data: &Tree, now: u64) -> Result<(), StoreError> {
    let mut batch = Batch::default();
    for entry in data.scan_prefix(b"b") {
        let (k, _) = entry.map_err(backend)?;
        let brand = std::str::from_utf8(&k[1..])
            .ok()
            .and_then(|id| BrandId::parse_stored(id).ok())
            .ok_or_else(|| StoreError::corrupt("corrupt brand key"))?;
        for kind in [SecretKind::Inbound, SecretKind::Signing] {
            let key = keys::secret(kind, &brand);
            if !data.contains_key(&key).map_err(backend)? {
                batch.insert(key, json(&BrandSecret::new(None, now)));
            }
        }
    }
    data.apply_batch(batch).map_err(backend)?;
    data.flush().map_err(backend)?;
    Ok(())
}

/// Removes the backlog ranking `k` that data dirs kept on disk before it moved to memory (rebuilt from
/// `n` at open): a sled key less per queued pixel.
pub(super) fn drop_backlog_ranking(data: &Tree) -> Result<(), StoreError> {
    const DROPPED: &[u8] = b"mbacklog-ranking-in-memory-v1";
    if data.contains_key(DROPPED).map_err(backend)? {
        return Ok(());
    }
    let mut batch = Batch::default();
    for k in data.scan_prefix(b"k").keys() {
        batch.remove(k.map_err(backend)?);
    }
    batch.insert(DROPPED, &[]);
    data.apply_batch(batch).map_err(backend)
}

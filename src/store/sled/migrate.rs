//! The embedded engine's migrations: what a data dir written by an earlier version lacks is built at
//! open, once, and marked done.

use std::collections::HashMap;

use ::sled::{Batch, Tree};

use super::backlog::{Change, Summary};
use super::{backend, json, keys};
use crate::brand::{BrandSecret, SecretKind};
use crate::ids::{BrandId, PlayerKey};
use crate::pixel::QueuedPixel;
use crate::store::queues::Record;
use crate::store::{Lane, StoreError};

/// Gives a data dir written before the pending summaries its summaries, once: each player's `n` from its
/// queue (count, oldest pixel, earliest expiry), and drops what they replace, the age index `p` and the
/// expiry keys `x` of pending pixels (an `x` key now only says when a final record is forgotten). One
/// batch, so a crash half-way leaves the old layout whole.
pub(super) fn summarise_queues(data: &Tree) -> Result<(), StoreError> {
    const DONE: &[u8] = b"mpending-summaries-v2";
    if data.contains_key(DONE).map_err(backend)? {
        return Ok(());
    }
    let mut batch = Batch::default();
    let mut summaries: HashMap<PlayerKey, Summary> = HashMap::new();
    for entry in data.scan_prefix(b"q") {
        let (k, v) = entry.map_err(backend)?;
        let (key, _) =
            keys::parse_queue(&k).ok_or_else(|| StoreError::corrupt("corrupt queue key"))?;
        let pixel: QueuedPixel = serde_json::from_slice(&v).map_err(backend)?;
        let mut change = Change::default();
        change.add(pixel.queued_at_ms, pixel.expires_at_ms);
        let summary = summaries.entry(key).or_default();
        *summary = summary.after(change);
    }
    for k in data.scan_prefix(b"n").keys() {
        batch.remove(k.map_err(backend)?);
    }
    for (key, summary) in &summaries {
        batch.insert(keys::summary(key), summary.encode().as_slice());
    }
    for k in data.scan_prefix(b"p").keys() {
        batch.remove(k.map_err(backend)?);
    }
    for k in data.scan_prefix(b"x").keys() {
        let k = k.map_err(backend)?;
        let (key, seq) =
            keys::parse_expiry(&k).ok_or_else(|| StoreError::corrupt("corrupt expiry key"))?;
        if data.contains_key(keys::queue(&key, seq)).map_err(backend)? {
            batch.remove(k);
        }
    }
    batch.insert(DONE, &[]);
    data.apply_batch(batch).map_err(backend)?;
    data.flush().map_err(backend)?;
    Ok(())
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

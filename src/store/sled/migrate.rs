//! The embedded engine's migrations: what a data dir written by an earlier version lacks is built at
//! open, once, and marked done.

use std::collections::HashMap;

use ::sled::{Batch, Tree};

use super::{backend, json, keys};
use crate::brand::{BrandSecret, SecretKind};
use crate::ids::{BrandId, PlayerKey};
use crate::pixel::QueuedPixel;
use crate::store::queues::Record;
use crate::store::{Lane, StoreError};

/// Builds the derived tables `p` and `n` from the queues of a data dir written before they existed.
pub(super) fn build_backlog_tables(data: &Tree) -> Result<(), StoreError> {
    const BUILT: &[u8] = b"mbacklog-tables-v1";
    if data.contains_key(BUILT).map_err(backend)? {
        return Ok(());
    }
    let mut batch = Batch::default();
    let mut counts: HashMap<PlayerKey, u64> = HashMap::new();
    for entry in data.scan_prefix(b"q") {
        let (k, v) = entry.map_err(backend)?;
        let (key, seq) =
            keys::parse_queue(&k).ok_or_else(|| StoreError::corrupt("corrupt queue key"))?;
        let pixel: QueuedPixel = serde_json::from_slice(&v).map_err(backend)?;
        batch.insert(keys::pending(&key, pixel.queued_at_ms, seq), &[]);
        *counts.entry(key).or_insert(0) += 1;
    }
    for (key, count) in counts {
        batch.insert(keys::count(&key), count.to_be_bytes().as_slice());
    }
    batch.insert(BUILT, &[]);
    data.apply_batch(batch).map_err(backend)
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

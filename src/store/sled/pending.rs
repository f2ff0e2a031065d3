//! Which queue position holds each pending pixel id, per player, in memory: how a pending pixel's
//! record is found by its id, now that it lives in the pixel's queue entry (see [`super::entry`])
//! rather than under a key of its own.
//!
//! A player is indexed the first time one of its ids is looked up under its stripe lock (its queue's
//! ids read once, from the entries' headers), and the index then follows every change to the queue
//! ([`super::Inner::apply`], under the same lock). Only entries holding their record are indexed;
//! entries of the old kind keep their record in `i`, where a lookup goes next. A player stays indexed
//! when its queue empties: an online player's next pixel is then found by its ack without reading
//! the queue (two fifths of an online ack's CPU, read through the overlay and sled's range). A
//! memory, not a truth: a player not indexed is read from its queue, and the whole index is let go
//! whenever it holds more than [`MAX_IDS`] (ids, and each player as [`PLAYER_SLOTS`] of them; checked
//! at every id and player it takes), so its size stays bounded however many players come and go.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicIsize, Ordering};

use dashmap::DashMap;

use crate::ids::PlayerKey;

/// Ids held at most (some 20 bytes each, 20 MB in all): past that the index starts afresh. A handful
/// in tests, so they start afresh often.
const MAX_IDS: usize = if cfg!(test) { 16 } else { 1 << 20 };
/// What an indexed player itself costs, in ids: its key and its empty map, some 120 bytes.
const PLAYER_SLOTS: isize = 6;
/// Held for a hash two pending ids of one player share: the lookup reads the queue.
const SHARED: u64 = u64::MAX;

/// Per indexed player: queue position by hash of the pixel id.
#[derive(Default)]
pub(super) struct PendingIds {
    players: DashMap<PlayerKey, HashMap<u64, u64>>,
    /// How many ids are held, each player counted as [`PLAYER_SLOTS`] more, counted after each insert
    /// and removal (so it may lag them for a moment, even below zero, but never drifts).
    held: AtomicIsize,
    hasher: RandomState,
}

/// What the index knows of an id.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// The player is not indexed.
    Unknown,
    /// No pending entry holding its record has the id.
    Absent,
    /// Probably at this position (the caller checks the entry's id).
    At(u64),
    /// Two of the player's pending ids share a hash: read the queue.
    Shared,
}

impl PendingIds {
    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Where the player's pending pixel `id` is.
    pub(super) fn find(&self, key: &PlayerKey, id: &[u8]) -> Lookup {
        let Some(ids) = self.players.get(key) else {
            return Lookup::Unknown;
        };
        match ids.get(&self.hash(id)) {
            None => Lookup::Absent,
            Some(&SHARED) => Lookup::Shared,
            Some(&seq) => Lookup::At(seq),
        }
    }

    /// Indexes the player with every pending id it has (read under its stripe lock).
    pub(super) fn fill<'a>(
        &self,
        key: &PlayerKey,
        queue: impl IntoIterator<Item = (&'a [u8], u64)>,
    ) {
        let mut ids = HashMap::new();
        for (id, seq) in queue {
            add(&mut ids, self.hash(id), seq);
        }
        let count = ids.len() as isize + PLAYER_SLOTS;
        let before = self.players.insert(key.clone(), ids);
        let gone = before.map_or(0, |ids| ids.len() as isize + PLAYER_SLOTS);
        self.counted(count - gone);
    }

    /// Counts `more` ids (or players' slots), and lets every player go once the index holds more than
    /// [`MAX_IDS`]: they are indexed again as they are looked up.
    fn counted(&self, more: isize) {
        let held = self.held.fetch_add(more, Ordering::Relaxed) + more;
        if held > MAX_IDS as isize {
            let mut dropped = 0;
            self.players.retain(|_, ids| {
                dropped += ids.len() as isize + PLAYER_SLOTS;
                false
            });
            self.held.fetch_sub(dropped, Ordering::Relaxed);
        }
    }

    /// Follows a change of the player's queue: `id` queued at `seq`, or (`None`) ended.
    pub(super) fn change(&self, key: &PlayerKey, id: &[u8], seq: Option<u64>) {
        let Some(mut ids) = self.players.get_mut(key) else {
            return;
        };
        let hash = self.hash(id);
        match seq {
            Some(seq) => {
                if add(&mut ids, hash, seq) {
                    drop(ids); // its shard's lock, before `counted` may take every shard's
                    self.counted(1);
                }
            }
            // A shared hash stays shared: which of the two ended is not known.
            None => {
                if ids.get(&hash).is_some_and(|&at| at != SHARED) {
                    ids.remove(&hash);
                    self.held.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Adds `hash` at `seq`; true when it took a new slot.
fn add(ids: &mut HashMap<u64, u64>, hash: u64, seq: u64) -> bool {
    match ids.get_mut(&hash) {
        Some(at) => {
            if *at != seq {
                *at = SHARED;
            }
            false
        }
        None => {
            ids.insert(hash, seq);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BrandId, PlayerId};

    fn player(name: &str) -> PlayerKey {
        PlayerKey::new(BrandId::parse("b").unwrap(), PlayerId::parse(name).unwrap())
    }

    #[test]
    fn a_player_is_known_once_filled_and_follows_its_changes() {
        let index = PendingIds::default();
        let p = player("p");
        assert_eq!(index.find(&p, b"a"), Lookup::Unknown);
        index.change(&p, b"a", Some(1)); // not indexed: nothing to follow
        assert_eq!(index.find(&p, b"a"), Lookup::Unknown);

        index.fill(&p, [(b"a".as_slice(), 1), (b"b".as_slice(), 2)]);
        assert_eq!(index.find(&p, b"a"), Lookup::At(1));
        assert_eq!(index.find(&p, b"c"), Lookup::Absent);
        index.change(&p, b"c", Some(3));
        index.change(&p, b"a", None);
        assert_eq!(
            [index.find(&p, b"a"), index.find(&p, b"c")],
            [Lookup::Absent, Lookup::At(3)]
        );
        assert_eq!(index.find(&player("q"), b"a"), Lookup::Unknown);
        assert_eq!(index.held.load(Ordering::Relaxed), 2 + PLAYER_SLOTS);

        // Its queue emptied, the player stays known, and its next pixel is found without a read.
        index.change(&p, b"b", None);
        index.change(&p, b"c", None);
        assert_eq!(index.find(&p, b"c"), Lookup::Absent);
        index.change(&p, b"d", Some(4));
        assert_eq!(index.find(&p, b"d"), Lookup::At(4));
        assert_eq!(index.held.load(Ordering::Relaxed), 1 + PLAYER_SLOTS);
    }

    #[test]
    fn past_its_bound_the_index_lets_every_player_go_and_counts_exactly() {
        let index = PendingIds::default();
        let (p, q) = (player("p"), player("q"));
        let room = MAX_IDS - PLAYER_SLOTS as usize;
        let ids: Vec<String> = (0..room).map(|i| format!("id-{i}")).collect();
        index.fill(&p, ids.iter().map(|id| (id.as_bytes(), 1)));
        assert_eq!(index.held.load(Ordering::Relaxed), MAX_IDS as isize);
        index.fill(&q, []);
        assert_eq!(
            [index.find(&p, b"id-0"), index.find(&q, b"a")],
            [Lookup::Unknown, Lookup::Unknown],
            "a player with nothing pending counts too: one more and everyone goes"
        );
        assert_eq!(index.held.load(Ordering::Relaxed), 0);

        // An id queued for an indexed player counts against the bound too.
        index.fill(&p, ids.iter().map(|id| (id.as_bytes(), 1)));
        index.change(&p, b"one-more", Some(2));
        assert_eq!(index.find(&p, b"id-0"), Lookup::Unknown);
        assert_eq!(index.held.load(Ordering::Relaxed), 0);

        // Filled again while indexed (as after a race with a reset), a player is counted once.
        index.fill(&q, [(b"a".as_slice(), 1)]);
        index.fill(&q, [(b"a".as_slice(), 1), (b"b".as_slice(), 2)]);
        assert_eq!(index.held.load(Ordering::Relaxed), 2 + PLAYER_SLOTS);
    }

    #[test]
    fn a_shared_hash_sends_the_lookup_to_the_queue() {
        let mut ids = HashMap::new();
        assert!(add(&mut ids, 7, 1));
        assert!(!add(&mut ids, 7, 1), "the same position again is no change");
        assert!(!add(&mut ids, 7, 2));
        assert_eq!(ids[&7], SHARED);
    }
}

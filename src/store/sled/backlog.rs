//! What the engine knows of the pending client pixels without reading a queue: per player, a
//! [`Summary`] (how many, and two floors), and per brand the depth and the players ranked by backlog,
//! by their oldest pixel and (all brands together) by their earliest expiry.
//!
//! A pending pixel used to cost sled three index keys besides its queue entry (expiry, age, and its
//! share of the player's count), each written when it was queued and removed when it was final. Now a
//! player's [`Summary`] is one key (`n`), written once per transaction that changes the player's
//! queue, and the rest lives here, rebuilt from `n` at open.
//!
//! The floors are **lower bounds**, kept in O(1) per change: a pixel queued lowers them; a pixel that
//! ends leaves them alone, since finding the next oldest or the next expiry would mean reading the queue
//! on the hot path. A floor that has gone stale is made exact when someone needs it (the stats' oldest
//! pixel, the upkeep's due pixels) by reading that player's queue once ([`super::Inner::survey`]). A
//! floor below the truth costs a read; it never hides a pixel, because no pixel of the player is older
//! or expires earlier than its floor.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use crate::ids::{BrandId, PlayerId, PlayerKey};
use crate::store::StoreError;

/// A player's pending client pixels, as far as the engine needs to know them without reading the
/// queue. Stored in `n` (24 bytes, 32 while some wait for consent); a player with none has no summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Summary {
    /// Pending client pixels: the queue cap's count.
    pub count: u64,
    /// No pending pixel of the player was queued before this (Unix ms).
    pub queued_floor: u64,
    /// No pending pixel of the player expires before this (Unix ms).
    pub expiry_floor: u64,
    /// Of the pending pixels, those waiting for consent (the ledger says which, with
    /// [`crate::store::queues::Write::CountWaiting`]).
    pub waiting: u64,
}

/// What one transaction does to a player's pending pixels.
#[derive(Clone, Copy, Debug)]
pub(super) struct Change {
    /// Pixels added (positive) or ended (negative).
    pub delta: i64,
    /// The earliest queue time among the pixels added (`u64::MAX`: none).
    pub queued_min: u64,
    /// The earliest expiry among the pixels added (`u64::MAX`: none).
    pub expiry_min: u64,
    /// Pixels that began (positive) or stopped (negative) waiting for consent.
    pub waiting: i64,
}

impl Default for Change {
    fn default() -> Self {
        Self {
            delta: 0,
            queued_min: u64::MAX,
            expiry_min: u64::MAX,
            waiting: 0,
        }
    }
}

impl Change {
    /// A pixel queued at `queued_at_ms` that expires at `expires_at_ms` joins the queue.
    pub fn add(&mut self, queued_at_ms: u64, expires_at_ms: u64) {
        self.delta += 1;
        self.queued_min = self.queued_min.min(queued_at_ms);
        self.expiry_min = self.expiry_min.min(expires_at_ms);
    }

    /// A pending pixel ends (fired, failed, cancelled, expired or dropped).
    pub fn end(&mut self) {
        self.delta -= 1;
    }
}

impl Summary {
    /// The summary after `change`. An emptied queue has no floors left; a queue that was empty takes
    /// the added pixels' floors; otherwise the floors can only go down (pixels that end leave them as
    /// lower bounds).
    pub fn after(self, change: Change) -> Summary {
        let count = self.count.saturating_add_signed(change.delta);
        if count == 0 {
            return Summary::default();
        }
        let waiting = self
            .waiting
            .saturating_add_signed(change.waiting)
            .min(count);
        if self.count == 0 {
            return Summary {
                count,
                queued_floor: change.queued_min,
                expiry_floor: change.expiry_min,
                waiting,
            };
        }
        Summary {
            count,
            queued_floor: self.queued_floor.min(change.queued_min),
            expiry_floor: self.expiry_floor.min(change.expiry_min),
            waiting,
        }
    }

    /// The value of `n`: count, queued floor, expiry floor, and (when some wait for consent) the
    /// waiting count, each u64 big-endian.
    pub fn encode(&self) -> Encoded {
        let mut bytes = [0; 32];
        bytes[..8].copy_from_slice(&self.count.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.queued_floor.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.expiry_floor.to_be_bytes());
        bytes[24..].copy_from_slice(&self.waiting.to_be_bytes());
        let len = if self.waiting > 0 { 32 } else { 24 };
        Encoded { bytes, len }
    }

    /// Reads a value of `n`. A data dir written before the floors holds the count alone (8 bytes): its
    /// floors are 0, which any pixel respects, and the first survey makes them exact.
    pub fn decode(value: &[u8]) -> Result<Summary, StoreError> {
        let word = |i: usize| {
            value
                .get(i * 8..i * 8 + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
        };
        match value.len() {
            8 | 24 | 32 => Ok(Summary {
                count: word(0).unwrap_or(0),
                queued_floor: word(1).unwrap_or(0),
                expiry_floor: word(2).unwrap_or(0),
                waiting: word(3).unwrap_or(0),
            }),
            _ => Err(StoreError::corrupt("corrupt pending summary")),
        }
    }
}

/// A [`Summary`] as stored: its first `len` bytes.
pub(super) struct Encoded {
    bytes: [u8; 32],
    len: usize,
}

impl Encoded {
    /// The stored bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// One brand's backlog.
struct BrandBacklog {
    /// The brand's id, shared by every entry of [`Backlogs::expiry`] (a million players would
    /// otherwise hold a million copies of it).
    id: BrandId,
    /// Its players with pending pixels, and their summaries.
    players: HashMap<PlayerId, Summary>,
    /// Pending client pixels of all its players.
    depth: u64,
    /// Of them, those waiting for consent.
    waiting: u64,
    /// Its players with pending pixels, biggest backlog first.
    ranking: BTreeSet<(Reverse<u64>, PlayerId)>,
    /// Its players with pending pixels by queued floor: the first holds the brand's oldest pixel once
    /// its floor is exact.
    oldest: BTreeSet<(u64, PlayerId)>,
}

impl BrandBacklog {
    fn new(id: BrandId) -> Self {
        Self {
            id,
            players: HashMap::new(),
            depth: 0,
            waiting: 0,
            ranking: BTreeSet::new(),
            oldest: BTreeSet::new(),
        }
    }
}

/// Every player's [`Summary`] and the orders built on them. Changed only under the stripe lock of the
/// player concerned, after the journal record that changed the player's queue was written.
///
/// About 200 bytes per player with pending pixels (a million such players: 200 MB), nothing per pixel.
#[derive(Default)]
pub(super) struct Backlogs {
    brands: HashMap<BrandId, BrandBacklog>,
    /// Players with pending pixels by expiry floor.
    expiry: BTreeSet<(u64, PlayerKey)>,
}

impl Backlogs {
    /// The player's summary (the default when nothing is pending).
    pub fn summary(&self, key: &PlayerKey) -> Summary {
        self.brands
            .get(&key.brand)
            .and_then(|brand| brand.players.get(&key.player))
            .copied()
            .unwrap_or_default()
    }

    /// Replaces the player's summary, keeping every order and the brand's depth in step.
    pub fn set(&mut self, key: &PlayerKey, after: Summary) {
        let before = self.summary(key);
        if before == after {
            return;
        }
        let brand = self
            .brands
            .entry(key.brand.clone())
            .or_insert_with(|| BrandBacklog::new(key.brand.clone()));
        brand.depth = brand.depth - before.count + after.count;
        brand.waiting = brand.waiting - before.waiting + after.waiting;
        if before.count > 0 && after.count > 0 {
            // Still pending (a pixel added or ended): only the orders whose key moved change, most
            // often the ranking alone (a pixel queued later lowers neither floor).
            let player = &key.player;
            if before.count != after.count {
                brand
                    .ranking
                    .remove(&(Reverse(before.count), player.clone()));
                brand.ranking.insert((Reverse(after.count), player.clone()));
            }
            if before.queued_floor != after.queued_floor {
                brand.oldest.remove(&(before.queued_floor, player.clone()));
                brand.oldest.insert((after.queued_floor, player.clone()));
            }
            if let Some(summary) = brand.players.get_mut(player) {
                *summary = after;
            }
            if before.expiry_floor != after.expiry_floor {
                let key = PlayerKey::new(brand.id.clone(), player.clone());
                self.expiry.remove(&(before.expiry_floor, key.clone()));
                self.expiry.insert((after.expiry_floor, key));
            }
            return;
        }
        let key = PlayerKey::new(brand.id.clone(), key.player.clone());
        if before.count > 0 {
            brand
                .ranking
                .remove(&(Reverse(before.count), key.player.clone()));
            brand
                .oldest
                .remove(&(before.queued_floor, key.player.clone()));
            brand.players.remove(&key.player);
            self.expiry.remove(&(before.expiry_floor, key.clone()));
        }
        if after.count > 0 {
            brand
                .ranking
                .insert((Reverse(after.count), key.player.clone()));
            brand
                .oldest
                .insert((after.queued_floor, key.player.clone()));
            brand.players.insert(key.player.clone(), after);
            self.expiry.insert((after.expiry_floor, key));
        }
    }

    /// The brand's pending client pixels.
    pub fn depth(&self, brand: &BrandId) -> u64 {
        self.brands.get(brand).map_or(0, |b| b.depth)
    }

    /// The brand's pending pixels waiting for consent.
    pub fn waiting(&self, brand: &BrandId) -> u64 {
        self.brands.get(brand).map_or(0, |b| b.waiting)
    }

    /// The brand's `limit` biggest backlogs.
    pub fn top(&self, brand: &BrandId, limit: usize) -> Vec<(u64, PlayerId)> {
        self.brands.get(brand).map_or_else(Vec::new, |b| {
            b.ranking
                .iter()
                .take(limit)
                .map(|(Reverse(count), player)| (*count, player.clone()))
                .collect()
        })
    }

    /// The brand's players with the lowest queued floors, lowest first.
    pub fn oldest(&self, brand: &BrandId, limit: usize) -> Vec<(u64, PlayerId)> {
        self.brands
            .get(brand)
            .map_or_else(Vec::new, |b| b.oldest.iter().take(limit).cloned().collect())
    }

    /// Up to `limit` players whose expiry floor is at or before `until_ms`, lowest first, passing over
    /// those `skip` names; and the first one left out (`None`: none was).
    pub fn expiring(
        &self,
        until_ms: u64,
        skip: impl Fn(&PlayerKey) -> bool,
        limit: usize,
    ) -> (Vec<PlayerKey>, Option<(u64, PlayerKey)>) {
        let mut due = self
            .expiry
            .iter()
            .take_while(|(floor, _)| *floor <= until_ms)
            .filter(|(_, key)| !skip(key));
        let listed = due
            .by_ref()
            .take(limit)
            .map(|(_, key)| key.clone())
            .collect();
        (listed, due.next().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(player: &str) -> PlayerKey {
        PlayerKey::new(
            BrandId::parse("b").unwrap(),
            PlayerId::parse(player).unwrap(),
        )
    }

    fn added(pixels: &[(u64, u64)]) -> Change {
        let mut change = Change::default();
        for &(queued, expires) in pixels {
            change.add(queued, expires);
        }
        change
    }

    #[test]
    fn floors_are_lower_bounds_kept_without_reading_the_queue() {
        let first = Summary::default().after(added(&[(10, 500), (11, 400)]));
        assert_eq!(
            first,
            Summary {
                count: 2,
                queued_floor: 10,
                expiry_floor: 400,
                waiting: 0,
            }
        );
        // Later pixels never raise a floor; one that ends leaves the floors as they were.
        let more = first.after(added(&[(20, 300)]));
        assert_eq!(
            (more.count, more.queued_floor, more.expiry_floor),
            (3, 10, 300)
        );
        let mut end = Change::default();
        end.end();
        let fewer = more.after(end);
        assert_eq!(
            (fewer.count, fewer.queued_floor, fewer.expiry_floor),
            (2, 10, 300)
        );
        // An emptied queue forgets its floors; the next pixel sets them afresh.
        let mut all = Change::default();
        all.end();
        all.end();
        assert_eq!(fewer.after(all), Summary::default());
        assert_eq!(
            Summary::default().after(added(&[(30, 900)])).queued_floor,
            30
        );
    }

    #[test]
    fn a_summary_reads_back_and_an_old_count_alone_has_zero_floors() {
        let s = Summary {
            count: 7,
            queued_floor: 1_700_000_000_000,
            expiry_floor: 1_800_000_000_000,
            waiting: 0,
        };
        assert_eq!(Summary::decode(s.encode().as_slice()).unwrap(), s);
        assert_eq!(s.encode().as_slice().len(), 24, "no waiting count stored");
        let waiting = Summary { waiting: 3, ..s };
        assert_eq!(waiting.encode().as_slice().len(), 32);
        assert_eq!(
            Summary::decode(waiting.encode().as_slice()).unwrap(),
            waiting
        );
        let old = Summary::decode(&7u64.to_be_bytes()).unwrap();
        assert_eq!((old.count, old.queued_floor, old.expiry_floor), (7, 0, 0));
        assert!(Summary::decode(b"short").is_err());
    }

    #[test]
    fn the_orders_follow_every_change_of_a_summary() {
        let mut backlogs = Backlogs::default();
        let (a, b) = (key("a"), key("b"));
        let brand = a.brand.clone();
        backlogs.set(&a, Summary::default().after(added(&[(5, 50), (6, 60)])));
        backlogs.set(&b, Summary::default().after(added(&[(3, 70)])));
        assert_eq!(backlogs.depth(&brand), 3);
        assert_eq!(backlogs.top(&brand, 1), [(2, a.player.clone())]);
        assert_eq!(backlogs.oldest(&brand, 1), [(3, b.player.clone())]);
        let none = |_: &PlayerKey| false;
        let (due, next) = backlogs.expiring(60, none, 10);
        assert_eq!(due, vec![a.clone()]);
        assert_eq!(next, None, "b's floor is 70, after 60");
        let (due, next) = backlogs.expiring(100, none, 1);
        assert_eq!((due, next), (vec![a.clone()], Some((70, b.clone()))));
        let (due, next) = backlogs.expiring(100, |k| *k == a, 5);
        assert_eq!((due, next), (vec![b.clone()], None), "a is passed over");

        backlogs.set(&b, Summary::default());
        assert_eq!(backlogs.depth(&brand), 2);
        assert_eq!(backlogs.oldest(&brand, 5), [(5, a.player.clone())]);
        assert_eq!(backlogs.expiring(u64::MAX, none, 5).0, vec![a.clone()]);
        assert_eq!(backlogs.summary(&b), Summary::default());
    }

    #[test]
    fn a_pending_player_s_orders_follow_each_floor_that_moves() {
        let mut backlogs = Backlogs::default();
        let (a, b) = (key("a"), key("b"));
        let brand = a.brand.clone();
        let a_first = Summary::default().after(added(&[(5, 50)]));
        backlogs.set(&a, a_first);
        backlogs.set(&b, Summary::default().after(added(&[(4, 40)])));
        let none = |_: &PlayerKey| false;

        // A pixel queued later with an earlier expiry: a's count and expiry floor move, its age does not.
        let a_more = a_first.after(added(&[(9, 20)]));
        backlogs.set(&a, a_more);
        assert_eq!(backlogs.depth(&brand), 3);
        assert_eq!(backlogs.top(&brand, 1), [(2, a.player.clone())]);
        assert_eq!(backlogs.oldest(&brand, 1), [(4, b.player.clone())]);
        assert_eq!(backlogs.expiring(30, none, 5).0, vec![a.clone()]);

        // A survey makes a's floors exact (its oldest pixel ended): the count stays, both floors rise.
        let exact = Summary {
            count: 2,
            queued_floor: 9,
            expiry_floor: 60,
            waiting: 0,
        };
        backlogs.set(&a, exact);
        assert_eq!(backlogs.summary(&a), exact);
        assert_eq!(
            backlogs.oldest(&brand, 5),
            [(4, b.player.clone()), (9, a.player.clone())]
        );
        assert_eq!(backlogs.expiring(59, none, 5).0, vec![b.clone()]);
        assert_eq!(backlogs.expiring(60, none, 5).0, vec![b.clone(), a.clone()]);
        assert_eq!(backlogs.top(&brand, 1), [(2, a.player.clone())]);
    }
}

//! What the journal holds and sled does not hold yet.
//!
//! A transaction's writes are key changes of the `data` tree (the layout in [`super`]). They become
//! durable in the journal, and sled receives them later, off the request path, in a checkpoint. Until
//! then they live here: per key, the versions written since the last checkpoint, each with the journal
//! position of its record. Every read of the engine looks here first and falls back to sled
//! ([`Merged`] does it for ranges), so a reader never sees sled behind the journal.
//!
//! A checkpoint takes, for every key, its newest version at or before a durable position `P`
//! ([`Overlay::snapshot`]), writes them to sled with `P` itself, and then drops the versions at or
//! before `P` ([`Overlay::prune`]). Versions after `P` stay: a key written again while the checkpoint
//! ran keeps its newer value here, and its value as of `P` is what sled gets, so sled always holds
//! exactly the journal up to `P`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

use ::sled::IVec;

use crate::store::StoreError;

/// One key change: a value, or `None` for a removal.
pub(super) type Op = (IVec, Option<IVec>);

/// Bytes counted for each version besides its key and value: the map's node, the version list.
const VERSION_OVERHEAD: usize = 96;

/// The key changes not yet in sled, by key, each with the versions since the last checkpoint.
#[derive(Default)]
pub(super) struct Overlay {
    entries: BTreeMap<IVec, Entry>,
    /// About how much memory the versions take: what the writers' back-pressure reads.
    bytes: usize,
}

/// One key's versions since the last checkpoint, oldest first.
#[derive(Default)]
struct Entry {
    versions: Vec<(u64, Option<IVec>)>,
    /// Known not to be in sled: the engine did not hold the key when its first version here was
    /// written (a fresh sequence number is in it: a new queue page, or one split off a page; or it is
    /// the summary of a player who had nothing pending), or sled's last version of it was a removal. A
    /// removal of such a key need not reach sled at all: a pixel queued and acknowledged between two
    /// checkpoints costs sled nothing for its queue page and its player's summary.
    absent: bool,
}

impl Entry {
    /// Drops the versions at or before `upto`; returns the bytes they took.
    fn drop_upto(&mut self, key: &IVec, upto: u64) -> usize {
        let done = self
            .versions
            .partition_point(|(position, _)| *position <= upto);
        if done == 0 {
            return 0;
        }
        let mut freed = 0;
        let mut last_removed = false;
        for (_, value) in self.versions.drain(..done) {
            last_removed = value.is_none();
            freed += key.len() + VERSION_OVERHEAD + value_len(&value);
        }
        // sled now holds the last version dropped: a value, or (written or not) no key.
        self.absent = last_removed;
        freed
    }
}

impl Overlay {
    /// The newest version of `key`: `Some(None)` when it was removed, `None` when the overlay does not
    /// know it (sled has the answer).
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<IVec>> {
        self.entries
            .get(key)
            .and_then(|entry| entry.versions.last())
            .map(|(_, value)| value.clone())
    }

    /// The newest version of every key in the range, in key order (`rev`: descending).
    pub(super) fn range(
        &self,
        low: Bound<&[u8]>,
        high: Bound<&[u8]>,
        rev: bool,
    ) -> Vec<(IVec, Option<IVec>)> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        let newest = |(k, entry): (&IVec, &Entry)| {
            entry.versions.last().map(|(_, v)| (k.clone(), v.clone()))
        };
        let range = self.entries.range::<[u8], _>((low, high));
        if rev {
            range.rev().filter_map(newest).collect()
        } else {
            range.filter_map(newest).collect()
        }
    }

    /// Adds the changes of the record that ends at journal position `position` (above every position
    /// added before). `fresh(i)` says that the `i`th change puts a key the engine does not hold. That
    /// is enough to know sled does not hold it either when the key has no versions here: a key's
    /// versions leave only once sled has applied them, so without any, sled holds what the engine
    /// holds. With versions here, the entry already knows.
    pub(super) fn add(&mut self, ops: Vec<Op>, fresh: impl Fn(usize) -> bool, position: u64) {
        for (i, (key, value)) in ops.into_iter().enumerate() {
            let key_bytes = key.len() + VERSION_OVERHEAD;
            let entry = self.entries.entry(key).or_insert_with(|| Entry {
                versions: Vec::new(),
                absent: fresh(i),
            });
            match entry.versions.last_mut() {
                // Twice in one record: the later change wins.
                Some(last) if last.0 == position => {
                    self.bytes -= value_len(&last.1);
                    self.bytes += value_len(&value);
                    last.1 = value;
                }
                _ => {
                    self.bytes += key_bytes + value_len(&value);
                    entry.versions.push((position, value));
                }
            }
        }
    }

    /// For every key with a version at or before `upto`, the newest such version: what sled must hold
    /// to hold the journal up to `upto`. A removal of a key sled does not hold is left out.
    pub(super) fn snapshot(&self, upto: u64) -> Vec<Op> {
        self.entries
            .iter()
            .filter_map(|(key, entry)| {
                let (_, value) = entry
                    .versions
                    .iter()
                    .take_while(|(position, _)| *position <= upto)
                    .last()?;
                if value.is_none() && entry.absent {
                    return None;
                }
                Some((key.clone(), value.clone()))
            })
            .collect()
    }

    /// Drops the versions at or before `upto` of `keys`, which sled has applied now (a slice of a
    /// checkpoint): readers find them there, and writers waiting for room get it.
    pub(super) fn prune_keys<'a>(&mut self, keys: impl IntoIterator<Item = &'a IVec>, upto: u64) {
        for key in keys {
            let Some(entry) = self.entries.get_mut(key) else {
                continue;
            };
            self.bytes -= entry.drop_upto(key, upto);
            if entry.versions.is_empty() {
                self.entries.remove(key);
            }
        }
    }

    /// Drops the versions at or before `upto`, which sled holds now.
    pub(super) fn prune(&mut self, upto: u64) {
        let mut freed = 0;
        self.entries.retain(|key, entry| {
            freed += entry.drop_upto(key, upto);
            !entry.versions.is_empty()
        });
        self.bytes -= freed;
    }

    /// About how many bytes the versions take.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether it holds nothing.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn value_len(value: &Option<IVec>) -> usize {
    value.as_ref().map_or(0, |v| v.len())
}

/// A range of the `data` tree as the engine sees it: the overlay's newest versions over sled's, in key
/// order (or reversed), removals hidden. The overlay's part is copied when the range is opened, before
/// sled's iterator starts, so a checkpoint running meanwhile cannot hide a key from both.
pub(super) struct Merged<I: Iterator> {
    overlay: std::iter::Peekable<std::vec::IntoIter<(IVec, Option<IVec>)>>,
    sled: std::iter::Peekable<I>,
    rev: bool,
}

impl<I: Iterator<Item = ::sled::Result<(IVec, IVec)>>> Merged<I> {
    pub(super) fn new(overlay: Vec<(IVec, Option<IVec>)>, sled: I, rev: bool) -> Self {
        Self {
            overlay: overlay.into_iter().peekable(),
            sled: sled.peekable(),
            rev,
        }
    }

    /// The keys only.
    pub(super) fn keys(self) -> impl Iterator<Item = Result<IVec, StoreError>> {
        self.map(|entry| entry.map(|(k, _)| k))
    }
}

impl<I: Iterator<Item = ::sled::Result<(IVec, IVec)>>> Iterator for Merged<I> {
    type Item = Result<(IVec, IVec), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.overlay.peek(), self.sled.peek()) {
                (None, None) => return None,
                (_, Some(Err(_))) => {
                    let Some(Err(e)) = self.sled.next() else {
                        unreachable!("peeked an error")
                    };
                    return Some(Err(super::backend(e)));
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((o, _)), Some(Ok((s, _)))) => {
                    let order = o.as_ref().cmp(s.as_ref());
                    if self.rev { order.reverse() } else { order }
                }
            };
            if order == Ordering::Greater {
                return self.sled.next().map(|e| e.map_err(super::backend));
            }
            if order == Ordering::Equal {
                self.sled.next(); // the overlay's version is newer
            }
            let (key, value) = self.overlay.next().expect("peeked");
            if let Some(value) = value {
                return Some(Ok((key, value)));
            }
        }
    }
}

/// The journal record of one transaction: the highest sequence number given out when it was written,
/// and its key changes, in order.
///
/// `version (1) | seq (u64 LE) | per change: kind (1 = put, 0 = remove) | key length (u32 LE) | key |
/// (put only) value length (u32 LE) | value`
pub(super) fn encode(seq: u64, ops: &[Op]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| v.len()))
        .sum();
    let mut out = Vec::with_capacity(9 + size);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&seq.to_le_bytes());
    for (key, value) in ops {
        out.push(u8::from(value.is_some()));
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        if let Some(value) = value {
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
    }
    out
}

const RECORD_VERSION: u8 = 1;

/// Reads a record [`encode`] wrote. Its frame's CRC held, so a record that does not read is a bug or
/// a journal from another program: the engine refuses it rather than guess.
pub(super) fn decode(record: &[u8]) -> Result<(u64, Vec<Op>), StoreError> {
    let bad = || StoreError::corrupt("a journal record does not read as the engine's");
    let mut rest = record;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        if rest.len() < n {
            return Err(bad());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    if take(1)? != [RECORD_VERSION] {
        return Err(bad());
    }
    let seq = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
    let mut ops = Vec::new();
    loop {
        let kind = match take(1) {
            Ok(kind) => kind[0],
            Err(_) => break,
        };
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let key = IVec::from(take(len)?);
        let value = match kind {
            0 => None,
            1 => {
                let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
                Some(IVec::from(take(len)?))
            }
            _ => return Err(bad()),
        };
        ops.push((key, value));
    }
    Ok((seq, ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        (IVec::from(k.as_bytes()), Some(IVec::from(v.as_bytes())))
    }

    fn remove(k: &str) -> Op {
        (IVec::from(k.as_bytes()), None)
    }

    fn text(entries: impl Iterator<Item = Result<(IVec, IVec), StoreError>>) -> Vec<String> {
        entries
            .map(|e| {
                let (k, v) = e.unwrap();
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect()
    }

    #[test]
    fn a_record_reads_back_as_written_and_a_cut_one_does_not() {
        let ops = vec![put("a", "1"), remove("b"), put("c", "")];
        let record = encode(42, &ops);
        assert_eq!(decode(&record).unwrap(), (42, ops));
        assert!(decode(&record[..record.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn ranges_show_the_overlay_over_sled_in_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let db = ::sled::Config::new().path(dir.path()).open().unwrap();
        for (k, v) in [("a", "sled"), ("b", "sled"), ("d", "sled")] {
            db.insert(k, v).unwrap();
        }
        let mut overlay = Overlay::default();
        overlay.add(
            vec![put("b", "new"), remove("d"), put("c", "new")],
            |_| false,
            10,
        );
        let forward = overlay.range(Bound::Unbounded, Bound::Unbounded, false);
        assert_eq!(
            text(Merged::new(forward, db.iter(), false)),
            ["a=sled", "b=new", "c=new"]
        );
        let backward = overlay.range(Bound::Unbounded, Bound::Unbounded, true);
        assert_eq!(
            text(Merged::new(backward, db.iter().rev(), true)),
            ["c=new", "b=new", "a=sled"]
        );
    }

    #[test]
    fn a_checkpoint_takes_each_keys_value_as_of_its_position_and_keeps_what_came_after() {
        let mut overlay = Overlay::default();
        overlay.add(vec![put("a", "1"), put("b", "1")], |_| false, 10);
        overlay.add(vec![put("a", "2"), remove("a")], |_| false, 20);
        overlay.add(vec![put("b", "3")], |_| false, 30);
        let mut snapshot = overlay.snapshot(20);
        snapshot.sort();
        assert_eq!(snapshot, vec![remove("a"), put("b", "1")]);
        overlay.prune(20);
        assert_eq!(overlay.get(b"a"), None, "sled holds it now");
        assert_eq!(overlay.get(b"b"), Some(Some(IVec::from("3"))));
        overlay.prune(30);
        assert!(overlay.is_empty());
        assert_eq!(overlay.bytes(), 0);
    }

    #[test]
    fn a_key_put_and_removed_between_two_checkpoints_never_reaches_sled_unless_sled_had_it() {
        let mut overlay = Overlay::default();
        // `q1` is new (fresh); `n` may be in sled.
        overlay.add(vec![put("q1", "px"), put("n", "1")], |i| i == 0, 10);
        overlay.add(vec![remove("q1"), remove("n")], |_| false, 20);
        assert_eq!(overlay.snapshot(20), vec![remove("n")]);
        overlay.prune(20);
        assert!(overlay.is_empty());
        // Checkpointed while still there, its removal must reach sled later.
        overlay.add(vec![put("q2", "px")], |_| true, 30);
        overlay.add(vec![remove("q2")], |_| false, 40);
        assert_eq!(overlay.snapshot(30), vec![put("q2", "px")]);
        overlay.prune(30);
        assert_eq!(overlay.snapshot(40), vec![remove("q2")]);
        overlay.prune(40);
        assert!(overlay.is_empty());
    }
}

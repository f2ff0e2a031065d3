//! The values of the queue (`q`): pages of entries, each entry a pending pixel and, in entries written
//! since the record moved in, its record.
//!
//! sled costs about the same per key whatever its size (`pixelhub-bench --sled-keys`: some 7 µs a key
//! when the checkpoint writes it), so a pending pixel is kept in as few keys as its reads allow: its
//! queue entry, holding the pixel and its record, and its report row in `r`, which holds the pixel's
//! sequence number (the report finds the record through it) and shares its key with the rows of pixels
//! queued with it ([`super::report::Bucket`]). The record gets its own key `i` only when
//! the pixel ends, where final records and postbacks have always been kept.
//!
//! The value is `TAG`, the pixel id's length (u16 BE) and bytes, the pixel's JSON length (u32 BE) and
//! bytes, then the record's JSON. The id comes first so the engine's index of pending ids
//! ([`super::PendingIds`]) is filled without parsing JSON. Entries written before (the pixel's JSON
//! alone, which starts with `{`) keep their record in `i`; both kinds live side by side, and the old
//! kind goes as those pixels end.
//!
//! # Pages
//! A queue value is a *page*: the entries one transaction queued for one player, up to
//! [`PAGE_ENTRIES`] or [`PAGE_BYTES`], under the key of the lowest one's position. sled costs about
//! the same per key whatever its size, so a batch of a hundred pixels for one player costs the
//! checkpoint some seven keys, not a hundred. A page of one entry at its key's position is stored as
//! that entry alone (either kind above), exactly as before pages: so a player with one pixel costs
//! what it did, and data dirs written before pages read as pages of one. A page of more is `PAGE`,
//! its entry count (u16 BE), then per entry its position (u64 BE), length (u32 BE)
//! and bytes.
//!
//! Positions come from one counter shared by every player and postback, so a page's are rising but not
//! consecutive; a transaction holds its player's stripe lock while it takes them, so one player's
//! pages hold disjoint, rising ranges, and the entry at a position is in the page with the greatest key
//! at or before it. A page keeps its key for life: it is never appended to nor merged with another
//! (a new page's key is then one sled has never held, which is what lets the overlay drop a page put
//! and removed between two checkpoints). Entries leave it (their pixel ended), their record changes
//! (a lease), and it is split when a lease's window ends inside it (see `SledTx::finish_pages`), so
//! the acks of that window remove a whole page rather than rewrite what is left.

use super::backend;
use crate::pixel::QueuedPixel;
use crate::store::StoreError;
use crate::store::queues::Record;

/// The first byte of an entry holding its record (JSON starts with `{`).
const TAG: u8 = 0x01;

/// The first byte of a page of more than one entry, or of one entry away from its key's position.
const PAGE: u8 = 0x02;

/// Most entries a transaction puts in one page.
pub(super) const PAGE_ENTRIES: usize = 16;

/// Most bytes of entries a transaction puts in one page (a bigger entry gets a page of its own). sled
/// 0.34 splits a leaf at 17 keys whatever their size, and writes a node bigger than a quarter of its
/// 512 KiB segment to a file of its own (a blob): 17 pages of this size and their keys stay under it.
pub(super) const PAGE_BYTES: usize = 6 * 1024;

/// Bytes a page spends on each entry besides the entry: its position and length.
const PAGE_ENTRY_HEAD: usize = 12;

/// The entries of the queue value stored under position `first` (its key's), in order: position and
/// the entry's bytes.
pub(super) fn entries(first: u64, value: &[u8]) -> Entries<'_> {
    match value.strip_prefix(&[PAGE]) {
        Some(rest) => match rest.split_first_chunk::<2>() {
            Some((count, rest)) => Entries {
                single: None,
                left: u16::from_be_bytes(*count),
                rest,
            },
            // Read as a page that says it holds one entry and has none.
            None => Entries {
                single: None,
                left: 1,
                rest: &[],
            },
        },
        None => Entries {
            single: Some((first, value)),
            left: 0,
            rest: &[],
        },
    }
}

/// The entries of one page, in order; a damaged page ends with an error.
pub(super) struct Entries<'a> {
    single: Option<(u64, &'a [u8])>,
    /// Entries of the page not yet read.
    left: u16,
    rest: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(u64, &'a [u8]), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(single) = self.single.take() {
            return Some(Ok(single));
        }
        if self.left == 0 {
            return (!std::mem::take(&mut self.rest).is_empty()).then(|| Err(page_corrupt()));
        }
        self.left -= 1;
        let rest = std::mem::take(&mut self.rest);
        let read = || {
            let (seq, rest) = rest.split_first_chunk::<8>()?;
            let (len, rest) = rest.split_first_chunk::<4>()?;
            let (entry, rest) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
            Some((u64::from_be_bytes(*seq), entry, rest))
        };
        Some(match read() {
            Some((seq, entry, rest)) => {
                self.rest = rest;
                Ok((seq, entry))
            }
            None => {
                self.left = 0;
                Err(page_corrupt())
            }
        })
    }
}

fn page_corrupt() -> StoreError {
    StoreError::corrupt("corrupt queue page")
}

/// The entry at position `seq` in the page stored under `first`, if the page holds it.
pub(super) fn find(first: u64, value: &[u8], seq: u64) -> Result<Option<&[u8]>, StoreError> {
    for entry in entries(first, value) {
        let (at, bytes) = entry?;
        if at == seq {
            return Ok(Some(bytes));
        }
        if at > seq {
            break;
        }
    }
    Ok(None)
}

/// The value of a page under position `first` holding `entries` (rising positions, at least one).
pub(super) fn page(first: u64, mut entries: Vec<(u64, Vec<u8>)>) -> Vec<u8> {
    if let [(seq, _)] = entries.as_slice()
        && *seq == first
    {
        return entries.pop().expect("one entry").1;
    }
    let size = entries
        .iter()
        .map(|(_, e)| PAGE_ENTRY_HEAD + e.len())
        .sum::<usize>();
    let mut value = Vec::with_capacity(3 + size);
    value.push(PAGE);
    value.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (seq, entry) in &entries {
        value.extend_from_slice(&seq.to_be_bytes());
        value.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        value.extend_from_slice(entry);
    }
    value
}

/// Cuts a transaction's new entries for one player (rising positions) into pages of at most
/// [`PAGE_ENTRIES`] and [`PAGE_BYTES`].
pub(super) fn paginate(entries: Vec<(u64, Vec<u8>)>) -> Vec<Vec<(u64, Vec<u8>)>> {
    let mut pages: Vec<Vec<(u64, Vec<u8>)>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let size = PAGE_ENTRY_HEAD + entry.1.len();
        match pages.last_mut() {
            Some(page) if page.len() < PAGE_ENTRIES && bytes + size <= PAGE_BYTES => {
                bytes += size;
                page.push(entry);
            }
            _ => {
                bytes = size;
                pages.push(vec![entry]);
            }
        }
    }
    pages
}

/// An entry's parts, borrowed from its value.
struct Parts<'a> {
    id: &'a [u8],
    pixel: &'a [u8],
    record: &'a [u8],
}

fn corrupt() -> StoreError {
    StoreError::corrupt("corrupt queue entry")
}

/// The parts of an entry holding its record; `None` for an entry of the old kind.
fn parts(value: &[u8]) -> Result<Option<Parts<'_>>, StoreError> {
    let Some(rest) = value.strip_prefix(&[TAG]) else {
        return Ok(None);
    };
    let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(corrupt)?;
    let (id, rest) = rest
        .split_at_checked(u16::from_be_bytes(*len) as usize)
        .ok_or_else(corrupt)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let (pixel, record) = rest
        .split_at_checked(u32::from_be_bytes(*len) as usize)
        .ok_or_else(corrupt)?;
    Ok(Some(Parts { id, pixel, record }))
}

/// Bytes reserved for a record's JSON (a client pixel's is 600 to 700): one allocation, no regrowth.
const RECORD_ROOM: usize = 1024;

/// An entry's value up to its pixel's JSON, which `pixel` writes; returns the value, to which the
/// record's JSON is then added.
fn start(id: &[u8], pixel_room: usize, pixel: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut value = Vec::with_capacity(7 + id.len() + pixel_room + RECORD_ROOM);
    value.push(TAG);
    value.extend_from_slice(&(id.len() as u16).to_be_bytes());
    value.extend_from_slice(id);
    let at = value.len();
    value.extend_from_slice(&[0; 4]);
    pixel(&mut value);
    let len = (value.len() - at - 4) as u32;
    value[at..at + 4].copy_from_slice(&len.to_be_bytes());
    value
}

fn finish(mut value: Vec<u8>, record: &Record) -> Vec<u8> {
    serde_json::to_writer(&mut value, &record.stored())
        .expect("our stored types serialise infallibly");
    value
}

fn assemble(id: &[u8], pixel: &[u8], record: &Record) -> Vec<u8> {
    let value = start(id, pixel.len(), |value| value.extend_from_slice(pixel));
    finish(value, record)
}

/// The entry of a new pixel, with its record.
pub(super) fn encode(pixel: &QueuedPixel, record: &Record) -> Vec<u8> {
    let value = start(pixel.id.as_str().as_bytes(), RECORD_ROOM, |value| {
        serde_json::to_writer(value, pixel).expect("our stored types serialise infallibly")
    });
    finish(value, record)
}

/// The entry `value` with its record replaced by `record` (the pixel's bytes as they are); `None` for an
/// entry of the old kind, whose record is kept in `i`.
pub(super) fn with_record(value: &[u8], record: &Record) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(parts(value)?.map(|p| assemble(p.id, p.pixel, record)))
}

/// The pixel of an entry of either kind.
pub(super) fn pixel(value: &[u8]) -> Result<QueuedPixel, StoreError> {
    let json = parts(value)?.map_or(value, |p| p.pixel);
    serde_json::from_slice(json).map_err(backend)
}

/// The record an entry holds; `None` for an entry of the old kind.
pub(super) fn record(value: &[u8]) -> Result<Option<Record>, StoreError> {
    match parts(value)? {
        Some(p) => serde_json::from_slice(p.record).map(Some).map_err(backend),
        None => Ok(None),
    }
}

/// The pixel id of an entry holding its record, read without parsing JSON; `None` for the old kind.
pub(super) fn id(value: &[u8]) -> Result<Option<&[u8]>, StoreError> {
    Ok(parts(value)?.map(|p| p.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Delivery, Target};
    use crate::ids::{PixelId, PlayerId};
    use crate::pixel::PixelBody;

    fn sample() -> (QueuedPixel, Record) {
        let id = PixelId::parse("px-1").unwrap();
        let body = PixelBody::Js { code: "1".into() };
        let pixel = QueuedPixel {
            id: id.clone(),
            body,
            trigger: Some("ftd".into()),
            tcf_vendor_id: None,
            queued_at_ms: 5,
            expires_at_ms: 9,
        };
        let delivery = Delivery::new(
            id,
            PlayerId::parse("p").unwrap(),
            Target::Client(&pixel.body),
            pixel.trigger.clone(),
            None,
            5,
        );
        let record = Record {
            seq: 7,
            post: None,
            delivery,
        };
        (pixel, record)
    }

    #[test]
    fn an_entry_gives_back_its_pixel_record_and_id() {
        let (pixel, record) = sample();
        let value = encode(&pixel, &record);
        assert_eq!(super::pixel(&value).unwrap(), pixel);
        assert_eq!(super::record(&value).unwrap(), Some(record.clone()));
        assert_eq!(id(&value).unwrap(), Some(b"px-1".as_slice()));

        let mut sent = record.clone();
        sent.delivery.note_sent(6);
        let value = with_record(&value, &sent).unwrap().unwrap();
        assert_eq!(super::pixel(&value).unwrap(), pixel);
        assert_eq!(super::record(&value).unwrap(), Some(sent));
    }

    #[test]
    fn an_entry_of_the_old_kind_is_its_pixel_alone() {
        let (pixel, record) = sample();
        let value = super::super::json(&pixel);
        assert_eq!(super::pixel(&value).unwrap(), pixel);
        assert_eq!(super::record(&value).unwrap(), None);
        assert_eq!(id(&value).unwrap(), None);
        assert_eq!(with_record(&value, &record).unwrap(), None);
    }

    #[test]
    fn a_page_gives_back_its_entries_and_one_at_its_own_position_is_the_entry_alone() {
        let (pixel, record) = sample();
        let one = encode(&pixel, &record);
        assert_eq!(page(7, vec![(7, one.clone())]), one, "as before pages");
        let moved = page(7, vec![(9, one.clone())]);
        assert_eq!(
            moved[0], PAGE,
            "an entry away from its key's position says where it is"
        );
        let value = page(
            7,
            vec![(7, one.clone()), (12, one.clone()), (30, one.clone())],
        );
        let read: Vec<(u64, &[u8])> = entries(7, &value).map(Result::unwrap).collect();
        assert_eq!(read, [(7, &one[..]), (12, &one[..]), (30, &one[..])]);
        assert_eq!(find(7, &value, 12).unwrap(), Some(&one[..]));
        assert_eq!(find(7, &value, 13).unwrap(), None);
        assert_eq!(find(9, &moved, 9).unwrap(), Some(&one[..]));
        for cut in 1..value.len() - 1 {
            let last = entries(7, &value[..cut]).last().unwrap();
            assert!(last.is_err(), "cut at {cut}: the damage is reported");
        }
    }

    #[test]
    fn new_entries_are_paged_by_count_and_by_bytes() {
        let small = |n: u64| (n, vec![0u8; 100]);
        let pages = paginate((0..40).map(small).collect());
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            [PAGE_ENTRIES, PAGE_ENTRIES, 40 - 2 * PAGE_ENTRIES]
        );
        let big = |n: u64| (n, vec![0u8; 2_000]);
        let pages = paginate((0..7).map(big).collect());
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
        assert!(
            pages
                .iter()
                .all(|p| page(p[0].0, p.clone()).len() <= 3 + PAGE_BYTES)
        );
        let huge = paginate(vec![(1, vec![0u8; 3 * PAGE_BYTES]), small(2)]);
        assert_eq!(
            huge.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 1],
            "alone"
        );
    }

    #[test]
    fn a_cut_entry_is_an_error_not_a_panic() {
        let (pixel, record) = sample();
        let value = encode(&pixel, &record);
        for cut in 1..12 {
            assert!(super::pixel(&value[..cut]).is_err(), "cut at {cut}");
        }
    }
}

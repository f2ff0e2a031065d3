//! The value of a queue entry (`q`): a pending pixel and, in entries written since the record moved in,
//! its record.
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

use super::backend;
use crate::pixel::QueuedPixel;
use crate::store::StoreError;
use crate::store::queues::Record;

/// The first byte of an entry holding its record (JSON starts with `{`).
const TAG: u8 = 0x01;

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
    serde_json::to_writer(&mut value, record).expect("our stored types serialise infallibly");
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
    fn a_cut_entry_is_an_error_not_a_panic() {
        let (pixel, record) = sample();
        let value = encode(&pixel, &record);
        for cut in 1..12 {
            assert!(super::pixel(&value[..cut]).is_err(), "cut at {cut}");
        }
    }
}

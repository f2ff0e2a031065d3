//! How one record sits in a segment: `crc32 | len | payload`, both numbers little-endian `u32`.
//!
//! The CRC covers the length and the payload, so a length torn or flipped by a crash or a bad sector is
//! caught like a damaged payload. The length's top bit marks a *hole*: bytes the repair command turned
//! into a valid frame that replay skips, so records after it keep their positions. A payload is never
//! empty, which makes the zeros of an unwritten tail an invalid frame at once.

/// Bytes before a frame's payload.
pub const HEADER: usize = 8;
/// The largest payload a frame may carry; a length above it is damage, not a record.
pub const MAX_PAYLOAD: usize = 16 << 20;
/// The length's flag for a hole.
const HOLE: u32 = 1 << 31;

/// What starts at some offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole, intact record of `size` bytes (header included).
    Record {
        /// The record.
        payload: &'a [u8],
        /// Header and payload.
        size: usize,
    },
    /// A whole, intact hole of `size` bytes: skipped.
    Hole {
        /// Header and padding.
        size: usize,
    },
    /// Not a valid frame: too short for its length, a length out of range, or a CRC that does not match.
    Invalid,
}

/// Appends a frame holding `payload` to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        !payload.is_empty() && payload.len() <= MAX_PAYLOAD,
        "a journal record is 1 byte to {MAX_PAYLOAD} bytes"
    );
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(payload);
}

/// The bytes of a hole exactly `size` bytes long (`size > HEADER`), to write over a damaged span.
pub fn hole(size: usize) -> Vec<u8> {
    assert!(
        size > HEADER,
        "a hole covers at least its header and a byte"
    );
    let padding = vec![0u8; size - HEADER];
    let len = (padding.len() as u32 | HOLE).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&padding);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(&padding);
    out
}

/// Reads the frame at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Frame<'_> {
    let Some((head, rest)) = bytes.split_first_chunk::<HEADER>() else {
        return Frame::Invalid;
    };
    let crc = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let raw = [head[4], head[5], head[6], head[7]];
    let word = u32::from_le_bytes(raw);
    let len = (word & !HOLE) as usize;
    if len == 0 || len > MAX_PAYLOAD || rest.len() < len {
        return Frame::Invalid;
    }
    let payload = &rest[..len];
    let mut check = crc32fast::Hasher::new();
    check.update(&raw);
    check.update(payload);
    if check.finalize() != crc {
        return Frame::Invalid;
    }
    let size = HEADER + len;
    if word & HOLE != 0 {
        Frame::Hole { size }
    } else {
        Frame::Record { payload, size }
    }
}

/// Where the next intact frame (record or hole) starts after `from`, if any does in `bytes`: what tells
/// a torn tail (nothing intact after the break) from damage in the middle (intact records after it).
pub fn next_intact(bytes: &[u8], from: usize) -> Option<usize> {
    (from + 1..bytes.len().saturating_sub(HEADER))
        .find(|&at| decode(&bytes[at..]) != Frame::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    #[test]
    fn records_read_back_and_every_cut_or_flip_is_caught() {
        let bytes = framed(&[b"queued p1", b"acked p1"]);
        let Frame::Record { payload, size } = decode(&bytes) else {
            panic!("the first record")
        };
        assert_eq!((payload, size), (&b"queued p1"[..], HEADER + 9));
        assert_eq!(
            decode(&bytes[size..]),
            Frame::Record {
                payload: b"acked p1",
                size: HEADER + 8
            }
        );
        for cut in 0..size {
            assert_eq!(decode(&bytes[..cut]), Frame::Invalid, "cut at {cut}");
        }
        for at in 0..size {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                assert!(
                    !matches!(decode(&flipped), Frame::Record { payload, .. } if payload == b"queued p1"),
                    "a flip of bit {bit} at {at} goes unnoticed"
                );
            }
        }
    }

    #[test]
    fn zeros_are_no_frame_and_a_hole_is_skipped_whole() {
        assert_eq!(decode(&[0u8; 64]), Frame::Invalid);
        let hole = hole(20);
        assert_eq!(decode(&hole), Frame::Hole { size: 20 });
    }

    #[test]
    fn intact_records_after_a_break_are_found() {
        let mut bytes = framed(&[b"one", b"two", b"three"]);
        let second = HEADER + 3;
        bytes[second + HEADER] ^= 0xff;
        assert_eq!(decode(&bytes[second..]), Frame::Invalid);
        assert_eq!(next_intact(&bytes, second), Some(2 * second));
        let torn = &bytes[..2 * second + 4];
        assert_eq!(next_intact(torn, second), None);
    }
}

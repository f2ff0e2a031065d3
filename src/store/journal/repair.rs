//! `pixelhub repair-journal`: makes a damaged journal open again, keeping every intact record.
//!
//! A damaged span (from a frame that fails its CRC to the next intact frame, or to the end of a segment
//! that is not the last) becomes one hole of exactly its size, so every record after it keeps its
//! position. A span too short for a hole's header takes the record before it along. A torn tail of the
//! last segment is cleared back to zeros, as opening would; an unwritten last segment is removed. A segment with a
//! foreign header is not guessed at: the report says to move it away. What was dropped is reported by
//! file, byte and size, so whoever runs it knows which writes to check.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::segment::{self, BadHeader, End};
use super::{StoreError, damaged, frame, io};

/// Bytes that repair dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The segment.
    pub file: PathBuf,
    /// Where the dropped bytes start.
    pub offset: u64,
    /// How many.
    pub bytes: u64,
    /// What they were: a damaged span, a torn tail, an unwritten segment.
    pub what: &'static str,
}

/// What repair did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Intact records kept.
    pub kept: u64,
    /// What was dropped; empty when the journal was sound.
    pub dropped: Vec<Dropped>,
}

/// Repairs the journal in `dir` so that it opens, keeping every intact record. Fails on a segment with
/// a foreign header or a missing segment, which are not for a program to guess at.
pub fn repair(dir: &Path) -> Result<Repaired, StoreError> {
    let mut report = Repaired::default();
    let starts = segment::list(dir).map_err(io)?;
    let mut end: Option<u64> = None;
    for (i, &start) in starts.iter().enumerate() {
        let last = i + 1 == starts.len();
        if end.is_some_and(|end| end != start) {
            return Err(damaged(
                dir,
                start,
                0,
                "the segment before it is missing; restore it",
            ));
        }
        let path = segment::path(dir, start);
        loop {
            let read = match segment::read(dir, start).map_err(io)? {
                Ok(read) => read,
                Err(BadHeader::Unwritten) if last => {
                    let bytes = std::fs::metadata(&path).map_err(io)?.len();
                    std::fs::remove_file(&path).map_err(io)?;
                    segment::sync_dir(dir).map_err(io)?;
                    report.dropped.push(Dropped {
                        file: path.clone(),
                        offset: 0,
                        bytes,
                        what: "a segment without a header",
                    });
                    end = Some(start);
                    break;
                }
                Err(_) => {
                    return Err(damaged(
                        dir,
                        start,
                        0,
                        "not a segment header; move the file away",
                    ));
                }
            };
            let (at, next, what) = match read.end {
                End::Clean { at } => {
                    report.kept += read.records.len() as u64;
                    end = Some(segment::position(start, at));
                    break;
                }
                End::Torn { at } if last => {
                    let torn = super::clear_torn(&path, &read.bytes, at).map_err(io)?;
                    report.dropped.push(Dropped {
                        file: path.clone(),
                        offset: at as u64,
                        bytes: torn as u64,
                        what: "a torn last write",
                    });
                    continue;
                }
                End::Torn { at } => {
                    // The writer stopped this segment where the next one starts; zeros follow.
                    let stop = segment::HEADER + (starts[i + 1] - start) as usize;
                    if stop > read.bytes.len() || stop <= at {
                        return Err(damaged(
                            dir,
                            start,
                            at,
                            "the segment is shorter than the next one says; restore it",
                        ));
                    }
                    (at, stop, "a damaged end of segment")
                }
                End::Damaged { at, next } => (at, next, "damaged records"),
            };
            // Too short for a hole's header: the record before goes into the hole too.
            let at = if next - at > frame::HEADER {
                at
            } else {
                match read.records.last() {
                    Some((_, payload)) if payload.end == at => payload.start - frame::HEADER,
                    _ => {
                        return Err(damaged(
                            dir,
                            start,
                            at,
                            "damage too short to mark; restore the file",
                        ));
                    }
                }
            };
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io)?;
            file.write_all_at(&frame::hole(next - at), at as u64)
                .map_err(io)?;
            file.sync_all().map_err(io)?;
            report.dropped.push(Dropped {
                file: path.clone(),
                offset: at as u64,
                bytes: (next - at) as u64,
                what,
            });
        }
    }
    Ok(report)
}

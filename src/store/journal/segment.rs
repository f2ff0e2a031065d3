//! Segment files: their names, their header, and reading one back.
//!
//! A segment is named by the journal position (LSN) of its first record, zero-padded so names sort in
//! order: `00000000000000000000.journal`. Its 16-byte header is a magic and that same position, so a
//! segment renamed or copied under the wrong name is refused rather than replayed out of place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::frame::{self, Frame};

/// The first 8 bytes of every segment: the format and its version.
const MAGIC: &[u8; 8] = b"PXHJRNL1";
/// Bytes before a segment's first frame.
pub const HEADER: usize = 16;
/// What segment file names end with.
const SUFFIX: &str = ".journal";

/// The file name of the segment whose first record is at `start`.
pub fn name(start: u64) -> String {
    format!("{start:020}{SUFFIX}")
}

/// The start positions of the segments in `dir`, in order. Other files are left alone.
pub fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        if let Ok(start) = stem.parse::<u64>()
            && stem.len() == 20
        {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

/// The name a segment has while it is being zero-filled, before it has a start.
const PREPARING: &str = "next.journal-filling";

/// How much the background fill writes between two syncs. Filled and synced in one piece, a 64 MiB
/// segment's writeback held every journal sync behind it for 100 to 150 ms on the benchmark machine; in
/// pieces, a sync waits at most for one piece (docs/benchmarks.md, "The online tail over 30 seconds").
pub const FILL_PIECE: u64 = 256 << 10;

/// Zero-fills a file of `bytes` bytes for the next segment, syncing it after every `sync_every` bytes
/// and at the end. `fdatasync` after writing over blocks already written flushes only the data; after a
/// write that grows a file (or fills an extent `fallocate` left unwritten) it must commit metadata too:
/// 105 µs against 170 µs here (docs/benchmarks.md). Runs off the writer thread while the current
/// segment fills, in pieces of [`FILL_PIECE`]; at open, nobody's writes wait, so in one piece.
pub fn prepare(dir: &Path, bytes: u64, sync_every: u64) -> std::io::Result<File> {
    let path = dir.join(PREPARING);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let zeros = vec![0u8; 1 << 20];
    let piece = sync_every.clamp(1, zeros.len() as u64);
    let (mut left, mut unsynced) = (bytes.max(HEADER as u64), 0);
    while left > 0 {
        let n = left.min(piece);
        file.write_all(&zeros[..n as usize])?;
        left -= n;
        unsynced += n;
        if unsynced >= sync_every && left > 0 {
            file.sync_data()?;
            unsynced = 0;
        }
    }
    file.sync_all()?;
    Ok(file)
}

/// Makes a prepared file the segment starting at `start`: its header written and synced, then renamed
/// to its name, made durable in `dir` so a record acknowledged in it cannot vanish with a directory
/// entry the crash forgot.
pub fn install(dir: &Path, file: File, start: u64) -> std::io::Result<File> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&start.to_le_bytes());
    file.write_all_at(&header, 0)?;
    file.sync_data()?;
    std::fs::rename(dir.join(PREPARING), path(dir, start))?;
    sync_dir(dir)?;
    Ok(file)
}

/// The name a released segment has while it is being deleted.
const RELEASING: &str = "old.journal-releasing";

/// How much of a released segment one truncation frees.
const RELEASE_PIECE: u64 = 4 << 20;

/// Deletes the segment starting at `start`, a piece at a time. Unlinking a 64 MiB file frees all its
/// blocks in one filesystem transaction, and held a journal `fdatasync` running beside it for some 40
/// ms; cut by [`RELEASE_PIECE`] from its end first, each step holds one for a few (docs/benchmarks.md,
/// "The online tail over 30 seconds"). It is first renamed out of the segments, durably, so a crash
/// half-way leaves no cut segment to replay, only a file the next open removes.
pub fn delete(dir: &Path, start: u64) -> std::io::Result<()> {
    let releasing = dir.join(RELEASING);
    std::fs::rename(path(dir, start), &releasing)?;
    sync_dir(dir)?;
    let file = std::fs::OpenOptions::new().write(true).open(&releasing)?;
    let mut len = file.metadata()?.len();
    while len > RELEASE_PIECE {
        len -= RELEASE_PIECE;
        file.set_len(len)?;
    }
    drop(file);
    std::fs::remove_file(&releasing)
}

/// Removes what a crash left half-done: a file being filled for the next segment, a released one
/// being deleted.
pub fn forget_leftovers(dir: &Path) -> std::io::Result<()> {
    for name in [PREPARING, RELEASING] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Makes the creations, renames and removals of entries in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The frames end at `at`, and every byte after is zero: the room filled ahead of use.
    Clean {
        /// Where the last frame ends: where the next is written.
        at: usize,
    },
    /// The frames stop at `at`, then come bytes that are not all zero, and nothing intact follows in the
    /// file: the write a crash cut short.
    Torn {
        /// Where the last intact frame ends.
        at: usize,
    },
    /// The frame at `at` is not intact, and an intact one starts at `next`: damage, not a crash.
    Damaged {
        /// Where the damage starts.
        at: usize,
        /// Where the next intact frame starts.
        next: usize,
    },
}

/// A segment read whole: its records in order, with the journal position just after each.
pub struct Read {
    /// The segment's first position.
    pub start: u64,
    /// Each record and the position after it.
    pub records: Vec<(u64, std::ops::Range<usize>)>,
    /// How it ended.
    pub end: End,
    /// The file's bytes (records index into them).
    pub bytes: Vec<u8>,
}

/// What is wrong with a segment's header.
#[derive(Debug, PartialEq, Eq)]
pub enum BadHeader {
    /// Shorter than a header, or all zeros: created, then cut by a crash before its header was synced.
    Unwritten,
    /// Some other file, or a segment under another segment's name.
    Foreign,
}

/// Reads the segment starting at `start` in `dir`.
pub fn read(dir: &Path, start: u64) -> std::io::Result<Result<Read, BadHeader>> {
    let bytes = std::fs::read(path(dir, start))?;
    let Some(header) = bytes.get(..HEADER) else {
        return Ok(Err(BadHeader::Unwritten));
    };
    if header.iter().all(|b| *b == 0) {
        return Ok(Err(BadHeader::Unwritten));
    }
    if &header[..8] != MAGIC || header[8..] != start.to_le_bytes() {
        return Ok(Err(BadHeader::Foreign));
    }
    let mut records = Vec::new();
    let mut at = HEADER;
    let end = loop {
        if at == bytes.len() {
            break End::Clean { at };
        }
        match frame::decode(&bytes[at..]) {
            Frame::Record { size, .. } => {
                records.push((position(start, at + size), at + frame::HEADER..at + size));
                at += size;
            }
            Frame::Hole { size } => at += size,
            Frame::Invalid if bytes[at..].iter().all(|b| *b == 0) => break End::Clean { at },
            Frame::Invalid => {
                break match frame::next_intact(&bytes, at) {
                    Some(next) => End::Damaged { at, next },
                    None => End::Torn { at },
                };
            }
        }
    };
    Ok(Ok(Read {
        start,
        records,
        end,
        bytes,
    }))
}

/// The path of the segment starting at `start`.
pub fn path(dir: &Path, start: u64) -> PathBuf {
    dir.join(name(start))
}

/// The journal position of byte `offset` of the segment starting at `start`.
pub fn position(start: u64, offset: usize) -> u64 {
    start + (offset - HEADER) as u64
}

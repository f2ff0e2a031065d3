//! `--sled-keys`: what sled costs per key, alone on one thread, for the layouts a pending pixel could
//! have. The embedded engine's checkpoint writes every key of every pixel into sled; this is the floor
//! under it, apart from HTTP, sessions and the journal (docs/benchmarks.md, "What bounds the write
//! rates").
//!
//! Each layout writes 100,000 pixels over 1,000 players into an empty sled tree, as the checkpoint
//! does: keys sorted, in slices of 256, sled flushed every 4,096 keys; once as sled batches and once
//! key by key.

use std::time::Instant;

use anyhow::Context;

/// Pixels written per layout.
const PIXELS: u64 = 100_000;
/// Players they are spread over.
const PLAYERS: u64 = 1_000;
/// Keys per slice, and per sled batch, as the engine's checkpoint writes them.
const SLICE: usize = 256;
/// Keys written between two sled flushes.
const FLUSH_EVERY: usize = 4_096;

/// A pending pixel's keys: their tables and value sizes.
struct Layout {
    name: &'static str,
    /// One (table tag, value bytes) per key.
    keys: &'static [(u8, usize)],
}

const LAYOUTS: [Layout; 4] = [
    Layout {
        name: "3 keys: queue 300 B, record 650 B, report index (before)",
        keys: &[(b'q', 300), (b'i', 650), (b'r', 0)],
    },
    Layout {
        name: "3 keys: the record without nulls (350 B)",
        keys: &[(b'q', 300), (b'i', 350), (b'r', 0)],
    },
    Layout {
        name: "2 keys: queue entry holding the record (950 B), report index (today)",
        keys: &[(b'q', 950), (b'r', 0)],
    },
    Layout {
        name: "1 key of 950 B",
        keys: &[(b'q', 950)],
    },
];

/// Runs every layout both ways and prints what each pixel and each key cost.
pub fn run() -> anyhow::Result<()> {
    println!("layout | writes | pixels/s | µs per key");
    println!("---|---|---|---");
    for layout in &LAYOUTS {
        for batched in [true, false] {
            let seconds = write(layout, batched)?;
            let keys = PIXELS as f64 * layout.keys.len() as f64;
            println!(
                "{} | {} | {:.0} | {:.2}",
                layout.name,
                if batched {
                    "sled batches"
                } else {
                    "key by key"
                },
                PIXELS as f64 / seconds,
                seconds * 1e6 / keys,
            );
        }
    }
    Ok(())
}

/// Writes `PIXELS` pixels in `layout` into a fresh sled tree; the seconds it took.
fn write(layout: &Layout, batched: bool) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir().context("a temp dir")?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(256 << 20)
        .flush_every_ms(None)
        .open()
        .context("opening sled")?;
    let tree = db.open_tree("data")?;
    let values: Vec<Vec<u8>> = layout.keys.iter().map(|(_, n)| vec![b'x'; *n]).collect();
    let started = Instant::now();
    let mut pending: Vec<(Vec<u8>, usize)> = Vec::with_capacity(FLUSH_EVERY + 3);
    for seq in 0..PIXELS {
        let player = format!("player-{}", seq % PLAYERS);
        for (i, (table, _)) in layout.keys.iter().enumerate() {
            let mut key = vec![*table];
            key.extend_from_slice(b"brand-a\0");
            key.extend_from_slice(player.as_bytes());
            key.push(0);
            key.extend_from_slice(&seq.to_be_bytes());
            pending.push((key, i));
        }
        if pending.len() >= FLUSH_EVERY || seq + 1 == PIXELS {
            pending.sort_unstable();
            for slice in pending.chunks(SLICE) {
                if batched {
                    let mut batch = sled::Batch::default();
                    for (key, i) in slice {
                        batch.insert(key.as_slice(), values[*i].as_slice());
                    }
                    tree.apply_batch(batch)?;
                } else {
                    for (key, i) in slice {
                        tree.insert(key.as_slice(), values[*i].as_slice())?;
                    }
                }
            }
            pending.clear();
            db.flush()?;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

//! `--disk-stalls`: how long one small `fdatasync`ed append takes on this machine, alone and while every
//! CPU is busy, and how much CPU time the machine's host took away meanwhile. No hub runs: it separates
//! what the machine does to a durable write path from what the hub does (docs/benchmarks.md, "The online
//! tail without checkpoints").
//!
//! The appends are what the embedded engine's journal does in the `online` scenario: about 1.4 KB
//! written at the end of a zero-filled file and `fdatasync`ed, 4,000 times a second, one thread. The
//! busy loops run at nice 5, as background work would, so the appender gets a CPU when it wakes: what
//! it waits for beyond that, the machine took.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::hub::MachineTimes;
use crate::report::{Report, millis, quantile};

/// Bytes of each append.
const RECORD: usize = 1_400;
/// Appends a second.
const RATE: u32 = 4_000;
/// How long each condition runs (`--smoke`: a check that it works).
const PHASE: Duration = Duration::from_secs(5);
const SMOKE_PHASE: Duration = Duration::from_millis(300);
/// The file's size, zero-filled before the first append (the journal's segments are too).
const FILE_BYTES: u64 = 64 << 20;
const SMOKE_FILE_BYTES: u64 = 4 << 20;
/// An append slower than this counts as a stall.
const STALL: Duration = Duration::from_millis(5);
/// The nice value of the busy loops.
const BUSY_NICE: libc::c_int = 5;

/// One condition: whether the appender runs, whether every CPU is kept busy.
struct Condition {
    name: &'static str,
    appends: bool,
    busy: bool,
}

const CONDITIONS: [Condition; 3] = [
    Condition {
        name: "appends alone",
        appends: true,
        busy: false,
    },
    Condition {
        name: "appends, every CPU busy",
        appends: true,
        busy: true,
    },
    Condition {
        name: "every CPU busy, no appends",
        appends: false,
        busy: true,
    },
];

/// Runs every condition and adds its figures to `report`; `smoke` makes it brief.
pub fn run(report: &mut Report, smoke: bool) -> anyhow::Result<()> {
    let (phase, file_bytes) = if smoke {
        (SMOKE_PHASE, SMOKE_FILE_BYTES)
    } else {
        (PHASE, FILE_BYTES)
    };
    let dir = tempfile::tempdir().context("a temp dir")?;
    let mut file = File::create(dir.path().join("appends")).context("creating the file")?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..file_bytes / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut at = 0u64;
    for condition in &CONDITIONS {
        let stop = Arc::new(AtomicBool::new(false));
        let loops: Vec<_> = (0..if condition.busy { cpus } else { 0 })
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || busy_loop(&stop))
            })
            .collect();
        let before = MachineTimes::read()?;
        let started = Instant::now();
        let latencies = if condition.appends {
            append(&file, &mut at, phase, file_bytes)?
        } else {
            std::thread::sleep(phase);
            Vec::new()
        };
        let (cores, stolen) = MachineTimes::read()?.since(&before, started.elapsed());
        stop.store(true, Ordering::Relaxed);
        for handle in loops {
            handle.join().expect("a busy loop panicked");
        }
        let mut out = report.run("disk_stalls", condition.name);
        if !latencies.is_empty() {
            let mut sorted = latencies.clone();
            sorted.sort_unstable();
            let stalls = sorted
                .iter()
                .filter(|l| **l > STALL.as_micros() as u64)
                .count();
            out.add(
                "appends_per_second",
                sorted.len() as f64 / started.elapsed().as_secs_f64(),
                "appends/s",
            );
            out.add("append_p50", millis(quantile(&sorted, 0.5)), "ms");
            out.add("append_p99", millis(quantile(&sorted, 0.99)), "ms");
            out.add("append_max", millis(*sorted.last().unwrap_or(&0)), "ms");
            out.add("appends_over_5ms", stalls as f64, "appends");
        }
        out.add("machine_busy_cores", cores, "cores");
        out.add("machine_steal", stolen, "%");
    }
    Ok(())
}

/// Appends `RECORD` bytes and `fdatasync`s, `RATE` times a second for `phase`, from `*at` on (wrapping
/// inside the zero-filled file of `file_bytes`); each append's latency in microseconds.
fn append(file: &File, at: &mut u64, phase: Duration, file_bytes: u64) -> anyhow::Result<Vec<u64>> {
    let record = vec![b'x'; RECORD];
    let total = (f64::from(RATE) * phase.as_secs_f64()) as usize;
    let mut latencies = Vec::with_capacity(total);
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs(1) * i as u32 / RATE;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if *at + RECORD as u64 > file_bytes {
            *at = 0;
        }
        let begun = Instant::now();
        file.write_all_at(&record, *at)?;
        file.sync_data()?;
        latencies.push(begun.elapsed().as_micros() as u64);
        *at += RECORD as u64;
    }
    Ok(latencies)
}

/// Spins until `stop`, at nice `BUSY_NICE`.
fn busy_loop(stop: &AtomicBool) {
    // SAFETY: gettid and setpriority have no memory effects; a thread's nice value is its own (Linux).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BUSY_NICE);
    }
    let mut spins = 0u64;
    while !stop.load(Ordering::Relaxed) {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
}

//! `pixelhub-bench`: runs the benchmark scenarios against a real hub process and prints a table and a
//! JSON line per result. Every scenario checks that each message arrived exactly once and fails loudly
//! otherwise. See docs/benchmarks.md.

mod browser;
mod disk_stalls;
mod holder;
mod hub;
mod mqtt;
mod nats;
mod redis;
mod report;
mod scenarios;
mod sled_keys;
mod soak;
mod system;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::report::Report;
use crate::scenarios::{Run, Sizes};
use crate::soak::SoakSizes;
use crate::system::Kind;

/// A benchmark scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Hold idle sessions: connect rate, memory per session, idle CPU.
    Sessions,
    /// Offline players with queued pixels all connect at once: time to the last ack.
    Drain,
    /// Durable enqueue rate, single pixels and batches: throughput and latency.
    Ingest,
    /// Pixels queued at a fixed rate for online players: enqueue-to-browser latency.
    Online,
    /// A long mixed load (sessions coming and going, events, acks, failing postbacks): RSS over time.
    /// The hub only.
    Soak,
}

/// Benchmarks pixelhub with simulated browsers over real WebSockets.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Scenarios to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Sessions, Scenario::Drain, Scenario::Ingest, Scenario::Online, Scenario::Soak])]
    scenarios: Vec<Scenario>,

    /// Systems to run each scenario against, in turn, comma-separated. `hub-memory` is the hub with
    /// nothing stored: the ceiling its storage engine is measured against.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Kind::Hub, Kind::HubMemory, Kind::Mosquitto, Kind::Nats])]
    systems: Vec<Kind>,

    /// The pixelhub binary to start (default: the one next to this binary, so build both in release).
    #[arg(long)]
    hub_bin: Option<PathBuf>,

    /// Tiny sizes, for a check that the harness works (the test command runs this).
    #[arg(long)]
    smoke: bool,

    /// Instead of the scenarios: what sled costs per key, alone on one thread, for the layouts a
    /// pending pixel could have (the floor under the embedded engine's checkpoint).
    #[arg(long)]
    sled_keys: bool,

    /// Instead of the scenarios: how long a small `fdatasync`ed append takes on this machine, alone and
    /// with every CPU busy, and the CPU time its host took away meanwhile (what bounds a durable write
    /// path's tail here, whatever the server).
    #[arg(long)]
    disk_stalls: bool,

    /// sessions: idle sessions to hold.
    #[arg(long, default_value_t = 18_000)]
    sessions: usize,

    /// sessions: seconds to hold them, heartbeats on.
    #[arg(long, default_value_t = 60)]
    hold_seconds: u64,

    /// drain: offline players.
    #[arg(long, default_value_t = 5_000)]
    drain_players: usize,

    /// drain: pixels queued per player.
    #[arg(long, default_value_t = 10)]
    drain_pixels: usize,

    /// ingest: concurrent API clients.
    #[arg(long, default_value_t = 64)]
    ingest_clients: usize,

    /// ingest: seconds of each phase (single pixels, then batches).
    #[arg(long, default_value_t = 10)]
    ingest_seconds: u64,

    /// ingest: pixels per batch.
    #[arg(long, default_value_t = 100)]
    ingest_batch: usize,

    /// ingest: players the pixels go to, at random (each known to the system beforehand).
    #[arg(long, default_value_t = 1_000)]
    ingest_players: usize,

    /// online: connected sessions.
    #[arg(long, default_value_t = 10_000)]
    online_sessions: usize,

    /// online: pixels queued per second.
    #[arg(long, default_value_t = 2_000)]
    online_rate: usize,

    /// online: seconds of queueing.
    #[arg(long, default_value_t = 10)]
    online_seconds: u64,

    /// online: concurrent publishers the pixels are queued through.
    #[arg(long, default_value_t = 64)]
    online_publishers: usize,

    /// online: also write every message's latency to `<PREFIX>-<system>.tsv` (when it was due, in
    /// Unix milliseconds; how long until its ack was written, and until the call that queued it was
    /// answered, in microseconds), to line a tail up against what the server was doing at that moment
    /// and tell a slow queueing call from a slow delivery.
    #[arg(long, value_name = "PREFIX")]
    online_latency_log: Option<PathBuf>,

    /// soak: seconds of load.
    #[arg(long, default_value_t = 600)]
    soak_seconds: u64,

    /// soak: sessions open at any time, each living 2 to 10 s before another takes its place.
    #[arg(long, default_value_t = 500)]
    soak_sessions: usize,

    /// soak: players the load is spread over.
    #[arg(long, default_value_t = 2_000)]
    soak_players: usize,

    /// soak: events reported per second, each queueing a pixel and a failing postback.
    #[arg(long, default_value_t = 100)]
    soak_rate: usize,

    /// soak: seconds between two samples of the hub's RSS.
    #[arg(long, default_value_t = 5)]
    soak_sample_seconds: u64,

    /// Loopback source addresses (127.0.0.2 up) the simulated browsers connect from.
    #[arg(long, default_value_t = 8)]
    sources: u8,

    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,

    /// (Internal: the harness starts itself so to hold sessions of one hub process beyond the files one
    /// process may open.) Holds `--hold-count` sessions to this hub address until standard input closes.
    #[arg(long, hide = true)]
    hold_sessions: Option<std::net::SocketAddr>,

    /// (Internal) How many sessions `--hold-sessions` holds.
    #[arg(long, hide = true, default_value_t = 0)]
    hold_count: usize,

    /// (Internal) The players' prefix for `--hold-sessions`.
    #[arg(long, hide = true, default_value = "h")]
    hold_prefix: String,
}

impl Args {
    fn soak(&self) -> SoakSizes {
        if self.smoke {
            return SoakSizes {
                duration: Duration::from_secs(6),
                sessions: 20,
                players: 50,
                events_per_second: 50,
                sample_every: Duration::from_secs(1),
            };
        }
        SoakSizes {
            duration: Duration::from_secs(self.soak_seconds),
            sessions: self.soak_sessions,
            players: self.soak_players,
            events_per_second: self.soak_rate,
            sample_every: Duration::from_secs(self.soak_sample_seconds),
        }
    }

    fn sizes(&self) -> Sizes {
        if self.smoke {
            return Sizes {
                sessions: 100,
                hold: Duration::from_secs(1),
                drain_players: 50,
                drain_pixels: 3,
                ingest_clients: 4,
                ingest_duration: Duration::from_millis(500),
                ingest_batch: 10,
                ingest_players: 20,
                online_sessions: 50,
                online_rate: 200,
                online_duration: Duration::from_secs(1),
                online_publishers: 4,
                online_latency_log: self.online_latency_log.clone(),
                sources: 2,
                connect_concurrency: 32,
            };
        }
        Sizes {
            sessions: self.sessions,
            hold: Duration::from_secs(self.hold_seconds),
            drain_players: self.drain_players,
            drain_pixels: self.drain_pixels,
            ingest_clients: self.ingest_clients,
            ingest_duration: Duration::from_secs(self.ingest_seconds),
            ingest_batch: self.ingest_batch,
            ingest_players: self.ingest_players,
            online_sessions: self.online_sessions,
            online_rate: self.online_rate,
            online_duration: Duration::from_secs(self.online_seconds),
            online_publishers: self.online_publishers,
            online_latency_log: self.online_latency_log.clone(),
            sources: self.sources,
            connect_concurrency: self.connect_concurrency,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(addr) = args.hold_sessions {
        let hold = holder::Hold {
            addr,
            count: args.hold_count,
            prefix: args.hold_prefix.clone(),
            sources: args.sources,
            concurrency: args.connect_concurrency,
        };
        return match holder::serve(hold).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pixelhub-bench: holding sessions FAILED: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.sled_keys {
        return match sled_keys::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pixelhub-bench: --sled-keys FAILED: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.disk_stalls {
        let mut report = Report::default();
        return match disk_stalls::run(&mut report, args.smoke) {
            Ok(()) => {
                print!("{}", report.table());
                println!();
                print!("{}", report.json_lines());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pixelhub-bench: --disk-stalls FAILED: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let sizes = args.sizes();
    let binary = args.hub_bin.clone().unwrap_or_else(hub::default_binary);
    if !binary.exists() {
        eprintln!(
            "pixelhub-bench: no hub binary at {}; build it (cargo build --release) or pass --hub-bin",
            binary.display()
        );
        return ExitCode::FAILURE;
    }
    for (kind, program) in [
        (Kind::Mosquitto, "mosquitto"),
        (Kind::Nats, "nats-server"),
        (Kind::HubRedis, "redis-server"),
        (Kind::HubRedis2, "redis-server"),
    ] {
        if args.systems.contains(&kind) && hub::find_program(program).is_none() {
            eprintln!(
                "pixelhub-bench: {program} is not installed (scripts/bench installs it), or leave it out with --systems"
            );
            return ExitCode::FAILURE;
        }
    }
    let mut report = Report::default();
    let mut failed = false;
    for scenario in &args.scenarios {
        for kind in &args.systems {
            if *scenario == Scenario::Soak && *kind != Kind::Hub {
                eprintln!(
                    "pixelhub-bench: soak runs against the hub only; skipping {}",
                    kind.name()
                );
                continue;
            }
            eprintln!("pixelhub-bench: {scenario:?} against {}…", kind.name());
            let run = Run {
                kind: *kind,
                hub_binary: &binary,
                sizes: &sizes,
            };
            let ran = match scenario {
                Scenario::Sessions => scenarios::sessions(&run, &mut report).await,
                Scenario::Drain => scenarios::drain(&run, &mut report).await,
                Scenario::Ingest => scenarios::ingest(&run, &mut report).await,
                Scenario::Online => scenarios::online(&run, &mut report).await,
                Scenario::Soak => soak::soak(&binary, &args.soak(), &mut report).await,
            };
            if let Err(e) = ran {
                eprintln!(
                    "pixelhub-bench: {scenario:?} on {} FAILED: {e:#}",
                    kind.name()
                );
                failed = true;
            }
        }
    }
    for kind in &args.systems {
        report.note(kind.name(), "durability", kind.durability());
    }
    print!("{}", report.table());
    println!();
    print!("{}", report.json_lines());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! **soak**: the hub under a steady mixed load for a long while, its resident memory sampled throughout.
//!
//! What a day in production does to the process, compressed: sessions that come and go (some closing
//! properly, some vanishing like a closed laptop), events reported at a steady rate, each queueing a
//! pixel for the browser and a postback to an affiliate endpoint that keeps failing (503, `Retry-After:
//! 1`), so postbacks are retried until they give up; and browsers acking what they get. The hub's RSS is
//! sampled every few seconds. The figures: RSS when the warm-up ends (a fifth of the run), at the end, the
//! most, and the drift from the end of warm-up to the end; and, since the data set grows all run long,
//! the RSS of a fresh process on the same data under the same load (see [`soak`]), which the long-running
//! one should match within a few percent. A hub that leaks shows it here, not in the short scenarios.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::browser::{self, Sources};
use crate::hub::{BRAND, HubProcess, proc_rss};
use crate::report::Report;

/// The store's cache in the soak, in megabytes.
const CACHE_MB: &str = "16";

/// How big and how long.
#[derive(Clone, Debug)]
pub struct SoakSizes {
    /// How long the load runs.
    pub duration: Duration,
    /// Sessions open at any time; each lives a few seconds, then another takes its place.
    pub sessions: usize,
    /// Players the load is spread over.
    pub players: usize,
    /// Events reported per second; each queues one pixel and one postback.
    pub events_per_second: usize,
    /// Between two RSS samples.
    pub sample_every: Duration,
}

/// The hub's settings for the soak.
const SETTINGS: [(&str, &str); 5] = [
    ("PIXELHUB_S2S_ALLOW_NETWORKS", "127.0.0.0/8"),
    ("PIXELHUB_S2S_MAX_ATTEMPTS", "8"),
    // Every event adds a postback, and the run reports more events than a day's quota would take;
    // the quotas are not what this measures.
    ("PIXELHUB_QUOTA_OUTBOX", "0"),
    ("PIXELHUB_QUOTA_EVENTS_PER_DAY", "0"),
    // A cache the load fills during the warm-up: what grows after it is not the cache filling with a
    // data set that grows all run long (records are kept for days).
    ("PIXELHUB_STORE_CACHE_MB", CACHE_MB),
];

/// Runs the soak against the hub binary; records its figures and prints RSS over time.
///
/// A run writes data all along (each event leaves records the hub keeps for days), and the store keeps
/// an index of its pages in memory, so RSS grows with the data however tight the rest is. To tell that
/// from a leak, the soak ends with a control: a fresh hub process on the same data dir, under the same
/// load for as long as the warm-up. What the long-running process holds beyond that fresh one is what
/// ten minutes of sessions, events, acks and retries left behind.
pub async fn soak(binary: &Path, sizes: &SoakSizes, report: &mut Report) -> Result<()> {
    let endpoint = FailingEndpoint::start().await?;
    let hub = Arc::new(HubProcess::start_with(binary, &SETTINGS).await?);
    define(&hub, endpoint.addr).await?;
    let counts = Arc::new(Counts::default());
    let samples = load(&hub, sizes, sizes.duration, "a", &counts).await?;
    let warm = samples.len() / 5;
    let warmup = Duration::from_secs_f64(samples[warm].0);
    let hub = Arc::try_unwrap(hub)
        .ok()
        .context("every load task is done")?;

    // The control: a new process on the data the run left, under the same load for a warm-up.
    let fresh = Arc::new(hub.restart(binary, &SETTINGS).await?);
    let control = load(&fresh, sizes, warmup, "b", &Arc::new(Counts::default())).await?;
    Arc::try_unwrap(fresh)
        .ok()
        .context("every load task is done")?
        .stop()?;
    let attempts = endpoint.hits.load(Ordering::Relaxed);

    let (warm_at, warm_rss, warm_data) = samples[warm];
    let (end_at, end_rss, end_data) = *samples.last().context("at least one sample")?;
    let (_, fresh_rss, fresh_data) = *control.last().context("at least one sample")?;
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let percent = |from: u64, to: u64| (to as f64 - from as f64) / from as f64 * 100.0;
    ensure!(attempts > 0, "no postback attempt reached the endpoint");
    ensure!(
        counts.pixels.load(Ordering::Relaxed) > 0,
        "no pixel reached a browser"
    );
    let mb = |bytes: u64| bytes as f64 / 1_048_576.0;
    eprintln!("soak: over time (seconds, RSS MB, data dir MB)");
    for (at, rss, data) in &samples {
        eprintln!("  {at:>7.0}  {:>8.1}  {:>8.1}", mb(*rss), mb(*data));
    }
    eprintln!(
        "soak: a fresh process on that data, after {:.0} s of the same load: {:.1} MB RSS, {:.1} MB data",
        warmup.as_secs_f64(),
        mb(fresh_rss),
        mb(fresh_data)
    );
    let mut out = report.run("soak", "hub");
    out.add("seconds", end_at, "s");
    out.add(
        "events",
        counts.events.load(Ordering::Relaxed) as f64,
        "events",
    );
    out.add(
        "pixels_acked",
        counts.pixels.load(Ordering::Relaxed) as f64,
        "pixels",
    );
    out.add("postback_attempts", attempts as f64, "attempts");
    out.add(
        "sessions_opened",
        counts.sessions.load(Ordering::Relaxed) as f64,
        "sessions",
    );
    out.add("warmup_seconds", warm_at, "s");
    out.add("rss_after_warmup", mb(warm_rss), "MB");
    out.add("rss_end", mb(end_rss), "MB");
    out.add("rss_peak", mb(peak), "MB");
    out.add("rss_drift_after_warmup", percent(warm_rss, end_rss), "%");
    out.add("data_after_warmup", mb(warm_data), "MB");
    out.add("data_end", mb(end_data), "MB");
    out.add("rss_fresh_same_data", mb(fresh_rss), "MB");
    out.add("rss_beyond_fresh", percent(fresh_rss, end_rss), "%");
    Ok(())
}

/// Puts the mixed load on `hub` for `duration`, event ids starting with `phase`; RSS and data size
/// samples over time.
async fn load(
    hub: &Arc<HubProcess>,
    sizes: &SoakSizes,
    duration: Duration,
    phase: &'static str,
    counts: &Arc<Counts>,
) -> Result<Vec<(f64, u64, u64)>> {
    let pid = hub.pid();
    let stop = Instant::now() + duration;
    let mut load = JoinSet::new();

    // Sessions: each opens as a random player, takes what it is sent, and ends after 2 to 10 s.
    let sources = Sources::new(8);
    for slot in 0..sizes.sessions {
        let (hub, counts, sources) = (Arc::clone(hub), Arc::clone(counts), sources.clone());
        let players = sizes.players;
        load.spawn(async move {
            let mut round = 0usize;
            while Instant::now() < stop {
                round += 1;
                let player = format!("soak-{}", pseudo(slot * 7919 + round) % players);
                let life =
                    Duration::from_millis(2_000 + (pseudo(slot + round * 31) % 8_000) as u64);
                let browser = browser::open(hub.addr, sources.pick(slot + round), &player).await?;
                counts.sessions.fetch_add(1, Ordering::Relaxed);
                let (quit, quitting) = tokio::sync::watch::channel(false);
                let acks = Arc::clone(&counts);
                let running = browser.run(quitting, move |_, _| {
                    acks.pixels.fetch_add(1, Ordering::Relaxed);
                });
                // Half vanish mid-session, as a closed laptop does; the other half close properly.
                if round.is_multiple_of(2) {
                    let _ = tokio::time::timeout(life, running).await;
                } else {
                    let runner = tokio::spawn(running);
                    tokio::time::sleep(life).await;
                    let _ = quit.send(true);
                    runner.await??;
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }

    // Events: a steady rate, in batches of ten, each a sale queueing a pixel and a postback.
    let batches_per_second = (sizes.events_per_second / 10).max(1);
    {
        let (hub, counts) = (Arc::clone(hub), Arc::clone(counts));
        let players = sizes.players;
        load.spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs(1) / batches_per_second as u32);
            let mut n = 0usize;
            while Instant::now() < stop {
                tick.tick().await;
                let events: Vec<_> = (0..10)
                    .map(|_| {
                        n += 1;
                        json!({"event_id": format!("{phase}-{n}"), "type": "sale",
                               "player_id": format!("soak-{}", pseudo(n) % players), "affiliate_id": "a1"})
                    })
                    .collect();
                let answer = hub
                    .admin(
                        reqwest::Method::POST,
                        &format!("/api/v1/brands/{BRAND}/events"),
                    )
                    .json(&events)
                    .send()
                    .await?;
                ensure!(
                    answer.status() == reqwest::StatusCode::ACCEPTED,
                    "reporting events answered {}: {}",
                    answer.status(),
                    answer.text().await.unwrap_or_default()
                );
                counts.events.fetch_add(10, Ordering::Relaxed);
            }
            Ok(())
        });
    }

    // RSS and the data dir's size, every few seconds, until the load stops.
    let started = Instant::now();
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let sample = |samples: &mut Vec<(f64, u64, u64)>| -> Result<()> {
        samples.push((
            started.elapsed().as_secs_f64(),
            proc_rss(pid)?,
            hub.data_bytes(),
        ));
        Ok(())
    };
    while Instant::now() < stop {
        sample(&mut samples)?;
        let broke = std::iter::from_fn(|| load.try_join_next()).find_map(|ended| match ended {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(e.into()),
        });
        if let Some(e) = broke {
            return Err(e.context("the soak load failed"));
        }
        let left = stop.saturating_duration_since(Instant::now());
        tokio::time::sleep(sizes.sample_every.min(left)).await;
    }
    sample(&mut samples)?;
    while let Some(ended) = load.join_next().await {
        ended.context("a load task panicked")??;
    }
    Ok(samples)
}

/// What the load did.
#[derive(Default)]
struct Counts {
    sessions: AtomicU64,
    events: AtomicU64,
    pixels: AtomicU64,
}

/// The brand's two definitions: a client pixel and a postback, both on every sale.
async fn define(hub: &HubProcess, endpoint: SocketAddr) -> Result<()> {
    for definition in [
        json!({"name": "sale pixel", "trigger": "sale", "kind": "image",
               "url": "https://aff.example/px?e={{event_id}}&p={{player_id}}"}),
        json!({"name": "sale postback", "trigger": "sale", "kind": "s2s",
               "url": format!("http://{endpoint}/pb?e={{{{event_id}}}}")}),
    ] {
        let answer = hub
            .admin(
                reqwest::Method::POST,
                &format!("/api/v1/brands/{BRAND}/pixel-definitions"),
            )
            .json(&definition)
            .send()
            .await?;
        ensure!(
            answer.status() == reqwest::StatusCode::CREATED,
            "defining {definition} answered {}",
            answer.status()
        );
    }
    Ok(())
}

/// A cheap, repeatable spread of numbers (players, session lives) without a random generator.
fn pseudo(n: usize) -> usize {
    let mut x = n as u64 ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x as usize
}

/// An affiliate endpoint that is down for maintenance: every request gets `503` with `Retry-After: 1`.
struct FailingEndpoint {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FailingEndpoint {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut head = Vec::new();
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        // Postbacks here are GETs: a request ends with its head.
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            counted.fetch_add(1, Ordering::Relaxed);
                            let answer = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 4\r\n\r\nbusy";
                            if socket.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Ok(FailingEndpoint { addr, hits, task })
    }
}

impl Drop for FailingEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

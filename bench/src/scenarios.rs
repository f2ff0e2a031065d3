//! The four scenarios, run against the hub. Each checks its own result (every message exactly once, no
//! session lost) and fails loudly when the check fails: a fast wrong answer is not a result.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::browser::{self, Browser, Sources};
use crate::hub::HubProcess;
use crate::report::{Report, millis, quantile};

/// The sizes of a run; the defaults fit a 2-core, 24 GiB machine.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// `sessions`: idle sessions held.
    pub sessions: usize,
    /// `sessions`: how long they are held, heartbeats on.
    pub hold: Duration,
    /// `drain`: offline players with queued pixels.
    pub drain_players: usize,
    /// `drain`: pixels queued per player.
    pub drain_pixels: usize,
    /// `ingest`: concurrent API clients.
    pub ingest_clients: usize,
    /// `ingest`: length of each of its two phases (single pixels, then batches).
    pub ingest_duration: Duration,
    /// `ingest`: pixels per batch.
    pub ingest_batch: usize,
    /// `online`: connected sessions.
    pub online_sessions: usize,
    /// `online`: pixels queued per second, for random online players.
    pub online_rate: usize,
    /// `online`: how long pixels are queued.
    pub online_duration: Duration,
    /// Loopback source addresses the browsers connect from.
    pub sources: u8,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
}

/// The system a scenario runs against; only the hub so far.
const SYSTEM: &str = "hub";

/// Opens `count` sessions, `concurrency` at a time, for the players `player(i)`.
async fn open_all(
    hub: SocketAddr,
    count: usize,
    player: impl Fn(usize) -> String,
    sizes: &Sizes,
) -> Result<Vec<Browser>> {
    let sources = Sources::new(sizes.sources);
    let opened: Vec<Result<Browser>> = stream::iter(0..count)
        .map(|i| {
            let (source, player) = (sources.pick(i), player(i));
            async move { browser::open(hub, source, &player).await }
        })
        .buffer_unordered(sizes.connect_concurrency)
        .collect()
        .await;
    let failed = opened.iter().filter(|o| o.is_err()).count();
    let mut browsers = Vec::with_capacity(count);
    for opened in opened {
        match opened {
            Ok(b) => browsers.push(b),
            Err(e) => bail!("{failed} of {count} sessions failed to open; the first: {e:#}"),
        }
    }
    Ok(browsers)
}

/// Waits for every browser task; the number that ended in an error (the hub closed them early).
async fn join_all(mut tasks: JoinSet<Result<()>>) -> usize {
    let mut failed = 0;
    while let Some(ended) = tasks.join_next().await {
        if !matches!(ended, Ok(Ok(()))) {
            failed += 1;
        }
    }
    failed
}

/// Polls the hub until its queue is empty; the time it took from `since`.
async fn until_drained(hub: &HubProcess, since: Instant, limit: Duration) -> Result<Duration> {
    loop {
        let (depth, _) = hub.stats().await?;
        if depth == 0 {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            bail!("{depth} pixels still queued after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// **sessions**: N idle sessions held with heartbeats on. Reports the connect rate, the hub's resident
/// memory per session (VmRSS after minus before, over N) and its CPU use while they idle.
pub async fn sessions(binary: &Path, sizes: &Sizes, report: &mut Report) -> Result<()> {
    let n = sizes.sessions;
    let hub = HubProcess::start(binary).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = hub.rss_bytes()?;

    let started = Instant::now();
    let browsers = open_all(hub.addr, n, |i| format!("s-{i}"), sizes).await?;
    let connecting = started.elapsed();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for browser in browsers {
        tasks.spawn(browser.run(stopped.clone(), |_, _| {}));
    }

    // Let the connect burst settle, then measure the idle hub over the hold.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = hub.cpu_time()?;
    let held_from = Instant::now();
    tokio::time::sleep(sizes.hold).await;
    let cpu = hub.cpu_time()? - cpu_before;
    let held = held_from.elapsed();
    let rss_after = hub.rss_bytes()?;
    let (_, online) = hub.stats().await?;
    stop.send(true)?;
    let lost = join_all(tasks).await;
    hub.stop()?;

    ensure!(
        lost == 0,
        "sessions: the hub closed {lost} of {n} idle sessions during the hold"
    );
    ensure!(
        online as usize == n,
        "sessions: the hub counted {online} sessions, not {n}"
    );
    let mut out = report.run("sessions", SYSTEM);
    out.add("sessions_held", n as f64, "sessions");
    out.add(
        "connect_rate",
        n as f64 / connecting.as_secs_f64(),
        "sessions/s",
    );
    let per_session = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    out.add("rss_per_session", per_session, "bytes");
    let idle = cpu.as_secs_f64() / held.as_secs_f64() * 100.0;
    out.add("idle_cpu", idle, "% of a core");
    Ok(())
}

/// **drain**: N offline players with k pixels each, queued durably; then all connect at once, fire and
/// ack. Reports the time until the hub's queue is empty (every ack applied) and pixels per second.
pub async fn drain(binary: &Path, sizes: &Sizes, report: &mut Report) -> Result<()> {
    let (n, k) = (sizes.drain_players, sizes.drain_pixels);
    let hub = Arc::new(HubProcess::start(binary).await?);
    let queued: Vec<Result<()>> = stream::iter(0..n)
        .map(|p| {
            let hub = Arc::clone(&hub);
            async move {
                let pixels: Vec<Value> = (0..k)
                    .map(|j| json!({"kind": "image", "url": format!("https://aff.example/d?p={p}&n={j}")}))
                    .collect();
                hub.enqueue(&format!("d-{p}"), &Value::Array(pixels)).await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    queued.into_iter().collect::<Result<Vec<()>>>()?;
    let (depth, _) = hub.stats().await?;
    ensure!(
        depth as usize == n * k,
        "drain: {depth} pixels queued, not {}",
        n * k
    );

    let received: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let (stop, stopped) = watch::channel(false);
    let connecting = Arc::new(Semaphore::new(sizes.connect_concurrency));
    let sources = Sources::new(sizes.sources);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for p in 0..n {
        let (connecting, received, stopped) =
            (connecting.clone(), received.clone(), stopped.clone());
        let (addr, source) = (hub.addr, sources.pick(p));
        tasks.spawn(async move {
            let permit = connecting.acquire_owned().await?;
            let browser = browser::open(addr, source, &format!("d-{p}")).await?;
            drop(permit);
            browser
                .run(stopped, |id, _| {
                    *received
                        .lock()
                        .expect("not poisoned")
                        .entry(id.to_owned())
                        .or_default() += 1;
                })
                .await
        });
    }
    let drained = until_drained(&hub, started, Duration::from_secs(600)).await;
    stop.send(true)?;
    let failed = join_all(tasks).await;
    let drained = drained?;
    Arc::try_unwrap(hub)
        .ok()
        .context("no browser holds the hub")?
        .stop()?;

    let received = received.lock().expect("not poisoned");
    let twice = received.values().filter(|c| **c > 1).count();
    ensure!(failed == 0, "drain: {failed} of {n} browsers failed");
    ensure!(
        received.len() == n * k,
        "drain: {} distinct pixels arrived, not {}",
        received.len(),
        n * k
    );
    ensure!(twice == 0, "drain: {twice} pixels arrived more than once");
    let mut out = report.run("drain", SYSTEM);
    out.add("pixels", (n * k) as f64, "pixels");
    out.add("seconds_to_last_ack", drained.as_secs_f64(), "s");
    out.add(
        "pixels_per_second",
        (n * k) as f64 / drained.as_secs_f64(),
        "pixels/s",
    );
    Ok(())
}

/// A small, fast pseudo-random sequence for picking players; statistical quality is not needed.
struct XorShift(u64);

impl XorShift {
    fn seeded(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One phase of `ingest`: `clients` loops posting `batch` pixels per request for `duration`; the
/// latency of every request, in microseconds, sorted.
async fn ingest_phase(
    hub: &Arc<HubProcess>,
    sizes: &Sizes,
    batch: usize,
    seq: &Arc<AtomicU64>,
) -> Result<Vec<u64>> {
    let deadline = Instant::now() + sizes.ingest_duration;
    let mut tasks = JoinSet::new();
    for client in 0..sizes.ingest_clients {
        let (hub, seq) = (Arc::clone(hub), Arc::clone(seq));
        tasks.spawn(async move {
            let mut rng = XorShift::seeded(client as u64 + 1);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let first = seq.fetch_add(batch as u64, Ordering::Relaxed);
                let pixels: Vec<Value> = (first..first + batch as u64)
                    .map(
                        |n| json!({"kind": "image", "url": format!("https://aff.example/i?n={n}")}),
                    )
                    .collect();
                let body = if batch == 1 {
                    pixels[0].clone()
                } else {
                    Value::Array(pixels)
                };
                let player = format!("i-{}", rng.below(50_000));
                let sent = Instant::now();
                hub.enqueue(&player, &body).await?;
                latencies.push(sent.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    all.sort_unstable();
    Ok(all)
}

/// **ingest**: the durable enqueue rate, first with single-pixel requests, then with batches, from
/// `ingest_clients` concurrent clients. Every `202` means the pixels are on disk.
pub async fn ingest(binary: &Path, sizes: &Sizes, report: &mut Report) -> Result<()> {
    let hub = Arc::new(HubProcess::start(binary).await?);
    let seq = Arc::new(AtomicU64::new(0));
    let single = ingest_phase(&hub, sizes, 1, &seq).await?;
    let batch = ingest_phase(&hub, sizes, sizes.ingest_batch, &seq).await?;
    let expected = single.len() + batch.len() * sizes.ingest_batch;
    let (depth, _) = hub.stats().await?;
    Arc::try_unwrap(hub)
        .ok()
        .context("no client holds the hub")?
        .stop()?;
    ensure!(
        depth as usize == expected,
        "ingest: {depth} pixels queued, but {expected} were answered 202"
    );

    let seconds = sizes.ingest_duration.as_secs_f64();
    let mut out = report.run("ingest", SYSTEM);
    out.add(
        "single_requests_per_second",
        single.len() as f64 / seconds,
        "requests/s",
    );
    out.add("single_p50", millis(quantile(&single, 0.5)), "ms");
    out.add("single_p99", millis(quantile(&single, 0.99)), "ms");
    let batched = (batch.len() * sizes.ingest_batch) as f64 / seconds;
    out.add("batch_pixels_per_second", batched, "pixels/s");
    out.add("batch_p50", millis(quantile(&batch, 0.5)), "ms");
    out.add("batch_p99", millis(quantile(&batch, 0.99)), "ms");
    Ok(())
}

/// When each pixel of `online` was sent and arrived (microseconds since the start), and how often it
/// arrived.
struct Timeline {
    start: Instant,
    sent: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
    arrivals: Vec<AtomicUsize>,
}

impl Timeline {
    fn new(total: usize) -> Self {
        let zeros = |_| AtomicU64::new(0);
        Self {
            start: Instant::now(),
            sent: (0..total).map(zeros).collect(),
            arrived: (0..total).map(zeros).collect(),
            arrivals: (0..total).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records a pixel's arrival from its URL's `seq`; pixels of other runs are ignored.
    fn arrive(&self, url: &str) {
        let seq = url
            .rsplit_once("seq=")
            .and_then(|(_, n)| n.parse::<usize>().ok());
        if let Some(seq) = seq.filter(|s| *s < self.sent.len()) {
            self.arrived[seq].store(self.now(), Ordering::Relaxed);
            self.arrivals[seq].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn all_arrived(&self) -> bool {
        self.arrivals.iter().all(|a| a.load(Ordering::Relaxed) > 0)
    }
}

/// **online**: N connected sessions; pixels queued at a fixed rate for random online players. Reports
/// the time from the enqueue request to the pixel's arrival in the browser.
pub async fn online(binary: &Path, sizes: &Sizes, report: &mut Report) -> Result<()> {
    let n = sizes.online_sessions;
    let total = (sizes.online_rate as f64 * sizes.online_duration.as_secs_f64()) as usize;
    let hub = Arc::new(HubProcess::start(binary).await?);
    let browsers = open_all(hub.addr, n, |i| format!("o-{i}"), sizes).await?;
    let timeline = Arc::new(Timeline::new(total));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for browser in browsers {
        let timeline = Arc::clone(&timeline);
        tasks.spawn(browser.run(stopped.clone(), move |_, url| timeline.arrive(url)));
    }

    // The generator: at each millisecond, queue what the rate says is due by now.
    let in_flight = Arc::new(Semaphore::new(512));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut rng = XorShift::seeded(7);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let generating = Instant::now();
    let mut next = 0usize;
    while next < total {
        tick.tick().await;
        let due =
            ((generating.elapsed().as_secs_f64() * sizes.online_rate as f64) as usize).min(total);
        while next < due {
            let permit = Arc::clone(&in_flight).acquire_owned().await?;
            let (hub, timeline, failures) = (hub.clone(), timeline.clone(), failures.clone());
            let (seq, player) = (next, rng.below(n));
            tokio::spawn(async move {
                let pixel =
                    json!({"kind": "image", "url": format!("https://aff.example/o?seq={seq}")});
                timeline.sent[seq].store(timeline.now(), Ordering::Relaxed);
                if hub.enqueue(&format!("o-{player}"), &pixel).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
            next += 1;
        }
    }
    let generated = generating.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !timeline.all_arrived() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let any second copy show itself before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(true)?;
    let lost = join_all(tasks).await;
    Arc::try_unwrap(hub)
        .ok()
        .context("no task holds the hub")?
        .stop()?;

    let counts: Vec<usize> = timeline
        .arrivals
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let missing = counts.iter().filter(|c| **c == 0).count();
    let twice = counts.iter().filter(|c| **c > 1).count();
    let failed = failures.load(Ordering::Relaxed);
    ensure!(failed == 0, "online: {failed} enqueue requests failed");
    ensure!(lost == 0, "online: the hub closed {lost} of {n} sessions");
    ensure!(
        missing == 0,
        "online: {missing} of {total} pixels never arrived"
    );
    ensure!(twice == 0, "online: {twice} pixels arrived more than once");
    let mut latencies: Vec<u64> = (0..total)
        .map(|seq| {
            let sent = timeline.sent[seq].load(Ordering::Relaxed);
            timeline.arrived[seq]
                .load(Ordering::Relaxed)
                .saturating_sub(sent)
        })
        .collect();
    latencies.sort_unstable();
    let mut out = report.run("online", SYSTEM);
    out.add("sessions", n as f64, "sessions");
    out.add(
        "pixels_per_second",
        total as f64 / generated.as_secs_f64(),
        "pixels/s",
    );
    out.add("latency_p50", millis(quantile(&latencies, 0.5)), "ms");
    out.add("latency_p99", millis(quantile(&latencies, 0.99)), "ms");
    out.add("latency_p999", millis(quantile(&latencies, 0.999)), "ms");
    Ok(())
}

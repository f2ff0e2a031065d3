//! The four scenarios, each run against one system at a time. Each checks its own result (every message
//! exactly once, no session lost) and fails loudly when the check fails: a fast wrong answer is not a
//! result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail, ensure};
use futures::{StreamExt, stream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::browser::Sources;
use crate::holder::{Helper, Hold};
use crate::hub::MachineTimes;
use crate::report::{Report, millis, quantile};
use crate::system::{Kind, Publisher, Session, System};

/// The sizes of a run; the defaults fit a 2-core, 24 GiB machine.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// `sessions`: idle sessions held.
    pub sessions: usize,
    /// `sessions`: how long they are held, heartbeats on.
    pub hold: Duration,
    /// `drain`: offline players with queued messages.
    pub drain_players: usize,
    /// `drain`: messages queued per player.
    pub drain_pixels: usize,
    /// `ingest`: concurrent publishers.
    pub ingest_clients: usize,
    /// `ingest`: length of each of its two phases (single messages, then batches).
    pub ingest_duration: Duration,
    /// `ingest`: messages per batch.
    pub ingest_batch: usize,
    /// `ingest`: players the messages go to, at random.
    pub ingest_players: usize,
    /// `online`: connected sessions.
    pub online_sessions: usize,
    /// `online`: messages queued per second, for random online players.
    pub online_rate: usize,
    /// `online`: how long messages are queued.
    pub online_duration: Duration,
    /// `online`: publishers the generator hands messages to.
    pub online_publishers: usize,
    /// `online`: where each message's latency is written, if anywhere (the system's name is added).
    pub online_latency_log: Option<PathBuf>,
    /// Loopback source addresses the clients connect from.
    pub sources: u8,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
}

/// What every scenario gets.
pub struct Run<'a> {
    /// The system to start.
    pub kind: Kind,
    /// The hub binary, for [`Kind::Hub`].
    pub hub_binary: &'a Path,
    /// How big.
    pub sizes: &'a Sizes,
}

impl Run<'_> {
    async fn start(&self) -> Result<System> {
        System::start(self.kind, self.hub_binary).await
    }
}

/// Opens a session for each of `players`, `connect_concurrency` at a time; the sessions come back in
/// the players' order.
async fn open_all(system: &System, players: Vec<String>, sizes: &Sizes) -> Result<Vec<Session>> {
    open_all_with(system, players, sizes, false).await
}

/// [`open_all`]; with `first`, all on a group's first process.
async fn open_all_with(
    system: &System,
    players: Vec<String>,
    sizes: &Sizes,
    first: bool,
) -> Result<Vec<Session>> {
    let sources = Sources::new(sizes.sources);
    let count = players.len();
    let opened: Vec<Result<Session>> = stream::iter(players.into_iter().enumerate())
        .map(|(i, player)| {
            let source = sources.pick(i);
            async move {
                if first {
                    system.open_first(source, &player).await
                } else {
                    system.open(source, &player).await
                }
            }
        })
        .buffered(sizes.connect_concurrency)
        .collect()
        .await;
    let failed = opened.iter().filter(|o| o.is_err()).count();
    let mut sessions = Vec::with_capacity(count);
    for opened in opened {
        match opened {
            Ok(session) => sessions.push(session),
            Err(e) => bail!("{failed} of {count} sessions failed to open; the first: {e:#}"),
        }
    }
    Ok(sessions)
}

/// Makes each of `players` known to the system while offline, `connect_concurrency` at a time.
async fn register_all(system: &System, players: &[String], sizes: &Sizes) -> Result<()> {
    let sources = Sources::new(sizes.sources);
    stream::iter(players.iter().enumerate())
        .map(|(i, player)| system.register_offline(sources.pick(i), player))
        .buffer_unordered(sizes.connect_concurrency)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect()
}

/// Waits for every session task; the number that ended in an error (the server closed them early).
async fn join_all(mut tasks: JoinSet<Result<()>>) -> usize {
    let mut failed = 0;
    while let Some(ended) = tasks.join_next().await {
        if !matches!(ended, Ok(Ok(()))) {
            failed += 1;
        }
    }
    failed
}

/// Payloads that arrived, and how often each did; and how many arrived that nobody sent to that client.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<HashMap<String, u32>>>, Arc<AtomicUsize>);

impl Arrivals {
    /// Records a payload that arrived at `player`, who was sent `<player>-0` to `<player>-<k-1>`.
    fn record(&self, player: &str, k: usize, payload: &str) {
        let ours = payload
            .strip_prefix(player)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|j| j.parse::<usize>().ok())
            .is_some_and(|j| j < k);
        if !ours {
            self.1.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *self
            .0
            .lock()
            .expect("not poisoned")
            .entry(payload.to_owned())
            .or_default() += 1;
    }

    /// Payloads that reached a client they were not sent to, or that nobody sent.
    fn strays(&self) -> usize {
        self.1.load(Ordering::Relaxed)
    }

    /// (distinct payloads, payloads that arrived more than once)
    fn counts(&self) -> (usize, usize) {
        let seen = self.0.lock().expect("not poisoned");
        (seen.len(), seen.values().filter(|c| **c > 1).count())
    }
}

/// **sessions**: N idle sessions held with heartbeats on. Reports the connect rate, the server's
/// resident memory per session (VmRSS after minus before, over N) and its CPU use while they idle.
pub async fn sessions(run: &Run<'_>, report: &mut Report) -> Result<()> {
    let (sizes, per_process) = (run.sizes, run.sizes.sessions);
    let system = run.start().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = system.rss()?;

    // A group of hub processes: the harness holds the first one's sessions, a helper process each
    // other one's (one process may not open that many files).
    let others = system.other_hubs();
    let n = per_process * (1 + others.len());
    let started = Instant::now();
    let holds: Vec<Hold> = others
        .into_iter()
        .enumerate()
        .map(|(k, addr)| Hold {
            addr,
            count: per_process,
            prefix: format!("s{}", k + 1),
            sources: sizes.sources,
            concurrency: sizes.connect_concurrency,
        })
        .collect();
    let helpers = tokio::task::spawn_blocking(move || {
        holds.iter().map(Helper::start).collect::<Result<Vec<_>>>()
    });
    let players = (0..per_process).map(|i| format!("s-{i}")).collect();
    let sessions = open_all_with(&system, players, sizes, true).await?;
    let helpers = helpers.await??;
    let connecting = started.elapsed();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for session in sessions {
        tasks.spawn(session.run(stopped.clone(), |_| {}));
    }

    // Let the connect burst settle (and a group's processes report their sessions to each other),
    // then measure the idle server over the hold.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = Instant::now() + Duration::from_secs(10);
    while !helpers.is_empty()
        && system.sessions_online().await? != Some(n as u64)
        && Instant::now() < settled
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu_before = system.cpu()?;
    let held_from = Instant::now();
    tokio::time::sleep(sizes.hold).await;
    let cpu = system.cpu()? - cpu_before;
    let held = held_from.elapsed();
    let rss_after = system.rss()?;
    let online = system.sessions_online().await?;
    stop.send(true)?;
    let mut lost = join_all(tasks).await;
    for helper in helpers {
        lost += tokio::task::spawn_blocking(move || helper.finish()).await??;
    }
    let name = system.name();
    system.stop()?;

    ensure!(
        lost == 0,
        "{name} closed {lost} of {n} idle sessions during the hold"
    );
    if let Some(online) = online {
        ensure!(
            online as usize == n,
            "{name} counted {online} sessions, not {n}"
        );
    }
    let mut out = report.run("sessions", name);
    out.add("sessions_held", n as f64, "sessions");
    let rate = n as f64 / connecting.as_secs_f64();
    out.add("connect_rate", rate, "sessions/s");
    ensure!(
        rss_after > rss_before,
        "{name}'s memory shrank while it took {n} sessions"
    );
    let per_session = (rss_after - rss_before) as f64 / n as f64;
    out.add("rss_per_session", per_session, "bytes");
    let idle = cpu.as_secs_f64() / held.as_secs_f64() * 100.0;
    out.add("idle_cpu", idle, "% of a core");
    Ok(())
}

/// Queues `per_player` payloads (`<prefix>-<player>-<j>`) for each player through 64 publishers.
async fn queue_for_each(
    system: &System,
    players: &[String],
    per_player: usize,
    sizes: &Sizes,
) -> Result<()> {
    let publishers = 64.min(players.len());
    let sources = Sources::new(sizes.sources);
    let mut tasks = JoinSet::new();
    for n in 0..publishers {
        let mut publisher = system.publisher(sources.pick(n), n).await?;
        let mine: Vec<String> = players
            .iter()
            .skip(n)
            .step_by(publishers)
            .cloned()
            .collect();
        tasks.spawn(async move {
            for player in mine {
                let payloads: Vec<String> =
                    (0..per_player).map(|j| format!("{player}-{j}")).collect();
                publisher.publish(&player, &payloads).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// **drain**: N offline players with k messages each, queued durably; then all connect at once and ack
/// everything. Reports the time until the last message is acked (for the hub: until its queue is empty,
/// every ack applied) and messages per second.
pub async fn drain(run: &Run<'_>, report: &mut Report) -> Result<()> {
    let (sizes, n, k) = (run.sizes, run.sizes.drain_players, run.sizes.drain_pixels);
    let system = run.start().await?;
    let players: Vec<String> = (0..n).map(|p| format!("d-{p}")).collect();
    register_all(&system, &players, sizes).await?;
    queue_for_each(&system, &players, k, sizes).await?;
    if let Some(depth) = system.pending().await? {
        ensure!(
            depth as usize == n * k,
            "drain: {depth} queued, not {}",
            n * k
        );
    }

    let arrivals = Arrivals::default();
    let (stop, stopped) = watch::channel(false);
    let connecting = Arc::new(Semaphore::new(sizes.connect_concurrency));
    let sources = Sources::new(sizes.sources);
    let system = Arc::new(system);
    let machine = MachineTimes::read()?;
    let server = system.cpu()?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (p, player) in players.into_iter().enumerate() {
        let (connecting, arrivals, stopped) =
            (connecting.clone(), arrivals.clone(), stopped.clone());
        let (system, source) = (Arc::clone(&system), sources.pick(p));
        tasks.spawn(async move {
            let permit = connecting.acquire_owned().await?;
            let session = system.resume(source, &player).await?;
            drop(permit);
            session
                .run(stopped, |payload| arrivals.record(&player, k, payload))
                .await
        });
    }
    let deadline = started + Duration::from_secs(600);
    let drained = loop {
        let (distinct, _) = arrivals.counts();
        if distinct >= n * k && system.pending().await?.unwrap_or(0) == 0 {
            break started.elapsed();
        }
        // (The hub's queue is asked only once every message arrived, so polling costs it nothing before.)
        let broke =
            std::iter::from_fn(|| tasks.try_join_next()).any(|ended| !matches!(ended, Ok(Ok(()))));
        if broke || Instant::now() > deadline {
            stop.send(true)?;
            let failed = join_all(tasks).await + usize::from(broke);
            bail!(
                "drain: {distinct} of {} arrived; {failed} sessions failed",
                n * k
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (_, stolen) = MachineTimes::read()?.since(&machine, drained);
    let server_cpu = system.cpu()?.saturating_sub(server);
    // Let any second copy show itself before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(true)?;
    let failed = join_all(tasks).await;
    let name = system.name();
    Arc::try_unwrap(system)
        .ok()
        .expect("every task is done")
        .stop()?;

    let (distinct, twice) = arrivals.counts();
    ensure!(
        failed == 0,
        "drain: {failed} of {n} sessions failed on {name}"
    );
    ensure!(
        distinct == n * k,
        "drain: {distinct} distinct arrived on {name}, not {}",
        n * k
    );
    ensure!(
        twice == 0,
        "drain: {twice} messages arrived more than once on {name}"
    );
    let strays = arrivals.strays();
    ensure!(
        strays == 0,
        "drain: {strays} messages reached the wrong client on {name}"
    );
    let mut out = report.run("drain", name);
    out.add("pixels", (n * k) as f64, "pixels");
    out.add("seconds_to_last_ack", drained.as_secs_f64(), "s");
    let rate = (n * k) as f64 / drained.as_secs_f64();
    out.add("pixels_per_second", rate, "pixels/s");
    out.add("server_cpu_per_pixel", micros_each(server_cpu, n * k), "µs");
    out.add("machine_steal", stolen, "%");
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

/// What one phase of `ingest` measured.
struct IngestPhase {
    /// The latency of every call, in microseconds, sorted.
    latencies: Vec<u64>,
    /// From the first call until the last one ended.
    took: Duration,
    /// The machine's steal over the phase, in percent.
    steal: f64,
    /// The server's CPU time over the phase.
    server_cpu: Duration,
}

/// One phase of `ingest`: each publisher loops queueing `batch` messages per call for `duration`.
async fn ingest_phase(
    system: &System,
    sizes: &Sizes,
    batch: usize,
    seq: &Arc<AtomicU64>,
) -> Result<IngestPhase> {
    let sources = Sources::new(sizes.sources);
    let mut publishers = Vec::with_capacity(sizes.ingest_clients);
    for client in 0..sizes.ingest_clients {
        publishers.push(system.publisher(sources.pick(client), client).await?);
    }
    // Connected before the clock starts; calls begun before the deadline finish and count, so the rate
    // is over the time until the last one ends.
    let machine = MachineTimes::read()?;
    let server = system.cpu()?;
    let started = Instant::now();
    let deadline = started + sizes.ingest_duration;
    let mut tasks = JoinSet::new();
    for (client, mut publisher) in publishers.into_iter().enumerate() {
        let (seq, players) = (Arc::clone(seq), sizes.ingest_players);
        tasks.spawn(async move {
            let mut rng = XorShift::seeded(client as u64 + 1);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let first = seq.fetch_add(batch as u64, Ordering::Relaxed);
                let payloads: Vec<String> = (first..first + batch as u64)
                    .map(|n| format!("i-{n}"))
                    .collect();
                let player = format!("i-{}", rng.below(players));
                let sent = Instant::now();
                publisher.publish(&player, &payloads).await?;
                latencies.push(sent.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    let took = started.elapsed();
    let (_, steal) = MachineTimes::read()?.since(&machine, took);
    let server_cpu = system.cpu()?.saturating_sub(server);
    all.sort_unstable();
    Ok(IngestPhase {
        latencies: all,
        took,
        steal,
        server_cpu,
    })
}

/// **ingest**: the durable enqueue rate, first one message per call, then batches, from
/// `ingest_clients` concurrent publishers, for players known to the system.
pub async fn ingest(run: &Run<'_>, report: &mut Report) -> Result<()> {
    let sizes = run.sizes;
    let system = run.start().await?;
    let players: Vec<String> = (0..sizes.ingest_players)
        .map(|p| format!("i-{p}"))
        .collect();
    register_all(&system, &players, sizes).await?;
    let seq = Arc::new(AtomicU64::new(0));
    let single = ingest_phase(&system, sizes, 1, &seq).await?;
    let batch = ingest_phase(&system, sizes, sizes.ingest_batch, &seq).await?;
    let (calls, batches) = (single.latencies.len(), batch.latencies.len());
    let batched_pixels = batches * sizes.ingest_batch;
    let expected = calls + batched_pixels;
    let pending = system.pending().await?;
    let name = system.name();
    system.stop()?;
    if let Some(depth) = pending {
        ensure!(
            depth as usize == expected,
            "ingest: {depth} queued on {name}, but {expected} were acknowledged"
        );
    }

    let mut out = report.run("ingest", name);
    let singles = calls as f64 / single.took.as_secs_f64();
    out.add("single_requests_per_second", singles, "requests/s");
    out.add("single_p50", millis(quantile(&single.latencies, 0.5)), "ms");
    out.add(
        "single_p99",
        millis(quantile(&single.latencies, 0.99)),
        "ms",
    );
    let per_call = micros_each(single.server_cpu, calls);
    out.add("single_server_cpu", per_call, "µs");
    out.add("single_machine_steal", single.steal, "%");
    let batched = batched_pixels as f64 / batch.took.as_secs_f64();
    out.add("batch_pixels_per_second", batched, "pixels/s");
    out.add("batch_p50", millis(quantile(&batch.latencies, 0.5)), "ms");
    out.add("batch_p99", millis(quantile(&batch.latencies, 0.99)), "ms");
    let per_pixel = micros_each(batch.server_cpu, batched_pixels);
    out.add("batch_server_cpu_per_pixel", per_pixel, "µs");
    out.add("batch_machine_steal", batch.steal, "%");
    Ok(())
}

/// Writes `<prefix>-<system>.tsv`: a header, then per message in order when it was due (Unix
/// milliseconds) and its latency (microseconds).
fn write_latency_log(
    prefix: &Path,
    system: &str,
    timeline: &Timeline,
    latencies: &[u64],
) -> Result<()> {
    let mut name = prefix.as_os_str().to_owned();
    name.push(format!("-{system}.tsv"));
    let mut text = String::from("due_unix_ms\tlatency_us\taccepted_us\n");
    for ((sent, accepted), latency) in timeline.sent.iter().zip(&timeline.accepted).zip(latencies) {
        let sent = sent.load(Ordering::Relaxed);
        let due_us = timeline.start_unix_us + sent;
        let accepted = accepted.load(Ordering::Relaxed).saturating_sub(sent);
        text += &format!(
            "{}.{:03}\t{latency}\t{accepted}\n",
            due_us / 1000,
            due_us % 1000
        );
    }
    std::fs::write(&name, text)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", PathBuf::from(&name).display()))
}

/// When each message of `online` was due and arrived (microseconds since the start), whom it was for,
/// and how often it arrived; and how many reached another client.
struct Timeline {
    start: Instant,
    /// `start` on the wall clock, in Unix microseconds: what a latency log is lined up by.
    start_unix_us: u64,
    sent: Vec<AtomicU64>,
    /// When the system answered the call that queued it (its `202`, or the broker's publish ack).
    accepted: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
    arrivals: Vec<AtomicUsize>,
    addressee: Vec<AtomicUsize>,
    strays: AtomicUsize,
}

impl Timeline {
    fn new(total: usize) -> Self {
        let zeros = |_| AtomicU64::new(0);
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            start: Instant::now(),
            start_unix_us: since_epoch.as_micros() as u64,
            sent: (0..total).map(zeros).collect(),
            accepted: (0..total).map(zeros).collect(),
            arrived: (0..total).map(zeros).collect(),
            arrivals: (0..total).map(|_| AtomicUsize::new(0)).collect(),
            addressee: (0..total).map(|_| AtomicUsize::new(0)).collect(),
            strays: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records the arrival of the payload `seq=<n>` at client `receiver`; anything else, or a message
    /// for another client, is a stray.
    fn arrive(&self, receiver: usize, payload: &str) {
        let seq = payload
            .strip_prefix("seq=")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|s| *s < self.sent.len());
        match seq {
            Some(seq) if self.addressee[seq].load(Ordering::Relaxed) == receiver => {
                self.arrived[seq].store(self.now(), Ordering::Relaxed);
                self.arrivals[seq].fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.strays.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn all_arrived(&self) -> bool {
        self.arrivals.iter().all(|a| a.load(Ordering::Relaxed) > 0)
    }
}

/// **online**: N connected sessions; messages queued at a fixed rate for random online players.
/// Reports the time from the queueing call to the message's arrival at the client.
pub async fn online(run: &Run<'_>, report: &mut Report) -> Result<()> {
    let (sizes, n) = (run.sizes, run.sizes.online_sessions);
    let total = (sizes.online_rate as f64 * sizes.online_duration.as_secs_f64()) as usize;
    let system = run.start().await?;
    let sessions = open_all(&system, (0..n).map(|i| format!("o-{i}")).collect(), sizes).await?;
    let timeline = Arc::new(Timeline::new(total));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (receiver, session) in sessions.into_iter().enumerate() {
        let timeline = Arc::clone(&timeline);
        tasks.spawn(session.run(stopped.clone(), move |payload| {
            timeline.arrive(receiver, payload)
        }));
    }

    // Publishers take (seq, player) from one queue, in order.
    let (work, queue) = mpsc::channel::<(usize, usize)>(total.max(1));
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let sources = Sources::new(sizes.sources);
    let mut publishers = JoinSet::new();
    for p in 0..sizes.online_publishers {
        let mut publisher: Publisher = system.publisher(sources.pick(p), p).await?;
        let queue = Arc::clone(&queue);
        let timeline = Arc::clone(&timeline);
        publishers.spawn(async move {
            loop {
                let next = queue.lock().await.recv().await;
                let Some((seq, player)) = next else { break };
                publisher
                    .publish(&format!("o-{player}"), &[format!("seq={seq}")])
                    .await?;
                timeline.accepted[seq].store(timeline.now(), Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        });
    }

    // The generator: at each millisecond, hand out what the rate says is due by now.
    let mut rng = XorShift::seeded(7);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let machine_before = MachineTimes::read()?;
    let server_before = system.cpu()?;
    let generating = Instant::now();
    let generating_at = timeline.now();
    let mut next = 0usize;
    while next < total {
        tick.tick().await;
        // Message `i` is due at i / rate: every one due by now, the one at the very start included.
        let due = (generating.elapsed().as_secs_f64() * sizes.online_rate as f64) as usize + 1;
        while next < due.min(total) {
            // Timed from when it was due, not from when the generator or a publisher got to it: a
            // system that falls behind the rate shows the wait in its latency (no coordinated omission).
            let due_at = generating_at + (next as f64 * 1e6 / sizes.online_rate as f64) as u64;
            timeline.sent[next].store(due_at, Ordering::Relaxed);
            let player = rng.below(n);
            timeline.addressee[next].store(player, Ordering::Relaxed);
            work.send((next, player)).await?;
            next += 1;
        }
    }
    drop(work);
    let mut failed = 0;
    while let Some(done) = publishers.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let generated = generating.elapsed();
    let (busy_cores, steal_percent) = MachineTimes::read()?.since(&machine_before, generated);
    let server_cpu = system.cpu()?.saturating_sub(server_before);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !timeline.all_arrived() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let any second copy show itself before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(true)?;
    let lost = join_all(tasks).await;
    let name = system.name();
    system.stop()?;

    let counts: Vec<usize> = timeline
        .arrivals
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let missing = counts.iter().filter(|c| **c == 0).count();
    let twice = counts.iter().filter(|c| **c > 1).count();
    let strays = timeline.strays.load(Ordering::Relaxed);
    ensure!(
        strays == 0,
        "online: {strays} messages reached the wrong client on {name}"
    );
    ensure!(failed == 0, "online: {failed} publishers failed on {name}");
    ensure!(lost == 0, "online: {name} closed {lost} of {n} sessions");
    ensure!(
        missing == 0,
        "online: {missing} of {total} messages never arrived on {name}"
    );
    ensure!(
        twice == 0,
        "online: {twice} messages arrived more than once on {name}"
    );
    let mut latencies: Vec<u64> = (0..total)
        .map(|seq| {
            let sent = timeline.sent[seq].load(Ordering::Relaxed);
            timeline.arrived[seq]
                .load(Ordering::Relaxed)
                .saturating_sub(sent)
        })
        .collect();
    if let Some(prefix) = &sizes.online_latency_log {
        write_latency_log(prefix, name, &timeline, &latencies)?;
    }
    latencies.sort_unstable();
    let mut out = report.run("online", name);
    out.add("sessions", n as f64, "sessions");
    let rate = total as f64 / generated.as_secs_f64();
    out.add("pixels_per_second", rate, "pixels/s");
    out.add("latency_p50", millis(quantile(&latencies, 0.5)), "ms");
    out.add("latency_p99", millis(quantile(&latencies, 0.99)), "ms");
    out.add("latency_p999", millis(quantile(&latencies, 0.999)), "ms");
    out.add("server_cpu_per_pixel", micros_each(server_cpu, total), "µs");
    // The whole machine (harness included) while the pixels were queued: on a virtual machine, time
    // its host took away stalls every thread at once, whatever the system under test does.
    out.add("machine_busy_cores", busy_cores, "cores");
    out.add("machine_steal", steal_percent, "%");
    Ok(())
}

/// The server's CPU time during a phase, per message of it, in microseconds: what one message costs
/// the server whatever the machine's other load. Work a server defers past the phase (the hub's
/// checkpoint of its last second) is not in it.
fn micros_each(cpu: Duration, messages: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / messages.max(1) as f64
}

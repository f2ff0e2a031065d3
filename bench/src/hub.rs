//! The hub under test: a real `pixelhub` process with its data in a temp folder, started and stopped by
//! the harness, and the admin API calls the scenarios make.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

/// The brand every scenario uses.
pub const BRAND: &str = "bench";

/// A running hub process.
pub struct HubProcess {
    process: Server,
    /// Where it listens.
    pub addr: SocketAddr,
    token: String,
    http: reqwest::Client,
    /// Its name in the results: `hub`, or `hub-memory` for one on the memory engine.
    pub label: &'static str,
    _data: tempfile::TempDir,
}

impl HubProcess {
    /// Starts `binary` on a free loopback port with a fresh data dir, limits opened up for a load test
    /// from a handful of loopback addresses, and waits until it answers.
    pub async fn start(binary: &Path) -> Result<Self> {
        Self::start_with(binary, &[]).await
    }

    /// As [`HubProcess::start`], with more settings as environment variables.
    pub async fn start_with(binary: &Path, settings: &[(&str, &str)]) -> Result<Self> {
        let data = tempfile::tempdir().context("a temp dir for the hub's data")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Self::launch(binary, settings, data, format!("bench-{nanos:032x}")).await
    }

    /// Stops this hub and starts `binary` again on its data, as a restart in production does.
    pub async fn restart(self, binary: &Path, settings: &[(&str, &str)]) -> Result<Self> {
        let HubProcess {
            process,
            token,
            label,
            _data: data,
            ..
        } = self;
        process.stop()?;
        let mut hub = Self::launch(binary, settings, data, token).await?;
        hub.label = label;
        Ok(hub)
    }

    async fn launch(
        binary: &Path,
        settings: &[(&str, &str)],
        data: tempfile::TempDir,
        token: String,
    ) -> Result<Self> {
        // A port the kernel just gave out and took back; the hub binds it a moment later.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.path().join("hub.log"))?;
        let process = Server::spawn(
            Command::new(binary)
                .args(["--listen", &addr.to_string(), "--data-dir"])
                .arg(data.path().join("data"))
                .env("PIXELHUB_ADMIN_TOKEN", &token)
                .env("PIXELHUB_DEMO", "false")
                .env("PIXELHUB_LOG_LEVEL", "warn")
                // Every simulated browser comes from a few loopback addresses, and players get many pixels.
                .env("PIXELHUB_MAX_CONNECTIONS_PER_IP", "1000000")
                .env("PIXELHUB_MAX_QUEUE_PER_PLAYER", "1000000")
                .envs(settings.iter().copied())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log)),
        )
        .with_context(|| format!("cannot start the hub at {}", binary.display()))?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut hub = HubProcess {
            process,
            addr,
            token,
            http,
            label: "hub",
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = hub.process.exited()? {
                bail!("the hub exited at start ({status}); its log: {}", hub.log());
            }
            let ready = hub.http.get(hub.url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the hub did not become ready in 20 s; its log: {}",
                    hub.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let created = hub
            .admin(reqwest::Method::PUT, &format!("/api/v1/brands/{BRAND}"))
            .json(&json!({"name": "Benchmark"}))
            .send()
            .await?;
        if !created.status().is_success() {
            bail!("creating the brand failed: {}", created.status());
        }
        Ok(hub)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._data.path().join("hub.log")).unwrap_or_default()
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// Queues `pixels` (one object or an array) for `player`; fails unless the hub answers 202, which
    /// means they are on disk.
    pub async fn enqueue(&self, player: &str, pixels: &Value) -> Result<()> {
        let path = format!("/api/v1/brands/{BRAND}/players/{player}/pixels");
        let answer = self
            .admin(reqwest::Method::POST, &path)
            .json(pixels)
            .send()
            .await?;
        if answer.status() != reqwest::StatusCode::ACCEPTED {
            bail!(
                "enqueue answered {}: {}",
                answer.status(),
                answer.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// `/api/v1/stats`: pending pixels over all brands and sessions in the process.
    pub async fn stats(&self) -> Result<(u64, u64)> {
        let stats: Value = self
            .admin(reqwest::Method::GET, "/api/v1/stats")
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok((
            stats["queue_depth"].as_u64().unwrap_or(u64::MAX),
            stats["sessions"].as_u64().unwrap_or(0),
        ))
    }

    /// The process id, for its memory and CPU figures.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Bytes the hub's data dir takes on disk.
    pub fn data_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self._data.path().join("data"))
    }

    /// Stops the hub with SIGTERM, as an operator would, and waits for it.
    pub fn stop(self) -> Result<()> {
        self.process.stop()
    }
}

/// Has the kernel stop the server when the harness dies (Ctrl-C, a panic), so no run leaves one behind.
fn dies_with_harness(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Where `program` is: on the PATH, or in the sbin directories Debian puts servers in.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A server process the harness started: it dies with the harness, is stopped with SIGTERM by
/// [`Server::stop`], and is killed if dropped on an error path.
pub struct Server(Child);

impl Server {
    /// Starts `command`.
    pub fn spawn(command: &mut Command) -> std::io::Result<Self> {
        dies_with_harness(command).spawn().map(Server)
    }

    /// The process id, for its memory and CPU figures.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.0.try_wait()?)
    }

    /// Sends SIGTERM and waits up to 30 s for the process to exit.
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("the process did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmRSS` of a process, in bytes.
pub fn proc_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kib * 1024)
}

/// User plus system CPU time of a process, from `/proc/<pid>/stat` (fields 14 and 15, in clock ticks).
pub fn proc_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    let rest = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// The whole machine's CPU time since boot, from the first line of `/proc/stat`: what its CPUs were busy
/// with, idle for, and had *stolen* (time a virtual machine's CPU was ready to run but its host ran
/// something else: on a VM, the stalls no process here can see).
#[derive(Clone, Copy, Debug)]
pub struct MachineTimes {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl MachineTimes {
    /// Reads them now.
    pub fn read() -> Result<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat")?)
    }

    /// From the text of `/proc/stat`.
    fn parse(stat: &str) -> Result<Self> {
        let line = stat
            .lines()
            .next()
            .filter(|l| l.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()?;
        ensure!(ticks.len() >= 8, "short cpu line in /proc/stat");
        // user nice system idle iowait irq softirq steal …
        Ok(Self {
            busy: ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6],
            idle: ticks[3] + ticks[4],
            steal: ticks[7],
        })
    }

    /// Since `earlier`: the CPUs' busy time in cores (over `elapsed`), and the share of all their time
    /// that was stolen, in percent.
    pub fn since(&self, earlier: &Self, elapsed: Duration) -> (f64, f64) {
        let ticks = clock_ticks() as f64;
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64;
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        let all = busy + idle + steal;
        let cores = busy / ticks / elapsed.as_secs_f64().max(1e-3);
        let stolen = if all > 0.0 { 100.0 * steal / all } else { 0.0 };
        (cores, stolen)
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// The hub binary next to this one (both are built into the same target directory).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("pixelhub")))
        .unwrap_or_else(|| PathBuf::from("target/release/pixelhub"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_times_count_steal_apart_from_busy_and_idle() {
        let stat = |user: u64, idle: u64, steal: u64| {
            format!("cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
        };
        let before = MachineTimes::parse(&stat(1_000, 5_000, 10)).unwrap();
        let ticks = clock_ticks();
        // One second: 1.5 cores busy, 0.4 idle, 0.1 stolen.
        let after = MachineTimes::parse(&stat(
            1_000 + ticks * 3 / 2,
            5_000 + ticks * 2 / 5,
            10 + ticks / 10,
        ))
        .unwrap();
        let (cores, stolen) = after.since(&before, Duration::from_secs(1));
        assert!((cores - 1.5).abs() < 0.02, "{cores}");
        assert!((stolen - 5.0).abs() < 0.2, "{stolen}");
        assert!(
            MachineTimes::parse("cpu  1 2 3\n").is_err(),
            "too few fields"
        );
        assert!(
            MachineTimes::parse("intr 1 2 3 4 5 6 7 8\n").is_err(),
            "no cpu line"
        );
    }
}

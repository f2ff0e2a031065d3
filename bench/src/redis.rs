//! A redis-server of the harness's own for the hub's Redis engine: a free port, a temp dir, durable as
//! the hub requires (every write in the append-only file, synced before the answer), no snapshots.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::net::TcpStream;

use crate::hub::{Server, find_program};

/// A running redis-server.
pub struct RedisServer {
    process: Server,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one and waits until it listens.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir().context("a temp dir for redis-server")?;
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let binary = find_program("redis-server")
            .context("redis-server is not installed (scripts/bench installs it)")?;
        let process = Server::spawn(
            Command::new(binary)
                .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir.path())
                .args([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                ])
                .args(["--maxmemory-policy", "noeviction"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("cannot start redis-server")?;
        let mut server = RedisServer {
            process,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).await.is_err() {
            if let Some(status) = server.process.exited()? {
                bail!("redis-server exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    /// The hub's `--store` for it.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// The process id, for its memory and CPU figures.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops it with SIGTERM and waits.
    pub fn stop(self) -> Result<()> {
        self.process.stop()
    }
}

//! Sessions held by a helper process: a process may open only so many files (20,000 here), and a
//! group of hub processes holding 18,000 sessions each needs more sockets than one harness process can
//! have. For each hub but the first, the harness starts itself again with `--hold-sessions`; the helper
//! opens its sessions, says `ready`, holds them (answering pings, as a browser does) until its standard
//! input closes, then says how many the hub closed meanwhile.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, stream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::browser;
use crate::browser::Sources;

/// What a helper is asked to hold.
#[derive(Clone, Debug)]
pub struct Hold {
    /// The hub process.
    pub addr: SocketAddr,
    /// How many sessions.
    pub count: usize,
    /// Their players are `<prefix>-<i>`.
    pub prefix: String,
    /// Source addresses to connect from (127.0.0.2 up).
    pub sources: u8,
    /// Connections opened at once.
    pub concurrency: usize,
}

/// The helper's side: opens, holds, reports. Runs as the whole process.
pub async fn serve(hold: Hold) -> Result<()> {
    let sources = Sources::new(hold.sources);
    let opened: Vec<Result<browser::Browser>> = stream::iter(0..hold.count)
        .map(|i| {
            let player = format!("{}-{i}", hold.prefix);
            let source = sources.pick(i);
            async move { browser::open(hold.addr, source, &player).await }
        })
        .buffered(hold.concurrency)
        .collect()
        .await;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for session in opened {
        let session = session.context("a held session did not open")?;
        tasks.spawn(session.run(stopped.clone(), |_, _| {}));
    }
    println!("ready {}", hold.count);
    std::io::stdout().flush()?;
    // Hold until the harness closes our standard input.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
    })
    .await?;
    stop.send(true)?;
    let mut lost = 0;
    while let Some(ended) = tasks.join_next().await {
        if !matches!(ended, Ok(Ok(()))) {
            lost += 1;
        }
    }
    println!("lost {lost}");
    Ok(())
}

/// The harness's side: a helper holding sessions.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    /// Starts a helper and waits until it holds its sessions.
    pub fn start(hold: &Hold) -> Result<Helper> {
        let exe = std::env::current_exe().context("the harness's own path")?;
        let mut child = Command::new(exe)
            .args(["--hold-sessions", &hold.addr.to_string()])
            .args(["--hold-count", &hold.count.to_string()])
            .args(["--hold-prefix", &hold.prefix])
            .args(["--sources", &hold.sources.to_string()])
            .args(["--connect-concurrency", &hold.concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a helper to hold sessions")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("the helper's output")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if !line.starts_with("ready") {
            bail!(
                "the helper holding {} sessions failed: {line:?}",
                hold.count
            );
        }
        Ok(Helper {
            child,
            stdin,
            stdout,
        })
    }

    /// Lets the sessions go; how many the hub closed while they were held.
    pub fn finish(mut self) -> Result<usize> {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        self.child.wait()?;
        line.trim()
            .strip_prefix("lost ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the helper's last word: {line:?}"))
    }
}

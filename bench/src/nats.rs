//! NATS JetStream as a peer: one work-queue stream holding every player's messages (`p.<player>`), a
//! durable pull consumer per player created when the player connects, explicit acks. Clients speak NATS's
//! native protocol through async-nats, the official client: its WebSocket transport is optional and the
//! server's WebSocket listener needs TLS or an explicit opt-out, so the native TCP path is the one a user
//! would run. Every client connects from 127.0.0.1 (the client cannot choose its source address).

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The stream every message goes to.
const STREAM: &str = "PIXELS";

/// The subject a player's messages go to.
pub fn subject(player: &str) -> String {
    format!("p.{player}")
}

/// A nats-server process with JetStream, its store in a temp folder.
pub struct NatsServer {
    process: crate::hub::Server,
    /// Its client port.
    pub addr: SocketAddr,
    /// The harness's own connection, for the stream's figures.
    js: jetstream::Context,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server` with JetStream on a free loopback port and creates the work-queue stream.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let binary = crate::hub::find_program("nats-server")
            .context("nats-server is not installed (scripts/bench installs it)")?;
        let mut process = crate::hub::Server::spawn(
            Command::new(binary)
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &addr.port().to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(dir.path())
                .arg("-l")
                .arg(dir.path().join("nats.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("cannot start nats-server")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).await.is_err() {
            if let Some(status) = process.exited()? {
                bail!("nats-server exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let js = jetstream::new(async_nats::connect(addr.to_string()).await?);
        js.get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["p.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the stream: {e}"))?;
        Ok(Self {
            process,
            addr,
            js,
            _dir: dir,
        })
    }

    /// Messages the stream holds: published and not yet acknowledged, since a work queue drops a
    /// message at its ack. The check that what was acknowledged to a publisher was kept.
    pub async fn pending(&self) -> Result<u64> {
        Ok(the_stream(&self.js).await?.cached_info().state.messages)
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

/// The work-queue stream, with its figures as of now.
async fn the_stream(js: &jetstream::Context) -> Result<stream::Stream> {
    js.get_stream(STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("the stream: {e}"))
}

/// A player's client: its connection and its durable consumer's message stream.
pub struct NatsSession {
    // Held so the connection lives as long as the session.
    _client: async_nats::Client,
    messages: consumer::pull::Stream,
}

impl NatsSession {
    /// Connects as `player` and creates (or finds) its durable consumer on the player's subject.
    pub async fn open(server: SocketAddr, player: &str) -> Result<Self> {
        let client = async_nats::connect(server.to_string()).await?;
        let js = jetstream::new(client.clone());
        let consumer: consumer::PullConsumer = the_stream(&js)
            .await?
            .get_or_create_consumer(
                player,
                consumer::pull::Config {
                    durable_name: Some(player.to_owned()),
                    filter_subject: subject(player),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("the consumer of {player}: {e}"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("pulling for {player}: {e}"))?;
        Ok(Self {
            _client: client,
            messages,
        })
    }

    /// Serves the consumer until `stop`: acks every message, then hands its payload to `on_message`.
    pub async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut on_message: impl FnMut(&str),
    ) -> Result<()> {
        loop {
            let message = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                message = self.messages.next() => message,
            };
            let message = message
                .context("the consumer's stream ended")?
                .map_err(|e| anyhow::anyhow!("receiving: {e}"))?;
            message
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("acking: {e}"))?;
            on_message(std::str::from_utf8(&message.payload).unwrap_or_default());
        }
        Ok(())
    }
}

/// Publishes to JetStream and waits for the stream's acknowledgement of each message.
pub struct NatsPublisher {
    js: jetstream::Context,
}

impl NatsPublisher {
    /// A connection of its own.
    pub async fn connect(server: SocketAddr) -> Result<Self> {
        Ok(Self {
            js: jetstream::new(async_nats::connect(server.to_string()).await?),
        })
    }

    /// Publishes each payload to the player's subject, all at once, and waits for every ack.
    pub async fn publish_all(&self, player: &str, payloads: &[String]) -> Result<()> {
        let mut acks = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let ack = self
                .js
                .publish(subject(player), payload.clone().into())
                .await
                .map_err(|e| anyhow::anyhow!("publishing: {e}"))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| anyhow::anyhow!("the stream's ack: {e}"))?;
        }
        Ok(())
    }
}

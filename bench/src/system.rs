//! The systems a scenario runs against, behind one shape: start and stop the server, open a player's
//! session, queue messages for a player durably, and read the server's process figures.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::browser::{self, Browser};
use crate::hub::HubProcess;
use crate::mqtt::{self, Mosquitto, MqttConn};
use crate::nats::{NatsPublisher, NatsServer, NatsSession};
use crate::redis::RedisServer;

/// Longest a connect, handshake or acknowledged publish may take before the run fails: a stalled server
/// must fail the scenario, not hang it.
const PATIENCE: Duration = Duration::from_secs(60);

async fn in_time<T>(what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(PATIENCE, work)
        .await
        .map_err(|_| anyhow::anyhow!("{what} took over {PATIENCE:?}"))?
}

/// Which system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// pixelhub: its wire protocol over WebSocket, pixels queued through its HTTP API.
    Hub,
    /// pixelhub on its memory engine (`PIXELHUB_STORE=memory`): nothing is stored, so its figures are
    /// what the hub's HTTP, WebSocket and rules cost alone, the ceiling of any storage engine on this
    /// machine.
    HubMemory,
    /// pixelhub on Redis (`PIXELHUB_STORE=redis://…`, a redis-server of the harness's own with
    /// `appendfsync always`): one process.
    HubRedis,
    /// Two pixelhub processes on one Redis, one hub: each player's sessions on one of them, queueing
    /// spread over both.
    #[value(name = "hub-redis-2")]
    HubRedis2,
    /// Eclipse Mosquitto: MQTT over WebSocket, persistent sessions, QoS 1.
    Mosquitto,
    /// NATS JetStream: a work-queue stream, a durable consumer per player, explicit acks.
    Nats,
}

impl Kind {
    /// The name in the table and the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hub => "hub",
            Kind::HubMemory => "hub-memory",
            Kind::HubRedis => "hub-redis",
            Kind::HubRedis2 => "hub-redis-2",
            Kind::Mosquitto => "mosquitto",
            Kind::Nats => "nats",
        }
    }

    /// When an acknowledged message is on disk, as each system is configured here: what the table's
    /// durability row says, so its rates are read like for like.
    pub fn durability(self) -> &'static str {
        match self {
            Kind::Hub => "fdatasync before each 202 and ack",
            Kind::HubMemory => "none: memory only, lost on exit",
            Kind::HubRedis | Kind::HubRedis2 => "Redis AOF fsync'd before each 202 and ack",
            Kind::Mosquitto => "memory; saved every 30 min",
            Kind::Nats => "memory; fsync every 2 min",
        }
    }
}

/// A running server.
pub enum System {
    /// The hub.
    Hub(Arc<HubProcess>),
    /// Hub processes on one Redis.
    HubGroup(Box<HubGroup>),
    /// Mosquitto.
    Mosquitto(Mosquitto),
    /// nats-server with JetStream.
    Nats(Box<NatsServer>),
}

/// A player's live session: a browser on the hub, a subscriber on a peer.
pub enum Session {
    /// A simulated browser.
    Hub(Browser),
    /// An MQTT client with a persistent session.
    Mqtt(MqttConn),
    /// A NATS client with its durable consumer.
    Nats(NatsSession),
}

/// Something that queues messages for players and waits until the server has them.
pub enum Publisher {
    /// The hub's HTTP API; a `202` means the pixels are on disk.
    Hub(Arc<HubProcess>),
    /// An MQTT connection publishing at QoS 1; a PUBACK means the broker has the message.
    Mqtt(Box<MqttConn>),
    /// A JetStream publisher; the stream's ack means the message is stored.
    Nats(Box<NatsPublisher>),
}

impl System {
    /// Starts a fresh server of `kind`.
    pub async fn start(kind: Kind, hub_binary: &Path) -> Result<Self> {
        Ok(match kind {
            Kind::Hub => System::Hub(Arc::new(HubProcess::start(hub_binary).await?)),
            Kind::HubMemory => {
                let mut hub =
                    HubProcess::start_with(hub_binary, &[("PIXELHUB_STORE", "memory")]).await?;
                hub.label = Kind::HubMemory.name();
                System::Hub(Arc::new(hub))
            }
            Kind::HubRedis | Kind::HubRedis2 => {
                let count = if kind == Kind::HubRedis { 1 } else { 2 };
                System::HubGroup(Box::new(HubGroup::start(kind, count, hub_binary).await?))
            }
            Kind::Mosquitto => System::Mosquitto(Mosquitto::start().await?),
            Kind::Nats => System::Nats(Box::new(NatsServer::start().await?)),
        })
    }

    /// Its processes (the hub's, Redis's among them), whose CPU and memory are its figures.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            System::HubGroup(group) => group
                .hubs
                .iter()
                .map(|h| h.pid())
                .chain([group.redis.pid()])
                .collect(),
            other => vec![other.pid()],
        }
    }

    /// User plus system CPU time of its processes.
    pub fn cpu(&self) -> Result<Duration> {
        self.pids().into_iter().map(crate::hub::proc_cpu).sum()
    }

    /// Resident memory of its processes, in bytes.
    pub fn rss(&self) -> Result<u64> {
        self.pids().into_iter().map(crate::hub::proc_rss).sum()
    }

    /// A group's hub processes beyond the first, whose share of the `sessions` scenario helper
    /// processes hold (none for any other system).
    pub fn other_hubs(&self) -> Vec<SocketAddr> {
        match self {
            System::HubGroup(group) => group.hubs[1..].iter().map(|h| h.addr).collect(),
            _ => Vec::new(),
        }
    }

    /// Opens `player`'s session on the group's first process (the one the harness holds sessions of
    /// itself), or as [`System::open`] does.
    pub async fn open_first(&self, source: IpAddr, player: &str) -> Result<Session> {
        match self {
            System::HubGroup(group) => {
                let addr = group.hubs[0].addr;
                in_time("opening a session", async {
                    Ok(Session::Hub(browser::open(addr, source, player).await?))
                })
                .await
            }
            _ => self.open(source, player).await,
        }
    }

    /// The hub process serving `player` (its sessions) or publisher `n`, for a group; the one hub
    /// otherwise.
    fn hub_for(&self, n: usize) -> Option<&Arc<HubProcess>> {
        match self {
            System::Hub(hub) => Some(hub),
            System::HubGroup(group) => Some(&group.hubs[n % group.hubs.len()]),
            System::Mosquitto(_) | System::Nats(_) => None,
        }
    }

    /// Its name in the results.
    pub fn name(&self) -> &'static str {
        match self {
            System::Hub(hub) => hub.label,
            System::HubGroup(group) => group.label,
            System::Mosquitto(_) => Kind::Mosquitto.name(),
            System::Nats(_) => Kind::Nats.name(),
        }
    }

    /// The server's process id (a group's first hub's).
    fn pid(&self) -> u32 {
        match self {
            System::Hub(hub) => hub.pid(),
            System::HubGroup(group) => group.hubs[0].pid(),
            System::Mosquitto(broker) => broker.pid(),
            System::Nats(server) => server.pid(),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            System::Hub(hub) => hub.addr,
            System::HubGroup(group) => group.hubs[0].addr,
            System::Mosquitto(broker) => broker.addr,
            System::Nats(server) => server.addr,
        }
    }

    /// Opens `player`'s session from `source`: says hello to the hub, or connects to the broker with a
    /// persistent session and subscribes to the player's topic.
    pub async fn open(&self, source: IpAddr, player: &str) -> Result<Session> {
        in_time("opening a session", self.open_now(source, player)).await
    }

    async fn open_now(&self, source: IpAddr, player: &str) -> Result<Session> {
        Ok(match self {
            System::Hub(_) | System::HubGroup(_) => {
                let hub = self.hub_for(spread(player)).expect("a hub");
                Session::Hub(browser::open(hub.addr, source, player).await?)
            }
            System::Mosquitto(_) => {
                let mut conn = MqttConn::connect(self.addr(), source, player, false).await?;
                conn.subscribe(&mqtt::topic(player)).await?;
                Session::Mqtt(conn)
            }
            System::Nats(_) => Session::Nats(NatsSession::open(self.addr(), player).await?),
        })
    }

    /// Comes back as `player`, whose session the server kept while it was away: the broker delivers
    /// what it queued without a new subscription. (For the hub, the same as [`System::open`].)
    pub async fn resume(&self, source: IpAddr, player: &str) -> Result<Session> {
        in_time("resuming a session", async {
            Ok(match self {
                System::Hub(_) | System::HubGroup(_) => {
                    let hub = self.hub_for(spread(player)).expect("a hub");
                    Session::Hub(browser::open(hub.addr, source, player).await?)
                }
                System::Mosquitto(_) => {
                    Session::Mqtt(MqttConn::connect(self.addr(), source, player, false).await?)
                }
                // The consumer is created on connect; the stream kept the messages meanwhile.
                System::Nats(_) => Session::Nats(NatsSession::open(self.addr(), player).await?),
            })
        })
        .await
    }

    /// Makes `player` known to the server while offline, so messages queued for it are kept: a
    /// persistent MQTT session with its subscription. The hub keeps a queue for any player as it is.
    pub async fn register_offline(&self, source: IpAddr, player: &str) -> Result<()> {
        match self {
            // The hub keeps a queue for any player, and the stream keeps every message until a
            // consumer takes it.
            System::Hub(_) | System::HubGroup(_) | System::Nats(_) => Ok(()),
            System::Mosquitto(_) => match self.open(source, player).await? {
                Session::Mqtt(conn) => in_time("disconnecting", conn.disconnect()).await,
                _ => unreachable!("a Mosquitto session is MQTT"),
            },
        }
    }

    /// A publisher of its own (one connection, for the peers), connecting from `source`.
    pub async fn publisher(&self, source: IpAddr, n: usize) -> Result<Publisher> {
        Ok(match self {
            System::Hub(_) | System::HubGroup(_) => {
                Publisher::Hub(Arc::clone(self.hub_for(n).expect("a hub")))
            }
            System::Mosquitto(_) => {
                let id = format!("publisher-{n}");
                let conn = MqttConn::connect(self.addr(), source, &id, true);
                Publisher::Mqtt(Box::new(in_time("connecting a publisher", conn).await?))
            }
            System::Nats(_) => {
                let publisher = NatsPublisher::connect(self.addr());
                Publisher::Nats(Box::new(
                    in_time("connecting a publisher", publisher).await?,
                ))
            }
        })
    }

    /// Messages queued and not yet acknowledged, where the server says: the hub's queue depth, the
    /// JetStream stream's message count. Mosquitto publishes its stored-message count only every
    /// `sys_interval` seconds, and counts its retained `$SYS` messages in it, so it says nothing here.
    pub async fn pending(&self) -> Result<Option<u64>> {
        match self {
            System::Hub(hub) => Ok(Some(hub.stats().await?.0)),
            // Any process of the group answers for the whole hub.
            System::HubGroup(group) => Ok(Some(group.hubs[0].stats().await?.0)),
            System::Nats(server) => Ok(Some(server.pending().await?)),
            System::Mosquitto(_) => Ok(None),
        }
    }

    /// Sessions the server counts, where it says.
    pub async fn sessions_online(&self) -> Result<Option<u64>> {
        match self {
            System::Hub(hub) => Ok(Some(hub.stats().await?.1)),
            System::HubGroup(group) => Ok(Some(group.hubs[0].stats().await?.1)),
            System::Mosquitto(_) | System::Nats(_) => Ok(None),
        }
    }

    /// Stops the server; every publisher of it must be gone.
    pub fn stop(self) -> Result<()> {
        match self {
            System::Hub(hub) => Arc::try_unwrap(hub)
                .ok()
                .context("a publisher still holds the hub")?
                .stop(),
            System::HubGroup(group) => {
                let HubGroup { hubs, redis, .. } = *group;
                for hub in hubs {
                    Arc::try_unwrap(hub)
                        .ok()
                        .context("a publisher still holds a hub")?
                        .stop()?;
                }
                redis.stop()
            }
            System::Mosquitto(broker) => broker.stop(),
            System::Nats(server) => server.stop(),
        }
    }
}

/// Hub processes on one Redis of the harness's own.
pub struct HubGroup {
    hubs: Vec<Arc<HubProcess>>,
    redis: RedisServer,
    label: &'static str,
}

impl HubGroup {
    async fn start(kind: Kind, count: usize, hub_binary: &Path) -> Result<Self> {
        let redis = RedisServer::start().await?;
        let url = redis.url();
        let mut hubs = Vec::with_capacity(count);
        for _ in 0..count {
            let hub =
                HubProcess::start_with(hub_binary, &[("PIXELHUB_STORE", url.as_str())]).await?;
            hubs.push(Arc::new(hub));
        }
        Ok(HubGroup {
            hubs,
            redis,
            label: kind.name(),
        })
    }
}

/// Which of a group's processes a player's sessions go to: a stable spread, as a load balancer's.
fn spread(player: &str) -> usize {
    player
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
}

impl Session {
    /// Serves the session until `stop`, acking everything it receives and handing each message's
    /// payload to `on_message`. Fails if the server ends the session first.
    pub async fn run(
        self,
        stop: watch::Receiver<bool>,
        mut on_message: impl FnMut(&str),
    ) -> Result<()> {
        match self {
            Session::Hub(browser) => {
                browser
                    .run(stop, |_, url| {
                        on_message(url.split_once('?').map_or("", |(_, payload)| payload))
                    })
                    .await
            }
            Session::Mqtt(conn) => conn.run(stop, on_message).await,
            Session::Nats(session) => session.run(stop, on_message).await,
        }
    }
}

impl Publisher {
    /// Queues `payloads` for `player` and returns when the server has them (for the hub: on disk).
    pub async fn publish(&mut self, player: &str, payloads: &[String]) -> Result<()> {
        in_time(
            "an acknowledged publish",
            self.publish_now(player, payloads),
        )
        .await
    }

    async fn publish_now(&mut self, player: &str, payloads: &[String]) -> Result<()> {
        match self {
            Publisher::Hub(hub) => {
                let mut pixels: Vec<Value> = payloads
                    .iter()
                    .map(|p| json!({"kind": "image", "url": format!("https://aff.example/b?{p}")}))
                    .collect();
                let body = if pixels.len() == 1 {
                    pixels.remove(0)
                } else {
                    Value::Array(pixels)
                };
                hub.enqueue(player, &body).await
            }
            Publisher::Mqtt(conn) => conn.publish_all(&mqtt::topic(player), payloads).await,
            Publisher::Nats(publisher) => publisher.publish_all(player, payloads).await,
        }
    }
}

//! Eclipse Mosquitto as a peer: MQTT 3.1.1 over WebSocket with persistent sessions
//! (`clean_session = false`) and QoS 1, the same "queue until the client comes back, then deliver with
//! ack" contract as the hub. Packets are encoded and decoded by rumqttc's codec; the transport is the
//! same tokio-tungstenite WebSocket the simulated browsers use.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest packet read or written.
const MAX_PACKET: usize = 64 * 1024;

/// The topic a player's messages go to.
pub fn topic(player: &str) -> String {
    format!("p/{player}")
}

/// A Mosquitto process with persistence in a temp folder, listening for MQTT over WebSocket.
pub struct Mosquitto {
    process: crate::hub::Server,
    /// Its WebSocket listener.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` from the PATH with a config written for the benchmark, and waits until it
    /// accepts connections.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        // Ports below the kernel's ephemeral range: the WebSocket listener binds every address of the
        // loopback interface, and thousands of client sockets of an earlier scenario (some in TIME_WAIT)
        // hold ephemeral ports on 127.0.0.2 and up. Both are held until both are known.
        let (ws_port, native_port) = (quiet_port(20_000)?, quiet_port(26_000)?);
        let native = native_port.local_addr()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], ws_port.local_addr()?.port()));
        drop((ws_port, native_port));
        // Debian's Mosquitto 2.0 starts a WebSocket listener only beside a native one, and binds it to
        // an interface, not an address; the load goes to 127.0.0.1 all the same. Persistence is on with
        // Mosquitto's default save interval (30 minutes, and at shutdown): a PUBACK is not on disk,
        // unlike the hub's 202. Only errors and warnings are logged, as the hub logs.
        // As root, Mosquitto would switch to its own user, who cannot write this private temp folder.
        // SAFETY: geteuid has no memory effects.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        let config = format!(
            "{user}listener {native_port} 127.0.0.1\nlistener {port}\nbind_interface lo\nprotocol websockets\n\
             allow_anonymous true\npersistence true\npersistence_location {dir}/\nlog_type error\nlog_type warning\n\
             max_queued_messages 0\nmax_inflight_messages 32\nlog_dest file {dir}/mosquitto.log\n",
            native_port = native.port(),
            port = addr.port(),
            dir = dir.path().display(),
        );
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, config)?;
        let binary = crate::hub::find_program("mosquitto")
            .context("mosquitto is not installed (scripts/bench installs it)")?;
        let process = crate::hub::Server::spawn(
            Command::new(binary)
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .context("cannot start mosquitto")?;
        let mut mosquitto = Self { process, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).await.is_err() {
            if let Some(status) = mosquitto.process.exited()? {
                bail!("mosquitto exited at start ({status}): {}", mosquitto.log());
            }
            if Instant::now() > deadline {
                bail!("mosquitto did not listen within 20 s: {}", mosquitto.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(mosquitto)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
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

/// A listener on a free port of `0.0.0.0` in `[from, from + 6000)`, a range no client socket uses.
fn quiet_port(from: u16) -> Result<TcpListener> {
    let start = std::process::id() as u16 % 6000;
    (0..6000u16)
        .map(|i| from + (start + i) % 6000)
        .find_map(|port| TcpListener::bind(("0.0.0.0", port)).ok())
        .context("no free port for mosquitto")
}

/// One MQTT connection over WebSocket.
pub struct MqttConn {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
    /// Messages that arrived while waiting for another answer, handed out first by [`MqttConn::run`].
    early: Vec<Publish>,
    next_pkid: u16,
    keep_alive: Duration,
}

impl MqttConn {
    /// Connects from `source` as `client_id`; with `clean_session = false` the broker keeps the session
    /// (subscriptions, queued QoS 1 messages) while the client is away.
    pub async fn connect(
        broker: SocketAddr,
        source: IpAddr,
        client_id: &str,
        clean_session: bool,
    ) -> Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket
            .connect(broker)
            .await
            .context("connecting to mosquitto")?;
        stream.set_nodelay(true)?;
        let mut request = format!("ws://{broker}/mqtt").into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "mqtt".parse()?);
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .context("the MQTT WebSocket upgrade")?;
        let keep_alive = Duration::from_secs(25);
        let mut conn = Self {
            ws,
            buf: BytesMut::new(),
            early: Vec::new(),
            next_pkid: 0,
            keep_alive,
        };
        let mut connect = Connect::new(client_id);
        connect.clean_session = clean_session;
        connect.keep_alive = keep_alive.as_secs() as u16;
        conn.send(Packet::Connect(connect)).await?;
        match conn.next().await? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok(conn),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<()> {
        let mut out = BytesMut::new();
        packet
            .write(&mut out, MAX_PACKET)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        self.ws.send(Message::binary(out.freeze())).await?;
        Ok(())
    }

    /// The next packet; WebSocket messages may carry several packets or part of one.
    async fn next(&mut self) -> Result<Packet> {
        loop {
            match Packet::read(&mut self.buf, MAX_PACKET) {
                Ok(packet) => return Ok(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => bail!("malformed MQTT packet: {e:?}"),
            }
            match self.ws.next().await {
                Some(Ok(Message::Binary(data))) => self.buf.extend_from_slice(&data),
                Some(Ok(Message::Close(frame))) => {
                    bail!("mosquitto closed the connection: {frame:?}")
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the connection ended"),
            }
        }
    }

    fn pkid(&mut self) -> u16 {
        // Packet ids run 1..=65535.
        self.next_pkid = self.next_pkid % u16::MAX + 1;
        self.next_pkid
    }

    /// Subscribes to `topic` at QoS 1 and waits for the SUBACK.
    pub async fn subscribe(&mut self, topic: &str) -> Result<()> {
        let mut subscribe = Subscribe::new(topic, QoS::AtLeastOnce);
        subscribe.pkid = self.pkid();
        self.send(Packet::Subscribe(subscribe)).await?;
        loop {
            match self.next().await? {
                Packet::SubAck(_) => return Ok(()),
                Packet::Publish(publish) => self.early.push(publish),
                _ => {}
            }
        }
    }

    async fn puback(&mut self, publish: &Publish) -> Result<()> {
        if publish.qos == QoS::AtLeastOnce {
            self.send(Packet::PubAck(PubAck::new(publish.pkid))).await?;
        }
        Ok(())
    }

    /// Publishes each payload to `topic` at QoS 1, all at once, and waits for every PUBACK.
    pub async fn publish_all(&mut self, topic: &str, payloads: &[String]) -> Result<()> {
        let mut waiting = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.as_bytes().to_vec());
            publish.pkid = self.pkid();
            waiting.push(publish.pkid);
            self.send(Packet::Publish(publish)).await?;
        }
        while !waiting.is_empty() {
            if let Packet::PubAck(ack) = self.next().await? {
                waiting.retain(|pkid| *pkid != ack.pkid);
            }
        }
        Ok(())
    }

    /// Ends the connection with DISCONNECT (the session stays on the broker when it is not clean).
    pub async fn disconnect(mut self) -> Result<()> {
        self.send(Packet::Disconnect).await?;
        let _ = self.ws.close(None).await;
        Ok(())
    }

    /// Serves the subscription until `stop`: acks every QoS 1 message at once, then hands its payload to
    /// `on_message`, and pings within the keep-alive. Fails if the broker ends the connection first.
    pub async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut on_message: impl FnMut(&str),
    ) -> Result<()> {
        for publish in std::mem::take(&mut self.early) {
            self.puback(&publish).await?;
            on_message(std::str::from_utf8(&publish.payload).unwrap_or_default());
        }
        // Every keep-alive interval, as the hub pings its sessions: the same heartbeat traffic on both.
        let mut ping = tokio::time::interval(self.keep_alive);
        ping.tick().await;
        loop {
            let packet = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                _ = ping.tick() => None,
                packet = self.next() => Some(packet?),
            };
            match packet {
                None => self.send(Packet::PingReq).await?,
                Some(Packet::Publish(publish)) => {
                    // Counted once its PUBACK is written, as the browser's pixels once their ack is.
                    self.puback(&publish).await?;
                    on_message(std::str::from_utf8(&publish.payload).unwrap_or_default());
                }
                Some(_) => {}
            }
        }
        self.disconnect().await
    }
}

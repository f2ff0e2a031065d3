//! A simulated browser: one real WebSocket speaking the hub's wire protocol as `js-client` does (hello,
//! welcome, deliver, ack, ping/pong), from one of several loopback source addresses.
//!
//! It does not load the pixel's URL: the benchmark measures delivery, and a browser's fetch of an image
//! costs the hub nothing. It acks each `deliver` frame in one `ack` frame as soon as it arrives, which is
//! what the browser client sends when a frame's pixels fire within its 100 ms ack window.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::hub::BRAND;

/// Loopback source addresses to spread client sockets over (127.0.0.2, 127.0.0.3, …), so no single
/// address runs out of ephemeral ports.
#[derive(Clone, Debug)]
pub struct Sources {
    count: u8,
}

impl Sources {
    /// `count` addresses, from 127.0.0.2 up.
    pub fn new(count: u8) -> Self {
        Self {
            count: count.max(1),
        }
    }

    /// The source for the `i`-th connection.
    pub fn pick(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % usize::from(self.count)) as u8,
        ))
    }
}

/// An open session, past the welcome.
pub struct Browser {
    ws: WebSocketStream<TcpStream>,
}

/// Opens a session for `player` of the benchmark brand: connects from `source`, says hello, waits for
/// the welcome.
pub async fn open(hub: SocketAddr, source: IpAddr, player: &str) -> Result<Browser> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding the source address {source}"))?;
    let stream = socket.connect(hub).await.context("connecting to the hub")?;
    stream.set_nodelay(true)?;
    // Small buffers, as the hub itself uses: thousands of these live in one process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://{hub}/websocket?brand_id={BRAND}");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .context("the WebSocket upgrade")?;
    let hello = json!({"type": "hello", "v": 1, "brand_id": BRAND, "player_id": player});
    ws.send(Message::text(hello.to_string())).await?;
    let mut browser = Browser { ws };
    loop {
        let message = browser.next_message().await?;
        match message["type"].as_str() {
            Some("welcome") => return Ok(browser),
            Some("ping") => browser.pong().await?,
            _ => bail!("expected a welcome, got {message}"),
        }
    }
}

impl Browser {
    /// The next JSON message; an error when the hub closes the session or the connection breaks.
    async fn next_message(&mut self) -> Result<Value> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
                Some(Ok(Message::Close(frame))) => bail!("the hub closed the session: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the connection ended"),
            }
        }
    }

    async fn pong(&mut self) -> Result<()> {
        self.ws
            .send(Message::text(r#"{"type":"pong"}"#))
            .await
            .map_err(Into::into)
    }

    /// Serves the session until `stop` turns true: answers pings, acks every `deliver` frame at once, then
    /// hands each delivered pixel's id and URL to `on_pixel`. Fails if the hub ends the session first.
    pub async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut on_pixel: impl FnMut(&str, &str),
    ) -> Result<()> {
        loop {
            let message = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                message = self.next_message() => message?,
            };
            match message["type"].as_str() {
                Some("ping") => self.pong().await?,
                Some("deliver") => {
                    let pixels = message["pixels"]
                        .as_array()
                        .context("deliver without pixels")?;
                    let mut ids = Vec::with_capacity(pixels.len());
                    for pixel in pixels {
                        ids.push(pixel["id"].as_str().context("a pixel without id")?);
                    }
                    let ack = json!({"type": "ack", "ids": ids});
                    self.ws.send(Message::text(ack.to_string())).await?;
                    // Counted once the ack is written, as an MQTT message once its PUBACK is.
                    for pixel in pixels {
                        on_pixel(
                            pixel["id"].as_str().unwrap_or_default(),
                            pixel["url"].as_str().unwrap_or_default(),
                        );
                    }
                }
                _ => bail!("unexpected message {message}"),
            }
        }
        let _ = self.ws.close(None).await;
        Ok(())
    }
}

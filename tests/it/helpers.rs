//! `TestApp`: the real hub on port 0 with a temp data dir, and typed helpers to talk to it over real HTTP
//! and real WebSocket. Logs are silent unless `TEST_LOG` is set.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Once};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pixelhub::clock::{Clock, SystemClock};
use pixelhub::{Application, Config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The `id` of every pixel in a JSON array of pixels (an API answer, a listing or a `deliver` frame).
pub fn ids_of(pixels: &Value) -> Vec<String> {
    let pixels = pixels.as_array().expect("an array of pixels");
    pixels
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends a request and reads its JSON answer, whatever the status.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("the request is answered")
        .json()
        .await
        .expect("a JSON body")
}

/// Unix time in seconds, as player tokens state their expiry.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A player token signed as docs/security.md says, with the library's reference signer.
pub fn player_token(secret: &str, brand: &str, player: &str, expires: u64) -> String {
    pixelhub::player_token::sign(
        secret,
        &pixelhub::ids::BrandId::parse(brand).unwrap(),
        &pixelhub::ids::PlayerId::parse(player).unwrap(),
        expires,
    )
}

pub const TOKEN: &str = "test-admin-token-0123456789";
/// Every pixel kind, for brands whose tests need them all.
pub const ALL_KINDS: [&str; 5] = ["image", "iframe", "script", "js", "facebook"];
/// How long a test waits for something that should happen within milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(5);

static TRACING: Once = Once::new();

fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("debug")
                .with_test_writer()
                .init();
        }
    });
}

/// The system's clock, which a test can move forward: the hub sees "an hour later" at once, while
/// everything that waits on timers (retries, heartbeats) still runs in real time.
#[derive(Debug, Default)]
pub struct SkewClock {
    ahead_ms: AtomicU64,
}

impl SkewClock {
    pub fn advance(&self, by: Duration) {
        self.ahead_ms
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for SkewClock {
    fn now_ms(&self) -> u64 {
        SystemClock.now_ms() + self.ahead_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A running hub. Dropping it stops the server task.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub config: Config,
    pub dir: Arc<TempDir>,
    /// The hub's clock.
    pub clock: Arc<SkewClock>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    /// A hub with default settings, the test admin token, and brand `b1` registered.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A hub whose config the test adjusts first; brand `b1` registered, allowing every pixel kind (most
    /// tests queue small `js` pixels; the security tests use brands with the defaults).
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let app = Self::spawn_joining(adjust).await;
        assert_eq!(
            app.put_brand("b1", json!({"allowed_kinds": ALL_KINDS}))
                .await
                .status(),
            StatusCode::CREATED
        );
        app
    }

    /// A hub whose config the test adjusts, registering nothing: another process of a hub whose
    /// shared store (Redis) already holds its brands.
    pub async fn spawn_joining(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("a temp dir"));
        let mut config = Config::for_data_dir(dir.path());
        config.admin_token = Some(TOKEN.into());
        config.demo = Some(false);
        // The tests' affiliate endpoints listen on loopback, which a hub refuses by default (the egress
        // tests clear this to test exactly that).
        config.s2s_allow_networks = vec!["127.0.0.0/8".parse().unwrap()];
        adjust(&mut config);
        Self::start(config, dir).await
    }

    async fn start(config: Config, dir: Arc<TempDir>) -> Self {
        init_tracing();
        let clock = Arc::new(SkewClock::default());
        let application = Application::build_with_clock(config.clone(), clock.clone())
            .await
            .expect("the hub starts");
        let addr = application.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(application.run_until(async {
            let _ = stopped.await;
        }));
        let http = https_trusting(config.tls_cert.as_deref())
            .timeout(PATIENCE * 2)
            .build()
            .unwrap();
        Self {
            addr,
            http,
            config,
            dir,
            clock,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sends the hub the stop signal (what SIGTERM does) without waiting for it to finish.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the hub the way SIGTERM does and waits until its store is closed.
    pub async fn stop(&mut self) {
        self.signal_stop();
        if let Some(task) = self.task.take() {
            task.await
                .expect("the server task does not panic")
                .expect("the server stops cleanly");
        }
    }

    /// Stops the hub and starts it again on the same data dir and the same port.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let mut config = self.config.clone();
        config.listen = self.addr;
        Self::start(config, Arc::clone(&self.dir)).await
    }

    /// `https://` when the hub serves TLS: its certificate names 127.0.0.1.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.config.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/websocket", self.addr)
    }

    pub async fn put_brand(&self, brand: &str, body: Value) -> reqwest::Response {
        self.admin(reqwest::Method::PUT, &format!("/api/v1/brands/{brand}"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The brand's player-token signing secret.
    pub async fn signing_secret(&self, brand: &str) -> String {
        self.get_json(&format!("/api/v1/brands/{brand}/signing-secret"))
            .await["secret"]
            .as_str()
            .expect("the secret")
            .to_owned()
    }

    /// Creates an API key of `brand` and returns the key.
    pub async fn create_key(&self, brand: &str) -> String {
        let made = self
            .post_expecting(
                &format!("/api/v1/brands/{brand}/api-keys"),
                json!({"name": "test"}),
                StatusCode::CREATED,
            )
            .await;
        made["key"]
            .as_str()
            .expect("the key, shown once")
            .to_owned()
    }

    pub async fn enqueue(&self, brand: &str, player: &str, body: Value) -> reqwest::Response {
        self.admin(
            reqwest::Method::POST,
            &format!("/api/v1/brands/{brand}/players/{player}/pixels"),
        )
        .json(&body)
        .send()
        .await
        .unwrap()
    }

    /// Saves a pixel definition for `brand`, asserts 201, returns it.
    pub async fn define(&self, brand: &str, body: Value) -> Value {
        let path = format!("/api/v1/brands/{brand}/pixel-definitions");
        self.post_expecting(&path, body, StatusCode::CREATED).await
    }

    /// Reports events to `brand`, asserts 202, returns the per-event answers.
    pub async fn report(&self, brand: &str, body: Value) -> Vec<Value> {
        let path = format!("/api/v1/brands/{brand}/events");
        let answer = self.post_expecting(&path, body, StatusCode::ACCEPTED).await;
        answer["events"].as_array().unwrap().clone()
    }

    /// POSTs `body` to an admin path, asserts the status, returns the JSON answer.
    pub async fn post_expecting(&self, path: &str, body: Value, status: StatusCode) -> Value {
        let response = self
            .admin(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "POST {path} {body}");
        response.json().await.unwrap()
    }

    /// An admin API request with the bearer token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(TOKEN)
    }

    /// Queues pixels for `b1`, asserts 202, returns their ids in order.
    pub async fn queue(&self, player: &str, body: Value) -> Vec<String> {
        self.queue_for("b1", player, body).await
    }

    pub async fn queue_for(&self, brand: &str, player: &str, body: Value) -> Vec<String> {
        let response = self.enqueue(brand, player, body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        ids_of(&response.json::<Value>().await.unwrap()["pixels"])
    }

    /// The ids pending for a `b1` player, in queue order.
    pub async fn pending_ids(&self, player: &str) -> Vec<String> {
        self.pending_ids_of("b1", player).await
    }

    pub async fn pending_ids_of(&self, brand: &str, player: &str) -> Vec<String> {
        ids_of(
            &self
                .get_json(&format!("/api/v1/brands/{brand}/players/{player}/pixels"))
                .await["pixels"],
        )
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.admin(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    /// Polls until the player's pending ids are exactly `expected` (acks are processed asynchronously).
    pub async fn wait_for_queue(&self, brand: &str, player: &str, expected: &[String]) {
        let deadline = tokio::time::Instant::now() + PATIENCE * 3;
        loop {
            let pending = self.pending_ids_of(brand, player).await;
            if pending == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{brand}/{player} has {pending:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until a `b1` player's queue is empty (the browser acked everything).
    pub async fn wait_until_drained(&self, player: &str) {
        self.wait_for_queue("b1", player, &[]).await;
    }

    /// The `/metrics` exposition text.
    pub async fn metrics_text(&self) -> String {
        let answer = self
            .admin(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        answer.text().await.unwrap()
    }

    /// The value of one series, e.g. `pixelhub_limits_hit_total{limit="batch_size"}`; 0 when absent.
    pub async fn metric(&self, series: &str) -> u64 {
        counter(&self.metrics_text().await, series)
    }

    /// Polls `/metrics` until `series` reads `expected`, and returns that scrape. Counters follow a
    /// write once it is durable, a moment after the queue shows it, so a test that saw the queue change
    /// waits for the counter too.
    pub async fn wait_for_metric(&self, series: &str, expected: u64) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = self.metrics_text().await;
            let value = counter(&text, series);
            if value == expected {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} reads {value}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A raw WebSocket to the hub, before any hello.
    pub async fn connect(&self) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url())
            .await
            .expect("the upgrade succeeds");
        WsClient { ws }
    }

    /// A raw WebSocket to `/websocket` plus `query`, upgraded with `origin` as the page's `Origin` header
    /// when given; the upgrade's error when the hub refuses it.
    pub async fn connect_from(
        &self,
        query: &str,
        origin: Option<&str>,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{}{query}", self.ws_url())
            .into_client_request()
            .unwrap();
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(ws, _)| WsClient { ws })
    }

    /// A session of a `b1` player, past the welcome.
    pub async fn session(&self, player: &str) -> WsClient {
        let mut ws = self.connect().await;
        ws.send(json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": player}))
            .await;
        let welcome = ws.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        ws
    }
}

/// The value of one sample line of the exposition, e.g. `pixelhub_queue_depth{brand="b1"}`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a number"))
}

/// A counter's value in the exposition; 0 when the series is absent (a counter not yet counted).
fn counter(text: &str, series: &str) -> u64 {
    sample(text, series).map_or(0, |value| value as u64)
}

/// An HTTP client that trusts every certificate of the hub's chain file (its test CA included, so a
/// renewed certificate is trusted too), and reports the certificate it saw.
pub fn https_trusting(chain: Option<&std::path::Path>) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder().tls_info(true);
    if let Some(chain) = chain {
        let pem = std::fs::read(chain).expect("the test's certificate chain");
        for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A client of the wire protocol, as js-client speaks it.
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("the frame is sent");
    }

    /// The next JSON message, skipping pings (answered); fails after [`PATIENCE`].
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a message in time");
            match frame
                .expect("the connection is open")
                .expect("a valid frame")
            {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return value;
                }
                Message::Close(frame) => panic!("closed while waiting for a message: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The ids of the next `deliver` message.
    pub async fn delivered(&mut self) -> Vec<String> {
        let message = self.recv().await;
        assert_eq!(message["type"], "deliver", "{message}");
        ids_of(&message["pixels"])
    }

    pub async fn ack(&mut self, ids: &[String]) {
        self.send(json!({"type": "ack", "ids": ids})).await;
    }

    /// Asserts nothing but pings arrives for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        if let Ok(frame) = tokio::time::timeout(quiet, self.recv()).await {
            panic!("expected silence, got {frame}");
        }
    }

    /// Waits for the server's close frame and returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a close in time");
            match frame {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return (code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => panic!("closed without a close frame"),
                Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Drops the TCP connection without a close handshake, as a crashed tab or lost network does.
    pub fn vanish(self) {
        drop(self);
    }
}

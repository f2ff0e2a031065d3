//! The real `pixelhub` binary, as a user runs it: generated admin token, demo, and `kill -9`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::json_of;

/// A hub process's HTTP API as the process tests call it: the admin token on every call, a 10 s
/// timeout, so a hang fails the test instead of stalling it.
pub struct HubApi {
    pub http: reqwest::Client,
    pub base: String,
    token: String,
}

impl HubApi {
    pub fn of(hub: &HubProcess, token: &str) -> Self {
        HubApi {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            base: hub.base.clone(),
            token: token.to_owned(),
        }
    }

    /// A request to `path` with the admin token, and `body` as JSON when given.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// The answer's status and JSON body (`null` when it has none); fails on no answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("an answer, never a hang");
        let status = response.status();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// The ids of brand `b1`'s player's pending pixels, in order.
    pub async fn pending(&self, player: &str) -> Vec<String> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/brands/b1/players/{player}/pixels"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "reads work: {body}");
        body["pixels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A hub process and everything it logged so far.
pub struct HubProcess {
    child: Child,
    pub base: String,
    pub addr: std::net::SocketAddr,
    log: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl HubProcess {
    pub fn start(data_dir: &Path, token: Option<&str>, demo: bool) -> Self {
        Self::start_on("127.0.0.1:0", data_dir, token, demo)
    }

    /// Starts the binary listening on `listen` (a fixed address, to restart where browsers reconnect).
    pub fn start_on(listen: &str, data_dir: &Path, token: Option<&str>, demo: bool) -> Self {
        Self::start_with(listen, data_dir, token, demo, &[])
    }

    /// As [`HubProcess::start_on`], with more settings as environment variables.
    pub fn start_with(
        listen: &str,
        data_dir: &Path,
        token: Option<&str>,
        demo: bool,
        settings: &[(&str, &str)],
    ) -> Self {
        let mut hub = Self::launch(listen, data_dir, token, demo, settings);
        let line = hub.wait_for_line("listening");
        let addr = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(json) => json["fields"]["addr"].as_str().map(str::to_owned),
            Err(_) => line
                .split("addr=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .map(str::to_owned),
        }
        .expect("the address is logged");
        hub.base = format!("http://{addr}");
        hub.addr = addr.parse().expect("a socket address");
        hub
    }

    /// Starts the binary on a free port with `settings` (the admin token among them) without waiting
    /// for it to listen: for starts that are meant to fail.
    pub fn spawn_raw(data_dir: &Path, settings: &[(&str, &str)]) -> Self {
        Self::launch("127.0.0.1:0", data_dir, None, false, settings)
    }

    fn launch(
        listen: &str,
        data_dir: &Path,
        token: Option<&str>,
        demo: bool,
        settings: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pixelhub"));
        command
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env_remove("PIXELHUB_ADMIN_TOKEN")
            .env("PIXELHUB_DEMO", demo.to_string())
            .env("PIXELHUB_LOG_LEVEL", "info")
            // The tests' affiliate endpoints listen on loopback (refused by default).
            .env("PIXELHUB_S2S_ALLOW_NETWORKS", "127.0.0.0/8")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            command.env("PIXELHUB_ADMIN_TOKEN", token);
        }
        command.envs(settings.iter().copied());
        let mut child = command.spawn().expect("the binary starts");
        let (tx, log) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        HubProcess {
            child,
            base: String::new(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            seen: Vec::new(),
        }
    }

    /// Waits up to `patience` for the process to exit by itself; its status, or `None`.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let started = std::time::Instant::now();
        while started.elapsed() < patience {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The first line logged from now on that contains `needle`; fails after 20 s.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            let line = self
                .log
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}; saw {:?}", self.seen));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "the signal could not be sent");
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        (status, started.elapsed())
    }

    /// Every line logged until now and until the process ended (after [`HubProcess::terminate`]).
    pub fn lines(&mut self) -> Vec<String> {
        while let Ok(line) = self.log.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        self.seen.clone()
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix: no shutdown code runs
        self.child.wait().unwrap();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn without_a_configured_token_one_is_generated_kept_private_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = HubProcess::start(dir.path(), None, true);
    let token_file = dir.path().join("admin-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    hub.wait_for_line("demo brand site");
    assert!(
        hub.seen.iter().any(|l| l.contains("admin-token")),
        "the log says where the token is: {:?}",
        hub.seen
    );
    assert!(
        hub.seen.iter().all(|l| !l.contains(&token)),
        "the token itself is never logged"
    );

    let http = reqwest::Client::new();
    let stats = http
        .get(format!("{}/api/v1/stats", hub.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), StatusCode::OK);
    let demo = http.get(format!("{}/demo", hub.base)).send().await.unwrap();
    assert_eq!(demo.status(), StatusCode::OK);
    assert!(
        demo.text()
            .await
            .unwrap()
            .contains("_sm_aff_client_pixel.init(")
    );
}

#[tokio::test]
async fn kill_9_loses_no_pixel_that_was_answered_202() {
    let dir = tempfile::tempdir().unwrap();
    let token = "kill-nine-token-0123456789";
    let hub = HubProcess::start(dir.path(), Some(token), false);
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{}/api/v1/brands/b1", hub.base))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());

    let requests = (0..50).map(|i| {
        let request = http
            .post(format!("{}/api/v1/brands/b1/players/p{}/pixels", hub.base, i % 5))
            .bearer_auth(token)
            .json(&json!({"kind": "image", "url": format!("https://aff.example/{i}"), "id": format!("px-{i}")}))
            .send();
        async move { request.await.unwrap().status() }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    hub.kill_9();

    let hub = HubProcess::start(dir.path(), Some(token), false);
    let mut total = 0;
    for player in 0..5 {
        let url = format!("{}/api/v1/brands/b1/players/p{player}/pixels", hub.base);
        let listed = json_of(http.get(url).bearer_auth(token)).await;
        total += listed["pixels"].as_array().unwrap().len();
    }
    assert_eq!(total, 50, "every 202 survived kill -9");
    let stats = json_of(
        http.get(format!("{}/api/v1/stats", hub.base))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(stats["queue_depth"], 50);
}

#[tokio::test]
async fn sigterm_sends_sessions_elsewhere_and_exits_0_with_json_logs_free_of_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let token = "sigterm-admin-token-0123456789";
    let settings = [
        ("PIXELHUB_LOG_FORMAT", "json"),
        ("PIXELHUB_LOG_LEVEL", "debug"),
        ("PIXELHUB_SHUTDOWN_TIMEOUT_MS", "4000"),
    ];
    let mut hub = HubProcess::start_with("127.0.0.1:0", dir.path(), Some(token), false, &settings);
    let http = reqwest::Client::new();
    let admin = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", hub.base))
            .bearer_auth(token)
    };
    let put = admin(reqwest::Method::PUT, "/api/v1/brands/b1").json(&json!({}));
    assert!(put.send().await.unwrap().status().is_success());
    let inbound = json_of(admin(reqwest::Method::GET, "/api/v1/brands/b1/inbound")).await;
    let inbound_token = inbound["token"].as_str().unwrap().to_owned();
    let received = http
        .get(format!(
            "{}/postback/b1/{inbound_token}?player_id=p-term&type=registration",
            hub.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(received.status(), StatusCode::OK);

    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/websocket", hub.addr))
        .await
        .unwrap();
    let mut ws = crate::helpers::WsClient { ws };
    ws.send(json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": "p-term"}))
        .await;
    assert_eq!(ws.recv().await["type"], "welcome");

    let (status, took) = hub.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    assert_eq!(ws.closed().await, (4000, "shutdown".to_owned()));

    let lines = hub.lines();
    let logs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}")))
        .collect();
    let in_span = |name: &str, field: &str, value: &str| {
        logs.iter().any(|l| {
            l["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == name && s[field] == value)
        })
    };
    assert!(
        in_span("session", "player", "p-term"),
        "a session span with its player: {lines:#?}"
    );
    assert!(in_span("session", "brand", "b1"));
    assert!(in_span("request", "route", "/postback/{brand_id}/{token}"));
    assert!(logs.iter().any(|l| l["fields"]["message"] == "stopped"));
    for secret in [token, inbound_token.as_str()] {
        assert!(
            lines.iter().all(|l| !l.contains(secret)),
            "a secret was logged"
        );
    }
}

#[test]
fn help_documents_every_setting_and_bad_config_names_the_setting() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pixelhub"))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let help = run(&["--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for setting in [
        "--config",
        "--listen",
        "--data-dir",
        "--default-ttl-seconds",
        "--max-queue-per-player",
        "--queue-full",
        "--ws-max-message-bytes",
        "--hello-timeout-ms",
        "--heartbeat-ms",
        "--log-level",
        "--log-format",
        "--s2s-max-attempts",
        "--s2s-retry-base-ms",
        "--report-retention-days",
        "--shutdown-timeout-ms",
        "--shutdown-delay-ms",
        "--public-metrics",
        "PIXELHUB_ADMIN_TOKEN",
    ] {
        assert!(help.contains(setting), "--help lacks {setting}");
    }
    assert!(help.contains("[default: reject]") && help.contains("[env: PIXELHUB_QUEUE_FULL="));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.toml");
    std::fs::write(&file, "heartbeat_ms = 25000\nqueue_full = \"sometimes\"\n").unwrap();
    let bad = run(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert!(
        stderr.contains("hub.toml") && stderr.contains("queue_full"),
        "{stderr}"
    );

    let bad = run(&[], &[("PIXELHUB_LOG_FORMAT", "xml")]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert!(stderr.contains("--log-format"), "{stderr}");
}

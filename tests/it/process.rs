//! The real `pixelhub` binary, as a user runs it: generated admin token, demo, and `kill -9`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::json_of;

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
        let mut command = Command::new(env!("CARGO_BIN_EXE_pixelhub"));
        command.envs(settings.iter().copied());
        command
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env_remove("PIXELHUB_ADMIN_TOKEN")
            .env("PIXELHUB_DEMO", demo.to_string())
            .env("PIXELHUB_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            command.env("PIXELHUB_ADMIN_TOKEN", token);
        }
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
        let mut hub = HubProcess {
            child,
            base: String::new(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            seen: Vec::new(),
        };
        let line = hub.wait_for_line("listening");
        let addr = line
            .split("addr=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("the address is logged");
        hub.base = format!("http://{addr}");
        hub.addr = addr.parse().expect("a socket address");
        hub
    }

    fn wait_for_line(&mut self, needle: &str) -> String {
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

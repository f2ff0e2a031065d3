//! Just enough of the Chrome DevTools Protocol to drive headless Chromium from tests: open tabs, navigate,
//! evaluate JavaScript, and stub third-party hosts by intercepting their requests (there is no internet).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Replies = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A headless Chromium with its own empty profile; killed on drop.
pub struct Browser {
    child: Child,
    cdp: Cdp,
    _profile: tempfile::TempDir,
}

#[derive(Clone)]
struct Cdp {
    out: mpsc::UnboundedSender<String>,
    replies: Replies,
    events: broadcast::Sender<Value>,
    next_id: Arc<AtomicU64>,
}

impl Cdp {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.replies.lock().unwrap().insert(id, tx);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.out
            .send(message.to_string())
            .expect("the browser connection is open");
        let reply = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .unwrap_or_else(|_| panic!("{method} timed out"))
            .unwrap();
        if let Some(error) = reply.get("error") {
            panic!("{method} failed: {error}");
        }
        reply["result"].clone()
    }
}

impl Browser {
    /// Starts Chromium (`/usr/bin/chromium`, or `$CHROMIUM`) with the flags this machine needs.
    pub async fn launch() -> Browser {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&binary).exists(),
            "Chromium is not installed at {binary}: run ./scripts/test, which installs it, or set CHROMIUM"
        );
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--no-first-run",
                "--disable-renderer-backgrounding",
                "--disable-background-timer-throttling",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("Chromium starts");

        let stderr = child.stderr.take().unwrap();
        let (found, url) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(url.trim().to_owned());
                }
            }
        });
        let url = url
            .recv_timeout(Duration::from_secs(30))
            .expect("Chromium announces its DevTools endpoint");
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools connects");
        let (mut sink, mut stream) = socket.split();

        let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let replies: Replies = Arc::default();
        let (events, _) = broadcast::channel(1024);
        let (routes, events_tx) = (Arc::clone(&replies), events.clone());
        tokio::spawn(async move {
            while let Some(Ok(Message::Text(text))) = stream.next().await {
                let message: Value = serde_json::from_str(&text).unwrap();
                match message.get("id").and_then(Value::as_u64) {
                    Some(id) => {
                        if let Some(reply) = routes.lock().unwrap().remove(&id) {
                            let _ = reply.send(message);
                        }
                    }
                    None => {
                        let _ = events_tx.send(message);
                    }
                }
            }
        });
        Browser {
            child,
            cdp: Cdp {
                out,
                replies,
                events,
                next_id: Arc::new(AtomicU64::new(1)),
            },
            _profile: profile,
        }
    }

    /// A new tab (same profile: tabs share localStorage and Web Locks, as in a real browser).
    pub async fn tab(&self) -> Tab {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target = target["targetId"].as_str().unwrap().to_owned();
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let tab = Tab {
            cdp: self.cdp.clone(),
            session,
            target,
        };
        tab.call("Page.enable", json!({})).await;
        tab.call("Runtime.enable", json!({})).await;
        tab
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How an intercepted request is answered.
pub enum Stub {
    /// Answer 200 with this content type and body.
    Fulfill(&'static str, Vec<u8>),
    /// Fail as if the host were unreachable.
    Fail,
}

/// One browser tab.
pub struct Tab {
    cdp: Cdp,
    session: String,
    target: String,
}

impl Tab {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp.call(Some(&self.session), method, params).await
    }

    async fn wait_event(&self, mut events: broadcast::Receiver<Value>, method: &str) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let event = events.recv().await.unwrap();
                if event["method"] == method && event["sessionId"] == self.session.as_str() {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {method}"));
    }

    /// Sends these headers with every request of the tab (e.g. a page's credentials).
    pub async fn set_headers(&self, headers: Value) {
        self.call("Network.enable", json!({})).await;
        self.call("Network.setExtraHTTPHeaders", json!({"headers": headers}))
            .await;
    }

    /// A PNG of the tab's viewport at `width`×`height`.
    pub async fn screenshot(&self, width: u32, height: u32) -> Vec<u8> {
        let metrics =
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false});
        self.call("Emulation.setDeviceMetricsOverride", metrics)
            .await;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("a screenshot"))
            .expect("base64 PNG")
    }

    /// Navigates and waits for the load event.
    pub async fn goto(&self, url: &str) {
        let events = self.cdp.events.subscribe();
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_event(events, "Page.loadEventFired").await;
    }

    /// Evaluates an expression (awaiting promises) and returns its JSON value.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy; panics with `what` after 15 s.
    pub async fn wait_for(&self, expression: &str, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let value = self.eval(expression).await;
            if !(value.is_null()
                || value == json!(false)
                || value == json!(0)
                || value == json!(""))
            {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Answers requests whose URL matches one of `patterns` (CDP wildcards) with `stub(url)`; returns the
    /// list of intercepted URLs, which fills as requests arrive.
    pub async fn intercept(
        &self,
        patterns: &[&str],
        stub: impl Fn(&str) -> Stub + Send + 'static,
    ) -> Arc<Mutex<Vec<String>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut events = self.cdp.events.subscribe();
        let (cdp, session, record) = (self.cdp.clone(), self.session.clone(), Arc::clone(&seen));
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if event["method"] != "Fetch.requestPaused"
                    || event["sessionId"] != session.as_str()
                {
                    continue;
                }
                let url = event["params"]["request"]["url"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let request_id = event["params"]["requestId"].clone();
                record.lock().unwrap().push(url.clone());
                let (method, params) = match stub(&url) {
                    Stub::Fulfill(content_type, body) => (
                        "Fetch.fulfillRequest",
                        json!({
                            "requestId": request_id,
                            "responseCode": 200,
                            "responseHeaders": [{"name": "Content-Type", "value": content_type}],
                            "body": base64::engine::general_purpose::STANDARD.encode(body),
                        }),
                    ),
                    Stub::Fail => (
                        "Fetch.failRequest",
                        json!({"requestId": request_id, "errorReason": "NameNotResolved"}),
                    ),
                };
                let cdp = cdp.clone();
                let session = session.clone();
                tokio::spawn(async move { cdp.call(Some(&session), method, params).await });
            }
        });
        let patterns: Vec<Value> = patterns.iter().map(|p| json!({"urlPattern": p})).collect();
        self.call("Fetch.enable", json!({"patterns": patterns}))
            .await;
        seen
    }

    /// Closes the tab, as a player closing it would.
    pub async fn close(self) {
        self.cdp
            .call(None, "Target.closeTarget", json!({"targetId": self.target}))
            .await;
    }
}

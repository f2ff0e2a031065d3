//! The hub on Redis: several hub processes on one Redis are one hub. Each test starts its own
//! redis-server on a free loopback port with its files in a temp dir (`scripts/test` installs Debian's
//! `redis-server` when missing; the system's service is never used), durable as the hub requires
//! (`appendonly yes`, `appendfsync always`), and stops it when done.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pixelhub::config::{StoreDurability, StoreKind};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PATIENCE, TestApp, WsClient, json_of};
use crate::process::{HubApi, HubProcess};
use crate::receiver::Receiver;

/// A redis-server of the test's own, which the test can kill and start again on the same port and
/// files (what a Redis restart is).
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Redis {
    /// A durable server.
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    /// A server given `extra` settings on its command line too.
    pub fn start_with(extra: &[&str]) -> Redis {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let mut redis = Redis {
                child: None,
                port,
                dir: tempfile::tempdir().expect("a temp dir"),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            if redis.run() {
                return redis;
            }
        }
        panic!("redis-server did not start on a free loopback port in five tries");
    }

    /// Starts the server on its port and files; false when it exited (the port was taken).
    fn run(&mut self) -> bool {
        let binary =
            std::env::var("PIXELHUB_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut command = Command::new(&binary);
        // SAFETY: between fork and exec the closure makes one system call (prctl, plain integers,
        // async-signal-safe) and allocates nothing. The server dies with the thread that started it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {binary} (scripts/test installs Debian's redis-server): {e}")
            });
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The hub's `--store` for this server.
    pub fn store(&self) -> StoreKind {
        StoreKind::Redis(self.url())
    }

    /// Kills the server at once (SIGKILL): what it acknowledged is in its append-only file.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again on the same port and files.
    pub fn restart(&mut self) {
        assert!(self.run(), "redis-server restarted on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A hub process on `redis`; the first of a hub registers brand `b1`, the others join.
async fn hub_on(redis: &Redis, first: bool) -> TestApp {
    let store = redis.store();
    if first {
        TestApp::spawn_with(|c| c.store = store).await
    } else {
        TestApp::spawn_joining(|c| c.store = store).await
    }
}

/// One hub process on Redis: the same story as on every engine, told across a restart (a process
/// started after the first stopped has it all from Redis).
#[tokio::test]
async fn the_hub_runs_on_redis() {
    let redis = Redis::start();
    let mut app = hub_on(&redis, true).await;
    let expected = crate::engines::queue_and_raise(&app).await;
    app.stop().await;
    let app = hub_on(&redis, false).await;
    crate::engines::deliver_once(&app, &expected).await;
    let stats = app.get_json("/api/v1/stats").await;
    assert_eq!(stats["store"]["engine"], "redis");
    assert_eq!(stats["store"]["durable"], true);
}

/// Three hub processes on one Redis are one hub: a pixel queued through A reaches the player's
/// session on B, once; with a tab on each of three processes it fires once; an event reported to C
/// queues B's pixel and sends its postback once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hub_processes_on_one_redis_are_one_hub() {
    let redis = Redis::start();
    let a = hub_on(&redis, true).await;
    let (b, c) = (hub_on(&redis, false).await, hub_on(&redis, false).await);

    let mut on_b = b.session("p1").await;
    let queued = a.queue("p1", json!({"kind": "js", "code": "1"})).await;
    let started = Instant::now();
    assert_eq!(
        on_b.delivered().await,
        queued,
        "queued on A, delivered on B"
    );
    let woken_in = started.elapsed();
    on_b.ack(&queued).await;
    a.wait_until_drained("p1").await;

    // A tab on each process: one of them holds the player's queue at a time.
    let mut tabs = vec![
        a.session("p2").await,
        b.session("p2").await,
        c.session("p2").await,
    ];
    let queued = c.queue("p2", json!({"kind": "js", "code": "2"})).await;
    let mut fired = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while fired.is_empty() && Instant::now() < deadline {
        for tab in &mut tabs {
            if let Ok(message) = tokio::time::timeout(Duration::from_millis(100), tab.recv()).await
            {
                assert_eq!(message["type"], "deliver", "{message}");
                let ids = crate::helpers::ids_of(&message["pixels"]);
                tab.ack(&ids).await;
                fired.extend(ids);
            }
        }
    }
    assert_eq!(fired, queued, "fired once, on one of the three tabs");
    for tab in &mut tabs {
        tab.expect_nothing(Duration::from_millis(300)).await;
    }
    a.wait_until_drained("p2").await;

    // An event on C: B's session gets its pixel, the affiliate one postback.
    let affiliate = Receiver::start().await;
    a.define(
        "b1",
        json!({"id": "reg-px", "name": "Reg", "trigger": "registration", "kind": "image",
               "audience": "all_players", "url": "https://px.example/reg?p={{player_id}}"}),
    )
    .await;
    a.define(
        "b1",
        json!({"id": "reg-pb", "name": "Reg postback", "trigger": "registration", "kind": "s2s",
               "audience": "all_players", "url": affiliate.url("/pb?e={{event_id}}")}),
    )
    .await;
    let events = c
        .report(
            "b1",
            json!({"event_id": "reg-1", "type": "registration", "player_id": "p1"}),
        )
        .await;
    let produced = crate::helpers::ids_of(&events[0]["pixels"]);
    assert_eq!(produced.len(), 2, "{events:?}");
    let delivered = on_b.delivered().await;
    assert_eq!(delivered.len(), 1, "the image pixel, on B");
    on_b.ack(&delivered).await;
    let deadline = Instant::now() + PATIENCE * 2;
    while affiliate.hits_of("/pb").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Three senders, one Redis: give the others time to send it again, if they were going to.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        affiliate.hits_of("/pb").len(),
        1,
        "one postback from three processes"
    );
    eprintln!("queued on A, woken on B in {woken_in:?}");
}

/// A Redis whose settings can lose acknowledged writes is refused at start, saying which and how to go
/// on; `--store-durability relaxed` starts, and the stats say why it is not durable.
#[tokio::test]
async fn a_redis_that_can_lose_pixels_is_refused_unless_relaxed() {
    let redis = Redis::start_with(&["--appendfsync", "everysec"]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = pixelhub::Config::for_data_dir(dir.path());
    config.admin_token = Some(crate::helpers::TOKEN.into());
    config.store = redis.store();
    let refused = match pixelhub::Application::build(config).await {
        Ok(_) => panic!("a hub started on appendfsync everysec"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("appendfsync is everysec")
            && refused.contains("--store-durability relaxed"),
        "{refused}"
    );

    let store = redis.store();
    let app = TestApp::spawn_with(|c| {
        c.store = store;
        c.store_durability = StoreDurability::Relaxed;
    })
    .await;
    let stats = app.get_json("/api/v1/stats").await;
    assert_eq!(stats["store"]["durable"], false, "{stats}");
    let reasons = stats["store"]["relaxed"].to_string();
    assert!(reasons.contains("appendfsync is everysec"), "{reasons}");
}

/// Redis killed under load and started again: calls while it is down are answered 503 (never a 202
/// that was not stored), `/readyz` says so, the session stays open, nothing acknowledged is lost, and
/// delivery resumes when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_503_and_loses_nothing() {
    let mut redis = Redis::start();
    let store = redis.store();
    // The browser acks each of the 200-odd deliveries a second as it gets them.
    let app = TestApp::spawn_with(|c| {
        c.store = store;
        c.ws_max_messages_per_second = 1000;
    })
    .await;
    // The browser, all along: fires (acks) whatever it is sent, and keeps every id it saw.
    let mut ws = app.session("p1").await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let browser = tokio::spawn(async move {
        let mut seen: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                _ = &mut stopped => return seen,
                // Nothing arrives while Redis is down: a quiet second is not a failure here.
                message = tokio::time::timeout(Duration::from_secs(1), ws.recv()) => {
                    let Ok(message) = message else { continue };
                    assert_eq!(message["type"], "deliver", "{message}");
                    let ids = crate::helpers::ids_of(&message["pixels"]);
                    ws.ack(&ids).await;
                    seen.extend(ids);
                }
            }
        }
    });
    let mut accepted: Vec<String> = Vec::new();
    let mut refused = 0;
    let mut down = Instant::now();
    for i in 0..300 {
        if i == 100 {
            redis.kill();
            down = Instant::now();
        }
        if i == 200 {
            let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
            assert_eq!(
                ready.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "/readyz while Redis is down"
            );
            let path = "/api/v1/brands/b1/players/p1/pixels";
            let answer = app
                .admin(reqwest::Method::POST, path)
                .json(&json!({"kind": "js", "code": "x"}));
            let body = json_of(answer).await;
            assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
            eprintln!("100 calls refused in {:?}", down.elapsed());
            redis.restart();
        }
        let answer = app
            .enqueue("b1", "p1", json!({"kind": "js", "code": i.to_string()}))
            .await;
        match answer.status() {
            StatusCode::ACCEPTED => {
                let body: serde_json::Value = answer.json().await.unwrap();
                accepted.extend(crate::helpers::ids_of(&body["pixels"]));
            }
            StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            other => panic!("pixel {i}: {other}"),
        }
    }
    assert!(
        refused >= 90,
        "calls while Redis was down were refused: {refused}"
    );
    assert!(accepted.len() >= 190, "{} accepted", accepted.len());
    // Every accepted pixel is delivered to the session that stayed open, and acked.
    app.wait_until_drained("p1").await;
    stop.send(()).unwrap();
    let mut delivered = browser.await.expect("the session stayed open");
    let count = delivered.len();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), count, "none delivered twice");
    accepted.sort();
    assert_eq!(delivered, accepted, "every 202 delivered");
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(app.metric("pixelhub_store_unreachable_total").await >= 1);
}

/// Polls `app`'s stats until `done` holds; fails with the last answer after `patience`.
async fn stats_until(
    app: &TestApp,
    patience: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + patience;
    loop {
        let stats = app.get_json("/api/v1/stats").await;
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "stats never got there: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two processes on one Redis: the stats of either count the sessions of both, and list both; the
/// per-player session limit holds across them, and the sessions route lists a player's sessions on
/// every process. A process that stops is forgotten within its report's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_limits_count_every_live_process_and_forget_a_stopped_one() {
    let redis = Redis::start();
    let store = redis.store();
    let a = TestApp::spawn_with(|c| {
        c.store = store.clone();
        c.max_sessions_per_player = 2;
    })
    .await;
    let mut b = TestApp::spawn_joining(|c| {
        c.store = store;
        c.max_sessions_per_player = 2;
    })
    .await;
    let _on_a = (a.session("p1").await, a.session("p2").await);
    let _on_b = b.session("p3").await;

    // Two tabs of p9, one on each process: a third, on either, is one too many.
    let _tabs = (a.session("p9").await, b.session("p9").await);
    for app in [&a, &b] {
        let mut third = app.connect().await;
        third
            .send(json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": "p9"}))
            .await;
        assert_eq!(
            third.closed().await.0,
            4006,
            "the limit holds across processes"
        );
    }
    let listed = b.get_json("/api/v1/brands/b1/players/p9/sessions").await;
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(2),
        "both of p9's sessions, whichever process is asked: {listed}"
    );

    let both = stats_until(&a, PATIENCE, |s| {
        s["sessions"] == 5 && s["processes"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert_eq!(both["brands"]["b1"]["sessions"], 5, "{both}");
    assert_eq!(both["players_online"], 5, "{both}");

    b.stop().await;
    let alone = stats_until(&a, Duration::from_secs(1), |s| {
        s["processes"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert_eq!(
        alone["sessions"], 3,
        "a stopped process leaves the stats at once: {alone}"
    );
    // p9's tab on the stopped process is gone: a second one may open.
    let _again = a.session("p9").await;
}

const TOKEN: &str = "redis-test-token-0123456789";

/// A real hub process on `redis`, with leases of 1.5 s so a dead holder's run out quickly.
fn hub_process(redis: &Redis, dir: &std::path::Path) -> HubProcess {
    let url = redis.url();
    let settings = [
        ("PIXELHUB_STORE", url.as_str()),
        ("PIXELHUB_LEASE_TTL_MS", "1500"),
    ];
    HubProcess::start_with("127.0.0.1:0", dir, Some(TOKEN), false, &settings)
}

/// Registers brand `b1` (every pixel kind) through a hub process.
async fn put_brand(api: &HubApi) {
    let brand = json!({"allowed_kinds": crate::helpers::ALL_KINDS});
    let (status, body) = api
        .call(reqwest::Method::PUT, "/api/v1/brands/b1", Some(brand))
        .await;
    assert!(status.is_success(), "{body}");
}

/// Queues a `js` pixel for `player` of `b1` through a hub process; its ids.
async fn queue_js(api: &HubApi, player: &str, code: &str) -> Vec<String> {
    let pixel = json!({"kind": "js", "code": code});
    let path = format!("/api/v1/brands/b1/players/{player}/pixels");
    let (status, body) = api.call(reqwest::Method::POST, &path, Some(pixel)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    crate::helpers::ids_of(&body["pixels"])
}

/// A player's session on the hub process listening on `addr`.
async fn session_at(addr: std::net::SocketAddr, player: &str) -> WsClient {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/websocket"))
        .await
        .expect("the upgrade succeeds");
    let mut client = WsClient { ws };
    client
        .send(json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": player}))
        .await;
    let welcome = client.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client
}

/// `kill -9` of the process whose session holds a player's pixels in flight: the player's next session,
/// on another process, gets them once the dead holder's lease runs out (1.5 s here), and acks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_lease_holder_hands_its_pixels_in_flight_to_another_process() {
    let redis = Redis::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = hub_process(&redis, dir_a.path());
    let b = hub_process(&redis, dir_b.path());
    let api = HubApi::of(&b, TOKEN);
    put_brand(&api).await;

    let mut on_a = session_at(a.addr, "p1").await;
    let mut queued = Vec::new();
    for n in 0..3 {
        queued.extend(queue_js(&api, "p1", &n.to_string()).await);
    }
    let mut in_flight = Vec::new();
    while in_flight.len() < queued.len() {
        in_flight.extend(on_a.delivered().await);
    }
    assert_eq!(
        in_flight, queued,
        "sent to the session on A, not acknowledged"
    );

    a.kill_9();
    let killed = Instant::now();
    let mut on_b = session_at(b.addr, "p1").await;
    let mut again = Vec::new();
    while again.len() < queued.len() {
        again.extend(on_b.delivered().await);
    }
    let took = killed.elapsed();
    assert_eq!(again, queued, "the unacknowledged pixels, on B");
    assert!(took < Duration::from_secs(4), "taken over in {took:?}");
    // The dead process's report ages out of B's stats within its lifetime.
    let ttl = Duration::from_millis(pixelhub::store::PRESENCE_TTL_MS);
    loop {
        let (_, stats) = api.call(reqwest::Method::GET, "/api/v1/stats", None).await;
        if stats["processes"].as_array().map(Vec::len) == Some(1) {
            break;
        }
        assert!(
            killed.elapsed() < ttl + Duration::from_secs(3),
            "a killed process still in the stats: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    on_b.ack(&again).await;
    let deadline = Instant::now() + PATIENCE;
    while !api.pending("p1").await.is_empty() {
        assert!(Instant::now() < deadline, "the acks on B emptied the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("pixels in flight on a killed process reached another in {took:?}");
}

/// A player's browser for the kill rounds: connects to a live process (another when its own dies, as
/// the client's reconnect does), fires each pixel id once (its memory of fired ids), acks everything it
/// is sent, and notes on which connection each id came.
async fn kill_round_browser(
    player: String,
    live: Arc<Mutex<Vec<std::net::SocketAddr>>>,
    stop: tokio_util::sync::CancellationToken,
) -> BrowserLog {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut log = BrowserLog::default();
    let mut connection = 0usize;
    while !stop.is_cancelled() {
        let addrs = live.lock().unwrap().clone();
        let addr = addrs[connection % addrs.len()];
        connection += 1;
        let Ok((mut ws, _)) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/websocket")).await
        else {
            continue;
        };
        let hello = json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": player});
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            continue;
        }
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return log,
                frame = ws.next() => frame,
            };
            let Some(Ok(Message::Text(text))) = frame else {
                break; // the process died (or closed us): reconnect elsewhere
            };
            let message: serde_json::Value = serde_json::from_str(&text).unwrap();
            match message["type"].as_str() {
                Some("deliver") => {
                    let ids = crate::helpers::ids_of(&message["pixels"]);
                    for id in &ids {
                        log.deliveries.push((id.clone(), connection));
                        log.fired.insert(id.clone());
                    }
                    let ack = json!({"type": "ack", "ids": ids});
                    if ws.send(Message::text(ack.to_string())).await.is_err() {
                        break;
                    }
                }
                Some("ping") => {
                    let _ = ws
                        .send(Message::text(json!({"type": "pong"}).to_string()))
                        .await;
                }
                _ => {}
            }
        }
        log.broken.insert(connection);
    }
    log
}

/// What one browser of the kill rounds saw.
#[derive(Default)]
struct BrowserLog {
    /// Every id it was sent, with the connection it came on, in order.
    deliveries: Vec<(String, usize)>,
    /// The ids it fired: each once.
    fired: std::collections::HashSet<String>,
    /// Connections that broke (their process was killed).
    broken: std::collections::HashSet<usize>,
}

/// 20 rounds of `kill -9` of a random process of three, under 16-way ingest, with four players'
/// browsers connected throughout: every `202` is delivered and fired, and a pixel is sent twice only
/// when its first sending was on a connection whose process was killed (its ack may have been lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill_9_rounds_on_redis_deliver_every_202_and_none_twice() {
    let redis = Redis::start();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hubs: Vec<HubProcess> = dirs.iter().map(|d| hub_process(&redis, d.path())).collect();
    put_brand(&HubApi::of(&hubs[0], TOKEN)).await;
    let live = Arc::new(Mutex::new(hubs.iter().map(|h| h.addr).collect::<Vec<_>>()));
    let stop = tokio_util::sync::CancellationToken::new();
    let players: Vec<String> = (0..4).map(|n| format!("p{n}")).collect();
    let browsers: Vec<_> = players
        .iter()
        .map(|p| tokio::spawn(kill_round_browser(p.clone(), live.clone(), stop.clone())))
        .collect();
    let writers_stop = tokio_util::sync::CancellationToken::new();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (live, stop, player) = (live.clone(), writers_stop.clone(), players[w % 4].clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut accepted = Vec::new();
                let mut n = 0usize;
                while !stop.is_cancelled() {
                    let addrs = live.lock().unwrap().clone();
                    n += 1;
                    let url = format!(
                        "http://{}/api/v1/brands/b1/players/{player}/pixels",
                        addrs[(w + n) % addrs.len()]
                    );
                    let pixel = json!({"kind": "js", "code": format!("{w}-{n}")});
                    let Ok(answer) = http.post(url).bearer_auth(TOKEN).json(&pixel).send().await
                    else {
                        continue; // a killed process: no answer, nothing promised
                    };
                    if answer.status() == StatusCode::ACCEPTED {
                        let body: serde_json::Value = answer.json().await.unwrap();
                        accepted.extend(crate::helpers::ids_of(&body["pixels"]));
                    }
                }
                accepted
            })
        })
        .collect();

    let mut seed = 0x9e37_79b9_u64;
    for round in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let victim = (seed >> 33) as usize % hubs.len();
        let replacement = hub_process(&redis, dirs[victim].path());
        live.lock().unwrap()[victim] = replacement.addr;
        std::mem::replace(&mut hubs[victim], replacement).kill_9();
        eprintln!("round {round}: killed process {victim}");
    }
    writers_stop.cancel();
    let mut accepted = std::collections::HashSet::new();
    for writer in writers {
        accepted.extend(writer.await.unwrap());
    }
    // Everything accepted is delivered and acked: every queue empties.
    let api = HubApi::of(&hubs[0], TOKEN);
    let deadline = Instant::now() + PATIENCE * 6;
    for player in &players {
        while !api.pending(player).await.is_empty() {
            assert!(Instant::now() < deadline, "{player}'s queue never emptied");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.cancel();
    let mut fired = std::collections::HashSet::new();
    for browser in browsers {
        let log = browser.await.unwrap();
        let mut first_on: std::collections::HashMap<&str, usize> = Default::default();
        for (id, connection) in &log.deliveries {
            match first_on.get(id.as_str()) {
                None => {
                    first_on.insert(id, *connection);
                }
                Some(first) => assert!(
                    log.broken.contains(first),
                    "{id} sent twice, the first time on a connection that did not break"
                ),
            }
        }
        fired.extend(log.fired);
    }
    assert!(accepted.len() > 200, "only {} accepted", accepted.len());
    let lost: Vec<_> = accepted.difference(&fired).collect();
    assert!(
        lost.is_empty(),
        "{} answered 202 and never fired: {lost:?}",
        lost.len()
    );
    eprintln!(
        "{} pixels accepted over 20 kill rounds, each fired once",
        accepted.len()
    );
}

/// `rediss://`: the hub speaks TLS to a Redis whose certificate it trusts (here through
/// `SSL_CERT_FILE`, the system's trust store as an operator would extend it), and refuses to start on
/// one whose certificate it does not.
#[tokio::test]
async fn rediss_connects_to_a_trusted_redis_and_refuses_an_untrusted_one() {
    let certs = tempfile::tempdir().unwrap();
    crate::tls::issue(certs.path(), "redis");
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let file = |name: &str| certs.path().join(name).to_str().unwrap().to_owned();
    let (leaf, key, ca) = (file("redis.leaf"), file("redis.key"), file("ca.pem"));
    let tls_port_arg = tls_port.to_string();
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port_arg,
        "--tls-cert-file",
        &leaf,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}/0");

    let dir = tempfile::tempdir().unwrap();
    let trusted = [
        ("PIXELHUB_STORE", url.as_str()),
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let hub = HubProcess::start_with("127.0.0.1:0", dir.path(), Some(TOKEN), false, &trusted);
    let api = HubApi::of(&hub, TOKEN);
    put_brand(&api).await;
    queue_js(&api, "p1", "1").await;
    // Through the TLS port, into the one Redis: its plain port sees the pixel queued.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let queued: u64 = redis::cmd("ZCARD")
        .arg("{pxh:b:b1}:q:p1")
        .query(&mut conn)
        .unwrap();
    assert_eq!(queued, 1);

    let untrusted = [("PIXELHUB_STORE", url.as_str())];
    let other = tempfile::tempdir().unwrap();
    let mut refused = HubProcess::spawn_raw(
        other.path(),
        &[untrusted[0], ("PIXELHUB_ADMIN_TOKEN", TOKEN)],
    );
    let status = refused
        .wait_exit(Duration::from_secs(30))
        .expect("a hub that cannot trust Redis's certificate stops");
    assert!(!status.success());
    let said = refused.lines().join("\n");
    assert!(said.contains("cannot reach"), "{said}");
}

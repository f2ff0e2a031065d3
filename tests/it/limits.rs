//! The limits of issue 6, each hit from outside: the documented answer, the count in
//! `pixelhub_limits_hit_total`, and the legitimate use just under the limit still working.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{PATIENCE, TestApp, json_of};

/// `pixelhub_limits_hit_total{limit="…"}`, 0 when the limit was never hit.
async fn hits(app: &TestApp, limit: &str) -> u64 {
    app.metric(&format!("pixelhub_limits_hit_total{{limit=\"{limit}\"}}"))
        .await
}

fn pixels(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"kind": "image", "url": format!("https://aff.example/p?n={i}")}))
            .collect(),
    )
}

#[tokio::test]
async fn http_limits_answer_their_documented_errors_and_are_counted() {
    let app = TestApp::spawn_with(|c| {
        c.max_body_bytes = 1024;
        c.max_batch = 3;
        c.max_queue_per_player = 4;
    })
    .await;

    // Body size: 413, nothing queued.
    let big =
        json!({"kind": "image", "url": format!("https://aff.example/p?x={}", "a".repeat(1100))});
    let answer = json_of(
        app.admin(Method::POST, "/api/v1/brands/b1/players/p1/pixels")
            .json(&big),
    )
    .await;
    assert_eq!(answer["error"]["code"], "payload_too_large", "{answer}");
    assert_eq!(hits(&app, "body_bytes").await, 1);

    // Batch size, for pixels and events alike: 422; three still go through.
    let answer = app.enqueue("b1", "p1", pixels(4)).await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "batch_too_large", "{body}");
    let events: Vec<Value> = (0..4)
        .map(|i| json!({"event_id": format!("e{i}"), "type": "registration", "player_id": "p9"}))
        .collect();
    let answer = app
        .admin(Method::POST, "/api/v1/brands/b1/events")
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(hits(&app, "batch_size").await, 2);
    assert_eq!(
        app.enqueue("b1", "p1", pixels(3)).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(app.pending_ids("p1").await.len(), 3);

    // Pending pixels per player: 429 at the cap, nothing written.
    assert_eq!(
        app.enqueue("b1", "p1", pixels(1)).await.status(),
        StatusCode::ACCEPTED
    );
    let answer = app.enqueue("b1", "p1", pixels(1)).await;
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.pending_ids("p1").await.len(), 4);
    assert_eq!(hits(&app, "queue_per_player").await, 1);
}

#[tokio::test]
async fn websocket_limits_close_with_their_documented_codes_and_are_counted() {
    let app = TestApp::spawn_with(|c| {
        c.ws_max_message_bytes = 512;
        c.ws_max_messages_per_second = 5;
        c.max_sessions_per_player = 2;
        c.hello_timeout_ms = 300;
    })
    .await;

    // Frame size: 4504.
    let mut ws = app.session("big").await;
    ws.send_text(&format!(
        "{{\"type\":\"pong\",\"pad\":\"{}\"}}",
        "x".repeat(600)
    ))
    .await;
    assert_eq!(ws.closed().await, (4504, "message_too_big".into()));
    assert_eq!(hits(&app, "ws_message_bytes").await, 1);

    // Message rate: a burst of twice the rate passes, a flood is closed with 4005.
    let mut ws = app.session("calm").await;
    for _ in 0..8 {
        ws.send(json!({"type": "pong"})).await;
    }
    let ids = app
        .queue_for("b1", "calm", json!({"kind": "js", "code": "1"}))
        .await;
    assert_eq!(
        ws.delivered().await,
        ids,
        "a client within its rate is served"
    );
    let mut flood = app.session("flood").await;
    for _ in 0..40 {
        if flood
            .ws
            .send(tokio_tungstenite::tungstenite::Message::text(
                r#"{"type":"pong"}"#,
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(flood.closed().await, (4005, "rate_limited".into()));
    assert_eq!(hits(&app, "ws_message_rate").await, 1);

    // Hello timeout: 4002.
    let mut silent = app.connect().await;
    assert_eq!(silent.closed().await, (4002, "hello_timeout".into()));
    assert_eq!(hits(&app, "hello_timeout").await, 1);

    // Sessions per player: the third is closed with 4006; other players are not affected, and a
    // freed place is taken again.
    let first = app.session("tabs").await;
    let _second = app.session("tabs").await;
    let mut third = app.connect().await;
    third
        .send(json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": "tabs"}))
        .await;
    assert_eq!(third.closed().await, (4006, "too_many_sessions".into()));
    assert_eq!(hits(&app, "sessions_per_player").await, 1);
    let _other = app.session("someone-else").await;
    first.vanish();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let sessions = app
            .get_json("/api/v1/brands/b1/players/tabs/sessions")
            .await;
        if sessions["sessions"].as_array().unwrap().len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the vanished session was not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _again = app.session("tabs").await;
}

/// A request on a fresh connection, its status and error code; no pooled connection is kept.
async fn fresh_request(app: &TestApp) -> (StatusCode, Value) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let answer = client.get(app.url("/healthz")).send().await.unwrap();
    let status = answer.status();
    let body = answer.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn one_address_holds_a_bounded_number_of_connections() {
    let app = TestApp::spawn_with(|c| {
        c.max_connections_per_ip = 3;
        c.header_timeout_ms = 500;
    })
    .await;
    // Three sessions take the three places of 127.0.0.1, once the set-up's pooled connection has
    // idled out.
    let mut open = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while open.len() < 3 {
        match app.connect_from("", None).await {
            Ok(ws) => open.push(ws),
            Err(_) => {
                // The pooled connection of the set-up still holds a place; wait for it to go.
                assert!(tokio::time::Instant::now() < deadline, "places never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let (status, body) = fresh_request(&app).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    match app.connect_from("", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
            assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS)
        }
        other => panic!("a fourth WebSocket got {:?}", other.map(|_| ())),
    }
    // A session that ends gives its place back.
    open.pop().unwrap().vanish();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while fresh_request(&app).await.0 != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(open);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while hits(&app, "connections_per_ip").await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusals were not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Upgrades with an `X-Forwarded-For` header and says hello as `player` of `b1`.
async fn forwarded_session(
    app: &TestApp,
    forwarded_for: &str,
    player: &str,
) -> Result<crate::helpers::WsClient, StatusCode> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = app.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => {
            let mut ws = crate::helpers::WsClient { ws };
            ws.send(json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": player}))
                .await;
            assert_eq!(ws.recv().await["type"], "welcome");
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => Err(answer.status()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    // The test's connections come from 127.0.0.1, here a trusted proxy.
    let app = TestApp::spawn_with(|c| {
        c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        c.max_connections_per_ip = 2;
    })
    .await;
    let _a = forwarded_session(&app, "198.51.100.7", "fa").await.unwrap();
    let _b = forwarded_session(&app, "203.0.113.1, 198.51.100.7", "fb")
        .await
        .unwrap();
    assert_eq!(
        forwarded_session(&app, "198.51.100.7", "fc").await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS),
        "a third session of one client behind the proxy"
    );
    let _c = forwarded_session(&app, "198.51.100.8", "fc").await.unwrap();
    assert_eq!(hits(&app, "connections_per_ip").await, 1);
    let sessions = app.get_json("/api/v1/brands/b1/players/fb/sessions").await;
    assert_eq!(
        sessions["sessions"][0]["client_ip"], "198.51.100.7",
        "{sessions}"
    );

    // Without trusted proxies the header is the client's word, and is ignored.
    let direct = TestApp::spawn().await;
    let _d = forwarded_session(&direct, "198.51.100.7", "fd")
        .await
        .unwrap();
    let sessions = direct
        .get_json("/api/v1/brands/b1/players/fd/sessions")
        .await;
    assert_eq!(
        sessions["sessions"][0]["client_ip"], "127.0.0.1",
        "{sessions}"
    );
}

/// Reads until the hub closes the connection; the bytes read, or `None` when it stays open past
/// `patience`.
async fn read_until_closed(stream: &mut TcpStream, patience: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    let app = TestApp::spawn_with(|c| c.header_timeout_ms = 300).await;
    let patience = Duration::from_secs(3);

    // Slow loris: headers started, never finished.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut slow, patience).await.is_some(),
        "a slow client was kept"
    );

    // Silent from the start.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    assert!(
        read_until_closed(&mut silent, patience).await.is_some(),
        "a silent client was kept"
    );

    // Idle after a request: answered, then closed.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let seen = read_until_closed(&mut idle, patience)
        .await
        .expect("an idle client was kept");
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
        "{seen:?}"
    );

    assert!(hits(&app, "header_timeout").await >= 2);
    // A WebSocket outlives the header timeout: it has its own heartbeat.
    let mut ws = app.session("stays").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ids = app
        .queue_for("b1", "stays", json!({"kind": "js", "code": "1"}))
        .await;
    assert_eq!(ws.delivered().await, ids);
}

#[tokio::test]
async fn a_trusted_proxys_idle_connection_is_not_closed_under_it() {
    // Closing an idle connection a proxy is about to reuse would make the proxy answer 502.
    let app = TestApp::spawn_with(|c| {
        c.header_timeout_ms = 300;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let mut proxy = TcpStream::connect(app.addr).await.unwrap();
    proxy
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut proxy, Duration::from_secs(1))
            .await
            .is_none(),
        "the hub closed the proxy's idle keep-alive connection"
    );
    // The same connection still serves the next request (the first answer was read above).
    proxy
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let seen = read_until_closed(&mut proxy, PATIENCE).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen)
            .matches("HTTP/1.1 200")
            .count(),
        1,
        "{seen:?}"
    );
}

/// Sends a request's head (`Connection: close`, the body's length), then `body` a byte every `pace`;
/// returns the answer's status line and how long until the connection closed.
async fn trickle(app: &TestApp, head: &str, body: &[u8], pace: Duration) -> (String, Duration) {
    let mut socket = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "{head}\r\nhost: {}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        app.addr,
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let (mut reader, mut writer) = socket.into_split();
    let body = body.to_vec();
    // The writer is handed back, not dropped, when the body is sent: dropping it would half-close the
    // connection, and the server may take that for a client gone before it answers.
    let sender = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(pace).await;
        }
        writer
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE * 2, reader.read_to_end(&mut answer)).await;
    sender.abort();
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").to_owned();
    (status, started.elapsed())
}

#[tokio::test]
async fn a_body_that_trickles_is_cut_off_and_an_upload_that_keeps_coming_is_not() {
    let app = TestApp::spawn_with(|c| {
        c.body_timeout_ms = 1000;
        c.demo = Some(true);
    })
    .await;
    // Unauthenticated (the demo) and authenticated routes alike: 408 at the limit, connection closed.
    let slow = br#"{"player_id": "p1", "kind": "image"}"#;
    for head in [
        "POST /demo/api/pixels HTTP/1.1".to_owned(),
        format!(
            "POST /api/v1/brands/b1/players/p1/pixels HTTP/1.1\r\nauthorization: Bearer {}",
            crate::helpers::TOKEN
        ),
    ] {
        let (status, took) = trickle(&app, &head, slow, Duration::from_millis(300)).await;
        assert!(status.contains("408"), "{head}: {status}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{head}: answered after {took:?}"
        );
    }
    assert_eq!(hits(&app, "body_timeout").await, 2);

    // A body that arrives in time is fine.
    let (status, _) = trickle(
        &app,
        "POST /demo/api/pixels HTTP/1.1",
        slow,
        Duration::from_millis(1),
    )
    .await;
    assert!(status.contains("202"), "{status}");

    // An upload may take longer than the limit, as long as it never falls silent for that long.
    let mut file = "player_id,registration_date\n".to_owned();
    for i in 0..12 {
        file.push_str(&format!("p{i},2026-11-01\n"));
    }
    let chunks: Vec<Result<String, std::io::Error>> =
        file.lines().map(|l| Ok(format!("{l}\n"))).collect();
    let slow_file = futures::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        chunk
    });
    let started = std::time::Instant::now();
    let summary = json_of(
        app.admin(Method::POST, "/api/v1/brands/b1/imports?type=registrations")
            .body(reqwest::Body::wrap_stream(slow_file)),
    )
    .await;
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the upload took its time"
    );
    assert_eq!(
        (summary["imported"].as_u64(), summary["failed"].as_u64()),
        (Some(12), Some(0)),
        "{summary}"
    );
}

#[tokio::test]
async fn the_demo_cannot_be_used_to_fill_the_store() {
    let app = TestApp::spawn_with(|c| c.demo = Some(true)).await;
    let demo = |player: &str| {
        app.http
            .post(app.url("/demo/api/pixels"))
            .json(&json!({"player_id": player, "kind": "image"}))
            .send()
    };
    // A burst goes through; then the rate says when to come back.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(demo("p1").await.unwrap().status());
    }
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert!((20..=21).contains(&accepted), "{statuses:?}");
    let refused = demo("p2").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");

    // One player holds at most 20 pending demo pixels; another is still served.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let capped: Value = demo("p1").await.unwrap().json().await.unwrap();
    assert_eq!(capped["error"]["code"], "quota_exceeded", "{capped}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(demo("p2").await.unwrap().status(), StatusCode::ACCEPTED);
    assert!(hits(&app, "demo").await >= 5);
    assert_eq!(app.pending_ids_of("demo", "p1").await.len(), 20);
}

#[tokio::test]
async fn the_demo_is_off_on_a_hub_reachable_from_the_network_unless_asked_for() {
    let public = TestApp::spawn_with(|c| {
        c.listen = "0.0.0.0:0".parse().unwrap();
        c.demo = None; // as a hub started without --demo
    })
    .await;
    let page = public.http.get(public.url("/demo")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    let asked = TestApp::spawn_with(|c| {
        c.listen = "0.0.0.0:0".parse().unwrap();
        c.demo = Some(true);
    })
    .await;
    let page = asked.http.get(asked.url("/demo")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
}

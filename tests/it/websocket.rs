//! Every bad WebSocket input ends with its documented close code, and the hub stays healthy.

use std::time::Duration;

use serde_json::json;

use crate::helpers::TestApp;

async fn close_after(app: &TestApp, frames: &[&str]) -> (u16, String) {
    let mut ws = app.connect().await;
    for frame in frames {
        ws.send_text(frame).await;
    }
    ws.closed().await
}

#[tokio::test]
async fn bad_hellos_and_bad_frames_get_their_documented_close_codes() {
    let app = TestApp::spawn().await;
    let cases: [(&[&str], u16, &str); 9] = [
        (&["{not json"], 4500, "bad_message"),
        (&[r#"{"type":"subscribe"}"#], 4500, "bad_message"),
        (
            &[r#"{"type":"hello","v":2,"brand_id":"b1","player_id":"p"}"#],
            4501,
            "unsupported_version",
        ),
        (
            &[r#"{"type":"hello","v":1,"brand_id":"b1","player_id":"has space"}"#],
            4502,
            "invalid_hello",
        ),
        (
            &[r#"{"type":"hello","v":1,"brand_id":-3,"player_id":"p"}"#],
            4502,
            "invalid_hello",
        ),
        (
            &[r#"{"type":"hello","v":1,"player_id":"p"}"#],
            4502,
            "invalid_hello",
        ),
        (
            &[r#"{"type":"hello","v":1,"brand_id":"nope","player_id":"p"}"#],
            4503,
            "unknown_brand",
        ),
        (
            &[r#"{"type":"ack","ids":["x"]}"#],
            4505,
            "unexpected_message",
        ),
        (
            &[
                r#"{"type":"hello","v":1,"brand_id":"b1","player_id":"p"}"#,
                r#"{"type":"hello","v":1,"brand_id":"b1","player_id":"p"}"#,
            ],
            4505,
            "unexpected_message",
        ),
    ];
    for (frames, code, reason) in cases {
        assert_eq!(
            close_after(&app, frames).await,
            (code, reason.to_owned()),
            "{frames:?}"
        );
    }
    let ok = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert!(ok.status().is_success(), "the hub stays healthy");
    let mut ws = app.session("p").await;
    let ids = app.queue("p", json!({"kind": "js", "code": "1"})).await;
    assert_eq!(ws.delivered().await, ids, "and keeps delivering");
}

#[tokio::test]
async fn a_numeric_brand_id_names_the_same_brand_as_its_decimal_string() {
    let app = TestApp::spawn().await;
    app.put_brand("12345", json!({})).await;
    let ids = app
        .enqueue(
            "12345",
            "p",
            json!({"kind": "image", "url": "https://a.example/"}),
        )
        .await;
    assert_eq!(ids.status(), 202);
    let mut ws = app.connect().await;
    ws.send(json!({"type": "hello", "v": 1, "brand_id": 12345, "player_id": "p"}))
        .await;
    assert_eq!(ws.recv().await["type"], "welcome");
    assert_eq!(ws.delivered().await.len(), 1);
}

#[tokio::test]
async fn oversized_and_binary_frames_close_the_session() {
    let app = TestApp::spawn_with(|c| c.ws_max_message_bytes = 1024).await;
    let mut ws = app.session("p").await;
    let big = json!({"type": "ack", "ids": vec!["x".repeat(100); 20]}).to_string();
    ws.send_text(&big).await;
    assert_eq!(ws.closed().await, (4504, "message_too_big".into()));

    let mut ws = app.session("p").await;
    futures::SinkExt::send(
        &mut ws.ws,
        tokio_tungstenite::tungstenite::Message::binary(vec![1, 2, 3]),
    )
    .await
    .unwrap();
    assert_eq!(ws.closed().await, (4500, "bad_message".into()));

    let app = TestApp::spawn().await;
    let mut ws = app.session("p").await;
    let ids: Vec<String> = (0..257).map(|i| format!("i{i}")).collect();
    ws.ack(&ids).await;
    assert_eq!(
        ws.closed().await,
        (4505, "unexpected_message".into()),
        "too many ids in one ack"
    );
}

#[tokio::test]
async fn a_frame_many_times_the_read_buffer_is_read_whole() {
    // The per-session read buffer is 512 bytes; an ack of many long ids is 24 KiB, under the 32 KiB
    // message cap. It must be read whole and applied, and the session must go on.
    let app = TestApp::spawn().await;
    let mut ws = app.session("p").await;
    let long = |i: usize| format!("{i:03}-{}", "x".repeat(116));
    let queued = app
        .queue("p", json!({"kind": "js", "code": "1", "id": long(0)}))
        .await;
    assert_eq!(ws.delivered().await, queued);
    let mut ids: Vec<String> = (1..200).map(long).collect();
    ids.push(queued[0].clone());
    let frame = json!({"type": "ack", "ids": ids}).to_string();
    assert!(frame.len() > 32 * 512, "{} bytes", frame.len());
    ws.send_text(&frame).await;
    app.wait_until_drained("p").await;
    let next = app.queue("p", json!({"kind": "js", "code": "2"})).await;
    assert_eq!(ws.delivered().await, next, "the session goes on");
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_closed() {
    let app = TestApp::spawn_with(|c| c.hello_timeout_ms = 200).await;
    let mut ws = app.connect().await;
    let started = std::time::Instant::now();
    assert_eq!(ws.closed().await, (4002, "hello_timeout".into()));
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn origins_outside_the_brands_allowlist_are_refused() {
    let app = TestApp::spawn().await;
    app.put_brand(
        "locked",
        json!({"allowed_origins": ["https://casino.example"]}),
    )
    .await;
    let hello =
        json!({"type": "hello", "v": 1, "brand_id": "locked", "player_id": "p"}).to_string();

    for (origin, expected) in [
        (
            Some("https://evil.example"),
            Some((4506, "origin_not_allowed")),
        ),
        (None, Some((4506, "origin_not_allowed"))),
        (Some("https://casino.example"), None),
    ] {
        let mut ws = app.connect_from("", origin).await.unwrap();
        ws.send_text(&hello).await;
        match expected {
            Some((code, reason)) => {
                assert_eq!(ws.closed().await, (code, reason.to_owned()), "{origin:?}")
            }
            None => assert_eq!(ws.recv().await["type"], "welcome"),
        }
    }
}

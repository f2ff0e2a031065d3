//! Delivery semantics over the real WebSocket: order, acks, redelivery, one connection of many, restarts.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::TestApp;

fn images(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"kind": "image", "url": format!("https://aff.example/{i}")}))
            .collect(),
    )
}

#[tokio::test]
async fn pixels_queued_while_offline_arrive_in_order_at_the_next_login() {
    let app = TestApp::spawn().await;
    let first = app.queue("p1", images(3)).await;
    let second = app.queue("p1", images(2)).await;

    let mut ws = app.session("p1").await;
    let delivered = ws.delivered().await;
    assert_eq!(delivered, [first, second].concat());
}

#[tokio::test]
async fn an_online_player_receives_a_new_pixel_at_once() {
    let app = TestApp::spawn().await;
    let mut ws = app.session("p1").await;
    let started = std::time::Instant::now();
    let ids = app.queue("p1", json!({"kind": "js", "code": "1"})).await;
    assert_eq!(ws.delivered().await, ids);
    // Not a speed target (see the benchmark tool), only a guard against a missing wake-up (a poll would take seconds).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_ack_deletes_and_only_an_ack_deletes() {
    let app = TestApp::spawn().await;
    let ids = app.queue("p1", images(2)).await;
    let mut ws = app.session("p1").await;
    assert_eq!(ws.delivered().await, ids);

    let pending = app.get_json("/api/v1/brands/b1/players/p1/pixels").await;
    assert!(
        pending["pixels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["in_flight"] == true),
        "sent, not deleted"
    );
    ws.ack(&ids[..1]).await;
    app.wait_for_queue("b1", "p1", &ids[1..]).await;
    ws.ack(&ids[1..]).await;
    app.wait_until_drained("p1").await;
    assert_eq!(app.get_json("/api/v1/stats").await["queue_depth"], 0);
}

#[tokio::test]
async fn a_connection_that_drops_before_acking_hands_its_pixels_to_the_next() {
    let app = TestApp::spawn().await;
    let ids = app.queue("p1", images(3)).await;
    let mut first = app.session("p1").await;
    assert_eq!(first.delivered().await, ids);
    first.ack(&ids[..1]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.vanish();

    // Another connection of the player, already open or opened later, gets the rest, in order.
    let mut next = app.session("p1").await;
    assert_eq!(next.delivered().await, ids[1..]);
}

#[tokio::test]
async fn a_waiting_connection_takes_over_when_the_holder_drops() {
    let app = TestApp::spawn().await;
    let mut holder = app.session("p1").await;
    let mut standby = app.session("p1").await;
    let ids = app.queue("p1", images(1)).await;

    // Exactly one of the two gets it; make `holder` the one that did.
    let (holder, mut standby) = tokio::select! {
        got = holder.delivered() => { assert_eq!(got, ids); (holder, standby) }
        got = standby.delivered() => { assert_eq!(got, ids); (standby, holder) }
    };
    standby.expect_nothing(Duration::from_millis(300)).await;
    holder.vanish();
    assert_eq!(
        standby.delivered().await,
        ids,
        "redelivered to the other connection"
    );
}

#[tokio::test]
async fn many_connections_of_one_player_get_each_pixel_exactly_once() {
    let app = TestApp::spawn().await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(app.session("p1").await);
    }
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.extend(app.queue("p1", images(4)).await);
    }

    // Every connection acks whatever it receives; collect all deliveries until the queue drains.
    let mut received: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.len() < queued.len() && tokio::time::Instant::now() < deadline {
        for ws in sessions.iter_mut() {
            if let Ok(ids) = tokio::time::timeout(Duration::from_millis(50), ws.delivered()).await {
                ws.ack(&ids).await;
                received.extend(ids);
            }
        }
    }
    assert_eq!(received, queued, "each pixel once, in order");
    app.wait_until_drained("p1").await;
    for ws in sessions.iter_mut() {
        ws.expect_nothing(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_window_bounds_unacknowledged_pixels_per_session() {
    let app = TestApp::spawn_with(|c| c.delivery_window = 2).await;
    let ids = app.queue("p1", images(5)).await;
    let mut ws = app.session("p1").await;
    assert_eq!(ws.delivered().await, ids[..2]);
    ws.expect_nothing(Duration::from_millis(200)).await;
    ws.ack(&ids[..2]).await;
    assert_eq!(ws.delivered().await, ids[2..4]);
}

#[tokio::test]
async fn a_repeated_id_is_delivered_once_even_after_it_fired() {
    let app = TestApp::spawn().await;
    let pixel = json!({"kind": "image", "url": "https://aff.example/ftd", "id": "ftd-1"});
    let mut ws = app.session("p1").await;
    app.queue("p1", pixel.clone()).await;
    assert_eq!(ws.delivered().await, ["ftd-1"]);
    ws.ack(&["ftd-1".to_owned()]).await;
    app.wait_until_drained("p1").await;

    let again: Value = app.enqueue("b1", "p1", pixel).await.json().await.unwrap();
    assert_eq!(
        again["pixels"][0],
        json!({"id": "ftd-1", "status": "fired", "duplicate": true})
    );
    ws.expect_nothing(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_expired_pixel_is_dropped_counted_and_never_sent() {
    let app = TestApp::spawn().await;
    app.queue("p1", json!([{"kind": "js", "code": "1", "ttl_seconds": 1}]))
        .await;
    let keep = app.queue("p1", json!({"kind": "js", "code": "2"})).await;
    app.clock.advance(Duration::from_secs(1));

    assert_eq!(
        app.pending_ids("p1").await,
        keep,
        "expired pixels are not listed"
    );
    let mut ws = app.session("p1").await;
    assert_eq!(ws.delivered().await, keep);
    let stats = app.get_json("/api/v1/stats").await;
    assert_eq!(
        (
            stats["queue_depth"].as_u64(),
            stats["expired_total"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn a_restart_keeps_the_queue_and_redelivers_what_was_not_acked() {
    let app = TestApp::spawn().await;
    let ids = app.queue("p1", images(3)).await;
    let mut ws = app.session("p1").await;
    assert_eq!(ws.delivered().await, ids);
    ws.ack(&ids[..1]).await;
    app.wait_for_queue("b1", "p1", &ids[1..]).await;

    let app = app.restart().await;
    assert_eq!(
        ws.closed().await,
        (4000, "shutdown".into()),
        "sessions are told to reconnect"
    );
    assert_eq!(app.pending_ids("p1").await, ids[1..]);
    let mut ws = app.session("p1").await;
    assert_eq!(
        ws.delivered().await,
        ids[1..],
        "unacked pixels come again; the acked one never does"
    );
}

#[tokio::test]
async fn heartbeats_keep_live_sessions_and_close_silent_ones() {
    let app = TestApp::spawn_with(|c| {
        c.heartbeat_ms = 300;
        c.hello_timeout_ms = 600;
    })
    .await;
    let mut live = app.session("p1").await;
    let mut silent = app.session("p2").await;

    // `live` answers pings (recv does), `silent` never reads.
    live.expect_nothing(Duration::from_millis(1500)).await;
    assert_eq!(silent.closed().await, (4001, "heartbeat_timeout".into()));
    let ids = app.queue("p1", json!({"kind": "js", "code": "1"})).await;
    assert_eq!(live.delivered().await, ids);
}

#[tokio::test]
async fn an_ack_may_say_a_pixel_failed_and_the_report_shows_why() {
    let app = TestApp::spawn().await;
    let ids = app.queue("p1", images(4)).await;
    let mut ws = app.session("p1").await;
    assert_eq!(ws.delivered().await, ids);
    // A plain ack, an ack with results (one failed, one fired by a fallback), and a result whose pixel
    // is not in `ids`: each is acknowledged; the failed one is never offered again.
    ws.send(json!({"type": "ack", "ids": [ids[0], ids[1]], "results": [
        {"id": ids[1], "result": "failed", "reason": "js_threw", "message": format!("Error: boom {}", "x".repeat(300))},
        {"id": ids[2], "result": "fired", "reason": "fb_image_fallback"},
        {"id": ids[3], "result": "failed", "reason": "made_up"},
    ]}))
    .await;
    app.wait_until_drained("p1").await;
    let rows = app.deliveries("player_id=p1").await;
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(
        (
            row(&ids[0])["status"].clone(),
            row(&ids[0])["reason"].clone()
        ),
        (json!("fired"), Value::Null)
    );
    let failed = row(&ids[1]);
    assert_eq!(
        (failed["status"].as_str(), failed["reason"].as_str()),
        (Some("failed"), Some("js_threw"))
    );
    let message = failed["error"].as_str().unwrap();
    assert!(
        message.starts_with("Error: boom xx") && message.chars().count() == 200,
        "{message}"
    );
    assert_eq!(
        (
            row(&ids[2])["status"].clone(),
            row(&ids[2])["reason"].clone()
        ),
        (json!("fired"), json!("fb_image_fallback"))
    );
    assert_eq!(
        row(&ids[3])["reason"],
        "other",
        "an unknown code is kept as other"
    );
    // Both failures are counted once the ack is durable, a moment after the queue shows it.
    for reason in ["js_threw", "other"] {
        let series = format!(
            r#"pixelhub_browser_reports_total{{brand="b1",kind="image",result="failed",reason="{reason}"}}"#
        );
        app.wait_for_metric(&series, 1).await;
    }
    assert_eq!(
        app.get_json("/api/v1/stats").await["brands"]["b1"]["failed_total"],
        2
    );
    // The report filters on failures the browser reported.
    let by_reason = app.deliveries("reason=js_threw").await;
    assert_eq!(by_reason.len(), 1);
    // `browser` stands for every reason a browser gave, and only those.
    let mut reported: Vec<String> = app
        .deliveries("reason=browser")
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    reported.sort();
    let mut expected = ids[1..].to_vec();
    expected.sort();
    assert_eq!(reported, expected);
    // Nothing is delivered again, to this session or a new one.
    let mut again = app.session("p1").await;
    again.expect_nothing(Duration::from_millis(300)).await;
}

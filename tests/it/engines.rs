//! The hub on each engine `--store` can choose: the same story, end to end.

use std::time::Duration;

use pixelhub::config::StoreKind;
use serde_json::json;

use crate::helpers::TestApp;

/// The first half of every engine's story: a pixel queued with the caller's id, a definition, and an
/// event that raises it. Returns the ids the player must be sent, in order.
pub async fn queue_and_raise(app: &TestApp) -> Vec<String> {
    let ids = app
        .queue("p1", json!({"kind": "js", "code": "1", "id": "hand-1"}))
        .await;
    app.define(
        "b1",
        json!({"id": "ftd", "name": "FTD", "trigger": "ftd", "kind": "image", "audience": "all_players",
               "url": "https://px.example/ftd?p={{player_id}}"}),
    )
    .await;
    let events = app
        .report(
            "b1",
            json!({"event_id": "dep-1", "type": "deposit", "player_id": "p1", "params": {"amount": 20}}),
        )
        .await;
    assert_eq!(events[0]["raised"], json!(["ftd"]), "{events:?}");
    let ftd = events[0]["pixels"][0]["id"].as_str().unwrap().to_owned();
    vec![ids[0].clone(), ftd]
}

/// The second half: the player's session gets `expected` once, its ack empties the queue, the report
/// says fired, the caller's id is remembered, and the stats say the queue is empty.
pub async fn deliver_once(app: &TestApp, expected: &[String]) {
    let mut ws = app.session("p1").await;
    let sent = ws.delivered().await;
    assert_eq!(sent, expected);
    ws.ack(&sent).await;
    app.wait_until_drained("p1").await;
    ws.expect_nothing(Duration::from_millis(300)).await;

    let report = app
        .get_json("/api/v1/brands/b1/deliveries?player_id=p1")
        .await;
    let statuses: Vec<&str> = report["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["fired", "fired"]);
    let again = app
        .queue("p1", json!({"kind": "js", "code": "1", "id": "hand-1"}))
        .await;
    assert_eq!(again, expected[..1], "the caller's id is remembered");
    assert_eq!(app.pending_ids("p1").await.len(), 0, "and not queued again");
    let stats = app.get_json("/api/v1/stats").await;
    assert_eq!(stats["queue_depth"], 0);
    assert!(
        !app.dir.path().join("sled").exists(),
        "nothing was written to the embedded engine's files"
    );
}

/// On the memory engine: a queued pixel reaches its player once and leaves the queue on its ack; an
/// event produces its definition's pixel; the report and the stats tell it.
#[tokio::test]
async fn the_hub_runs_on_the_memory_store() {
    let app = TestApp::spawn_with(|c| c.store = StoreKind::Memory).await;
    let expected = queue_and_raise(&app).await;
    deliver_once(&app, &expected).await;
}

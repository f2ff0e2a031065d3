//! Attribution from the browser over real HTTP and WebSocket: a brand's capture settings, the capture
//! sent with a hello (and what the hub keeps of it), and the parameter names a brand has seen.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::TestApp;

const DAY_MS: u64 = 24 * 3600 * 1000;

fn now_ms() -> u64 {
    crate::helpers::now_secs() * 1000
}

/// A hello of `b1`'s `player` carrying `attribution`.
fn hello(player: &str, attribution: Value) -> Value {
    json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": player, "attribution": attribution})
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn capture_settings_are_validated_and_defaulted() {
    let app = TestApp::spawn().await;
    let brand = app.get_json("/api/v1/brands/b1").await;
    let params: Vec<&str> = brand["capture_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for name in [
        "clickid",
        "affclickid",
        "afp",
        "clid",
        "btag",
        "sub1",
        "utm_*",
    ] {
        assert!(params.contains(&name), "{name} in {params:?}");
    }
    assert_eq!(brand["capture_touch"], "last");
    assert_eq!(brand["capture_window_days"], 30);

    for (body, needle) in [
        (json!({"capture_params": ["click id"]}), "capture_params"),
        (json!({"capture_params": ["*"]}), "capture_params"),
        (json!({"capture_params": "clickid"}), "capture_params"),
        (json!({"capture_touch": "middle"}), "capture_touch"),
        (json!({"capture_window_days": 0}), "capture_window_days"),
        (json!({"capture_window_days": 366}), "capture_window_days"),
    ] {
        let response = app.put_brand("b2", body.clone()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {error}"
        );
    }
    let patterns: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
    let response = app
        .put_brand("b2", json!({"capture_params": patterns}))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let response = app
        .put_brand(
            "b2",
            json!({"capture_params": ["ClickId", "s_*", "clickid"], "capture_touch": "first", "capture_window_days": 7}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let brand: Value = response.json().await.unwrap();
    assert_eq!(brand["capture_params"], json!(["clickid", "s_*"]));
    assert_eq!(brand["capture_touch"], "first");
    assert_eq!(brand["capture_window_days"], 7);
}

#[tokio::test]
async fn the_browser_reads_capture_settings_only_from_the_brands_origins() {
    let app = TestApp::spawn().await;
    let url = app.url("/client/v1/brands/b1/capture");
    // Any origin while the brand lists none.
    let open = app
        .http
        .get(&url)
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    assert_eq!(open.headers()["access-control-allow-origin"], "*");
    assert!(
        open.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=300")
    );
    let body: Value = open.json().await.unwrap();
    assert_eq!(body["touch"], "last");
    assert_eq!(body["window_days"], 30);
    assert!(
        body["params"]
            .as_array()
            .unwrap()
            .contains(&json!("clickid"))
    );

    app.put_brand("b1", json!({"allowed_origins": ["https://casino.example"]}))
        .await;
    let own = app
        .http
        .get(&url)
        .header("origin", "https://casino.example")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    assert_eq!(
        own.headers()["access-control-allow-origin"],
        "https://casino.example"
    );
    for origin in [Some("https://evil.example"), None] {
        let mut request = app.http.get(&url);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(
            error_code(refused).await,
            (StatusCode::FORBIDDEN, "origin_not_allowed".to_owned()),
            "{origin:?}"
        );
    }
    let unknown = app
        .http
        .get(app.url("/client/v1/brands/nope/capture"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(unknown).await,
        (StatusCode::NOT_FOUND, "brand_not_found".to_owned())
    );
}

#[tokio::test]
async fn a_capture_in_the_hello_becomes_the_attribution_unless_the_brand_reported_one() {
    let app = TestApp::spawn().await;
    let now = now_ms();
    let click = json!({"params": {"clickid": "c-1", "sub1": "s", "email": "x@y.example"}, "captured_at_ms": now - DAY_MS});
    let mut ws = app.connect().await;
    ws.send(hello("p1", click.clone())).await;
    assert_eq!(ws.recv().await["type"], "welcome");
    let attribution = app
        .get_json("/api/v1/brands/b1/players/p1/attribution")
        .await;
    assert_eq!(attribution["source"], "browser");
    assert_eq!(
        attribution["params"],
        json!({"clickid": "c-1", "sub1": "s"}),
        "only the names the brand captures are kept"
    );
    assert_eq!(attribution["captured_at_ms"], now - DAY_MS);

    // The brand's own report wins, and stays.
    app.report(
        "b1",
        json!([{"event_id": "r2", "type": "registration", "player_id": "p2", "params": {"clickid": "c-brand"}}]),
    )
    .await;
    let mut ws = app.connect().await;
    ws.send(hello("p2", click.clone())).await;
    assert_eq!(ws.recv().await["type"], "welcome");
    let attribution = app
        .get_json("/api/v1/brands/b1/players/p2/attribution")
        .await;
    assert_eq!(attribution["source"], "event");
    assert_eq!(attribution["params"], json!({"clickid": "c-brand"}));

    // A capture older than the brand's window is not kept; the session goes on.
    let stale = json!({"params": {"clickid": "c-old"}, "captured_at_ms": now - 31 * DAY_MS});
    let mut ws = app.connect().await;
    ws.send(hello("p3", stale)).await;
    assert_eq!(ws.recv().await["type"], "welcome");
    let attribution = app
        .get_json("/api/v1/brands/b1/players/p3/attribution")
        .await;
    assert_eq!(attribution["source"], Value::Null);
    assert_eq!(attribution["params"], json!({}));
}

#[tokio::test]
async fn a_malformed_capture_closes_the_session_as_an_invalid_hello() {
    let app = TestApp::spawn().await;
    let now = now_ms();
    let long = "x".repeat(513);
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("utm_{i}"), json!("v"))).collect();
    for attribution in [
        json!({"params": {"clickid": long}, "captured_at_ms": now}),
        json!({"params": {"clickid": "a\u{0}b"}, "captured_at_ms": now}),
        json!({"params": {"ClickId": "c"}, "captured_at_ms": now}),
        json!({"params": {"clickid": 5}, "captured_at_ms": now}),
        json!({"params": many, "captured_at_ms": now}),
        json!({"params": {"clickid": "c"}}),
        json!("clickid=c"),
    ] {
        let mut ws = app.connect().await;
        ws.send(hello("p1", attribution.clone())).await;
        assert_eq!(
            ws.closed().await,
            (4502, "invalid_hello".to_owned()),
            "{attribution}"
        );
    }
    let attribution = app
        .get_json("/api/v1/brands/b1/players/p1/attribution")
        .await;
    assert_eq!(attribution["params"], json!({}), "nothing half-written");
}

#[tokio::test]
async fn the_brand_sees_every_parameter_name_from_events_and_browsers() {
    let app = TestApp::spawn().await;
    app.report(
        "b1",
        json!([
            {"event_id": "r1", "type": "registration", "player_id": "p1", "params": {"afp": "a", "sub1": "s"}},
            {"event_id": "r2", "type": "registration", "player_id": "p2", "params": {"afp": "b"}},
        ]),
    )
    .await;
    let mut ws = app.connect().await;
    let click = json!({"params": {"afp": "c", "utm_source": "news"}, "captured_at_ms": now_ms()});
    ws.send(hello("p3", click)).await;
    assert_eq!(ws.recv().await["type"], "welcome");

    let seen = app.get_json("/api/v1/brands/b1/params").await;
    assert_eq!(seen["brand_id"], "b1");
    let rows = seen["params"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["afp", "sub1", "utm_source"], "most seen first");
    assert_eq!(rows[0]["events"], 2);
    assert_eq!(rows[0]["browsers"], 1);
    assert_eq!(rows[0]["click_id"], true);
    assert_eq!(rows[0]["captured"], true);
    assert_eq!(rows[2]["events"], 0);
    assert_eq!(rows[2]["click_id"], false);
    assert!(rows[0]["last_seen_ms"].as_u64().unwrap() >= now_ms() - 60_000);

    // A brand key reads its own brand's names; another brand's are not its business.
    let key = app.create_key("b1").await;
    let own = app
        .http
        .get(app.url("/api/v1/brands/b1/params"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    app.put_brand("b2", json!({})).await;
    let other = app
        .http
        .get(app.url("/api/v1/brands/b2/params"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let unknown = app.admin(Method::GET, "/api/v1/brands/nope/params");
    assert_eq!(
        error_code(unknown.send().await.unwrap()).await,
        (StatusCode::NOT_FOUND, "brand_not_found".to_owned())
    );
}

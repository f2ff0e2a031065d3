//! Bounded growth: what someone holding only a brand's inbound URL (or a brand key) can make the hub keep.
//! Params per event and bytes per value, the inbound rate, and the brands' quotas (events a day, players,
//! outbox), each with the legitimate use beside the refusal; ids that would break URLs; URLs built on the
//! configured public URL.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, json_of};

impl TestApp {
    /// The brand's inbound base URL (`…/postback/{brand}/{token}`), as the admin API hands it out.
    async fn inbound_base(&self, brand: &str) -> String {
        let urls = self
            .get_json(&format!("/api/v1/brands/{brand}/inbound"))
            .await;
        let url = urls["counter_url"].as_str().unwrap();
        url.split('?').next().unwrap().to_owned()
    }

    /// GETs an inbound URL; its status and body.
    async fn get_inbound(&self, url: &str) -> (StatusCode, String) {
        let response = self.http.get(url).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }
}

/// A registration by URL with `n` params `sub1…` of `bytes` bytes each.
fn registration_url(base: &str, player: &str, n: usize, bytes: usize) -> String {
    let mut url = format!("{base}/registration?player_id={player}");
    for i in 1..=n {
        url.push_str(&format!("&sub{i}={}", "x".repeat(bytes)));
    }
    url
}

#[tokio::test]
async fn an_inbound_url_cannot_carry_more_params_or_longer_values_than_allowed() {
    let app = TestApp::spawn().await;
    let base = app.inbound_base("b1").await;
    // The flood: 28 params of 2 KB each. Refused, nothing kept.
    let (status, body) = app
        .get_inbound(&registration_url(&base, "p1", 28, 2048))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains("param_too_long") && body.contains("512"),
        "{body}"
    );
    let (status, body) = app.get_inbound(&registration_url(&base, "p1", 41, 8)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("too_many_params"), "{body}");
    let attribution = app
        .get_json("/api/v1/brands/b1/players/p1/attribution")
        .await;
    assert_eq!(attribution["params"], json!({}), "nothing of it was kept");

    // What real platforms send (a dozen ids of tens of bytes) goes through.
    let (status, _) = app
        .get_inbound(&registration_url(&base, "p1", 12, 64))
        .await;
    assert_eq!(status, StatusCode::OK);
    // JSON events are held to the same limits, with the field's path.
    let params: serde_json::Map<String, Value> =
        (1..=41).map(|i| (format!("sub{i}"), json!("x"))).collect();
    let answer = json_of(
        app.admin(reqwest::Method::POST, "/api/v1/brands/b1/events")
            .json(&json!([{"event_id": "e1", "type": "registration", "player_id": "p2", "params": params}])),
    )
    .await;
    assert_eq!(answer["error"]["code"], "too_many_params", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[0].params:"),
        "{answer}"
    );
    assert_eq!(
        app.metric("pixelhub_limits_hit_total{limit=\"event_params\"}")
            .await,
        3
    );
}

#[tokio::test]
async fn a_brands_inbound_urls_are_rate_limited_and_other_brands_are_not() {
    let app = TestApp::spawn_with(|c| c.inbound_rate = 5).await;
    app.put_brand("b2", json!({})).await;
    let (one, two) = (app.inbound_base("b1").await, app.inbound_base("b2").await);
    let mut statuses = Vec::new();
    for i in 0..12 {
        let (status, _) = app
            .get_inbound(&format!("{one}/registration?player_id=p{i}"))
            .await;
        statuses.push(status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "a burst of twice the rate: {statuses:?}"
    );
    let refused = app
        .http
        .get(format!("{one}/registration?player_id=late"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let (status, _) = app
        .get_inbound(&format!("{two}/registration?player_id=p1"))
        .await;
    assert_eq!(status, StatusCode::OK, "another brand has its own rate");
    assert_eq!(
        app.metric("pixelhub_limits_hit_total{limit=\"inbound_rate\"}")
            .await,
        3
    );
}

#[tokio::test]
async fn quotas_bound_what_a_brand_keeps_and_are_shown() {
    let app = TestApp::spawn_with(|c| {
        c.quota_events_per_day = 6;
        c.quota_players = 2;
        c.quota_outbox = 1;
    })
    .await;
    let registration = |id: &str, player: &str| json!({"event_id": id, "type": "registration", "player_id": player, "params": {"afp": "a"}});
    let post = |body: Value| {
        app.admin(reqwest::Method::POST, "/api/v1/brands/b1/events")
            .json(&body)
    };

    // Players: two get an attribution context; a third is refused, whole batch and all.
    assert_eq!(
        post(json!([registration("r1", "p1"), registration("r2", "p2")]))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    let refused = json_of(post(registration("r3", "p3"))).await;
    assert_eq!(refused["error"]["code"], "quota_exceeded", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 players"),
        "{refused}"
    );
    assert_eq!(
        post(registration("r1", "p1"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED,
        "a duplicate is still answered"
    );
    assert_eq!(
        post(json!({"event_id": "q1", "type": "qualified_registration", "player_id": "p1"}))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED,
        "known players go on"
    );

    // Outbox: one postback may wait (its endpoint is down); an event that would add another is refused.
    let dead = crate::receiver::Receiver::down().await;
    app.define(
        "b1",
        json!({"name": "pb", "trigger": "sale", "kind": "s2s", "url": format!("http://{dead}/pb?e={{event_id}}")}),
    )
    .await;
    let sale = |id: &str| json!({"event_id": id, "type": "sale", "player_id": "p1"});
    assert_eq!(
        post(sale("s1")).send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let refused = json_of(post(sale("s2"))).await;
    assert_eq!(refused["error"]["code"], "quota_exceeded", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("outbox"),
        "{refused}"
    );

    // Events a day: r1, r2, q1, s1 and two more; the seventh new one waits for midnight UTC.
    for id in ["x1", "x2"] {
        let body = json!({"event_id": id, "type": "qualified_registration", "player_id": "p1"});
        assert_eq!(
            post(body).send().await.unwrap().status(),
            StatusCode::ACCEPTED,
            "{id}"
        );
    }
    let response =
        post(json!({"event_id": "x3", "type": "qualified_registration", "player_id": "p1"}))
            .send()
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait <= 86_400, "until midnight UTC: {wait}");

    let stats = app.get_json("/api/v1/stats").await;
    let b1 = &stats["brands"]["b1"];
    assert_eq!(
        (
            b1["players"].as_u64(),
            b1["outbox"].as_u64(),
            b1["events_today"].as_u64()
        ),
        (Some(2), Some(1), Some(6)),
        "{b1}"
    );
    let metrics = app.metrics_text().await;
    for quota in ["players", "outbox", "events_per_day"] {
        assert!(
            metrics.contains(&format!(
                "pixelhub_quota_refused_total{{brand=\"b1\",quota=\"{quota}\"}} 1"
            )),
            "{quota}"
        );
    }
    assert!(metrics.contains("pixelhub_brand_players{brand=\"b1\"} 2"));
}

#[tokio::test]
async fn ids_that_would_break_a_url_are_refused() {
    let app = TestApp::spawn().await;
    for id in [".", ".."] {
        let answer = json_of(
            app.admin(reqwest::Method::POST, "/api/v1/brands/b1/events")
                .json(&json!({"event_id": "e1", "type": "registration", "player_id": id})),
        )
        .await;
        assert_eq!(answer["error"]["code"], "invalid_field", "{id}: {answer}");
        let answer = app
            .enqueue("b1", "p1", json!({"kind": "js", "code": "1", "id": id}))
            .await;
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY, "{id}");
    }
    // Nor a brand `..` (sent raw: an HTTP client would resolve the dot segment itself).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "PUT /api/v1/brands/%2E%2E HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}",
        app.addr,
        crate::helpers::TOKEN
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_id"), "{answer}");
}

#[tokio::test]
async fn urls_the_api_hands_out_are_built_on_the_public_url() {
    let app = TestApp::spawn_with(|c| c.public_url = Some("https://hub.example/px".into())).await;
    let urls = app.get_json("/api/v1/brands/b1/inbound").await;
    let token = urls["token"].as_str().unwrap();
    assert_eq!(
        urls["urls"]["registration"]
            .as_str()
            .unwrap()
            .split('?')
            .next(),
        Some(format!("https://hub.example/px/postback/b1/{token}/registration").as_str())
    );
    // Whatever Host the request came with.
    let spoofed = app
        .admin(reqwest::Method::GET, "/api/v1/brands/b1/inbound")
        .header("host", "evil.example")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        spoofed["counter_url"]
            .as_str()
            .unwrap()
            .starts_with("https://hub.example/px/")
    );
}

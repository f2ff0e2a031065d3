//! Server-side request forgery, tried as a brand key holder would: postbacks pointed at loopback, private
//! and metadata addresses in every notation, at names that resolve there, and through redirects; beside
//! the legitimate paths (an allowed network, the demo's own receiver) that must keep working.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{PATIENCE, TestApp, json_of};
use crate::receiver::{Receiver, Reply};

/// A hub with the default egress policy: no network allowed beyond the public internet.
async fn default_hub(demo: bool) -> TestApp {
    TestApp::spawn_with(|config| {
        config.s2s_allow_networks.clear();
        config.demo = Some(demo);
    })
    .await
}

impl TestApp {
    /// Saves an s2s definition of `brand` triggered by `x`, as `key` (a brand API key); the raw answer.
    async fn define_s2s(&self, brand: &str, key: &str, id: &str, url: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(&format!("/api/v1/brands/{brand}/pixel-definitions")))
            .bearer_auth(key)
            .json(&json!({"id": id, "name": id, "trigger": "x", "kind": "s2s", "url": url}))
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// The report row of definition `definition`'s postback once it is final (fired or failed).
    async fn final_postback(&self, brand: &str, definition: &str) -> Value {
        let started = Instant::now();
        loop {
            let page = self
                .get_json(&format!("/api/v1/brands/{brand}/deliveries?trigger=x"))
                .await;
            let row = page["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["definition_id"] == definition)
                .cloned();
            if let Some(row) = row.filter(|r| r["status"] == "fired" || r["status"] == "failed") {
                return row;
            }
            assert!(
                started.elapsed() < PATIENCE * 2,
                "the postback of {definition} never ended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_brand_key_reaches_no_loopback_private_or_metadata_address() {
    let internal = Receiver::start().await;
    let port = internal.addr.port();
    let app = default_hub(false).await;
    app.put_brand("b3", json!({})).await;
    let key = app.create_key("b3").await;

    // Written as an address, in any notation: refused when saved, with the reason.
    for (url, reason) in [
        (format!("http://127.0.0.1:{port}/secret"), "loopback"),
        (format!("http://0x7f000001:{port}/secret"), "loopback"),
        (format!("http://2130706433:{port}/secret"), "loopback"),
        (format!("http://0177.0.0.1:{port}/secret"), "loopback"),
        (format!("http://127.1:{port}/secret"), "loopback"),
        (format!("http://[::1]:{port}/secret"), "loopback"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/secret"),
            "loopback",
        ),
        ("http://10.0.0.1/admin".into(), "private"),
        ("http://192.168.1.1/".into(), "private"),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "link-local",
        ),
        ("http://100.64.0.1/".into(), "carrier-grade NAT"),
        ("http://0.0.0.0:8080/".into(), "unspecified"),
    ] {
        let (status, answer) = app.define_s2s("b3", &key, "bad", &url).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {answer}");
        assert_eq!(answer["error"]["code"], "destination_not_allowed", "{url}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("definition.url: destination refused:") && message.contains(reason),
            "{url}: {message}"
        );
    }

    // Written as a name: checked on what it resolves to, when the hub connects. Failed at once, never
    // retried, the reason in the report and in the metrics; the service never hears of it.
    let (status, _) = app
        .define_s2s(
            "b3",
            &key,
            "by-name",
            &format!("http://localhost:{port}/secret"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let event = json!({"event_id": "e1", "type": "x", "player_id": "p1", "affiliate_id": "a1"});
    let answer = app
        .http
        .post(app.url("/api/v1/brands/b3/events"))
        .bearer_auth(&key)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let row = app.final_postback("b3", "by-name").await;
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["attempts"], 1);
    let error = row["error"].as_str().unwrap();
    assert!(
        error.starts_with("destination refused:") && error.contains("loopback"),
        "{error}"
    );
    assert!(row["response"].is_null(), "{row}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(internal.hits().is_empty(), "{:?}", internal.hits());
    assert_eq!(
        app.metric("pixelhub_s2s_refused_total{reason=\"loopback\"}")
            .await,
        1
    );
    assert_eq!(
        app.metric(
            "pixelhub_s2s_attempts_total{result=\"failed\",outcome=\"destination_refused\"}"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn every_redirect_hop_is_checked_and_no_hop_learns_the_url_it_came_from() {
    // 127.0.0.2 plays a public affiliate host (allowed), 127.0.0.1 the internal service (not allowed).
    let internal = Receiver::start().await;
    let affiliate = Receiver::start_on(SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let secret = format!("{}/secret", internal.addr);
    let to = |location: String| Reply {
        location: Some(location),
        ..Reply::status(302)
    };
    affiliate.script("/to-address", [to(format!("http://{secret}"))]);
    affiliate.script(
        "/to-name",
        [to(format!(
            "http://localhost:{}/secret",
            internal.addr.port()
        ))],
    );
    affiliate.script("/hop", [to(affiliate.url("/landing"))]);
    let app = TestApp::spawn_with(|config| {
        config.s2s_allow_networks = vec!["127.0.0.2/32".parse().unwrap()];
    })
    .await;
    let key = app.create_key("b1").await;
    for id in ["to-address", "to-name", "hop"] {
        let url = affiliate.url(&format!("/{id}?click=c-1"));
        let (status, answer) = app.define_s2s("b1", &key, id, &url).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    app.report(
        "b1",
        json!({"event_id": "e1", "type": "x", "player_id": "p1", "affiliate_id": "a1"}),
    )
    .await;

    for id in ["to-address", "to-name"] {
        let row = app.final_postback("b1", id).await;
        assert_eq!(
            (row["status"].as_str(), row["attempts"].as_u64()),
            (Some("failed"), Some(1)),
            "{row}"
        );
        let error = row["error"].as_str().unwrap();
        assert!(
            error.starts_with("destination refused:") && error.contains("loopback"),
            "{id}: {error}"
        );
    }
    let hop = app.final_postback("b1", "hop").await;
    assert_eq!(hop["status"], "fired", "{hop}");
    assert_eq!(
        hop["response"], "(answer of a non-public address, not kept)",
        "an allowed private network's answer is not shown to the brand"
    );
    assert!(internal.hits().is_empty(), "{:?}", internal.hits());
    let landing = affiliate.hits_of("/landing");
    assert_eq!(landing.len(), 1);
    assert_eq!(
        landing[0].referer, None,
        "no Referer carries the click id on"
    );
    assert!(affiliate.hits().iter().all(|h| h.referer.is_none()));
    assert_eq!(
        app.metric("pixelhub_s2s_refused_total{reason=\"loopback\"}")
            .await,
        2
    );
}

#[tokio::test]
async fn the_demo_receiver_is_the_one_loopback_destination_of_a_default_hub() {
    let app = default_hub(true).await;
    let port = app.addr.port();
    let token = crate::helpers::TOKEN;

    // The README's walk-through: an s2s definition aimed at the demo's receiver, on this hub.
    let (status, answer) = app
        .define_s2s(
            "demo",
            token,
            "readme",
            &format!("http://127.0.0.1:{port}/demo/hit?kind=s2s&player={{player_id}}&click_id={{affclickid}}"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    app.report(
        "demo",
        json!({"event_id": "e1", "type": "x", "player_id": "p-7", "params": {"affclickid": "abc-1"}}),
    )
    .await;
    let row = app.final_postback("demo", "readme").await;
    assert_eq!(row["status"], "fired", "{row}");
    assert_eq!(
        row["response"], "(image/gif body)",
        "the demo's own answer is shown"
    );
    let seen = app.get_json("/demo/api/players/p-7").await;
    assert_eq!(
        seen["hits"][0]["query"],
        "kind=s2s&player=p-7&click_id=abc-1"
    );

    // Anything else of the hub (or of loopback) is refused, written as an address or as a name.
    for path in ["/api/v1/stats", "/demo/hit/../../api/v1/stats", "/metrics"] {
        let (status, answer) = app
            .define_s2s(
                "demo",
                token,
                "api",
                &format!("http://127.0.0.1:{port}{path}"),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {answer}");
    }
    let (status, _) = app
        .define_s2s(
            "demo",
            token,
            "by-name",
            &format!("http://localhost:{port}/api/v1/stats"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    app.report(
        "demo",
        json!({"event_id": "e2", "type": "x", "player_id": "p-8", "affiliate_id": "a1"}),
    )
    .await;
    let row = app.final_postback("demo", "by-name").await;
    assert_eq!(row["status"], "failed", "{row}");
    let refused =
        json_of(app.admin(Method::GET, "/api/v1/brands/demo/deliveries?status=failed")).await;
    assert_eq!(refused["deliveries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_redirect_never_reaches_the_demo_receiver_or_anything_on_loopback() {
    // The exemption is for a postback's own URL, sent to the hub's own socket; a redirect's next hop is
    // connected to as written, so it is checked like any other.
    let affiliate = Receiver::start_on(SocketAddr::from(([127, 0, 0, 2], 0))).await;
    let app = TestApp::spawn_with(|config| {
        config.s2s_allow_networks = vec!["127.0.0.2/32".parse().unwrap()];
        config.demo = Some(true);
    })
    .await;
    let port = app.addr.port();
    affiliate.script(
        "/bounce",
        [Reply {
            location: Some(format!("http://[::1]:{port}/demo/hit?kind=s2s&player=p1")),
            ..Reply::status(302)
        }],
    );
    let token = crate::helpers::TOKEN;
    let (status, _) = app
        .define_s2s("demo", token, "bounce", &affiliate.url("/bounce"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    app.report(
        "demo",
        json!({"event_id": "e1", "type": "x", "player_id": "p1", "affiliate_id": "a1"}),
    )
    .await;
    let row = app.final_postback("demo", "bounce").await;
    assert_eq!(row["status"], "failed", "{row}");
    assert!(row["error"].as_str().unwrap().contains("loopback"), "{row}");
    let seen = app.get_json("/demo/api/players/p1").await;
    assert_eq!(seen["hits"], json!([]), "the demo receiver saw nothing");
}

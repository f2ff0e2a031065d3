//! The S2S sender against a local receiver playing the affiliate: success, retries, refusals, slow and
//! dead endpoints, redirects, POST bodies, and restarts while the receiver is down.

use std::time::{Duration, Instant};

use pixelhub::Config;
use serde_json::{Value, json};

use crate::helpers::{PATIENCE, TOKEN, TestApp};
use crate::process::HubProcess;
use crate::receiver::{Receiver, Reply};

/// Retries within a test's patience: 200 ms, then 600 ms; three attempts in all.
fn fast_retries(config: &mut Config) {
    config.s2s_retry_base_ms = 200;
    config.s2s_max_attempts = 3;
    config.s2s_timeout_ms = 2_000;
}

fn s2s(id: &str, url: String) -> Value {
    json!({"id": id, "name": format!("{id} postback"), "trigger": "sale", "kind": "s2s", "url": url})
}

/// A sale of a player an affiliate brought (definitions fire only for those by default).
fn sale(event_id: &str, player: &str) -> Value {
    json!({"event_id": event_id, "type": "sale", "player_id": player, "affiliate_id": "a1"})
}

impl TestApp {
    /// Every report row of brand `b1` matching `query` (e.g. `status=fired`), walking all pages.
    pub async fn deliveries(&self, query: &str) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/brands/b1/deliveries?limit=1000&{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get_json(&path).await;
            rows.extend(page["deliveries"].as_array().expect("rows").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return rows,
            }
        }
    }

    /// The report row of the postback of definition `definition`, once `done` holds for it.
    pub async fn postback_row(&self, definition: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let rows = self
                .deliveries("trigger=sale")
                .await
                .into_iter()
                .filter(|r| r["definition_id"] == definition)
                .collect::<Vec<_>>();
            if let Some(row) = rows.iter().find(|r| done(r)) {
                return row.clone();
            }
            assert!(
                started.elapsed() < PATIENCE * 2,
                "postback of {definition} never got there: {rows:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The receiver saw the postbacks of sales `s-0` … `s-{n-1}` exactly once each.
fn assert_each_sale_once(receiver: &Receiver, n: usize) {
    let mut seen: Vec<String> = receiver.hits().into_iter().map(|h| h.query).collect();
    seen.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("e=s-{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected, "each postback exactly once");
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |row| row["status"] == status
}

fn attempt_statuses(row: &Value) -> Vec<Value> {
    row["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["http_status"].clone())
        .collect()
}

#[tokio::test]
async fn answers_decide_between_fired_retry_and_failed() {
    let receiver = Receiver::start().await;
    let dead = Receiver::down().await;
    let app = TestApp::spawn_with(fast_retries).await;
    receiver.script("/flaky", [Reply::status(500)]);
    receiver.script(
        "/throttled",
        [Reply {
            retry_after: Some("1"),
            ..Reply::status(429)
        }],
    );
    receiver.script("/gone", [Reply::status(404)]);
    receiver.script(
        "/stalls",
        [Reply {
            delay: Some(Duration::from_secs(3)),
            ..Reply::status(200)
        }],
    );
    for (id, url) in [
        ("ok", receiver.url("/ok?e={event_id}")),
        ("flaky", receiver.url("/flaky")),
        ("throttled", receiver.url("/throttled")),
        ("gone", receiver.url("/gone")),
        ("stalls", receiver.url("/stalls")),
        ("dead", format!("http://{dead}/pb")),
    ] {
        app.define("b1", s2s(id, url)).await;
    }
    app.report("b1", sale("s-1", "p1")).await;

    let ok = app.postback_row("ok", status_is("fired")).await;
    assert_eq!(ok["final_url"], receiver.url("/ok?e=s-1"));
    assert_eq!(
        (ok["attempts"].clone(), ok["http_status"].clone()),
        (json!(1), json!(200))
    );
    // The receiver is on loopback (allowed for tests): its answer is not the brand's to read.
    assert_eq!(ok["response"], "(answer of a non-public address, not kept)");
    assert_eq!(ok["method"], "GET");

    let flaky = app.postback_row("flaky", status_is("fired")).await;
    assert_eq!(attempt_statuses(&flaky), [json!(500), json!(200)]);
    assert_eq!(
        flaky["attempt_log"][0]["http_status"], 500,
        "the status is kept"
    );

    let throttled = app.postback_row("throttled", status_is("fired")).await;
    assert_eq!(attempt_statuses(&throttled), [json!(429), json!(200)]);
    let hits = receiver.hits_of("/throttled");
    assert!(
        hits[1].at - hits[0].at >= Duration::from_millis(950),
        "Retry-After: 1 is respected over the 200 ms backoff"
    );

    let stalls = app.postback_row("stalls", status_is("fired")).await;
    assert_eq!(stalls["attempts"], 2, "{stalls}");
    assert_eq!(stalls["attempt_log"][0]["error"], "timed out");
    assert_eq!(stalls["attempt_log"][0]["http_status"], Value::Null);

    let gone = app.postback_row("gone", status_is("failed")).await;
    assert_eq!(
        attempt_statuses(&gone),
        [json!(404)],
        "no retry after a 404"
    );

    let dead_row = app.postback_row("dead", status_is("failed")).await;
    assert_eq!(dead_row["attempts"], 3);
    assert!(
        dead_row["error"]
            .as_str()
            .unwrap()
            .starts_with("connection failed"),
        "{dead_row}"
    );
    assert_eq!(dead_row["http_status"], Value::Null);

    // Each success was sent exactly once, and nothing is sent after the report says so.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.hits_of("/ok").len(), 1);
    assert_eq!(receiver.hits_of("/flaky").len(), 2);
    assert_eq!(receiver.hits_of("/gone").len(), 1);
    let event = app.get_json("/api/v1/brands/b1/events/s-1").await;
    let statuses: Vec<(&str, &str)> = event["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["definition_id"].as_str().unwrap(),
                p["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("dead", "failed"),
            ("flaky", "fired"),
            ("gone", "failed"),
            ("ok", "fired"),
            ("stalls", "fired"),
            ("throttled", "fired")
        ],
        "the event's record shows where each postback ended"
    );
}

#[tokio::test]
async fn a_definition_that_keeps_failing_is_flagged_and_can_be_disabled() {
    let dead = Receiver::down().await;
    let app = TestApp::spawn_with(|c| {
        fast_retries(c);
        c.s2s_max_attempts = 2;
        c.s2s_failure_threshold = 3;
        c.s2s_auto_disable = true;
    })
    .await;
    app.define("b1", s2s("dead", format!("http://{dead}/pb")))
        .await;
    app.report("b1", json!([sale("s-1", "p1"), sale("s-2", "p2")]))
        .await;
    let started = Instant::now();
    let definition = loop {
        let d = app
            .get_json("/api/v1/brands/b1/pixel-definitions/dead")
            .await;
        if d["enabled"] == false {
            break d;
        }
        assert!(started.elapsed() < PATIENCE * 2, "never disabled: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        definition["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("3 failed postback attempts in a row"),
        "{definition}"
    );
    assert_eq!(definition["health"]["flagged"], true);
    assert!(
        definition["health"]["consecutive_failures"]
            .as_u64()
            .unwrap()
            >= 3
    );
    let listed = app.get_json("/api/v1/brands/b1/pixel-definitions").await;
    assert_eq!(listed["definitions"][0]["health"]["flagged"], true);
    let report = app.get_json("/api/v1/brands/b1/deliveries").await;
    assert_eq!(report["flagged_definitions"][0]["definition_id"], "dead");
    let stats = app.get_json("/api/v1/stats").await;
    assert_eq!(stats["brands"]["b1"]["flagged_definitions"], 1);

    // Disabled: a new sale produces no postback.
    let outcome = app.report("b1", sale("s-3", "p3")).await;
    assert_eq!(outcome[0]["pixels"], json!([]));
}

#[tokio::test]
async fn a_slow_endpoint_does_not_delay_the_others() {
    let slow = Receiver::start().await;
    let fast = Receiver::start().await;
    let app = TestApp::spawn_with(|c| c.s2s_per_host = 2).await;
    slow.script(
        "/pb",
        (0..7).map(|_| Reply {
            delay: Some(Duration::from_secs(2)),
            ..Reply::status(200)
        }),
    );
    app.define("b1", s2s("slow", slow.url("/pb"))).await;
    let sales: Vec<Value> = (0..6)
        .map(|i| sale(&format!("s-{i}"), &format!("p{i}")))
        .collect();
    app.report("b1", Value::Array(sales)).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the slow host's two slots are taken

    app.define("b1", s2s("fast", fast.url("/pb"))).await;
    let reported = Instant::now();
    app.report("b1", sale("f-1", "px")).await;
    app.postback_row("fast", status_is("fired")).await;
    assert!(
        reported.elapsed() < Duration::from_millis(1500),
        "the fast endpoint waited {:?} behind the slow one",
        reported.elapsed()
    );
    assert!(
        slow.hits_of("/pb").len() <= 2,
        "the slow host's slots are full"
    );

    let started = Instant::now();
    // The fast sale also matched the slow definition: 7 slow postbacks and 1 fast.
    while app.deliveries("status=fired").await.len() < 8 {
        assert!(
            started.elapsed() < PATIENCE * 2,
            "the slow ones never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(slow.most_at_once(), 2, "never more than the per-host limit");
    assert_eq!(slow.hits_of("/pb").len(), 7);
}

#[tokio::test]
async fn redirects_are_followed_but_never_to_another_scheme() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(fast_retries).await;
    receiver.script(
        "/moved",
        [Reply {
            location: Some(receiver.url("/landed?x=1")),
            ..Reply::status(302)
        }],
    );
    receiver.script(
        "/to-ftp",
        [Reply {
            location: Some("ftp://files.example/pb".into()),
            ..Reply::status(302)
        }],
    );
    app.define("b1", s2s("moved", receiver.url("/moved"))).await;
    app.define("b1", s2s("ftp", receiver.url("/to-ftp"))).await;
    app.report("b1", sale("s-1", "p1")).await;

    let moved = app.postback_row("moved", status_is("fired")).await;
    assert_eq!(moved["attempts"], 1);
    assert_eq!(receiver.hits_of("/landed")[0].query, "x=1");
    let ftp = app.postback_row("ftp", status_is("failed")).await;
    assert_eq!(ftp["attempts"], 1, "a refused redirect is not retried");
    assert!(
        ftp["error"].as_str().unwrap().contains("non-http(s)"),
        "{ftp}"
    );
}

#[tokio::test]
async fn post_bodies_are_sent_as_the_definition_asks() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    app.define(
        "b1",
        json!({"id": "form", "name": "form", "trigger": "sale", "kind": "s2s", "url": receiver.url("/form"),
               "post": {"format": "form", "body": "click={clickid}&amount={{amount}}"}}),
    )
    .await;
    app.define(
        "b1",
        json!({"id": "json", "name": "json", "trigger": "sale", "kind": "s2s", "url": receiver.url("/json"),
               "post": {"format": "json", "body": "{\"click\": {{clickid}}, \"amount\": {{amount}}, \"sub\": {{sub1}}}"}}),
    )
    .await;
    app.report(
        "b1",
        json!({"event_id": "s-1", "type": "sale", "player_id": "p1", "params": {"clickid": "a&b \"c\"", "amount": 12.5}}),
    )
    .await;
    app.postback_row("form", status_is("fired")).await;
    let row = app.postback_row("json", status_is("fired")).await;
    assert_eq!(row["method"], "POST");

    let form = &receiver.hits_of("/form")[0];
    assert_eq!(form.method, "POST");
    assert_eq!(
        form.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(form.body, "click=a%26b%20%22c%22&amount=12.5");
    let json_hit = &receiver.hits_of("/json")[0];
    assert_eq!(json_hit.content_type.as_deref(), Some("application/json"));
    let sent: Value = serde_json::from_str(&json_hit.body).unwrap();
    assert_eq!(
        sent,
        json!({"click": "a&b \"c\"", "amount": 12.5, "sub": null})
    );
}

#[tokio::test]
async fn a_restart_while_the_endpoint_is_down_loses_and_doubles_nothing() {
    let port = Receiver::down().await;
    let app = TestApp::spawn_with(|c| {
        c.s2s_retry_base_ms = 300;
        c.s2s_max_attempts = 50;
    })
    .await;
    app.define("b1", s2s("pb", format!("http://{port}/pb?e={{event_id}}")))
        .await;
    let sales: Vec<Value> = (0..20)
        .map(|i| sale(&format!("s-{i}"), &format!("p{i}")))
        .collect();
    app.report("b1", Value::Array(sales)).await;
    let started = Instant::now();
    while app.deliveries("status=pending_retry").await.len() < 20 {
        assert!(started.elapsed() < PATIENCE * 2, "attempts never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let app = app.restart().await;
    let receiver = Receiver::start_on(port).await;
    let started = Instant::now();
    while app.deliveries("status=fired").await.len() < 20 {
        assert!(
            started.elapsed() < PATIENCE * 3,
            "postbacks were lost across the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_each_sale_once(&receiver, 20);
}

#[tokio::test]
async fn kill_9_while_the_endpoint_is_down_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = Receiver::down().await;
    let settings = [
        ("PIXELHUB_S2S_RETRY_BASE_MS", "300"),
        ("PIXELHUB_S2S_MAX_ATTEMPTS", "50"),
        ("PIXELHUB_S2S_TIMEOUT_MS", "1000"),
    ];
    // A postback the killed hub had claimed (its attempt under way) is due again only once the claim
    // runs out, so that no second process sends it while the first may still: the attempt's timeout
    // plus the sender's 30 s margin (src/postback.rs). Its wait is the design, not a loss.
    let claim_runs_out = Duration::from_millis(1000) + Duration::from_secs(30);
    let hub = HubProcess::start_with("127.0.0.1:0", dir.path(), Some(TOKEN), false, &settings);
    // No kept-alive connections: the second hub listens where the killed one did.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let admin = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", hub.base))
            .bearer_auth(TOKEN)
    };
    admin(reqwest::Method::PUT, "/api/v1/brands/b1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    admin(reqwest::Method::POST, "/api/v1/brands/b1/pixel-definitions")
        .json(&s2s("pb", format!("http://{port}/pb?e={{event_id}}")))
        .send()
        .await
        .unwrap();
    let sales: Vec<Value> = (0..20)
        .map(|i| sale(&format!("s-{i}"), &format!("p{i}")))
        .collect();
    let answer = admin(reqwest::Method::POST, "/api/v1/brands/b1/events")
        .json(&sales)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(400)).await; // some attempts fail and are recorded
    let addr = hub.addr;
    hub.kill_9();

    let receiver = Receiver::start_on(port).await;
    let hub = HubProcess::start_with(&addr.to_string(), dir.path(), Some(TOKEN), false, &settings);
    let started = Instant::now();
    loop {
        let page: Value = http
            .get(format!(
                "{}/api/v1/brands/b1/deliveries?status=fired&limit=1000",
                hub.base
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["deliveries"].as_array().unwrap().len() == 20 {
            break;
        }
        assert!(
            started.elapsed() < claim_runs_out + PATIENCE * 2,
            "postbacks were lost: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_each_sale_once(&receiver, 20);
    drop(hub);
}

/// Reports `n` sales of `brand` with event ids `<prefix>-0…`, in batches of the API's maximum.
async fn flood(app: &TestApp, brand: &str, prefix: &str, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|i| sale(&format!("{prefix}-{i}"), &format!("p{}", i % 100)))
        .collect();
    for batch in events.chunks(1000) {
        app.report(brand, Value::Array(batch.to_vec())).await;
    }
}

/// Waits for the receiver's first hit of `path` and returns when it came.
async fn first_hit(receiver: &Receiver, path: &str) -> Instant {
    let started = Instant::now();
    loop {
        if let Some(hit) = receiver.hits_of(path).first() {
            return hit.at;
        }
        assert!(started.elapsed() < PATIENCE, "{path} was never called");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_brand_flooding_a_dead_endpoint_holds_up_no_other_brand_or_host() {
    let dead = crate::receiver::Hanging::start().await;
    let healthy = Receiver::start().await;
    let app = TestApp::spawn().await;
    for brand in ["bad", "good"] {
        app.put_brand(brand, json!({})).await;
    }
    app.define(
        "bad",
        s2s("dead", format!("http://{}/pb?e={{event_id}}", dead.addr)),
    )
    .await;
    app.define(
        "bad",
        json!({"id": "side", "name": "side", "trigger": "side", "kind": "s2s", "url": healthy.url("/bad-side?e={event_id}")}),
    )
    .await;
    app.define("good", s2s("pb", healthy.url("/good?e={event_id}")))
        .await;

    // 3,000 postbacks to an endpoint that accepts and never answers: it holds its 4 (--s2s-per-host).
    flood(&app, "bad", "s", 3000).await;
    let started = Instant::now();
    while dead.connections() < 4 {
        assert!(
            started.elapsed() < PATIENCE,
            "the dead endpoint was never tried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let sent = Instant::now();
    app.report("good", sale("g-1", "p1")).await;
    app.report(
        "bad",
        json!({"event_id": "side-1", "type": "side", "player_id": "p1", "affiliate_id": "a1"}),
    )
    .await;
    let good = first_hit(&healthy, "/good").await;
    let side = first_hit(&healthy, "/bad-side").await;
    assert!(
        good.duration_since(sent) < Duration::from_secs(2),
        "another brand's postback waited {:?}",
        good.duration_since(sent)
    );
    assert!(
        side.duration_since(sent) < Duration::from_secs(2),
        "the same brand's postback to a healthy host waited {:?}",
        side.duration_since(sent)
    );
    assert_eq!(
        dead.connections(),
        4,
        "the dead host never got more than its share"
    );
}

#[tokio::test]
async fn a_brand_flooding_many_dead_endpoints_leaves_slots_to_the_others() {
    let mut dead = Vec::new();
    for _ in 0..20 {
        dead.push(crate::receiver::Hanging::start().await);
    }
    let healthy = Receiver::start().await;
    let app = TestApp::spawn().await;
    for brand in ["bad", "good"] {
        app.put_brand(brand, json!({})).await;
    }
    for (i, endpoint) in dead.iter().enumerate() {
        app.define(
            "bad",
            s2s(
                &format!("dead-{i}"),
                format!("http://{}/pb?e={{event_id}}", endpoint.addr),
            ),
        )
        .await;
    }
    app.define("good", s2s("pb", healthy.url("/good?e={event_id}")))
        .await;

    // 150 sales × 20 definitions: 3,000 postbacks over 20 hanging hosts, which could take every slot.
    flood(&app, "bad", "s", 150).await;
    let started = Instant::now();
    while dead.iter().map(|d| d.connections()).sum::<usize>() < 16 {
        assert!(
            started.elapsed() < PATIENCE,
            "the dead endpoints were never tried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    app.report("good", sale("g-1", "p1")).await;
    let good = first_hit(&healthy, "/good").await;
    assert!(
        good.duration_since(sent) < Duration::from_secs(2),
        "another brand's postback waited {:?}",
        good.duration_since(sent)
    );
    let held: usize = dead.iter().map(|d| d.connections()).sum();
    assert_eq!(held, 16, "one brand holds at most --s2s-per-brand attempts");
}

#[tokio::test]
async fn within_a_brand_every_host_gets_its_turn() {
    // Four hanging hosts that sort before a healthy one, each with a backlog, and room for one attempt
    // per host and four per brand: the turn must move past the host served last, or the hanging hosts
    // win back every slot they free and the healthy one never gets one.
    let mut dead = Vec::new();
    for last in 2..=5 {
        dead.push(
            crate::receiver::Hanging::start_on(std::net::SocketAddr::from(([127, 0, 0, last], 0)))
                .await,
        );
    }
    let healthy = Receiver::start_on(std::net::SocketAddr::from(([127, 0, 0, 9], 0))).await;
    let app = TestApp::spawn_with(|c| {
        c.s2s_timeout_ms = 300;
        c.s2s_retry_base_ms = 10;
        c.s2s_max_attempts = 50;
        c.s2s_per_host = 1;
        c.s2s_per_brand = 4;
    })
    .await;
    for (i, endpoint) in dead.iter().enumerate() {
        app.define(
            "b1",
            s2s(
                &format!("dead-{i}"),
                format!("http://{}/pb?e={{event_id}}", endpoint.addr),
            ),
        )
        .await;
    }
    flood(&app, "b1", "s", 20).await;
    let started = Instant::now();
    while dead.iter().map(|d| d.connections()).sum::<usize>() < 4 {
        assert!(
            started.elapsed() < PATIENCE,
            "the hanging hosts were never tried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.define(
        "b1",
        json!({"id": "live", "name": "live", "trigger": "live", "kind": "s2s", "url": healthy.url("/live?e={event_id}")}),
    )
    .await;
    let sent = Instant::now();
    app.report(
        "b1",
        json!({"event_id": "l-1", "type": "live", "player_id": "p1", "affiliate_id": "a1"}),
    )
    .await;
    let arrived = first_hit(&healthy, "/live").await;
    assert!(
        arrived.duration_since(sent) < Duration::from_secs(3),
        "the healthy host waited {:?}",
        arrived.duration_since(sent)
    );
}

//! Pixel definitions and events over real HTTP: from a reported event to a queued pixel, a WebSocket
//! delivery, and idempotency across restarts and `kill -9`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, ids_of, json_of};
use crate::process::HubProcess;

/// The definition of the README's walk-through: an FTD image pixel.
fn ftd_image() -> Value {
    json!({
        "name": "FTD image",
        "trigger": "ftd",
        "kind": "image",
        "url": "https://pixelserver.example/?click_id={{afp}}&lead_id={{registration_id}}"
    })
}

fn registration(event_id: &str, player: &str, afp: &str) -> Value {
    json!({"event_id": event_id, "type": "registration", "player_id": player, "affiliate_id": "a9",
           "params": {"afp": afp, "sub1": "x y"}})
}

/// A deposit as a sales file reports it: with the affiliate it is credited to.
fn deposit(event_id: &str, player: &str, amount: u32) -> Value {
    json!({"event_id": event_id, "type": "deposit", "player_id": player, "affiliate_id": "a9",
           "params": {"amount": amount, "currency": "EUR"}})
}

/// The URLs an event answer reports, in order.
fn urls(outcome: &Value) -> Vec<String> {
    outcome["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["url"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn status_and_body(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn a_registration_then_a_deposit_queue_the_ftd_pixel_with_its_attribution() {
    let app = TestApp::spawn().await;
    let definition = app.define("b1", ftd_image()).await;

    let reg = app.report("b1", registration("reg-1", "p-42", "xyz")).await;
    assert_eq!(reg[0]["pixels"], json!([]));
    let dep = app.report("b1", deposit("dep-1", "p-42", 50)).await;

    assert_eq!(dep[0]["raised"], json!(["ftd"]));
    let pixel = &dep[0]["pixels"][0];
    assert_eq!(pixel["definition_id"], definition["id"]);
    assert_eq!(pixel["definition_name"], "FTD image");
    assert_eq!(pixel["trigger"], "ftd");
    assert_eq!(pixel["kind"], "image");
    assert_eq!(pixel["status"], "queued");
    assert_eq!(
        pixel["url"],
        "https://pixelserver.example/?click_id=xyz&lead_id=p-42"
    );
    assert_eq!(
        app.pending_ids("p-42").await,
        [pixel["id"].as_str().unwrap()]
    );

    let attribution = app
        .get_json("/api/v1/brands/b1/players/p-42/attribution")
        .await;
    assert_eq!(attribution["affiliate_id"], "a9");
    assert_eq!(attribution["params"], json!({"afp": "xyz", "sub1": "x y"}));
    assert_eq!(attribution["ftd_event_id"], "dep-1");
}

#[tokio::test]
async fn a_reported_event_reaches_the_players_websocket() {
    let app = TestApp::spawn().await;
    app.define(
        "b1",
        json!({"name": "Reg", "trigger": "registration", "kind": "js", "code": "track({{afp}}, %%SUB1%%)"}),
    )
    .await;
    let mut ws = app.session("p1").await;

    let answer = app.report("b1", registration("r1", "p1", "a'b")).await;
    let delivered = ws.recv().await;
    assert_eq!(delivered["type"], "deliver");
    assert_eq!(delivered["pixels"][0]["id"], answer[0]["pixels"][0]["id"]);
    assert_eq!(
        delivered["pixels"][0]["code"], r#"track("a'b", "x y")"#,
        "values are JavaScript string literals"
    );
}

/// Produced pixels without their status, which is current when read again (a postback to an
/// unreachable host is being retried meanwhile).
fn without_status(pixels: &Value) -> Value {
    let mut pixels = pixels.clone();
    for p in pixels.as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("status");
    }
    pixels
}

#[tokio::test]
async fn the_same_event_queues_once_across_requests_batches_and_restarts() {
    let app = TestApp::spawn().await;
    app.define("b1", ftd_image()).await;
    app.define(
        "b1",
        json!({"name": "Deposit postback", "trigger": "deposit", "kind": "s2s",
               "url": "https://aff.example/pb?c={afp}&amount=[AMOUNT]&cur=%%CURRENCY%%"}),
    )
    .await;
    app.report("b1", registration("reg-1", "p1", "xyz")).await;

    let first = app.report("b1", deposit("dep-1", "p1", 50)).await;
    assert_eq!(
        urls(&first[0]),
        [
            "https://aff.example/pb?c=xyz&amount=50&cur=EUR",
            "https://pixelserver.example/?click_id=xyz&lead_id=p1"
        ]
    );
    assert_eq!(
        first[0]["pixels"][0]["status"], "queued",
        "S2S is in the outbox for the sender"
    );
    let queued = app.pending_ids("p1").await;
    assert_eq!(queued.len(), 1);

    let again = app
        .report(
            "b1",
            json!([deposit("dep-1", "p1", 50), deposit("dep-1", "p1", 50)]),
        )
        .await;
    for answer in &again {
        assert_eq!(answer["duplicate"], true);
        assert_eq!(
            without_status(&answer["pixels"]),
            without_status(&first[0]["pixels"])
        );
    }
    let app = app.restart().await;
    let after_restart = app.report("b1", deposit("dep-1", "p1", 50)).await;
    assert_eq!(after_restart[0]["duplicate"], true);
    assert_eq!(
        app.pending_ids("p1").await,
        queued,
        "nothing was queued twice"
    );

    let record = app.get_json("/api/v1/brands/b1/events/dep-1").await;
    assert_eq!(
        without_status(&record["pixels"]),
        without_status(&first[0]["pixels"])
    );
    let (status, body) =
        status_and_body(app.admin(Method::GET, "/api/v1/brands/b1/events/never")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("event_not_found"))
    );
}

#[tokio::test]
async fn the_first_deposit_raises_ftd_once_per_player() {
    let app = TestApp::spawn().await;
    app.define("b1", ftd_image()).await;
    let answers = app
        .report(
            "b1",
            json!([
                deposit("d1", "p1", 10),
                deposit("d2", "p1", 20),
                deposit("d3", "p2", 5)
            ]),
        )
        .await;
    let raised: Vec<&Value> = answers.iter().map(|a| &a["raised"]).collect();
    assert_eq!(raised, [&json!(["ftd"]), &Value::Null, &json!(["ftd"])]);
    assert_eq!(app.pending_ids("p1").await.len(), 1);
    assert_eq!(app.pending_ids("p2").await.len(), 1);

    let reported = app
        .report(
            "b1",
            json!({"event_id": "f1", "type": "ftd", "player_id": "p1"}),
        )
        .await;
    assert_eq!(reported[0]["pixels"], json!([]));
    assert_eq!(reported[0]["ftd_already_recorded_by"], "d1");
}

#[tokio::test]
async fn scope_conditions_and_custom_triggers_choose_what_fires() {
    let app = TestApp::spawn().await;
    for (name, extra) in [
        ("global", json!({})),
        ("deal d1", json!({"deal_id": "d1"})),
        ("affiliate a2", json!({"affiliate_id": "a2"})),
        (
            "big EUR/USD",
            json!({"conditions": ["amount >= 20", "currency in [EUR, USD]"]}),
        ),
        ("disabled", json!({"enabled": false})),
    ] {
        let mut body = json!({"name": name, "trigger": "qftd", "kind": "image",
                              "url": format!("https://t.example/{}", name.replace(' ', "-").replace('/', "_"))});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        app.define("b1", body).await;
    }
    app.define(
        "b1",
        json!({"name": "vip", "trigger": "VIP_Level", "kind": "iframe", "url": "https://t.example/vip?l={level}"}),
    )
    .await;
    app.report(
        "b1",
        json!({"event_id": "r", "type": "registration", "player_id": "p1", "deal_id": "d1", "affiliate_id": "a1"}),
    )
    .await;

    let small = app
        .report("b1", json!({"event_id": "q1", "type": "qftd", "player_id": "p1", "params": {"amount": 10, "currency": "EUR"}}))
        .await;
    assert_eq!(
        urls(&small[0]),
        ["https://t.example/global", "https://t.example/deal-d1"],
        "the deal comes from the registration; definitions fire in id (here creation) order"
    );
    let big = app
        .report("b1", json!({"event_id": "q2", "type": "qftd", "player_id": "p2", "affiliate_id": "a2", "params": {"amount": 25, "currency": "usd"}}))
        .await;
    assert_eq!(
        urls(&big[0]),
        [
            "https://t.example/global",
            "https://t.example/affiliate-a2",
            "https://t.example/big-EUR_USD"
        ]
    );
    let custom = app
        .report("b1", json!({"event_id": "v", "type": "vip_level", "player_id": "p1", "params": {"level": 3}}))
        .await;
    assert_eq!(urls(&custom[0]), ["https://t.example/vip?l=3"]);
}

#[tokio::test]
async fn definitions_can_be_listed_read_replaced_and_deleted() {
    let app = TestApp::spawn().await;
    let response = app
        .admin(Method::POST, "/api/v1/brands/b1/pixel-definitions")
        .json(&json!({"id": "ftd-img", "name": "FTD", "trigger": "ftd", "kind": "image", "url": "https://t.example/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["location"],
        "/api/v1/brands/b1/pixel-definitions/ftd-img"
    );
    let path = "/api/v1/brands/b1/pixel-definitions/ftd-img";
    let got = app.get_json(path).await;
    assert_eq!(
        (got["enabled"].clone(), got["kind"].clone()),
        (json!(true), json!("image"))
    );

    let (status, replaced) = status_and_body(app.admin(Method::PUT, path).json(
        &json!({"name": "FTD v2", "trigger": "ftd", "kind": "facebook", "pixel_id": "123", "event": "Purchase",
                "params": {"value": "{{amount}}", "currency": "{{currency}}"}}),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replaced["created_at_ms"], got["created_at_ms"]);
    assert_eq!(replaced["kind"], "facebook");
    let listed = app.get_json("/api/v1/brands/b1/pixel-definitions").await;
    assert_eq!(ids_of(&listed["definitions"]), ["ftd-img"]);

    let answer = app.report("b1", deposit("d1", "p1", 50)).await;
    assert_eq!(
        answer[0]["pixels"][0]["params"],
        json!({"value": 50, "currency": "EUR"}),
        "a param that is one macro keeps the value's type"
    );

    let deleted = app.admin(Method::DELETE, path).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = status_and_body(app.admin(method, path)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("definition_not_found"))
        );
    }
    assert_eq!(
        app.pending_ids("p1").await.len(),
        1,
        "deleting a definition keeps what it queued"
    );
}

#[tokio::test]
async fn bad_definitions_and_events_are_refused_whole_with_the_field() {
    let app = TestApp::spawn().await;
    app.define(
        "b1",
        json!({"id": "taken", "name": "n", "trigger": "ftd", "kind": "js", "code": "1"}),
    )
    .await;
    let defs = "/api/v1/brands/b1/pixel-definitions";
    let cases = [
        (
            Method::POST,
            defs,
            json!({"name": "n", "trigger": "ftd", "kind": "image", "url": "https://t.example/?c={{afp}"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_template",
            "definition.url: at character 22",
        ),
        (
            Method::POST,
            defs,
            json!({"name": "n", "trigger": "ftd", "kind": "image", "url": "{{landing_page}}"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_template",
            "written out",
        ),
        (
            Method::POST,
            defs,
            json!({"name": "n", "trigger": "ftd", "kind": "image", "url": "https://t.example/", "conditions": ["amount ≈ 5"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_condition",
            "definition.conditions[0]: unknown operator",
        ),
        (
            Method::POST,
            defs,
            json!({"id": "taken", "name": "n", "trigger": "ftd", "kind": "js", "code": "1"}),
            StatusCode::CONFLICT,
            "definition_exists",
            "taken",
        ),
        (
            Method::POST,
            "/api/v1/brands/nobody/pixel-definitions",
            json!({"name": "n", "trigger": "ftd", "kind": "js", "code": "1"}),
            StatusCode::NOT_FOUND,
            "brand_not_found",
            "nobody",
        ),
        (
            Method::PUT,
            "/api/v1/brands/b1/pixel-definitions/missing",
            json!({"name": "n", "trigger": "ftd", "kind": "js", "code": "1"}),
            StatusCode::NOT_FOUND,
            "definition_not_found",
            "missing",
        ),
        (
            Method::POST,
            "/api/v1/brands/b1/events",
            json!({"type": "ftd", "player_id": "p"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            "event.event_id",
        ),
        (
            Method::POST,
            "/api/v1/brands/b1/events",
            json!({"event_id": "e", "type": "ftd", "player_id": "p", "occurred_at": "22/11/2026"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "event.occurred_at",
        ),
        (
            Method::POST,
            "/api/v1/brands/b1/events",
            json!({"event_id": "e", "type": "ftd", "player_id": "p", "params": "afp=1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "event.params",
        ),
        (
            Method::POST,
            "/api/v1/brands/b1/events",
            json!({"event_id": "e", "type": "deposit", "player_id": "p", "params": {"amount": "fifty"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "event.params.amount",
        ),
        (
            Method::POST,
            "/api/v1/brands/nobody/events",
            json!({"event_id": "e", "type": "ftd", "player_id": "p"}),
            StatusCode::NOT_FOUND,
            "brand_not_found",
            "nobody",
        ),
    ];
    for (method, path, body, status, code, message) in cases {
        let (got_status, got) = status_and_body(app.admin(method, path).json(&body)).await;
        assert_eq!(got_status, status, "{body}: {got}");
        assert_eq!(got["error"]["code"], code, "{body}: {got}");
        let text = got["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{body}: {text}");
    }

    // One bad event refuses the whole batch: the good one before it is not recorded either.
    let (status, got) = status_and_body(
        app.admin(Method::POST, "/api/v1/brands/b1/events")
            .json(&json!([deposit("good", "p1", 5), {"event_id": "bad", "type": "deposit"}])),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        got["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1].player_id")
    );
    let (status, _) =
        status_and_body(app.admin(Method::GET, "/api/v1/brands/b1/events/good")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(app.pending_ids("p1").await.is_empty());

    let anonymous = app.http.get(app.url(defs)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn preview_renders_without_queuing_and_test_queues_to_a_test_player() {
    let app = TestApp::spawn().await;
    let definition = app
        .define(
            "b1",
            json!({"name": "FTD", "trigger": "ftd", "kind": "image", "conditions": ["amount >= 20"],
                   "url": "https://t.example/?c={{afp}}&a={{amount}}&s={{sub2}}"}),
        )
        .await;
    let id = definition["id"].as_str().unwrap();
    app.report("b1", registration("r1", "p1", "from-registration"))
        .await;

    let preview = json_of(
        app.admin(
            Method::POST,
            &format!("/api/v1/brands/b1/pixel-definitions/{id}/preview"),
        )
        .json(&json!({"player_id": "p1", "params": {"amount": 10}})),
    )
    .await;
    assert_eq!(
        preview["pixel"],
        json!({"kind": "image", "url": "https://t.example/?c=from-registration&a=10&s="})
    );
    assert_eq!(preview["missing"], json!(["sub2"]));
    assert_eq!(preview["would_fire"], false);
    assert_eq!(
        preview["conditions"],
        json!([{"condition": "amount >= 20", "holds": false}])
    );
    assert!(
        app.pending_ids("p1").await.is_empty(),
        "a preview queues nothing"
    );

    let test_path = format!("/api/v1/brands/b1/pixel-definitions/{id}/test");
    let (status, tested) = status_and_body(
        app.admin(Method::POST, &test_path)
            .json(&json!({"player_id": "tester", "params": {"afp": "t", "amount": 1}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(tested["pixel"]["url"], "https://t.example/?c=t&a=1&s=");
    assert_eq!(
        app.pending_ids("tester").await,
        [tested["pixel"]["id"].as_str().unwrap()]
    );
    let (status, refused) =
        status_and_body(app.admin(Method::POST, &test_path).json(&json!({}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["error"]["code"], "missing_field");
}

#[tokio::test]
async fn kill_9_during_event_ingest_leaves_every_event_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let token = "kill-nine-token-0123456789";
    let hub = HubProcess::start(dir.path(), Some(token), false);
    let http = reqwest::Client::new();
    let admin = |method: Method, base: &str, path: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(token)
    };
    assert!(
        admin(Method::PUT, &hub.base, "/api/v1/brands/b1")
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    for (name, trigger) in [("reg", "registration"), ("ftd", "ftd")] {
        let status = admin(Method::POST, &hub.base, "/api/v1/brands/b1/pixel-definitions")
            .json(&json!({"name": name, "trigger": trigger, "kind": "image", "url": "https://t.example/?c={{afp}}"}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    // Each player: a registration and a deposit, in one batch. Kill the hub while batches are in flight.
    let batch = |i: usize| {
        json!([
            registration(&format!("r{i}"), &format!("p{i}"), &format!("c{i}")),
            deposit(&format!("d{i}"), &format!("p{i}"), 10)
        ])
    };
    let sends: Vec<_> = (0..60)
        .map(|i| {
            let request = admin(Method::POST, &hub.base, "/api/v1/brands/b1/events")
                .json(&batch(i))
                .send();
            tokio::spawn(async move { request.await.map(|r| r.status()).ok() })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    hub.kill_9();
    let mut answered = 0;
    for send in sends {
        if send.await.unwrap() == Some(StatusCode::ACCEPTED) {
            answered += 1;
        }
    }

    let hub = HubProcess::start(dir.path(), Some(token), false);
    let mut recorded = 0;
    for i in 0..60 {
        let recorded_status = |event: String| {
            admin(
                Method::GET,
                &hub.base,
                &format!("/api/v1/brands/b1/events/{event}"),
            )
            .send()
        };
        let reg = recorded_status(format!("r{i}")).await.unwrap().status();
        let dep = recorded_status(format!("d{i}")).await.unwrap().status();
        assert_eq!(reg, dep, "batch {i} is whole or absent");
        let pending = json_of(admin(
            Method::GET,
            &hub.base,
            &format!("/api/v1/brands/b1/players/p{i}/pixels"),
        ))
        .await;
        let count = pending["pixels"].as_array().unwrap().len();
        if reg == StatusCode::OK {
            recorded += 1;
            assert_eq!(
                count, 2,
                "player {i}: the registration's pixel and the FTD's"
            );
        } else {
            assert_eq!(count, 0, "player {i}: nothing of an unrecorded batch");
        }
        // The affiliate system retries everything; each batch ends up producing its pixels once.
        let retried =
            json_of(admin(Method::POST, &hub.base, "/api/v1/brands/b1/events").json(&batch(i)))
                .await;
        assert_eq!(
            retried["events"][1]["duplicate"].as_bool().unwrap_or(false),
            reg == StatusCode::OK
        );
        let pending = json_of(admin(
            Method::GET,
            &hub.base,
            &format!("/api/v1/brands/b1/players/p{i}/pixels"),
        ))
        .await;
        let urls: Vec<&str> = pending["pixels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["url"].as_str().unwrap())
            .collect();
        let expected = format!("https://t.example/?c=c{i}");
        assert_eq!(urls, [expected.as_str(), expected.as_str()]);
    }
    eprintln!("kill -9 during ingest: {answered} of 60 batches answered, {recorded} recorded");
    assert!(
        recorded >= answered,
        "every 202 survived: {answered} answered, {recorded} recorded"
    );
}

#[tokio::test]
async fn a_definition_that_cannot_render_is_a_failed_row_counted_everywhere_ops_look() {
    let app = TestApp::spawn().await;
    app.define(
        "b1",
        json!({"id": "meta", "name": "Meta FTD", "trigger": "ftd", "kind": "facebook",
               "pixel_id": "{{fb_pixel}}", "event": "Purchase"}),
    )
    .await;
    app.define("b1", ftd_image()).await;
    app.report("b1", registration("r1", "p1", "abc")).await;
    let mut deposit = deposit("d1", "p1", 50);
    deposit["params"]["fb_pixel"] = json!("not-a-number");
    let answer = app.report("b1", deposit).await;
    assert_eq!(
        answer[0]["pixels"].as_array().unwrap().len(),
        1,
        "the image still fires"
    );
    let failed = &answer[0]["failed"][0];
    assert_eq!(
        (failed["definition_id"].as_str(), failed["reason"].as_str()),
        (Some("meta"), Some("invalid_field"))
    );

    // A row of the report, with the reason, under the id the answer gave.
    let rows = app.deliveries("status=failed").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["id"], failed["id"]);
    assert_eq!(
        (
            row["kind"].as_str(),
            row["reason"].as_str(),
            row["definition_id"].as_str(),
            row["affiliate_id"].as_str()
        ),
        (
            Some("facebook"),
            Some("invalid_field"),
            Some("meta"),
            Some("a9")
        )
    );
    assert!(
        row["error"].as_str().unwrap().starts_with("pixel_id"),
        "{row}"
    );
    assert_eq!(app.deliveries("definition_id=meta").await.len(), 1);
    assert_eq!(app.deliveries("kind=image&affiliate_id=a9").await.len(), 1);
    assert_eq!(app.deliveries("affiliate_id=nobody").await.len(), 0);

    // Counted in the metrics and on the dashboard's figures.
    assert_eq!(
        app.metric(
            r#"pixelhub_render_failures_total{brand="b1",reason="invalid_field",kind="facebook"}"#
        )
        .await,
        1
    );
    assert_eq!(
        app.get_json("/api/v1/stats").await["brands"]["b1"]["failed_total"],
        1
    );

    // And in the answers of the GET postback URL and of the CSV import.
    let token = app.inbound_token("b1").await;
    let (_, body) = app
        .call(&format!(
            "/postback/b1/{token}/deposit?player_id=p2&affid=a9&amount=5&fb_pixel=x&event_id=d2"
        ))
        .await;
    assert!(
        body.starts_with("OK\npixels: 1\nfailed: 1\n") && body.contains("failed meta: pixel_id"),
        "{body}"
    );
    let (_, summary) = app
        .import(
            "type=sales",
            "PLAYER_ID,DEPOSITS,AFFID,FB_PIXEL\np3,20,a9,y\n",
        )
        .await;
    assert_eq!(
        (summary["pixels"].clone(), summary["render_failed"].clone()),
        (json!(1), json!(1)),
        "{summary}"
    );
}

#[tokio::test]
async fn a_js_definition_that_does_not_parse_is_refused_at_save() {
    let app = TestApp::spawn().await;
    let answer = json_of(
        app.admin(Method::POST, "/api/v1/brands/b1/pixel-definitions")
            .json(&json!({"name": "js", "trigger": "ftd", "kind": "js", "code": "track({{afp}}"})),
    )
    .await;
    assert_eq!(answer["error"]["code"], "invalid_template", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("definition.code: does not parse as JavaScript at line 1, column"),
        "{message}"
    );
    let listed = app.get_json("/api/v1/brands/b1/pixel-definitions").await;
    assert_eq!(listed["definitions"], json!([]), "nothing saved");
}

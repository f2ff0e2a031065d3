//! What ops use: `/metrics`, the stats and backlog API, purge, live sessions, readiness, drain, the queue
//! cap.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{PATIENCE, TOKEN, TestApp, WsClient, ids_of, sample};

async fn scrape(app: &TestApp) -> String {
    let response = app
        .admin(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// A session of a `b1` player whose upgrade carried a User-Agent and an Origin.
async fn session_from(app: &TestApp, player: &str, agent: &str) -> WsClient {
    let mut request = app.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("user-agent", agent.parse().unwrap());
    request
        .headers_mut()
        .insert("origin", "https://casino.example".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut ws = WsClient { ws };
    ws.send(json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": player}))
        .await;
    assert_eq!(ws.recv().await["type"], "welcome");
    ws
}

#[tokio::test]
async fn metrics_tell_the_same_story_as_the_api_and_name_no_player() {
    let app = TestApp::spawn().await;
    app.put_brand("b2", json!({})).await;
    app.queue(
        "player-one",
        json!([{"kind": "image", "url": "https://px.example/1"},
                                  {"kind": "js", "code": "1"}]),
    )
    .await;
    app.queue_for(
        "b2",
        "player-two",
        json!({"kind": "image", "url": "https://px.example/2"}),
    )
    .await;
    app.queue(
        "player-three",
        json!({"kind": "image", "url": "https://px.example/3"}),
    )
    .await;
    let mut ws = app.session("player-three").await;
    let sent = ws.delivered().await;
    ws.ack(&sent).await;
    app.wait_until_drained("player-three").await;
    let mut online = app.session("player-one").await;
    // Delivered (and counted) after the welcome: the scrape waits for it.
    assert_eq!(online.delivered().await.len(), 2);

    // The queue shows the ack as soon as it is written; the counter follows once it is durable.
    let text = app
        .wait_for_metric(
            "pixelhub_pixels_fired_total{brand=\"b1\",kind=\"image\"}",
            1,
        )
        .await;
    let stats = app.get_json("/api/v1/stats").await;
    for brand in ["b1", "b2"] {
        let depth = sample(&text, &format!("pixelhub_queue_depth{{brand=\"{brand}\"}}"));
        assert_eq!(
            depth,
            stats["brands"][brand]["queue_depth"].as_f64(),
            "{brand}"
        );
    }
    assert_eq!(
        sample(&text, "pixelhub_queue_depth{brand=\"b1\"}"),
        Some(2.0)
    );
    let age = sample(
        &text,
        "pixelhub_queue_oldest_pending_age_seconds{brand=\"b1\"}",
    )
    .unwrap();
    assert!(age > 0.0 && age < 60.0, "{age}");
    assert_eq!(
        sample(&text, "pixelhub_sessions_online{brand=\"b1\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "pixelhub_sessions_players_online{brand=\"b1\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "pixelhub_pixels_queued_total{brand=\"b1\",kind=\"image\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "pixelhub_pixels_fired_total{brand=\"b1\",kind=\"image\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "pixelhub_pixels_delivered_total{brand=\"b1\",kind=\"image\"}"
        ),
        Some(2.0),
        "player-three's pixel, and player-one's on connecting"
    );
    assert_eq!(
        sample(
            &text,
            "pixelhub_pixels_fire_latency_seconds_count{kind=\"image\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pixelhub_websocket_connects_total"),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "pixelhub_http_requests_total{route=\"/api/v1/brands/{brand_id}/players/{player_id}/pixels\",method=\"POST\",status=\"202\"}"
        ),
        Some(3.0)
    );
    assert!(sample(&text, "pixelhub_store_fsync_duration_seconds_count").unwrap() >= 1.0);
    assert!(sample(&text, "pixelhub_store_commit_batch_size_count").unwrap() >= 1.0);
    assert!(text.contains("pixelhub_build_info{version=\""));
    assert!(text.ends_with("# EOF\n"));
    for secret_or_player in ["player-one", "player-two", "player-three", TOKEN] {
        assert!(
            !text.contains(secret_or_player),
            "{secret_or_player} in the metrics"
        );
    }

    // A session's end is counted by its reason.
    drop(ws);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sample(
        &scrape(&app).await,
        "pixelhub_websocket_closes_total{reason=\"client_gone\"}",
    ) != Some(1.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the close was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without the token, nothing; unless the operator made the metrics public.
    let anonymous = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let public = TestApp::spawn_with(|c| c.public_metrics = true).await;
    let anonymous = public
        .http
        .get(public.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::OK);
}

#[tokio::test]
async fn ops_see_backlogs_live_sessions_and_can_purge_a_queue() {
    let app = TestApp::spawn().await;
    let image = |n: u32| json!({"kind": "image", "url": format!("https://px.example/{n}")});
    app.queue("small", json!([image(1)])).await;
    app.queue("big", json!([image(2), image(3), image(4)]))
        .await;
    app.queue("middle", json!([image(5), image(6)])).await;

    let backlogs = app.get_json("/api/v1/backlogs?limit=2").await;
    let players: Vec<(&str, u64)> = backlogs["players"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["player_id"].as_str().unwrap(),
                p["pending"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(players, [("big", 3), ("middle", 2)]);
    assert_eq!(backlogs["players"][0]["brand_id"], "b1");
    assert!(
        backlogs["players"][0]["oldest_queued_at_ms"]
            .as_u64()
            .is_some()
    );

    let queue = app.get_json("/api/v1/brands/b1/queue?limit=1").await;
    assert_eq!(queue["queue_depth"], 6);
    assert_eq!(queue["brand_id"], "b1");
    assert!(queue["oldest_age_ms"].as_u64().is_some());
    assert_eq!(queue["biggest_backlogs"][0]["player_id"], "big");
    assert_eq!(queue["biggest_backlogs"].as_array().unwrap().len(), 1);

    // Two tabs of one player; the first holds the queue and has the first pixels in flight.
    // The second opens once the first has its pixels: on a busy machine it could otherwise take the
    // lease first.
    let mut first = session_from(&app, "big", "Mozilla/5.0 (tab one)").await;
    let held = first.delivered().await;
    let _second = session_from(&app, "big", "Mozilla/5.0 (tab two)").await;
    let sessions = app.get_json("/api/v1/brands/b1/players/big/sessions").await;
    let sessions = sessions["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0]["user_agent"], "Mozilla/5.0 (tab one)");
    assert_eq!(sessions[1]["user_agent"], "Mozilla/5.0 (tab two)");
    assert_eq!(sessions[0]["origin"], "https://casino.example");
    assert!(sessions[0]["connected_since_ms"].as_u64().is_some());
    assert!(sessions[0]["session_id"].as_str().is_some());
    let nobody = app
        .get_json("/api/v1/brands/b1/players/small/sessions")
        .await;
    assert_eq!(nobody["sessions"], json!([]));

    // Purging cancels what no browser holds, and says what it kept.
    let purge = |player: &str| {
        app.admin(
            reqwest::Method::DELETE,
            &format!("/api/v1/brands/b1/players/{player}/pixels"),
        )
        .send()
    };
    let purged: Value = purge("big").await.unwrap().json().await.unwrap();
    assert_eq!(purged, json!({"cancelled": 0, "in_flight": 3}));
    let purged: Value = purge("middle").await.unwrap().json().await.unwrap();
    assert_eq!(purged, json!({"cancelled": 2, "in_flight": 0}));
    assert_eq!(app.pending_ids("middle").await, Vec::<String>::new());
    first.ack(&held).await;
    app.wait_until_drained("big").await;
    let report = app
        .get_json("/api/v1/brands/b1/deliveries?player_id=middle")
        .await;
    let statuses: Vec<&str> = report["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["cancelled", "cancelled"]);
    let backlogs = app.get_json("/api/v1/backlogs").await;
    assert_eq!(
        backlogs["players"].as_array().unwrap().len(),
        1,
        "{backlogs}"
    );

    // Errors name the problem.
    for (path, status, code) in [
        (
            "/api/v1/backlogs?limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
        ),
        (
            "/api/v1/backlogs?size=2",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
        ),
        (
            "/api/v1/backlogs?brand=nope",
            StatusCode::NOT_FOUND,
            "brand_not_found",
        ),
        (
            "/api/v1/brands/nope/queue",
            StatusCode::NOT_FOUND,
            "brand_not_found",
        ),
        (
            "/api/v1/brands/nope/players/p/sessions",
            StatusCode::NOT_FOUND,
            "brand_not_found",
        ),
        (
            "/api/v1/stats/history?since_ms=x",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
        ),
    ] {
        let response = app.admin(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}");
    }
    let response = purge("x").await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "an empty queue purges to nothing"
    );
}

#[tokio::test]
async fn the_queue_cap_refuses_with_429_or_drops_the_oldest() {
    let image = |n: u32| json!({"kind": "image", "url": format!("https://px.example/{n}")});
    let app = TestApp::spawn_with(|c| c.max_queue_per_player = 2).await;
    app.queue("p", json!([image(1), image(2)])).await;
    let refused = app.enqueue("b1", "p", json!([image(3)])).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cap is 2")
    );
    assert_eq!(app.pending_ids("p").await.len(), 2, "nothing was written");

    // Events that would queue over the cap are refused whole too, and can be sent again later.
    app.define(
        "b1",
        json!({"name": "reg", "trigger": "registration", "kind": "image", "url": "https://px.example/r"}),
    )
    .await;
    let events = json!({"event_id": "reg-p", "type": "registration", "player_id": "p", "affiliate_id": "a1"});
    let response = app
        .admin(reqwest::Method::POST, "/api/v1/brands/b1/events")
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let missing = app
        .admin(reqwest::Method::GET, "/api/v1/brands/b1/events/reg-p")
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.status(),
        StatusCode::NOT_FOUND,
        "the event was not recorded"
    );

    let app = TestApp::spawn_with(|c| {
        c.max_queue_per_player = 2;
        c.queue_full = pixelhub::store::OnFull::DropOldest;
    })
    .await;
    let first = app.queue("p", json!([image(1), image(2)])).await;
    let response = app.enqueue("b1", "p", json!([image(3)])).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["dropped"], json!([first[0]]));
    let third = ids_of(&body["pixels"]);
    assert_eq!(
        app.pending_ids("p").await,
        [first[1].clone(), third[0].clone()]
    );
    let report = app
        .get_json("/api/v1/brands/b1/deliveries?status=dropped")
        .await;
    assert_eq!(report["deliveries"][0]["id"], json!(first[0]));
    let text = scrape(&app).await;
    assert_eq!(
        sample(
            &text,
            "pixelhub_pixels_dropped_total{brand=\"b1\",kind=\"image\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn draining_answers_not_ready_refuses_new_sessions_then_sends_4000() {
    let mut app = TestApp::spawn_with(|c| {
        c.shutdown_delay_ms = 1500;
        c.shutdown_timeout_ms = 5000;
    })
    .await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
    let mut live = app.session("p").await;

    app.signal_stop();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let not_ready = loop {
        let response = app.http.get(app.url("/readyz")).send().await.unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            break response.json::<Value>().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(not_ready["error"]["code"], "draining");
    let alive = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK, "alive while draining");
    let upgrade = tokio_tungstenite::connect_async(app.ws_url()).await;
    match upgrade {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("a new session was not refused: {:?}", other.map(|_| ())),
    }
    let stats = app.get_json("/api/v1/stats").await;
    assert_eq!(stats["draining"], true);

    // After the delay, the live session is told to reconnect elsewhere, and the hub stops cleanly.
    let started = tokio::time::Instant::now();
    assert_eq!(live.closed().await, (4000, "shutdown".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::timeout(Duration::from_secs(6), app.stop())
        .await
        .expect("the hub stops within its shutdown timeout");
}

#[tokio::test]
async fn history_samples_feed_the_dashboard() {
    let app = TestApp::spawn().await;
    app.queue("p", json!({"kind": "image", "url": "https://px.example/1"}))
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let history = loop {
        let history = app.get_json("/api/v1/stats/history").await;
        let samples = history["samples"].as_array().unwrap();
        if samples
            .last()
            .is_some_and(|s| s["brands"]["b1"]["queue_depth"] == 1)
        {
            break history;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sample with the pixel: {history}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(history["interval_ms"], 2000);
    let last = history["samples"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["queue_depth"], 1);
    let at = last["at_ms"].as_u64().unwrap();
    let newer = app
        .get_json(&format!("/api/v1/stats/history?since_ms={at}"))
        .await;
    assert!(
        newer["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["at_ms"].as_u64().unwrap() > at),
        "since_ms returns only newer samples"
    );
}

/// The dashboard in real Chromium: it loads behind the admin token, shows a known state, and follows the
/// queue as pixels are queued and fired, by itself. Leaves a screenshot in Cargo's target dir.
#[tokio::test]
async fn the_dashboard_shows_the_hub_live_in_a_browser() {
    use base64::Engine;

    let app = TestApp::spawn().await;
    let anonymous = app.http.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("Basic")
    );

    app.put_brand("b2", json!({})).await;
    app.define(
        "b1",
        json!({"id": "ftd-img", "name": "FTD image", "trigger": "ftd", "kind": "image",
               "url": "https://px.example/ftd?c={{click_id}}"}),
    )
    .await;
    let image = |n: u32| json!({"kind": "image", "url": format!("https://px.example/{n}")});
    app.queue("p1", json!([image(1), image(2), image(3)])).await;
    app.queue_for("b2", "p2", json!([image(4)])).await;

    let browser = crate::cdp::Browser::launch().await;
    let tab = browser.tab().await;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"));
    tab.set_headers(json!({"Authorization": format!("Basic {credentials}")}))
        .await;
    tab.goto(&app.url("/dashboard#brand=b1")).await;
    let number = |id: &str| format!("Number(document.getElementById('{id}').dataset.value)");
    let field = |row: &str, field: &str| {
        format!("(document.querySelector('{row} td[data-field=\"{field}\"]') || {{}}).textContent")
    };
    tab.wait_for(
        &format!("{} === 4", number("total-depth")),
        "the total depth",
    )
    .await;
    assert_eq!(
        tab.eval(&field("#brands tbody tr[data-brand=\"b1\"]", "queue_depth"))
            .await,
        "3"
    );
    assert_eq!(
        tab.eval(&field("#brands tbody tr[data-brand=\"b2\"]", "queue_depth"))
            .await,
        "1"
    );
    assert_eq!(
        tab.eval(&field(
            "#backlogs tbody tr[data-brand=\"b1\"][data-player=\"p1\"]",
            "pending"
        ))
        .await,
        "3"
    );
    assert_eq!(tab.eval(&number("sessions")).await, 0);
    let oldest = tab.eval(&number("oldest-pending")).await;
    assert!(oldest.as_f64().is_some_and(|age| age >= 0.0), "{oldest}");
    tab.wait_for(
        "document.querySelector('#definitions tbody tr[data-definition=\"ftd-img\"]')",
        "the brand's definitions",
    )
    .await;
    tab.wait_for(
        "document.querySelectorAll('#deliveries tbody tr[data-delivery]').length === 3",
        "the brand's recent deliveries",
    )
    .await;
    assert_eq!(
        tab.eval("document.getElementById('brand-detail').dataset.brand")
            .await,
        "b1"
    );

    // More pixels: the page follows by itself.
    app.queue_for("b2", "p2", json!([image(5), image(6)])).await;
    tab.wait_for(
        &format!("{} === 6", number("total-depth")),
        "the depth to rise",
    )
    .await;

    // The player comes online and fires everything: the depth falls, fired/min and sessions rise.
    let mut ws = app.session("p1").await;
    let sent = ws.delivered().await;
    ws.ack(&sent).await;
    app.wait_until_drained("p1").await;
    tab.wait_for(
        &format!("{} === 3", number("total-depth")),
        "the depth to fall",
    )
    .await;
    tab.wait_for(&format!("{} === 1", number("sessions")), "the session")
        .await;
    tab.wait_for(
        &format!("{} > 0", number("fired-per-min")),
        "fired per minute",
    )
    .await;
    // The header's fired/min is the sum of the brand rows' (they once read 59 and 49); the S2S card's
    // line is shown whole, never cut.
    let (header, rows) = (
        tab.eval(&number("fired-per-min")).await,
        tab.eval(
            "[...document.querySelectorAll('#brands tbody td[data-field=\"fired_per_min\"]')]\
             .reduce(function (sum, td) { return sum + Number(td.textContent.replace(/,/g, '')); }, 0)",
        )
        .await,
    );
    assert!(
        (header.as_f64().unwrap() - rows.as_f64().unwrap()).abs() < 0.2,
        "header {header} and rows {rows}"
    );
    assert_eq!(
        tab.eval("(function (e) { return e.scrollWidth <= e.clientWidth; })(document.getElementById('s2s-sub'))")
            .await,
        json!(true),
        "the S2S line fits its card"
    );
    tab.wait_for(
        "document.querySelectorAll('#deliveries tbody td[data-field=\"status\"]').length === 3 && \
         [...document.querySelectorAll('#deliveries tbody td[data-field=\"status\"]')].every(function (td) { return td.textContent.trim() === 'fired'; })",
        "the drill-down to show the pixels fired",
    )
    .await;
    tab.wait_for(
        "Number(document.getElementById('depth-chart').dataset.samples) >= 2 && \
         document.querySelector('#depth-chart path[data-brand=\"b1\"]')",
        "the chart",
    )
    .await;

    let png = tab.screenshot(1280, 1000).await;
    assert!(png.starts_with(b"\x89PNG"));
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let path = artifacts.join("dashboard.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());
}

/// A brand API key, as the Basic password, opens the dashboard on its own brand: its figures, its
/// definitions and deliveries, and nothing of any other brand.
#[tokio::test]
async fn a_brand_key_opens_the_dashboard_on_its_own_brand_only() {
    use base64::Engine;

    let app = TestApp::spawn().await;
    app.put_brand("b2", json!({})).await;
    let image = |n: u32| json!({"kind": "image", "url": format!("https://px.example/{n}")});
    app.queue("p1", json!([image(1), image(2)])).await;
    app.queue_for("b2", "p2", json!([image(3), image(4), image(5)]))
        .await;
    let key = app.create_key("b1").await;
    // A definition that cannot render for an event: the dashboard lists it as failing, with why.
    app.define(
        "b1",
        json!({"id": "meta", "name": "Meta", "trigger": "sale", "kind": "facebook",
               "pixel_id": "{{fb_pixel}}", "event": "Purchase"}),
    )
    .await;
    app.report(
        "b1",
        json!({"event_id": "s1", "type": "sale", "player_id": "p9", "affiliate_id": "a1",
               "params": {"fb_pixel": "not-a-number"}}),
    )
    .await;

    // Its figures are its brand's; another brand's are refused or absent.
    let get = |path: &str| app.http.get(app.url(path)).bearer_auth(&key).send();
    let stats: Value = get("/api/v1/stats").await.unwrap().json().await.unwrap();
    assert_eq!(stats["brand_id"], "b1");
    assert_eq!(stats["queue_depth"], 2, "{stats}");
    assert_eq!(
        stats["brands"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["b1"]
    );
    assert!(stats.get("s2s").is_none(), "no hub-wide figures: {stats}");
    let backlogs: Value = get("/api/v1/backlogs").await.unwrap().json().await.unwrap();
    assert_eq!(
        backlogs["players"].as_array().unwrap().len(),
        1,
        "{backlogs}"
    );
    assert_eq!(
        get("/api/v1/backlogs?brand=b2").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let history: Value = get("/api/v1/stats/history")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for sample in history["samples"].as_array().unwrap() {
        assert!(sample["brands"].get("b2").is_none(), "{sample}");
    }
    // It still cannot write outside its brand, nor use what needs the admin token.
    assert_eq!(
        get("/metrics").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let wrong = base64::engine::general_purpose::STANDARD.encode("ops:not-a-key-0123456789");
    let refused = app
        .http
        .get(app.url("/dashboard"))
        .header("authorization", format!("Basic {wrong}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let browser = crate::cdp::Browser::launch().await;
    let tab = browser.tab().await;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("brand:{key}"));
    tab.set_headers(json!({"Authorization": format!("Basic {credentials}")}))
        .await;
    tab.goto(&app.url("/dashboard")).await;
    tab.wait_for(
        "document.getElementById('brand-detail').dataset.brand === 'b1' && \
         document.querySelectorAll('#brands tbody tr').length === 1 && \
         document.querySelector('#brands tbody tr[data-brand=\"b1\"]')",
        "the dashboard on brand b1 alone",
    )
    .await;
    assert_eq!(
        tab.eval("Number(document.getElementById('total-depth').dataset.value)")
            .await,
        2
    );
    assert_eq!(
        tab.eval("document.querySelector('h1').textContent").await,
        "pixelhub · brand b1"
    );
    let failing = tab
        .wait_for(
            "(function (td) { return td && td.textContent === '1' && td.title; })\
             (document.querySelector('#definitions tbody tr[data-definition=\"meta\"] td[data-field=\"failed\"]'))",
            "the failing definition",
        )
        .await;
    assert_eq!(failing, "invalid_field");
}

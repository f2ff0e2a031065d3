//! Consent in real headless Chromium: brands whose pixels need the player's consent, with stand-in
//! consent managers on the page (an IAB TCF `__tcfapi`, Google consent mode's `dataLayer`, the page's
//! own function; see `CMP_STUBS` in browser.rs). Nothing fires and nothing is acknowledged before
//! consent; pixels wait in the queue, counted, and fire once each when consent comes, on that page or a
//! later visit; refused, they expire at their TTL.

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::{Site, setup, welcomed};
use crate::cdp::Tab;
use crate::helpers::{ALL_KINDS, TestApp};

/// Turns on `mode` consent for the README's brand `12345`, every pixel kind allowed.
async fn ask_consent(app: &TestApp, mode: &str) {
    let brand = json!({"allowed_kinds": ALL_KINDS, "consent": mode, "consent_timeout_ms": 400});
    assert!(app.put_brand("12345", brand).await.status().is_success());
}

/// The statuses of the player's pending pixels, in queue order.
async fn queue_statuses(app: &TestApp, player: &str) -> Vec<String> {
    queue_statuses_of(app, "12345", player).await
}

async fn queue_statuses_of(app: &TestApp, brand: &str, player: &str) -> Vec<String> {
    let queue = app
        .get_json(&format!("/api/v1/brands/{brand}/players/{player}/pixels"))
        .await;
    queue["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls until the player's pending pixels have exactly these statuses.
async fn wait_for_statuses(app: &TestApp, player: &str, expected: &[&str]) {
    wait_for_statuses_of(app, "12345", player, expected).await;
}

async fn wait_for_statuses_of(app: &TestApp, brand: &str, player: &str, expected: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = queue_statuses_of(app, brand, player).await;
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{player}'s queue is {now:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the tab's client sent an ack frame.
async fn acked_anything(tab: &Tab) -> bool {
    tab.eval("window.__sent.some(function (f) { return f.indexOf('\"ack\"') !== -1; })")
        .await
        == json!(true)
}

/// Opens the player's page with `cmp` and waits until the client told the hub the page's first answer.
async fn visit(browser: &crate::cdp::Browser, site: &Site, player: &str, cmp: &str) -> Tab {
    let tab = browser.tab().await;
    tab.goto(&format!("{}&cmp={cmp}", site.page(player))).await;
    welcomed(&tab).await;
    tab.wait_for(
        "window.__sent.some(function (f) { return f.indexOf('\"consent\"') !== -1; })",
        "the page's answer about consent",
    )
    .await;
    tab
}

fn image(site: &Site, path: &str) -> Value {
    json!({"kind": "image", "url": site.url(path)})
}

/// The TCF story: the CMP has no consent yet, so nothing fires or is acked and the pixels wait,
/// counted; the player accepts the brand's purposes and two fire, once each; the third names a vendor
/// the player has not accepted and waits on, until the player accepts that vendor too.
#[tokio::test]
async fn tcf_consent_given_later_fires_each_pixel_once_and_nothing_before() {
    let (app, site, browser) = setup().await;
    ask_consent(&app, "tcf").await;
    let mut vendor = image(&site, "/px/tcf-vendor");
    vendor["tcf_vendor_id"] = json!(755);
    app.queue_for(
        "12345",
        "p-tcf",
        json!([image(&site, "/px/tcf-1"), image(&site, "/px/tcf-2"), vendor]),
    )
    .await;

    let tab = visit(&browser, &site, "p-tcf", "tcf").await;
    let waiting = ["waiting_consent", "waiting_consent", "waiting_consent"];
    wait_for_statuses(&app, "p-tcf", &waiting).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(site.count("/px/tcf"), 0, "nothing fires before consent");
    assert!(
        !acked_anything(&tab).await,
        "nothing is acked before consent"
    );
    assert_eq!(
        app.metric("pixelhub_brand_waiting_consent{brand=\"12345\"}")
            .await,
        3
    );
    let report = app
        .get_json("/api/v1/brands/12345/deliveries?player_id=p-tcf")
        .await;
    assert!(
        report["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["status"] == "waiting_consent"),
        "{report}"
    );

    // The player accepts purposes 1 and 7, not vendor 755.
    tab.eval("__grant({1: true, 7: true}, {})").await;
    site.wait_for_hit("/px/tcf-1").await;
    site.wait_for_hit("/px/tcf-2").await;
    wait_for_statuses(&app, "p-tcf", &["waiting_consent"]).await;
    assert_eq!(site.count("/px/tcf-vendor"), 0);

    // Then vendor 755 too.
    tab.eval("__grant({1: true, 7: true}, {755: true})").await;
    site.wait_for_hit("/px/tcf-vendor").await;
    wait_for_statuses(&app, "p-tcf", &[]).await;
    for path in ["/px/tcf-1", "/px/tcf-2", "/px/tcf-vendor"] {
        assert_eq!(site.count(path), 1, "{path} fired once");
    }
    assert_eq!(
        app.metric("pixelhub_brand_waiting_consent{brand=\"12345\"}")
            .await,
        0
    );
}

/// A CMP that never answers (its question stays open) is no consent, once the brand's timeout passes.
#[tokio::test]
async fn a_cmp_that_never_answers_is_no_consent() {
    let (app, site, browser) = setup().await;
    ask_consent(&app, "tcf").await;
    app.queue_for("12345", "p-open", image(&site, "/px/open"))
        .await;
    let tab = visit(&browser, &site, "p-open", "tcf-open").await;
    wait_for_statuses(&app, "p-open", &["waiting_consent"]).await;
    assert_eq!(site.count("/px/open"), 0);
    assert!(!acked_anything(&tab).await);
}

/// Google consent mode: defaults denied, nothing fires; the CMP's update grants ad_storage and
/// ad_user_data, and the pixel fires once.
#[tokio::test]
async fn google_consent_mode_update_fires_the_waiting_pixel_once() {
    let (app, site, browser) = setup().await;
    ask_consent(&app, "google").await;
    app.queue_for("12345", "p-g", image(&site, "/px/google"))
        .await;
    let tab = visit(&browser, &site, "p-g", "google").await;
    wait_for_statuses(&app, "p-g", &["waiting_consent"]).await;
    assert_eq!(site.count("/px/google"), 0);
    assert!(!acked_anything(&tab).await);

    tab.eval("__grant()").await;
    site.wait_for_hit("/px/google").await;
    wait_for_statuses(&app, "p-g", &[]).await;
    assert_eq!(site.count("/px/google"), 1);
}

/// The page's own function says no on the first visit; the pixel waits. On a later visit the player has
/// accepted, and it fires there, once.
#[tokio::test]
async fn a_callback_refusal_waits_for_a_later_visit_with_consent() {
    let (app, site, browser) = setup().await;
    ask_consent(&app, "callback").await;
    app.queue_for("12345", "p-cb", image(&site, "/px/callback"))
        .await;
    let first = visit(&browser, &site, "p-cb", "callback").await;
    wait_for_statuses(&app, "p-cb", &["waiting_consent"]).await;
    assert!(!acked_anything(&first).await);
    first.close().await;

    let later = visit(&browser, &site, "p-cb", "callback").await;
    assert_eq!(site.count("/px/callback"), 0);
    later.eval("__grant()").await;
    site.wait_for_hit("/px/callback").await;
    wait_for_statuses(&app, "p-cb", &[]).await;
    assert_eq!(site.count("/px/callback"), 1);
}

/// Refused for good: the pixel waits in the queue until its TTL, then expires, never fired.
#[tokio::test]
async fn refused_consent_leaves_the_pixel_queued_until_its_ttl() {
    let (app, site, browser) = setup().await;
    ask_consent(&app, "callback").await;
    let mut pixel = image(&site, "/px/refused");
    pixel["ttl_seconds"] = json!(3600);
    let ids = app.queue_for("12345", "p-no", pixel).await;
    let tab = visit(&browser, &site, "p-no", "callback").await;
    wait_for_statuses(&app, "p-no", &["waiting_consent"]).await;

    app.clock.advance(Duration::from_secs(3601));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let path = "/api/v1/brands/12345/deliveries?player_id=p-no";
    loop {
        let report = app.get_json(path).await;
        let row = &report["deliveries"][0];
        assert_eq!(row["id"], ids[0].as_str());
        if row["status"] == "expired" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not expired: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(queue_statuses(&app, "p-no").await, Vec::<String>::new());
    assert_eq!(site.count("/px/refused"), 0);
    assert!(!acked_anything(&tab).await);
    assert_eq!(
        app.metric("pixelhub_brand_waiting_consent{brand=\"12345\"}")
            .await,
        0
    );
}

/// The wire protocol alone (no browser): a brand that asks for consent gets nothing sent before the
/// page says yes; a no makes the player's pixels wait; a pixel held back for its vendor is not sent to
/// that page again until the page says yes anew.
#[tokio::test]
async fn the_hub_sends_nothing_before_the_page_says_yes() {
    let app = TestApp::spawn().await;
    let brand =
        json!({"allowed_kinds": ALL_KINDS, "consent": "tcf", "consent_tcf_purposes": [7, 1, 7]});
    assert!(app.put_brand("b1", brand).await.status().is_success());
    let ids = app
        .queue(
            "p1",
            json!([
                {"kind": "image", "url": "https://px.example/a"},
                {"kind": "image", "url": "https://px.example/v", "tcf_vendor_id": 755},
            ]),
        )
        .await;
    let mut ws = app.connect().await;
    ws.send(json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": "p1"}))
        .await;
    let welcome = ws.recv().await;
    assert_eq!(
        welcome["consent"],
        json!({"mode": "tcf", "purposes": [1, 7], "timeout_ms": 3000})
    );
    ws.expect_nothing(Duration::from_millis(300)).await;

    ws.send(json!({"type": "consent", "granted": false})).await;
    wait_for_statuses_of(&app, "b1", "p1", &["waiting_consent"; 2]).await;
    ws.expect_nothing(Duration::from_millis(300)).await;

    ws.send(json!({"type": "consent", "granted": true})).await;
    let deliver = ws.recv().await;
    assert_eq!(crate::helpers::ids_of(&deliver["pixels"]), ids);
    assert_eq!(deliver["pixels"][1]["tcf_vendor_id"], 755);
    ws.send(json!({"type": "withheld", "ids": [ids[1]]})).await;
    ws.ack(&ids[..1]).await;
    wait_for_statuses_of(&app, "b1", "p1", &["waiting_consent"]).await;
    ws.expect_nothing(Duration::from_millis(300)).await;

    // The page's answer changed (the player accepted the vendor): said again, the pixel comes again.
    ws.send(json!({"type": "consent", "granted": true})).await;
    assert_eq!(ws.delivered().await, ids[1..]);

    // Bounds: more ids than an ack may carry, or a bad id, close the session.
    let many: Vec<String> = (0..257).map(|i| format!("x{i}")).collect();
    ws.send(json!({"type": "withheld", "ids": many})).await;
    assert_eq!(ws.closed().await, (4505, "unexpected_message".to_owned()));
    let mut ws = app.session("p2").await;
    ws.send(json!({"type": "withheld", "ids": ["not an id!"]}))
        .await;
    assert_eq!(ws.closed().await, (4500, "bad_message".to_owned()));
}

/// A brand without a consent setting: the welcome asks nothing and pixels flow as before.
#[tokio::test]
async fn a_brand_without_consent_asks_nothing() {
    let app = TestApp::spawn().await;
    let ids = app
        .queue(
            "p1",
            json!({"kind": "image", "url": "https://px.example/a"}),
        )
        .await;
    let mut ws = app.connect().await;
    ws.send(json!({"type": "hello", "v": 1, "brand_id": "b1", "player_id": "p1"}))
        .await;
    let welcome = ws.recv().await;
    assert_eq!(welcome.get("consent"), None);
    assert_eq!(ws.delivered().await, ids);
}

/// A definition names its TCF vendor: the pixels its events queue carry it to the page; a postback,
/// which no page fires, cannot name one.
#[tokio::test]
async fn a_definitions_tcf_vendor_reaches_the_page_with_its_pixels() {
    let app = TestApp::spawn().await;
    let brand = json!({"allowed_kinds": ALL_KINDS, "consent": "tcf"});
    assert!(app.put_brand("b1", brand).await.status().is_success());
    app.define(
        "b1",
        json!({"name": "Reg", "trigger": "registration", "kind": "image", "audience": "all_players",
               "url": "https://px.example/r?p={{player_id}}", "tcf_vendor_id": 755}),
    )
    .await;
    let s2s = json!({"name": "PB", "trigger": "registration", "kind": "s2s",
                     "url": "https://pb.example/?p={{player_id}}", "tcf_vendor_id": 755});
    let refused = app
        .post_expecting(
            "/api/v1/brands/b1/pixel-definitions",
            s2s,
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    assert_eq!(refused["error"]["code"], "invalid_field", "{refused}");
    app.report(
        "b1",
        json!({"event_id": "r1", "type": "registration", "player_id": "p1"}),
    )
    .await;

    let mut ws = app.session("p1").await;
    ws.send(json!({"type": "consent", "granted": true})).await;
    let deliver = ws.recv().await;
    assert_eq!(deliver["pixels"][0]["tcf_vendor_id"], 755, "{deliver}");
}

//! Each seed platform's workflow as its own document writes it: its URLs, names and parameters pasted into
//! the hub unchanged. Third-party hosts are not reachable here, so where the hub would request a seed's
//! URL the test reads the URL the hub rendered, and where the hub must really send one, the seed's path and
//! query go to a local receiver.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, json_of};
use crate::receiver::Receiver;

/// The rendered URL of each pixel an event answer lists, by definition id.
fn rendered(outcome: &Value) -> Vec<(String, String)> {
    outcome["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["definition_id"].as_str().unwrap().to_owned(),
                p["url"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The ids of the definitions an event answer lists as skipped, with the rule each failed.
fn skipped(outcome: &Value) -> Vec<(String, String)> {
    outcome["skipped"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| {
                    (
                        s["definition_id"].as_str().unwrap().to_owned(),
                        s["rule"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An inbound call's answer when its event produced one pixel and nothing failed or was skipped.
const ONE_PIXEL: &str = "OK\npixels: 1\nfailed: 0\nskipped: 0\n";

fn pair(id: &str, url: &str) -> (String, String) {
    (id.to_owned(), url.to_owned())
}

#[tokio::test]
async fn smartico_actions_deals_and_its_example_pixel() {
    let app = TestApp::spawn().await;
    // The four actions, by the names Smartico's pixel form gives them, global and per deal.
    let url = "https://pixelserver.com?click_id={{afp}}&lead_id={{registration_id}}";
    for (id, action, deal) in [
        ("lead", "Lead", None),
        ("qualified-lead", "Qualified Lead", Some("cpl-3")),
        ("ftd", "FTD", None),
        ("ftd-cpa", "FTD", Some("cpa-7")),
        ("qftd", "Qualified FTD", Some("cpa-7")),
    ] {
        let mut body =
            json!({"id": id, "name": id, "trigger": action, "kind": "image", "url": url});
        if let Some(deal) = deal {
            body["deal_id"] = json!(deal);
        }
        app.define("b1", body).await;
    }
    let listed = app.get_json("/api/v1/brands/b1/pixel-definitions").await;
    let triggers: Vec<&str> = listed["definitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(
        triggers,
        [
            "ftd",
            "ftd",
            "registration",
            "qftd",
            "qualified_registration"
        ],
        "in id order: ftd, ftd-cpa, lead, qftd, qualified-lead"
    );

    // The registration, as a Registrations file row reaches the events API: the affiliate's afp and deal.
    let lead = app
        .report(
            "b1",
            json!({"event_id": "reg-7890", "type": "Lead Registration", "player_id": "7890",
                   "affiliate_id": "aff-1", "deal_id": "cpa-7", "params": {"afp": "123456"}}),
        )
        .await;
    assert_eq!(lead[0]["type"], "registration");
    assert_eq!(
        rendered(&lead[0]),
        [pair(
            "lead",
            "https://pixelserver.com/?click_id=123456&lead_id=7890"
        )]
    );
    assert_eq!(
        skipped(&lead[0]),
        [],
        "the CPL deal's qualified lead listens to another trigger"
    );

    // The first deposit raises FTD: the global FTD pixel and the deal's fire; Smartico's own example.
    let deposit = app
        .report(
            "b1",
            json!({"event_id": "dep-1", "type": "deposit", "player_id": "7890", "params": {"amount": 100}}),
        )
        .await;
    assert_eq!(deposit[0]["raised"], json!(["ftd"]));
    assert_eq!(
        rendered(&deposit[0]),
        [
            pair(
                "ftd",
                "https://pixelserver.com/?click_id=123456&lead_id=7890"
            ),
            pair(
                "ftd-cpa",
                "https://pixelserver.com/?click_id=123456&lead_id=7890"
            ),
        ]
    );

    // QFTD reported under Smartico's name, for the deal; a player of another deal gets nothing, and
    // the answer says why.
    let qftd = app
        .report(
            "b1",
            json!([
                {"event_id": "q-1", "type": "Qualified First Time Deposit", "player_id": "7890"},
                {"event_id": "r-2", "type": "lead", "player_id": "p2", "deal_id": "cpl-3", "params": {"afp": "x2"}},
                {"event_id": "q-2", "type": "QFTD", "player_id": "p2"},
            ]),
        )
        .await;
    assert_eq!(
        rendered(&qftd[0]),
        [pair(
            "qftd",
            "https://pixelserver.com/?click_id=123456&lead_id=7890"
        )]
    );
    assert_eq!(rendered(&qftd[2]), []);
    assert_eq!(skipped(&qftd[2]), [pair("qftd", "deal")]);
    // Smartico's own typo in its docs, {{registration_is}}, is the registration id too.
    app.define(
        "b1",
        json!({"id": "typo", "name": "typo", "trigger": "Lead Qualified", "kind": "image",
               "url": "https://pixelserver.com?lead_id={{registration_is}}"}),
    )
    .await;
    let qualified = app
        .report(
            "b1",
            json!({"event_id": "ql-1", "type": "Qualified Lead", "player_id": "p2"}),
        )
        .await;
    assert_eq!(
        rendered(&qualified[0]),
        [
            pair(
                "qualified-lead",
                "https://pixelserver.com/?click_id=x2&lead_id=p2"
            ),
            pair("typo", "https://pixelserver.com/?lead_id=p2"),
        ]
    );
}

#[tokio::test]
async fn track360_entry_url_params_come_back_in_its_postback_and_report() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    // Track360's combined example, the affiliate's CRM stood in for by the receiver, on its two trigger
    // events (Signups, FirstDeposits).
    let query =
        "click_id={affclickid}&payout_sum={amount}&currency={currency}&source=track360&type=signup";
    app.define(
        "b1",
        json!({"id": "signup", "name": "signup", "trigger": "Signups", "kind": "s2s",
               "url": receiver.url(&format!("/postback?{query}"))}),
    )
    .await;
    app.define(
        "b1",
        json!({"id": "first", "name": "first", "trigger": "FirstDeposits", "kind": "s2s",
               "url": receiver.url("/postback?affid={affid}&click_id={affclickid}&campaign={campaign}&offer={offer_id}&payout_sum={amount}&currency={currency}&source=track360&type=ftd")}),
    )
    .await;
    // The entry URL's params (affid, campaign, affclickid) arrive with the registration, by GET.
    let token = app.inbound_token("b1").await;
    let (status, body) = app
        .call(&format!(
            "/postback/b1/{token}/signup?player_id=p-101&affid=101&campaign=2001&affclickid=1122223444455565666&amount=50&currency=USD&offer_id=o-9"
        ))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ONE_PIXEL));
    let (status, _) = app
        .call(&format!(
            "/postback/b1/{token}/deposit?player_id=p-101&amount=50&currency=USD&event_id=d-1"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);

    let fired = wait_for(&app, "status=fired", 2).await;
    let mut finals: Vec<&str> = fired
        .iter()
        .map(|row| row["final_url"].as_str().unwrap())
        .collect();
    finals.sort();
    assert_eq!(
        finals,
        [
            receiver.url("/postback?affid=101&click_id=1122223444455565666&campaign=2001&offer=o-9&payout_sum=50&currency=USD&source=track360&type=ftd"),
            receiver.url("/postback?click_id=1122223444455565666&payout_sum=50&currency=USD&source=track360&type=signup"),
        ]
    );
    // The report's columns Track360 asks for: the click id, the URL as written, and the final URL.
    for row in &fired {
        assert_eq!(row["click_id"], "1122223444455565666");
        assert!(
            row["template"].as_str().unwrap().contains("{affclickid}"),
            "{row}"
        );
    }
    let csv = app.deliveries_csv().await;
    assert!(csv.contains("1122223444455565666"), "{csv}");
}

#[tokio::test]
async fn smartyads_global_and_campaign_postbacks_and_its_script_pixel() {
    let app = TestApp::spawn().await;
    app.define(
        "b1",
        json!({"id": "global", "name": "global", "trigger": "conversion", "kind": "s2s",
               "url": "https://conversions.smartyads.com/postback?type=global&uid=14270&clid=[CLICK_ID]"}),
    )
    .await;
    app.define(
        "b1",
        json!({"id": "campaign", "name": "campaign", "trigger": "conversion", "deal_id": "18999", "kind": "s2s",
               "url": "https://conversions.smartyads.com/postback?type=campaign&id=14270&cid=18999&clid=[CLICK_ID]"}),
    )
    .await;
    // The conversion pixel, pasted as the tag SmartyAds hands out.
    let tag = r#"<script src="https://conversions.smartyads.com/conversion?type=campaign&id=14270&cid=18999&clid=[CLICK_ID]"></script>"#;
    let saved = app
        .define(
            "b1",
            json!({"id": "pixel", "name": "pixel", "trigger": "conversion", "deal_id": "18999", "kind": "script", "url": tag}),
        )
        .await;
    assert_eq!(
        saved["url"],
        "https://conversions.smartyads.com/conversion?type=campaign&id=14270&cid=18999&clid=[CLICK_ID]"
    );
    // The click id arrives as the affiliate's link carried it (clid); [CLICK_ID] renders it.
    let click = "7-5f4dcc3b5aa765d61d8327deb882cf99-u42";
    let answers = app
        .report(
            "b1",
            json!([
                {"event_id": "r1", "type": "Sign Up", "player_id": "p1", "deal_id": "18999", "params": {"clid": click}},
                {"event_id": "c1", "type": "conversion", "player_id": "p1"},
                {"event_id": "r2", "type": "signup", "player_id": "p2", "params": {"clid": "other"}},
                {"event_id": "c2", "type": "Conversion", "player_id": "p2"},
            ]),
        )
        .await;
    assert_eq!(answers[1]["type"], "sale");
    assert_eq!(
        rendered(&answers[1]),
        [
            pair(
                "campaign",
                &format!(
                    "https://conversions.smartyads.com/postback?type=campaign&id=14270&cid=18999&clid={click}"
                )
            ),
            pair(
                "global",
                &format!(
                    "https://conversions.smartyads.com/postback?type=global&uid=14270&clid={click}"
                )
            ),
            pair(
                "pixel",
                &format!(
                    "https://conversions.smartyads.com/conversion?type=campaign&id=14270&cid=18999&clid={click}"
                )
            ),
        ]
    );
    assert_eq!(
        rendered(&answers[3]),
        [pair(
            "global",
            "https://conversions.smartyads.com/postback?type=global&uid=14270&clid=other"
        )],
        "the campaign's postback and pixel are for its own deal only"
    );
    let pending = app.get_json("/api/v1/brands/b1/players/p1/pixels").await;
    assert_eq!(pending["pixels"][0]["kind"], "script");
}

#[tokio::test]
async fn routy_calls_without_a_player_find_the_player_by_the_click_id() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    // Routy's FTD postback as the hub's own destination: {ClickId} and {amount} filled, its counter kept.
    app.define(
        "b1",
        json!({"id": "routy", "name": "routy ftd", "trigger": "ftd", "kind": "s2s",
               "url": receiver.url("/post-back/4234rrewfdsf14324ea31?clickId={ClickId}&earning={amount}&firsttimedeposits=1")}),
    )
    .await;
    // The registration names the player and the click id (Routy's dyn).
    app.report(
        "b1",
        json!({"event_id": "r1", "type": "registration", "player_id": "p-9", "params": {"dyn": "ROUTY-1"}}),
    )
    .await;
    // Routy's own URL shapes, called on the hub's inbound URL: no player id, only the click id.
    let token = app.inbound_token("b1").await;
    let (status, body) = app
        .call(&format!(
            "/postback/b1/{token}?clickId=ROUTY-1&earning=50&firsttimedeposits=1"
        ))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ONE_PIXEL));
    let fired = wait_for(&app, "status=fired", 1).await;
    assert_eq!(fired[0]["player_id"], "p-9");
    assert_eq!(
        fired[0]["final_url"],
        receiver
            .url("/post-back/4234rrewfdsf14324ea31?clickId=ROUTY-1&earning=50&firsttimedeposits=1")
    );
    // A click id nobody registered with: a clear 422, counted.
    let (status, body) = app
        .call(&format!("/postback/b1/{token}?dyn=NOBODY&signups=1"))
        .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_click_id")),
        "{body}"
    );
    assert_eq!(
        app.metric(r#"pixelhub_unknown_click_ids_total{brand="b1"}"#)
            .await,
        1
    );
}

#[tokio::test]
async fn constantleads_ftd_reg_and_sale_callbacks_as_written() {
    let app = TestApp::spawn().await;
    for (id, trigger) in [("reg", "registration"), ("ftd", "ftd"), ("sale", "sale")] {
        app.define(
            "b1",
            json!({"id": id, "name": id, "trigger": trigger, "kind": "s2s",
                   "url": format!("https://constantleads.io/wp-json/trax/v1/{id}?clickid={{clickid}}&network={{network}}&program={{program}}")}),
        )
        .await;
    }
    let token = app.inbound_token("b1").await;
    // The registration from the brand's back end, with the click id ConstantLeads sent.
    let (status, body) = app
        .call(&format!(
            "/postback/b1/{token}/reg?player_id=p-1&clickid=85512345&network=AffiliateWeb&program=SuperGame1"
        ))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ONE_PIXEL));
    // ConstantLeads' callback shapes, the seed's own example: only the click id, no player.
    for kind in ["ftd", "sale"] {
        let (status, body) = app
            .call(&format!(
                "/postback/b1/{token}/{kind}?clickid=85512345&network=AffiliateWeb&program=SuperGame1"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{kind}: {body}");
    }
    let rows = app.deliveries("player_id=p-1").await;
    let mut urls: Vec<&str> = rows
        .iter()
        .map(|r| r["final_url"].as_str().unwrap())
        .collect();
    urls.sort();
    assert_eq!(
        urls,
        [
            "https://constantleads.io/wp-json/trax/v1/ftd?clickid=85512345&network=AffiliateWeb&program=SuperGame1",
            "https://constantleads.io/wp-json/trax/v1/reg?clickid=85512345&network=AffiliateWeb&program=SuperGame1",
            "https://constantleads.io/wp-json/trax/v1/sale?clickid=85512345&network=AffiliateWeb&program=SuperGame1",
        ]
    );
    // A type the hub does not know and no definition fires on is refused, listing the known ones.
    let (status, body) = app
        .call(&format!(
            "/postback/b1/{token}/regs?player_id=p-1&clickid=85512345"
        ))
        .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_event_type"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"regs\"")
            && message.contains("registration, qualified_registration, ftd"),
        "{message}"
    );
}

#[tokio::test]
async fn an_organic_player_credits_no_affiliate() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    app.define(
        "b1",
        json!({"id": "s2s", "name": "s2s", "trigger": "FTD", "kind": "s2s",
               "url": receiver.url("/pb?click_id={{afp}}&lead_id={{registration_id}}")}),
    )
    .await;
    app.define(
        "b1",
        json!({"id": "fb", "name": "fb", "trigger": "ftd", "kind": "facebook", "pixel_id": "123",
               "event": "Purchase", "params": {"value": "{{amount}}"}}),
    )
    .await;
    app.define(
        "b1",
        json!({"id": "own", "name": "own analytics", "trigger": "ftd", "audience": "all_players",
               "kind": "image", "url": "https://analytics.example/ftd?p={{player_id}}"}),
    )
    .await;
    let answers = app
        .report(
            "b1",
            json!([
                {"event_id": "r", "type": "registration", "player_id": "p-x3", "params": {"sub1": "seo"}},
                {"event_id": "d", "type": "deposit", "player_id": "p-x3", "params": {"amount": 20}},
            ]),
        )
        .await;
    assert_eq!(
        rendered(&answers[1]),
        [pair("own", "https://analytics.example/ftd?p=p-x3")]
    );
    assert_eq!(
        skipped(&answers[1]),
        [pair("fb", "audience"), pair("s2s", "audience")]
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        receiver.hits().is_empty(),
        "no postback for an organic player"
    );

    // Preview says why, every reason at once.
    let preview = json_of(
        app.admin(
            reqwest::Method::POST,
            "/api/v1/brands/b1/pixel-definitions/s2s/preview",
        )
        .json(&json!({"player_id": "p-x3", "deal_id": "d9"})),
    )
    .await;
    assert_eq!(preview["would_fire"], false);
    let rules: Vec<&str> = preview["why_not"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["audience", "missing_macro"], "{preview}");
}

/// Every report row of brand `b1` matching `query` once there are `n`.
async fn wait_for(app: &TestApp, query: &str, n: usize) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let rows = app.deliveries(query).await;
        if rows.len() >= n {
            return rows;
        }
        assert!(
            started.elapsed() < crate::helpers::PATIENCE,
            "{query}: {rows:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_hub_raises_smarticos_qualified_ftd_by_the_brands_rule() {
    let app = TestApp::spawn().await;
    let patched = app
        .admin(reqwest::Method::PATCH, "/api/v1/brands/b1")
        .json(
            &json!({"qualification": {"qftd": {"min_deposits": 100, "within_days": 30},
                                          "qualified_registration": {"on_event": "kyc_passed"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let bad = json_of(
        app.admin(reqwest::Method::PATCH, "/api/v1/brands/b1")
            .json(&json!({"qualification": {"qftd": {"min_deposits": -1, "within_days": 30}}})),
    )
    .await;
    assert_eq!(bad["error"]["code"], "invalid_brand", "{bad}");
    for (id, action) in [("q", "Qualified FTD"), ("ql", "Qualified Lead")] {
        app.define(
            "b1",
            json!({"id": id, "name": id, "trigger": action, "kind": "image",
                   "url": format!("https://pixelserver.com?click_id={{{{afp}}}}&e={id}")}),
        )
        .await;
    }
    app.report(
        "b1",
        json!({"event_id": "r", "type": "Lead", "player_id": "p1", "params": {"afp": "c-1"}}),
    )
    .await;
    let kyc = app
        .report(
            "b1",
            json!({"event_id": "k", "type": "kyc_passed", "player_id": "p1"}),
        )
        .await;
    assert_eq!(kyc[0]["raised"], json!(["qualified_registration"]));
    assert_eq!(
        rendered(&kyc[0]),
        [pair("ql", "https://pixelserver.com/?click_id=c-1&e=ql")]
    );
    let deposits = app
        .report(
            "b1",
            json!([
                {"event_id": "d1", "type": "deposit", "player_id": "p1", "params": {"amount": 60}},
                {"event_id": "d2", "type": "deposit", "player_id": "p1", "params": {"amount": 60}},
                {"event_id": "d3", "type": "deposit", "player_id": "p1", "params": {"amount": 60}},
                {"event_id": "q", "type": "QFTD", "player_id": "p1"},
            ]),
        )
        .await;
    assert_eq!(deposits[1]["raised"], json!(["qftd"]));
    assert_eq!(
        rendered(&deposits[1]),
        [pair("q", "https://pixelserver.com/?click_id=c-1&e=q")]
    );
    assert!(
        rendered(&deposits[2]).is_empty() && rendered(&deposits[3]).is_empty(),
        "once"
    );
}

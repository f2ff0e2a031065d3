//! End to end in real headless Chromium: a brand site embeds the README's snippet, the hub pushes pixels,
//! the browser fires them. A local server plays both the brand site and the affiliate's pixel server and
//! records every hit; Facebook's hosts are stubbed by intercepting their requests inside the browser.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cdp::{Browser, Stub};
use crate::helpers::{ALL_KINDS, TestApp, now_secs, player_token};
use crate::process::HubProcess;

const README: &str = include_str!("../../README.md");

/// The brand snippet exactly as the README documents it.
fn readme_snippet() -> &'static str {
    let start = README
        .find("<!-- snippet:start -->")
        .expect("the README marks its snippet")
        + "<!-- snippet:start -->".len();
    let end = README.find("<!-- snippet:end -->").unwrap();
    let block = &README[start..end];
    let html_start = block.find("<script>").unwrap();
    let html_end = block.rfind("</script>").unwrap() + "</script>".len();
    &block[html_start..html_end]
}

/// The brand site and the affiliate's pixel server, on one loopback port.
pub(crate) struct Site {
    pub(crate) addr: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct SiteState {
    hub: SocketAddr,
    hits: Arc<Mutex<Vec<String>>>,
}

#[derive(Deserialize)]
struct PageQuery {
    /// The logged-in player; none on a landing page, where the client only captures.
    #[serde(default)]
    player: Option<String>,
    /// The page's clock runs this many days ahead: the player comes back days later.
    #[serde(default)]
    days_later: u64,
    /// Drop acks on their way out, as a lost ack would.
    #[serde(default)]
    drop_acks: bool,
    /// The README snippet with nothing added (no observer).
    #[serde(default)]
    plain: bool,
    /// Serve the page under a Content Security Policy that allows inline scripts only with a nonce;
    /// `pass` gives the client that nonce, `withhold` does not.
    #[serde(default)]
    csp: Option<String>,
    /// localStorage reads work but every write throws, as when its quota is used up.
    #[serde(default)]
    storage_full: bool,
    /// A stand-in consent manager on the page ([`CMP_STUBS`]): `tcf` (consent to nothing yet),
    /// `tcf-open` (its question still open: it never answers), `tcf-granted`, `google` (consent mode
    /// defaults denied) or `callback` (the page's function says no). `window.__grant(purposes,
    /// vendors)` gives consent as the player would.
    #[serde(default)]
    cmp: Option<String>,
}

/// The stand-in consent managers the consent tests put on the brand page, by `cmp`: each answers as a
/// real one does (IAB TCF's `__tcfapi` listener events, Google consent mode's `dataLayer` entries, or
/// the page's own function), with `window.__grant` for the player's click on "accept".
const CMP_STUBS: &str = r#"
  var cmp = '{cmp}';
  if (cmp.indexOf('tcf') === 0) {
    var state = cmp === 'tcf-granted' ? { purposes: { 1: true, 7: true }, vendors: {} } : { purposes: {}, vendors: {} };
    var listeners = [];
    var tcData = function (status) {
      return { eventStatus: status, gdprApplies: true, tcString: 'stub', purpose: { consents: state.purposes }, vendor: { consents: state.vendors } };
    };
    window.__tcfapi = function (command, version, callback) {
      if (command !== 'addEventListener' || version !== 2) return;
      listeners.push(callback);
      callback(tcData(cmp === 'tcf-open' ? 'cmpuishown' : 'tcloaded'), true);
    };
    window.__grant = function (purposes, vendors) {
      state = { purposes: purposes, vendors: vendors || {} };
      listeners.forEach(function (l) { l(tcData('useractioncomplete'), true); });
    };
  } else if (cmp === 'google') {
    window.dataLayer = window.dataLayer || [];
    window.gtag = function () { window.dataLayer.push(arguments); };
    gtag('consent', 'default', { ad_storage: 'denied', ad_user_data: 'denied', analytics_storage: 'denied' });
    window.__grant = function () { gtag('consent', 'update', { ad_storage: 'granted', ad_user_data: 'granted' }); };
  } else if (cmp === 'callback') {
    window.__consent = false;
    window.__grant = function () { window.__consent = true; _sm_aff_client_pixel.consentChanged(); };
  }
"#;

const NONCE: &str = "n0nce-7f3a";

async fn brand_page(State(site): State<SiteState>, Query(q): Query<PageQuery>) -> Html<String> {
    let hub = site.hub;
    let mut snippet = readme_snippet()
        .replace("https://hub.example", &format!("http://{hub}"))
        .replace("wss://hub.example", &format!("ws://{hub}"));
    let player = match &q.player {
        Some(player) => format!("playerId: '{player}'"),
        None => {
            snippet = snippet.replace(", playerId: 'p-42'", "");
            String::new()
        }
    };
    snippet = if q.player.is_none() {
        snippet.replace(
            "brandId: 12345",
            "brandId: 12345, onEvent: function (t, d) { window.__events.push([t, d && (d.id || d.code)]); }",
        )
    } else if q.plain {
        snippet.replace("playerId: 'p-42'", &player)
    } else {
        snippet.replace("playerId: 'p-42'", &format!("{player}, onEvent: function (t, d) {{ window.__events.push([t, d && (d.id || d.code)]); }}"))
    };
    if q.cmp.as_deref() == Some("callback") {
        snippet = snippet.replace(
            "onEvent:",
            "consent: function () { return new Promise(function (ok) { setTimeout(function () { ok(window.__consent); }, 50); }); }, onEvent:",
        );
    }
    let mut head = String::new();
    if let Some(cmp) = &q.cmp {
        head.push_str(&format!(
            "<script>{}</script>",
            CMP_STUBS.replace("{cmp}", cmp)
        ));
    }
    if let Some(csp) = &q.csp {
        head = format!(
            r#"<meta http-equiv="Content-Security-Policy" content="script-src 'nonce-{NONCE}' http://{hub}">{head}"#
        );
        snippet = snippet.replace("<script>", &format!(r#"<script nonce="{NONCE}">"#));
        if csp == "pass" {
            snippet = snippet.replace("onEvent:", &format!("nonce: '{NONCE}', onEvent:"));
        }
    }
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Casino</title>{head}
<script nonce="{NONCE}">
  window.__events = [];
  window.__sent = [];
  window.__dropAcks = {drop};
  if ({days_later}) {{ var realNow = Date.now; Date.now = function () {{ return realNow() + {days_later} * 86400000; }}; }}
  if ({storage_full}) Storage.prototype.setItem = function () {{ throw new DOMException('full', 'QuotaExceededError'); }};
  (function () {{
    var send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {{
      window.__ws = this;
      window.__sent.push(String(data));
      if (window.__dropAcks && String(data).indexOf('"ack"') !== -1) return;
      return send.call(this, data);
    }};
  }})();
</script>
{snippet}
</head><body><h1>Casino</h1></body></html>"#,
        drop = q.drop_acks,
        storage_full = q.storage_full,
        days_later = q.days_later,
    ))
}

async fn pixel_server(State(site): State<SiteState>, uri: Uri) -> Response {
    site.hits.lock().unwrap().push(uri.to_string());
    if uri.path().starts_with("/script") {
        (
            [
                ("content-type", "application/javascript"),
                ("cache-control", "no-store"),
            ],
            "window.__scriptPixel = (window.__scriptPixel || 0) + 1;",
        )
            .into_response()
    } else if uri.path().starts_with("/frame") {
        (
            [("cache-control", "no-store")],
            Html("<!doctype html><title>frame pixel</title>"),
        )
            .into_response()
    } else if uri.path().starts_with("/missing") {
        (axum::http::StatusCode::NOT_FOUND, "no such pixel").into_response()
    } else {
        (
            [("content-type", "image/gif"), ("cache-control", "no-store")],
            GIF.to_vec(),
        )
            .into_response()
    }
}

/// A 1×1 transparent GIF, what pixel servers answer.
const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

impl Site {
    async fn start(hub: SocketAddr) -> Site {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let state = SiteState {
            hub,
            hits: Arc::clone(&hits),
        };
        let router = axum::Router::new()
            .route("/page", axum::routing::get(brand_page))
            .fallback(pixel_server)
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Site { addr, hits }
    }

    pub(crate) fn page(&self, player: &str) -> String {
        format!("http://{}/page?player={player}", self.addr)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn count(&self, needle: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.contains(needle))
            .count()
    }

    pub(crate) async fn wait_for_hit(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.count(needle) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no hit for {needle}; hits: {:?}",
                self.hits.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A hub with the README's brand `12345` (every pixel kind allowed), a site, and a browser.
pub(crate) async fn setup() -> (TestApp, Site, Browser) {
    let app = TestApp::spawn().await;
    assert!(
        app.put_brand(
            "12345",
            json!({"name": "Casino", "allowed_kinds": ALL_KINDS})
        )
        .await
        .status()
        .is_success()
    );
    let site = Site::start(app.addr).await;
    (app, site, Browser::launch().await)
}

/// Queues, for brand `12345`, an image pixel pointing at `path` on the site; returns the pixel ids.
async fn queue_image(app: &TestApp, site: &Site, player: &str, path: &str) -> Vec<String> {
    app.queue_for(
        "12345",
        player,
        json!({"kind": "image", "url": site.url(path)}),
    )
    .await
}

/// How many client events of this type the tab's observer recorded.
async fn events(tab: &crate::cdp::Tab, kind: &str) -> Value {
    let count =
        format!("window.__events.filter(function (e) {{ return e[0] === '{kind}'; }}).length");
    tab.eval(&count).await
}

/// Queues an image pixel for `path` on the site; returns once the browser requested it and acked it.
async fn fire_image(app: &TestApp, site: &Site, player: &str, path: &str) {
    queue_image(app, site, player, path).await;
    site.wait_for_hit(path).await;
    wait_drained(app, player).await;
}

async fn wait_drained(app: &TestApp, player: &str) {
    app.wait_for_queue("12345", player, &[]).await;
}

/// Meta's hosts, which the Facebook tests answer from inside the browser (there is no internet).
const FACEBOOK_HOSTS: &[&str] = &["*://connect.facebook.net/*", "*://www.facebook.com/*"];

/// A stand-in for Meta's fbevents.js: it takes over the queueing stub the way the real one does and
/// records every call in `window.__fbCalls`.
const FAKE_FBEVENTS: &str = r#"(function () {
  var f = window.fbq; window.__fbCalls = window.__fbCalls || [];
  f.callMethod = function () { window.__fbCalls.push(Array.prototype.slice.call(arguments)); };
  var queued = f.queue; f.queue = [];
  for (var i = 0; i < queued.length; i++) f.callMethod.apply(f, queued[i]);
})();"#;

#[tokio::test]
async fn every_pixel_kind_fires_in_the_browser_and_is_acked() {
    let (app, site, browser) = setup().await;
    let ids = app.queue_for("12345", "p1", json!([
        {"kind": "image", "url": site.url("/px/image?click=abc")},
        {"kind": "iframe", "url": site.url("/frame/ftd")},
        {"kind": "js", "code": "window.__jsPixel = (window.__jsPixel || 0) + 1;"},
        {"kind": "facebook", "pixel_id": "777", "event": "Purchase", "params": {"value": 50, "currency": "EUR"}},
        {"kind": "facebook", "pixel_id": "777", "event": "FirstDeposit", "event_id": "dep-1"},
        {"kind": "script", "url": site.url("/script/conv.js?c=1")},
    ]))
    .await;

    let tab = browser.tab().await;
    let stubbed = tab
        .intercept(FACEBOOK_HOSTS, |url| {
            if url.contains("fbevents.js") {
                Stub::Fulfill("application/javascript", FAKE_FBEVENTS.into())
            } else {
                Stub::Fail
            }
        })
        .await;
    tab.goto(&site.page("p1")).await;

    site.wait_for_hit("/px/image?click=abc").await;
    site.wait_for_hit("/frame/ftd").await;
    let frame = tab
        .eval("(function () { var f = document.querySelector('iframe'); return f && [f.getAttribute('sandbox'), f.referrerPolicy]; })()")
        .await;
    assert_eq!(
        frame,
        json!([
            "allow-scripts allow-same-origin",
            "strict-origin-when-cross-origin"
        ]),
        "the iframe pixel has the brand's sandbox and referrer policy (the defaults)"
    );
    tab.wait_for("window.__jsPixel === 1", "the js pixel to run")
        .await;
    tab.wait_for("window.__scriptPixel === 1", "the script pixel to load")
        .await;
    let calls = tab
        .wait_for(
            "window.__fbCalls && window.__fbCalls.length === 3 && window.__fbCalls",
            "three fbq calls",
        )
        .await;
    assert_eq!(
        calls,
        json!([
            ["init", "777"],
            ["trackSingle", "777", "Purchase", {"value": 50, "currency": "EUR"}, {"eventID": ids[3]}],
            ["trackSingleCustom", "777", "FirstDeposit", {}, {"eventID": "dep-1"}],
        ]),
        "init once per pixel id; only that pixel gets the event, with its id for deduplication"
    );
    assert!(
        stubbed
            .lock()
            .unwrap()
            .iter()
            .all(|u| u.contains("fbevents.js")),
        "no fallback image when fbq loads"
    );
    wait_drained(&app, "p1").await;
    tab.wait_for(
        "document.querySelectorAll('iframe').length === 0",
        "the iframe pixel to be removed after load",
    )
    .await;
    tab.wait_for(
        "document.querySelectorAll('script[src*=\"/script/\"]').length === 0",
        "the script pixel's element to be removed after load",
    )
    .await;
    assert_eq!(
        (
            site.count("/px/image"),
            site.count("/frame/ftd"),
            site.count("/script/conv.js?c=1")
        ),
        (1, 1, 1)
    );
}

/// The issue's acceptance path, as a new user follows the README: an FTD image definition, a registration
/// carrying `afp`, a deposit; the player's browser requests the rendered URL exactly once, even across a
/// reload. The affiliate's pixel server is stubbed inside the browser (there is no internet).
#[tokio::test]
async fn an_ftd_definition_fires_its_rendered_url_once_in_the_players_browser() {
    let (app, site, browser) = setup().await;
    app.define(
        "12345",
        json!({"name": "FTD pixel", "trigger": "ftd", "kind": "image",
               "url": "https://pixelserver.example/?click_id={{afp}}&lead_id={{registration_id}}"}),
    )
    .await;
    app.report(
        "12345",
        json!({"event_id": "reg-77", "type": "registration", "player_id": "p-77", "params": {"afp": "xyz 1&2"}}),
    )
    .await;
    let deposit = json!({"event_id": "dep-77", "type": "deposit", "player_id": "p-77", "params": {"amount": 50, "currency": "EUR"}});
    let answer = app.report("12345", deposit.clone()).await;
    let rendered = "https://pixelserver.example/?click_id=xyz%201%262&lead_id=p-77";
    assert_eq!(answer[0]["pixels"][0]["url"], rendered);

    let tab = browser.tab().await;
    let requested = tab
        .intercept(&["*://pixelserver.example/*"], |_| {
            Stub::Fulfill("image/gif", GIF.to_vec())
        })
        .await;
    tab.goto(&site.page("p-77")).await;
    wait_drained(&app, "p-77").await;
    app.report("12345", deposit).await; // the brand's retry
    tab.goto(&site.page("p-77")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*requested.lock().unwrap(), [rendered]);
}

#[tokio::test]
async fn facebook_falls_back_to_the_image_when_fbevents_cannot_load() {
    let (app, site, browser) = setup().await;
    app.queue_for("12345", "p1", json!({"kind": "facebook", "pixel_id": "777", "event": "Purchase", "params": {"value": 50, "currency": "EUR"}, "event_id": "evt-1"})).await;

    let tab = browser.tab().await;
    let stubbed = tab
        .intercept(FACEBOOK_HOSTS, |url| {
            if url.contains("fbevents.js") {
                Stub::Fail
            } else {
                Stub::Fulfill("image/gif", GIF.to_vec())
            }
        })
        .await;
    tab.goto(&site.page("p1")).await;
    wait_drained(&app, "p1").await;

    let urls = stubbed.lock().unwrap().clone();
    let image = urls
        .iter()
        .find(|u| u.contains("/tr?"))
        .unwrap_or_else(|| panic!("no fallback image in {urls:?}"));
    let image = image.replace("%5B", "[").replace("%5D", "]");
    assert!(
        image.starts_with("https://www.facebook.com/tr?id=777&ev=Purchase&noscript=1&eid=evt-1"),
        "{image}"
    );
    assert!(
        image.contains("&cd[value]=50") && image.contains("&cd[currency]=EUR"),
        "{image}"
    );
}

#[tokio::test]
async fn a_player_who_was_offline_fires_on_the_next_visit() {
    let (app, site, browser) = setup().await;
    queue_image(&app, &site, "later", "/px/offline").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(site.count("/px/offline"), 0);

    let tab = browser.tab().await;
    tab.goto(&site.page("later")).await;
    site.wait_for_hit("/px/offline").await;
    wait_drained(&app, "later").await;
    assert_eq!(site.count("/px/offline"), 1);
}

#[tokio::test]
async fn a_backlog_fires_whole_within_the_message_rate_limit() {
    let (app, site, browser) = setup().await;
    let backlog: Vec<Value> = (0..300)
        .map(|i| json!({"kind": "image", "url": site.url(&format!("/px/backlog?n={i}"))}))
        .collect();
    assert_eq!(
        app.queue_for("12345", "backlog", Value::Array(backlog))
            .await
            .len(),
        300
    );

    let tab = browser.tab().await;
    tab.goto(&site.page("backlog")).await;
    wait_drained(&app, "backlog").await;
    assert_eq!(site.count("/px/backlog"), 300);
    // Acks leave gathered, so a page firing a backlog stays under the rate a flood is closed at.
    let limit = app
        .metric("pixelhub_limits_hit_total{limit=\"ws_message_rate\"}")
        .await;
    assert_eq!(limit, 0, "the page was closed for its message rate");
}

#[tokio::test]
async fn the_readme_snippet_works_as_pasted() {
    let (app, site, browser) = setup().await;
    let tab = browser.tab().await;
    tab.goto(&format!("{}&plain=true", site.page("pasted")))
        .await;
    fire_image(&app, &site, "pasted", "/px/pasted").await;
    assert_eq!(
        tab.eval("typeof window._sm_aff_client_pixel.stop").await,
        "function",
        "the library replaced the stub"
    );
}

/// Which of the tabs holds the connection (got a welcome).
/// The landing page of a player brought by an affiliate: no player yet, the click in the URL.
fn landing(site: &Site, query: &str) -> String {
    format!("http://{}/page?{query}", site.addr)
}

/// Waits until the tab's client was welcomed.
pub(crate) async fn welcomed(tab: &crate::cdp::Tab) {
    tab.wait_for(
        "window.__events.some(function (e) { return e[0] === 'welcome'; })",
        "the welcome",
    )
    .await;
}

/// The hellos the tab's client sent, parsed.
pub(crate) async fn hellos(tab: &crate::cdp::Tab) -> Vec<Value> {
    let sent = tab.eval("window.__sent").await;
    sent.as_array()
        .unwrap()
        .iter()
        .map(|f| serde_json::from_str::<Value>(f.as_str().unwrap()).unwrap())
        .filter(|f| f["type"] == "hello")
        .collect()
}

/// The issue's story: a player lands from an affiliate's link (click id, sub id, utm), browses, leaves;
/// three days later registers. The brand's registration event carries no click id, yet the affiliate's
/// registration pixel fires with it, because the browser kept it and sent it with its first hello.
#[tokio::test]
async fn a_click_captured_on_the_landing_page_reaches_the_registration_pixel_days_later() {
    let (app, site, browser) = setup().await;
    app.define(
        "12345",
        json!({"name": "Reg pixel", "trigger": "registration", "kind": "image",
               "url": site.url("/px/reg?c={clickid}&s={sub1}&u={utm_source}")}),
    )
    .await;

    let tab = browser.tab().await;
    tab.goto(&landing(
        &site,
        "clickId=c-77&sub1=s-1&utm_source=news&email=x%40y.example",
    ))
    .await;
    let kept = tab
        .wait_for("window._sm_aff_client_pixel.captured(12345)", "the capture")
        .await;
    assert_eq!(
        kept,
        json!({"clickid": "c-77", "sub1": "s-1", "utm_source": "news"}),
        "the brand's names only, lower-cased"
    );
    assert!(hellos(&tab).await.is_empty(), "no player, no session");
    tab.close().await;

    // Days later, in the same browser: the player registers and the page knows them.
    let tab = browser.tab().await;
    tab.goto(&format!("{}&days_later=3", site.page("p-reg")))
        .await;
    welcomed(&tab).await;
    let sent = hellos(&tab).await;
    assert_eq!(sent[0]["attribution"]["params"]["clickid"], "c-77");
    app.report(
        "12345",
        json!({"event_id": "reg-1", "type": "registration", "player_id": "p-reg"}),
    )
    .await;
    site.wait_for_hit("/px/reg").await;
    wait_drained(&app, "p-reg").await;
    assert_eq!(site.count("/px/reg?c=c-77&s=s-1&u=news"), 1);
    let attribution = app
        .get_json("/api/v1/brands/12345/players/p-reg/attribution")
        .await;
    assert_eq!(attribution["source"], "browser");
    let report = app
        .get_json("/api/v1/brands/12345/deliveries?player_id=p-reg")
        .await;
    assert_eq!(report["deliveries"][0]["click_id"], "c-77");
    assert_eq!(report["deliveries"][0]["click_source"], "browser");

    // Sent once per player: the next page's hello carries nothing.
    tab.goto(&format!("{}&days_later=3", site.page("p-reg")))
        .await;
    welcomed(&tab).await;
    assert_eq!(hellos(&tab).await[0].get("attribution"), None);

    // A click older than the brand's window is not sent.
    let tab = browser.tab().await;
    tab.goto(&format!("{}&days_later=31", site.page("p-late")))
        .await;
    welcomed(&tab).await;
    assert_eq!(hellos(&tab).await[0].get("attribution"), None);

    // A brand that names its origins: a page of another origin (here `localhost`, which the brand does
    // not list) captures nothing.
    app.put_brand(
        "12345",
        json!({"allowed_kinds": ALL_KINDS, "allowed_origins": [format!("http://{}", site.addr)]}),
    )
    .await;
    let elsewhere = format!(
        "http://localhost:{}/page?clickid=c-elsewhere",
        site.addr.port()
    );
    let tab = browser.tab().await;
    tab.goto(&elsewhere).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tab.eval("window._sm_aff_client_pixel.captured(12345)")
            .await,
        Value::Null,
        "refused by the hub, the page kept nothing"
    );
    // The brand's own origin still captures.
    tab.goto(&landing(&site, "clickid=c-88")).await;
    tab.wait_for(
        "(window._sm_aff_client_pixel.captured(12345) || {}).clickid === 'c-88'",
        "the capture on the brand's own origin",
    )
    .await;
}

/// A brand that credits the first click: a second landing within the window keeps the first click id;
/// a brand on last touch (the default) keeps the latest.
#[tokio::test]
async fn the_brands_touch_decides_which_landing_the_browser_keeps() {
    let (app, site, browser) = setup().await;
    let first_touch = json!({"allowed_kinds": ALL_KINDS, "capture_touch": "first"});
    assert!(
        app.put_brand("12345", first_touch)
            .await
            .status()
            .is_success()
    );
    let tab = browser.tab().await;
    let kept = "(window._sm_aff_client_pixel.captured(12345) || {}).clickid";
    tab.goto(&landing(&site, "clickid=c-first")).await;
    tab.wait_for(&format!("{kept} === 'c-first'"), "the first click")
        .await;
    tab.goto(&landing(&site, "clickid=c-second")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tab.eval(kept).await,
        "c-first",
        "first touch keeps the first"
    );

    let last_touch = json!({"allowed_kinds": ALL_KINDS, "capture_touch": "last"});
    assert!(
        app.put_brand("12345", last_touch)
            .await
            .status()
            .is_success()
    );
    // A fresh profile: the capture settings a browser read are cached for five minutes.
    let browser = crate::cdp::Browser::launch().await;
    let tab = browser.tab().await;
    tab.goto(&landing(&site, "clickid=c-first")).await;
    tab.wait_for(&format!("{kept} === 'c-first'"), "the first click")
        .await;
    tab.goto(&landing(&site, "clickid=c-second")).await;
    tab.wait_for(&format!("{kept} === 'c-second'"), "the latest click")
        .await;
}

/// A player the brand reported with its own click id lands again from another affiliate's link: the
/// browser sends its capture, and the hub keeps the brand's.
#[tokio::test]
async fn a_brand_reported_attribution_is_never_overwritten_by_the_browsers() {
    let (app, site, browser) = setup().await;
    app.define(
        "12345",
        json!({"name": "FTD pixel", "trigger": "ftd", "kind": "image", "url": site.url("/px/ftd?c={clickid}")}),
    )
    .await;
    app.report(
        "12345",
        json!({"event_id": "reg-b", "type": "registration", "player_id": "p-b", "params": {"clickid": "c-brand"}}),
    )
    .await;
    let tab = browser.tab().await;
    tab.goto(&format!("{}&clickid=c-browser", site.page("p-b")))
        .await;
    welcomed(&tab).await;
    assert_eq!(
        hellos(&tab).await[0]["attribution"]["params"]["clickid"],
        "c-browser",
        "the browser offered its capture"
    );
    app.report(
        "12345",
        json!({"event_id": "ftd-b", "type": "ftd", "player_id": "p-b", "params": {"amount": 10}}),
    )
    .await;
    site.wait_for_hit("/px/ftd").await;
    wait_drained(&app, "p-b").await;
    assert_eq!(site.count("/px/ftd?c=c-brand"), 1);
    assert_eq!(site.count("c-browser"), 0);
    let attribution = app
        .get_json("/api/v1/brands/12345/players/p-b/attribution")
        .await;
    assert_eq!(attribution["source"], "event");
    assert_eq!(attribution["params"]["clickid"], "c-brand");
}

async fn holder(tabs: &[crate::cdp::Tab]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        for (i, tab) in tabs.iter().enumerate() {
            if tab
                .eval("window.__events.some(function (e) { return e[0] === 'welcome'; })")
                .await
                == json!(true)
            {
                return i;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no tab connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_tabs_of_one_player_fire_each_pixel_once_and_hand_over() {
    let (app, site, browser) = setup().await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let tab = browser.tab().await;
        tab.goto(&site.page("tabs")).await;
        tabs.push(tab);
    }
    let first = holder(&tabs).await;
    for (i, tab) in tabs.iter().enumerate().filter(|(i, _)| *i != first) {
        tab.wait_for(
            "window.__events.some(function (e) { return e[0] === 'waiting'; })",
            &format!("tab {i} to stand by"),
        )
        .await;
    }
    assert_eq!(
        app.get_json("/api/v1/stats").await["brands"]["12345"]["sessions"],
        1,
        "one connection for three tabs"
    );

    fire_image(&app, &site, "tabs", "/px/tabs-1").await;

    // The holder closes; a waiting tab takes over the connection and fires the next pixel.
    tabs.remove(first).close().await;
    holder(&tabs).await;
    fire_image(&app, &site, "tabs", "/px/tabs-2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (site.count("/px/tabs-1"), site.count("/px/tabs-2")),
        (1, 1),
        "each pixel fired once over all tabs"
    );
}

#[tokio::test]
async fn a_reload_never_refires_even_when_the_ack_was_lost() {
    let (app, site, browser) = setup().await;
    let ids = queue_image(&app, &site, "reload", "/px/reload").await;
    let tab = browser.tab().await;
    tab.goto(&format!("{}&drop_acks=true", site.page("reload")))
        .await;
    site.wait_for_hit("/px/reload").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = app
        .get_json("/api/v1/brands/12345/players/reload/pixels")
        .await;
    assert_eq!(
        listed["pixels"][0]["in_flight"], true,
        "the ack was lost, so the hub still holds the pixel"
    );

    // The reload closes the connection; the hub sends the pixel again; the page acks it without firing.
    tab.goto(&site.page("reload")).await;
    tab.wait_for(
        &format!(
            "window.__events.some(function (e) {{ return e[0] === 'skip' && e[1] === '{}'; }})",
            ids[0]
        ),
        "the redelivered pixel to be skipped",
    )
    .await;
    wait_drained(&app, "reload").await;
    assert_eq!(site.count("/px/reload"), 1, "fired once");
}

#[tokio::test]
async fn a_hub_restart_loses_nothing_and_fires_nothing_twice() {
    let (app, site, browser) = setup().await;
    let tab = browser.tab().await;
    tab.goto(&format!("{}&drop_acks=true", site.page("restart")))
        .await;
    holder(std::slice::from_ref(&tab)).await;
    queue_image(&app, &site, "restart", "/px/before-restart").await;
    site.wait_for_hit("/px/before-restart").await;
    tab.eval("window.__dropAcks = false").await;

    // The hub restarts with the pixel un-acked; the browser reconnects by itself (with backoff).
    let app = app.restart().await;
    tab.wait_for(
        "window.__events.filter(function (e) { return e[0] === 'welcome'; }).length >= 2",
        "the reconnect",
    )
    .await;
    wait_drained(&app, "restart").await;
    fire_image(&app, &site, "restart", "/px/after-restart").await;
    assert_eq!(
        (
            site.count("/px/before-restart"),
            site.count("/px/after-restart")
        ),
        (1, 1)
    );
    // A browser may answer a repeated image URL from its memory cache, so count fires in the client too.
    let fires = events(&tab, "fire").await;
    let skips = events(&tab, "skip").await;
    assert_eq!(
        (fires, skips),
        (json!(2), json!(1)),
        "the redelivered pixel was acked, not fired again"
    );
    // Retries while the hub was down may add 1006 closes; the first close is the hub's documented 4000.
    let first_close = tab
        .eval("window.__events.filter(function (e) { return e[0] === 'close'; })[0][1]")
        .await;
    assert_eq!(first_close, 4000, "the hub told the page to reconnect");
}

#[tokio::test]
async fn js_pixels_run_on_pages_with_a_csp_when_given_the_nonce() {
    let (app, site, browser) = setup().await;
    let code = "window.__cspPixel = 'ran';";
    for (player, csp, expected) in [
        ("csp-pass", "pass", json!("ran")),
        ("csp-withhold", "withhold", Value::Null),
    ] {
        app.queue_for("12345", player, json!({"kind": "js", "code": code}))
            .await;
        let tab = browser.tab().await;
        tab.goto(&format!("{}&csp={csp}", site.page(player))).await;
        wait_drained(&app, player).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The control case shows the policy really blocks inline scripts without the nonce.
        assert_eq!(tab.eval("window.__cspPixel").await, expected, "csp={csp}");
    }
}

#[tokio::test]
async fn a_page_whose_storage_is_full_still_never_fires_twice() {
    let (app, site, browser) = setup().await;
    let tab = browser.tab().await;
    tab.goto(&format!(
        "{}&drop_acks=true&storage_full=true",
        site.page("full")
    ))
    .await;
    holder(std::slice::from_ref(&tab)).await;
    let ids = queue_image(&app, &site, "full", "/px/full").await;
    site.wait_for_hit("/px/full").await;

    // The ack was lost; the connection drops; the hub sends the pixel again to the same page.
    tab.eval("window.__dropAcks = false; window.__ws.close(); true")
        .await;
    let skipped = format!(
        "window.__events.some(function (e) {{ return e[0] === 'skip' && e[1] === '{}'; }})",
        ids[0]
    );
    tab.wait_for(&skipped, "the redelivered pixel to be recognised")
        .await;
    wait_drained(&app, "full").await;
    assert_eq!(events(&tab, "fire").await, 1);
}

#[tokio::test]
async fn kill_9_of_the_real_binary_fires_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let token = "kill-nine-browser-0123456789";
    let hub = HubProcess::start(dir.path(), Some(token), false);
    let http = reqwest::Client::new();
    let admin = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", hub.base))
            .bearer_auth(token)
    };
    let put = admin(reqwest::Method::PUT, "/api/v1/brands/12345")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let (base, addr) = (hub.base.clone(), hub.addr);
    let site = Site::start(addr).await;
    let browser = Browser::launch().await;
    let tab = browser.tab().await;
    tab.goto(&format!("{}&drop_acks=true", site.page("k9")))
        .await;
    holder(std::slice::from_ref(&tab)).await;

    let queued = admin(
        reqwest::Method::POST,
        "/api/v1/brands/12345/players/k9/pixels",
    )
    .json(&json!({"kind": "image", "url": site.url("/px/k9")}))
    .send()
    .await
    .unwrap();
    assert_eq!(queued.status(), 202);
    site.wait_for_hit("/px/k9").await;
    tab.eval("window.__dropAcks = false").await;

    // SIGKILL with the pixel fired but un-acked, then the same binary on the same port and data.
    hub.kill_9();
    let hub = HubProcess::start_on(&addr.to_string(), dir.path(), Some(token), false);
    assert_eq!(hub.base, base);
    let http = reqwest::Client::new(); // the old pool's connections died with the process
    let pending = || {
        let request = http
            .get(format!("{base}/api/v1/brands/12345/players/k9/pixels"))
            .bearer_auth(token)
            .send();
        async move {
            request.await.unwrap().json::<Value>().await.unwrap()["pixels"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pending().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the browser never acked the redelivered pixel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (events(&tab, "fire").await, events(&tab, "skip").await),
        (json!(1), json!(1))
    );
    assert_eq!(site.count("/px/k9"), 1, "fired once across kill -9");
}

#[tokio::test]
async fn sigterm_sends_the_page_to_reconnect_and_it_finishes_on_the_restarted_hub() {
    let dir = tempfile::tempdir().unwrap();
    let token = "sigterm-browser-0123456789";
    let mut hub = HubProcess::start(dir.path(), Some(token), false);
    let (base, addr) = (hub.base.clone(), hub.addr);
    let queue = |n: &str, site_url: String| {
        let http = reqwest::Client::new(); // a fresh pool: the old one's connections die with the hub
        let request = http
            .post(format!("{base}/api/v1/brands/12345/players/term/pixels"))
            .bearer_auth(token)
            .json(&json!({"id": n, "kind": "image", "url": site_url}))
            .send();
        async move { assert_eq!(request.await.unwrap().status(), 202) }
    };
    let put = reqwest::Client::new()
        .put(format!("{base}/api/v1/brands/12345"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let site = Site::start(addr).await;
    let browser = Browser::launch().await;
    let tab = browser.tab().await;
    tab.goto(&site.page("term")).await;
    holder(std::slice::from_ref(&tab)).await;
    queue("before", site.url("/px/term-before")).await;
    site.wait_for_hit("/px/term-before").await;

    // SIGTERM: the page hears 4000 (reconnect elsewhere) and the process exits 0 within its bound.
    let (status, took) = hub.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(11), "{took:?}");
    tab.wait_for(
        "window.__events.some(function (e) { return e[0] === 'close'; })",
        "the close",
    )
    .await;
    let first_close = tab
        .eval("window.__events.filter(function (e) { return e[0] === 'close'; })[0][1]")
        .await;
    assert_eq!(first_close, 4000);

    // The restarted hub gets the page back by itself, and the page finishes what is queued next.
    let _hub = HubProcess::start_on(&addr.to_string(), dir.path(), Some(token), false);
    tab.wait_for(
        "window.__events.filter(function (e) { return e[0] === 'welcome'; }).length >= 2",
        "the reconnect",
    )
    .await;
    queue("after", site.url("/px/term-after")).await;
    site.wait_for_hit("/px/term-after").await;
    assert_eq!(
        (site.count("/px/term-before"), site.count("/px/term-after")),
        (1, 1)
    );
}

/// The issue's acceptance path for player tokens, as docs/security.md walks it: the demo brand requires
/// tokens, the demo page is refused without one and works with one, and a hand-made WebSocket claiming
/// the same player receives nothing.
#[tokio::test]
async fn the_demo_requires_a_player_token_once_the_brand_says_so() {
    let app = TestApp::spawn_with(|c| c.demo = Some(true)).await;
    let put = app
        .put_brand(
            "demo",
            json!({"name": "Demo casino", "require_player_token": true, "allowed_kinds": ALL_KINDS}),
        )
        .await;
    assert_eq!(put.status(), 200);
    let secret = app.signing_secret("demo").await;
    let browser = Browser::launch().await;
    let tab = browser.tab().await;
    tab.goto(&app.url("/demo?player=p-42")).await;
    tab.wait_for(
        "document.getElementById('status').textContent === 'refused'",
        "the page without a token to be refused",
    )
    .await;
    let log = tab.eval("document.getElementById('log').textContent").await;
    assert!(log.as_str().unwrap().contains("invalid_token"), "{log}");

    let token = player_token(&secret, "demo", "p-42", now_secs() + 86_400);
    tab.goto(&app.url(&format!("/demo?player=p-42&token={token}")))
        .await;
    tab.wait_for(
        "document.getElementById('status').textContent === 'online'",
        "the page with the token to be online",
    )
    .await;

    // A hand-made WebSocket claiming p-42 without the token: closed, and it takes nothing.
    let mut thief = app.connect().await;
    thief
        .send(json!({"type": "hello", "v": 1, "brand_id": "demo", "player_id": "p-42"}))
        .await;
    assert_eq!(thief.closed().await, (4507, "invalid_token".to_owned()));

    // The demo's button: a pixel queued for p-42 fires in the page that holds the token.
    tab.eval("document.querySelector('button[data-kind=\"image\"]').click()")
        .await;
    tab.wait_for(
        "document.querySelectorAll('#hits li:not(.empty)').length === 1",
        "the demo receiver to show the hit",
    )
    .await;
    app.wait_for_queue("demo", "p-42", &[]).await;
}

/// The browser tells the hub how each pixel went: error events, a JS block that throws or does not parse,
/// Meta's image fallback. Failed pixels are acknowledged (never fired again) and the report shows why.
#[tokio::test]
async fn the_browser_reports_what_went_wrong_and_failed_pixels_never_fire_again() {
    let (app, site, browser) = setup().await;
    let ids = app
        .queue_for(
            "12345",
            "p-err",
            json!([
                {"kind": "image", "url": site.url("/px/fine.gif")},
                {"kind": "image", "url": site.url("/missing/img.gif")},
                {"kind": "script", "url": site.url("/missing/conv.js")},
                {"kind": "js", "code": "window.__ran = 1; throw new Error('boom in the pixel');"},
                {"kind": "js", "code": "window.__parsed = 1; if ("},
                {"kind": "facebook", "pixel_id": "777", "event": "Purchase"},
            ]),
        )
        .await;
    let tab = browser.tab().await;
    tab.intercept(FACEBOOK_HOSTS, |url| {
        if url.contains("fbevents.js") {
            Stub::Fail
        } else {
            Stub::Fulfill("image/gif", GIF.to_vec())
        }
    })
    .await;
    tab.goto(&site.page("p-err")).await;
    wait_drained(&app, "p-err").await;

    let report = app
        .get_json("/api/v1/brands/12345/deliveries?player_id=p-err")
        .await;
    let outcome = |id: &str| {
        let row = report["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no row {id} in {report}"))
            .clone();
        (
            row["status"].as_str().unwrap().to_owned(),
            row["reason"].as_str().map(str::to_owned),
            row["error"].as_str().map(str::to_owned),
        )
    };
    assert_eq!(outcome(&ids[0]), ("fired".into(), None, None));
    let (status, reason, _) = outcome(&ids[1]);
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("failed", Some("image_error"))
    );
    let (status, reason, _) = outcome(&ids[2]);
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("failed", Some("script_error"))
    );
    let (status, reason, message) = outcome(&ids[3]);
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("failed", Some("js_threw"))
    );
    assert!(message.unwrap().contains("boom in the pixel"));
    let (status, reason, message) = outcome(&ids[4]);
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("failed", Some("js_syntax"))
    );
    assert!(message.unwrap().starts_with("SyntaxError"));
    assert_eq!(
        tab.eval("[window.__ran, window.__parsed === undefined]")
            .await,
        json!([1, true]),
        "the throwing block ran; the one that does not parse never ran"
    );
    assert_eq!(
        outcome(&ids[5]),
        (
            "fired".into(),
            Some("fb_image_fallback".into()),
            Some("Meta's script was unavailable; sent as its /tr image".into())
        )
    );

    // Failed pixels are not fired again on the next visit.
    tab.goto(&site.page("p-err")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(site.count("/missing/img.gif"), 1);
    assert_eq!(
        app.get_json("/api/v1/stats").await["brands"]["12345"]["failed_total"],
        4
    );
}

/// Three hub processes on one Redis, a brand site in front of each (three origins, so three
/// connections: a browser's tabs of one origin share one). A pixel queued through A fires in the page
/// connected to B, once; with the player's page open on all three, a pixel fires once over them.
#[tokio::test]
async fn processes_on_one_redis_fire_a_pixel_once_in_pages_connected_to_any_of_them() {
    let redis = crate::redis::Redis::start();
    let store = redis.store();
    let a = TestApp::spawn_with(|c| c.store = store.clone()).await;
    let b = TestApp::spawn_joining(|c| c.store = store.clone()).await;
    let c = TestApp::spawn_joining(|c| c.store = store).await;
    let brand = json!({"name": "Casino", "allowed_kinds": ALL_KINDS});
    assert!(a.put_brand("12345", brand).await.status().is_success());
    let sites = [
        Site::start(a.addr).await,
        Site::start(b.addr).await,
        Site::start(c.addr).await,
    ];
    let browser = Browser::launch().await;

    let on_b = browser.tab().await;
    on_b.goto(&sites[1].page("one")).await;
    holder(std::slice::from_ref(&on_b)).await;
    fire_image(&a, &sites[1], "one", "/px/from-a").await;
    assert_eq!(
        sites[1].count("/px/from-a"),
        1,
        "queued on A, fired once on B's page"
    );

    let mut tabs = Vec::new();
    for site in &sites {
        let tab = browser.tab().await;
        tab.goto(&site.page("everywhere")).await;
        tabs.push(tab);
    }
    for tab in &tabs {
        holder(std::slice::from_ref(tab)).await;
    }
    fire_image(&c, &sites[0], "everywhere", "/px/once").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sites[0].count("/px/once"),
        1,
        "one fire over three processes' pages"
    );
    let stats = a.get_json("/api/v1/stats").await;
    assert_eq!(stats["queue_depth"], 0, "{stats}");
}

/// The simplest load balancer: each connection goes to the first backend that accepts it, so when one
/// process dies its browsers' reconnects land on the next.
struct Balancer {
    addr: SocketAddr,
}

impl Balancer {
    async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let backends = backends.clone();
                tokio::spawn(async move {
                    for backend in backends {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { addr }
    }
}

/// `kill -9` of the hub process whose session holds a pixel the page fired but whose ack was lost: the
/// page reconnects through the load balancer to the other process on the same Redis, the pixel's ack
/// gets there, and the pixel never fires again.
#[tokio::test]
async fn kill_9_of_a_process_on_redis_fires_nothing_twice_in_the_page() {
    let redis = crate::redis::Redis::start();
    let url = redis.url();
    let settings = [
        ("PIXELHUB_STORE", url.as_str()),
        ("PIXELHUB_LEASE_TTL_MS", "1500"),
    ];
    let token = "kill-nine-redis-0123456789";
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = HubProcess::start_with("127.0.0.1:0", dir_a.path(), Some(token), false, &settings);
    let b = HubProcess::start_with("127.0.0.1:0", dir_b.path(), Some(token), false, &settings);
    let api = crate::process::HubApi::of(&b, token);
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            "/api/v1/brands/12345",
            Some(json!({})),
        )
        .await;
    assert!(status.is_success());
    let balancer = Balancer::start(vec![a.addr, b.addr]).await;
    let site = Site::start(balancer.addr).await;
    let browser = Browser::launch().await;
    let tab = browser.tab().await;
    tab.goto(&format!("{}&drop_acks=true", site.page("k9r")))
        .await;
    holder(std::slice::from_ref(&tab)).await;

    let pixel = json!({"kind": "image", "url": site.url("/px/k9r")});
    let path = "/api/v1/brands/12345/players/k9r/pixels";
    let (status, _) = api.call(reqwest::Method::POST, path, Some(pixel)).await;
    assert_eq!(status, 202);
    site.wait_for_hit("/px/k9r").await;

    // The page's connection went through the balancer to A: A dies with the pixel fired, un-acked.
    // The page's acks go out again from now on; B's lease wait (1.5 s) leaves time to say so.
    a.kill_9();
    tab.eval("window.__dropAcks = false").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listed) = api.call(reqwest::Method::GET, path, None).await;
        if listed["pixels"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page's ack never reached B: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The page's lost ack reaches B (sent again on the new connection, or for B's redelivery of the
    // pixel, which the page skips): either way it never fires twice.
    assert_eq!(
        events(&tab, "fire").await,
        json!(1),
        "fired once, on A's connection"
    );
    assert_eq!(
        site.count("/px/k9r"),
        1,
        "fired once across kill -9 and two processes"
    );
}

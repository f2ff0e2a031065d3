//! The doors of issue 6, each tried from outside: the attack that must fail, and the legitimate path that
//! must still work. Brands here keep the default settings unless the test is about changing them.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, WsClient, json_of, now_secs, player_token as token};

/// Says hello as `player` of `brand` with `token`; returns the socket after the hello.
async fn hello(app: &TestApp, brand: &str, player: &str, token: Option<&str>) -> WsClient {
    let mut ws = app.connect().await;
    let mut hello = json!({"type": "hello", "v": 1, "brand_id": brand, "player_id": player});
    if let Some(token) = token {
        hello["token"] = json!(token);
    }
    ws.send(hello).await;
    ws
}

#[tokio::test]
async fn with_tokens_required_only_the_signed_player_receives_anything() {
    let app = TestApp::spawn().await;
    app.put_brand("12345", json!({"require_player_token": true}))
        .await;
    app.put_brand("other", json!({})).await;
    let secret = app.signing_secret("12345").await;
    let other_secret = app.signing_secret("other").await;
    let queued = app
        .queue_for(
            "12345",
            "p-42",
            json!({"kind": "image", "url": "https://aff.example/px"}),
        )
        .await;
    let day = now_secs() + 86_400;

    let attacks = [
        ("no token", None, (4507, "invalid_token")),
        (
            "garbage",
            Some("v1.123.abc".to_owned()),
            (4507, "invalid_token"),
        ),
        (
            "forged signature",
            Some(format!("v1.{day}.{}", "0f".repeat(32))),
            (4507, "invalid_token"),
        ),
        (
            "another player's token",
            Some(token(&secret, "12345", "p-41", day)),
            (4507, "invalid_token"),
        ),
        (
            "another brand's token for the same player id",
            Some(token(&other_secret, "other", "p-42", day)),
            (4507, "invalid_token"),
        ),
        (
            "another brand's secret",
            Some(token(&other_secret, "12345", "p-42", day)),
            (4507, "invalid_token"),
        ),
        (
            "an expired token",
            Some(token(&secret, "12345", "p-42", now_secs() - 1)),
            (4508, "token_expired"),
        ),
    ];
    for (attack, token, close) in &attacks {
        let mut ws = hello(&app, "12345", "p-42", token.as_deref()).await;
        // The first frame is the close: no welcome, no pixel.
        assert_eq!(ws.closed().await, (close.0, close.1.to_owned()), "{attack}");
    }
    assert_eq!(
        app.pending_ids_of("12345", "p-42").await,
        queued,
        "nothing was delivered or taken"
    );

    let mut ws = hello(
        &app,
        "12345",
        "p-42",
        Some(&token(&secret, "12345", "p-42", day)),
    )
    .await;
    assert_eq!(ws.recv().await["type"], "welcome");
    assert_eq!(
        ws.delivered().await,
        queued,
        "the signed player gets the pixel"
    );

    let refused = |reason| {
        format!(
            "pixelhub_websocket_player_tokens_refused_total{{reason=\"{reason}\",enforced=\"true\"}}"
        )
    };
    assert_eq!(app.metric(&refused("missing")).await, 1);
    assert_eq!(app.metric(&refused("malformed")).await, 1);
    assert_eq!(app.metric(&refused("bad_signature")).await, 4);
    assert_eq!(app.metric(&refused("expired")).await, 1);
}

#[tokio::test]
async fn a_rotated_signing_secret_honours_old_tokens_for_the_grace_period_only() {
    let app = TestApp::spawn().await;
    app.put_brand("12345", json!({"require_player_token": true}))
        .await;
    let old_secret = app.signing_secret("12345").await;
    let old = token(&old_secret, "12345", "p", now_secs() + 3600);

    let rotated = app
        .post_expecting(
            "/api/v1/brands/12345/signing-secret/rotate",
            json!({"grace_seconds": 60}),
            StatusCode::OK,
        )
        .await;
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, old_secret);
    assert!(rotated["previous_valid_until_ms"].as_u64().unwrap() > 0);
    for token in [&old, &token(new_secret, "12345", "p", now_secs() + 3600)] {
        let mut ws = hello(&app, "12345", "p", Some(token)).await;
        assert_eq!(
            ws.recv().await["type"],
            "welcome",
            "both secrets during the grace"
        );
    }

    app.post_expecting(
        "/api/v1/brands/12345/signing-secret/rotate",
        json!({"grace_seconds": 0}),
        StatusCode::OK,
    )
    .await;
    let mut ws = hello(&app, "12345", "p", Some(&old)).await;
    assert_eq!(ws.closed().await, (4507, "invalid_token".to_owned()));
}

#[tokio::test]
async fn without_enforcement_bad_tokens_are_counted_and_the_session_goes_on() {
    let app = TestApp::spawn().await;
    app.put_brand("12345", json!({})).await;
    let mut ws = hello(&app, "12345", "p", Some("v1.1.bad")).await;
    assert_eq!(ws.recv().await["type"], "welcome");
    let mut ws = hello(&app, "12345", "q", None).await;
    assert_eq!(
        ws.recv().await["type"],
        "welcome",
        "no token at all is fine too"
    );
    assert_eq!(
        app.metric("pixelhub_websocket_player_tokens_refused_total{reason=\"malformed\",enforced=\"false\"}"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_documented_token_recipes_make_tokens_the_hub_accepts() {
    let app = TestApp::spawn().await;
    app.put_brand("12345", json!({"require_player_token": true}))
        .await;
    let secret = app.signing_secret("12345").await;
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/security.md")).unwrap();
    let block = |lang: &str, starts: &str| -> String {
        doc.split(&format!("```{lang}\n"))
            .skip(1)
            .map(|rest| rest.split("\n```").next().unwrap())
            .find(|code| code.starts_with(starts))
            .unwrap_or_else(|| panic!("docs/security.md has no {lang} recipe starting {starts:?}"))
            .to_owned()
    };
    let recipes = [
        (
            "bash",
            vec![
                "-c".to_owned(),
                block("sh", "# SECRET, BRAND_ID and PLAYER_ID set"),
            ],
        ),
        (
            "node",
            vec![
                "-e".to_owned(),
                block("js", "const crypto")
                    + "\nconsole.log(playerToken(process.env.SECRET, process.env.BRAND_ID, process.env.PLAYER_ID));",
            ],
        ),
        (
            "python3",
            vec![
                "-c".to_owned(),
                block("python", "import hashlib")
                    + "\nimport os\nprint(player_token(os.environ['SECRET'], os.environ['BRAND_ID'], os.environ['PLAYER_ID']))",
            ],
        ),
        (
            "php",
            vec![
                "-r".to_owned(),
                block("php", "function player_token")
                    + "\necho player_token(getenv('SECRET'), getenv('BRAND_ID'), getenv('PLAYER_ID')), \"\\n\";",
            ],
        ),
    ];
    for (program, args) in recipes {
        let output = std::process::Command::new(program)
            .args(&args)
            .env("SECRET", &secret)
            .env("BRAND_ID", "12345")
            .env("PLAYER_ID", "p-42")
            .output()
            .unwrap_or_else(|e| {
                panic!("{program}: {e} (scripts/test installs openssl, node, python3 and php when missing)")
            });
        assert!(
            output.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let made = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        let expires: u64 = made.split('.').nth(1).unwrap().parse().unwrap();
        assert!(
            expires.abs_diff(now_secs() + 86_400) < 60,
            "{program}: a day: {made}"
        );
        assert_eq!(
            made,
            token(&secret, "12345", "p-42", expires),
            "{program} signs as the hub does"
        );
        let mut ws = hello(&app, "12345", "p-42", Some(&made)).await;
        assert_eq!(
            ws.recv().await["type"],
            "welcome",
            "{program}'s token opens the session"
        );
    }
}

#[tokio::test]
async fn brand_keys_act_for_their_own_brand_only() {
    let app = TestApp::spawn().await;
    app.put_brand("casino-a", json!({})).await;
    app.put_brand("casino-b", json!({})).await;
    let made = app
        .post_expecting(
            "/api/v1/brands/casino-a/api-keys",
            json!({"name": "back end"}),
            StatusCode::CREATED,
        )
        .await;
    let key = made["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("phk_"), "{key}");
    let as_key =
        |method: Method, path: &str| app.http.request(method, app.url(path)).bearer_auth(&key);

    // Its own brand: what a back end does.
    let queued = as_key(Method::POST, "/api/v1/brands/casino-a/players/p/pixels")
        .json(&json!({"kind": "image", "url": "https://aff.example/px"}))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), StatusCode::ACCEPTED);
    for path in [
        "/api/v1/brands/casino-a",
        "/api/v1/brands/casino-a/players/p/pixels",
        "/api/v1/brands/casino-a/deliveries",
        "/api/v1/brands/casino-a/signing-secret",
    ] {
        let answer = as_key(Method::GET, path).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
    }

    // Another brand, and what only the operator may do.
    let forbidden = [
        (Method::GET, "/api/v1/brands/casino-b"),
        (Method::POST, "/api/v1/brands/casino-b/players/p/pixels"),
        (Method::GET, "/api/v1/brands/casino-b/signing-secret"),
        (Method::PUT, "/api/v1/brands/casino-a"),
        (Method::POST, "/api/v1/brands/casino-a/api-keys"),
        (Method::GET, "/api/v1/brands/casino-a/api-keys"),
        (Method::GET, "/api/v1/backlogs?brand=casino-b"),
        (Method::GET, "/metrics"),
    ];
    for (method, path) in forbidden {
        let answer = as_key(method.clone(), path)
            .json(&json!({"kind": "image", "url": "https://aff.example/px"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
        assert!(!body.to_string().contains(&key[10..]), "no key in errors");
    }
    assert_eq!(
        app.pending_ids_of("casino-b", "p").await,
        Vec::<String>::new(),
        "nothing reached the other brand"
    );

    // Listed without the secret, then revoked.
    let keys = app.get_json("/api/v1/brands/casino-a/api-keys").await;
    let listed = &keys["keys"][0];
    assert_eq!(listed["id"], made["id"]);
    assert_eq!(listed["name"], "back end");
    assert!(listed.get("key").is_none() && listed.get("hash").is_none());
    assert!(
        !keys.to_string().contains(&key[21..]),
        "the listing holds no secret: {keys}"
    );
    let revoke = app
        .admin(
            Method::DELETE,
            &format!(
                "/api/v1/brands/casino-a/api-keys/{}",
                made["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    let after = as_key(Method::GET, "/api/v1/brands/casino-a")
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "a revoked key stops at once"
    );

    // Near misses are plain 401s.
    let mut tampered = key.clone();
    tampered.replace_range(key.len() - 4.., "0000");
    for bad in [tampered.as_str(), "phk_nothing", "admin"] {
        let answer = app
            .http
            .get(app.url("/api/v1/brands/casino-a"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    let missing = app
        .admin(
            Method::DELETE,
            "/api/v1/brands/casino-a/api-keys/0123456789abcdef",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

/// Upgrades from `origin` and says hello as player `p` of `brand`.
async fn hello_from(app: &TestApp, query: &str, origin: &str, brand: Value) -> WsClient {
    let mut ws = app.connect_from(query, Some(origin)).await.unwrap();
    ws.send(json!({"type": "hello", "v": 1, "brand_id": brand, "player_id": "p"}))
        .await;
    ws
}

#[tokio::test]
async fn pages_from_other_origins_are_refused_before_the_upgrade() {
    let app = TestApp::spawn().await;
    app.put_brand(
        "12345",
        json!({"allowed_origins": ["https://casino.example"]}),
    )
    .await;
    app.put_brand("open", json!({})).await;

    match app
        .connect_from("?brand_id=12345", Some("https://evil.example"))
        .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "origin_not_allowed");
        }
        other => panic!("expected a 403, got {:?}", other.map(|_| "an upgrade")),
    }

    // The same page without the brand in the URL gets as far as its hello.
    let mut ws = hello_from(&app, "", "https://evil.example", json!("12345")).await;
    assert_eq!(ws.closed().await, (4506, "origin_not_allowed".to_owned()));

    // The URL's brand and the hello's must agree: an open brand's URL cannot smuggle in a closed one.
    let mut ws = hello_from(
        &app,
        "?brand_id=open",
        "https://evil.example",
        json!("12345"),
    )
    .await;
    assert_eq!(ws.closed().await, (4502, "invalid_hello".to_owned()));

    let mut ws = hello_from(
        &app,
        "?brand_id=12345",
        "https://casino.example",
        json!(12345),
    )
    .await;
    assert_eq!(ws.recv().await["type"], "welcome", "the brand's own page");

    let bad_query = app
        .http
        .get(app.url("/websocket?brand_id=a%20b"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_query.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A deployment's own parameters ride along.
    let mut ws = hello_from(
        &app,
        "?region=eu&brand_id=12345",
        "https://casino.example",
        json!("12345"),
    )
    .await;
    assert_eq!(ws.recv().await["type"], "welcome");
}

#[tokio::test]
async fn pixels_may_only_do_what_the_brand_allows() {
    let app = TestApp::spawn().await;
    app.put_brand("12345", json!({})).await;
    app.put_brand("secure", json!({"https_only": true})).await;
    let refused = |brand: &str, pixel: Value| {
        let app = &app;
        let brand = brand.to_owned();
        async move {
            let answer = app.enqueue(&brand, "p", pixel).await;
            assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
            let body: Value = answer.json().await.unwrap();
            (
                body["error"]["code"].as_str().unwrap().to_owned(),
                body["error"]["message"].as_str().unwrap().to_owned(),
            )
        }
    };

    let (code, message) = refused("12345", json!({"kind": "js", "code": "steal()"})).await;
    assert_eq!(code, "kind_not_allowed");
    assert!(message.starts_with("pixel.kind"), "{message}");
    let (code, _) = refused(
        "12345",
        json!([{"kind": "image", "url": "https://a.example/"}, {"kind": "script", "url": "https://a.example/x.js"}]),
    )
    .await;
    assert_eq!(code, "kind_not_allowed");
    assert_eq!(
        refused(
            "12345",
            json!({"kind": "image", "url": "javascript:alert(1)"})
        )
        .await
        .0,
        "invalid_url"
    );
    assert_eq!(
        refused(
            "secure",
            json!({"kind": "iframe", "url": "http://a.example/"})
        )
        .await
        .0,
        "https_required"
    );
    assert_eq!(
        app.pending_ids_of("12345", "p").await,
        Vec::<String>::new(),
        "a refused batch queues nothing"
    );
    let ok = app
        .enqueue(
            "secure",
            "p",
            json!({"kind": "iframe", "url": "https://a.example/"}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::ACCEPTED);

    // Definitions are held to the same rules when saved.
    let define = |brand: &str, body: Value| {
        app.admin(
            Method::POST,
            &format!("/api/v1/brands/{brand}/pixel-definitions"),
        )
        .json(&body)
    };
    let js =
        json!({"id": "js", "name": "js", "trigger": "ftd", "kind": "js", "code": "f({{afp}})"});
    let answer = json_of(define("12345", js.clone())).await;
    assert_eq!(answer["error"]["code"], "kind_not_allowed", "{answer}");
    let http = json!({"name": "h", "trigger": "ftd", "kind": "image", "url": "http://aff.example/?c={{afp}}"});
    let answer = json_of(define("secure", http)).await;
    assert_eq!(answer["error"]["code"], "https_required", "{answer}");

    // A kind turned off after its definition was saved: the event fires nothing and says why.
    let all = json!({"allowed_kinds": ["image", "iframe", "script", "js", "facebook"]});
    app.put_brand("12345", all).await;
    assert_eq!(
        define("12345", js).send().await.unwrap().status(),
        StatusCode::CREATED
    );
    app.put_brand("12345", json!({})).await;
    let outcome = app
        .report(
            "12345",
            json!({"event_id": "e1", "type": "ftd", "player_id": "p2", "affiliate_id": "a1"}),
        )
        .await;
    assert_eq!(outcome[0]["pixels"], json!([]), "{outcome:?}");
    let error = outcome[0]["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("kind: js pixels are not allowed"),
        "{error}"
    );
    assert_eq!(
        app.pending_ids_of("12345", "p2").await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn macro_values_cannot_add_parameters_or_move_the_pixel() {
    let app = TestApp::spawn().await;
    app.put_brand("12345", json!({})).await;
    app.define(
        "12345",
        json!({"id": "reg", "name": "reg", "trigger": "registration", "kind": "image",
               "url": "https://aff.example/px?click={{afp}}&p={{player_id}}"}),
    )
    .await;
    let evil = [
        "x&amount=999999",
        "@evil.example",
        "//evil.example/x",
        "https://evil.example/",
        "#frag?c=1",
    ];
    for (i, afp) in evil.iter().enumerate() {
        let outcome = app
            .report(
                "12345",
                json!({"event_id": format!("r{i}"), "type": "registration", "player_id": "p",
                       "params": {"afp": afp}}),
            )
            .await;
        let url = outcome[0]["pixels"][0]["url"].as_str().unwrap().to_owned();
        let parsed = url::Url::parse(&url).unwrap();
        assert_eq!(parsed.host_str(), Some("aff.example"), "{afp} → {url}");
        let params: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(
            params,
            [
                ("click".to_owned(), afp.to_string()),
                ("p".to_owned(), "p".to_owned())
            ],
            "{afp} stays inside its parameter: {url}"
        );
    }
    let raw_host = json_of(
        app.admin(Method::POST, "/api/v1/brands/12345/pixel-definitions")
            .json(&json!({"name": "r", "trigger": "ftd", "kind": "image", "url": "https://{{host|raw}}/px"})),
    )
    .await;
    assert_eq!(raw_host["error"]["code"], "invalid_template", "{raw_host}");
}

#[tokio::test]
async fn a_js_macro_stands_only_where_a_value_can_so_a_click_value_never_runs() {
    let app = TestApp::spawn().await;
    let define = |code: &str| {
        app.admin(Method::POST, "/api/v1/brands/b1/pixel-definitions")
            .json(&json!({"name": "js", "trigger": "registration", "kind": "js", "code": code}))
    };
    // Each context with the value an affiliate's click would carry to break out of it.
    for (code, at, context) in [
        ("track('{{afp}}')", 8, "string"),
        ("x(); /* {{afp}} */", 9, "comment"),
        ("track(`x{{afp}}`)", 9, "template literal"),
        (
            "ok = /{{afp}}/.test(document.cookie)",
            7,
            "regular expression",
        ),
    ] {
        let answer = json_of(define(code)).await;
        assert_eq!(
            answer["error"]["code"], "invalid_template",
            "{code}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "definition.code: at character {at}: {{{{afp}}}} is inside"
            )) && message.contains(context),
            "{code}: {message}"
        );
    }

    // Where a value stands, the same hostile values stay one string literal.
    assert_eq!(
        define("track({{afp}}); /* ok */ `${ {{afp}} }`")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    let mut ws = app.session("p1").await;
    for (i, afp) in [
        "'+alert(1)+'",
        "*/alert(2);/*",
        "${alert(3)}",
        "/;alert(4);//",
    ]
    .iter()
    .enumerate()
    {
        app.report(
            "b1",
            json!({"event_id": format!("r{i}"), "type": "registration", "player_id": "p1",
                   "affiliate_id": "a1", "params": {"afp": afp}}),
        )
        .await;
        let delivered = ws.recv().await;
        let literal = serde_json::to_string(afp).unwrap();
        assert_eq!(
            delivered["pixels"][0]["code"],
            format!("track({literal}); /* ok */ `${{ {literal} }}`"),
            "{afp}"
        );
    }
}

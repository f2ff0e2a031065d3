//! `/api/v1/openapi.json`: the document is generated from the routes the hub runs, and this test holds it to
//! them from the outside: every operation it lists answers, with a status it documents, and every request
//! example it shows works as written.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// Routes without a brand in the path that answer a brand key for its own brand: the dashboard and
/// the figures it shows.
const FOR_THE_KEY: [&str; 6] = [
    "/api/v1/stats",
    "/api/v1/stats/history",
    "/api/v1/backlogs",
    "/dashboard",
    "/dashboard/dashboard.js",
    "/dashboard/dashboard.css",
];

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => {
                        out.insert(target.clone());
                    }
                    _ => refs(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

/// The order that lets each operation find what it needs: the brand first, then what creates things,
/// then changes and reads, and deletions last (one pixel before the whole queue).
fn rank(method: &str, path: &str) -> (u8, std::cmp::Reverse<usize>, usize) {
    let step = match method {
        "put" if path == "/api/v1/brands/{brand_id}" => 0,
        "post" => 1,
        "put" | "patch" => 2,
        "get" => 3,
        _ => 4,
    };
    let depth = path.matches('/').count();
    if step == 4 {
        (step, std::cmp::Reverse(depth), 0)
    } else {
        (step, std::cmp::Reverse(0), depth)
    }
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented_and_its_examples_work() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the document is public");
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    let mut targets = BTreeSet::new();
    refs(&doc, &mut targets);
    for target in &targets {
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{target} is named but not defined"
        );
    }
    for scheme in ["admin_token", "admin_basic", "brand_key"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object());
    }

    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    assert!(operations.len() >= 35, "{} operations", operations.len());
    operations.sort_by_key(|(path, method, _)| rank(method, path));

    // Brand keys: one of the walk's brand (made once the walk has created it), one of another brand.
    app.put_brand("other", json!({})).await;
    let other_key = app.create_key("other").await;
    let mut own_key = None;
    let mut walk_key_id = String::new();
    let mut answered = Vec::new();
    for (template, method, operation) in &operations {
        let context = format!("{} {template}", method.to_uppercase());
        assert!(
            operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{context} has no summary"
        );
        assert!(operation["tags"][0].is_string(), "{context} has no tag");
        let documented: BTreeSet<u16> = operation["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|status| status.parse().unwrap())
            .collect();
        let token = match template.contains("{token}") {
            true => app.get_json("/api/v1/brands/oa/inbound").await["token"]
                .as_str()
                .unwrap()
                .to_owned(),
            false => String::new(),
        };
        let path = template
            .replace("{brand_id}", "oa")
            .replace("{player_id}", "p-42")
            .replace("{pixel_id}", "ftd-p-42")
            .replace("{definition_id}", "ftd-image")
            .replace("{event_id}", "dep-1001")
            .replace("{event_type}", "deposit")
            .replace("{key_id}", &walk_key_id)
            .replace("{token}", &token);
        let verb = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut request = app.admin(verb.clone(), &path);
        let body = &operation["requestBody"]["content"];
        if let Some(example) = body["application/json"].get("example") {
            request = request.json(example);
        } else if body["text/csv"].is_object() {
            request = request
                .query(&[("type", "registrations")])
                .header("content-type", "text/csv")
                .body("player_id,affid\np-7,a9\n");
        } else if template.starts_with("/postback/") {
            request = request.query(&[("player_id", "p-9"), ("event_id", "e-9")]);
            if !template.contains("{event_type}") {
                request = request.query(&[("type", "registration")]);
            }
        }
        if template.starts_with("/client/") {
            // The browser's routes are called by the brand's pages, from an origin the brand lists.
            request = request.header("origin", "https://casino.example");
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        if template.ends_with("/api-keys") && method == "post" {
            walk_key_id = serde_json::from_str::<Value>(&text).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        if own_key.is_none() && template == "/api/v1/brands/{brand_id}" {
            own_key = Some(app.create_key("oa").await);
        }
        assert!(
            documented.contains(&status.as_u16()),
            "{context} answered {status}, which it does not document: {text}"
        );
        if template != "/websocket" {
            assert!(
                status.is_success(),
                "{context} with its documented example answered {status}: {text}"
            );
        }

        let secured = operation["security"]
            .as_array()
            .is_some_and(|needs| !needs.is_empty());
        assert_eq!(
            secured,
            documented.contains(&401) && !template.starts_with("/postback/"),
            "{context}: 401 is documented exactly where a token is required"
        );
        if secured {
            assert!(documented.contains(&403), "{context}: 403 for brand keys");
            let refused = app
                .http
                .request(verb.clone(), app.url(&path))
                .send()
                .await
                .unwrap();
            assert_eq!(
                refused.status(),
                StatusCode::UNAUTHORIZED,
                "{context} without a token"
            );
            // Another brand's key is refused, except where a route answers every key for its own
            // brand (the dashboard and its figures: tests/it/ops.rs).
            let foreign = app
                .http
                .request(verb.clone(), app.url(&path))
                .bearer_auth(&other_key)
                .send()
                .await
                .unwrap();
            if !FOR_THE_KEY.contains(&template.as_str()) {
                assert_eq!(
                    foreign.status(),
                    StatusCode::FORBIDDEN,
                    "{context} with another brand's key"
                );
            }
            let brand_scoped = operation["security"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s.get("brand_key").is_some());
            assert_eq!(
                brand_scoped,
                FOR_THE_KEY.contains(&template.as_str())
                    || template.starts_with("/api/v1/brands/{brand_id}")
                        && !template.contains("/api-keys")
                        && !(template == "/api/v1/brands/{brand_id}"
                            && (method == "put" || method == "patch")),
                "{context}: brand keys are documented on the brand's own routes, bar settings and keys"
            );
            if verb == Method::GET {
                let own = app
                    .http
                    .get(app.url(&path))
                    .bearer_auth(own_key.as_deref().unwrap())
                    .send()
                    .await
                    .unwrap();
                let expected = if brand_scoped {
                    status
                } else {
                    StatusCode::FORBIDDEN
                };
                assert_eq!(own.status(), expected, "{context} with the brand's own key");
            }
        }
        answered.push(context);
    }

    // Spot checks that the walk really reached the handlers.
    let event = app.get_json("/api/v1/brands/oa/events/dep-1001").await;
    assert_eq!(event["event_id"], "dep-1001");
    assert_eq!(
        app.get_json("/api/v1/brands/oa/players/p-42/pixels").await["pixels"],
        json!([]),
        "the purge, documented last, emptied the queue"
    );
    assert!(answered.iter().any(|c| c == "GET /api/v1/openapi.json"));
    let revoked = app
        .http
        .get(app.url("/api/v1/brands/oa/api-keys"))
        .bearer_auth(own_key.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        revoked.status(),
        StatusCode::FORBIDDEN,
        "listing keys needs the admin token"
    );
    let keys = app.get_json("/api/v1/brands/oa/api-keys").await;
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != walk_key_id.as_str()),
        "the documented DELETE revoked the key the documented POST made: {keys}"
    );
}

/// The document as client generators and linters read it: a standard validator accepts it, every
/// operation has its own descriptive id, public operations say they need no credentials, and it names
/// the server it was fetched from.
#[tokio::test]
async fn a_standard_validator_accepts_the_document() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} used twice");
            assert!(id.len() > 6, "{method} {path}: {id} says too little");
            assert!(
                operation["security"].is_array(),
                "{method} {path} does not say what credentials it needs"
            );
        }
    }
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        json!([]),
        "public operations need nothing"
    );
    assert_eq!(doc["servers"][0]["url"], app.url(""));

    // The Python reference validator (openapi-spec-validator), installed by ./scripts/test.
    let python = std::env::var("PIXELHUB_OPENAPI_PYTHON").unwrap_or_else(|_| "python3".into());
    let file = app.dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let output = std::process::Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{python} cannot run ({e}); run the tests with ./scripts/test"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !said.contains("No module named"),
        "openapi-spec-validator is not installed for {python}; run the tests with ./scripts/test: {said}"
    );
    assert!(
        output.status.success(),
        "the validator refuses the document: {said}"
    );
}

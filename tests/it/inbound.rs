//! Events that arrive other ways than JSON: inbound GET postback URLs and CSV imports (API and CLI); and
//! the delivery report that shows what they fired, as JSON pages and as CSV.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PATIENCE, TOKEN, TestApp};
use crate::receiver::Receiver;

impl TestApp {
    /// The brand's inbound URLs as the admin API shows them.
    pub(crate) async fn inbound(&self, brand: &str) -> Value {
        self.get_json(&format!("/api/v1/brands/{brand}/inbound"))
            .await
    }

    /// Brand `b1`'s delivery report as CSV.
    pub(crate) async fn deliveries_csv(&self) -> String {
        let response = self
            .admin(
                reqwest::Method::GET,
                "/api/v1/brands/b1/deliveries?format=csv",
            )
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }

    /// The brand's current inbound token.
    pub(crate) async fn inbound_token(&self, brand: &str) -> String {
        self.inbound(brand).await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Calls an inbound URL; `url` is as the admin API gives it, or a hand-made path.
    pub(crate) async fn call(&self, url: &str) -> (StatusCode, String) {
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            self.url(url)
        };
        let response = self.http.get(url).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub(crate) async fn import(
        &self,
        query: &str,
        csv: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .admin(
                reqwest::Method::POST,
                &format!("/api/v1/brands/b1/imports?{query}"),
            )
            // An upload is as long as its file: 50,000 rows take seconds in a debug build on a busy
            // machine. The tests are about what is imported, not how fast.
            .timeout(Duration::from_secs(120))
            .body(csv)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }
}

/// The issue's own definition, pointed at the local receiver.
fn ftd_postback(receiver: &Receiver) -> Value {
    json!({"id": "aff-ftd", "name": "Affiliate FTD", "trigger": "ftd", "kind": "s2s",
           "url": receiver.url("/postback?click_id={affclickid}&payout_sum={amount}&currency={currency}&source=pixelhub")})
}

#[tokio::test]
async fn an_ftd_postback_fires_once_after_a_deposit_reported_by_get() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    app.define("b1", ftd_postback(&receiver)).await;
    let inbound = app.inbound("b1").await;
    let token = inbound["token"].as_str().unwrap();
    let registration_url =
        format!("/postback/b1/{token}/registration?player_id=p-42&affclickid=abc-1");
    assert_eq!(
        app.call(&registration_url).await,
        (
            StatusCode::OK,
            "OK\npixels: 0\nfailed: 0\nskipped: 0\nunmatched: no enabled definition of the brand fires on registration\n".into()
        ),
        "the answer says that nothing fires on a registration"
    );

    // The deposit URL exactly as the admin API offers it, with its placeholders filled in.
    let deposit_url = inbound["urls"]["deposit"]
        .as_str()
        .unwrap()
        .replace("{player_id}", "p-42")
        .replace("{transaction_id}", "dep-1")
        .replace("{amount}", "50")
        .replace("{currency}", "EUR");
    assert_eq!(
        app.call(&deposit_url).await,
        (
            StatusCode::OK,
            "OK\npixels: 1\nfailed: 0\nskipped: 0\n".into()
        )
    );

    let started = Instant::now();
    let row = loop {
        let rows = app.deliveries("status=fired").await;
        if let Some(row) = rows.first() {
            break row.clone();
        }
        assert!(started.elapsed() < PATIENCE, "the postback never fired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let hits = receiver.hits_of("/postback");
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].query,
        "click_id=abc-1&payout_sum=50&currency=EUR&source=pixelhub"
    );
    assert_eq!(
        row["final_url"],
        receiver.url("/postback?click_id=abc-1&payout_sum=50&currency=EUR&source=pixelhub")
    );
    assert_eq!(
        (row["http_status"].clone(), row["attempts"].clone()),
        (json!(200), json!(1))
    );
    assert_eq!(
        (row["trigger"].clone(), row["event_id"].clone()),
        (json!("ftd"), json!("dep-1"))
    );
    assert_eq!(row["click_id"], "abc-1");

    // The back end retries its call: the same event, nothing sent again.
    assert_eq!(app.call(&deposit_url).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.hits_of("/postback").len(), 1);
}

#[tokio::test]
async fn inbound_urls_check_their_token_and_their_params() {
    let app = TestApp::spawn().await;
    let token = app.inbound("b1").await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    for path in [
        "/postback/b1/not-the-token/sale?player_id=p".to_owned(),
        format!("/postback/nobody/{token}/sale?player_id=p"),
    ] {
        let (status, body) = app.call(&path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_token");
    }
    for (query, code, names) in [
        ("/sale?amount=5", "missing_field", "player_id"),
        (
            "/deposit?player_id=p&amount=lots",
            "invalid_field",
            "amount",
        ),
        ("?player_id=p", "missing_event_type", ""),
        ("/sale?player_id=p&playerid=q", "invalid_field", "playerid"),
    ] {
        let (status, body) = app.call(&format!("/postback/b1/{token}{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], code, "{query}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(names),
            "{body}"
        );
    }

    // A Routy-style counter says which event it is; its params become the player's attribution.
    let (status, _) = app
        .call(&format!(
            "/postback/b1/{token}?signups=1&player_id=p7&btag=a_1b_2"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let attribution = app
        .get_json("/api/v1/brands/b1/players/p7/attribution")
        .await;
    assert_eq!(attribution["params"]["btag"], "a_1b_2");

    // Rotation: the old token keeps working for the grace period, and not without one.
    let rotate = |grace: u64| {
        app.admin(reqwest::Method::POST, "/api/v1/brands/b1/inbound/rotate")
            .json(&json!({ "grace_seconds": grace }))
    };
    let rotated: Value = rotate(3600).send().await.unwrap().json().await.unwrap();
    let new_token = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    assert!(rotated["previous_token_valid_until_ms"].is_u64());
    let sale = |t: &str| format!("/postback/b1/{t}/sale?player_id=p&event_id=s-{t}");
    assert_eq!(app.call(&sale(&token)).await.0, StatusCode::OK);
    assert_eq!(app.call(&sale(&new_token)).await.0, StatusCode::OK);
    let again: Value = rotate(0).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        app.call(&sale(&new_token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.call(&sale(again["token"].as_str().unwrap())).await.0,
        StatusCode::OK
    );
    let bad = rotate(0)
        .json(&json!({"grace_seconds": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

const SALES: &str = "\
PLAYER_ID,DEPOSITS,CURRENCY,TRANSACTION_DATE,AFFID
p1,50,EUR,2026-11-20,a9
p2,abc,EUR,2026-11-20,a9
p3,20.5,USD,2026-11-21 10:00:00,a7
p1,50,EUR,2026-11-20,a9
";

#[tokio::test]
async fn csv_imports_report_bad_rows_by_line_and_never_queue_twice() {
    let app = TestApp::spawn().await;
    app.define(
        "b1",
        json!({"name": "FTD", "trigger": "ftd", "kind": "image", "url": "https://px.example/?a={{amount}}"}),
    )
    .await;

    let (status, summary) = app.import("type=sales", SALES).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["type"], "sales");
    assert_eq!(
        (
            summary["rows"].clone(),
            summary["imported"].clone(),
            summary["duplicates"].clone(),
            summary["failed"].clone()
        ),
        (json!(4), json!(2), json!(1), json!(1)),
        "{summary}"
    );
    assert_eq!(summary["errors"][0]["line"], 3);
    assert_eq!(summary["errors"][0]["error"]["code"], "invalid_field");
    assert!(
        summary["errors"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("DEPOSITS")
    );
    assert_eq!(
        app.pending_ids("p1").await.len(),
        1,
        "each first deposit fires once"
    );
    assert_eq!(app.pending_ids("p3").await.len(), 1);

    let (_, again) = app.import("type=sales", SALES).await;
    assert_eq!(
        (again["imported"].clone(), again["duplicates"].clone()),
        (json!(0), json!(3))
    );
    assert_eq!(
        app.pending_ids("p1").await.len(),
        1,
        "re-uploading queues nothing"
    );

    // Registrations, with a mapping for a header the hub does not know.
    let registrations = "Customer,Signup Date,BTAG\nr1,2026-11-01,a_9b_1\n";
    let (status, summary) = app
        .import(
            "type=registrations&map=Customer:player_id,Signup%20Date:occurred_at",
            registrations,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["imported"], 1);
    let attribution = app
        .get_json("/api/v1/brands/b1/players/r1/attribution")
        .await;
    assert_eq!(attribution["params"]["btag"], "a_9b_1");

    // Whole-file problems are refused before any row.
    for (query, body, code) in [
        ("type=refunds", "player_id\np\n", "invalid_field"),
        ("type=sales", "amount,currency\n5,EUR\n", "missing_column"),
        ("type=sales", "", "empty_file"),
        ("type=sales&colour=red", "player_id\np\n", "invalid_query"),
    ] {
        let (status, answer) = app.import(query, body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {answer}"
        );
        assert_eq!(answer["error"]["code"], code, "{query}: {answer}");
    }
    let unknown = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/brands/nobody/imports?type=sales",
        )
        .body("player_id\np\n")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_large_csv_is_streamed_not_buffered() {
    let app = TestApp::spawn().await;
    const ROWS: usize = 50_000;
    // Generated while it is sent: neither side ever holds the file.
    let chunks = (0..=ROWS / 1000).map(|chunk| {
        let mut text = String::new();
        if chunk == 0 {
            text.push_str("player_id,btag\n");
        }
        for i in (chunk * 1000).min(ROWS)..((chunk + 1) * 1000).min(ROWS) {
            text.push_str(&format!("p{i},b{i}\n"));
        }
        Ok::<_, std::io::Error>(text)
    });
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let started = Instant::now();
    let (status, summary) = app.import("type=registrations", body).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["rows"], ROWS);
    assert_eq!(summary["imported"], ROWS);
    eprintln!("{ROWS} rows imported in {:?}", started.elapsed());
    let last = app
        .get_json(&format!(
            "/api/v1/brands/b1/players/p{}/attribution",
            ROWS - 1
        ))
        .await;
    assert_eq!(last["params"]["btag"], format!("b{}", ROWS - 1));
}

#[tokio::test]
async fn the_import_command_uploads_a_file_and_reports_refused_rows() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sales.csv");
    std::fs::write(&file, SALES).unwrap();
    let import = |token: &'static str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pixelhub"));
        command
            .args([
                "import",
                "--type",
                "sales",
                "--brand",
                "b1",
                "--hub",
                &app.url(""),
            ])
            .arg(&file)
            .env("PIXELHUB_ADMIN_TOKEN", token);
        // The hub runs on this test's runtime: wait for the command on another thread.
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let output = import(TOKEN).await.unwrap();
    assert_eq!(output.status.code(), Some(3), "some rows were refused");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (summary["imported"].clone(), summary["failed"].clone()),
        (json!(2), json!(1))
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 of 4 rows were refused"));

    let wrong = import("wrong-token-0123456789").await.unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
}

/// On a terminal, `pixelhub import` shows its progress (bytes, rows, rate, time left); piped, it prints
/// only the summary (the test above: nothing but the summary on stdout and the refusal on stderr).
#[tokio::test]
async fn the_import_command_shows_its_progress_only_on_a_terminal() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registrations.csv");
    let mut csv = String::from("player_id,affid,afp\n");
    for i in 0..20_000 {
        csv.push_str(&format!("p{i},a9,click-{i}\n"));
    }
    std::fs::write(&file, &csv).unwrap();
    let command = |through_a_terminal: bool| {
        let import = format!(
            "{} import --type registrations --brand b1 --hub {} {}",
            env!("CARGO_BIN_EXE_pixelhub"),
            app.url(""),
            file.display()
        );
        let mut command = if through_a_terminal {
            // util-linux's script(1) runs the command on a pseudo-terminal and copies what it draws.
            let mut c = std::process::Command::new("script");
            c.args(["-qec", &import, "/dev/null"]);
            c
        } else {
            let mut c = std::process::Command::new("sh");
            c.args(["-c", &import]);
            c
        };
        command.env("PIXELHUB_ADMIN_TOKEN", TOKEN);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let piped = command(false).await.unwrap();
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains("rows ·"),
        "no progress when piped: {stderr}"
    );
    assert!(!String::from_utf8_lossy(&piped.stdout).contains('\u{1b}'));

    let shown = command(true).await.unwrap();
    assert!(shown.status.success());
    let drawn = String::from_utf8_lossy(&shown.stdout);
    assert!(
        drawn.contains(" rows · ")
            && drawn.contains(" left")
            && (drawn.contains("MiB") || drawn.contains("KiB")),
        "progress on a terminal: {drawn}"
    );
    assert!(drawn.contains("\"imported\""), "and the summary: {drawn}");
}

#[tokio::test]
async fn the_report_reads_the_same_as_json_pages_and_as_csv() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    app.define("b1", ftd_postback(&receiver)).await;
    app.define(
        "b1",
        json!({"name": "FTD js", "trigger": "ftd", "kind": "js", "code": "track({{affclickid}})"}),
    )
    .await;
    for i in 0..3 {
        app.report(
            "b1",
            json!([
                {"event_id": format!("r{i}"), "type": "registration", "player_id": format!("p{i}"), "params": {"affclickid": format!("c,{i}\"x")}},
                {"event_id": format!("d{i}"), "type": "deposit", "player_id": format!("p{i}"), "params": {"amount": 10 + i}},
            ]),
        )
        .await;
    }
    app.queue(
        "p0",
        json!({"kind": "image", "url": "https://px.example/hand"}),
    )
    .await;
    while app.deliveries("status=fired").await.len() < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // JSON, two rows a page, following next_cursor.
    let mut json_rows = Vec::new();
    let mut path = "/api/v1/brands/b1/deliveries?limit=2".to_owned();
    loop {
        let page = app.get_json(&path).await;
        let rows = page["deliveries"].as_array().unwrap();
        assert!(rows.len() <= 2);
        json_rows.extend(rows.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => path = format!("/api/v1/brands/b1/deliveries?limit=2&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(json_rows.len(), 7);

    for request in [
        app.admin(reqwest::Method::GET, "/api/v1/brands/b1/deliveries")
            .header("accept", "text/csv"),
        app.admin(
            reqwest::Method::GET,
            "/api/v1/brands/b1/deliveries?format=csv",
        ),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let text = response.text().await.unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        let csv_rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(csv_rows.len(), json_rows.len());
        for (json_row, csv_row) in json_rows.iter().zip(&csv_rows) {
            for (column, cell) in header.iter().zip(csv_row.iter()) {
                let expected = match &json_row[column] {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => other.to_string(),
                };
                assert_eq!(cell, expected, "{column} of {}", json_row["id"]);
            }
        }
    }

    let js = json_rows.iter().find(|r| r["kind"] == "js").unwrap();
    assert!(js["code_digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(js["template"], "track({{affclickid}})");
    let bad = app
        .admin(
            reqwest::Method::GET,
            "/api/v1/brands/b1/deliveries?status=sent",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pending_retry")
    );
}

#[tokio::test]
async fn csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted_as_text() {
    // Click ids come from whoever holds an inbound URL or reports events. Opened in a spreadsheet, a cell
    // starting with = + - @ tab or CR would be a formula. (An affiliate's answer, the other such column,
    // is kept only from a public address, which a test cannot reach: the unit test of `csv_row` puts a
    // formula in every column.)
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    app.define(
        "b1",
        json!({"name": "reg", "trigger": "registration", "kind": "s2s", "url": receiver.url("/pb?c={clickid}")}),
    )
    .await;
    // The attack and the legitimate values side by side: ordinary ids with - = + inside stay as they are.
    let cases = [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("\u{FF1D}1+1", "'\u{FF1D}1+1"),
        ("abc-1=+@", "abc-1=+@"),
    ];
    let events: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (click, _))| json!({"event_id": format!("r{i}"), "type": "registration", "player_id": format!("p{i}"), "params": {"clickid": click}}))
        .collect();
    app.report("b1", Value::Array(events)).await;
    let started = Instant::now();
    while app.deliveries("status=fired").await.len() < cases.len() {
        assert!(
            started.elapsed() < PATIENCE * 2,
            "the postbacks never fired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let text = app.deliveries_csv().await;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|c| c == name).unwrap();
    let (player, click) = (column("player_id"), column("click_id"));
    let mut seen = 0;
    for row in reader.records().map(Result::unwrap) {
        let i: usize = row[player][1..].parse().unwrap();
        assert_eq!(&row[click], cases[i].1, "click id of p{i}");
        seen += 1;
    }
    assert_eq!(seen, cases.len());

    // The JSON report keeps every value exactly as it arrived: only the CSV is for spreadsheets.
    let json_row = app.deliveries("player_id=p0").await;
    assert_eq!(json_row[0]["click_id"], "=1+1");
}

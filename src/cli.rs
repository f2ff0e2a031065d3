//! Tools of the `pixelhub` binary besides serving: `pixelhub import`, which uploads a CSV file to a
//! running hub through its HTTP API, exactly as a script with curl would, so the API stays the one way in;
//! and `pixelhub repair-journal`, which works on a stopped hub's data dir.

use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;
use serde_json::Value;
use tokio_util::io::ReaderStream;

use crate::config::{ImportArgs, RepairArgs};

/// Streams `args.file` to the hub's import route and prints the hub's summary as JSON.
pub async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let token = match std::env::var("PIXELHUB_ADMIN_TOKEN") {
        Ok(token) if !token.is_empty() => token,
        _ => std::fs::read_to_string(&args.token_file)
            .with_context(|| {
                format!(
                    "no admin token: set PIXELHUB_ADMIN_TOKEN or pass --token-file (tried {})",
                    args.token_file.display()
                )
            })?
            .trim()
            .to_owned(),
    };
    let (reader, size): (Box<dyn tokio::io::AsyncRead + Send + Unpin>, Option<u64>) =
        if args.file.as_os_str() == "-" {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let file = tokio::fs::File::open(&args.file)
                .await
                .with_context(|| format!("cannot open {}", args.file.display()))?;
            let size = file.metadata().await.ok().map(|m| m.len());
            (Box::new(file), size)
        };
    let progress = progress_bar(size);
    let shown = progress.clone();
    let mut rows = 0u64;
    let body = reqwest::Body::wrap_stream(ReaderStream::new(reader).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            rows += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            shown.inc(bytes.len() as u64);
            // The header line is not a row.
            shown.set_message(format!("{} rows", rows.saturating_sub(1)));
        }
    }));
    let brand_url = format!(
        "{}/api/v1/brands/{}",
        args.hub.trim_end_matches('/'),
        args.brand
    );
    let client = reqwest::Client::new();
    // Token and brand first: a hub refusing them answers before reading the body and closes, which
    // a client still streaming a large file would only see as a broken connection.
    let check = client.get(&brand_url).bearer_auth(&token).send();
    let (status, answer) = answer_of(check, &args.hub).await?;
    if !status.is_success() {
        return refused(status, &answer);
    }
    let mut query = vec![("type", args.kind.as_str())];
    if let Some(map) = &args.map {
        query.push(("map", map));
    }
    let upload = client
        .post(format!("{brand_url}/imports"))
        .query(&query)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(body)
        .send();
    let (status, answer) = answer_of(upload, &args.hub).await?;
    progress.finish_and_clear();
    if !status.is_success() {
        return refused(status, &answer);
    }
    println!("{}", serde_json::to_string_pretty(&answer)?);
    let failed = answer["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        eprintln!(
            "{failed} of {} rows were refused; see errors (by line)",
            answer["rows"]
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// The upload's progress on stderr: bytes and rows sent, rate and time left (with the file's size), redrawn
/// a few times a second. Hidden when stderr is not a terminal, so scripts and logs get only the summary.
fn progress_bar(size: Option<u64>) -> indicatif::ProgressBar {
    let target = indicatif::ProgressDrawTarget::stderr_with_hz(4);
    let (bar, template) = match size {
        Some(size) => (
            indicatif::ProgressBar::with_draw_target(Some(size), target),
            "{bar:30} {bytes}/{total_bytes} · {msg} · {bytes_per_sec} · {eta} left",
        ),
        None => (
            indicatif::ProgressBar::with_draw_target(None, target),
            "{spinner} {bytes} · {msg} · {bytes_per_sec}",
        ),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template).expect("a valid progress template"),
    );
    bar.set_message("0 rows");
    bar
}

/// The hub's JSON answer to a request.
async fn answer_of(
    request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    hub: &str,
) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let response = request
        .await
        .with_context(|| format!("cannot reach the hub at {hub}"))?;
    let status = response.status();
    let text = response.text().await.context("the hub's answer was cut")?;
    let answer = serde_json::from_str(&text).with_context(|| {
        format!("the hub answered {status} with something else than JSON: {text}")
    })?;
    Ok((status, answer))
}

/// Prints a refusal (the answer on stdout, a sentence on stderr); exit code 1.
fn refused(status: reqwest::StatusCode, answer: &Value) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(answer)?);
    let message = answer["error"]["message"].as_str().unwrap_or("no message");
    eprintln!("import failed ({status}): {message}");
    Ok(ExitCode::from(1))
}

/// Repairs the journal of the stopped hub whose data dir is `args.data_dir`, printing what it kept and,
/// line by line, what it dropped (exit 0; 1 when it cannot).
pub fn repair_journal(args: RepairArgs) -> anyhow::Result<ExitCode> {
    let store = args.data_dir.join(crate::store::STORE_DIR);
    let journal = store.join(crate::store::JOURNAL_DIR);
    if !journal.is_dir() {
        anyhow::bail!(
            "{} holds no journal: is {} the hub's data dir?",
            store.display(),
            args.data_dir.display()
        );
    }
    // The hub holds this lock while it runs; repairing under it would race its writer.
    let lock = std::fs::File::open(store.join("db"))
        .with_context(|| format!("cannot open the store in {}", store.display()))?;
    fs2::FileExt::try_lock_exclusive(&lock).map_err(|_| {
        anyhow::anyhow!(
            "a hub is running on {}: stop it, then repair",
            args.data_dir.display()
        )
    })?;
    let repaired = crate::store::journal::repair(&journal)?;
    for dropped in &repaired.dropped {
        println!(
            "dropped {} bytes at byte {} of {}: {}",
            dropped.bytes,
            dropped.offset,
            dropped.file.display(),
            dropped.what
        );
    }
    println!(
        "kept {} records; dropped {} span(s). The hub starts on this journal now.",
        repaired.kept,
        repaired.dropped.len()
    );
    Ok(ExitCode::SUCCESS)
}

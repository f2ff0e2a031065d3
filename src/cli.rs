//! Tools of the `pixelhub` binary besides serving: `pixelhub import`, which uploads a CSV file to a
//! running hub through its HTTP API, exactly as a script with curl would, so the API stays the one way in.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;
use tokio_util::io::ReaderStream;

use crate::config::ImportArgs;

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
    let body = if args.file.as_os_str() == "-" {
        reqwest::Body::wrap_stream(ReaderStream::new(tokio::io::stdin()))
    } else {
        let file = tokio::fs::File::open(&args.file)
            .await
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        reqwest::Body::wrap_stream(ReaderStream::new(file))
    };
    let url = format!(
        "{}/api/v1/brands/{}/imports",
        args.hub.trim_end_matches('/'),
        args.brand
    );
    let mut query = vec![("type", args.kind.as_str())];
    if let Some(map) = &args.map {
        query.push(("map", map));
    }
    let response = reqwest::Client::new()
        .post(&url)
        .query(&query)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {}", args.hub))?;
    let status = response.status();
    let text = response.text().await.context("the hub's answer was cut")?;
    let answer: Value = serde_json::from_str(&text).with_context(|| {
        format!("the hub answered {status} with something else than JSON: {text}")
    })?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    if !status.is_success() {
        let message = answer["error"]["message"].as_str().unwrap_or("no message");
        eprintln!("import failed ({status}): {message}");
        return Ok(ExitCode::from(1));
    }
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

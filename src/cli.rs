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

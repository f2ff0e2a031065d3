//! `POST /api/v1/brands/{brand_id}/imports?type=registrations|sales[&map=…]`: a Registrations or Sales
//! CSV file, streamed, each good row becoming an event.
//!
//! The body is never held whole: a blocking task reads rows from it (see [`crate::import`]) and hands them
//! over a bounded channel to this handler, which reports them to the store in batches. Each batch is one
//! atomic, durable ingest, so a failure half-way leaves whole batches behind; and since every row's event
//! id is derived from its content, uploading the same file again finishes the job without doubling
//! anything.

use std::io;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use utoipa::ToSchema;

use super::admin::BrandPath;
use super::deliveries::Params;
use super::extract::ApiPath;
use super::{ApiError, AppState, ErrorBody};
use crate::event::Event;
use crate::import::{ColumnMap, ImportType, Row, Rows};
use crate::input::InputError;

/// Events per ingest: large enough to share fsyncs, small enough to keep each commit short.
const BATCH: usize = 500;
/// Rows read ahead of the store.
const READ_AHEAD: usize = 4 * BATCH;
/// Row errors listed in the answer; the rest are only counted.
const MAX_ERRORS_LISTED: usize = 1000;
/// Largest file accepted: 4 GiB, some 50 million rows.
pub const MAX_IMPORT_BYTES: u64 = 4 << 30;

/// What an import did.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(super) struct Summary {
    /// `registrations` or `sales`.
    #[serde(rename = "type")]
    #[schema(example = "registrations")]
    kind: &'static str,
    /// Data rows read (blank ones are skipped).
    rows: u64,
    /// Rows whose event was new.
    imported: u64,
    /// Rows whose event id was already known (an earlier upload, or an earlier row of this one).
    duplicates: u64,
    /// Pixels and postbacks the new events produced.
    pixels: u64,
    /// Definitions that matched a new event but could not render for its values: each is a `failed` row
    /// of the delivery report, with the reason.
    render_failed: u64,
    /// Definitions on a new event's type that did not fire for it (scope, audience, a condition).
    skipped: u64,
    /// Rows refused, each with its reason.
    failed: u64,
    /// The first refused rows: `{"line": N, "error": {"code", "message"}}`.
    errors: Vec<Value>,
}

/// Import a Registrations or Sales file
///
/// A CSV file (or JSON lines), streamed: each good row becomes an event, reported in durable batches of
/// 500. Row ids derive from their content, so uploading the same file again imports nothing twice.
#[utoipa::path(
    post,
    path = "/brands/{brand_id}/imports",
    operation_id = "importEvents",
    tag = "imports",
    params(
        BrandPath,
        ("type" = String, Query, description = "`registrations` or `sales`."),
        ("map" = Option<String>, Query, description = "Column renames, `our_name:their_header,…`."),
    ),
    request_body(content = String, description = "The file, up to 4 GiB; the header row names the columns.", content_type = "text/csv"),
    responses(
        (status = 200, description = "What the import did; refused rows are listed with their line.", body = Summary),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 413, description = "Over 4 GiB (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "A bad `type` or `map`, or a header without a required column.", body = ErrorBody),
        (status = 429, description = "A player's queue is at its cap (`queue_full`); batches before it are in, re-running is safe.", body = ErrorBody),
    )
)]
pub(super) async fn import(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let params = Params::read(raw.as_deref())?;
    let kind = ImportType::parse(&params.take("type").unwrap_or_default())?;
    let map = match params.take("map") {
        Some(spec) => ColumnMap::parse(&spec)?,
        None => ColumnMap::default(),
    };
    params.finish()?;
    let brand = path.brand_id;
    let qualification = state
        .ledger
        .brand(&brand)
        .await?
        .ok_or_else(|| ApiError::UnknownBrand(brand.to_string()))?
        .settings
        .qualification;

    let mut read = 0u64;
    let metrics = std::sync::Arc::clone(&state.metrics);
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| {
            // The summary's last row says the file stopped arriving; the limit is counted here.
            if super::body::timed_out(&e) {
                metrics.limit_hit(crate::limits::Limit::BodyTimeout);
            }
            io::Error::other(e)
        })?;
        read += chunk.len() as u64;
        if read > MAX_IMPORT_BYTES {
            return Err(io::Error::other(format!(
                "the file is larger than {MAX_IMPORT_BYTES} bytes; split it"
            )));
        }
        Ok(chunk)
    });
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let (tx, mut rx) = mpsc::channel::<Result<Row, InputError>>(READ_AHEAD);
    let reading = tokio::task::spawn_blocking(move || match Rows::new(reader, kind, &map) {
        Err(header) => {
            let _ = tx.blocking_send(Err(header));
        }
        Ok(rows) => {
            for row in rows {
                if tx.blocking_send(Ok(row)).is_err() {
                    return; // the handler gave up (store failure): stop reading
                }
            }
        }
    });

    let mut summary = Summary {
        kind: kind.as_str(),
        ..Summary::default()
    };
    let limits = state.config.param_limits();
    // A row of a type nobody knows is that row's error, not the whole batch's.
    let definitions = state.ledger.definitions(&brand).await?;
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    while let Some(item) = rx.recv().await {
        let mut row = item?; // a header problem refuses the whole file
        summary.rows += 1;
        if let Ok(event) = &row.result
            && let Err(refused) = limits.check(event, "")
        {
            state.metrics.limit_hit(crate::limits::Limit::EventParams);
            row.result = Err(refused);
        }
        if let Ok(event) = &row.result
            && let Err(unknown) =
                crate::event::check_types(std::slice::from_ref(event), &definitions, &qualification)
        {
            row.result = Err(InputError::new(
                "unknown_event_type",
                "type",
                unknown.to_string(),
            ));
        }
        match row.result {
            Ok(event) => batch.push(event),
            Err(_) => {
                summary.failed += 1;
                if summary.errors.len() < MAX_ERRORS_LISTED {
                    summary.errors.extend(row.error_report());
                }
            }
        }
        if batch.len() == BATCH {
            ingest(&state, &brand, &mut batch, &mut summary).await?;
        }
    }
    ingest(&state, &brand, &mut batch, &mut summary).await?;
    reading
        .await
        .map_err(|e| ApiError::Internal(format!("the CSV reader failed: {e}")))?;
    Ok(Json(
        serde_json::to_value(summary).expect("a summary serialises"),
    ))
}

async fn ingest(
    state: &AppState,
    brand: &crate::ids::BrandId,
    batch: &mut Vec<Event>,
    summary: &mut Summary,
) -> Result<(), ApiError> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcomes = state.ledger.ingest(brand, std::mem::take(batch)).await?;
    for outcome in outcomes {
        if outcome.duplicate {
            summary.duplicates += 1;
        } else {
            summary.imported += 1;
            summary.pixels += outcome.pixels.len() as u64;
            summary.render_failed += outcome.failed.len() as u64;
            summary.skipped += outcome.skipped.len() as u64;
        }
    }
    Ok(())
}

//! `GET /api/v1/brands/{brand_id}/deliveries`: the delivery report, as JSON pages or as one CSV stream.
//!
//! Both formats are made from the same rows: a CSV line is the JSON row's fields, in [`COLUMNS`] order,
//! with `missing` joined by spaces (the per-attempt log is JSON only; its last attempt is in the columns).
//! So the two can never disagree, except where a spreadsheet would read a cell as a formula: such a cell
//! gets a leading `'` ([`spreadsheet_safe`]). Click ids come from anyone holding an inbound URL and
//! responses from affiliates' endpoints, and the file is opened in Excel by affiliate managers.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::admin::BrandPath;
use super::extract::ApiPath;
use super::{ApiError, AppState, ErrorBody};
use crate::delivery::{Delivery, PixelStatus};
use crate::ids::{DefinitionId, PlayerId};
use crate::store::{Cursor, DeliveryQuery};

/// Rows per JSON page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// Most rows per JSON page.
const MAX_LIMIT: usize = 1000;
/// Rows fetched per store call while streaming CSV.
const CSV_PAGE: usize = 1000;

/// The report's columns, in CSV order; each is a field of the JSON row.
pub const COLUMNS: [&str; 27] = [
    "id",
    "player_id",
    "kind",
    "status",
    "trigger",
    "event_id",
    "definition_id",
    "definition_name",
    "template",
    "final_url",
    "code_digest",
    "click_id",
    "click_source",
    "affiliate_id",
    "missing",
    "method",
    "queued_at_ms",
    "sent_at_ms",
    "fired_at_ms",
    "updated_at_ms",
    "expires_at_ms",
    "attempts",
    "http_status",
    "response",
    "reason",
    "error",
    "next_attempt_at_ms",
];

/// The delivery report
///
/// Every pixel and postback of the brand, newest first, with its status, final URL, timings and attempts:
/// JSON pages (`next_cursor`), or the whole report as one CSV stream (`format=csv` or `Accept: text/csv`).
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/deliveries",
    operation_id = "listDeliveries",
    tag = "deliveries",
    params(
        BrandPath,
        ("format" = Option<String>, Query, description = "`json` (default) or `csv`."),
        ("player_id" = Option<String>, Query, description = "Only this player's rows."),
        ("status" = Option<PixelStatus>, Query, description = "Only rows in this status."),
        ("trigger" = Option<String>, Query, description = "Only rows of this trigger (`ftd`, `registration`…)."),
        ("kind" = Option<String>, Query, description = "Only rows of this kind: `image`, `iframe`, `script`, `js`, `facebook` or `s2s`."),
        ("definition_id" = Option<String>, Query, description = "Only rows this definition produced."),
        ("affiliate_id" = Option<String>, Query, description = "Only rows credited to this affiliate."),
        ("reason" = Option<String>, Query, description = "Only rows with this failure reason: a render failure's (`invalid_url`, `kind_not_allowed`…) or a browser's (`image_error`, `js_threw`, `js_syntax`, `fb_image_fallback`…); `browser` for every reason a browser gave."),
        ("from" = Option<String>, Query, description = "Queued at or after: RFC 3339 or Unix milliseconds."),
        ("to" = Option<String>, Query, description = "Queued before: RFC 3339 or Unix milliseconds."),
        ("limit" = Option<usize>, Query, description = "Rows per JSON page, 1 to 1000 (default 100); for CSV, the most rows."),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "`{\"deliveries\": [...], \"next_cursor\", \"flagged_definitions\"}`, or CSV: a header line, then one line per row with the JSON row's fields.", content(
            (Object = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 422, description = "A bad query parameter (`invalid_query`); the message names it.", body = ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::read(raw.as_deref())?;
    let csv = match params.take("format").as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(invalid(format!(
                "format: {other:?} is not a format; use json or csv"
            )));
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/csv")),
    };
    let limit = match params.take("limit") {
        None => None,
        Some(text) => Some(
            text.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n) || (csv && *n > 0))
                .ok_or_else(|| {
                    invalid(format!(
                        "limit: must be a whole number from 1 to {MAX_LIMIT}"
                    ))
                })?,
        ),
    };
    let query = DeliveryQuery {
        player: params
            .take("player_id")
            .map(|p| PlayerId::parse(&p).map_err(|e| invalid(e.to_string())))
            .transpose()?,
        status: params
            .take("status")
            .map(|s| {
                PixelStatus::parse(&s).ok_or_else(|| {
                    let all: Vec<&str> = PixelStatus::ALL.iter().map(|s| s.as_str()).collect();
                    invalid(format!(
                        "status: {s:?} is not a status; use one of {}",
                        all.join(", ")
                    ))
                })
            })
            .transpose()?,
        trigger: params.take("trigger"),
        kind: params.take("kind"),
        definition: params
            .take("definition_id")
            .map(|d| DefinitionId::parse(&d).map_err(|e| invalid(e.to_string())))
            .transpose()?,
        affiliate: params.take("affiliate_id"),
        reason: params.take("reason"),
        from_ms: params
            .take("from")
            .map(|t| time_ms("from", &t))
            .transpose()?,
        to_ms: params.take("to").map(|t| time_ms("to", &t)).transpose()?,
        limit: limit.unwrap_or(if csv { usize::MAX } else { DEFAULT_LIMIT }),
        after: params
            .take("cursor")
            .map(|c| {
                c.parse::<Cursor>().map_err(|()| {
                    invalid("cursor: not a cursor this report gave out (use next_cursor as it is)")
                })
            })
            .transpose()?,
    };
    params.finish()?;
    let brand = path.brand_id;
    if !csv {
        let page = state.ledger.deliveries(&brand, &query).await?;
        let next = page.next.map(|c| c.to_string());
        let flagged = flagged(&state, &brand).await?;
        return Ok(Json(json!({
            "deliveries": page.rows,
            "next_cursor": next,
            "flagged_definitions": flagged,
        }))
        .into_response());
    }
    // Fail before the 200 when the brand is unknown; later failures can only end the stream early.
    state
        .ledger
        .brand(&brand)
        .await?
        .ok_or_else(|| ApiError::UnknownBrand(brand.to_string()))?;
    let header_line = csv_line(COLUMNS.iter().map(|c| c.to_string()));
    let store = state.ledger.clone();
    let pages = futures::stream::unfold((Some(query), store), move |(query, store)| {
        let brand = brand.clone();
        async move {
            let mut query = query?;
            let left = query.limit;
            query.limit = left.min(CSV_PAGE);
            let page = match store.deliveries(&brand, &query).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "streaming the delivery report failed");
                    return Some((Err(std::io::Error::other(e.to_string())), (None, store)));
                }
            };
            let mut chunk = String::new();
            for row in &page.rows {
                chunk.push_str(&csv_row(row));
            }
            let next = match page.next {
                Some(cursor) if left > page.rows.len() => Some(DeliveryQuery {
                    after: Some(cursor),
                    limit: left - page.rows.len(),
                    ..query
                }),
                _ => None,
            };
            Some((Ok(chunk), (next, store)))
        }
    });
    let body = futures::stream::once(async move { Ok(header_line) }).chain(pages);
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"deliveries.csv\""),
    );
    Ok(response)
}

/// The brand's definitions whose postbacks failed `--s2s-failure-threshold` times in a row, with their
/// health: shown with every report page and counted in the stats, so a dead endpoint is noticed.
pub(super) async fn flagged(
    state: &AppState,
    brand: &crate::ids::BrandId,
) -> Result<Vec<Value>, ApiError> {
    let threshold = state.config.s2s_failure_threshold;
    Ok(state
        .ledger
        .definition_health(brand)
        .await?
        .into_iter()
        .filter(|(_, h)| u64::from(h.consecutive_failures) >= threshold)
        .map(|(id, health)| {
            let mut row = serde_json::to_value(health).expect("health serialises");
            row["definition_id"] = json!(id);
            row
        })
        .collect())
}

/// One report row as a CSV line, from its JSON form.
pub fn csv_row(row: &Delivery) -> String {
    let value = serde_json::to_value(row).expect("a delivery serialises");
    csv_line(COLUMNS.iter().map(|column| {
        match &value[*column] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        }
    }))
}

/// One CSV line of `fields`, each made [`spreadsheet_safe`] and quoted: every CSV the hub writes goes
/// through here. Every field is quoted, not only those holding a comma, because a spreadsheet in a locale
/// whose list separator is `;` (German, French…) splits unquoted fields on `;`: `x;=1+1` would become a
/// cell of its own starting with `=`.
fn csv_line(fields: impl Iterator<Item = String>) -> String {
    let mut writer = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(Vec::new());
    writer
        .write_record(fields.map(spreadsheet_safe).collect::<Vec<_>>())
        .expect("writing to memory cannot fail");
    String::from_utf8(writer.into_inner().expect("writing to memory cannot fail"))
        .expect("fields were UTF-8")
}

/// Characters that make a spreadsheet (Excel, LibreOffice, Google Sheets) read a cell as a formula when
/// they start it: OWASP's list (`=`, `+`, `-`, `@`, tab, carriage return), and the full-width forms of the
/// first four, which some locales' Excel treats alike.
const FORMULA_STARTS: [char; 10] = [
    '=', '+', '-', '@', '\t', '\r', '\u{FF1D}', '\u{FF0B}', '\u{FF0D}', '\u{FF20}',
];

/// `cell` as a spreadsheet shows it as text: a cell that would start a formula gets a leading `'`, which
/// spreadsheets take as "text follows" and do not display. Everything else is left exactly as it is (the
/// CSV writer quotes separators and quotes), so ordinary values such as `abc-1` read back unchanged.
pub fn spreadsheet_safe(cell: String) -> String {
    if cell.starts_with(FORMULA_STARTS) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// A time bound: RFC 3339, or Unix milliseconds.
fn time_ms(name: &str, text: &str) -> Result<u64, ApiError> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .ok_or_else(|| {
            invalid(format!(
                "{name}: {text:?} is neither an RFC 3339 time (2026-11-22T10:00:00Z) nor Unix milliseconds"
            ))
        })
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        code: "invalid_query",
        message: message.into(),
    }
}

/// Query parameters, taken one by one so that whatever is left over is refused by name.
pub(super) struct Params(std::cell::RefCell<HashMap<String, String>>);

impl Params {
    /// Reads a raw query string; a parameter given twice is refused, since only one value could count.
    pub(super) fn read(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if map.insert(name.to_string(), value.into_owned()).is_some() {
                return Err(invalid(format!("{name}: given more than once")));
            }
        }
        Ok(Params(std::cell::RefCell::new(map)))
    }

    /// The parameter's value; an empty one counts as absent.
    pub(super) fn take(&self, name: &str) -> Option<String> {
        self.0.borrow_mut().remove(name).filter(|v| !v.is_empty())
    }

    /// Fails on the first parameter nobody took.
    pub(super) fn finish(self) -> Result<(), ApiError> {
        match self.0.into_inner().into_keys().next() {
            Some(extra) => Err(invalid(format!("{extra}: not a parameter of this route"))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_that_start_a_formula_read_as_text_and_nothing_else_changes() {
        for (cell, safe) in [
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("\u{FF1D}1", "'\u{FF1D}1"),
            ("abc-1", "abc-1"),
            ("https://a.example/?x=1", "https://a.example/?x=1"),
            ("1764000000000", "1764000000000"),
            ("", ""),
        ] {
            assert_eq!(spreadsheet_safe(cell.to_owned()), safe, "{cell:?}");
        }
        assert_eq!(
            csv_line(["=1+1,2".to_owned(), "a\"b".to_owned(), "x;=1+1".to_owned()].into_iter()),
            "\"'=1+1,2\",\"a\"\"b\",\"x;=1+1\"\n",
            "every field quoted, so a `;` never splits one in a spreadsheet that separates on it"
        );
    }

    #[test]
    fn every_column_of_a_report_row_is_made_safe() {
        // Whatever a column holds (a click id from an inbound URL, an affiliate's answer, a trigger, a
        // template), a formula in it reaches the CSV as text.
        let formula = "=HYPERLINK(\"https://evil.example/\",\"x\")";
        let row: Delivery = serde_json::from_value(json!({
            "id": "px-1", "player_id": "p-1", "kind": "s2s", "status": "fired",
            "trigger": formula, "event_id": "e-1", "definition_id": "d-1",
            "definition_name": formula, "template": formula, "final_url": formula,
            "code_digest": formula, "click_id": formula, "missing": [],
            "method": formula, "queued_at_ms": 1, "updated_at_ms": 1, "attempts": 1, "http_status": 200,
            "response": formula, "error": formula,
        }))
        .expect("a report row");
        let line = csv_row(&row);
        let cells: Vec<String> = csv::Reader::from_reader(
            format!("{}{line}", csv_line(COLUMNS.iter().map(|c| c.to_string()))).as_bytes(),
        )
        .records()
        .next()
        .unwrap()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
        for (column, cell) in COLUMNS.iter().zip(&cells) {
            assert!(!cell.starts_with('='), "{column}: {cell}");
        }
        let response = COLUMNS.iter().position(|c| *c == "response").unwrap();
        assert_eq!(cells[response], format!("'{formula}"));
    }
}

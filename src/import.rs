//! Events from uploaded CSV files: the Registrations and Sales exports affiliate platforms produce.
//!
//! A file may hold a million rows, so it is read as a stream: [`Rows`] holds the header and one row at a
//! time, and yields each row's event or error as soon as the row is read. A bad row is that row's error,
//! reported with its line number, never the end of the import; only a file whose header cannot be used
//! (or whose bytes stop arriving) ends it. Each row is one flat record for [`crate::flat`], so a row is
//! valid by the same rules as a JSON event, and its derived id is the same on every upload of the file.
//!
//! The reading is plain blocking code over [`std::io::Read`]; the API runs it on a blocking thread.

use std::io::Read;

use csv::ByteRecord;
use serde_json::{Value, json};

use crate::event::Event;
use crate::flat::{Field, IdBasis, Kind, Options, Record, Target};
use crate::input::InputError;

/// Starts the event ids derived for rows without an event id, apart from other front ends' ids.
pub const ID_PREFIX: &str = "csv-";

/// The code of the row that ends an import whose bytes stopped arriving; it is always the last row.
pub const READ_FAILED: &str = "read_failed";

/// What spreadsheet programs put before the first header cell of a "CSV UTF-8" file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

const NOT_UTF8: &str = "is not UTF-8 text; save the file as CSV UTF-8";

/// Which export a file is; it decides each row's event type and how its id is derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportType {
    /// One `registration` per row. A derived id hashes the type and player id only: a player registers
    /// once, so a later export of the same players, with more columns or corrected values, names the
    /// same events and is recognised as duplicates.
    Registrations,
    /// One event per row: the row's `type`, else `deposit` when `amount` is above zero, else `sale`. A
    /// derived id hashes the whole row, since one player has many sales.
    Sales,
}

impl ImportType {
    /// Reads the `type` query parameter of an import.
    pub fn parse(text: &str) -> Result<Self, InputError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "registrations" => Ok(Self::Registrations),
            "sales" => Ok(Self::Sales),
            _ => Err(InputError::new(
                "invalid_field",
                "type",
                "must be registrations or sales",
            )),
        }
    }

    /// The name [`ImportType::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registrations => "registrations",
            Self::Sales => "sales",
        }
    }
}

/// What a column is used for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Use {
    /// Its values fill this field or param.
    Take(Target),
    /// Mapped to `-`: its values are dropped.
    Ignore,
    /// The header cell is empty: its values must be too, since nothing says what they are.
    Unnamed,
}

/// The caller's renaming of columns (`map=Header One:player_id,DEPOSITS:amount`), for exports whose
/// headers no alias covers. Given per import rather than stored, so one brand can upload exports of
/// several platforms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnMap {
    /// Source column (trimmed, as written) and what it becomes.
    entries: Vec<(String, Use)>,
}

impl ColumnMap {
    /// Reads comma-separated `source:target` pairs. A source is a header cell, matched without regard to
    /// case or surrounding blanks (split at its last `:`, so a header may contain one, but not a comma).
    /// A target is a field's canonical name, `param.NAME`, or `-` to ignore the column.
    pub fn parse(text: &str) -> Result<Self, InputError> {
        let error = |message: String| InputError::new("invalid_field", "map", message);
        let mut entries: Vec<(String, Use)> = Vec::new();
        for part in text.split(',').filter(|part| !part.trim().is_empty()) {
            let Some((source, target)) = part.rsplit_once(':') else {
                return Err(error(format!("{:?} is not source:target", part.trim())));
            };
            let (source, target) = (source.trim(), target.trim());
            if source.is_empty() {
                return Err(error(format!("{:?} names no source column", part.trim())));
            }
            let target = if target == "-" {
                Use::Ignore
            } else if let Some(name) = target.strip_prefix("param.") {
                if name.trim().is_empty() {
                    return Err(error(format!("{:?} names no param", part.trim())));
                }
                Use::Take(Target::param(name))
            } else if let Some(field) = Field::from_canonical(target) {
                Use::Take(Target::Field(field))
            } else {
                let fields: Vec<&str> = Field::ALL.iter().map(|field| field.name()).collect();
                return Err(error(format!(
                    "{target:?} is not a target: use one of {}, param.NAME, or - to ignore the column",
                    fields.join(", ")
                )));
            };
            if entries
                .iter()
                .any(|(seen, _)| seen.eq_ignore_ascii_case(source))
            {
                return Err(error(format!("maps the column {source:?} twice")));
            }
            entries.push((source.to_owned(), target));
        }
        Ok(Self { entries })
    }

    /// Whether the map renames nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One column of the file.
#[derive(Debug)]
struct Column {
    /// The header cell as written (trimmed), or `column N` when it is empty; error paths name it.
    name: String,
    use_: Use,
}

/// One row's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The 1-based line of the file where the row starts (the header is line 1), so that the person who
    /// fixes the file finds it; a quoted value may span lines.
    pub line: u64,
    /// The row's event, or why it has none. Errors name the column as its header wrote it.
    pub result: Result<Event, InputError>,
}

impl Row {
    /// The row's entry in an import's error report, `{"line":N,"error":{"code":…,"message":…}}`; `None`
    /// for a good row. The message starts with the column, as every input error's does.
    pub fn error_report(&self) -> Option<Value> {
        let error = self.result.as_ref().err()?;
        Some(json!({
            "line": self.line,
            "error": {"code": error.code, "message": error.to_string()},
        }))
    }
}

/// The rows of one CSV file, read one at a time: memory holds the header and the current row, never
/// the file. Iterate to get each row's [`Row`]; rows with no value at all (spreadsheets often end with
/// some) are skipped.
pub struct Rows<R: Read> {
    reader: csv::Reader<R>,
    kind: ImportType,
    columns: Vec<Column>,
    /// Reused for every row.
    record: ByteRecord,
    /// Set at the end of the file, and after a read error: a broken stream is not read again.
    done: bool,
}

impl<R: Read> std::fmt::Debug for Rows<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows")
            .field("kind", &self.kind)
            .field("columns", &self.columns)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Rows<R> {
    /// Reads and checks the header line of `input`. The whole import is refused (`empty_file`,
    /// `invalid_header`, `missing_column`, `read_failed`) when there is no header, a header cell is not
    /// UTF-8, two columns would fill the same field or param, the map names a column the file lacks, or
    /// no column gives the player id: each of these would otherwise fail every row alike.
    pub fn new(input: R, kind: ImportType, map: &ColumnMap) -> Result<Self, InputError> {
        // Records end at `\n` only: with the csv crate's default CRLF terminator a record ends at `\r`,
        // and the `\n` that follows is counted into the next record's starting line. A `\r` before the
        // `\n` is then part of the last value, and trimmed away with the other blanks.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(input);
        let mut header = ByteRecord::new();
        loop {
            match reader.read_byte_record(&mut header) {
                Ok(true) if is_blank(&header) => continue,
                Ok(true) => break,
                Ok(false) => {
                    return Err(InputError::new(
                        "empty_file",
                        "file",
                        "has no header line; the first line must name the columns",
                    ));
                }
                Err(error) => return Err(read_failed(&error)),
            }
        }
        let mut names = Vec::with_capacity(header.len());
        for (index, cell) in header.iter().enumerate() {
            let cell = match index {
                0 => cell.strip_prefix(BOM).unwrap_or(cell),
                _ => cell,
            };
            let name = std::str::from_utf8(cell.trim_ascii()).map_err(|_| {
                InputError::new("invalid_header", format!("column {}", index + 1), NOT_UTF8)
            })?;
            names.push(name.to_owned());
        }
        Ok(Self {
            reader,
            kind,
            columns: columns(names, map)?,
            record: ByteRecord::new(),
            done: false,
        })
    }

    /// The row just read, as an event.
    fn event(&self) -> Result<Event, InputError> {
        if self.record.len() != self.columns.len() {
            return Err(InputError::new(
                "invalid_row",
                "row",
                format!(
                    "has {} values, but the header line names {} columns",
                    self.record.len(),
                    self.columns.len()
                ),
            ));
        }
        let mut record = Record::default();
        for (column, cell) in self.columns.iter().zip(self.record.iter()) {
            let cell = cell.trim_ascii();
            if cell.is_empty() || column.use_ == Use::Ignore {
                continue;
            }
            let value = std::str::from_utf8(cell)
                .map_err(|_| InputError::new("invalid_field", column.name.clone(), NOT_UTF8))?;
            match &column.use_ {
                Use::Take(target) => record.insert(target.clone(), &column.name, value)?,
                Use::Ignore => {}
                Use::Unnamed => {
                    return Err(InputError::new(
                        "invalid_field",
                        column.name.clone(),
                        "has a value, but the header line gives its column no name",
                    ));
                }
            }
        }
        let options = match self.kind {
            ImportType::Registrations => Options {
                kind: Kind::Fixed("registration"),
                id_prefix: ID_PREFIX,
                id_basis: IdBasis::Player,
                id_suffix: "",
            },
            ImportType::Sales => {
                let deposit = record.amount()?.is_some_and(|amount| amount > 0.0);
                Options {
                    kind: Kind::RecordOr(if deposit { "deposit" } else { "sale" }),
                    id_prefix: ID_PREFIX,
                    id_basis: IdBasis::Content,
                    id_suffix: "",
                }
            }
        };
        record.to_event(&options)
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        while !self.done {
            let before = self.reader.position().line();
            match self.reader.read_byte_record(&mut self.record) {
                Ok(true) => {}
                Ok(false) => self.done = true,
                Err(error) => {
                    self.done = true;
                    return Some(Row {
                        line: before,
                        result: Err(read_failed(&error)),
                    });
                }
            }
            if self.done || is_blank(&self.record) {
                continue;
            }
            let line = first_line(before, self.reader.position().line(), &self.record);
            return Some(Row {
                line,
                result: self.event(),
            });
        }
        None
    }
}

/// Decides each column's use from its header cell and the map, and refuses a header no row could get
/// right.
fn columns(names: Vec<String>, map: &ColumnMap) -> Result<Vec<Column>, InputError> {
    let mut mapped = vec![false; map.entries.len()];
    let mut columns = Vec::with_capacity(names.len());
    for (index, name) in names.into_iter().enumerate() {
        if name.is_empty() {
            columns.push(Column {
                name: format!("column {}", index + 1),
                use_: Use::Unnamed,
            });
            continue;
        }
        let use_ = match map
            .entries
            .iter()
            .position(|(source, _)| source.eq_ignore_ascii_case(&name))
        {
            Some(at) => {
                mapped[at] = true;
                map.entries[at].1.clone()
            }
            None => Use::Take(Target::of(&name)),
        };
        columns.push(Column { name, use_ });
    }
    if let Some(at) = mapped.iter().position(|found| !found) {
        return Err(InputError::new(
            "invalid_header",
            "map",
            format!(
                "names the column {:?}, which the header line does not have",
                map.entries[at].0
            ),
        ));
    }

    let mut filled: Vec<(String, &str)> = Vec::new();
    for column in &columns {
        let Use::Take(target) = &column.use_ else {
            continue;
        };
        let what = match target {
            Target::Field(field) => field.name().to_owned(),
            Target::Param(name) => format!("the param {}", name.to_ascii_lowercase()),
        };
        if let Some((_, first)) = filled.iter().find(|(seen, _)| *seen == what) {
            return Err(InputError::new(
                "invalid_header",
                column.name.clone(),
                format!(
                    "gives {what}, as the column {first} does; rename one, or map it to - to ignore it"
                ),
            ));
        }
        filled.push((what, column.name.as_str()));
    }

    let player = Target::Field(Field::PlayerId);
    if !columns
        .iter()
        .any(|column| column.use_ == Use::Take(player.clone()))
    {
        return Err(InputError::new(
            "missing_column",
            Field::PlayerId.name(),
            format!(
                "no column gives the player id: name one {}, or map yours with map=Your Column:player_id",
                Field::PlayerId.aliases().join(" or ")
            ),
        ));
    }
    Ok(columns)
}

/// Whether a record has no value at all: a blank line, or a spreadsheet's row of empty cells.
fn is_blank(record: &ByteRecord) -> bool {
    record.iter().all(|cell| cell.trim_ascii().is_empty())
}

/// The line a record starts on. The reader's position before the read is one candidate, but it still
/// points at any blank lines the read skipped; counting back from where the read ended, over the line
/// breaks inside quoted values, is exact whenever the record ended with a line break. The later of the
/// two is right in every case but a blank line before a last line that lacks its line break.
fn first_line(before: u64, after: u64, record: &ByteRecord) -> u64 {
    let breaks_inside = record
        .as_slice()
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count() as u64;
    after.saturating_sub(1 + breaks_inside).max(before)
}

fn read_failed(error: &csv::Error) -> InputError {
    InputError::new(
        READ_FAILED,
        "file",
        format!("could not be read to the end ({error}); rows from here on were not imported"),
    )
}

#[cfg(test)]
mod tests {
    use std::io;

    use serde_json::json;

    use super::*;
    use crate::ids::ID_RULE;

    fn read(file: &str, kind: ImportType, map: &str) -> Vec<Row> {
        let map = ColumnMap::parse(map).unwrap();
        Rows::new(file.as_bytes(), kind, &map).unwrap().collect()
    }

    /// Each row as its line and `type player` for an event, `code path` for an error.
    fn summary(rows: &[Row]) -> Vec<(u64, String)> {
        rows.iter()
            .map(|row| {
                let what = match &row.result {
                    Ok(event) => format!("{} {}", event.kind, event.player_id),
                    Err(error) => format!("{} {}", error.code, error.path),
                };
                (row.line, what)
            })
            .collect()
    }

    fn expected(rows: &[(u64, &str)]) -> Vec<(u64, String)> {
        rows.iter()
            .map(|(line, what)| (*line, what.to_string()))
            .collect()
    }

    fn ids(rows: &[Row]) -> Vec<String> {
        rows.iter()
            .map(|row| row.result.as_ref().unwrap().event_id.as_str().to_owned())
            .collect()
    }

    fn refused(file: &[u8], map: &str) -> (&'static str, String) {
        let map = ColumnMap::parse(map).unwrap();
        let error = Rows::new(file, ImportType::Sales, &map).unwrap_err();
        (error.code, error.path)
    }

    #[test]
    fn each_row_of_a_registrations_file_is_a_registration() {
        let rows = read(
            "player_id,affid,afp\np1,a9,x\np2,,y\n",
            ImportType::Registrations,
            "",
        );

        assert_eq!(
            summary(&rows),
            expected(&[(2, "registration p1"), (3, "registration p2")])
        );
        let first = rows[0].result.as_ref().unwrap();
        assert_eq!(first.affiliate_id.as_deref(), Some("a9"));
        assert_eq!(first.params["afp"], json!("x"));
        assert!(first.event_id.as_str().starts_with("csv-"));
        assert_eq!(rows[1].result.as_ref().unwrap().affiliate_id, None);
    }

    #[test]
    fn a_bad_row_is_reported_with_its_line_and_later_rows_still_come() {
        let rows = read(
            "player_id,amount\np1,10\np 2,5\np3,abc\np4,7\n",
            ImportType::Sales,
            "",
        );

        assert_eq!(
            summary(&rows),
            expected(&[
                (2, "deposit p1"),
                (3, "invalid_field player_id"),
                (4, "invalid_field amount"),
                (5, "deposit p4"),
            ])
        );
        assert_eq!(
            rows[1].error_report(),
            Some(
                json!({"line": 3, "error": {"code": "invalid_field", "message": format!("player_id: {ID_RULE}")}})
            )
        );
        assert_eq!(rows[0].error_report(), None);
    }

    #[test]
    fn a_row_with_too_few_or_too_many_values_is_that_rows_error() {
        let rows = read(
            "player_id,afp\np1,x\np2\np3,x,extra\np4,y\n",
            ImportType::Registrations,
            "",
        );

        assert_eq!(
            summary(&rows),
            expected(&[
                (2, "registration p1"),
                (3, "invalid_row row"),
                (4, "invalid_row row"),
                (5, "registration p4"),
            ])
        );
        assert_eq!(
            rows[1].result.as_ref().unwrap_err().message,
            "has 1 values, but the header line names 2 columns"
        );
    }

    #[test]
    fn a_value_that_is_not_utf8_is_that_rows_error() {
        let map = ColumnMap::default();
        let file: &[u8] = b"player_id,afp\np1,caf\xe9\np2,x\n";
        let rows: Vec<Row> = Rows::new(file, ImportType::Registrations, &map)
            .unwrap()
            .collect();

        assert_eq!(
            summary(&rows),
            expected(&[(2, "invalid_field afp"), (3, "registration p2")])
        );
    }

    #[test]
    fn a_byte_order_mark_before_the_header_is_ignored() {
        let rows = read(
            "\u{feff}Player_ID,afp\np1,x\n",
            ImportType::Registrations,
            "",
        );
        assert_eq!(summary(&rows), expected(&[(2, "registration p1")]));
    }

    #[test]
    fn a_column_map_renames_and_ignores_columns() {
        let rows = read(
            "Player Ref,DEPOSITS,Click,Notes,type\np1,50,c-1,hello,Casino\n",
            ImportType::Sales,
            " player ref:player_id, Click:param.click_id,notes:-,TYPE:-",
        );

        let event = rows[0].result.as_ref().unwrap();
        assert_eq!(event.kind, "deposit");
        assert_eq!(event.player_id.as_str(), "p1");
        assert_eq!(
            event.params,
            std::collections::BTreeMap::from([
                ("amount".to_owned(), json!(50)),
                ("click_id".to_owned(), json!("c-1")),
            ])
        );
    }

    #[test]
    fn a_map_that_cannot_be_followed_is_refused() {
        for map in [
            "player_id",
            "a:colour",
            "a:playerid",
            ":player_id",
            "a:param.",
            "a:player_id,A:deal_id",
        ] {
            let error = ColumnMap::parse(map).unwrap_err();
            assert_eq!(
                (error.code, error.path.as_str()),
                ("invalid_field", "map"),
                "{map}"
            );
        }
        assert_eq!(
            ColumnMap::parse("a:b:player_id,").unwrap(),
            ColumnMap {
                entries: vec![("a:b".to_owned(), Use::Take(Target::Field(Field::PlayerId)))]
            },
            "a header may contain a colon"
        );
    }

    #[test]
    fn a_header_no_row_could_get_right_refuses_the_import() {
        assert_eq!(refused(b"", ""), ("empty_file", "file".to_owned()));
        assert_eq!(refused(b"\n\n,\n", ""), ("empty_file", "file".to_owned()));
        assert_eq!(
            refused(b"player_id,Customer_ID\np1,p1\n", ""),
            ("invalid_header", "Customer_ID".to_owned())
        );
        assert_eq!(
            refused(b"a,b\np1,p1\n", "a:player_id,b:player_id"),
            ("invalid_header", "b".to_owned())
        );
        assert_eq!(
            refused(b"player_id,afp,AFP\n", ""),
            ("invalid_header", "AFP".to_owned())
        );
        assert_eq!(
            refused(b"player_id\np1\n", "Player Ref:player_id"),
            ("invalid_header", "map".to_owned())
        );
        assert_eq!(
            refused(b"afp\nx\n", ""),
            ("missing_column", "player_id".to_owned())
        );
        assert_eq!(
            refused(b"player_id,caf\xe9\n", ""),
            ("invalid_header", "column 2".to_owned())
        );
    }

    #[test]
    fn quoted_values_may_hold_commas_and_line_breaks_and_lines_still_count_right() {
        let crlf =
            "player_id,note,amount\r\np1,\"a, b\r\nc\",5\r\np 2,x,1\r\np3,\"\"\"q\"\"\",2\r\n";
        let lf = crlf.replace("\r\n", "\n");
        for file in [crlf, lf.as_str()] {
            let rows = read(file, ImportType::Sales, "");

            assert_eq!(
                summary(&rows),
                expected(&[
                    (2, "deposit p1"),
                    (4, "invalid_field player_id"),
                    (5, "deposit p3"),
                ]),
                "{file:?}"
            );
            let note = |row: &Row| row.result.as_ref().unwrap().params["note"].clone();
            let line_break = if file.contains('\r') { "\r\n" } else { "\n" };
            assert_eq!(note(&rows[0]), json!(format!("a, b{line_break}c")));
            assert_eq!(note(&rows[2]), json!("\"q\""));
        }
    }

    #[test]
    fn blank_rows_are_skipped_and_a_last_line_needs_no_line_break() {
        let rows = read("player_id\np1\n\n,\r\np2", ImportType::Registrations, "");
        assert_eq!(
            summary(&rows),
            expected(&[(2, "registration p1"), (5, "registration p2")])
        );
    }

    #[test]
    fn a_value_under_an_unnamed_column_is_that_rows_error() {
        let rows = read(
            "player_id,,afp\np1,,x\np2,oops,y\n",
            ImportType::Registrations,
            "",
        );
        assert_eq!(
            summary(&rows),
            expected(&[(2, "registration p1"), (3, "invalid_field column 2")])
        );
    }

    #[test]
    fn a_sale_is_its_type_else_a_deposit_when_money_came_in_else_a_sale() {
        let rows = read(
            "player_id,amount,type\np1,50,\np2,0,\np3,-5,\np4,10,ftd\np5,,\n",
            ImportType::Sales,
            "",
        );
        assert_eq!(
            summary(&rows),
            expected(&[
                (2, "deposit p1"),
                (3, "sale p2"),
                (4, "sale p3"),
                (5, "ftd p4"),
                (6, "sale p5"),
            ])
        );
    }

    #[test]
    fn the_same_file_yields_the_same_ids() {
        let sales = "player_id,amount\np1,10\np1,20\np2,10\n";
        let first = ids(&read(sales, ImportType::Sales, ""));
        assert_eq!(first, ids(&read(sales, ImportType::Sales, "")));
        assert_eq!(
            first
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            3,
            "different rows, different ids"
        );

        let registrations = ids(&read("player_id\np1\np2\n", ImportType::Registrations, ""));
        let richer = ids(&read(
            "afp,player_id,date\nx,p1,2026-11-22\n",
            ImportType::Registrations,
            "",
        ));
        assert_eq!(
            richer[0], registrations[0],
            "a registration's id depends on its player only"
        );
        assert_ne!(registrations[0], registrations[1]);
    }

    #[test]
    fn a_stream_that_breaks_ends_the_import_with_a_last_row_saying_so() {
        struct Breaks {
            data: &'static [u8],
        }
        impl Read for Breaks {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.data.is_empty() {
                    return Err(io::Error::other("connection reset"));
                }
                let n = buf.len().min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }

        let input = Breaks {
            data: b"player_id\np1\np2\np3",
        };
        let rows: Vec<Row> = Rows::new(input, ImportType::Registrations, &ColumnMap::default())
            .unwrap()
            .collect();

        assert_eq!(
            summary(&rows),
            expected(&[
                (2, "registration p1"),
                (3, "registration p2"),
                (4, "read_failed file"),
            ])
        );
    }

    /// A CSV file made up while it is read, so the test proves rows stream rather than a file in memory.
    struct Generated {
        rows: u64,
        next: u64,
        chunk: Vec<u8>,
        at: usize,
    }

    impl Read for Generated {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.chunk.len() {
                self.chunk.clear();
                self.at = 0;
                if self.next == 0 {
                    self.chunk.extend_from_slice(b"player_id,afp\n");
                    self.next = 1;
                }
                while self.next <= self.rows && self.chunk.len() < 8 * 1024 {
                    let row = format!("p{},click-{}\n", self.next, self.next);
                    self.chunk.extend_from_slice(row.as_bytes());
                    self.next += 1;
                }
            }
            let n = buf.len().min(self.chunk.len() - self.at);
            buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn two_hundred_thousand_rows_stream_through() {
        let input = Generated {
            rows: 200_000,
            next: 0,
            chunk: Vec::new(),
            at: 0,
        };
        let rows = Rows::new(input, ImportType::Registrations, &ColumnMap::default()).unwrap();

        let (mut count, mut last) = (0u64, None);
        for row in rows {
            let event = row.result.unwrap();
            count += 1;
            last = Some((row.line, event.player_id.as_str().to_owned()));
        }

        assert_eq!(count, 200_000);
        assert_eq!(last, Some((200_001, "p200000".to_owned())));
    }

    #[test]
    fn import_types_read_their_names() {
        assert_eq!(ImportType::parse(" Sales "), Ok(ImportType::Sales));
        assert_eq!(
            ImportType::parse(ImportType::Registrations.as_str()),
            Ok(ImportType::Registrations)
        );
        assert_eq!(ImportType::parse("deposits").unwrap_err().path, "type");
    }
}

//! Events from flat records: a list of (name, text value) pairs, as a postback URL's query string or a
//! CSV row gives them.
//!
//! Both front ends ([`crate::inbound`], [`crate::import`]) hand their pairs to this one converter, which
//! builds the same JSON object a brand would have sent to the events API and validates it with
//! [`parse_event`]. So an event is valid by exactly the same rules however it arrived, and only the
//! spelling of the record is this module's business.
//!
//! # Names
//! Names are matched without regard to case or surrounding blanks. These name the event's fields; any
//! other name is an event param, under its own name (the param rules of the JSON API then apply: a
//! macro-friendly name, and none of the names the hub fills itself, such as `brand_id`).
//!
//! | field | accepted names |
//! |---|---|
//! | `event_id` | `event_id`, `eventid`, `transaction_id`, `txn_id` |
//! | `player_id` | `player_id`, `playerid`, `player`, `customer_id`, `user_id` |
//! | `type` | `type`, `event_type` |
//! | `affiliate_id` | `affiliate_id`, `affid`, `aff_id` |
//! | `deal_id` | `deal_id`, `dealid` |
//! | `occurred_at` | `occurred_at`, `date`, `transaction_date`, `registration_date`, `account_opening_date` |
//! | `amount` | `amount`, `deposit_amount`, `deposits`, `earning` |
//!
//! An empty value (after trimming) is no value: the pair is skipped, as if it were not there. A field
//! given twice, under the same name or two of its names, is refused rather than guessed at. `amount`
//! becomes the `amount` param as a JSON number, so that conditions such as `amount >= 20` compare numbers.
//!
//! # Error paths
//! A flat record has no JSON path, so an error's `path` is the name *as the caller wrote it* (trimmed):
//! `playerid`, `Deposits`, `click id`. When the problem is a field that is missing, or one the caller did
//! not write (a type fixed by the URL, a derived event id), the path is the field's canonical name
//! (`player_id`, `type`, `event_id`). A front end that needs more context (a CSV line) adds it itself.
//!
//! # Derived event ids
//! Event ids are idempotency keys, so a record without one gets an id computed from what it says rather
//! than a random one: sending the same record again is then recognised as a duplicate. The id is the
//! caller's prefix followed by the first 32 hex digits of a SHA-256 over the lower-cased event type and
//! the record's name/value pairs ([`IdBasis`] says which), sorted by name, each name lower-cased (params
//! as `param.NAME`, so a param can never pass for a field), each value as given after trimming. Every
//! string is hashed behind its length, so no two different records can concatenate to the same input.
//! Column order and param order therefore do not matter; any difference in a value does.

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::event::{Event, parse_event};
use crate::ids::MAX_ID_LEN;
use crate::input::InputError;

/// The path handed to [`parse_event`]; stripped again from its errors, which then name the caller's field.
const ROOT: &str = "record";

/// What a record's time may look like, as the error says it.
const TIME_FORMS: &str = "must be a time such as 2026-11-22T10:15:00Z, 2026-11-22 (midnight UTC), 2026-11-22 10:15:00 (UTC) or Unix seconds such as 1795338900";

/// One of the event fields a flat record can fill; every other name is a param.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// The event's idempotency key; derived from the content when absent.
    EventId,
    /// Whose event it is.
    PlayerId,
    /// The event's type, unless the caller fixes it.
    Type,
    /// The affiliate credited.
    AffiliateId,
    /// The deal.
    DealId,
    /// When it happened.
    OccurredAt,
    /// The money involved; becomes the numeric `amount` param.
    Amount,
}

impl Field {
    /// Every field, in the order the docs' table lists them; also the order the derived id hashes them.
    pub const ALL: [Field; 7] = [
        Field::EventId,
        Field::PlayerId,
        Field::Type,
        Field::AffiliateId,
        Field::DealId,
        Field::OccurredAt,
        Field::Amount,
    ];

    /// The name the JSON API uses for it, and the only name a column mapping may target it by.
    pub fn name(self) -> &'static str {
        self.aliases()[0]
    }

    /// Every name that fills this field, the canonical one first. Exports from affiliate platforms name
    /// the same column in different ways; these are the spellings seen in the wild.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Field::EventId => &["event_id", "eventid", "transaction_id", "txn_id"],
            Field::PlayerId => &["player_id", "playerid", "player", "customer_id", "user_id"],
            Field::Type => &["type", "event_type"],
            Field::AffiliateId => &["affiliate_id", "affid", "aff_id"],
            Field::DealId => &["deal_id", "dealid"],
            Field::OccurredAt => &[
                "occurred_at",
                "date",
                "transaction_date",
                "registration_date",
                "account_opening_date",
            ],
            Field::Amount => &["amount", "deposit_amount", "deposits", "earning"],
        }
    }

    /// The field any of its names stands for, matched without regard to case or surrounding blanks.
    pub fn from_name(name: &str) -> Option<Field> {
        let name = name.trim();
        Field::ALL.into_iter().find(|field| {
            field
                .aliases()
                .iter()
                .any(|alias| alias.eq_ignore_ascii_case(name))
        })
    }

    /// The field whose canonical name this is. Column mappings accept only these, so that a mapping says
    /// plainly what it does.
    pub fn from_canonical(name: &str) -> Option<Field> {
        let name = name.trim();
        Field::ALL
            .into_iter()
            .find(|field| field.name().eq_ignore_ascii_case(name))
    }
}

/// Where one value of a record goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One of the event's fields.
    Field(Field),
    /// A param of this name (as written; the param rules lower-case it).
    Param(String),
}

impl Target {
    /// Where a value named `name` goes when nobody said otherwise: its field, if `name` is one of the
    /// field names, else the param of that name.
    pub fn of(name: &str) -> Target {
        Field::from_name(name).map_or_else(|| Target::param(name), Target::Field)
    }

    /// The param `name`. The `amount` param is the amount field under another road, so it is that field:
    /// one record cannot then carry two amounts.
    pub fn param(name: &str) -> Target {
        let name = name.trim();
        if name.eq_ignore_ascii_case(Field::Amount.name()) {
            Target::Field(Field::Amount)
        } else {
            Target::Param(name.to_owned())
        }
    }
}

/// Where an event's type comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    /// The caller knows it (a URL path, an import of registrations). A `type` in the record that says the
    /// same is accepted; one that says otherwise is refused, because one of the two is a mistake.
    Fixed(&'a str),
    /// The record's `type`; required.
    Record,
    /// The record's `type`, or this one when the record has none.
    RecordOr(&'a str),
}

/// What a derived event id is computed from; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdBasis {
    /// The type and every field and param: two records are the same event only if they say the same.
    Content,
    /// The type and the player id only, for events a player has once (a registration): a later export
    /// with more columns or corrected values still names the same event.
    Player,
}

/// How a front end wants its records turned into events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options<'a> {
    /// Where the type comes from.
    pub kind: Kind<'a>,
    /// Starts every derived id, so ids derived by different front ends never meet (`get-`, `csv-`). Must
    /// be a few characters of the id alphabet.
    pub id_prefix: &'a str,
    /// What a derived id is computed from.
    pub id_basis: IdBasis,
    /// Ends the event id, given or derived; empty for none. Lets one record yield several events with
    /// distinct, still deterministic ids (`:ftd`, `:deposit`).
    pub id_suffix: &'a str,
}

/// Turns one flat record into an event: the pairs' names go through [`Target::of`], then
/// [`Record::to_event`].
pub fn event_from_pairs(
    pairs: &[(String, String)],
    options: &Options<'_>,
) -> Result<Event, InputError> {
    Record::from_pairs(pairs)?.to_event(options)
}

/// A value as the caller gave it: under which name, and what (trimmed).
#[derive(Clone, Debug)]
struct Given {
    written: String,
    value: String,
}

/// A param: its name (as written, trimmed), the name of the pair or column it came from, and its value.
#[derive(Clone, Debug)]
struct Param {
    name: String,
    written: String,
    value: String,
}

/// One record, sorted into fields and params but not yet validated. Front ends fill it pair by pair,
/// which lets a CSV column carry a name of its own (its header) while filling a field or param it was
/// mapped to, and lets one record yield several events.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Indexed by `Field as usize`.
    fields: [Option<Given>; 7],
    params: Vec<Param>,
}

impl Record {
    /// Sorts `pairs` into a record by their names.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, InputError> {
        let mut record = Record::default();
        for (name, value) in pairs {
            record.insert(Target::of(name), name, value)?;
        }
        Ok(record)
    }

    /// Adds `value` at `target`; `written` is the name the caller used, for error paths. An empty value is
    /// skipped. A second value for the same field or param is refused, naming both.
    pub fn insert(&mut self, target: Target, written: &str, value: &str) -> Result<(), InputError> {
        let written = written.trim();
        let value = value.trim();
        if value.is_empty() {
            return Ok(());
        }
        let target = match target {
            Target::Param(name) => Target::param(&name),
            field => field,
        };
        match target {
            Target::Field(field) => {
                let index = field as usize;
                if let Some(first) = &self.fields[index] {
                    return Err(given_twice(written, &first.written, field.name()));
                }
                self.fields[index] = Some(Given {
                    written: written.to_owned(),
                    value: value.to_owned(),
                });
            }
            Target::Param(name) => {
                if name.is_empty() {
                    let path = if written.is_empty() {
                        "(no name)"
                    } else {
                        written
                    };
                    return Err(InputError::new(
                        "invalid_field",
                        path,
                        "has a value but no param name",
                    ));
                }
                if let Some(first) = self
                    .params
                    .iter()
                    .find(|param| param.name.eq_ignore_ascii_case(&name))
                {
                    let what = format!("the param {}", name.to_ascii_lowercase());
                    return Err(given_twice(written, &first.written, &what));
                }
                self.params.push(Param {
                    name,
                    written: written.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The value of `field`, if the record has one.
    pub fn get(&self, field: Field) -> Option<&str> {
        self.given(field).map(|given| given.value.as_str())
    }

    /// The amount as a number, for front ends whose rules depend on it (a sale with a positive amount
    /// is a deposit); the same error [`Record::to_event`] would give when it is not a number.
    pub fn amount(&self) -> Result<Option<f64>, InputError> {
        Ok(self.amount_number()?.and_then(|number| number.as_f64()))
    }

    /// Validates the record as an event, by the JSON API's rules. Takes `&self` so that one record can
    /// yield events of several types.
    pub fn to_event(&self, options: &Options<'_>) -> Result<Event, InputError> {
        let kind = self.event_type(options.kind)?;
        let event_id = match self.given(Field::EventId) {
            Some(given) => {
                let room = MAX_ID_LEN.saturating_sub(options.id_suffix.len());
                if !options.id_suffix.is_empty() && given.value.len() > room {
                    return Err(InputError::new(
                        "invalid_field",
                        given.written.clone(),
                        format!(
                            "must be at most {room} characters here, to leave room for the suffix {} that keeps this record's events apart",
                            options.id_suffix
                        ),
                    ));
                }
                format!("{}{}", given.value, options.id_suffix)
            }
            None => format!(
                "{}{}{}",
                options.id_prefix,
                self.digest(kind.as_deref().unwrap_or_default(), options.id_basis),
                options.id_suffix
            ),
        };

        let mut object = Map::new();
        object.insert(Field::EventId.name().into(), Value::String(event_id));
        if let Some(kind) = kind {
            object.insert(Field::Type.name().into(), Value::String(kind));
        }
        for field in [Field::PlayerId, Field::AffiliateId, Field::DealId] {
            if let Some(value) = self.get(field) {
                object.insert(field.name().into(), Value::String(value.to_owned()));
            }
        }
        if let Some(given) = self.given(Field::OccurredAt) {
            let at = rfc3339(&given.value).ok_or_else(|| {
                InputError::new("invalid_field", given.written.clone(), TIME_FORMS)
            })?;
            object.insert(Field::OccurredAt.name().into(), Value::String(at));
        }
        let mut params = Map::new();
        if let Some(amount) = self.amount_number()? {
            params.insert(Field::Amount.name().into(), Value::Number(amount));
        }
        for param in &self.params {
            params.insert(param.name.clone(), Value::String(param.value.clone()));
        }
        object.insert("params".into(), Value::Object(params));

        parse_event(Value::Object(object), ROOT).map_err(|error| self.renamed(error))
    }

    fn given(&self, field: Field) -> Option<&Given> {
        self.fields[field as usize].as_ref()
    }

    /// The type to send, or `None` to let [`parse_event`] report it missing.
    fn event_type(&self, kind: Kind<'_>) -> Result<Option<String>, InputError> {
        let given = self.given(Field::Type);
        Ok(match kind {
            Kind::Fixed(fixed) => {
                let fixed = fixed.trim();
                if let Some(given) = given.filter(|given| !given.value.eq_ignore_ascii_case(fixed))
                {
                    return Err(InputError::new(
                        "invalid_field",
                        given.written.clone(),
                        format!(
                            "is {:?}, but this event's type is already {fixed:?}",
                            given.value
                        ),
                    ));
                }
                Some(fixed.to_owned())
            }
            Kind::Record => given.map(|given| given.value.clone()),
            Kind::RecordOr(default) => Some(
                given
                    .map_or(default, |given| given.value.as_str())
                    .to_owned(),
            ),
        })
    }

    fn amount_number(&self) -> Result<Option<Number>, InputError> {
        let Some(given) = self.given(Field::Amount) else {
            return Ok(None);
        };
        decimal(&given.value).map(Some).ok_or_else(|| {
            InputError::new(
                "invalid_field",
                given.written.clone(),
                "must be a number such as 50 or 19.99",
            )
        })
    }

    /// 32 hex digits of the record's hash; see the module docs.
    fn digest(&self, kind: &str, basis: IdBasis) -> String {
        let mut pairs: Vec<(String, &str)> = Vec::new();
        match basis {
            IdBasis::Player => {
                if let Some(player) = self.get(Field::PlayerId) {
                    pairs.push((Field::PlayerId.name().to_owned(), player));
                }
            }
            IdBasis::Content => {
                for field in Field::ALL {
                    if matches!(field, Field::EventId | Field::Type) {
                        continue;
                    }
                    if let Some(value) = self.get(field) {
                        pairs.push((field.name().to_owned(), value));
                    }
                }
                for param in &self.params {
                    pairs.push((
                        format!("param.{}", param.name.to_ascii_lowercase()),
                        param.value.as_str(),
                    ));
                }
            }
        }
        pairs.sort();
        let mut hasher = Sha256::new();
        let mut feed = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        feed(kind.to_ascii_lowercase().as_bytes());
        for (name, value) in &pairs {
            feed(name.as_bytes());
            feed(value.as_bytes());
        }
        crate::ids::hex(&hasher.finalize()[..16])
    }

    /// Rewrites the path of an error from [`parse_event`] (`record.params.click id`) to the name the caller
    /// wrote (`click id`).
    fn renamed(&self, mut error: InputError) -> InputError {
        let Some(rest) = error
            .path
            .strip_prefix(ROOT)
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            return error;
        };
        let written = match rest.strip_prefix("params.") {
            Some(key) if key == Field::Amount.name() => {
                self.given(Field::Amount).map(|given| &given.written)
            }
            Some(key) => self
                .params
                .iter()
                .find(|param| param.name == key)
                .map(|param| &param.written),
            None => Field::from_canonical(rest)
                .and_then(|field| self.given(field))
                .map(|given| &given.written),
        };
        let path = written.cloned().unwrap_or_else(|| rest.to_owned());
        error.path = path;
        error
    }
}

/// The error for a second value of the same thing, naming both names.
fn given_twice(written: &str, first: &str, what: &str) -> InputError {
    let message = if written == first {
        format!("is given twice; give {what} once")
    } else {
        format!("repeats {first}: both give {what}; give it once")
    };
    InputError::new("invalid_field", written, message)
}

/// A finite decimal number: an optional minus sign, digits, and optionally a point and more digits.
/// Stricter than Rust's float syntax on purpose: `1e3`, `inf` or `.5` in a money column is more likely a
/// spreadsheet accident than a value.
fn decimal(text: &str) -> Option<Number> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !fraction.is_none_or(digits) {
        return None;
    }
    if let (None, Ok(whole)) = (fraction, text.parse::<i64>()) {
        return Some(Number::from(whole));
    }
    Number::from_f64(text.parse().ok()?)
}

/// Reads the time forms the module accepts and writes the time as RFC 3339 in UTC, the only form
/// [`parse_event`] reads.
fn rfc3339(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let at = if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
        OffsetDateTime::from_unix_timestamp(text.parse().ok()?).ok()?
    } else if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        at.to_offset(UtcOffset::UTC)
    } else if bytes.len() == 10 {
        PrimitiveDateTime::new(calendar_date(bytes)?, Time::MIDNIGHT).assume_utc()
    } else if bytes.len() == 19 && matches!(bytes[10], b' ' | b'T') {
        PrimitiveDateTime::new(calendar_date(&bytes[..10])?, clock_time(&bytes[11..])?).assume_utc()
    } else {
        return None;
    };
    at.format(&Rfc3339).ok()
}

/// `YYYY-MM-DD`.
fn calendar_date(bytes: &[u8]) -> Option<Date> {
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let month = Month::try_from(u8::try_from(number(&bytes[5..7])?).ok()?).ok()?;
    let day = u8::try_from(number(&bytes[8..10])?).ok()?;
    Date::from_calendar_date(i32::try_from(number(&bytes[..4])?).ok()?, month, day).ok()
}

/// `HH:MM:SS`.
fn clock_time(bytes: &[u8]) -> Option<Time> {
    if bytes.len() != 8 || bytes[2] != b':' || bytes[5] != b':' {
        return None;
    }
    let part = |range: std::ops::Range<usize>| u8::try_from(number(&bytes[range])?).ok();
    Time::from_hms(part(0..2)?, part(3..5)?, part(6..8)?).ok()
}

/// A short run of ASCII digits as a number.
fn number(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || bytes.len() > 9 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0, |n, digit| n * 10 + u32::from(digit - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::ids::{EventId, ID_RULE, PlayerId, is_valid_id};

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn options(kind: Kind<'_>) -> Options<'_> {
        Options {
            kind,
            id_prefix: "t-",
            id_basis: IdBasis::Content,
            id_suffix: "",
        }
    }

    fn convert(list: &[(&str, &str)], kind: Kind<'_>) -> Result<Event, InputError> {
        event_from_pairs(&pairs(list), &options(kind))
    }

    fn refused(list: &[(&str, &str)], kind: Kind<'_>) -> (&'static str, String, String) {
        let error = convert(list, kind).expect_err("the record is refused");
        (error.code, error.path, error.message)
    }

    fn id_of(list: &[(&str, &str)], kind: Kind<'_>) -> String {
        convert(list, kind).unwrap().event_id.as_str().to_owned()
    }

    #[test]
    fn aliases_in_any_case_fill_the_fields_and_the_rest_are_params() {
        let event = convert(
            &[
                ("TXN_ID", "t-1"),
                (" PlayerID ", " p1 "),
                ("Event_Type", "FTD"),
                ("affid", "a9"),
                ("DealID", "d7"),
                ("Transaction_Date", "2026-11-22"),
                ("Deposit_Amount", "50"),
                ("ClickID", "c-1"),
            ],
            Kind::Record,
        )
        .unwrap();

        assert_eq!(
            event,
            Event {
                event_id: EventId::parse("t-1").unwrap(),
                kind: "ftd".into(),
                player_id: PlayerId::parse("p1").unwrap(),
                affiliate_id: Some("a9".into()),
                deal_id: Some("d7".into()),
                occurred_at_ms: Some(1_795_305_600_000),
                params: BTreeMap::from([
                    ("amount".to_owned(), json!(50)),
                    ("clickid".to_owned(), json!("c-1")),
                ]),
            }
        );
    }

    #[test]
    fn every_alias_names_its_field() {
        for field in Field::ALL {
            for alias in field.aliases() {
                assert_eq!(Field::from_name(alias), Some(field), "{alias}");
                assert_eq!(
                    Field::from_name(&format!(" {} ", alias.to_uppercase())),
                    Some(field)
                );
            }
            assert_eq!(Field::from_canonical(field.name()), Some(field));
        }
        assert_eq!(Field::from_name("click_id"), None);
        assert_eq!(
            Field::from_canonical("playerid"),
            None,
            "a mapping targets canonical names only"
        );
    }

    #[test]
    fn empty_values_are_absent() {
        let event = convert(
            &[
                ("event_id", "  "),
                ("player_id", ""),
                ("playerid", "p1"),
                ("amount", " "),
                ("afp", ""),
                ("sub1", "s"),
            ],
            Kind::Fixed("registration"),
        )
        .unwrap();

        assert_eq!(
            event.player_id.as_str(),
            "p1",
            "an empty player_id is no player_id"
        );
        assert!(
            event.event_id.as_str().starts_with("t-"),
            "an empty event_id is derived"
        );
        assert_eq!(
            event.params,
            BTreeMap::from([("sub1".to_owned(), json!("s"))])
        );
    }

    #[test]
    fn a_field_or_param_given_twice_is_refused_naming_both() {
        assert_eq!(
            refused(
                &[("player_id", "p1"), ("playerid", "p2")],
                Kind::Fixed("ftd")
            ),
            (
                "invalid_field",
                "playerid".to_owned(),
                "repeats player_id: both give player_id; give it once".to_owned()
            )
        );
        assert_eq!(
            refused(
                &[("player_id", "p1"), ("player_id", "p1")],
                Kind::Fixed("ftd")
            ),
            (
                "invalid_field",
                "player_id".to_owned(),
                "is given twice; give player_id once".to_owned()
            )
        );
        assert_eq!(
            refused(
                &[("player_id", "p1"), ("amount", "5"), ("Deposits", "5")],
                Kind::Fixed("deposit")
            ),
            (
                "invalid_field",
                "Deposits".to_owned(),
                "repeats amount: both give amount; give it once".to_owned()
            )
        );
        assert_eq!(
            refused(
                &[("player_id", "p1"), ("afp", "a"), ("AFP", "b")],
                Kind::Fixed("ftd")
            ),
            (
                "invalid_field",
                "AFP".to_owned(),
                "repeats afp: both give the param afp; give it once".to_owned()
            )
        );
    }

    #[test]
    fn amounts_are_plain_decimal_numbers() {
        for (text, expected) in [
            ("50", json!(50)),
            ("19.99", json!(19.99)),
            ("-5", json!(-5)),
            ("0.5", json!(0.5)),
        ] {
            let event =
                convert(&[("player_id", "p"), ("amount", text)], Kind::Fixed("sale")).unwrap();
            assert_eq!(event.params["amount"], expected, "{text}");
        }
        for text in [
            "1,5", "abc", "1e3", "NaN", "inf", ".5", "5.", "+5", "--5", "50 EUR",
        ] {
            assert_eq!(
                refused(
                    &[("player_id", "p"), ("deposits", text)],
                    Kind::Fixed("sale")
                ),
                (
                    "invalid_field",
                    "deposits".to_owned(),
                    "must be a number such as 50 or 19.99".to_owned()
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn times_are_read_in_four_forms() {
        for (text, ms) in [
            ("2026-11-22T10:15:00+01:00", 1_795_338_900_000),
            ("2026-11-22T09:15:00Z", 1_795_338_900_000),
            ("2026-11-22", 1_795_305_600_000),
            ("2026-11-22 09:15:00", 1_795_338_900_000),
            ("1795338900", 1_795_338_900_000),
        ] {
            let event =
                convert(&[("player_id", "p"), ("date", text)], Kind::Fixed("sale")).unwrap();
            assert_eq!(event.occurred_at_ms, Some(ms), "{text}");
        }
        for text in [
            "22/11/2026",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026-11-22 25:00:00",
            "2026-11-22 9:15",
            "1795338900000",
        ] {
            assert_eq!(
                refused(&[("player_id", "p"), ("Date", text)], Kind::Fixed("sale")),
                ("invalid_field", "Date".to_owned(), TIME_FORMS.to_owned()),
                "{text}"
            );
        }
    }

    #[test]
    fn a_derived_id_depends_on_the_content_not_the_order() {
        let record = [("player_id", "p1"), ("amount", "50"), ("clickid", "c-1")];
        let id = id_of(&record, Kind::Fixed("deposit"));
        assert_eq!(
            id, "t-5d69611e9c08f465df3bfbc6abb0c0bd",
            "the documented hash: type, then sorted name/value pairs, each behind its length"
        );
        assert!(is_valid_id(&id));

        let reordered = [("ClickID", " c-1 "), ("Amount", "50"), ("PLAYERID", "p1")];
        assert_eq!(id_of(&reordered, Kind::Fixed("DEPOSIT")), id);

        for (changed, what) in [
            (
                [("player_id", "p2"), ("amount", "50"), ("clickid", "c-1")],
                "player",
            ),
            (
                [("player_id", "p1"), ("amount", "51"), ("clickid", "c-1")],
                "amount",
            ),
            (
                [("player_id", "p1"), ("amount", "50"), ("clickid", "c-2")],
                "param",
            ),
            (
                [("player_id", "p1"), ("amount", "50"), ("sub1", "c-1")],
                "param name",
            ),
        ] {
            assert_ne!(id_of(&changed, Kind::Fixed("deposit")), id, "{what}");
        }
        assert_ne!(id_of(&record, Kind::Fixed("ftd")), id, "type");
    }

    #[test]
    fn a_player_based_id_ignores_everything_but_type_and_player() {
        let id = |list: &[(&str, &str)]| {
            let options = Options {
                id_basis: IdBasis::Player,
                ..options(Kind::Fixed("registration"))
            };
            event_from_pairs(&pairs(list), &options)
                .unwrap()
                .event_id
                .as_str()
                .to_owned()
        };
        assert_eq!(
            id(&[("player_id", "p1")]),
            id(&[("player_id", "p1"), ("afp", "x"), ("date", "2026-11-22")])
        );
        assert_ne!(id(&[("player_id", "p1")]), id(&[("player_id", "p2")]));
    }

    #[test]
    fn a_suffix_ends_given_and_derived_ids() {
        let suffixed = Options {
            id_suffix: ":ftd",
            ..options(Kind::Fixed("ftd"))
        };
        let given =
            event_from_pairs(&pairs(&[("player_id", "p"), ("txn_id", "tx-9")]), &suffixed).unwrap();
        assert_eq!(given.event_id.as_str(), "tx-9:ftd");

        let derived = event_from_pairs(&pairs(&[("player_id", "p")]), &suffixed).unwrap();
        let plain = convert(&[("player_id", "p")], Kind::Fixed("ftd")).unwrap();
        assert_eq!(
            derived.event_id.as_str(),
            format!("{}:ftd", plain.event_id.as_str())
        );

        let long = "x".repeat(126);
        let error = event_from_pairs(&pairs(&[("player_id", "p"), ("txn_id", &long)]), &suffixed)
            .unwrap_err();
        assert_eq!(
            (error.code, error.path.as_str()),
            ("invalid_field", "txn_id")
        );
    }

    /// Pairs, kind, expected code, path, and a word of the message.
    type ErrorCase<'a> = (
        &'a [(&'a str, &'a str)],
        Kind<'a>,
        &'a str,
        &'a str,
        &'a str,
    );

    #[test]
    fn errors_name_the_field_as_the_caller_wrote_it() {
        let cases: [ErrorCase<'_>; 8] = [
            (
                &[("player_id", "p"), ("click id", "c")],
                Kind::Fixed("ftd"),
                "invalid_field",
                "click id",
                "a param name is up to 64 letters, digits, _ . -, starting with a letter or _, so that a macro can name it",
            ),
            (
                &[("PlayerID", "p 1")],
                Kind::Fixed("ftd"),
                "invalid_field",
                "PlayerID",
                ID_RULE,
            ),
            (
                &[("player_id", "p"), ("brand_id", "b1")],
                Kind::Fixed("ftd"),
                "invalid_field",
                "brand_id",
                "brand_id is filled by the hub; it cannot be a param",
            ),
            (
                &[("afp", "x")],
                Kind::Fixed("ftd"),
                "missing_field",
                "player_id",
                "is required",
            ),
            (
                &[("player_id", "p")],
                Kind::Record,
                "missing_field",
                "type",
                "is required",
            ),
            (
                &[("player_id", "p"), ("Event_Type", "first/deposit")],
                Kind::Record,
                "invalid_field",
                "Event_Type",
                "must be a standard event type (registration, qualified_registration, ftd, qftd, deposit, sale), a name affiliate platforms use for one (reg, signup, lead, dep, conversion…; see docs/definitions.md), or a custom name of 1 to 64 characters a-z 0-9 _ . : -",
            ),
            (
                &[("player_id", "p"), ("eventid", "e 1")],
                Kind::Fixed("ftd"),
                "invalid_field",
                "eventid",
                ID_RULE,
            ),
            (
                &[("player_id", "p"), ("registration_date", "1900-01-01")],
                Kind::Fixed("registration"),
                "invalid_field",
                "registration_date",
                "must be after 1970",
            ),
        ];
        for (list, kind, code, path, message) in cases {
            assert_eq!(
                refused(list, kind),
                (code, path.to_owned(), message.to_owned()),
                "{list:?}"
            );
        }
    }

    #[test]
    fn a_fixed_type_accepts_a_record_type_that_agrees_and_refuses_one_that_does_not() {
        let agreeing = convert(&[("player_id", "p"), ("type", "FTD")], Kind::Fixed("ftd")).unwrap();
        assert_eq!(agreeing.kind, "ftd");
        assert!(agreeing.params.is_empty(), "the type is not a param");

        assert_eq!(
            refused(
                &[("player_id", "p"), ("type", "deposit")],
                Kind::Fixed("ftd")
            ),
            (
                "invalid_field",
                "type".to_owned(),
                "is \"deposit\", but this event's type is already \"ftd\"".to_owned()
            )
        );
    }

    #[test]
    fn a_default_type_applies_only_when_the_record_has_none() {
        let given = convert(
            &[("player_id", "p"), ("type", "qftd")],
            Kind::RecordOr("sale"),
        )
        .unwrap();
        assert_eq!(given.kind, "qftd");
        let defaulted =
            convert(&[("player_id", "p"), ("type", "")], Kind::RecordOr("sale")).unwrap();
        assert_eq!(defaulted.kind, "sale");
    }

    #[test]
    fn the_param_amount_is_the_amount_field() {
        let mut record = Record::default();
        record.insert(Target::param("Amount"), "Sum", "20").unwrap();
        assert_eq!(record.amount(), Ok(Some(20.0)));
        let error = record
            .insert(Target::Field(Field::Amount), "deposits", "20")
            .unwrap_err();
        assert_eq!(
            (error.code, error.path.as_str()),
            ("invalid_field", "deposits")
        );
    }

    #[test]
    fn the_docs_list_the_same_names_as_the_code() {
        let docs = include_str!("../docs/events-by-get-and-csv.md");
        for field in Field::ALL {
            let names: Vec<String> = field.aliases().iter().map(|a| format!("`{a}`")).collect();
            let row = format!("| `{}` | {} |", field.name(), names.join(", "));
            assert!(docs.contains(&row), "the docs lack the row {row}");
        }
    }
}

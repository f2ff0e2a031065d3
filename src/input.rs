//! Turning a caller's JSON into validated values, with the path of the first problem.
//!
//! Pixels, pixel definitions and events are all JSON objects checked field by field. They share this one
//! error type and this one field reader, so every 422 of the API has the same shape (`code`, and a message
//! that starts with the path such as `events[3].params.amount`) and the same rules for strings, labels and
//! URLs.

use serde_json::{Map, Value};

use crate::ids::{ID_RULE, Id, IdKind};

/// Longest URL accepted anywhere; browsers and proxies start failing beyond this.
pub const MAX_URL_BYTES: usize = 8 * 1024;

/// The first problem found in a request body, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InputError {
    /// Stable, snake_case error code for the API.
    pub code: &'static str,
    /// JSON path of the offending value, e.g. `pixels[2].url`.
    pub path: String,
    /// Human sentence.
    pub message: String,
}

impl InputError {
    /// An error at `path`.
    pub fn new(code: &'static str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Takes fields out of one JSON object, so whatever is left at the end is an unknown field.
pub struct Fields<'a> {
    /// What is left of the object.
    pub obj: &'a mut Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    /// Reads fields of `obj`, which sits at `path` in the request body.
    pub fn new(obj: &'a mut Map<String, Value>, path: &'a str) -> Self {
        Self { obj, path }
    }

    /// An error about `field` of this object.
    pub fn error(&self, code: &'static str, field: &str, message: impl Into<String>) -> InputError {
        InputError::new(code, self.path_of(field), message)
    }

    /// The JSON path of `field` of this object.
    pub fn path_of(&self, field: &str) -> String {
        format!("{}.{field}", self.path)
    }

    /// A string field; absent and `null` are `None`.
    pub fn optional_str(&mut self, field: &str) -> Result<Option<String>, InputError> {
        match self.obj.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.error("invalid_field", field, "must be a string")),
        }
    }

    /// A string field that must be there.
    pub fn required_str(&mut self, field: &str) -> Result<String, InputError> {
        self.optional_str(field)?
            .ok_or_else(|| self.error("missing_field", field, "is required"))
    }

    /// A string, or a whole number taken as its decimal string: back ends send affiliate and deal ids both
    /// ways.
    pub fn optional_label(
        &mut self,
        field: &str,
        max: usize,
    ) -> Result<Option<String>, InputError> {
        let value = match self.obj.remove(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            Some(_) => {
                return Err(self.error(
                    "invalid_field",
                    field,
                    "must be a string or a whole number",
                ));
            }
        };
        self.check_label(field, &value, max)?;
        Ok(Some(value))
    }

    /// Turns a value already read from `field` into an id, or the `invalid_field` error stating the rule.
    pub fn id<K: IdKind>(&self, field: &str, value: &str) -> Result<Id<K>, InputError> {
        Id::parse(value).map_err(|_| self.error("invalid_field", field, ID_RULE))
    }

    /// An array of strings; absent and `null` are `None`.
    pub fn optional_strings(&mut self, field: &str) -> Result<Option<Vec<String>>, InputError> {
        let not_strings =
            |fields: &Self| fields.error("invalid_field", field, "must be an array of strings");
        match self.obj.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    _ => Err(not_strings(self)),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(not_strings(self)),
        }
    }

    /// A boolean field; absent and `null` are `None`.
    pub fn optional_bool(&mut self, field: &str) -> Result<Option<bool>, InputError> {
        match self.obj.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(self.error("invalid_field", field, "must be true or false")),
        }
    }

    /// A whole number in `range`; absent and `null` are `None`.
    pub fn optional_u64(
        &mut self,
        field: &str,
        range: std::ops::RangeInclusive<u64>,
        unit: &str,
    ) -> Result<Option<u64>, InputError> {
        match self.obj.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(self.error(
                    "invalid_field",
                    field,
                    format!(
                        "must be a whole number of {unit} from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            },
        }
    }

    /// Checks a free-text label: not empty, at most `max` characters, no control characters.
    pub fn check_label(&self, field: &str, value: &str, max: usize) -> Result<(), InputError> {
        if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
            return Err(self.error(
                "invalid_field",
                field,
                format!("must be 1 to {max} characters without control characters"),
            ));
        }
        Ok(())
    }

    /// A required absolute http(s) URL, normalised.
    pub fn url(&mut self, field: &str) -> Result<String, InputError> {
        let raw = self.required_str(field)?;
        http_url(&raw).map_err(|message| self.error("invalid_url", field, message))
    }

    /// Fails with `unknown_field` when the object still holds a field nobody took; `what` names the object.
    pub fn finish(self, what: &str) -> Result<(), InputError> {
        match self.obj.keys().next() {
            Some(extra) => {
                Err(self.error("unknown_field", extra, format!("is not a field of {what}")))
            }
            None => Ok(()),
        }
    }
}

/// Parses a request body that holds one object or an array of 1 to `max` of them, each with `parse_one`
/// at its path: `{singular}` for a lone object, `{plural}[i]` in an array. One bad item refuses the batch.
pub fn one_or_many<T>(
    body: Value,
    max: usize,
    (singular, plural): (&str, &str),
    parse_one: impl Fn(Value, &str) -> Result<T, InputError>,
) -> Result<Vec<T>, InputError> {
    let Value::Array(items) = body else {
        return Ok(vec![parse_one(body, singular)?]);
    };
    if items.is_empty() || items.len() > max {
        let code = if items.is_empty() {
            "empty_batch"
        } else {
            "batch_too_large"
        };
        return Err(InputError::new(
            code,
            plural,
            format!("send 1 to {max} {plural} per request, got {}", items.len()),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_one(item, &format!("{plural}[{i}]")))
        .collect()
}

/// Parses and normalises an absolute http(s) URL with a host, or says in a sentence why it is not one.
/// Used both for URLs callers send and for URLs the hub renders from templates.
pub fn http_url(raw: &str) -> Result<String, String> {
    if raw.len() > MAX_URL_BYTES {
        return Err(format!("is longer than {MAX_URL_BYTES} bytes"));
    }
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url.into()),
        Ok(url) => Err(format!(
            "must be an absolute http(s) URL, not {}:",
            url.scheme()
        )),
        Err(e) => Err(format!("must be an absolute http(s) URL ({e})")),
    }
}

//! Macro templates: the URLs, code and parameters of pixel definitions, with values filled in per event.
//!
//! Affiliate platforms each grew their own macro syntax, and brands paste templates from all of them, so
//! all four are understood, with case-insensitive names: `{{name}}` (Smartico), `{name}` (Track360,
//! Everflow, Keitaro), `[NAME]` (SmartyAds) and `%%NAME%%` (Routy, operators' back ends). A `|raw` modifier
//! (`{{name|raw}}`) inserts a URL value that is already encoded.
//!
//! What a value may do depends on where it lands, the template's [`Context`]:
//! - **URL**: values are percent-encoded, so a player id holding `&` or `/` can never add a parameter or
//!   move the path. The scheme and host must be written out: no value can choose where a pixel goes.
//! - **JavaScript**: a value becomes one complete string literal (`"…"`), escaped so that it can never
//!   end the string or the script. Only `{{name}}` and `%%NAME%%` are macros there: `{x}` and `[x]` are
//!   JavaScript's own syntax (blocks, object shorthand, indexing). A macro may stand only where a value
//!   can, never inside a string, comment, template literal or regular expression ([`js`] reads the code
//!   to check), since there the literal's own characters would end what the author opened.
//! - **Text** (Meta pixel fields): values are inserted as they are; the browser client passes them to
//!   `fbq` as data, never as code or URL.
//!
//! Templates are parsed when a definition is saved, so every syntax error is found then, with its
//! position, and never while an event is being processed.

use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

mod js;

/// Whether `code` parses as a classic browser script, by parse-js (a JavaScript parser); the error says
/// what was expected and where (line and column, 1-based). Lenient where browsers are strict (a top-level
/// `return` passes), never the other way round, so a block it refuses fails in every browser.
pub fn check_js_syntax(code: &str) -> Result<(), String> {
    let Err(error) = parse_js::parse(code.as_bytes()) else {
        return Ok(());
    };
    let at = error.loc.0.min(code.len());
    let before = code.get(..at).unwrap_or(code);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    let what = match error.typ {
        parse_js::error::SyntaxErrorType::ExpectedSyntax(what) => format!("expected {what}"),
        parse_js::error::SyntaxErrorType::RequiredTokenNotFound(token) => {
            format!("expected {token:?}")
        }
        other => format!("{other:?}"),
    };
    let found = match error.actual_token {
        Some(parse_js::token::TokenType::EOF) => " but the code ends".to_owned(),
        Some(token) => format!(", found {token:?}"),
        None => String::new(),
    };
    Err(format!(
        "does not parse as JavaScript at line {line}, column {column}: {what}{found}"
    ))
}

/// Longest macro name.
const MAX_NAME: usize = 64;

/// Characters a URL value keeps as they are: RFC 3986's unreserved set. Everything else is encoded.
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where a template's output goes, which decides how values are escaped and which syntaxes exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// An http(s) URL fetched by the browser or the hub.
    Url,
    /// JavaScript source run in the brand's page.
    Js,
    /// A plain value handed to a client API as data.
    Text,
    /// An `application/x-www-form-urlencoded` POST body: values are percent-encoded like URL values.
    Form,
    /// A JSON POST body: a value becomes one JSON literal (a quoted, escaped string, a number, a boolean,
    /// or `null` when missing), so it can never add a key or end the document. As in JavaScript, only
    /// `{{name}}` and `%%NAME%%` are macros: braces and brackets are JSON's own.
    Json,
}

impl Context {
    /// Whether `{x}` and `[x]` are syntax of the language itself rather than macros.
    fn is_code(self) -> bool {
        matches!(self, Context::Js | Context::Json)
    }
}

/// A parsed template, ready to render any number of times.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    context: Context,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Macro {
        /// Lower-cased: names are case-insensitive.
        name: String,
        raw: bool,
    },
}

/// What is wrong with a template, and where (1-based character position).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at character {at}: {message}")]
pub struct TemplateError {
    /// 1-based position of the character where the problem starts.
    pub at: usize,
    /// Human sentence.
    pub message: String,
}

/// The output of one render: the text, and the macros that had no value (rendered as empty).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rendered {
    /// The filled-in template.
    pub text: String,
    /// Lower-cased names of macros without a value, each once, in order of appearance.
    pub missing: Vec<String>,
}

impl Template {
    /// Parses `source` for `context`, refusing what cannot be meant: unbalanced braces, unknown syntaxes
    /// and modifiers, invalid names and, for URLs, a scheme or host that is not written out.
    pub fn parse(source: &str, context: Context) -> Result<Self, TemplateError> {
        let mut scanner = Scanner {
            src: source,
            pos: 0,
            context,
            macro_spans: Vec::new(),
        };
        let parts = scanner.parts()?;
        if context == Context::Js {
            js::check(source, &scanner.macro_spans)?;
        }
        let template = Template { context, parts };
        if context == Context::Url {
            template.check_url_head()?;
        }
        Ok(template)
    }

    /// The macro names used, lower-cased, in order of appearance (repeats included).
    pub fn macros(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Macro { name, .. } => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The name, when the whole template is exactly one macro: such a value keeps its JSON type where the
    /// output is data (`"value": "{{amount}}"` stays a number for Meta).
    pub fn sole_macro(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Macro { name, .. }] => Some(name),
            _ => None,
        }
    }

    /// Fills in `values` (keyed by lower-cased name), escaped for the template's context. A missing value
    /// renders as empty and is listed in [`Rendered::missing`].
    pub fn render(&self, values: &BTreeMap<String, Value>) -> Rendered {
        let mut out = Rendered::default();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.text.push_str(text),
                Part::Macro { name, raw } => {
                    let value = values.get(name).map(text_of);
                    if value.is_none() && !out.missing.contains(name) {
                        out.missing.push(name.clone());
                    }
                    let value = value.unwrap_or_default();
                    match (self.context, raw) {
                        (Context::Url | Context::Form, false) => {
                            out.text.extend(utf8_percent_encode(&value, URL_VALUE))
                        }
                        (Context::Js, _) => out.text.push_str(&js_string(&value)),
                        (Context::Json, _) => out.text.push_str(
                            &values
                                .get(name)
                                .map_or_else(|| "null".to_owned(), Value::to_string),
                        ),
                        _ => out.text.push_str(&value),
                    }
                }
            }
        }
        out
    }

    /// Renders a URL template and checks the result: an absolute http(s) URL whose scheme, host and port
    /// are the ones the template writes out. [`Template::parse`] already makes that so for every value;
    /// this checks the output itself, so no value (`|raw` ones included) and no parsing corner can send
    /// a pixel elsewhere.
    pub fn render_url(&self, values: &BTreeMap<String, Value>) -> Result<Rendered, String> {
        let rendered = self.render(values);
        let url = crate::input::http_url(&rendered.text).map_err(|e| format!("url {e}"))?;
        let origin = |text: &str| url::Url::parse(text).ok().map(|u| u.origin());
        let head = match self.parts.first() {
            Some(Part::Literal(text)) => text.as_str(),
            _ => "",
        };
        let written = head
            .find("://")
            .map(|scheme| {
                let rest = &head[scheme + 3..];
                &head[..scheme + 3 + rest.find(['/', '?', '#']).unwrap_or(rest.len())]
            })
            .and_then(origin);
        if written.is_none() || written != origin(&url) {
            return Err(
                "url: a macro value changed the scheme or host the template writes out".into(),
            );
        }
        Ok(Rendered {
            text: url,
            missing: rendered.missing,
        })
    }

    /// A URL template must name its scheme and host in its first literal, so no value can choose them.
    fn check_url_head(&self) -> Result<(), TemplateError> {
        let head = match self.parts.first() {
            Some(Part::Literal(text)) => text.as_str(),
            _ => "",
        };
        let lower = head.to_ascii_lowercase();
        let Some(rest) = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))
        else {
            return Err(TemplateError {
                at: 1,
                message: "a URL must start with http:// or https://, written out: a macro cannot choose the scheme".into(),
            });
        };
        let host_ends = rest.find(['/', '?', '#']);
        let host = &rest[..host_ends.unwrap_or(rest.len())];
        if host.is_empty() || (host_ends.is_none() && self.parts.len() > 1) {
            return Err(TemplateError {
                at: head.chars().count() + 1,
                message: "the host must be written out, followed by / ? or #: macros may only appear in the path, query or fragment".into(),
            });
        }
        Ok(())
    }
}

/// A value as macro text: strings as they are, numbers and booleans as JSON writes them.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `value` as a double-quoted JavaScript string literal that cannot end the string, the script element
/// (`</script>`), or the line (U+2028/U+2029 in older engines).
pub fn js_string(value: &str) -> String {
    let json = serde_json::to_string(value).expect("a string always serialises");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Splits a template into literals and macros, one syntax decision at a time.
struct Scanner<'a> {
    src: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    context: Context,
    /// Where each macro found is written: its byte range in `src`.
    macro_spans: Vec<(usize, usize)>,
}

impl Scanner<'_> {
    fn strict(&self) -> bool {
        !self.context.is_code()
    }

    fn error(&self, at_byte: usize, message: impl Into<String>) -> TemplateError {
        TemplateError {
            at: self.src[..at_byte].chars().count() + 1,
            message: message.into(),
        }
    }

    fn parts(&mut self) -> Result<Vec<Part>, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        while let Some(c) = self.src[self.pos..].chars().next() {
            let start = self.pos;
            let rest = &self.src[start..];
            let found = if rest.starts_with("{{") {
                self.double_brace(start)?
            } else if rest.starts_with("%%") {
                self.delimited(start, "%%", "%%", "%%NAME%%")?
            } else if c == '{' && !self.context.is_code() {
                match self.delimited(start, "{", "}", "{name}")? {
                    Some(found) => Some(found),
                    None => return Err(self.error(start, "unbalanced `{`: a macro is {name} or {{name}}; write a literal brace as %7B")),
                }
            } else if c == '[' && !self.context.is_code() {
                self.delimited(start, "[", "]", "[NAME]")?
            } else {
                None
            };
            if let Some(part) = found {
                self.macro_spans.push((start, self.pos));
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
                continue;
            }
            if self.strict() {
                self.check_literal(start, c)?;
            }
            literal.push(c);
            self.pos = start + c.len_utf8();
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(parts)
    }

    /// Characters that cannot stand alone in URL and text templates.
    fn check_literal(&self, at: usize, c: char) -> Result<(), TemplateError> {
        let rest = &self.src[at..];
        if c == '}' {
            return Err(self.error(at, "unbalanced `}`: no macro is open here"));
        }
        if rest.starts_with("${") {
            return Err(self.error(
                at,
                "`${…}` is not a macro syntax; write {{name}}, {name}, [NAME] or %%NAME%%",
            ));
        }
        if c == '%' && matches!(self.context, Context::Url | Context::Form) {
            let escape = rest.as_bytes().get(1..3);
            if !escape.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Err(self.error(
                    at,
                    "`%` must start a %XX escape (a literal % is %25) or a %%NAME%% macro",
                ));
            }
        }
        Ok(())
    }

    /// `{{ name }}` (spaces allowed inside). Outside JavaScript an unclosed `{{` is an error; in JavaScript
    /// it is code (`{{` opens nested blocks) unless it is plainly a macro missing one brace.
    fn double_brace(&mut self, start: usize) -> Result<Option<Part>, TemplateError> {
        let inner_start = start + 2;
        match self.src[inner_start..].find("}}") {
            Some(len) => {
                let inner = self.src[inner_start..inner_start + len].trim();
                if !self.strict() && !names_something(inner) {
                    return Ok(None);
                }
                let part = self.macro_body(inner, start, "{{name}}")?;
                self.pos = inner_start + len + 2;
                Ok(Some(part))
            }
            None if self.strict() => {
                Err(self.error(start, "unbalanced `{{`: a macro is {{name}}, closed by }}"))
            }
            None => {
                let name_len = self.src[inner_start..]
                    .find(|c: char| !is_name_char(c))
                    .unwrap_or(self.src.len() - inner_start);
                if name_len > 0 && !self.src[inner_start + name_len..].starts_with(' ') {
                    return Err(
                        self.error(start, "unbalanced `{{`: a macro is {{name}}, closed by }}")
                    );
                }
                Ok(None)
            }
        }
    }

    /// `open name close` on one stretch without spaces. `Ok(None)` when the text here is not an attempt at
    /// a macro at all (`[0]`, `a[]=1`, `{ x }` in code); an error when it plainly is one that is broken.
    fn delimited(
        &mut self,
        start: usize,
        open: &str,
        close: &str,
        shape: &str,
    ) -> Result<Option<Part>, TemplateError> {
        let inner_start = start + open.len();
        let body_len = self.src[inner_start..]
            .find(|c: char| !(is_name_char(c) || c == '|'))
            .unwrap_or(self.src.len() - inner_start);
        let body = &self.src[inner_start..inner_start + body_len];
        let starts_like_a_name = body.chars().next().is_some_and(is_name_start);
        if !self.src[inner_start + body_len..].starts_with(close) {
            if starts_like_a_name && self.strict() {
                return Err(self.error(
                    start,
                    format!("unbalanced `{open}`: a macro is {shape}, closed by {close}"),
                ));
            }
            return Ok(None);
        }
        // `%%` followed by no name is still plainly a broken macro in a URL or text (`%%%%`).
        let plainly_a_macro = starts_like_a_name || (self.strict() && open == "%%");
        if !plainly_a_macro {
            return Ok(None);
        }
        if !self.strict() && !names_something(body) {
            return Ok(None);
        }
        let part = self.macro_body(body, start, shape)?;
        self.pos = inner_start + body_len + close.len();
        Ok(Some(part))
    }

    /// `name` or `name|modifier`.
    fn macro_body(&self, body: &str, at: usize, shape: &str) -> Result<Part, TemplateError> {
        let (name, modifier) = match body.split_once('|') {
            Some((name, modifier)) => (name.trim(), Some(modifier.trim())),
            None => (body, None),
        };
        if name.is_empty() {
            return Err(self.error(at, format!("empty macro; write {shape}")));
        }
        if !name.chars().next().is_some_and(is_name_start)
            || !name.chars().all(is_name_char)
            || name.len() > MAX_NAME
        {
            return Err(self.error(
                at,
                format!("{name:?} is not a macro name: up to {MAX_NAME} letters, digits, _ . -, starting with a letter or _"),
            ));
        }
        let raw = match modifier.map(str::to_ascii_lowercase).as_deref() {
            None => false,
            Some("raw") if self.context.is_code() => {
                return Err(self.error(
                    at,
                    "`|raw` is not allowed in JavaScript or JSON: values are always inserted as literals",
                ));
            }
            Some("raw") => true,
            Some(other) => {
                return Err(self.error(
                    at,
                    format!("unknown modifier `|{other}`; the only modifier is `|raw`"),
                ));
            }
        };
        Ok(Part::Macro {
            name: name.to_ascii_lowercase(),
            raw,
        })
    }
}

/// Whether a macro body (`name` or `name|modifier`) starts with a valid name: in JavaScript, anything else
/// between delimiters is code.
fn names_something(body: &str) -> bool {
    let name = body.split('|').next().unwrap_or_default().trim();
    name.chars().next().is_some_and(is_name_start) && name.chars().all(is_name_char)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn render(source: &str, context: Context, vals: &[(&str, Value)]) -> Rendered {
        Template::parse(source, context)
            .unwrap_or_else(|e| panic!("{source:?}: {e}"))
            .render(&values(vals))
    }

    fn error(source: &str, context: Context) -> TemplateError {
        Template::parse(source, context).expect_err(source)
    }

    #[test]
    fn every_syntax_fills_the_same_case_insensitive_name() {
        let vals = [("afp", json!("xyz"))];
        for source in [
            "https://t.example/?c={{afp}}",
            "https://t.example/?c={{ AFP }}",
            "https://t.example/?c={afp}",
            "https://t.example/?c=[AFP]",
            "https://t.example/?c=%%Afp%%",
        ] {
            assert_eq!(
                render(source, Context::Url, &vals).text,
                "https://t.example/?c=xyz",
                "{source}"
            );
        }
    }

    #[test]
    fn url_values_are_encoded_so_they_cannot_add_parameters() {
        let out = render(
            "https://t.example/p/{{player_id}}?lead={registration_id}",
            Context::Url,
            &[
                ("player_id", json!("a/b?c")),
                ("registration_id", json!("p 1&admin=1#x")),
            ],
        );
        assert_eq!(
            out.text,
            "https://t.example/p/a%2Fb%3Fc?lead=p%201%26admin%3D1%23x"
        );
        let unicode = render(
            "https://t.example/?n={name}",
            Context::Url,
            &[("name", json!("Zoë~_.-"))],
        );
        assert_eq!(unicode.text, "https://t.example/?n=Zo%C3%AB~_.-");
    }

    #[test]
    fn raw_values_go_in_unencoded() {
        let out = render(
            "https://t.example/?{{qs|raw}}&x=[X|RAW]",
            Context::Url,
            &[("qs", json!("a=1&b=%20")), ("x", json!("y%2Fz"))],
        );
        assert_eq!(out.text, "https://t.example/?a=1&b=%20&x=y%2Fz");
    }

    #[test]
    fn missing_values_render_empty_and_are_reported_once() {
        let out = render(
            "https://t.example/?a={{afp}}&b={AFP}&c={{sub1}}&d={{amount}}",
            Context::Url,
            &[("amount", json!(50))],
        );
        assert_eq!(out.text, "https://t.example/?a=&b=&c=&d=50");
        assert_eq!(out.missing, ["afp", "sub1"]);
    }

    #[test]
    fn numbers_and_booleans_render_as_json_writes_them() {
        let out = render(
            "https://t.example/?a={{amount}}&b={{big}}&c={{ok}}",
            Context::Url,
            &[
                ("amount", json!(19.99)),
                ("big", json!(1_000_000)),
                ("ok", json!(true)),
            ],
        );
        assert_eq!(out.text, "https://t.example/?a=19.99&b=1000000&c=true");
    }

    #[test]
    fn js_values_are_complete_string_literals_that_cannot_escape() {
        let out = render(
            "track({{afp}}, %%AMOUNT%%)",
            Context::Js,
            &[("afp", json!("\"); alert(1); (\"")), ("amount", json!(50))],
        );
        assert_eq!(out.text, r#"track("\"); alert(1); (\"", "50")"#);
        let hostile = render(
            "x = {{v}}",
            Context::Js,
            &[(
                "v",
                json!("</script><script>alert(1)</script>\u{2028}\\'\n"),
            )],
        );
        assert_eq!(
            hostile.text,
            r#"x = "\u003c/script\u003e\u003cscript\u003ealert(1)\u003c/script\u003e\u2028\\'\n""#
        );
    }

    #[test]
    fn js_keeps_its_own_braces_and_brackets() {
        let code = "if (a[i]) { var o = {x}; f(`${y}`, [1,2], {{afp}}); } else {{ g(); }}";
        let out = render(code, Context::Js, &[("afp", json!("q"))]);
        assert_eq!(
            out.text,
            r#"if (a[i]) { var o = {x}; f(`${y}`, [1,2], "q"); } else {{ g(); }}"#
        );
        assert_eq!(
            error("f({{afp})", Context::Js).at,
            3,
            "a macro missing one brace is a typo, not code"
        );
        assert!(
            error("f({{afp|raw}})", Context::Js)
                .message
                .contains("not allowed")
        );
    }

    #[test]
    fn text_inserts_values_as_they_are() {
        let out = render(
            "Deposit {{currency}} [AMOUNT]",
            Context::Text,
            &[("currency", json!("EUR & more")), ("amount", json!(5))],
        );
        assert_eq!(out.text, "Deposit EUR & more 5");
    }

    #[test]
    fn a_template_of_one_macro_says_so() {
        let t = Template::parse("{{amount}}", Context::Text).unwrap();
        assert_eq!(t.sole_macro(), Some("amount"));
        assert_eq!(
            Template::parse("v{{amount}}", Context::Text)
                .unwrap()
                .sole_macro(),
            None
        );
    }

    #[test]
    fn things_that_are_not_macros_stay_literal() {
        for (source, context) in [
            ("https://t.example/?a[]=1&b[0]=2", Context::Url),
            ("https://[::1]:8080/p?x=%41", Context::Url),
            ("https://t.example/a]b", Context::Url),
            ("50% off [1,2]", Context::Text),
            ("x = 5 % 3; y = a[i]; z = {};", Context::Js),
        ] {
            assert_eq!(
                render(source, context, &[]),
                Rendered {
                    text: source.into(),
                    missing: vec![]
                },
                "{source}"
            );
        }
    }

    #[test]
    fn broken_templates_are_refused_with_their_position() {
        let cases = [
            ("https://t.example/?a={{afp}", 22, "unbalanced `{{`"),
            ("https://t.example/?a={afp", 22, "unbalanced `{`"),
            ("https://t.example/?a={ afp }", 22, "unbalanced `{`"),
            ("https://t.example/?a=afp}", 25, "unbalanced `}`"),
            ("https://t.example/?a=[AFP&b=1", 22, "unbalanced `[`"),
            ("https://t.example/?a=%%AFP", 22, "unbalanced `%%`"),
            ("https://t.example/?a=%%%%", 22, "empty macro"),
            ("https://t.example/?a=${afp}", 22, "not a macro syntax"),
            ("https://t.example/?a=100%", 25, "%XX escape"),
            ("https://t.example/?a={{}}", 22, "empty macro"),
            ("https://t.example/?a={{1st}}", 22, "not a macro name"),
            ("https://t.example/?a={{afp|upper}}", 22, "unknown modifier"),
            ("{{url}}", 1, "written out"),
            ("//t.example/x", 1, "written out"),
            ("javascript:alert(1)", 1, "written out"),
            ("https://{{host}}/x", 9, "host must be written out"),
            ("https://t.example{{path}}", 18, "host must be written out"),
            ("Deposit {amount", 9, "unbalanced `{`"),
        ];
        for (source, at, message) in cases {
            let context = if source.starts_with("Deposit") {
                Context::Text
            } else {
                Context::Url
            };
            let e = error(source, context);
            assert!(
                e.message.contains(message) && e.at == at,
                "{source}: expected {message:?} at {at}, got {e}"
            );
        }
    }

    #[test]
    fn a_written_out_host_may_be_the_whole_url() {
        assert!(Template::parse("https://t.example", Context::Url).is_ok());
        assert!(Template::parse("HTTPS://T.example/", Context::Url).is_ok());
        assert!(Template::parse("https://t.example#{{x}}", Context::Url).is_ok());
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_eq!(error("https://t.example/ë?a={{x}", Context::Url).at, 23);
    }

    #[test]
    fn adversarial_values_cannot_change_the_host() {
        let t = Template::parse("https://t.example/{{v}}", Context::Url).unwrap();
        for v in [
            "@evil.example",
            "/evil.example",
            "\\evil.example",
            "../../x",
            "?x#y",
        ] {
            let out = t.render(&values(&[("v", json!(v))])).text;
            let url = url::Url::parse(&out).unwrap();
            assert_eq!(url.host_str(), Some("t.example"), "{v} → {out}");
        }
    }

    #[test]
    fn rendered_urls_keep_the_written_scheme_and_host_whatever_the_values() {
        let t = Template::parse(
            "https://aff.example/px?click={{v}}&to={{w|raw}}",
            Context::Url,
        )
        .unwrap();
        for v in [
            "x&evil=1",
            "@evil.example",
            "//evil.example",
            "javascript:alert(1)",
            "\\evil",
        ] {
            let out = t
                .render_url(&values(&[("v", json!(v)), ("w", json!(v))]))
                .unwrap()
                .text;
            let url = url::Url::parse(&out).unwrap();
            assert_eq!(
                (url.scheme(), url.host_str()),
                ("https", Some("aff.example")),
                "{v} → {out}"
            );
            assert_eq!(
                url.query_pairs()
                    .next()
                    .map(|(k, v)| (k.into_owned(), v.into_owned())),
                Some(("click".to_owned(), v.to_owned())),
                "a value stays inside its parameter"
            );
        }
        // The check stands on its own: a template that parsing would have refused (a raw value right
        // after the host) cannot move the pixel either.
        let unchecked = Template {
            context: Context::Url,
            parts: vec![
                Part::Literal("https://aff.example".into()),
                Part::Macro {
                    name: "v".into(),
                    raw: true,
                },
            ],
        };
        assert!(
            unchecked
                .render_url(&values(&[("v", json!("/ok"))]))
                .is_ok()
        );
        let moved = unchecked.render_url(&values(&[("v", json!(".evil.example/"))]));
        assert!(moved.unwrap_err().contains("changed the scheme or host"));
    }
}

//! Where a macro lands in JavaScript: the check that keeps a value out of strings, comments, regular
//! expressions and template literals.
//!
//! A JavaScript macro renders as one complete string literal (`"…"`), which is safe only where a value
//! may stand: `track({{afp}})`. Anywhere else the value escapes into code, and values such as `afp` come
//! from an affiliate's click:
//! - inside a string, `track('{{afp}}')`, the literal's own quotes end the string the author opened
//!   (`'+alert(1)+'`);
//! - inside a block comment, `/* {{afp}} */`, a `*/` in the value ends it (`*/alert(2);/*`);
//! - inside a template literal, `` `x{{afp}}` ``, a `${…}` in the value runs (`${alert(3)}`);
//! - inside a regular expression, `/{{afp}}/`, a `/` in the value ends it.
//!
//! So when a definition is saved its code is read with a small lexer, and every macro must stand in code
//! where an expression can begin (after an operator, `(`, `,`, `return`…, or at the start of a line, where
//! a semicolon would be inserted). Anywhere else the template is refused with the macro's position.
//!
//! The lexer knows what that needs: strings, template literals with nested `${…}`, comments (HTML-like
//! `<!--` and `-->` too), and regular expressions told from division by the token before the `/`,
//! including the parentheses of `if`, `while`, `for` and `with`, after which `/` starts a regex. Where that
//! token leaves it truly open (after `}`, which may close a block or an object, and after `of`, `yield` or
//! `await`, which may be names), both readings are followed, and a macro must be safe in every reading the
//! code allows. Code the lexer cannot read (an unterminated string) is refused only when a macro comes
//! after the point where reading failed, since where that macro lands is then unknown.

use super::TemplateError;

/// Most readings followed for one template; each ambiguous `/` may double them. Real code has none or
/// one or two; a template past this is refused rather than checked for ever.
const MAX_READINGS: usize = 64;

/// Keywords after which an expression begins (so `/` starts a regular expression, and a value may stand).
const EXPRESSION_KEYWORDS: [&str; 12] = [
    "return",
    "typeof",
    "instanceof",
    "in",
    "new",
    "delete",
    "void",
    "throw",
    "case",
    "do",
    "else",
    "extends",
];
/// Keywords whose parenthesised head is followed by a statement, which may start with a regex.
const CONTROL_KEYWORDS: [&str; 4] = ["if", "while", "for", "with"];
/// Words that are keywords in some places and names in others: what follows them is open.
const CONTEXTUAL_KEYWORDS: [&str; 3] = ["of", "yield", "await"];

/// One unit of the code: a character, or a macro (which renders as one literal).
#[derive(Clone, Copy)]
enum Unit<'a> {
    Char {
        c: char,
        /// 1-based character position in the template.
        at: usize,
    },
    Macro {
        at: usize,
        /// The macro as written, e.g. `{{afp}}`.
        shown: &'a str,
    },
}

/// Checks that every macro of a JavaScript template stands where an expression can begin. `macros`
/// holds the byte ranges of the template's macros in `source`, in order.
pub(super) fn check(source: &str, macros: &[(usize, usize)]) -> Result<(), TemplateError> {
    if macros.is_empty() {
        return Ok(());
    }
    let units = units(source, macros);
    let mut pending = vec![Reading::new()];
    let mut outcomes = Vec::new();
    let mut started = 1;
    while let Some(reading) = pending.pop() {
        outcomes.push(reading.run(&units, &mut pending, &mut started));
    }
    // A reading cut short by the cap was never checked: refuse rather than trust the others.
    if let Some(failure) = outcomes
        .iter()
        .filter_map(|o| o.failed.as_ref())
        .find(|f| f.capped)
    {
        return Err(TemplateError {
            at: failure.at,
            message: format!(
                "{}: the code cannot be checked; write it with fewer `/` after `}}`",
                failure.reason
            ),
        });
    }
    let valid: Vec<&Outcome> = outcomes.iter().filter(|o| o.failed.is_none()).collect();
    // With a reading that reads the whole code, the others were wrong guesses; without one, every
    // reading may be the real one.
    let considered = if valid.is_empty() {
        outcomes.iter().collect()
    } else {
        valid
    };
    if let Some(bad) = considered
        .iter()
        .filter_map(|o| o.misplaced.as_ref())
        .min_by_key(|e| e.at)
    {
        return Err(bad.clone());
    }
    for outcome in &considered {
        let Some(failed) = &outcome.failed else {
            continue;
        };
        let unchecked = units[failed.index..].iter().find_map(|u| match u {
            Unit::Macro { at, shown } => Some((*at, *shown)),
            Unit::Char { .. } => None,
        });
        if let Some((at, shown)) = unchecked {
            return Err(TemplateError {
                at,
                message: format!(
                    "cannot tell where {shown} lands in this JavaScript: {} (character {})",
                    failed.reason, failed.at
                ),
            });
        }
    }
    Ok(())
}

/// The code as units, with positions.
fn units<'a>(source: &'a str, macros: &[(usize, usize)]) -> Vec<Unit<'a>> {
    let mut out = Vec::with_capacity(source.len());
    let mut macros = macros.iter().peekable();
    let mut at = 0;
    let mut chars = source.char_indices().peekable();
    while let Some(&(byte, c)) = chars.peek() {
        at += 1;
        match macros.peek() {
            Some(&&(start, end)) if start == byte => {
                out.push(Unit::Macro {
                    at,
                    shown: &source[start..end],
                });
                macros.next();
                while chars.peek().is_some_and(|&(b, _)| b < end) {
                    chars.next();
                    at += 1;
                }
                at -= 1;
            }
            _ => {
                out.push(Unit::Char { c, at });
                chars.next();
            }
        }
    }
    out
}

/// The token before the current position, as far as what may follow it is concerned.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Before {
    /// The start, an operator or an expression keyword: an expression may begin (`/` is a regex).
    Operator,
    /// The end of a value (a name, number, string, `)` `]`, a macro): `/` divides; no value may follow.
    Value,
    /// The word `if`, `while`, `for` or `with`: its `(` is remembered, so its `)` lets a statement begin.
    Control,
    /// `}`, or a word that may be a keyword or a name: both readings are followed.
    Open,
}

/// Where reading failed, so macros after it cannot be placed.
#[derive(Clone, Debug)]
struct Failure {
    /// Index of the unit where reading failed.
    index: usize,
    /// Its character position.
    at: usize,
    reason: String,
    /// Stopped by [`MAX_READINGS`], not by the code.
    capped: bool,
}

/// How one reading of the code went.
struct Outcome {
    /// The first macro found where no value may stand.
    misplaced: Option<TemplateError>,
    /// Why the reading stopped before the end, if it did.
    failed: Option<Failure>,
}

/// One reading of the code: the lexer's whole state, cloned where the code may be read two ways.
#[derive(Clone)]
struct Reading {
    index: usize,
    before: Before,
    /// Whether the last token was `.` or `?.`: a keyword after it is a property name.
    after_dot: bool,
    /// A line ended since the last token: a semicolon may be inserted, so a value may begin.
    line_break: bool,
    /// Only spaces and comments so far on this line (`-->` then starts a comment).
    line_clear: bool,
    /// For each open `(`: whether it belongs to `if`, `while`, `for` or `with`.
    parens: Vec<bool>,
    /// For each open `${…}` of a template literal: the braces opened inside it and not yet closed, and
    /// where its template literal was opened.
    substitutions: Vec<(u32, usize)>,
    misplaced: Option<TemplateError>,
    /// Set to read the `/` at `index` as the start of a regex, in a reading forked off at it.
    regex_here: bool,
}

impl Reading {
    fn new() -> Self {
        Reading {
            index: 0,
            before: Before::Operator,
            after_dot: false,
            line_break: false,
            line_clear: true,
            parens: Vec::new(),
            substitutions: Vec::new(),
            misplaced: None,
            regex_here: false,
        }
    }

    /// Reads to the end (or to where reading fails), forking readings onto `pending` at each open `/`.
    fn run(mut self, units: &[Unit], pending: &mut Vec<Reading>, started: &mut usize) -> Outcome {
        let failed = loop {
            match self.step(units, pending, started) {
                Ok(true) => {}
                Ok(false) => break None,
                Err(failure) => break Some(failure),
            }
        };
        Outcome {
            misplaced: self.misplaced,
            failed,
        }
    }

    fn char_at(units: &[Unit], index: usize) -> Option<char> {
        match units.get(index) {
            Some(Unit::Char { c, .. }) => Some(*c),
            _ => None,
        }
    }

    fn at(units: &[Unit], index: usize) -> usize {
        match units.get(index) {
            Some(Unit::Char { at, .. } | Unit::Macro { at, .. }) => *at,
            None => units.last().map_or(1, |u| match u {
                Unit::Char { at, .. } | Unit::Macro { at, .. } => at + 1,
            }),
        }
    }

    fn fail(units: &[Unit], index: usize, reason: impl Into<String>) -> Failure {
        Failure {
            index,
            at: Self::at(units, index),
            reason: reason.into(),
            capped: false,
        }
    }

    /// Notes a macro found inside something that is not code.
    fn misplaced(&mut self, at: usize, shown: &str, message: String) {
        if self.misplaced.is_none() {
            self.misplaced = Some(TemplateError {
                at,
                message: format!("{shown} {message}"),
            });
        }
    }

    fn token(&mut self, before: Before) {
        self.before = before;
        self.after_dot = false;
        self.line_break = false;
        self.line_clear = false;
    }

    /// Reads one token (or space, or comment). False at the end.
    fn step(
        &mut self,
        units: &[Unit],
        pending: &mut Vec<Reading>,
        started: &mut usize,
    ) -> Result<bool, Failure> {
        let start = self.index;
        let c = match units.get(start) {
            None => return Ok(false),
            Some(Unit::Macro { at, shown }) => {
                // Never a property name (`o.{{x}}`), whatever the line breaks.
                let may_stand = !self.after_dot
                    && (self.line_break || matches!(self.before, Before::Operator | Before::Open));
                if !may_stand {
                    self.misplaced(
                        *at,
                        shown,
                        "follows a value, where no value can stand: a JavaScript macro renders as a complete literal, so it goes where an expression can, e.g. f({{afp}}) or var a = {{afp}};".into(),
                    );
                }
                self.index += 1;
                self.token(Before::Value);
                return Ok(true);
            }
            Some(Unit::Char { c, .. }) => *c,
        };
        let next = Self::char_at(units, start + 1);
        let rest_is = |text: &str| {
            text.chars()
                .enumerate()
                .all(|(i, t)| Self::char_at(units, start + i) == Some(t))
        };
        if is_line_end(c) {
            self.index += 1;
            self.line_break = true;
            self.line_clear = true;
            return Ok(true);
        }
        if c.is_whitespace() || c == '\u{FEFF}' {
            self.index += 1;
            return Ok(true);
        }
        let line_comment = (c == '/' && next == Some('/'))
            || rest_is("<!--")
            || (self.line_clear && rest_is("-->"))
            || (start == 0 && rest_is("#!"));
        if line_comment {
            self.skip_line_comment(units);
            return Ok(true);
        }
        if c == '/' && next == Some('*') {
            return self.skip_block_comment(units);
        }
        if c == '/' {
            let regex = self.regex_here
                || match self.before {
                    Before::Operator | Before::Control => true,
                    Before::Value => false,
                    Before::Open => {
                        if *started >= MAX_READINGS {
                            return Err(Failure {
                                capped: true,
                                ..Self::fail(
                                    units,
                                    start,
                                    "too many `/` that could start a regular expression or divide",
                                )
                            });
                        }
                        *started += 1;
                        let mut other = self.clone();
                        other.regex_here = true;
                        pending.push(other);
                        false
                    }
                };
            self.regex_here = false;
            if regex {
                return self.read_regex(units);
            }
            self.index += 1;
            self.token(Before::Operator);
            return Ok(true);
        }
        match c {
            '\'' | '"' => self.read_string(units, c),
            '`' => {
                self.index += 1;
                self.read_template_text(units, Self::at(units, start))
            }
            '(' => {
                self.parens.push(self.before == Before::Control);
                self.index += 1;
                self.token(Before::Operator);
                Ok(true)
            }
            ')' => {
                let control = self.parens.pop().unwrap_or(false);
                self.index += 1;
                // After the head of `if (…)` a statement begins; after any other `)`, a value ended.
                self.token(if control {
                    Before::Operator
                } else {
                    Before::Value
                });
                Ok(true)
            }
            '{' => {
                if let Some((open, _)) = self.substitutions.last_mut() {
                    *open += 1;
                }
                self.index += 1;
                self.token(Before::Operator);
                Ok(true)
            }
            '}' => {
                self.index += 1;
                match self.substitutions.last_mut() {
                    Some((0, opened)) => {
                        let opened = *opened;
                        self.substitutions.pop();
                        self.read_template_text(units, opened)
                    }
                    Some((open, _)) => {
                        *open -= 1;
                        self.token(Before::Open);
                        Ok(true)
                    }
                    None => {
                        self.token(Before::Open);
                        Ok(true)
                    }
                }
            }
            ']' => {
                self.index += 1;
                self.token(Before::Value);
                Ok(true)
            }
            '.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                self.read_number(units);
                Ok(true)
            }
            '.' if rest_is("...") => {
                self.index += 3;
                self.token(Before::Operator);
                Ok(true)
            }
            '.' => {
                self.index += 1;
                self.token(Before::Operator);
                self.after_dot = true;
                Ok(true)
            }
            '?' if next == Some('.')
                && !Self::char_at(units, start + 2).is_some_and(|d| d.is_ascii_digit()) =>
            {
                self.index += 2;
                self.token(Before::Operator);
                self.after_dot = true;
                Ok(true)
            }
            '+' | '-' if next == Some(c) => {
                // Postfix after a value (`i++ / 2`), prefix otherwise.
                let postfix = matches!(self.before, Before::Value) && !self.line_break;
                self.index += 2;
                self.token(if postfix {
                    Before::Value
                } else {
                    Before::Operator
                });
                Ok(true)
            }
            c if c.is_ascii_digit() => {
                self.read_number(units);
                Ok(true)
            }
            c if is_word_char(c) || c == '#' => {
                self.read_word(units);
                Ok(true)
            }
            _ => {
                // Every other punctuator lets an expression begin after it.
                self.index += 1;
                self.token(Before::Operator);
                Ok(true)
            }
        }
    }

    fn skip_line_comment(&mut self, units: &[Unit]) {
        let opened = Self::at(units, self.index);
        while let Some(unit) = units.get(self.index) {
            match unit {
                Unit::Char { c, .. } if is_line_end(*c) => return,
                Unit::Char { .. } => {}
                Unit::Macro { at, shown } => self.misplaced(
                    *at,
                    shown,
                    format!("is inside a comment (opened at character {opened}): a value there is never used, and one that ends the comment runs as code; move it out of the comment"),
                ),
            }
            self.index += 1;
        }
    }

    fn skip_block_comment(&mut self, units: &[Unit]) -> Result<bool, Failure> {
        let start = self.index;
        let opened = Self::at(units, start);
        self.index += 2;
        loop {
            match units.get(self.index) {
                None => {
                    return Err(Self::fail(
                        units,
                        start,
                        "a /* comment is never closed with */",
                    ));
                }
                Some(Unit::Char { c: '*', .. }) if Self::char_at(units, self.index + 1) == Some('/') => {
                    self.index += 2;
                    return Ok(true);
                }
                Some(Unit::Char { c, .. }) => {
                    if is_line_end(*c) {
                        self.line_break = true;
                    }
                }
                Some(Unit::Macro { at, shown }) => self.misplaced(
                    *at,
                    shown,
                    format!("is inside a comment (opened at character {opened}): a value holding */ would end the comment and run as code; move it out of the comment"),
                ),
            }
            self.index += 1;
        }
    }

    fn read_string(&mut self, units: &[Unit], quote: char) -> Result<bool, Failure> {
        let start = self.index;
        let opened = Self::at(units, start);
        self.index += 1;
        loop {
            match units.get(self.index) {
                Some(Unit::Char { c, .. }) if *c == quote => {
                    self.index += 1;
                    self.token(Before::Value);
                    return Ok(true);
                }
                Some(Unit::Char { c: '\\', .. }) => {
                    // An escape, or a line continuation (`\` then CR LF counts as one line end).
                    self.index += 1;
                    if Self::char_at(units, self.index) == Some('\r')
                        && Self::char_at(units, self.index + 1) == Some('\n')
                    {
                        self.index += 1;
                    }
                }
                Some(Unit::Char { c: '\n' | '\r', .. }) | None => {
                    return Err(Self::fail(
                        units,
                        start,
                        format!("a {quote}…{quote} string is not closed on its line"),
                    ));
                }
                Some(Unit::Char { .. }) => {}
                Some(Unit::Macro { at, shown }) => self.misplaced(
                    *at,
                    shown,
                    format!("is inside a {quote}…{quote} string (opened at character {opened}): a JavaScript macro is already a complete string literal, and its quotes would end yours; write it without quotes, e.g. track({shown}) rather than track({quote}{shown}{quote})"),
                ),
            }
            self.index += 1;
        }
    }

    /// Reads template-literal text up to its closing backtick or the next `${`.
    fn read_template_text(&mut self, units: &[Unit], opened: usize) -> Result<bool, Failure> {
        loop {
            match units.get(self.index) {
                None => {
                    return Err(Self::fail(
                        units,
                        self.index,
                        format!("a `…` template literal opened at character {opened} is never closed"),
                    ));
                }
                Some(Unit::Char { c: '`', .. }) => {
                    self.index += 1;
                    self.token(Before::Value);
                    return Ok(true);
                }
                Some(Unit::Char { c: '\\', .. }) => self.index += 1,
                Some(Unit::Char { c: '$', .. }) if Self::char_at(units, self.index + 1) == Some('{') => {
                    self.index += 2;
                    self.substitutions.push((0, opened));
                    self.token(Before::Operator);
                    return Ok(true);
                }
                Some(Unit::Char { .. }) => {}
                Some(Unit::Macro { at, shown }) => self.misplaced(
                    *at,
                    shown,
                    format!("is inside a `…` template literal (opened at character {opened}): a ${{…}} in the value would run as code; put it in a substitution, ${{ {shown} }}, or outside the template"),
                ),
            }
            self.index += 1;
        }
    }

    fn read_regex(&mut self, units: &[Unit]) -> Result<bool, Failure> {
        let start = self.index;
        let opened = Self::at(units, start);
        let unclosed = || {
            Err(Self::fail(
                units,
                start,
                "a /…/ regular expression is not closed on its line",
            ))
        };
        self.index += 1;
        let mut in_class = false;
        loop {
            match units.get(self.index) {
                Some(Unit::Char { c: '/', .. }) if !in_class => break,
                Some(Unit::Char { c: '\\', .. }) => {
                    self.index += 1;
                    if Self::char_at(units, self.index).is_none_or(is_line_end) {
                        return unclosed();
                    }
                }
                Some(Unit::Char { c: '[', .. }) => in_class = true,
                Some(Unit::Char { c: ']', .. }) => in_class = false,
                Some(Unit::Char { c, .. }) if is_line_end(*c) => return unclosed(),
                None => return unclosed(),
                Some(Unit::Char { .. }) => {}
                Some(Unit::Macro { at, shown }) => self.misplaced(
                    *at,
                    shown,
                    format!("is inside a /…/ regular expression (opened at character {opened}): a / in the value would end it and run the rest as code; build it from the value instead, new RegExp({shown})"),
                ),
            }
            self.index += 1;
        }
        self.index += 1;
        while Self::char_at(units, self.index).is_some_and(is_word_char) {
            self.index += 1;
        }
        self.token(Before::Value);
        Ok(true)
    }

    fn read_number(&mut self, units: &[Unit]) {
        let hex_like = Self::char_at(units, self.index) == Some('0')
            && Self::char_at(units, self.index + 1).is_some_and(|c| c.is_ascii_alphabetic());
        while let Some(c) = Self::char_at(units, self.index) {
            let exponent_sign = matches!(c, '+' | '-')
                && !hex_like
                && matches!(Self::char_at(units, self.index - 1), Some('e' | 'E'));
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || exponent_sign {
                self.index += 1;
            } else {
                break;
            }
        }
        self.token(Before::Value);
    }

    fn read_word(&mut self, units: &[Unit]) {
        let start = self.index;
        self.index += 1;
        while Self::char_at(units, self.index).is_some_and(is_word_char) {
            self.index += 1;
        }
        let word: String = (start..self.index)
            .filter_map(|i| Self::char_at(units, i))
            .collect();
        let property = self.after_dot;
        let before = if property {
            Before::Value
        } else if word == "await" && self.before == Before::Control {
            // `for await (…)`: the `(` still belongs to the `for`.
            Before::Control
        } else if EXPRESSION_KEYWORDS.contains(&word.as_str()) {
            Before::Operator
        } else if CONTROL_KEYWORDS.contains(&word.as_str()) {
            Before::Control
        } else if CONTEXTUAL_KEYWORDS.contains(&word.as_str()) {
            Before::Open
        } else {
            Before::Value
        };
        self.token(before);
    }
}

fn is_line_end(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}')
}

/// A character of a name (or of a number's tail): ASCII letters, digits, `_`, `$`, `\` (a Unicode escape)
/// and any non-ASCII character that is not a space.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '$' | '\\')
        || (!c.is_ascii() && !c.is_whitespace() && c != '\u{FEFF}' && !is_line_end(c))
}

#[cfg(test)]
mod tests {
    use crate::template::{Context, Template, TemplateError};

    fn check(source: &str) -> Result<(), TemplateError> {
        Template::parse(source, Context::Js).map(|_| ())
    }

    #[test]
    fn a_macro_inside_a_string_comment_template_or_regex_is_refused_where_it_stands() {
        let cases = [
            (
                "track('{{afp}}')",
                8,
                "inside a '…' string (opened at character 7)",
            ),
            ("track(\"x{{afp}}\")", 9, "inside a \"…\" string"),
            ("track('%%AFP%%')", 8, "inside a '…' string"),
            (
                "a(); /* {{afp}} */",
                9,
                "inside a comment (opened at character 6)",
            ),
            ("a(); // {{afp}}", 9, "inside a comment"),
            ("a(); <!-- {{afp}}", 11, "inside a comment"),
            ("a();\n--> {{afp}}", 10, "inside a comment"),
            (
                "f(`x{{afp}}`)",
                5,
                "inside a `…` template literal (opened at character 3)",
            ),
            ("f(`a${b}c{{afp}}`)", 10, "inside a `…` template literal"),
            (
                "f(`a${ {x: `{{afp}}`} }`)",
                13,
                "inside a `…` template literal",
            ),
            (
                "/{{afp}}/.test(x)",
                2,
                "inside a /…/ regular expression (opened at character 1)",
            ),
            (
                "ok = /[/]{{afp}}/.test(x)",
                10,
                "inside a /…/ regular expression",
            ),
            ("if (x) /{{afp}}/.test(y)", 9, "regular expression"),
            ("return /a{{afp}}/", 10, "regular expression"),
            ("f() {{afp}}", 5, "follows a value"),
            ("a = 'x' {{afp}}", 9, "follows a value"),
            ("a = {{b}}{{c}}", 10, "follows a value"),
            ("o.{{afp}} = 1", 3, "follows a value"),
        ];
        for (source, at, message) in cases {
            let e = check(source).expect_err(source);
            assert!(
                e.at == at && e.message.contains(message),
                "{source:?}: expected {message:?} at {at}, got {e}"
            );
        }
    }

    #[test]
    fn a_macro_where_a_value_stands_is_accepted() {
        for source in [
            "track({{afp}})",
            "fbq('track', 'Purchase', {value: {{amount}}, currency: {{currency}}});",
            "window.dataLayer && dataLayer.push({event: 'ftd', click: %%AFP%%})",
            "f(`x${ {{afp}} }y`, `${a}`)",
            "var a = 1\n{{afp}}",
            "x = a / {{b}} / 2",
            "x = a\n/ {{b}}",
            "if (a) { f({{x}}) } else { g({{y}}) }",
            "s = 'it\\'s'; t = \"a\\\"b\"; f({{x}})",
            "re = /[/]\\//g; f({{x}})",
            "a = b++ / 2; f({{x}})",
            "// a note\nf({{x}})",
            "/* a\nnote */ f({{x}})",
            "x = `a` + {{x}}",
            "i-->0; f({{x}})",
            "n = .5 / 2 + 1e-3 / {{x}}",
            "return {{x}}",
            "x = typeof {{x}}",
            "x = a ? {{b}} : {{c}}",
            "(new Image()).src = {{url}};",
            "o = {a: 1} / 2; f({{x}})",
        ] {
            assert!(check(source).is_ok(), "{source:?}: {:?}", check(source));
        }
    }

    #[test]
    fn where_a_slash_is_ambiguous_every_reading_must_be_safe() {
        // After `}` a `/` divides (an object closed) or starts a regex (a block closed): both are read.
        let e = check("if (a) {}\n/{{afp}}/.test(b)").unwrap_err();
        assert!(e.message.contains("regular expression"), "{e}");
        // A regex reading that cannot be read to the end is not a reading the code allows.
        assert!(check("o = {}\n/ {{afp}}").is_ok());
        // `of`, `yield` and `await` may be names or keywords.
        let e = check("for (x of /{{afp}}/.exec(s)) {}").unwrap_err();
        assert!(e.message.contains("regular expression"), "{e}");
        let e = check("for await (x of y) /{{afp}}/.test(x)").unwrap_err();
        assert!(e.message.contains("regular expression"), "{e}");
    }

    #[test]
    fn code_with_more_ambiguous_slashes_than_can_be_followed_is_refused() {
        let code = format!("{}f({{{{x}}}})", "}/a/ ".repeat(10));
        let e = check(&code).unwrap_err();
        assert!(e.message.contains("cannot be checked"), "{e}");
    }

    #[test]
    fn code_that_cannot_be_read_is_refused_only_when_a_macro_follows() {
        let e = check("f('unclosed\nf({{x}})").unwrap_err();
        assert!(
            e.message.contains("cannot tell where {{x}} lands")
                && e.message.contains("not closed on its line"),
            "{e}"
        );
        assert_eq!(e.at, 15);
        assert!(check("f({{x}}); s = 'oops").is_ok());
        assert!(check("f({{x}}); /* never closed").is_ok());
    }

    #[test]
    fn positions_count_characters_and_every_syntax_is_checked() {
        let e = check("ë = 'é{{afp}}'").unwrap_err();
        assert_eq!(e.at, 7);
        let e = check("x = '%%Afp%%'").unwrap_err();
        assert!(e.message.starts_with("%%Afp%% is inside"), "{e}");
    }
}

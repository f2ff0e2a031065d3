//! Affiliate-written templates and attacker-chosen macro values. The input is a context byte, the
//! template, a NUL, then NUL-separated values given to the template's macros in turn. Properties:
//! - parsing and rendering never panic;
//! - in a URL template without `|raw` macros, no value moves the pixel: if the template renders to a
//!   valid URL with empty values, any values give the same scheme, host and port (or a URL too long);
//! - in a JSON template, values never break the document: a template that renders to valid JSON with
//!   plain sample strings (as definitions are checked when saved) stays valid with any strings;
//! - in JavaScript, a value stays one string literal that cannot close the script element.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use pixelhub::template::{Context, Template, js_string};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut pieces = text.split('\0');
    let source = pieces.next().unwrap_or_default();
    let values: Vec<&str> = pieces.collect();
    let context = [
        Context::Url,
        Context::Js,
        Context::Text,
        Context::Form,
        Context::Json,
    ][usize::from(selector) % 5];

    for value in &values {
        let literal = js_string(value);
        let lower = literal.to_ascii_lowercase();
        assert!(
            literal.starts_with('"') && literal.ends_with('"'),
            "{literal}"
        );
        assert!(
            !lower.contains("</script") && !literal.contains(['\u{2028}', '\u{2029}']),
            "{literal}"
        );
    }

    let Ok(template) = Template::parse(source, context) else {
        return;
    };
    let names: Vec<String> = template.macros().map(str::to_owned).collect();
    let empty: BTreeMap<String, Value> = names.iter().map(|n| (n.clone(), Value::Null)).collect();
    let filled: BTreeMap<String, Value> = names
        .iter()
        .zip(values.iter().cycle())
        .map(|(n, v)| (n.clone(), Value::String((*v).to_owned())))
        .collect();
    let rendered = template.render(&filled);

    match context {
        Context::Url if !source.to_ascii_lowercase().contains("raw") && !values.is_empty() => {
            if let Ok(plain) = template.render_url(&empty) {
                // Values may make a URL too long; they may never move it.
                match template.render_url(&filled) {
                    Ok(with_values) => {
                        let origin = |u: &str| url::Url::parse(u).unwrap().origin();
                        assert_eq!(
                            origin(&plain.text),
                            origin(&with_values.text),
                            "{source:?} {values:?}"
                        );
                    }
                    Err(e) => assert!(
                        !e.contains("scheme or host"),
                        "{source:?} with {values:?}: {e}"
                    ),
                }
            }
        }
        Context::Json if !values.is_empty() => {
            let samples: BTreeMap<String, Value> = names
                .iter()
                .map(|n| (n.clone(), Value::from("sample")))
                .collect();
            let with_samples = template.render(&samples).text;
            if serde_json::from_str::<Value>(&with_samples).is_ok() {
                serde_json::from_str::<Value>(&rendered.text).unwrap_or_else(|e| {
                    panic!("{source:?} with {values:?}: {e}: {}", rendered.text)
                });
            }
        }
        _ => {}
    }
});

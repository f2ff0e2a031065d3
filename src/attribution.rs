//! Attribution from the browser: the affiliate click's parameters the client script captured on a landing
//! page, and the parameter names a brand has seen (for its pixel editor).
//!
//! Pure rules, no storage. The client keeps what it captured in the page's first-party storage and sends
//! it with its hello once the player is known; [`check`] bounds it and keeps what the brand asks for, and
//! [`adopt`] decides whether it becomes the player's attribution context: never over what the brand itself
//! reported in a registration event (the brand's own data wins). [`ParamsSeen`] is the per-brand tally of
//! parameter names, kept in the catalog.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::PlayerContext;

/// Most parameters one capture may carry.
pub const MAX_CAPTURED_PARAMS: usize = 32;
/// Longest captured value, in characters.
pub const MAX_CAPTURED_VALUE: usize = 512;
/// Longest parameter name (as for event params).
pub const MAX_PARAM_NAME: usize = 64;
/// Most patterns in a brand's `capture_params`.
pub const MAX_CAPTURE_PATTERNS: usize = 64;
/// Most parameter names [`ParamsSeen`] keeps per brand: names beyond it are not counted, so neither a
/// noisy affiliate nor a hostile page can grow a brand's catalog entry without bound.
pub const MAX_SEEN_NAMES: usize = 500;
/// How far ahead of the hub's clock a capture's time may be (a player's clock runs fast).
const CLOCK_SKEW_MS: u64 = 24 * 3600 * 1000;

/// What a brand captures from landing pages when it names nothing else: the click-id params of
/// [`crate::vocabulary::CLICK_ID_PARAMS`], the affiliate, campaign and sub-id names the platforms put in
/// their tracking links, and every `utm_` parameter.
pub const DEFAULT_CAPTURE_PARAMS: &[&str] = &[
    "affid",
    "aff_id",
    "affiliate_id",
    "deal_id",
    "campaign",
    "campaign_id",
    "creative",
    "publisher_id",
    "subid",
    "sub_id",
    "sub_id_*",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
    "utm_*",
];

/// The capture patterns of a brand that names none: the click-id params first, then
/// [`DEFAULT_CAPTURE_PARAMS`].
pub fn default_capture_params() -> Vec<String> {
    crate::vocabulary::CLICK_ID_PARAMS
        .iter()
        .map(|(name, _)| *name)
        .chain(DEFAULT_CAPTURE_PARAMS.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// Whether `name` (lower-cased) is one of `patterns`: a name, or a prefix ending in `*`.
pub fn captures(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix) && name.len() > prefix.len(),
        None => p == name,
    })
}

/// Whether `name` is a param name: a letter, then letters, digits or `_`, at most [`MAX_PARAM_NAME`].
pub fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PARAM_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `pattern` is a capture pattern: a param name, or one followed by `*` (any name it begins).
pub fn is_capture_pattern(pattern: &str) -> bool {
    is_param_name(pattern.strip_suffix('*').unwrap_or(pattern))
}

/// Which touch of several clicks a browser keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Touch {
    /// The first click within the window; later ones are ignored until it runs out.
    First,
    /// The latest click: each landing with captured params replaces what was kept.
    #[default]
    Last,
}

/// Where a player's attribution context came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The brand reported it, in a registration-stage event.
    Event,
    /// The client script captured it on a landing page, and no event of the brand has reported one.
    Browser,
}

impl Source {
    /// The name used in answers and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Event => "event",
            Source::Browser => "browser",
        }
    }
}

/// A capture as the hello carries it: `{"params": {"clickid": "abc"}, "captured_at_ms": 1733...}`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CapturedClick {
    /// Param name to value, as read from the landing page's URL.
    pub params: BTreeMap<String, String>,
    /// When the page captured them, by the browser's clock (Unix milliseconds).
    pub captured_at_ms: u64,
}

/// What of a brand's settings rules a capture.
#[derive(Clone, Copy, Debug)]
pub struct CaptureRules<'a> {
    /// The names (and `prefix*` patterns) the brand captures.
    pub params: &'a [String],
    /// First or last touch.
    pub touch: Touch,
    /// How long a capture counts, in days.
    pub window_days: u32,
}

impl CaptureRules<'_> {
    fn window_ms(&self) -> u64 {
        u64::from(self.window_days) * 24 * 3600 * 1000
    }
}

/// Why a capture was refused as malformed: the hello is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCapture(pub String);

/// Checks a capture from a hello against the bounds (malformed: an error) and the brand's rules (names
/// it does not capture are dropped; a capture from outside the window, or left empty, is `None`).
pub fn check(
    click: CapturedClick,
    rules: CaptureRules<'_>,
    now_ms: u64,
) -> Result<Option<CapturedClick>, BadCapture> {
    if click.params.len() > MAX_CAPTURED_PARAMS {
        return Err(BadCapture(format!(
            "attribution: at most {MAX_CAPTURED_PARAMS} params"
        )));
    }
    for (name, value) in &click.params {
        if !is_param_name(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(BadCapture(format!(
                "attribution: {name:?} is not a lower-case param name"
            )));
        }
        if value.is_empty()
            || value.chars().count() > MAX_CAPTURED_VALUE
            || value.chars().any(char::is_control)
        {
            return Err(BadCapture(format!(
                "attribution: {name} must be 1 to {MAX_CAPTURED_VALUE} characters without control characters"
            )));
        }
    }
    let in_window = click.captured_at_ms <= now_ms + CLOCK_SKEW_MS
        && click.captured_at_ms + rules.window_ms() > now_ms;
    let params: BTreeMap<String, String> = click
        .params
        .into_iter()
        .filter(|(name, _)| captures(rules.params, name))
        .collect();
    Ok((in_window && !params.is_empty()).then_some(CapturedClick {
        params,
        captured_at_ms: click.captured_at_ms,
    }))
}

/// The player's context with `click` adopted, or `None` when it stays as it is: the brand reported an
/// attribution (a registration-stage event with params, an affiliate or a deal), or the browser
/// capture already kept is the one `touch` prefers.
pub fn adopt(
    context: &PlayerContext,
    click: &CapturedClick,
    touch: Touch,
) -> Option<PlayerContext> {
    match context.attribution_source() {
        Some(Source::Event) => return None,
        Some(Source::Browser) => {
            let kept = context.captured_at_ms.unwrap_or(0);
            let keep = match touch {
                Touch::First => kept <= click.captured_at_ms,
                Touch::Last => kept >= click.captured_at_ms,
            };
            if keep {
                return None;
            }
        }
        None => {}
    }
    let mut adopted = context.clone();
    for name in std::mem::take(&mut adopted.from_browser) {
        adopted.params.remove(&name);
    }
    for (name, value) in &click.params {
        adopted
            .params
            .insert(name.clone(), Value::String(value.clone()));
        adopted.from_browser.push(name.clone());
    }
    adopted.source = Some(Source::Browser);
    adopted.captured_at_ms = Some(click.captured_at_ms);
    Some(adopted)
}

/// The parameter names a brand has seen, from events and from browsers: what its pixel editor offers as
/// macros. A tally, kept in the catalog and merged into from each process's counts every few seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParamsSeen {
    /// Name to its counts.
    pub params: BTreeMap<String, SeenParam>,
}

/// How often one parameter name was seen, and when last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeenParam {
    /// Events that carried it.
    pub events: u64,
    /// Browser captures that carried it.
    pub browsers: u64,
    /// When it was last seen (Unix milliseconds).
    pub last_seen_ms: u64,
}

impl SeenParam {
    /// Adds `other`'s counts; the later last-seen wins.
    pub fn add(&mut self, other: &SeenParam) {
        self.events += other.events;
        self.browsers += other.browsers;
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
    }
}

impl ParamsSeen {
    /// Adds `counts`; a name new to the tally is taken while it holds fewer than [`MAX_SEEN_NAMES`].
    pub fn merge(&mut self, counts: &BTreeMap<String, SeenParam>) {
        for (name, seen) in counts {
            if let Some(kept) = self.params.get_mut(name) {
                kept.add(seen);
            } else if self.params.len() < MAX_SEEN_NAMES {
                self.params.insert(name.clone(), *seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    fn rules(params: &[String], touch: Touch) -> CaptureRules<'_> {
        CaptureRules {
            params,
            touch,
            window_days: 30,
        }
    }

    fn click(pairs: &[(&str, &str)], at: u64) -> CapturedClick {
        CapturedClick {
            params: pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            captured_at_ms: at,
        }
    }

    #[test]
    fn the_default_captures_the_seeds_click_ids_sub_ids_and_utm_params() {
        let defaults = default_capture_params();
        for name in [
            "clickid",
            "affclickid",
            "afp",
            "clid",
            "dyn",
            "btag",
            "sub_id_3",
            "sub2",
            "utm_source",
            "utm_campaign",
            "affid",
        ] {
            assert!(captures(&defaults, name), "{name}");
        }
        for name in ["utm_", "player_id", "token", "email", "subscribe"] {
            assert!(!captures(&defaults, name), "{name}");
        }
        assert!(defaults.iter().all(|p| is_capture_pattern(p)));
    }

    #[test]
    fn a_capture_keeps_the_brands_names_within_its_window() {
        let patterns = default_capture_params();
        let now = 100 * DAY;
        let checked = check(
            click(&[("clickid", "c-1"), ("email", "a@b.example")], now - DAY),
            rules(&patterns, Touch::Last),
            now,
        )
        .unwrap()
        .unwrap();
        assert_eq!(checked, click(&[("clickid", "c-1")], now - DAY));
        let stale = click(&[("clickid", "c-1")], now - 30 * DAY);
        assert_eq!(check(stale, rules(&patterns, Touch::Last), now), Ok(None));
        let only_others = click(&[("email", "a@b.example")], now);
        assert_eq!(
            check(only_others, rules(&patterns, Touch::Last), now),
            Ok(None)
        );
        let future = click(&[("clickid", "c-1")], now + 2 * DAY);
        assert_eq!(check(future, rules(&patterns, Touch::Last), now), Ok(None));
    }

    #[test]
    fn a_malformed_capture_is_refused_whole() {
        let patterns = default_capture_params();
        let now = 100 * DAY;
        let long = "x".repeat(MAX_CAPTURED_VALUE + 1);
        for bad in [
            click(&[("clickid", &long)], now),
            click(&[("clickid", "")], now),
            click(&[("clickid", "a\nb")], now),
            click(&[("ClickId", "c")], now),
            click(&[("1x", "c")], now),
        ] {
            assert!(check(bad, rules(&patterns, Touch::Last), now).is_err());
        }
        let many: Vec<(String, String)> = (0..=MAX_CAPTURED_PARAMS)
            .map(|i| (format!("utm_{i}"), "v".into()))
            .collect();
        let many = CapturedClick {
            params: many.into_iter().collect(),
            captured_at_ms: now,
        };
        assert!(check(many, rules(&patterns, Touch::Last), now).is_err());
    }

    #[test]
    fn the_brands_reported_attribution_is_never_replaced() {
        let mut reported = PlayerContext::default();
        reported
            .params
            .insert("clickid".into(), Value::String("brand".into()));
        reported.source = Some(Source::Event);
        assert_eq!(
            adopt(&reported, &click(&[("clickid", "browser")], 1), Touch::Last),
            None
        );
        // A context written before sources were kept: its params are the brand's.
        reported.source = None;
        assert_eq!(
            adopt(&reported, &click(&[("clickid", "browser")], 1), Touch::Last),
            None
        );
    }

    #[test]
    fn browsers_captures_follow_the_brands_touch() {
        let first = adopt(
            &PlayerContext::default(),
            &click(&[("clickid", "a"), ("sub1", "s")], 10),
            Touch::Last,
        )
        .unwrap();
        assert_eq!(first.attribution_source(), Some(Source::Browser));
        assert_eq!(
            first.from_browser,
            vec!["clickid".to_owned(), "sub1".to_owned()]
        );
        let later = click(&[("clickid", "b")], 20);
        let last = adopt(&first, &later, Touch::Last).unwrap();
        assert_eq!(last.params.get("clickid"), Some(&Value::String("b".into())));
        assert_eq!(
            last.params.get("sub1"),
            None,
            "the older capture goes whole"
        );
        assert_eq!(adopt(&first, &later, Touch::First), None);
        let earlier = click(&[("clickid", "z")], 5);
        assert_eq!(adopt(&first, &earlier, Touch::Last), None);
        assert!(adopt(&first, &earlier, Touch::First).is_some());
    }

    #[test]
    fn the_tally_stops_taking_new_names_at_its_bound() {
        let mut seen = ParamsSeen::default();
        let one = SeenParam {
            events: 1,
            browsers: 0,
            last_seen_ms: 5,
        };
        let counts: BTreeMap<String, SeenParam> = (0..MAX_SEEN_NAMES + 10)
            .map(|i| (format!("p{i:04}"), one))
            .collect();
        seen.merge(&counts);
        assert_eq!(seen.params.len(), MAX_SEEN_NAMES);
        seen.merge(&counts);
        assert_eq!(seen.params["p0000"].events, 2);
    }
}

//! The affiliate platforms' own words for the hub's event types and values.
//!
//! Brands paste what their affiliate platform's documentation says: Smartico calls a registration a
//! "Lead" and a qualified first deposit a "Qualified FTD", ConstantLeads' callback for a registration
//! ends in `/reg`, Track360 writes `{affid}` for the affiliate and Routy `{amount}` for what its URL calls
//! `earning`. This module maps every such name to the one the hub uses, in one table each, so the event
//! API, the inbound URLs, the CSV import and the definitions all read a name the same way. The tables are
//! printed in docs/definitions.md, with the platform each name comes from; a test keeps the two in step.

/// The hub's event types: what definitions fire on and events are reported as. Any other name of the
/// right shape is a custom type.
pub const STANDARD_TYPES: [&str; 6] = [
    "registration",
    "qualified_registration",
    "ftd",
    "qftd",
    "deposit",
    "sale",
];

/// Other names of the standard types, in their folded form (see [`fold`]), with the platform whose
/// documents use each. Used for definitions' triggers and for events' types alike.
pub const TYPE_ALIASES: &[(&str, &str, &str)] = &[
    ("lead", "registration", "Smartico"),
    ("lead_registration", "registration", "Smartico"),
    ("reg", "registration", "ConstantLeads"),
    ("signup", "registration", "Track360, SmartyAds"),
    ("signups", "registration", "Track360, Routy"),
    ("sign_up", "registration", "SmartyAds"),
    ("registrations", "registration", "exports"),
    ("lead_qualified", "qualified_registration", "Smartico"),
    ("qualified_lead", "qualified_registration", "Smartico"),
    (
        "qualified_registrations",
        "qualified_registration",
        "exports",
    ),
    ("qualified_signup", "qualified_registration", "exports"),
    ("first_time_deposit", "ftd", "Smartico"),
    ("firsttimedeposit", "ftd", "Routy"),
    ("firsttimedeposits", "ftd", "Routy"),
    ("first_deposit", "ftd", "Track360"),
    ("firstdeposits", "ftd", "Track360"),
    ("ftds", "ftd", "exports"),
    ("qualified_ftd", "qftd", "Smartico"),
    ("qualified_first_time_deposit", "qftd", "Smartico"),
    ("qftds", "qftd", "exports"),
    ("dep", "deposit", "exports"),
    ("deposits", "deposit", "exports"),
    ("conversion", "sale", "SmartyAds, ConstantLeads"),
    ("conversions", "sale", "SmartyAds"),
    ("sales", "sale", "ConstantLeads"),
    ("purchase", "sale", "SmartyAds"),
];

/// Longest event type, in bytes, once folded.
pub const MAX_TYPE_LEN: usize = 64;

/// The alias key of `name`: trimmed, lower-cased, each run of spaces, `-` and `_` made one `_`. So
/// "First-Time Deposit", "first time deposit" and "FIRST_TIME_DEPOSIT" are one key.
pub fn fold(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for word in name
        .trim()
        .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push('_');
        }
        out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
    }
    out
}

/// The hub's type for an event type or trigger as a person wrote it: a standard type under any of its
/// names, else a custom type (lower-cased, blanks made `_`; its `-` kept, so custom names saved by
/// earlier versions read the same). `None` when the name cannot be a type at all: empty, longer than
/// [`MAX_TYPE_LEN`], or with characters other than `a-z 0-9 _ . : -` and blanks.
pub fn event_type(name: &str) -> Option<String> {
    let key = fold(name);
    if let Some(&(_, standard, _)) = TYPE_ALIASES.iter().find(|(alias, ..)| *alias == key) {
        return Some(standard.to_owned());
    }
    if let Some(standard) = STANDARD_TYPES.iter().find(|t| **t == key) {
        return Some((*standard).to_owned());
    }
    let custom: String = name
        .split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
        .to_ascii_lowercase();
    let valid = !custom.is_empty()
        && custom.len() <= MAX_TYPE_LEN
        && custom
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    valid.then_some(custom)
}

/// Whether `kind` (as [`event_type`] returns it) is one of [`STANDARD_TYPES`].
pub fn is_standard(kind: &str) -> bool {
    STANDARD_TYPES.contains(&kind)
}

/// Other names of the values macros read, with the name the hub keeps the value under and the platform
/// each comes from. An event param of an alias's name is also kept under the hub's name (when the event
/// has no value of that name), so `{amount}` renders Routy's `earning`; and a macro of an alias's name
/// renders the hub's value when nothing of its own name was given, so Track360's `{affid}` renders the
/// affiliate id. Names are lower-case, as params and macros are.
pub const VALUE_ALIASES: &[(&str, &str, &str)] = &[
    ("affid", "affiliate_id", "Track360"),
    ("aff_id", "affiliate_id", "exports"),
    ("earning", "amount", "Routy"),
    ("payout_sum", "amount", "Track360"),
    (
        "registration_is",
        "registration_id",
        "Smartico (its own typo for registration_id)",
    ),
    ("lead_id", "registration_id", "Smartico"),
    ("userid", "player_id", "exports"),
    ("offer_id", "deal_id", "Track360"),
];

/// The hub's name for a value named `name` (lower-case), when `name` is one of [`VALUE_ALIASES`].
pub fn value_alias(name: &str) -> Option<&'static str> {
    VALUE_ALIASES
        .iter()
        .find(|(alias, ..)| *alias == name)
        .map(|&(_, hub, _)| hub)
}

/// Params that carry the affiliate's click id when the brand names none of its own, with the platform
/// each comes from: a player with a value under one of them was brought by an affiliate, and the hub
/// can find the player by that value.
pub const CLICK_ID_PARAMS: &[(&str, &str)] = &[
    ("click_id", "common"),
    ("clickid", "Routy, ConstantLeads"),
    ("affclickid", "Track360"),
    ("trackid", "Track360"),
    ("afp", "Smartico"),
    ("clid", "SmartyAds"),
    ("dyn", "Routy"),
    ("cid", "exports"),
    ("btag", "Income Access"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smarticos_actions_are_the_hubs_triggers_however_they_are_written() {
        for (written, hub) in [
            ("Lead", "registration"),
            ("Lead Registration", "registration"),
            ("Lead Qualified", "qualified_registration"),
            ("Qualified Lead", "qualified_registration"),
            ("FTD", "ftd"),
            ("First-Time Deposit", "ftd"),
            ("first time  deposit", "ftd"),
            ("QFTD", "qftd"),
            ("Qualified FTD", "qftd"),
            ("Qualified First Time Deposit", "qftd"),
            ("  qualified_registration ", "qualified_registration"),
        ] {
            assert_eq!(event_type(written).as_deref(), Some(hub), "{written}");
        }
    }

    #[test]
    fn common_spellings_of_event_types_are_the_standard_types() {
        for (written, hub) in [
            ("reg", "registration"),
            ("signup", "registration"),
            ("Signups", "registration"),
            ("lead", "registration"),
            ("ftd", "ftd"),
            ("FirstDeposits", "ftd"),
            ("qftd", "qftd"),
            ("dep", "deposit"),
            ("deposit", "deposit"),
            ("sale", "sale"),
            ("conversion", "sale"),
        ] {
            assert_eq!(event_type(written).as_deref(), Some(hub), "{written}");
        }
    }

    #[test]
    fn custom_types_keep_their_name_and_bad_names_are_none() {
        assert_eq!(event_type("VIP-Level").as_deref(), Some("vip-level"));
        assert_eq!(event_type("Add to Cart").as_deref(), Some("add_to_cart"));
        assert_eq!(
            event_type("bonus.claimed").as_deref(),
            Some("bonus.claimed")
        );
        for bad in ["", "  ", "a/b", "naïve", &"x".repeat(65)] {
            assert_eq!(event_type(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_alias_names_a_standard_type_and_no_alias_is_a_standard_type() {
        for (alias, hub, _) in TYPE_ALIASES {
            assert!(is_standard(hub), "{alias} -> {hub}");
            assert!(!is_standard(alias), "{alias}");
            assert_eq!(fold(alias), *alias, "aliases are kept folded");
        }
    }

    #[test]
    fn the_docs_list_every_alias_with_its_platform() {
        let docs = include_str!("../docs/definitions.md");
        for (alias, hub, source) in TYPE_ALIASES.iter().chain(VALUE_ALIASES) {
            let row = format!("| `{alias}` | `{hub}` | {source} |");
            assert!(
                docs.contains(&row),
                "docs/definitions.md lacks the row {row}"
            );
        }
        for (param, source) in CLICK_ID_PARAMS {
            let row = format!("| `{param}` | {source} |");
            assert!(
                docs.contains(&row),
                "docs/definitions.md lacks the row {row}"
            );
        }
    }
}

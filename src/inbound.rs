//! Events from an inbound GET postback: the URL an affiliate platform or a brand's back end calls when it
//! cannot POST JSON.
//!
//! `GET /postback/{brand_id}/{token}/{event_type}?player_id=…&clickid=…` names the type in the path; the
//! query is one flat record for [`crate::flat`]. `GET /postback/{brand_id}/{token}?signups=1&player_id=…`
//! names none: platforms that post back Routy-style carry counters instead (`signups=1`, `ftds=1`), and
//! each non-zero [`COUNTERS`] entry becomes one event of its type. Only this parsing lives here; the route
//! and its token check are the API's.

use crate::event::Event;
use crate::flat::{Field, IdBasis, Kind, Options, Record, Target};
use crate::ids::PlayerId;
use crate::input::InputError;

/// Starts the event ids derived for postbacks without an `event_id`, apart from other front ends' ids.
pub const ID_PREFIX: &str = "get-";

/// Counter names (matched without regard to case) and the event type each stands for. `deposits` is
/// deliberately absent: exports use it for the deposited amount, and it is an alias of `amount`.
pub const COUNTERS: &[(&str, &str)] = &[
    ("signups", "registration"),
    ("registrations", "registration"),
    ("qualifiedsignups", "qualified_registration"),
    ("qualified_registrations", "qualified_registration"),
    ("firsttimedeposits", "ftd"),
    ("ftds", "ftd"),
    ("qftds", "qftd"),
    ("qualifiedftds", "qftd"),
    ("depositcount", "deposit"),
    ("sales", "sale"),
];

const MISSING_TYPE: &str = "say which event this is: put its type in the path (/postback/{brand_id}/{token}/{event_type}), or a counter in the query such as signups=1 or ftds=1 (or type=…)";

/// Turns one postback into its events. `event_type` is the path's type segment, if the URL has one;
/// `raw_query` the URL's query string, undecoded.
///
/// With a type in the path, the query is one event of that type, counters included as plain params.
/// Without one, counters decide: one event per type with a non-zero counter, in the order of the query;
/// when there are several, each id ends in `:{type}` so that they stay distinct and deterministic. A
/// query without counters may still name its type with `type=`.
///
/// `player` is the player found by the query's click id, for a query that names none (see
/// [`click_without_player`]).
pub fn events_from_query(
    event_type: Option<&str>,
    raw_query: Option<&str>,
    player: Option<&PlayerId>,
) -> Result<Vec<Event>, InputError> {
    let pairs = url::form_urlencoded::parse(raw_query.unwrap_or_default().as_bytes());
    let new_record = || -> Result<Record, InputError> {
        let mut record = Record::default();
        if let Some(player) = player {
            let name = Field::PlayerId.name();
            record.insert(Target::Field(Field::PlayerId), name, player.as_str())?;
        }
        Ok(record)
    };
    if let Some(fixed) = event_type.map(str::trim).filter(|kind| !kind.is_empty()) {
        let mut record = new_record()?;
        for (name, value) in pairs {
            record.insert(Target::of(&name), &name, &value)?;
        }
        return Ok(vec![record.to_event(&options(Kind::Fixed(fixed), ""))?]);
    }

    let mut record = new_record()?;
    let mut kinds: Vec<&'static str> = Vec::new();
    for (name, value) in pairs {
        let Some(kind) = counter(&name) else {
            record.insert(Target::of(&name), &name, &value)?;
            continue;
        };
        let count = value.trim();
        if !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InputError::new(
                "invalid_field",
                name.trim(),
                "is a counter: a whole number such as 0 or 1",
            ));
        }
        // Any count above zero is one event: a postback reports one player's one conversion.
        if count.bytes().any(|b| b != b'0') && !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    match kinds.as_slice() {
        [] if record.get(Field::Type).is_some() => {
            Ok(vec![record.to_event(&options(Kind::Record, ""))?])
        }
        [] => Err(InputError::new(
            "missing_event_type",
            Field::Type.name(),
            MISSING_TYPE,
        )),
        [kind] => Ok(vec![record.to_event(&options(Kind::Fixed(kind), ""))?]),
        several => several
            .iter()
            .map(|kind| record.to_event(&options(Kind::Fixed(kind), &format!(":{kind}"))))
            .collect(),
    }
}

/// The click id of a postback that names no player: Routy's and ConstantLeads' URLs carry only the click
/// id the affiliate sent (`clickid=85512345`), and the hub finds the player who registered with it. The
/// value under the first of `click_id_params` the query has; `None` when the query names a player (a
/// `player_id` under any of its names) or carries no click id.
pub fn click_without_player(raw_query: Option<&str>, click_id_params: &[String]) -> Option<String> {
    if names_player(raw_query) {
        return None;
    }
    let pairs = pairs(raw_query);
    click_id_params.iter().find_map(|param| {
        pairs
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(param))
            .map(|(_, value)| value.clone())
    })
}

/// Whether the query has a player id, under any of its names.
pub fn names_player(raw_query: Option<&str>) -> bool {
    pairs(raw_query)
        .iter()
        .any(|(name, _)| Field::from_name(name) == Some(Field::PlayerId))
}

/// The query's pairs with a value, trimmed.
fn pairs(raw_query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw_query.unwrap_or_default().as_bytes())
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .filter(|(_, value)| !value.is_empty())
        .collect()
}

/// The event type a counter named `name` stands for.
fn counter(name: &str) -> Option<&'static str> {
    let name = name.trim();
    COUNTERS
        .iter()
        .find(|(counter, _)| counter.eq_ignore_ascii_case(name))
        .map(|&(_, kind)| kind)
}

fn options<'a>(kind: Kind<'a>, id_suffix: &'a str) -> Options<'a> {
    Options {
        kind,
        id_prefix: ID_PREFIX,
        id_basis: IdBasis::Content,
        id_suffix,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::ids::EventId;

    fn ids(events: &[Event]) -> Vec<(&str, &str)> {
        events
            .iter()
            .map(|event| (event.event_id.as_str(), event.kind.as_str()))
            .collect()
    }

    #[test]
    fn a_type_in_the_path_makes_one_event_of_the_query() {
        let events = events_from_query(
            Some("ftd"),
            Some("player_id=p%401&clickid=c-1&amount=50&event_id=tx-9&sub1=a+b"),
            None,
        )
        .unwrap();

        assert_eq!(
            events,
            [Event {
                event_id: EventId::parse("tx-9").unwrap(),
                kind: "ftd".into(),
                player_id: PlayerId::parse("p@1").unwrap(),
                affiliate_id: None,
                deal_id: None,
                occurred_at_ms: None,
                params: BTreeMap::from([
                    ("amount".to_owned(), json!(50)),
                    ("clickid".to_owned(), json!("c-1")),
                    ("sub1".to_owned(), json!("a b")),
                ]),
            }]
        );
    }

    #[test]
    fn without_an_event_id_the_same_postback_gets_the_same_id() {
        let first =
            events_from_query(Some("deposit"), Some("player_id=p1&amount=20&afp=x"), None).unwrap();
        let again =
            events_from_query(Some("deposit"), Some("afp=x&AMOUNT=20&playerid=p1"), None).unwrap();
        let other =
            events_from_query(Some("deposit"), Some("player_id=p1&amount=25&afp=x"), None).unwrap();

        let id = first[0].event_id.as_str();
        assert!(id.starts_with("get-") && id.len() == 4 + 32, "{id}");
        assert_eq!(again[0].event_id, first[0].event_id);
        assert_ne!(other[0].event_id, first[0].event_id);
    }

    #[test]
    fn a_counter_names_the_type_and_is_not_a_param() {
        let events = events_from_query(None, Some("Signups=1&player_id=p1&afp=x"), None).unwrap();

        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "registration");
        assert_eq!(
            events[0].params,
            BTreeMap::from([("afp".to_owned(), json!("x"))])
        );
        assert!(
            !events[0].event_id.as_str().contains(':'),
            "one event needs no suffix"
        );
    }

    #[test]
    fn zero_counters_do_not_count_and_several_make_several_events() {
        let events = events_from_query(
            None,
            Some("signups=0&ftds=1&depositcount=2&sales=&player_id=p1&amount=20&txn_id=tx-9"),
            None,
        )
        .unwrap();

        assert_eq!(
            ids(&events),
            [("tx-9:ftd", "ftd"), ("tx-9:deposit", "deposit")]
        );
        assert!(
            events
                .iter()
                .all(|event| event.params["amount"] == json!(20))
        );
    }

    #[test]
    fn several_counters_without_an_event_id_get_suffixed_derived_ids() {
        let query = "qftds=1&qualifiedsignups=1&player_id=p1";
        let events = events_from_query(None, Some(query), None).unwrap();
        let again = events_from_query(None, Some(query), None).unwrap();

        assert_eq!(events, again, "derived ids are deterministic");
        assert_eq!(events.len(), 2);
        assert!(events[0].event_id.as_str().starts_with("get-"));
        assert!(events[0].event_id.as_str().ends_with(":qftd"));
        assert!(
            events[1]
                .event_id
                .as_str()
                .ends_with(":qualified_registration")
        );
    }

    #[test]
    fn two_counters_for_the_same_type_make_one_event() {
        let events =
            events_from_query(None, Some("signups=1&registrations=1&player_id=p1"), None).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "registration");
    }

    #[test]
    fn without_counters_a_type_param_still_names_the_type() {
        let events = events_from_query(None, Some("type=sale&player_id=p1"), None).unwrap();
        assert_eq!(events[0].kind, "sale");
    }

    #[test]
    fn a_postback_that_names_no_type_is_refused_saying_how_to_name_one() {
        for query in [
            Some("signups=0&ftds=0&player_id=p1"),
            Some("player_id=p1"),
            None,
        ] {
            let error = events_from_query(None, query, None).unwrap_err();
            assert_eq!(
                (error.code, error.path.as_str(), error.message.as_str()),
                ("missing_event_type", "type", MISSING_TYPE),
                "{query:?}"
            );
        }
        let blank_path = events_from_query(Some(" "), Some("player_id=p1"), None).unwrap_err();
        assert_eq!(blank_path.code, "missing_event_type");
    }

    #[test]
    fn a_counter_that_is_not_a_whole_number_is_refused() {
        for query in [
            "signups=yes&player_id=p",
            "signups=-1&player_id=p",
            "signups=1.0&player_id=p",
        ] {
            let error = events_from_query(None, Some(query), None).unwrap_err();
            assert_eq!(
                (error.code, error.path.as_str(), error.message.as_str()),
                (
                    "invalid_field",
                    "signups",
                    "is a counter: a whole number such as 0 or 1"
                ),
                "{query}"
            );
        }
    }

    #[test]
    fn errors_name_the_query_param_as_written() {
        let error =
            events_from_query(Some("ftd"), Some("player_id=p1&click+id=c"), None).unwrap_err();
        assert_eq!(
            (error.code, error.path.as_str()),
            ("invalid_field", "click id")
        );

        let error = events_from_query(Some("ftd"), Some("clickid=c"), None).unwrap_err();
        assert_eq!(
            (error.code, error.path.as_str()),
            ("missing_field", "player_id")
        );

        let error = events_from_query(
            None,
            Some("ftds=1&sales=1&player_id=p&event_id=e&type=ftd"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (error.code, error.path.as_str()),
            ("invalid_field", "type"),
            "a type param that disagrees with a counter"
        );
    }

    #[test]
    fn a_postback_without_a_player_gives_its_click_id_and_takes_the_player_found() {
        let params: Vec<String> = ["affclickid", "clickid"].map(String::from).to_vec();
        let constantleads = Some("clickid=85512345&network=AffiliateWeb&program=SuperGame1");
        assert_eq!(
            click_without_player(constantleads, &params).as_deref(),
            Some("85512345")
        );
        let routy = Some("ClickId=c-9&earning=50&firsttimedeposits=1");
        assert_eq!(click_without_player(routy, &params).as_deref(), Some("c-9"));
        assert_eq!(
            click_without_player(Some("clickid=c&playerid=p1"), &params),
            None,
            "a query that names its player needs no lookup"
        );
        assert_eq!(click_without_player(Some("clickid=+&x=1"), &params), None);
        assert_eq!(click_without_player(Some("afp=c"), &params), None);

        let player = PlayerId::parse("p-7").unwrap();
        let events = events_from_query(Some("ftd"), constantleads, Some(&player)).unwrap();
        assert_eq!(events[0].player_id, player);
        assert_eq!(
            events[0].params["network"],
            serde_json::json!("AffiliateWeb")
        );
        let events = events_from_query(None, routy, Some(&player)).unwrap();
        assert_eq!(
            (events[0].kind.as_str(), &events[0].player_id),
            ("ftd", &player)
        );
    }

    #[test]
    fn no_counter_is_also_a_field_name() {
        for (name, kind) in COUNTERS {
            assert_eq!(Field::from_name(name), None, "{name}");
            assert!(crate::vocabulary::is_standard(kind), "{kind}");
        }
    }

    #[test]
    fn the_docs_list_the_same_counters_as_the_code() {
        let docs = include_str!("../docs/events-by-get-and-csv.md");
        for (name, kind) in COUNTERS {
            let row = format!("| `{name}` | `{kind}` |");
            assert!(docs.contains(&row), "the docs lack the row {row}");
        }
    }
}

//! Events the brand reports, and the rules that turn one event into pixels.
//!
//! Planning is a pure function of the event, the player's attribution context and the brand's
//! definitions ([`plan`]). The store calls it under the player's lock and writes what it returns, the
//! pixels, the postbacks, the new context and the event's record, in one atomic commit; an engine that
//! must retry (Redis, under optimistic locking) can simply call it again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::definition::{Definition, Occasion, Output, PostBody, Refusal};
use crate::delivery::{NewFailure, PixelStatus};
use crate::ids::{BrandId, DefinitionId, EventId, Id, IdKind, PixelId, PlayerId};
use crate::input::{Fields, InputError, one_or_many};
use crate::pixel::{NewPixel, Origin, PixelBody, PixelPolicy};
use crate::vocabulary::VALUE_ALIASES;

/// Most events one request may carry by default (`--max-batch`).
pub const MAX_EVENTS: usize = 1000;
/// Most params one event may carry.
const MAX_PARAMS: usize = 100;
/// Longest text param value.
const MAX_PARAM_BYTES: usize = 2048;
/// What an event's params may be, by the settings (`--max-params-per-event`, `--max-param-bytes`): it
/// bounds what one event, from anyone holding a brand's inbound URL, can make the hub keep in a player's
/// attribution context. Checked on every event, whatever way it arrived, before it is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamLimits {
    /// Most params per event.
    pub max_params: usize,
    /// Longest text value, in bytes.
    pub max_value_bytes: usize,
}

impl ParamLimits {
    /// Checks one event; `prefix` starts the error's path (`events[2].`, `event.`, or empty for a query
    /// or a CSV row, whose params are named as they are).
    pub fn check(&self, event: &Event, prefix: &str) -> Result<(), InputError> {
        if event.params.len() > self.max_params {
            return Err(InputError::new(
                "too_many_params",
                format!("{prefix}params"),
                format!(
                    "has {} params; at most {} per event (--max-params-per-event)",
                    event.params.len(),
                    self.max_params
                ),
            ));
        }
        for (name, value) in &event.params {
            if let Value::String(text) = value
                && text.len() > self.max_value_bytes
            {
                return Err(InputError::new(
                    "param_too_long",
                    format!("{prefix}params.{name}"),
                    format!(
                        "is {} bytes; at most {} (--max-param-bytes)",
                        text.len(),
                        self.max_value_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks events as [`parse_events`] read them: `event.` for one object, `events[i].` for an array.
    pub fn check_all(&self, events: &[Event], array: bool) -> Result<(), InputError> {
        events.iter().enumerate().try_for_each(|(i, event)| {
            let prefix = if array {
                format!("events[{i}].")
            } else {
                "event.".to_owned()
            };
            self.check(event, &prefix)
        })
    }
}

/// Event types whose params become the player's attribution context.
const REGISTRATION_STAGE: [&str; 2] = ["registration", "qualified_registration"];
/// Macros the hub fills itself; an event param cannot take their names.
const RESERVED: [&str; 7] = [
    "brand_id",
    "player_id",
    "event",
    "event_id",
    "timestamp",
    "iso_time",
    "random",
];

/// A validated event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Idempotency key within the brand.
    pub event_id: EventId,
    /// Lower-cased type: a standard trigger or a custom one.
    pub kind: String,
    /// Whose event it is.
    pub player_id: PlayerId,
    /// The affiliate credited, when the report says.
    pub affiliate_id: Option<String>,
    /// The deal, when the report says.
    pub deal_id: Option<String>,
    /// When it happened (Unix milliseconds); when it was received if not given.
    pub occurred_at_ms: Option<u64>,
    /// Params keyed by lower-cased name; values are strings, numbers or booleans.
    pub params: BTreeMap<String, Value>,
}

/// What the hub keeps per player between events: the attribution that arrived with the registration, and
/// whether the first deposit was seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlayerContext {
    /// Params of registration-stage events, later values overriding earlier ones per key.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// Affiliate of the registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliate_id: Option<String>,
    /// Deal of the registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deal_id: Option<String>,
    /// The event that raised or reported the player's FTD; FTD fires once per player.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftd_event_id: Option<EventId>,
    /// When the FTD happened (Unix milliseconds), for a QFTD rule's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftd_at_ms: Option<u64>,
    /// Deposits counted toward the QFTD rule: the FTD's and later ones within its window.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deposited: f64,
    /// The event that raised or reported the player's QFTD; it fires once per player.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qftd_event_id: Option<EventId>,
    /// The event that raised or reported the qualified registration; once per player.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualified_event_id: Option<EventId>,
    /// What filled the attribution: the brand's events, or the client script's capture on a landing page
    /// (see [`crate::attribution`]). Contexts written before it was kept read `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::attribution::Source>,
    /// When the browser captured the click whose params are kept (Unix milliseconds, the browser's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at_ms: Option<u64>,
    /// Params that came from the browser's capture and no event of the brand has replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_browser: Vec<String>,
}

impl PlayerContext {
    /// Where the attribution came from, if there is one: a context kept before sources were recorded
    /// holds the brand's events' params.
    pub fn attribution_source(&self) -> Option<crate::attribution::Source> {
        let reported =
            !self.params.is_empty() || self.affiliate_id.is_some() || self.deal_id.is_some();
        self.source
            .or_else(|| reported.then_some(crate::attribution::Source::Event))
    }
}

fn is_zero(n: &f64) -> bool {
    *n == 0.0
}

/// A brand's rules for qualifying players itself, so that `qftd` and `qualified_registration` fire
/// without the brand reporting them (they still may: a reported one is recorded, never doubled). A deal
/// may have rules of its own, which replace the brand's for its players.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Qualification {
    /// When a first deposit becomes a QFTD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qftd: Option<QftdRule>,
    /// When a registration becomes qualified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualified_registration: Option<QualifiedRule>,
    /// Rules of particular deals, by deal id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub deals: BTreeMap<String, Qualification>,
}

/// QFTD once the player's deposits, from the FTD on, reach an amount within a number of days of the FTD.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QftdRule {
    /// The sum of the `amount` of the FTD and later deposits that qualifies.
    pub min_deposits: f64,
    /// Days after the FTD within which deposits count (the deposits' `occurred_at`, else their receipt).
    pub within_days: u32,
}

/// A registration is qualified when an event of this type arrives for the player.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QualifiedRule {
    /// The event type, such as `kyc_passed` (any name affiliate platforms use is mapped).
    pub on_event: String,
}

impl Qualification {
    /// Checks the rules as a brand sent them; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        self.check_at("qualification", true)
    }

    fn check_at(&self, path: &str, top: bool) -> Result<(), String> {
        if let Some(rule) = &self.qftd
            && !(rule.min_deposits.is_finite()
                && rule.min_deposits > 0.0
                && (1..=3650).contains(&rule.within_days))
        {
            return Err(format!(
                "{path}.qftd: min_deposits must be a positive amount and within_days 1 to 3650"
            ));
        }
        if let Some(rule) = &self.qualified_registration {
            match crate::vocabulary::event_type(&rule.on_event).as_deref() {
                None => {
                    return Err(format!(
                        "{path}.qualified_registration.on_event: {:?} is not an event type",
                        rule.on_event
                    ));
                }
                Some("qualified_registration" | "registration") => {
                    return Err(format!(
                        "{path}.qualified_registration.on_event: a registration cannot qualify itself; name the event that qualifies it, such as kyc_passed"
                    ));
                }
                Some(_) => {}
            }
        }
        if !top && !self.deals.is_empty() {
            return Err(format!(
                "{path}.deals: a deal's rules cannot have deals of their own"
            ));
        }
        for (deal, rules) in &self.deals {
            rules.check_at(&format!("{path}.deals.{deal}"), false)?;
        }
        Ok(())
    }

    /// The event types the rules wait for (`on_event`), as the hub names them.
    fn awaited_events(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .qualified_registration
            .iter()
            .filter_map(|rule| crate::vocabulary::event_type(&rule.on_event))
            .collect();
        for deal in self.deals.values() {
            out.extend(deal.awaited_events());
        }
        out
    }

    /// The rules for a player of `deal`: the deal's own, where it has any, else the brand's.
    fn for_deal(&self, deal: Option<&str>) -> (Option<&QftdRule>, Option<&QualifiedRule>) {
        let own = deal.and_then(|d| self.deals.get(d));
        (
            own.and_then(|q| q.qftd.as_ref()).or(self.qftd.as_ref()),
            own.and_then(|q| q.qualified_registration.as_ref())
                .or(self.qualified_registration.as_ref()),
        )
    }
}

/// One pixel or postback an event produced, as the API answers and as the event record keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Produced {
    /// The queued pixel's id, or the postback's.
    pub id: PixelId,
    /// Which definition produced it.
    pub definition_id: DefinitionId,
    /// That definition's name at the time.
    pub definition_name: String,
    /// The trigger it fired on: the event's type, or `ftd` raised by a first deposit.
    pub trigger: String,
    /// `queued` when produced; its current [`PixelStatus`] when the record is read later.
    pub status: PixelStatus,
    /// What was rendered: a client pixel's body, or `{"kind":"s2s","url":…}`.
    #[serde(flatten)]
    pub output: ProducedOutput,
    /// Macros rendered empty for want of a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// The rendered output of a [`Produced`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProducedOutput {
    /// A postback URL.
    S2s {
        /// Always `s2s`.
        kind: S2sKind,
        /// The final URL.
        url: String,
    },
    /// A client pixel.
    Client(PixelBody),
}

/// The `kind` tag of a postback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum S2sKind {
    /// Server to server.
    S2s,
}

/// A definition that listens to the event's trigger but did not fire for this event, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// Which definition.
    pub definition_id: DefinitionId,
    /// Its name.
    pub definition_name: String,
    /// The trigger it listens to.
    pub trigger: String,
    /// The first rule the event failed.
    #[serde(flatten)]
    pub refusal: Refusal,
}

/// A definition that matched but could not render for this event's values. It is also a row of the
/// delivery report (status `failed`, with the reason), under `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenderFailure {
    /// The report row's id. Absent in records written before render failures had rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<PixelId>,
    /// Which definition.
    pub definition_id: DefinitionId,
    /// Its name.
    pub definition_name: String,
    /// The trigger it matched.
    pub trigger: String,
    /// What was wrong, as a stable code (see [`crate::definition::RenderError::reason`]).
    #[serde(default)]
    pub reason: String,
    /// What was wrong with the rendered pixel.
    pub error: String,
}

/// What one event did: the API's answer for it, and the record kept under its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventOutcome {
    /// The event's id.
    pub event_id: EventId,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its player.
    pub player_id: PlayerId,
    /// True when this id had been seen before and nothing new was done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Triggers the event raised besides its own type (`ftd` for a first deposit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raised: Vec<String>,
    /// Set when an `ftd` was reported for a player whose FTD was already recorded: it fired nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftd_already_recorded_by: Option<EventId>,
    /// Pixels and postbacks produced.
    pub pixels: Vec<Produced>,
    /// Definitions that matched but could not render.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<RenderFailure>,
    /// Definitions on one of the event's triggers that did not fire, each with its first failed rule
    /// (scope, audience, a condition): what a brand asks when an expected pixel never came.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Set when no definition of the brand listens to any of the event's triggers: the event was
    /// recorded (it may still fill the player's attribution) and fired nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<String>,
    /// Unix milliseconds when the hub processed it.
    pub processed_at_ms: u64,
}

/// A postback for the hub to send, recorded durably with its event.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPostback {
    /// Its id, as in the event's answer.
    pub id: PixelId,
    /// The trigger it fired on.
    pub trigger: String,
    /// The final URL.
    pub url: String,
    /// The body, when it is sent as `POST`.
    pub post: Option<PostBody>,
    /// Event, definition and template, for the report.
    pub origin: Origin,
}

/// Everything one event changes, for the store to write atomically.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The answer and the record.
    pub outcome: EventOutcome,
    /// Client pixels to queue for the player, ids set.
    pub pixels: Vec<NewPixel>,
    /// Postbacks to record in the outbox.
    pub postbacks: Vec<NewPostback>,
    /// Definitions that could not render, to record as failed rows.
    pub failures: Vec<NewFailure>,
    /// The player's new context, when it changed.
    pub context: Option<PlayerContext>,
}

/// What of a brand's settings decides what its events produce.
#[derive(Clone, Copy, Debug)]
pub struct BrandRules<'a> {
    /// What its pixels may be.
    pub policy: PixelPolicy<'a>,
    /// The params that carry an affiliate's click id, in order of preference (see
    /// [`crate::definition::Audience`]).
    pub click_id_params: &'a [String],
    /// How the hub qualifies players itself.
    pub qualification: &'a Qualification,
}

/// An event of a type the hub does not know and none of the brand's definitions listens to: most
/// likely a misspelt or unmapped name (`/regs`, `first_dep`), which recorded as a custom event would fire
/// nothing and say nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event type {kind:?} is neither a type the hub knows nor one a definition of the brand fires on; known types: {}", known.join(", "))]
pub struct UnknownType {
    /// The event's index in its batch.
    pub index: usize,
    /// Its type.
    pub kind: String,
    /// The standard types, then the custom triggers of the brand's definitions.
    pub known: Vec<String>,
}

/// Checks that every event's type is a standard one, a trigger of one of the brand's definitions
/// (enabled or not: a paused definition still makes its type a known one), or the event a qualification
/// rule of the brand waits for.
pub fn check_types(
    events: &[Event],
    definitions: &[Definition],
    qualification: &Qualification,
) -> Result<(), UnknownType> {
    let awaited = qualification.awaited_events();
    let known = |kind: &str| {
        crate::vocabulary::is_standard(kind)
            || definitions.iter().any(|d| d.trigger == kind)
            || awaited.iter().any(|a| a == kind)
    };
    let Some((index, event)) = events.iter().enumerate().find(|(_, e)| !known(&e.kind)) else {
        return Ok(());
    };
    let mut names: Vec<String> = crate::vocabulary::STANDARD_TYPES
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    for definition in definitions {
        if !names.contains(&definition.trigger) {
            names.push(definition.trigger.clone());
        }
    }
    Err(UnknownType {
        index,
        kind: event.kind.clone(),
        known: names,
    })
}

/// Decides what `event` produces for a player whose context is `context`, given the brand's definitions.
pub fn plan(
    brand: &BrandId,
    rules: BrandRules<'_>,
    event: &Event,
    context: &PlayerContext,
    definitions: &[Definition],
    now_ms: u64,
) -> Plan {
    let mut new_context = context.clone();
    if REGISTRATION_STAGE.contains(&event.kind.as_str()) {
        new_context
            .params
            .extend(event.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        if event.affiliate_id.is_some() {
            new_context.affiliate_id.clone_from(&event.affiliate_id);
        }
        if event.deal_id.is_some() {
            new_context.deal_id.clone_from(&event.deal_id);
        }
        // The brand reported an attribution: its own data wins over a browser's capture from now on,
        // which keeps only the params the brand did not send.
        if !event.params.is_empty() || event.affiliate_id.is_some() || event.deal_id.is_some() {
            new_context.source = Some(crate::attribution::Source::Event);
            new_context
                .from_browser
                .retain(|name| !event.params.contains_key(name));
        }
    }

    let mut outcome = EventOutcome {
        event_id: event.event_id.clone(),
        kind: event.kind.clone(),
        player_id: event.player_id.clone(),
        duplicate: false,
        raised: Vec::new(),
        ftd_already_recorded_by: None,
        pixels: Vec::new(),
        failed: Vec::new(),
        skipped: Vec::new(),
        unmatched: None,
        processed_at_ms: now_ms,
    };
    let mut triggers = vec![event.kind.as_str()];
    let at_ms = event.occurred_at_ms.unwrap_or(now_ms);
    let mut deposit = None;
    match (event.kind.as_str(), &context.ftd_event_id) {
        ("ftd", Some(first)) => {
            outcome.ftd_already_recorded_by = Some(first.clone());
            triggers.clear();
        }
        ("ftd", None) => {
            new_context.ftd_event_id = Some(event.event_id.clone());
            new_context.ftd_at_ms = Some(at_ms);
            deposit = Some(amount(event));
        }
        ("deposit", None) => {
            new_context.ftd_event_id = Some(event.event_id.clone());
            new_context.ftd_at_ms = Some(at_ms);
            outcome.raised.push("ftd".into());
            triggers.push("ftd");
            deposit = Some(amount(event));
        }
        ("deposit", Some(_)) => deposit = Some(amount(event)),
        _ => {}
    }

    let deal_id = event.deal_id.as_ref().or(context.deal_id.as_ref());
    // Qualification: reported once, or raised once by the brand's rules; never both, never twice.
    let (qftd_rule, qualified_rule) = rules.qualification.for_deal(deal_id.map(String::as_str));
    match event.kind.as_str() {
        "qftd" if new_context.qftd_event_id.is_some() => triggers.retain(|t| *t != "qftd"),
        "qftd" => new_context.qftd_event_id = Some(event.event_id.clone()),
        "qualified_registration" if new_context.qualified_event_id.is_some() => {
            triggers.retain(|t| *t != "qualified_registration")
        }
        "qualified_registration" => new_context.qualified_event_id = Some(event.event_id.clone()),
        _ => {}
    }
    if let (Some(amount), Some(rule), Some(ftd_at)) = (deposit, qftd_rule, new_context.ftd_at_ms)
        && at_ms.saturating_sub(ftd_at) <= u64::from(rule.within_days) * 24 * 3600 * 1000
    {
        new_context.deposited += amount;
        if new_context.qftd_event_id.is_none() && new_context.deposited >= rule.min_deposits {
            new_context.qftd_event_id = Some(event.event_id.clone());
            outcome.raised.push("qftd".into());
            triggers.push("qftd");
        }
    }
    if let Some(rule) = qualified_rule
        && crate::vocabulary::event_type(&rule.on_event).as_deref() == Some(event.kind.as_str())
        && new_context.qualified_event_id.is_none()
    {
        new_context.qualified_event_id = Some(event.event_id.clone());
        outcome.raised.push("qualified_registration".into());
        triggers.push("qualified_registration");
    }
    let affiliate_id = event
        .affiliate_id
        .as_ref()
        .or(context.affiliate_id.as_ref());
    let mut pixels = Vec::new();
    let mut postbacks = Vec::new();
    let mut failures = Vec::new();
    let mut listened = false;
    for &trigger in &triggers {
        let mut values = macro_values(brand, event, context, trigger, now_ms);
        let click = fill_click_id(&mut values, rules.click_id_params);
        let click_source = click
            .as_ref()
            .map(|_| click_source(event, context, rules.click_id_params));
        for definition in definitions {
            if !definition.listens_to(trigger) {
                continue;
            }
            listened = true;
            let occasion = Occasion {
                trigger,
                deal_id: deal_id.map(String::as_str),
                affiliate_id: affiliate_id.map(String::as_str),
                click_id: click.as_deref(),
                values: &values,
            };
            if let Some(refusal) = definition.refusals(&occasion, false).pop() {
                outcome.skipped.push(Skipped {
                    definition_id: definition.id.clone(),
                    definition_name: definition.name.clone(),
                    trigger: trigger.into(),
                    refusal,
                });
                continue;
            }
            values.insert("random".into(), Value::from(random_u32()));
            let id = PixelId::generate();
            let mut origin = Origin {
                event_id: Some(event.event_id.clone()),
                definition_id: Some(definition.id.clone()),
                definition_name: Some(definition.name.clone()),
                template: Some(definition.action.template_text()),
                click_id: click.clone(),
                click_source,
                affiliate_id: affiliate_id.cloned(),
                missing: Vec::new(),
            };
            let rendered = match definition.render_checked(&values, rules.policy) {
                Ok(rendered) => rendered,
                Err(error) => {
                    outcome.failed.push(RenderFailure {
                        id: Some(id.clone()),
                        definition_id: definition.id.clone(),
                        definition_name: definition.name.clone(),
                        trigger: trigger.into(),
                        reason: error.reason.into(),
                        error: error.message.clone(),
                    });
                    failures.push(NewFailure {
                        id,
                        trigger: trigger.into(),
                        kind: definition.action.kind(),
                        reason: error.reason,
                        error: error.message,
                        origin,
                    });
                    continue;
                }
            };
            origin.missing.clone_from(&rendered.missing);
            let output = match rendered.output {
                Output::Client(body) => {
                    let body = body.with_defaults(&id);
                    pixels.push(NewPixel {
                        id: Some(id.clone()),
                        trigger: Some(trigger.into()),
                        ttl_seconds: definition.ttl_seconds,
                        tcf_vendor_id: definition.tcf_vendor_id,
                        body: body.clone(),
                        origin: Some(origin),
                    });
                    ProducedOutput::Client(body)
                }
                Output::S2s { url, post } => {
                    postbacks.push(NewPostback {
                        id: id.clone(),
                        trigger: trigger.into(),
                        url: url.clone(),
                        post,
                        origin,
                    });
                    ProducedOutput::S2s {
                        kind: S2sKind::S2s,
                        url,
                    }
                }
            };
            outcome.pixels.push(Produced {
                id,
                definition_id: definition.id.clone(),
                definition_name: definition.name.clone(),
                trigger: trigger.into(),
                status: PixelStatus::Queued,
                output,
                missing: rendered.missing,
            });
        }
    }
    if !listened && !triggers.is_empty() {
        outcome.unmatched = Some(format!(
            "no enabled definition of the brand fires on {}",
            triggers.join(" or ")
        ));
    }
    Plan {
        outcome,
        pixels,
        postbacks,
        failures,
        context: (new_context != *context).then_some(new_context),
    }
}

/// The event's `amount` param as a number; 0 when it has none.
fn amount(event: &Event) -> f64 {
    match event.params.get("amount") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// The values macros read for `event` firing `trigger`: the player's attribution context, overridden by
/// the event's own params, then the built-ins. Keys are lower-cased.
pub fn macro_values(
    brand: &BrandId,
    event: &Event,
    context: &PlayerContext,
    trigger: &str,
    now_ms: u64,
) -> BTreeMap<String, Value> {
    let mut values = context.params.clone();
    values.extend(event.params.iter().map(|(k, v)| (k.clone(), v.clone())));
    // A value under a platform's name fills the hub's name (Routy's `earning` is the `amount`)…
    for &(alias, hub, _) in VALUE_ALIASES {
        if let Some(value) = values.get(alias).filter(|v| !v.is_null()).cloned() {
            values.entry(hub.to_owned()).or_insert(value);
        }
    }
    let text = |s: &str| Value::String(s.to_owned());
    let at_ms = event.occurred_at_ms.unwrap_or(now_ms);
    let at = OffsetDateTime::from_unix_timestamp((at_ms / 1000) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    values.insert("brand_id".into(), text(brand.as_str()));
    values.insert("player_id".into(), text(event.player_id.as_str()));
    values.insert("event".into(), text(trigger));
    values.insert("event_id".into(), text(event.event_id.as_str()));
    values.insert("timestamp".into(), Value::from(at_ms / 1000));
    values.insert(
        "iso_time".into(),
        text(&at.format(&Rfc3339).unwrap_or_default()),
    );
    values.insert("random".into(), Value::from(random_u32()));
    values
        .entry("registration_id".into())
        .or_insert_with(|| text(event.player_id.as_str()));
    for (name, value) in [
        (
            "deal_id",
            event.deal_id.as_ref().or(context.deal_id.as_ref()),
        ),
        (
            "affiliate_id",
            event
                .affiliate_id
                .as_ref()
                .or(context.affiliate_id.as_ref()),
        ),
    ] {
        if let Some(value) = value {
            values.insert(name.into(), text(value));
        }
    }
    // …and the hub's value fills the platform's name (Track360's `{affid}` is the affiliate id).
    for &(alias, hub, _) in VALUE_ALIASES {
        if let Some(value) = values.get(hub).cloned() {
            values.entry(alias.to_owned()).or_insert(value);
        }
    }
    values
}

/// The player's click id (see [`click_id`]), also made the value of the generic `click_id` and
/// `clickid` macros when the event has none of its own: SmartyAds' `[CLICK_ID]` and Routy's `{ClickId}`
/// then render the click id whichever param the affiliate's link carried it in.
pub fn fill_click_id(values: &mut BTreeMap<String, Value>, params: &[String]) -> Option<String> {
    let click = click_id(values, params)?;
    for name in ["click_id", "clickid"] {
        values
            .entry(name.into())
            .or_insert_with(|| Value::String(click.clone()));
    }
    Some(click)
}

/// Where the click id an event's pixels carry came from: the event itself, or the player's context (the
/// brand's registration, or the browser's capture for a param no event of the brand replaced).
fn click_source(
    event: &Event,
    context: &PlayerContext,
    params: &[String],
) -> crate::attribution::Source {
    use crate::attribution::Source;
    let has = |values: &BTreeMap<String, Value>, name: &String| {
        click_id(values, std::slice::from_ref(name)).is_some()
    };
    // The name the click id was found under (the event's values over the context's), as `click_id` looks.
    let found = params
        .iter()
        .find(|name| has(&event.params, name) || has(&context.params, name));
    match found {
        Some(name) if !has(&event.params, name) && context.from_browser.contains(name) => {
            Source::Browser
        }
        _ => Source::Event,
    }
}

/// The affiliate's click id among the values, under the first of `params` that has one.
pub fn click_id(values: &BTreeMap<String, Value>, params: &[String]) -> Option<String> {
    params.iter().find_map(|name| match values.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // A cache-buster, not a secret: should the OS source fail, zero still renders.
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// Parses a request body: one event object, or an array of 1 to `max` of them.
pub fn parse_events(body: Value, max: usize) -> Result<Vec<Event>, InputError> {
    one_or_many(body, max, ("event", "events"), parse_event)
}

/// Parses one event object found at `path`.
pub fn parse_event(value: Value, path: &str) -> Result<Event, InputError> {
    let Value::Object(mut obj) = value else {
        return Err(InputError::new(
            "invalid_event",
            path,
            "an event must be a JSON object",
        ));
    };
    let mut fields = Fields::new(&mut obj, path);
    // Ids as strings or whole numbers: back ends send numeric player ids both ways.
    fn id_field<K: IdKind>(fields: &mut Fields<'_>, name: &str) -> Result<Id<K>, InputError> {
        let value = fields
            .optional_label(name, 128)?
            .ok_or_else(|| fields.error("missing_field", name, "is required"))?;
        fields.id(name, &value)
    }
    let event_id: EventId = id_field(&mut fields, "event_id")?;
    let written = fields
        .optional_str("type")?
        .ok_or_else(|| fields.error("missing_field", "type", "is required"))?;
    let Some(kind) = crate::vocabulary::event_type(&written) else {
        return Err(fields.error(
            "invalid_field",
            "type",
            "must be a standard event type (registration, qualified_registration, ftd, qftd, deposit, sale), a name affiliate platforms use for one (reg, signup, lead, dep, conversion…; see docs/definitions.md), or a custom name of 1 to 64 characters a-z 0-9 _ . : -",
        ));
    };
    let player_id: PlayerId = id_field(&mut fields, "player_id")?;
    let affiliate_id = fields.optional_label("affiliate_id", 128)?;
    let deal_id = fields.optional_label("deal_id", 128)?;
    let occurred_at_ms =
        match fields.optional_str("occurred_at")? {
            None => None,
            Some(text) => {
                let at = OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| {
                    fields.error(
                        "invalid_field",
                        "occurred_at",
                        format!("{text:?} is not an RFC 3339 time such as 2026-11-22T10:15:00Z"),
                    )
                })?;
                let ms = at.unix_timestamp_nanos() / 1_000_000;
                Some(u64::try_from(ms).map_err(|_| {
                    fields.error("invalid_field", "occurred_at", "must be after 1970")
                })?)
            }
        };
    let params = match fields.obj.remove("params") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => parse_params(map, &fields.path_of("params"))?,
        Some(_) => {
            return Err(fields.error("invalid_field", "params", "must be a JSON object"));
        }
    };
    fields.finish("an event")?;
    Ok(Event {
        event_id,
        kind,
        player_id,
        affiliate_id,
        deal_id,
        occurred_at_ms,
        params,
    })
}

fn parse_params(
    map: serde_json::Map<String, Value>,
    path: &str,
) -> Result<BTreeMap<String, Value>, InputError> {
    if map.len() > MAX_PARAMS {
        return Err(InputError::new(
            "invalid_field",
            path,
            format!("at most {MAX_PARAMS} params per event"),
        ));
    }
    let mut params = BTreeMap::new();
    let mut original: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in map {
        let at = format!("{path}.{key}");
        let name = key.to_ascii_lowercase();
        let valid_name = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_name {
            return Err(InputError::new(
                "invalid_field",
                at,
                "a param name is up to 64 letters, digits, _ . -, starting with a letter or _, so that a macro can name it",
            ));
        }
        if RESERVED.contains(&name.as_str()) {
            return Err(InputError::new(
                "invalid_field",
                at,
                format!("{name} is filled by the hub; it cannot be a param"),
            ));
        }
        if let Some(first) = original.get(&name) {
            return Err(InputError::new(
                "invalid_field",
                at,
                format!("repeats {first} (param names are case-insensitive)"),
            ));
        }
        match &value {
            Value::Null => continue, // "no value": it neither renders nor overrides an earlier one
            Value::Number(_) | Value::Bool(_) => {}
            Value::String(s) if s.len() <= MAX_PARAM_BYTES => {}
            Value::String(_) => {
                return Err(InputError::new(
                    "invalid_field",
                    at,
                    format!("is longer than {MAX_PARAM_BYTES} bytes"),
                ));
            }
            _ => {
                return Err(InputError::new(
                    "invalid_field",
                    at,
                    "must be a string, a number or a boolean",
                ));
            }
        }
        if name == "amount" && !value.is_number() {
            return Err(InputError::new(
                "invalid_field",
                at,
                "must be a JSON number such as 50 or 19.99",
            ));
        }
        if name == "currency" && !value.is_string() {
            return Err(InputError::new(
                "invalid_field",
                at,
                "must be a currency code string such as \"EUR\"",
            ));
        }
        original.insert(name.clone(), key);
        params.insert(name, value);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::parse_definition;
    use serde_json::json;

    fn rules() -> BrandRules<'static> {
        static PARAMS: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(crate::brand::default_click_id_params);
        static NONE: std::sync::LazyLock<Qualification> =
            std::sync::LazyLock::new(Default::default);
        BrandRules {
            policy: PixelPolicy::ANY,
            click_id_params: &PARAMS,
            qualification: &NONE,
        }
    }

    /// Plays `events` in order for one player under `qualification`; each event's raised triggers.
    fn play(qualification: &Qualification, events: Value) -> Vec<Vec<String>> {
        let rules = BrandRules {
            qualification,
            ..rules()
        };
        let mut context = PlayerContext::default();
        let defs = definitions(json!([
            {"name": "q", "trigger": "qftd", "audience": "all_players", "kind": "js", "code": "q()"},
            {"name": "r", "trigger": "qualified_registration", "audience": "all_players", "kind": "js", "code": "r()"},
        ]));
        parse_events(events, 100)
            .unwrap()
            .iter()
            .map(|e| {
                let plan = plan(&brand(), rules, e, &context, &defs, 1_000);
                if let Some(next) = plan.context {
                    context = next;
                }
                let fired: Vec<String> = plan
                    .outcome
                    .pixels
                    .iter()
                    .map(|p| p.trigger.clone())
                    .collect();
                assert!(
                    plan.outcome
                        .raised
                        .iter()
                        .all(|t| fired.contains(t) || t == "ftd"),
                    "every raised trigger fires its definition"
                );
                plan.outcome.raised
            })
            .collect()
    }

    #[test]
    fn the_hub_raises_qftd_and_qualified_registration_by_the_brands_rules_once() {
        let day = 24 * 3600;
        let rules: Qualification = serde_json::from_value(json!({
            "qftd": {"min_deposits": 100, "within_days": 30},
            "qualified_registration": {"on_event": "KYC Passed"},
            "deals": {"cpl-3": {"qftd": {"min_deposits": 20, "within_days": 7}}},
        }))
        .unwrap();
        rules.check().unwrap();
        let t = |days: u64| {
            time::OffsetDateTime::from_unix_timestamp((1_795_000_000 + days * day) as i64)
                .unwrap()
                .format(&Rfc3339)
                .unwrap()
        };
        // 50 at the FTD, 30 on day 10, 40 on day 29: QFTD on the third deposit, once.
        let raised = play(
            &rules,
            json!([
                {"event_id": "r", "type": "registration", "player_id": "p", "occurred_at": t(0)},
                {"event_id": "k", "type": "kyc_passed", "player_id": "p", "occurred_at": t(0)},
                {"event_id": "k2", "type": "kyc_passed", "player_id": "p", "occurred_at": t(0)},
                {"event_id": "d1", "type": "deposit", "player_id": "p", "occurred_at": t(0), "params": {"amount": 50}},
                {"event_id": "d2", "type": "deposit", "player_id": "p", "occurred_at": t(10), "params": {"amount": 30}},
                {"event_id": "d3", "type": "deposit", "player_id": "p", "occurred_at": t(29), "params": {"amount": 40}},
                {"event_id": "d4", "type": "deposit", "player_id": "p", "occurred_at": t(29), "params": {"amount": 400}},
                {"event_id": "q", "type": "qftd", "player_id": "p"},
            ]),
        );
        assert_eq!(
            raised,
            [
                vec![],
                vec!["qualified_registration".to_owned()],
                vec![],
                vec!["ftd".to_owned()],
                vec![],
                vec!["qftd".to_owned()],
                vec![],
                vec![],
            ]
        );
        // Deposits after the window do not count; a deal's own rule replaces the brand's.
        let late = play(
            &rules,
            json!([
                {"event_id": "d1", "type": "deposit", "player_id": "p", "occurred_at": t(0), "params": {"amount": 50}},
                {"event_id": "d2", "type": "deposit", "player_id": "p", "occurred_at": t(31), "params": {"amount": 500}},
            ]),
        );
        assert_eq!(late, [vec!["ftd".to_owned()], vec![]]);
        let deal = play(
            &rules,
            json!([
                {"event_id": "r", "type": "registration", "player_id": "p", "deal_id": "cpl-3"},
                {"event_id": "d1", "type": "deposit", "player_id": "p", "params": {"amount": 25}},
            ]),
        );
        assert_eq!(deal[1], ["ftd", "qftd"]);
        // A reported QFTD wins: the rules never raise another.
        let reported = play(
            &rules,
            json!([
                {"event_id": "q", "type": "Qualified FTD", "player_id": "p"},
                {"event_id": "d1", "type": "deposit", "player_id": "p", "params": {"amount": 500}},
            ]),
        );
        assert_eq!(reported, [vec![], vec!["ftd".to_owned()]]);
        // Bad rules are refused with the field.
        for (bad, field) in [
            (
                json!({"qftd": {"min_deposits": 0, "within_days": 30}}),
                "qualification.qftd",
            ),
            (
                json!({"qualified_registration": {"on_event": "registration"}}),
                "qualification.qualified_registration.on_event",
            ),
            (
                json!({"deals": {"d": {"deals": {"e": {}}}}}),
                "qualification.deals.d.deals",
            ),
        ] {
            let rules: Qualification = serde_json::from_value(bad).unwrap();
            assert!(rules.check().unwrap_err().starts_with(field));
        }
        assert!(serde_json::from_value::<Qualification>(json!({"qftd": {"min": 1}})).is_err());
    }

    fn brand() -> BrandId {
        BrandId::parse("b1").unwrap()
    }

    fn event(v: Value) -> Event {
        parse_event(v, "event").unwrap()
    }

    fn definitions(bodies: Value) -> Vec<Definition> {
        bodies
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, body)| {
                parse_definition(body.clone(), true)
                    .unwrap()
                    .into_definition(DefinitionId::parse(&format!("d{i}")).unwrap(), 1, 1)
            })
            .collect()
    }

    fn urls(plan: &Plan) -> Vec<String> {
        plan.outcome
            .pixels
            .iter()
            .map(|p| match &p.output {
                ProducedOutput::Client(PixelBody::Image { url }) => url.clone(),
                ProducedOutput::S2s { url, .. } => format!("s2s {url}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn registration_params_render_in_the_later_deposit() {
        let defs = definitions(json!([
            {"name": "ftd", "trigger": "ftd", "kind": "image", "url": "https://px.example/?click_id={{afp}}&lead_id={{registration_id}}&a={{amount}}"},
            {"name": "dep", "trigger": "deposit", "kind": "s2s", "url": "https://pb.example/?c={afp}&sum=[AMOUNT]&cur=%%CURRENCY%%"},
        ]));
        let registration = event(
            json!({"event_id": "r1", "type": "registration", "player_id": "p 1".replace(' ', "-"),
            "affiliate_id": "a9", "params": {"AFP": "xyz", "sub1": "s"}}),
        );
        let reg = plan(
            &brand(),
            rules(),
            &registration,
            &PlayerContext::default(),
            &defs,
            1000,
        );
        assert!(reg.outcome.pixels.is_empty());
        let context = reg.context.expect("the registration is remembered");
        assert_eq!(context.params["afp"], json!("xyz"));
        assert_eq!(context.affiliate_id.as_deref(), Some("a9"));

        let deposit = event(
            json!({"event_id": "d1", "type": "deposit", "player_id": "p-1", "params": {"amount": 50, "currency": "EUR"}}),
        );
        let dep = plan(&brand(), rules(), &deposit, &context, &defs, 2000);
        assert_eq!(dep.outcome.raised, ["ftd"]);
        assert_eq!(
            urls(&dep),
            [
                "s2s https://pb.example/?c=xyz&sum=50&cur=EUR",
                "https://px.example/?click_id=xyz&lead_id=p-1&a=50",
            ]
        );
        assert_eq!(dep.pixels.len(), 1);
        assert_eq!(dep.postbacks.len(), 1);
        assert_eq!(dep.outcome.pixels[1].trigger, "ftd");
        let after = dep.context.expect("the first deposit is remembered");
        assert_eq!(after.ftd_event_id.as_ref().map(|e| e.as_str()), Some("d1"));
        assert_eq!(
            after.params, context.params,
            "a deposit does not rewrite attribution"
        );

        let second = event(
            json!({"event_id": "d2", "type": "deposit", "player_id": "p-1", "params": {"amount": 20}}),
        );
        let dep2 = plan(&brand(), rules(), &second, &after, &defs, 3000);
        assert!(dep2.outcome.raised.is_empty(), "FTD is raised once");
        assert_eq!(urls(&dep2), ["s2s https://pb.example/?c=xyz&sum=20&cur="]);
        assert_eq!(dep2.outcome.pixels[0].missing, ["currency"]);
        assert_eq!(dep2.context, None);
    }

    #[test]
    fn later_registration_values_override_per_key() {
        let first = event(
            json!({"event_id": "r1", "type": "registration", "player_id": "p", "deal_id": "d1", "params": {"afp": "a", "sub1": "s"}}),
        );
        let ctx = plan(&brand(), rules(), &first, &PlayerContext::default(), &[], 0)
            .context
            .unwrap();
        let second = event(
            json!({"event_id": "q1", "type": "qualified_registration", "player_id": "p", "params": {"afp": "b"}}),
        );
        let ctx = plan(&brand(), rules(), &second, &ctx, &[], 0)
            .context
            .unwrap();
        assert_eq!(ctx.params["afp"], json!("b"));
        assert_eq!(ctx.params["sub1"], json!("s"));
        assert_eq!(ctx.deal_id.as_deref(), Some("d1"));
    }

    #[test]
    fn a_reported_ftd_fires_once_and_stops_the_derived_one() {
        let defs = definitions(
            json!([{"name": "f", "trigger": "ftd", "kind": "js", "code": "f({{event_id}})"}]),
        );
        let ftd =
            event(json!({"event_id": "f1", "type": "ftd", "player_id": "p", "affiliate_id": "a1"}));
        let first = plan(&brand(), rules(), &ftd, &PlayerContext::default(), &defs, 0);
        assert_eq!(first.outcome.pixels.len(), 1);
        let ctx = first.context.unwrap();

        let deposit = event(
            json!({"event_id": "d1", "type": "deposit", "player_id": "p", "params": {"amount": 5}}),
        );
        assert!(
            plan(&brand(), rules(), &deposit, &ctx, &defs, 0)
                .outcome
                .pixels
                .is_empty()
        );
        let again = event(json!({"event_id": "f2", "type": "ftd", "player_id": "p"}));
        let second = plan(&brand(), rules(), &again, &ctx, &defs, 0);
        assert!(second.outcome.pixels.is_empty());
        assert_eq!(
            second
                .outcome
                .ftd_already_recorded_by
                .as_ref()
                .map(|e| e.as_str()),
            Some("f1")
        );
    }

    #[test]
    fn scope_and_conditions_pick_the_definitions() {
        let defs = definitions(json!([
            {"name": "global", "trigger": "ftd", "kind": "image", "url": "https://t.example/global"},
            {"name": "deal d1", "trigger": "ftd", "deal_id": "d1", "kind": "image", "url": "https://t.example/d1"},
            {"name": "deal d2", "trigger": "ftd", "deal_id": "d2", "kind": "image", "url": "https://t.example/d2"},
            {"name": "big", "trigger": "ftd", "conditions": ["amount >= 20", "currency in [EUR, USD]"], "kind": "image", "url": "https://t.example/big"},
            {"name": "off", "trigger": "ftd", "enabled": false, "kind": "image", "url": "https://t.example/off"},
            {"name": "custom", "trigger": "Level_Up", "kind": "image", "url": "https://t.example/level"},
        ]));
        let ctx = PlayerContext {
            deal_id: Some("d1".into()),
            affiliate_id: Some("a1".into()),
            ..Default::default()
        };
        let small = event(
            json!({"event_id": "e1", "type": "ftd", "player_id": "p", "params": {"amount": 10, "currency": "EUR"}}),
        );
        assert_eq!(
            urls(&plan(&brand(), rules(), &small, &ctx, &defs, 0)),
            ["https://t.example/global", "https://t.example/d1"],
            "the deal comes from the registration when the event has none"
        );
        let big = event(
            json!({"event_id": "e2", "type": "ftd", "player_id": "p", "deal_id": "d2", "params": {"amount": 20, "currency": "usd", "clickid": "c-2"}}),
        );
        assert_eq!(
            urls(&plan(
                &brand(),
                rules(),
                &big,
                &PlayerContext::default(),
                &defs,
                0
            )),
            [
                "https://t.example/global",
                "https://t.example/d2",
                "https://t.example/big"
            ]
        );
        let custom = event(
            json!({"event_id": "e3", "type": "LEVEL_UP", "player_id": "p", "affiliate_id": "a1"}),
        );
        assert_eq!(
            urls(&plan(
                &brand(),
                rules(),
                &custom,
                &PlayerContext::default(),
                &defs,
                0
            )),
            ["https://t.example/level"]
        );
    }

    #[test]
    fn built_in_macros_are_filled() {
        let e = event(
            json!({"event_id": "e1", "type": "sale", "player_id": "p1", "affiliate_id": 9, "deal_id": "d",
            "occurred_at": "2026-11-22T10:15:00+01:00", "params": {"registration_id": "r-7"}}),
        );
        let v = macro_values(&brand(), &e, &PlayerContext::default(), "sale", 0);
        assert_eq!(v["brand_id"], json!("b1"));
        assert_eq!(v["player_id"], json!("p1"));
        assert_eq!(v["event"], json!("sale"));
        assert_eq!(v["event_id"], json!("e1"));
        assert_eq!(v["registration_id"], json!("r-7"));
        assert_eq!(v["affiliate_id"], json!("9"));
        assert_eq!(v["deal_id"], json!("d"));
        assert_eq!(v["timestamp"], json!(1_795_338_900u64));
        assert_eq!(v["iso_time"], json!("2026-11-22T09:15:00Z"));
        assert!(v["random"].is_u64());
        let plain = event(json!({"event_id": "e2", "type": "sale", "player_id": "p1"}));
        assert_eq!(
            macro_values(&brand(), &plain, &PlayerContext::default(), "sale", 5000)["registration_id"],
            json!("p1"),
            "registration_id is the player id unless given"
        );
    }

    #[test]
    fn a_definition_that_cannot_render_is_reported_not_fatal() {
        let defs = definitions(json!([
            {"name": "fb", "trigger": "ftd", "kind": "facebook", "pixel_id": "{{fb_pixel}}", "event": "Purchase"},
            {"name": "img", "trigger": "ftd", "kind": "image", "url": "https://t.example/"},
        ]));
        let e = event(
            json!({"event_id": "e1", "type": "ftd", "player_id": "p", "params": {"fb_pixel": "not-a-number", "afp": "c-1"}}),
        );
        let p = plan(&brand(), rules(), &e, &PlayerContext::default(), &defs, 0);
        assert_eq!(p.outcome.pixels.len(), 1);
        assert_eq!(p.outcome.failed.len(), 1);
        assert!(p.outcome.failed[0].error.starts_with("pixel_id"));
        assert_eq!(p.outcome.failed[0].reason, "invalid_field");
        assert_eq!(p.failures.len(), 1, "a failed row for the report");
        assert_eq!(
            (p.failures[0].kind, Some(&p.failures[0].id)),
            ("facebook", p.outcome.failed[0].id.as_ref())
        );
    }

    #[test]
    fn invalid_events_name_the_field() {
        let cases = [
            (
                json!({"type": "ftd", "player_id": "p"}),
                "missing_field",
                "event.event_id",
            ),
            (
                json!({"event_id": "e", "player_id": "p"}),
                "missing_field",
                "event.type",
            ),
            (
                json!({"event_id": "e", "type": "ftd"}),
                "missing_field",
                "event.player_id",
            ),
            (
                json!({"event_id": "e 1", "type": "ftd", "player_id": "p"}),
                "invalid_field",
                "event.event_id",
            ),
            (
                json!({"event_id": "e", "type": "first/deposit", "player_id": "p"}),
                "invalid_field",
                "event.type",
            ),
            (
                json!({"event_id": "e", "type": "ftd", "player_id": "p", "occurred_at": "yesterday"}),
                "invalid_field",
                "event.occurred_at",
            ),
            (
                json!({"event_id": "e", "type": "ftd", "player_id": "p", "params": []}),
                "invalid_field",
                "event.params",
            ),
            (
                json!({"event_id": "e", "type": "ftd", "player_id": "p", "params": {"amount": "50"}}),
                "invalid_field",
                "event.params.amount",
            ),
            (
                json!({"event_id": "e", "type": "ftd", "player_id": "p", "params": {"x": {"y": 1}}}),
                "invalid_field",
                "event.params.x",
            ),
            (
                json!({"event_id": "e", "type": "ftd", "player_id": "p", "params": {"click id": "c"}}),
                "invalid_field",
                "event.params.click id",
            ),
            (
                json!({"event_id": "e", "type": "ftd", "player_id": "p", "params": {"player_id": "x"}}),
                "invalid_field",
                "event.params.player_id",
            ),
            (
                json!({"event_id": "e", "type": "ftd", "player_id": "p", "params": {"afp": "a", "AFP": "b"}}),
                "invalid_field",
                "event.params.afp",
            ),
            (
                json!({"event_id": "e", "type": "ftd", "player_id": "p", "colour": 1}),
                "unknown_field",
                "event.colour",
            ),
            (json!("ftd"), "invalid_event", "event"),
        ];
        for (body, code, path) in cases {
            let e = parse_event(body.clone(), "event").unwrap_err();
            assert_eq!((e.code, e.path.as_str()), (code, path), "{body}: {e}");
        }
        let batch = parse_events(
            json!([
                {"event_id": "e1", "type": "ftd", "player_id": "p"},
                {"event_id": "e2", "type": "ftd"},
            ]),
            MAX_EVENTS,
        )
        .unwrap_err();
        assert_eq!(batch.path, "events[1].player_id");
        assert_eq!(
            parse_events(json!([]), MAX_EVENTS).unwrap_err().code,
            "empty_batch"
        );
    }

    #[test]
    fn null_params_neither_render_nor_override() {
        let e = event(
            json!({"event_id": "e", "type": "registration", "player_id": "p", "params": {"afp": null, "sub": "s"}}),
        );
        assert_eq!(e.params.keys().collect::<Vec<_>>(), ["sub"]);
    }
}

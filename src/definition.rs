//! Pixel definitions: a brand's standing rules for which events fire which pixels.
//!
//! A definition names a trigger (an event type), an optional scope (deal, affiliate), optional
//! conditions on the event's values, and a template for one pixel. It is validated whole when it is saved,
//! by parsing its templates and rendering them once with sample values through the same checks a
//! hand-queued pixel meets, so an event can only fail to render a definition because of its own values.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::ids::DefinitionId;
use crate::input::{Fields, InputError, MAX_URL_BYTES};
use crate::pixel::{
    MAX_JS_BYTES, MAX_TTL_SECONDS, PixelBody, PixelKind, PixelPolicy, PolicyRefusal, parse_pixel,
};
use crate::template::{Context, Rendered, Template};

/// Event types the affiliate world agrees on. Any other name of the same shape is a custom trigger.
pub use crate::vocabulary::STANDARD_TYPES as STANDARD_TRIGGERS;
/// Most conditions on one definition.
const MAX_CONDITIONS: usize = 32;

/// A saved definition, as stored and as the API returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// Unique within the brand.
    pub id: DefinitionId,
    /// For people: shown in reports and in event answers.
    pub name: String,
    /// The event type that fires it, lower-case.
    pub trigger: String,
    /// Only events of this deal; any deal when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deal_id: Option<String>,
    /// Only events of this affiliate; any affiliate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliate_id: Option<String>,
    /// Which players it fires for: by default only those an affiliate brought.
    #[serde(default)]
    pub audience: Audience,
    /// What to produce, with its templates.
    #[serde(flatten)]
    pub action: Action,
    /// All must hold for the definition to fire.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// A disabled definition is kept but never fires.
    pub enabled: bool,
    /// Why the hub turned it off by itself (its postbacks kept failing); cleared by the next save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// TTL of the pixels it queues; the hub's default when absent. Client kinds only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// The IAB TCF vendor its pixels report to (see [`crate::pixel::NewPixel::tcf_vendor_id`]). Client
    /// kinds only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcf_vendor_id: Option<u32>,
    /// Unix milliseconds of creation.
    pub created_at_ms: u64,
    /// Unix milliseconds of the last change.
    pub updated_at_ms: u64,
}

/// Which players a definition fires for.
///
/// A conversion pixel tells an affiliate "your player converted", and the affiliate is paid for it; firing
/// one for a player nobody referred credits a conversion that never happened. So a definition fires, by
/// default, only for players with an attribution: an affiliate id, or a click id under one of the brand's
/// click-id params, on the event or kept from the registration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Players an affiliate brought (the default).
    #[default]
    Attributed,
    /// Every player, organic ones too: for the brand's own analytics pixels, say.
    AllPlayers,
}

/// Why a definition does not fire for an event; one per unmet rule, so that a preview can list them all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Which rule: `disabled`, `trigger`, `deal`, `affiliate`, `audience`, `condition` or `render`.
    pub rule: String,
    /// What the rule wants and what the event has.
    pub message: String,
}

impl Refusal {
    fn new(rule: &str, message: String) -> Refusal {
        Refusal {
            rule: rule.into(),
            message,
        }
    }
}

/// What a definition is matched against: the trigger being fired and what is known of the player.
#[derive(Clone, Copy, Debug)]
pub struct Occasion<'a> {
    /// The trigger: the event's type, or one the event raised (`ftd` from a first deposit).
    pub trigger: &'a str,
    /// The deal of the event, or of the player's registration.
    pub deal_id: Option<&'a str>,
    /// The affiliate of the event, or of the player's registration.
    pub affiliate_id: Option<&'a str>,
    /// The click id the player came with, if any (see [`Audience`]).
    pub click_id: Option<&'a str>,
    /// The values macros and conditions read.
    pub values: &'a BTreeMap<String, Value>,
}

impl Occasion<'_> {
    /// Whether an affiliate brought the player.
    pub fn attributed(&self) -> bool {
        self.affiliate_id.is_some_and(|a| !a.is_empty())
            || self.click_id.is_some_and(|c| !c.is_empty())
    }
}

/// The pixel a definition produces, with its templates as the brand wrote them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// A server-to-server postback: the hub itself requests the URL.
    S2s {
        /// URL template.
        url: String,
        /// `POST` with a body when set; a `GET` of the URL otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        post: Option<PostTemplate>,
    },
    /// See [`PixelBody::Image`].
    Image {
        /// URL template.
        url: String,
    },
    /// See [`PixelBody::Iframe`].
    Iframe {
        /// URL template.
        url: String,
    },
    /// See [`PixelBody::Script`].
    Script {
        /// URL template.
        url: String,
    },
    /// See [`PixelBody::Js`].
    Js {
        /// JavaScript template; macros become string literals.
        code: String,
    },
    /// See [`PixelBody::Facebook`].
    Facebook {
        /// Meta pixel id (a text template).
        pixel_id: String,
        /// Event name (a text template).
        event: String,
        /// Event parameters; string values are text templates.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        params: Option<Map<String, Value>>,
    },
}

/// How a postback is sent as `POST`: the body template and its format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PostTemplate {
    /// `form` (`application/x-www-form-urlencoded`, values percent-encoded) or `json` (values become
    /// JSON literals).
    pub format: BodyFormat,
    /// The body template.
    pub body: String,
}

/// The format of a postback body, which decides how macro values are escaped in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json`.
    Json,
}

impl BodyFormat {
    fn context(self) -> Context {
        match self {
            BodyFormat::Form => Context::Form,
            BodyFormat::Json => Context::Json,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            BodyFormat::Form => "application/x-www-form-urlencoded",
            BodyFormat::Json => "application/json",
        }
    }
}

impl Action {
    /// The templates as one text, for the delivery report: what the brand wrote, before values.
    pub fn template_text(&self) -> String {
        match self {
            Action::S2s { url, post: None }
            | Action::Image { url }
            | Action::Iframe { url }
            | Action::Script { url } => url.clone(),
            Action::S2s {
                url,
                post: Some(post),
            } => format!("POST {url}\n{}", post.body),
            Action::Js { code } => code.clone(),
            Action::Facebook {
                pixel_id, event, ..
            } => format!("fbq trackSingle {pixel_id} {event}"),
        }
    }

    /// Where an `s2s` action's postbacks go, as far as its template decides: the URL rendered with every
    /// macro set to `1` (scheme, host and port are written out, so no value can change them); checked
    /// against the egress policy when the definition is saved. `None` for the other kinds.
    pub fn postback_destination(&self) -> Option<url::Url> {
        let Action::S2s { url, .. } = self else {
            return None;
        };
        let template = Template::parse(url, Context::Url).ok()?;
        let samples: BTreeMap<String, Value> = template
            .macros()
            .map(|name| (name.to_owned(), Value::String("1".into())))
            .collect();
        url::Url::parse(&template.render_url(&samples).ok()?.text).ok()
    }

    /// Whether a brand with `policy` may save this action: its kind allowed, its URL https when the
    /// brand says so. Checked when the definition is saved, and each pixel again after rendering.
    pub fn check(&self, policy: PixelPolicy<'_>) -> Result<(), PolicyRefusal> {
        let (kind, url) = match self {
            Action::S2s { .. } => return Ok(()),
            Action::Image { url } => (PixelKind::Image, Some(url)),
            Action::Iframe { url } => (PixelKind::Iframe, Some(url)),
            Action::Script { url } => (PixelKind::Script, Some(url)),
            Action::Js { .. } => (PixelKind::Js, None),
            Action::Facebook { .. } => (PixelKind::Facebook, None),
        };
        policy.check_kind(kind)?;
        // A URL template's scheme is written out (see `Template::parse`), so its head tells.
        url.map_or(Ok(()), |url| policy.check_url(url))
    }

    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::S2s { .. } => "s2s",
            Action::Image { .. } => "image",
            Action::Iframe { .. } => "iframe",
            Action::Script { .. } => "script",
            Action::Js { .. } => "js",
            Action::Facebook { .. } => "facebook",
        }
    }
}

/// What rendering a definition for one event gives.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A pixel for the player's browser.
    Client(PixelBody),
    /// A postback for the hub to send.
    S2s {
        /// The final URL.
        url: String,
        /// The rendered body, when it is sent as `POST`.
        post: Option<PostBody>,
    },
}

/// A rendered definition: its output and the macros that had no value.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedPixel {
    /// What to queue or send.
    pub output: Output,
    /// Lower-cased names of macros rendered empty for want of a value.
    pub missing: Vec<String>,
}

/// Why a definition could not render a valid pixel for an event's values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderError {
    /// Stable code, for the report and the metrics: `kind_not_allowed` or `https_required` (the brand's
    /// policy changed since the definition was saved), `invalid_url` (a raw value broke the URL),
    /// `invalid_body` (a POST body that does not render as JSON), `invalid_template` (a saved template no
    /// longer parses), or the code of the pixel field at fault (`invalid_field` for a Meta pixel id that
    /// is not a number, say).
    pub reason: &'static str,
    /// The field at fault and what is wrong with it.
    pub message: String,
}

impl RenderError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        RenderError {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Definition {
    /// Whether it fires on `trigger` at all: enabled, and that trigger. The cheap first test of
    /// [`Definition::refusals`], made for every definition on every event.
    pub fn listens_to(&self, trigger: &str) -> bool {
        self.enabled && self.trigger == trigger
    }

    /// Every rule the occasion fails, in the order trigger, enabled, scope (deal, affiliate), audience,
    /// conditions; empty when the definition fires. `all` false stops at the first, for the event path.
    pub fn refusals(&self, occasion: &Occasion<'_>, all: bool) -> Vec<Refusal> {
        let mut out = Vec::new();
        let refuse = |out: &mut Vec<Refusal>, refusal: Refusal| {
            out.push(refusal);
            !all
        };
        if self.trigger != occasion.trigger
            && refuse(
                &mut out,
                Refusal::new(
                    "trigger",
                    format!("fires on {}; this is {}", self.trigger, occasion.trigger),
                ),
            )
        {
            return out;
        }
        if !self.enabled {
            let why = self
                .disabled_reason
                .as_deref()
                .map_or_else(String::new, |r| format!(": {r}"));
            if refuse(
                &mut out,
                Refusal::new("disabled", format!("is disabled{why}")),
            ) {
                return out;
            }
        }
        for (rule, mine, theirs) in [
            ("deal", &self.deal_id, occasion.deal_id),
            ("affiliate", &self.affiliate_id, occasion.affiliate_id),
        ] {
            if let Some(mine) = mine
                && Some(mine.as_str()) != theirs
            {
                let theirs = theirs.map_or_else(|| format!("no {rule}"), |t| format!("{rule} {t}"));
                let refusal = Refusal::new(
                    rule,
                    format!("only for {rule} {mine}; the player has {theirs}"),
                );
                if refuse(&mut out, refusal) {
                    return out;
                }
            }
        }
        if self.audience == Audience::Attributed && !occasion.attributed() {
            let refusal = Refusal::new(
                "audience",
                "fires only for players an affiliate brought, and this player has no affiliate id and no click id (audience all_players fires for every player)".into(),
            );
            if refuse(&mut out, refusal) {
                return out;
            }
        }
        for condition in &self.conditions {
            if !condition.holds(occasion.values) {
                let has = match occasion.values.get(&condition.field) {
                    None | Some(Value::Null) => format!("{} has no value", condition.field),
                    Some(Value::String(s)) => format!("{} is {s:?}", condition.field),
                    Some(other) => format!("{} is {other}", condition.field),
                };
                let refusal =
                    Refusal::new("condition", format!("{condition} does not hold: {has}"));
                if refuse(&mut out, refusal) {
                    return out;
                }
            }
        }
        out
    }

    /// [`Definition::render`], then the brand's `policy` on the result: the kind may have been turned off
    /// since the definition was saved, and a URL is checked as rendered, not only as written.
    pub fn render_checked(
        &self,
        values: &BTreeMap<String, Value>,
        policy: PixelPolicy<'_>,
    ) -> Result<RenderedPixel, RenderError> {
        let rendered = self.render(values)?;
        if let Output::Client(body) = &rendered.output {
            policy.check(body).map_err(|refusal| {
                RenderError::new(
                    refusal.code,
                    format!("{}: {}", refusal.field, refusal.message),
                )
            })?;
        }
        Ok(rendered)
    }

    /// Renders the pixel for `values`. Fails only when the values make an invalid pixel (say, a raw value
    /// that breaks the URL, or a Meta pixel id that is not a number); the message says which field.
    pub fn render(&self, values: &BTreeMap<String, Value>) -> Result<RenderedPixel, RenderError> {
        let mut missing = Vec::new();
        let parse = |source: &str, context: Context| {
            Template::parse(source, context).map_err(|e| {
                RenderError::new(
                    "invalid_template",
                    format!("the saved template no longer parses: {e}"),
                )
            })
        };
        let url_error = |rendered: Result<Rendered, String>| {
            rendered.map_err(|m| RenderError::new("invalid_url", m))
        };
        let mut keep = |Rendered { text, missing: m }: Rendered| -> String {
            for name in m {
                if !missing.contains(&name) {
                    missing.push(name);
                }
            }
            text
        };
        let pixel = match &self.action {
            Action::S2s { url, post } => {
                let url = keep(url_error(parse(url, Context::Url)?.render_url(values))?);
                let post = match post {
                    None => None,
                    Some(post) => {
                        let body = keep(parse(&post.body, post.format.context())?.render(values));
                        if post.format == BodyFormat::Json
                            && serde_json::from_str::<Value>(&body).is_err()
                        {
                            return Err(RenderError::new(
                                "invalid_body",
                                "post.body does not render as JSON",
                            ));
                        }
                        Some(PostBody {
                            content_type: post.format.content_type().into(),
                            body,
                        })
                    }
                };
                return Ok(RenderedPixel {
                    output: Output::S2s { url, post },
                    missing,
                });
            }
            Action::Image { url: source }
            | Action::Iframe { url: source }
            | Action::Script { url: source } => {
                let url = keep(url_error(parse(source, Context::Url)?.render_url(values))?);
                serde_json::json!({"kind": self.action.kind(), "url": url})
            }
            Action::Js { code } => {
                serde_json::json!({"kind": "js", "code": keep(parse(code, Context::Js)?.render(values))})
            }
            Action::Facebook {
                pixel_id,
                event,
                params,
            } => {
                let mut out = Map::new();
                for (key, value) in params.iter().flatten() {
                    let rendered = match value {
                        Value::String(source) => {
                            let template = Template::parse(source, Context::Text).map_err(|e| {
                                RenderError::new("invalid_template", format!("params.{key}: {e}"))
                            })?;
                            match template.sole_macro().and_then(|name| values.get(name)) {
                                Some(typed @ (Value::Number(_) | Value::Bool(_))) => typed.clone(),
                                _ => Value::String(keep(template.render(values))),
                            }
                        }
                        other => other.clone(),
                    };
                    out.insert(key.clone(), rendered);
                }
                serde_json::json!({
                    "kind": "facebook",
                    "pixel_id": keep(parse(pixel_id, Context::Text)?.render(values)),
                    "event": keep(parse(event, Context::Text)?.render(values)),
                    "params": out,
                })
            }
        };
        let pixel = parse_pixel(pixel, "pixel").map_err(|e| {
            let field = e.path.strip_prefix("pixel.").unwrap_or(&e.path);
            RenderError::new(e.code, format!("{field} {}", e.message))
        })?;
        Ok(RenderedPixel {
            output: Output::Client(pixel.body),
            missing,
        })
    }
}

/// A definition as a caller sent it, validated; the store adds the id (when new) and the timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct DefinitionInput {
    /// The caller's id, on create; generated when absent.
    pub id: Option<DefinitionId>,
    /// See [`Definition::name`].
    pub name: String,
    /// See [`Definition::trigger`].
    pub trigger: String,
    /// See [`Definition::deal_id`].
    pub deal_id: Option<String>,
    /// See [`Definition::affiliate_id`].
    pub affiliate_id: Option<String>,
    /// See [`Definition::audience`].
    pub audience: Audience,
    /// See [`Definition::action`].
    pub action: Action,
    /// See [`Definition::conditions`].
    pub conditions: Vec<Condition>,
    /// See [`Definition::enabled`]; true when absent.
    pub enabled: bool,
    /// See [`Definition::ttl_seconds`].
    pub ttl_seconds: Option<u64>,
    /// See [`Definition::tcf_vendor_id`].
    pub tcf_vendor_id: Option<u32>,
}

impl DefinitionInput {
    /// The definition to store under `id`, created at `created_at_ms`, changed `now`.
    pub fn into_definition(self, id: DefinitionId, created_at_ms: u64, now: u64) -> Definition {
        Definition {
            id,
            name: self.name,
            trigger: self.trigger,
            deal_id: self.deal_id,
            affiliate_id: self.affiliate_id,
            audience: self.audience,
            action: self.action,
            conditions: self.conditions,
            enabled: self.enabled,
            disabled_reason: None,
            ttl_seconds: self.ttl_seconds,
            tcf_vendor_id: self.tcf_vendor_id,
            created_at_ms,
            updated_at_ms: now,
        }
    }
}

/// Parses and validates a definition body (`POST` or `PUT`). `allow_id` is false for `PUT`, whose id is
/// in the path.
pub fn parse_definition(body: Value, allow_id: bool) -> Result<DefinitionInput, InputError> {
    const PATH: &str = "definition";
    let Value::Object(mut obj) = body else {
        return Err(InputError::new(
            "invalid_definition",
            PATH,
            "a definition must be a JSON object",
        ));
    };
    let mut fields = Fields::new(&mut obj, PATH);

    let id = match fields.optional_str("id")? {
        Some(_) if !allow_id => {
            return Err(fields.error(
                "invalid_field",
                "id",
                "cannot be changed; the id is the one in the path",
            ));
        }
        Some(id) => Some(fields.id("id", &id)?),
        None => None,
    };
    let name = fields.required_str("name")?;
    fields.check_label("name", &name, 200)?;
    let written = fields.required_str("trigger")?;
    let Some(trigger) = crate::vocabulary::event_type(&written) else {
        return Err(fields.error(
            "invalid_field",
            "trigger",
            format!(
                "must be one of {} (or a name affiliate platforms use for one, such as Lead or Qualified FTD; see docs/definitions.md) or a custom event name of 1 to 64 characters a-z 0-9 _ . : -",
                STANDARD_TRIGGERS.join(", ")
            ),
        ));
    };
    let deal_id = fields.optional_label("deal_id", 128)?;
    let affiliate_id = fields.optional_label("affiliate_id", 128)?;
    let audience = match fields.optional_str("audience")?.as_deref() {
        None | Some("attributed") => Audience::Attributed,
        Some("all_players") => Audience::AllPlayers,
        Some(other) => {
            return Err(fields.error(
                "invalid_field",
                "audience",
                format!("{other:?} is not an audience; use attributed (the default: players an affiliate brought) or all_players"),
            ));
        }
    };
    let enabled = fields.optional_bool("enabled")?.unwrap_or(true);
    let ttl_seconds = fields.optional_u64("ttl_seconds", 1..=MAX_TTL_SECONDS, "seconds")?;
    let tcf_vendor_id = fields
        .optional_u64(
            "tcf_vendor_id",
            1..=crate::pixel::MAX_TCF_VENDOR_ID,
            "a TCF vendor id",
        )?
        .map(|id| id as u32);
    let conditions = match fields.obj.remove("conditions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_CONDITIONS => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("conditions[{i}]");
                match item {
                    Value::String(s) => {
                        Condition::parse(s).map_err(|m| fields.error("invalid_condition", &path, m))
                    }
                    _ => Err(fields.error(
                        "invalid_condition",
                        &path,
                        "must be a string such as \"amount >= 20\"",
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(fields.error(
                "invalid_field",
                "conditions",
                format!("must be an array of at most {MAX_CONDITIONS} condition strings"),
            ));
        }
    };

    let kind = fields.required_str("kind")?;
    let action = match kind.as_str() {
        "s2s" | "image" | "iframe" | "script" => {
            let mut url = fields.required_str("url")?;
            // SmartyAds hands out its conversion pixel as a tag to paste: take the tag as it is.
            if kind == "script" && url.trim_start().starts_with('<') {
                url = script_src(&url).map_err(|m| fields.error("invalid_url", "url", m))?;
            }
            if url.len() > MAX_URL_BYTES {
                return Err(fields.error(
                    "invalid_url",
                    "url",
                    format!("is longer than {MAX_URL_BYTES} bytes"),
                ));
            }
            template(&fields, "url", &url, Context::Url)?;
            match kind.as_str() {
                "s2s" => Action::S2s {
                    url,
                    post: post_template(&mut fields)?,
                },
                "image" => Action::Image { url },
                "iframe" => Action::Iframe { url },
                _ => Action::Script { url },
            }
        }
        "js" => {
            let code = fields.required_str("code")?;
            if code.trim().is_empty() || code.len() > MAX_JS_BYTES {
                return Err(fields.error(
                    "invalid_field",
                    "code",
                    format!("must be 1 to {MAX_JS_BYTES} bytes of JavaScript"),
                ));
            }
            template(&fields, "code", &code, Context::Js)?;
            Action::Js { code }
        }
        "facebook" => {
            let pixel_id = fields.required_str("pixel_id")?;
            template(&fields, "pixel_id", &pixel_id, Context::Text)?;
            let event = fields.required_str("event")?;
            template(&fields, "event", &event, Context::Text)?;
            let params = match fields.obj.remove("params") {
                None | Some(Value::Null) => None,
                Some(Value::Object(map)) => {
                    for (key, value) in &map {
                        if let Value::String(source) = value {
                            template(&fields, &format!("params.{key}"), source, Context::Text)?;
                        }
                    }
                    Some(map)
                }
                Some(_) => {
                    return Err(fields.error("invalid_field", "params", "must be a JSON object"));
                }
            };
            Action::Facebook {
                pixel_id,
                event,
                params,
            }
        }
        other => {
            return Err(fields.error(
                "unknown_kind",
                "kind",
                format!("{other:?} is not a definition kind; use s2s, image, iframe, script, js or facebook"),
            ));
        }
    };
    for (field, set) in [
        ("ttl_seconds", ttl_seconds.is_some()),
        ("tcf_vendor_id", tcf_vendor_id.is_some()),
    ] {
        if set && matches!(action, Action::S2s { .. }) {
            return Err(fields.error(
                "invalid_field",
                field,
                "applies to pixels queued for browsers, not to s2s postbacks",
            ));
        }
    }
    fields.finish(&format!("a {kind} definition"))?;

    let input = DefinitionInput {
        id,
        name,
        trigger,
        deal_id,
        affiliate_id,
        audience,
        action,
        conditions,
        enabled,
        ttl_seconds,
        tcf_vendor_id,
    };
    // Rendered once with every macro set, through the checks a queued pixel meets: a template whose
    // literal parts can never make a valid pixel is refused now, not at each event.
    let probe = input
        .clone()
        .into_definition(DefinitionId::generate(), 0, 0);
    let samples: BTreeMap<String, Value> = probe
        .templates()
        .flat_map(|t| t.macros().map(str::to_owned).collect::<Vec<_>>())
        .map(|name| (name, Value::String("1".into())))
        .collect();
    let rendered = probe.render(&samples).map_err(|error| {
        let message = error.message;
        let (field, rest) = message.split_once(' ').unwrap_or(("definition", &message));
        InputError::new(
            "invalid_template",
            format!("{PATH}.{field}"),
            format!("{rest} (rendered with every macro set to 1)"),
        )
    })?;
    // A js block that does not parse would fail in every player's browser: refuse it now.
    if let Output::Client(PixelBody::Js { code }) = &rendered.output {
        crate::template::check_js_syntax(code).map_err(|message| {
            InputError::new(
                "invalid_template",
                format!("{PATH}.code"),
                format!("{message} (rendered with every macro set to \"1\")"),
            )
        })?;
    }
    Ok(input)
}

impl Definition {
    /// Every template of the definition, parsed (they were validated when saved).
    fn templates(&self) -> impl Iterator<Item = Template> + '_ {
        let sources: Vec<(&str, Context)> = match &self.action {
            Action::S2s { url, post } => {
                let mut v = vec![(url.as_str(), Context::Url)];
                v.extend(post.iter().map(|p| (p.body.as_str(), p.format.context())));
                v
            }
            Action::Image { url } | Action::Iframe { url } | Action::Script { url } => {
                vec![(url, Context::Url)]
            }
            Action::Js { code } => vec![(code, Context::Js)],
            Action::Facebook {
                pixel_id,
                event,
                params,
            } => {
                let mut v = vec![(pixel_id.as_str(), Context::Text), (event, Context::Text)];
                v.extend(
                    params
                        .iter()
                        .flatten()
                        .filter_map(|(_, value)| value.as_str().map(|s| (s, Context::Text))),
                );
                v
            }
        };
        sources
            .into_iter()
            .filter_map(|(source, context)| Template::parse(source, context).ok())
    }
}

/// Largest postback body template.
const MAX_POST_BODY_BYTES: usize = 16 * 1024;

/// The optional `post` object of an s2s definition: `{"format": "form" | "json", "body": "…"}`.
fn post_template(fields: &mut Fields<'_>) -> Result<Option<PostTemplate>, InputError> {
    let mut obj = match fields.obj.remove("post") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            return Err(fields.error(
                "invalid_field",
                "post",
                "must be an object such as {\"format\": \"form\", \"body\": \"a={afp}\"}",
            ));
        }
    };
    let path = fields.path_of("post");
    let mut post = Fields::new(&mut obj, &path);
    let format = match post.optional_str("format")?.as_deref() {
        None | Some("form") => BodyFormat::Form,
        Some("json") => BodyFormat::Json,
        Some(other) => {
            return Err(post.error(
                "invalid_field",
                "format",
                format!("{other:?} is not a body format; use form or json"),
            ));
        }
    };
    let body = post.required_str("body")?;
    if body.len() > MAX_POST_BODY_BYTES {
        return Err(post.error(
            "invalid_field",
            "body",
            format!("is longer than {MAX_POST_BODY_BYTES} bytes"),
        ));
    }
    template(&post, "body", &body, format.context())?;
    post.finish("a post object")?;
    Ok(Some(PostTemplate { format, body }))
}

fn template(
    fields: &Fields<'_>,
    field: &str,
    source: &str,
    context: Context,
) -> Result<Template, InputError> {
    Template::parse(source, context)
        .map_err(|e| fields.error("invalid_template", field, e.to_string()))
}

/// The `src` of a pasted `<script src="…"></script>` tag (other attributes allowed and dropped), with the
/// HTML entities a copied tag may carry (`&amp;`) decoded. A tag with code inside, or anything around
/// it, is refused: only the URL is kept, and the hub builds the tag itself.
fn script_src(html: &str) -> Result<String, String> {
    const FORM: &str =
        "a pasted tag must be one <script src=\"https://…\"></script>, with nothing inside";
    let html = html.trim();
    let lower = html.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("<script")
        .filter(|r| r.starts_with(|c: char| c.is_ascii_whitespace()))
        .ok_or(FORM)?;
    let offset = html.len() - rest.len();
    // The end of the opening tag, outside quoted attribute values.
    let mut quote = None;
    let mut end = None;
    for (i, c) in rest.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end.ok_or(FORM)?;
    let closing: String = rest[end + 1..]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if closing != "</script>" {
        return Err(FORM.into());
    }
    let attributes = &html[offset..offset + end];
    let lower_attributes = &rest[..end];
    let mut search = 0;
    while let Some(at) = lower_attributes[search..].find("src") {
        let start = search + at;
        search = start + 3;
        let before_ok = start == 0 || lower_attributes.as_bytes()[start - 1].is_ascii_whitespace();
        let after = lower_attributes[start + 3..].trim_start();
        if !before_ok || !after.starts_with('=') {
            continue;
        }
        let value_at = attributes.len() - after.len() + 1;
        let value = attributes[value_at..].trim_start();
        let raw = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or_default(),
            _ => value
                .split(|c: char| c.is_ascii_whitespace())
                .next()
                .unwrap_or_default(),
        };
        let url = raw
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        if url.trim().is_empty() {
            break;
        }
        return Ok(url.trim().to_owned());
    }
    Err(format!("{FORM}; this tag has no src"))
}

/// One condition on an event's values, such as `amount >= 20` or `currency in [EUR, USD]`.
///
/// A condition on a value the event does not have never holds. Comparisons are numeric when both sides are
/// numbers, and otherwise compare text without regard to case (`eur` equals `EUR`).
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// The macro name it reads, lower-cased.
    pub field: String,
    /// How it compares.
    pub op: Op,
    /// The right-hand side; one value except for `in` and `not in`.
    pub values: Vec<String>,
}

/// A condition's operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `==` (or `=`)
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `in [a, b]`
    In,
    /// `not in [a, b]`
    NotIn,
}

impl Op {
    const ALL: [(&'static str, Op); 9] = [
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">=", Op::Ge),
        ("<=", Op::Le),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("=", Op::Eq),
        ("not in", Op::NotIn),
        ("in", Op::In),
    ];

    fn symbol(self) -> &'static str {
        Op::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .map(|(s, _)| *s)
            .expect("every operator has a symbol")
    }

    fn numeric(self) -> bool {
        matches!(self, Op::Gt | Op::Ge | Op::Lt | Op::Le)
    }
}

impl Condition {
    /// Parses `field op value` or `field [not] in [v1, v2]`; values may be bare or quoted.
    pub fn parse(source: &str) -> Result<Condition, String> {
        let s = source.trim();
        let name_len = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .unwrap_or(s.len());
        let (field, rest) = s.split_at(name_len);
        if field.is_empty() || !field.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return Err(format!(
                "{source:?} must start with a macro name, as in \"amount >= 20\""
            ));
        }
        let rest = rest.trim_start();
        let lower = rest.to_ascii_lowercase();
        let Some((symbol, op)) = Op::ALL.iter().find(|(symbol, op)| {
            lower.starts_with(symbol)
                && (!matches!(op, Op::In | Op::NotIn)
                    || lower[symbol.len()..].starts_with([' ', '[']))
        }) else {
            let token: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            return Err(format!(
                "unknown operator {token:?} in {source:?}; use ==, !=, >, >=, <, <=, in or not in"
            ));
        };
        let operand = rest[symbol.len()..].trim();
        let values = if matches!(op, Op::In | Op::NotIn) {
            let inner = operand
                .strip_prefix('[')
                .and_then(|o| o.strip_suffix(']'))
                .ok_or_else(|| {
                    format!("`{symbol}` needs a list such as [EUR, USD] in {source:?}")
                })?;
            let values: Vec<String> = inner
                .split(',')
                .map(unquote)
                .filter(|v| !v.is_empty())
                .collect();
            if values.is_empty() {
                return Err(format!("the list in {source:?} is empty"));
            }
            values
        } else {
            let value = unquote(operand);
            if value.is_empty() {
                return Err(format!("{source:?} has no value to compare with"));
            }
            if op.numeric() && value.parse::<f64>().is_err() {
                return Err(format!(
                    "`{symbol}` compares numbers, and {value:?} is not one, in {source:?}"
                ));
            }
            vec![value]
        };
        Ok(Condition {
            field: field.to_ascii_lowercase(),
            op: *op,
            values,
        })
    }

    /// Whether it holds for these values (keyed by lower-cased name).
    pub fn holds(&self, values: &BTreeMap<String, Value>) -> bool {
        let Some(value) = values.get(&self.field) else {
            return false;
        };
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Null => return false,
            other => other.to_string(),
        };
        let number = text.trim().parse::<f64>().ok();
        let equals = |other: &String| match (number, other.parse::<f64>().ok()) {
            (Some(a), Some(b)) => a == b,
            _ => text.eq_ignore_ascii_case(other),
        };
        let compare = |want: fn(std::cmp::Ordering) -> bool| match (
            number,
            self.values[0].parse::<f64>().ok(),
        ) {
            (Some(a), Some(b)) => a.partial_cmp(&b).is_some_and(want),
            _ => false,
        };
        match self.op {
            Op::Eq => equals(&self.values[0]),
            Op::Ne => !equals(&self.values[0]),
            Op::In => self.values.iter().any(equals),
            Op::NotIn => !self.values.iter().any(equals),
            Op::Gt => compare(std::cmp::Ordering::is_gt),
            Op::Ge => compare(std::cmp::Ordering::is_ge),
            Op::Lt => compare(std::cmp::Ordering::is_lt),
            Op::Le => compare(std::cmp::Ordering::is_le),
        }
    }
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(quote).and_then(|s| s.strip_suffix(quote)) {
            return inner.to_string();
        }
    }
    s.to_string()
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |v: &String| {
            if v.is_empty() || v.contains([',', ' ', '[', ']', '"']) {
                format!("'{v}'")
            } else {
                v.clone()
            }
        };
        match self.op {
            Op::In | Op::NotIn => {
                let list: Vec<String> = self.values.iter().map(quote).collect();
                write!(
                    f,
                    "{} {} [{}]",
                    self.field,
                    self.op.symbol(),
                    list.join(", ")
                )
            }
            op => write!(
                f,
                "{} {} {}",
                self.field,
                op.symbol(),
                quote(&self.values[0])
            ),
        }
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Condition::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The body of a postback sent as `POST`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PostBody {
    /// `application/x-www-form-urlencoded` or `application/json`.
    pub content_type: String,
    /// The rendered body.
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(v: Value) -> BTreeMap<String, Value> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn definition(body: Value) -> Definition {
        parse_definition(body, true).unwrap().into_definition(
            DefinitionId::parse("d").unwrap(),
            1,
            1,
        )
    }

    fn refused(body: Value) -> InputError {
        parse_definition(body, true).unwrap_err()
    }

    #[test]
    fn conditions_compare_numbers_and_text() {
        let cases = [
            ("amount >= 20", json!({"amount": 20}), true),
            ("amount >= 20", json!({"amount": 19.99}), false),
            ("amount > 20", json!({"amount": "25"}), true),
            ("amount < 20", json!({"amount": "n/a"}), false),
            ("amount<=20", json!({"amount": 20}), true),
            ("currency in [EUR, USD]", json!({"currency": "eur"}), true),
            (
                "currency in ['EUR', \"USD\"]",
                json!({"currency": "GBP"}),
                false,
            ),
            ("country not in [RU, BY]", json!({"country": "de"}), true),
            ("country not in [RU, BY]", json!({"country": "ru"}), false),
            ("country NOT IN [RU]", json!({"country": "de"}), true),
            ("amount == 50", json!({"amount": 50.0}), true),
            ("amount = 50", json!({"amount": 50}), true),
            ("vip != true", json!({"vip": true}), false),
            ("vip != true", json!({"vip": false}), true),
            ("amount >= 20", json!({}), false),
            ("country not in [RU]", json!({}), false),
        ];
        for (source, vals, expected) in cases {
            let c = Condition::parse(source).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                c.holds(&values(vals.clone())),
                expected,
                "{source} on {vals}"
            );
        }
    }

    #[test]
    fn conditions_round_trip_through_their_text() {
        for (source, canonical) in [
            ("Amount>=20", "amount >= 20"),
            ("currency in [EUR,USD]", "currency in [EUR, USD]"),
            ("name = 'a b'", "name == 'a b'"),
            ("index in [a]", "index in [a]"),
        ] {
            let c = Condition::parse(source).unwrap();
            assert_eq!(c.to_string(), canonical);
            assert_eq!(Condition::parse(canonical).unwrap(), c);
        }
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        for (source, message) in [
            ("amount ~= 20", "unknown operator \"~=\""),
            ("amount between 1 and 2", "unknown operator \"between\""),
            ("amount >= twenty", "compares numbers"),
            ("currency in EUR", "needs a list"),
            ("currency in []", "empty"),
            ("amount >=", "no value"),
            (">= 20", "must start with a macro name"),
        ] {
            let e = Condition::parse(source).unwrap_err();
            assert!(e.contains(message), "{source}: {e}");
        }
    }

    #[test]
    fn matching_honours_trigger_scope_and_enabled() {
        let global = definition(
            json!({"name": "g", "trigger": "FTD", "kind": "image", "url": "https://t.example/"}),
        );
        let deal = definition(
            json!({"name": "d", "trigger": "ftd", "deal_id": 7, "kind": "image", "url": "https://t.example/"}),
        );
        let both = definition(
            json!({"name": "b", "trigger": "ftd", "deal_id": "7", "affiliate_id": "a9", "kind": "image", "url": "https://t.example/"}),
        );
        let custom = definition(
            json!({"name": "c", "trigger": "level_up", "kind": "image", "url": "https://t.example/"}),
        );
        let off = definition(
            json!({"name": "o", "trigger": "ftd", "enabled": false, "kind": "image", "url": "https://t.example/"}),
        );

        let values = BTreeMap::new();
        let fires = |d: &Definition, trigger: &str, deal: Option<&str>, affiliate: Option<&str>| {
            let occasion = Occasion {
                trigger,
                deal_id: deal,
                affiliate_id: affiliate,
                click_id: Some("c-1"),
                values: &values,
            };
            d.refusals(&occasion, false).is_empty()
        };
        assert!(fires(&global, "ftd", None, None));
        assert!(fires(&global, "ftd", Some("1"), Some("a1")));
        assert!(!fires(&global, "deposit", None, None));
        assert!(fires(&deal, "ftd", Some("7"), None));
        assert!(!fires(&deal, "ftd", Some("8"), None));
        assert!(
            !fires(&deal, "ftd", None, None),
            "a deal scope needs the deal"
        );
        assert!(fires(&both, "ftd", Some("7"), Some("a9")));
        assert!(!fires(&both, "ftd", Some("7"), Some("a1")));
        assert!(fires(&custom, "level_up", None, None));
        assert!(!fires(&off, "ftd", None, None));
    }

    #[test]
    fn a_js_definition_that_does_not_parse_is_refused_with_where() {
        let error = refused(json!({"name": "j", "trigger": "ftd", "kind": "js",
            "code": "fbq('track', 'Purchase', {value: {{amount}}});\nif ({{afp}} {"}));
        assert_eq!(
            (error.code, error.path.as_str()),
            ("invalid_template", "definition.code")
        );
        assert!(
            error
                .message
                .starts_with("does not parse as JavaScript at line 2, column 9: expected"),
            "{}",
            error.message
        );
        for fine in [
            "fbq('track', 'Purchase', {value: Number({{amount}}), currency: {{currency}}});",
            "(function () { var i = new Image(); i.src = 'https://a.example/?c=' + encodeURIComponent({{afp}}); })();",
            "window.dataLayer = window.dataLayer || []; dataLayer.push({event: 'ftd', id: {{player_id}}});",
        ] {
            parse_definition(
                json!({"name": "j", "trigger": "ftd", "kind": "js", "code": fine}),
                true,
            )
            .unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
    }

    #[test]
    fn a_pasted_script_tag_is_its_src() {
        let smartyads = r#"<script src="https://conversions.smartyads.com/conversion?type=campaign&id=14270&cid=18999&clid=[CLICK_ID]"></script>"#;
        assert_eq!(
            script_src(smartyads).unwrap(),
            "https://conversions.smartyads.com/conversion?type=campaign&id=14270&cid=18999&clid=[CLICK_ID]"
        );
        let head = r#" <SCRIPT id="" text="" charset="" type="text/javascript" src='https://dsp.smartyads.com/clid.js?a=1&amp;b=2'></script > "#;
        assert_eq!(
            script_src(head).unwrap(),
            "https://dsp.smartyads.com/clid.js?a=1&b=2"
        );
        for bad in [
            r#"<script src="https://a.example/x.js">alert(1)</script>"#,
            r#"<script>alert(1)</script>"#,
            r#"<script data-src="https://a.example/x.js"></script>"#,
            r#"<img src="https://a.example/x.gif">"#,
            r#"<script src="https://a.example/x.js"></script><script src="https://b.example/"></script>"#,
            r#"<script src="https://a.example/x.js">"#,
        ] {
            assert!(script_src(bad).is_err(), "{bad}");
        }
        let saved =
            definition(json!({"name": "s", "trigger": "ftd", "kind": "script", "url": smartyads}));
        assert_eq!(
            saved.action,
            Action::Script {
                url: "https://conversions.smartyads.com/conversion?type=campaign&id=14270&cid=18999&clid=[CLICK_ID]".into()
            }
        );
    }

    #[test]
    fn every_reason_not_to_fire_is_listed_and_the_audience_is_attributed_players() {
        let scoped = definition(json!({
            "name": "s", "trigger": "Qualified FTD", "deal_id": "7", "affiliate_id": "a9",
            "conditions": ["amount >= 20", "currency == EUR"],
            "kind": "image", "url": "https://t.example/"
        }));
        assert_eq!(scoped.trigger, "qftd", "Smartico's name is the hub's qftd");
        assert_eq!(
            scoped.audience,
            Audience::Attributed,
            "the default audience"
        );
        let values = BTreeMap::from([("amount".to_owned(), json!(5))]);
        let organic = Occasion {
            trigger: "qftd",
            deal_id: Some("8"),
            affiliate_id: None,
            click_id: None,
            values: &values,
        };
        let rules: Vec<String> = scoped
            .refusals(&organic, true)
            .into_iter()
            .map(|r| r.rule)
            .collect();
        assert_eq!(
            rules,
            ["deal", "affiliate", "audience", "condition", "condition"]
        );
        let messages: Vec<String> = scoped
            .refusals(&organic, true)
            .into_iter()
            .map(|r| r.message)
            .collect();
        assert_eq!(messages[0], "only for deal 7; the player has deal 8");
        assert_eq!(
            messages[1],
            "only for affiliate a9; the player has no affiliate"
        );
        assert_eq!(messages[3], "amount >= 20 does not hold: amount is 5");
        assert_eq!(
            messages[4],
            "currency == EUR does not hold: currency has no value"
        );
        assert_eq!(
            scoped.refusals(&organic, false).len(),
            1,
            "the event path stops at the first"
        );

        let everyone = definition(json!({
            "name": "e", "trigger": "registration", "audience": "all_players",
            "kind": "image", "url": "https://t.example/"
        }));
        let organic = Occasion {
            trigger: "registration",
            ..organic
        };
        assert!(everyone.refusals(&organic, true).is_empty());
        let attributed = definition(json!({
            "name": "a", "trigger": "Lead", "kind": "image", "url": "https://t.example/"
        }));
        assert_eq!(attributed.refusals(&organic, true)[0].rule, "audience");
        for brought in [
            Occasion {
                click_id: Some("c1"),
                ..organic
            },
            Occasion {
                affiliate_id: Some("a1"),
                ..organic
            },
        ] {
            assert!(attributed.refusals(&brought, true).is_empty());
        }
        let blank = Occasion {
            click_id: Some(""),
            affiliate_id: Some(""),
            ..organic
        };
        assert_eq!(attributed.refusals(&blank, true)[0].rule, "audience");
        assert_eq!(
            refused(json!({"name": "x", "trigger": "ftd", "audience": "everyone", "kind": "image", "url": "https://t.example/"})).path,
            "definition.audience"
        );
    }

    #[test]
    fn every_kind_renders_its_pixel() {
        let vals = values(json!({"afp": "x y", "amount": 50, "currency": "EUR", "pid": "123"}));
        let image = definition(
            json!({"name": "i", "trigger": "ftd", "kind": "image", "url": "https://t.example/?c={{afp}}&a=[AMOUNT]&m={{sub1}}"}),
        );
        let r = image.render(&vals).unwrap();
        assert_eq!(
            r.output,
            Output::Client(PixelBody::Image {
                url: "https://t.example/?c=x%20y&a=50&m=".into()
            })
        );
        assert_eq!(r.missing, ["sub1"]);

        let s2s = definition(
            json!({"name": "s", "trigger": "ftd", "kind": "s2s", "url": "https://t.example/pb?c={afp}"}),
        );
        assert_eq!(
            s2s.render(&vals).unwrap().output,
            Output::S2s {
                url: "https://t.example/pb?c=x%20y".into(),
                post: None,
            }
        );

        let js = definition(
            json!({"name": "j", "trigger": "ftd", "kind": "js", "code": "track({{afp}})"}),
        );
        assert_eq!(
            js.render(&vals).unwrap().output,
            Output::Client(PixelBody::Js {
                code: "track(\"x y\")".into()
            })
        );

        let fb = definition(
            json!({"name": "f", "trigger": "ftd", "kind": "facebook", "pixel_id": "{{pid}}", "event": "Purchase",
            "params": {"value": "{{amount}}", "currency": "%%CURRENCY%%", "label": "dep {{amount}}", "n": 1}}),
        );
        match fb.render(&vals).unwrap().output {
            Output::Client(PixelBody::Facebook {
                pixel_id, params, ..
            }) => {
                assert_eq!(pixel_id, "123");
                assert_eq!(
                    Value::Object(params.unwrap()),
                    json!({"value": 50, "currency": "EUR", "label": "dep 50", "n": 1})
                );
            }
            other => panic!("{other:?}"),
        }
        let bad_pixel_id = values(json!({"pid": "abc"}));
        let error = fb.render(&bad_pixel_id).unwrap_err();
        assert!(error.message.starts_with("pixel_id"), "{error}");
        assert_eq!(error.reason, "invalid_field");
    }

    #[test]
    fn definitions_are_refused_with_where_the_problem_is() {
        let base = |extra: Value| {
            let mut body = json!({"name": "n", "trigger": "ftd", "kind": "image", "url": "https://t.example/"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        let cases = [
            (
                base(json!({"url": "https://t.example/?c={{afp}"})),
                "invalid_template",
                "definition.url",
            ),
            (
                base(json!({"url": "{{landing}}"})),
                "invalid_template",
                "definition.url",
            ),
            (
                base(json!({"url": "javascript:alert(1)"})),
                "invalid_template",
                "definition.url",
            ),
            (
                base(json!({"conditions": ["amount ~ 5"]})),
                "invalid_condition",
                "definition.conditions[0]",
            ),
            (
                base(json!({"conditions": "amount > 5"})),
                "invalid_field",
                "definition.conditions",
            ),
            (
                base(json!({"trigger": "first/deposit"})),
                "invalid_field",
                "definition.trigger",
            ),
            (
                base(json!({"kind": "gif"})),
                "unknown_kind",
                "definition.kind",
            ),
            (
                base(json!({"colour": 1})),
                "unknown_field",
                "definition.colour",
            ),
            (
                base(json!({"enabled": "yes"})),
                "invalid_field",
                "definition.enabled",
            ),
            (
                json!({"name": "n", "trigger": "ftd", "kind": "s2s", "url": "https://t.example/", "ttl_seconds": 5}),
                "invalid_field",
                "definition.ttl_seconds",
            ),
            (
                json!({"name": "n", "trigger": "ftd", "kind": "js", "code": "f({{a|raw}})"}),
                "invalid_template",
                "definition.code",
            ),
            (
                json!({"name": "n", "trigger": "ftd", "kind": "facebook", "pixel_id": "abc", "event": "Purchase"}),
                "invalid_template",
                "definition.pixel_id",
            ),
            (
                json!({"name": "n", "trigger": "ftd", "kind": "facebook", "pixel_id": "1", "event": "P", "params": {"v": "{x"}}),
                "invalid_template",
                "definition.params.v",
            ),
            (
                json!({"trigger": "ftd", "kind": "image", "url": "https://t.example/"}),
                "missing_field",
                "definition.name",
            ),
            (json!([]), "invalid_definition", "definition"),
        ];
        for (body, code, path) in cases {
            let e = refused(body.clone());
            assert_eq!((e.code, e.path.as_str()), (code, path), "{body}: {e}");
        }
    }

    #[test]
    fn put_bodies_cannot_rename() {
        let e = parse_definition(
            json!({"id": "x", "name": "n", "trigger": "ftd", "kind": "js", "code": "1"}),
            false,
        )
        .unwrap_err();
        assert_eq!(e.path, "definition.id");
    }

    #[test]
    fn stored_form_round_trips() {
        let d = definition(
            json!({"name": "n", "trigger": "ftd", "kind": "image", "url": "https://t.example/?a={{afp}}",
            "conditions": ["amount >= 20", "currency in [EUR, USD]"], "deal_id": "d1"}),
        );
        let text = serde_json::to_value(&d).unwrap();
        assert_eq!(text["kind"], "image");
        assert_eq!(text["conditions"][1], "currency in [EUR, USD]");
        assert_eq!(serde_json::from_value::<Definition>(text).unwrap(), d);
    }
}

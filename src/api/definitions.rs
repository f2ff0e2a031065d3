//! `/api/v1/brands/{brand_id}/pixel-definitions`, `…/events` and a player's attribution: the brand says
//! once which events fire which pixels, then only reports events.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::IntoParams;

use super::admin::{BrandPath, PlayerPath};
use super::extract::{ApiPath, JsonBody};
use super::{ApiError, AppState, ErrorBody};
use std::collections::BTreeMap;

use crate::brand::Brand;
use crate::definition::{Action, Definition, Occasion, Output, Refusal, parse_definition};
use crate::event::{Event, fill_click_id, macro_values, parse_event, parse_events};
use crate::ids::{BrandId, DefinitionId, EventId, PixelId, PlayerKey};
use crate::input::InputError;
use crate::pixel::{NewPixel, Origin};
use crate::store::DefinitionHealth;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct DefinitionPath {
    /// The brand.
    brand_id: BrandId,
    /// The definition.
    definition_id: DefinitionId,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct EventPath {
    /// The brand.
    brand_id: BrandId,
    /// The event's id, as reported.
    event_id: EventId,
}

/// Create a pixel definition
///
/// A rule: when an event of type `trigger` (and its `conditions`) arrives, queue this pixel with its macros
/// filled in, or send this S2S postback. See docs/definitions.md.
#[utoipa::path(
    post,
    path = "/brands/{brand_id}/pixel-definitions",
    operation_id = "createDefinition",
    tag = "definitions",
    params(BrandPath),
    request_body(content = Object, description = "A definition; `id` optional. See docs/definitions.md.", example = json!({"id": "ftd-image", "name": "FTD image", "trigger": "ftd", "kind": "image", "url": "https://affiliate.example/px?click={{afp}}&lead={{registration_id}}", "conditions": ["amount >= 20"]})),
    responses(
        (status = 201, description = "Created; `Location` names it.", body = Object),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 409, description = "That id exists (`definition_exists`).", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "A bad field; the message names it.", body = ErrorBody),
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let input = parse_definition(body, true)?;
    check_destination(&state, &input.action)?;
    let definition = state
        .ledger
        .create_definition(&path.brand_id, input)
        .await?;
    let location = format!(
        "/api/v1/brands/{}/pixel-definitions/{}",
        path.brand_id, definition.id
    );
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(definition),
    ))
}

/// Refuses a definition whose postbacks would go to an address the hub does not send to (a host
/// written as a non-public address; names are checked when resolved, at each attempt). Where this
/// process may send is its own deployment's concern; the brand's pixel policy is the ledger's.
fn check_destination(state: &AppState, action: &Action) -> Result<(), ApiError> {
    if let Some(destination) = action
        .postback_destination()
        .filter(|to| state.egress.demo_receiver(to).is_none())
    {
        state
            .egress
            .check_url(&destination)
            .map_err(|refused| ApiError::Invalid {
                code: "destination_not_allowed",
                message: format!("definition.url: {refused}"),
            })?;
    }
    Ok(())
}

/// A brand's pixel definitions
///
/// S2S definitions carry their postback `health`, `flagged` after `--s2s-failure-threshold` failures in a row.
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/pixel-definitions",
    operation_id = "listDefinitions",
    tag = "definitions",
    params(
        BrandPath,
        ("affiliate_id" = Option<String>, Query, description = "Only definitions scoped to this affiliate."),
        ("deal_id" = Option<String>, Query, description = "Only definitions scoped to this deal."),
        ("trigger" = Option<String>, Query, description = "Only definitions on this trigger, under any of its names (`Qualified FTD` is `qftd`)."),
    ),
    responses(
        (status = 200, description = "`{\"definitions\": [...]}`.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 422, description = "An unknown or repeated query parameter (`invalid_query`).", body = ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = super::deliveries::Params::read(query.as_deref())?;
    let affiliate = params.take("affiliate_id");
    let deal = params.take("deal_id");
    let trigger = params
        .take("trigger")
        .map(|t| crate::vocabulary::event_type(&t).unwrap_or(t));
    params.finish()?;
    let scoped = |mine: &Option<String>, wanted: &Option<String>| {
        wanted.as_ref().is_none_or(|w| mine.as_ref() == Some(w))
    };
    let mut definitions = state.ledger.definitions(&path.brand_id).await?;
    definitions.retain(|d| {
        scoped(&d.affiliate_id, &affiliate)
            && scoped(&d.deal_id, &deal)
            && trigger.as_ref().is_none_or(|t| &d.trigger == t)
    });
    let health = state.ledger.definition_health(&path.brand_id).await?;
    let threshold = state.config.s2s_failure_threshold;
    let listed: Vec<Value> = definitions
        .into_iter()
        .map(|d| {
            let h = health.get(&d.id);
            with_health(d, h, threshold)
        })
        .collect();
    Ok(Json(json!({ "definitions": listed })))
}

/// A pixel definition
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/pixel-definitions/{definition_id}",
    operation_id = "getDefinition",
    tag = "definitions",
    params(DefinitionPath),
    responses(
        (status = 200, description = "The definition (with `health` for S2S).", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand or definition.", body = ErrorBody),
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<DefinitionPath>,
) -> Result<Json<Value>, ApiError> {
    let definition = find(&state, &path).await?;
    let health = state.ledger.definition_health(&path.brand_id).await?;
    let h = health.get(&definition.id);
    Ok(Json(with_health(
        definition,
        h,
        state.config.s2s_failure_threshold,
    )))
}

/// A definition as the API shows it: an s2s one with its postback `health`, `flagged` once its attempts
/// failed `threshold` times in a row.
fn with_health(definition: Definition, health: Option<&DefinitionHealth>, threshold: u64) -> Value {
    let s2s = matches!(definition.action, Action::S2s { .. });
    let mut value = serde_json::to_value(definition).expect("a definition serialises");
    if s2s {
        let health = health.cloned().unwrap_or_default();
        let mut shown = serde_json::to_value(&health).expect("health serialises");
        shown["flagged"] = json!(u64::from(health.consecutive_failures) >= threshold);
        value["health"] = shown;
    }
    value
}

/// Replace a pixel definition
///
/// Pixels already queued keep the URL they were rendered with.
#[utoipa::path(
    put,
    path = "/brands/{brand_id}/pixel-definitions/{definition_id}",
    operation_id = "replaceDefinition",
    tag = "definitions",
    params(DefinitionPath),
    request_body(content = Object, description = "The whole definition, without `id`.", example = json!({"name": "FTD image", "trigger": "ftd", "kind": "image", "url": "https://affiliate.example/px?click={{afp}}", "conditions": ["amount >= 20"]})),
    responses(
        (status = 200, description = "The new definition.", body = Object),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand or definition.", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "A bad field; the message names it.", body = ErrorBody),
    )
)]
pub(super) async fn replace(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<DefinitionPath>,
    JsonBody(body): JsonBody,
) -> Result<Json<Definition>, ApiError> {
    save_over(&state, &path, body).await
}

/// Validates `body` as a whole definition and saves it over the one at `path` (`PUT` and `PATCH`).
async fn save_over(
    state: &AppState,
    path: &DefinitionPath,
    body: Value,
) -> Result<Json<Definition>, ApiError> {
    let input = parse_definition(body, false)?;
    check_destination(state, &input.action)?;
    let definition = state
        .ledger
        .replace_definition(&path.brand_id, &path.definition_id, input)
        .await?;
    Ok(Json(definition))
}

/// Change some of a pixel definition
///
/// A JSON merge patch (RFC 7396) of the definition: what the body names changes, `null` removes a field
/// (`"deal_id": null` makes it global), everything else stays. Validated whole, as a `PUT` is; like a
/// `PUT`, it clears `disabled_reason` and starts `health` afresh.
#[utoipa::path(
    patch,
    path = "/brands/{brand_id}/pixel-definitions/{definition_id}",
    operation_id = "patchDefinition",
    tag = "definitions",
    params(DefinitionPath),
    request_body(content = Object, description = "The fields to change; `null` removes one.", content_type = "application/merge-patch+json", example = json!({"enabled": false})),
    responses(
        (status = 200, description = "The definition, changed.", body = Object),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand or definition.", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "Not a JSON object (`invalid_patch`), or the changed definition is not valid; the message names the field.", body = ErrorBody),
    )
)]
pub(super) async fn patch(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<DefinitionPath>,
    JsonBody(patch): JsonBody,
) -> Result<Json<Definition>, ApiError> {
    // Applied to the definition as it is when written: a concurrent change is patched, never
    // overwritten.
    let definition = state
        .ledger
        .patch_definition(&path.brand_id, &path.definition_id, |current| {
            let mut body = serde_json::to_value(current).expect("a definition serialises");
            if let Some(fields) = body.as_object_mut() {
                // What the hub keeps of its own, not the brand's to write.
                for field in ["id", "created_at_ms", "updated_at_ms", "disabled_reason"] {
                    fields.remove(field);
                }
            }
            super::admin::merge_patch(&mut body, &patch)?;
            let input = parse_definition(body, false)?;
            check_destination(&state, &input.action)?;
            Ok::<_, ApiError>(input)
        })
        .await?;
    Ok(Json(definition))
}

/// Delete a pixel definition
///
/// Pixels it already queued stay queued.
#[utoipa::path(
    delete,
    path = "/brands/{brand_id}/pixel-definitions/{definition_id}",
    operation_id = "deleteDefinition",
    tag = "definitions",
    params(DefinitionPath),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand or definition.", body = ErrorBody),
    )
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<DefinitionPath>,
) -> Result<StatusCode, ApiError> {
    if state
        .ledger
        .delete_definition(&path.brand_id, &path.definition_id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::UnknownDefinition(path.definition_id.to_string()))
    }
}

async fn find(state: &AppState, path: &DefinitionPath) -> Result<Definition, ApiError> {
    state
        .ledger
        .definition(&path.brand_id, &path.definition_id)
        .await?
        .ok_or_else(|| ApiError::UnknownDefinition(path.definition_id.to_string()))
}

/// One condition of a preview, and whether the sample event meets it.
#[derive(Serialize)]
struct ConditionCheck {
    condition: String,
    holds: bool,
}

/// Preview a definition
///
/// Renders a definition for a sample event without queuing anything. The body is an event without its
/// id (all optional): `type` defaults to the definition's trigger, `player_id` to `preview-player`; a
/// given player's attribution context is used as a real event would use it.
#[utoipa::path(
    post,
    path = "/brands/{brand_id}/pixel-definitions/{definition_id}/preview",
    operation_id = "previewDefinition",
    tag = "definitions",
    params(DefinitionPath),
    request_body(content = Object, description = "A sample event, all fields optional.", example = json!({"player_id": "p-42", "params": {"amount": 50, "currency": "EUR"}})),
    responses(
        (status = 200, description = "The rendered pixel or postback, the macros left empty, and each condition's verdict.", body = Object),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand or definition.", body = ErrorBody),
        (status = 422, description = "A bad sample event.", body = ErrorBody),
    )
)]
pub(super) async fn preview(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<DefinitionPath>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let definition = find(&state, &path).await?;
    let event = sample_event(&definition, body, "preview", Some("preview-player"))?;
    let (verdict, brand) = Verdict::of(&state, &path.brand_id, &definition, &event).await?;
    let conditions: Vec<ConditionCheck> = definition
        .conditions
        .iter()
        .map(|c| ConditionCheck {
            condition: c.to_string(),
            holds: c.holds(&verdict.values),
        })
        .collect();
    let (pixel, missing, error) =
        match definition.render_checked(&verdict.values, brand.settings.pixel_policy()) {
            Ok(rendered) => (output_json(rendered.output), rendered.missing, None),
            Err(error) => (Value::Null, Vec::new(), Some(error.message)),
        };
    let why_not = verdict.why_not(error.as_deref(), &missing);
    let would_fire = verdict.refusals.is_empty() && error.is_none();
    Ok(Json(json!({
        "definition_id": definition.id,
        "would_fire": would_fire,
        "why_not": why_not,
        "conditions": conditions,
        "pixel": pixel,
        "missing": missing,
        "error": error,
    })))
}

/// Fire a definition at a test player
///
/// Queues a definition's pixel, rendered for a sample event, to a test player: the brand logs in as that
/// player and watches it fire. Nothing is recorded as an event and no attribution changes.
#[utoipa::path(
    post,
    path = "/brands/{brand_id}/pixel-definitions/{definition_id}/test",
    operation_id = "testDefinition",
    tag = "definitions",
    params(DefinitionPath),
    request_body(content = Object, description = "A sample event; `player_id` is the test player.", example = json!({"player_id": "test-player", "params": {"amount": 50, "afp": "test-click"}})),
    responses(
        (status = 202, description = "Queued to the test player: `{\"pixel\", \"player_id\", \"missing\"}`.", body = Object),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand or definition.", body = ErrorBody),
        (status = 422, description = "A bad sample event, or an S2S definition (`not_a_client_pixel`).", body = ErrorBody),
        (status = 429, description = "The test player's queue is full (`queue_full`).", body = ErrorBody),
    )
)]
pub(super) async fn test(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<DefinitionPath>,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let definition = find(&state, &path).await?;
    if let Action::S2s { .. } = definition.action {
        return Err(ApiError::Invalid {
            code: "not_a_client_pixel",
            message: "test queues pixels for a browser; an s2s postback is sent by the hub itself. Use preview to see its URL".into(),
        });
    }
    let event = sample_event(&definition, body, "test", None)?;
    let (verdict, brand) = Verdict::of(&state, &path.brand_id, &definition, &event).await?;
    let rendered = definition
        .render_checked(&verdict.values, brand.settings.pixel_policy())
        .map_err(|message| ApiError::Invalid {
            code: "render_failed",
            message: format!("the sample values do not make a valid pixel: {message}"),
        })?;
    let Output::Client(body) = rendered.output else {
        unreachable!("s2s definitions were turned away above");
    };
    let id = PixelId::generate();
    let pixel = NewPixel {
        id: Some(id.clone()),
        trigger: Some(definition.trigger.clone()),
        ttl_seconds: definition.ttl_seconds,
        tcf_vendor_id: definition.tcf_vendor_id,
        body: body.with_defaults(&id),
        origin: Some(Origin {
            definition_id: Some(definition.id.clone()),
            definition_name: Some(definition.name.clone()),
            template: Some(definition.action.template_text()),
            missing: rendered.missing.clone(),
            ..Origin::default()
        }),
    };
    let queued = state
        .ledger
        .enqueue(
            &PlayerKey::new(path.brand_id.clone(), event.player_id.clone()),
            vec![pixel.clone()],
        )
        .await?;
    let mut answer = output_json(Output::Client(pixel.body));
    answer["id"] = json!(id);
    answer["status"] = json!(queued.pixels[0].status);
    let why_not = verdict.why_not(None, &rendered.missing);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "pixel": answer,
            "player_id": event.player_id,
            "missing": rendered.missing,
            "would_fire": verdict.refusals.is_empty(),
            "why_not": why_not,
        })),
    ))
}

/// Whether a definition would fire for a sample event, and every reason it would not: what preview and
/// test answer, so that a brand sees at once why an expected pixel never came.
struct Verdict {
    /// The values macros and conditions read.
    values: BTreeMap<String, Value>,
    /// Every rule the event fails, in the order the hub checks them.
    refusals: Vec<Refusal>,
}

impl Verdict {
    /// The verdict for `event` of a player of `brand_id`, with the player's attribution context as a real
    /// event would see it; and the brand, whose policy the caller renders with.
    async fn of(
        state: &AppState,
        brand_id: &BrandId,
        definition: &Definition,
        event: &Event,
    ) -> Result<(Verdict, Brand), ApiError> {
        let key = PlayerKey::new(brand_id.clone(), event.player_id.clone());
        let context = state.ledger.player_context(&key).await?;
        let brand = super::admin::require_brand(state, brand_id).await?;
        let settings = &brand.settings;
        let mut values = macro_values(brand_id, event, &context, &event.kind, state.clock.now_ms());
        let click = fill_click_id(&mut values, &settings.click_id_params);
        let deal = event.deal_id.as_ref().or(context.deal_id.as_ref());
        let affiliate = event
            .affiliate_id
            .as_ref()
            .or(context.affiliate_id.as_ref());
        let occasion = Occasion {
            trigger: &event.kind,
            deal_id: deal.map(String::as_str),
            affiliate_id: affiliate.map(String::as_str),
            click_id: click.as_deref(),
            values: &values,
        };
        let refusals = definition.refusals(&occasion, true);
        Ok((Verdict { values, refusals }, brand))
    }

    /// The refusals, then a render failure and the macros that would render empty (which do not stop
    /// the pixel, but are the usual reason an affiliate says a value is missing).
    fn why_not(&self, render_error: Option<&str>, missing: &[String]) -> Vec<Refusal> {
        let mut out = self.refusals.clone();
        if let Some(error) = render_error {
            out.push(Refusal {
                rule: "render".into(),
                message: format!("does not render a valid pixel: {error}"),
            });
        }
        out.extend(missing.iter().map(|name| Refusal {
            rule: "missing_macro".into(),
            message: format!("{{{name}}} has no value for this player and renders empty"),
        }));
        out
    }
}

/// The event a preview or test renders: the body's fields, with the definition's trigger as the type and,
/// when the body names no player, `default_player` (a test must name one).
fn sample_event(
    definition: &Definition,
    body: Value,
    path: &str,
    default_player: Option<&str>,
) -> Result<Event, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(InputError::new("invalid_event", path, "must be a JSON object").into());
    };
    obj.entry("event_id").or_insert_with(|| json!(path));
    obj.entry("type")
        .or_insert_with(|| json!(definition.trigger));
    if let Some(player) = default_player {
        obj.entry("player_id").or_insert_with(|| json!(player));
    }
    Ok(parse_event(Value::Object(obj), path)?)
}

fn output_json(output: Output) -> Value {
    match output {
        Output::Client(body) => serde_json::to_value(body).expect("pixels serialise"),
        Output::S2s { url, post: None } => json!({ "kind": "s2s", "method": "GET", "url": url }),
        Output::S2s {
            url,
            post: Some(post),
        } => json!({
            "kind": "s2s", "method": "POST", "url": url,
            "content_type": post.content_type, "body": post.body,
        }),
    }
}

/// Report events
///
/// One event or an array of up to 1000. Each is matched to the brand's definitions; the pixels and postbacks
/// they produce are durable (fsync'd) before the 202. An event's `event_id` makes the call idempotent.
#[utoipa::path(
    post,
    path = "/brands/{brand_id}/events",
    operation_id = "reportEvents",
    tag = "events",
    params(BrandPath),
    request_body(content = Object, description = "An event (`event_id`, `type`, `player_id`, and optional `affiliate_id`, `deal_id`, `occurred_at`, `params` such as `amount`, `currency`, `afp`) or an array of up to 1000. See docs/definitions.md.", example = json!({"event_id": "dep-1001", "type": "deposit", "player_id": "p-42", "affiliate_id": "a9", "params": {"amount": 50, "currency": "EUR", "afp": "xyz"}})),
    responses(
        (status = 202, description = "Durable: `{\"events\": [...]}`, per event what it raised and queued.", body = Object),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 413, description = "Body too large (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "A bad event; the message names its index and field.", body = ErrorBody),
        (status = 429, description = "A player's queue is at its cap (`queue_full`); nothing of the batch was recorded.", body = ErrorBody),
    )
)]
pub(super) async fn ingest(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let array = body.is_array();
    let events = parse_events(body, state.config.max_batch as usize)?;
    state.config.param_limits().check_all(&events, array)?;
    let outcomes = state.ledger.ingest(&path.brand_id, events).await?;
    // Typed, not `json!`, so each answer keeps its documented field order.
    #[derive(Serialize)]
    struct Answer {
        events: Vec<crate::event::EventOutcome>,
    }
    Ok((StatusCode::ACCEPTED, Json(Answer { events: outcomes })))
}

/// An event and what it produced
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/events/{event_id}",
    operation_id = "getEvent",
    tag = "events",
    params(EventPath),
    responses(
        (status = 200, description = "The event's outcome, with the live status of each pixel it produced.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand or event.", body = ErrorBody),
    )
)]
pub(super) async fn get_event(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<EventPath>,
) -> Result<impl IntoResponse, ApiError> {
    match state.ledger.event(&path.brand_id, &path.event_id).await? {
        Some(outcome) => Ok(Json(outcome)),
        None => Err(ApiError::UnknownEvent(path.event_id.to_string())),
    }
}

/// A player's attribution
///
/// The affiliate, deal and click parameters the player registered with, which fill later events' macros.
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/players/{player_id}/attribution",
    operation_id = "getPlayerAttribution",
    tag = "events",
    params(PlayerPath),
    responses(
        (status = 200, description = "`{\"player_id\", \"affiliate_id\", \"deal_id\", \"params\", \"ftd_event_id\"}`.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn attribution(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PlayerPath>,
) -> Result<Json<Value>, ApiError> {
    let key = path.key();
    let context = state.ledger.player_context(&key).await?;
    Ok(Json(json!({
        "player_id": key.player,
        "source": context.attribution_source(),
        "affiliate_id": context.affiliate_id,
        "deal_id": context.deal_id,
        "params": context.params,
        "from_browser": context.from_browser,
        "captured_at_ms": context.captured_at_ms,
        "ftd_event_id": context.ftd_event_id,
    })))
}

/// Parameter names the brand has seen
///
/// Every param name the brand's events carried and the client script captured from its landing pages,
/// with how often and when last: what the pixel editor offers as macros. Most seen first; at most 500
/// names a brand are counted.
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/params",
    operation_id = "listSeenParams",
    tag = "events",
    params(BrandPath),
    responses(
        (status = 200, description = "`{\"brand_id\", \"params\": [{\"name\", \"events\", \"browsers\", \"last_seen_ms\", \"click_id\", \"captured\"}]}`.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn params_seen(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
) -> Result<Json<Value>, ApiError> {
    let brand = state.ledger.require_brand(&path.brand_id).await?;
    let seen = state.ledger.params_seen(&path.brand_id).await?;
    let mut rows: Vec<_> = seen.params.into_iter().collect();
    rows.sort_by(|(a, x), (b, y)| {
        (y.events + y.browsers)
            .cmp(&(x.events + x.browsers))
            .then_with(|| a.cmp(b))
    });
    let settings = &brand.settings;
    let params: Vec<Value> = rows
        .into_iter()
        .map(|(name, seen)| {
            json!({
                "name": name,
                "events": seen.events,
                "browsers": seen.browsers,
                "last_seen_ms": seen.last_seen_ms,
                "click_id": settings.click_id_params.contains(&name),
                "captured": crate::attribution::captures(&settings.capture_params, &name),
            })
        })
        .collect();
    Ok(Json(json!({ "brand_id": path.brand_id, "params": params })))
}

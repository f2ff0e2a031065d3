//! `/api/v1`: brands, player queues and stats, for the affiliate system and for ops.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiPath, JsonBody};
use super::{ApiError, AppState, ErrorBody};
use crate::brand::{Brand, BrandSettings};
use crate::ids::{BrandId, PixelId, PlayerId, PlayerKey};
use crate::input::{Fields, InputError};
use crate::pixel::{PixelKind, parse_batch};
use crate::store::{CancelOutcome, EnqueueOutcome, PixelStatus};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct BrandPath {
    /// The brand.
    pub(super) brand_id: BrandId,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct PlayerPath {
    /// The brand.
    pub(super) brand_id: BrandId,
    /// The player, as the brand knows them.
    pub(super) player_id: PlayerId,
}

impl PlayerPath {
    pub(super) fn key(self) -> PlayerKey {
        PlayerKey::new(self.brand_id, self.player_id)
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct PixelPath {
    /// The brand.
    brand_id: BrandId,
    /// The player.
    player_id: PlayerId,
    /// The pixel: the id the enqueue answered, or the caller's own.
    pixel_id: PixelId,
}

/// The settings a `PUT` may carry; anything else is refused so a typo never silently does nothing. A
/// setting left out takes its default. The body is read by [`brand_settings`]; this type documents it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct BrandBody {
    /// Display name for people, 1 to 200 characters.
    #[serde(default)]
    #[schema(example = "Casino Example")]
    name: Option<String>,
    /// Page origins allowed to open sessions for this brand (`https://casino.example`); empty allows any.
    #[serde(default)]
    allowed_origins: Vec<String>,
    /// Refuse sessions without a valid player token signed with the brand's signing secret (default
    /// false: anyone who knows a player id can receive that player's pixels).
    #[serde(default)]
    require_player_token: bool,
    /// Pixel kinds the brand accepts (default `image`, `iframe`, `facebook`); `script` and `js` run
    /// their author's code in the brand's pages.
    #[serde(default)]
    #[schema(value_type = Option<Vec<PixelKind>>)]
    allowed_kinds: Option<Vec<String>>,
    /// Image, iframe and script URLs must be https (default false).
    #[serde(default)]
    https_only: bool,
    /// `sandbox` of iframe pixels: space-separated `allow-*` tokens, empty for the strictest (default
    /// `allow-scripts allow-same-origin`).
    #[serde(default)]
    iframe_sandbox: Option<String>,
    /// `referrerpolicy` of image, iframe and script pixels (default `strict-origin-when-cross-origin`).
    #[serde(default)]
    referrer_policy: Option<String>,
    /// Event params that carry an affiliate's click id, in the order they are looked for (default: the
    /// names the affiliate platforms use, `click_id`, `clickid`, `affclickid`, `trackid`, `afp`, `clid`,
    /// `dyn`, `cid`, `btag`). A player with one counts as brought by an affiliate, and inbound calls
    /// that name no player find theirs by it.
    #[serde(default)]
    click_id_params: Option<Vec<String>>,
    /// URL query params the client script captures on landing pages, names or `prefix*` patterns, at
    /// most 64 (default: the click-id params, affiliate, campaign and sub-id names, `utm_*`); `[]`
    /// captures nothing.
    #[serde(default)]
    capture_params: Option<Vec<String>>,
    /// Which click a browser keeps when a player lands more than once: `first` or `last` (default).
    #[serde(default)]
    #[schema(value_type = Option<crate::attribution::Touch>)]
    capture_touch: Option<String>,
    /// Days a captured click counts, 1 to 365 (default 30).
    #[serde(default)]
    capture_window_days: Option<u32>,
    /// Whose consent the client asks before it fires or acknowledges anything: `none` (default),
    /// `tcf` (the page's IAB TCF v2.2 CMP), `google` (Google consent mode v2) or `callback` (the
    /// page's `consent` function).
    #[serde(default)]
    #[schema(value_type = Option<crate::brand::ConsentMode>)]
    consent: Option<String>,
    /// TCF purposes (1 to 11) the player must have consented to under `tcf` (default `[1, 7]`).
    #[serde(default)]
    consent_tcf_purposes: Option<Vec<u8>>,
    /// Milliseconds the client waits for the page's consent answer, 100 to 30000 (default 3000); no
    /// answer is no consent.
    #[serde(default)]
    consent_timeout_ms: Option<u32>,
    /// Rules by which the hub raises `qftd` and `qualified_registration` itself (none by default):
    /// `{"qftd": {"min_deposits": 100, "within_days": 30}, "qualified_registration": {"on_event":
    /// "kyc_passed"}, "deals": {"cpa-7": {…}}}`. A deal's rules replace the brand's for its players.
    #[serde(default)]
    qualification: Option<crate::event::Qualification>,
}

/// The tokens of the HTML `sandbox` attribute.
const SANDBOX_TOKENS: [&str; 13] = [
    "allow-downloads",
    "allow-forms",
    "allow-modals",
    "allow-orientation-lock",
    "allow-pointer-lock",
    "allow-popups",
    "allow-popups-to-escape-sandbox",
    "allow-presentation",
    "allow-same-origin",
    "allow-scripts",
    "allow-storage-access-by-user-activation",
    "allow-top-navigation",
    "allow-top-navigation-by-user-activation",
];

/// The values of the HTML `referrerpolicy` attribute.
const REFERRER_POLICIES: [&str; 8] = [
    "no-referrer",
    "no-referrer-when-downgrade",
    "origin",
    "origin-when-cross-origin",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
];

fn brand_settings(body: Value) -> Result<BrandSettings, ApiError> {
    let invalid = |message: String| ApiError::Invalid {
        code: "invalid_brand",
        message,
    };
    let field_error = |e: InputError| invalid(e.to_string());
    let Value::Object(mut obj) = body else {
        return Err(invalid(
            "the body must be a JSON object of brand settings".into(),
        ));
    };
    let mut fields = Fields::new(&mut obj, "brand");
    let name = fields.optional_str("name").map_err(field_error)?;
    if let Some(name) = &name
        && (name.trim().is_empty()
            || name.chars().count() > 200
            || name.chars().any(char::is_control))
    {
        return Err(invalid(
            "name must be 1 to 200 characters without control characters".into(),
        ));
    }
    let defaults = BrandSettings::default();
    let mut origins = Vec::new();
    for origin in fields
        .optional_strings("allowed_origins")
        .map_err(field_error)?
        .unwrap_or_default()
    {
        origins.push(normalise_origin(&origin).ok_or_else(|| {
            invalid(format!(
                "allowed_origins: {origin:?} is not an origin like https://casino.example"
            ))
        })?);
    }
    origins.dedup();
    let allowed_kinds = match fields
        .optional_strings("allowed_kinds")
        .map_err(field_error)?
    {
        None => defaults.allowed_kinds,
        Some(kinds) => {
            let mut parsed = kinds
                .iter()
                .map(|k| {
                    PixelKind::parse(k).ok_or_else(|| {
                        invalid(format!(
                            "allowed_kinds: {k:?} is not a pixel kind; use image, iframe, script, js or facebook"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            parsed.sort();
            parsed.dedup();
            parsed
        }
    };
    let iframe_sandbox = match fields.optional_str("iframe_sandbox").map_err(field_error)? {
        None => defaults.iframe_sandbox,
        Some(sandbox) => {
            let tokens: Vec<&str> = sandbox.split_ascii_whitespace().collect();
            if let Some(bad) = tokens.iter().find(|t| !SANDBOX_TOKENS.contains(t)) {
                return Err(invalid(format!(
                    "iframe_sandbox: {bad:?} is not a sandbox token; use {}",
                    SANDBOX_TOKENS.join(", ")
                )));
            }
            tokens.join(" ")
        }
    };
    let referrer_policy = match fields
        .optional_str("referrer_policy")
        .map_err(field_error)?
    {
        None => defaults.referrer_policy,
        Some(policy) if REFERRER_POLICIES.contains(&policy.as_str()) => policy,
        Some(policy) => {
            return Err(invalid(format!(
                "referrer_policy: {policy:?} is not a referrer policy; use {}",
                REFERRER_POLICIES.join(", ")
            )));
        }
    };
    let click_id_params = param_names(
        &mut fields,
        "click_id_params",
        crate::attribution::is_param_name,
        "a param name (a letter, then letters, digits or _)",
        1..=32,
    )?
    .unwrap_or(defaults.click_id_params);
    let capture_params = param_names(
        &mut fields,
        "capture_params",
        crate::attribution::is_capture_pattern,
        "a param name (a letter, then letters, digits or _), or one followed by *",
        0..=crate::attribution::MAX_CAPTURE_PATTERNS,
    )?
    .unwrap_or(defaults.capture_params);
    let capture_touch = match fields.optional_str("capture_touch").map_err(field_error)? {
        None => defaults.capture_touch,
        Some(touch) => match touch.as_str() {
            "first" => crate::attribution::Touch::First,
            "last" => crate::attribution::Touch::Last,
            _ => {
                return Err(invalid(format!(
                    "capture_touch: {touch:?} is not a touch; use first or last"
                )));
            }
        },
    };
    let capture_window_days = fields
        .optional_u64("capture_window_days", 1..=365, "days")
        .map_err(field_error)?
        .map_or(defaults.capture_window_days, |days| days as u32);
    let consent = match fields.optional_str("consent").map_err(field_error)? {
        None => defaults.consent,
        Some(mode) => crate::brand::ConsentMode::ALL
            .iter()
            .find(|(name, _)| *name == mode)
            .map(|(_, mode)| *mode)
            .ok_or_else(|| {
                invalid(format!(
                    "consent: {mode:?} is not a consent mode; use none, tcf, google or callback"
                ))
            })?,
    };
    let consent_tcf_purposes = match fields.obj.remove("consent_tcf_purposes") {
        None | Some(Value::Null) => defaults.consent_tcf_purposes,
        Some(value) => {
            let mut purposes: Vec<u8> = serde_json::from_value::<Vec<u8>>(value)
                .ok()
                .filter(|p| !p.is_empty() && p.iter().all(|n| (1..=11).contains(n)))
                .ok_or_else(|| {
                    invalid(
                        "consent_tcf_purposes: a non-empty list of TCF purposes, each 1 to 11"
                            .into(),
                    )
                })?;
            purposes.sort_unstable();
            purposes.dedup();
            purposes
        }
    };
    let consent_timeout_ms = fields
        .optional_u64("consent_timeout_ms", 100..=30_000, "milliseconds")
        .map_err(field_error)?
        .map_or(defaults.consent_timeout_ms, |ms| ms as u32);
    let qualification = match fields.obj.remove("qualification") {
        None | Some(Value::Null) => Default::default(),
        Some(value) => {
            let rules: crate::event::Qualification = serde_json::from_value(value)
                .map_err(|e| invalid(format!("qualification: {e}")))?;
            rules.check().map_err(invalid)?;
            rules
        }
    };
    let settings = BrandSettings {
        name,
        qualification,
        allowed_origins: origins,
        require_player_token: fields
            .optional_bool("require_player_token")
            .map_err(field_error)?
            .unwrap_or(false),
        allowed_kinds,
        https_only: fields
            .optional_bool("https_only")
            .map_err(field_error)?
            .unwrap_or(false),
        iframe_sandbox,
        referrer_policy,
        click_id_params,
        capture_params,
        capture_touch,
        capture_window_days,
        consent,
        consent_tcf_purposes,
        consent_timeout_ms,
    };
    fields.finish("a brand's settings").map_err(field_error)?;
    Ok(settings)
}

/// A brand setting that lists param names (or patterns): each trimmed, lower-cased and `valid`, repeats
/// dropped, `count` of them; `None` when the body does not name the field.
fn param_names(
    fields: &mut Fields,
    field: &str,
    valid: fn(&str) -> bool,
    what: &str,
    count: std::ops::RangeInclusive<usize>,
) -> Result<Option<Vec<String>>, ApiError> {
    let invalid = |message: String| ApiError::Invalid {
        code: "invalid_brand",
        message,
    };
    let Some(names) = fields
        .optional_strings(field)
        .map_err(|e| invalid(e.to_string()))?
    else {
        return Ok(None);
    };
    let mut kept: Vec<String> = Vec::new();
    for name in names {
        let name = name.trim().to_ascii_lowercase();
        if !valid(&name) {
            return Err(invalid(format!("{field}: {name:?} is not {what}")));
        }
        if !kept.contains(&name) {
            kept.push(name);
        }
    }
    if !count.contains(&kept.len()) {
        return Err(invalid(format!(
            "{field}: name {} to {} params",
            count.start(),
            count.end()
        )));
    }
    Ok(Some(kept))
}

/// `https://Casino.example:443/` → `https://casino.example`, the form browsers send in `Origin`.
fn normalise_origin(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    let bare = matches!(url.path(), "" | "/") && url.query().is_none() && url.fragment().is_none();
    let ok = matches!(url.scheme(), "http" | "https")
        && url.has_host()
        && bare
        && url.username().is_empty();
    ok.then(|| url.origin().ascii_serialization())
}

/// Create or replace a brand
///
/// Creates the brand (201) or replaces its settings (200). An empty body means the defaults.
#[utoipa::path(
    put,
    path = "/brands/{brand_id}",
    operation_id = "putBrand",
    tag = "brands",
    params(BrandPath),
    request_body(content = BrandBody, example = json!({"name": "Casino Example", "allowed_origins": ["https://casino.example"], "require_player_token": true, "allowed_kinds": ["image", "iframe", "facebook"], "https_only": true})),
    responses(
        (status = 201, description = "Created.", body = Brand),
        (status = 200, description = "Replaced.", body = Brand),
        (status = 400, description = "Not JSON (`invalid_json`) or a bad id (`invalid_id`).", body = ErrorBody),
        (status = 422, description = "A bad setting (`invalid_brand`).", body = ErrorBody),
    )
)]
pub(super) async fn put_brand(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let settings = brand_settings(body)?;
    let (brand, created) = state.ledger.put_brand(&path.brand_id, settings).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(brand)))
}

/// Change some of a brand's settings
///
/// A JSON merge patch (RFC 7396) of the settings: what the body names changes, `null` restores a
/// setting's default, everything else stays as it is. So a rename never turns js pixels or token
/// enforcement off, as a `PUT` of only the name would.
#[utoipa::path(
    patch,
    path = "/brands/{brand_id}",
    operation_id = "patchBrand",
    tag = "brands",
    params(BrandPath),
    request_body(content = Object, description = "The settings to change, as in `PUT`; `null` restores a default.", content_type = "application/merge-patch+json", example = json!({"name": "Casino Example (EU)"})),
    responses(
        (status = 200, description = "The brand, changed.", body = Brand),
        (status = 400, description = "Not JSON (`invalid_json`) or a bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`); create it with `PUT`.", body = ErrorBody),
        (status = 422, description = "Not a JSON object (`invalid_patch`), or a bad setting (`invalid_brand`).", body = ErrorBody),
    )
)]
pub(super) async fn patch_brand(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    JsonBody(patch): JsonBody,
) -> Result<Json<Brand>, ApiError> {
    // Applied to the brand as it is when written: a concurrent change is patched, never overwritten.
    let brand = state
        .ledger
        .patch_brand(&path.brand_id, |brand| {
            let mut settings = serde_json::to_value(&brand.settings).expect("settings serialise");
            merge_patch(&mut settings, &patch)?;
            brand_settings(settings)
        })
        .await?;
    Ok(Json(brand))
}

/// Applies a JSON merge patch (RFC 7396) to a stored resource's JSON form; the patch must be an object,
/// since a patch that is not replaces the whole resource.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    if !patch.is_object() {
        return Err(ApiError::Invalid {
            code: "invalid_patch",
            message: "a PATCH body is a JSON object of the fields to change (JSON merge patch, RFC 7396); null removes a field".into(),
        });
    }
    json_patch::merge(target, patch);
    Ok(())
}

/// A brand
#[utoipa::path(
    get,
    path = "/brands/{brand_id}",
    operation_id = "getBrand",
    tag = "brands",
    params(BrandPath),
    responses(
        (status = 200, description = "The brand.", body = Brand),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn get_brand(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
) -> Result<Json<Brand>, ApiError> {
    require_brand(&state, &path.brand_id).await.map(Json)
}

pub(super) async fn require_brand(state: &AppState, brand: &BrandId) -> Result<Brand, ApiError> {
    state
        .ledger
        .brand(brand)
        .await?
        .ok_or_else(|| ApiError::UnknownBrand(brand.to_string()))
}

/// Queue pixels for a player
///
/// One pixel object, or an array of up to 1000, made durable (fsync'd) before the 202. A pixel's own `id`
/// makes the call idempotent: a repeated id queues nothing and answers that pixel's status.
#[utoipa::path(
    post,
    path = "/brands/{brand_id}/players/{player_id}/pixels",
    operation_id = "enqueuePixels",
    tag = "queues",
    params(PlayerPath),
    request_body(
        content = Object,
        description = "A pixel (`kind`: `image`, `iframe` or `script` with `url`; `js` with `code`; `facebook` with `pixel_id`, `event` and optional `params`), plus optional `id`, `trigger`, `ttl_seconds` and `tcf_vendor_id` (the IAB TCF vendor it reports to, for brands whose `consent` is `tcf`); or an array of them. See the README.",
        example = json!({"id": "ftd-p-42", "kind": "image", "url": "https://affiliate.example/px?click=abc", "trigger": "ftd", "ttl_seconds": 604800})
    ),
    responses(
        (status = 202, description = "Durable; one entry per pixel, and what the queue cap dropped.", body = EnqueueOutcome),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 413, description = "Body over `--max-body-bytes` (`payload_too_large`).", body = ErrorBody),
        (status = 422, description = "A bad pixel; the message names the field. A kind the brand does not allow (`kind_not_allowed`), or an http URL for an `https_only` brand (`https_required`).", body = ErrorBody),
        (status = 429, description = "The player's queue is at its cap and the policy is `reject` (`queue_full`); nothing was queued.", body = ErrorBody),
    )
)]
pub(super) async fn enqueue(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PlayerPath>,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let pixels = parse_batch(body, state.config.max_batch as usize)?;
    let queued = state.ledger.enqueue(&path.key(), pixels).await?;
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

/// A player's pending pixels
///
/// Oldest first, each with `in_flight` (sent to a browser, awaiting its acknowledgement).
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/players/{player_id}/pixels",
    operation_id = "listPlayerPixels",
    tag = "queues",
    params(PlayerPath),
    responses(
        (status = 200, description = "`{\"pixels\": [...]}`.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn list_pixels(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PlayerPath>,
) -> Result<Json<Value>, ApiError> {
    require_brand(&state, &path.brand_id).await?;
    let pending = state.ledger.pending(&path.key()).await?;
    Ok(Json(json!({ "pixels": pending })))
}

/// Cancel one pixel
///
/// A pixel not yet sent to a browser is removed and recorded `cancelled`; one in flight cannot be recalled.
#[utoipa::path(
    delete,
    path = "/brands/{brand_id}/players/{player_id}/pixels/{pixel_id}",
    operation_id = "cancelPixel",
    tag = "queues",
    params(PixelPath),
    responses(
        (status = 200, description = "Cancelled (again): `{\"id\", \"status\": \"cancelled\"}`.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand or pixel (`brand_not_found`, `pixel_not_found`).", body = ErrorBody),
        (status = 409, description = "Too late: `pixel_in_flight`, `pixel_already_fired`, `pixel_expired`, `postback_failed`.", body = ErrorBody),
    )
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PixelPath>,
) -> Result<Json<Value>, ApiError> {
    require_brand(&state, &path.brand_id).await?;
    let key = PlayerKey::new(path.brand_id, path.player_id);
    let id = path.pixel_id;
    let conflict = |code, message: &str| ApiError::Conflict {
        code,
        message: format!("pixel {id} {message}"),
    };
    match state.ledger.cancel(&key, &id).await? {
        CancelOutcome::Cancelled | CancelOutcome::AlreadyFinal(PixelStatus::Cancelled) => {
            Ok(Json(json!({ "id": id, "status": PixelStatus::Cancelled })))
        }
        CancelOutcome::NotFound => Err(ApiError::UnknownPixel(id.to_string())),
        CancelOutcome::InFlight => Err(conflict(
            "pixel_in_flight",
            "was already sent (to the player's browser, or for a postback an attempt is running) and may be firing; it can no longer be cancelled",
        )),
        CancelOutcome::AlreadyFinal(PixelStatus::Failed) => Err(conflict(
            "postback_failed",
            "is a postback that already failed for good",
        )),
        CancelOutcome::AlreadyFinal(PixelStatus::Expired) => {
            Err(conflict("pixel_expired", "expired before it fired"))
        }
        CancelOutcome::AlreadyFinal(_) => Err(conflict("pixel_already_fired", "has already fired")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_the_way_browsers_send_them() {
        assert_eq!(
            normalise_origin("https://Casino.example:443/").as_deref(),
            Some("https://casino.example")
        );
        assert_eq!(
            normalise_origin("http://localhost:8080").as_deref(),
            Some("http://localhost:8080")
        );
        assert_eq!(normalise_origin("https://casino.example/path"), None);
        assert_eq!(normalise_origin("casino.example"), None);
        assert_eq!(normalise_origin("file:///etc"), None);
    }
}

//! Credentials of a brand: its API keys (which act for that brand only) and the signing secret its back
//! end signs player tokens with.
//!
//! Keys are made and revoked with the admin token only; a brand key cannot mint more keys, so a leaked
//! key is contained by revoking it. The signing secret is the brand's own: its keys may read and rotate it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::admin::BrandPath;
use super::extract::{ApiPath, JsonBody};
use super::inbound::rotation_grace;
use super::{ApiError, AppState, ErrorBody};
use crate::api_key;
use crate::api_key::ApiKeyRecord;
use crate::brand::{BrandSecret, SecretKind};
use crate::ids::BrandId;
use crate::input::Fields;

/// Grace of the previous signing secret when a rotation does not say: a day, longer than the player
/// tokens a brand should issue, so pages open during the rotation keep reconnecting.
const SIGNING_GRACE_SECONDS: u64 = 24 * 3600;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ApiKeyPath {
    /// The brand.
    brand_id: BrandId,
    /// The key's id, as listed (the part between `phk_` and the second `_`).
    key_id: String,
}

/// A brand API key as listed: never the key itself.
#[derive(Serialize, ToSchema)]
pub(super) struct ApiKeyInfo {
    /// Public id; revoke the key with it.
    id: String,
    /// The brand it acts for.
    #[schema(value_type = String)]
    brand_id: BrandId,
    /// What it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Unix milliseconds of creation.
    created_at_ms: u64,
    /// How the key starts, to tell keys apart: `phk_<id>_…`.
    shown: String,
}

impl From<&ApiKeyRecord> for ApiKeyInfo {
    fn from(record: &ApiKeyRecord) -> Self {
        Self {
            id: record.id.clone(),
            brand_id: record.brand_id.clone(),
            name: record.name.clone(),
            created_at_ms: record.created_at_ms,
            shown: api_key::shown(record),
        }
    }
}

/// A key just created: the only time the key itself is shown.
#[derive(Serialize, ToSchema)]
pub(super) struct CreatedApiKey {
    /// The key as listed from now on.
    #[serde(flatten)]
    info: ApiKeyInfo,
    /// The key: send it as `Authorization: Bearer <key>`. Shown once; the hub keeps only its hash.
    key: String,
}

/// The brand's keys.
#[derive(Serialize, ToSchema)]
pub(super) struct ApiKeyList {
    /// Oldest first.
    keys: Vec<ApiKeyInfo>,
}

/// Create a brand API key
///
/// A key that can use this brand's routes and no other brand's; it cannot manage keys or change the
/// brand's settings. The key is in this answer only: store it now.
#[utoipa::path(
    post,
    path = "/brands/{brand_id}/api-keys",
    operation_id = "createApiKey",
    tag = "brands",
    params(BrandPath),
    request_body(content = Object, description = "`{\"name\": \"…\"}` (optional, up to 200 characters): what the key is for.", example = json!({"name": "casino back end"})),
    responses(
        (status = 201, description = "The key, shown once.", body = CreatedApiKey),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 422, description = "A bad `name` (`invalid_field`), or another field (`unknown_field`).", body = ErrorBody),
    )
)]
pub(super) async fn create_key(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::Invalid {
            code: "invalid_body",
            message: "the body must be a JSON object such as {\"name\": \"casino back end\"}"
                .into(),
        });
    };
    let mut fields = Fields::new(&mut obj, "body");
    let name = fields.optional_str("name")?;
    if let Some(name) = &name {
        fields.check_label("name", name, 200)?;
    }
    fields.finish("an API key")?;
    let made = api_key::generate(&path.brand_id, name, state.clock.now_ms())
        .map_err(|e| ApiError::Internal(format!("no randomness for an API key: {e}")))?;
    state.ledger.create_api_key(made.record.clone()).await?;
    tracing::info!(brand = %path.brand_id, key_id = %made.record.id, "API key created");
    let created = CreatedApiKey {
        info: ApiKeyInfo::from(&made.record),
        key: made.key,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// A brand's API keys
///
/// Ids, names and creation times; never the keys.
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/api-keys",
    operation_id = "listApiKeys",
    tag = "brands",
    params(BrandPath),
    responses(
        (status = 200, description = "The keys, oldest first.", body = ApiKeyList),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn list_keys(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
) -> Result<Json<ApiKeyList>, ApiError> {
    let keys = state.ledger.api_keys(&path.brand_id).await?;
    Ok(Json(ApiKeyList {
        keys: keys.iter().map(ApiKeyInfo::from).collect(),
    }))
}

/// Revoke a brand API key
///
/// The key stops working at once, in every hub process.
#[utoipa::path(
    delete,
    path = "/brands/{brand_id}/api-keys/{key_id}",
    operation_id = "revokeApiKey",
    tag = "brands",
    params(ApiKeyPath),
    responses(
        (status = 204, description = "Revoked."),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`) or key of this brand (`api_key_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn revoke_key(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ApiKeyPath>,
) -> Result<StatusCode, ApiError> {
    if state
        .ledger
        .revoke_api_key(&path.brand_id, &path.key_id)
        .await?
    {
        tracing::info!(brand = %path.brand_id, key_id = %path.key_id, "API key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound {
            code: "api_key_not_found",
            message: format!("brand {} has no API key {}", path.brand_id, path.key_id),
        })
    }
}

/// The player-token signing secret
///
/// The secret the brand's back end signs player tokens with (`docs/security.md`), and until when the
/// previous one is still accepted after a rotation.
#[utoipa::path(
    get,
    path = "/brands/{brand_id}/signing-secret",
    operation_id = "getSigningSecret",
    tag = "brands",
    params(BrandPath),
    responses(
        (status = 200, description = "`{\"brand_id\", \"secret\", \"previous_valid_until_ms\", \"rotated_at_ms\", \"token_format\"}`.", body = Object),
        (status = 400, description = "A bad id (`invalid_id`).", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
    )
)]
pub(super) async fn signing_secret(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
) -> Result<Json<Value>, ApiError> {
    let secret = state
        .ledger
        .secret(&path.brand_id, SecretKind::Signing)
        .await?;
    Ok(Json(describe_signing(&path.brand_id, &secret)))
}

/// Rotate the signing secret
///
/// A new secret; tokens signed with the old one keep working for `grace_seconds` (default a day, at most
/// 30 days), so the back end can move over and pages already open can still reconnect.
#[utoipa::path(
    post,
    path = "/brands/{brand_id}/signing-secret/rotate",
    operation_id = "rotateSigningSecret",
    tag = "brands",
    params(BrandPath),
    request_body(content = Object, description = "`{\"grace_seconds\": N}`; empty means a day.", example = json!({"grace_seconds": 3600})),
    responses(
        (status = 200, description = "The new secret, as `GET …/signing-secret`.", body = Object),
        (status = 400, description = "Not JSON, or a bad id.", body = ErrorBody),
        (status = 404, description = "No such brand (`brand_not_found`).", body = ErrorBody),
        (status = 422, description = "A bad `grace_seconds` (`invalid_body`, or the field's code).", body = ErrorBody),
    )
)]
pub(super) async fn rotate_signing_secret(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let grace = rotation_grace(body, SIGNING_GRACE_SECONDS)?;
    let secret = state
        .ledger
        .rotate_secret(&path.brand_id, SecretKind::Signing, grace * 1000)
        .await?;
    tracing::info!(brand = %path.brand_id, grace_seconds = grace, "signing secret rotated");
    Ok(Json(describe_signing(&path.brand_id, &secret)))
}

fn describe_signing(brand: &BrandId, secret: &BrandSecret) -> Value {
    json!({
        "brand_id": brand,
        "secret": secret.current,
        "previous_valid_until_ms": secret.previous_valid_until_ms,
        "rotated_at_ms": secret.rotated_at_ms,
        "token_format": "v1.<expires>.<hex HMAC-SHA256(secret, \"v1\\n<brand_id>\\n<player_id>\\n<expires>\")>; expires in Unix seconds (docs/security.md)",
    })
}

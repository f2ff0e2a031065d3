//! `/api/v1`: brands, player queues and stats, for the affiliate system and for ops.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{ApiPath, JsonBody};
use super::{ApiError, AppState};
use crate::ids::{BrandId, PixelId, PlayerId, PlayerKey};
use crate::pixel::parse_batch;
use crate::store::{Brand, BrandSettings, CancelOutcome, PixelStatus};

#[derive(Deserialize)]
pub(super) struct BrandPath {
    pub(super) brand_id: BrandId,
}

#[derive(Deserialize)]
pub(super) struct PlayerPath {
    pub(super) brand_id: BrandId,
    pub(super) player_id: PlayerId,
}

impl PlayerPath {
    pub(super) fn key(self) -> PlayerKey {
        PlayerKey::new(self.brand_id, self.player_id)
    }
}

#[derive(Deserialize)]
pub(super) struct PixelPath {
    brand_id: BrandId,
    player_id: PlayerId,
    pixel_id: PixelId,
}

/// The settings a `PUT` may carry; anything else is refused so a typo never silently does nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BrandBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
}

fn brand_settings(body: Value) -> Result<BrandSettings, ApiError> {
    let invalid = |message: String| ApiError::Invalid {
        code: "invalid_brand",
        message,
    };
    let body: BrandBody = serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
    if let Some(name) = &body.name {
        if name.trim().is_empty()
            || name.chars().count() > 200
            || name.chars().any(char::is_control)
        {
            return Err(invalid(
                "name must be 1 to 200 characters without control characters".into(),
            ));
        }
    }
    let mut origins = Vec::with_capacity(body.allowed_origins.len());
    for origin in &body.allowed_origins {
        origins.push(normalise_origin(origin).ok_or_else(|| {
            invalid(format!(
                "allowed_origins: {origin:?} is not an origin like https://casino.example"
            ))
        })?);
    }
    origins.dedup();
    Ok(BrandSettings {
        name: body.name,
        allowed_origins: origins,
    })
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

pub(super) async fn put_brand(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let settings = brand_settings(body)?;
    let (brand, created) = state.store.put_brand(&path.brand_id, settings).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(brand)))
}

pub(super) async fn get_brand(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<BrandPath>,
) -> Result<Json<Brand>, ApiError> {
    require_brand(&state, &path.brand_id).await.map(Json)
}

pub(super) async fn require_brand(state: &AppState, brand: &BrandId) -> Result<Brand, ApiError> {
    state
        .store
        .get_brand(brand)
        .await?
        .ok_or_else(|| ApiError::UnknownBrand(brand.to_string()))
}

pub(super) async fn enqueue(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PlayerPath>,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let pixels = parse_batch(body)?;
    let queued = state.store.enqueue(&path.key(), pixels).await?;
    Ok((StatusCode::ACCEPTED, Json(queued)))
}

pub(super) async fn list_pixels(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<PlayerPath>,
) -> Result<Json<Value>, ApiError> {
    require_brand(&state, &path.brand_id).await?;
    let pending = state.store.pending(&path.key()).await?;
    Ok(Json(json!({ "pixels": pending })))
}

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
    match state.store.cancel(&key, &id).await? {
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

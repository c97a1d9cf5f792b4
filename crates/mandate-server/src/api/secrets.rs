//! Upstream credentials (admin): stored sealed, listed by name, never returned.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mandate_gateway::SecretValue;
use serde::Deserialize;
use utoipa::ToSchema;
use zeroize::Zeroize as _;

use super::{AppState, require_admin, text};
use crate::edge::{ApiJson, Bearer};
use crate::error::{ApiError, ErrorBody};
use mandate_engine::secrets::{RotationReport, SecretInfo};

/// A secret to store.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSecretRequest {
    /// The value (a token, an API key, or `user:password` for basic auth). Sealed at once,
    /// never returned, never logged.
    #[schema(min_length = 8, max_length = 16384)]
    #[serde(deserialize_with = "secret_string")]
    pub value: String,
    /// What it is for.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub description: Option<String>,
}

/// A string, refused without echoing what was sent (serde's own messages quote the value).
fn secret_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<String, E> {
            Err(E::custom("value must be a string"))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<String, E> {
            Err(E::custom("value must be a string"))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<String, E> {
            Err(E::custom("value must be a string"))
        }
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<String, E> {
            Err(E::custom("value must be a string"))
        }
    }
    d.deserialize_any(V)
}

impl std::fmt::Debug for PutSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutSecretRequest")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// Store or replace an upstream secret (admin). The answer describes it; the value is
/// never returned by any endpoint.
#[utoipa::path(put, path = "/v1/secrets/{name}", tag = "secrets", request_body = PutSecretRequest,
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "secret name, 1-64 of [a-z0-9._-]", max_length = 64, pattern = "^[a-z0-9._-]{1,64}$")),
    responses((status = 200, body = SecretInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_secret(
    State(engine): AppState,
    bearer: Bearer,
    Path(name): Path<String>,
    ApiJson(mut req): ApiJson<PutSecretRequest>,
) -> Result<Json<SecretInfo>, ApiError> {
    require_admin(&engine, &bearer)?;
    let description = match &req.description {
        Some(d) if !d.is_empty() => text("description", d, 256, false)?.to_owned(),
        _ => String::new(),
    };
    let value = SecretValue::new(std::mem::take(&mut req.value).into_bytes());
    req.value.zeroize();
    engine
        .secrets
        .put(&name, value, &description, "admin")
        .await
        .map(Json)
        .map_err(ApiError::from)
}

/// The stored secrets, by name (admin): descriptions and key ids, never values.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", security(("admin_token" = [])),
    responses((status = 200, body = Vec<SecretInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_secrets(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<Vec<SecretInfo>>, ApiError> {
    require_admin(&engine, &bearer)?;
    engine
        .secrets
        .list()
        .await
        .map(Json)
        .map_err(ApiError::from)
}

/// Delete a secret (admin). Upstreams that use it fail closed (`credential_unavailable`).
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", security(("admin_token" = [])),
    params(("name" = String, Path, description = "secret name", max_length = 64, pattern = "^[a-z0-9._-]{1,64}$")),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_secret(
    State(engine): AppState,
    bearer: Bearer,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&engine, &bearer)?;
    if engine.secrets.delete(&name, "admin").await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no secret named {name:?}")))
    }
}

/// Rotate the master key (admin): re-read the key ring and re-seal every secret under its
/// first key, in one transaction, while calls keep being served.
#[utoipa::path(post, path = "/v1/secrets/rotate", tag = "secrets", security(("admin_token" = [])),
    responses((status = 200, body = RotationReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "`master_key_missing`: a secret is sealed under a key the ring no longer holds", body = ErrorBody),
        (status = 422, description = "`master_key_invalid`: the key ring cannot be read", body = ErrorBody)))]
pub async fn rotate_secrets(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<RotationReport>, ApiError> {
    require_admin(&engine, &bearer)?;
    engine
        .secrets
        .rotate("admin")
        .await
        .map(Json)
        .map_err(ApiError::from)
}

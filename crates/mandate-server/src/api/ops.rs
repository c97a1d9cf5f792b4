//! The decide endpoint, audit, policy and key operations, and the well-known documents.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use mandate_audit::{ChainBreak, Event};
use mandate_policy::Bundle;
use mandate_token::Jwks;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppState, require_admin};
use crate::edge::DecideRequest;
use crate::edge::{ApiJson, Bearer};
use crate::error::{ApiError, ErrorBody};
use mandate_engine::engine::PolicyChange;
use mandate_engine::verify::{VerifyReport, verify_chain};

/// A per-call decision: the engine's answer, as it goes on the wire.
pub use mandate_engine::Decided as DecideResponse;

/// Decide one tool call for the task whose token is presented. The answer is sent only
/// after its audit event is durable; if it cannot be written, nothing is allowed (503).
#[utoipa::path(post, path = "/v1/decide", tag = "decisions", request_body = DecideRequest,
    security(("task_token" = [])),
    responses(
        (status = 200, description = "a decision (allow, deny or approval_required)", body = DecideResponse),
        (status = 400, body = ErrorBody),
        (status = 401, description = "missing or invalid task token (`token_*` codes)", body = ErrorBody),
        (status = 403, description = "task not active, expired, or token not bound to it; `approval_mismatch` when the approval is for another action", body = ErrorBody),
        (status = 404, description = "`approval_not_found`", body = ErrorBody),
        (status = 409, description = "the approval is used, expired, invalidated or stale", body = ErrorBody),
        (status = 429, description = "`approval_queue_full`: too many pending approval requests", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, description = "audit or store unavailable: denied", body = ErrorBody)))]
pub async fn decide(
    State(engine): AppState,
    bearer: Bearer,
    headers: axum::http::HeaderMap,
    ApiJson(req): ApiJson<DecideRequest>,
) -> Result<Json<DecideResponse>, ApiError> {
    let (call, options) = req.into_call(crate::edge::traceparent(&headers));
    Ok(Json(engine.decide(&bearer.0, call, options).await?))
}

/// The result of walking the audit chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyResponse {
    /// True when every record and the head check out.
    pub ok: bool,
    /// Records checked.
    pub records: i64,
    /// The first bad record, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<ChainBreakBody>,
}

/// Where and how a chain is broken.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChainBreakBody {
    /// Sequence number of the first bad (or missing) record.
    pub seq: i64,
    /// What is wrong.
    pub problem: String,
}

impl From<VerifyReport> for VerifyResponse {
    fn from(r: VerifyReport) -> Self {
        Self {
            ok: r.first_bad.is_none(),
            records: r.records,
            first_bad: r
                .first_bad
                .map(|ChainBreak { seq, problem }| ChainBreakBody { seq, problem }),
        }
    }
}

/// Verify the audit chain (admin).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("admin_token" = [])),
    responses((status = 200, body = VerifyResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn verify_audit(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<VerifyResponse>, ApiError> {
    require_admin(&engine, &bearer)?;
    let report = verify_chain(engine.store.as_ref())
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(report.into()))
}

/// A task's audit events in order (admin).
#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "audit", security(("admin_token" = [])),
    params(("id" = String, Path, description = "task id", max_length = 64)),
    responses((status = 200, body = Vec<Event>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn task_events(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
) -> Result<Json<Vec<Event>>, ApiError> {
    require_admin(&engine, &bearer)?;
    if id.len() > 64 {
        return Err(ApiError::invalid("task id is too long"));
    }
    Ok(Json(
        engine
            .store
            .task_events(&id)
            .await
            .map_err(|e| ApiError::store(&e))?,
    ))
}

/// The enforcing bundle.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyInfo {
    /// Content hash.
    pub bundle_version: String,
    /// Number of policies.
    pub policies: usize,
    /// Files, relative to the policy directory.
    pub files: Vec<String>,
}

fn info(b: &Bundle) -> PolicyInfo {
    PolicyInfo {
        bundle_version: b.version().to_owned(),
        policies: b.len(),
        files: b.sources().keys().cloned().collect(),
    }
}

/// The enforcing policy bundle (admin).
#[utoipa::path(get, path = "/v1/policies", tag = "policies", security(("admin_token" = [])),
    responses((status = 200, body = PolicyInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn policies(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<PolicyInfo>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(info(&engine.bundle())))
}

/// Reload the policy directory (admin). A bundle with any problem is rejected whole with
/// each problem's file:line:column, and the previous bundle keeps enforcing. A valid change
/// re-evaluates every live task: tasks no longer permitted are revoked, narrowed grants
/// are narrowed, each audited with both bundle versions.
#[utoipa::path(post, path = "/v1/policies/reload", tag = "policies", security(("admin_token" = [])),
    responses((status = 200, description = "the bundle now enforcing, and the live tasks it revoked or narrowed", body = PolicyChange), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, description = "`policy_invalid`: details.diagnostics lists every problem", body = ErrorBody)))]
pub async fn reload_policies(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<PolicyChange>, ApiError> {
    require_admin(&engine, &bearer)?;
    match engine.reload_policies("api").await {
        Ok(change) => Ok(Json(change)),
        Err(e) => {
            let old = engine.bundle().version().to_owned();
            let first = e
                .diagnostics
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "policy_invalid",
                format!("bundle rejected; {old} keeps enforcing. First problem: {first}"),
            )
            .with_details(
                serde_json::json!({ "diagnostics": e.diagnostics, "enforcing_version": old }),
            ))
        }
    }
}

/// Rotate the signing key (admin). The old key stays published until every token it
/// signed has expired.
#[utoipa::path(post, path = "/v1/keys/rotate", tag = "identity", security(("admin_token" = [])),
    responses((status = 200, description = "the new key id"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn rotate_keys(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&engine, &bearer)?;
    let kid = engine.rotate_keys("requested by admin").await?;
    Ok(Json(serde_json::json!({ "kid": kid })))
}

/// The published verification keys (RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "identity", responses((status = 200, body = Jwks)))]
pub async fn jwks(State(engine): AppState) -> impl IntoResponse {
    let body = engine.keys().jwks(engine.clock.now_ms());
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        )],
        Json(body),
    )
}

/// OpenID Connect discovery, so standard JWT libraries find the keys.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "identity", responses((status = 200, description = "OIDC discovery document")))]
pub async fn openid_configuration(State(engine): AppState) -> impl IntoResponse {
    Json(serde_json::json!({
        "issuer": engine.issuer,
        "jwks_uri": format!("{}/.well-known/jwks.json", engine.issuer),
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }))
}

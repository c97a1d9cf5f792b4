//! Tasks: start (with policy-decided grants), inspect, complete, revoke.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mandate_core::TaskState;
use mandate_store::TaskRecord;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{AppState, require_admin};
use crate::edge::{ApiJson, Bearer};
use crate::error::{ApiError, ErrorBody};

/// Ask to start a task (the engine's `TaskStart`, as it comes off the wire).
pub use mandate_engine::TaskStart as StartTaskRequest;

/// The answer to a task start (the engine's `Started`).
pub use mandate_engine::Started as StartTaskResponse;

/// A task after a transition.
pub use mandate_engine::Transitioned as TaskStateResponse;

/// A running task's new plan (the engine's `Redeclare`).
pub use mandate_engine::plans::Redeclare as RedeclareRequest;

/// What a re-declaration did (the engine's `Redeclared`).
pub use mandate_engine::plans::Redeclared as RedeclareResponse;

/// Exchange an approved start for the task token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The start's approval id.
    #[schema(max_length = 64)]
    pub approval_id: String,
    /// Wait up to this many seconds for the approval (long-poll; default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 25)]
    pub wait_secs: Option<u64>,
}

/// Why a task is being revoked.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Recorded in the audit trail.
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub reason: String,
}

/// Start a task: policy decides what is granted; the answer carries the task token.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = StartTaskRequest,
    security(("identity_token" = [])),
    responses(
        (status = 201, description = "task active; token issued", body = StartTaskResponse),
        (status = 202, description = "task pending an approval; no token yet", body = StartTaskResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "refused by policy (`task_refused`, details carry the decision) or agent not active", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn start(
    State(engine): AppState,
    bearer: Bearer,
    headers: axum::http::HeaderMap,
    ApiJson(mut req): ApiJson<StartTaskRequest>,
) -> Result<(StatusCode, Json<StartTaskResponse>), ApiError> {
    // The identity first: a proof is remembered only for a request that authenticated.
    engine
        .verify_identity(&bearer.0)
        .map_err(mandate_engine::Error::from)?;
    if let Some(proof) = crate::edge::sender::binding(&engine, &headers, "/v1/tasks")? {
        req.bind_jkt = Some(crate::edge::sender::record(&engine, &proof)?);
    }
    let started = engine.start_task(&bearer.0, req).await?;
    let status = if started.state == TaskState::Pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(started)))
}

/// Exchange an approved task start for the task token (the agent's identity token). The
/// approval is used once; a second exchange is refused.
#[utoipa::path(post, path = "/v1/tasks/{id}/activate", tag = "tasks", request_body = ActivateRequest,
    security(("identity_token" = [])),
    params(("id" = String, Path, description = "task id", max_length = 64)),
    responses(
        (status = 200, description = "task active; token issued", body = StartTaskResponse),
        (status = 403, description = "not this agent's task, or the approval is for another task (`approval_mismatch`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "approval pending, denied, expired, used or invalidated", body = ErrorBody)))]
pub async fn activate(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ActivateRequest>,
) -> Result<Json<StartTaskResponse>, ApiError> {
    let wait = Duration::from_secs(req.wait_secs.unwrap_or(0));
    Ok(Json(
        engine
            .activate_task(&bearer.0, &id, &req.approval_id, wait)
            .await?,
    ))
}

/// Re-declare a running task's plan (its own task token): a new purpose and scope. A plan
/// within the grant held takes effect at once; a wider one is decided by policy as a start
/// would be, and where policy asks for a human it waits: the answer is 202 with the
/// approval, and the same plan repeated with `approval_id` once approved takes effect.
#[utoipa::path(post, path = "/v1/tasks/{id}/plan", tag = "tasks", request_body = RedeclareRequest,
    security(("task_token" = [])),
    params(("id" = String, Path, description = "task id", max_length = 64)),
    responses(
        (status = 200, description = "the new plan is in force", body = RedeclareResponse),
        (status = 202, description = "a wider plan waits for an approval", body = RedeclareResponse),
        (status = 401, body = ErrorBody),
        (status = 403, description = "refused by policy (`plan_refused`), a delegated task widening (`delegated_plan_widens`), another task's token, or an approval for another plan (`approval_mismatch`)", body = ErrorBody),
        (status = 409, description = "a break-glass task, or an approval that is not approved (pending, denied, used, expired, void)", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn redeclare(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RedeclareRequest>,
) -> Result<(StatusCode, Json<RedeclareResponse>), ApiError> {
    let r = engine.redeclare_task(&bearer.0, &id, req).await?;
    let status = if r.applied {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(r)))
}

/// One task (admin).
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", security(("admin_token" = [])),
    params(("id" = String, Path, description = "task id", max_length = 64)),
    responses((status = 200, body = TaskRecord), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
) -> Result<Json<TaskRecord>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(engine.load_task(&id).await?))
}

/// Live (pending and active) tasks (admin).
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("admin_token" = [])),
    responses((status = 200, body = Vec<TaskRecord>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_tasks(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<Vec<TaskRecord>>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(
        engine
            .store
            .live_tasks()
            .await
            .map_err(|e| ApiError::store(&e))?,
    ))
}

/// Complete a task (its own task token). Its token is refused from this moment.
#[utoipa::path(post, path = "/v1/tasks/{id}/complete", tag = "tasks", security(("task_token" = [])),
    params(("id" = String, Path, description = "task id", max_length = 64)),
    responses((status = 200, body = TaskStateResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn complete(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
) -> Result<Json<TaskStateResponse>, ApiError> {
    Ok(Json(engine.complete_task(&bearer.0, &id).await?))
}

/// Revoke a task (admin, or the task's own token). Its token is refused from this moment.
#[utoipa::path(post, path = "/v1/tasks/{id}/revoke", tag = "tasks", security(("admin_token" = []), ("task_token" = [])),
    params(("id" = String, Path, description = "task id", max_length = 64)), request_body = RevokeRequest,
    responses((status = 200, body = TaskStateResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn revoke(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Json<TaskStateResponse>, ApiError> {
    let by = if engine.is_admin(&bearer.0) {
        "admin".to_owned()
    } else {
        engine.own_task(&bearer.0, &id)?.agent.to_string()
    };
    Ok(Json(engine.revoke_task(&id, &req.reason, &by).await?))
}

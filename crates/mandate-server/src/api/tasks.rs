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
    ApiJson(req): ApiJson<StartTaskRequest>,
) -> Result<(StatusCode, Json<StartTaskResponse>), ApiError> {
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

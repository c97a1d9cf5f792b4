//! Tasks: start (with policy-decided grants), inspect, complete, revoke.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mandate_audit::{EventKind, NewEvent};
use mandate_core::{
    AgentStatus, ApprovalKind, Grant, RequestedScope, SpiffeId, TaskState, random_id,
};
use mandate_policy::{Decision, ItemOutcome, Outcome, StartRequest, TaskFacts};
use mandate_store::TaskRecord;
use mandate_token::TaskClaims;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, Bearer};
use super::{AppState, require_admin, text};
use crate::approvals::{ApprovalRef, start_digest};
use crate::engine::{Engine, PendingEnd};
use crate::error::{ApiError, ErrorBody};

/// Ask to start a task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartTaskRequest {
    /// The declared intent, in plain words.
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f]*$"
    )]
    pub purpose: String,
    /// What the task needs.
    pub scope: RequestedScope,
    /// Lifetime asked for, seconds (default 900; at most the server's maximum).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub ttl_secs: Option<i64>,
}

/// The answer to a task start.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StartTaskResponse {
    /// Task id.
    pub task_id: String,
    /// `active` (token issued) or `pending` (waiting on an approval; no token).
    pub state: TaskState,
    /// The task token, when active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_token: Option<String>,
    /// When the task (and its token) expires, unix ms.
    pub expires_at_ms: i64,
    /// What was granted.
    pub grant: Grant,
    /// Each requested (tool, action) pair and how policy answered it.
    pub items: Vec<ItemOutcome>,
    /// The `start_task` decision.
    pub decision: Decision,
    /// The approval the start waits for, when `pending`: once approved, exchange it for
    /// the token at `POST /v1/tasks/{id}/activate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
}

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

/// A task after a transition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskStateResponse {
    /// Task id.
    pub task_id: String,
    /// Its state now.
    pub state: TaskState,
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
    match start_inner(&engine, &bearer.0, req).await {
        // Refusals by policy are recorded with their decision; failures of the store or
        // audit cannot be. Every other refusal is recorded here.
        Err(e)
            if !matches!(
                e.code,
                "task_refused" | "audit_unavailable" | "store_unavailable" | "internal_error"
            ) =>
        {
            let agent = engine
                .verify_identity(&bearer.0)
                .ok()
                .and_then(|c| SpiffeId::parse(&c.sub).ok())
                .map(|s| s.agent().to_string());
            let ev = NewEvent {
                ts_ms: engine.clock.now_ms(),
                kind: EventKind::TaskRefused,
                agent: agent.clone(),
                task_id: None,
                data: serde_json::json!({ "code": e.code, "message": e.message }),
            };
            if engine.record_refusal(ev).await.is_err() {
                return Err(ApiError::audit());
            }
            Err(e)
        }
        other => other,
    }
}

async fn start_inner(
    engine: &Engine,
    token: &str,
    req: StartTaskRequest,
) -> Result<(StatusCode, Json<StartTaskResponse>), ApiError> {
    let claims = engine.verify_identity(token)?;
    let spiffe = SpiffeId::parse(&claims.sub)
        .ok()
        .filter(|s| s.trust_domain() == &engine.config.trust_domain)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_malformed",
                "identity token subject is not an agent of this trust domain",
            )
        })?;
    let agent = engine
        .store
        .agent(spiffe.agent())
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "agent_not_active",
                format!("agent {} is not registered", spiffe.agent()),
            )
        })?;
    if agent.status != AgentStatus::Active {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "agent_not_active",
            format!("agent {} is {}", agent.name, agent.status),
        ));
    }
    let limits = &engine.config.limits;
    let purpose = text("purpose", &req.purpose, limits.max_purpose_chars, true)?;
    req.scope
        .check_bounds(limits.max_scope_items)
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                e.to_string(),
            )
        })?;
    let ttl = req.ttl_secs.unwrap_or(limits.default_task_ttl_secs);
    if ttl <= 0 || ttl > limits.max_task_ttl_secs {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!(
                "ttl_secs must be between 1 and {}",
                limits.max_task_ttl_secs
            ),
        ));
    }

    let rng = |_| ApiError::internal("system RNG failed");
    let task_id = random_id("tsk").map_err(rng)?;
    let jti = random_id("jti").map_err(rng)?;
    let now_ms = engine.clock.now_ms();
    let now_secs = engine.clock.now_secs();
    let bundle = engine.bundle();
    let entities = bundle
        .task_entities(
            &engine.agent_facts(&agent),
            &TaskFacts {
                id: task_id.clone(),
                purpose: purpose.to_owned(),
                environment: engine.config.environment.clone(),
            },
            &req.scope.tools,
        )
        .map_err(ApiError::internal)?;
    let sd = bundle.decide_start(
        &entities,
        &StartRequest {
            scope: &req.scope,
            ttl_secs: ttl,
            environment: &engine.config.environment,
            now_secs,
        },
    );
    let items = serde_json::to_value(&sd.items).map_err(ApiError::internal)?;

    if sd.decision.outcome == Outcome::Deny || sd.grant.is_empty() {
        let ev = NewEvent {
            ts_ms: now_ms,
            kind: EventKind::TaskRefused,
            agent: Some(agent.name.to_string()),
            task_id: Some(task_id.clone()),
            data: serde_json::json!({ "purpose": purpose, "requested": req.scope, "decision": sd.decision, "items": items }),
        };
        engine
            .audit
            .append(ev)
            .await
            .map_err(|_| ApiError::audit())?;
        let message = if sd.decision.outcome == Outcome::Deny {
            format!(
                "policy refused to start this task: {}",
                sd.decision.reasons.join("; ")
            )
        } else {
            "policy granted none of the requested tool/action pairs".to_owned()
        };
        return Err(ApiError::new(StatusCode::FORBIDDEN, "task_refused", message).with_details(serde_json::json!({ "task_id": task_id, "decision": sd.decision, "items": sd.items })));
    }

    let granted_ttl = sd.ttl_cap_secs.map_or(ttl, |cap| cap.min(ttl));
    let exp = now_secs + granted_ttl;
    let pending = sd.decision.outcome == Outcome::ApprovalRequired;
    let state = if pending {
        TaskState::Pending
    } else {
        TaskState::Active
    };
    let record = TaskRecord {
        id: task_id.clone(),
        agent: agent.name.clone(),
        purpose: purpose.to_owned(),
        requested: req.scope.clone(),
        grant: sd.grant.clone(),
        items: items.clone(),
        state,
        bundle_version: bundle.version().to_owned(),
        token_jti: jti.clone(),
        created_at_ms: now_ms,
        expires_at_ms: exp * 1000,
        ended_at_ms: None,
        end_reason: None,
    };
    let token = if pending {
        None
    } else {
        let claims = TaskClaims {
            iss: engine.issuer.clone(),
            sub: spiffe.to_string(),
            aud: engine.config.task_audience.clone(),
            exp,
            iat: now_secs,
            nbf: now_secs,
            jti,
            task_id: task_id.clone(),
            grant: sd.grant.clone(),
            act: None,
        };
        Some(mandate_token::sign(&engine.keys(), &claims)?)
    };
    let ev = NewEvent {
        ts_ms: now_ms,
        kind: EventKind::TaskStarted,
        agent: Some(agent.name.to_string()),
        task_id: Some(task_id.clone()),
        data: serde_json::json!({
            "purpose": purpose, "state": state, "requested": req.scope, "grant": sd.grant, "items": items,
            "decision": sd.decision, "ttl_secs": granted_ttl, "expires_at_ms": record.expires_at_ms,
        }),
    };
    engine
        .store
        .insert_task(&record, ev)
        .await
        .map_err(|e| match e {
            mandate_store::StoreError::NotFound(_) => agent_gone(&agent.name),
            other => ApiError::store(&other),
        })?;
    let live = engine.live_task(&agent, &record)?;
    engine.insert_live(Arc::clone(&live));
    let approval = if pending {
        let opened = engine
            .open_approval(crate::approvals::Request {
                kind: ApprovalKind::TaskStart,
                task_id: &task_id,
                agent: &agent.name,
                owner: agent.owner.clone(),
                digest: start_digest(&task_id, &agent.name, &req.scope, ttl, bundle.version()),
                action: serde_json::json!({
                    "purpose": purpose, "requested": req.scope, "ttl_secs": granted_ttl,
                    "grant": sd.grant, "agent_tier": agent.tier.get(),
                    "policies": sd.decision.policies, "reasons": sd.decision.reasons,
                }),
                decision: &sd.decision,
                not_after_ms: record.expires_at_ms,
            })
            .await;
        match opened {
            Ok(a) => Some(ApprovalRef::from(&a)),
            Err(e) => {
                let end = PendingEnd {
                    from: vec![TaskState::Pending],
                    to: TaskState::Revoked,
                    kind: EventKind::TaskRevoked,
                    reason: format!("its approval request could not be opened ({})", e.code),
                    by: "mandate".into(),
                    agent: agent.name.to_string(),
                    detail: serde_json::Value::Null,
                };
                if let Err(err) = engine.end_task(&task_id, end).await {
                    tracing::error!(task = %task_id, error = %err, "not recorded yet; retried by the sweeper");
                }
                return Err(e);
            }
        }
    } else {
        None
    };
    // A reload that swapped bundles after this start was decided did not see this task:
    // re-decide it under the bundle enforcing now.
    engine.catch_up(&live, bundle.version()).await;
    if live.is_ended() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "task_refused",
            "the policy changed while the task was starting, and the new policy does not permit it",
        ));
    }
    let grant = live.current_grant();
    let expires_at_ms = live.expires_at();
    // A quarantine that committed between the insert and the line above revoked the
    // task in the store without seeing it in memory: look again before handing out the
    // token, so the token never works for a contained agent.
    let stored = engine.store.task(&task_id).await;
    if !matches!(
        stored,
        Ok(Some(TaskRecord {
            state: TaskState::Active | TaskState::Pending,
            ..
        }))
    ) {
        engine.end_live(&task_id);
        return Err(agent_gone(&agent.name));
    }
    let status = if pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(StartTaskResponse {
            task_id,
            state,
            task_token: token,
            expires_at_ms,
            grant,
            items: sd.items,
            decision: sd.decision,
            approval,
        }),
    ))
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
    let claims = engine.verify_identity(&bearer.0)?;
    let wait = req.wait_secs.unwrap_or(0);
    let max_wait = u64::try_from(engine.config.limits.max_approval_wait_secs).unwrap_or(0);
    if wait > max_wait {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("wait_secs must be at most {max_wait}"),
        ));
    }
    let record = load_task(&engine, &id).await?;
    let live = engine.live_get(&id).filter(|t| !t.is_ended());
    let Some(live) = live.filter(|t| t.spiffe_id == claims.sub) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "task_not_active",
            format!("task {id} is not a live task of this agent"),
        ));
    };
    if !live.is_pending() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "task_not_pending",
            format!("task {id} is not waiting on an approval"),
        ));
    }
    // Everything that can fail is prepared before the approval is used, so a failure
    // leaves it usable for a retry.
    let items: Vec<ItemOutcome> = serde_json::from_value(record.items).unwrap_or_default();
    let decision: Decision = engine
        .store
        .task_events(&id)
        .await
        .map_err(|e| ApiError::store(&e))?
        .into_iter()
        .find(|e| e.kind == EventKind::TaskStarted.as_str())
        .and_then(|e| e.data.get("decision").cloned())
        .and_then(|d| serde_json::from_value(d).ok())
        .ok_or_else(|| {
            ApiError::internal("the task's start decision is missing from its events")
        })?;
    let sign = || {
        let now_secs = engine.clock.now_secs();
        let claims = TaskClaims {
            iss: engine.issuer.clone(),
            sub: live.spiffe_id.clone(),
            aud: engine.config.task_audience.clone(),
            exp: live.expires_at().div_euclid(1000),
            iat: now_secs,
            nbf: now_secs,
            jti: live.token_jti.clone(),
            task_id: id.clone(),
            grant: live.current_grant(),
            act: None,
        };
        mandate_token::sign(&engine.keys(), &claims).map_err(ApiError::from)
    };
    let (a, token) = engine
        .activate_start(
            &live,
            &req.approval_id,
            std::time::Duration::from_secs(wait),
            sign,
        )
        .await?;
    Ok(Json(StartTaskResponse {
        task_id: id,
        state: TaskState::Active,
        task_token: Some(token),
        expires_at_ms: live.expires_at(),
        grant: live.current_grant(),
        items,
        decision,
        approval: Some(ApprovalRef::from(&a)),
    }))
}

async fn load_task(engine: &Engine, id: &str) -> Result<TaskRecord, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::invalid("task id is too long"));
    }
    engine
        .store
        .task(id)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| ApiError::not_found(format!("task {id} does not exist")))
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
    Ok(Json(load_task(&engine, &id).await?))
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

async fn end_task(
    engine: &Engine,
    id: &str,
    from: &[TaskState],
    to: TaskState,
    kind: EventKind,
    reason: &str,
    by: &str,
) -> Result<TaskStateResponse, ApiError> {
    let task = load_task(engine, id).await?;
    // In memory first: from here on no call of this task is allowed, and if the store
    // write fails the end stays enforced and is retried until it commits.
    let end = PendingEnd {
        from: from.to_vec(),
        to,
        kind,
        reason: reason.to_owned(),
        by: by.to_owned(),
        agent: task.agent.to_string(),
        detail: serde_json::Value::Null,
    };
    let moved = engine
        .end_task(id, end)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if !moved {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "task_not_active",
            format!("task {id} is {} and cannot become {to}", task.state),
        ));
    }
    Ok(TaskStateResponse {
        task_id: id.to_owned(),
        state: to,
    })
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
    let task = own_task(&engine, &bearer.0, &id)?;
    let by = task.agent.to_string();
    Ok(Json(
        end_task(
            &engine,
            &id,
            &[TaskState::Active],
            TaskState::Completed,
            EventKind::TaskCompleted,
            "completed by agent",
            &by,
        )
        .await?,
    ))
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
        let task = own_task(&engine, &bearer.0, &id)?;
        task.agent.to_string()
    };
    text("reason", &req.reason, 1024, false)?;
    Ok(Json(
        end_task(
            &engine,
            &id,
            &[TaskState::Active, TaskState::Pending],
            TaskState::Revoked,
            EventKind::TaskRevoked,
            &req.reason,
            &by,
        )
        .await?,
    ))
}

fn agent_gone(name: &mandate_core::AgentName) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "agent_not_active",
        format!("agent {name} stopped being active while the task was starting"),
    )
}

/// The live task of a task token, which must be the task named in the path.
fn own_task(
    engine: &Engine,
    token: &str,
    id: &str,
) -> Result<std::sync::Arc<crate::LiveTask>, ApiError> {
    let task = engine.task_for_token(token).map_err(|r| r.error)?;
    if task.id != id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "token_not_bound",
            "this task token belongs to another task",
        ));
    }
    Ok(task)
}

//! The decide endpoint, audit, policy and key operations, and the well-known documents.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use mandate_audit::{ChainBreak, Event, EventKind, NewEvent};
use mandate_core::{
    ActionClass, CanonicalArgs, DataDomain, Destination, Sensitivity, ToolName, random_id,
};
use mandate_policy::{Bundle, Outcome};
use mandate_token::Jwks;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, Bearer};
use super::{AppState, require_admin};
use crate::approvals::ApprovalRef;
use crate::engine::{Call, Engine, PolicyChange};
use crate::error::{ApiError, ErrorBody};
use crate::verify::{VerifyReport, verify_chain};

/// Longest `resource` accepted.
const MAX_RESOURCE_CHARS: usize = 1024;

/// One attempted tool call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// The tool.
    pub tool: ToolName,
    /// Its action class.
    pub action: ActionClass,
    /// What the tool acts on (a ticket id, a path, a table).
    #[serde(default)]
    #[schema(max_length = 1024, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub resource: Option<String>,
    /// The call's arguments: canonicalised, duplicate keys refused.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<CanonicalArgs>,
    /// Where the call sends data (host or host:port).
    #[serde(default)]
    pub destination: Option<Destination>,
    /// The data domain it touches.
    #[serde(default)]
    pub data_domain: Option<DataDomain>,
    /// Sensitivity of the data (default `internal`).
    #[serde(default)]
    pub sensitivity: Option<Sensitivity>,
    /// An approval given for exactly this call: used once if it is approved.
    #[serde(default)]
    #[schema(max_length = 64)]
    pub approval_id: Option<String>,
    /// When the call needs an approval, wait up to this many seconds for it (long-poll;
    /// at most the server's limit, default 0: answer at once).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 25)]
    pub wait_secs: Option<u64>,
}

/// A per-call decision.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DecideResponse {
    /// Decision id (also in the audit event).
    pub decision_id: String,
    /// allow | deny | approval_required.
    pub outcome: Outcome,
    /// Determining policy ids.
    pub policies: Vec<String>,
    /// Human-readable reasons.
    pub reasons: Vec<String>,
    /// Evaluation errors (any error denies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What the enforcement point must do with an allowed call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub obligations: Vec<mandate_policy::Obligation>,
    /// Bundle version that decided.
    pub bundle_version: String,
    /// The task.
    pub task_id: String,
    /// The agent.
    pub agent: String,
    /// SHA-256 of the canonical arguments.
    pub args_digest: String,
    /// The approval this call needs (when `approval_required`) or used (when allowed on
    /// an approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// Allowed by a break-glass grant, outside policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

impl DecideRequest {
    fn into_call(self, max_args: usize) -> Result<(Call, Option<String>, u64), ApiError> {
        let resource = self.resource.unwrap_or_default();
        if resource.chars().count() > MAX_RESOURCE_CHARS || resource.chars().any(char::is_control) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("resource must be at most {MAX_RESOURCE_CHARS} printable characters"),
            ));
        }
        let args = self.arguments.unwrap_or_default();
        args.check_size(max_args).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "arguments_too_large",
                e.to_string(),
            )
        })?;
        let call = Call {
            tool: self.tool,
            action: self.action,
            resource,
            args,
            destination: self.destination,
            data_domain: self.data_domain,
            sensitivity: self.sensitivity.unwrap_or_default(),
        };
        if self.approval_id.as_ref().is_some_and(|a| a.len() > 64) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "approval_id is at most 64 characters",
            ));
        }
        Ok((call, self.approval_id, self.wait_secs.unwrap_or(0)))
    }
}

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
    ApiJson(req): ApiJson<DecideRequest>,
) -> Result<Json<DecideResponse>, ApiError> {
    decide_one(&engine, &bearer.0, req).await.map(Json)
}

/// The decide path every decision API shares (`/v1/decide`, AuthZEN): parse, evaluate,
/// settle approvals, record durably, answer.
pub(crate) async fn decide_one(
    engine: &Engine,
    token: &str,
    req: DecideRequest,
) -> Result<DecideResponse, ApiError> {
    let started = Instant::now();
    let (call, approval_id, wait_secs) = req.into_call(engine.config.limits.max_args_bytes)?;
    let max_wait = u64::try_from(engine.config.limits.max_approval_wait_secs).unwrap_or(0);
    if wait_secs > max_wait {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("wait_secs must be at most {max_wait}"),
        ));
    }
    let now = engine.clock.now_ms();
    let evaluated = match engine.evaluate(token, &call) {
        Ok(e) => e,
        Err(refusal) => {
            let ev = NewEvent {
                ts_ms: now,
                kind: EventKind::CallRefused,
                agent: refusal.agent.clone(),
                task_id: refusal.task.clone(),
                data: serde_json::json!({ "code": refusal.error.code, "tool": call.tool, "action": call.action, "args_digest": call.args.digest() }),
            };
            engine.record_refusal(ev).await?;
            return Err(refusal.error);
        }
    };
    engine.admit_decision(&evaluated.task)?;
    let decision_id = random_id("dec").map_err(|_| ApiError::internal("system RNG failed"))?;
    let task = evaluated.task;
    let data_domain = evaluated.data_domain;
    let break_glass = task.break_glass.is_some();
    let (d, approval) = if evaluated.decision.outcome == Outcome::ApprovalRequired {
        match engine
            .settle_call(
                &task,
                &call,
                data_domain.as_ref(),
                evaluated.decision,
                approval_id.as_deref(),
                Duration::from_secs(wait_secs),
            )
            .await
        {
            Ok(s) => (s.decision, Some(ApprovalRef::from(&s.approval))),
            Err(e) => {
                let ev = NewEvent {
                    ts_ms: engine.clock.now_ms(),
                    kind: EventKind::CallRefused,
                    agent: Some(task.agent.to_string()),
                    task_id: Some(task.id.clone()),
                    data: serde_json::json!({ "code": e.code, "tool": call.tool, "action": call.action, "args_digest": call.args.digest(), "approval_id": approval_id }),
                };
                engine.audit.append(ev).await?;
                return Err(e);
            }
        }
    } else {
        (evaluated.decision, None)
    };
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    // From here to the answer the task's end waits for this decision, so the record says
    // what the caller is told: an allow is recorded only while the task is live, and a
    // task that ended (or ran out of time) after policy said yes is recorded as refused.
    let flight = task.enter();
    if flight.is_none() || engine.clock.now_ms() >= task.expires_at() {
        let ev = NewEvent {
            ts_ms: engine.clock.now_ms(),
            kind: EventKind::CallRefused,
            agent: Some(task.agent.to_string()),
            task_id: Some(task.id.clone()),
            data: serde_json::json!({
                "code": "task_not_active", "decision_id": decision_id,
                "tool": call.tool, "action": call.action, "resource": call.resource,
                "args_digest": call.args.digest(),
                "policy_outcome": d.outcome, "policies": d.policies, "bundle_version": d.bundle_version,
                "latency_us": latency_us,
            }),
        };
        engine.audit.record(ev, None).await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "task_not_active",
            format!(
                "task {} ended while this call was being decided: start a new task",
                task.id
            ),
        ));
    }
    let history = (d.outcome == Outcome::Allow)
        .then(|| engine.count_allowed(&task, &call, data_domain.as_ref()));
    let ev = NewEvent {
        // After a wait for an approval, the decision is made now, not when the call came.
        ts_ms: engine.clock.now_ms(),
        kind: EventKind::Decision,
        agent: Some(task.agent.to_string()),
        task_id: Some(task.id.clone()),
        data: serde_json::json!({
            "decision_id": decision_id, "intent": task.purpose,
            "tool": call.tool, "action": call.action, "resource": call.resource,
            "destination": call.destination, "data_domain": data_domain, "declared_data_domain": call.data_domain, "sensitivity": call.sensitivity,
            "args_digest": call.args.digest(),
            "outcome": d.outcome, "policies": d.policies, "reasons": d.reasons, "errors": d.errors, "obligations": d.obligations,
            "bundle_version": d.bundle_version, "latency_us": latency_us,
            "approval_id": approval.as_ref().map(|a| &a.id), "approved_by": approval.as_ref().filter(|_| d.outcome == Outcome::Allow).map(|a| &a.approved_by),
            "break_glass": break_glass,
        }),
    };
    engine.audit.record(ev, history).await?;
    drop(flight);
    if let Some(shadow) = evaluated
        .shadow
        .filter(|s| s.outcome != d.outcome || s.policies != d.policies)
    {
        let ev = NewEvent {
            ts_ms: now,
            kind: EventKind::ShadowDisagreement,
            agent: Some(task.agent.to_string()),
            task_id: Some(task.id.clone()),
            data: serde_json::json!({
                "decision_id": decision_id, "tool": call.tool, "action": call.action,
                "enforced": { "outcome": d.outcome, "policies": d.policies, "bundle_version": d.bundle_version },
                "shadow": { "outcome": shadow.outcome, "policies": shadow.policies, "bundle_version": shadow.bundle_version },
            }),
        };
        // Shadow results are advisory: recorded after the decision, off the call's path,
        // and a failure to record one never changes the answer.
        engine.audit.append_deferred(ev);
    }
    Ok(DecideResponse {
        decision_id,
        outcome: d.outcome,
        policies: d.policies,
        reasons: d.reasons,
        errors: d.errors,
        obligations: d.obligations,
        bundle_version: d.bundle_version,
        task_id: task.id.clone(),
        agent: task.agent.to_string(),
        args_digest: call.args.digest().to_owned(),
        approval,
        break_glass,
    })
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
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }))
}

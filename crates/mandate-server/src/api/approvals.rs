//! Humans in the loop: approvers and their groups, approval requests, break-glass and
//! the oversight reports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mandate_audit::{
    ApproverAdded, ApproverGroupUpdated, ApproverRemoved, Body, BreakGlassReviewed, HumanRefused,
    NewEvent,
};
use mandate_core::{
    AgentName, AgentStatus, ApprovalState, ApproverRole, HumanId, SpiffeId, random_secret,
    sha256_hex,
};
use mandate_policy::Outcome;
use mandate_store::{
    ApprovalRecord, ApproverGroup, ApproverRecord, BreakGlassRecord, BreakGlassReview,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, require_admin, text};
use crate::edge::{ApiJson, ApiQuery, Bearer};
use crate::error::{ApiError, ErrorBody};
use mandate_engine::approvals::Human;
use mandate_engine::engine::Engine;

const NAME_PATTERN: &str = "a name of 1-128 letters, digits and . _ @ + -";

fn valid_name(field: &str, v: &str) -> Result<(), ApiError> {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("{field} must be {NAME_PATTERN}"),
        ))
    }
}

/// A human identity as registered: normalised once ([`HumanId`]), so that separation of
/// duties compares `Alice@Example.COM` and `alice@example.com` as the one person they are.
fn human_id(field: &str, v: &str) -> Result<HumanId, ApiError> {
    HumanId::parse(v).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("{field}: {e}"),
        )
    })
}

fn valid_group(v: &str) -> Result<(), ApiError> {
    Ok(mandate_engine::tasks::checked_group(v)?)
}

/// Add a human approver.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddApproverRequest {
    /// Unique name (an email or a login).
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._@+-]+$")]
    pub name: String,
    /// What they may do.
    #[schema(min_items = 1, max_items = 3)]
    pub roles: Vec<ApproverRole>,
    /// Approver groups they answer for (default `["default"]`).
    #[serde(default)]
    #[schema(max_items = 32)]
    pub groups: Option<Vec<String>>,
}

/// A new approver and their API token (shown once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddApproverResponse {
    /// The approver.
    pub approver: ApproverRecord,
    /// Their API token: shown once, stored only as a hash.
    pub token: String,
}

/// Add an approver (admin). Their token is returned once.
#[utoipa::path(post, path = "/v1/approvers", tag = "approvals", request_body = AddApproverRequest,
    security(("admin_token" = [])),
    responses((status = 201, body = AddApproverResponse), (status = 409, body = ErrorBody)))]
pub async fn add_approver(
    State(engine): AppState,
    bearer: Bearer,
    ApiJson(req): ApiJson<AddApproverRequest>,
) -> Result<(StatusCode, Json<AddApproverResponse>), ApiError> {
    require_admin(&engine, &bearer)?;
    valid_name("name", &req.name)?;
    if req.roles.is_empty() || req.roles.len() > 3 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "roles must name 1-3 of approver, break_glass, reviewer",
        ));
    }
    let groups = req
        .groups
        .unwrap_or_else(|| vec![mandate_policy::DEFAULT_APPROVER_GROUP.to_owned()]);
    if groups.len() > 32 {
        return Err(ApiError::invalid("at most 32 groups"));
    }
    for g in &groups {
        valid_group(g)?;
    }
    let roles: BTreeSet<ApproverRole> = req.roles.into_iter().collect();
    let groups: BTreeSet<String> = groups.into_iter().collect();
    let token = random_secret("mdt_apr").map_err(|_| ApiError::internal("system RNG failed"))?;
    let now = engine.clock.now_ms();
    let approver = ApproverRecord {
        name: human_id("name", &req.name)?,
        roles: roles.into_iter().collect(),
        groups: groups.into_iter().collect(),
        created_at_ms: now,
        disabled_at_ms: None,
    };
    let ev = NewEvent {
        ts_ms: now,
        agent: None,
        task_id: None,
        body: Body::ApproverAdded(ApproverAdded {
            name: approver.name.clone(),
            roles: approver.roles.clone(),
            groups: approver.groups.clone(),
            by: "admin".to_owned(),
        }),
    };
    engine
        .store
        .insert_approver(&approver, &sha256_hex(token.as_bytes()), ev)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(AddApproverResponse { approver, token }),
    ))
}

/// All approvers (admin).
#[utoipa::path(get, path = "/v1/approvers", tag = "approvals", security(("admin_token" = [])),
    responses((status = 200, body = Vec<ApproverRecord>)))]
pub async fn list_approvers(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<Vec<ApproverRecord>>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(
        engine
            .store
            .approvers()
            .await
            .map_err(|e| ApiError::store(&e))?,
    ))
}

/// Disable an approver (admin): their token stops working at once.
#[utoipa::path(post, path = "/v1/approvers/{name}/disable", tag = "approvals", security(("admin_token" = [])),
    params(("name" = String, Path, description = "approver name", max_length = 128)),
    responses((status = 204, description = "disabled"), (status = 404, body = ErrorBody)))]
pub async fn disable_approver(
    State(engine): AppState,
    bearer: Bearer,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&engine, &bearer)?;
    valid_name("name", &name)?;
    let name = human_id("name", &name)?;
    let now = engine.clock.now_ms();
    let ev = NewEvent {
        ts_ms: now,
        agent: None,
        task_id: None,
        body: Body::ApproverRemoved(ApproverRemoved {
            name: name.to_string(),
            by: "admin".to_owned(),
        }),
    };
    if engine
        .store
        .disable_approver(name.as_str(), now, ev)
        .await
        .map_err(|e| ApiError::store(&e))?
    {
        engine.invalidate_votes_of(&name).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no enabled approver named {name}"
        )))
    }
}

/// Where an approver group's notifications go.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetGroupRequest {
    /// Webhook receiving signed notifications (`http` or `https`); absent to stop them.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub webhook_url: Option<String>,
}

/// An approver group after a change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SetGroupResponse {
    /// Group name.
    pub name: String,
    /// Its webhook.
    pub webhook_url: Option<String>,
    /// The key that signs its notifications (`Mandate-Signature`): shown once, here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

/// Set an approver group's webhook (admin). A new signing secret is generated and shown
/// once.
#[utoipa::path(put, path = "/v1/approver-groups/{name}", tag = "approvals", request_body = SetGroupRequest,
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "group name", max_length = 64)),
    responses((status = 200, body = SetGroupResponse)))]
pub async fn set_group(
    State(engine): AppState,
    bearer: Bearer,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetGroupRequest>,
) -> Result<Json<SetGroupResponse>, ApiError> {
    require_admin(&engine, &bearer)?;
    valid_group(&name)?;
    if let Some(url) = &req.webhook_url {
        let parsed = reqwest::Url::parse(url).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.username().is_empty()
                && u.password().is_none()
                && url.len() <= 2048
        });
        if parsed.is_none() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "webhook_url must be an http(s) URL with a host and no credentials, at most 2048 characters",
            ));
        }
    }
    let secret = match &req.webhook_url {
        Some(_) => {
            Some(random_secret("mdt_whk").map_err(|_| ApiError::internal("system RNG failed"))?)
        }
        None => None,
    };
    let now = engine.clock.now_ms();
    let group = ApproverGroup {
        name: name.clone(),
        webhook_url: req.webhook_url.clone(),
        webhook_secret: secret.clone(),
        updated_at_ms: now,
    };
    let ev = NewEvent {
        ts_ms: now,
        agent: None,
        task_id: None,
        body: Body::ApproverGroupUpdated(ApproverGroupUpdated {
            group: name.clone(),
            webhook_url: req.webhook_url.clone(),
            by: "admin".to_owned(),
        }),
    };
    engine
        .store
        .put_approver_group(&group, ev)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(SetGroupResponse {
        name,
        webhook_url: req.webhook_url,
        webhook_secret: secret,
    }))
}

/// Filters for the approval queue.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only approvals in this state (default: all).
    pub state: Option<ApprovalState>,
    /// Only this agent's.
    pub agent: Option<AgentName>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// The approval queue (admin or approver). Approvers see their groups' requests.
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", security(("admin_token" = []), ("approver_token" = [])),
    params(ListQuery),
    responses((status = 200, body = Vec<ApprovalRecord>)))]
pub async fn list_approvals(
    State(engine): AppState,
    bearer: Bearer,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<ApprovalRecord>>, ApiError> {
    let human = engine.human(&bearer.0).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    // Approvers see their groups' requests (reviewers and the admin see all).
    let groups = match &human {
        Human::Approver(a) if !a.has(ApproverRole::Reviewer) => Some(a.groups.as_slice()),
        _ => None,
    };
    let list = engine
        .store
        .approvals(q.state, q.agent.as_ref(), groups, limit)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(list))
}

/// Long-poll bound for reading one approval.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// While it is pending, wait up to this many seconds for an answer (default 0).
    #[param(minimum = 0, maximum = 25)]
    pub wait_secs: Option<u64>,
}

/// One approval: for humans (admin, approvers) or for the agent whose task it concerns
/// (its task or identity token), who may wait for the answer.
#[utoipa::path(get, path = "/v1/approvals/{id}", tag = "approvals",
    security(("admin_token" = []), ("approver_token" = []), ("task_token" = []), ("identity_token" = [])),
    params(("id" = String, Path, description = "approval id", max_length = 64), WaitQuery),
    responses((status = 200, body = ApprovalRecord), (status = 404, body = ErrorBody)))]
pub async fn get_approval(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let wait = q.wait_secs.unwrap_or(0);
    let max_wait = u64::try_from(engine.config.limits.max_approval_wait_secs).unwrap_or(0);
    if wait > max_wait {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("wait_secs must be at most {max_wait}"),
        ));
    }
    // Who is asking comes first: nothing is read for an unknown caller.
    let agent_sub = engine
        .verify_task_token(&bearer.0)
        .map(|c| c.actor().to_owned())
        .or_else(|_| engine.verify_identity(&bearer.0).map(|c| c.sub.clone()))
        .ok();
    let human = match &agent_sub {
        Some(_) => None,
        None => Some(engine.human(&bearer.0).await?),
    };
    let a = engine.load_approval(&id).await?;
    let allowed = match (&agent_sub, &human) {
        // An agent may read only approvals of its own tasks.
        (Some(sub), _) => SpiffeId::parse(sub)
            .ok()
            .filter(|s| s.trust_domain() == &engine.config.trust_domain)
            .is_some_and(|s| s.agent() == &a.agent),
        (None, Some(Human::Approver(ap))) => {
            ap.has(ApproverRole::Reviewer) || ap.groups.contains(&a.group)
        }
        _ => true,
    };
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_your_approval",
            "this approval concerns another agent or another approver group",
        ));
    }
    let a = if wait > 0 && a.state == ApprovalState::Pending {
        engine
            .wait_for_approval(&id, Duration::from_secs(wait))
            .await?
    } else {
        a
    };
    Ok(Json(a))
}

/// Approve a request (an approver of its group; never the agent's owner unless policy
/// allows it). When enough approvers agree it becomes usable, once.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "approvals", security(("approver_token" = [])),
    params(("id" = String, Path, description = "approval id", max_length = 64)),
    responses((status = 200, body = ApprovalRecord), (status = 404, body = ErrorBody),
        (status = 409, description = "already decided, expired, stale or already approved by this approver", body = ErrorBody)))]
pub async fn approve(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let approver = acting(&engine, &bearer, ApproverRole::Approver, "approve", &id).await?;
    match engine.approve(&approver, &id).await {
        Ok(a) => Ok(Json(a)),
        Err(e) => Err(refused(
            &engine,
            "approve",
            &id,
            Some(approver.name.as_str()),
            e.into(),
        )
        .await),
    }
}

/// Why a request is refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRequest {
    /// Recorded in the audit trail and shown to the agent.
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub reason: String,
}

/// Deny a request (an approver of its group).
#[utoipa::path(post, path = "/v1/approvals/{id}/deny", tag = "approvals", request_body = DenyRequest,
    security(("approver_token" = [])),
    params(("id" = String, Path, description = "approval id", max_length = 64)),
    responses((status = 200, body = ApprovalRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn deny(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DenyRequest>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let approver = acting(&engine, &bearer, ApproverRole::Approver, "deny", &id).await?;
    let reason = text("reason", &req.reason, 1024, false)?;
    match engine.deny(&approver, &id, reason).await {
        Ok(a) => Ok(Json(a)),
        Err(e) => Err(refused(&engine, "deny", &id, Some(approver.name.as_str()), e.into()).await),
    }
}

/// Declare break-glass: an emergency grant for an agent, outside policy.
pub use mandate_engine::BreakGlass as BreakGlassRequest;

/// A declared break-glass and the task token it grants.
pub use mandate_engine::BreakGlassIssued as BreakGlassResponse;

/// Declare break-glass (an approver holding the `break_glass` role). Every call under it
/// is allowed within its grant, audited as break-glass, and alerts the default group; its
/// after-review stays open until someone else closes it.
#[utoipa::path(post, path = "/v1/break-glass", tag = "approvals", request_body = BreakGlassRequest,
    security(("approver_token" = [])),
    responses((status = 201, body = BreakGlassResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn declare_break_glass(
    State(engine): AppState,
    bearer: Bearer,
    ApiJson(req): ApiJson<BreakGlassRequest>,
) -> Result<(StatusCode, Json<BreakGlassResponse>), ApiError> {
    let human = acting(
        &engine,
        &bearer,
        ApproverRole::BreakGlass,
        "break_glass",
        req.agent.as_str(),
    )
    .await?;
    match declare(&engine, &human, req).await {
        Ok(r) => Ok(r),
        Err((agent, e)) => {
            Err(refused(&engine, "break_glass", &agent, Some(human.name.as_str()), e).await)
        }
    }
}

async fn declare(
    engine: &Engine,
    human: &ApproverRecord,
    req: BreakGlassRequest,
) -> Result<(StatusCode, Json<BreakGlassResponse>), (String, ApiError)> {
    let target = req.agent.to_string();
    match engine.declare_break_glass(human, req).await {
        Ok(issued) => Ok((StatusCode::CREATED, Json(issued))),
        Err(e) => Err((target, e.into())),
    }
}

/// Break-glass records, newest first (admin or reviewer).
#[utoipa::path(get, path = "/v1/break-glass", tag = "approvals", security(("admin_token" = []), ("approver_token" = [])),
    responses((status = 200, body = Vec<BreakGlassRecord>)))]
pub async fn list_break_glass(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<Vec<BreakGlassRecord>>, ApiError> {
    require_oversight(&engine, &bearer).await?;
    Ok(Json(
        engine
            .store
            .break_glass_records()
            .await
            .map_err(|e| ApiError::store(&e))?,
    ))
}

/// Closing a break-glass after-review.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// What the review found.
    #[schema(min_length = 1, max_length = 4096)]
    pub notes: String,
}

/// Close a break-glass after-review (a reviewer who did not declare it).
#[utoipa::path(post, path = "/v1/break-glass/{id}/review", tag = "approvals", request_body = ReviewRequest,
    security(("approver_token" = [])),
    params(("id" = String, Path, description = "break-glass id", max_length = 64)),
    responses((status = 200, body = BreakGlassRecord), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn review_break_glass(
    State(engine): AppState,
    bearer: Bearer,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReviewRequest>,
) -> Result<Json<BreakGlassRecord>, ApiError> {
    let reviewer = acting(&engine, &bearer, ApproverRole::Reviewer, "review", &id).await?;
    match review(&engine, &reviewer, &id, &req).await {
        Ok(r) => Ok(Json(r)),
        Err(e) => Err(refused(&engine, "review", &id, Some(reviewer.name.as_str()), e).await),
    }
}

async fn review(
    engine: &Engine,
    reviewer: &ApproverRecord,
    id: &str,
    req: &ReviewRequest,
) -> Result<BreakGlassRecord, ApiError> {
    let notes = text("notes", &req.notes, 4096, true)?;
    if id.len() > 64 {
        return Err(ApiError::invalid("break-glass id is too long"));
    }
    let bg = engine
        .store
        .break_glass(id)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| ApiError::not_found(format!("break-glass {id} does not exist")))?;
    if engine.live_get(&bg.task_id).is_some_and(|t| !t.is_ended()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "break_glass_active",
            format!(
                "break-glass {id} is still in force: review it once its task has ended, so every action is covered"
            ),
        ));
    }
    if bg.declared_by == reviewer.name {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "separation_of_duties",
            "the person who declared break-glass cannot review it",
        ));
    }
    let review = BreakGlassReview {
        by: reviewer.name.clone(),
        at_ms: engine.clock.now_ms(),
        notes: notes.to_owned(),
    };
    let ev = NewEvent {
        ts_ms: review.at_ms,
        agent: Some(bg.agent.to_string()),
        task_id: Some(bg.task_id.clone()),
        body: Body::BreakGlassReviewed(BreakGlassReviewed {
            break_glass_id: id.to_owned(),
            by: review.by.clone(),
            notes: review.notes.clone(),
        }),
    };
    if !engine
        .store
        .close_break_glass(id, &review, ev)
        .await
        .map_err(|e| ApiError::store(&e))?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_reviewed",
            format!("break-glass {id} has already been reviewed"),
        ));
    }
    Ok(BreakGlassRecord {
        review: Some(review),
        ..bg
    })
}

/// The approver behind the bearer token, holding `role`; a refusal is audited.
async fn acting(
    engine: &Engine,
    bearer: &Bearer,
    role: ApproverRole,
    action: &str,
    target: &str,
) -> Result<ApproverRecord, ApiError> {
    match engine.approver_with(&bearer.0, role).await {
        Ok(a) => Ok(a),
        Err(e) => Err(refused(engine, action, target, None, e.into()).await),
    }
}

/// Records a refused human action (approve, deny, break-glass, review) and returns the
/// refusal: in full when the human is known, within the unauthenticated budget otherwise.
/// Failures of the store or audit themselves cannot be recorded and pass through.
async fn refused(
    engine: &Engine,
    action: &str,
    target: &str,
    by: Option<&str>,
    e: ApiError,
) -> ApiError {
    if matches!(
        e.code,
        "store_unavailable" | "audit_unavailable" | "internal_error"
    ) {
        return e;
    }
    let ev = NewEvent {
        ts_ms: engine.clock.now_ms(),
        agent: None,
        task_id: None,
        body: Body::HumanRefused(HumanRefused {
            action: action.to_owned(),
            target: target.to_owned(),
            by: by.map(str::to_owned),
            code: e.code.to_owned(),
            message: e.message.clone(),
        }),
    };
    let recorded = if by.is_some() {
        engine.audit.append(ev).await.map(|_| ())
    } else {
        engine.record_anonymous(ev).await
    };
    if recorded.is_err() {
        return ApiError::audit();
    }
    e
}

pub(crate) async fn require_oversight(engine: &Engine, bearer: &Bearer) -> Result<(), ApiError> {
    match engine.human(&bearer.0).await? {
        Human::Admin => Ok(()),
        Human::Approver(a) if a.has(ApproverRole::Reviewer) => Ok(()),
        Human::Approver(a) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "role_required",
            format!("{} does not hold the reviewer role", a.name),
        )),
    }
}

/// Approvals given, by whom, and how they ended (R11).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalsReport {
    /// Requests per final state.
    pub by_state: BTreeMap<String, u64>,
    /// Approvals given per approver.
    pub by_approver: BTreeMap<String, u64>,
    /// Median time from request to answer, ms (answered requests only).
    pub median_answer_ms: Option<i64>,
    /// The requests, newest first.
    pub approvals: Vec<ApprovalRecord>,
    /// Break-glass uses, newest first.
    pub break_glass: Vec<BreakGlassRecord>,
}

/// Approvals and break-glass report (admin or reviewer).
#[utoipa::path(get, path = "/v1/reports/approvals", tag = "reports", security(("admin_token" = []), ("approver_token" = [])),
    responses((status = 200, body = ApprovalsReport)))]
pub async fn approvals_report(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<ApprovalsReport>, ApiError> {
    require_oversight(&engine, &bearer).await?;
    let approvals = engine
        .store
        .approvals(None, None, None, 1000)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let mut by_state = BTreeMap::new();
    let mut by_approver = BTreeMap::new();
    let mut answer_times = Vec::new();
    for a in &approvals {
        *by_state.entry(a.state.to_string()).or_insert(0) += 1;
        for v in &a.votes {
            *by_approver.entry(v.by.to_string()).or_insert(0) += 1;
        }
        let answered = match a.state {
            ApprovalState::Denied => a.decided_at_ms,
            ApprovalState::Approved | ApprovalState::Consumed => a.votes.last().map(|v| v.at_ms),
            _ => None,
        };
        if let Some(t) = answered {
            answer_times.push(t - a.created_at_ms);
        }
    }
    answer_times.sort_unstable();
    let median_answer_ms = answer_times.get(answer_times.len() / 2).copied();
    let break_glass = engine
        .store
        .break_glass_records()
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(ApprovalsReport {
        by_state,
        by_approver,
        median_answer_ms,
        approvals,
        break_glass,
    }))
}

/// One granted (tool, action) pair and what the agent did with it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PairUse {
    /// Tool.
    pub tool: String,
    /// Action class.
    pub action: String,
    /// Tasks that were granted it.
    pub granted_in_tasks: u64,
    /// Calls allowed.
    pub allowed: u64,
    /// Calls denied.
    pub denied: u64,
    /// Calls that needed an approval.
    pub approval_required: u64,
}

/// Granted versus used for one agent, with least-privilege recommendations (R11).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessReport {
    /// The agent.
    pub agent: String,
    /// Its owner.
    pub owner: String,
    /// Its status.
    pub status: AgentStatus,
    /// Tasks examined (the most recent, at most 1000).
    pub tasks: u64,
    /// Each (tool, action) pair granted or attempted.
    pub pairs: Vec<PairUse>,
    /// Least-privilege recommendations: pairs granted and never used.
    pub recommendations: Vec<String>,
    /// Approvals concerning the agent, newest first, with who gave them.
    pub approvals: Vec<ApprovalRecord>,
    /// Break-glass uses for the agent.
    pub break_glass: Vec<BreakGlassRecord>,
}

/// Access report for one agent (admin or reviewer).
#[utoipa::path(get, path = "/v1/reports/access/{agent}", tag = "reports", security(("admin_token" = []), ("approver_token" = [])),
    params(("agent" = String, Path, description = "agent name", max_length = 63)),
    responses((status = 200, body = AccessReport), (status = 404, body = ErrorBody)))]
pub async fn access_report(
    State(engine): AppState,
    bearer: Bearer,
    Path(agent): Path<String>,
) -> Result<Json<AccessReport>, ApiError> {
    require_oversight(&engine, &bearer).await?;
    let name = AgentName::parse(&agent).map_err(|e| ApiError::invalid(e.to_string()))?;
    let record = engine
        .store
        .agent(&name)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| ApiError::not_found(format!("agent {name} does not exist")))?;
    let mut tasks = engine
        .store
        .agent_task_records(&name)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let skip = tasks.len().saturating_sub(1000);
    tasks.drain(..skip);
    let mut pairs: BTreeMap<(String, String), PairUse> = BTreeMap::new();
    for t in &tasks {
        for (tool, actions) in &t.grant.tools {
            for a in actions {
                pair(&mut pairs, tool.as_str(), a.as_str()).granted_in_tasks += 1;
            }
        }
        let events = engine
            .store
            .task_events(&t.id)
            .await
            .map_err(|e| ApiError::store(&e))?;
        for e in &events {
            let Ok(Body::Decision(d)) = e.body() else {
                continue;
            };
            let p = pair(&mut pairs, d.tool.as_str(), d.action.as_str());
            match d.outcome {
                Outcome::Allow => p.allowed += 1,
                Outcome::ApprovalRequired => p.approval_required += 1,
                Outcome::Deny => p.denied += 1,
            }
        }
    }
    let recommendations = pairs
        .values()
        .filter(|p| p.granted_in_tasks > 0 && p.allowed == 0)
        .map(|p| {
            format!(
                "{} {} was granted in {} task(s) and never used: consider removing it from the agent's requested scope or the policy that grants it",
                p.tool, p.action, p.granted_in_tasks
            )
        })
        .collect();
    let approvals = engine
        .store
        .approvals(None, Some(&name), None, 1000)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let break_glass = engine
        .store
        .break_glass_records()
        .await
        .map_err(|e| ApiError::store(&e))?
        .into_iter()
        .filter(|b| b.agent == name)
        .collect();
    Ok(Json(AccessReport {
        agent: name.to_string(),
        owner: record.owner.into(),
        status: record.status,
        tasks: u64::try_from(tasks.len()).unwrap_or(u64::MAX),
        pairs: pairs.into_values().collect(),
        recommendations,
        approvals,
        break_glass,
    }))
}

fn pair<'a>(
    pairs: &'a mut BTreeMap<(String, String), PairUse>,
    tool: &str,
    action: &str,
) -> &'a mut PairUse {
    pairs
        .entry((tool.to_owned(), action.to_owned()))
        .or_insert_with(|| PairUse {
            tool: tool.to_owned(),
            action: action.to_owned(),
            granted_in_tasks: 0,
            allowed: 0,
            denied: 0,
            approval_required: 0,
        })
}

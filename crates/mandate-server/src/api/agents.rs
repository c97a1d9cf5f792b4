//! Agents: registration, join tokens, status changes, attestation.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mandate_audit::{
    AgentRegistered, AgentStatusChanged, Body, IdentityIssued, JoinTokenIssued, NewEvent, Refused,
    TaskEnd, TaskEnded,
};
use mandate_core::{
    AgentName, AgentStatus, AttestationRule, HumanId, RiskTier, SpiffeId, TaskState, random_secret,
    sha256_hex,
};
use mandate_store::{AgentRecord, JoinTokenRecord};
use mandate_token::IdentityClaims;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppState, require_admin, text};
use crate::edge::{ApiJson, Bearer};
use crate::error::{ApiError, ErrorBody};
use mandate_engine::engine::{Engine, PendingEnd};

/// Register an agent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgentRequest {
    /// Name: the last segment of its SPIFFE ID.
    pub name: AgentName,
    /// Accountable human owner (an email or user id): printable ASCII, stored trimmed and
    /// lowercased so that separation of duties compares one form.
    #[schema(min_length = 1, max_length = 256, pattern = "^[ -~]*[!-~][ -~]*$")]
    pub owner: String,
    /// Risk tier 0..3.
    pub tier: RiskTier,
    /// How it attests; defaults to a one-time join token.
    #[serde(default)]
    pub attestation: Option<AttestationRule>,
}

/// A registered agent and its first join token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RegisterAgentResponse {
    /// The agent.
    pub agent: AgentRecord,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// One-time join token: shown once, stored only as a hash.
    pub join_token: String,
    /// When the join token stops working (unix ms).
    pub join_token_expires_at_ms: i64,
}

/// A fresh one-time join token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenResponse {
    /// The token: shown once.
    pub join_token: String,
    /// When it stops working (unix ms).
    pub expires_at_ms: i64,
}

/// Change an agent's status.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStatusRequest {
    /// `quarantined` or `offboarded` revoke every live task; `active` releases a quarantine.
    pub status: AgentStatus,
    /// Why (recorded in the audit trail).
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub reason: String,
}

/// The agent after a status change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SetStatusResponse {
    /// The agent.
    pub agent: AgentRecord,
    /// Tasks revoked by the change.
    pub revoked_tasks: Vec<String>,
}

/// Attest with a join token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    /// The agent's name.
    pub agent: AgentName,
    /// The one-time join token issued for it.
    pub join_token: String,
}

/// An identity token (JWT-SVID).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttestResponse {
    /// The JWT-SVID.
    pub identity_token: String,
    /// Always `JWT-SVID`.
    pub token_type: String,
    /// The SPIFFE ID it asserts.
    pub spiffe_id: String,
    /// Expiry (unix seconds).
    pub expires_at: i64,
}

const MAX_REASON: usize = 1024;

async fn issue_join(
    engine: &Engine,
    agent: &AgentName,
) -> Result<(String, JoinTokenRecord), ApiError> {
    let token = random_secret("mdt_join").map_err(|_| ApiError::internal("system RNG failed"))?;
    let now = engine.clock.now_ms();
    let rec = JoinTokenRecord {
        token_hash: sha256_hex(token.as_bytes()),
        agent: agent.clone(),
        created_at_ms: now,
        expires_at_ms: now + engine.config.limits.join_token_ttl_secs * 1000,
    };
    Ok((token, rec))
}

fn event(engine: &Engine, agent: &AgentName, body: Body) -> NewEvent {
    NewEvent {
        ts_ms: engine.clock.now_ms(),
        agent: Some(agent.to_string()),
        task_id: None,
        body,
    }
}

/// Register an agent (admin).
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = RegisterAgentRequest,
    security(("admin_token" = [])),
    responses((status = 201, body = RegisterAgentResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn register(
    State(engine): AppState,
    bearer: Bearer,
    ApiJson(req): ApiJson<RegisterAgentRequest>,
) -> Result<(StatusCode, Json<RegisterAgentResponse>), ApiError> {
    require_admin(&engine, &bearer)?;
    // Normalised once, here: separation of duties compares this form with approvers'.
    let owner = HumanId::parse(&req.owner).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("owner: {e}"),
        )
    })?;
    let now = engine.clock.now_ms();
    let agent = AgentRecord {
        name: req.name.clone(),
        owner,
        tier: req.tier,
        status: AgentStatus::Active,
        attestation: req.attestation.unwrap_or(AttestationRule::JoinToken),
        created_at_ms: now,
        updated_at_ms: now,
    };
    let (token, join) = issue_join(&engine, &req.name).await?;
    let spiffe_id =
        SpiffeId::for_agent(engine.config.trust_domain.clone(), req.name.clone()).to_string();
    let ev = event(
        &engine,
        &req.name,
        Body::AgentRegistered(AgentRegistered {
            owner: agent.owner.clone(),
            tier: agent.tier,
            attestation: agent.attestation.clone(),
            spiffe_id: spiffe_id.clone(),
        }),
    );
    engine
        .store
        .insert_agent(&agent, &join, ev)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(RegisterAgentResponse {
            agent,
            spiffe_id,
            join_token: token,
            join_token_expires_at_ms: join.expires_at_ms,
        }),
    ))
}

/// List agents (admin).
#[utoipa::path(get, path = "/v1/agents", tag = "agents", security(("admin_token" = [])),
    responses((status = 200, body = Vec<AgentRecord>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<Vec<AgentRecord>>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(
        engine
            .store
            .agents()
            .await
            .map_err(|e| ApiError::store(&e))?,
    ))
}

fn parse_name(name: &str) -> Result<AgentName, ApiError> {
    AgentName::parse(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()))
}

async fn load_agent(engine: &Engine, name: &AgentName) -> Result<AgentRecord, ApiError> {
    engine
        .store
        .agent(name)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| ApiError::not_found(format!("agent {name} is not registered")))
}

/// One agent (admin).
#[utoipa::path(get, path = "/v1/agents/{name}", tag = "agents", security(("admin_token" = [])),
    params(("name" = String, Path, description = "agent name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, body = AgentRecord), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_agent(
    State(engine): AppState,
    bearer: Bearer,
    Path(name): Path<String>,
) -> Result<Json<AgentRecord>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(load_agent(&engine, &parse_name(&name)?).await?))
}

/// Issue another one-time join token (admin).
#[utoipa::path(post, path = "/v1/agents/{name}/join-tokens", tag = "agents", security(("admin_token" = [])),
    params(("name" = String, Path, description = "agent name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 201, body = JoinTokenResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn join_token(
    State(engine): AppState,
    bearer: Bearer,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<JoinTokenResponse>), ApiError> {
    require_admin(&engine, &bearer)?;
    let name = parse_name(&name)?;
    let agent = load_agent(&engine, &name).await?;
    if agent.status != AgentStatus::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "agent_not_active",
            format!(
                "agent {name} is {}: only active agents get join tokens",
                agent.status
            ),
        ));
    }
    let (token, join) = issue_join(&engine, &name).await?;
    let ev = event(
        &engine,
        &name,
        Body::JoinTokenIssued(JoinTokenIssued {
            expires_at_ms: join.expires_at_ms,
        }),
    );
    engine
        .store
        .insert_join_token(&join, ev)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenResponse {
            join_token: token,
            expires_at_ms: join.expires_at_ms,
        }),
    ))
}

/// Quarantine, offboard or release an agent (admin). Leaving `active` revokes every live
/// task of the agent before the answer is sent.
#[utoipa::path(post, path = "/v1/agents/{name}/status", tag = "agents", security(("admin_token" = [])),
    params(("name" = String, Path, description = "agent name", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")), request_body = SetStatusRequest,
    responses((status = 200, body = SetStatusResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_status(
    State(engine): AppState,
    bearer: Bearer,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SetStatusRequest>,
) -> Result<Json<SetStatusResponse>, ApiError> {
    require_admin(&engine, &bearer)?;
    let name = parse_name(&name)?;
    text("reason", &req.reason, MAX_REASON, false)?;
    let agent = load_agent(&engine, &name).await?;
    if agent.status == AgentStatus::Offboarded {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "agent_offboarded",
            format!("agent {name} is offboarded; register a new agent instead"),
        ));
    }
    // Cut the agent off in memory first, so no call is allowed while the store catches
    // up; if the store fails, each revocation stays enforced and is retried.
    let revoke = |id: &str| {
        engine.end_live(id);
        engine.remember_end(
            id,
            PendingEnd {
                from: vec![TaskState::Active, TaskState::Pending],
                to: TaskState::Revoked,
                kind: TaskEnd::Revoked,
                reason: format!("agent {}", req.status),
                by: "admin".to_owned(),
                agent: name.to_string(),
                detail: TaskEnded::default(),
            },
        );
    };
    let cut: Vec<String> = if req.status == AgentStatus::Active {
        Vec::new()
    } else {
        engine.agent_tasks(&name)
    };
    for id in &cut {
        revoke(id);
    }
    let now = engine.clock.now_ms();
    let ev = event(
        &engine,
        &name,
        Body::AgentStatusChanged(AgentStatusChanged {
            from: agent.status,
            to: req.status,
            reason: req.reason.clone(),
        }),
    );
    let revoked = engine
        .store
        .set_agent_status(&name, req.status, now, ev)
        .await
        .map_err(|e| ApiError::store(&e))?;
    // The store revoked every live task of the agent in the same transaction, including
    // any that started after the scan above: cut those off too.
    for id in cut.iter().chain(&revoked) {
        engine.end_live(id);
        engine.forget_end(id);
    }
    let agent = load_agent(&engine, &name).await?;
    Ok(Json(SetStatusResponse {
        agent,
        revoked_tasks: revoked,
    }))
}

/// Attest with a one-time join token and receive a JWT-SVID identity token.
#[utoipa::path(post, path = "/v1/attest", tag = "identity", request_body = AttestRequest,
    responses((status = 200, body = AttestResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn attest(
    State(engine): AppState,
    ApiJson(req): ApiJson<AttestRequest>,
) -> Result<Json<AttestResponse>, ApiError> {
    let now = engine.clock.now_ms();
    let hash = sha256_hex(req.join_token.as_bytes());
    // Consume first: a token presented with the wrong agent name is burnt too, so a
    // leaked token cannot be replayed while the guess is refined.
    let owner = engine
        .store
        .consume_join_token(&hash, now)
        .await
        .map_err(|e| ApiError::store(&e))?;
    match owner {
        Some(agent) if agent == req.agent => {}
        _ => return Err(refuse_attest(&engine, &req.agent, now, "join_token_invalid", "the join token is unknown, used, expired or for another agent: ask an administrator for a new one".into()).await),
    }
    let agent = load_agent(&engine, &req.agent).await?;
    if agent.status != AgentStatus::Active {
        return Err(refuse_attest(
            &engine,
            &req.agent,
            now,
            "agent_not_active",
            format!("agent {} is {}", agent.name, agent.status),
        )
        .await);
    }
    let auth_time = engine.clock.now_secs();
    Ok(Json(
        issue_identity(
            &engine,
            &agent,
            auth_time,
            Body::AgentAttested,
            "join_token",
        )
        .await?,
    ))
}

/// Signs a fresh identity token for an active agent and records it; the answer leaves
/// only once the event is durable.
async fn issue_identity(
    engine: &Engine,
    agent: &AgentRecord,
    auth_time: i64,
    kind: fn(IdentityIssued) -> Body,
    method: &str,
) -> Result<AttestResponse, ApiError> {
    let spiffe_id =
        SpiffeId::for_agent(engine.config.trust_domain.clone(), agent.name.clone()).to_string();
    let iat = engine.clock.now_secs();
    let claims = IdentityClaims {
        iss: engine.issuer.clone(),
        sub: spiffe_id.clone(),
        aud: engine.config.identity_audience.clone(),
        exp: iat + engine.config.limits.identity_token_ttl_secs,
        iat,
        nbf: iat,
        jti: engine
            .config
            .ids
            .id("jti")
            .map_err(|_| ApiError::internal("system RNG failed"))?,
        auth_time,
    };
    let token = mandate_token::sign(&engine.keys(), &claims)?;
    let ev = NewEvent {
        ts_ms: engine.clock.now_ms(),
        agent: Some(agent.name.to_string()),
        task_id: None,
        body: kind(IdentityIssued {
            method: method.to_owned(),
            spiffe_id: spiffe_id.clone(),
            jti: claims.jti.clone(),
            exp: claims.exp,
            auth_time,
        }),
    };
    engine
        .audit
        .append(ev)
        .await
        .map_err(|_| ApiError::audit())?;
    Ok(AttestResponse {
        identity_token: token,
        token_type: "JWT-SVID".into(),
        spiffe_id,
        expires_at: claims.exp,
    })
}

/// Renew an identity token with a valid one. The new token keeps the original
/// attestation time: after `max_identity_lifetime_secs` (24 h by default) the agent must
/// attest again. Refused for agents that are not active.
#[utoipa::path(post, path = "/v1/identity/renew", tag = "identity", security(("identity_token" = [])),
    responses((status = 200, body = AttestResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn renew(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<AttestResponse>, ApiError> {
    let claims = engine.verify_identity(&bearer.0)?;
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
    let agent = load_agent(&engine, spiffe.agent()).await?;
    let now = engine.clock.now_ms();
    if agent.status != AgentStatus::Active {
        return Err(refuse_attest(
            &engine,
            &agent.name,
            now,
            "agent_not_active",
            format!("agent {} is {}", agent.name, agent.status),
        )
        .await);
    }
    if engine.clock.now_secs() - claims.auth_time >= engine.config.limits.max_identity_lifetime_secs
    {
        return Err(refuse_attest(
            &engine,
            &agent.name,
            now,
            "identity_too_old",
            "this identity was attested too long ago to renew: attest again with a new join token"
                .into(),
        )
        .await);
    }
    Ok(Json(
        issue_identity(
            &engine,
            &agent,
            claims.auth_time,
            Body::IdentityRenewed,
            "renewal",
        )
        .await?,
    ))
}

/// Records a refused attestation, then builds the refusal (503 if it could not be recorded).
async fn refuse_attest(
    engine: &Engine,
    agent: &AgentName,
    now: i64,
    code: &'static str,
    message: String,
) -> ApiError {
    let ev = NewEvent {
        ts_ms: now,
        agent: Some(agent.to_string()),
        task_id: None,
        body: Body::AttestationRefused(Refused {
            code: code.to_owned(),
        }),
    };
    // The agent name is the caller's claim, unproven: count it against the budget for
    // unauthenticated refusals.
    if engine.record_anonymous(ev).await.is_err() {
        return ApiError::audit();
    }
    let status = if code == "agent_not_active" {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    ApiError::new(status, code, message)
}

//! Agents: registration, join tokens, status changes, attestation (the engine's
//! `agents` module, over HTTP).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mandate_engine::agents::parse_agent_name;
use mandate_store::AgentRecord;

use super::{AppState, require_admin};
use crate::edge::{ApiJson, Bearer};
use crate::error::{ApiError, ErrorBody};

pub use mandate_engine::agents::{
    AttestRequest, AttestResponse, JoinTokenResponse, RegisterAgentRequest, RegisterAgentResponse,
    SetStatusRequest, SetStatusResponse,
};

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
    Ok((StatusCode::CREATED, Json(engine.register_agent(req).await?)))
}

/// List agents (admin).
#[utoipa::path(get, path = "/v1/agents", tag = "agents", security(("admin_token" = [])),
    responses((status = 200, body = Vec<AgentRecord>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<Vec<AgentRecord>>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(engine.agents().await?))
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
    Ok(Json(engine.load_agent(&parse_agent_name(&name)?).await?))
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
    let name = parse_agent_name(&name)?;
    Ok((
        StatusCode::CREATED,
        Json(engine.issue_join_token(&name).await?),
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
    let name = parse_agent_name(&name)?;
    Ok(Json(engine.set_agent_status(&name, req, "admin").await?))
}

/// Attest and receive a JWT-SVID identity token: with a one-time join token, a workload
/// token from a trusted OIDC issuer or SPIFFE trust domain, or (with an empty body, over
/// mutual TLS) the X.509-SVID the connection was authenticated with.
#[utoipa::path(post, path = "/v1/attest", tag = "identity", request_body = AttestRequest,
    responses((status = 200, body = AttestResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn attest(
    State(engine): AppState,
    peer: Option<axum::Extension<crate::tls::PeerSvid>>,
    ApiJson(req): ApiJson<AttestRequest>,
) -> Result<Json<AttestResponse>, ApiError> {
    let now = engine.clock.now_secs();
    let peer = match &peer {
        Some(axum::Extension(p)) => Some(p.current(now)?),
        None => None,
    };
    Ok(Json(engine.attest(req, peer).await?))
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
    Ok(Json(engine.renew_identity(&bearer.0).await?))
}

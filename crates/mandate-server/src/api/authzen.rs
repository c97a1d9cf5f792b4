//! OpenID AuthZEN Authorization API 1.0: gateways Mandate does not own ask for decisions
//! in the standard shape, and get the same decision, from the same path, with the same
//! audit events as `/v1/decide`.
//!
//! Mapping: the subject is the agent (`type` `agent`, `id` its SPIFFE ID, optional), whose
//! task token the enforcement point forwards either in `subject.properties.token` or as the
//! `Authorization` bearer; the action's `name` is the action class; the resource is the
//! tool (`type` `tool`, `id` its name) with the call's `resource`, `destination`,
//! `data_domain` and `sensitivity` in its properties; the call's `arguments` and an
//! `approval_id` ride in the context. `decision` is true only for an allow.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::ops::DecideResponse;
use crate::edge::ApiJson;
use crate::edge::DecideRequest;
use crate::error::{ApiError, ErrorBody};
use mandate_engine::engine::Engine;

/// Most evaluations in one batch.
pub const MAX_EVALUATIONS: usize = 64;

/// AuthZEN subject: the agent.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// `agent`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The agent's SPIFFE ID; when given it must be the task token's subject.
    #[serde(default)]
    pub id: Option<String>,
    /// `token`: the agent's task token (else the `Authorization` bearer is used).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<Map<String, Value>>,
}

/// AuthZEN action: the action class.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// `read`, `write`, `delete` or `execute`.
    pub name: String,
    /// Not used.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<Map<String, Value>>,
}

/// AuthZEN resource: the tool.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// `tool`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The tool's name.
    pub id: String,
    /// `resource`, `destination`, `data_domain`, `sensitivity` of the call.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<Map<String, Value>>,
}

/// One access evaluation request (AuthZEN §6).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationRequest {
    /// Who.
    pub subject: Subject,
    /// What.
    pub action: Action,
    /// On what.
    pub resource: Resource,
    /// `arguments` and `approval_id`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Map<String, Value>>,
}

/// An evaluation's answer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct EvaluationResponse {
    /// True only for an allow.
    pub decision: bool,
    /// Mandate's decision (outcome, policies, reasons, obligations, bundle version,
    /// approval), or the error that refused the evaluation.
    #[schema(value_type = Object)]
    pub context: Value,
}

/// One item of a batch; every field defaults to the batch's.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationItem {
    /// Who (default: the batch's).
    #[serde(default)]
    pub subject: Option<Subject>,
    /// What (default: the batch's).
    #[serde(default)]
    pub action: Option<Action>,
    /// On what (default: the batch's).
    #[serde(default)]
    pub resource: Option<Resource>,
    /// Context (default: the batch's).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Map<String, Value>>,
}

/// How a batch runs.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Semantic {
    /// Every item (default).
    #[default]
    ExecuteAll,
    /// Stop after the first item that is not allowed.
    DenyOnFirstDeny,
    /// Stop after the first allowed item.
    PermitOnFirstPermit,
}

/// Batch options.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// How the batch runs.
    #[serde(default)]
    pub evaluations_semantic: Semantic,
}

/// A batch of evaluations (AuthZEN §7).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationsRequest {
    /// Default subject.
    #[serde(default)]
    pub subject: Option<Subject>,
    /// Default action.
    #[serde(default)]
    pub action: Option<Action>,
    /// Default resource.
    #[serde(default)]
    pub resource: Option<Resource>,
    /// Default context.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Map<String, Value>>,
    /// The items (1 to 64).
    #[schema(min_items = 1, max_items = 64)]
    pub evaluations: Vec<EvaluationItem>,
    /// How to run them.
    #[serde(default)]
    pub options: Option<Options>,
}

/// A batch's answers, in order (fewer than asked when a semantic stopped early).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct EvaluationsResponse {
    /// One per evaluated item.
    pub evaluations: Vec<EvaluationResponse>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

/// The `Authorization` bearer, when the request has one (the token may instead ride in
/// `subject.properties.token`). A header that is there is checked as everywhere else:
/// malformed or repeated, it is refused, never skipped.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        crate::edge::bearer_token(headers).map(Some)
    } else {
        Ok(None)
    }
}

/// The task token and the `/v1/decide` request an evaluation stands for.
fn translate(
    req: &EvaluationRequest,
    header_token: Option<&str>,
) -> Result<(String, Option<String>, DecideRequest), ApiError> {
    if req.subject.kind != "agent" {
        return Err(invalid(format!(
            "subject.type must be `agent`, not {:?}",
            req.subject.kind
        )));
    }
    if req.resource.kind != "tool" {
        return Err(invalid(format!(
            "resource.type must be `tool`, not {:?}",
            req.resource.kind
        )));
    }
    let props = req.subject.properties.clone().unwrap_or_default();
    let token = match props.get("token") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(invalid("subject.properties.token must be a string")),
        None => header_token.map(str::to_owned).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "send the agent's task token in subject.properties.token or as `Authorization: Bearer <token>`",
            )
        })?,
    };
    let mut call = Map::new();
    call.insert("tool".into(), json!(req.resource.id));
    call.insert("action".into(), json!(req.action.name));
    for (k, v) in req.resource.properties.clone().unwrap_or_default() {
        if !matches!(
            k.as_str(),
            "resource" | "destination" | "data_domain" | "sensitivity"
        ) {
            return Err(invalid(format!(
                "resource.properties.{k} is not understood (resource, destination, data_domain, sensitivity)"
            )));
        }
        call.insert(k, v);
    }
    for (k, v) in req.context.clone().unwrap_or_default() {
        if !matches!(k.as_str(), "arguments" | "approval_id") {
            return Err(invalid(format!(
                "context.{k} is not understood (arguments, approval_id)"
            )));
        }
        call.insert(k, v);
    }
    let decide: DecideRequest = serde_json::from_value(Value::Object(call))
        .map_err(|e| invalid(format!("the evaluation does not describe a call: {e}")))?;
    Ok((token, req.subject.id.clone(), decide))
}

fn answer(d: DecideResponse) -> EvaluationResponse {
    EvaluationResponse {
        decision: d.outcome == mandate_policy::Outcome::Allow,
        context: serde_json::to_value(&d).unwrap_or_default(),
    }
}

async fn evaluate_one(
    engine: &Engine,
    req: &EvaluationRequest,
    header_token: Option<&str>,
    trace: Option<mandate_core::TraceParent>,
    point: Option<&str>,
) -> Result<EvaluationResponse, ApiError> {
    let (token, subject_id, decide) = translate(req, header_token)?;
    // A bound token is only good with a proof of its key for the request it rides on,
    // checked at the edge for the Authorization header only: a token taken from the body
    // (whatever header came beside it) has none.
    if header_token != Some(token.as_str()) && engine.bound_key(&token).is_some() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "dpop_required",
            "this task token is bound to a key: send it as `Authorization: DPoP <token>` with a DPoP proof, not in subject.properties.token",
        ));
    }
    if let Some(id) = subject_id {
        // The subject is the agent acting now: the actor of a delegated task.
        let sub = engine.verify_task_token(&token)?.actor().to_owned();
        if sub != id {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "subject_mismatch",
                "subject.id is not the subject of the task token",
            ));
        }
    }
    let (call, mut options) = decide.into_call(trace);
    options.point = point.map(str::to_owned);
    Ok(answer(engine.decide(&token, call, options).await?))
}

/// AuthZEN access evaluation: one call, the same decision (and audit event) as
/// `/v1/decide`.
#[utoipa::path(post, path = "/access/v1/evaluation", tag = "authzen", request_body = EvaluationRequest,
    security(("task_token" = [])),
    responses((status = 200, body = EvaluationResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn evaluation(
    State(engine): AppState,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EvaluationRequest>,
) -> Result<Json<EvaluationResponse>, ApiError> {
    let point = crate::edge::enforcement_point(&engine, &headers)?;
    evaluate_one(
        &engine,
        &req,
        bearer(&headers)?.as_deref(),
        crate::edge::traceparent(&headers),
        point.as_deref(),
    )
    .await
    .map(Json)
}

/// AuthZEN access evaluations: a batch, each item decided (and recorded) as one
/// `/v1/decide` call. An item that cannot be decided answers `false` with its error.
#[utoipa::path(post, path = "/access/v1/evaluations", tag = "authzen", request_body = EvaluationsRequest,
    security(("task_token" = [])),
    responses((status = 200, body = EvaluationsResponse)))]
pub async fn evaluations(
    State(engine): AppState,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EvaluationsRequest>,
) -> Result<Json<EvaluationsResponse>, ApiError> {
    if req.evaluations.is_empty() || req.evaluations.len() > MAX_EVALUATIONS {
        return Err(invalid(format!(
            "evaluations must hold 1 to {MAX_EVALUATIONS} items"
        )));
    }
    let point = crate::edge::enforcement_point(&engine, &headers)?;
    let header_token = bearer(&headers)?;
    let semantic = req.options.unwrap_or_default().evaluations_semantic;
    let mut items = Vec::with_capacity(req.evaluations.len());
    for item in req.evaluations {
        match (
            item.subject.or_else(|| req.subject.clone()),
            item.action.or_else(|| req.action.clone()),
            item.resource.or_else(|| req.resource.clone()),
        ) {
            (Some(subject), Some(action), Some(resource)) => items.push(EvaluationRequest {
                subject,
                action,
                resource,
                context: item.context.or_else(|| req.context.clone()),
            }),
            _ => {
                return Err(invalid(
                    "every evaluation needs a subject, an action and a resource (its own or the batch's)",
                ));
            }
        }
    }
    let token = header_token.as_deref();
    let trace = crate::edge::traceparent(&headers);
    let mut out = Vec::with_capacity(items.len());
    if semantic == Semantic::ExecuteAll {
        // Every item is decided in order (each runs to its audit append before the next
        // is polled) and their events share group commits: one fsync for the batch, not
        // one per item. The answer still waits for every event to be durable.
        let results = futures_util::future::join_all(
            items
                .iter()
                .map(|one| evaluate_one(&engine, one, token, trace, point.as_deref())),
        )
        .await;
        for r in results {
            out.push(item_answer(r)?);
        }
    } else {
        for one in &items {
            let r = item_answer(evaluate_one(&engine, one, token, trace, point.as_deref()).await)?;
            let stop = match semantic {
                Semantic::ExecuteAll => false,
                Semantic::DenyOnFirstDeny => !r.decision,
                Semantic::PermitOnFirstPermit => r.decision,
            };
            out.push(r);
            if stop {
                break;
            }
        }
    }
    Ok(Json(EvaluationsResponse { evaluations: out }))
}

/// One item's answer: an item that cannot be decided answers `false` with its error; the
/// audit trail failing is the batch's failure, never a silent item.
fn item_answer(r: Result<EvaluationResponse, ApiError>) -> Result<EvaluationResponse, ApiError> {
    match r {
        Ok(r) => Ok(r),
        Err(e)
            if matches!(
                e.code,
                "audit_unavailable"
                    | "store_unavailable"
                    | "audit_chain_broken"
                    | "store_cannot_commit"
            ) =>
        {
            Err(e)
        }
        Err(e) => Ok(EvaluationResponse {
            decision: false,
            context: json!({ "error": { "code": e.code, "message": e.message, "status": e.status.as_u16() } }),
        }),
    }
}

/// AuthZEN PDP metadata (§9).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AuthzenConfiguration {
    /// This PDP.
    pub policy_decision_point: String,
    /// Single evaluation.
    pub access_evaluation_endpoint: String,
    /// Batch evaluation.
    pub access_evaluations_endpoint: String,
}

/// AuthZEN discovery.
#[utoipa::path(get, path = "/.well-known/authzen-configuration", tag = "authzen",
    responses((status = 200, body = AuthzenConfiguration)))]
pub async fn configuration(State(engine): AppState) -> Json<AuthzenConfiguration> {
    let base = engine.issuer.trim_end_matches('/');
    Json(AuthzenConfiguration {
        policy_decision_point: base.to_owned(),
        access_evaluation_endpoint: format!("{base}/access/v1/evaluation"),
        access_evaluations_endpoint: format!("{base}/access/v1/evaluations"),
    })
}

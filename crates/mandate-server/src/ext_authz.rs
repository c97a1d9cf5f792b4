//! Envoy `ext_authz` v3 over gRPC: an Envoy (or any gateway speaking the protocol) asks
//! Mandate before forwarding a request, and gets the decision of the same decide path,
//! with the same audit event, as `/v1/decide`.
//!
//! Mapping, per route (Envoy `context_extensions`, set in the route's per-filter config):
//! `mandate_tool` (required), `mandate_action` (default from the method: GET/HEAD read,
//! POST/PUT/PATCH write, DELETE delete), `mandate_data_domain`, `mandate_destination`
//! (where the route sends data, when it does). The agent's task token is the request's `authorization`
//! bearer; the resource is the path; the arguments are `{method, query, body}` with a JSON
//! body parsed strictly (duplicate keys refused); `x-mandate-approval-id` names an
//! approval. On allow, Envoy is told to strip the agent's `authorization` header before
//! forwarding, so the upstream never sees the token.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use serde_json::{Map, Value, json};

use crate::api::{DecideRequest, decide_one};
use crate::engine::Engine;
use crate::error::ApiError;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    engine: Arc<Engine>,
}

impl ExtAuthz {
    /// A service deciding with `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "invalid_request",
        message,
    )
}

/// The task token and the call an Envoy check stands for.
fn translate(req: &CheckRequest) -> Result<(String, DecideRequest), ApiError> {
    let attrs = req
        .attributes
        .as_ref()
        .ok_or_else(|| invalid("the check carries no attributes"))?;
    let http = attrs
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .ok_or_else(|| invalid("the check carries no HTTP request"))?;
    let ext = &attrs.context_extensions;
    let token = http
        .headers
        .get("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
        .map(|(_, t)| t.trim().to_owned())
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "missing_token",
                "the request carries no `Authorization: Bearer <task token>`",
            )
        })?;
    let tool = ext.get("mandate_tool").ok_or_else(|| {
        invalid("the route names no tool: set the `mandate_tool` context extension")
    })?;
    let action = match ext.get("mandate_action") {
        Some(a) => a.clone(),
        None => match http.method.as_str() {
            "GET" | "HEAD" => "read".to_owned(),
            "POST" | "PUT" | "PATCH" => "write".to_owned(),
            "DELETE" => "delete".to_owned(),
            other => {
                return Err(invalid(format!(
                    "method {other:?} has no default action class: set `mandate_action`"
                )));
            }
        },
    };
    let (path, query) = http.path.split_once('?').unwrap_or((&http.path, ""));
    let body: Value = if http.body.is_empty() && http.raw_body.is_empty() {
        Value::Null
    } else {
        let bytes = if http.raw_body.is_empty() {
            http.body.as_bytes()
        } else {
            &http.raw_body
        };
        let args: mandate_core::CanonicalArgs = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("the request body is not acceptable JSON: {e}")))?;
        serde_json::to_value(&args).unwrap_or(Value::Null)
    };
    let mut call = Map::new();
    call.insert("tool".into(), json!(tool));
    call.insert("action".into(), json!(action));
    call.insert("resource".into(), json!(path));
    call.insert(
        "arguments".into(),
        json!({ "method": http.method, "query": query, "body": body }),
    );
    if let Some(d) = ext.get("mandate_destination") {
        call.insert("destination".into(), json!(d));
    }
    if let Some(d) = ext.get("mandate_data_domain") {
        call.insert("data_domain".into(), json!(d));
    }
    if let Some(a) = http.headers.get("x-mandate-approval-id") {
        call.insert("approval_id".into(), json!(a));
    }
    let decide = serde_json::from_value(Value::Object(call))
        .map_err(|e| invalid(format!("the route does not describe a call: {e}")))?;
    Ok((token, decide))
}

fn denied(status: u16, grpc: tonic::Status, body: &Value, approval: Option<&str>) -> CheckResponse {
    let mut http = DeniedHttpResponseBuilder::new();
    http.set_http_status(
        HttpStatusCode::try_from(i32::from(status)).unwrap_or(HttpStatusCode::Forbidden),
    )
    .add_header("content-type", "application/json", None, false)
    .set_body(body.to_string());
    if let Some(id) = approval {
        http.add_header("x-mandate-approval-id", id, None, false);
    }
    let mut r = CheckResponse::with_status(grpc);
    r.set_http_response(http);
    r
}

impl ExtAuthz {
    async fn decide(&self, req: &CheckRequest) -> CheckResponse {
        let outcome = match translate(req) {
            Ok((token, call)) => decide_one(&self.engine, &token, call).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(d) if d.outcome == mandate_policy::Outcome::Allow => {
                let mut ok = OkHttpResponseBuilder::new();
                // The upstream never sees the agent's token.
                ok.remove_header("authorization").add_header(
                    "x-mandate-decision-id",
                    d.decision_id.clone(),
                    None,
                    false,
                );
                let mut r = CheckResponse::with_status(tonic::Status::ok("allowed"));
                r.set_http_response(ok);
                r
            }
            Ok(d) => {
                let body = json!({ "error": {
                    "code": d.outcome.as_str(), "message": d.reasons.join("; "),
                    "details": { "decision_id": d.decision_id, "policies": d.policies, "approval": d.approval },
                }});
                denied(
                    403,
                    tonic::Status::permission_denied(d.outcome.as_str()),
                    &body,
                    d.approval.as_ref().map(|a| a.id.as_str()),
                )
            }
            Err(e) => {
                let body = json!({ "error": { "code": e.code, "message": e.message } });
                let grpc = match e.status.as_u16() {
                    401 => tonic::Status::unauthenticated(e.code),
                    503 => tonic::Status::unavailable(e.code),
                    400 | 422 => tonic::Status::invalid_argument(e.code),
                    _ => tonic::Status::permission_denied(e.code),
                };
                denied(e.status.as_u16(), grpc, &body, None)
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.decide(request.get_ref()).await))
    }
}

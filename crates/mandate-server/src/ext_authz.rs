//! Envoy `ext_authz` v3 over gRPC: an Envoy (or any gateway speaking the protocol) asks
//! Mandate before forwarding a request, and gets the decision of the same decide path,
//! with the same audit event, as `/v1/decide`.
//!
//! Mapping, per route (Envoy `context_extensions`, set in the route's per-filter config):
//! `mandate_tool` (required), `mandate_action` (default from the method: GET/HEAD read,
//! POST/PUT/PATCH write, DELETE delete), `mandate_data_domain`, `mandate_destination`
//! (where the route sends data, when it does). The agent's task token is the request's `authorization`
//! bearer (exactly one such header); the resource is the path; the arguments are
//! `{method, query, body}` with a JSON body parsed strictly (duplicate keys refused);
//! `x-mandate-approval-id` names an approval. A body Envoy did not send whole (not
//! buffered, or cut short) is refused, never decided as `null`. On allow, Envoy is told to strip the agent's `authorization` header before
//! forwarding, so the upstream never sees the token.

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use serde_json::{Map, Value, json};

use crate::edge::DecideRequest;
use crate::error::ApiError;
use mandate_engine::engine::Engine;

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

/// The values of a request header, from the merged map and from the raw list Envoy sends
/// instead with `encode_raw_headers`.
fn header_values<'a>(http: &'a HttpRequest, name: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = http
        .headers
        .get(name)
        .map(String::as_str)
        .into_iter()
        .collect();
    if let Some(map) = &http.header_map {
        for h in map
            .headers
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(name))
        {
            if h.raw_value.is_empty() {
                out.push(&h.value);
            } else {
                out.push(std::str::from_utf8(&h.raw_value).unwrap_or("\u{fffd}"));
            }
        }
    }
    out
}

/// The task token: exactly one `Authorization: Bearer <token>`. Envoy merges repeated
/// headers into one comma-separated value (a token never holds a comma), or lists them
/// apart with `encode_raw_headers`; either way two of them are refused, as on HTTP.
fn bearer(http: &HttpRequest) -> Result<Presented, ApiError> {
    let values = header_values(http, "authorization");
    let unauthorized = |code, message: &str| {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            code,
            message.to_owned(),
        )
    };
    let value = match values.as_slice() {
        [] => {
            return Err(unauthorized(
                "missing_token",
                "the request carries no `Authorization: Bearer <task token>`",
            ));
        }
        [one] if !one.contains(',') => *one,
        _ => {
            return Err(unauthorized(
                "invalid_authorization_header",
                "the request carries more than one Authorization header: send exactly one",
            ));
        }
    };
    value
        .split_once(' ')
        .filter(|(scheme, t)| {
            (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop"))
                && !t.trim().is_empty()
                && !t.trim().contains(' ')
        })
        .map(|(scheme, t)| Presented {
            dpop: scheme.eq_ignore_ascii_case("dpop"),
            token: t.trim().to_owned(),
        })
        .ok_or_else(|| {
            unauthorized(
                "invalid_authorization_header",
                "the Authorization header must be `Bearer <token>` or `DPoP <token>`",
            )
        })
}

/// The agent's token and the scheme it came under.
struct Presented {
    dpop: bool,
    token: String,
}

/// RFC 9449 for the request Envoy asks about: a bound token only under the `DPoP` scheme,
/// with a proof for the original request's method and URL.
fn sender(engine: &Engine, http: &HttpRequest, p: &Presented) -> Result<(), ApiError> {
    let unauthorized = |code, message: &str| {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            code,
            message.to_owned(),
        )
    };
    if !p.dpop {
        return match engine.bound_key(&p.token) {
            Some(_) => Err(unauthorized(
                "dpop_required",
                "this task token is bound to a key: send it as `Authorization: DPoP <token>` with a DPoP proof (RFC 9449)",
            )),
            None => Ok(()),
        };
    }
    let proofs = header_values(http, "dpop");
    let [proof] = proofs.as_slice() else {
        return Err(unauthorized(
            "dpop_proof_missing",
            "a token sent under the DPoP scheme needs exactly one DPoP proof header",
        ));
    };
    let path = http
        .path
        .split_once('?')
        .map_or(http.path.as_str(), |(p, _)| p);
    let scheme = if http.scheme.is_empty() {
        "https"
    } else {
        http.scheme.as_str()
    };
    let url = format!("{scheme}://{}{path}", http.host);
    engine
        .check_dpop(&p.token, proof, &http.method, &url)
        .map_err(ApiError::from)
}

/// The body as policy sees it: `null` only when the request has none. A body Envoy did
/// not send whole (not buffered, or cut at `max_request_bytes`), two bodies that differ,
/// or one that is not strict JSON is refused: deciding on `null` or on a part would allow
/// a call nobody decided on.
fn body_of(http: &HttpRequest) -> Result<Value, ApiError> {
    let partial = header_values(http, "x-envoy-auth-partial-body")
        .iter()
        .any(|v| v.trim().eq_ignore_ascii_case("true"));
    if partial {
        return Err(invalid(
            "Envoy sent only part of the request body: raise `max_request_bytes` or refuse partial messages (`allow_partial_message: false`)",
        ));
    }
    let bytes = match (http.body.is_empty(), http.raw_body.is_empty()) {
        (true, true) => {
            let declared = header_values(http, "content-length")
                .iter()
                .any(|v| v.trim() != "0")
                || !header_values(http, "transfer-encoding").is_empty()
                || http.size > 0;
            if declared {
                return Err(invalid(
                    "the request has a body but the check carries none: configure `with_request_body` so Mandate decides on what is forwarded",
                ));
            }
            return Ok(Value::Null);
        }
        (false, true) => http.body.as_bytes(),
        (true, false) => http.raw_body.as_slice(),
        (false, false) if http.body.as_bytes() == http.raw_body.as_slice() => http.body.as_bytes(),
        (false, false) => {
            return Err(invalid(
                "the check carries two different bodies (`body` and `raw_body`)",
            ));
        }
    };
    let text =
        std::str::from_utf8(bytes).map_err(|_| invalid("the request body is not UTF-8 JSON"))?;
    mandate_core::CanonicalArgs::parse(text)
        .map(|args| args.value().clone())
        .map_err(|e| invalid(format!("the request body is not acceptable JSON: {e}")))
}

/// The task token and the call an Envoy check stands for.
fn translate(engine: &Engine, req: &CheckRequest) -> Result<(String, DecideRequest), ApiError> {
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
    let presented = bearer(http)?;
    sender(engine, http, &presented)?;
    let token = presented.token;
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
    let body = body_of(http)?;
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
    /// The enforcement point the gRPC call comes from (`x-mandate-point-token` metadata),
    /// checked as for AuthZEN: required once any point is configured.
    fn point(&self, md: &tonic::metadata::MetadataMap) -> Result<Option<String>, ApiError> {
        let mut headers = axum::http::HeaderMap::new();
        for v in md.get_all(crate::edge::POINT_HEADER).iter() {
            if let Ok(v) = axum::http::HeaderValue::from_bytes(v.as_encoded_bytes()) {
                headers.append(crate::edge::POINT_HEADER, v);
            }
        }
        crate::edge::enforcement_point(&self.engine, &headers)
    }

    async fn decide(
        &self,
        req: &CheckRequest,
        point: Result<Option<String>, ApiError>,
    ) -> CheckResponse {
        let outcome = match point.and_then(|p| translate(&self.engine, req).map(|t| (p, t))) {
            Ok((point, (token, call))) => {
                let trace = req
                    .attributes
                    .as_ref()
                    .and_then(|a| a.request.as_ref())
                    .and_then(|r| r.http.as_ref())
                    .and_then(|h| h.headers.get("traceparent"))
                    .and_then(|v| mandate_core::TraceParent::parse(v));
                let (call, mut options) = call.into_call(trace);
                options.point = point;
                self.engine
                    .decide(&token, call, options)
                    .await
                    .map_err(ApiError::from)
            }
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
        let point = self.point(request.metadata());
        Ok(tonic::Response::new(
            self.decide(request.get_ref(), point).await,
        ))
    }
}

//! The HTTP gateway (enforcement point): agents call `/gw/<upstream>/<path>` with their
//! task token; the request is canonicalised, mapped to a tool by the route table, decided
//! on the shared decide path, and only then forwarded, exactly as decided, with the
//! upstream's credential injected and the agent's token left behind. The response streams
//! back with any echo of the credential redacted; bytes returned enter the task's history.

mod relay;

pub mod vault;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use mandate_core::{CallSpan, CanonicalArgs};
use mandate_gateway::ratelimit::Buckets;
use mandate_gateway::routes;
use mandate_gateway::{
    CanonicalPath, CanonicalQuery, CredentialKind, GatewayConfig, Redactor, SecretValue, Upstream,
    VaultRef,
};
use mandate_policy::Outcome;
use serde_json::{Map, Value, json};

use crate::edge::DecideRequest;
use crate::error::ApiError;
use mandate_engine::engine::{Engine, lock};

/// Where the gateway is mounted.
pub const PREFIX: &str = "/gw/";

/// Request headers forwarded to every upstream (besides the ones an upstream adds). The
/// body's `content-type` is forwarded as decided, separately.
const FORWARDED: &[&str] = &[
    "accept",
    "accept-language",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "cache-control",
    "user-agent",
    "x-request-id",
];

/// Forwarded headers that change what a call does, so policy sees them (and an approval is
/// bound to them) in `arguments.headers`, besides each upstream's own `forward_headers`.
const DECIDED_HEADERS: &[&str] = &[
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
];

/// Response headers never passed back (hop-by-hop, and lengths the redactor may change).
const DROPPED_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The gateway: its configuration, one client per upstream, Vault, and the rate limits.
pub struct Gateway {
    engine: Arc<Engine>,
    config: Arc<GatewayConfig>,
    clients: HashMap<String, reqwest::Client>,
    vault: Option<vault::Vault>,
    agent_buckets: Mutex<Buckets>,
    task_buckets: Mutex<Buckets>,
    in_flight: Arc<tokio::sync::Semaphore>,
    agent_in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// One agent's call in flight: released when the response has been relayed.
pub(crate) struct AgentSlot {
    agent: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    _global: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for AgentSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.agent);
            }
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field(
                "upstreams",
                &self.config.upstreams.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn gw_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

impl Gateway {
    /// Builds the gateway; refuses configurations whose upstream addresses the SSRF guard
    /// would refuse, and `vault://` credentials without a reachable token.
    pub fn new(
        engine: Arc<Engine>,
        config: Arc<GatewayConfig>,
        vault_token_env: Option<SecretValue>,
    ) -> Result<Self, String> {
        let l = &config.limits;
        let mut clients = HashMap::new();
        for (name, u) in &config.upstreams {
            crate::edge::check_literal(&u.base, u.allow_private)
                .map_err(|e| format!("upstream {name}: {e}"))?;
            if let Some(h) = u.credential.as_ref().and_then(|c| c.header.as_ref()) {
                let h = h.to_ascii_lowercase();
                if FORWARDED.contains(&h.as_str())
                    || u.forward_headers.contains(&h)
                    || h == "content-type"
                {
                    return Err(format!(
                        "upstream {name}: the credential header {h:?} is also a forwarded header: the agent could set it"
                    ));
                }
            }
            clients.insert(
                name.clone(),
                crate::edge::client(
                    u.allow_private,
                    Duration::from_secs(l.connect_timeout_secs),
                    Duration::from_secs(l.upstream_timeout_secs),
                )?,
            );
        }
        let vault = config
            .vault
            .as_ref()
            .map(|v| vault::Vault::new(v, vault_token_env))
            .transpose()?;
        Ok(Self {
            engine,
            clients,
            vault,
            agent_buckets: Mutex::new(Buckets::new(l.agent_rate_per_sec, l.agent_burst)),
            task_buckets: Mutex::new(Buckets::new(l.task_rate_per_sec, l.task_burst)),
            in_flight: Arc::new(tokio::sync::Semaphore::new(l.max_in_flight)),
            agent_in_flight: Arc::default(),
            config,
        })
    }

    /// The gateway's routes, to merge into the server's router.
    pub fn router(self: Arc<Self>) -> Router {
        if self.vault.is_some() {
            // Vault values live no longer than their task: drop those of ended tasks.
            let weak = Arc::downgrade(&self);
            #[expect(
                clippy::disallowed_methods,
                reason = "one sweeper for the gateway life; it ends when the gateway is dropped (weak reference)"
            )]
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(gw) = weak.upgrade() else { return };
                    if let Some(v) = &gw.vault {
                        let engine = &gw.engine;
                        v.retain_live(
                            |t| engine.live_get(t).is_some_and(|t| !t.is_ended()),
                            engine.clock.now_ms(),
                        );
                    }
                }
            });
        }
        Router::new()
            .route("/gw/{*rest}", axum::routing::any(proxy))
            .with_state(self)
    }

    /// A slot for one of `agent`'s calls, or 429 when it has too many in flight.
    fn agent_slot(
        &self,
        agent: &str,
        global: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<AgentSlot, ApiError> {
        let max = self.config.limits.max_in_flight_per_agent;
        let mut counts = lock(&self.agent_in_flight);
        let n = counts.entry(agent.to_owned()).or_insert(0);
        if *n >= max {
            return Err(gw_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_in_flight",
                format!("this agent already has {max} calls in flight through the gateway"),
            ));
        }
        *n += 1;
        Ok(AgentSlot {
            agent: agent.to_owned(),
            counts: Arc::clone(&self.agent_in_flight),
            _global: global,
        })
    }

    /// Takes a token from the agent's and the task's buckets.
    fn rate_limit(&self, agent: &str, task: &str) -> Result<(), ApiError> {
        let now = self.engine.clock.now_ms();
        let over = |who: &str, retry_ms: u64| {
            gw_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many calls from this {who}: retry in {retry_ms} ms"),
            )
            .with_details(json!({ "retry_after_ms": retry_ms, "limit": who }))
        };
        lock(&self.agent_buckets)
            .take(agent, now)
            .map_err(|ms| over("agent", ms))?;
        lock(&self.task_buckets)
            .take(task, now)
            .map_err(|ms| over("task", ms))
    }

    async fn credential(
        &self,
        up: &Upstream,
        task: &mandate_engine::engine::LiveTask,
    ) -> Result<Option<(CredentialKind, Option<String>, SecretValue)>, ApiError> {
        let Some(c) = &up.credential else {
            return Ok(None);
        };
        let unavailable = |why: String| {
            tracing::error!(upstream = %up.name, secret = %c.secret, error = %why, "credential unavailable");
            gw_error(
                StatusCode::BAD_GATEWAY,
                "credential_unavailable",
                format!(
                    "the credential for upstream {} is unavailable; nothing was forwarded",
                    up.name
                ),
            )
        };
        let value = if c.secret.starts_with("vault://") {
            let r = VaultRef::parse(&c.secret).map_err(unavailable)?;
            let v = self
                .vault
                .as_ref()
                .ok_or_else(|| unavailable("no vault configured".into()))?;
            v.read(&r, &task.id, task.expires_at(), self.engine.clock.now_ms())
                .await
                .map_err(unavailable)?
        } else {
            self.engine
                .secrets
                .open_value(&c.secret)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| unavailable(format!("no secret named {:?}", c.secret)))?
        };
        if value.expose().len() < mandate_gateway::redact::MIN_SECRET_LEN {
            return Err(unavailable(format!(
                "the secret is shorter than {} bytes, too short to redact reliably",
                mandate_gateway::redact::MIN_SECRET_LEN
            )));
        }
        Ok(Some((c.kind, c.header.clone(), value)))
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn mime_of(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn invalid_body(message: impl Into<String>) -> ApiError {
    gw_error(StatusCode::BAD_REQUEST, "invalid_body", message)
}

/// How a body is decided (its value in `arguments.body`) and what is forwarded. A body
/// that is JSON is decided and forwarded as canonical JSON whatever its content type says
/// (an upstream that parses JSON regardless must not act on fields policy never saw); a
/// form is decided as its fields and forwarded in canonical form; anything else is decided
/// by digest and forwarded byte for byte.
fn body_of(bytes: bytes::Bytes, mime: Option<&str>) -> Result<(Value, bytes::Bytes), ApiError> {
    if bytes.is_empty() {
        return Ok((Value::Null, bytes));
    }
    let text = std::str::from_utf8(&bytes).ok();
    let declared_json = mime.is_some_and(|m| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    });
    let is_json = text.is_some_and(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok());
    if declared_json || is_json {
        let text = text.ok_or_else(|| invalid_body("the JSON body is not UTF-8"))?;
        let body = CanonicalArgs::parse(text).map_err(|e| invalid_body(e.to_string()))?;
        let canonical = bytes::Bytes::from(body.canonical().to_owned());
        return Ok((body.value().clone(), canonical));
    }
    if mime == Some("application/x-www-form-urlencoded") {
        let text = text.ok_or_else(|| invalid_body("the form body is not UTF-8"))?;
        let form = CanonicalQuery::parse(text).map_err(|e| invalid_body(e.to_string()))?;
        let canonical = bytes::Bytes::from(form.to_string());
        return Ok((form.to_json(), canonical));
    }
    Ok((
        json!({ "sha256": mandate_core::sha256_hex(&bytes), "length": bytes.len() }),
        bytes,
    ))
}

/// Headers on their way upstream.
type Headers = Vec<(HeaderName, HeaderValue)>;

/// The request headers forwarded, each at most once (a repeated one could be read two
/// ways), and the decided ones as policy sees them.
fn forwarded_headers(
    headers: &HeaderMap,
    up: &Upstream,
) -> Result<(Headers, Map<String, Value>), ApiError> {
    let mut out = Vec::new();
    let mut decided = Map::new();
    for name in headers.keys() {
        let n = name.as_str();
        // Mandate sends its own context on (the call's span), and the agent's is no part
        // of the decided call: a trace id must not change what an approval binds.
        if n == "traceparent" {
            continue;
        }
        let extra = up.forward_headers.iter().any(|h| h == n);
        if !(n == "content-type" || FORWARDED.contains(&n) || extra) {
            continue;
        }
        let mut values = headers.get_all(name).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return Err(gw_error(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                format!("header {n} is repeated; send it once"),
            ));
        };
        let text = v.to_str().map_err(|_| {
            gw_error(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                format!("header {n} is not visible ASCII"),
            )
        })?;
        if extra || DECIDED_HEADERS.contains(&n) {
            decided.insert(n.to_owned(), Value::String(text.to_owned()));
        }
        out.push((name.clone(), v.clone()));
    }
    Ok((out, decided))
}

/// What the request stands for, once canonical: the call to decide and what to forward.
struct Parsed<'a> {
    upstream: &'a Upstream,
    route: &'a mandate_gateway::Route,
    path: CanonicalPath,
    query: CanonicalQuery,
    args: Map<String, Value>,
}

fn parse<'a>(
    config: &'a GatewayConfig,
    method: &Method,
    raw_path: &str,
    raw_query: Option<&str>,
) -> Result<Parsed<'a>, ApiError> {
    let rest = raw_path.strip_prefix(PREFIX).unwrap_or_default();
    let (name, sub) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let upstream = config.upstreams.get(name).ok_or_else(|| {
        gw_error(
            StatusCode::NOT_FOUND,
            "unknown_upstream",
            format!("no upstream named {name:?} is configured"),
        )
    })?;
    let path = CanonicalPath::parse(sub)
        .map_err(|e| gw_error(StatusCode::BAD_REQUEST, "invalid_path", e.to_string()))?;
    let query = CanonicalQuery::parse(raw_query.unwrap_or_default())
        .map_err(|e| gw_error(StatusCode::BAD_REQUEST, "invalid_query", e.to_string()))?;
    let (route, captured) = routes::find(&upstream.routes, method.as_str(), &path).ok_or_else(|| {
        gw_error(
            StatusCode::NOT_FOUND,
            "no_route",
            format!(
                "{method} {path} is not a route of upstream {}: only configured routes are tools",
                upstream.name
            ),
        )
    })?;
    let mut args = Map::new();
    args.insert("method".into(), json!(method.as_str()));
    args.insert(
        "path".into(),
        Value::Object(
            captured
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        ),
    );
    args.insert("query".into(), query.to_json());
    Ok(Parsed {
        upstream,
        route,
        path,
        query,
        args,
    })
}

/// `/gw/<upstream>/<path>`: decide, then forward exactly what was decided.
async fn proxy(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    match handle(&gw, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(gw: &Arc<Gateway>, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    let permit = Arc::clone(&gw.in_flight).try_acquire_owned().map_err(|_| {
        gw_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway_busy",
            "too many calls in flight through the gateway; retry shortly",
        )
    })?;
    let (parts, body) = req.into_parts();
    let token = crate::edge::bearer_token(&parts.headers)?;
    let parsed = parse(
        &gw.config,
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
    )?;
    // Rate limits apply to a verified identity only; a bad token is refused (and
    // audited) by the decide path below.
    let started_us = gw.engine.clock.now_us();
    let (slot, span) = match gw.engine.verify_task_token(&token) {
        Ok(claims) => {
            gw.rate_limit(claims.actor(), &claims.task_id)?;
            let span = CallSpan::open(
                crate::edge::traceparent(&parts.headers),
                &claims.task_id,
                &mandate_core::random_id("span").unwrap_or_default(),
                started_us,
            );
            (Some(gw.agent_slot(claims.actor(), permit)?), Some(span))
        }
        Err(_) => (None, None),
    };
    let (forward_headers, decided_headers) = forwarded_headers(&parts.headers, parsed.upstream)?;
    let limits = &gw.config.limits;
    let declared_len = header_str(&parts.headers, "content-length")
        .map(|v| v.parse::<u64>())
        .transpose()
        .map_err(|_| {
            gw_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "bad content-length",
            )
        })?;
    let too_large = || {
        gw_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "request bodies are at most {} bytes",
                limits.max_request_body_bytes
            ),
        )
    };
    if declared_len.is_some_and(|n| n > limits.max_request_body_bytes as u64) {
        return Err(too_large());
    }
    let bytes = tokio::time::timeout(
        Duration::from_secs(limits.request_body_timeout_secs),
        axum::body::to_bytes(body, limits.max_request_body_bytes),
    )
    .await
    .map_err(|_| {
        gw_error(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body took too long",
        )
    })?
    .map_err(|_| too_large())?;
    let mime = header_str(&parts.headers, "content-type").map(mime_of);
    let Parsed {
        upstream: up,
        route,
        path,
        query,
        mut args,
    } = parsed;
    let (body, forward_body) = body_of(bytes, mime.as_deref())?;
    args.insert("body".into(), body);
    args.insert("content_type".into(), json!(mime));
    args.insert("headers".into(), Value::Object(decided_headers));
    let approval_id = header_str(&parts.headers, "x-mandate-approval-id").map(str::to_owned);
    let wait_secs = header_str(&parts.headers, "x-mandate-approval-wait")
        .map(str::parse::<u64>)
        .transpose()
        .map_err(|_| {
            gw_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "x-mandate-approval-wait is a number of seconds",
            )
        })?;
    let call = DecideRequest {
        tool: route.tool.clone(),
        action: route.action,
        resource: Some(path.to_string()),
        arguments: Some(CanonicalArgs::from_value(Value::Object(args))),
        destination: Some(up.destination.clone()),
        data_domain: route.data_domain.clone(),
        sensitivity: route.sensitivity,
        approval_id,
        wait_secs,
    };
    let (call, options) = call.into_call(span.as_ref().map(CallSpan::child_context));
    let d = gw
        .engine
        .decide(&token, call, options)
        .await
        .map_err(ApiError::from)?;
    if d.outcome != Outcome::Allow {
        let (code, status) = match d.outcome {
            Outcome::ApprovalRequired => ("approval_required", StatusCode::FORBIDDEN),
            _ => ("denied", StatusCode::FORBIDDEN),
        };
        let approval = d.approval.as_ref().map(|a| a.id.clone());
        let mut res = gw_error(status, code, d.reasons.join("; "))
            .with_details(json!({
                "decision_id": d.decision_id, "policies": d.policies,
                "bundle_version": d.bundle_version, "approval": d.approval,
            }))
            .into_response();
        if let Some(id) = approval.and_then(|a| HeaderValue::from_str(&a).ok()) {
            res.headers_mut().insert("x-mandate-approval-id", id);
        }
        return Ok(res);
    }
    let task = gw.engine.live_get(&d.task_id).ok_or_else(|| {
        gw_error(
            StatusCode::FORBIDDEN,
            "task_not_active",
            "the task ended as the call was decided",
        )
    })?;
    let credential = gw.credential(up, &task).await?;
    let mut redact_forms: Vec<SecretValue> = Vec::new();
    let mut url = up.base.clone();
    url.set_path(&path.under(up.base.path()));
    url.set_query((!query.is_empty()).then(|| query.to_string()).as_deref());
    let client = gw
        .clients
        .get(&up.name)
        .ok_or_else(|| ApiError::internal("no client for upstream"))?;
    let mut out = client.request(parts.method.clone(), url.clone());
    for (name, value) in forward_headers {
        out = out.header(name, value);
    }
    // Mandate's own context goes on: the upstream's spans hang under the call.
    if let Some(span) = &span {
        out = out.header("traceparent", span.child_context().header_value());
    }
    if let Some((kind, header_name, value)) = credential {
        let (name, v) = match kind {
            CredentialKind::Bearer => (
                header::AUTHORIZATION.to_string(),
                [b"Bearer ".as_slice(), value.expose()].concat(),
            ),
            CredentialKind::Header => (header_name.unwrap_or_default(), value.expose().to_vec()),
            CredentialKind::Basic => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(value.expose());
                // The password alone is redacted too, wherever it is echoed.
                if let Some(p) = value
                    .expose()
                    .iter()
                    .position(|b| *b == b':')
                    .and_then(|i| value.expose().get(i + 1..))
                    .filter(|p| !p.is_empty())
                {
                    redact_forms.push(SecretValue::new(p.to_vec()));
                }
                (
                    header::AUTHORIZATION.to_string(),
                    format!("Basic {b64}").into_bytes(),
                )
            }
        };
        let mut hv = HeaderValue::from_bytes(&v).map_err(|_| {
            gw_error(
                StatusCode::BAD_GATEWAY,
                "credential_unavailable",
                "the stored credential is not a valid header value",
            )
        })?;
        hv.set_sensitive(true);
        out = out.header(name, hv);
        redact_forms.push(value);
    }
    if let Some(v) = &gw.vault {
        redact_forms.push(v.token().clone());
    }
    // An encoded answer would hide an echoed credential from the redactor.
    out = out
        .header(header::ACCEPT_ENCODING, "identity")
        .header("x-mandate-decision-id", d.decision_id.as_str());
    let change = relay::Change {
        method: parts.method.to_string(),
        target: match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        },
        request_digest: (!forward_body.is_empty())
            .then(|| format!("sha256:{}", mandate_core::sha256_hex(&forward_body))),
        location: None,
        etag: None,
    };
    if !forward_body.is_empty() {
        out = out.body(forward_body);
    }
    let mut relay_ctx = relay::Context {
        engine: Arc::clone(&gw.engine),
        task: Arc::clone(&task),
        decision_id: d.decision_id.clone(),
        upstream: up.name.clone(),
        tool: route.tool.to_string(),
        untrusted: up.untrusted,
        started,
        span,
        change,
        _slot: slot,
    };
    let res = tokio::time::timeout(
        Duration::from_secs(limits.upstream_timeout_secs),
        out.send(),
    )
    .await;
    let res = match res {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let refused = format!("{e:?}").contains("refused: it resolves to");
            let (code, msg) = if refused {
                (
                    "destination_refused",
                    "the upstream's address is refused by the SSRF guard",
                )
            } else {
                ("upstream_unreachable", "the upstream could not be reached")
            };
            relay_ctx.finish_without_response(code);
            return Err(gw_error(StatusCode::BAD_GATEWAY, code, msg));
        }
        Err(_) => {
            relay_ctx.finish_without_response("upstream_timeout");
            return Err(gw_error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream did not answer in time",
            ));
        }
    };
    // Untrusted content reaches the agent only once the task's taint is durable: a
    // restart must not forget that the task has read it.
    if up.untrusted
        && let Err(e) = gw.engine.taint(&task, &up.name).await
    {
        relay_ctx.finish_without_response("audit_unavailable");
        return Err(e.into());
    }
    let forms: Vec<&[u8]> = redact_forms.iter().map(SecretValue::expose).collect();
    let redactor = Redactor::new(
        forms
            .iter()
            .copied()
            .filter(|f| f.len() >= mandate_gateway::redact::MIN_SECRET_LEN),
    );
    let status = res.status();
    // Only plain bytes are relayed: a coding would hide an echoed credential from the
    // redactor, and nothing of such an answer is forwarded.
    if let Err(why) = relay::plain_body(res.headers(), !redactor.is_empty()) {
        relay_ctx.finish_without_response("upstream_encoded_response");
        return Err(gw_error(
            StatusCode::BAD_GATEWAY,
            "upstream_encoded_response",
            why.message(),
        ));
    }
    let mut headers = HeaderMap::new();
    let mut header_redactor = redactor.clone();
    let mut redacted_header = false;
    let connection_named: Vec<String> = res
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in res.headers() {
        let n = name.as_str();
        // Only Mandate speaks `x-mandate-*` to the agent.
        if DROPPED_RESPONSE.contains(&n)
            || n.starts_with("x-mandate-")
            || connection_named.iter().any(|c| c == n)
        {
            continue;
        }
        let clean = header_redactor.redact_all(value.as_bytes());
        let value = if clean.as_slice() == value.as_bytes() {
            value.clone()
        } else {
            redacted_header = true;
            HeaderValue::from_bytes(&clean).unwrap_or(HeaderValue::from_static("[REDACTED]"))
        };
        headers.append(HeaderName::from(name), value);
    }
    headers.insert(
        "x-mandate-decision-id",
        HeaderValue::from_str(&d.decision_id).unwrap_or(HeaderValue::from_static("")),
    );
    relay_ctx.change.answered(&headers);
    let body = relay::Relay::new(
        res.bytes_stream(),
        redactor,
        limits.max_response_bytes,
        Duration::from_secs(limits.max_response_secs),
        relay_ctx.with_status(status.as_u16(), redacted_header),
    );
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

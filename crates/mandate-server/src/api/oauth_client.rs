//! Mandate's standard OAuth face for workloads: RFC 8414 authorization-server metadata, the
//! `client_credentials` grant with an RFC 7523 client assertion (a task start as a token
//! request), RFC 7662 introspection and RFC 7009 revocation.
//!
//! The client is the workload itself, authenticated by its assertion: a token from a
//! trusted OIDC issuer or SPIFFE trust domain, or Mandate's own JWT-SVID. No client secret
//! exists. The task's intent travels as an RFC 9396 `authorization_details` entry of type
//! `mandate_task` (the shape token exchange uses), or as `scope` (`tool:…`, `action:…`,
//! `data:…`, `dest:…`).

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mandate_core::{ActionClass, DataDomain, Destination, RequestedScope, TaskState, ToolName};
use mandate_engine::tasks::{Started, TaskStart};
use mandate_engine::{Engine, Kind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::oauth::{
    CLIENT_CREDENTIALS, OAuthError, Refused, TOKEN_EXCHANGE, is_form, no_store, parameters, refuse,
    required, sub_task,
};
use crate::error::ApiError;

/// `client_assertion_type` of an RFC 7523 client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Purpose recorded for a task started from `scope` alone.
const SCOPE_PURPOSE: &str = "OAuth client_credentials request";

/// The form of a `client_credentials` token request (`application/x-www-form-urlencoded`).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(
    dead_code,
    reason = "documents the form; the handler reads it parameter by parameter"
)]
pub struct ClientCredentialsForm {
    /// `client_credentials`.
    grant_type: String,
    /// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.
    client_assertion_type: String,
    /// The workload's token: from a trusted OIDC issuer or SPIFFE trust domain, or a
    /// JWT-SVID Mandate issued.
    client_assertion: String,
    /// Optional; when given, the agent's name or SPIFFE ID.
    client_id: Option<String>,
    /// JSON array with one `{"type": "mandate_task", "purpose", "tools", "actions",
    /// "data_domains", "destinations", "ttl_secs"}` entry.
    authorization_details: Option<String>,
    /// The simpler form: space-separated `tool:<tool>`, `action:<class>`, `data:<domain>`,
    /// `dest:<destination>`.
    scope: Option<String>,
    /// RFC 8707: a resource this server protects (an MCP server at `/mcp/<name>`, or the
    /// server itself).
    resource: Option<String>,
}

/// A task token issued for a `client_credentials` request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientCredentialsResponse {
    /// The task token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until the task (and its token) expires.
    pub expires_in: i64,
    /// The granted scope, when the request used `scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The `mandate_task` entry as granted (RFC 9396 §7).
    #[schema(value_type = Vec<Object>)]
    pub authorization_details: Vec<serde_json::Value>,
    /// The task, its grant and the decision.
    pub mandate: Started,
}

fn invalid_client(e: &mandate_engine::Error) -> Refused {
    let (status, error) = match e.kind {
        Kind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        Kind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        // RFC 6749 §5.2: client authentication failed.
        _ => (StatusCode::UNAUTHORIZED, "invalid_client"),
    };
    Refused {
        status,
        body: Box::new(OAuthError {
            error: error.to_owned(),
            error_description: e.message.clone(),
            code: e.code.to_owned(),
            details: e.details.clone(),
        }),
    }
}

/// The `iss` of a compact JWS, unverified (only to tell Mandate's own tokens apart).
fn issuer_of(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// The identity token of the workload an assertion authenticates: Mandate's own JWT-SVID
/// as it is, an external token through attestation (recorded like `POST /v1/attest`).
async fn client_identity(engine: &Engine, assertion: &str) -> Result<String, Refused> {
    if issuer_of(assertion).as_deref() == Some(engine.issuer.as_str()) {
        engine
            .verify_identity(assertion)
            .map_err(|e| invalid_client(&e.into()))?;
        return Ok(assertion.to_owned());
    }
    engine
        .attest_assertion(assertion)
        .await
        .map(|a| a.identity_token)
        .map_err(|e| invalid_client(&e))
}

/// The task a request asks for: from `authorization_details`, or from `scope`. For an MCP
/// server named by `resource`, what `scope` leaves out is filled in: the server's known
/// tools ([`Engine::mcp_server_tools`]) and the `read` action; with neither, that is the
/// whole task (what a standard MCP client asks for when it names no scope).
fn requested(
    engine: &Engine,
    p: &BTreeMap<String, String>,
    server: Option<&str>,
) -> Result<(TaskStart, bool), Refused> {
    let start = |purpose: String, scope| TaskStart {
        purpose,
        scope,
        ttl_secs: None,
        bind_jkt: None,
    };
    let for_server = |server: &str| format!("{SCOPE_PURPOSE} for MCP server {server}");
    match (p.get("authorization_details"), p.get("scope"), server) {
        (Some(_), Some(_), _) => Err(refuse(
            "invalid_request",
            "invalid_request",
            "send the task either as `authorization_details` or as `scope`, not both",
        )),
        (Some(_), None, _) => {
            let sub = sub_task(p)?;
            Ok((
                TaskStart {
                    ttl_secs: sub.ttl_secs,
                    ..start(sub.purpose.clone(), sub.scope())
                },
                false,
            ))
        }
        (None, Some(scope), server) => {
            let mut s = parse_scope(scope)?;
            let purpose = match server {
                Some(server) => {
                    fill_for_server(engine, server, &mut s);
                    for_server(server)
                }
                None => SCOPE_PURPOSE.to_owned(),
            };
            check_scope(&s)?;
            Ok((start(purpose, s), true))
        }
        (None, None, Some(server)) => {
            let mut s = RequestedScope {
                tools: Vec::new(),
                actions: Vec::new(),
                data_domains: Vec::new(),
                destinations: Vec::new(),
            };
            fill_for_server(engine, server, &mut s);
            check_scope(&s)?;
            Ok((start(for_server(server), s), true))
        }
        (None, None, None) => Err(refuse(
            "invalid_request",
            "missing_parameter",
            "name the task: `authorization_details` (one `mandate_task` entry), `scope`, or an MCP server as `resource`",
        )),
    }
}

fn fill_for_server(engine: &Engine, server: &str, s: &mut RequestedScope) {
    if s.tools.is_empty() {
        s.tools = engine.mcp_server_tools(server);
    }
    if s.actions.is_empty() {
        s.actions.push(ActionClass::Read);
    }
}

fn check_scope(s: &RequestedScope) -> Result<(), Refused> {
    if s.tools.is_empty() || s.actions.is_empty() {
        return Err(refuse(
            "invalid_scope",
            "invalid_scope",
            "scope names at least one `tool:<tool>` and one `action:<class>` (for an MCP server as `resource`, its known tools and `read` are the default; none of its tools is known yet)",
        ));
    }
    Ok(())
}

/// `scope`: space-separated `tool:<tool>`, `action:<class>`, `data:<domain>`,
/// `dest:<destination>`; at least one tool and one action.
pub(crate) fn parse_scope(scope: &str) -> Result<RequestedScope, Refused> {
    let bad = |why: String| refuse("invalid_scope", "invalid_scope", why);
    let mut s = RequestedScope {
        tools: Vec::new(),
        actions: Vec::new(),
        data_domains: Vec::new(),
        destinations: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for item in scope.split(' ').filter(|i| !i.is_empty()) {
        if !seen.insert(item) {
            continue;
        }
        let (kind, value) = item
            .split_once(':')
            .ok_or_else(|| bad(format!("scope value {item:?} is not `tool:`, `action:`, `data:` or `dest:` followed by a name")))?;
        let e = |e: &dyn std::fmt::Display| bad(format!("scope value {item:?}: {e}"));
        match kind {
            "tool" => s.tools.push(ToolName::parse(value).map_err(|x| e(&x))?),
            "action" => s
                .actions
                .push(value.parse::<ActionClass>().map_err(|x| e(&x))?),
            "data" => s
                .data_domains
                .push(DataDomain::parse(value).map_err(|x| e(&x))?),
            "dest" => s
                .destinations
                .push(Destination::parse(value).map_err(|x| e(&x))?),
            _ => return Err(bad(format!("scope value {item:?}: unknown kind {kind:?}"))),
        }
    }
    Ok(s)
}

/// RFC 8707 `resource`: one of the resources this server protects. Returns the MCP server
/// it names, if it names one.
fn check_resource(
    engine: &Engine,
    p: &BTreeMap<String, String>,
) -> Result<Option<String>, Refused> {
    let Some(resource) = p.get("resource") else {
        return Ok(None);
    };
    if *resource == engine.config.task_audience {
        return Ok(None);
    }
    let issuer = engine.issuer.trim_end_matches('/');
    let refused = || {
        refuse(
            "invalid_target",
            "invalid_target",
            format!(
                "resource {resource:?} is not protected by this server: use {issuer}/mcp/<server> or {issuer}"
            ),
        )
    };
    // This server under any name it answers to (its issuer's host, or loopback).
    engine.same_server(resource).ok_or_else(refused)?;
    let url = url::Url::parse(resource).map_err(|_| refused())?;
    // RFC 8707 §2: no fragment; no query either, as none of ours has one.
    if url.fragment().is_some() || url.query().is_some() {
        return Err(refused());
    }
    let path = url.path();
    if path.is_empty() || path == "/" {
        return Ok(None);
    }
    let name = path
        .strip_prefix("/mcp/")
        .map(|n| n.trim_end_matches('/'))
        .filter(|n| {
            engine
                .config
                .gateway
                .as_ref()
                .is_some_and(|g| g.mcp_servers.contains_key(*n))
        })
        .ok_or_else(refused)?;
    Ok(Some(name.to_owned()))
}

/// `grant_type=client_credentials`: authenticates the workload by its assertion, then
/// starts the task it asks for. Policy decides the grant, as for `POST /v1/tasks`.
pub(crate) async fn client_credentials(
    engine: &Engine,
    p: &BTreeMap<String, String>,
    proof: Option<mandate_token::dpop::Proof>,
    peer_svid: Option<&str>,
) -> Result<ClientCredentialsResponse, Refused> {
    // RFC 8705 §2.2 in SPIFFE form: with no assertion, the X.509-SVID of a mutual-TLS
    // connection authenticates the client.
    let by_certificate = match (
        p.contains_key("client_assertion_type"),
        p.contains_key("client_assertion"),
        peer_svid,
    ) {
        (false, false, Some(id)) => Some(id),
        _ => None,
    };
    let assertion = if by_certificate.is_none() {
        let kind = required(p, "client_assertion_type")?;
        if kind != JWT_BEARER {
            return Err(refuse(
                "invalid_client",
                "unsupported_assertion_type",
                format!("client_assertion_type {kind:?} is not supported: use {JWT_BEARER}"),
            ));
        }
        Some(required(p, "client_assertion")?)
    } else {
        None
    };
    let server = check_resource(engine, p)?;
    let (mut start, by_scope) = requested(engine, p, server.as_deref())?;
    let identity = match (assertion, by_certificate) {
        (Some(a), _) => client_identity(engine, a).await?,
        (None, Some(id)) => engine
            .attest_x509(id)
            .await
            .map(|a| a.identity_token)
            .map_err(|e| invalid_client(&e))?,
        (None, None) => {
            return Err(Refused::from(mandate_engine::Error::internal(
                "no client credential",
            )));
        }
    };
    // The client authenticated: only now is its DPoP proof remembered and the token bound.
    let bound = proof.is_some();
    start.bind_jkt = proof
        .map(|p| crate::edge::sender::record(engine, &p))
        .transpose()
        .map_err(|e| refuse("invalid_dpop_proof", e.code, e.message))?;
    if let Some(id) = p.get("client_id") {
        let claims = engine
            .verify_identity(&identity)
            .map_err(|e| invalid_client(&e.into()))?;
        let agent = claims.sub.rsplit('/').next().unwrap_or_default();
        if *id != claims.sub && id != agent {
            return Err(refuse(
                "invalid_client",
                "client_id_mismatch",
                format!(
                    "client_id {id:?} is not the agent the assertion authenticates ({})",
                    claims.sub
                ),
            ));
        }
    }
    let purpose = start.purpose.clone();
    let started = engine
        .start_task(&identity, start)
        .await
        .map_err(Refused::from)?;
    let Some(token) = started.task_token.clone() else {
        let mut r = refuse(
            "invalid_request",
            "task_pending",
            format!(
                "policy holds task {} for a human; once approved, activate it with POST /v1/tasks/{}/activate",
                started.task_id, started.task_id
            ),
        );
        r.body.details = serde_json::to_value(&started).ok();
        return Err(r);
    };
    debug_assert_eq!(started.state, TaskState::Active);
    let expires_in = (started.expires_at_ms - engine.clock.now_ms())
        .div_euclid(1000)
        .max(0);
    let g = &started.grant;
    let granted = serde_json::json!({
        "type": "mandate_task",
        "purpose": purpose,
        "tools": g.tools.keys().collect::<Vec<_>>(),
        "actions": g.tools.values().flatten().collect::<BTreeSet<_>>(),
        "data_domains": g.data_domains,
        "destinations": g.destinations,
        "ttl_secs": expires_in,
        "grant": g,
    });
    Ok(ClientCredentialsResponse {
        access_token: token,
        token_type: if bound { "DPoP" } else { "Bearer" }.to_owned(),
        expires_in,
        scope: by_scope.then(|| scope_of(&started.grant)),
        authorization_details: vec![granted],
        mandate: started,
    })
}

/// RFC 8414 authorization-server metadata.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "identity",
    responses((status = 200, description = "RFC 8414 metadata", body = Object)))]
pub async fn metadata(State(engine): AppState) -> Response {
    let issuer = engine.issuer.trim_end_matches('/');
    Json(serde_json::json!({
        "issuer": engine.issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        // No interactive grant exists; the endpoint answers every request with
        // `unsupported_response_type`. Published because clients' metadata models
        // require the member (RFC 8414 §2 makes it conditional on such grants).
        "authorization_endpoint": format!("{issuer}/oauth2/authorize"),
        "response_types_supported": [],
        "grant_types_supported": [CLIENT_CREDENTIALS, TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "tls_client_auth"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "ES384", "RS256", "PS256", "EdDSA"],
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "introspection_endpoint_auth_methods_supported": ["bearer", "x_mandate_point_token"],
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "revocation_endpoint_auth_methods_supported": ["none"],
        "authorization_details_types_supported": ["mandate_task"],
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA", "RS256", "PS256"],
        "scopes_supported": [],
        "service_documentation": format!("{issuer}/openapi.json"),
    }))
    .into_response()
}

/// No interactive grant: every authorization request is refused (RFC 6749 §4.1.2.1).
#[utoipa::path(get, path = "/oauth2/authorize", tag = "identity",
    responses((status = 400, description = "`unsupported_response_type`", body = OAuthError)))]
pub async fn authorize() -> Response {
    refuse(
        "unsupported_response_type",
        "unsupported_response_type",
        "Mandate issues task tokens to workloads only: use the token endpoint with grant_type=client_credentials and a client assertion",
    )
    .into_response()
}

/// An RFC 7662 introspection answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Introspection {
    /// Whether the token is a Mandate task token of a live task, now.
    pub active: bool,
    /// The agent (its SPIFFE ID); only when active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The agent's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The token's audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Expiry (unix s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at (unix s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// `Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// The granted task as `scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The task the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The delegation chain (RFC 8693 `act`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub act: Option<serde_json::Value>,
    /// The key the token is bound to (RFC 9449 §6.2: `{"jkt": …}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<mandate_token::Confirmation>,
}

/// The form of an introspection or revocation request, or why not: a readable
/// `application/x-www-form-urlencoded` body, each parameter once.
fn token_form(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    headers: &HeaderMap,
) -> Result<BTreeMap<String, String>, Refused> {
    let Ok(body) = body else {
        return Err(Refused {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            ..refuse(
                "invalid_request",
                "body_too_large",
                "the form is unreadable or too large",
            )
        });
    };
    if !is_form(headers) {
        return Err(refuse(
            "invalid_request",
            "unsupported_media_type",
            "send the form as `Content-Type: application/x-www-form-urlencoded`",
        ));
    }
    parameters(&body)
}

/// RFC 7662 introspection of a task token, for resource servers Mandate does not own. The
/// caller authenticates with an enforcement point's token (or the admin token). A token of an ended task is inactive at
/// once; an inactive answer says nothing more.
#[utoipa::path(post, path = "/oauth2/introspect", tag = "identity",
    security(("admin_token" = [])),
    request_body(content = Object, content_type = "application/x-www-form-urlencoded", description = "`token` (and optionally `token_type_hint`)"),
    responses((status = 200, body = Introspection), (status = 400, body = OAuthError), (status = 401, body = OAuthError)))]
pub async fn introspect(
    State(engine): AppState,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    // The admin, or an enforcement point: by its token as the bearer or in its header.
    let caller = crate::edge::bearer_token(&headers);
    let by_bearer = caller
        .as_ref()
        .is_ok_and(|t| engine.is_admin(t) || engine.enforcement_point(t).is_some());
    let by_header = headers.contains_key(crate::edge::POINT_HEADER)
        && matches!(
            crate::edge::enforcement_point(&engine, &headers),
            Ok(Some(_))
        );
    if !by_bearer && !by_header {
        let r = Refused {
            status: StatusCode::UNAUTHORIZED,
            ..refuse(
                "invalid_client",
                "introspection_unauthenticated",
                "introspection needs the admin token or an enforcement point's token (`Authorization: Bearer …` or X-Mandate-Point-Token)",
            )
        };
        return r.into_response();
    }
    let p = match token_form(body, &headers) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let token = match required(&p, "token") {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let inactive = Introspection {
        active: false,
        sub: None,
        client_id: None,
        aud: None,
        iss: None,
        exp: None,
        iat: None,
        jti: None,
        token_type: None,
        scope: None,
        task_id: None,
        act: None,
        cnf: None,
    };
    let answer = match (
        engine.verify_task_token(token),
        engine.task_for_token(token),
    ) {
        (Ok(c), Ok(task)) if !task.is_ended() => Introspection {
            active: true,
            client_id: Some(c.actor().rsplit('/').next().unwrap_or_default().to_owned()),
            sub: Some(c.sub.clone()),
            aud: Some(c.aud.clone()),
            iss: Some(c.iss.clone()),
            exp: Some(c.exp),
            iat: Some(c.iat),
            jti: Some(c.jti.clone()),
            token_type: Some(if c.cnf.is_some() { "DPoP" } else { "Bearer" }.to_owned()),
            scope: Some(scope_of(&c.grant)),
            task_id: Some(c.task_id.clone()),
            act: c.act.as_ref().and_then(|a| serde_json::to_value(a).ok()),
            cnf: c.cnf.clone(),
        },
        _ => inactive,
    };
    no_store(Json(answer).into_response())
}

/// A grant as `scope` (`tool:…`, `action:…`, `data:…`, `dest:…`).
fn scope_of(g: &mandate_core::Grant) -> String {
    let actions: BTreeSet<_> = g.tools.values().flatten().collect();
    let mut out: Vec<String> = g.tools.keys().map(|t| format!("tool:{t}")).collect();
    out.extend(actions.iter().map(|a| format!("action:{a}")));
    out.extend(g.data_domains.iter().map(|d| format!("data:{d}")));
    out.extend(g.destinations.iter().map(|d| format!("dest:{d}")));
    out.join(" ")
}

/// RFC 7009 revocation: the holder of a task token (or the admin) ends its task. The
/// answer is 200 whether or not the token was valid (§2.2), so it reveals nothing.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "identity",
    request_body(content = Object, content_type = "application/x-www-form-urlencoded", description = "`token` (and optionally `token_type_hint`)"),
    responses((status = 200, description = "revoked, or not a live task token"), (status = 400, body = OAuthError), (status = 503, body = OAuthError)))]
pub async fn revoke(
    State(engine): AppState,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let p = match token_form(body, &headers) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let token = match required(&p, "token") {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    if let Some(hint) = p.get("token_type_hint")
        && hint != "access_token"
    {
        // RFC 7009 §2.2.1: Mandate issues no refresh tokens.
        return refuse(
            "unsupported_token_type",
            "unsupported_token_type",
            "Mandate issues access tokens only",
        )
        .into_response();
    }
    let Ok(claims) = engine.verify_task_token(token) else {
        return no_store(StatusCode::OK.into_response());
    };
    // A token bound to a key is revoked only by its holder — who sent it under the DPoP
    // scheme with a proof the edge checked (it reaches here as the bearer, which the edge
    // never lets a bound token be otherwise) — or by the admin or an enforcement point.
    if claims.cnf.is_some() {
        let caller = crate::edge::bearer_token(&headers).ok();
        let allowed = caller.as_deref().is_some_and(|c| {
            c == token || engine.is_admin(c) || engine.enforcement_point(c).is_some()
        });
        if !allowed {
            return crate::edge::sender::challenge(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "dpop_required",
                "this token is bound to a key: revoke it with `Authorization: DPoP <token>` and a proof, or as the admin",
            ));
        }
    }
    let by = claims.actor().to_owned();
    match engine
        .revoke_task(
            &claims.task_id,
            "token revoked by its holder (RFC 7009)",
            &by,
        )
        .await
    {
        Ok(_) => no_store(StatusCode::OK.into_response()),
        Err(e) if matches!(e.kind, Kind::Unavailable | Kind::Internal) => {
            Refused::from(e).into_response()
        }
        // Already ended, or unknown: nothing more to revoke.
        Err(_) => no_store(StatusCode::OK.into_response()),
    }
}

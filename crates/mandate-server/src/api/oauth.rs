//! The token endpoint: RFC 8693 token exchange for delegation. The subject token is the
//! parent's task token, the actor token the child agent's identity token, and the sub-task
//! is one RFC 9396 `authorization_details` entry of type `mandate_task`. Errors are RFC 6749
//! §5.2 error objects, each with Mandate's stable code beside the OAuth one.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_engine::{Delegated, Kind, SubTask};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;

/// `grant_type` of a token exchange.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type of Mandate's task tokens.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Token type of a JWT (identity and task tokens are both JWTs).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// `grant_type` of a task start by a workload (RFC 6749 §4.4).
pub const CLIENT_CREDENTIALS: &str = "client_credentials";

/// The form of a token exchange (`application/x-www-form-urlencoded`; each parameter at
/// most once).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(
    dead_code,
    reason = "documents the form; the handler reads it parameter by parameter"
)]
pub struct TokenExchangeForm {
    /// `urn:ietf:params:oauth:grant-type:token-exchange`.
    grant_type: String,
    /// The parent's task token.
    subject_token: String,
    /// `urn:ietf:params:oauth:token-type:access_token` or `…:jwt`.
    subject_token_type: String,
    /// The child agent's identity token (JWT-SVID).
    actor_token: String,
    /// `urn:ietf:params:oauth:token-type:jwt`.
    actor_token_type: String,
    /// JSON array holding one entry: `{"type": "mandate_task", "purpose", "tools",
    /// "actions", "data_domains", "destinations", "ttl_secs"}`.
    authorization_details: String,
    /// `…:access_token` (default) or `…:jwt`.
    requested_token_type: Option<String>,
    /// If given, Mandate's task audience.
    audience: Option<String>,
}

/// A successful exchange (RFC 8693 §2.2.1): the child's task token, and what Mandate
/// decided.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenExchangeResponse {
    /// The child's task token.
    pub access_token: String,
    /// The token type asked for (`…:access_token` by default).
    pub issued_token_type: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until the child task (and its token) expires.
    pub expires_in: i64,
    /// The `mandate_task` entry as granted (RFC 9396 §7).
    #[schema(value_type = Vec<Object>)]
    pub authorization_details: Vec<serde_json::Value>,
    /// The child task, its grant, the decisions and its chain.
    pub mandate: Delegated,
}

/// An RFC 6749 §5.2 error object.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OAuthError {
    /// `invalid_request`, `unsupported_grant_type`, `invalid_target`, `invalid_scope`,
    /// `invalid_authorization_details`, `temporarily_unavailable` or `server_error`.
    pub error: String,
    /// What was wrong, for people.
    pub error_description: String,
    /// Mandate's stable code (`delegation_widens`, `delegation_too_deep`,
    /// `parent_not_active`, `invalid_subject_token`, `invalid_actor_token`,
    /// `delegation_refused`…).
    pub code: String,
    /// Structured details (what widened, what the parent holds, the refusing decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

pub(crate) struct Refused {
    pub(crate) status: StatusCode,
    pub(crate) body: Box<OAuthError>,
}

pub(crate) fn refuse(error: &str, code: &str, description: impl Into<String>) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        body: Box::new(OAuthError {
            error: error.to_owned(),
            error_description: description.into(),
            code: code.to_owned(),
            details: None,
        }),
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        no_store((self.status, Json(*self.body)).into_response())
    }
}

/// RFC 6749 §5.1: token responses are never cached.
pub(crate) fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

impl From<mandate_engine::Error> for Refused {
    fn from(e: mandate_engine::Error) -> Self {
        let (status, error) = match (e.kind, e.code) {
            (Kind::Unavailable, _) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            (Kind::Internal, _) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
            (_, "delegation_widens" | "invalid_authorization_details")
            | (Kind::Unprocessable, _) => {
                (StatusCode::BAD_REQUEST, "invalid_authorization_details")
            }
            // RFC 8693 §2.2.2: an invalid or unacceptable subject or actor token, and a
            // refusal by policy, are `invalid_request`.
            _ => (StatusCode::BAD_REQUEST, "invalid_request"),
        };
        let code = match e.code {
            "invalid_request" => "invalid_authorization_details",
            c => c,
        };
        Refused {
            status,
            body: Box::new(OAuthError {
                error: error.to_owned(),
                error_description: e.message,
                code: code.to_owned(),
                details: e.details,
            }),
        }
    }
}

pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The form's parameters, each at most once (RFC 6749 §3.2), or why not.
pub(crate) fn parameters(body: &[u8]) -> Result<BTreeMap<String, String>, Refused> {
    let mut out = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(refuse(
                "invalid_request",
                "duplicate_parameter",
                format!("parameter `{k}` is given more than once"),
            ));
        }
    }
    Ok(out)
}

pub(crate) fn required<'a>(
    p: &'a BTreeMap<String, String>,
    name: &str,
) -> Result<&'a str, Refused> {
    match p.get(name).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(refuse(
            "invalid_request",
            "missing_parameter",
            format!("parameter `{name}` is required"),
        )),
    }
}

fn token_type(p: &BTreeMap<String, String>, name: &str, allowed: &[&str]) -> Result<(), Refused> {
    let v = required(p, name)?;
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(refuse(
            "invalid_request",
            "unsupported_token_type",
            format!(
                "`{name}` {v:?} is not supported: use {}",
                allowed.join(" or ")
            ),
        ))
    }
}

/// The one `mandate_task` entry of `authorization_details`.
pub(crate) fn sub_task(p: &BTreeMap<String, String>) -> Result<SubTask, Refused> {
    let bad = |why: String| {
        refuse(
            "invalid_authorization_details",
            "invalid_authorization_details",
            why,
        )
    };
    let text = required(p, "authorization_details")?;
    mandate_core::strict_json(text.as_bytes())
        .map_err(|e| bad(format!("authorization_details is not valid JSON: {e}")))?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| bad(format!("authorization_details must be a JSON array: {e}")))?;
    let [entry] = <[serde_json::Value; 1]>::try_from(entries).map_err(|v| {
        bad(format!(
            "authorization_details must hold exactly one entry of type `mandate_task`, not {}",
            v.len()
        ))
    })?;
    serde_json::from_value(entry).map_err(|e| bad(format!("the `mandate_task` entry: {e}")))
}

/// Token exchange (RFC 8693): delegates a sub-task of the subject token's task to the actor
/// token's agent. The child's grant never exceeds what the parent holds now, it expires no
/// later than the parent, and policy (`Action::"delegate"`) decides.
#[utoipa::path(post, path = "/oauth2/token", tag = "tasks", operation_id = "token_exchange",
    request_body(content = TokenExchangeForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "the child task is active; its token is issued", body = TokenExchangeResponse),
        (status = 400, description = "RFC 6749 error: `invalid_request` (bad or ended parent, bad actor, depth, policy), `invalid_authorization_details` (malformed, or widening: `code` is `delegation_widens`), `unsupported_grant_type`, `invalid_target`, `invalid_scope`", body = OAuthError),
        (status = 413, description = "`body_too_large`", body = OAuthError),
        (status = 500, description = "`server_error`", body = OAuthError),
        (status = 503, description = "`temporarily_unavailable`: the store or the audit trail failed, nothing was issued", body = OAuthError)))]
pub async fn token_exchange(
    State(engine): AppState,
    peer: Option<axum::Extension<crate::tls::PeerSvid>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Ok(body) = body else {
        let limit = engine.config.limits.max_body_bytes;
        return Refused {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            ..refuse(
                "invalid_request",
                "body_too_large",
                format!("the form is unreadable or over {limit} bytes"),
            )
        }
        .into_response();
    };
    if !is_form(&headers) {
        return refuse(
            "invalid_request",
            "unsupported_media_type",
            "send the form as `Content-Type: application/x-www-form-urlencoded`",
        )
        .into_response();
    }
    let p = match parameters(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    // RFC 9449 §5: a DPoP proof with the token request binds the token to its key.
    let bind = match crate::edge::sender::binding(&engine, &headers, "/oauth2/token") {
        Ok(b) => b,
        Err(e) => {
            return refuse("invalid_dpop_proof", e.code, e.message).into_response();
        }
    };
    let answer = match p.get("grant_type").map(String::as_str) {
        Some(CLIENT_CREDENTIALS) => crate::api::oauth_client::client_credentials(
            &engine,
            &p,
            bind,
            match &peer {
                Some(axum::Extension(s)) => match s.current(engine.clock.now_secs()) {
                    Ok(id) => Some(id),
                    Err(e) => return refuse("invalid_client", e.code, e.message).into_response(),
                },
                None => None,
            },
        )
        .await
        .map(|r| Json(r).into_response()),
        _ => exchange(&engine, &p, bind)
            .await
            .map(|r| Json(r).into_response()),
    };
    match answer {
        Ok(r) => no_store(r),
        Err(r) => r.into_response(),
    }
}

async fn exchange(
    engine: &mandate_engine::Engine,
    p: &BTreeMap<String, String>,
    proof: Option<mandate_token::dpop::Proof>,
) -> Result<TokenExchangeResponse, Refused> {
    let grant_type = required(p, "grant_type")?;
    if grant_type != TOKEN_EXCHANGE {
        return Err(refuse(
            "unsupported_grant_type",
            "unsupported_grant_type",
            format!(
                "grant_type {grant_type:?} is not supported: use {CLIENT_CREDENTIALS} or {TOKEN_EXCHANGE}"
            ),
        ));
    }
    token_type(
        p,
        "subject_token_type",
        &[ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE],
    )?;
    token_type(p, "actor_token_type", &[JWT_TOKEN_TYPE])?;
    let issued = match p.get("requested_token_type").map(String::as_str) {
        None | Some(ACCESS_TOKEN_TYPE) => ACCESS_TOKEN_TYPE,
        Some(JWT_TOKEN_TYPE) => JWT_TOKEN_TYPE,
        Some(other) => {
            return Err(refuse(
                "invalid_request",
                "unsupported_token_type",
                format!("requested_token_type {other:?} is not supported"),
            ));
        }
    };
    if let Some(a) = p.get("audience")
        && *a != engine.config.task_audience
    {
        return Err(refuse(
            "invalid_target",
            "invalid_target",
            format!(
                "audience {a:?}: task tokens are for {:?}",
                engine.config.task_audience
            ),
        ));
    }
    if p.contains_key("resource") {
        return Err(refuse(
            "invalid_target",
            "invalid_target",
            "resource indicators are not supported: a task token is good for every enforcement point of this server",
        ));
    }
    if p.contains_key("scope") {
        return Err(refuse(
            "invalid_scope",
            "invalid_scope",
            "name the sub-task in `authorization_details` (type `mandate_task`), not in `scope`",
        ));
    }
    let mut sub = sub_task(p)?;
    let subject = required(p, "subject_token")?;
    let actor = required(p, "actor_token")?;
    // A parent token bound to a key delegates only for the holder of that key: the
    // exchange must carry a DPoP proof by it (a stolen parent token alone mints nothing),
    // and the child is bound to the same key.
    if let Some(parent_jkt) = engine.bound_key(subject) {
        match proof.as_ref().map(|p| &p.jkt) {
            None => {
                return Err(Refused {
                    status: StatusCode::UNAUTHORIZED,
                    ..refuse(
                        "invalid_request",
                        "dpop_required",
                        "the subject token is bound to a key: send a DPoP proof by that key with the exchange",
                    )
                });
            }
            Some(jkt) if *jkt != parent_jkt => {
                return Err(Refused {
                    status: StatusCode::UNAUTHORIZED,
                    ..refuse(
                        "invalid_request",
                        "dpop_key_mismatch",
                        "the DPoP proof is not by the key the subject token is bound to",
                    )
                });
            }
            Some(_) => {}
        }
    }
    // Remembered against replay only once the subject token verifies (the exchange's
    // actor is checked by the delegation itself).
    if proof.is_some() {
        engine
            .verify_task_token(subject)
            .map_err(|e| Refused::from(mandate_engine::Error::from(e)))?;
    }
    let bound = proof.is_some();
    sub.bind_jkt = proof
        .map(|p| crate::edge::sender::record(engine, &p))
        .transpose()
        .map_err(|e| refuse("invalid_dpop_proof", e.code, e.message))?;
    let d = engine.delegate_task(subject, actor, sub).await?;
    let expires_in = (d.expires_at_ms - engine.clock.now_ms())
        .div_euclid(1000)
        .max(0);
    let granted = serde_json::json!({
        "type": "mandate_task",
        "purpose": d.purpose,
        "tools": d.grant.tools.keys().collect::<Vec<_>>(),
        "actions": d.grant.tools.values().flatten().collect::<std::collections::BTreeSet<_>>(),
        "data_domains": d.grant.data_domains,
        "destinations": d.grant.destinations,
        "ttl_secs": expires_in,
        "grant": d.grant,
    });
    Ok(TokenExchangeResponse {
        access_token: d.task_token.clone(),
        issued_token_type: issued.to_owned(),
        token_type: if bound { "DPoP" } else { "Bearer" }.to_owned(),
        expires_in,
        authorization_details: vec![granted],
        mandate: d,
    })
}

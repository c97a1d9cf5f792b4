//! The HTTP API: routes, the OpenAPI document generated from the handlers, and the
//! health endpoints.

mod agents;
mod approvals;
mod audit;
mod authzen;
pub mod oauth;
pub mod oauth_client;
mod ops;
mod secrets;
mod tasks;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, ErrorBody};
use mandate_engine::engine::Engine;

pub use agents::{AttestRequest, AttestResponse, RegisterAgentRequest, RegisterAgentResponse};
pub use approvals::{
    AccessReport, AddApproverResponse, ApprovalsReport, BreakGlassResponse, SetGroupResponse,
};

pub use crate::edge::DecideRequest;
pub use ops::{DecideResponse, VerifyResponse};
pub use tasks::{StartTaskRequest, StartTaskResponse};

/// Shared handler state.
pub type AppState = State<Arc<Engine>>;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |desc: &str, jwt: bool| {
            let mut b = HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(desc.to_owned()));
            if jwt {
                b = b.bearer_format("JWT");
            }
            SecurityScheme::Http(b.build())
        };
        components.add_security_scheme(
            "admin_token",
            bearer(
                "Administrator token printed once on first start (or set by MANDATE_ADMIN_TOKEN).",
                false,
            ),
        );
        components.add_security_scheme(
            "identity_token",
            bearer("JWT-SVID identity token from POST /v1/attest.", true),
        );
        components.add_security_scheme(
            "approver_token",
            bearer(
                "A human approver's API token (POST /v1/approvers; shown once).",
                false,
            ),
        );
        components.add_security_scheme(
            "task_token",
            bearer("Task token from POST /v1/tasks.", true),
        );
    }
}

/// Gives every response without a description the HTTP reason phrase for its status
/// (OpenAPI requires one; the handlers' annotations name only the interesting ones).
struct ResponseDescriptions;

impl Modify for ResponseDescriptions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for op in operations(openapi) {
            for (status, response) in op.responses.responses.iter_mut() {
                if let utoipa::openapi::RefOr::T(r) = response
                    && r.description.is_empty()
                {
                    r.description = status
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("response")
                        .to_owned();
                }
            }
        }
    }
}

/// Documents the errors every endpoint of a kind can return, so each handler's
/// annotation lists only its own: any JSON body can be malformed (400), too large (413),
/// of the wrong media type (415) or invalid (422), or arrive too slowly (408); any endpoint
/// can find its store or audit trail unavailable, its time budget spent, or the server at
/// its connection cap (503).
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for op in operations(openapi) {
            let mut codes = vec![(
                "503",
                "`store_unavailable`, `audit_unavailable`, `request_timeout` (the request's time budget spent) or `too_many_connections` (the server at its connection cap; `Retry-After`): refused",
            )];
            // The token endpoint answers RFC 6749 error objects (documented on it) for
            // what it parses itself.
            let oauth = op.operation_id.as_deref() == Some("token_exchange");
            if op.request_body.is_some() {
                codes.push(("408", "`body_timeout`: the body did not arrive in time"));
            }
            if op.request_body.is_some() && !oauth {
                codes.extend([
                    (
                        "400",
                        "`malformed_json` (not JSON, a duplicate key, nested too deep), `invalid_body` or `body_unreadable`",
                    ),
                    (
                        "413",
                        "`body_too_large`: a declared `Content-Length` over the limit is refused before the body is read",
                    ),
                    (
                        "415",
                        "`unsupported_media_type`: send `Content-Type: application/json`",
                    ),
                    ("422", "`invalid_request`: unknown fields or invalid values"),
                ]);
            }
            if op.security.is_some() {
                codes.extend([
                    (
                        "401",
                        "`missing_token`, `invalid_authorization_header` (malformed, or more than one) or a `token_*` code",
                    ),
                    ("403", "not allowed for this credential"),
                ]);
            }
            if item_has_path_params(op) {
                codes.push(("400", "invalid path parameter"));
            }
            for (code, description) in codes {
                op.responses
                    .responses
                    .entry(code.to_owned())
                    .or_insert_with(|| error(description));
            }
        }
    }
}

/// Every operation of the document.
fn operations(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
    })
}

fn item_has_path_params(op: &utoipa::openapi::path::Operation) -> bool {
    op.parameters.as_ref().is_some_and(|ps| {
        ps.iter().any(|p| matches!(p, utoipa::openapi::RefOr::T(p) if p.parameter_in == utoipa::openapi::path::ParameterIn::Path))
    })
}

/// The OpenAPI document, generated from the handlers and types.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Mandate API", description = "Runtime authorization control plane for AI agents: identity, tasks, per-call decisions, audit."),
    paths(
        agents::register, agents::list, agents::get_agent, agents::join_token, agents::set_status, agents::attest, agents::renew,
        tasks::start, oauth::token_exchange, oauth_client::metadata, oauth_client::authorize, oauth_client::introspect, oauth_client::revoke, tasks::get_task, tasks::list_tasks, tasks::complete, tasks::revoke, tasks::activate, tasks::redeclare,
        approvals::add_approver, approvals::list_approvers, approvals::disable_approver, approvals::set_group,
        approvals::list_approvals, approvals::get_approval, approvals::approve, approvals::deny,
        approvals::declare_break_glass, approvals::list_break_glass, approvals::review_break_glass,
        approvals::approvals_report, approvals::access_report,
        authzen::evaluation, authzen::evaluations, authzen::configuration,
        ops::decide, ops::verify_audit, ops::task_events,
        audit::checkpoint, audit::inclusion, audit::consistency, audit::search, audit::controls_report, ops::policies, ops::reload_policies, ops::rotate_keys,
        secrets::put_secret, secrets::list_secrets, secrets::delete_secret, secrets::rotate_secrets,
        tools::list_pins, tools::approve_tool, crate::mcp::servers_health,
        ops::jwks, ops::openid_configuration, healthz, readyz, openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes, &CommonErrors, &ResponseDescriptions),
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON (also committed as `docs/openapi.json`).
pub fn openapi_document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the store answers and commits, the audit chain is intact, a policy bundle
/// and a signing key are loaded.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "ready"), (status = 503, description = "not ready", body = ErrorBody)))]
pub async fn readyz(State(engine): AppState) -> Result<impl IntoResponse, ApiError> {
    engine.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: store failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the state store is not answering",
        )
    })?;
    if let Some(why) = engine.audit.health().chain_break() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_chain_broken",
            format!("the audit chain is broken; nothing is decided or recorded: {why}"),
        ));
    }
    if let Some(why) = engine.audit.health().failure() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_cannot_commit",
            format!(
                "the store cannot commit, so every decision is refused until it can (retried each second): {why}"
            ),
        ));
    }
    let b = engine.bundle();
    Ok(Json(
        serde_json::json!({ "status": "ready", "bundle_version": b.version(), "policies": b.len(), "live_tasks": engine.live_count() }),
    ))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "the OpenAPI document")))]
pub async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint: see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method: see /openapi.json",
    )
}

/// Every route, with body limits and timeouts.
pub fn router(engine: Arc<Engine>) -> Router {
    let limit = engine.config.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/.well-known/jwks.json", get(ops::jwks))
        .route(
            "/.well-known/openid-configuration",
            get(ops::openid_configuration),
        )
        .route("/v1/agents", post(agents::register).get(agents::list))
        .route("/v1/agents/{name}", get(agents::get_agent))
        .route("/v1/agents/{name}/join-tokens", post(agents::join_token))
        .route("/v1/agents/{name}/status", post(agents::set_status))
        .route("/v1/attest", post(agents::attest))
        .route("/v1/identity/renew", post(agents::renew))
        .route("/oauth2/token", post(oauth::token_exchange))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth_client::metadata),
        )
        .route("/oauth2/authorize", get(oauth_client::authorize))
        .route("/oauth2/introspect", post(oauth_client::introspect))
        .route("/oauth2/revoke", post(oauth_client::revoke))
        .route("/v1/tasks", post(tasks::start).get(tasks::list_tasks))
        .route("/v1/tasks/{id}", get(tasks::get_task))
        .route("/v1/tasks/{id}/complete", post(tasks::complete))
        .route("/v1/tasks/{id}/revoke", post(tasks::revoke))
        .route("/v1/tasks/{id}/activate", post(tasks::activate))
        .route("/v1/tasks/{id}/plan", post(tasks::redeclare))
        .route(
            "/v1/approvers",
            post(approvals::add_approver).get(approvals::list_approvers),
        )
        .route(
            "/v1/approvers/{name}/disable",
            post(approvals::disable_approver),
        )
        .route("/v1/approver-groups/{name}", put(approvals::set_group))
        .route("/v1/approvals", get(approvals::list_approvals))
        .route("/v1/approvals/{id}", get(approvals::get_approval))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/deny", post(approvals::deny))
        .route(
            "/v1/break-glass",
            post(approvals::declare_break_glass).get(approvals::list_break_glass),
        )
        .route(
            "/v1/break-glass/{id}/review",
            post(approvals::review_break_glass),
        )
        .route("/access/v1/evaluation", post(authzen::evaluation))
        .route("/access/v1/evaluations", post(authzen::evaluations))
        .route(
            "/.well-known/authzen-configuration",
            get(authzen::configuration),
        )
        .route("/v1/reports/approvals", get(approvals::approvals_report))
        .route("/v1/reports/access/{agent}", get(approvals::access_report))
        .route("/v1/reports/controls", get(audit::controls_report))
        .route("/v1/tasks/{id}/events", get(ops::task_events))
        .route("/v1/decide", post(ops::decide))
        .route("/v1/audit/verify", get(ops::verify_audit))
        .route("/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/v1/audit/proof/inclusion", get(audit::inclusion))
        .route("/v1/audit/proof/consistency", get(audit::consistency))
        .route("/v1/audit/events", get(audit::search))
        .route("/v1/policies", get(ops::policies))
        .route("/v1/policies/reload", post(ops::reload_policies))
        .route("/v1/keys/rotate", post(ops::rotate_keys))
        .route("/v1/tools/pins", get(tools::list_pins))
        .route("/v1/tools/approve", post(tools::approve_tool))
        .route("/v1/secrets", get(secrets::list_secrets))
        .route("/v1/secrets/rotate", post(secrets::rotate_secrets))
        .route(
            "/v1/secrets/{name}",
            put(secrets::put_secret).delete(secrets::delete_secret),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            Duration::from_secs(mandate_engine::engine::REQUEST_TIMEOUT_SECS.unsigned_abs()),
            crate::listener::within_request_timeout,
        ))
        .with_state(engine)
}

/// A free-text field as the API accepts it: 1 to `max` characters after trimming, at least
/// one visible, no control characters (a newline only where `newline_ok`). Returns the
/// trimmed text.
pub(crate) fn text<'a>(
    field: &str,
    value: &'a str,
    max: usize,
    newline_ok: bool,
) -> Result<&'a str, ApiError> {
    Ok(mandate_engine::tasks::checked_text(
        field, value, max, newline_ok,
    )?)
}

/// Refuses unless the bearer token is the admin token.
pub(crate) fn require_admin(engine: &Engine, bearer: &crate::edge::Bearer) -> Result<(), ApiError> {
    if engine.is_admin(&bearer.0) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_required",
            "this endpoint needs the admin token",
        ))
    }
}

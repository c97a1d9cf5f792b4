//! The audit log as evidence: signed checkpoints, inclusion and consistency proofs, and
//! search across tasks. Verification of the chain itself is `GET /v1/audit/verify`.

use axum::Json;
use axum::extract::State;
use mandate_audit::Event;
use mandate_engine::checkpoints::{ConsistencyProof, InclusionProof, SignedCheckpoint};
use mandate_engine::controls::ControlReport;
use mandate_store::EventFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, require_admin};
use crate::edge::{ApiQuery, Bearer};
use crate::error::{ApiError, ErrorBody};

/// The newest signed checkpoint (admin): signed now if records were committed since the
/// last one. Keep the `note` somewhere the database's owner cannot write, and check the
/// log against it later with `mandate audit verify --checkpoint FILE`.
#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit", security(("admin_token" = [])),
    responses((status = 200, body = SignedCheckpoint), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, description = "the chain is broken: nothing is signed", body = ErrorBody)))]
pub async fn checkpoint(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<SignedCheckpoint>, ApiError> {
    require_admin(&engine, &bearer)?;
    let cp = engine
        .log
        .checkpoint(&*engine.store, &engine.audit, &*engine.clock)
        .await?;
    Ok(Json(cp))
}

/// Which record to prove, in which tree.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The record's sequence number (leaf index + 1).
    pub seq: i64,
    /// The tree size (default: the newest checkpoint's).
    pub size: Option<u64>,
}

/// The RFC 6962 inclusion proof of one record (admin).
#[utoipa::path(get, path = "/v1/audit/proof/inclusion", tag = "audit", security(("admin_token" = [])),
    params(InclusionQuery),
    responses((status = 200, body = InclusionProof), (status = 404, description = "the record is not in that tree, or no checkpoint yet", body = ErrorBody)))]
pub async fn inclusion(
    State(engine): AppState,
    bearer: Bearer,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(
        engine.log.inclusion(&*engine.store, q.seq, q.size).await?,
    ))
}

/// Which two tree sizes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older size.
    pub from: u64,
    /// The newer size (default: the newest checkpoint's).
    pub to: Option<u64>,
}

/// The RFC 6962 consistency proof between two tree sizes (admin).
#[utoipa::path(get, path = "/v1/audit/proof/consistency", tag = "audit", security(("admin_token" = [])),
    params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyProof), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn consistency(
    State(engine): AppState,
    bearer: Bearer,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(
        engine.log.consistency(&*engine.store, q.from, q.to).await?,
    ))
}

/// Filters for searching the audit log; all given must match.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Records after this sequence number (the `next` of the previous page).
    pub after: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
    /// The agent concerned.
    pub agent: Option<String>,
    /// The task concerned.
    pub task: Option<String>,
    /// The event kind (`decision`, `gateway.result`, `task.revoked`…).
    pub kind: Option<String>,
    /// The tool named.
    pub tool: Option<String>,
    /// The decision's outcome (`allow`, `deny`, `approval_required`).
    pub outcome: Option<String>,
    /// A determining policy id.
    pub policy: Option<String>,
    /// At or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Before this time (unix ms).
    pub until_ms: Option<i64>,
}

/// One page of matching records.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Matching records, in sequence order.
    pub events: Vec<Event>,
    /// Pass as `after` for the next page; absent when this page was the last so far.
    pub next: Option<i64>,
}

/// Longest text filter accepted.
const MAX_FILTER: usize = 256;

/// Search audit records across tasks (admin), paginated by cursor.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", security(("admin_token" = [])),
    params(SearchQuery),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn search(
    State(engine): AppState,
    bearer: Bearer,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<EventPage>, ApiError> {
    require_admin(&engine, &bearer)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::invalid("after must not be negative"));
    }
    for (name, v) in [
        ("agent", &q.agent),
        ("task", &q.task),
        ("kind", &q.kind),
        ("tool", &q.tool),
        ("outcome", &q.outcome),
        ("policy", &q.policy),
    ] {
        if v.as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > MAX_FILTER)
        {
            return Err(ApiError::invalid(format!(
                "{name} must be 1 to {MAX_FILTER} characters"
            )));
        }
    }
    let filter = EventFilter {
        agent: q.agent,
        task_id: q.task,
        kind: q.kind,
        tool: q.tool,
        outcome: q.outcome,
        policy: q.policy,
        since_ms: q.since_ms,
        until_ms: q.until_ms,
    };
    let events = engine
        .store
        .search_events(&filter, after, limit)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let full = i64::try_from(events.len()).unwrap_or(i64::MAX) == limit;
    let next = events.last().filter(|_| full).map(|e| e.seq);
    Ok(Json(EventPage { events, next }))
}

/// The control map (admin or reviewer): each control of OWASP Agentic Top 10, OWASP NHI
/// Top 10, OWASP MCP Top 10, CSA MAESTRO, MITRE ATLAS, NIST AI RMF and NIST CSF 2.0 with
/// what implements it here, its evidence (policies, settings, events of the last 30 days)
/// and its gaps, judged from the running configuration.
#[utoipa::path(get, path = "/v1/reports/controls", tag = "reports", security(("admin_token" = []), ("approver_token" = [])),
    responses((status = 200, body = ControlReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn controls_report(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<ControlReport>, ApiError> {
    super::approvals::require_oversight(&engine, &bearer).await?;
    Ok(Json(engine.control_report().await?))
}

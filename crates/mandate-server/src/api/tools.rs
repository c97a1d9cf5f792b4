//! Pinned MCP tool definitions (admin): what is held, and approving a definition.

use axum::Json;
use axum::extract::State;
use mandate_store::ToolPin;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{AppState, require_admin};
use crate::edge::{ApiJson, Bearer};
use crate::error::{ApiError, ErrorBody};
use mandate_engine::pins::ApproveError;

/// Every pinned MCP tool definition, held ones first (admin).
#[utoipa::path(get, path = "/v1/tools/pins", tag = "tools", security(("admin_token" = [])),
    responses((status = 200, body = Vec<ToolPin>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_pins(
    State(engine): AppState,
    bearer: Bearer,
) -> Result<Json<Vec<ToolPin>>, ApiError> {
    require_admin(&engine, &bearer)?;
    Ok(Json(engine.pins.all()))
}

/// Which tool to approve.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveToolRequest {
    /// The MCP server.
    #[schema(max_length = 64)]
    pub server: String,
    /// The tool's name on it.
    #[schema(max_length = 256)]
    pub tool: String,
    /// The digest of the definition that was reviewed (`digest` of its pin): the approval
    /// is refused, 409 `digest_mismatch`, if the server has shown another since.
    #[schema(max_length = 80)]
    pub digest: String,
}

/// Approve the reviewed definition of a held tool (admin): it becomes callable, and the
/// approval is audited with the definition. Refused if the definition changed since.
#[utoipa::path(post, path = "/v1/tools/approve", tag = "tools", request_body = ApproveToolRequest,
    security(("admin_token" = [])),
    responses((status = 200, body = ToolPin), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve_tool(
    State(engine): AppState,
    bearer: Bearer,
    ApiJson(req): ApiJson<ApproveToolRequest>,
) -> Result<Json<ToolPin>, ApiError> {
    require_admin(&engine, &bearer)?;
    if req.server.len() > 64 || req.tool.len() > 256 || req.digest.len() > 80 {
        return Err(ApiError::invalid("server, tool or digest too long"));
    }
    match engine
        .pins
        .approve(&req.server, &req.tool, &req.digest, "admin")
        .await
    {
        Ok(Some(p)) => Ok(Json(p)),
        Ok(None) => Err(ApiError::not_found(format!(
            "no pinned tool {} on server {}",
            req.tool, req.server
        ))),
        Err(ApproveError::DigestMismatch { current }) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "digest_mismatch",
            format!(
                "the server shows another definition of {} than the one reviewed (now {current}): review it again",
                req.tool
            ),
        )
        .with_details(serde_json::json!({ "current_digest": current }))),
        Err(ApproveError::Store(e)) => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e,
        )),
    }
}

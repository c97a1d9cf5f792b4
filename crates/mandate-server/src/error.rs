//! Errors that leave the server: a status, a stable machine-readable code, and a message
//! that names the offending value and says what to do.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `token_expired`, `body_too_large`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Structured details (policy diagnostics, the decision that refused a task…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// An error on its way out.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Optional details.
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        mandate_engine::Error::invalid(message).into()
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        mandate_engine::Error::not_found(message).into()
    }

    /// 503 `store_unavailable` (or the store's own conflict, absence or limit): the store
    /// failed, so the request is refused (fail closed).
    pub fn store(e: &mandate_store::StoreError) -> Self {
        mandate_engine::Error::store(e).into()
    }

    /// 503 `audit_unavailable`: the audit record could not be written, so nothing was allowed.
    pub fn audit() -> Self {
        mandate_engine::Error::audit().into()
    }

    /// 500 `internal_error`; the cause goes to the log.
    pub fn internal(what: impl std::fmt::Display) -> Self {
        mandate_engine::Error::internal(what).into()
    }
}

impl From<mandate_engine::Error> for ApiError {
    fn from(e: mandate_engine::Error) -> Self {
        use mandate_engine::Kind;
        let status = match e.kind {
            Kind::Invalid => StatusCode::BAD_REQUEST,
            Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Exhausted => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            code: e.code,
            message: e.message,
            details: e.details,
        }
    }
}

impl From<mandate_engine::AuditError> for ApiError {
    fn from(e: mandate_engine::AuditError) -> Self {
        mandate_engine::Error::from(e).into()
    }
}

impl From<mandate_token::TokenError> for ApiError {
    fn from(e: mandate_token::TokenError) -> Self {
        let status = match e {
            mandate_token::TokenError::Signing(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNAUTHORIZED,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.to_owned(),
                    message: self.message,
                    details: self.details,
                },
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED
            && let Ok(v) = axum::http::HeaderValue::from_str(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                self.code
            ))
        {
            res.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, v);
        }
        res
    }
}

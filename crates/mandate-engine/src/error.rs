//! The engine's one error type: a kind (what went wrong, for the adapter to map onto its
//! protocol), a stable machine-readable code, and a message that names the offending value
//! and says what to do.

use std::fmt;

/// What kind of failure an [`Error`] is. Adapters map kinds onto their protocol (an HTTP
/// status, a JSON-RPC error, an Envoy check status); the engine never sees those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed.
    Invalid,
    /// The request is well formed but cannot be processed as asked (a bound, a value).
    Unprocessable,
    /// No valid credential was presented.
    Unauthenticated,
    /// The credential is valid but does not permit this.
    Forbidden,
    /// The named thing does not exist.
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// A bound on how many, or how much, was reached.
    Exhausted,
    /// A dependency (store, audit) failed: refused, fail closed.
    Unavailable,
    /// A bug or a failure of the machine (RNG, signing).
    Internal,
}

/// An engine error: every refusal and failure the engine reports, typed.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Error {
    /// What kind of failure.
    pub kind: Kind,
    /// Stable code (`task_not_active`, `approval_mismatch`…).
    pub code: &'static str,
    /// Message for people.
    pub message: String,
    /// Structured details (the decision that refused a task…).
    pub details: Option<serde_json::Value>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl Error {
    /// A new error.
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Attaches structured details.
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, "invalid_request", message)
    }

    /// `invalid_request`, for a value out of its bounds.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(Kind::Unprocessable, "invalid_request", message)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, "not_found", message)
    }

    /// `store_unavailable` (or the store's own conflict, absence or limit): the store
    /// failed, so the request is refused (fail closed).
    pub fn store(e: &mandate_store::StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        match e {
            mandate_store::StoreError::Conflict(what) => Self::new(
                Kind::Conflict,
                "conflict",
                format!("{what}: choose another name"),
            ),
            mandate_store::StoreError::NotFound(what) => {
                Self::not_found(format!("{what} does not exist"))
            }
            mandate_store::StoreError::Limit(what) => {
                Self::new(Kind::Exhausted, "limit_reached", what.clone())
            }
            _ => Self::new(
                Kind::Unavailable,
                "store_unavailable",
                "the state store failed; the request was refused",
            ),
        }
    }

    /// `audit_unavailable`: the audit record could not be written, so nothing was allowed.
    pub fn audit() -> Self {
        Self::new(
            Kind::Unavailable,
            "audit_unavailable",
            "the audit record could not be written; nothing was allowed (fail closed)",
        )
    }

    /// `internal_error`; the cause goes to the log, not to the caller.
    pub fn internal(what: impl fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error");
        Self::new(
            Kind::Internal,
            "internal_error",
            "internal error; see the server log",
        )
    }
}

impl From<mandate_token::TokenError> for Error {
    fn from(e: mandate_token::TokenError) -> Self {
        let kind = match e {
            mandate_token::TokenError::Signing(_) => Kind::Internal,
            _ => Kind::Unauthenticated,
        };
        Self::new(kind, e.code(), e.to_string())
    }
}

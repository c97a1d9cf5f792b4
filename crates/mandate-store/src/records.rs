use std::fmt;

use mandate_core::{
    AgentName, AgentStatus, AttestationRule, Grant, RequestedScope, RiskTier, TaskState,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentRecord {
    /// Registered name.
    pub name: AgentName,
    /// Accountable human owner.
    pub owner: String,
    /// Risk tier.
    pub tier: RiskTier,
    /// Life-cycle status.
    pub status: AgentStatus,
    /// How it attests.
    pub attestation: AttestationRule,
    /// Registered at (unix ms).
    pub created_at_ms: i64,
    /// Last changed at (unix ms).
    pub updated_at_ms: i64,
}

/// A one-time join token, stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// The agent it lets attest.
    pub agent: AgentName,
    /// Issued at (unix ms).
    pub created_at_ms: i64,
    /// Unusable from (unix ms).
    pub expires_at_ms: i64,
}

/// A stored signing key. `Debug` hides the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Key id.
    pub kid: String,
    /// PKCS#8 private key.
    pub pkcs8: Vec<u8>,
    /// Created at (unix ms).
    pub created_at_ms: i64,
    /// Retired at (unix ms), `None` while active.
    pub retired_at_ms: Option<i64>,
}

impl fmt::Debug for KeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRow")
            .field("kid", &self.kid)
            .field("created_at_ms", &self.created_at_ms)
            .field("retired_at_ms", &self.retired_at_ms)
            .finish_non_exhaustive()
    }
}

/// A task (a mandate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// The agent running it.
    pub agent: AgentName,
    /// Declared purpose.
    pub purpose: String,
    /// What was asked for.
    pub requested: RequestedScope,
    /// What policy granted.
    pub grant: Grant,
    /// How each requested (tool, action) pair fared.
    #[schema(value_type = Object)]
    pub items: serde_json::Value,
    /// Life-cycle state.
    pub state: TaskState,
    /// Bundle version that granted it.
    pub bundle_version: String,
    /// `jti` of its task token.
    pub token_jti: String,
    /// Started at (unix ms).
    pub created_at_ms: i64,
    /// Expires at (unix ms).
    pub expires_at_ms: i64,
    /// Ended at (unix ms).
    pub ended_at_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
}

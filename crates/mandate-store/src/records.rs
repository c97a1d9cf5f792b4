use std::fmt;

use mandate_core::{
    AgentName, AgentStatus, ApprovalKind, ApprovalState, ApproverRole, AttestationRule, Delegation,
    Grant, HumanId, RequestedScope, RiskTier, TaskState,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentRecord {
    /// Registered name.
    pub name: AgentName,
    /// Accountable human owner (normalised).
    pub owner: HumanId,
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
    /// Where it sits in its delegation chain, when another task delegated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,
    /// A containment rule stepped it up: every further write, delete or execute needs a
    /// human.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub step_up: bool,
    /// The key its tokens are bound to (RFC 9449 `cnf.jkt`), when sender-constrained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf_jkt: Option<String>,
}

/// A running task's new plan (a re-declaration).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    /// Task id.
    pub id: String,
    /// The new purpose.
    pub purpose: String,
    /// The new requested scope.
    pub requested: RequestedScope,
    /// The grant under the new plan.
    pub grant: Grant,
    /// How each requested pair fared.
    pub items: serde_json::Value,
}

/// A human who answers approval requests (and, by role, declares or reviews break-glass).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApproverRecord {
    /// Unique name (an email or a login), normalised.
    pub name: HumanId,
    /// What they may do.
    pub roles: Vec<ApproverRole>,
    /// Approver groups they answer for.
    pub groups: Vec<String>,
    /// Added at (unix ms).
    pub created_at_ms: i64,
    /// Disabled at (unix ms); a disabled approver's token is refused.
    pub disabled_at_ms: Option<i64>,
}

impl ApproverRecord {
    /// Whether they hold `role`.
    pub fn has(&self, role: ApproverRole) -> bool {
        self.roles.contains(&role)
    }
}

/// An approver group and where its notifications go. `Debug` hides the signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApproverGroup {
    /// Group name.
    pub name: String,
    /// Webhook that receives signed notifications, if any.
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key signing those notifications.
    pub webhook_secret: Option<String>,
    /// Last changed (unix ms).
    pub updated_at_ms: i64,
}

impl fmt::Debug for ApproverGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApproverGroup")
            .field("name", &self.name)
            .field("webhook_url", &self.webhook_url)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish_non_exhaustive()
    }
}

/// One approver's yes on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalVote {
    /// Who.
    pub by: HumanId,
    /// When (unix ms).
    pub at_ms: i64,
}

/// A request for a human decision on one exact action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalRecord {
    /// Approval id.
    pub id: String,
    /// A call or a task start.
    pub kind: ApprovalKind,
    /// The task.
    pub task_id: String,
    /// The agent.
    pub agent: AgentName,
    /// The agent's accountable owner (normalised).
    pub owner: HumanId,
    /// The approver group asked.
    pub group: String,
    /// SHA-256 binding the approval to (task, agent, tool, action, canonical arguments,
    /// resource, destination, data domain, policy bundle version).
    pub digest: String,
    /// What will run, exactly as Mandate parsed it (never an agent-written summary), with
    /// the task's purpose, the agent's risk tier and the policies that asked.
    #[schema(value_type = Object)]
    pub action: serde_json::Value,
    /// The bundle whose decision asked for approval; another bundle invalidates it.
    pub bundle_version: String,
    /// Distinct approvers needed.
    pub required: u32,
    /// Whether the agent's owner may approve.
    pub owner_may_approve: bool,
    /// Approvals given so far.
    pub votes: Vec<ApprovalVote>,
    /// Where it stands.
    pub state: ApprovalState,
    /// Opened at (unix ms).
    pub created_at_ms: i64,
    /// Unusable from (unix ms).
    pub expires_at_ms: i64,
    /// Approved, denied, expired, consumed or invalidated at (unix ms).
    pub decided_at_ms: Option<i64>,
    /// Who (or what) moved it last.
    pub decided_by: Option<String>,
    /// Why (a denial's reason, an invalidation's cause).
    pub reason: Option<String>,
}

/// What became of one approver's approve.
#[derive(Debug, Clone, PartialEq)]
pub enum VoteOutcome {
    /// Counted; the record as it now stands (approved once enough approvers agreed).
    Counted(Box<ApprovalRecord>),
    /// This approver had already approved it.
    Duplicate,
    /// It is no longer pending (or has expired): nothing changed.
    NotPending(Box<ApprovalRecord>),
    /// No such approval.
    Missing,
}

/// The after-review of a break-glass use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BreakGlassReview {
    /// Who reviewed it (never the declarer).
    pub by: HumanId,
    /// When (unix ms).
    pub at_ms: i64,
    /// Their findings.
    pub notes: String,
}

/// An emergency grant declared by a named human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BreakGlassRecord {
    /// Break-glass id.
    pub id: String,
    /// The human who declared it.
    pub declared_by: HumanId,
    /// The agent that acts under it.
    pub agent: AgentName,
    /// The task it created.
    pub task_id: String,
    /// Why (mandatory).
    pub justification: String,
    /// Declared at (unix ms).
    pub created_at_ms: i64,
    /// Ends at (unix ms).
    pub expires_at_ms: i64,
    /// The after-review, once someone else has closed it.
    pub review: Option<BreakGlassReview>,
}

/// An upstream credential sealed under the master key ring. The value is never held
/// here in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// Its name (what upstream credentials refer to).
    pub name: String,
    /// Id of the master key that sealed it.
    pub key_id: String,
    /// Nonce, ciphertext and tag, base64.
    pub sealed: String,
    /// Free text for operators.
    pub description: String,
    /// First stored (unix ms).
    pub created_at_ms: i64,
    /// Last replaced or re-sealed (unix ms).
    pub updated_at_ms: i64,
}

/// A pinned MCP tool definition. A tool is callable only while `status` is `approved` and
/// the definition the server shows hashes to `approved_digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ToolPin {
    /// The MCP server.
    pub server: String,
    /// The tool's name on that server.
    pub tool: String,
    /// Digest of the definition last seen.
    pub digest: String,
    /// Digest of the definition an admin (or first sight) approved.
    pub approved_digest: Option<String>,
    /// The definition last seen (name, description, input schema), as JSON text.
    pub definition: String,
    /// `approved` or `pending`.
    pub status: String,
    /// Why it is pending (`new`, `changed`, `shadows <server>`), or how it was approved.
    pub reason: String,
    /// Who approved it (`first-sight` for the initial pin).
    pub decided_by: Option<String>,
    /// Last changed (unix ms).
    pub updated_at_ms: i64,
}

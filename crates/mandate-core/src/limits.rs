use serde::{Deserialize, Serialize};

/// Every bound the control plane enforces, as typed configuration with defaults.
/// Exceeding one is a clear refusal, never a silent truncation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted by any endpoint, in bytes.
    pub max_body_bytes: usize,
    /// Lifetime of an identity token (JWT-SVID), in seconds.
    pub identity_token_ttl_secs: i64,
    /// Longest task lifetime any policy can grant, in seconds.
    pub max_task_ttl_secs: i64,
    /// Task lifetime when the request names none, in seconds.
    pub default_task_ttl_secs: i64,
    /// Longest an identity may be renewed after its attestation before the agent must
    /// attest again, in seconds.
    pub max_identity_lifetime_secs: i64,
    /// Lifetime of a one-time join token, in seconds.
    pub join_token_ttl_secs: i64,
    /// Clock skew tolerated on `exp`/`nbf`/`iat`, in seconds.
    pub token_leeway_secs: i64,
    /// Verified tokens kept in the verification cache.
    pub token_cache_capacity: usize,
    /// Largest canonical argument document, in bytes.
    pub max_args_bytes: usize,
    /// Most entries in each list of a requested scope.
    pub max_scope_items: usize,
    /// Longest task purpose text, in characters.
    pub max_purpose_chars: usize,
    /// How long a retired signing key stays published after rotation, in seconds. Must be
    /// at least the longest token lifetime so every issued token stays verifiable.
    pub key_overlap_secs: i64,
    /// How long an approval request waits for an answer, and an approval for its use,
    /// in seconds.
    pub approval_ttl_secs: i64,
    /// Longest a call may wait for its approval (long-poll), in seconds.
    pub max_approval_wait_secs: i64,
    /// Most approval requests one agent may have pending at once.
    pub max_pending_approvals_per_agent: i64,
    /// Most approval requests one task may have pending at once.
    pub max_pending_approvals_per_task: i64,
    /// Longest life of a break-glass grant, in seconds.
    pub max_break_glass_ttl_secs: i64,
    /// Deepest delegation chain: a task started directly is depth 0, each delegation
    /// below it one more.
    pub max_delegation_depth: u32,
    /// Most live tasks one task may have delegated directly at once (a cap on fan-out, so
    /// one task cannot mint an unbounded number of delegates).
    pub max_delegates_per_task: usize,
    /// Agents of this risk tier or above must bind their task tokens to a key (DPoP,
    /// RFC 9449): a task start, token request or delegation to them without a proof is
    /// refused (`dpop_required`). `None`: binding is the agent's choice.
    pub dpop_required_from_tier: Option<u8>,
    /// DPoP proofs remembered against replay (bounded; when full of unexpired proofs,
    /// new ones are refused rather than an old one forgotten).
    pub dpop_replay_capacity: usize,
    /// Oldest DPoP proof accepted (its `iat`), in seconds.
    pub dpop_proof_max_age_secs: i64,
    /// Decisions one agent may ask for per second, over all its tasks and every decision
    /// entry point (decide, AuthZEN, ext_authz, MCP, gateway); bursts up to twice this.
    pub agent_decisions_per_sec: u32,
    /// Decisions one task may ask for per second; bursts up to twice this.
    pub task_decisions_per_sec: u32,
    /// Most HTTP connections served at once (lowered to what the open-file limit holds);
    /// past it a new connection gets 503 `too_many_connections` and is closed.
    pub max_connections: usize,
    /// Longest a connection may take to send a whole request head: from accepting it, and
    /// on a kept-alive connection from the first byte of its next request, in seconds.
    pub header_read_timeout_secs: u64,
    /// Longest a kept-alive connection may sit with no request, in seconds.
    pub idle_timeout_secs: u64,
    /// Longest a request body may take to arrive on the API and MCP routes, in seconds
    /// (the gateway has its own).
    pub body_read_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            identity_token_ttl_secs: 300,
            max_task_ttl_secs: 3600,
            default_task_ttl_secs: 900,
            max_identity_lifetime_secs: 24 * 3600,
            join_token_ttl_secs: 3600,
            token_leeway_secs: 30,
            token_cache_capacity: 100_000,
            max_args_bytes: 64 * 1024,
            max_scope_items: 256,
            max_purpose_chars: 1024,
            key_overlap_secs: 3600 + 300,
            approval_ttl_secs: 15 * 60,
            max_approval_wait_secs: 25,
            max_pending_approvals_per_agent: 20,
            max_pending_approvals_per_task: 5,
            max_break_glass_ttl_secs: 30 * 60,
            max_delegation_depth: 3,
            max_delegates_per_task: 100,
            dpop_required_from_tier: None,
            dpop_replay_capacity: 100_000,
            dpop_proof_max_age_secs: 60,
            agent_decisions_per_sec: 500,
            task_decisions_per_sec: 250,
            max_connections: 1024,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            body_read_timeout_secs: 10,
        }
    }
}

//! Typed event bodies: one variant per [`EventKind`], each a struct of typed fields. A
//! body is serialised once, when it is linked into the chain ([`crate::link`]); what is
//! stored and hashed is that serialisation. Readers get bodies back with
//! [`crate::Event::body`], never by string key.
//!
//! The JSON shape of each body is its contract with auditors and exports: the golden
//! files in `tests/golden/` pin every kind. Fields that only some events of a kind carry
//! are left out when absent.

use mandate_core::{
    ActionClass, AgentStatus, ApprovalKind, ApprovalState, ApproverRole, AttestationRule,
    DataDomain, Decision, Delegation, Destination, Grant, HumanId, ItemOutcome, Obligation,
    Outcome, RequestedScope, RiskTier, Sensitivity, SpanRecord, TaskState, ToolName,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::EventKind;

macro_rules! bodies {
    ($( $(#[$doc:meta])* $variant:ident ( $ty:ty ) = $name:literal, )+) => {
        /// What happened, with its typed details: one variant per [`EventKind`].
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", content = "data")]
        pub enum Body {
            $( $(#[$doc])* #[serde(rename = $name)] $variant($ty), )+
        }

        impl Body {
            /// The kind of event this body records.
            pub fn kind(&self) -> EventKind {
                match self {
                    $( Self::$variant(_) => EventKind::$variant, )+
                }
            }

            /// The body of a stored event from its kind and details, read in place (no
            /// copy of the details, no intermediate document).
            pub fn from_parts(kind: &str, data: &Value) -> Result<Self, serde_json::Error> {
                match kind {
                    $( $name => <$ty>::deserialize(data).map(Self::$variant), )+
                    other => Err(<serde_json::Error as serde::de::Error>::custom(format!(
                        "unknown event kind {other:?}"
                    ))),
                }
            }
        }
    };
}

bodies! {
    /// An agent was registered.
    AgentRegistered(AgentRegistered) = "agent.registered",
    /// An agent's status changed.
    AgentStatusChanged(AgentStatusChanged) = "agent.status_changed",
    /// A join token was issued.
    JoinTokenIssued(JoinTokenIssued) = "join_token.issued",
    /// An agent attested and received an identity token.
    AgentAttested(IdentityIssued) = "agent.attested",
    /// An agent renewed its identity token.
    IdentityRenewed(IdentityIssued) = "identity.renewed",
    /// An attestation was refused.
    AttestationRefused(Refused) = "attestation.refused",
    /// A task started (active, or pending an approval).
    TaskStarted(TaskStarted) = "task.started",
    /// A task start was refused.
    TaskRefused(TaskRefused) = "task.refused",
    /// A task was completed by its agent.
    TaskCompleted(TaskEnded) = "task.completed",
    /// A task was revoked.
    TaskRevoked(TaskEnded) = "task.revoked",
    /// A policy change narrowed a live task's grant.
    TaskGrantReduced(GrantReduced) = "task.grant_reduced",
    /// A task ran out of time.
    TaskExpired(TaskEnded) = "task.expired",
    /// A per-call decision.
    Decision(CallDecided) = "decision",
    /// A call refused before or after its decision.
    CallRefused(CallRefused) = "call.refused",
    /// A policy bundle started enforcing.
    PolicyLoaded(PolicyLoaded) = "policy.loaded",
    /// A candidate bundle was rejected.
    PolicyRejected(PolicyRejected) = "policy.rejected",
    /// A shadow bundle decided a call differently.
    ShadowDisagreement(ShadowDisagreement) = "policy.shadow_disagreement",
    /// The signing key was rotated.
    KeysRotated(KeysRotated) = "keys.rotated",
    /// The server started.
    ServerStarted(ServerStarted) = "server.started",
    /// A pending task was approved and became active.
    TaskActivated(TaskActivated) = "task.activated",
    /// An approval request was opened.
    ApprovalRequested(ApprovalRequested) = "approval.requested",
    /// One approver approved a request that needs more.
    ApprovalVote(ApprovalVoted) = "approval.vote",
    /// A request gathered its approvals.
    ApprovalApproved(ApprovalVoted) = "approval.approved",
    /// An approver refused a request.
    ApprovalDenied(ApprovalMoved) = "approval.denied",
    /// A request or an unused approval ran out of time.
    ApprovalExpired(ApprovalMoved) = "approval.expired",
    /// An approval stopped being valid.
    ApprovalInvalidated(ApprovalMoved) = "approval.invalidated",
    /// An approval was used.
    ApprovalConsumed(ApprovalMoved) = "approval.consumed",
    /// A human approver was added.
    ApproverAdded(ApproverAdded) = "approver.added",
    /// A human approver was disabled.
    ApproverRemoved(ApproverRemoved) = "approver.removed",
    /// An approver group's webhook changed.
    ApproverGroupUpdated(ApproverGroupUpdated) = "approver_group.updated",
    /// A human declared break-glass.
    BreakGlassDeclared(BreakGlassDeclared) = "break_glass.declared",
    /// A break-glass use was reviewed and closed.
    BreakGlassReviewed(BreakGlassReviewed) = "break_glass.reviewed",
    /// A human's attempt was refused.
    HumanRefused(HumanRefused) = "human.refused",
    /// An upstream secret was stored or replaced.
    SecretPut(SecretPut) = "secret.put",
    /// An upstream secret was deleted.
    SecretDeleted(SecretDeleted) = "secret.deleted",
    /// Every secret was re-sealed.
    SecretsResealed(SecretsResealed) = "secrets.resealed",
    /// What the upstream answered to an allowed gateway call.
    GatewayResult(GatewayResult) = "gateway.result",
    /// MCP tool definitions were pinned on first sight.
    ToolPinned(ToolsSeen) = "tool.pinned",
    /// An MCP server showed a new, changed or shadowing tool.
    ToolChanged(ToolsSeen) = "tool.changed",
    /// An admin approved a held tool definition.
    ToolApproved(ToolApproved) = "tool.approved",
    /// An MCP request that is not a tool call.
    McpRequest(McpRequest) = "mcp.request",
    /// A session with an MCP server restarted, or failed to start.
    McpServerStarted(McpServerStarted) = "mcp_server.started",
    /// Untrusted content entered a task.
    TaskTainted(TaskTainted) = "task.tainted",
    /// The store commits again after failing.
    StoreRecovered(StoreRecovered) = "store.recovered",
    /// A task delegated a sub-task to an agent (RFC 8693 token exchange).
    TaskDelegated(TaskDelegated) = "task.delegated",
    /// A delegation was refused.
    DelegationRefused(DelegationRefused) = "delegation.refused",
    /// A containment rule fired and its response ran.
    ContainmentFired(ContainmentFired) = "containment.fired",
    /// A running task declared a new plan.
    TaskRedeclared(TaskRedeclared) = "task.redeclared",
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    /// Completed by its agent.
    Completed,
    /// Revoked.
    Revoked,
    /// Ran out of time.
    Expired,
}

impl Body {
    /// The body of a task's end.
    pub fn task_end(how: TaskEnd, ended: TaskEnded) -> Self {
        match how {
            TaskEnd::Completed => Self::TaskCompleted(ended),
            TaskEnd::Revoked => Self::TaskRevoked(ended),
            TaskEnd::Expired => Self::TaskExpired(ended),
        }
    }

    /// The body of an approval's move to `to`, when `to` is an end an event records
    /// this way (denied, expired, invalidated, consumed).
    pub fn approval_moved(to: ApprovalState, moved: ApprovalMoved) -> Option<Self> {
        match to {
            ApprovalState::Denied => Some(Self::ApprovalDenied(moved)),
            ApprovalState::Expired => Some(Self::ApprovalExpired(moved)),
            ApprovalState::Invalidated => Some(Self::ApprovalInvalidated(moved)),
            ApprovalState::Consumed => Some(Self::ApprovalConsumed(moved)),
            ApprovalState::Pending | ApprovalState::Approved => None,
        }
    }
}

/// `agent.registered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRegistered {
    /// Its owner.
    pub owner: HumanId,
    /// Its risk tier.
    pub tier: RiskTier,
    /// How it must attest.
    pub attestation: AttestationRule,
    /// Its SPIFFE id.
    pub spiffe_id: String,
}

/// `agent.status_changed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatusChanged {
    /// The status before.
    pub from: AgentStatus,
    /// The status now.
    pub to: AgentStatus,
    /// Why.
    pub reason: String,
}

/// `join_token.issued`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenIssued {
    /// When the join token expires (unix ms).
    pub expires_at_ms: i64,
}

/// `agent.attested` and `identity.renewed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityIssued {
    /// How the agent proved itself (`join_token`, `renewal`…).
    pub method: String,
    /// The identity's SPIFFE id.
    pub spiffe_id: String,
    /// The identity token's id.
    pub jti: String,
    /// Its expiry (unix s).
    pub exp: i64,
    /// When the agent authenticated (unix s).
    pub auth_time: i64,
    /// The external token it attested with (OIDC or SPIFFE), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalSubject>,
}

/// The external workload token behind an attestation: which configured source vouched,
/// for which subject, and the token's own id (one-time use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalSubject {
    /// `oidc:<name>` or `spiffe:<name>`: the configured source.
    pub source: String,
    /// The token's `sub` (a service account, a repository's workflow, a SPIFFE ID).
    pub subject: String,
    /// The token's `jti`, if the issuer set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A refusal with only a code (`attestation.refused`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    /// The stable code the caller got.
    pub code: String,
}

/// `task.started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStarted {
    /// The declared intent.
    pub purpose: String,
    /// `active` or `pending`.
    pub state: TaskState,
    /// What the agent asked for.
    pub requested: RequestedScope,
    /// What policy granted.
    pub grant: Grant,
    /// Each requested pair and how policy answered it.
    pub items: Vec<ItemOutcome>,
    /// The `start_task` decision.
    pub decision: Decision,
    /// The granted lifetime.
    pub ttl_secs: i64,
    /// When the task expires (unix ms).
    pub expires_at_ms: i64,
}

/// `task.refused`: by policy (with its decision) or before policy (with a code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRefused {
    /// The stable code, when refused before policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The message the caller got, when refused before policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The declared intent, when policy refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// What was asked, when policy refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<RequestedScope>,
    /// The refusing decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Each pair and how policy answered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ItemOutcome>>,
}

/// `task.completed`, `task.revoked`, `task.expired`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskEnded {
    /// Why.
    pub reason: String,
    /// Who (`admin`, the agent, an approver, `mandate`).
    pub by: String,
    /// The approval whose denial ended a pending start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The bundle before a policy change that ended the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// The bundle after that change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<String>,
    /// The policies that no longer permit the task, after a policy change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    /// Their reasons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    /// What failed, when the task could not be re-decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `task.grant_reduced`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantReduced {
    /// The bundle before.
    pub previous_version: String,
    /// The bundle now.
    pub bundle_version: String,
    /// The policies that decided the narrower grant.
    pub policies: Vec<String>,
    /// Their reasons.
    pub reasons: Vec<String>,
    /// The grant before.
    pub previous_grant: Grant,
    /// The grant now.
    pub grant: Grant,
}

/// `decision`: one call, decided and recorded before the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallDecided {
    /// The decision id the caller got.
    pub decision_id: String,
    /// The task's declared intent.
    pub intent: String,
    /// The tool.
    pub tool: ToolName,
    /// Its action class.
    pub action: ActionClass,
    /// What it acts on.
    pub resource: String,
    /// Where it sends data.
    pub destination: Option<Destination>,
    /// The data domain decided on (the catalog's, where it names one).
    pub data_domain: Option<DataDomain>,
    /// The data domain the caller declared.
    pub declared_data_domain: Option<DataDomain>,
    /// Declared sensitivity.
    pub sensitivity: Sensitivity,
    /// SHA-256 of the canonical arguments.
    pub args_digest: String,
    /// The answer.
    pub outcome: Outcome,
    /// Determining policies.
    pub policies: Vec<String>,
    /// Their reasons.
    pub reasons: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
    /// Obligations on an allow.
    pub obligations: Vec<Obligation>,
    /// The bundle that decided.
    pub bundle_version: String,
    /// Time to decide, µs.
    pub latency_us: u64,
    /// The approval needed or used.
    pub approval_id: Option<String>,
    /// Who approved, on an allow by approval.
    pub approved_by: Option<Vec<String>>,
    /// Allowed by break-glass, outside policy.
    pub break_glass: bool,
    /// The decision's span (OTLP export): in the agent's trace when it sent a
    /// `traceparent`, under Mandate's call span when a gateway made the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<SpanRecord>,
    /// Where the task sits in its delegation chain, when it was delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<ChainRef>,
    /// The enforcement point that asked (an authenticated AuthZEN or ext_authz caller),
    /// when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
}

/// A delegated task's place in its chain, as decisions carry it (the full chain is in the
/// task's `task.delegated` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRef {
    /// Links below the root.
    pub depth: u32,
    /// The task that delegated this one.
    pub parent_task: String,
    /// The task at the top of the chain.
    pub root_task: String,
}

impl From<&Delegation> for ChainRef {
    fn from(d: &Delegation) -> Self {
        Self {
            depth: d.depth,
            parent_task: d.parent_task.clone(),
            root_task: d.root_task.clone(),
        }
    }
}

/// `task.delegated`, on the child task: what was asked, what the parent held, what policy
/// decided and what the child was granted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDelegated {
    /// The child's declared intent.
    pub purpose: String,
    /// The chain, this task last.
    pub delegation: Delegation,
    /// What the sub-task asked for.
    pub requested: RequestedScope,
    /// What the parent held when it delegated.
    pub parent_grant: Grant,
    /// What the child was granted (within both).
    pub grant: Grant,
    /// Each requested pair and how policy answered it for the child agent.
    pub items: Vec<ItemOutcome>,
    /// The `delegate` decision.
    pub decision: Decision,
    /// The granted lifetime.
    pub ttl_secs: i64,
    /// When the child expires (unix ms; never after its parent).
    pub expires_at_ms: i64,
    /// The facts inherited from the parent (taint, data domains touched).
    pub inherited: Inherited,
}

/// What a child inherits from its parent's history at delegation time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inherited {
    /// Content from an untrusted source had entered the parent.
    pub untrusted_content: bool,
    /// Data domains the parent had touched.
    pub data_domains: Vec<String>,
    /// Reads of confidential or restricted data by the parent.
    pub sensitive_reads: i64,
}

/// `delegation.refused`, on the parent task when it is known: the stable code, what was
/// asked and what the parent held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelegationRefused {
    /// The stable code the caller got.
    pub code: String,
    /// Why.
    pub message: String,
    /// The agent the sub-task was for, when its identity token was valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_agent: Option<String>,
    /// What was asked, when it parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<RequestedScope>,
    /// What the parent held, when it was live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_grant: Option<Grant>,
    /// Each way the ask exceeded the parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub widening: Vec<String>,
    /// The refusing decision, when policy refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// `containment.fired`: a containment rule saw enough in committed events to act.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainmentFired {
    /// The rule's name, as configured.
    pub rule: String,
    /// The signal it watches (`honeytoken`, `denial_burst`, …).
    pub signal: String,
    /// What it counts over: `task` or `agent`.
    pub per: String,
    /// What the signal saw, in words.
    pub summary: String,
    /// The sequence numbers of the committed events that made the signal fire.
    pub evidence: Vec<i64>,
    /// The configured response (`revoke_task`, `quarantine_agent`, `step_up`, `alert`).
    pub response: String,
    /// How the response went: `applied`, `already` (nothing left to do) or `failed`.
    pub result: String,
    /// Tasks the response ended (the task and its descendants, or the agent's tasks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
    /// Why the response failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Microseconds from the commit of the last piece of evidence to the response's
    /// acknowledgement.
    pub reaction_us: u64,
}

/// `task.redeclared`: the plan before and after a re-declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRedeclared {
    /// `narrower` (in force at once, no policy needed) or `wider` (decided by policy).
    pub change: String,
    /// The purpose before.
    pub previous_purpose: String,
    /// The purpose now.
    pub purpose: String,
    /// The scope asked for before.
    pub previous_requested: RequestedScope,
    /// The scope asked for now.
    pub requested: RequestedScope,
    /// The grant before.
    pub previous_grant: Grant,
    /// The grant now.
    pub grant: Grant,
    /// The `start_task` decision on the new plan (absent for a narrowing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The approval that allowed a wider plan, when policy asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

/// `call.refused`: a call refused before its decision (bad token, ended task, approval
/// problem), after it (the task ended meanwhile), or a summary of many such refusals.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CallRefused {
    /// The stable code the caller got.
    pub code: String,
    /// The tool, when known (as the caller named it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The MCP server, for a call to a held tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Why the tool is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The action class, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionClass>,
    /// What it acted on, when it was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// SHA-256 of the canonical arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_digest: Option<String>,
    /// The approval the caller named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The decision made before the task ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    /// What policy had said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_outcome: Option<Outcome>,
    /// Its determining policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    /// The bundle that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_version: Option<String>,
    /// Time to decide, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// How many refusals a summary stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Whether this is a summary of rate-limited refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summarised: Option<bool>,
    /// The refusal's span (OTLP export), when the caller sent a `traceparent` or the
    /// task is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<SpanRecord>,
}

/// `policy.loaded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyLoaded {
    /// The bundle now enforcing.
    pub bundle_version: String,
    /// The bundle before (absent at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// How many policies it holds.
    pub policies: usize,
    /// Where it was read from (at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What asked for the reload (`api`, `signal`, `watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// `policy.rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRejected {
    /// The bundle that stays.
    pub enforcing_version: String,
    /// What asked for the reload.
    pub trigger: String,
    /// Why the candidate was rejected, with file:line:column.
    pub diagnostics: Value,
}

/// One side of a shadow comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The answer.
    pub outcome: Outcome,
    /// Determining policies.
    pub policies: Vec<String>,
    /// The bundle.
    pub bundle_version: String,
}

/// `policy.shadow_disagreement`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowDisagreement {
    /// The decision compared.
    pub decision_id: String,
    /// The tool.
    pub tool: ToolName,
    /// Its action class.
    pub action: ActionClass,
    /// What the enforcing bundle said.
    pub enforced: Verdict,
    /// What the shadow bundle said.
    pub shadow: Verdict,
}

/// `keys.rotated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysRotated {
    /// The new signing key.
    pub kid: String,
    /// Why.
    pub reason: String,
}

/// `task.activated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskActivated {
    /// The start's approval.
    pub approval_id: String,
    /// Who approved it.
    pub approved_by: Vec<String>,
}

/// The action an approval is bound to, as the chain records it: the arguments' digest,
/// never their values (they may be sensitive, and the chain is append-only).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ApprovalAction {
    /// The tool.
    pub tool: Option<Value>,
    /// Its action class.
    pub action: Option<Value>,
    /// What it acts on.
    pub resource: Option<Value>,
    /// SHA-256 of the canonical arguments.
    pub args_digest: Option<Value>,
    /// Where it sends data.
    pub destination: Option<Value>,
    /// The data domain.
    pub data_domain: Option<Value>,
}

/// `approval.requested`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequested {
    /// The approval.
    pub approval_id: String,
    /// A call or a task start.
    pub kind: ApprovalKind,
    /// The digest of the exact action approved.
    pub digest: String,
    /// The group asked.
    pub group: String,
    /// Distinct approvers needed.
    pub required: u32,
    /// Whether the owner may approve.
    pub owner_may_approve: bool,
    /// When it expires (unix ms).
    pub expires_at_ms: i64,
    /// The bundle that asked.
    pub bundle_version: String,
    /// The policies that asked.
    pub policies: Vec<String>,
    /// Their reasons.
    pub reasons: Vec<String>,
    /// The action.
    pub action: ApprovalAction,
}

/// `approval.vote` and `approval.approved`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalVoted {
    /// The approval.
    pub approval_id: String,
    /// Who voted.
    pub by: HumanId,
    /// The digest approved.
    pub digest: String,
    /// Votes so far (set by the store in the vote's transaction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<usize>,
    /// Votes needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<u32>,
    /// The state after the vote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ApprovalState>,
}

/// `approval.denied`, `approval.expired`, `approval.invalidated`, `approval.consumed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalMoved {
    /// The approval.
    pub approval_id: String,
    /// Who moved it (an approver, the agent that used it, `mandate`).
    pub by: String,
    /// Why.
    pub reason: String,
    /// The digest of the action.
    pub digest: String,
}

/// `approver.added`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApproverAdded {
    /// The approver.
    pub name: HumanId,
    /// Their roles.
    pub roles: Vec<ApproverRole>,
    /// Their groups.
    pub groups: Vec<String>,
    /// Who added them.
    pub by: String,
}

/// `approver.removed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApproverRemoved {
    /// The approver.
    pub name: String,
    /// Who removed them.
    pub by: String,
}

/// `approver_group.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApproverGroupUpdated {
    /// The group.
    pub group: String,
    /// Its webhook now.
    pub webhook_url: Option<String>,
    /// Who changed it.
    pub by: String,
}

/// `break_glass.declared`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakGlassDeclared {
    /// The break-glass.
    pub break_glass_id: String,
    /// Who declared it.
    pub declared_by: HumanId,
    /// Why it could not wait.
    pub justification: String,
    /// What it grants.
    pub grant: Grant,
    /// Its lifetime.
    pub ttl_secs: i64,
    /// When it expires (unix ms).
    pub expires_at_ms: i64,
    /// The task's purpose.
    pub purpose: String,
    /// The group alerted.
    pub alert_group: String,
    /// Whether that group has a webhook.
    pub alert_webhook: bool,
}

/// `break_glass.reviewed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakGlassReviewed {
    /// The break-glass.
    pub break_glass_id: String,
    /// The reviewer.
    pub by: HumanId,
    /// Their notes.
    pub notes: String,
}

/// `human.refused`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HumanRefused {
    /// What was attempted (`approve`, `deny`, `break_glass`, `review`).
    pub action: String,
    /// On what.
    pub target: String,
    /// By whom, when known.
    pub by: Option<String>,
    /// The stable code they got.
    pub code: String,
    /// The message they got.
    pub message: String,
}

/// `secret.put`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretPut {
    /// The secret's name (never its value).
    pub name: String,
    /// The sealing key.
    pub key_id: String,
    /// Who.
    pub by: String,
    /// Whether it replaced a value.
    pub replaced: bool,
}

/// `secret.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretDeleted {
    /// The secret's name.
    pub name: String,
    /// Who.
    pub by: String,
}

/// `secrets.resealed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretsResealed {
    /// The key now sealing every secret.
    pub key_id: String,
    /// How many were re-sealed.
    pub resealed: usize,
    /// Who.
    pub by: String,
}

/// `gateway.result`: what the upstream (an HTTP upstream or an MCP server) answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayResult {
    /// `mcp` for the MCP gateway (absent for HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The decision that allowed the call.
    pub decision_id: String,
    /// The upstream or MCP server.
    pub upstream: String,
    /// The tool (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The request (MCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The upstream's HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// The HTTP method forwarded (HTTP gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// What was called, canonical: the upstream path and query as forwarded (HTTP), or
    /// the MCP tool, prompt or resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// SHA-256 of the request body as forwarded (`sha256:<hex>`), when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
    /// The `Location` the upstream answered with (what a create made), redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The `ETag` the upstream answered with (the version a change produced), redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Bytes returned to the agent.
    pub bytes_returned: u64,
    /// Whether a secret was redacted from the answer (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_redacted: Option<bool>,
    /// Whether the answer is untrusted content.
    pub untrusted_content: bool,
    /// What failed, if anything.
    pub error: Option<String>,
    /// Time from decision to the end of the answer, µs.
    pub duration_us: u64,
    /// The call's span (OTLP export), parent of its decision's span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<SpanRecord>,
}

/// `tool.pinned` and `tool.changed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolsSeen {
    /// The MCP server.
    pub server: String,
    /// Tools pinned as approved.
    pub pinned: Vec<String>,
    /// Tools held, with why.
    pub held: Vec<HeldTool>,
}

/// A tool held until an admin approves its definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldTool {
    /// The tool.
    pub tool: String,
    /// Why it is held (new, changed, shadowing).
    pub reason: String,
    /// The digest to review.
    pub digest: String,
}

/// A tool an MCP listing did not show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HiddenTool {
    /// The tool.
    pub tool: String,
    /// Why.
    pub why: String,
}

/// `tool.approved`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolApproved {
    /// The MCP server.
    pub server: String,
    /// The tool.
    pub tool: String,
    /// The digest approved.
    pub digest: String,
    /// The digest approved before.
    pub previous_digest: Option<String>,
    /// Why it was held.
    pub was: String,
    /// Who approved.
    pub by: String,
    /// The definition reviewed (its canonical JSON text).
    pub definition: String,
}

/// `mcp.request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpRequest {
    /// The MCP server.
    pub server: String,
    /// The method.
    pub method: String,
    /// The tools shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<Vec<String>>,
    /// The tools held back, with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<HiddenTool>>,
}

/// `mcp_server.started`: a restart, or a failed start (which backs off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpServerStarted {
    /// The MCP server.
    pub server: String,
    /// `stdio` or `streamable_http`.
    pub transport: String,
    /// The session replaces one that closed.
    pub restart: bool,
    /// Failed starts in a row, this one included (0 when it started).
    pub failures_in_row: u32,
    /// Why it failed to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `server.started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStarted {
    /// Mandate's version.
    pub version: String,
}

/// `task.tainted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskTainted {
    /// Where the untrusted content came from.
    pub source: String,
}

/// `store.recovered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreRecovered {
    /// What had failed.
    pub failure: String,
}

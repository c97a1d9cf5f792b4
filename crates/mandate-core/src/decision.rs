//! Decision values: what policy answers (allow, deny, approval required), which policies
//! determined it and why, and how each requested pair fared at a task start. Plain data,
//! shared by the policy engine that makes them and the audit events that record them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ActionClass, ToolName};

/// The three answers policy can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Go ahead.
    Allow,
    /// Do not.
    Deny,
    /// Permitted only once a human approves this exact action.
    ApprovalRequired,
}

impl Outcome {
    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::ApprovalRequired => "approval_required",
        }
    }
}

/// A policy decision: what, which policies determined it, under which bundle, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Decision {
    /// The answer.
    pub outcome: Outcome,
    /// Ids of the policies that determined the answer (pseudo ids such as
    /// `mandate:default-deny` when no policy did).
    pub policies: Vec<String>,
    /// Human-readable reasons, one per determining policy.
    pub reasons: Vec<String>,
    /// Evaluation errors; any error makes the answer a deny.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What the enforcement point must do with an allowed call (from `@obligation_*`
    /// annotations on the determining policies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub obligations: Vec<Obligation>,
    /// Who must approve, when the answer is `approval_required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalTerms>,
    /// Content hash of the bundle that decided.
    pub bundle_version: String,
}

/// Who must approve an approval-required action, from the determining policies'
/// annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalTerms {
    /// Distinct approvers needed (`@approvals("N")`; the largest among the policies).
    pub approvals: u32,
    /// Whether the agent's owner may approve (`@owner_may_approve` on every approval
    /// policy); by default they may not (separation of duties).
    pub owner_may_approve: bool,
    /// The approver group asked (`@approver_group("…")`, default `default`).
    pub group: String,
}

/// One obligation: `@obligation_<name>("<value>")` on a determining policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Obligation {
    /// The name after `obligation_`, e.g. `redact`, `max_rate`.
    pub name: String,
    /// The annotation's value, e.g. `ssn,email` or `10/min`.
    pub value: String,
    /// The policy that imposed it.
    pub policy: String,
}

impl Decision {
    /// A deny that no policy made (grant ceiling, inactive task…), with its reason.
    pub fn deny(policy: &str, reason: String, bundle_version: &str) -> Self {
        Self {
            outcome: Outcome::Deny,
            policies: vec![policy.to_owned()],
            reasons: vec![reason],
            errors: Vec::new(),
            obligations: Vec::new(),
            approval: None,
            bundle_version: bundle_version.to_owned(),
        }
    }
}

/// How one requested (tool, action) pair fared at task start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ItemOutcome {
    /// The tool.
    pub tool: ToolName,
    /// The action class.
    pub action: ActionClass,
    /// Allow (granted), approval_required (granted; each call needs approval) or deny.
    pub outcome: Outcome,
    /// The policies that determined it.
    pub policies: Vec<String>,
    /// Why: the determining policies' reasons, or what was missing (a data domain the
    /// catalog places the tool in but the task did not declare).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

//! Human approvals: the life of one approval request and the roles of the humans who
//! answer them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for enough approvers.
    Pending,
    /// Approved: usable once, for the exact action it was bound to, until it expires.
    Approved,
    /// Refused by an approver.
    Denied,
    /// Ran out of time before it was answered or used.
    Expired,
    /// Used: the action it approved ran (or the task it approved started).
    Consumed,
    /// No longer valid: the task ended or the policy bundle changed.
    Invalidated,
}

impl ApprovalState {
    /// The stable lowercase name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Consumed => "consumed",
            Self::Invalidated => "invalidated",
        }
    }

    /// True once nothing more can happen to it.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Approved)
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApprovalState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "approved" => Ok(Self::Approved),
            "denied" => Ok(Self::Denied),
            "expired" => Ok(Self::Expired),
            "consumed" => Ok(Self::Consumed),
            "invalidated" => Ok(Self::Invalidated),
            other => Err(format!("unknown approval state {other:?}")),
        }
    }
}

/// What an approval request asks a human to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// One tool call, with its exact arguments.
    Call,
    /// The start of a task (its whole grant).
    TaskStart,
    /// A running task's wider plan (its new purpose and scope).
    PlanChange,
}

impl ApprovalKind {
    /// The stable name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::TaskStart => "task_start",
            Self::PlanChange => "plan_change",
        }
    }
}

impl FromStr for ApprovalKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "call" => Ok(Self::Call),
            "task_start" => Ok(Self::TaskStart),
            "plan_change" => Ok(Self::PlanChange),
            other => Err(format!("unknown approval kind {other:?}")),
        }
    }
}

/// What a human operator may do. Agents never hold a role: their tokens are never
/// approver credentials.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ApproverRole {
    /// Approves or denies requests of the groups they belong to.
    Approver,
    /// May declare break-glass for an agent.
    BreakGlass,
    /// May close break-glass after-reviews (never their own) and read reports.
    Reviewer,
}

impl ApproverRole {
    /// The stable name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approver => "approver",
            Self::BreakGlass => "break_glass",
            Self::Reviewer => "reviewer",
        }
    }
}

impl fmt::Display for ApproverRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApproverRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "approver" => Ok(Self::Approver),
            "break_glass" | "break-glass" => Ok(Self::BreakGlass),
            "reviewer" => Ok(Self::Reviewer),
            other => Err(format!(
                "unknown role {other:?}: expected approver, break_glass or reviewer"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        use ApprovalState::*;
        for s in [Pending, Approved, Denied, Expired, Consumed, Invalidated] {
            assert_eq!(s.as_str().parse::<ApprovalState>().unwrap(), s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert!(!Pending.is_final() && !Approved.is_final() && Consumed.is_final());
        for r in [
            ApproverRole::Approver,
            ApproverRole::BreakGlass,
            ApproverRole::Reviewer,
        ] {
            assert_eq!(r.as_str().parse::<ApproverRole>().unwrap(), r);
        }
        for k in [ApprovalKind::Call, ApprovalKind::TaskStart] {
            assert_eq!(k.as_str().parse::<ApprovalKind>().unwrap(), k);
        }
        assert!("admin".parse::<ApproverRole>().is_err());
    }
}

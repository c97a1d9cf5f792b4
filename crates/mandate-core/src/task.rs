use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A task's life: pending → active → completed / expired / revoked.
/// The three end states are final: nothing leaves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Asked for, waiting on an approval; holds no token.
    Pending,
    /// Running: its token is honoured until it expires.
    Active,
    /// Finished by its agent.
    Completed,
    /// Ran out of time.
    Expired,
    /// Ended by an administrator, a policy change or containment.
    Revoked,
}

/// A transition the state machine forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task is {from} and cannot become {to}")]
pub struct TransitionError {
    /// The current state.
    pub from: TaskState,
    /// The state asked for.
    pub to: TaskState,
}

impl TaskState {
    /// The stable lowercase name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// True for completed, expired and revoked.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Expired | Self::Revoked)
    }

    /// Checks that `self → to` is allowed.
    pub fn transition(self, to: TaskState) -> Result<TaskState, TransitionError> {
        let ok = matches!(
            (self, to),
            (Self::Pending, Self::Active | Self::Expired | Self::Revoked)
                | (
                    Self::Active,
                    Self::Completed | Self::Expired | Self::Revoked
                )
        );
        if ok {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "active" => Ok(Self::Active),
            "completed" => Ok(Self::Completed),
            "expired" => Ok(Self::Expired),
            "revoked" => Ok(Self::Revoked),
            other => Err(format!("unknown task state {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::{self, *};

    #[test]
    fn transitions() {
        let all = [Pending, Active, Completed, Expired, Revoked];
        let allowed = [
            (Pending, Active),
            (Pending, Expired),
            (Pending, Revoked),
            (Active, Completed),
            (Active, Expired),
            (Active, Revoked),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.transition(to).is_ok(),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        for s in all {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
    }
}

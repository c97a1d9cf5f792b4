use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AgentName, Grant, RequestedScope};

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

/// One link of a delegation chain: a task and the agent that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelegationLink {
    /// The task.
    pub task_id: String,
    /// Its agent.
    pub agent: AgentName,
}

/// Where a delegated task sits in its chain (R8). A task started directly has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Delegation {
    /// Links below the root: 1 for a task delegated by a root task.
    pub depth: u32,
    /// The task that delegated this one.
    pub parent_task: String,
    /// The task at the top of the chain (started directly).
    pub root_task: String,
    /// The accountable human owner of the root task's agent.
    pub root_owner: String,
    /// Every link from the root down to this task, this task last.
    pub chain: Vec<DelegationLink>,
}

impl Delegation {
    /// The delegation of a child `task_id` of `agent` under a parent with `parent` (its
    /// own delegation, `None` for a root task).
    pub fn child_of(
        parent: Option<&Delegation>,
        parent_link: DelegationLink,
        parent_owner: &str,
        child: DelegationLink,
    ) -> Self {
        let (root_task, root_owner, mut chain, depth) = match parent {
            Some(p) => (
                p.root_task.clone(),
                p.root_owner.clone(),
                p.chain.clone(),
                p.depth + 1,
            ),
            None => (
                parent_link.task_id.clone(),
                parent_owner.to_owned(),
                vec![parent_link.clone()],
                1,
            ),
        };
        chain.push(child);
        Self {
            depth,
            parent_task: parent_link.task_id,
            root_task,
            root_owner,
            chain,
        }
    }
}

/// How a requested sub-task would exceed what its parent holds now: one entry per
/// dimension that widens, each naming what was asked and what the parent holds.
pub fn widening(asked: &RequestedScope, parent: &Grant) -> Vec<String> {
    let mut out = Vec::new();
    for tool in &asked.tools {
        match parent.tools.get(tool) {
            None => out.push(format!("tool `{tool}` is not in the parent's grant")),
            Some(held) => {
                for a in &asked.actions {
                    if !held.contains(a) {
                        let held: Vec<&str> = held.iter().map(|h| h.as_str()).collect();
                        out.push(format!(
                            "action `{a}` on tool `{tool}` is not in the parent's grant (it holds {})",
                            held.join(", ")
                        ));
                    }
                }
            }
        }
    }
    for d in &asked.data_domains {
        if !parent.data_domains.contains(d) {
            out.push(format!("data domain `{d}` is not in the parent's grant"));
        }
    }
    for d in &asked.destinations {
        if !parent.destinations.contains(d) {
            out.push(format!("destination `{d}` is not in the parent's grant"));
        }
    }
    out
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

    #[test]
    fn widening_names_every_dimension() {
        use crate::{ActionClass, DataDomain, Destination, Grant, RequestedScope, ToolName};
        let t = |s: &str| ToolName::parse(s).unwrap();
        let mut parent = Grant::default();
        parent
            .tools
            .insert(t("tickets.search"), [ActionClass::Read].into());
        parent
            .data_domains
            .insert(DataDomain::parse("support").unwrap());
        parent
            .destinations
            .insert(Destination::parse("api.example.com:443").unwrap());
        let within = RequestedScope {
            tools: vec![t("tickets.search")],
            actions: vec![ActionClass::Read],
            data_domains: vec![DataDomain::parse("support").unwrap()],
            destinations: vec![Destination::parse("API.example.com:443").unwrap()],
        };
        assert!(super::widening(&within, &parent).is_empty());
        let wider = RequestedScope {
            tools: vec![t("tickets.search"), t("tickets.delete")],
            actions: vec![ActionClass::Read, ActionClass::Write],
            data_domains: vec![DataDomain::parse("finance").unwrap()],
            destinations: vec![Destination::parse("api.example.com:8443").unwrap()],
        };
        let w = super::widening(&wider, &parent);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].contains("action `write`"));
        assert!(w[1].contains("tickets.delete"));
        assert!(w[2].contains("finance"));
        assert!(w[3].contains("8443"));
    }
}

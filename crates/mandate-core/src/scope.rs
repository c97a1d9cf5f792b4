use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why a scope element was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// A tool name broke the naming rule.
    #[error(
        "tool name {0:?} is invalid: use 1-128 characters of A-Z, a-z, 0-9, '.', '_', '-', ':' or '/', starting with a letter or digit"
    )]
    Tool(String),
    /// A data domain broke the naming rule.
    #[error("data domain {0:?} is invalid: use 1-64 characters of a-z, 0-9, '.', '_' or '-'")]
    DataDomain(String),
    /// A destination was not a host or host:port.
    #[error("destination {0:?} is invalid: use a host name or host:port, e.g. api.example.com:443")]
    Destination(String),
    /// An action class was not one of the four.
    #[error("action class {0:?} is unknown: use read, write, delete or execute")]
    ActionClass(String),
    /// A list in the requested scope was empty or too long.
    #[error("scope field `{field}` must list between {min} and {max} entries, got {got}")]
    Count {
        /// The offending field.
        field: &'static str,
        /// Fewest entries allowed.
        min: usize,
        /// Most entries allowed.
        max: usize,
        /// Entries given.
        got: usize,
    },
}

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident, $parse:expr, $pattern:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String, pattern = $pattern)]
        pub struct $name(String);

        impl $name {
            /// Parses and normalises the value, refusing anything outside the naming rule.
            pub fn parse(s: &str) -> Result<Self, ScopeError> {
                let f: fn(&str) -> Result<String, ScopeError> = $parse;
                f(s).map(Self)
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ScopeError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// A tool's name as policy sees it, e.g. `tickets.search` or `github/create_pr`.
    ToolName,
    |s| {
        let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        let ok = first_ok
            && s.len() <= 128
            && !s.contains("..")
            && !s.contains("//")
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
        if ok { Ok(s.to_owned()) } else { Err(ScopeError::Tool(s.to_owned())) }
    },
    "^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
);

string_newtype!(
    /// A data domain, e.g. `support-tickets` or `finance`.
    DataDomain,
    |s| {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if ok { Ok(s.to_owned()) } else { Err(ScopeError::DataDomain(s.to_owned())) }
    },
    "^[a-z0-9._-]{1,64}$"
);

string_newtype!(
    /// Where a call sends data: a host name, optionally with a port. Stored lowercase.
    Destination,
    |s| {
        let lower = s.to_ascii_lowercase();
        let (host, port) = match lower.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (lower.as_str(), None),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && !host.starts_with(['.', '-'])
            && !host.ends_with('.')
            && !host.contains("..")
            && host.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'));
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok_and(|n| n > 0));
        if host_ok && port_ok { Ok(lower) } else { Err(ScopeError::Destination(s.to_owned())) }
    },
    "^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$"
);

/// What kind of effect an action has. The order is the escalation order:
/// read < write < delete; execute runs code and is treated separately by policy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionClass {
    /// Observes without changing anything.
    Read,
    /// Creates or changes something.
    Write,
    /// Removes something.
    Delete,
    /// Runs code or a workflow.
    Execute,
}

impl ActionClass {
    /// Every action class, in escalation order.
    pub const ALL: [ActionClass; 4] = [Self::Read, Self::Write, Self::Delete, Self::Execute];

    /// The stable lowercase name, also the Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Delete => "delete",
            Self::Execute => "execute",
        }
    }
}

impl fmt::Display for ActionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActionClass {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "delete" => Ok(Self::Delete),
            "execute" => Ok(Self::Execute),
            other => Err(ScopeError::ActionClass(other.to_owned())),
        }
    }
}

/// The scope an agent asks for when it starts a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestedScope {
    /// Tools the task needs.
    #[schema(min_items = 1, max_items = 256)]
    pub tools: Vec<ToolName>,
    /// Action classes the task needs on those tools.
    #[schema(min_items = 1, max_items = 256)]
    pub actions: Vec<ActionClass>,
    /// Data domains the task will touch.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub data_domains: Vec<DataDomain>,
    /// Destinations the task will send data to.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub destinations: Vec<Destination>,
}

impl RequestedScope {
    /// Checks list sizes: tools and actions must be non-empty, every list at most `max`.
    pub fn check_bounds(&self, max: usize) -> Result<(), ScopeError> {
        let lists: [(&'static str, usize, usize); 4] = [
            ("tools", self.tools.len(), 1),
            ("actions", self.actions.len(), 1),
            ("data_domains", self.data_domains.len(), 0),
            ("destinations", self.destinations.len(), 0),
        ];
        for (field, got, min) in lists {
            if got < min || got > max {
                return Err(ScopeError::Count {
                    field,
                    min,
                    max,
                    got,
                });
            }
        }
        Ok(())
    }
}

/// What policy actually granted a task: always a subset of what was requested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// For each granted tool, the action classes granted on it.
    pub tools: BTreeMap<ToolName, BTreeSet<ActionClass>>,
    /// Data domains the task may touch.
    pub data_domains: BTreeSet<DataDomain>,
    /// Destinations the task may send data to.
    pub destinations: BTreeSet<Destination>,
}

/// Why a call falls outside a task's grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutsideGrant {
    /// The tool was not granted at all.
    #[error("tool `{0}` is not in this task's grant")]
    Tool(ToolName),
    /// The tool was granted, but not for this action class.
    #[error("action `{action}` on tool `{tool}` is not in this task's grant")]
    Action {
        /// The tool.
        tool: ToolName,
        /// The action class asked for.
        action: ActionClass,
    },
    /// The data domain was not granted.
    #[error("data domain `{0}` is not in this task's grant")]
    DataDomain(DataDomain),
    /// The destination was not granted.
    #[error("destination `{0}` is not in this task's grant")]
    Destination(Destination),
}

impl Grant {
    /// True when nothing at all was granted.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The grant ceiling: a call outside it is denied whatever the policies say.
    pub fn check(
        &self,
        tool: &ToolName,
        action: ActionClass,
        data_domain: Option<&DataDomain>,
        destination: Option<&Destination>,
    ) -> Result<(), OutsideGrant> {
        let actions = self
            .tools
            .get(tool)
            .ok_or_else(|| OutsideGrant::Tool(tool.clone()))?;
        if !actions.contains(&action) {
            return Err(OutsideGrant::Action {
                tool: tool.clone(),
                action,
            });
        }
        if let Some(d) = data_domain
            && !self.data_domains.contains(d)
        {
            return Err(OutsideGrant::DataDomain(d.clone()));
        }
        if let Some(d) = destination
            && !self.destinations.contains(d)
        {
            return Err(OutsideGrant::Destination(d.clone()));
        }
        Ok(())
    }

    /// What both grants allow.
    pub fn intersect(&self, other: &Grant) -> Grant {
        let tools = self
            .tools
            .iter()
            .filter_map(|(tool, actions)| {
                let both: BTreeSet<ActionClass> = other
                    .tools
                    .get(tool)
                    .map(|o| actions.intersection(o).copied().collect())
                    .unwrap_or_default();
                (!both.is_empty()).then(|| (tool.clone(), both))
            })
            .collect();
        Grant {
            tools,
            data_domains: self
                .data_domains
                .intersection(&other.data_domains)
                .cloned()
                .collect(),
            destinations: self
                .destinations
                .intersection(&other.destinations)
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(s: &str) -> ToolName {
        ToolName::parse(s).unwrap()
    }

    #[test]
    fn names() {
        assert!(tool("tickets.search").as_str() == "tickets.search");
        assert!(ToolName::parse("github/create_pr").is_ok());
        for bad in ["", "../etc", "a..b", "/x", "a b", "a//b", "é"] {
            assert!(ToolName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Destination::parse("API.Example.com:443").unwrap().as_str(),
            "api.example.com:443"
        );
        for bad in ["", "a:0", "a:99999", "a..b", "-a", "a/b", "a:", "a@b"] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grant_ceiling() {
        let mut g = Grant::default();
        g.tools
            .insert(tool("tickets.search"), BTreeSet::from([ActionClass::Read]));
        g.data_domains.insert(DataDomain::parse("support").unwrap());
        let support = DataDomain::parse("support").unwrap();
        let finance = DataDomain::parse("finance").unwrap();
        let dest = Destination::parse("evil.example").unwrap();
        type Case<'a> = (
            ToolName,
            ActionClass,
            Option<&'a DataDomain>,
            Option<&'a Destination>,
            bool,
        );
        let cases: Vec<Case<'_>> = vec![
            (tool("tickets.search"), ActionClass::Read, None, None, true),
            (
                tool("tickets.search"),
                ActionClass::Read,
                Some(&support),
                None,
                true,
            ),
            (
                tool("tickets.search"),
                ActionClass::Write,
                None,
                None,
                false,
            ),
            (tool("tickets.delete"), ActionClass::Read, None, None, false),
            (
                tool("tickets.search"),
                ActionClass::Read,
                Some(&finance),
                None,
                false,
            ),
            (
                tool("tickets.search"),
                ActionClass::Read,
                None,
                Some(&dest),
                false,
            ),
        ];
        for (t, a, d, dst, ok) in cases {
            assert_eq!(g.check(&t, a, d, dst).is_ok(), ok, "{t} {a} {d:?} {dst:?}");
        }
    }

    #[test]
    fn scope_bounds() {
        let s = RequestedScope {
            tools: vec![],
            actions: vec![ActionClass::Read],
            data_domains: vec![],
            destinations: vec![],
        };
        assert!(matches!(
            s.check_bounds(4),
            Err(ScopeError::Count { field: "tools", .. })
        ));
    }
}

/// How sensitive the data an action touches is, as declared for the call.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// Published data.
    Public,
    /// Internal data (the default when a call declares nothing).
    #[default]
    Internal,
    /// Confidential data: customers, contracts, source.
    Confidential,
    /// Restricted data: credentials, regulated records.
    Restricted,
}

impl Sensitivity {
    /// The stable lowercase name policy compares against.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Internal => "internal",
            Self::Confidential => "confidential",
            Self::Restricted => "restricted",
        }
    }
}

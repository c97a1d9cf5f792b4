//! The trusted tool catalog: what Mandate knows about each tool from the people who own
//! the policy, never from the tool itself. Lives in the bundle as `tools.json` and is
//! versioned with it; policy reads it as attributes of `Mandate::Tool`.

use std::collections::BTreeMap;

use mandate_core::{DataDomain, ToolName};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The catalog file in a bundle directory.
pub const CATALOG_FILE: &str = "tools.json";

/// How much harm a tool can do.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Reads public or internal data.
    Low,
    /// The default for a cataloged tool.
    #[default]
    Medium,
    /// Changes important state or touches confidential data.
    High,
    /// Can cause irreversible or wide damage.
    Critical,
}

impl Risk {
    /// The name policy compares against.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// One cataloged tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolEntry {
    /// The tool's name as calls use it.
    pub name: ToolName,
    /// The server or upstream that provides it.
    #[serde(default)]
    pub server: String,
    /// How much harm it can do.
    #[serde(default)]
    pub risk: Risk,
    /// The data domain it touches. A call that declares another domain is refused; a call
    /// that declares none is treated as touching this one.
    #[serde(default)]
    pub data_domain: Option<DataDomain>,
    /// It only reads.
    #[serde(default)]
    pub read_only: bool,
    /// It can destroy data.
    #[serde(default)]
    pub destructive: bool,
    /// A decoy: no honest task ever calls it. Every call is denied
    /// (`mandate:honeytoken`), and containment's `honeytoken` signal fires on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub honeytoken: bool,
    /// What agents are told the tool does, instead of what its server says (MCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The tool's arguments, as a JSON Schema subset (see [`crate::ArgSchema`]): policy
    /// reads them typed as `context.args`, and a call whose arguments do not fit is
    /// refused before policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    tools: Vec<ToolEntry>,
}

/// The catalog, by tool name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCatalog {
    tools: BTreeMap<ToolName, ToolEntry>,
    arguments: BTreeMap<ToolName, crate::ArgSchema>,
}

impl ToolCatalog {
    /// Every catalogued tool, by name.
    pub fn entries(&self) -> impl Iterator<Item = &ToolEntry> {
        self.tools.values()
    }

    /// Parses `tools.json`; duplicate names are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: CatalogFile =
            serde_json::from_str(text).map_err(|e| format!("not a tool catalog: {e}"))?;
        let mut tools = BTreeMap::new();
        let mut arguments = BTreeMap::new();
        for t in file.tools {
            if let Some(a) = &t.arguments {
                let schema =
                    crate::ArgSchema::parse(a).map_err(|e| format!("tool {}: {e}", t.name))?;
                arguments.insert(t.name.clone(), schema);
            }
            if let Some(dup) = tools.insert(t.name.clone(), t) {
                return Err(format!("tool {} is listed twice", dup.name));
            }
        }
        Ok(Self { tools, arguments })
    }

    /// The declared arguments of a tool, if the catalog declares them.
    pub fn arguments(&self, tool: &ToolName) -> Option<&crate::ArgSchema> {
        self.arguments.get(tool)
    }

    /// Every tool with declared arguments.
    pub fn with_arguments(&self) -> impl Iterator<Item = (&ToolName, &crate::ArgSchema)> {
        self.arguments.iter()
    }

    /// True when the catalog declares the tool a honeytoken (a decoy).
    pub fn is_honeytoken(&self, tool: &ToolName) -> bool {
        self.tools.get(tool).is_some_and(|t| t.honeytoken)
    }

    /// The entry for a tool, if cataloged.
    pub fn get(&self, tool: &ToolName) -> Option<&ToolEntry> {
        self.tools.get(tool)
    }

    /// Every cataloged tool, by name.
    pub fn iter(&self) -> impl Iterator<Item = &ToolEntry> {
        self.tools.values()
    }

    /// Number of cataloged tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when nothing is cataloged.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

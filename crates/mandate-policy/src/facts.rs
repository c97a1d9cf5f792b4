use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use mandate_core::{Delegation, ToolName};

use crate::{BundleError, ToolCatalog};

/// What policy may know about an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFacts {
    /// Registered name.
    pub name: String,
    /// SPIFFE ID.
    pub spiffe_id: String,
    /// Accountable human owner.
    pub owner: String,
    /// Risk tier, 0..=3.
    pub tier: u8,
    /// active | quarantined | offboarded.
    pub status: String,
    /// Trust domain.
    pub trust_domain: String,
}

/// What policy may know about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFacts {
    /// Task id.
    pub id: String,
    /// Declared purpose.
    pub purpose: String,
    /// Environment label of the deployment.
    pub environment: String,
    /// Its delegation chain, when another task delegated it.
    pub delegation: Option<Delegation>,
}

/// `context.delegation` of a task: its chain, or itself alone when started directly.
pub fn delegation_record(agent: &AgentFacts, task: &TaskFacts) -> RestrictedExpression {
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let set = |v: Vec<&str>| RestrictedExpression::new_set(v.into_iter().map(s));
    let fields = match &task.delegation {
        None => [
            ("depth", RestrictedExpression::new_long(0)),
            ("agents", set(vec![agent.name.as_str()])),
            ("tasks", set(vec![task.id.as_str()])),
            ("parent_agent", s("")),
            ("parent_task", s("")),
            ("root_agent", s(&agent.name)),
            ("root_task", s(&task.id)),
            ("root_owner", s(&agent.owner)),
        ],
        Some(d) => {
            let n = d.chain.len();
            let parent = n.checked_sub(2).and_then(|i| d.chain.get(i));
            [
                ("depth", RestrictedExpression::new_long(i64::from(d.depth))),
                (
                    "agents",
                    set(d.chain.iter().map(|l| l.agent.as_str()).collect()),
                ),
                (
                    "tasks",
                    set(d.chain.iter().map(|l| l.task_id.as_str()).collect()),
                ),
                ("parent_agent", s(parent.map_or("", |l| l.agent.as_str()))),
                ("parent_task", s(&d.parent_task)),
                (
                    "root_agent",
                    s(d.chain.first().map_or("", |l| l.agent.as_str())),
                ),
                ("root_task", s(&d.root_task)),
                ("root_owner", s(&d.root_owner)),
            ]
        }
    };
    // Field names are distinct literals, so this cannot fail; a set in its place would
    // make every policy reading it error, which denies.
    RestrictedExpression::new_record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)))
        .unwrap_or_else(|_| RestrictedExpression::new_set([]))
}

pub(crate) fn type_name(name: &str) -> Result<EntityTypeName, BundleError> {
    EntityTypeName::from_str(name)
        .map_err(|e| BundleError::internal(format!("entity type {name}: {e}")))
}

pub(crate) fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

/// The Cedar entities of one task (its agent and the task itself), built once when the
/// task starts and reused for every call it makes.
#[derive(Debug, Clone)]
pub struct TaskEntities {
    pub(crate) entities: Entities,
    pub(crate) agent: EntityUid,
    pub(crate) task: EntityUid,
    /// `context.delegation`, built once.
    pub(crate) delegation: RestrictedExpression,
}

impl TaskEntities {
    /// Builds the agent and task entities (and no tool entities).
    pub fn build(agent: &AgentFacts, task: &TaskFacts) -> Result<Self, BundleError> {
        Self::build_with(agent, task, [], &ToolCatalog::default())
    }

    /// Builds the agent, the task, and each tool as the catalog describes it.
    pub fn build_with<'a>(
        agent: &AgentFacts,
        task: &TaskFacts,
        tools: impl IntoIterator<Item = &'a ToolName>,
        catalog: &ToolCatalog,
    ) -> Result<Self, BundleError> {
        let tool_type = type_name("Mandate::Tool")?;
        let mut tool_entities = Vec::new();
        let unique: std::collections::BTreeSet<&ToolName> = tools.into_iter().collect();
        for tool in unique {
            let entry = catalog.get(tool);
            let mut attrs = HashMap::from([
                (
                    "cataloged".to_owned(),
                    RestrictedExpression::new_bool(entry.is_some()),
                ),
                (
                    "server".to_owned(),
                    RestrictedExpression::new_string(
                        entry.map(|e| e.server.clone()).unwrap_or_default(),
                    ),
                ),
                (
                    "risk".to_owned(),
                    RestrictedExpression::new_string(
                        entry.map_or("unknown", |e| e.risk.as_str()).to_owned(),
                    ),
                ),
                (
                    "read_only".to_owned(),
                    RestrictedExpression::new_bool(entry.is_some_and(|e| e.read_only)),
                ),
                (
                    "destructive".to_owned(),
                    RestrictedExpression::new_bool(entry.is_some_and(|e| e.destructive)),
                ),
            ]);
            if let Some(d) = entry.and_then(|e| e.data_domain.as_ref()) {
                attrs.insert(
                    "data_domain".to_owned(),
                    RestrictedExpression::new_string(d.to_string()),
                );
            }
            tool_entities.push(
                Entity::new(uid(&tool_type, tool.as_str()), attrs, HashSet::new())
                    .map_err(|e| BundleError::internal(format!("tool entity: {e}")))?,
            );
        }
        let agent_uid = uid(&type_name("Mandate::Agent")?, &agent.name);
        let task_uid = uid(&type_name("Mandate::Task")?, &task.id);
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let agent_entity = Entity::new(
            agent_uid.clone(),
            HashMap::from([
                ("name".to_owned(), s(&agent.name)),
                ("spiffe_id".to_owned(), s(&agent.spiffe_id)),
                ("owner".to_owned(), s(&agent.owner)),
                (
                    "tier".to_owned(),
                    RestrictedExpression::new_long(i64::from(agent.tier)),
                ),
                ("status".to_owned(), s(&agent.status)),
                ("trust_domain".to_owned(), s(&agent.trust_domain)),
            ]),
            HashSet::new(),
        )
        .map_err(|e| BundleError::internal(format!("agent entity: {e}")))?;
        let task_entity = Entity::new(
            task_uid.clone(),
            HashMap::from([
                ("id".to_owned(), s(&task.id)),
                ("purpose".to_owned(), s(&task.purpose)),
                (
                    "agent".to_owned(),
                    RestrictedExpression::new_entity_uid(agent_uid.clone()),
                ),
                ("environment".to_owned(), s(&task.environment)),
            ]),
            HashSet::new(),
        )
        .map_err(|e| BundleError::internal(format!("task entity: {e}")))?;
        let entities = Entities::from_entities(
            [agent_entity, task_entity].into_iter().chain(tool_entities),
            None,
        )
        .map_err(|e| BundleError::internal(format!("entities: {e}")))?;
        Ok(Self {
            entities,
            agent: agent_uid,
            task: task_uid,
            delegation: delegation_record(agent, task),
        })
    }

    /// The Cedar entity store.
    pub fn entities(&self) -> &Entities {
        &self.entities
    }
}

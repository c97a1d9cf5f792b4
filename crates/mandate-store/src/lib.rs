//! Mandate's storage: the [`Store`] trait every backend implements, the records it keeps,
//! and the embedded SQLite backend ([`SqliteStore`]).
//!
//! Invariants:
//! - Every state change that must be audited is written in the same transaction as its
//!   audit event, and the chain head moves in that transaction too. A change whose event
//!   cannot be written does not happen.
//! - Writes are serialised through one connection: the audit chain has a single writer.
//! - Queries use `$n` placeholders in ascending order so the same SQL text serves the
//!   PostgreSQL backend.

mod records;
mod sqlite;

use async_trait::async_trait;
use mandate_audit::{Event, NewEvent};
use mandate_core::{AgentName, AgentStatus, ApprovalState, Grant, TaskState};

pub use records::{
    AgentRecord, ApprovalRecord, ApprovalVote, ApproverGroup, ApproverRecord, BreakGlassRecord,
    BreakGlassReview, JoinTokenRecord, KeyRow, SecretRecord, TaskPlan, TaskRecord, ToolPin,
    VoteOutcome,
};
pub use sqlite::SqliteStore;

/// One task transition of [`Store::transition_tasks`].
#[derive(Debug, Clone)]
pub struct TaskMove {
    /// The task.
    pub id: String,
    /// The states it may be moved from.
    pub from: Vec<TaskState>,
    /// The state it moves to.
    pub to: TaskState,
    /// Why (stored as the end reason).
    pub reason: String,
    /// Its event, appended only when the task moved.
    pub event: NewEvent,
}

/// A snapshot of one task's history (opaque JSON to the store), written in the same
/// transaction as the events that changed it. Of two snapshots of one task, the one with
/// the higher `rev` wins whatever order they are written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The task.
    pub task_id: String,
    /// Revision: increases with every change to the task's history.
    pub rev: i64,
    /// The history as JSON.
    pub data: String,
}

/// Which audit records a search returns; every field set must match. Text fields match
/// exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// The agent concerned.
    pub agent: Option<String>,
    /// The task concerned.
    pub task_id: Option<String>,
    /// The event kind (`decision`, `task.revoked`…).
    pub kind: Option<String>,
    /// The tool a decision or gateway result names (`data.tool`).
    pub tool: Option<String>,
    /// A decision's outcome (`data.outcome`: allow, deny, approval_required).
    pub outcome: Option<String>,
    /// A policy id among the decision's determining policies (`data.policies`).
    pub policy: Option<String>,
    /// At or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Before this time (unix ms).
    pub until_ms: Option<i64>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// The named record does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A stored value could not be read back as its type: the store was altered.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A bound on stored records was reached (e.g. pending approvals per agent).
    #[error("{0}")]
    Limit(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(String),
    /// The audit chain does not end where its head says: nothing is appended to it.
    #[error("audit chain is broken: {0}")]
    ChainBroken(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                Self::Conflict(d.message().to_owned())
            }
            _ => Self::Db(e.to_string()),
        }
    }
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// The state Mandate keeps. One implementation per backend; all share one conformance suite.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A setting, by key.
    async fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Sets a setting.
    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()>;

    /// All stored signing keys.
    async fn signing_keys(&self) -> StoreResult<Vec<KeyRow>>;
    /// Retires every active key at `now_ms`, stores `new` as the active key, deletes keys
    /// retired before `prune_before_ms`, and records `event`; all in one transaction.
    async fn rotate_keys(
        &self,
        new: &KeyRow,
        now_ms: i64,
        prune_before_ms: i64,
        event: Option<NewEvent>,
    ) -> StoreResult<()>;

    /// Registers an agent, with its first join token if it attests with one.
    async fn insert_agent(
        &self,
        agent: &AgentRecord,
        join: Option<&JoinTokenRecord>,
        event: NewEvent,
    ) -> StoreResult<Event>;
    /// An agent by name.
    async fn agent(&self, name: &AgentName) -> StoreResult<Option<AgentRecord>>;
    /// All agents, by name.
    async fn agents(&self) -> StoreResult<Vec<AgentRecord>>;
    /// Changes an agent's status, by `by`; when it leaves `active`, every live task it
    /// holds, and every live task delegated below one of them, is revoked in the same
    /// transaction. Returns the ids of the revoked tasks.
    async fn set_agent_status(
        &self,
        name: &AgentName,
        status: AgentStatus,
        now_ms: i64,
        by: &str,
        event: NewEvent,
    ) -> StoreResult<Vec<String>>;
    /// Stores a further join token for an agent.
    async fn insert_join_token(
        &self,
        join: &JoinTokenRecord,
        event: NewEvent,
    ) -> StoreResult<Event>;
    /// Consumes an unused, unexpired join token; returns its agent. Single use: of two
    /// concurrent calls with the same token, at most one gets `Some`.
    async fn consume_join_token(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AgentName>>;

    /// Records that an external token with this `jti` from `source` has attested. Returns
    /// `false` if it already had (a replay) and it has not expired; of two concurrent
    /// calls with the same pair, at most one gets `true`. Expired pairs are forgotten.
    async fn consume_assertion(
        &self,
        source: &str,
        jti: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> StoreResult<bool>;

    /// Stores a new task with its event, only while its agent is active (checked in the
    /// same transaction, so a task cannot slip past a quarantine or offboarding);
    /// `NotFound` otherwise.
    async fn insert_task(&self, task: &TaskRecord, event: NewEvent) -> StoreResult<Event>;
    /// A task by id.
    async fn task(&self, id: &str) -> StoreResult<Option<TaskRecord>>;
    /// Every task in `pending` or `active`.
    async fn live_tasks(&self) -> StoreResult<Vec<TaskRecord>>;
    /// Moves a task from one of `from` to `to` with its event. `Ok(false)` (and no event)
    /// when the task was not in one of `from`.
    async fn transition_task(
        &self,
        id: &str,
        from: &[TaskState],
        to: TaskState,
        now_ms: i64,
        reason: &str,
        event: NewEvent,
    ) -> StoreResult<bool>;

    /// Moves several tasks at once, in one transaction (a task and its delegated
    /// descendants end together): one answer per move, `false` (and no event) for a task
    /// not in one of its `from` states.
    async fn transition_tasks(&self, moves: Vec<TaskMove>, now_ms: i64) -> StoreResult<Vec<bool>>;

    /// Replaces a live task's grant with its event. `Ok(false)` (and no event) when the
    /// task is no longer pending or active.
    async fn update_task_grant(
        &self,
        id: &str,
        grant: &Grant,
        event: NewEvent,
    ) -> StoreResult<bool>;

    /// Marks live tasks stepped up (every further write, delete or execute needs a
    /// human), with one event, in one transaction; returns how many were live.
    async fn set_task_step_up(&self, ids: &[String], event: NewEvent) -> StoreResult<usize>;

    /// Replaces an active task's plan (purpose, requested scope, grant, items) with its
    /// event. `Ok(false)` (and no event) when the task is no longer active.
    async fn redeclare_task(&self, plan: &TaskPlan, event: NewEvent) -> StoreResult<bool>;

    /// Appends events to the chain in one transaction (group commit).
    async fn append_events(&self, events: Vec<NewEvent>) -> StoreResult<Vec<Event>>;
    /// Appends events and writes task history snapshots in one transaction (either may
    /// be empty); a snapshot older than the stored one for its task is ignored.
    async fn append_batch(
        &self,
        events: Vec<NewEvent>,
        histories: Vec<HistoryRow>,
    ) -> StoreResult<Vec<Event>>;
    /// The latest history snapshot of every active or pending task.
    async fn live_histories(&self) -> StoreResult<Vec<HistoryRow>>;
    /// The last audit record, if any.
    async fn audit_tail(&self) -> StoreResult<Option<Event>>;
    /// Up to `limit` events with `seq > after`, in order.
    async fn events_after(&self, after: i64, limit: i64) -> StoreResult<Vec<Event>>;
    /// Every event of one task, in order.
    /// Up to `limit` records' `(seq, hash)` after `after`, in order: the leaves of the
    /// audit Merkle tree, without reading the records' details.
    async fn event_hashes(&self, after: i64, limit: i64) -> StoreResult<Vec<(i64, String)>>;
    /// How many records of each kind were committed at or after `since_ms`.
    async fn count_events_by_kind(&self, since_ms: i64) -> StoreResult<Vec<(String, i64)>>;
    /// Up to `limit` records after `after` that match `filter`, in sequence order.
    async fn search_events(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<Event>>;
    async fn task_events(&self, task_id: &str) -> StoreResult<Vec<Event>>;
    /// The chain head: last sequence number and hash.
    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>>;
    /// Readiness probe.
    async fn ping(&self) -> StoreResult<()>;

    /// Every task of one agent, oldest first (for oversight reports).
    async fn agent_task_records(&self, agent: &AgentName) -> StoreResult<Vec<TaskRecord>>;

    /// Adds a human approver whose API token hashes to `token_hash`.
    async fn insert_approver(
        &self,
        approver: &ApproverRecord,
        token_hash: &str,
        event: NewEvent,
    ) -> StoreResult<Event>;
    /// The enabled approver whose token hashes to `token_hash`.
    async fn approver_by_token(&self, token_hash: &str) -> StoreResult<Option<ApproverRecord>>;
    /// Every approver, by name.
    async fn approvers(&self) -> StoreResult<Vec<ApproverRecord>>;
    /// Disables an approver; `Ok(false)` when there is no enabled approver of that name.
    async fn disable_approver(&self, name: &str, now_ms: i64, event: NewEvent)
    -> StoreResult<bool>;
    /// Creates or replaces an approver group.
    async fn put_approver_group(&self, group: &ApproverGroup, event: NewEvent) -> StoreResult<()>;
    /// An approver group by name.
    async fn approver_group(&self, name: &str) -> StoreResult<Option<ApproverGroup>>;

    /// Opens an approval request, unless its agent already has `max_per_agent` or its task
    /// `max_per_task` pending (`Limit`), checked in the same transaction.
    async fn insert_approval(
        &self,
        approval: &ApprovalRecord,
        max_per_agent: i64,
        max_per_task: i64,
        event: NewEvent,
    ) -> StoreResult<Event>;
    /// An approval by id.
    async fn approval(&self, id: &str) -> StoreResult<Option<ApprovalRecord>>;
    /// Approvals, newest first, optionally only in one state, of one agent, or asking one
    /// of `groups`.
    async fn approvals(
        &self,
        state: Option<ApprovalState>,
        agent: Option<&AgentName>,
        groups: Option<&[String]>,
        limit: i64,
    ) -> StoreResult<Vec<ApprovalRecord>>;
    /// Up to `limit` pending or approved approvals whose time ran out by `now_ms`.
    async fn due_approvals(&self, now_ms: i64, limit: i64) -> StoreResult<Vec<ApprovalRecord>>;
    /// Pending or approved approvals given under a bundle other than `version`.
    async fn stale_approvals(&self, version: &str) -> StoreResult<Vec<ApprovalRecord>>;
    /// Counts one approver's approve on a pending, unexpired request, in one transaction:
    /// it becomes `approved` when it has `required` distinct approvers. `event` is
    /// recorded as `approval.approved` then, `approval.vote` otherwise. Of concurrent
    /// calls, each is counted once and exactly one moves it to `approved`.
    async fn vote_approval(
        &self,
        id: &str,
        vote: &ApprovalVote,
        event: NewEvent,
    ) -> StoreResult<VoteOutcome>;
    /// Moves an approval from one of `from` to `to` with its event. `Ok(false)` (and no
    /// event) when it was not in one of `from`: of concurrent calls, one wins.
    #[allow(clippy::too_many_arguments)]
    async fn transition_approval(
        &self,
        id: &str,
        from: &[ApprovalState],
        to: ApprovalState,
        by: &str,
        now_ms: i64,
        reason: &str,
        event: NewEvent,
    ) -> StoreResult<bool>;

    /// Records a break-glass declaration and the task it grants, in one transaction, only
    /// while the agent is active (`NotFound` otherwise).
    async fn insert_break_glass(
        &self,
        record: &BreakGlassRecord,
        task: &TaskRecord,
        event: NewEvent,
    ) -> StoreResult<Event>;
    /// A break-glass record by id.
    async fn break_glass(&self, id: &str) -> StoreResult<Option<BreakGlassRecord>>;
    /// Every break-glass record, newest first.
    async fn break_glass_records(&self) -> StoreResult<Vec<BreakGlassRecord>>;
    /// Closes a break-glass after-review. `Ok(false)` when it is already closed or
    /// `review.by` declared it (a declarer never reviews their own use).
    async fn close_break_glass(
        &self,
        id: &str,
        review: &BreakGlassReview,
        event: NewEvent,
    ) -> StoreResult<bool>;

    /// Stores or replaces a sealed secret, with its event, in one transaction.
    async fn put_secret(&self, secret: &SecretRecord, event: NewEvent) -> StoreResult<()>;
    /// A sealed secret by name.
    async fn secret(&self, name: &str) -> StoreResult<Option<SecretRecord>>;
    /// Every sealed secret, by name.
    async fn secrets(&self) -> StoreResult<Vec<SecretRecord>>;
    /// Deletes a secret; `Ok(false)` when there was none.
    async fn delete_secret(&self, name: &str, event: NewEvent) -> StoreResult<bool>;
    /// Replaces sealed values after a key rotation, all or none, with one event. A row
    /// changed since it was read (`updated_at_ms` differs from `read_at_ms`) fails the
    /// whole swap with `Conflict`.
    async fn reseal_secrets(
        &self,
        resealed: &[(SecretRecord, i64)],
        event: NewEvent,
    ) -> StoreResult<()>;
    /// Every pinned MCP tool definition.
    async fn tool_pins(&self) -> StoreResult<Vec<ToolPin>>;
    /// Records pins (first sight, a change, an approval), with one event, in one
    /// transaction.
    async fn put_tool_pins(&self, pins: &[ToolPin], event: NewEvent) -> StoreResult<()>;
}

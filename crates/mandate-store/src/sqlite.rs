//! The embedded backend: one SQLite file in the data directory, WAL journal, full fsync on
//! commit, one writer connection and a small pool of readers.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mandate_audit::{Event, NewEvent, link_text};
use mandate_core::{
    AgentName, AgentStatus, ApprovalKind, ApprovalState, Grant, HumanId, TaskState,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use crate::{
    AgentRecord, ApprovalRecord, ApprovalVote, ApproverGroup, ApproverRecord, BreakGlassRecord,
    BreakGlassReview, EventFilter, HistoryRow, JoinTokenRecord, KeyRow, SecretRecord, Store,
    StoreError, StoreResult, TaskMove, TaskPlan, TaskRecord, ToolPin, VoteOutcome,
};

/// Versioned migrations, applied in order, each in its own transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (
        2,
        "approvals",
        include_str!("../migrations/0002_approvals.sql"),
    ),
    (3, "secrets", include_str!("../migrations/0003_secrets.sql")),
    (
        4,
        "tool_pins",
        include_str!("../migrations/0004_tool_pins.sql"),
    ),
    (
        5,
        "task_history",
        include_str!("../migrations/0005_task_history.sql"),
    ),
    (
        6,
        "delegation",
        include_str!("../migrations/0006_delegation.sql"),
    ),
    (
        7,
        "containment",
        include_str!("../migrations/0007_containment.sql"),
    ),
    (
        8,
        "workload_identity",
        include_str!("../migrations/0008_workload_identity.sql"),
    ),
];

mod pins;
mod secrets;

/// The database file inside the data directory.
pub const DB_FILE: &str = "mandate.db";

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    path: PathBuf,
    /// `PRAGMA max_page_count` for every writer connection (0: SQLite's default).
    max_pages: Arc<AtomicU64>,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and applies pending migrations.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Db(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        restrict_permissions(data_dir);
        let store = Self::connect(data_dir, true).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens an existing store without creating anything (for offline audit tools).
    pub async fn open_existing(data_dir: &Path) -> StoreResult<Self> {
        let path = data_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::NotFound(format!(
                "Mandate database {} (is --data-dir right?)",
                path.display()
            )));
        }
        let store = Self::connect(data_dir, false).await?;
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&store.read)
            .await
            .map_err(|e| corrupt(format!("no migration table: {e}")))?;
        let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
        if version != Some(known) {
            return Err(corrupt(format!(
                "database schema version {version:?} does not match this binary's {known}; run `mandate serve` once to migrate"
            )));
        }
        Ok(store)
    }

    async fn connect(data_dir: &Path, create: bool) -> StoreResult<Self> {
        let path = data_dir.join(DB_FILE);
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged (S3), not merely in the
            // OS cache; group commit keeps the cost per event small.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let max_pages = Arc::new(AtomicU64::new(0));
        let limit = Arc::clone(&max_pages);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                let pages = limit.load(Ordering::SeqCst);
                Box::pin(async move {
                    if pages > 0 {
                        sqlx::query(AssertSqlSafe(format!("PRAGMA max_page_count = {pages}")))
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts.clone())
            .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        Ok(Self {
            write,
            read,
            path,
            max_pages,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Caps the database file at `pages` pages (of 4 KiB by default) on the writer
    /// connection and on every one opened after it; `None` lifts the cap. Past the cap,
    /// writes fail with `SQLITE_FULL` exactly as on a full disk.
    pub async fn limit_pages(&self, pages: Option<u64>) -> StoreResult<()> {
        let pages = pages.unwrap_or(u64::from(u32::MAX - 1));
        self.max_pages.store(pages, Ordering::SeqCst);
        let mut w = self.writer().await?;
        sqlx::query(AssertSqlSafe(format!("PRAGMA max_page_count = {pages}")))
            .execute(&mut *w)
            .await?;
        w.keep();
        Ok(())
    }

    /// Closes every connection (waiting for those in use to come back).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// The writer connection for one write (see [`WriteConn`]).
    async fn writer(&self) -> StoreResult<WriteConn> {
        Ok(WriteConn {
            conn: self.write.acquire().await?,
            kept: false,
        })
    }

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)",
        )
        .execute(&self.write)
        .await?;
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all(&self.write)
                .await?;
        let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
        if let Some(newer) = applied.iter().find(|v| **v > known) {
            return Err(corrupt(format!(
                "database has schema version {newer}, newer than this binary knows ({known}): use a newer mandate"
            )));
        }
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let mut w = self.writer().await?;
            let mut tx = w.begin().await?;
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
            )
            .bind(version)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            w.keep();
        }
        Ok(())
    }
}

/// Wall time for the migration bookkeeping only (not a decision input).
#[expect(
    clippy::disallowed_methods,
    reason = "when a migration ran is bookkeeping, not a decision input"
)]
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(unix)]
fn restrict_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Best effort: the directory holds signing keys and the audit chain.
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

#[cfg(not(unix))]
fn restrict_permissions(_dir: &Path) {}

/// The writer connection, held for one write. Every way out but [`WriteConn::keep`] — an
/// error, a failed COMMIT, a future dropped half way — closes the connection instead of
/// returning it to the pool. After `SQLITE_FULL` or an I/O error SQLite may or may not have
/// rolled the transaction back by itself, and sqlx's count of open transactions can then
/// disagree with the connection's: the next BEGIN would become a savepoint inside a
/// transaction that never commits, and every later "commit" would be acknowledged while
/// nothing reaches the file. A fresh connection has no such doubt.
struct WriteConn {
    conn: sqlx::pool::PoolConnection<Sqlite>,
    kept: bool,
}

impl WriteConn {
    /// A write transaction on the writer connection.
    async fn begin(&mut self) -> StoreResult<Transaction<'_, Sqlite>> {
        use sqlx::Connection as _;
        Ok(self.conn.begin().await?)
    }

    /// The write committed (or needed no transaction): the connection can be reused.
    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for WriteConn {
    fn drop(&mut self) {
        if !self.kept {
            self.conn.close_on_drop();
        }
    }
}

impl std::ops::Deref for WriteConn {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// Rows per multi-row INSERT (8 parameters each, well under SQLite's 32,766).
const INSERT_ROWS: usize = 500;

async fn append_in(
    tx: &mut Transaction<'_, Sqlite>,
    events: Vec<NewEvent>,
) -> StoreResult<Vec<Event>> {
    // The head and the last record in one round trip.
    let row = sqlx::query(
        "SELECT h.seq AS seq, h.hash AS hash, t.seq AS tail_seq, t.hash AS tail_hash \
         FROM audit_head h LEFT JOIN (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1) t \
         WHERE h.id = 1",
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| corrupt("audit head row is missing"))?;
    let mut seq: i64 = row.try_get("seq")?;
    let mut hash: String = row.try_get("hash")?;
    let tail_seq: Option<i64> = row.try_get("tail_seq")?;
    let tail_hash: Option<String> = row.try_get("tail_hash")?;
    // Never append to a broken chain: the last record must be the one the head names.
    match (tail_seq, &tail_hash) {
        (None, _) if seq == 0 => {}
        (Some(s), Some(h)) if s == seq && *h == hash => {}
        (other, _) => {
            return Err(StoreError::ChainBroken(format!(
                "the last audit record ({}) is not the one the head names (seq {seq}): the chain was truncated, rewritten or its head moved; refusing to append",
                other.map_or_else(|| "none".to_owned(), |s| format!("seq {s}"))
            )));
        }
    }
    let mut out = Vec::with_capacity(events.len());
    let mut texts = Vec::with_capacity(events.len());
    for new in events {
        let (e, text) = link_text(new, seq, &hash);
        texts.push(text);
        seq = e.seq;
        hash.clone_from(&e.hash);
        out.push(e);
    }
    for (rows, datas) in out.chunks(INSERT_ROWS).zip(texts.chunks(INSERT_ROWS)) {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit_events (seq, ts_ms, kind, agent, task_id, data, prev_hash, hash) ",
        );
        q.push_values(rows.iter().zip(datas), |mut b, (e, data)| {
            b.push_bind(e.seq)
                .push_bind(e.ts_ms)
                .push_bind(e.kind.as_str())
                .push_bind(e.agent.as_deref())
                .push_bind(e.task_id.as_deref())
                .push_bind(data.as_str())
                .push_bind(e.prev_hash.as_str())
                .push_bind(e.hash.as_str());
        });
        q.build().persistent(true).execute(&mut **tx).await?;
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
    Ok(out)
}

async fn put_histories_in(
    tx: &mut Transaction<'_, Sqlite>,
    histories: &[HistoryRow],
) -> StoreResult<()> {
    // A batch often holds several snapshots of one task: only its newest is written.
    let mut newest: std::collections::HashMap<&str, &HistoryRow> = std::collections::HashMap::new();
    for h in histories {
        let slot = newest.entry(h.task_id.as_str()).or_insert(h);
        if h.rev > slot.rev {
            *slot = h;
        }
    }
    let rows: Vec<&HistoryRow> = newest.into_values().collect();
    for chunk in rows.chunks(INSERT_ROWS) {
        let mut q =
            sqlx::QueryBuilder::<Sqlite>::new("INSERT INTO task_history (task_id, rev, data) ");
        q.push_values(chunk, |mut b, h| {
            b.push_bind(h.task_id.as_str())
                .push_bind(h.rev)
                .push_bind(h.data.as_str());
        });
        q.push(
            " ON CONFLICT (task_id) DO UPDATE SET rev = excluded.rev, data = excluded.data \
             WHERE excluded.rev > task_history.rev",
        );
        q.build().persistent(true).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn append_one(tx: &mut Transaction<'_, Sqlite>, event: NewEvent) -> StoreResult<Event> {
    append_in(tx, vec![event])
        .await?
        .pop()
        .ok_or_else(|| corrupt("append returned no event"))
}

fn event_from_row(r: &SqliteRow) -> StoreResult<Event> {
    let data: String = r.try_get("data")?;
    Ok(Event {
        seq: r.try_get("seq")?,
        ts_ms: r.try_get("ts_ms")?,
        kind: r.try_get("kind")?,
        agent: r.try_get("agent")?,
        task_id: r.try_get("task_id")?,
        data: serde_json::from_str(&data).map_err(|e| corrupt(format!("event data: {e}")))?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

fn agent_from_row(r: &SqliteRow) -> StoreResult<AgentRecord> {
    let name: String = r.try_get("name")?;
    let tier: i64 = r.try_get("tier")?;
    let status: String = r.try_get("status")?;
    let attestation: String = r.try_get("attestation")?;
    Ok(AgentRecord {
        name: AgentName::parse(&name).map_err(corrupt)?,
        owner: human(r, "owner")?,
        tier: u8::try_from(tier)
            .map_err(corrupt)
            .and_then(|t| mandate_core::RiskTier::try_from(t).map_err(corrupt))?,
        status: AgentStatus::from_str(&status).map_err(corrupt)?,
        attestation: serde_json::from_str(&attestation).map_err(corrupt)?,
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

fn task_from_row(r: &SqliteRow) -> StoreResult<TaskRecord> {
    let agent: String = r.try_get("agent")?;
    let state: String = r.try_get("state")?;
    let requested: String = r.try_get("requested")?;
    let grant: String = r.try_get("grant_json")?;
    let items: String = r.try_get("items")?;
    let delegation: Option<String> = r.try_get("delegation")?;
    Ok(TaskRecord {
        id: r.try_get("id")?,
        agent: AgentName::parse(&agent).map_err(corrupt)?,
        purpose: r.try_get("purpose")?,
        requested: serde_json::from_str(&requested).map_err(corrupt)?,
        grant: serde_json::from_str(&grant).map_err(corrupt)?,
        items: serde_json::from_str(&items).map_err(corrupt)?,
        state: TaskState::from_str(&state).map_err(corrupt)?,
        bundle_version: r.try_get("bundle_version")?,
        token_jti: r.try_get("token_jti")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        ended_at_ms: r.try_get("ended_at_ms")?,
        end_reason: r.try_get("end_reason")?,
        delegation: delegation
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(corrupt)?,
        step_up: r.try_get::<i64, _>("step_up")? != 0,
        cnf_jkt: r.try_get("cnf_jkt")?,
    })
}

/// A human identity column, in normal form whatever was stored (rows written before
/// identities were normalised still compare as their owners are).
fn human(r: &SqliteRow, column: &str) -> StoreResult<HumanId> {
    let v: String = r.try_get(column)?;
    Ok(HumanId::from_stored(&v))
}

fn json(v: &impl serde::Serialize) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(e.to_string()))
}

const TASK_COLUMNS: &str = "id, agent, purpose, requested, grant_json, items, state, bundle_version, token_jti, created_at_ms, expires_at_ms, ended_at_ms, end_reason, delegation, step_up, cnf_jkt";

/// Every live task of an agent and every live task delegated below one of them, however
/// deep (`$1` is the agent).
const AGENT_SUBTREE: &str = "WITH RECURSIVE sub(id, agent) AS (\
     SELECT id, agent FROM tasks WHERE agent = $1 AND state IN ('pending', 'active') \
     UNION SELECT t.id, t.agent FROM tasks t JOIN sub ON t.parent_id = sub.id \
     WHERE t.state IN ('pending', 'active')) SELECT id, agent FROM sub ORDER BY id";

const APPROVAL_COLUMNS: &str = "id, kind, task_id, agent, owner, grp, digest, action_json, bundle_version, required, owner_may_approve, votes, state, created_at_ms, expires_at_ms, decided_at_ms, decided_by, reason";

fn approval_from_row(r: &SqliteRow) -> StoreResult<ApprovalRecord> {
    let kind: String = r.try_get("kind")?;
    let agent: String = r.try_get("agent")?;
    let action: String = r.try_get("action_json")?;
    let votes: String = r.try_get("votes")?;
    let state: String = r.try_get("state")?;
    let required: i64 = r.try_get("required")?;
    let owner_may: i64 = r.try_get("owner_may_approve")?;
    Ok(ApprovalRecord {
        id: r.try_get("id")?,
        kind: ApprovalKind::from_str(&kind).map_err(corrupt)?,
        task_id: r.try_get("task_id")?,
        agent: AgentName::parse(&agent).map_err(corrupt)?,
        owner: human(r, "owner")?,
        group: r.try_get("grp")?,
        digest: r.try_get("digest")?,
        action: serde_json::from_str(&action).map_err(corrupt)?,
        bundle_version: r.try_get("bundle_version")?,
        required: u32::try_from(required).map_err(corrupt)?,
        owner_may_approve: owner_may != 0,
        votes: serde_json::from_str(&votes).map_err(corrupt)?,
        state: ApprovalState::from_str(&state).map_err(corrupt)?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        decided_at_ms: r.try_get("decided_at_ms")?,
        decided_by: r.try_get("decided_by")?,
        reason: r.try_get("reason")?,
    })
}

const APPROVER_COLUMNS: &str = "name, roles, groups_json, created_at_ms, disabled_at_ms";

fn approver_from_row(r: &SqliteRow) -> StoreResult<ApproverRecord> {
    let roles: String = r.try_get("roles")?;
    let groups: String = r.try_get("groups_json")?;
    Ok(ApproverRecord {
        name: human(r, "name")?,
        roles: serde_json::from_str(&roles).map_err(corrupt)?,
        groups: serde_json::from_str(&groups).map_err(corrupt)?,
        created_at_ms: r.try_get("created_at_ms")?,
        disabled_at_ms: r.try_get("disabled_at_ms")?,
    })
}

const BREAK_GLASS_COLUMNS: &str = "id, declared_by, agent, task_id, justification, created_at_ms, expires_at_ms, reviewed_by, reviewed_at_ms, review_notes";

fn break_glass_from_row(r: &SqliteRow) -> StoreResult<BreakGlassRecord> {
    let agent: String = r.try_get("agent")?;
    let by: Option<String> = r.try_get("reviewed_by")?;
    let at: Option<i64> = r.try_get("reviewed_at_ms")?;
    let notes: Option<String> = r.try_get("review_notes")?;
    Ok(BreakGlassRecord {
        id: r.try_get("id")?,
        declared_by: human(r, "declared_by")?,
        agent: AgentName::parse(&agent).map_err(corrupt)?,
        task_id: r.try_get("task_id")?,
        justification: r.try_get("justification")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        review: match (by, at, notes) {
            (Some(by), Some(at_ms), Some(notes)) => Some(BreakGlassReview {
                by: HumanId::from_stored(&by),
                at_ms,
                notes,
            }),
            _ => None,
        },
    })
}

async fn insert_task_in(tx: &mut Transaction<'_, Sqlite>, task: &TaskRecord) -> StoreResult<()> {
    let inserted = sqlx::query(
        "INSERT INTO tasks (id, agent, purpose, requested, grant_json, items, state, bundle_version, token_jti, created_at_ms, expires_at_ms, ended_at_ms, end_reason, parent_id, delegation, cnf_jkt) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $15, $16, $17 \
         WHERE EXISTS (SELECT 1 FROM agents WHERE name = $14 AND status = 'active') \
         AND ($15 IS NULL OR EXISTS (SELECT 1 FROM tasks WHERE id = $15 AND state = 'active'))",
    )
    .bind(&task.id)
    .bind(task.agent.as_str())
    .bind(&task.purpose)
    .bind(json(&task.requested)?)
    .bind(json(&task.grant)?)
    .bind(json(&task.items)?)
    .bind(task.state.as_str())
    .bind(&task.bundle_version)
    .bind(&task.token_jti)
    .bind(task.created_at_ms)
    .bind(task.expires_at_ms)
    .bind(task.ended_at_ms)
    .bind(&task.end_reason)
    .bind(task.agent.as_str())
    .bind(task.delegation.as_ref().map(|d| d.parent_task.as_str()))
    .bind(task.delegation.as_ref().map(json).transpose()?)
    .bind(&task.cnf_jkt)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::NotFound(match &task.delegation {
            Some(d) => format!(
                "active agent {} or active parent task {}",
                task.agent, d.parent_task
            ),
            None => format!("active agent {}", task.agent),
        }));
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let mut w = self.writer().await?;
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&mut *w)
            .await?;
        w.keep();
        Ok(())
    }

    async fn signing_keys(&self) -> StoreResult<Vec<KeyRow>> {
        let rows = sqlx::query("SELECT kid, pkcs8, created_at_ms, retired_at_ms FROM signing_keys ORDER BY created_at_ms")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRow {
                    kid: r.try_get("kid")?,
                    pkcs8: r.try_get("pkcs8")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    retired_at_ms: r.try_get("retired_at_ms")?,
                })
            })
            .collect()
    }

    async fn rotate_keys(
        &self,
        new: &KeyRow,
        now_ms: i64,
        prune_before_ms: i64,
        event: Option<NewEvent>,
    ) -> StoreResult<()> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at_ms = $1 WHERE retired_at_ms IS NULL")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM signing_keys WHERE retired_at_ms IS NOT NULL AND retired_at_ms < $1",
        )
        .bind(prune_before_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO signing_keys (kid, pkcs8, created_at_ms, retired_at_ms) VALUES ($1, $2, $3, NULL)")
            .bind(&new.kid)
            .bind(&new.pkcs8)
            .bind(new.created_at_ms)
            .execute(&mut *tx)
            .await?;
        if let Some(event) = event {
            append_one(&mut tx, event).await?;
        }
        tx.commit().await?;
        w.keep();
        Ok(())
    }

    async fn insert_agent(
        &self,
        agent: &AgentRecord,
        join: Option<&JoinTokenRecord>,
        event: NewEvent,
    ) -> StoreResult<Event> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO agents (name, owner, tier, status, attestation, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(agent.name.as_str())
        .bind(agent.owner.as_str())
        .bind(i64::from(agent.tier.get()))
        .bind(agent.status.as_str())
        .bind(json(&agent.attestation)?)
        .bind(agent.created_at_ms)
        .bind(agent.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("agent {}", agent.name)));
        }
        if let Some(join) = join {
            insert_join(&mut tx, join).await?;
        }
        let e = append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(e)
    }

    async fn agent(&self, name: &AgentName) -> StoreResult<Option<AgentRecord>> {
        sqlx::query("SELECT * FROM agents WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(agent_from_row)
            .transpose()
    }

    async fn agents(&self) -> StoreResult<Vec<AgentRecord>> {
        sqlx::query("SELECT * FROM agents ORDER BY name")
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(agent_from_row)
            .collect()
    }

    async fn set_agent_status(
        &self,
        name: &AgentName,
        status: AgentStatus,
        now_ms: i64,
        by: &str,
        event: NewEvent,
    ) -> StoreResult<Vec<String>> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let updated =
            sqlx::query("UPDATE agents SET status = $1, updated_at_ms = $2 WHERE name = $3")
                .bind(status.as_str())
                .bind(now_ms)
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("agent {name}")));
        }
        let mut events = vec![event];
        let mut revoked: Vec<String> = Vec::new();
        if status != AgentStatus::Active {
            let ended: Vec<(String, String)> = sqlx::query_as(AGENT_SUBTREE)
                .bind(name.as_str())
                .fetch_all(&mut *tx)
                .await?;
            let reason = format!("agent {status}");
            for (id, agent) in ended {
                let delegated_reason = if agent == name.as_str() {
                    reason.clone()
                } else {
                    format!(
                        "a task above it in its delegation chain was revoked: agent {name} {status}"
                    )
                };
                sqlx::query("UPDATE tasks SET state = 'revoked', ended_at_ms = $1, end_reason = $2 WHERE id = $3 AND state IN ('pending', 'active')")
                    .bind(now_ms)
                    .bind(&delegated_reason)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                events.push(NewEvent {
                    ts_ms: now_ms,
                    agent: Some(agent),
                    task_id: Some(id.clone()),
                    body: mandate_audit::Body::TaskRevoked(mandate_audit::TaskEnded {
                        reason: delegated_reason,
                        by: by.to_owned(),
                        ..Default::default()
                    }),
                });
                revoked.push(id);
            }
            sqlx::query(
                "UPDATE join_tokens SET used_at_ms = $1 WHERE agent = $2 AND used_at_ms IS NULL",
            )
            .bind(now_ms)
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        }
        append_in(&mut tx, events).await?;
        tx.commit().await?;
        w.keep();
        Ok(revoked)
    }

    async fn insert_join_token(
        &self,
        join: &JoinTokenRecord,
        event: NewEvent,
    ) -> StoreResult<Event> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        insert_join(&mut tx, join).await?;
        let e = append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(e)
    }

    async fn consume_join_token(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> StoreResult<Option<AgentName>> {
        let mut w = self.writer().await?;
        let agent: Option<String> = sqlx::query_scalar(
            "UPDATE join_tokens SET used_at_ms = $1 WHERE token_hash = $2 AND used_at_ms IS NULL AND expires_at_ms > $3 RETURNING agent",
        )
        .bind(now_ms)
        .bind(token_hash)
        .bind(now_ms)
        .fetch_optional(&mut *w)
        .await?;
        w.keep();
        agent
            .map(|a| AgentName::parse(&a).map_err(corrupt))
            .transpose()
    }

    async fn consume_assertion(
        &self,
        source: &str,
        jti: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        sqlx::query("DELETE FROM used_assertions WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let fresh = sqlx::query(
            "INSERT INTO used_assertions (source, jti, expires_at_ms) VALUES ($1, $2, $3) ON CONFLICT (source, jti) DO NOTHING",
        )
        .bind(source)
        .bind(jti)
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        w.keep();
        Ok(fresh)
    }

    async fn insert_task(&self, task: &TaskRecord, event: NewEvent) -> StoreResult<Event> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        insert_task_in(&mut tx, task).await?;
        let e = append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(e)
    }

    async fn task(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(task_from_row)
        .transpose()
    }

    async fn live_tasks(&self) -> StoreResult<Vec<TaskRecord>> {
        sqlx::query(AssertSqlSafe(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE state IN ('pending', 'active') ORDER BY created_at_ms")))
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(task_from_row)
            .collect()
    }

    async fn transition_task(
        &self,
        id: &str,
        from: &[TaskState],
        to: TaskState,
        now_ms: i64,
        reason: &str,
        event: NewEvent,
    ) -> StoreResult<bool> {
        if from.is_empty() {
            return Ok(false);
        }
        let placeholders: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 5)).collect();
        let sql = format!(
            "UPDATE tasks SET state = $1, ended_at_ms = $2, end_reason = $3 WHERE id = $4 AND state IN ({})",
            placeholders.join(", ")
        );
        let ended = to.is_final().then_some(now_ms);
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        // Safe: the SQL text holds only generated `$n` placeholders, never input.
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(to.as_str())
            .bind(ended)
            .bind(reason)
            .bind(id);
        for s in from {
            q = q.bind(s.as_str());
        }
        let updated = q.execute(&mut *tx).await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(true)
    }

    async fn transition_tasks(&self, moves: Vec<TaskMove>, now_ms: i64) -> StoreResult<Vec<bool>> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let mut moved = Vec::with_capacity(moves.len());
        let mut events = Vec::new();
        for m in moves {
            if m.from.is_empty() {
                moved.push(false);
                continue;
            }
            let placeholders: Vec<String> =
                (0..m.from.len()).map(|i| format!("${}", i + 5)).collect();
            let sql = format!(
                "UPDATE tasks SET state = $1, ended_at_ms = $2, end_reason = $3 WHERE id = $4 AND state IN ({})",
                placeholders.join(", ")
            );
            // Safe: the SQL text holds only generated `$n` placeholders, never input.
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(m.to.as_str())
                .bind(m.to.is_final().then_some(now_ms))
                .bind(&m.reason)
                .bind(&m.id);
            for s in &m.from {
                q = q.bind(s.as_str());
            }
            let updated = q.execute(&mut *tx).await?.rows_affected() > 0;
            if updated {
                events.push(m.event);
            }
            moved.push(updated);
        }
        if !events.is_empty() {
            append_in(&mut tx, events).await?;
        }
        tx.commit().await?;
        w.keep();
        Ok(moved)
    }

    async fn update_task_grant(
        &self,
        id: &str,
        grant: &Grant,
        event: NewEvent,
    ) -> StoreResult<bool> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let updated = sqlx::query(
            "UPDATE tasks SET grant_json = $1 WHERE id = $2 AND state IN ('pending', 'active')",
        )
        .bind(json(grant)?)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(true)
    }

    async fn set_task_step_up(&self, ids: &[String], event: NewEvent) -> StoreResult<usize> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let mut updated = 0;
        for id in ids {
            let r = sqlx::query(
                "UPDATE tasks SET step_up = 1 WHERE id = $1 AND state IN ('pending', 'active')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            updated += usize::try_from(r.rows_affected()).unwrap_or(0);
        }
        append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(updated)
    }

    async fn redeclare_task(&self, plan: &TaskPlan, event: NewEvent) -> StoreResult<bool> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let updated = sqlx::query(
            "UPDATE tasks SET purpose = $1, requested = $2, grant_json = $3, items = $4 \
             WHERE id = $5 AND state = 'active'",
        )
        .bind(&plan.purpose)
        .bind(json(&plan.requested)?)
        .bind(json(&plan.grant)?)
        .bind(json(&plan.items)?)
        .bind(&plan.id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(true)
    }

    async fn append_events(&self, events: Vec<NewEvent>) -> StoreResult<Vec<Event>> {
        self.append_batch(events, Vec::new()).await
    }

    async fn append_batch(
        &self,
        events: Vec<NewEvent>,
        histories: Vec<HistoryRow>,
    ) -> StoreResult<Vec<Event>> {
        if events.is_empty() && histories.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let out = if events.is_empty() {
            Vec::new()
        } else {
            append_in(&mut tx, events).await?
        };
        put_histories_in(&mut tx, &histories).await?;
        tx.commit().await?;
        w.keep();
        Ok(out)
    }

    async fn live_histories(&self) -> StoreResult<Vec<HistoryRow>> {
        let rows = sqlx::query(
            "SELECT h.task_id, h.rev, h.data FROM task_history h JOIN tasks t ON t.id = h.task_id WHERE t.state IN ('active', 'pending')",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    task_id: r.try_get("task_id")?,
                    rev: r.try_get("rev")?,
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }

    async fn audit_tail(&self) -> StoreResult<Option<Event>> {
        let row = sqlx::query("SELECT * FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn events_after(&self, after: i64, limit: i64) -> StoreResult<Vec<Event>> {
        sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    async fn event_hashes(&self, after: i64, limit: i64) -> StoreResult<Vec<(i64, String)>> {
        sqlx::query("SELECT seq, hash FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
            .collect()
    }

    async fn count_events_by_kind(&self, since_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        sqlx::query("SELECT kind, COUNT(*) AS n FROM audit_events WHERE ts_ms >= $1 GROUP BY kind ORDER BY kind")
            .bind(since_ms)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("kind")?, r.try_get("n")?)))
            .collect()
    }

    async fn search_events(
        &self,
        f: &EventFilter,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<Event>> {
        sqlx::query(
            "SELECT * FROM audit_events WHERE seq > ?1 \
             AND (?2 IS NULL OR agent = ?2) \
             AND (?3 IS NULL OR task_id = ?3) \
             AND (?4 IS NULL OR kind = ?4) \
             AND (?5 IS NULL OR json_extract(data, '$.tool') = ?5) \
             AND (?6 IS NULL OR json_extract(data, '$.outcome') = ?6) \
             AND (?7 IS NULL OR EXISTS (SELECT 1 FROM json_each(data, '$.policies') WHERE value = ?7)) \
             AND (?8 IS NULL OR ts_ms >= ?8) \
             AND (?9 IS NULL OR ts_ms < ?9) \
             ORDER BY seq LIMIT ?10",
        )
        .bind(after)
        .bind(&f.agent)
        .bind(&f.task_id)
        .bind(&f.kind)
        .bind(&f.tool)
        .bind(&f.outcome)
        .bind(&f.policy)
        .bind(f.since_ms)
        .bind(f.until_ms)
        .bind(limit)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
    }

    async fn task_events(&self, task_id: &str) -> StoreResult<Vec<Event>> {
        sqlx::query("SELECT * FROM audit_events WHERE task_id = $1 ORDER BY seq")
            .bind(task_id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?)))
            .transpose()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn agent_task_records(&self, agent: &AgentName) -> StoreResult<Vec<TaskRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE agent = $1 ORDER BY created_at_ms, id"
        )))
        .bind(agent.as_str())
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(task_from_row)
        .collect()
    }

    async fn insert_approver(
        &self,
        approver: &ApproverRecord,
        token_hash: &str,
        event: NewEvent,
    ) -> StoreResult<Event> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        // One person, one approver: a row stored before names were normalised
        // (`Alice`) is the same person as `alice`.
        let inserted = sqlx::query(
            "INSERT INTO approvers (name, roles, groups_json, token_hash, created_at_ms, disabled_at_ms) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM approvers WHERE lower(trim(name)) = $1)",
        )
        .bind(approver.name.as_str())
        .bind(json(&approver.roles)?)
        .bind(json(&approver.groups)?)
        .bind(token_hash)
        .bind(approver.created_at_ms)
        .bind(approver.disabled_at_ms)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("approver {}", approver.name)));
        }
        let e = append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(e)
    }

    async fn approver_by_token(&self, token_hash: &str) -> StoreResult<Option<ApproverRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVER_COLUMNS} FROM approvers WHERE token_hash = $1 AND disabled_at_ms IS NULL"
        )))
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(approver_from_row)
        .transpose()
    }

    async fn approvers(&self) -> StoreResult<Vec<ApproverRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVER_COLUMNS} FROM approvers ORDER BY name"
        )))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(approver_from_row)
        .collect()
    }

    async fn disable_approver(
        &self,
        name: &str,
        now_ms: i64,
        event: NewEvent,
    ) -> StoreResult<bool> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let updated = sqlx::query(
            "UPDATE approvers SET disabled_at_ms = $1 WHERE lower(trim(name)) = lower(trim($2)) AND disabled_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(true)
    }

    async fn put_approver_group(&self, group: &ApproverGroup, event: NewEvent) -> StoreResult<()> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        sqlx::query(
            "INSERT INTO approver_groups (name, webhook_url, webhook_secret, updated_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET webhook_url = excluded.webhook_url, webhook_secret = excluded.webhook_secret, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&group.name)
        .bind(&group.webhook_url)
        .bind(&group.webhook_secret)
        .bind(group.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(())
    }

    async fn approver_group(&self, name: &str) -> StoreResult<Option<ApproverGroup>> {
        let row = sqlx::query(
            "SELECT name, webhook_url, webhook_secret, updated_at_ms FROM approver_groups WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(ApproverGroup {
                name: r.try_get("name")?,
                webhook_url: r.try_get("webhook_url")?,
                webhook_secret: r.try_get("webhook_secret")?,
                updated_at_ms: r.try_get("updated_at_ms")?,
            })
        })
        .transpose()
    }

    async fn insert_approval(
        &self,
        a: &ApprovalRecord,
        max_per_agent: i64,
        max_per_task: i64,
        event: NewEvent,
    ) -> StoreResult<Event> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let (by_agent, by_task): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN task_id = $1 THEN 1 ELSE 0 END), 0) FROM approvals WHERE agent = $2 AND state = 'pending'",
        )
        .bind(&a.task_id)
        .bind(a.agent.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if by_agent >= max_per_agent {
            return Err(StoreError::Limit(format!(
                "agent {} already has {by_agent} approval requests pending (at most {max_per_agent}): wait for answers",
                a.agent
            )));
        }
        if by_task >= max_per_task {
            return Err(StoreError::Limit(format!(
                "task {} already has {by_task} approval requests pending (at most {max_per_task}): wait for answers",
                a.task_id
            )));
        }
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO approvals ({APPROVAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        )))
        .bind(&a.id)
        .bind(a.kind.as_str())
        .bind(&a.task_id)
        .bind(a.agent.as_str())
        .bind(a.owner.as_str())
        .bind(&a.group)
        .bind(&a.digest)
        .bind(json(&a.action)?)
        .bind(&a.bundle_version)
        .bind(i64::from(a.required))
        .bind(i64::from(a.owner_may_approve))
        .bind(json(&a.votes)?)
        .bind(a.state.as_str())
        .bind(a.created_at_ms)
        .bind(a.expires_at_ms)
        .bind(a.decided_at_ms)
        .bind(&a.decided_by)
        .bind(&a.reason)
        .execute(&mut *tx)
        .await?;
        let e = append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(e)
    }

    async fn approval(&self, id: &str) -> StoreResult<Option<ApprovalRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(approval_from_row)
        .transpose()
    }

    async fn approvals(
        &self,
        state: Option<ApprovalState>,
        agent: Option<&AgentName>,
        groups: Option<&[String]>,
        limit: i64,
    ) -> StoreResult<Vec<ApprovalRecord>> {
        let in_groups = match groups {
            None => String::new(),
            Some([]) => return Ok(Vec::new()),
            Some(g) => format!(
                " AND grp IN ({})",
                (0..g.len())
                    .map(|i| format!("${}", i + 4))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        // Safe: the SQL text holds only generated `$n` placeholders, never input.
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR agent = $2){in_groups} ORDER BY created_at_ms DESC, id LIMIT $3"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(state.map(ApprovalState::as_str))
            .bind(agent.map(AgentName::as_str))
            .bind(limit);
        for g in groups.unwrap_or_default() {
            q = q.bind(g);
        }
        q.fetch_all(&self.read)
            .await?
            .iter()
            .map(approval_from_row)
            .collect()
    }

    async fn due_approvals(&self, now_ms: i64, limit: i64) -> StoreResult<Vec<ApprovalRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state IN ('pending', 'approved') AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2"
        )))
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(approval_from_row)
        .collect()
    }

    async fn stale_approvals(&self, version: &str) -> StoreResult<Vec<ApprovalRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state IN ('pending', 'approved') AND bundle_version <> $1 LIMIT 10000"
        )))
        .bind(version)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(approval_from_row)
        .collect()
    }

    async fn vote_approval(
        &self,
        id: &str,
        vote: &ApprovalVote,
        mut event: NewEvent,
    ) -> StoreResult<VoteOutcome> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(VoteOutcome::Missing);
        };
        let mut a = approval_from_row(&row)?;
        if a.state != ApprovalState::Pending || vote.at_ms >= a.expires_at_ms {
            return Ok(VoteOutcome::NotPending(Box::new(a)));
        }
        if a.votes.iter().any(|v| v.by == vote.by) {
            return Ok(VoteOutcome::Duplicate);
        }
        a.votes.push(vote.clone());
        let done = a.votes.len() >= usize::try_from(a.required).unwrap_or(usize::MAX);
        if done {
            a.state = ApprovalState::Approved;
            a.decided_at_ms = Some(vote.at_ms);
            a.decided_by = Some(
                a.votes
                    .iter()
                    .map(|v| v.by.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        sqlx::query(
            "UPDATE approvals SET votes = $1, state = $2, decided_at_ms = $3, decided_by = $4 WHERE id = $5 AND state = 'pending'",
        )
        .bind(json(&a.votes)?)
        .bind(a.state.as_str())
        .bind(a.decided_at_ms)
        .bind(&a.decided_by)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let mandate_audit::Body::ApprovalVote(mut vote)
        | mandate_audit::Body::ApprovalApproved(mut vote) = event.body
        {
            vote.approvals = Some(a.votes.len());
            vote.required = Some(a.required);
            vote.state = Some(a.state);
            event.body = if done {
                mandate_audit::Body::ApprovalApproved(vote)
            } else {
                mandate_audit::Body::ApprovalVote(vote)
            };
        }
        append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(VoteOutcome::Counted(Box::new(a)))
    }

    async fn transition_approval(
        &self,
        id: &str,
        from: &[ApprovalState],
        to: ApprovalState,
        by: &str,
        now_ms: i64,
        reason: &str,
        event: NewEvent,
    ) -> StoreResult<bool> {
        if from.is_empty() {
            return Ok(false);
        }
        let placeholders: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 6)).collect();
        let sql = format!(
            "UPDATE approvals SET state = $1, decided_at_ms = $2, decided_by = $3, reason = $4 WHERE id = $5 AND state IN ({})",
            placeholders.join(", ")
        );
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        // Safe: the SQL text holds only generated `$n` placeholders, never input.
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(to.as_str())
            .bind(now_ms)
            .bind(by)
            .bind(reason)
            .bind(id);
        for s in from {
            q = q.bind(s.as_str());
        }
        if q.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(false);
        }
        append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(true)
    }

    async fn insert_break_glass(
        &self,
        record: &BreakGlassRecord,
        task: &TaskRecord,
        event: NewEvent,
    ) -> StoreResult<Event> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        insert_task_in(&mut tx, task).await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO break_glass ({BREAK_GLASS_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL)"
        )))
        .bind(&record.id)
        .bind(record.declared_by.as_str())
        .bind(record.agent.as_str())
        .bind(&record.task_id)
        .bind(&record.justification)
        .bind(record.created_at_ms)
        .bind(record.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        let e = append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(e)
    }

    async fn break_glass(&self, id: &str) -> StoreResult<Option<BreakGlassRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {BREAK_GLASS_COLUMNS} FROM break_glass WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.read)
        .await?
        .as_ref()
        .map(break_glass_from_row)
        .transpose()
    }

    async fn break_glass_records(&self) -> StoreResult<Vec<BreakGlassRecord>> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {BREAK_GLASS_COLUMNS} FROM break_glass ORDER BY created_at_ms DESC, id"
        )))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(break_glass_from_row)
        .collect()
    }

    async fn close_break_glass(
        &self,
        id: &str,
        review: &BreakGlassReview,
        event: NewEvent,
    ) -> StoreResult<bool> {
        let mut w = self.writer().await?;
        let mut tx = w.begin().await?;
        let updated = sqlx::query(
            "UPDATE break_glass SET reviewed_by = $1, reviewed_at_ms = $2, review_notes = $3 WHERE id = $4 AND reviewed_by IS NULL AND lower(trim(declared_by)) <> lower(trim($5))",
        )
        .bind(review.by.as_str())
        .bind(review.at_ms)
        .bind(&review.notes)
        .bind(id)
        .bind(review.by.as_str())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        append_one(&mut tx, event).await?;
        tx.commit().await?;
        w.keep();
        Ok(true)
    }

    async fn put_secret(&self, secret: &SecretRecord, event: NewEvent) -> StoreResult<()> {
        secrets::put(self, secret, event).await
    }

    async fn secret(&self, name: &str) -> StoreResult<Option<SecretRecord>> {
        secrets::get(self, name).await
    }

    async fn secrets(&self) -> StoreResult<Vec<SecretRecord>> {
        secrets::all(self).await
    }

    async fn delete_secret(&self, name: &str, event: NewEvent) -> StoreResult<bool> {
        secrets::delete(self, name, event).await
    }

    async fn reseal_secrets(
        &self,
        resealed: &[(SecretRecord, i64)],
        event: NewEvent,
    ) -> StoreResult<()> {
        secrets::reseal(self, resealed, event).await
    }

    async fn tool_pins(&self) -> StoreResult<Vec<ToolPin>> {
        pins::all(self).await
    }

    async fn put_tool_pins(&self, pins: &[ToolPin], event: NewEvent) -> StoreResult<()> {
        pins::put(self, pins, event).await
    }
}

async fn insert_join(tx: &mut Transaction<'_, Sqlite>, join: &JoinTokenRecord) -> StoreResult<()> {
    sqlx::query("INSERT INTO join_tokens (token_hash, agent, created_at_ms, expires_at_ms, used_at_ms) VALUES ($1, $2, $3, $4, NULL)")
        .bind(&join.token_hash)
        .bind(join.agent.as_str())
        .bind(join.created_at_ms)
        .bind(join.expires_at_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

//! S1: when the audit record of a decision cannot be written, nothing is allowed.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use common::{Harness, Reply};
use mandate_audit::{Event, NewEvent};
use mandate_core::{AgentName, AgentStatus, ApprovalState, ManualClock, TaskState};
use mandate_store::{
    AgentRecord, ApprovalRecord, ApprovalVote, ApproverGroup, ApproverRecord, BreakGlassRecord,
    BreakGlassReview, HistoryRow, JoinTokenRecord, KeyRow, SecretRecord, SqliteStore, Store,
    StoreError, StoreResult, TaskRecord, VoteOutcome,
};

/// The real SQLite store, except that appends fail while `broken` is set.
#[derive(Debug)]
struct BreakableStore {
    inner: SqliteStore,
    broken: AtomicBool,
    /// Milliseconds every append waits before it is written (a slow disk).
    slow_ms: std::sync::atomic::AtomicU64,
}

impl BreakableStore {
    fn check(&self) -> StoreResult<()> {
        if self.broken.load(Ordering::SeqCst) {
            Err(StoreError::Db("disk full (injected)".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for BreakableStore {
    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        self.inner.setting(key).await
    }
    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        self.inner.put_setting(key, value).await
    }
    async fn signing_keys(&self) -> StoreResult<Vec<KeyRow>> {
        self.inner.signing_keys().await
    }
    async fn rotate_keys(
        &self,
        new: &KeyRow,
        now_ms: i64,
        prune: i64,
        event: Option<NewEvent>,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner.rotate_keys(new, now_ms, prune, event).await
    }
    async fn insert_agent(
        &self,
        a: &AgentRecord,
        j: Option<&JoinTokenRecord>,
        e: NewEvent,
    ) -> StoreResult<Event> {
        self.check()?;
        self.inner.insert_agent(a, j, e).await
    }
    async fn agent(&self, name: &AgentName) -> StoreResult<Option<AgentRecord>> {
        self.inner.agent(name).await
    }
    async fn agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.inner.agents().await
    }
    async fn set_agent_status(
        &self,
        n: &AgentName,
        s: AgentStatus,
        now: i64,
        by: &str,
        e: NewEvent,
    ) -> StoreResult<Vec<String>> {
        self.check()?;
        self.inner.set_agent_status(n, s, now, by, e).await
    }
    async fn insert_join_token(&self, j: &JoinTokenRecord, e: NewEvent) -> StoreResult<Event> {
        self.check()?;
        self.inner.insert_join_token(j, e).await
    }
    async fn consume_join_token(&self, h: &str, now: i64) -> StoreResult<Option<AgentName>> {
        self.inner.consume_join_token(h, now).await
    }
    async fn consume_assertion(&self, s: &str, j: &str, exp: i64, now: i64) -> StoreResult<bool> {
        self.check()?;
        self.inner.consume_assertion(s, j, exp, now).await
    }
    async fn insert_task(&self, t: &TaskRecord, e: NewEvent) -> StoreResult<Event> {
        self.check()?;
        self.inner.insert_task(t, e).await
    }
    async fn task(&self, id: &str) -> StoreResult<Option<TaskRecord>> {
        self.inner.task(id).await
    }
    async fn live_tasks(&self) -> StoreResult<Vec<TaskRecord>> {
        self.inner.live_tasks().await
    }
    async fn transition_task(
        &self,
        id: &str,
        from: &[TaskState],
        to: TaskState,
        now: i64,
        r: &str,
        e: NewEvent,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.transition_task(id, from, to, now, r, e).await
    }
    async fn transition_tasks(
        &self,
        moves: Vec<mandate_store::TaskMove>,
        now: i64,
    ) -> StoreResult<Vec<bool>> {
        self.check()?;
        self.inner.transition_tasks(moves, now).await
    }
    async fn update_task_grant(
        &self,
        id: &str,
        g: &mandate_core::Grant,
        e: NewEvent,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.update_task_grant(id, g, e).await
    }
    async fn set_task_step_up(&self, ids: &[String], e: NewEvent) -> StoreResult<usize> {
        self.check()?;
        self.inner.set_task_step_up(ids, e).await
    }
    async fn redeclare_task(
        &self,
        plan: &mandate_store::TaskPlan,
        e: NewEvent,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.redeclare_task(plan, e).await
    }
    async fn append_events(&self, events: Vec<NewEvent>) -> StoreResult<Vec<Event>> {
        self.check()?;
        self.inner.append_events(events).await
    }
    async fn append_batch(
        &self,
        events: Vec<NewEvent>,
        histories: Vec<HistoryRow>,
    ) -> StoreResult<Vec<Event>> {
        self.check()?;
        let slow = self.slow_ms.load(Ordering::SeqCst);
        if slow > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
        }
        self.inner.append_batch(events, histories).await
    }
    async fn live_histories(&self) -> StoreResult<Vec<HistoryRow>> {
        self.inner.live_histories().await
    }
    async fn audit_tail(&self) -> StoreResult<Option<Event>> {
        self.inner.audit_tail().await
    }
    async fn events_after(&self, after: i64, limit: i64) -> StoreResult<Vec<Event>> {
        self.inner.events_after(after, limit).await
    }
    async fn event_hashes(&self, after: i64, limit: i64) -> StoreResult<Vec<(i64, String)>> {
        self.inner.event_hashes(after, limit).await
    }
    async fn count_events_by_kind(&self, since_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        self.inner.count_events_by_kind(since_ms).await
    }
    async fn search_events(
        &self,
        f: &mandate_store::EventFilter,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<Event>> {
        self.inner.search_events(f, after, limit).await
    }
    async fn task_events(&self, id: &str) -> StoreResult<Vec<Event>> {
        self.inner.task_events(id).await
    }
    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>> {
        self.inner.audit_head().await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn agent_task_records(&self, a: &AgentName) -> StoreResult<Vec<TaskRecord>> {
        self.inner.agent_task_records(a).await
    }
    async fn insert_approver(
        &self,
        a: &ApproverRecord,
        h: &str,
        e: NewEvent,
    ) -> StoreResult<Event> {
        self.check()?;
        self.inner.insert_approver(a, h, e).await
    }
    async fn approver_by_token(&self, h: &str) -> StoreResult<Option<ApproverRecord>> {
        self.inner.approver_by_token(h).await
    }
    async fn approvers(&self) -> StoreResult<Vec<ApproverRecord>> {
        self.inner.approvers().await
    }
    async fn disable_approver(&self, n: &str, now: i64, e: NewEvent) -> StoreResult<bool> {
        self.check()?;
        self.inner.disable_approver(n, now, e).await
    }
    async fn put_approver_group(&self, g: &ApproverGroup, e: NewEvent) -> StoreResult<()> {
        self.check()?;
        self.inner.put_approver_group(g, e).await
    }
    async fn approver_group(&self, n: &str) -> StoreResult<Option<ApproverGroup>> {
        self.inner.approver_group(n).await
    }
    async fn insert_approval(
        &self,
        a: &ApprovalRecord,
        per_agent: i64,
        per_task: i64,
        e: NewEvent,
    ) -> StoreResult<Event> {
        self.check()?;
        self.inner.insert_approval(a, per_agent, per_task, e).await
    }
    async fn approval(&self, id: &str) -> StoreResult<Option<ApprovalRecord>> {
        self.inner.approval(id).await
    }
    async fn approvals(
        &self,
        s: Option<ApprovalState>,
        a: Option<&AgentName>,
        g: Option<&[String]>,
        limit: i64,
    ) -> StoreResult<Vec<ApprovalRecord>> {
        self.inner.approvals(s, a, g, limit).await
    }
    async fn due_approvals(&self, now: i64, limit: i64) -> StoreResult<Vec<ApprovalRecord>> {
        self.inner.due_approvals(now, limit).await
    }
    async fn stale_approvals(&self, v: &str) -> StoreResult<Vec<ApprovalRecord>> {
        self.inner.stale_approvals(v).await
    }
    async fn vote_approval(
        &self,
        id: &str,
        v: &ApprovalVote,
        e: NewEvent,
    ) -> StoreResult<VoteOutcome> {
        self.check()?;
        self.inner.vote_approval(id, v, e).await
    }
    async fn transition_approval(
        &self,
        id: &str,
        from: &[ApprovalState],
        to: ApprovalState,
        by: &str,
        now: i64,
        r: &str,
        e: NewEvent,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner
            .transition_approval(id, from, to, by, now, r, e)
            .await
    }
    async fn insert_break_glass(
        &self,
        b: &BreakGlassRecord,
        t: &TaskRecord,
        e: NewEvent,
    ) -> StoreResult<Event> {
        self.check()?;
        self.inner.insert_break_glass(b, t, e).await
    }
    async fn break_glass(&self, id: &str) -> StoreResult<Option<BreakGlassRecord>> {
        self.inner.break_glass(id).await
    }
    async fn break_glass_records(&self) -> StoreResult<Vec<BreakGlassRecord>> {
        self.inner.break_glass_records().await
    }
    async fn close_break_glass(
        &self,
        id: &str,
        r: &BreakGlassReview,
        e: NewEvent,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.close_break_glass(id, r, e).await
    }
    async fn put_secret(&self, s: &SecretRecord, e: NewEvent) -> StoreResult<()> {
        self.check()?;
        self.inner.put_secret(s, e).await
    }
    async fn secret(&self, name: &str) -> StoreResult<Option<SecretRecord>> {
        self.check()?;
        self.inner.secret(name).await
    }
    async fn secrets(&self) -> StoreResult<Vec<SecretRecord>> {
        self.check()?;
        self.inner.secrets().await
    }
    async fn delete_secret(&self, name: &str, e: NewEvent) -> StoreResult<bool> {
        self.check()?;
        self.inner.delete_secret(name, e).await
    }
    async fn reseal_secrets(&self, r: &[(SecretRecord, i64)], e: NewEvent) -> StoreResult<()> {
        self.check()?;
        self.inner.reseal_secrets(r, e).await
    }
    async fn tool_pins(&self) -> StoreResult<Vec<mandate_store::ToolPin>> {
        self.check()?;
        self.inner.tool_pins().await
    }
    async fn put_tool_pins(&self, p: &[mandate_store::ToolPin], e: NewEvent) -> StoreResult<()> {
        self.check()?;
        self.inner.put_tool_pins(p, e).await
    }
}

#[tokio::test]
async fn no_allow_without_a_durable_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BreakableStore {
        inner: SqliteStore::open(dir.path()).await.unwrap(),
        broken: AtomicBool::new(false),
        slow_ms: std::sync::atomic::AtomicU64::new(0),
    });
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now().as_millisecond()));
    let config = common::config(dir.path(), &common::demo_policies(), clock.clone());
    let server = mandate_server::Server::start_with_store(config, store.clone())
        .await
        .unwrap();
    let h = Harness {
        server,
        clock,
        http: reqwest::Client::new(),
        dir,
    };
    let identity = h.agent("bot", 1).await;
    let (task_id, token) = h.task(&identity).await;
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );

    store.broken.store(true, Ordering::SeqCst);
    let r: Reply = h.decide(&token, "tickets.search", "read").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (503, "audit_unavailable"),
        "{:?}",
        r.body
    );
    assert!(r.body.get("outcome").is_none());
    // A refused token cannot be recorded either: still refused, never allowed.
    let r = h.decide("garbage", "tickets.search", "read").await;
    assert_eq!(r.status, 503);
    // Revocation under a failing store is not acknowledged, but the task is already cut off.
    let r = h
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(common::ADMIN),
            serde_json::json!({"reason": "x"}),
        )
        .await;
    assert_eq!(r.status, 503);
    store.broken.store(false, Ordering::SeqCst);
    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "task_not_active"),
        "{:?}",
        r.body
    );

    // The unacknowledged revocation is retried until the store has it.
    let mut state = serde_json::Value::Null;
    for _ in 0..50 {
        state = h
            .get(&format!("/v1/tasks/{task_id}"), Some(common::ADMIN))
            .await
            .body["state"]
            .clone();
        if state == "revoked" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state, "revoked");
    let (_, token) = h.task(&identity).await;
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    let r = h.get("/v1/audit/verify", Some(common::ADMIN)).await;
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
}

async fn breakable_harness(
    change: impl FnOnce(&mut mandate_server::ServerConfig),
) -> (Harness, Arc<BreakableStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BreakableStore {
        inner: SqliteStore::open(dir.path()).await.unwrap(),
        broken: AtomicBool::new(false),
        slow_ms: std::sync::atomic::AtomicU64::new(0),
    });
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now().as_millisecond()));
    let mut config = common::config(dir.path(), &common::demo_policies(), clock.clone());
    change(&mut config);
    let server = mandate_server::Server::start_with_store(config, store.clone())
        .await
        .unwrap();
    let h = Harness {
        server,
        clock,
        http: reqwest::Client::new(),
        dir,
    };
    (h, store)
}

/// A call decided `allow` by policy while its task is revoked must be recorded as what
/// the caller got: either an allow answered before the revoke is acknowledged, or a
/// refusal recorded as a refusal — never `outcome: allow` plus a later `call.refused`.
#[tokio::test]
async fn an_allow_superseded_by_a_revocation_is_recorded_as_what_the_caller_got() {
    let (h, store) = breakable_harness(|_| {}).await;
    let h = Arc::new(h);
    let identity = h.agent("racer", 1).await;
    for round in 0..6 {
        let (task_id, token) = h.task(&identity).await;
        store.slow_ms.store(300, Ordering::SeqCst);
        let caller = {
            let h = Arc::clone(&h);
            let token = token.clone();
            tokio::spawn(async move {
                let r = h.decide(&token, "tickets.search", "read").await;
                (r, std::time::Instant::now())
            })
        };
        // Revoke while the allow's record is being written (or, in later rounds, before).
        tokio::time::sleep(std::time::Duration::from_millis(50 * round)).await;
        let revoke = h
            .post(
                &format!("/v1/tasks/{task_id}/revoke"),
                Some(common::ADMIN),
                serde_json::json!({"reason": "race"}),
            )
            .await;
        let acknowledged = std::time::Instant::now();
        assert_eq!(revoke.status, 200, "{:?}", revoke.body);
        let (answer, answered) = caller.await.unwrap();
        store.slow_ms.store(0, Ordering::SeqCst);

        let events = h
            .get(&format!("/v1/tasks/{task_id}/events"), Some(common::ADMIN))
            .await
            .body;
        let events = events.as_array().unwrap();
        let allows = events
            .iter()
            .filter(|e| e["kind"] == "decision" && e["data"]["outcome"] == "allow")
            .count();
        let refusals = events
            .iter()
            .filter(|e| e["kind"] == "call.refused" && e["data"]["code"] == "task_not_active")
            .count();
        if answer.status == 200 {
            assert_eq!(answer.body["outcome"], "allow");
            assert_eq!((allows, refusals), (1, 0), "round {round}: {events:?}");
            assert!(
                answered <= acknowledged,
                "round {round}: an allow answered after the revocation was acknowledged"
            );
        } else {
            assert_eq!(answer.code(), "task_not_active", "{:?}", answer.body);
            assert_eq!((allows, refusals), (0, 1), "round {round}: {events:?}");
        }
    }
}

/// One agent flooding the decide path is refused with 429 before it costs an audit
/// record each, and another agent is still served.
#[tokio::test]
async fn decisions_are_rate_limited_per_agent_and_per_task() {
    let (h, _store) = breakable_harness(|c| {
        c.limits.agent_decisions_per_sec = 5;
        c.limits.task_decisions_per_sec = 3;
    })
    .await;
    let flooder = h.agent("flooder", 1).await;
    let (task_a, token_a) = h.task(&flooder).await;
    let (_task_b, token_b) = h.task(&flooder).await;
    let mut codes = Vec::new();
    for _ in 0..10 {
        let r = h.decide(&token_a, "tickets.search", "read").await;
        codes.push((r.status.as_u16(), r.code().to_owned()));
    }
    let allowed = codes.iter().filter(|c| c.0 == 200).count();
    assert_eq!(allowed, 6, "the task's burst (2 x 3/s): {codes:?}");
    assert!(
        codes
            .iter()
            .skip(6)
            .all(|c| *c == (429, "rate_limited".to_owned())),
        "{codes:?}"
    );
    // Another task of the same agent: only the agent's remaining burst (10 - 6 = 4).
    let mut more = 0;
    for _ in 0..10 {
        if h.decide(&token_b, "tickets.search", "read").await.status == 200 {
            more += 1;
        }
    }
    assert_eq!(
        more, 4,
        "the agent's burst (2 x 5/s) is shared by its tasks"
    );
    // Another agent is not starved.
    let other = h.agent("quiet", 1).await;
    let (_t, token) = h.task(&other).await;
    assert_eq!(h.decide(&token, "tickets.search", "read").await.status, 200);
    // Time passes (injected clock): the flooder is served again.
    h.clock.advance_ms(1000);
    assert_eq!(
        h.decide(&token_a, "tickets.search", "read").await.status,
        200
    );
    // The refusals are summarised in the audit, not recorded one by one.
    let mut summarised = None;
    for _ in 0..50 {
        let events = h
            .get(&format!("/v1/tasks/{task_a}/events"), Some(common::ADMIN))
            .await
            .body;
        summarised = events.as_array().unwrap().iter().find_map(|e| {
            (e["kind"] == "call.refused" && e["data"]["code"] == "rate_limited")
                .then(|| e["data"]["count"].as_u64().unwrap())
        });
        if summarised.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(summarised, Some(4));
}

//! The store conformance suite. Every backend must pass it; today it runs on SQLite.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a panic is a test failure"
)]

use std::sync::Arc;

use mandate_audit::{EventKind, NewEvent, Verifier};
use mandate_core::{
    AgentName, AgentStatus, AttestationRule, Grant, RequestedScope, RiskTier, TaskState,
};
use mandate_store::{AgentRecord, JoinTokenRecord, SqliteStore, Store, StoreError, TaskRecord};

fn ev(kind: EventKind, task: Option<&str>) -> NewEvent {
    NewEvent {
        ts_ms: 1,
        kind,
        agent: Some("bot".into()),
        task_id: task.map(str::to_owned),
        data: serde_json::json!({"k": "v"}),
    }
}

fn agent() -> AgentRecord {
    AgentRecord {
        name: AgentName::parse("bot").unwrap(),
        owner: "alice".into(),
        tier: RiskTier::try_from(1).unwrap(),
        status: AgentStatus::Active,
        attestation: AttestationRule::JoinToken,
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

fn join(hash: &str, expires: i64) -> JoinTokenRecord {
    JoinTokenRecord {
        token_hash: hash.into(),
        agent: AgentName::parse("bot").unwrap(),
        created_at_ms: 1,
        expires_at_ms: expires,
    }
}

fn task(id: &str) -> TaskRecord {
    TaskRecord {
        id: id.into(),
        agent: AgentName::parse("bot").unwrap(),
        purpose: "p".into(),
        requested: RequestedScope {
            tools: vec![],
            actions: vec![],
            data_domains: vec![],
            destinations: vec![],
        },
        grant: Grant::default(),
        items: serde_json::json!([]),
        state: TaskState::Active,
        bundle_version: "v".into(),
        token_jti: "j".into(),
        created_at_ms: 1,
        expires_at_ms: 100,
        ended_at_ms: None,
        end_reason: None,
    }
}

async fn verify(store: &dyn Store) -> Result<i64, mandate_audit::ChainBreak> {
    let mut v = Verifier::new();
    for e in store.events_after(0, 100_000).await.unwrap() {
        v.feed(&e)?;
    }
    let (seq, hash) = store.audit_head().await.unwrap().unwrap();
    v.finish(seq, &hash)
}

async fn conformance(store: Arc<dyn Store>) {
    store
        .insert_agent(
            &agent(),
            &join("h1", 50),
            ev(EventKind::AgentRegistered, None),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert_agent(
                &agent(),
                &join("h2", 50),
                ev(EventKind::AgentRegistered, None)
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .agent(&AgentName::parse("bot").unwrap())
            .await
            .unwrap()
            .unwrap(),
        agent()
    );

    // Join tokens: single use under concurrency, and never after expiry.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            s.consume_join_token("h1", 10).await.unwrap()
        }));
    }
    let mut winners = 0;
    for h in handles {
        winners += usize::from(h.await.unwrap().is_some());
    }
    assert_eq!(winners, 1);
    store
        .insert_join_token(&join("h3", 50), ev(EventKind::JoinTokenIssued, None))
        .await
        .unwrap();
    assert!(store.consume_join_token("h3", 50).await.unwrap().is_none());
    assert!(
        store
            .consume_join_token("nope", 10)
            .await
            .unwrap()
            .is_none()
    );

    // Tasks: guarded transitions.
    store
        .insert_task(&task("t1"), ev(EventKind::TaskStarted, Some("t1")))
        .await
        .unwrap();
    store
        .insert_task(&task("t2"), ev(EventKind::TaskStarted, Some("t2")))
        .await
        .unwrap();
    assert!(
        store
            .transition_task(
                "t1",
                &[TaskState::Active],
                TaskState::Completed,
                5,
                "done",
                ev(EventKind::TaskCompleted, Some("t1"))
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .transition_task(
                "t1",
                &[TaskState::Active, TaskState::Pending],
                TaskState::Revoked,
                6,
                "x",
                ev(EventKind::TaskRevoked, Some("t1"))
            )
            .await
            .unwrap()
    );
    let t1 = store.task("t1").await.unwrap().unwrap();
    assert_eq!(
        (t1.state, t1.ended_at_ms, t1.end_reason.as_deref()),
        (TaskState::Completed, Some(5), Some("done"))
    );
    assert_eq!(store.live_tasks().await.unwrap().len(), 1);
    // Narrowing a grant: only while the task is live.
    let mut narrowed = Grant::default();
    narrowed
        .data_domains
        .insert(mandate_core::DataDomain::parse("support").unwrap());
    assert!(
        store
            .update_task_grant("t2", &narrowed, ev(EventKind::TaskGrantReduced, Some("t2")))
            .await
            .unwrap()
    );
    assert_eq!(store.task("t2").await.unwrap().unwrap().grant, narrowed);
    assert!(
        !store
            .update_task_grant("t1", &narrowed, ev(EventKind::TaskGrantReduced, Some("t1")))
            .await
            .unwrap()
    );

    // Offboarding revokes every live task in the same transaction.
    let revoked = store
        .set_agent_status(
            &AgentName::parse("bot").unwrap(),
            AgentStatus::Offboarded,
            7,
            ev(EventKind::AgentStatusChanged, None),
        )
        .await
        .unwrap();
    assert_eq!(revoked, ["t2"]);
    assert_eq!(
        store.task("t2").await.unwrap().unwrap().state,
        TaskState::Revoked
    );
    assert!(store.live_tasks().await.unwrap().is_empty());
    // No task can be added for an agent that is not active.
    assert!(matches!(
        store
            .insert_task(&task("t3"), ev(EventKind::TaskStarted, Some("t3")))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.task("t3").await.unwrap().is_none());

    // Group append, per-task history, and a chain that verifies.
    let batch = store
        .append_events(
            (0..10)
                .map(|_| ev(EventKind::Decision, Some("t2")))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(batch.len(), 10);
    assert_eq!(batch[1].prev_hash, batch[0].hash);
    let t2 = store.task_events("t2").await.unwrap();
    assert_eq!(t2.len(), 13, "start + narrowing + revoke + 10 decisions");
    let n = verify(store.as_ref()).await.unwrap();
    assert_eq!(n, store.audit_head().await.unwrap().unwrap().0);
}

#[tokio::test]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    conformance(Arc::new(store)).await;
    // Reopening applies no migration twice and keeps everything.
    let again = SqliteStore::open(dir.path()).await.unwrap();
    assert!(verify(&again).await.is_ok());
    assert!(SqliteStore::open_existing(dir.path()).await.is_ok());
    assert!(
        SqliteStore::open_existing(&dir.path().join("missing"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn tampering_with_the_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    store
        .append_events((0..5).map(|_| ev(EventKind::Decision, None)).collect())
        .await
        .unwrap();
    drop(store);
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("mandate.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE seq = 5")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let store = SqliteStore::open_existing(dir.path()).await.unwrap();
    let brk = verify(&store).await.unwrap_err();
    assert_eq!(brk.seq, 5, "{brk}");
}

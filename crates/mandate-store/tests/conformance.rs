//! The store conformance suite. Every backend must pass it; today it runs on SQLite.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

use std::sync::Arc;

use mandate_audit::{EventKind, NewEvent, Verifier};
use mandate_core::{
    AgentName, AgentStatus, ApprovalKind, ApprovalState, ApproverRole, AttestationRule, Grant,
    HumanId, RequestedScope, RiskTier, TaskState,
};
use mandate_store::{
    AgentRecord, ApprovalRecord, ApprovalVote, ApproverGroup, ApproverRecord, BreakGlassRecord,
    BreakGlassReview, JoinTokenRecord, SecretRecord, SqliteStore, Store, StoreError, TaskRecord,
    VoteOutcome,
};

fn ev(kind: EventKind, task: Option<&str>) -> NewEvent {
    NewEvent {
        ts_ms: 1,
        agent: Some("bot".into()),
        task_id: task.map(str::to_owned),
        body: mandate_audit::example(kind),
    }
}

fn agent() -> AgentRecord {
    AgentRecord {
        name: AgentName::parse("bot").unwrap(),
        owner: HumanId::parse("alice").unwrap(),
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
        delegation: None,
        step_up: false,
        cnf_jkt: None,
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
            Some(&join("h1", 50)),
            ev(EventKind::AgentRegistered, None),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert_agent(
                &agent(),
                Some(&join("h2", 50)),
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

    // External assertions: one use per (source, jti) under concurrency, forgotten once
    // expired, and independent across sources.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            s.consume_assertion("k8s", "j1", 100, 10).await.unwrap()
        }));
    }
    let mut winners = 0;
    for h in handles {
        winners += usize::from(h.await.unwrap());
    }
    assert_eq!(winners, 1);
    assert!(store.consume_assertion("gha", "j1", 100, 10).await.unwrap());
    assert!(!store.consume_assertion("k8s", "j1", 100, 99).await.unwrap());
    assert!(
        store
            .consume_assertion("k8s", "j1", 300, 100)
            .await
            .unwrap()
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
            "admin",
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
    conformance(Arc::new(store.clone())).await;
    approvals_conformance(Arc::new(store)).await;
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

fn approval(id: &str, task: &str, required: u32) -> ApprovalRecord {
    ApprovalRecord {
        id: id.into(),
        kind: ApprovalKind::Call,
        task_id: task.into(),
        agent: AgentName::parse("bot").unwrap(),
        owner: HumanId::parse("alice").unwrap(),
        group: "default".into(),
        digest: "d".into(),
        action: serde_json::json!({"tool": "tickets.update"}),
        bundle_version: "v".into(),
        required,
        owner_may_approve: false,
        votes: vec![],
        state: ApprovalState::Pending,
        created_at_ms: 10,
        expires_at_ms: 1_000,
        decided_at_ms: None,
        decided_by: None,
        reason: None,
    }
}

fn vote(by: &str, at_ms: i64) -> ApprovalVote {
    ApprovalVote {
        by: HumanId::parse(by).unwrap(),
        at_ms,
    }
}

/// Approvers, approval requests and break-glass. Runs after `conformance` (agent `bot`
/// exists and is active).
async fn approvals_conformance(store: Arc<dyn Store>) {
    store
        .set_agent_status(
            &AgentName::parse("bot").unwrap(),
            AgentStatus::Active,
            5,
            "admin",
            ev(EventKind::AgentStatusChanged, None),
        )
        .await
        .unwrap();
    store
        .insert_task(&task("ta"), ev(EventKind::TaskStarted, Some("ta")))
        .await
        .unwrap();
    store
        .insert_task(&task("tb"), ev(EventKind::TaskStarted, Some("tb")))
        .await
        .unwrap();

    // Approvers: found by token hash only while enabled; names and token hashes unique.
    let carol = ApproverRecord {
        name: HumanId::parse("carol").unwrap(),
        roles: vec![ApproverRole::Approver],
        groups: vec!["default".into()],
        created_at_ms: 1,
        disabled_at_ms: None,
    };
    store
        .insert_approver(&carol, "hc", ev(EventKind::ApproverAdded, None))
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert_approver(&carol, "hc2", ev(EventKind::ApproverAdded, None))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.approver_by_token("hc").await.unwrap(), Some(carol));
    assert!(store.approver_by_token("nope").await.unwrap().is_none());
    assert!(
        store
            .disable_approver("carol", 9, ev(EventKind::ApproverRemoved, None))
            .await
            .unwrap()
    );
    assert!(
        !store
            .disable_approver("carol", 9, ev(EventKind::ApproverRemoved, None))
            .await
            .unwrap()
    );
    assert!(store.approver_by_token("hc").await.unwrap().is_none());
    assert_eq!(store.approvers().await.unwrap().len(), 1);

    let g = ApproverGroup {
        name: "default".into(),
        webhook_url: Some("http://127.0.0.1:1/hook".into()),
        webhook_secret: Some("s3cret".into()),
        updated_at_ms: 3,
    };
    store
        .put_approver_group(&g, ev(EventKind::ApproverGroupUpdated, None))
        .await
        .unwrap();
    let g2 = ApproverGroup {
        updated_at_ms: 4,
        ..g
    };
    store
        .put_approver_group(&g2, ev(EventKind::ApproverGroupUpdated, None))
        .await
        .unwrap();
    assert_eq!(store.approver_group("default").await.unwrap(), Some(g2));
    assert!(
        !format!("{:?}", store.approver_group("default").await.unwrap()).contains("s3cret"),
        "Debug never shows the webhook secret"
    );

    // Pending requests are bounded per task and per agent, in the inserting transaction.
    for i in 0..2 {
        store
            .insert_approval(
                &approval(&format!("a{i}"), "ta", 1),
                3,
                2,
                ev(EventKind::ApprovalRequested, Some("ta")),
            )
            .await
            .unwrap();
    }
    assert!(matches!(
        store
            .insert_approval(
                &approval("a2", "ta", 1),
                3,
                2,
                ev(EventKind::ApprovalRequested, Some("ta"))
            )
            .await,
        Err(StoreError::Limit(_))
    ));
    store
        .insert_approval(
            &approval("b0", "tb", 2),
            3,
            2,
            ev(EventKind::ApprovalRequested, Some("tb")),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .insert_approval(
                &approval("b1", "tb", 1),
                3,
                2,
                ev(EventKind::ApprovalRequested, Some("tb"))
            )
            .await,
        Err(StoreError::Limit(_))
    ));
    assert_eq!(
        store.approval("a0").await.unwrap().unwrap(),
        approval("a0", "ta", 1)
    );

    // Concurrent approves of a one-approver request: exactly one moves it to approved.
    let mut handles = Vec::new();
    for i in 0..50 {
        let s = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            s.vote_approval(
                "a0",
                &vote(&format!("h{i}"), 20),
                ev(EventKind::ApprovalVote, Some("ta")),
            )
            .await
            .unwrap()
        }));
    }
    let mut counted = 0;
    for h in handles {
        if let VoteOutcome::Counted(a) = h.await.unwrap() {
            assert_eq!(a.state, ApprovalState::Approved);
            counted += 1;
        }
    }
    assert_eq!(counted, 1, "exactly one approve counts");
    // Two approvers needed: the same one twice counts once; a second one approves.
    let b = |o: VoteOutcome| match o {
        VoteOutcome::Counted(a) => a.state,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        b(store
            .vote_approval(
                "b0",
                &vote("x", 20),
                ev(EventKind::ApprovalVote, Some("tb"))
            )
            .await
            .unwrap()),
        ApprovalState::Pending
    );
    assert_eq!(
        store
            .vote_approval(
                "b0",
                &vote("x", 21),
                ev(EventKind::ApprovalVote, Some("tb"))
            )
            .await
            .unwrap(),
        VoteOutcome::Duplicate
    );
    assert_eq!(
        b(store
            .vote_approval(
                "b0",
                &vote("y", 22),
                ev(EventKind::ApprovalVote, Some("tb"))
            )
            .await
            .unwrap()),
        ApprovalState::Approved
    );
    let kinds: Vec<String> = store
        .task_events("tb")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["approval.vote", "approval.approved"],
        "the store names the vote that completed it"
    );
    // Expired requests take no votes; missing ones say so.
    assert!(matches!(
        store
            .vote_approval(
                "a1",
                &vote("z", 1_000),
                ev(EventKind::ApprovalVote, Some("ta"))
            )
            .await
            .unwrap(),
        VoteOutcome::NotPending(_)
    ));
    assert_eq!(
        store
            .vote_approval("zz", &vote("z", 1), ev(EventKind::ApprovalVote, None))
            .await
            .unwrap(),
        VoteOutcome::Missing
    );

    let due: Vec<String> = store
        .due_approvals(1_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(
        due.len(),
        3,
        "a0, a1, b0 are pending or approved and due: {due:?}"
    );
    assert!(store.due_approvals(999, 10).await.unwrap().is_empty());
    assert_eq!(store.stale_approvals("v").await.unwrap().len(), 0);
    assert_eq!(store.stale_approvals("v2").await.unwrap().len(), 3);
    // Using an approval: of 50 concurrent consumers exactly one wins.
    let mut handles = Vec::new();
    for _ in 0..50 {
        let s = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            s.transition_approval(
                "a0",
                &[ApprovalState::Approved],
                ApprovalState::Consumed,
                "bot",
                30,
                "used",
                ev(EventKind::ApprovalConsumed, Some("ta")),
            )
            .await
            .unwrap()
        }));
    }
    let mut wins = 0;
    for h in handles {
        wins += usize::from(h.await.unwrap());
    }
    assert_eq!(wins, 1, "an approval is used once");
    let a0 = store.approval("a0").await.unwrap().unwrap();
    assert_eq!(
        (a0.state, a0.decided_by.as_deref()),
        (ApprovalState::Consumed, Some("bot"))
    );
    let pending = store
        .approvals(Some(ApprovalState::Pending), None, None, 100)
        .await
        .unwrap();
    assert_eq!(
        pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["a1"]
    );
    let in_default = store
        .approvals(
            None,
            None,
            Some(&["default".to_owned(), "x".to_owned()]),
            100,
        )
        .await
        .unwrap();
    assert_eq!(in_default.len(), 3);
    assert!(
        store
            .approvals(None, None, Some(&["finance".to_owned()]), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .approvals(None, Some(&AgentName::parse("bot").unwrap()), None, 100)
            .await
            .unwrap()
            .len(),
        3
    );

    // Break-glass: recorded with its task; reviewed once, never by its declarer.
    let mut bg_task = task("tbg");
    bg_task.purpose = "BREAK-GLASS".into();
    let bg = BreakGlassRecord {
        id: "bg1".into(),
        declared_by: HumanId::parse("dana").unwrap(),
        agent: AgentName::parse("bot").unwrap(),
        task_id: "tbg".into(),
        justification: "outage".into(),
        created_at_ms: 40,
        expires_at_ms: 100,
        review: None,
    };
    store
        .insert_break_glass(
            &bg,
            &bg_task,
            ev(EventKind::BreakGlassDeclared, Some("tbg")),
        )
        .await
        .unwrap();
    assert_eq!(
        store.task("tbg").await.unwrap().unwrap().purpose,
        "BREAK-GLASS"
    );
    let review = |by: &str| BreakGlassReview {
        by: HumanId::parse(by).unwrap(),
        at_ms: 50,
        notes: "ok".into(),
    };
    assert!(
        !store
            .close_break_glass(
                "bg1",
                &review("dana"),
                ev(EventKind::BreakGlassReviewed, Some("tbg"))
            )
            .await
            .unwrap(),
        "the declarer cannot review their own break-glass"
    );
    assert!(
        store
            .close_break_glass(
                "bg1",
                &review("erin"),
                ev(EventKind::BreakGlassReviewed, Some("tbg"))
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .close_break_glass(
                "bg1",
                &review("fred"),
                ev(EventKind::BreakGlassReviewed, Some("tbg"))
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.break_glass("bg1").await.unwrap().unwrap().review,
        Some(review("erin"))
    );
    assert_eq!(store.break_glass_records().await.unwrap().len(), 1);
    assert_eq!(
        store
            .agent_task_records(&AgentName::parse("bot").unwrap())
            .await
            .unwrap()
            .iter()
            .filter(|t| ["ta", "tb", "tbg"].contains(&t.id.as_str()))
            .count(),
        3
    );
    verify(store.as_ref()).await.unwrap();
}

#[tokio::test]
async fn sealed_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    let rec = SecretRecord {
        name: "tickets".into(),
        key_id: "k1".into(),
        sealed: "c2VhbGVk".into(),
        description: "ticket API".into(),
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    store
        .put_secret(&rec, ev(EventKind::SecretPut, None))
        .await
        .unwrap();
    assert_eq!(store.secret("tickets").await.unwrap(), Some(rec.clone()));
    let replaced = SecretRecord {
        sealed: "bmV3".into(),
        updated_at_ms: 2,
        ..rec.clone()
    };
    store
        .put_secret(&replaced, ev(EventKind::SecretPut, None))
        .await
        .unwrap();
    assert_eq!(store.secrets().await.unwrap(), vec![replaced.clone()]);

    // A re-seal that read a row before it changed fails whole.
    let resealed = SecretRecord {
        key_id: "k2".into(),
        updated_at_ms: 3,
        ..replaced.clone()
    };
    let stale = store
        .reseal_secrets(
            &[(resealed.clone(), 1)],
            ev(EventKind::SecretsResealed, None),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert_eq!(store.secret("tickets").await.unwrap(), Some(replaced));
    store
        .reseal_secrets(
            &[(resealed.clone(), 2)],
            ev(EventKind::SecretsResealed, None),
        )
        .await
        .unwrap();
    assert_eq!(store.secret("tickets").await.unwrap(), Some(resealed));

    assert!(
        store
            .delete_secret("tickets", ev(EventKind::SecretDeleted, None))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_secret("tickets", ev(EventKind::SecretDeleted, None))
            .await
            .unwrap()
    );
    assert!(store.secrets().await.unwrap().is_empty());
    verify(store.as_ref()).await.unwrap();
}

/// Identities written before they were normalised (`Alice@Example.COM`, `Bob`, `Dana`)
/// load in normal form and compare as the people they name: separation of duties, the
/// one-approver-per-person rule and disabling all see through the stored case.
#[tokio::test]
async fn identities_stored_before_normalisation_compare_normalised() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    store
        .insert_agent(
            &agent(),
            Some(&join("h1", 50)),
            ev(EventKind::AgentRegistered, None),
        )
        .await
        .unwrap();
    let approver = |name: &str| ApproverRecord {
        name: HumanId::parse(name).unwrap(),
        roles: vec![ApproverRole::Approver, ApproverRole::Reviewer],
        groups: vec!["default".into()],
        created_at_ms: 1,
        disabled_at_ms: None,
    };
    for (name, hash) in [("bob", "hb"), ("dana", "hd")] {
        store
            .insert_approver(&approver(name), hash, ev(EventKind::ApproverAdded, None))
            .await
            .unwrap();
    }
    let mut bg_task = task("tbg");
    bg_task.purpose = "BREAK-GLASS".into();
    let bg = BreakGlassRecord {
        id: "bg1".into(),
        declared_by: HumanId::parse("dana").unwrap(),
        agent: AgentName::parse("bot").unwrap(),
        task_id: "tbg".into(),
        justification: "outage".into(),
        created_at_ms: 40,
        expires_at_ms: 100,
        review: None,
    };
    store
        .insert_break_glass(
            &bg,
            &bg_task,
            ev(EventKind::BreakGlassDeclared, Some("tbg")),
        )
        .await
        .unwrap();
    drop(store);
    // What an older version stored: the names as typed.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("mandate.db").display()
    ))
    .await
    .unwrap();
    for sql in [
        "UPDATE agents SET owner = 'Alice@Example.COM'",
        "UPDATE approvers SET name = 'Bob' WHERE name = 'bob'",
        "UPDATE approvers SET name = 'Dana' WHERE name = 'dana'",
        "UPDATE break_glass SET declared_by = 'Dana'",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let store = SqliteStore::open(dir.path()).await.unwrap();
    let bot = store
        .agent(&AgentName::parse("bot").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bot.owner.as_str(), "alice@example.com");
    assert_eq!(
        store.approver_by_token("hb").await.unwrap().unwrap().name,
        HumanId::parse("bob").unwrap()
    );
    assert_eq!(
        store.break_glass("bg1").await.unwrap().unwrap().declared_by,
        HumanId::parse("DANA").unwrap()
    );
    // `bob` is the stored `Bob`: not a second approver.
    assert!(matches!(
        store
            .insert_approver(&approver("bob"), "hb2", ev(EventKind::ApproverAdded, None))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // `dana` declared it (stored as `Dana`): she may not review it.
    let review = |by: &str| BreakGlassReview {
        by: HumanId::parse(by).unwrap(),
        at_ms: 50,
        notes: "ok".into(),
    };
    assert!(
        !store
            .close_break_glass(
                "bg1",
                &review("dana"),
                ev(EventKind::BreakGlassReviewed, Some("tbg"))
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .close_break_glass(
                "bg1",
                &review("bob"),
                ev(EventKind::BreakGlassReviewed, Some("tbg"))
            )
            .await
            .unwrap()
    );
    // Disabling `bob` disables the stored `Bob`.
    assert!(
        store
            .disable_approver("bob", 60, ev(EventKind::ApproverRemoved, None))
            .await
            .unwrap()
    );
    assert!(store.approver_by_token("hb").await.unwrap().is_none());
}

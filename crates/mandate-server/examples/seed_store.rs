//! Seeds a data directory for the start-up benchmark (`scripts/bench-startup.sh`): AGENTS
//! agents, TASKS live tasks each with a durable history, and EVENTS audit events in one
//! chain, written through the real store.
//!
//! `cargo run --release -p mandate-server --example seed_store -- DIR AGENTS TASKS EVENTS`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "a benchmark tool"
)]

use mandate_audit::{EventKind, NewEvent};
use mandate_core::{AgentName, AgentStatus, AttestationRule, RiskTier, TaskState};
use mandate_store::{AgentRecord, HistoryRow, JoinTokenRecord, SqliteStore, Store, TaskRecord};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR"));
    let n = |i: usize| -> usize { args.get(i).and_then(|a| a.parse().ok()).expect("a count") };
    let (agents, tasks, events) = (n(2), n(3), n(4));
    let store = SqliteStore::open(&dir).await.unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    // Events of the right kinds with example bodies: the seed is about volume.
    let ev = |kind, agent: Option<String>, task: Option<String>, _: serde_json::Value| NewEvent {
        ts_ms: now,
        agent,
        task_id: task,
        body: mandate_audit::example(kind),
    };
    for a in 0..agents {
        let name = AgentName::parse(&format!("bench-{a}")).unwrap();
        let record = AgentRecord {
            name: name.clone(),
            owner: mandate_core::HumanId::parse("alice@example.com").expect("a valid owner"),
            tier: RiskTier::try_from(1).unwrap(),
            status: AgentStatus::Active,
            attestation: AttestationRule::JoinToken,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let join = JoinTokenRecord {
            token_hash: format!("seed-{a}"),
            agent: name,
            created_at_ms: now,
            expires_at_ms: now,
        };
        store
            .insert_agent(
                &record,
                Some(&join),
                ev(
                    EventKind::AgentRegistered,
                    Some(format!("bench-{a}")),
                    None,
                    serde_json::json!({}),
                ),
            )
            .await
            .unwrap();
    }
    let requested = serde_json::json!({ "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"] });
    let grant = serde_json::json!({ "tools": { "tickets.search": ["read"] }, "data_domains": ["support"], "destinations": [] });
    let mut ids = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let id = format!("tsk_seed{t:08}");
        let agent = format!("bench-{}", t % agents.max(1));
        let record = TaskRecord {
            id: id.clone(),
            agent: AgentName::parse(&agent).unwrap(),
            purpose: "summarise open tickets".into(),
            requested: serde_json::from_value(requested.clone()).unwrap(),
            grant: serde_json::from_value(grant.clone()).unwrap(),
            items: serde_json::json!([]),
            state: TaskState::Active,
            bundle_version: "seed".into(),
            token_jti: format!("jti-{t}"),
            created_at_ms: now,
            expires_at_ms: now + 3_000_000,
            ended_at_ms: None,
            end_reason: None,
            delegation: None,
            step_up: false,
            cnf_jkt: None,
        };
        store
            .insert_task(
                &record,
                ev(
                    EventKind::TaskStarted,
                    Some(agent),
                    Some(id.clone()),
                    serde_json::json!({}),
                ),
            )
            .await
            .unwrap();
        ids.push((id, t % agents.max(1)));
    }
    let mut written = 0;
    while written < events {
        let batch = 5000.min(events - written);
        let mut evs = Vec::with_capacity(batch);
        for i in 0..batch {
            let (task, agent) = &ids[(written + i) % ids.len()];
            evs.push(ev(
                EventKind::Decision,
                Some(format!("bench-{agent}")),
                Some(task.clone()),
                serde_json::json!({ "decision_id": format!("dec_{}", written + i), "tool": "tickets.search", "action": "read", "outcome": "allow", "data_domain": "support", "args_digest": "0".repeat(64) }),
            ));
        }
        let histories = ids
            .iter()
            .take(if written == 0 { ids.len() } else { 0 })
            .map(|(id, _)| HistoryRow {
                task_id: id.clone(),
                rev: 1,
                data: serde_json::json!({ "calls": events / ids.len().max(1), "reads": events / ids.len().max(1), "tool_calls": { "tickets.search": events / ids.len().max(1) }, "data_domains": ["support"] }).to_string(),
            })
            .collect();
        store.append_batch(evs, histories).await.unwrap();
        written += batch;
    }
    store.close().await;
    println!(
        "seeded {agents} agents, {tasks} live tasks, {events} events in {}",
        dir.display()
    );
}

//! `mandate policy replay`: re-run recorded decisions against a candidate bundle and show
//! what would change before anyone enforces it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use mandate_core::{
    ActionClass, AgentName, DataDomain, Destination, Sensitivity, SpiffeId, ToolName, TrustDomain,
};
use mandate_policy::{AgentFacts, Bundle, CallRequest, History, Outcome, TaskEntities, TaskFacts};
use mandate_store::{SqliteStore, Store};
use serde_json::Value;

use crate::style;

/// One decision whose outcome the candidate would change.
struct Change {
    seq: i64,
    task: String,
    call: String,
    from: String,
    to: Outcome,
    policies: Vec<String>,
}

fn field<'a>(d: &'a Value, k: &str) -> Option<&'a str> {
    d.get(k).and_then(Value::as_str)
}

async fn entities(
    store: &SqliteStore,
    bundle: &Bundle,
    trust_domain: &TrustDomain,
    task_id: &str,
    environment: &str,
) -> Result<Option<TaskEntities>> {
    let Some(task) = store.task(task_id).await? else {
        return Ok(None);
    };
    let Some(agent) = store.agent(&task.agent).await? else {
        return Ok(None);
    };
    let td = trust_domain.clone();
    let facts = AgentFacts {
        name: agent.name.to_string(),
        spiffe_id: SpiffeId::for_agent(td.clone(), AgentName::clone(&agent.name)).to_string(),
        owner: agent.owner.to_string(),
        tier: agent.tier.get(),
        status: agent.status.as_str().to_owned(),
        trust_domain: td.to_string(),
    };
    let t = TaskFacts {
        id: task.id.clone(),
        purpose: task.purpose.clone(),
        environment: environment.to_owned(),
        delegation: None,
    };
    Ok(bundle.task_entities(&facts, &t, &task.requested.tools).ok())
}

/// Replays every recorded decision of `data_dir` against the bundle in `candidate`.
pub async fn run(
    data_dir: &Path,
    candidate: &Path,
    environment: &str,
    trust_domain: &TrustDomain,
    limit: usize,
) -> Result<ExitCode> {
    let store = SqliteStore::open_existing(data_dir).await?;
    let Some(bundle) = crate::cmd::load_or_report(candidate) else {
        return Ok(ExitCode::from(2));
    };
    let mut histories: HashMap<String, History> = HashMap::new();
    let mut tasks: HashMap<String, Option<TaskEntities>> = HashMap::new();
    let mut changes: Vec<Change> = Vec::new();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let (mut replayed, mut ceiling, mut skipped) = (0usize, 0usize, 0usize);
    let mut after = 0;
    loop {
        let page = store.events_after(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in page.iter().filter(|e| e.kind == "decision") {
            let d = &e.data;
            let Some(task_id) = e.task_id.clone() else {
                continue;
            };
            if d.get("break_glass").and_then(Value::as_bool) == Some(true) {
                // Break-glass calls were allowed outside policy: nothing to replay.
                skipped += 1;
                continue;
            }
            let mut recorded = field(d, "outcome").unwrap_or("deny").to_owned();
            if d.get("approval_id").is_some_and(|a| !a.is_null()) {
                // Policy asked for a human; the approval, not policy, turned it into an
                // allow or a deny. Replay compares what policy said.
                recorded = "approval_required".to_owned();
            }
            let parsed = (
                field(d, "tool").and_then(|t| ToolName::parse(t).ok()),
                field(d, "action").and_then(|a| a.parse::<ActionClass>().ok()),
            );
            let (Some(tool), Some(action)) = parsed else {
                skipped += 1;
                continue;
            };
            // Replay what the caller declared: the candidate's catalog decides the domain.
            let data_domain = field(d, "declared_data_domain")
                .or_else(|| {
                    if d.get("declared_data_domain").is_some() {
                        None
                    } else {
                        field(d, "data_domain")
                    }
                })
                .and_then(|x| DataDomain::parse(x).ok());
            let sensitivity = d
                .get("sensitivity")
                .and_then(|v| serde_json::from_value::<Sensitivity>(v.clone()).ok())
                .unwrap_or_default();
            let policies: Vec<&str> = d
                .get("policies")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if policies.first() == Some(&mandate_policy::GRANT_CEILING_POLICY) {
                // Denied by the task's grant, which the candidate cannot widen.
                ceiling += 1;
                continue;
            }
            if !tasks.contains_key(&task_id) {
                let built = entities(&store, &bundle, trust_domain, &task_id, environment).await?;
                tasks.insert(task_id.clone(), built);
            }
            let Some(Some(ents)) = tasks.get(&task_id) else {
                skipped += 1;
                continue;
            };
            let history = histories.entry(task_id.clone()).or_default();
            let destination = field(d, "destination").and_then(|x| Destination::parse(x).ok());
            // Arguments are recorded as a digest only: a tool whose arguments the bundle
            // types cannot be replayed faithfully.
            if bundle.catalog().arguments(&tool).is_some() {
                skipped += 1;
                continue;
            }
            let decision = bundle.decide_call(
                ents,
                &CallRequest {
                    action,
                    tool: &tool,
                    resource: field(d, "resource").unwrap_or(""),
                    destination: destination.as_ref(),
                    data_domain: data_domain.as_ref(),
                    sensitivity,
                    args_digest: field(d, "args_digest").unwrap_or(""),
                    args: None,
                    now_secs: e.ts_ms.div_euclid(1000),
                    history,
                },
            );
            replayed += 1;
            if decision.outcome.as_str() != recorded {
                *tally
                    .entry(format!("{recorded} → {}", decision.outcome.as_str()))
                    .or_default() += 1;
                changes.push(Change {
                    seq: e.seq,
                    task: task_id.clone(),
                    call: format!("{action} {tool}"),
                    from: recorded.clone(),
                    to: decision.outcome,
                    policies: decision.policies,
                });
            }
            // History follows what actually ran, not what the candidate would have done.
            if recorded == "allow" {
                history.record(
                    tool.as_str(),
                    action,
                    data_domain.as_ref().map(DataDomain::as_str),
                    sensitivity,
                );
            }
        }
    }
    println!(
        "replayed {replayed} recorded decisions against {} ({} policies)",
        bundle.version(),
        bundle.len()
    );
    println!(
        "  {ceiling} denied by their task's grant (unchanged by any bundle), {skipped} not replayable"
    );
    if changes.is_empty() {
        println!(
            "{} the candidate decides every replayed call as recorded",
            style::green("no change:")
        );
    } else {
        println!(
            "{} {} decision(s) would change:",
            style::yellow("changes:"),
            changes.len()
        );
        for (k, n) in &tally {
            println!("  {n:>6}  {k}");
        }
        for c in changes.iter().take(limit) {
            println!(
                "  #{:<6} {}  {:<28} {} → {}  by {}",
                c.seq,
                c.task,
                c.call,
                c.from,
                style::outcome(c.to.as_str()),
                c.policies.join(", ")
            );
        }
        if changes.len() > limit {
            println!("  … and {} more (--limit)", changes.len() - limit);
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! Containment, measured through the real server on loopback:
//! 1. reaction time over N trials for two rules: a honeytoken call that quarantines its
//!    agent, and a burst of 3 denials that revokes the task. Each firing records
//!    `reaction_us`, the time from the commit of its last piece of evidence being known to
//!    the response's acknowledgement (the quarantine or revocation committed, in-flight
//!    decisions drained); the bench also times, from the client, the answer to the
//!    triggering call until the task's token is refused (`exposure`).
//! 2. the decide path's cost of containment: `Engine::decide` (in-process, audit commit
//!    included) with the containment tap on (every rule kind configured) against off, in
//!    the same run, alternating A/B/A/B, from C concurrent callers.
//!
//! Run: `cargo bench -p mandate-server --bench containment`
//!
//! Knobs (environment): `CONTAIN_BENCH_TRIALS` (default 100), `CONTAIN_BENCH_CALLS`
//! decisions per series (default 20000), `CONTAIN_BENCH_CLIENTS` (default 16);
//! `CONTAIN_BENCH_ONLY=on|default|off` runs one decide series only (for callgrind:
//! `scripts/callgrind-containment.sh` counts instructions per decision with the tap on and
//! off).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "benchmark code"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mandate_core::{ActionClass, CanonicalArgs, Sensitivity, ToolName};
use mandate_server::containment::ContainmentConfig;
use mandate_server::{Call, DecideOptions, Server, ServerConfig};
use serde_json::{Value, json};

const ADMIN: &str = "bench-admin-token-0123456789abcdef";

const RULES: &str = r#"
[[rule]]
name = "decoy"
signal = "honeytoken"
response = "quarantine_agent"

[[rule]]
name = "burst"
signal = "denial_burst"
count = 3
window_secs = 60
response = "revoke_task"

[[rule]]
name = "probe"
signal = "outside_grant"
count = 5
response = "step_up"

[[rule]]
name = "human-said-no"
signal = "approval_denials"
count = 2
response = "alert"

[[rule]]
name = "runaway"
signal = "rate_above_baseline"
response = "alert"

[[rule]]
name = "exfil"
signal = "bytes_above_baseline"
response = "alert"
"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    async fn send(&self, path: &str, bearer: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut req = match body {
            Some(b) => self.http.post(format!("{}{path}", self.url)).json(&b),
            None => self.http.get(format!("{}{path}", self.url)),
        };
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn agent(&self, name: &str) -> String {
        let (s, r) = self
            .send(
                "/v1/agents",
                Some(ADMIN),
                Some(json!({ "name": name, "owner": "alice@example.com", "tier": 1 })),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        let (s, r) = self
            .send(
                "/v1/attest",
                None,
                Some(json!({ "agent": name, "join_token": r["join_token"] })),
            )
            .await;
        assert_eq!(s, 200, "{r}");
        r["identity_token"].as_str().unwrap().to_owned()
    }

    async fn start(&self, identity: &str) -> (String, String) {
        let (s, r) = self
            .send(
                "/v1/tasks",
                Some(identity),
                Some(json!({
                    "purpose": "triage the open queue",
                    "scope": { "tools": ["tickets.search", "tickets.delete", "tickets.export_all"], "actions": ["read", "delete"], "data_domains": ["support"] },
                    "ttl_secs": 1800,
                })),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        (
            r["task_id"].as_str().unwrap().to_owned(),
            r["task_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn decide(&self, token: &str, tool: &str, action: &str) -> (u16, Value) {
        self.send(
            "/v1/decide",
            Some(token),
            Some(json!({ "tool": tool, "action": action, "resource": "queue/open", "arguments": {} })),
        )
        .await
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Containment rules: none, the default (a honeytoken call quarantines), or every kind.
#[derive(Clone, Copy, PartialEq)]
enum Rules {
    Off,
    Default,
    All,
}

fn config(dir: &std::path::Path, rules: Rules) -> ServerConfig {
    let policies =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies/demo");
    let mut config = ServerConfig::new(dir.join("data"), policies);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.admin_token = Some(ADMIN.into());
    config.watch_policies = false;
    config.limits.agent_decisions_per_sec = u32::MAX / 2;
    config.limits.task_decisions_per_sec = u32::MAX / 2;
    config.containment = match rules {
        Rules::Off => None,
        Rules::Default => Some(Arc::new(ContainmentConfig::defaults())),
        Rules::All => Some(Arc::new(ContainmentConfig::from_toml(RULES).unwrap())),
    };
    config
}

/// One trial: triggers the rule, then times from the triggering call's answer until the
/// task's token is refused; returns (reaction_us recorded by the firing, exposure ms).
async fn trial(api: &Api, name: &str, honeytoken: bool) -> (f64, f64) {
    let identity = api.agent(name).await;
    let (task, token) = api.start(&identity).await;
    let answered = if honeytoken {
        let (s, r) = api.decide(&token, "tickets.export_all", "read").await;
        assert_eq!((s, r["outcome"].as_str()), (200, Some("deny")), "{r}");
        Instant::now()
    } else {
        for _ in 0..3 {
            let (s, r) = api.decide(&token, "tickets.delete", "delete").await;
            assert_eq!((s, r["outcome"].as_str()), (200, Some("deny")), "{r}");
        }
        Instant::now()
    };
    loop {
        let (s, _) = api.decide(&token, "tickets.search", "read").await;
        if s == 403 {
            break;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(10),
            "containment never reacted"
        );
    }
    let exposure = answered.elapsed().as_secs_f64() * 1e3;
    let reaction = loop {
        let (_, events) = api
            .send(&format!("/v1/tasks/{task}/events"), Some(ADMIN), None)
            .await;
        if let Some(e) = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "containment.fired")
        {
            break e["data"]["reaction_us"].as_f64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    (reaction, exposure)
}

async fn reaction_times(trials: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path(), Rules::All)).await.unwrap();
    let api = Api {
        url: server.url(),
        http: reqwest::Client::new(),
    };
    println!("## containment reaction time ({trials} trials per rule)");
    for (label, honeytoken) in [
        ("honeytoken → quarantine_agent", true),
        ("3 denials → revoke_task", false),
    ] {
        let mut reaction = Vec::new();
        let mut exposure = Vec::new();
        for i in 0..trials {
            let (r, e) = trial(&api, &format!("a{}-{i}", u8::from(honeytoken)), honeytoken).await;
            reaction.push(r / 1e3);
            exposure.push(e);
        }
        reaction.sort_by(f64::total_cmp);
        exposure.sort_by(f64::total_cmp);
        println!(
            "{label:<32} reaction (commit → response acknowledged) p50 {:.2} ms p99 {:.2} ms max {:.2} ms | client: triggering answer → token refused p50 {:.2} ms p99 {:.2} ms",
            pct(&reaction, 0.5),
            pct(&reaction, 0.99),
            reaction.last().unwrap(),
            pct(&exposure, 0.5),
            pct(&exposure, 0.99),
        );
    }
    server.shutdown().await.unwrap();
}

/// `calls` in-process decisions from `clients` callers, each on its own task; returns
/// (decisions/s, p50 µs, p99 µs).
async fn decide_series(
    server: &mandate_server::RunningServer,
    tokens: &[String],
    calls: usize,
) -> (f64, f64, f64) {
    let started = Instant::now();
    let per = calls / tokens.len();
    let mut handles = Vec::new();
    for token in tokens {
        let engine = Arc::clone(&server.engine);
        let token = token.clone();
        handles.push(tokio::spawn(async move {
            let call = Call {
                tool: ToolName::parse("tickets.search").unwrap(),
                action: ActionClass::Read,
                resource: "queue/open".into(),
                args: CanonicalArgs::parse(r#"{"status":"open"}"#).unwrap(),
                destination: None,
                data_domain: None,
                sensitivity: Sensitivity::Internal,
            };
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let d = engine
                    .decide(&token, call.clone(), DecideOptions::default())
                    .await
                    .unwrap();
                assert_eq!(d.outcome, mandate_policy::Outcome::Allow);
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / secs, pct(&all, 0.5), pct(&all, 0.99))
}

/// A server with `rules`, and one task per caller: (server, task tokens, its directory).
async fn server_with_tasks(
    rules: Rules,
    clients: usize,
) -> (
    mandate_server::RunningServer,
    Vec<String>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path(), rules)).await.unwrap();
    let api = Api {
        url: server.url(),
        http: reqwest::Client::new(),
    };
    let mut tokens = Vec::new();
    for i in 0..clients {
        let identity = api.agent(&format!("bench-{i}")).await;
        tokens.push(api.start(&identity).await.1);
    }
    (server, tokens, dir)
}

async fn decide_cost(calls: usize, clients: usize) {
    println!(
        "\n## Engine::decide with the containment tap on vs off ({clients} callers, {calls} decisions per series, A/B/A/B)"
    );
    let mut servers = Vec::new();
    for rules in [Rules::Off, Rules::All] {
        let (server, tokens, dir) = server_with_tasks(rules, clients).await;
        servers.push((rules == Rules::All, server, tokens, dir));
    }
    let mut ratios = Vec::new();
    for round in 0..2 {
        let mut got = Vec::new();
        for (rules, server, tokens, _) in &servers {
            let r = decide_series(server, tokens, calls).await;
            println!(
                "round {round}: containment {:<3} {:>8.0} decisions/s p50 {:>7.1} µs p99 {:>7.1} µs",
                if *rules { "on" } else { "off" },
                r.0,
                r.1,
                r.2
            );
            got.push(r.0);
        }
        ratios.push(got[1] / got[0]);
    }
    println!(
        "throughput on/off: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (_, server, _, _) in servers {
        server.shutdown().await.unwrap();
    }
}

/// One series on one configuration only (`CONTAIN_BENCH_ONLY=on|off`), for counting
/// instructions under callgrind: the difference between two call counts is the cost of
/// those calls, whatever the set-up cost.
async fn only(rules: Rules, calls: usize, clients: usize) {
    let (server, tokens, _dir) = server_with_tasks(rules, clients).await;
    let r = decide_series(&server, &tokens, calls).await;
    let label = match rules {
        Rules::Off => "off",
        Rules::Default => "default",
        Rules::All => "on",
    };
    println!("containment {label}: {calls} decisions, {:.0}/s", r.0);
    server.shutdown().await.unwrap();
}

fn main() {
    let trials: usize = env_or("CONTAIN_BENCH_TRIALS", 100);
    let calls: usize = env_or("CONTAIN_BENCH_CALLS", 20_000);
    let clients: usize = env_or("CONTAIN_BENCH_CLIENTS", 16);
    let only_one: String = env_or("CONTAIN_BENCH_ONLY", String::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match only_one.as_str() {
            "on" => only(Rules::All, calls, clients).await,
            "default" => only(Rules::Default, calls, clients).await,
            "off" => only(Rules::Off, calls, clients).await,
            _ => {
                reaction_times(trials).await;
                decide_cost(calls, clients).await;
            }
        }
    });
}

//! Delegation, measured through the real server on loopback:
//! 1. token exchange (`POST /oauth2/token`) beside plain task start (`POST /v1/tasks`) in
//!    the same run, alternating A/B/A/B: throughput and p50/p99 from N concurrent clients;
//! 2. cascade revocation of a delegation tree (1 + 10 + 100 + 1,000 tasks by default):
//!    time from the revoke request to its acknowledgement, while 20 clients call
//!    descendants in a loop, and the number of calls allowed after the acknowledgement
//!    (must be 0).
//!
//! Run: `cargo bench -p mandate-server --bench delegation`
//!
//! Knobs (environment): `DELEG_BENCH_OPS` operations per series (default 800),
//! `DELEG_BENCH_CLIENTS` concurrent clients (default 8), `DELEG_BENCH_FANOUT` children per
//! task in the tree (default 10; depth is 3), `DELEG_BENCH_CALLERS` callers during the
//! cascade (default 20).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "benchmark code"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN: &str = "bench-admin-token-0123456789abcdef";

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
    async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn agent(&self, name: &str) -> String {
        let (s, r) = self
            .post(
                "/v1/agents",
                Some(ADMIN),
                json!({ "name": name, "owner": "alice@example.com", "tier": 2 }),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        let (s, r) = self
            .post(
                "/v1/attest",
                None,
                json!({ "agent": name, "join_token": r["join_token"] }),
            )
            .await;
        assert_eq!(s, 200, "{r}");
        r["identity_token"].as_str().unwrap().to_owned()
    }

    async fn start(&self, identity: &str) -> String {
        let (s, r) = self
            .post(
                "/v1/tasks",
                Some(identity),
                json!({
                    "purpose": "triage the open queue",
                    "scope": { "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"] },
                    "ttl_secs": 1800,
                }),
            )
            .await;
        assert_eq!(s, 201, "{r}");
        r["task_token"].as_str().unwrap().to_owned()
    }

    async fn exchange(&self, parent: &str, actor: &str) -> String {
        let details = json!([{
            "type": "mandate_task", "purpose": "read one ticket",
            "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"],
        }])
        .to_string();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", parent),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:access_token",
                ),
                ("actor_token", actor),
                ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ("authorization_details", &details),
            ])
            .finish();
        let r = self
            .http
            .post(format!("{}/oauth2/token", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(s, 200, "{v}");
        v["access_token"].as_str().unwrap().to_owned()
    }

    async fn decide(&self, token: &str) -> Value {
        self.post(
            "/v1/decide",
            Some(token),
            json!({ "tool": "tickets.search", "action": "read", "resource": "queue/open", "arguments": {} }),
        )
        .await
        .1
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// Runs `ops` operations from `clients` concurrent clients; returns (ops/s, p50 ms, p99 ms).
async fn series<F, Fut>(clients: usize, ops: usize, op: F) -> (f64, f64, f64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let per = ops / clients;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                op().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / secs, pct(&all, 0.5), pct(&all, 0.99))
}

async fn run() {
    let ops: usize = env_or("DELEG_BENCH_OPS", 800);
    let clients: usize = env_or("DELEG_BENCH_CLIENTS", 8);
    let fanout: usize = env_or("DELEG_BENCH_FANOUT", 10);
    let callers: usize = env_or("DELEG_BENCH_CALLERS", 20);

    let dir = tempfile::tempdir().unwrap();
    let policies =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies/demo");
    let mut config = mandate_server::ServerConfig::new(dir.path().join("data"), policies);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.admin_token = Some(ADMIN.into());
    config.watch_policies = false;
    config.limits.agent_decisions_per_sec = u32::MAX / 2;
    config.limits.task_decisions_per_sec = u32::MAX / 2;
    let server = mandate_server::Server::start(config).await.unwrap();
    let api = Arc::new(Api {
        url: server.url(),
        http: reqwest::Client::new(),
    });
    let triage = Arc::new(api.agent("triage").await);
    let reader = Arc::new(api.agent("reader").await);
    let parent = Arc::new(api.start(&triage).await);

    println!("## token exchange vs task start ({clients} clients, {ops} ops per series, A/B/A/B)");
    let mut rows = Vec::new();
    for round in 0..2 {
        let (a, i) = (api.clone(), triage.clone());
        let start = series(clients, ops, move || {
            let (a, i) = (a.clone(), i.clone());
            async move {
                a.start(&i).await;
            }
        })
        .await;
        let (a, p, r) = (api.clone(), parent.clone(), reader.clone());
        let exch = series(clients, ops, move || {
            let (a, p, r) = (a.clone(), p.clone(), r.clone());
            async move {
                a.exchange(&p, &r).await;
            }
        })
        .await;
        println!(
            "round {round}: task start {:.0}/s p50 {:.2} ms p99 {:.2} ms | token exchange {:.0}/s p50 {:.2} ms p99 {:.2} ms | exchange/start throughput {:.2}",
            start.0,
            start.1,
            start.2,
            exch.0,
            exch.1,
            exch.2,
            exch.0 / start.0
        );
        rows.push(exch.0 / start.0);
    }

    println!("\n## cascade revocation (fan-out {fanout}, depth 3, {callers} callers)");
    let root = api.start(&triage).await;
    let mut level = vec![root.clone()];
    let mut tree = 1usize;
    let mut leaves = Vec::new();
    for _ in 0..3 {
        let mut next = Vec::new();
        for p in &level {
            for _ in 0..fanout {
                next.push(api.exchange(p, &reader).await);
            }
        }
        tree += next.len();
        leaves.extend(next.iter().cloned());
        level = next;
    }
    let root_id = {
        let payload = root.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["task_id"].as_str().unwrap().to_owned()
    };
    let leaves = Arc::new(leaves);
    let acked = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicU64::new(0));
    let before = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for c in 0..callers {
        let (a, l, acked, stop, after, before) = (
            api.clone(),
            leaves.clone(),
            acked.clone(),
            stop.clone(),
            after.clone(),
            before.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::SeqCst) {
                let was = acked.load(Ordering::SeqCst);
                let r = a.decide(&l[i % l.len()]).await;
                if r["outcome"] == "allow" {
                    if was { &after } else { &before }.fetch_add(1, Ordering::SeqCst);
                }
                i += callers;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let (s, r) = api
        .post(
            &format!("/v1/tasks/{root_id}/revoke"),
            Some(ADMIN),
            json!({ "reason": "bench" }),
        )
        .await;
    let ack = t.elapsed();
    acked.store(true, Ordering::SeqCst);
    assert_eq!(s, 200, "{r}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.await.unwrap();
    }
    println!(
        "tree of {tree} tasks: revoke acknowledged in {:.1} ms; {} calls allowed before, {} after the acknowledgement",
        ack.as_secs_f64() * 1e3,
        before.load(Ordering::SeqCst),
        after.load(Ordering::SeqCst)
    );
    server.shutdown().await.unwrap();
}

fn main() {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

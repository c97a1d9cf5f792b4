//! MCP `tools/call` through Mandate's MCP gateway beside the same call made directly to the
//! same MCP server (an rmcp streamable-HTTP server on loopback), in one run: sequential
//! latency from one client, then throughput from N concurrent clients.
//!
//! Run: `cargo bench -p mandate-server --bench mcp`
//!
//! Knobs (environment):
//! - `MCP_BENCH_CALLS`: sequential calls timed per path (default 2000; a tenth more warm up)
//! - `MCP_BENCH_SECS`: seconds each throughput run lasts, per path and client count (default 5)
//! - `MCP_BENCH_CLIENTS`: comma-separated client counts for throughput (default `8,32`)

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used,
    reason = "benchmark code"
)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mandate_gateway::GatewayConfig;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, Tool,
};
use rmcp::service::{RequestContext, RoleClient, RoleServer, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, ServiceExt as _};
use serde_json::{Value, json};

const ADMIN: &str = "bench-admin-token-0123456789abcdef";
const DOCS_SECRET: &str = "docs-upstream-secret-8c7d";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the MCP server received.
#[derive(Default)]
struct Seen {
    calls: AtomicU64,
    lists: AtomicU64,
}

#[derive(Clone)]
struct Docs(Arc<Seen>);

fn schema(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("schema must be an object"),
    }
}

impl ServerHandler for Docs {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.0.lists.fetch_add(1, Ordering::Relaxed);
        let q = schema(json!({ "type": "object", "properties": { "q": { "type": "string" } } }));
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("search", "Search documents", q.clone()),
            Tool::new("update", "Update a document", q.clone()),
            Tool::new("delete_all", "Delete every document", q),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.0.calls.fetch_add(1, Ordering::Relaxed);
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "{} ran with {args}",
            request.name
        ))])
        .into())
    }
}

/// A real streamable-HTTP MCP server on loopback.
async fn docs_server() -> (std::net::SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    let service: StreamableHttpService<Docs, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(Docs(Arc::clone(&s))),
        Default::default(),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

type Client = RunningService<RoleClient, ()>;

async fn client(url: &str, bearer: &str) -> Client {
    let cfg = StreamableHttpClientTransportConfig::with_uri(url).auth_header(bearer.to_owned());
    ().serve(StreamableHttpClientTransport::from_config(cfg))
        .await
        .unwrap()
}

fn search(i: u64) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new("search");
    p.arguments = Some(schema(json!({ "q": format!("budget {i}") })));
    p
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.clone())
        .collect::<Vec<_>>()
        .join("")
}

/// One `tools/call`; true when it succeeded (answered, not a tool error).
async fn call(c: &Client, i: u64) -> bool {
    matches!(c.call_tool(search(i)).await, Ok(r) if r.is_error != Some(true))
}

#[derive(Clone, Copy)]
struct Pcts {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

/// Nearest-rank percentiles, in µs.
fn percentiles(mut ns: Vec<u64>) -> Pcts {
    ns.sort_unstable();
    let p = |q: f64| ns[((ns.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    Pcts {
        p50: p(0.5),
        p90: p(0.9),
        p99: p(0.99),
        mean: ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0,
    }
}

struct Load {
    ok: u64,
    errors: u64,
    secs: f64,
    lat: Pcts,
}

/// `n` clients (connected before the clock starts) each calling in a loop for `secs`.
async fn load(url: &str, bearer: &str, n: usize, secs: f64) -> Load {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(client(url, bearer).await);
    }
    // A short warm-up on every session.
    for c in &clients {
        assert!(call(c, 0).await, "warm-up call failed");
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            tokio::spawn(async move {
                let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
                let mut i = (k as u64) << 32;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if call(&c, i).await {
                        ok += 1;
                        lat.push(t.elapsed().as_nanos() as u64);
                    } else {
                        errors += 1;
                    }
                    i += 1;
                }
                let _ = c.cancel().await;
                (ok, errors, lat)
            })
        })
        .collect();
    let (mut ok, mut errors, mut lat) = (0, 0, Vec::new());
    for h in handles {
        let (o, e, l) = h.await.unwrap();
        ok += o;
        errors += e;
        lat.extend(l);
    }
    Load {
        ok,
        errors,
        secs: start.elapsed().as_secs_f64(),
        lat: percentiles(lat),
    }
}

fn main() {
    let calls: u64 = env_or("MCP_BENCH_CALLS", 2000);
    let secs: f64 = env_or("MCP_BENCH_SECS", 5.0);
    let clients: Vec<usize> = std::env::var("MCP_BENCH_CLIENTS")
        .unwrap_or_else(|_| "8,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(calls, secs, &clients, workers));
}

async fn run(calls: u64, secs: f64, counts: &[usize], workers: usize) {
    // --- Setup: the MCP server, then Mandate (real SystemClock) with a gateway in front of it.
    let (addr, seen) = docs_server().await;
    let direct_url = format!("http://{addr}/mcp");
    let toml = format!(
        r#"
[[mcp_server]]
name = "docs"
url = "http://{addr}/mcp"
allow_private = true
credential = {{ secret = "docs-token", kind = "bearer" }}
"#
    );
    let gateway = GatewayConfig::from_toml(&toml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp-policies");
    let mut config = mandate_server::ServerConfig::new(dir.path().join("data"), policies);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.admin_token = Some(ADMIN.into());
    config.watch_policies = false;
    config.gateway = Some(Arc::new(gateway));
    let server = mandate_server::Server::start(config).await.unwrap();
    let url = server.url();
    let http = reqwest::Client::new();

    let r = http
        .put(format!("{url}/v1/secrets/docs-token"))
        .bearer_auth(ADMIN)
        .json(&json!({ "value": DOCS_SECRET }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r: Value = http
        .post(format!("{url}/v1/agents"))
        .bearer_auth(ADMIN)
        .json(&json!({ "name": "bench", "owner": "alice@example.com", "tier": 1 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r: Value = http
        .post(format!("{url}/v1/attest"))
        .json(&json!({ "agent": "bench", "join_token": r["join_token"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let identity = r["identity_token"].as_str().expect("identity token");
    let r: Value = http
        .post(format!("{url}/v1/tasks"))
        .bearer_auth(identity)
        .json(&json!({
            "purpose": "benchmark document search",
            "scope": { "tools": ["docs.search"], "actions": ["read"], "destinations": [addr.to_string()] },
            "ttl_secs": 3600,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["task_token"].as_str().expect("task token").to_owned();
    let task_id = r["task_id"].as_str().expect("task id").to_owned();
    let mandate_url = format!("{url}/mcp/docs");

    // --- Verify both paths before timing: the call through Mandate is allowed, forwarded
    // and answered by the server; the direct call reaches the same server.
    let direct = client(&direct_url, DOCS_SECRET).await;
    let via = client(&mandate_url, &token).await;
    let before = seen.calls.load(Ordering::Relaxed);
    let r = via.call_tool(search(1)).await.unwrap();
    assert_ne!(r.is_error, Some(true), "through Mandate: {r:?}");
    assert!(text(&r).contains("search ran with"), "{r:?}");
    assert_eq!(
        seen.calls.load(Ordering::Relaxed),
        before + 1,
        "the server saw the call"
    );
    let r = direct.call_tool(search(2)).await.unwrap();
    assert_ne!(r.is_error, Some(true), "direct: {r:?}");
    assert_eq!(seen.calls.load(Ordering::Relaxed), before + 2);
    // And a call outside the grant is refused without reaching the server.
    let mut denied = CallToolRequestParams::new("delete_all");
    denied.arguments = Some(schema(json!({})));
    let r = via.call_tool(denied).await.unwrap();
    assert_eq!(r.is_error, Some(true), "delete_all must be denied");
    assert_eq!(seen.calls.load(Ordering::Relaxed), before + 2);

    // --- Sequential latency, one client per path; the two paths alternate call by call so
    // drift (page cache, CPU frequency, neighbours) hits both alike.
    let warm = calls / 10;
    for i in 0..warm {
        assert!(
            call(&direct, i).await && call(&via, i).await,
            "warm-up failed"
        );
    }
    let (calls0, lists0) = (
        seen.calls.load(Ordering::Relaxed),
        seen.lists.load(Ordering::Relaxed),
    );
    let (mut d_ns, mut m_ns) = (
        Vec::with_capacity(calls as usize),
        Vec::with_capacity(calls as usize),
    );
    for i in 0..calls {
        let t = Instant::now();
        assert!(call(&direct, i).await, "direct call failed");
        d_ns.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        assert!(call(&via, i).await, "call through Mandate failed");
        m_ns.push(t.elapsed().as_nanos() as u64);
    }
    let seq_calls = seen.calls.load(Ordering::Relaxed) - calls0;
    let seq_lists = seen.lists.load(Ordering::Relaxed) - lists0;
    assert_eq!(seq_calls, 2 * calls, "the server saw every timed call");

    // Components of the Mandate path, measured alone: the upstream tools/list Mandate makes
    // on every tools/call (pin check), and an audited decision over plain HTTP.
    let mut list_ns = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let t = Instant::now();
        direct.list_all_tools().await.unwrap();
        list_ns.push(t.elapsed().as_nanos() as u64);
    }
    let mut decide_ns = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        let t = Instant::now();
        let r: Value = http
            .post(format!("{url}/v1/decide"))
            .bearer_auth(&token)
            .json(
                &json!({ "tool": "docs.search", "action": "read", "resource": "search",
                           "arguments": { "q": format!("budget {i}") } }),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        decide_ns.push(t.elapsed().as_nanos() as u64);
        assert_eq!(r["outcome"], "allow", "{r}");
    }
    let _ = direct.cancel().await;
    let _ = via.cancel().await;

    // --- Throughput: N clients per path, each calling in a loop for `secs`.
    let mut loads = Vec::new();
    for &n in counts {
        let before = seen.calls.load(Ordering::Relaxed);
        let d = load(&direct_url, DOCS_SECRET, n, secs).await;
        let m = load(&mandate_url, &token, n, secs).await;
        let received = seen.calls.load(Ordering::Relaxed) - before;
        // Warm-ups (one per session) plus every successful timed call (each loop finishes
        // its call in flight at the deadline). A failed call may or may not have arrived.
        let expected = d.ok + m.ok + 2 * n as u64;
        assert!(
            received >= expected && received <= expected + d.errors + m.errors,
            "server saw {received} calls, clients counted {expected} successes"
        );
        loads.push((n, d, m));
    }

    // Audit trail sanity: the decisions were recorded.
    let events: Value = http
        .get(format!("{url}/v1/tasks/{task_id}/events"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let decisions = events.as_array().map_or(0, |e| {
        e.iter()
            .filter(|e| e["kind"] == "decision" && e["data"]["tool"] == "docs.search")
            .count()
    });
    assert!(decisions > 0, "no decision events recorded");

    // --- Report.
    let d = percentiles(d_ns);
    let m = percentiles(m_ns);
    let l = percentiles(list_ns);
    let dec = percentiles(decide_ns);
    println!("## MCP `tools/call`: through Mandate's MCP gateway vs direct\n");
    println!(
        "Command: `cargo bench -p mandate-server --bench mcp` (MCP_BENCH_CALLS={calls}, MCP_BENCH_SECS={secs}, MCP_BENCH_CLIENTS={}); \
         rmcp streamable-HTTP server and clients, and Mandate, in one process on loopback; tokio multi-thread runtime, {workers} workers; \
         audit in SQLite on a temp dir (synchronous=FULL, group commit).\n",
        counts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("### Sequential latency (one client, {calls} calls per path, alternating)\n");
    println!("| path | p50 µs | p90 µs | p99 µs | mean µs |");
    println!("|---|---:|---:|---:|---:|");
    let row = |label: &str, p: Pcts| {
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} |",
            p.p50, p.p90, p.p99, p.mean
        );
    };
    row("direct `tools/call`", d);
    row("through Mandate `tools/call`", m);
    println!(
        "| added by Mandate | {:+.0} | {:+.0} | {:+.0} | {:+.0} |",
        m.p50 - d.p50,
        m.p90 - d.p90,
        m.p99 - d.p99,
        m.mean - d.mean
    );
    row(
        "component: direct `tools/list` (Mandate re-lists per call)",
        l,
    );
    row(
        "component: `POST /v1/decide` over HTTP (audited allow)",
        dec,
    );
    println!(
        "\nUpstream requests per Mandate `tools/call`: {:.2} `tools/list` + 1 `tools/call` ({seq_lists} lists for {calls} calls).\n",
        seq_lists as f64 / calls as f64
    );
    println!("### Throughput ({secs} s per run, each client calling in a loop)\n");
    println!("| path | clients | calls/s | p50 µs | p90 µs | p99 µs | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (n, d, m) in &loads {
        for (label, x) in [("direct", d), ("through Mandate", m)] {
            println!(
                "| {label} | {n} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                x.ok as f64 / x.secs,
                x.lat.p50,
                x.lat.p90,
                x.lat.p99,
                x.errors
            );
        }
    }
    println!(
        "\nVerified before timing: calls through Mandate allowed and answered (not is_error), the server saw each one, and `delete_all` was denied without reaching it; \
         the server's call count matched every successful call; {decisions} `docs.search` decision events in the task's audit trail."
    );
    server.shutdown().await.unwrap();
}

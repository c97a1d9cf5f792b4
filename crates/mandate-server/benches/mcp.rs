//! MCP `tools/call` through Mandate's MCP gateway beside the same call made directly to the
//! same MCP server (an rmcp streamable-HTTP server on loopback), in one run: sequential
//! latency from one client, then throughput from N concurrent clients.
//!
//! Run: `cargo bench -p mandate-server --bench mcp`
//!
//! The same MCP server runs twice: served with `axum::serve` defaults (Nagle's algorithm
//! on, as most servers built that way are) and with `TCP_NODELAY` set. Mandate keeps its
//! connection to the server alive, so the former shows what delayed ACKs cost a gateway
//! hop; the latter shows Mandate's own cost.
//!
//! Knobs (environment):
//! - `MCP_BENCH_CALLS`: sequential calls timed per path (default 2000; a tenth more warm up)
//! - `MCP_BENCH_LAT_SECS`: cap on each sequential series, seconds (default 15)
//! - `MCP_BENCH_SECS`: seconds each throughput run lasts, per path and client count (default 5)
//! - `MCP_BENCH_CLIENTS`: comma-separated client counts for throughput (default `8,32`)

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used,
    clippy::disallowed_methods,
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

/// A real streamable-HTTP MCP server on loopback; `nodelay` sets `TCP_NODELAY` on the
/// connections it accepts.
async fn docs_server(nodelay: bool) -> (std::net::SocketAddr, Arc<Seen>) {
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
        use axum::serve::ListenerExt as _;
        let _ = if nodelay {
            axum::serve(
                listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            )
            .await
        } else {
            axum::serve(listener, app).await
        };
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

/// One MCP server as both paths reach it.
struct Upstream {
    /// Its name in the gateway configuration (and its tools' prefix).
    name: &'static str,
    /// How it is served.
    label: &'static str,
    addr: std::net::SocketAddr,
    seen: Arc<Seen>,
    direct_url: String,
    mandate_url: String,
}

impl Upstream {
    fn calls(&self) -> u64 {
        self.seen.calls.load(Ordering::Relaxed)
    }
    fn lists(&self) -> u64 {
        self.seen.lists.load(Ordering::Relaxed)
    }
}

struct Sequential {
    direct: Pcts,
    via: Pcts,
    n: u64,
    lists_per_call: f64,
}

struct Throughput {
    clients: usize,
    direct: Load,
    via: Load,
    lists_per_call: f64,
}

fn main() {
    let calls: u64 = env_or("MCP_BENCH_CALLS", 2000);
    let lat_secs: f64 = env_or("MCP_BENCH_LAT_SECS", 15.0);
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
    rt.block_on(run(calls, lat_secs, secs, &clients, workers));
}

/// Policies: reads of either server's `search` are allowed; deletes are forbidden.
fn write_policies(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("start.cedar"),
        "@id(\"start\")\npermit (principal, action == Mandate::Action::\"start_task\", resource)\nwhen { principal.status == \"active\" };\n",
    )
    .unwrap();
    let tools: Vec<String> = names
        .iter()
        .map(|n| format!("Mandate::Tool::\"{n}.search\""))
        .collect();
    std::fs::write(
        dir.join("mcp.cedar"),
        format!(
            "@id(\"docs-read\")\n@reason(\"reading documents is fine\")\npermit (principal, action == Mandate::Action::\"read\", resource)\nwhen {{ [{}].contains(resource) }};\n\n\
             @id(\"no-delete\")\n@reason(\"agents never delete documents\")\nforbid (principal, action == Mandate::Action::\"delete\", resource);\n",
            tools.join(", ")
        ),
    )
    .unwrap();
    let catalog: Vec<Value> = names
        .iter()
        .flat_map(|n| {
            [
                json!({ "name": format!("{n}.search"), "server": n, "risk": "low", "read_only": true }),
                json!({ "name": format!("{n}.delete_all"), "server": n, "risk": "critical", "destructive": true }),
            ]
        })
        .collect();
    std::fs::write(
        dir.join("tools.json"),
        serde_json::to_string_pretty(&json!({ "tools": catalog })).unwrap(),
    )
    .unwrap();
}

async fn run(calls: u64, lat_secs: f64, secs: f64, counts: &[usize], workers: usize) {
    // --- Setup: the MCP servers, then Mandate (real SystemClock) with a gateway in front.
    let mut ups = Vec::new();
    for (name, label, nodelay) in [
        ("nagle", "axum::serve defaults (Nagle on)", false),
        ("nodelay", "TCP_NODELAY set", true),
    ] {
        let (addr, seen) = docs_server(nodelay).await;
        ups.push(Upstream {
            name,
            label,
            addr,
            seen,
            direct_url: format!("http://{addr}/mcp"),
            mandate_url: String::new(),
        });
    }
    let toml: String = ups
        .iter()
        .map(|u| {
            format!(
                "[[mcp_server]]\nname = \"{}\"\nurl = \"http://{}/mcp\"\nallow_private = true\ncredential = {{ secret = \"docs-token\", kind = \"bearer\" }}\n\n",
                u.name, u.addr
            )
        })
        .collect();
    let gateway = GatewayConfig::from_toml(&toml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    let names: Vec<&str> = ups.iter().map(|u| u.name).collect();
    write_policies(&policies, &names);
    let mut config = mandate_server::ServerConfig::new(dir.path().join("data"), policies);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.admin_token = Some(ADMIN.into());
    config.watch_policies = false;
    // One agent and one task drive the whole run: no rate limit in the way.
    config.limits.agent_decisions_per_sec = u32::MAX / 2;
    config.limits.task_decisions_per_sec = u32::MAX / 2;
    config.gateway = Some(Arc::new(gateway));
    let server = mandate_server::Server::start(config).await.unwrap();
    let url = server.url();
    for u in &mut ups {
        u.mandate_url = format!("{url}/mcp/{}", u.name);
    }
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
    let tools: Vec<String> = names.iter().map(|n| format!("{n}.search")).collect();
    let destinations: Vec<String> = ups.iter().map(|u| u.addr.to_string()).collect();
    let r: Value = http
        .post(format!("{url}/v1/tasks"))
        .bearer_auth(identity)
        .json(&json!({
            "purpose": "benchmark document search",
            "scope": { "tools": tools, "actions": ["read"], "destinations": destinations },
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

    // Pin each server's tools (a listing through Mandate), then approve what the second
    // server's identical tool names are held for (they shadow the first server's), as an
    // admin would.
    for u in &ups {
        let via = client(&u.mandate_url, &token).await;
        via.list_all_tools().await.unwrap();
        let _ = via.cancel().await;
    }
    let pins: Value = http
        .get(format!("{url}/v1/tools/pins"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in pins.as_array().unwrap() {
        if p["status"] == "pending" {
            let r = http
                .post(format!("{url}/v1/tools/approve"))
                .bearer_auth(ADMIN)
                .json(&json!({ "server": p["server"], "tool": p["tool"], "digest": p["digest"] }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
        }
    }

    // --- Verify both paths to each server before timing: the call through Mandate is
    // allowed, forwarded and answered by the server; the direct call reaches the same
    // server; a call outside the grant is refused without reaching it.
    for u in &ups {
        let direct = client(&u.direct_url, DOCS_SECRET).await;
        let via = client(&u.mandate_url, &token).await;
        let before = u.calls();
        let r = via.call_tool(search(1)).await.unwrap();
        assert_ne!(r.is_error, Some(true), "{} through Mandate: {r:?}", u.name);
        assert!(text(&r).contains("search ran with"), "{r:?}");
        assert_eq!(u.calls(), before + 1, "{} saw the call", u.name);
        let r = direct.call_tool(search(2)).await.unwrap();
        assert_ne!(r.is_error, Some(true), "{} direct: {r:?}", u.name);
        assert_eq!(u.calls(), before + 2);
        let mut denied = CallToolRequestParams::new("delete_all");
        denied.arguments = Some(schema(json!({})));
        let r = via.call_tool(denied).await.unwrap();
        assert_eq!(r.is_error, Some(true), "delete_all must be denied");
        assert!(text(&r).contains("denied"), "{r:?}");
        assert_eq!(
            u.calls(),
            before + 2,
            "a denied call never reaches the server"
        );
        let _ = direct.cancel().await;
        let _ = via.cancel().await;
    }

    // --- Sequential latency, one client per path; the two paths alternate call by call so
    // drift (page cache, CPU frequency, neighbours) hits both alike.
    let mut seq = Vec::new();
    for u in &ups {
        let direct = client(&u.direct_url, DOCS_SECRET).await;
        let via = client(&u.mandate_url, &token).await;
        for i in 0..(calls / 10).min(50) {
            assert!(
                call(&direct, i).await && call(&via, i).await,
                "warm-up failed"
            );
        }
        let (calls0, lists0) = (u.calls(), u.lists());
        let (mut d_ns, mut m_ns) = (Vec::new(), Vec::new());
        let started = Instant::now();
        let mut n = 0;
        while n < calls && started.elapsed().as_secs_f64() < lat_secs {
            let t = Instant::now();
            assert!(call(&direct, n).await, "direct call failed");
            d_ns.push(t.elapsed().as_nanos() as u64);
            let t = Instant::now();
            assert!(call(&via, n).await, "call through Mandate failed");
            m_ns.push(t.elapsed().as_nanos() as u64);
            n += 1;
        }
        assert_eq!(u.calls() - calls0, 2 * n, "the server saw every timed call");
        seq.push(Sequential {
            direct: percentiles(d_ns),
            via: percentiles(m_ns),
            n,
            lists_per_call: (u.lists() - lists0) as f64 / n as f64,
        });
        let _ = direct.cancel().await;
        let _ = via.cancel().await;
    }

    // Components of the Mandate path, measured alone against the TCP_NODELAY server: the
    // upstream tools/list Mandate makes when its cached listing (2 s) is stale, and an
    // audited decision over plain HTTP.
    let fast = &ups[1];
    let direct = client(&fast.direct_url, DOCS_SECRET).await;
    let n_comp = calls.min(1000);
    let mut list_ns = Vec::new();
    for _ in 0..n_comp {
        let t = Instant::now();
        direct.list_all_tools().await.unwrap();
        list_ns.push(t.elapsed().as_nanos() as u64);
    }
    let _ = direct.cancel().await;
    let mut decide_ns = Vec::new();
    for i in 0..n_comp {
        let t = Instant::now();
        let r: Value = http
            .post(format!("{url}/v1/decide"))
            .bearer_auth(&token)
            .json(&json!({ "tool": format!("{}.search", fast.name), "action": "read", "resource": "search",
                           "arguments": { "q": format!("budget {i}") } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        decide_ns.push(t.elapsed().as_nanos() as u64);
        assert_eq!(r["outcome"], "allow", "{r}");
    }

    // --- Throughput: N clients per path, each calling in a loop for `secs`.
    let mut thr: Vec<Vec<Throughput>> = Vec::new();
    for u in &ups {
        let mut rows = Vec::new();
        for &n in counts {
            let before = u.calls();
            let direct = load(&u.direct_url, DOCS_SECRET, n, secs).await;
            let lists0 = u.lists();
            let via = load(&u.mandate_url, &token, n, secs).await;
            let lists = u.lists() - lists0;
            let received = u.calls() - before;
            // Warm-ups (one per session) plus every successful timed call (each loop
            // finishes its call in flight at the deadline). A failed call may or may not
            // have arrived.
            let expected = direct.ok + via.ok + 2 * n as u64;
            assert!(
                received >= expected && received <= expected + direct.errors + via.errors,
                "server saw {received} calls, clients counted {expected} successes"
            );
            rows.push(Throughput {
                clients: n,
                lists_per_call: lists as f64 / (via.ok + n as u64).max(1) as f64,
                direct,
                via,
            });
        }
        thr.push(rows);
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
            .filter(|e| e["kind"] == "decision" && e["data"]["outcome"] == "allow")
            .count()
    });
    assert!(decisions > 0, "no decision events recorded");

    // --- Report.
    println!("## MCP `tools/call`: through Mandate's MCP gateway vs direct\n");
    println!(
        "Command: `cargo bench -p mandate-server --bench mcp` (MCP_BENCH_CALLS={calls}, MCP_BENCH_LAT_SECS={lat_secs}, MCP_BENCH_SECS={secs}, MCP_BENCH_CLIENTS={}). \
         rmcp streamable-HTTP MCP server (tool `search`), rmcp clients and Mandate in one process on loopback; tokio multi-thread runtime, {workers} workers, {workers} cores shared by all; \
         audit in SQLite in a temp dir (synchronous=FULL, group commit). The same server runs twice: with `axum::serve` defaults (Nagle on) and with TCP_NODELAY.\n",
        counts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("### Sequential latency (one client per path, calls alternating between paths)\n");
    println!("| MCP server | path | calls | p50 µs | p90 µs | p99 µs | mean µs |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let row = |server: &str, path: &str, n: String, p: Pcts| {
        println!(
            "| {server} | {path} | {n} | {:.0} | {:.0} | {:.0} | {:.0} |",
            p.p50, p.p90, p.p99, p.mean
        );
    };
    for (u, s) in ups.iter().zip(&seq) {
        row(u.label, "direct", s.n.to_string(), s.direct);
        row(u.label, "through Mandate", s.n.to_string(), s.via);
        println!(
            "| {} | added by Mandate | | {:+.0} | {:+.0} | {:+.0} | {:+.0} |",
            u.label,
            s.via.p50 - s.direct.p50,
            s.via.p90 - s.direct.p90,
            s.via.p99 - s.direct.p99,
            s.via.mean - s.direct.mean
        );
    }
    row(
        ups[1].label,
        "component: direct `tools/list` (Mandate's pin check when its listing is stale)",
        n_comp.to_string(),
        percentiles(list_ns),
    );
    row(
        "—",
        "component: `POST /v1/decide` over HTTP (audited allow)",
        n_comp.to_string(),
        percentiles(decide_ns),
    );
    println!();
    for (u, s) in ups.iter().zip(&seq) {
        println!(
            "Upstream `tools/list` per Mandate `tools/call` ({}): {:.3}",
            u.label, s.lists_per_call
        );
    }
    println!("\n### Throughput ({secs} s per run, each client calling in a loop)\n");
    println!(
        "| MCP server | path | clients | calls/s | p50 µs | p90 µs | p99 µs | errors | upstream lists/call |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (u, rows) in ups.iter().zip(&thr) {
        for t in rows {
            for (path, x, lists) in [
                ("direct", &t.direct, "—".to_owned()),
                (
                    "through Mandate",
                    &t.via,
                    format!("{:.3}", t.lists_per_call),
                ),
            ] {
                println!(
                    "| {} | {path} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {lists} |",
                    u.label,
                    t.clients,
                    x.ok as f64 / x.secs,
                    x.lat.p50,
                    x.lat.p90,
                    x.lat.p99,
                    x.errors
                );
            }
        }
    }
    println!(
        "\nVerified before timing, per server: a call through Mandate allowed and answered (not is_error) and seen by the server, a direct call seen by it, \
         `delete_all` denied without reaching it; during timing the servers' call counts matched every successful call; {decisions} allow decisions in the task's audit trail."
    );
    server.shutdown().await.unwrap();
}

//! The HTTP gateway against a real upstream server that records every request it gets:
//! allowed calls arrive with the injected credential and without the task token; denied,
//! held, malformed and oversized calls never reach it.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::sync::Arc;

use common::upstream::Upstream;
use common::{ADMIN, Harness, demo_policies};
use mandate_gateway::GatewayConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN_SECRET: &str = "upstream-bearer-9f8e7d6c5b4a";

fn gateway_toml_with(upstream: &Upstream, extra: &str, credential: &str) -> String {
    format!(
        r#"
[limits]
max_request_body_bytes = 2048
{extra}

[[upstream]]
name = "tickets"
base_url = "http://{addr}/api"
allow_private = true
credential = {credential}

[[route]]
upstream = "tickets"
method = "GET"
path = "/tickets"
tool = "tickets.search"
data_domain = "support"

[[route]]
upstream = "tickets"
method = "GET"
path = "/tickets/{{id}}/echo-auth"
tool = "tickets.search"
data_domain = "support"

[[route]]
upstream = "tickets"
method = "GET"
path = "/tickets/{{id}}/big"
tool = "tickets.search"
data_domain = "support"

[[route]]
upstream = "tickets"
method = "PUT"
path = "/tickets/{{id}}"
tool = "tickets.update"
data_domain = "support"

[[route]]
upstream = "tickets"
method = "POST"
path = "/tickets/search"
tool = "tickets.search"
action = "read"
data_domain = "support"

[[route]]
upstream = "tickets"
method = "DELETE"
path = "/tickets/{{id}}"
tool = "tickets.delete"
data_domain = "support"
"#,
        addr = upstream.addr
    )
}

struct Gw {
    h: Harness,
    up: Upstream,
    task: String,
    token: String,
}

async fn start_with(extra_limits: &str, secret: &str) -> Gw {
    start_full(
        extra_limits,
        secret,
        r#"{ secret = "tickets-token", kind = "bearer" }"#,
    )
    .await
}

async fn start_full(extra_limits: &str, secret: &str, credential: &str) -> Gw {
    let up = Upstream::start().await;
    let cfg = GatewayConfig::from_toml(&gateway_toml_with(&up, extra_limits, credential)).unwrap();
    let h = Harness::start_configured(&demo_policies(), |c| c.gateway = Some(Arc::new(cfg))).await;
    let r = h
        .send(
            h.http
                .put(h.url("/v1/secrets/tickets-token"))
                .bearer_auth(ADMIN)
                .json(&json!({ "value": secret, "description": "ticket API" })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        !r.body.to_string().contains(secret),
        "the API never returns a secret"
    );
    let identity = h.agent("bot", 1).await;
    let (task, token) = task_with(&h, &identity, &up).await;
    Gw { h, up, task, token }
}

async fn start() -> Gw {
    start_with("", TOKEN_SECRET).await
}

async fn task_with(h: &Harness, identity: &str, up: &Upstream) -> (String, String) {
    let r = h
        .post("/v1/tasks", Some(identity), json!({
            "purpose": "summarise open tickets",
            "scope": { "tools": ["tickets.search", "tickets.update", "tickets.delete"], "actions": ["read", "write", "delete"],
                       "data_domains": ["support"], "destinations": [up.addr.to_string()] },
            "ttl_secs": 600,
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    (
        r.body["task_id"].as_str().unwrap().to_owned(),
        r.body["task_token"].as_str().unwrap().to_owned(),
    )
}

impl Gw {
    fn gw(&self, path: &str) -> String {
        self.h.url(&format!("/gw/tickets{path}"))
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> common::Reply {
        self.h
            .send(
                self.h
                    .http
                    .request(method, self.gw(path))
                    .bearer_auth(&self.token),
            )
            .await
    }

    /// Sends a request line exactly as written (no client-side URL normalisation).
    async fn raw(&self, method: &str, target: &str) -> u16 {
        let mut s = tokio::net::TcpStream::connect(self.h.server.addr)
            .await
            .unwrap();
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.token
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    async fn events(&self) -> Vec<Value> {
        let r = self
            .h
            .get(&format!("/v1/tasks/{}/events", self.task), Some(ADMIN))
            .await;
        r.body.as_array().unwrap().clone()
    }
}

#[tokio::test]
async fn an_allowed_call_arrives_with_the_credential_and_without_the_task_token() {
    let g = start().await;
    let r = g
        .call(reqwest::Method::GET, "/tickets?status=open&b=2")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, json!({ "ok": true, "path": "/api/tickets" }));
    let decision = r.headers["x-mandate-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let seen = g.up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.target, "/api/tickets?status=open&b=2");
    assert_eq!(
        s.header("authorization"),
        Some(format!("Bearer {TOKEN_SECRET}").as_str())
    );
    assert_eq!(s.header("x-mandate-decision-id"), Some(decision.as_str()));
    for (name, value) in &s.headers {
        assert!(
            !value.contains(&g.token),
            "the task token reached the upstream in {name}"
        );
    }

    // The decision names the route's tool, the canonical path and query; the result
    // event follows with the upstream's status and the bytes returned.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let events = g.events().await;
    let d = events.iter().find(|e| e["kind"] == "decision").unwrap();
    assert_eq!(d["data"]["tool"], "tickets.search");
    assert_eq!(d["data"]["resource"], "/tickets");
    assert_eq!(d["data"]["destination"], g.up.addr.to_string());
    assert_eq!(d["data"]["outcome"], "allow");
    let res = events
        .iter()
        .find(|e| e["kind"] == "gateway.result")
        .unwrap();
    assert_eq!(res["data"]["decision_id"], decision);
    assert_eq!(res["data"]["upstream_status"], 200);
    assert_eq!(res["data"]["bytes_returned"], 33);
    assert_eq!(res["data"]["secret_redacted"], false);
}

#[tokio::test]
async fn denied_and_held_calls_never_reach_the_upstream_until_approved() {
    let g = start().await;
    let r = g.call(reqwest::Method::DELETE, "/tickets/T-1").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "denied"),
        "{:?}",
        r.body
    );
    assert!(
        r.body["error"]["details"]["policies"]
            .as_array()
            .unwrap()
            .contains(&json!("no-deletes"))
    );

    let put = |approval: Option<&str>| {
        let mut req =
            g.h.http
                .put(g.gw("/tickets/T-1"))
                .bearer_auth(&g.token)
                .json(&json!({ "status": "closed" }));
        if let Some(a) = approval {
            req = req.header("x-mandate-approval-id", a);
        }
        req
    };
    let r = g.h.send(put(None)).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "approval_required"),
        "{:?}",
        r.body
    );
    let id = r.headers["x-mandate-approval-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(g.up.count(), 0, "nothing reached the upstream");

    // Another body is another action: the approval does not cover it.
    let approver =
        g.h.post(
            "/v1/approvers",
            Some(ADMIN),
            json!({ "name": "bob@example.com", "roles": ["approver"] }),
        )
        .await;
    let approver = approver.body["token"].as_str().unwrap().to_owned();
    let a =
        g.h.post(
            &format!("/v1/approvals/{id}/approve"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let other =
        g.h.send(
            g.h.http
                .put(g.gw("/tickets/T-1"))
                .bearer_auth(&g.token)
                .header("x-mandate-approval-id", &id)
                .json(&json!({ "status": "deleted" })),
        )
        .await;
    assert_eq!(other.status, 403, "{:?}", other.body);
    assert_eq!(g.up.count(), 0);

    let r = g.h.send(put(Some(&id))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = g.up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].body, br#"{"status":"closed"}"#);
    // Single use.
    let again = g.h.send(put(Some(&id))).await;
    assert_ne!(again.status, 200);
    assert_eq!(g.up.count(), 1);
}

#[tokio::test]
async fn the_upstream_receives_exactly_what_policy_evaluated() {
    let g = start().await;
    // Key order and whitespace do not matter: the canonical form is decided and forwarded.
    let r =
        g.h.send(
            g.h.http
                .post(g.gw("/tickets/search"))
                .bearer_auth(&g.token)
                .header("content-type", "application/json")
                .body(r#"{ "z": 1,  "a": {"y": true, "b": null} }"#),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(g.up.seen()[0].body, br#"{"a":{"b":null,"y":true},"z":1}"#);
    // Duplicate keys could be read two ways: refused.
    let r =
        g.h.send(
            g.h.http
                .post(g.gw("/tickets/search"))
                .bearer_auth(&g.token)
                .header("content-type", "application/json")
                .body(r#"{"q": "open", "q": "all"}"#),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "invalid_body"),
        "{:?}",
        r.body
    );
    assert_eq!(g.up.count(), 1);
    let events = g.events().await;
    let d = events.iter().find(|e| e["kind"] == "decision").unwrap();
    let digest = mandate_core::CanonicalArgs::parse(
        &json!({ "method": "POST", "path": {}, "query": {}, "body": { "a": { "b": null, "y": true }, "z": 1 }, "content_type": "application/json", "headers": {} }).to_string(),
    )
    .unwrap();
    assert_eq!(d["data"]["args_digest"], digest.digest());

    // JSON sent as text/plain (or with no type) is still decided as JSON, and forwarded
    // canonical: an upstream that parses it regardless sees only what policy saw.
    for ct in [Some("text/plain"), None] {
        let mut req =
            g.h.http
                .post(g.gw("/tickets/search"))
                .bearer_auth(&g.token)
                .body(r#"{"b": 1, "a": 2}"#);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let r = g.h.send(req).await;
        assert_eq!(r.status, 200, "{ct:?}: {:?}", r.body);
        assert_eq!(g.up.seen().last().unwrap().body, br#"{"a":2,"b":1}"#);
    }
    // Two content types could be read two ways: refused.
    let r =
        g.h.send(
            g.h.http
                .post(g.gw("/tickets/search"))
                .bearer_auth(&g.token)
                .header("content-type", "text/plain")
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "invalid_header"),
        "{:?}",
        r.body
    );
    // A form is decided as its fields and forwarded in canonical form.
    let r =
        g.h.send(
            g.h.http
                .post(g.gw("/tickets/search"))
                .bearer_auth(&g.token)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("q=open+now&n=%31"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(g.up.seen().last().unwrap().body, b"q=open%20now&n=1");
    let events = g.events().await;
    let last = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "decision")
        .unwrap();
    let form = mandate_core::CanonicalArgs::parse(
        &json!({ "method": "POST", "path": {}, "query": {}, "body": { "q": "open now", "n": "1" }, "content_type": "application/x-www-form-urlencoded", "headers": {} }).to_string(),
    )
    .unwrap();
    assert_eq!(last["data"]["args_digest"], form.digest());
    assert_eq!(g.up.count(), 4);
}

#[tokio::test]
async fn traversal_and_encoding_tricks_are_refused() {
    let g = start().await;
    for target in [
        "/gw/tickets/tickets/../admin",
        "/gw/tickets/tickets/%2e%2e/admin",
        "/gw/tickets/tickets/%2E%2E%2Fadmin",
        "/gw/tickets/tickets/..%2fadmin",
        "/gw/tickets/tickets/..;/admin",
        "/gw/tickets/tickets/%252e%252e/admin",
        "/gw/tickets/tickets//T-1",
        "/gw/tickets/tickets/T-1%00/echo-auth",
        "/gw/tickets/tickets/.%2e/echo-auth",
        "/gw/tickets/tickets/a\\..\\b",
        "/gw/tickets/tickets/%c0%ae%c0%ae/x",
        "/gw/tickets/tickets?a=%00",
    ] {
        let status = g.raw("GET", target).await;
        assert_eq!(status, 400, "{target}");
    }
    // Unknown upstreams and paths that are no route are not tools.
    assert_eq!(g.raw("GET", "/gw/nope/tickets").await, 404);
    assert_eq!(g.raw("GET", "/gw/tickets/admin").await, 404);
    assert_eq!(g.raw("PATCH", "/gw/tickets/tickets").await, 404);
    assert_eq!(g.up.count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn oversized_bodies_get_413_before_any_upstream_connection() {
    let g = start().await;
    let big = "x".repeat(4096);
    let r =
        g.h.send(
            g.h.http
                .post(g.gw("/tickets/search"))
                .bearer_auth(&g.token)
                .header("content-type", "application/json")
                .body(format!("{{\"q\":\"{big}\"}}")),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (413, "body_too_large"),
        "{:?}",
        r.body
    );
    // Without a content-length (chunked), the limit holds while reading.
    let chunk = bytes::Bytes::from(big.clone());
    let stream =
        futures_util::stream::iter((0..2).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r =
        g.h.send(
            g.h.http
                .post(g.gw("/tickets/search"))
                .bearer_auth(&g.token)
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (413, "body_too_large"),
        "{:?}",
        r.body
    );
    assert_eq!(g.up.count(), 0);
}

#[tokio::test]
async fn bad_tokens_and_ended_tasks_forward_nothing() {
    let g = start().await;
    let r = g.h.send(g.h.http.get(g.gw("/tickets"))).await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "missing_token"));
    let r =
        g.h.send(g.h.http.get(g.gw("/tickets")).bearer_auth("not-a-token"))
            .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let c =
        g.h.post(
            &format!("/v1/tasks/{}/complete", g.task),
            Some(&g.token),
            json!({}),
        )
        .await;
    assert!(c.status.is_success(), "{:?}", c.body);
    let r = g.call(reqwest::Method::GET, "/tickets").await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(g.up.count(), 0);
}

#[tokio::test]
async fn a_flood_from_one_agent_gets_429_and_does_not_starve_another() {
    let g = start_with(
        "agent_rate_per_sec = 1\nagent_burst = 3\ntask_rate_per_sec = 1\ntask_burst = 3",
        TOKEN_SECRET,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(g.call(reqwest::Method::GET, "/tickets").await.status, 200);
    }
    let r = g.call(reqwest::Method::GET, "/tickets").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (429, "rate_limited"),
        "{:?}",
        r.body
    );
    let identity = g.h.agent("other", 1).await;
    let (_, other) = task_with(&g.h, &identity, &g.up).await;
    let r =
        g.h.send(g.h.http.get(g.gw("/tickets")).bearer_auth(&other))
            .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Time refills the bucket (the clock is injected: no sleeping).
    g.h.clock.advance_ms(1500);
    assert_eq!(g.call(reqwest::Method::GET, "/tickets").await.status, 200);
    assert_eq!(g.up.count(), 5);
}

#[tokio::test]
async fn ssrf_guard_refuses_internal_destinations_unless_allowed() {
    // An address literal: refused at start, with a clear reason.
    let cfg = GatewayConfig::from_toml("[[upstream]]\nname = 'meta'\nbase_url = 'http://169.254.169.254/latest'\nallow_private = true\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(mandate_core::ManualClock::new(0));
    let mut c = common::config(dir.path(), &demo_policies(), clock);
    c.gateway = Some(Arc::new(cfg));
    let e = mandate_server::Server::start(c).await.err().unwrap();
    assert!(e.contains("metadata"), "{e}");

    // A name resolving to loopback without allow_private: refused at connection time.
    let up = Upstream::start().await;
    let toml = format!(
        "[[upstream]]\nname = 'tickets'\nbase_url = 'http://localhost:{}/api'\n\n[[route]]\nupstream = 'tickets'\nmethod = 'GET'\npath = '/tickets'\ntool = 'tickets.search'\ndata_domain = 'support'\n",
        up.addr.port()
    );
    let cfg = GatewayConfig::from_toml(&toml).unwrap();
    let h = Harness::start_configured(&demo_policies(), |c| c.gateway = Some(Arc::new(cfg))).await;
    let identity = h.agent("bot", 1).await;
    let r = h
        .post("/v1/tasks", Some(&identity), json!({
            "purpose": "p", "scope": { "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"], "destinations": [format!("localhost:{}", up.addr.port())] }, "ttl_secs": 600,
        }))
        .await;
    let token = r.body["task_token"].as_str().unwrap();
    let r = h
        .send(h.http.get(h.url("/gw/tickets/tickets")).bearer_auth(token))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (502, "destination_refused"),
        "{:?}",
        r.body
    );
    assert_eq!(up.count(), 0);
}

/// Captured log output of this test binary.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_canary_secret_appears_in_no_response_log_event_or_file() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init();
    const CANARY: &str = "canary-4b1d-SECRET/value+9c";
    let g = start_with("", CANARY).await;
    // The upstream echoes the injected credential in a header and in its body.
    let r = g.call(reqwest::Method::GET, "/tickets/T-1/echo-auth").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        g.up.seen()[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str()),
        "the upstream did get it"
    );
    // Errors and denials too.
    let denied = g.call(reqwest::Method::DELETE, "/tickets/T-1").await;
    assert_eq!(denied.status, 403);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let forms = mandate_gateway::redact::forms(CANARY.as_bytes());
    assert!(
        forms.len() > 8,
        "raw, base64 (three alignments, two alphabets), hex, percent, JSON"
    );
    let response = format!("{:?} {} {}", r.headers, r.body, denied.body);
    let events = g.events().await;
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "gateway.result" && e["data"]["secret_redacted"] == true),
        "{events:?}"
    );
    let all_events = g.h.get("/v1/audit/verify", Some(ADMIN)).await;
    assert_eq!(all_events.body["ok"], true);
    let listing = g.h.get("/v1/secrets", Some(ADMIN)).await;
    assert_eq!(listing.body[0]["name"], "tickets-token");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(g.h.dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "key") {
            files.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    let log_text = logs.0.lock().unwrap().clone();
    assert!(!log_text.is_empty(), "logs were captured");
    for f in &forms {
        let text = String::from_utf8_lossy(f);
        assert!(!contains(response.as_bytes(), f), "response carries {text}");
        assert!(
            !contains(serde_json::to_string(&events).unwrap().as_bytes(), f),
            "audit event carries {text}"
        );
        assert!(
            !contains(listing.body.to_string().as_bytes(), f),
            "listing carries {text}"
        );
        assert!(!contains(&log_text, f), "a log line carries {text}");
        assert!(
            !contains(&files, f),
            "the database files carry {text} in clear"
        );
    }
    assert!(r.body.to_string().contains("[REDACTED]"), "{}", r.body);
}

#[tokio::test]
async fn header_and_basic_credentials_are_injected_and_redacted() {
    let g = start_full(
        "",
        "key-0a1b2c3d4e5f",
        r#"{ secret = "tickets-token", kind = "header", header = "X-Api-Key" }"#,
    )
    .await;
    let r = g.call(reqwest::Method::GET, "/tickets/T-1/echo-auth").await;
    assert_eq!(r.status, 200);
    let seen = g.up.seen();
    assert_eq!(seen[0].header("x-api-key"), Some("key-0a1b2c3d4e5f"));
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "neither the task token nor anything else"
    );
    assert!(
        !r.body.to_string().contains("key-0a1b2c3d4e5f"),
        "{}",
        r.body
    );

    let g = start_full(
        "",
        "svc-user:pa55-w0rd-long",
        r#"{ secret = "tickets-token", kind = "basic" }"#,
    )
    .await;
    let r = g.call(reqwest::Method::GET, "/tickets/T-1/echo-auth").await;
    assert_eq!(r.status, 200);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode("svc-user:pa55-w0rd-long");
    assert_eq!(
        g.up.seen()[0].header("authorization"),
        Some(format!("Basic {b64}").as_str())
    );
    let text = format!("{:?} {}", r.headers, r.body);
    assert!(
        !text.contains(&b64) && !text.contains("pa55-w0rd-long"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_secret_fails_closed_and_large_responses_are_cut() {
    let g = start_full(
        "max_response_bytes = 1000",
        TOKEN_SECRET,
        r#"{ secret = "tickets-token", kind = "bearer" }"#,
    )
    .await;
    // The upstream's 64 KiB answer is cut at the limit: the client never gets it whole.
    let got = match g
        .h
        .http
        .get(g.gw("/tickets/T-1/big"))
        .bearer_auth(&g.token)
        .send()
        .await
    {
        Ok(res) => res.bytes().await.map(|b| b.len()).unwrap_or(0),
        Err(_) => 0,
    };
    assert!(got <= 1000, "{got} bytes relayed");
    let d =
        g.h.send(
            g.h.http
                .delete(g.h.url("/v1/secrets/tickets-token"))
                .bearer_auth(ADMIN),
        )
        .await;
    assert_eq!(d.status, 204);
    let before = g.up.count();
    let r = g.call(reqwest::Method::GET, "/tickets").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (502, "credential_unavailable"),
        "{:?}",
        r.body
    );
    assert_eq!(
        g.up.count(),
        before,
        "nothing forwarded without its credential"
    );
}

#[tokio::test]
async fn master_key_rotation_reseals_without_downtime() {
    use base64::Engine as _;
    let keys = tempfile::tempdir().unwrap();
    let ring = keys.path().join("master.keys");
    let key = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    std::fs::write(&ring, format!("{}\n", key(1))).unwrap();
    let up = Upstream::start().await;
    let cfg = GatewayConfig::from_toml(&gateway_toml_with(
        &up,
        "",
        r#"{ secret = "tickets-token", kind = "bearer" }"#,
    ))
    .unwrap();
    let file = ring.clone();
    let h = Harness::start_configured(&demo_policies(), move |c| {
        c.gateway = Some(Arc::new(cfg));
        c.master_key = mandate_server::secrets::MasterKeySource::File(file);
    })
    .await;
    let put = h
        .send(
            h.http
                .put(h.url("/v1/secrets/tickets-token"))
                .bearer_auth(ADMIN)
                .json(&json!({ "value": TOKEN_SECRET })),
        )
        .await;
    let old_kid = put.body["key_id"].as_str().unwrap().to_owned();
    let identity = h.agent("bot", 1).await;
    let (_, token) = task_with(&h, &identity, &up).await;

    // A broken ring file is refused and the old ring keeps working.
    std::fs::write(&ring, "not a key\n").unwrap();
    let r = h.post("/v1/secrets/rotate", Some(ADMIN), json!({})).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "master_key_invalid"),
        "{:?}",
        r.body
    );
    let r = h
        .send(h.http.get(h.url("/gw/tickets/tickets")).bearer_auth(&token))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // New key first, old key kept: re-seal, then calls go on.
    std::fs::write(&ring, format!("{}\n{}\n", key(2), key(1))).unwrap();
    let r = h.post("/v1/secrets/rotate", Some(ADMIN), json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["resealed"], 1);
    assert_ne!(r.body["key_id"], old_kid.as_str());
    let listed = h.get("/v1/secrets", Some(ADMIN)).await;
    assert_eq!(listed.body[0]["key_id"], r.body["key_id"]);
    let r = h
        .send(h.http.get(h.url("/gw/tickets/tickets")).bearer_auth(&token))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        up.seen().last().unwrap().header("authorization"),
        Some(format!("Bearer {TOKEN_SECRET}").as_str())
    );
    // Non-admins cannot touch secrets.
    let r = h.post("/v1/secrets/rotate", Some(&token), json!({})).await;
    assert_eq!(r.status, 403);
    let r = h.get("/v1/secrets", None).await;
    assert_eq!(r.status, 401);
}

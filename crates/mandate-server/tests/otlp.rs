//! OTLP trace export against the OpenTelemetry project's own decoder: a collector written
//! with PyPI `opentelemetry-proto` (tests/fixtures/otlp_collector.py) receives what
//! Mandate exports. A decision made with the agent's `traceparent` is a span in the
//! agent's trace, under the agent's span; a gateway call is a server span there, with the
//! decision under it and the upstream told to hang its spans under it too; a collector
//! that is briefly unavailable gets the spans on a retry, and one that is down costs no
//! decision.
//!
//! The collector tests need `MANDATE_TEST_OTLP_PYTHON=<python with opentelemetry-proto>`
//! (`bash scripts/install-otlp-peer.sh` installs it and prints the path). Without the
//! variable they say so on stderr and pass; set to something that cannot run, they fail.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::upstream::Upstream;
use common::{ADMIN, Harness, demo_policies};
use mandate_gateway::GatewayConfig;
use mandate_server::otlp::OtlpSettings;
use serde_json::{Value, json};

const PY_ENV: &str = "MANDATE_TEST_OTLP_PYTHON";

// The agent's context, as an OpenTelemetry SDK would send it.
const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN: &str = "00f067aa0ba902b7";

fn python(test: &str) -> Option<PathBuf> {
    let Some(p) = std::env::var_os(PY_ENV) else {
        eprintln!(
            "SKIPPED {test}: {PY_ENV} is not set. To run the OTLP collector tests: \
             {PY_ENV}=\"$(bash scripts/install-otlp-peer.sh | tail -n 1)\" \
             cargo test -p mandate-server --test otlp"
        );
        return None;
    };
    Some(PathBuf::from(p))
}

struct Collector {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Collector {
    fn start(python: &Path, dir: &Path, fail_first: u32) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/otlp_collector.py");
        let out = dir.join("spans.jsonl");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(&out)
            .arg(fail_first.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{PY_ENV}={} cannot run: {e}", python.display()));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("the collector did not start (is opentelemetry-proto installed?): {line:?}")
        });
        Self { child, port, out }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let spans: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for s in &spans {
            assert!(s.get("error").is_none(), "the collector refused: {s}");
        }
        spans
    }

    /// Waits (bounded) until a span matching `pred` has arrived.
    async fn span_where(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(s) = self.spans().into_iter().find(|s| pred(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no span {what} arrived; got {:#?}", self.spans());
    }
}

fn gateway_toml(up: &Upstream) -> String {
    format!(
        r#"
[[upstream]]
name = "tickets"
base_url = "http://{addr}/api"
allow_private = true
forward_headers = ["traceparent"]

[[route]]
upstream = "tickets"
method = "GET"
path = "/tickets"
tool = "tickets.search"
data_domain = "support"
"#,
        addr = up.addr
    )
}

async fn start(endpoint: String, up: &Upstream) -> (Harness, String, String) {
    let cfg = GatewayConfig::from_toml(&gateway_toml(up)).unwrap();
    let h = Harness::start_configured(&demo_policies(), |c| {
        c.gateway = Some(Arc::new(cfg));
        c.otlp = Some(OtlpSettings {
            endpoint,
            service_name: "mandate-test".into(),
            resource: vec![("deployment.environment.name".into(), "test".into())],
        });
    })
    .await;
    let identity = h.agent("bot", 1).await;
    let r = h
        .post("/v1/tasks", Some(&identity), json!({
            "purpose": "summarise open tickets",
            "scope": { "tools": ["tickets.search", "tickets.delete"], "actions": ["read", "delete"],
                       "data_domains": ["support"], "destinations": [up.addr.to_string()] },
            "ttl_secs": 600,
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    (
        h,
        r.body["task_id"].as_str().unwrap().to_owned(),
        r.body["task_token"].as_str().unwrap().to_owned(),
    )
}

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

#[tokio::test]
async fn decisions_and_gateway_calls_are_spans_in_the_agents_trace() {
    let Some(py) = python("decisions_and_gateway_calls_are_spans_in_the_agents_trace") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The first export is refused with 503: the spans must come on a retry.
    let collector = Collector::start(&py, dir.path(), 1);
    let up = Upstream::start().await;
    let (h, task, token) = start(collector.endpoint(), &up).await;

    // 1. /v1/decide with the agent's context.
    let r = h
        .send(
            h.http
                .post(h.url("/v1/decide"))
                .bearer_auth(&token)
                .header("traceparent", traceparent(AGENT_TRACE, AGENT_SPAN))
                .json(&json!({ "tool": "tickets.search", "action": "read", "resource": "queue/open" })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["outcome"], "allow");
    let decision = r.body["decision_id"].as_str().unwrap().to_owned();
    let s = collector
        .span_where("for the /v1/decide decision", |s| {
            s["attributes"]["mandate.decision.id"] == decision.as_str()
        })
        .await;
    assert_eq!(s["trace_id"], AGENT_TRACE, "{s}");
    assert_eq!(s["parent_span_id"], AGENT_SPAN, "{s}");
    assert_eq!(s["name"], "authorize tickets.search");
    assert_eq!(s["kind"], 1, "internal");
    assert_eq!(s["attributes"]["mandate.decision.outcome"], "allow");
    assert_eq!(s["attributes"]["gen_ai.tool.name"], "tickets.search");
    assert_eq!(s["attributes"]["mandate.task.id"], task.as_str());
    assert!(
        s["attributes"]["mandate.policy.ids"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{s}"
    );
    assert_eq!(s["resource"]["service.name"], "mandate-test");
    assert_eq!(s["resource"]["deployment.environment.name"], "test");
    assert_eq!(s["scope"], "mandate");
    assert!(
        s["end"].as_u64() >= s["start"].as_u64() && s["start"].as_u64() > Some(0),
        "{s}"
    );
    assert_eq!(s["span_id"].as_str().unwrap().len(), 16);
    assert_ne!(s["span_id"], AGENT_SPAN);

    // 2. A gateway call: a server span under the agent's span, the decision under it, and
    // the upstream given the call span as its parent (the agent's own traceparent is not
    // passed on, even where the route forwards that header).
    let agent_span2 = "b7ad6b7169203331";
    let r = h
        .send(
            h.http
                .get(h.url("/gw/tickets/tickets"))
                .bearer_auth(&token)
                .header("traceparent", traceparent(AGENT_TRACE, agent_span2)),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let gw_decision = r.headers["x-mandate-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let seen = up.seen();
    let sent = seen
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        parts[1], AGENT_TRACE,
        "the upstream joins the agent's trace"
    );
    assert_ne!(
        parts[2], agent_span2,
        "under Mandate's span, not the agent's"
    );
    assert_eq!(
        seen.last()
            .unwrap()
            .headers
            .iter()
            .filter(|(n, _)| n == "traceparent")
            .count(),
        1
    );

    let call = collector
        .span_where("for the gateway call", |s| {
            s["kind"] == 2 && s["attributes"]["mandate.decision.id"] == gw_decision.as_str()
        })
        .await;
    assert_eq!(call["trace_id"], AGENT_TRACE);
    assert_eq!(call["parent_span_id"], agent_span2);
    assert_eq!(
        call["span_id"], parts[2],
        "the upstream's parent is the call span"
    );
    assert_eq!(call["name"], "execute_tool tickets.search");
    assert_eq!(call["attributes"]["http.request.method"], "GET");
    assert_eq!(call["attributes"]["http.response.status_code"], 200);
    assert_eq!(call["attributes"]["url.path"], "/api/tickets");
    assert_eq!(call["attributes"]["gen_ai.operation.name"], "execute_tool");
    assert_eq!(call["status_code"], 0, "unset: the call went through");
    let inner = collector
        .span_where("for the gateway decision", |s| {
            s["kind"] == 1 && s["attributes"]["mandate.decision.id"] == gw_decision.as_str()
        })
        .await;
    assert_eq!(inner["trace_id"], AGENT_TRACE);
    assert_eq!(
        inner["parent_span_id"], call["span_id"],
        "the decision is under the call"
    );
    assert!(inner["start"].as_u64() >= call["start"].as_u64());
    assert!(inner["end"].as_u64() <= call["end"].as_u64());

    // 3. Without a traceparent the task's calls share one trace of their own; a held call
    // is a span too, with its outcome.
    let r = h
        .post(
            "/v1/decide",
            Some(&token),
            json!({ "tool": "tickets.delete", "action": "delete", "resource": "ticket/9" }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let held = r.body["decision_id"].as_str().unwrap().to_owned();
    let r = h
        .post(
            "/v1/decide",
            Some(&token),
            json!({ "tool": "tickets.search", "action": "read", "resource": "queue/open" }),
        )
        .await;
    let plain = r.body["decision_id"].as_str().unwrap().to_owned();
    let a = collector
        .span_where("for the held call", |s| {
            s["attributes"]["mandate.decision.id"] == held.as_str()
        })
        .await;
    let b = collector
        .span_where("for the untraced call", |s| {
            s["attributes"]["mandate.decision.id"] == plain.as_str()
        })
        .await;
    assert_ne!(a["attributes"]["mandate.decision.outcome"], "allow", "{a}");
    assert_eq!(a["trace_id"], b["trace_id"], "one trace per task");
    assert_ne!(a["trace_id"], AGENT_TRACE);
    assert_eq!(a["parent_span_id"], "", "a root span");

    // 4. A malformed or repeated traceparent starts no trace of the agent's (and is not
    // refused for it).
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".to_owned(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra".to_owned(),
    ] {
        let r = h
            .send(
                h.http
                    .post(h.url("/v1/decide"))
                    .bearer_auth(&token)
                    .header("traceparent", &bad)
                    .json(&json!({ "tool": "tickets.search", "action": "read", "resource": "queue/open" })),
            )
            .await;
        assert_eq!(r.status, 200, "{bad}: {:?}", r.body);
        let id = r.body["decision_id"].as_str().unwrap().to_owned();
        let s = collector
            .span_where("for a call with a bad traceparent", |s| {
                s["attributes"]["mandate.decision.id"] == id.as_str()
            })
            .await;
        assert_eq!(s["trace_id"], b["trace_id"], "{bad}: the task's own trace");
    }
    let r = h
        .send(
            h.http
                .post(h.url("/v1/decide"))
                .bearer_auth(&token)
                .header("traceparent", traceparent(AGENT_TRACE, AGENT_SPAN))
                .header("traceparent", traceparent(AGENT_TRACE, agent_span2))
                .json(&json!({ "tool": "tickets.search", "action": "read", "resource": "queue/open" })),
        )
        .await;
    let id = r.body["decision_id"].as_str().unwrap().to_owned();
    let s = collector
        .span_where("for a call with two traceparents", |s| {
            s["attributes"]["mandate.decision.id"] == id.as_str()
        })
        .await;
    assert_eq!(s["trace_id"], b["trace_id"], "two contexts are none");

    // Each span is exported once, and the audit record keeps the same ids.
    let r = h
        .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
        .await;
    let events = r.body.as_array().unwrap();
    let recorded = events
        .iter()
        .find(|e| e["kind"] == "decision" && e["data"]["decision_id"] == decision.as_str())
        .unwrap();
    assert_eq!(
        recorded["data"]["trace"]["span_id"],
        collector
            .span_where("again", |s| s["attributes"]["mandate.decision.id"]
                == decision.as_str())
            .await["span_id"]
    );
    let all = collector.spans();
    let mut ids: Vec<&str> = all.iter().map(|s| s["span_id"].as_str().unwrap()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "no span twice");
}

#[tokio::test]
async fn a_collector_that_is_down_costs_no_decision() {
    // A port nothing listens on: connections are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let up = Upstream::start().await;
    let (h, _task, token) = start(endpoint, &up).await;
    for _ in 0..20 {
        let r = h
            .send(
                h.http
                    .get(h.url("/gw/tickets/tickets"))
                    .bearer_auth(&token)
                    .header("traceparent", traceparent(AGENT_TRACE, AGENT_SPAN)),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = h.decide(&token, "tickets.search", "read").await;
        assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    }
    let r = h.get("/readyz", None).await;
    assert_eq!(
        r.status, 200,
        "export is not on the decision path: {:?}",
        r.body
    );
}

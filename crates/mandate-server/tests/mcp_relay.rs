//! The MCP gateway relays the protocol, end to end with real peers on both sides: the
//! official Python SDK (PyPI `mcp` 2.x) as the agent's client
//! (`tests/fixtures/mcp_relay_client.py`, its default `Client`) and as the server
//! (`tests/fixtures/mcp_relay_server.py`, its low-level `Server`), started by Mandate as a
//! stdio child (`relay`) or reached over streamable HTTP (`remote`).
//!
//! Needs the Python with `mcp` from `scripts/install-identity-peers.sh`
//! (`MANDATE_TEST_IDENTITY_PYTHON`, or `target/identity-venv` when it was built); without
//! it each test says so and passes, except under CI (`CI` set), where it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{ADMIN, Harness};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// Longest wait for any one answer or event from a peer: a liveness bound, never a
/// threshold under test.
const WAIT: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The Python with the SDK: `MANDATE_TEST_IDENTITY_PYTHON`, else the virtualenv
/// `scripts/install-identity-peers.sh` builds. `None` (the test is skipped, saying so)
/// only when neither is there and this is not CI.
fn python(test: &str) -> Option<PathBuf> {
    if std::env::var_os("MANDATE_TEST_IDENTITY_PYTHON").is_none() {
        let venv =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/identity-venv/bin/python");
        if venv.exists() {
            return Some(venv);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI must run the MCP relay tests: set MANDATE_TEST_IDENTITY_PYTHON \
             (bash scripts/install-identity-peers.sh)"
        );
    }
    common::identity_python(test, "mcp_relay")
}

/// How Mandate reaches the relay fixture.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `relay`: a child process Mandate starts (a new one per upstream session).
    Stdio,
    /// `remote`: one process serving streamable HTTP on loopback.
    Http,
}

/// The relay fixture serving streamable HTTP on a loopback port of its choosing, recording
/// what it receives in `log`; (process, port).
async fn http_fixture(python: &Path, log: &Path) -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new(python)
        .arg(fixture("mcp_relay_server.py"))
        .arg(log)
        .args(["--http", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{} cannot run: {e}", python.display()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the HTTP server did not start")
        .unwrap()
        .expect("the HTTP server exited");
    let port = serde_json::from_str::<Value>(&first).unwrap()["listening"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap();
    (child, port)
}

/// Mandate in front of the relay fixture, as `relay` (stdio) or `remote` (streamable HTTP).
struct Relay {
    h: Harness,
    python: PathBuf,
    server: &'static str,
    /// Where a remote server is (a task must be granted it).
    destination: Option<String>,
    /// What the server received, one JSON line per request.
    log: PathBuf,
    _http: Option<tokio::process::Child>,
    _dir: tempfile::TempDir,
    approvers: std::sync::atomic::AtomicUsize,
}

impl Relay {
    async fn start(python: PathBuf, transport: Transport) -> Self {
        Self::start_with(python, transport, "").await
    }

    /// As [`Relay::start`], with more gateway configuration.
    async fn start_with(python: PathBuf, transport: Transport, extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("received.jsonl");
        let script = fixture("mcp_relay_server.py");
        let (server, mut toml, http, destination) = match transport {
            Transport::Stdio => (
                "relay",
                format!(
                    "[[mcp_server]]\nname = \"relay\"\ncommand = [{:?}, {:?}, {:?}]\n\n",
                    python.display().to_string(),
                    script.display().to_string(),
                    log.display().to_string()
                ),
                None,
                None,
            ),
            Transport::Http => {
                let (child, port) = http_fixture(&python, &log).await;
                (
                    "remote",
                    format!(
                        "[[mcp_server]]\nname = \"remote\"\nurl = \"http://127.0.0.1:{port}/mcp\"\nallow_private = true\n\n"
                    ),
                    Some(child),
                    Some(format!("127.0.0.1:{port}")),
                )
            }
        };
        toml.push_str(extra_toml);
        let cfg = mandate_gateway::GatewayConfig::from_toml(&toml).unwrap();
        let h = Harness::start_configured(&fixture("mcp-relay-policies"), |c| {
            c.gateway = Some(Arc::new(cfg));
        })
        .await;
        Self {
            h,
            python,
            server,
            destination,
            log,
            _http: http,
            _dir: dir,
            approvers: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The policy names of `tools` on this server (`<server>.<tool>`).
    fn names(&self, tools: &[&str]) -> Vec<String> {
        tools
            .iter()
            .map(|t| format!("{}.{t}", self.server))
            .collect()
    }

    /// A task of a new agent named `agent` granted `tools` of this server (read and
    /// write, as policy allows); (id, token).
    async fn task(&self, agent: &str, tools: &[&str]) -> (String, String) {
        let identity = self.h.agent(agent, 1).await;
        let r = self
            .h
            .post(
                "/v1/tasks",
                Some(&identity),
                json!({
                    "purpose": "exercise the MCP relay",
                    "scope": { "tools": self.names(tools), "actions": ["read", "write"],
                               "destinations": self.destination.iter().collect::<Vec<_>>() },
                    "ttl_secs": 600,
                }),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (
            r.body["task_id"].as_str().unwrap().to_owned(),
            r.body["task_token"].as_str().unwrap().to_owned(),
        )
    }

    /// The agent's client on this server's `/mcp/<server>`, with the SDK's protocol
    /// selection `mode` and the callbacks named in `callbacks`.
    async fn client(&self, token: &str, mode: &str, callbacks: &str) -> Agent {
        self.client_with(token, mode, callbacks, &[]).await
    }

    async fn client_with(&self, token: &str, mode: &str, callbacks: &str, more: &[&str]) -> Agent {
        let mut args = vec![
            self.h.url(&format!("/mcp/{}", self.server)),
            token.to_owned(),
            "--mode".to_owned(),
            mode.to_owned(),
            "--callbacks".to_owned(),
            callbacks.to_owned(),
        ];
        args.extend(more.iter().map(|s| (*s).to_owned()));
        Agent::start(&self.python, &args).await
    }

    /// What the server received so far, one request a line (a line still being written
    /// is left for the next look).
    fn received(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The requests of `method` the server received.
    fn received_of(&self, method: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r["method"] == method)
            .collect()
    }

    async fn events(&self, task: &str) -> Vec<Value> {
        self.h
            .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
            .await
            .body
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits (bounded) for an audit event of `task` satisfying `pred`: some are appended
    /// after the answer.
    async fn event(&self, task: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let events = self.events(task).await;
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} in the audit trail of {task}: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Approves `id` as a new approver (a human, not the agent's owner).
    async fn approve(&self, id: &str) {
        let n = self
            .approvers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = self
            .h
            .post(
                "/v1/approvers",
                Some(ADMIN),
                json!({ "name": format!("approver{n}@example.com"), "roles": ["approver"] }),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let token = r.body["token"].as_str().unwrap().to_owned();
        let a = self
            .h
            .post(
                &format!("/v1/approvals/{id}/approve"),
                Some(&token),
                json!({}),
            )
            .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
}

/// The agent's client process: one JSON command per line in, one JSON line per answer
/// or event out (see the fixture's docstring).
struct Agent {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    stderr: Arc<std::sync::Mutex<String>>,
    /// Every line read so far, in order.
    seen: Vec<Value>,
    next: u64,
    /// The `connected` event.
    hello: Value,
}

impl Agent {
    async fn start(python: &Path, args: &[String]) -> Self {
        let mut child = tokio::process::Command::new(python)
            .arg(fixture("mcp_relay_client.py"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} cannot run: {e}", python.display()));
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                let v = serde_json::from_str(&l).unwrap_or(Value::String(l));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(l)) = err.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let mut agent = Self {
            _child: child,
            stdin,
            lines,
            stderr,
            seen: Vec::new(),
            next: 0,
            hello: Value::Null,
        };
        agent.hello = agent
            .wait_for("connection", |v| {
                v["event"] == "connected" || v["event"] == "failed"
            })
            .await;
        assert_eq!(agent.hello["event"], "connected", "{}", agent.hello);
        agent
    }

    /// The first line (seen before or still to come) satisfying `pred`, waiting at most
    /// [`WAIT`]; every line is kept in `seen`.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "the agent's client gave no {what} (it exited, or nothing came in {WAIT:?}).\nseen: {:#?}\nstderr: {}",
                    self.seen,
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Sends a command; its id.
    async fn send(&mut self, mut cmd: Value) -> u64 {
        self.next += 1;
        cmd["id"] = json!(self.next);
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        self.next
    }

    /// The whole answer line of command `id` (`ok` or `error`, and for a call its
    /// `progress` and `logs`).
    async fn answer_line(&mut self, id: u64) -> Value {
        self.wait_for(&format!("answer to command {id}"), |v| {
            v["id"] == id && v.get("event").is_none()
        })
        .await
    }

    /// The answer to command `id`: `Ok(result)` or `Err(error)`.
    async fn answer(&mut self, id: u64) -> Result<Value, Value> {
        let v = self.answer_line(id).await;
        match v.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => Err(v["error"].clone()),
        }
    }

    async fn run(&mut self, cmd: Value) -> Result<Value, Value> {
        let id = self.send(cmd).await;
        self.answer(id).await
    }

    /// Runs a command that must succeed; its result.
    async fn ok(&mut self, cmd: Value) -> Value {
        let what = cmd.to_string();
        self.run(cmd)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e}"))
    }

    /// Runs a command that must fail; its error.
    async fn err(&mut self, cmd: Value) -> Value {
        let what = cmd.to_string();
        match self.run(cmd).await {
            Err(e) => e,
            Ok(r) => panic!("{what} succeeded: {r}"),
        }
    }

    /// Calls a tool (the call itself must not fail at the protocol level); the answer line:
    /// `ok` (the result), `progress`, `logs`.
    async fn call(&mut self, name: &str, arguments: Value, meta: Option<Value>) -> Value {
        let mut cmd =
            json!({ "op": "call", "name": name, "arguments": arguments, "progress": true });
        if let Some(m) = meta {
            cmd["meta"] = m;
        }
        let id = self.send(cmd).await;
        let line = self.answer_line(id).await;
        assert!(line.get("ok").is_some(), "tools/call {name} failed: {line}");
        line
    }

    /// Lines seen so far that are events of `kind`.
    fn events(&self, kind: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|v| v["event"] == kind)
            .cloned()
            .collect()
    }
}

/// A tool result's text.
fn text(r: &Value) -> String {
    r["content"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

/// A tool result's text as JSON.
fn text_json(r: &Value) -> Value {
    serde_json::from_str(&text(r)).unwrap_or_else(|e| panic!("{e}: {r}"))
}

/// The audit trail's decision on `tool`, if any.
fn decision<'a>(events: &'a [Value], tool: &str) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["kind"] == "decision" && e["data"]["tool"] == tool)
}

/// The audit trail's decisions, as (tool, outcome).
fn decided(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] == "decision")
        .map(|e| {
            (
                e["data"]["tool"].as_str().unwrap_or_default().to_owned(),
                e["data"]["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The approval id a held call names in its structured content (a tool error) or error
/// data (an MCP error).
fn approval_id(held: &Value) -> String {
    let m = if held["structuredContent"].is_object() {
        &held["structuredContent"]["mandate"]
    } else {
        &held["data"]["mandate"]
    };
    assert_eq!(m["outcome"], "approval_required", "{held}");
    m["approval"]["id"].as_str().unwrap().to_owned()
}

/// The SDK's protocol selection for each revision: the initialize handshake negotiates
/// 2025-11-25 (its newest handshake revision); 2026-07-28 is adopted per request.
const REVISIONS: [(&str, &str); 2] = [("legacy", "2025-11-25"), ("2026-07-28", "2026-07-28")];

/// Every tool and pseudo-tool of the fixture.
const EVERYTHING: [&str; 15] = [
    "progress",
    "chatty",
    "ask_model",
    "ask_user",
    "ask_roots",
    "meta",
    "touch",
    "pid",
    "weather",
    "deploy",
    "sampling",
    "elicitation",
    "roots",
    "resources",
    "prompts",
];

/// Its tools only: no pseudo-tools.
const TOOLS_ONLY: [&str; 5] = ["progress", "chatty", "ask_model", "ask_user", "ask_roots"];

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Five calls of a tool that reports four steps of progress: the agent's own progress
/// callback (the SDK matches the token it chose) must have had every step, in order, when
/// each result came. What was wrong, if anything.
async fn progress_checks(agent: &mut Agent) -> Vec<String> {
    let mut wrong = Vec::new();
    for round in 0..5 {
        let line = agent.call("progress", json!({ "steps": 4 }), None).await;
        assert_eq!(text(&line["ok"]), "counted to 4", "{line}");
        let steps: Vec<Value> = line["progress"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| json!([p["progress"], p["total"], p["message"]]))
            .collect();
        let want: Vec<Value> = (1..=4)
            .map(|i| json!([f64::from(i), 4.0, format!("step {i}")]))
            .collect();
        if steps != want {
            wrong.push(format!(
                "call {round}: the agent's progress callback had {} when the result came (want all four steps, in order)",
                Value::from(steps)
            ));
        }
    }
    if !wrong.is_empty() {
        // Steps the callback missed still reached the client, as notifications it could
        // no longer match to a call in flight (they came after its result).
        let raw = agent
            .seen
            .iter()
            .filter(|v| v["method"] == "notifications/progress")
            .count();
        let called = agent.events("progress").len();
        wrong.push(format!(
            "the client saw {raw} notifications/progress of the 20 the server sent; {called} reached a progress callback"
        ));
    }
    wrong
}

/// 2026-07-28 log messages are opted into per request: a call whose client stamped
/// `warning` gets the messages at or above it, on its own stream (before its result), and
/// no others. Three calls, so that a message lost or late to a race shows.
async fn modern_log_checks(agent: &mut Agent) -> Vec<String> {
    let mut wrong = Vec::new();
    for round in 0..3 {
        let tag = format!("m{round}");
        let line = agent.call("chatty", json!({ "tag": tag }), None).await;
        assert_eq!(text(&line["ok"]), "chatted", "{line}");
        let levels: Vec<&str> = line["logs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["data"]["tag"] == tag.as_str())
            .filter_map(|l| l["level"].as_str())
            .collect();
        if levels != ["warning", "error"] {
            wrong.push(format!(
                "call {round}: log messages of a call that opted in at warning, as they came before its result: {levels:?} (want [\"warning\", \"error\"])"
            ));
        }
    }
    wrong
}

/// 2025-11-25: the server's log messages, every level it sends, reach the agent's logging
/// callback (on the session's standalone stream, so not necessarily before the result).
async fn legacy_log_checks(agent: &mut Agent, tag: &str, levels: &[&str]) {
    let line = agent.call("chatty", json!({ "tag": tag }), None).await;
    assert_eq!(text(&line["ok"]), "chatted", "{line}");
    for level in levels {
        let log = agent
            .wait_for(&format!("{level} log message tagged {tag}"), |v| {
                v["event"] == "log"
                    && v["params"]["data"]["tag"] == tag
                    && v["params"]["level"] == *level
            })
            .await;
        assert_eq!(log["params"]["logger"], "relay-fixture", "{log}");
    }
}

/// The server asks the agent's client to sample, to fill a form and for its roots, and
/// answers with what it got. What was wrong, if anything.
async fn round_trip_checks(agent: &mut Agent) -> Vec<String> {
    let mut wrong = Vec::new();
    let line = agent
        .call(
            "ask_model",
            json!({ "question": "why is the sky blue?" }),
            None,
        )
        .await;
    let r1 = &line["ok"];
    if r1["isError"] == true {
        wrong.push(format!("sampling: {}", text(r1)));
    } else {
        assert_eq!(
            text_json(r1),
            json!({ "model": "relay-test-model", "text": "sampled: why is the sky blue?" }),
            "{line}"
        );
        let asked = agent.events("sampling");
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert_eq!(
            asked[0]["params"]["messages"][0]["content"]["text"],
            "why is the sky blue?"
        );
        assert_eq!(asked[0]["params"]["maxTokens"], 50);
    }

    let line = agent
        .call("ask_user", json!({ "question": "favourite colour?" }), None)
        .await;
    let r2 = &line["ok"];
    if r2["isError"] == true {
        wrong.push(format!("elicitation: {}", text(r2)));
    } else {
        assert_eq!(
            text_json(r2),
            json!({ "action": "accept", "content": { "answer": "blue" } }),
            "{line}"
        );
        let asked = agent.events("elicitation");
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert_eq!(asked[0]["params"]["mode"], "form");
        assert_eq!(asked[0]["params"]["message"], "favourite colour?");
    }

    let line = agent.call("ask_roots", json!({}), None).await;
    let r3 = &line["ok"];
    if r3["isError"] == true {
        wrong.push(format!("roots: {}", text(r3)));
    } else {
        assert_eq!(
            text_json(r3),
            json!({ "roots": ["file:///work/project"] }),
            "{line}"
        );
        assert_eq!(agent.events("roots").len(), 1);
    }
    wrong
}

/// The same client and server, without Mandate between them, meet every expectation the
/// relay tests hold Mandate to (progress, log messages, sampling, elicitation, roots), at
/// both revisions: a failure of those tests is Mandate's.
async fn the_peers_meet_the_expectations_without_mandate(test: &str, mode: &str, revision: &str) {
    let Some(python) = python(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = http_fixture(&python, &dir.path().join("received.jsonl")).await;
    let mut args = vec![
        format!("http://127.0.0.1:{port}/mcp"),
        "no-token".to_owned(),
        "--mode".to_owned(),
        mode.to_owned(),
        "--callbacks".to_owned(),
        "sampling,elicitation,roots".to_owned(),
    ];
    let modern = revision == "2026-07-28";
    if modern {
        args.extend(["--log-level".to_owned(), "warning".to_owned()]);
    }
    let mut agent = Agent::start(&python, &args).await;
    assert_eq!(agent.hello["protocol_version"], revision, "{}", agent.hello);
    let mut wrong = progress_checks(&mut agent).await;
    if modern {
        wrong.extend(modern_log_checks(&mut agent).await);
    } else {
        legacy_log_checks(&mut agent, "a", &["debug", "info", "warning", "error"]).await;
    }
    wrong.extend(round_trip_checks(&mut agent).await);
    assert!(wrong.is_empty(), "at {revision}:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn the_peers_meet_the_expectations_without_mandate_at_2025_11_25() {
    let (mode, revision) = REVISIONS[0];
    the_peers_meet_the_expectations_without_mandate(
        "the_peers_meet_the_expectations_without_mandate_at_2025_11_25",
        mode,
        revision,
    )
    .await;
}

#[tokio::test]
async fn the_peers_meet_the_expectations_without_mandate_at_2026_07_28() {
    let (mode, revision) = REVISIONS[1];
    the_peers_meet_the_expectations_without_mandate(
        "the_peers_meet_the_expectations_without_mandate_at_2026_07_28",
        mode,
        revision,
    )
    .await;
}

/// Progress a tool reports reaches the agent's own progress callback (Mandate maps its
/// token to the agent's), every step and before the result; log messages reach the
/// agent's logging callback (2026-07-28: as the request opted in); `logging/setLevel` and
/// `_meta` (trace context, anything but Mandate's own keys) reach the server.
async fn progress_and_log_messages_are_relayed(test: &str, mode: &str, revision: &str) {
    let Some(python) = python(test) else {
        return;
    };
    let r = Relay::start(python, Transport::Stdio).await;
    let (_, token) = r.task("watcher", &EVERYTHING).await;
    let modern = revision == "2026-07-28";
    // On 2026-07-28 log messages are opted into per request (the SDK stamps the level).
    let more: &[&str] = if modern {
        &["--log-level", "warning"]
    } else {
        &[]
    };
    let mut agent = r.client_with(&token, mode, "", more).await;
    assert_eq!(agent.hello["protocol_version"], revision, "{}", agent.hello);

    let mut wrong = progress_checks(&mut agent).await;
    assert_eq!(r.received_of("tools/call").len(), 5);
    if modern {
        wrong.extend(modern_log_checks(&mut agent).await);
    } else {
        legacy_log_checks(&mut agent, "a", &["debug", "info", "warning", "error"]).await;
        // The agent's level reaches the server, which then sends less.
        agent
            .ok(json!({ "op": "set_level", "level": "warning" }))
            .await;
        let set = r.received_of("logging/setLevel");
        assert_eq!(set.len(), 1, "{set:?}");
        assert_eq!(set[0]["params"]["level"], "warning");
        legacy_log_checks(&mut agent, "b", &["warning", "error"]).await;
        let below: Vec<Value> = agent
            .events("log")
            .into_iter()
            .filter(|v| {
                v["params"]["data"]["tag"] == "b"
                    && (v["params"]["level"] == "debug" || v["params"]["level"] == "info")
            })
            .collect();
        assert!(below.is_empty(), "{below:?}");
    }

    // `_meta`: the trace context and the agent's own keys go on; Mandate's do not.
    let meta = json!({ "traceparent": TRACEPARENT, "example.com/note": "kept", "mandate/note": "dropped" });
    let line = agent.call("meta", json!({}), Some(meta)).await;
    assert_ne!(line["ok"]["isError"], true, "{line}");
    let got = r
        .received_of("tools/call")
        .into_iter()
        .find(|c| c["params"]["name"] == "meta")
        .unwrap();
    let sent = &got["params"]["_meta"];
    assert_eq!(sent["example.com/note"], "kept", "{got}");
    let trace = sent["traceparent"].as_str().unwrap_or_default();
    assert!(
        trace.contains("0af7651916cd43dd8448eb211c80319c"),
        "the server's request is not in the agent's trace: {got}"
    );
    for key in sent.as_object().unwrap().keys() {
        assert!(
            !key.starts_with("mandate/"),
            "{key} reached the server: {got}"
        );
    }
    assert!(wrong.is_empty(), "at {revision}:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn progress_and_log_messages_are_relayed_at_2025_11_25() {
    let (mode, revision) = REVISIONS[0];
    progress_and_log_messages_are_relayed(
        "progress_and_log_messages_are_relayed_at_2025_11_25",
        mode,
        revision,
    )
    .await;
}

#[tokio::test]
async fn progress_and_log_messages_are_relayed_at_2026_07_28() {
    let (mode, revision) = REVISIONS[1];
    progress_and_log_messages_are_relayed(
        "progress_and_log_messages_are_relayed_at_2026_07_28",
        mode,
        revision,
    )
    .await;
}

/// A server's sampling, elicitation and roots requests, decided as reads of
/// `<server>.sampling`, `.elicitation` and `.roots`, reach the agent's SDK callbacks and
/// their answers reach the server.
async fn server_requests_round_trip_when_granted(
    test: &str,
    mode: &str,
    revision: &str,
    transport: Transport,
) {
    let Some(python) = python(test) else {
        return;
    };
    let r = Relay::start(python, transport).await;
    let (task, token) = r.task("asker", &EVERYTHING).await;
    let mut agent = r.client(&token, mode, "sampling,elicitation,roots").await;
    assert_eq!(agent.hello["protocol_version"], revision, "{}", agent.hello);
    let mut wrong = round_trip_checks(&mut agent).await;

    // Each was decided, and allowed, as a read of the pseudo-tool (decisions are in the
    // audit trail before anything is sent on).
    let events = r.events(&task).await;
    for what in ["sampling", "elicitation", "roots"] {
        let tool = format!("{}.{what}", r.server);
        match decision(&events, &tool) {
            Some(d) => {
                assert_eq!(d["data"]["outcome"], "allow", "{d}");
                assert_eq!(d["data"]["action"], "read", "{d}");
            }
            None => wrong.push(format!(
                "no decision on {tool} in the audit trail (decisions: {:?})",
                decided(&events)
            )),
        }
    }
    assert!(wrong.is_empty(), "at {revision}:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn sampling_elicitation_and_roots_round_trip_at_2025_11_25() {
    let (mode, revision) = REVISIONS[0];
    server_requests_round_trip_when_granted(
        "sampling_elicitation_and_roots_round_trip_at_2025_11_25",
        mode,
        revision,
        Transport::Stdio,
    )
    .await;
}

#[tokio::test]
async fn sampling_elicitation_and_roots_round_trip_at_2026_07_28() {
    let (mode, revision) = REVISIONS[1];
    server_requests_round_trip_when_granted(
        "sampling_elicitation_and_roots_round_trip_at_2026_07_28",
        mode,
        revision,
        Transport::Stdio,
    )
    .await;
}

#[tokio::test]
async fn sampling_elicitation_and_roots_round_trip_over_streamable_http() {
    let (mode, revision) = REVISIONS[0];
    server_requests_round_trip_when_granted(
        "sampling_elicitation_and_roots_round_trip_over_streamable_http",
        mode,
        revision,
        Transport::Http,
    )
    .await;
}

/// Without `<server>.sampling` (.elicitation, .roots) in the grant, the server's request
/// is refused with an error it can read, and the agent's client is never asked.
async fn server_requests_are_refused_outside_the_grant(test: &str, mode: &str, revision: &str) {
    let Some(python) = python(test) else {
        return;
    };
    let r = Relay::start(python, Transport::Stdio).await;
    let (task, token) = r.task("tools-only", &TOOLS_ONLY).await;
    let mut agent = r.client(&token, mode, "sampling,elicitation,roots").await;
    assert_eq!(agent.hello["protocol_version"], revision, "{}", agent.hello);
    for (tool, what) in [
        ("ask_model", "sampling"),
        ("ask_user", "elicitation"),
        ("ask_roots", "roots"),
    ] {
        let line = agent
            .call(tool, json!({ "question": "anything?" }), None)
            .await;
        let t = text(&line["ok"]);
        assert_eq!(line["ok"]["isError"], true, "{line}");
        assert!(
            t.contains(&format!("relay.{what}")) && t.contains("not in this task's grant"),
            "{what}: {t}"
        );
        let tool = format!("relay.{what}");
        let events = r.events(&task).await;
        let d = decision(&events, &tool).unwrap_or_else(|| {
            panic!(
                "no decision on {tool} in the audit trail (decisions: {:?})",
                decided(&events)
            )
        });
        assert_eq!(d["data"]["outcome"], "deny", "{d}");
    }
    for kind in ["sampling", "elicitation", "roots"] {
        assert!(agent.events(kind).is_empty(), "{:?}", agent.events(kind));
    }
}

#[tokio::test]
async fn server_requests_are_refused_outside_the_grant_at_2025_11_25() {
    let (mode, revision) = REVISIONS[0];
    server_requests_are_refused_outside_the_grant(
        "server_requests_are_refused_outside_the_grant_at_2025_11_25",
        mode,
        revision,
    )
    .await;
}

#[tokio::test]
async fn server_requests_are_refused_outside_the_grant_at_2026_07_28() {
    let (mode, revision) = REVISIONS[1];
    server_requests_are_refused_outside_the_grant(
        "server_requests_are_refused_outside_the_grant_at_2026_07_28",
        mode,
        revision,
    )
    .await;
}

/// A client that can show a URL (its SDK declares URL elicitation) on 2025-11-25 is
/// sent the approval page as a URL elicitation named by the approval id; the test
/// approves as a human when it arrives, the client accepts, and the call goes on. A
/// declined elicitation leaves the call held, naming its approval.
#[tokio::test]
async fn a_held_call_is_approved_through_url_elicitation() {
    let Some(python) = python("a_held_call_is_approved_through_url_elicitation") else {
        return;
    };
    let r = Relay::start(python, Transport::Stdio).await;
    let (task, token) = r.task("deployer", &EVERYTHING).await;
    let mut agent = r.client(&token, "legacy", "elicitation").await;
    assert_eq!(agent.hello["protocol_version"], "2025-11-25");

    let id = agent
        .send(json!({ "op": "call", "name": "deploy", "arguments": { "env": "prod" } }))
        .await;
    let asked = agent
        .wait_for("URL elicitation", |v| v["event"] == "elicitation")
        .await;
    let p = &asked["params"];
    assert_eq!(p["mode"], "url", "{asked}");
    let approval = p["elicitationId"].as_str().unwrap().to_owned();
    assert!(approval.starts_with("apr_"), "{asked}");
    assert_eq!(
        p["url"].as_str().unwrap(),
        r.h.url(&format!("/v1/approvals/{approval}")),
        "{asked}"
    );
    assert!(
        r.received_of("tools/call").is_empty(),
        "nothing is forwarded before a human decides"
    );
    r.approve(&approval).await;
    agent
        .ok(json!({ "op": "elicit_reply", "elicitation_id": approval, "action": "accept" }))
        .await;
    let result = agent.answer(id).await.unwrap();
    assert_ne!(result["isError"], true, "{result}");
    assert_eq!(text(&result), "deployed to prod", "{result}");
    let calls = r.received_of("tools/call");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["params"]["arguments"], json!({ "env": "prod" }));
    let d = r
        .event(&task, "the approved decision", |e| {
            e["kind"] == "decision"
                && e["data"]["tool"] == "relay.deploy"
                && e["data"]["outcome"] == "allow"
        })
        .await;
    assert_eq!(d["data"]["action"], "write", "{d}");

    // Declined: the call stays held and says which approval it waits for.
    let id = agent
        .send(json!({ "op": "call", "name": "deploy", "arguments": { "env": "staging" } }))
        .await;
    let asked = agent
        .wait_for("second URL elicitation", |v| {
            v["event"] == "elicitation" && v["params"]["elicitationId"] != approval.as_str()
        })
        .await;
    let second = asked["params"]["elicitationId"]
        .as_str()
        .unwrap()
        .to_owned();
    agent
        .ok(json!({ "op": "elicit_reply", "elicitation_id": second, "action": "decline" }))
        .await;
    let result = agent.answer(id).await.unwrap();
    assert_eq!(result["isError"], true, "{result}");
    assert_eq!(approval_id(&result), second);
    assert!(text(&result).contains(&second), "{result}");
    assert_eq!(
        r.received_of("tools/call").len(),
        1,
        "the declined call was forwarded"
    );
}

/// A held call is a tool error naming its approval; once a human approves, repeating it
/// with `_meta {"mandate/approval_id"}` goes through, once. On 2026-07-28 the gateway may
/// not ask the client anything, so this is the way even for a client that declares URL
/// elicitation.
async fn a_held_call_goes_through_with_its_approval_in_meta(
    test: &str,
    mode: &str,
    revision: &str,
    callbacks: &str,
) {
    let Some(python) = python(test) else {
        return;
    };
    let r = Relay::start(python, Transport::Stdio).await;
    let (_, token) = r.task("deployer", &EVERYTHING).await;
    let mut agent = r.client(&token, mode, callbacks).await;
    assert_eq!(agent.hello["protocol_version"], revision, "{}", agent.hello);
    let args = json!({ "env": "prod" });
    let line = agent.call("deploy", args.clone(), None).await;
    let held = &line["ok"];
    assert_eq!(held["isError"], true, "{line}");
    let id = approval_id(held);
    assert!(text(held).contains(&id), "{held}");
    assert!(
        agent.events("elicitation").is_empty(),
        "{:?}",
        agent.events("elicitation")
    );
    assert!(
        r.received_of("tools/call").is_empty(),
        "held: not forwarded"
    );

    r.approve(&id).await;
    let meta = json!({ "mandate/approval_id": id });
    let line = agent.call("deploy", args.clone(), Some(meta.clone())).await;
    assert_ne!(line["ok"]["isError"], true, "{line}");
    assert_eq!(text(&line["ok"]), "deployed to prod");
    // Once.
    let again = agent
        .run(json!({ "op": "call", "name": "deploy", "arguments": args, "meta": meta }))
        .await;
    assert!(
        again.is_err() || again.as_ref().is_ok_and(|r| r["isError"] == true),
        "{again:?}"
    );
    assert_eq!(r.received_of("tools/call").len(), 1);
}

#[tokio::test]
async fn a_held_call_goes_through_with_its_approval_in_meta_at_2025_11_25() {
    let (mode, revision) = REVISIONS[0];
    a_held_call_goes_through_with_its_approval_in_meta(
        "a_held_call_goes_through_with_its_approval_in_meta_at_2025_11_25",
        mode,
        revision,
        "",
    )
    .await;
}

#[tokio::test]
async fn a_held_call_goes_through_with_its_approval_in_meta_at_2026_07_28() {
    let (mode, revision) = REVISIONS[1];
    a_held_call_goes_through_with_its_approval_in_meta(
        "a_held_call_goes_through_with_its_approval_in_meta_at_2026_07_28",
        mode,
        revision,
        "elicitation",
    )
    .await;
}

/// `prompts/get` and `resources/read` held for a human answer an MCP error naming the
/// approval; repeated with it in `_meta` after approval they reach the server, once.
async fn prompt_and_resource_approvals_in_meta(test: &str, mode: &str, revision: &str) {
    let Some(python) = python(test) else {
        return;
    };
    let r = Relay::start(python, Transport::Stdio).await;
    let (_, token) = r.task("reader", &EVERYTHING).await;
    let mut agent = r.client(&token, mode, "").await;
    assert_eq!(agent.hello["protocol_version"], revision, "{}", agent.hello);

    // Not held: straight through.
    let p = agent
        .ok(json!({ "op": "get_prompt", "name": "greet", "arguments": { "name": "ada" } }))
        .await;
    assert_eq!(p["messages"][0]["content"]["text"], "greet, ada!", "{p}");
    let m = agent.ok(json!({ "op": "read", "uri": "memo://1" })).await;
    assert_eq!(m["contents"][0]["text"], "contents of memo://1", "{m}");

    let cases = [
        (
            json!({ "op": "get_prompt", "name": "farewell", "arguments": { "name": "ada" } }),
            "prompts/get",
        ),
        (json!({ "op": "read", "uri": "memo://5" }), "resources/read"),
    ];
    for (cmd, method) in cases {
        let before = r.received_of(method).len();
        let held = agent.err(cmd.clone()).await;
        let id = approval_id(&held);
        assert!(held["message"].as_str().unwrap().contains(&id), "{held}");
        assert_eq!(
            r.received_of(method).len(),
            before,
            "{method} held: not forwarded"
        );
        r.approve(&id).await;
        let mut with = cmd.clone();
        with["meta"] = json!({ "mandate/approval_id": id });
        let got = agent.ok(with.clone()).await;
        if method == "prompts/get" {
            assert_eq!(
                got["messages"][0]["content"]["text"], "farewell, ada!",
                "{got}"
            );
        } else {
            assert_eq!(got["contents"][0]["text"], "contents of memo://5", "{got}");
        }
        assert_eq!(r.received_of(method).len(), before + 1);
        let again = agent.err(with).await;
        assert!(
            again["message"].as_str().unwrap().contains("approval_used"),
            "{again}"
        );
        assert_eq!(r.received_of(method).len(), before + 1, "used twice");
    }
}

#[tokio::test]
async fn prompt_and_resource_approvals_in_meta_at_2025_11_25() {
    let (mode, revision) = REVISIONS[0];
    prompt_and_resource_approvals_in_meta(
        "prompt_and_resource_approvals_in_meta_at_2025_11_25",
        mode,
        revision,
    )
    .await;
}

#[tokio::test]
async fn prompt_and_resource_approvals_in_meta_at_2026_07_28() {
    let (mode, revision) = REVISIONS[1];
    prompt_and_resource_approvals_in_meta(
        "prompt_and_resource_approvals_in_meta_at_2026_07_28",
        mode,
        revision,
    )
    .await;
}

/// Tools, resources, templates and prompts are listed as the grant allows: without
/// `<server>.resources` / `.prompts` their listings are empty and reading, completing
/// and subscribing are refused, reaching nothing; with them, the server's listings are
/// relayed page by page with its cursors, completion and (2025-11-25) subscriptions work
/// and its change notifications reach the agent.
async fn listings_follow_the_grant(test: &str, mode: &str, revision: &str) {
    let Some(python) = python(test) else {
        return;
    };
    let r = Relay::start(python, Transport::Stdio).await;
    let modern = revision == "2026-07-28";
    let (bare_task, bare) = r.task("tools-only", &TOOLS_ONLY).await;
    let mut agent = r.client(&bare, mode, "").await;
    assert_eq!(agent.hello["protocol_version"], revision, "{}", agent.hello);
    let tools = agent.ok(json!({ "op": "list_tools" })).await;
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, TOOLS_ONLY, "{tools}");
    for (op, field) in [
        ("list_resources", "resources"),
        ("list_templates", "resourceTemplates"),
        ("list_prompts", "prompts"),
    ] {
        let l = agent.ok(json!({ "op": op })).await;
        assert_eq!(l[field], json!([]), "{op}: {l}");
        assert!(l.get("nextCursor").is_none(), "{op}: {l}");
    }
    let e = agent.err(json!({ "op": "read", "uri": "memo://1" })).await;
    assert!(
        e["message"].as_str().unwrap().contains("relay.resources"),
        "{e}"
    );
    let e = agent
        .err(json!({ "op": "get_prompt", "name": "greet", "arguments": { "name": "ada" } }))
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("relay.prompts"),
        "{e}"
    );
    let e = agent
        .err(
            json!({ "op": "complete", "ref": { "type": "ref/prompt", "name": "greet" },
                      "argument": { "name": "name", "value": "a" } }),
        )
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("outside_grant"),
        "{e}"
    );
    let e = agent
        .err(json!({ "op": "complete", "ref": { "type": "ref/resource", "uri": "memo://notes/{name}" },
                      "argument": { "name": "name", "value": "g" } }))
        .await;
    assert!(
        e["message"].as_str().unwrap().contains("outside_grant"),
        "{e}"
    );
    if !modern {
        let e = agent
            .err(json!({ "op": "subscribe", "uri": "memo://1" }))
            .await;
        assert!(
            e["message"].as_str().unwrap().contains("outside_grant"),
            "{e}"
        );
    }
    let reached: Vec<Value> = r
        .received()
        .into_iter()
        .filter(|q| q["method"] != "tools/list")
        .collect();
    assert!(
        reached.is_empty(),
        "refused requests reached the server: {reached:?}"
    );
    let listed = r
        .event(&bare_task, "mcp.request for resources/list", |e| {
            e["kind"] == "mcp.request" && e["data"]["method"] == "resources/list"
        })
        .await;
    assert_eq!(listed["data"]["shown"], json!([]), "{listed}");

    // Granted: the server's pages, cursors and all.
    let (_, full) = r.task("reader", &EVERYTHING).await;
    let mut agent = r.client(&full, mode, "").await;
    let mut uris = Vec::new();
    let mut cursors = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = agent
            .ok(json!({ "op": "list_resources", "cursor": cursor }))
            .await;
        uris.extend(
            page["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["uri"].clone()),
        );
        match page.get("nextCursor") {
            Some(c) if cursors.len() < 5 => {
                cursors.push(c.clone());
                cursor = c.clone();
            }
            _ => break,
        }
    }
    assert_eq!(
        uris,
        ["memo://1", "memo://2", "memo://3", "memo://4", "memo://5"],
        "{cursors:?}"
    );
    assert_eq!(cursors, ["2", "4"]);
    let t = agent.ok(json!({ "op": "list_templates" })).await;
    assert_eq!(
        t["resourceTemplates"][0]["uriTemplate"], "memo://notes/{name}",
        "{t}"
    );
    let p1 = agent.ok(json!({ "op": "list_prompts" })).await;
    assert_eq!(p1["prompts"][0]["name"], "greet", "{p1}");
    assert_eq!(p1["nextCursor"], "1", "{p1}");
    let p2 = agent
        .ok(json!({ "op": "list_prompts", "cursor": "1" }))
        .await;
    assert_eq!(p2["prompts"][0]["name"], "farewell", "{p2}");
    assert!(p2.get("nextCursor").is_none(), "{p2}");
    let note = agent
        .ok(json!({ "op": "read", "uri": "memo://notes/ada" }))
        .await;
    assert_eq!(note["contents"][0]["text"], "contents of memo://notes/ada");
    let c = agent
        .ok(
            json!({ "op": "complete", "ref": { "type": "ref/prompt", "name": "greet" },
                     "argument": { "name": "name", "value": "a" } }),
        )
        .await;
    assert_eq!(c["completion"]["values"], json!(["ada", "alan"]), "{c}");
    let c = agent
        .ok(json!({ "op": "complete", "ref": { "type": "ref/resource", "uri": "memo://notes/{name}" },
                     "argument": { "name": "name", "value": "g" } }))
        .await;
    assert_eq!(c["completion"]["values"], json!(["grace"]), "{c}");

    if !modern {
        agent
            .ok(json!({ "op": "subscribe", "uri": "memo://1" }))
            .await;
        assert_eq!(r.received_of("resources/subscribe").len(), 1);
        agent
            .call("touch", json!({ "uri": "memo://1" }), None)
            .await;
        let updated = agent
            .wait_for("resources/updated", |v| {
                v["event"] == "notification" && v["method"] == "notifications/resources/updated"
            })
            .await;
        assert_eq!(updated["params"]["uri"], "memo://1", "{updated}");
        for method in [
            "notifications/resources/list_changed",
            "notifications/prompts/list_changed",
            "notifications/tools/list_changed",
        ] {
            agent
                .wait_for(method, |v| {
                    v["event"] == "notification" && v["method"] == method
                })
                .await;
        }
        agent
            .ok(json!({ "op": "unsubscribe", "uri": "memo://1" }))
            .await;
        assert_eq!(r.received_of("resources/unsubscribe").len(), 1);
    }
}

#[tokio::test]
async fn listings_follow_the_grant_at_2025_11_25() {
    let (mode, revision) = REVISIONS[0];
    listings_follow_the_grant("listings_follow_the_grant_at_2025_11_25", mode, revision).await;
}

#[tokio::test]
async fn listings_follow_the_grant_at_2026_07_28() {
    let (mode, revision) = REVISIONS[1];
    listings_follow_the_grant("listings_follow_the_grant_at_2026_07_28", mode, revision).await;
}

/// Whether the process `pid` has exited (gone, or a zombie not yet reaped).
fn exited(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// A stdio server that dies is started again on the agent's next request, and the
/// restart is audited (`mcp_server.started`, restart true); a server that cannot start
/// is audited with its error.
#[tokio::test]
async fn a_killed_stdio_server_comes_back_and_is_audited() {
    let Some(python) = python("a_killed_stdio_server_comes_back_and_is_audited") else {
        return;
    };
    let r = Relay::start_with(
        python,
        Transport::Stdio,
        "[[mcp_server]]\nname = \"broken\"\ncommand = [\"/nonexistent/mcp-server\"]\n",
    )
    .await;
    let (task, token) = r.task("survivor", &EVERYTHING).await;

    // A server that cannot start: the agent gets an MCP error, the audit trail the cause.
    let mut broken = Agent::start(
        &r.python,
        &[
            r.h.url("/mcp/broken"),
            token.clone(),
            "--mode".to_owned(),
            "legacy".to_owned(),
            "--callbacks".to_owned(),
            String::new(),
        ],
    )
    .await;
    let e = broken.err(json!({ "op": "list_tools" })).await;
    assert!(
        e["message"].as_str().unwrap().contains("unavailable"),
        "{e}"
    );
    let failed = r
        .event(&task, "a failed start", |e| {
            e["kind"] == "mcp_server.started" && e["data"]["server"] == "broken"
        })
        .await;
    assert_eq!(failed["data"]["restart"], false, "{failed}");
    assert!(
        failed["data"]["failures_in_row"].as_u64().unwrap() >= 1,
        "{failed}"
    );
    assert!(
        failed["data"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{failed}"
    );

    let mut agent = r.client(&token, "legacy", "").await;
    let first = text_json(&agent.call("pid", json!({}), None).await["ok"])["pid"]
        .as_u64()
        .unwrap();
    // The same session keeps its process.
    let same = text_json(&agent.call("pid", json!({}), None).await["ok"])["pid"]
        .as_u64()
        .unwrap();
    assert_eq!(first, same);
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + WAIT;
    while !exited(first) {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {first} did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next request is served by a new process; so is the one after it.
    let mut answers = Vec::new();
    for _ in 0..2 {
        let id = agent
            .send(json!({ "op": "call", "name": "pid", "arguments": {} }))
            .await;
        answers.push(agent.answer_line(id).await);
    }
    assert!(
        answers.iter().all(|a| a.get("ok").is_some()),
        "after the server exited: {answers:?}"
    );
    let second = text_json(&answers[0]["ok"])["pid"].as_u64().unwrap();
    assert_ne!(first, second, "a new process answers");
    assert_eq!(text_json(&answers[1]["ok"])["pid"].as_u64(), Some(second));
    let started = r
        .event(&task, "mcp_server.started of relay", |e| {
            e["kind"] == "mcp_server.started" && e["data"]["server"] == "relay"
        })
        .await;
    assert_eq!(started["data"]["transport"], "stdio", "{started}");
    assert_eq!(started["data"]["restart"], true, "{started}");
    assert_eq!(started["data"]["failures_in_row"], 0, "{started}");
}

/// The agent meets the server it asked for: the server's own name, version, title,
/// instructions and capabilities, at the initialize handshake (2025-11-25) and at
/// `server/discover` (2026-07-28, the SDK's default `auto` selection).
async fn the_servers_own_identity_reaches_the_agent(test: &str, mode: &str, revision: &str) {
    let Some(python) = python(test) else {
        return;
    };
    let r = Relay::start(python, Transport::Stdio).await;
    let (_, token) = r.task("greeter", &EVERYTHING).await;
    let agent = r.client(&token, mode, "").await;
    let hello = &agent.hello;
    assert_eq!(hello["protocol_version"], revision, "{hello}");
    let mut wrong = Vec::new();
    if hello["server_info"]
        != json!({ "name": "relay-fixture", "title": "Relay fixture", "version": "7.1.0" })
    {
        wrong.push(format!("serverInfo: {}", hello["server_info"]));
    }
    if hello["instructions"] != "The relay fixture's own instructions." {
        wrong.push(format!("instructions: {}", hello["instructions"]));
    }
    let caps = &hello["capabilities"];
    for cap in ["tools", "resources", "prompts", "logging", "completions"] {
        if caps.get(cap).is_none() {
            wrong.push(format!("capability {cap} missing: {caps}"));
        }
    }
    if revision == "2025-11-25" {
        // What the fixture declares on this revision.
        if caps["resources"]["subscribe"] != true || caps["resources"]["listChanged"] != true {
            wrong.push(format!("resources capability: {caps}"));
        }
        if caps["prompts"]["listChanged"] != true {
            wrong.push(format!("prompts capability: {caps}"));
        }
    }
    assert!(wrong.is_empty(), "at {revision}:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn the_servers_own_identity_reaches_the_agent_at_2025_11_25() {
    the_servers_own_identity_reaches_the_agent(
        "the_servers_own_identity_reaches_the_agent_at_2025_11_25",
        "legacy",
        "2025-11-25",
    )
    .await;
}

#[tokio::test]
async fn the_servers_own_identity_reaches_the_agent_at_2026_07_28() {
    the_servers_own_identity_reaches_the_agent(
        "the_servers_own_identity_reaches_the_agent_at_2026_07_28",
        "auto",
        "2026-07-28",
    )
    .await;
}

/// A tool result relayed to a 2026-07-28 client validates in the SDK's default client:
/// it says it is complete (`resultType`), and its structured content matches the tool's
/// output schema (which the client learnt from the listing).
#[tokio::test]
async fn a_tool_result_validates_in_the_sdk_client_at_2026_07_28() {
    let Some(python) = python("a_tool_result_validates_in_the_sdk_client_at_2026_07_28") else {
        return;
    };
    let r = Relay::start(python, Transport::Stdio).await;
    let (task, token) = r.task("forecaster", &EVERYTHING).await;
    let mut agent = r.client(&token, "2026-07-28", "").await;
    assert_eq!(agent.hello["protocol_version"], "2026-07-28");
    let tools = agent.ok(json!({ "op": "list_tools" })).await;
    let weather = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "weather")
        .unwrap()
        .clone();
    assert!(weather["outputSchema"].is_object(), "{weather}");
    let line = agent.call("weather", json!({ "city": "Oslo" }), None).await;
    let result = &line["ok"];
    assert_eq!(result["resultType"], "complete", "{result}");
    assert_ne!(result["isError"], true, "{result}");
    assert_eq!(
        result["structuredContent"],
        json!({ "city": "Oslo", "celsius": 21.5 }),
        "{result}"
    );
    r.event(&task, "gateway.result", |e| {
        e["kind"] == "gateway.result" && e["data"]["protocol"] == "mcp"
    })
    .await;
}

/// What the server sends towards the agent outside an answer (here log messages) is masked
/// of the secrets Mandate gave it, as answers are: a stdio server given a secret that
/// logs it back reaches the agent without it.
#[tokio::test]
async fn log_messages_are_masked_of_the_servers_secrets() {
    let Some(python) = python("log_messages_are_masked_of_the_servers_secrets") else {
        return;
    };
    const SECRET: &str = "relay-secret-5f1e9a77";
    let r = Relay::start_with(
        python,
        Transport::Stdio,
        "env = { RELAY_TOKEN = \"relay-token\" }\n",
    )
    .await;
    let put =
        r.h.send(
            r.h.http
                .put(r.h.url("/v1/secrets/relay-token"))
                .bearer_auth(ADMIN)
                .json(&json!({ "value": SECRET })),
        )
        .await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    let (_task, token) = r.task("tools-only", &TOOLS_ONLY).await;
    let mut agent = r.client(&token, REVISIONS[0].0, "").await;
    let line = agent.call("chatty", json!({ "tag": SECRET }), None).await;
    assert_eq!(text(&line["ok"]), "chatted", "{line}");
    let logs = line["logs"].as_array().cloned().unwrap_or_default();
    assert!(
        !logs.is_empty(),
        "the server's log messages were relayed: {line}"
    );
    assert!(
        !line.to_string().contains(SECRET),
        "the secret reached the agent: {line}"
    );
}

//! Shared harness: a real server on an ephemeral port, driven over HTTP.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod dpop;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mandate_core::ManualClock;
use mandate_server::{RunningServer, Server, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

/// The Python with the identity peers (PyPI spiffe, joserfc, mcp), from
/// `MANDATE_TEST_IDENTITY_PYTHON`. Without the variable, says on stderr that `test` of
/// `suite` is skipped and how to run it, and returns `None` (the test passes); set to
/// something that cannot run, the test fails where it runs it.
pub fn identity_python(test: &str, suite: &str) -> Option<PathBuf> {
    const VAR: &str = "MANDATE_TEST_IDENTITY_PYTHON";
    let Some(p) = std::env::var_os(VAR) else {
        eprintln!(
            "SKIPPED {test}: {VAR} is not set. To run it: \
             {VAR}=\"$(bash scripts/install-identity-peers.sh | tail -n 1)\" \
             cargo test -p mandate-server --test {suite}"
        );
        return None;
    };
    Some(PathBuf::from(p))
}

pub fn demo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies/demo")
}

pub struct Harness {
    pub server: RunningServer,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub fn config(data: &Path, policies: &Path, clock: Arc<ManualClock>) -> ServerConfig {
    let mut c = ServerConfig::new(data.to_path_buf(), policies.to_path_buf());
    c.listen = ([127, 0, 0, 1], 0).into();
    c.admin_token = Some(ADMIN.to_owned());
    c.clock = clock;
    // Tests reload explicitly; `policy_files_are_watched` turns watching on.
    c.watch_policies = false;
    c
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(&demo_policies()).await
    }

    pub async fn start_with(policies: &Path) -> Self {
        Self::start_configured(policies, |_| {}).await
    }

    /// Starts with the configuration changed by `change` (a gateway, a master key…).
    pub async fn start_configured(policies: &Path, change: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(jiff::Timestamp::now().as_millisecond()));
        let mut c = config(&dir.path().join("data"), policies, clock.clone());
        change(&mut c);
        let server = Server::start(c).await.unwrap();
        Self {
            server,
            clock,
            http: reqwest::Client::new(),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            body,
            headers,
        }
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> Reply {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// Registers and attests an agent; returns its identity token.
    pub async fn agent(&self, name: &str, tier: u8) -> String {
        let r = self
            .post(
                "/v1/agents",
                Some(ADMIN),
                json!({ "name": name, "owner": "alice@example.com", "tier": tier }),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let join = r.body["join_token"].as_str().unwrap().to_owned();
        let r = self
            .post(
                "/v1/attest",
                None,
                json!({ "agent": name, "join_token": join }),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["identity_token"].as_str().unwrap().to_owned()
    }

    /// Starts the demo task; returns (task id, task token).
    pub async fn task(&self, identity: &str) -> (String, String) {
        let r = self
            .post("/v1/tasks", Some(identity), json!({
                "purpose": "summarise open tickets",
                "scope": { "tools": ["tickets.search", "tickets.update", "tickets.delete"], "actions": ["read", "write", "delete"], "data_domains": ["support"] },
                "ttl_secs": 600,
            }))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (
            r.body["task_id"].as_str().unwrap().to_owned(),
            r.body["task_token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn decide(&self, token: &str, tool: &str, action: &str) -> Reply {
        self.post("/v1/decide", Some(token), json!({ "tool": tool, "action": action, "resource": "queue/open", "arguments": { "q": "open" } })).await
    }
}

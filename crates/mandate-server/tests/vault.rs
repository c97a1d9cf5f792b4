//! The HTTP gateway against a real OpenBao dev server (Vault-compatible, KV v2): an
//! upstream credential written as `vault://<mount>/<path>#<field>` is read from OpenBao,
//! injected into the upstream request and never shown to the agent; a reference OpenBao
//! cannot answer fails closed; a value read for a task is that task's until it ends.
//!
//! Needs the `bao` binary: `MANDATE_TEST_BAO=<path to bao>` (`bash
//! scripts/install-openbao.sh` installs it and prints the path). Without the variable the
//! tests say so on stderr and pass, so the default `cargo test` needs nothing installed;
//! with it set to something that cannot run, they fail.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::upstream::Upstream;
use common::{ADMIN, Harness, demo_policies};
use mandate_gateway::{GatewayConfig, SecretValue};
use serde_json::{Value, json};

const BAO_ENV: &str = "MANDATE_TEST_BAO";

/// The `bao` binary named by `MANDATE_TEST_BAO`; `None` (and a note on stderr) when the
/// variable is unset. Set but unusable is a failure, not a skip.
fn bao_binary(test: &str) -> Option<PathBuf> {
    let Some(p) = std::env::var_os(BAO_ENV) else {
        eprintln!(
            "SKIPPED {test}: {BAO_ENV} is not set. To run the OpenBao end-to-end tests: \
             {BAO_ENV}=\"$(bash scripts/install-openbao.sh | tail -n 1)\" \
             cargo test -p mandate-server --test vault"
        );
        return None;
    };
    assert!(
        !p.is_empty(),
        "{BAO_ENV} is set but empty: unset it to skip, or name the bao binary"
    );
    let p = PathBuf::from(p);
    assert!(
        p.is_file(),
        "{BAO_ENV}={} is not a file (run scripts/install-openbao.sh)",
        p.display()
    );
    let out = Command::new(&p)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{BAO_ENV}={}: cannot run it: {e}", p.display()));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OpenBao"),
        "{BAO_ENV}={}: `bao version` answered {:?}: {}{}",
        p.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(p)
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `bao server -dev` child process on loopback, killed when dropped.
struct Bao {
    child: Child,
    addr: SocketAddr,
    root_token: String,
    log: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bao {
    /// Starts a dev server (in memory, unsealed, KV v2 at `secret/`) with a random root
    /// token on a free port, and waits until `/v1/sys/health` says it is ready.
    async fn start(bin: &Path) -> Self {
        let root_token = format!("mandate-test-root-{}", random_hex(16));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut last_log = String::new();
        // The free port is found by binding and releasing it; another process may take it
        // in between, so a start that fails on its address is retried on a new one.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let log = dir.path().join("bao.log");
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new(bin)
                .args([
                    "server",
                    "-dev",
                    "-dev-no-store-token",
                    &format!("-dev-root-token-id={root_token}"),
                    &format!("-dev-listen-address={addr}"),
                ])
                // Nothing of the caller's Vault/OpenBao setup or home directory is used.
                .env("HOME", dir.path())
                .env_remove("VAULT_ADDR")
                .env_remove("BAO_ADDR")
                .env_remove("VAULT_TOKEN")
                .env_remove("BAO_TOKEN")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("{BAO_ENV}={}: cannot start: {e}", bin.display()));
            let mut bao = Self {
                child,
                addr,
                root_token: root_token.clone(),
                log,
                http: http.clone(),
                _dir: dir,
            };
            match bao.wait_ready().await {
                Ok(()) => return bao,
                Err(why) => {
                    last_log = format!("{why}\n{}", bao.log_text());
                    if !last_log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("the OpenBao dev server did not start: {last_log}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = self.url("/v1/sys/health");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("bao exited with {status}"));
            }
            if let Ok(r) = self
                .http
                .get(&health)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status() == 200
            {
                let body: Value = r.json().await.unwrap();
                if body["initialized"] == true && body["sealed"] == false {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err("no healthy answer from /v1/sys/health within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address())
    }

    async fn api(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let r = req
            .header("X-Vault-Token", &self.root_token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Writes a new version of the KV v2 secret `secret/<path>`.
    async fn put(&self, path: &str, data: Value) {
        let (status, body) = self
            .api(
                self.http
                    .post(self.url(&format!("/v1/secret/data/{path}")))
                    .json(&json!({ "data": data })),
            )
            .await;
        assert_eq!(status, 200, "writing secret/{path}: {body}");
    }

    /// The dev server's `secret/` mount is KV version 2 (what `vault://` references read).
    async fn assert_kv2_at_secret(&self) {
        let (status, body) = self.api(self.http.get(self.url("/v1/sys/mounts"))).await;
        assert_eq!(status, 200, "{body}");
        let mount = body
            .pointer("/data/secret~1")
            .or_else(|| body.pointer("/secret~1"))
            .unwrap_or_else(|| panic!("no secret/ mount: {body}"));
        assert_eq!(mount["type"], "kv", "{mount}");
        assert_eq!(mount["options"]["version"], "2", "{mount}");
    }
}

/// How Mandate gets the token it reads OpenBao with.
enum VaultToken<'a> {
    /// `token_file` in `[vault]` (with a trailing newline, as `echo` writes it).
    File(&'a str),
    /// The server configuration's `vault_token` (`VAULT_TOKEN`).
    Config(&'a str),
}

const TICKETS_REF: &str = "vault://secret/tickets#token";

fn gateway_toml(bao: &Bao, token_file: Option<&Path>, up: &Upstream, bad: &Upstream) -> String {
    let token_file = token_file
        .map(|p| format!("token_file = {:?}", p.to_str().unwrap()))
        .unwrap_or_default();
    format!(
        r#"
[vault]
address = "{vault}"
allow_private = true
{token_file}

[[upstream]]
name = "tickets"
base_url = "http://{up}/api"
allow_private = true
credential = {{ secret = "{TICKETS_REF}", kind = "bearer" }}

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

# The secret exists, the field does not.
[[upstream]]
name = "nofield"
base_url = "http://{bad}/api"
allow_private = true
credential = {{ secret = "vault://secret/tickets#no_such_field", kind = "bearer" }}

[[route]]
upstream = "nofield"
method = "GET"
path = "/tickets"
tool = "tickets.search"
data_domain = "support"

# No secret at that path.
[[upstream]]
name = "nopath"
base_url = "http://{bad}/api"
allow_private = true
credential = {{ secret = "vault://secret/no/such/secret#token", kind = "bearer" }}

[[route]]
upstream = "nopath"
method = "GET"
path = "/tickets"
tool = "tickets.search"
data_domain = "support"
"#,
        vault = bao.address(),
        up = up.addr,
        bad = bad.addr,
    )
}

/// Mandate with a gateway reading its credentials from `bao`, two recording upstreams
/// (`up` behind the good reference, `bad` behind the unanswerable ones) and one agent.
struct Gw {
    h: Harness,
    up: Upstream,
    bad: Upstream,
    identity: String,
}

async fn start(bao: &Bao, token: VaultToken<'_>) -> Gw {
    let up = Upstream::start().await;
    let bad = Upstream::start().await;
    let token_dir = tempfile::tempdir().unwrap();
    let (token_file, env_token) = match token {
        VaultToken::File(t) => {
            let f = token_dir.path().join("vault-token");
            std::fs::write(&f, format!("{t}\n")).unwrap();
            (Some(f), None)
        }
        VaultToken::Config(t) => (None, Some(SecretValue::new(t.as_bytes().to_vec()))),
    };
    let cfg =
        GatewayConfig::from_toml(&gateway_toml(bao, token_file.as_deref(), &up, &bad)).unwrap();
    let h = Harness::start_configured(&demo_policies(), |c| {
        c.gateway = Some(Arc::new(cfg));
        c.vault_token = env_token;
    })
    .await;
    // The token file is read at start; it is not needed after.
    drop(token_dir);
    let identity = h.agent("bot", 1).await;
    Gw {
        h,
        up,
        bad,
        identity,
    }
}

impl Gw {
    /// Starts a task allowed to search tickets at both upstreams: (task id, task token).
    async fn task(&self) -> (String, String) {
        let r = self
            .h
            .post("/v1/tasks", Some(&self.identity), json!({
                "purpose": "summarise open tickets",
                "scope": { "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"],
                           "destinations": [self.up.addr.to_string(), self.bad.addr.to_string()] },
                "ttl_secs": 600,
            }))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (
            r.body["task_id"].as_str().unwrap().to_owned(),
            r.body["task_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn call(&self, task_token: &str, upstream: &str, path: &str) -> common::Reply {
        self.h
            .send(
                self.h
                    .http
                    .get(self.h.url(&format!("/gw/{upstream}{path}")))
                    .bearer_auth(task_token),
            )
            .await
    }

    async fn events(&self, task: &str) -> String {
        let r = self
            .h
            .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body.to_string()
    }
}

/// Everything the agent got back, headers and body, as text.
fn reply_text(r: &common::Reply) -> String {
    let headers: String = r
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    format!("{headers}\n{}", r.body)
}

#[tokio::test]
async fn a_vault_credential_is_injected_never_shown_and_cached_per_task() {
    let Some(bin) = bao_binary("a_vault_credential_is_injected_never_shown_and_cached_per_task")
    else {
        return;
    };
    let bao = Bao::start(&bin).await;
    bao.assert_kv2_at_secret().await;
    let first = format!("tickets-api-v1-{}", random_hex(12));
    bao.put("tickets", json!({ "token": first, "other": "unused" }))
        .await;

    let g = start(&bao, VaultToken::File(&bao.root_token)).await;
    let (task, token) = g.task().await;

    // (a) An allowed call arrives with the value from OpenBao, not the task token.
    let r = g.call(&token, "tickets", "/tickets?status=open").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, json!({ "ok": true, "path": "/api/tickets" }));
    let seen = g.up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/api/tickets?status=open");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {first}").as_str())
    );
    for (name, value) in &seen[0].headers {
        assert!(
            !value.contains(&token),
            "the task token reached the upstream in {name}"
        );
        assert!(
            !value.contains(&bao.root_token),
            "the Vault token reached the upstream in {name}"
        );
    }

    // (b) Nothing the agent gets back carries the value, even when the upstream echoes
    // it in a header and in its body.
    assert!(!reply_text(&r).contains(&first), "{}", reply_text(&r));
    let r = g.call(&token, "tickets", "/tickets/T-1/echo-auth").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        g.up.seen()[1].header("authorization"),
        Some(format!("Bearer {first}").as_str()),
        "the upstream did get it"
    );
    let text = reply_text(&r);
    assert!(
        !text.contains(&first),
        "the agent saw the credential: {text}"
    );
    assert!(
        !text.contains(&bao.root_token),
        "the agent saw the Vault token: {text}"
    );
    assert!(r.body.to_string().contains("[REDACTED]"), "{}", r.body);

    // (d) The value is the task's: after a new version is written, this task keeps the
    // value it read, and a new task reads the new one.
    let second = format!("tickets-api-v2-{}", random_hex(12));
    bao.put("tickets", json!({ "token": second })).await;
    let r = g.call(&token, "tickets", "/tickets").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        g.up.seen().last().unwrap().header("authorization"),
        Some(format!("Bearer {first}").as_str()),
        "the same task keeps its cached value"
    );
    let (task2, token2) = g.task().await;
    let r = g.call(&token2, "tickets", "/tickets").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        g.up.seen().last().unwrap().header("authorization"),
        Some(format!("Bearer {second}").as_str()),
        "a new task reads the current value"
    );
    let r = g.call(&token, "tickets", "/tickets").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        g.up.seen().last().unwrap().header("authorization"),
        Some(format!("Bearer {first}").as_str()),
        "the first task still has its own value"
    );

    // An ended task's calls are refused and forward nothing (its cached value with them).
    let r =
        g.h.post(
            &format!("/v1/tasks/{task}/complete"),
            Some(&token),
            json!({}),
        )
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let before = g.up.count();
    let r = g.call(&token, "tickets", "/tickets").await;
    assert!(r.status.is_client_error(), "{:?}", r.body);
    assert_eq!(g.up.count(), before, "an ended task forwards nothing");

    // The audit trail has the calls but neither value nor the Vault token.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for t in [&task, &task2] {
        let events = g.events(t).await;
        assert!(events.contains("gateway.result"), "{events}");
        for s in [&first, &second, &bao.root_token] {
            assert!(!events.contains(s.as_str()), "an audit event carries {s}");
        }
    }
    assert_eq!(g.bad.count(), 0);
}

#[tokio::test]
async fn a_reference_openbao_cannot_answer_fails_closed() {
    let Some(bin) = bao_binary("a_reference_openbao_cannot_answer_fails_closed") else {
        return;
    };
    let bao = Bao::start(&bin).await;
    let value = format!("tickets-api-{}", random_hex(12));
    bao.put("tickets", json!({ "token": value })).await;

    // The token from the server configuration (`VAULT_TOKEN`) this time.
    let g = start(&bao, VaultToken::Config(&bao.root_token)).await;
    let (_, token) = g.task().await;

    // (c) A missing field, or a missing secret: 502 credential_unavailable, and the
    // upstream never sees a request.
    for upstream in ["nofield", "nopath"] {
        let r = g.call(&token, upstream, "/tickets").await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (502, "credential_unavailable"),
            "{upstream}: {:?}",
            r.body
        );
        let text = reply_text(&r);
        assert!(
            !text.contains(&bao.root_token) && !text.contains(&value),
            "{text}"
        );
    }
    assert_eq!(g.bad.count(), 0, "nothing forwarded without its credential");

    // The reference that does resolve works with this token too.
    let r = g.call(&token, "tickets", "/tickets").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        g.up.seen()[0].header("authorization"),
        Some(format!("Bearer {value}").as_str())
    );

    // A token OpenBao refuses (403) fails closed the same way.
    let g = start(&bao, VaultToken::Config("not-a-valid-openbao-token")).await;
    let (_, token) = g.task().await;
    let r = g.call(&token, "tickets", "/tickets").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (502, "credential_unavailable"),
        "{:?}",
        r.body
    );
    assert_eq!(
        g.up.count(),
        0,
        "nothing forwarded with a refused Vault token"
    );
    assert!(!reply_text(&r).contains(&value));
}

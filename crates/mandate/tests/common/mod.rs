//! What the binary's tests share: `mandate serve` as a child process and raw HTTP/1.1.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: each test binary uses part of this; a panic is a test failure"
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ADMIN: &str = "fault-test-admin-token-0123456789";

pub fn demo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies/demo")
}

/// One HTTP/1.1 request on its own connection; (status, JSON body or the text as a string).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let value = serde_json::from_str(&rest).unwrap_or(Value::String(rest));
    (status, value)
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mandate serve` as a child process; dropped (or `kill`ed) with SIGKILL.
pub struct Served {
    pub child: Child,
    pub port: u16,
}

impl Served {
    pub fn start(data: &Path, policies: &Path, extra: &[&str]) -> Self {
        Self::start_with_open_files(data, policies, extra, None)
    }

    /// As [`Served::start`], under a lower open-file limit (`ulimit -n`) when given.
    pub fn start_with_open_files(
        data: &Path,
        policies: &Path,
        extra: &[&str],
        open_files: Option<u32>,
    ) -> Self {
        let mut cmd = match open_files {
            Some(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    env!("CARGO_BIN_EXE_mandate"),
                ]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_mandate")),
        };
        // Port 0: the server binds a port nobody else holds and says which. (Picking a
        // free port first and passing it on raced other tests' servers and client sockets
        // for it, so a test could end up talking to another test's server.)
        let mut child = cmd
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                // One issuer whatever the port: tokens stay valid across restarts.
                "--issuer",
                "http://mandate.test",
                "--no-watch",
                "--data-dir",
            ])
            .arg(data)
            .arg("--policies")
            .arg(policies)
            .args(extra)
            .env("MANDATE_ADMIN_TOKEN", ADMIN)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the announced address, then keeps draining so the server never blocks on
        // a full pipe.
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("mandate listening on http://127.0.0.1:").nth(1)
                    && let Some(port) = rest
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|p| p.parse::<u16>().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("mandate serve did not start listening");
        Self { child, port }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn get(&self, path: &str, bearer: Option<&str>) -> (u16, Value) {
        http(self.port, "GET", path, bearer, None)
    }

    pub fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
        http(self.port, "POST", path, bearer, Some(&body))
    }

    /// Registers and attests an agent; its identity token.
    pub fn agent(&self, name: &str) -> String {
        let (s, r) = self.post(
            "/v1/agents",
            Some(ADMIN),
            json!({ "name": name, "owner": "alice@example.com", "tier": 1 }),
        );
        assert_eq!(s, 201, "{r}");
        let (s, r) = self.post(
            "/v1/attest",
            None,
            json!({ "agent": name, "join_token": r["join_token"] }),
        );
        assert_eq!(s, 200, "{r}");
        r["identity_token"].as_str().unwrap().to_owned()
    }

    /// Starts a support task; (id, token).
    pub fn task(&self, identity: &str) -> (String, String) {
        let (s, r) = self.post("/v1/tasks", Some(identity), json!({
            "purpose": "summarise open tickets",
            "scope": { "tools": ["tickets.search", "tickets.update"], "actions": ["read", "write"], "data_domains": ["support"] },
            "ttl_secs": 3600,
        }));
        assert_eq!(s, 201, "{r}");
        (
            r["task_id"].as_str().unwrap().to_owned(),
            r["task_token"].as_str().unwrap().to_owned(),
        )
    }

    pub fn read(&self, token: &str, n: usize) -> (u16, Value) {
        self.post("/v1/decide", Some(token), json!({ "tool": "tickets.search", "action": "read", "resource": "queue/open", "arguments": { "n": n } }))
    }

    /// Every audit event, through the admin API.
    pub fn events(&self, task: &str) -> Vec<Value> {
        let (s, r) = self.get(&format!("/v1/tasks/{task}/events"), Some(ADMIN));
        assert_eq!(s, 200, "{r}");
        r.as_array().cloned().unwrap_or_default()
    }

    pub fn wait_ready(&self, want: u16) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, r) = self.get("/readyz", None);
            if s == want || Instant::now() > deadline {
                assert_eq!(s, want, "readiness: {r}");
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

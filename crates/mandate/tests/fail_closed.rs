//! Faults driven against the real `mandate serve` process: a data directory that fills up,
//! `kill -9` after untrusted content entered a task, and a chain tampered with while the
//! server was down. Each must fail closed, lose nothing acknowledged, and say why.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

mod common;
use common::{ADMIN, Served, demo_policies, http};

fn verify(data: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A small tmpfs on a fresh directory (needs root), lazily unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Fills what is left of the filesystem holding `dir`, keeping `keep` bytes free.
fn fill(dir: &Path, keep: u64) {
    let mut f = std::fs::File::create(dir.join("ballast")).unwrap();
    let block = vec![0_u8; 4096];
    loop {
        let free = fs_free(dir);
        if free <= keep {
            break;
        }
        let n = usize::try_from((free - keep).min(4096)).unwrap();
        if f.write_all(&block[..n]).is_err() {
            break;
        }
        let _ = f.flush();
    }
    let _ = f.sync_all();
}

fn fs_free(dir: &Path) -> u64 {
    let o = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn disk_full_fails_closed_then_recovers_and_loses_nothing_acknowledged() {
    let Some(fs) = SmallFs::mount("24m") else {
        eprintln!(
            "skipped: needs root to mount a small tmpfs (crates/mandate-store/tests/disk_full.rs covers the store)"
        );
        return;
    };
    let data = fs.0.path().join("data");
    let server = Served::start(&data, &demo_policies(), &[]);
    let id = server.agent("filler");
    let (task, token) = server.task(&id);
    let (doomed, doomed_token) = server.task(&id);
    let (s, r) = server.read(&token, 0);
    assert_eq!((s, r["outcome"].as_str()), (200, Some("allow")), "{r}");

    fill(fs.0.path(), 64 * 1024);
    let mut allowed = Vec::new();
    let mut refused = 0;
    let mut revoke_acknowledged = false;
    for n in 1..600 {
        let (s, r) = server.read(&token, n);
        match s {
            200 => {
                assert_eq!(r["outcome"], "allow", "{r}");
                allowed.push(r["decision_id"].as_str().unwrap().to_owned());
            }
            503 => {
                assert!(r["error"]["code"].is_string(), "a JSON error body: {r}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {r}"),
        }
        if n == 300 {
            let (s, _) = server.post(
                &format!("/v1/tasks/{doomed}/revoke"),
                Some(ADMIN),
                json!({ "reason": "during a full disk" }),
            );
            revoke_acknowledged = s == 200;
            // Acknowledged or not, the revoked task is refused from now on.
            let (s, r) = server.read(&doomed_token, 0);
            assert!(
                s == 403 || s == 503,
                "a revoked task is refused even when the revoke could not be recorded: {s} {r}"
            );
        }
    }
    assert!(
        refused > 200,
        "the disk filled up ({refused} refused, {} allowed)",
        allowed.len()
    );
    let r = server.wait_ready(503);
    assert_eq!(r["error"]["code"], "store_cannot_commit", "{r}");
    let (s, _) = server.get("/healthz", None);
    assert_eq!(s, 200, "liveness stays: the process answers");

    // Space comes back: readiness turns green and decisions are allowed again, no restart.
    std::fs::remove_file(fs.0.path().join("ballast")).unwrap();
    server.wait_ready(200);
    let (s, r) = server.read(&token, 10_000);
    assert_eq!(s, 200, "{r}");
    allowed.push(r["decision_id"].as_str().unwrap().to_owned());
    let (s, _) = server.post(
        &format!("/v1/tasks/{doomed}/revoke"),
        Some(ADMIN),
        json!({ "reason": "again" }),
    );
    revoke_acknowledged |= s == 200 || s == 409;
    server.kill9();

    // After kill -9 and a restart, every acknowledged allow is in the audit, the revoked
    // task stays revoked, and the chain verifies.
    let server = Served::start(&data, &demo_policies(), &[]);
    server.wait_ready(200);
    let recorded: Vec<String> = server
        .events(&task)
        .iter()
        .filter(|e| e["kind"] == "decision" && e["data"]["outcome"] == "allow")
        .filter_map(|e| e["data"]["decision_id"].as_str().map(str::to_owned))
        .collect();
    for d in &allowed {
        assert!(
            recorded.contains(d),
            "acknowledged allow {d} was lost ({} of {} recorded)",
            recorded.len(),
            allowed.len()
        );
    }
    assert!(revoke_acknowledged);
    let (s, r) = server.read(&doomed_token, 1);
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (403, Some("task_not_active")),
        "an acknowledged revocation survives the restart: {r}"
    );
    let (s, r) = server.read(&token, 1);
    assert_eq!(
        (s, r["outcome"].as_str()),
        (200, Some("allow")),
        "the other task lives on: {r}"
    );
    drop(server);
    let (ok, out) = verify(&data);
    assert!(ok, "{out}");
}

/// Runs SQL on the database file behind Mandate's back, as an attacker with the file would.
fn tamper(data: &Path, sql: &str) {
    let rt = tokio_rt();
    rt.block_on(async {
        use sqlx::Connection as _;
        let url = format!("sqlite://{}", data.join("mandate.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
}

fn count(data: &Path) -> i64 {
    tokio_rt().block_on(async {
        use sqlx::Connection as _;
        let url = format!("sqlite://{}?mode=ro", data.join("mandate.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        n
    })
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_tampered_or_truncated_chain_is_not_served_as_intact() {
    for (name, sql, why) in [
        (
            "tail truncated, head left",
            "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)",
            "first bad record",
        ),
        (
            "last record rewritten without rehashing",
            "UPDATE audit_events SET data = json_set(data, '$.outcome', 'deny') WHERE seq = (SELECT MAX(seq) FROM audit_events)",
            "first bad record",
        ),
        (
            "a record in the middle rewritten",
            "UPDATE audit_events SET data = json_set(data, '$.tampered', 1) WHERE seq = 3",
            "first bad record 3",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let server = Served::start(&data, &demo_policies(), &[]);
        let id = server.agent("victim");
        let (_task, token) = server.task(&id);
        for n in 0..5 {
            assert_eq!(server.read(&token, n).0, 200);
        }
        server.kill9();
        tamper(&data, sql);

        let server = Served::start(&data, &demo_policies(), &[]);
        let r = server.wait_ready(503);
        assert_eq!(r["error"]["code"], "audit_chain_broken", "{name}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(why),
            "{name}: readiness names the first bad record: {msg}"
        );
        let (s, r) = server.read(&token, 99);
        assert_eq!(s, 503, "{name}: no decision on a broken chain: {r}");
        assert_eq!(r["error"]["code"], "audit_chain_broken", "{name}: {r}");
        drop(server);
        let (ok, out) = verify(&data);
        assert!(!ok, "{name}: offline verification fails too: {out}");
        let rows = count(&data);
        let server = Served::start(&data, &demo_policies(), &[]);
        server.wait_ready(503);
        assert_eq!(server.read(&token, 100).0, 503);
        drop(server);
        assert_eq!(
            count(&data),
            rows,
            "{name}: nothing is appended to a broken chain"
        );
    }
}

/// An upstream answering `hello` to every request (untrusted content, 5 bytes).
fn hello_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0_u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
            });
        }
    });
    port
}

/// The demo policies plus one rule on history; and a gateway in front of `upstream`.
fn history_bundle(dir: &Path, rule: &str, upstream: u16) -> (PathBuf, PathBuf) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for f in ["support.cedar", "start.cedar"] {
        std::fs::copy(demo_policies().join(f), policies.join(f)).unwrap();
    }
    std::fs::write(
        policies.join("history.cedar"),
        format!("@id(\"history-rule\")\n@reason(\"what the task did before forbids this\")\nforbid (principal, action == Mandate::Action::\"read\", resource == Mandate::Tool::\"tickets.search\")\nwhen {{ {rule} }};\n"),
    )
    .unwrap();
    let gateway = dir.join("gateway.toml");
    std::fs::write(
        &gateway,
        format!("[[upstream]]\nname = \"tickets\"\nbase_url = \"http://127.0.0.1:{upstream}/api\"\nallow_private = true\nuntrusted = true\n\n[[route]]\nupstream = \"tickets\"\nmethod = \"GET\"\npath = \"/tickets\"\ntool = \"tickets.search\"\ndata_domain = \"support\"\n"),
    )
    .unwrap();
    (policies, gateway)
}

fn history_survives(rule: &str, stop: impl FnOnce(Served)) {
    let up = hello_upstream();
    let dir = tempfile::tempdir().unwrap();
    let (policies, gateway) = history_bundle(dir.path(), rule, up);
    let gw = gateway.to_str().unwrap().to_owned();
    let data = dir.path().join("data");
    let server = Served::start(&data, &policies, &["--gateway-config", &gw]);
    let id = server.agent("reader");
    let (s, r) = server.post("/v1/tasks", Some(&id), json!({
        "purpose": "summarise open tickets",
        "scope": { "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"], "destinations": [format!("127.0.0.1:{up}")] },
        "ttl_secs": 3600,
    }));
    assert_eq!(s, 201, "{r}");
    let token = r["task_token"].as_str().unwrap().to_owned();
    let (s, r) = server.read(&token, 1);
    assert_eq!(
        (s, r["outcome"].as_str()),
        (200, Some("allow")),
        "clean so far: {r}"
    );
    let (s, body) = http(
        server.port,
        "GET",
        "/gw/tickets/tickets",
        Some(&token),
        None,
    );
    assert_eq!((s, body.as_str()), (200, Some("hello")), "{body}");
    // No other call between the answer and the stop: nothing else flushes the history.
    stop(server);
    let server = Served::start(&data, &policies, &["--gateway-config", &gw]);
    let (s, r) = server.read(&token, 2);
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        r["outcome"], "deny",
        "the history survived the restart: {r}"
    );
    assert_eq!(r["policies"][0], "history-rule", "{r}");
}

#[test]
fn task_history_keeps_taint_across_kill_9() {
    history_survives("context.history.untrusted_content", Served::kill9);
}

#[test]
fn task_history_keeps_bytes_returned_across_a_restart() {
    history_survives("context.history.bytes_returned >= 5", |s| {
        let pid = s.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let mut s = s;
        let _ = s.child.wait();
    });
}

//! End-to-end tests of the real `mandate` binary: the demo, a served instance driven by
//! the CLI, offline audit verification against a tampered database, and refusals to start.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ADMIN: &str = "cli-test-admin-token-0123456789";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mandate"));
    c.env("NO_COLOR", "1")
        .env_remove("MANDATE_ADMIN_TOKEN")
        .env_remove("MANDATE_URL");
    c
}

fn demo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies/demo")
}

fn run(c: &mut Command) -> Output {
    c.output().unwrap()
}

fn json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path, policies: &Path) -> Served {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let served = Served {
        child: bin()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data)
            .arg("--policies")
            .arg(policies)
            .env("MANDATE_ADMIN_TOKEN", ADMIN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        url,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return served;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("mandate serve did not start listening");
}

#[test]
fn demo_runs_green() {
    let o = run(bin().arg("demo"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("Demo complete: every step behaved as stated."),
        "{out}"
    );
    assert!(
        !out.contains('\u{1b}'),
        "no colour codes when not on a terminal"
    );
}

#[test]
fn every_command_explains_itself() {
    for cmd in [
        vec![],
        vec!["serve"],
        vec!["agent"],
        vec!["agent", "register"],
        vec!["task"],
        vec!["task", "start"],
        vec!["decide"],
        vec!["audit"],
        vec!["audit", "verify"],
        vec!["audit", "trace"],
        vec!["policy"],
        vec!["approvals"],
        vec!["approvals", "approve"],
        vec!["approvers", "add"],
        vec!["break-glass", "declare"],
        vec!["report", "access"],
        vec!["tools", "pending"],
        vec!["tools", "approve"],
        vec!["demo"],
    ] {
        let o = run(bin().args(&cmd).arg("--help"));
        assert!(o.status.success(), "{cmd:?}");
        assert!(
            o.stdout.len() > 100,
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

/// The README's way to release a held tool: its positional SERVER must not collide with
/// the `--server` URL option. Against the real server it reaches the API and is answered
/// there (no such pin), not refused by the argument parser.
#[test]
fn tools_approve_server_tool_can_be_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(&dir.path().join("data"), &demo_policies());
    let o = run(bin().args([
        "tools",
        "approve",
        "docs",
        "search",
        "--server",
        &s.url,
        "--admin-token",
        ADMIN,
    ]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("no pinned tool search on server docs"),
        "the request must reach the server: {stderr}"
    );
}

#[test]
fn serve_and_drive_with_the_cli_then_catch_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = serve(&data, &demo_policies());
    let cli = |args: &[&str]| {
        let mut c = bin();
        c.args(args)
            .env("MANDATE_URL", &s.url)
            .env("MANDATE_ADMIN_TOKEN", ADMIN);
        run(&mut c)
    };

    let reg = json(&cli(&[
        "agent",
        "register",
        "ticket-bot",
        "--owner",
        "alice@example.com",
        "--tier",
        "1",
    ]));
    let join = reg["join_token"].as_str().unwrap();
    let att = json(&cli(&[
        "agent",
        "attest",
        "ticket-bot",
        "--join-token",
        join,
    ]));
    let identity = att["identity_token"].as_str().unwrap();
    let task = json(&cli(&[
        "task",
        "start",
        "--identity-token",
        identity,
        "--purpose",
        "summarise open tickets",
        "--tool",
        "tickets.search",
        "--tool",
        "tickets.update",
        "--action",
        "read",
        "--action",
        "write",
    ]));
    let task_id = task["task_id"].as_str().unwrap();
    let token = task["task_token"].as_str().unwrap();

    let decide = |tool: &str, action: &str| {
        cli(&[
            "decide",
            "--task-token",
            token,
            "--tool",
            tool,
            "--action",
            action,
            "--args",
            r#"{"id": 42}"#,
        ])
        .status
        .code()
    };
    assert_eq!(decide("tickets.search", "read"), Some(0), "allow exits 0");
    assert_eq!(
        decide("tickets.update", "write"),
        Some(3),
        "approval required exits 3"
    );
    assert_eq!(decide("tickets.delete", "delete"), Some(2), "deny exits 2");
    assert_eq!(
        cli(&[
            "decide",
            "--task-token",
            "forged",
            "--tool",
            "t",
            "--action",
            "read"
        ])
        .status
        .code(),
        Some(1),
        "an error exits 1"
    );

    // A human approves the write from the terminal; the exact call then runs once.
    let added = json(&cli(&[
        "approvers",
        "add",
        "bob@example.com",
        "--role",
        "approver",
        "--role",
        "reviewer",
    ]));
    let bob = added["token"].as_str().unwrap().to_owned();
    let as_bob = |args: &[&str]| {
        let mut c = bin();
        c.args(args)
            .env("MANDATE_URL", &s.url)
            .env("MANDATE_APPROVER_TOKEN", &bob);
        run(&mut c)
    };
    let write = |extra: &[&str]| {
        let mut args = vec![
            "decide",
            "--task-token",
            token,
            "--tool",
            "tickets.update",
            "--action",
            "write",
            "--args",
            r#"{"id": 42}"#,
            "--json",
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let held = write(&[]);
    assert_eq!(held.status.code(), Some(3));
    let held: Value = serde_json::from_slice(&held.stdout).unwrap();
    let approval = held["approval"]["id"].as_str().unwrap().to_owned();
    let queue = as_bob(&["approvals", "list"]);
    assert!(String::from_utf8_lossy(&queue.stdout).contains(&approval));
    let shown = as_bob(&["approvals", "show", &approval]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("\"id\": 42"));
    let ok = as_bob(&["approvals", "approve", &approval]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(write(&["--approval-id", &approval]).status.code(), Some(0));
    let reused = write(&["--approval-id", &approval]);
    assert_eq!(reused.status.code(), Some(1), "an approval is used once");
    assert!(String::from_utf8_lossy(&reused.stderr).contains("approval_used"));
    let report = json(&as_bob(&["report", "access", "ticket-bot", "--json"]));
    assert_eq!(
        report["approvals"].as_array().unwrap().len(),
        2,
        "the earlier held write and this one"
    );
    let text = as_bob(&["report", "approvals"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("bob@example.com"));
    // The admin token is not a person: it cannot approve.
    let admin_try = cli(&["approvals", "approve", &approval, "--token", ADMIN]);
    assert!(!admin_try.status.success());

    json(&cli(&["task", "complete", task_id, "--task-token", token]));
    assert_eq!(
        decide("tickets.search", "read"),
        Some(1),
        "a completed task's token is refused"
    );
    let listed = json(&cli(&["agent", "list"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);

    // Offline audit tools read the data directory while the server runs.
    let v = run(bin().args(["audit", "verify", "--data-dir"]).arg(&data));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let t = run(bin()
        .args(["audit", "trace", task_id, "--data-dir"])
        .arg(&data));
    let timeline = String::from_utf8_lossy(&t.stdout);
    for needle in [
        "task.started",
        "approval.requested",
        "approval.approved",
        "approval.consumed",
        "approved by bob@example.com",
        "decision",
        "allow",
        "approval_required",
        "deny",
        "task.completed",
        "call.refused",
    ] {
        assert!(
            timeline.contains(needle),
            "{needle} missing from:\n{timeline}"
        );
    }

    // Replay: a candidate that forbids searching would have changed exactly one allow.
    let candidate = tempfile::tempdir().unwrap();
    for f in ["start.cedar", "support.cedar"] {
        std::fs::copy(demo_policies().join(f), candidate.path().join(f)).unwrap();
    }
    std::fs::write(candidate.path().join("no-search.cedar"), "@id(\"no-search\") forbid(principal, action == Mandate::Action::\"read\", resource == Mandate::Tool::\"tickets.search\");").unwrap();
    let r = run(bin()
        .args(["policy", "replay", "--audit"])
        .arg(&data)
        .arg("--candidate")
        .arg(candidate.path()));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(out.contains("1 decision(s) would change"), "{out}");
    assert!(out.contains("allow → deny"), "{out}");
    assert!(out.contains("by no-search"), "{out}");
    let r = run(bin()
        .args(["policy", "replay", "--audit"])
        .arg(&data)
        .arg("--candidate")
        .arg(demo_policies()));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("no change"),
        "the enforcing bundle replays unchanged"
    );
    drop(s);

    // Edit one decision in place: verification names it.
    let db = data.join("mandate.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let edited_seq: i64 = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
        let seq: i64 = sqlx::query_scalar("SELECT MIN(seq) FROM audit_events WHERE kind = 'decision'").fetch_one(&pool).await.unwrap();
        sqlx::query("UPDATE audit_events SET data = replace(data, '\"deny\"', '\"allow\"') WHERE kind = 'decision'").execute(&pool).await.unwrap();
        pool.close().await;
        seq
    });
    let v = run(bin().args(["audit", "verify", "--data-dir"]).arg(&data));
    let out = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(2), "{out}");
    assert!(out.contains("BROKEN") && out.contains("edited"), "{out}");
    assert!(edited_seq > 0);
}

#[test]
fn bad_policies_refuse_to_start_and_validate_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit(principal, action, resource)\nwhen { context.missing };",
    )
    .unwrap();
    let v = run(bin().args(["policy", "validate"]).arg(dir.path()));
    let out = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(2), "{out}");
    assert!(out.contains("bad.cedar:2:"), "{out}");
    let s = run(bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--policies")
        .arg(dir.path()));
    let err = String::from_utf8_lossy(&s.stderr);
    assert!(!s.status.success());
    assert!(err.contains("bad.cedar:2:"), "{err}");
    let s = run(bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--policies")
        .arg(dir.path().join("nope")));
    assert!(!s.status.success());
    assert!(String::from_utf8_lossy(&s.stderr).contains("does not exist"));
    let v = run(bin().args(["policy", "validate"]).arg(demo_policies()));
    assert!(v.status.success());

    // A fixture whose expectation is wrong fails with a readable difference.
    let b = tempfile::tempdir().unwrap();
    std::fs::write(
        b.path().join("p.cedar"),
        "@id(\"r\") permit(principal, action == Mandate::Action::\"read\", resource);",
    )
    .unwrap();
    std::fs::create_dir(b.path().join("tests")).unwrap();
    std::fs::write(
        b.path().join("tests/t.json"),
        r#"[{"name": "reads pass", "call": {"tool": "x", "action": "read"}, "expect": {"outcome": "allow", "policies": ["r"]}},
            {"name": "writes pass too (wrong)", "call": {"tool": "x", "action": "write"}, "expect": {"outcome": "allow"}}]"#,
    )
    .unwrap();
    let t = run(bin().args(["policy", "test"]).arg(b.path()));
    let out = String::from_utf8_lossy(&t.stdout);
    assert_eq!(t.status.code(), Some(2), "{out}");
    assert!(
        out.contains("FAIL tests/t.json — writes pass too (wrong)"),
        "{out}"
    );
    assert!(
        out.contains("outcome: expected allow, decided deny by [mandate:default-deny]"),
        "{out}"
    );
    assert!(out.contains("policy: 1 passed, 1 failed"), "{out}");
    std::fs::remove_dir_all(b.path().join("tests")).unwrap();
    let t = run(bin().args(["policy", "test"]).arg(b.path()));
    assert_eq!(t.status.code(), Some(2), "no fixtures is not a pass");
}

fn billing_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies/billing")
}

#[test]
fn a_refused_grant_pair_says_why_in_explain_and_in_policy_test() {
    // A start that forgets the catalog's data domain: every pair refused, each saying so.
    let start = r#"{"start": {"scope": {"tools": ["billing.refund", "billing.invoice_get"], "actions": ["write"]}}}"#;
    let out = json(&run(bin()
        .args(["policy", "explain", "--json"])
        .arg(billing_policies())
        .arg(start)));
    assert_eq!(out["decision"]["outcome"], "allow", "{out}");
    let items = out["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{out}");
    for i in items {
        assert_eq!(i["outcome"], "deny");
        assert_eq!(i["policies"], serde_json::json!(["mandate:catalog"]));
        assert!(
            i["reasons"][0]
                .as_str()
                .unwrap()
                .contains("data domain `finance`"),
            "{i}"
        );
    }
    // With the domain, refunds are granted (decided per call on their arguments) and
    // reading a refund is refused by default, saying so.
    let start = r#"{"start": {"scope": {"tools": ["billing.refund"], "actions": ["read", "write"], "data_domains": ["finance"]}}}"#;
    let t = run(bin()
        .args(["policy", "explain"])
        .arg(billing_policies())
        .arg(start));
    let text = String::from_utf8_lossy(&t.stdout);
    assert!(t.status.success(), "{text}");
    assert!(
        text.contains("allow  billing.refund:write  by refund-small, refund-large"),
        "{text}"
    );
    assert!(
        text.contains("deny  billing.refund:read  by mandate:default-deny"),
        "{text}"
    );
    assert!(text.contains("no policy permits this action"), "{text}");

    // `policy test` names each refused pair and why when `granted` differs.
    let b = tempfile::tempdir().unwrap();
    for f in ["billing.cedar", "tools.json"] {
        std::fs::copy(billing_policies().join(f), b.path().join(f)).unwrap();
    }
    std::fs::create_dir(b.path().join("tests")).unwrap();
    std::fs::write(
        b.path().join("tests/t.json"),
        r#"[{"name": "refunds granted (forgot the domain)", "start": {"scope": {"tools": ["billing.refund"], "actions": ["write"]}},
             "expect": {"outcome": "allow", "granted": ["billing.refund:write"]}}]"#,
    )
    .unwrap();
    let t = run(bin().args(["policy", "test"]).arg(b.path()));
    let out = String::from_utf8_lossy(&t.stdout);
    assert_eq!(t.status.code(), Some(2), "{out}");
    assert!(
        out.contains("refused billing.refund:write by [mandate:catalog]"),
        "{out}"
    );
    assert!(out.contains("did not declare in `data_domains`"), "{out}");
}

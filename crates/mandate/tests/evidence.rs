//! The audit log as evidence, against the real `mandate serve`: signed checkpoints and
//! RFC 6962 proofs checked by a verifier written here from the RFC's recursive definitions
//! (not Mandate's code), a witness directory that catches every rewrite the hash chain
//! alone cannot, exports that verify on their own, and search across tasks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use aws_lc_rs::{digest, signature};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

mod common;
use common::{ADMIN, Served, demo_policies};

type H = [u8; 32];

fn sha(parts: &[&[u8]]) -> H {
    let mut c = digest::Context::new(&digest::SHA256);
    for p in parts {
        c.update(p);
    }
    c.finish().as_ref().try_into().unwrap()
}

fn unhex(s: &str) -> H {
    assert_eq!(s.len(), 64, "{s}");
    let mut out = [0; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn hex(h: &H) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 6962 §2.1: the largest power of two smaller than `n`.
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over leaf hashes.
fn mth(d: &[H]) -> H {
    match d.len() {
        0 => sha(&[]),
        1 => d[0],
        n => {
            let k = split(n);
            sha(&[&[1], &mth(&d[..k]), &mth(&d[k..])])
        }
    }
}

/// PATH(m, D[n]) (§2.1.1).
fn path(m: usize, d: &[H]) -> Vec<H> {
    if d.len() <= 1 {
        return Vec::new();
    }
    let k = split(d.len());
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// SUBPROOF(m, D[n], b) (§2.1.2).
fn subproof(m: usize, d: &[H], whole: bool) -> Vec<H> {
    let n = d.len();
    if m == n {
        return if whole { Vec::new() } else { vec![mth(d)] };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], whole);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

fn hexes(v: &Value) -> Vec<H> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| unhex(h.as_str().unwrap()))
        .collect()
}

/// Checks a C2SP signed note against a `name+id+key` verifier key; its text.
fn open_note(note: &str, key: &str) -> String {
    let mut k = key.splitn(3, '+');
    let (name, id, pubkey) = (k.next().unwrap(), k.next().unwrap(), k.next().unwrap());
    let pubkey = B64.decode(pubkey).unwrap();
    assert_eq!(pubkey[0], 1, "an Ed25519 key");
    let expected_id = sha(&[name.as_bytes(), b"\n", &pubkey]);
    assert_eq!(id, &hex(&expected_id)[..8], "key id");
    let (text, sigs) = note.split_once("\n\n").unwrap();
    let text = format!("{text}\n");
    let line = sigs
        .lines()
        .find(|l| l.starts_with(&format!("\u{2014} {name} ")))
        .expect("a signature by the log key");
    let sig = B64.decode(line.rsplit(' ').next().unwrap()).unwrap();
    assert_eq!(&sig[..4], &expected_id[..4]);
    signature::UnparsedPublicKey::new(&signature::ED25519, &pubkey[1..])
        .verify(text.as_bytes(), &sig[4..])
        .expect("the checkpoint's signature verifies");
    text
}

/// Every record, through the search API, paging by cursor.
fn all_events(server: &Served, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (s, r) = server.get(
            &format!("/v1/audit/events?after={after}&limit={limit}{query}"),
            Some(ADMIN),
        );
        assert_eq!(s, 200, "{r}");
        out.extend(r["events"].as_array().unwrap().iter().cloned());
        match r["next"].as_i64() {
            Some(n) => after = n,
            None => return out,
        }
    }
}

fn leaves(events: &[Value]) -> Vec<H> {
    events
        .iter()
        .map(|e| sha(&[&[0], &unhex(e["hash"].as_str().unwrap())]))
        .collect()
}

fn mandate(args: &[&str], dirs: &[&Path]) -> (i32, String) {
    // Paths go where the arguments name them: `{}` placeholders in order.
    let mut dirs = dirs.iter();
    let args: Vec<std::ffi::OsString> = args
        .iter()
        .map(|a| {
            if *a == "{}" {
                dirs.next().unwrap().as_os_str().to_owned()
            } else {
                (*a).into()
            }
        })
        .collect();
    let o = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(&args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn checkpoint(server: &Served) -> Value {
    let (s, cp) = server.get("/v1/audit/checkpoint", Some(ADMIN));
    assert_eq!(s, 200, "{cp}");
    cp
}

fn witnessed(dir: &Path) -> (String, Vec<u8>) {
    (
        std::fs::read_to_string(dir.join("checkpoint")).unwrap(),
        std::fs::read(dir.join("hashes")).unwrap_or_default(),
    )
}

#[test]
fn checkpoints_and_proofs_check_out_with_an_independent_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let witness = dir.path().join("witness");
    let w = witness.to_str().unwrap();
    let server = Served::start(&data, &demo_policies(), &["--witness-dir", w]);
    let id = server.agent("evidence");
    let (_task, token) = server.task(&id);
    for n in 0..12 {
        assert_eq!(server.read(&token, n).0, 200);
    }

    let cp = checkpoint(&server);
    let key = cp["key"].as_str().unwrap().to_owned();
    let events = all_events(&server, "", 1000);
    let size = usize::try_from(cp["size"].as_u64().unwrap()).unwrap();
    assert_eq!(
        size,
        events.len(),
        "the checkpoint covers every record: {cp}"
    );
    let d = leaves(&events);
    let root = mth(&d);
    assert_eq!(cp["root_hash"], hex(&root));
    let text = open_note(cp["note"].as_str().unwrap(), &key);
    assert_eq!(
        text,
        format!(
            "{}\n{size}\n{}\n",
            cp["origin"].as_str().unwrap(),
            B64.encode(root)
        ),
        "C2SP tlog-checkpoint body"
    );
    assert_eq!(cp["origin"], "mandate.local/audit");
    assert!(key.starts_with("mandate.local/audit+"), "{key}");

    // The witness holds the very note, and every record's hash.
    let (note, hashes) = witnessed(&witness);
    assert_eq!(note, cp["note"].as_str().unwrap());
    let raw: Vec<u8> = events
        .iter()
        .flat_map(|e| unhex(e["hash"].as_str().unwrap()))
        .collect();
    assert_eq!(hashes, raw);

    // Asking again with nothing new gives the same checkpoint.
    assert_eq!(checkpoint(&server)["note"], cp["note"]);

    for m in 1..=size {
        let (s, p) = server.get(&format!("/v1/audit/proof/inclusion?seq={m}"), Some(ADMIN));
        assert_eq!(s, 200, "{p}");
        assert_eq!(p["size"], size);
        assert_eq!(p["leaf_hash"], hex(&d[m - 1]));
        assert_eq!(p["root_hash"], hex(&root));
        assert_eq!(hexes(&p["proof"]), path(m - 1, &d), "inclusion of {m}");
    }

    for n in 100..107 {
        assert_eq!(server.read(&token, n).0, 200);
    }
    let cp2 = checkpoint(&server);
    open_note(cp2["note"].as_str().unwrap(), &key);
    let events2 = all_events(&server, "", 3);
    let size2 = events2.len();
    assert_eq!(cp2["size"], size2);
    assert_eq!(
        events2[..size],
        events[..],
        "paging returns the same records"
    );
    let d2 = leaves(&events2);
    assert_eq!(cp2["root_hash"], hex(&mth(&d2)));
    for from in 1..=size2 {
        let (s, p) = server.get(
            &format!("/v1/audit/proof/consistency?from={from}&to={size2}"),
            Some(ADMIN),
        );
        assert_eq!(s, 200, "{p}");
        assert_eq!(p["from_root"], hex(&mth(&d2[..from])));
        assert_eq!(
            hexes(&p["proof"]),
            subproof(from, &d2, true),
            "consistency {from} -> {size2}"
        );
    }
    let (note, hashes) = witnessed(&witness);
    assert_eq!(note, cp2["note"].as_str().unwrap());
    assert_eq!(
        hashes.len(),
        32 * size2,
        "the witness appended the new hashes"
    );
    // An older tree's inclusion proof still verifies against the older checkpoint.
    let (s, p) = server.get(
        &format!("/v1/audit/proof/inclusion?seq=2&size={size}"),
        Some(ADMIN),
    );
    assert_eq!(s, 200, "{p}");
    assert_eq!(hexes(&p["proof"]), path(1, &d));

    for (path, status, code) in [
        ("/v1/audit/proof/inclusion?seq=0", 404, "not_in_tree"),
        ("/v1/audit/proof/inclusion?seq=100000", 404, "not_in_tree"),
        (
            "/v1/audit/proof/inclusion?seq=1&size=100000",
            404,
            "not_in_tree",
        ),
        ("/v1/audit/proof/inclusion?seq=abc", 400, ""),
        ("/v1/audit/proof/inclusion?seq=1&sise=3", 400, ""),
        (
            "/v1/audit/proof/consistency?from=5&to=3",
            422,
            "bad_tree_sizes",
        ),
        ("/v1/audit/events?limit=0", 400, ""),
        ("/v1/audit/events?limit=1001", 400, ""),
        ("/v1/audit/events?after=-1", 400, ""),
        ("/v1/audit/events?kind=", 400, ""),
        ("/v1/audit/events?colour=red", 400, ""),
    ] {
        let (s, r) = server.get(path, Some(ADMIN));
        assert_eq!(s, status, "{path}: {r}");
        assert!(r["error"]["code"].is_string(), "{path}: {r}");
        if !code.is_empty() {
            assert_eq!(r["error"]["code"], code, "{path}: {r}");
        }
    }
    for path in [
        "/v1/audit/checkpoint",
        "/v1/audit/proof/inclusion?seq=1",
        "/v1/audit/proof/consistency?from=1",
        "/v1/audit/events",
    ] {
        assert_eq!(server.get(path, None).0, 401, "{path}");
        assert_eq!(server.get(path, Some(&token)).0, 403, "{path}");
    }

    // Offline, with the key given as kept elsewhere.
    let (code, out) = mandate(
        &[
            "audit",
            "verify",
            "--data-dir",
            "{}",
            "--checkpoint",
            "{}",
            "--key",
            &key,
        ],
        &[&data, &witness],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "consistent with the signed checkpoint of {size2} records"
        )),
        "{out}"
    );

    // A restart after kill -9 checks out against the witness and goes on extending it.
    server.kill9();
    let server = Served::start(&data, &demo_policies(), &["--witness-dir", w]);
    server.wait_ready(200);
    assert_eq!(server.read(&token, 500).0, 200);
    let cp3 = checkpoint(&server);
    assert_eq!(cp3["key"], key.as_str(), "the log key persists");
    let size3 = cp3["size"].as_u64().unwrap();
    assert!(size3 > size2 as u64);
    let (s, p) = server.get(
        &format!("/v1/audit/proof/consistency?from={size2}"),
        Some(ADMIN),
    );
    assert_eq!(s, 200, "{p}");
    let d3 = leaves(&all_events(&server, "", 1000));
    assert_eq!(hexes(&p["proof"]), subproof(size2, &d3, true));
    assert_eq!(
        witnessed(&witness).1.len() as u64,
        32 * size3,
        "no hash lost or doubled across the restart"
    );
}

/// Rewrites the log as someone holding the database file would: from record `from`, with
/// `edit` applied to it, every later hash and the head recomputed; or, with `keep`, the
/// tail cut to `keep` records and the head moved back to match.
fn rewrite(data: &Path, from: i64, keep: Option<i64>) {
    use sqlx::{Connection as _, Row as _};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", data.join("mandate.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let rows = sqlx::query(
            "SELECT seq, ts_ms, kind, agent, task_id, data, prev_hash, hash FROM audit_events ORDER BY seq",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let mut prev = String::new();
        let mut last = (0_i64, String::new());
        for r in &rows {
            let seq: i64 = r.get("seq");
            let hash: String = r.get("hash");
            if let Some(keep) = keep {
                if seq > keep {
                    sqlx::query("DELETE FROM audit_events WHERE seq = ?1")
                        .bind(seq)
                        .execute(&mut conn)
                        .await
                        .unwrap();
                    continue;
                }
                last = (seq, hash);
                continue;
            }
            if seq < from {
                prev = hash.clone();
                last = (seq, hash);
                continue;
            }
            let mut data: Value = serde_json::from_str(r.get::<&str, _>("data")).unwrap();
            if seq == from {
                data["rewritten"] = Value::Bool(true);
            }
            let agent: Option<String> = r.get("agent");
            let task: Option<String> = r.get("task_id");
            let h = mandate_audit::event_hash(
                seq,
                r.get("ts_ms"),
                r.get("kind"),
                agent.as_deref(),
                task.as_deref(),
                &data,
                &prev,
            );
            sqlx::query("UPDATE audit_events SET data = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4")
                .bind(data.to_string())
                .bind(&prev)
                .bind(&h)
                .bind(seq)
                .execute(&mut conn)
                .await
                .unwrap();
            prev = h.clone();
            last = (seq, h);
        }
        sqlx::query("UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")
            .bind(last.0)
            .bind(&last.1)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
}

#[test]
fn a_rewrite_the_chain_cannot_see_is_caught_by_the_witness() {
    for (name, from, keep, why) in [
        (
            "record 3 rewritten, every later hash and the head recomputed",
            3,
            None,
            "record 3:",
        ),
        (
            "the tail cut and the head moved back",
            0,
            Some(5),
            "record 6:",
        ),
        ("the log key replaced", 0, None, "log key"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let witness = dir.path().join("witness");
        let w = witness.to_str().unwrap();
        let server = Served::start(&data, &demo_policies(), &["--witness-dir", w]);
        let id = server.agent("victim");
        let (_task, token) = server.task(&id);
        for n in 0..8 {
            assert_eq!(server.read(&token, n).0, 200);
        }
        let key = checkpoint(&server)["key"].as_str().unwrap().to_owned();
        server.kill9();
        if from > 0 || keep.is_some() {
            rewrite(&data, from, keep);
            // The hash chain alone is satisfied: that is the rewrite a checkpoint is for.
            let (code, out) = mandate(&["audit", "verify", "--data-dir", "{}"], &[&data]);
            assert_eq!(code, 0, "{name}: the chain alone verifies: {out}");
            let (code, out) = mandate(
                &[
                    "audit",
                    "verify",
                    "--data-dir",
                    "{}",
                    "--checkpoint",
                    "{}",
                    "--key",
                    &key,
                ],
                &[&data, &witness],
            );
            assert_eq!(code, 2, "{name}: {out}");
            assert!(
                out.contains(why),
                "{name}: names the first bad record: {out}"
            );
            // With the note alone (no hashes), still caught, if less precisely.
            let (code, out) = mandate(
                &[
                    "audit",
                    "verify",
                    "--data-dir",
                    "{}",
                    "--checkpoint",
                    "{}",
                    "--key",
                    &key,
                ],
                &[&data, &witness.join("checkpoint")],
            );
            assert_eq!(code, 2, "{name}, note only: {out}");
        } else {
            std::fs::remove_file(data.join("audit-log.key")).unwrap();
        }

        let server = Served::start(&data, &demo_policies(), &["--witness-dir", w]);
        let r = server.wait_ready(503);
        assert_eq!(r["error"]["code"], "audit_chain_broken", "{name}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{name}: {msg}");
        let (s, r) = server.read(&token, 99);
        assert_eq!(
            s, 503,
            "{name}: no decision on a log its witness refutes: {r}"
        );
        let (s, r) = server.get("/v1/audit/checkpoint", Some(ADMIN));
        assert_eq!(
            (s, r["error"]["code"].as_str()),
            (503, Some("audit_chain_broken")),
            "{name}: nothing is signed over it: {r}"
        );
        let (note, _) = witnessed(&witness);
        drop(server);
        assert!(
            note.contains("\u{2014} mandate.local/audit "),
            "{name}: the witness keeps its checkpoint"
        );
    }
}

#[test]
fn an_export_verifies_on_its_own_and_follow_streams_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Served::start(&data, &demo_policies(), &[]);
    let id = server.agent("exporter");
    let (_task, token) = server.task(&id);
    for n in 0..6 {
        assert_eq!(server.read(&token, n).0, 200);
    }
    let cp = checkpoint(&server);
    let note = dir.path().join("checkpoint.note");
    std::fs::write(&note, cp["note"].as_str().unwrap()).unwrap();
    let key = cp["key"].as_str().unwrap().to_owned();

    let o = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(["audit", "export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        all_events(&server, "", 1000),
        "the export is the log"
    );
    let export = dir.path().join("export.jsonl");
    std::fs::write(&export, &text).unwrap();
    let args = [
        "audit",
        "verify",
        "--export",
        "{}",
        "--checkpoint",
        "{}",
        "--key",
        &key,
    ];
    let (code, out) = mandate(&args, &[&export, &note]);
    assert_eq!(code, 0, "{out}");

    // Edit one record of the export: caught, and named.
    let mut edited: Vec<Value> = lines.clone();
    edited[3]["data"]["outcome"] = Value::String("deny".into());
    let body: String = edited.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&export, body).unwrap();
    let (code, out) = mandate(&args, &[&export, &note]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("record 4:"), "{out}");
    // An export cut short of the checkpoint is caught too.
    let body: String = lines[..4].iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&export, body).unwrap();
    let (code, out) = mandate(&args, &[&export, &note]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("record 5:"), "{out}");

    // Follow from the current end: new records arrive as they commit.
    let last = lines.last().unwrap()["seq"].as_i64().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args([
            "audit",
            "export",
            "--follow",
            "--after",
            &last.to_string(),
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for n in 10..13 {
        assert_eq!(server.read(&token, n).0, 200);
    }
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "follow ended early");
        let v: Value = serde_json::from_str(&line).unwrap();
        seqs.push(v["seq"].as_i64().unwrap());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(seqs, vec![last + 1, last + 2, last + 3]);
}

/// Which records a search should return.
type Matcher<'a> = Box<dyn Fn(&Value) -> bool + 'a>;

#[test]
fn search_finds_records_across_tasks_by_every_filter() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Served::start(&data, &demo_policies(), &[]);
    let a = server.agent("searcher-a");
    let b = server.agent("searcher-b");
    let (task_a, token_a) = server.task(&a);
    let (task_b, token_b) = server.task(&b);
    for n in 0..4 {
        assert_eq!(server.read(&token_a, n).0, 200);
        assert_eq!(server.read(&token_b, n).0, 200);
    }
    // One call outside the scope: denied.
    let (s, r) = server.post(
        "/v1/decide",
        Some(&token_a),
        serde_json::json!({ "tool": "tickets.delete", "action": "delete", "resource": "queue/open" }),
    );
    assert!(s == 200 || s == 403, "{s} {r}");

    let everything = all_events(&server, "", 1000);
    let cases: Vec<(String, Matcher<'_>)> = vec![
        (
            format!("&task={task_a}"),
            Box::new(|e: &Value| e["task_id"] == task_a.as_str()),
        ),
        (
            "&agent=searcher-b".into(),
            Box::new(|e: &Value| e["agent"] == "searcher-b"),
        ),
        (
            "&kind=decision".into(),
            Box::new(|e: &Value| e["kind"] == "decision"),
        ),
        (
            format!("&kind=decision&task={task_b}&outcome=allow"),
            Box::new(|e: &Value| {
                e["kind"] == "decision"
                    && e["task_id"] == task_b.as_str()
                    && e["data"]["outcome"] == "allow"
            }),
        ),
        (
            "&outcome=deny".into(),
            Box::new(|e: &Value| e["data"]["outcome"] == "deny"),
        ),
        (
            "&tool=tickets.search".into(),
            Box::new(|e: &Value| e["data"]["tool"] == "tickets.search"),
        ),
    ];
    for (query, want) in &cases {
        let expected: Vec<Value> = everything.iter().filter(|e| want(e)).cloned().collect();
        assert!(!expected.is_empty(), "{query}: the fixture has matches");
        assert_eq!(
            all_events(&server, query, 2),
            expected,
            "{query}, pages of 2"
        );
        assert_eq!(
            all_events(&server, query, 1000),
            expected,
            "{query}, one page"
        );
    }
    let policy = everything
        .iter()
        .find_map(|e| {
            e["data"]["policies"]
                .as_array()
                .and_then(|p| p.first())
                .cloned()
        })
        .expect("a decision names its policy");
    let q = format!("&policy={}", policy.as_str().unwrap());
    let by_policy = all_events(&server, &q, 1000);
    assert!(!by_policy.is_empty());
    assert!(by_policy.iter().all(|e| {
        e["data"]["policies"]
            .as_array()
            .is_some_and(|p| p.contains(&policy))
    }));

    // Time windows: [since, until).
    let mid = everything[everything.len() / 2]["ts_ms"].as_i64().unwrap();
    let before = all_events(&server, &format!("&until_ms={mid}"), 1000);
    let after = all_events(&server, &format!("&since_ms={mid}"), 1000);
    assert_eq!(before.len() + after.len(), everything.len());
    assert!(before.iter().all(|e| e["ts_ms"].as_i64().unwrap() < mid));
    assert!(after.iter().all(|e| e["ts_ms"].as_i64().unwrap() >= mid));

    // Hostile filter text is data, not SQL.
    assert!(all_events(&server, "&agent=x'%20OR%20'1'='1", 1000).is_empty());
    assert!(all_events(&server, "&task=%25", 1000).is_empty());
}

#[test]
fn the_control_map_is_judged_from_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Served::start(&data, &demo_policies(), &[]);
    let id = server.agent("mapped");
    let (_task, token) = server.task(&id);
    assert_eq!(server.read(&token, 1).0, 200);
    let (s, r) = server.get("/v1/reports/controls", Some(ADMIN));
    assert_eq!(s, 200, "{r}");
    let rows = r["controls"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|c| c["id"] == id).cloned().unwrap();
    for n in 1..=10 {
        let id = format!("ASI{n:02}");
        assert!(
            rows.iter().any(|c| c["id"] == id.as_str()),
            "{id} is mapped"
        );
    }
    for f in [
        "OWASP Agentic Top 10",
        "OWASP NHI Top 10",
        "OWASP MCP Top 10",
        "CSA MAESTRO",
        "MITRE ATLAS",
        "NIST AI RMF",
        "NIST CSF 2.0",
    ] {
        assert!(rows.iter().any(|c| c["framework"] == f), "{f}");
    }
    for c in rows {
        assert!(
            ["implemented", "partial", "gap"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(
            c["status"] == "implemented" || !c["gaps"].as_array().unwrap().is_empty(),
            "a control not implemented names its gap: {c}"
        );
    }
    // The demo bundle holds ticket writes for a human: that is the evidence for ASI09.
    let asi09 = row("ASI09");
    let text = asi09.to_string();
    assert!(text.contains("ticket-write-needs-approval"), "{asi09}");
    // No witness: the audit half of it is a gap, named.
    assert!(text.contains("no witness"), "{asi09}");
    assert_eq!(asi09["status"], "partial");
    // Events of this run are counted as evidence.
    assert!(
        row("MAP").to_string().contains("`task.started` events"),
        "{}",
        row("MAP")
    );
    // Delegation is not built: a gap, whatever is configured.
    assert_eq!(row("ASI07")["status"], "partial");
    assert!(row("ASI07").to_string().contains("delegation"));
    assert_eq!(server.get("/v1/reports/controls", Some(&token)).0, 403);
    drop(server);

    // With a witness and the key elsewhere, the audit mechanism is in place.
    let witness = dir.path().join("witness");
    let key = dir.path().join("keys").join("log.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let data2 = dir.path().join("data2");
    let server = Served::start(
        &data2,
        &demo_policies(),
        &[
            "--witness-dir",
            witness.to_str().unwrap(),
            "--log-key",
            key.to_str().unwrap(),
        ],
    );
    server.wait_ready(200);
    let (s, r) = server.get("/v1/reports/controls", Some(ADMIN));
    assert_eq!(s, 200, "{r}");
    let dem = r["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "DE.AE")
        .cloned()
        .unwrap();
    assert_eq!(dem["status"], "implemented", "{dem}");
    assert!(
        key.exists(),
        "the log key was created where it was asked for"
    );

    let o = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(["report", "controls", "--status", "gap", "--json"])
        .env("MANDATE_URL", format!("http://127.0.0.1:{}", server.port))
        .env("MANDATE_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let gaps = v["controls"].as_array().unwrap();
    assert!(!gaps.is_empty());
    assert!(gaps.iter().all(|c| c["status"] == "gap"));
}

/// An upstream that creates (201, `Location`, `ETag`), replaces (200, `ETag`), deletes
/// (204) and reads (200), answering each request on its own connection.
fn changing_upstream() -> u16 {
    use std::io::{Read as _, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0_u8; 4096];
                let head_end = loop {
                    if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while seen.len() < head_end + len {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let answer: &[u8] = if head.starts_with("post") {
                    b"HTTP/1.1 201 Created\r\nLocation: /api/tickets/t-77\r\nETag: \"v1\"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                } else if head.starts_with("put") {
                    b"HTTP/1.1 200 OK\r\nETag: \"v2\"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                } else if head.starts_with("delete") {
                    b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]"
                };
                let _ = s.write_all(answer);
            });
        }
    });
    port
}

#[test]
fn audit_changes_lists_what_a_task_changed_in_order() {
    let up = changing_upstream();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(
        demo_policies().join("start.cedar"),
        policies.join("start.cedar"),
    )
    .unwrap();
    std::fs::write(
        policies.join("tickets.cedar"),
        "@id(\"tickets-crud\")\npermit (principal, action in [Mandate::Action::\"read\", Mandate::Action::\"write\", Mandate::Action::\"delete\"], resource);\n",
    )
    .unwrap();
    let gateway = dir.path().join("gateway.toml");
    let mut toml = format!(
        "[[upstream]]\nname = \"tickets\"\nbase_url = \"http://127.0.0.1:{up}/api\"\nallow_private = true\n"
    );
    for (method, path, tool) in [
        ("GET", "/tickets", "tickets.search"),
        ("POST", "/tickets", "tickets.create"),
        ("PUT", "/tickets/{id}", "tickets.update"),
        ("DELETE", "/tickets/{id}", "tickets.delete"),
    ] {
        toml.push_str(&format!(
            "\n[[route]]\nupstream = \"tickets\"\nmethod = \"{method}\"\npath = \"{path}\"\ntool = \"{tool}\"\ndata_domain = \"support\"\n"
        ));
    }
    std::fs::write(&gateway, toml).unwrap();
    let data = dir.path().join("data");
    let server = Served::start(
        &data,
        &policies,
        &["--gateway-config", gateway.to_str().unwrap()],
    );
    let id = server.agent("changer");
    let (s, r) = server.post(
        "/v1/tasks",
        Some(&id),
        serde_json::json!({
            "purpose": "tidy the ticket queue",
            "scope": {
                "tools": ["tickets.search", "tickets.create", "tickets.update", "tickets.delete"],
                "actions": ["read", "write", "delete"],
                "data_domains": ["support"],
                "destinations": [format!("127.0.0.1:{up}")],
            },
            "ttl_secs": 600,
        }),
    );
    assert_eq!(s, 201, "{r}");
    let task = r["task_id"].as_str().unwrap().to_owned();
    let token = r["task_token"].as_str().unwrap().to_owned();
    let call = |method: &str, path: &str, body: Option<&Value>| {
        let (s, r) = common::http(server.port, method, path, Some(&token), body);
        assert!((200..300).contains(&s), "{method} {path}: {s} {r}");
    };
    let created = serde_json::json!({ "subject": "printer on fire" });
    call("GET", "/gw/tickets/tickets?status=open", None);
    call("POST", "/gw/tickets/tickets", Some(&created));
    call(
        "PUT",
        "/gw/tickets/tickets/t-77?notify=false",
        Some(&serde_json::json!({ "status": "closed" })),
    );
    call("DELETE", "/gw/tickets/tickets/t-12", None);
    // Results ride the next group commit; a completed task has flushed them.
    let (s, r) = server.post(
        &format!("/v1/tasks/{task}/complete"),
        Some(&token),
        serde_json::json!({}),
    );
    assert_eq!(s, 200, "{r}");

    // A call's result is recorded when its response has ended, with the next group
    // commit: wait until the three are there (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let changes: Vec<Value> = loop {
        let o = Command::new(env!("CARGO_BIN_EXE_mandate"))
            .args(["audit", "changes", &task, "--json", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let changes: Vec<Value> = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if changes.iter().all(|c| c["method"].is_string()) || std::time::Instant::now() > deadline {
            break changes;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let summary: Vec<(&str, &str, &str, u64)> = changes
        .iter()
        .map(|c| {
            (
                c["method"].as_str().unwrap(),
                c["target"].as_str().unwrap(),
                c["action"].as_str().unwrap(),
                c["upstream_status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("POST", "/api/tickets", "write", 201),
            ("PUT", "/api/tickets/t-77?notify=false", "write", 200),
            ("DELETE", "/api/tickets/t-12", "delete", 204),
        ],
        "writes and deletes only, in order, with the canonical target: {changes:?}"
    );
    assert_eq!(changes[0]["location"], "/api/tickets/t-77");
    assert_eq!(changes[0]["etag"], "\"v1\"");
    assert_eq!(changes[1]["etag"], "\"v2\"");
    let digest = format!(
        "sha256:{}",
        hex(&sha(&[serde_json::to_string(&created).unwrap().as_bytes()]))
    );
    assert_eq!(
        changes[0]["request_digest"],
        digest.as_str(),
        "the body as forwarded"
    );
    assert!(changes[2].get("request_digest").is_none());
    assert!(
        changes
            .iter()
            .all(|c| c["outcome"] == "done" && c["via"] == "http")
    );

    let o = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(["audit", "changes", &task, "--data-dir"])
        .arg(&data)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.starts_with(&format!("3 changes by task {task}")),
        "{text}"
    );
    assert!(text.contains("Location: /api/tickets/t-77"), "{text}");
    let o = Command::new(env!("CARGO_BIN_EXE_mandate"))
        .args(["audit", "changes", "task_nope", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

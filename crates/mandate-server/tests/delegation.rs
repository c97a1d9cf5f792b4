//! Delegation (R8) through the real server: RFC 8693 token exchange at `/oauth2/token`,
//! refusals of every widening, depth, policy on the chain, the strictest answer across
//! the chain, shared history, and cascading ends.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use base64::Engine as _;
use common::{ADMIN, Harness, Reply};
use serde_json::{Value, json};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

fn sub_task(tools: &[&str], actions: &[&str], extra: Value) -> Value {
    let mut d = json!({
        "type": "mandate_task",
        "purpose": "look up the customer's earlier tickets",
        "tools": tools,
        "actions": actions,
        "data_domains": ["support"],
    });
    if let (Some(d), Some(extra)) = (d.as_object_mut(), extra.as_object()) {
        d.extend(extra.clone());
    }
    d
}

impl Harness {
    async fn form(&self, pairs: &[(&str, &str)]) -> Reply {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let req = self
            .http
            .post(self.url("/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(req).await
    }

    async fn exchange(&self, parent: &str, actor: &str, details: Value) -> Reply {
        let details = json!([details]).to_string();
        self.form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", parent),
            ("subject_token_type", ACCESS),
            ("actor_token", actor),
            ("actor_token_type", JWT),
            ("authorization_details", &details),
        ])
        .await
    }

    /// Delegates and expects success: (child task id, child task token).
    async fn delegate(&self, parent: &str, actor: &str, details: Value) -> (String, String) {
        let r = self.exchange(parent, actor, details).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        (
            r.body["mandate"]["task_id"].as_str().unwrap().to_owned(),
            r.body["access_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn events(&self, task: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
            .await;
        r.body.as_array().cloned().unwrap_or_default()
    }
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn oauth(r: &Reply) -> (u16, &str, &str) {
    (
        r.status.as_u16(),
        r.body["error"].as_str().unwrap_or(""),
        r.body["code"].as_str().unwrap_or(""),
    )
}

#[tokio::test]
async fn a_delegate_gets_a_narrower_task_and_a_token_that_nests_the_chain() {
    let h = Harness::start().await;
    let triage = h.agent("triage", 2).await;
    let reader = h.agent("reader", 2).await;
    let (root, root_token) = h.task(&triage).await;

    let r = h
        .exchange(
            &root_token,
            &reader,
            sub_task(&["tickets.search"], &["read"], json!({ "ttl_secs": 300 })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.body["issued_token_type"], ACCESS);
    assert_eq!(r.body["token_type"], "Bearer");
    assert!(r.body["expires_in"].as_i64().unwrap() <= 300);
    assert_eq!(r.body["authorization_details"][0]["type"], "mandate_task");
    let m = &r.body["mandate"];
    assert_eq!(m["grant"]["tools"], json!({ "tickets.search": ["read"] }));
    assert_eq!(m["delegation"]["depth"], 1);
    assert_eq!(m["delegation"]["root_task"], root.as_str());
    assert_eq!(m["delegation"]["root_owner"], "alice@example.com");
    assert_eq!(m["delegation"]["chain"][0]["agent"], "triage");
    assert_eq!(m["delegation"]["chain"][1]["agent"], "reader");
    let child = m["task_id"].as_str().unwrap().to_owned();
    let token = r.body["access_token"].as_str().unwrap().to_owned();

    // RFC 8693 §4.1: the subject stays the root agent, the actor is the child.
    let c = claims(&token);
    assert_eq!(c["sub"], "spiffe://mandate.local/agent/triage", "{c}");
    assert_eq!(
        c["act"],
        json!({ "sub": "spiffe://mandate.local/agent/reader" })
    );
    assert_eq!(c["task_id"], child.as_str());

    // The child acts within its grant, and only there.
    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    let r = h.decide(&token, "tickets.update", "write").await;
    assert_eq!(r.body["outcome"], "deny", "{:?}", r.body);
    assert_eq!(r.body["policies"], json!(["mandate:grant-ceiling"]));

    // The chain is in the child's events and decisions.
    let events = h.events(&child).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "task.delegated", "{kinds:?}");
    assert_eq!(
        events[0]["data"]["parent_grant"]["tools"]["tickets.update"],
        json!(["write"])
    );
    let decision = events.iter().find(|e| e["kind"] == "decision").unwrap();
    assert_eq!(decision["data"]["delegation"]["root_task"], root.as_str());
    assert_eq!(decision["data"]["delegation"]["depth"], 1);
}

#[tokio::test]
async fn every_widening_is_refused_and_recorded() {
    let h = Harness::start().await;
    let triage = h.agent("triage", 2).await;
    let reader = h.agent("reader", 2).await;
    let (root, root_token) = h.task(&triage).await;

    let cases = [
        (
            "tool",
            sub_task(&["tickets.delete"], &["delete"], json!({})),
        ),
        (
            "unknown tool",
            sub_task(&["crm.export"], &["read"], json!({})),
        ),
        (
            "action",
            sub_task(&["tickets.search"], &["write"], json!({})),
        ),
        (
            "data domain",
            sub_task(
                &["tickets.search"],
                &["read"],
                json!({ "data_domains": ["finance"] }),
            ),
        ),
        (
            "destination",
            sub_task(
                &["tickets.search"],
                &["read"],
                json!({ "destinations": ["exfil.example.com:443"] }),
            ),
        ),
        (
            "lifetime",
            sub_task(&["tickets.search"], &["read"], json!({ "ttl_secs": 3000 })),
        ),
    ];
    for (what, details) in cases {
        let r = h.exchange(&root_token, &reader, details).await;
        assert_eq!(
            oauth(&r),
            (400, "invalid_authorization_details", "delegation_widens"),
            "{what}: {:?}",
            r.body
        );
        assert!(r.body["access_token"].is_null());
        assert!(
            !r.body["details"]["widening"].as_array().unwrap().is_empty(),
            "{what}"
        );
    }
    let refused: Vec<Value> = h
        .events(&root)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "delegation.refused")
        .collect();
    assert_eq!(refused.len(), 6);
    assert_eq!(refused[0]["data"]["child_agent"], "reader");
    assert!(refused[0]["data"]["parent_grant"]["tools"].is_object());
    assert!(refused[0]["data"]["requested"]["tools"].is_array());

    // Destinations are compared in canonical form: case does not widen.
    let (_, root2) = {
        let r = h
            .post("/v1/tasks", Some(&triage), json!({
                "purpose": "call the partner API",
                "scope": { "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"], "destinations": ["api.example.com:443"] },
            }))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        ((), r.body["task_token"].as_str().unwrap().to_owned())
    };
    let r = h
        .exchange(
            &root2,
            &reader,
            sub_task(
                &["tickets.search"],
                &["read"],
                json!({ "destinations": ["API.Example.com:443"] }),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn bad_parents_actors_and_forms_are_refused_with_rfc_6749_errors() {
    let h = Harness::start().await;
    let other = Harness::start().await;
    let triage = h.agent("triage", 2).await;
    let reader = h.agent("reader", 2).await;
    let (root, root_token) = h.task(&triage).await;
    let ok = || sub_task(&["tickets.search"], &["read"], json!({}));

    // A forged parent: the signature no longer matches.
    let mut forged = root_token.clone();
    forged.pop();
    forged.push(if root_token.ends_with('A') { 'B' } else { 'A' });
    let r = h.exchange(&forged, &reader, ok()).await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "invalid_subject_token"),
        "{:?}",
        r.body
    );

    // A foreign parent: a task token of another Mandate.
    let foreign_agent = other.agent("triage", 2).await;
    let (_, foreign) = other.task(&foreign_agent).await;
    let r = h.exchange(&foreign, &reader, ok()).await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "invalid_subject_token"),
        "{:?}",
        r.body
    );

    // The child's identity must be genuine too (an identity token is no task token).
    let r = h.exchange(&root_token, &root_token, ok()).await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "invalid_actor_token"),
        "{:?}",
        r.body
    );
    let r = h.exchange(&triage, &reader, ok()).await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "invalid_subject_token"),
        "{:?}",
        r.body
    );

    // Form rules.
    let details = json!([ok()]).to_string();
    let base = [
        ("grant_type", EXCHANGE),
        ("subject_token", root_token.as_str()),
        ("subject_token_type", ACCESS),
        ("actor_token", reader.as_str()),
        ("actor_token_type", JWT),
        ("authorization_details", details.as_str()),
    ];
    let with = |k: &'static str, v: &'static str| {
        let mut f: Vec<(&str, &str)> = base.iter().filter(|(n, _)| *n != k).copied().collect();
        f.push((k, v));
        f
    };
    let r = h.form(&with("grant_type", "password")).await;
    assert_eq!(
        oauth(&r),
        (400, "unsupported_grant_type", "unsupported_grant_type")
    );
    let r = h.form(&with("actor_token_type", ACCESS)).await;
    assert_eq!(oauth(&r).2, "unsupported_token_type");
    let r = h.form(&with("scope", "tickets")).await;
    assert_eq!(oauth(&r).1, "invalid_scope");
    let r = h.form(&with("audience", "somewhere-else")).await;
    assert_eq!(oauth(&r).1, "invalid_target");
    let r = h.form(&with("authorization_details", "[]")).await;
    assert_eq!(oauth(&r).1, "invalid_authorization_details");
    let two = json!([ok(), ok()]).to_string();
    let mut f: Vec<(&str, &str)> = base.to_vec();
    f.retain(|(k, _)| *k != "authorization_details");
    f.push(("authorization_details", &two));
    let r = h.form(&f).await;
    assert_eq!(oauth(&r).1, "invalid_authorization_details");
    let r = h
        .form(&with(
            "authorization_details",
            r#"[{"type":"mandate_task","purpose":"x","tools":["tickets.search"],"actions":["read"],"extra":1}]"#,
        ))
        .await;
    assert_eq!(
        oauth(&r).1,
        "invalid_authorization_details",
        "unknown fields are refused"
    );
    let r = h
        .form(&with(
            "authorization_details",
            r#"[{"type":"payment_initiation","purpose":"x","tools":["tickets.search"],"actions":["read"]}]"#,
        ))
        .await;
    assert_eq!(oauth(&r).1, "invalid_authorization_details");
    let mut dup = base.to_vec();
    dup.push(("subject_token", root_token.as_str()));
    let r = h.form(&dup).await;
    assert_eq!(oauth(&r), (400, "invalid_request", "duplicate_parameter"));
    let r = h
        .send(
            h.http
                .post(h.url("/oauth2/token"))
                .json(&json!({ "grant_type": EXCHANGE })),
        )
        .await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "unsupported_media_type")
    );

    // An ended parent delegates nothing.
    let r = h
        .post(
            &format!("/v1/tasks/{root}/revoke"),
            Some(ADMIN),
            json!({ "reason": "done" }),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = h.exchange(&root_token, &reader, ok()).await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "parent_not_active"),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn depth_is_bounded_and_the_chain_is_seen_by_policy() {
    let h = Harness::start().await;
    let a = h.agent("a", 2).await;
    let b = h.agent("b", 2).await;
    let c = h.agent("c", 2).await;
    let d = h.agent("d", 2).await;
    let e = h.agent("e", 2).await;
    let (_, root) = h.task(&a).await;
    let read = || sub_task(&["tickets.search"], &["read"], json!({}));
    let (_, t1) = h.delegate(&root, &b, read()).await;
    let (_, t2) = h.delegate(&t1, &c, read()).await;
    let (_, t3) = h.delegate(&t2, &d, read()).await;
    let r = h.exchange(&t3, &e, read()).await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "delegation_too_deep"),
        "{:?}",
        r.body
    );
    let r = h.decide(&t3, "tickets.search", "read").await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);

    // The act claim nests every actor, the newest outermost.
    let act = &claims(&t3)["act"];
    assert_eq!(act["sub"], "spiffe://mandate.local/agent/d");
    assert_eq!(act["act"]["sub"], "spiffe://mandate.local/agent/c");
    assert_eq!(act["act"]["act"]["sub"], "spiffe://mandate.local/agent/b");
    assert!(act["act"]["act"]["act"].is_null());

    // `context.delegation.depth`: the demo lets only the first delegate write (with an
    // approval, as its parent would need); deeper ones are not even granted a write. A
    // sub-task asks for every listed action on every listed tool, and each pair must be
    // held by the parent: the demo grants `tickets.update` for writes only.
    let write = || sub_task(&["tickets.update"], &["write"], json!({}));
    let (_, w1) = h.delegate(&root, &b, write()).await;
    let r = h.decide(&w1, "tickets.update", "write").await;
    assert_eq!(r.body["outcome"], "approval_required", "{:?}", r.body);
    let r = h.exchange(&w1, &c, write()).await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "delegation_refused"),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.body["details"]["items"][0]["policies"],
        json!(["deep-delegates-only-read"])
    );
}

/// A bundle where the parent agent needs a human for writes and the child does not, where
/// a tool may be searched at most twice per task (counting its delegates), and where
/// delegation is permitted only to `writer` and `reader`.
fn chain_bundle(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("chain");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("chain.cedar"),
        r#"
@id("start") permit (principal, action == Mandate::Action::"start_task", resource);
@id("delegate-to-known")
permit (principal, action == Mandate::Action::"delegate", resource)
when { ["writer", "reader"].contains(context.child.name) };
@id("read") permit (principal, action == Mandate::Action::"read", resource);
@id("triage-writes-need-a-human")
@approval_required("triage's writes need a human")
permit (principal == Mandate::Agent::"triage", action == Mandate::Action::"write", resource);
@id("writer-writes") permit (principal == Mandate::Agent::"writer", action == Mandate::Action::"write", resource);
@id("search-twice")
forbid (principal, action == Mandate::Action::"read", resource == Mandate::Tool::"tickets.search")
when { context.history.tool_calls >= 2 };
"#,
    )
    .unwrap();
    p
}

#[tokio::test]
async fn a_delegate_is_held_to_the_strictest_link_and_shares_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with(&chain_bundle(dir.path())).await;
    let triage = h.agent("triage", 2).await;
    let writer = h.agent("writer", 2).await;
    let stranger = h.agent("stranger", 2).await;
    let (root, root_token) = h.task(&triage).await;

    // Policy decides the delegation itself.
    let rw = || {
        sub_task(
            &["tickets.search", "tickets.update"],
            &["read", "write"],
            json!({}),
        )
    };
    let r = h.exchange(&root_token, &stranger, rw()).await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "delegation_refused"),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.body["details"]["decision"]["policies"],
        json!(["mandate:default-deny"])
    );

    let (child, token) = h.delegate(&root_token, &writer, rw()).await;
    // By itself the writer may write; as triage would be, the write needs a human.
    let r = h.decide(&token, "tickets.update", "write").await;
    assert_eq!(r.body["outcome"], "approval_required", "{:?}", r.body);
    assert_eq!(r.body["policies"], json!(["triage-writes-need-a-human"]));
    let approval = r.body["approval"]["id"].as_str().unwrap().to_owned();
    let a = h
        .get(&format!("/v1/approvals/{approval}"), Some(ADMIN))
        .await;
    assert_eq!(
        a.body["task_id"],
        child.as_str(),
        "the approval is the child's: {:?}",
        a.body
    );

    // The child's searches count on the parent: one each, then the parent's next is the
    // third for the chain.
    let r = h.decide(&root_token, "tickets.search", "read").await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    let r = h.decide(&root_token, "tickets.search", "read").await;
    assert_eq!(r.body["outcome"], "deny", "{:?}", r.body);
    assert_eq!(r.body["policies"], json!(["search-twice"]));
    // And the child inherited the parent's count at delegation time, so a second
    // delegate starts where the chain is.
    let events = h.events(&child).await;
    assert_eq!(events[0]["data"]["inherited"]["untrusted_content"], false);
    let _ = root;
}

#[tokio::test]
async fn ending_a_task_ends_its_descendants_and_spares_the_rest() {
    let h = Harness::start().await;
    let triage = h.agent("triage", 2).await;
    let reader = h.agent("reader", 2).await;
    let helper = h.agent("helper", 2).await;
    let read = || sub_task(&["tickets.search"], &["read"], json!({}));

    // Completing a child spares its parent and its sibling.
    let (root, root_token) = h.task(&triage).await;
    let (c1, t1) = h.delegate(&root_token, &reader, read()).await;
    let (_, t2) = h.delegate(&root_token, &helper, read()).await;
    let (_, g1) = h.delegate(&t1, &helper, read()).await;
    let r = h
        .post(&format!("/v1/tasks/{c1}/complete"), Some(&t1), json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        h.decide(&t1, "tickets.search", "read").await.code(),
        "task_not_active"
    );
    assert_eq!(
        h.decide(&g1, "tickets.search", "read").await.code(),
        "task_not_active"
    );
    assert_eq!(
        h.decide(&t2, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    assert_eq!(
        h.decide(&root_token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );

    // Revoking the root ends the whole tree before the answer.
    let (_, g2) = h.delegate(&t2, &reader, read()).await;
    let r = h
        .post(
            &format!("/v1/tasks/{root}/revoke"),
            Some(ADMIN),
            json!({ "reason": "incident" }),
        )
        .await;
    assert_eq!(r.status, 200);
    for t in [&root_token, &t2, &g2] {
        assert_eq!(
            h.decide(t, "tickets.search", "read").await.code(),
            "task_not_active"
        );
    }
    let g2_id = claims(&g2)["task_id"].as_str().unwrap().to_owned();
    let ended = h.events(&g2_id).await;
    let last = ended.iter().find(|e| e["kind"] == "task.revoked").unwrap();
    assert!(
        last["data"]["reason"].as_str().unwrap().contains(&root),
        "{last}"
    );

    // Quarantining an agent ends its tasks and every task delegated below them, whichever
    // agent runs it; the task above stays.
    let (_, top) = h.task(&triage).await;
    let (_, mid) = h.delegate(&top, &reader, read()).await;
    let (_, low) = h.delegate(&mid, &helper, read()).await;
    let r = h
        .post(
            "/v1/agents/reader/status",
            Some(ADMIN),
            json!({ "status": "quarantined", "reason": "honeytoken" }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["revoked_tasks"].as_array().unwrap().len(),
        2,
        "{:?}",
        r.body
    );
    assert_eq!(
        h.decide(&mid, "tickets.search", "read").await.code(),
        "task_not_active"
    );
    assert_eq!(
        h.decide(&low, "tickets.search", "read").await.code(),
        "task_not_active"
    );
    assert_eq!(
        h.decide(&top, "tickets.search", "read").await.body["outcome"],
        "allow"
    );

    // The trail still verifies.
    let r = h.get("/v1/audit/verify", Some(ADMIN)).await;
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
}

#[tokio::test]
async fn a_cascade_under_load_leaves_no_allowed_call_after_the_acknowledgement() {
    let h = std::sync::Arc::new(Harness::start().await);
    let triage = h.agent("triage", 2).await;
    let reader = h.agent("reader", 2).await;
    let read = || sub_task(&["tickets.search"], &["read"], json!({}));
    let (root, root_token) = h.task(&triage).await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        let (_, t) = h.delegate(&root_token, &reader, read()).await;
        for _ in 0..3 {
            let (_, g) = h.delegate(&t, &reader, read()).await;
            tokens.push(g);
        }
        tokens.push(t);
    }
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for t in tokens.clone() {
        let h = h.clone();
        let acked = acked.clone();
        callers.push(tokio::spawn(async move {
            let mut after = 0;
            for _ in 0..200 {
                let was_acked = acked.load(std::sync::atomic::Ordering::SeqCst);
                let r = h.decide(&t, "tickets.search", "read").await;
                if was_acked && r.body["outcome"] == "allow" {
                    after += 1;
                }
                if was_acked && r.code() == "task_not_active" {
                    break;
                }
            }
            after
        }));
    }
    let r = h
        .post(
            &format!("/v1/tasks/{root}/revoke"),
            Some(ADMIN),
            json!({ "reason": "stop" }),
        )
        .await;
    assert_eq!(r.status, 200);
    acked.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in callers {
        assert_eq!(
            c.await.unwrap(),
            0,
            "an allow after the acknowledged revocation"
        );
    }
    for t in &tokens {
        assert_eq!(
            h.decide(t, "tickets.search", "read").await.code(),
            "task_not_active"
        );
    }
}

#[tokio::test]
async fn a_restart_keeps_the_chain_and_its_bounds() {
    let h = Harness::start().await;
    let triage = h.agent("triage", 2).await;
    let reader = h.agent("reader", 2).await;
    let (root, root_token) = h.task(&triage).await;
    let (_, child) = h
        .delegate(
            &root_token,
            &reader,
            sub_task(&["tickets.search"], &["read"], json!({})),
        )
        .await;

    let data = h.dir.path().join("data");
    let issuer = h.server.issuer.clone();
    let Harness {
        server,
        dir,
        clock,
        http,
    } = h;
    server.shutdown().await.unwrap();
    let mut config = common::config(&data, &common::demo_policies(), clock.clone());
    config.issuer = Some(issuer);
    let h = Harness {
        server: mandate_server::Server::start(config).await.unwrap(),
        clock,
        http,
        dir,
    };

    // The child still acts, still within its grant and as its parent would.
    let r = h.decide(&child, "tickets.search", "read").await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    assert_eq!(
        r.body["policies"].as_array().map(Vec::len),
        Some(1),
        "{:?}",
        r.body
    );
    let r = h.decide(&child, "tickets.update", "write").await;
    assert_eq!(r.body["outcome"], "deny", "{:?}", r.body);
    // And the link to its parent survived: ending the parent still ends it.
    let r = h
        .post(
            &format!("/v1/tasks/{root}/revoke"),
            Some(ADMIN),
            json!({ "reason": "after restart" }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        h.decide(&child, "tickets.search", "read").await.code(),
        "task_not_active"
    );
}

#[tokio::test]
async fn when_both_links_ask_for_a_human_the_approval_satisfies_both() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("both");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("both.cedar"),
        r#"
@id("start") permit (principal, action == Mandate::Action::"start_task", resource);
@id("delegate") permit (principal, action == Mandate::Action::"delegate", resource);
@id("read") permit (principal, action == Mandate::Action::"read", resource);
@id("triage-two-humans")
@approval_required("triage's writes need two humans")
@approvals("2")
permit (principal == Mandate::Agent::"triage", action == Mandate::Action::"write", resource);
@id("writer-one-human")
@approval_required("the writer's writes need a human")
@owner_may_approve
permit (principal == Mandate::Agent::"writer", action == Mandate::Action::"write", resource);
"#,
    )
    .unwrap();
    let h = Harness::start_with(&p).await;
    let triage = h.agent("triage", 2).await;
    let writer = h.agent("writer", 2).await;
    let (_, root) = h.task(&triage).await;
    let (_, token) = h
        .delegate(
            &root,
            &writer,
            sub_task(&["tickets.update"], &["write"], json!({})),
        )
        .await;
    let r = h.decide(&token, "tickets.update", "write").await;
    assert_eq!(r.body["outcome"], "approval_required", "{:?}", r.body);
    let policies = r.body["policies"].to_string();
    assert!(
        policies.contains("writer-one-human") && policies.contains("triage-two-humans"),
        "{policies}"
    );
    let id = r.body["approval"]["id"].as_str().unwrap();
    let a = h.get(&format!("/v1/approvals/{id}"), Some(ADMIN)).await;
    assert_eq!(a.body["required"], 2, "{:?}", a.body);
    assert_eq!(a.body["owner_may_approve"], false, "{:?}", a.body);
}

#[tokio::test]
async fn a_task_has_a_bounded_number_of_live_delegates() {
    let h = Harness::start_configured(&common::demo_policies(), |c| {
        c.limits.max_delegates_per_task = 2;
    })
    .await;
    let triage = h.agent("triage", 2).await;
    let reader = h.agent("reader", 2).await;
    let (_, root_token) = h.task(&triage).await;
    let details = || sub_task(&["tickets.search"], &["read"], json!({}));
    let (first, first_token) = h.delegate(&root_token, &reader, details()).await;
    h.delegate(&root_token, &reader, details()).await;
    let r = h.exchange(&root_token, &reader, details()).await;
    assert_eq!(
        oauth(&r),
        (400, "invalid_request", "too_many_delegates"),
        "{:?}",
        r.body
    );
    // A delegate's own delegates count against it, not its parent; an ended one frees a
    // place.
    let r = h
        .post(
            &format!("/v1/tasks/{first}/complete"),
            Some(&first_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    h.delegate(&root_token, &reader, details()).await;
}

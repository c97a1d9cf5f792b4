//! Human approvals and break-glass over real HTTP: bound to the exact action, single use,
//! expiring, separation of duties, concurrency, policy changes, webhooks.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::{ADMIN, Harness, Reply};
use serde_json::{Value, json};

const WRITE_ARGS: &str = r#"{"ticket": "T-1", "status": "closed"}"#;

impl Harness {
    /// Adds an approver; returns their token.
    async fn approver(&self, name: &str, roles: &[&str], groups: &[&str]) -> String {
        let r = self
            .post(
                "/v1/approvers",
                Some(ADMIN),
                json!({ "name": name, "roles": roles, "groups": groups }),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["token"].as_str().unwrap().to_owned()
    }

    async fn write_call(&self, token: &str, args: Value, extra: Value) -> Reply {
        let mut body = json!({ "tool": "tickets.update", "action": "write", "resource": "ticket/T-1", "arguments": args });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.post("/v1/decide", Some(token), body).await
    }

    async fn approve(&self, approver: &str, id: &str) -> Reply {
        self.post(
            &format!("/v1/approvals/{id}/approve"),
            Some(approver),
            json!({}),
        )
        .await
    }

    async fn kinds(&self, task: &str) -> Vec<String> {
        let r = self
            .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
            .await;
        r.body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn args() -> Value {
    serde_json::from_str(WRITE_ARGS).unwrap()
}

/// Asks for the write; returns the approval id.
async fn ask(h: &Harness, token: &str) -> String {
    let r = h.write_call(token, args(), json!({})).await;
    assert_eq!(r.body["outcome"], "approval_required", "{:?}", r.body);
    r.body["approval"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_approval_is_for_one_exact_action_once() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (task, token) = h.task(&identity).await;
    let bob = h.approver("bob", &["approver"], &["default"]).await;
    let id = ask(&h, &token).await;

    // The approver sees exactly what will run, as Mandate parsed it.
    let r = h.get(&format!("/v1/approvals/{id}"), Some(&bob)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["action"]["arguments"], args());
    assert_eq!(r.body["action"]["purpose"], "summarise open tickets");
    assert_eq!(r.body["owner"], "alice@example.com");
    assert_eq!(r.body["state"], "pending");

    // Not yet approved: the retry is still waiting, nothing is allowed.
    let r = h
        .write_call(&token, args(), json!({ "approval_id": id }))
        .await;
    assert_eq!(r.body["outcome"], "approval_required", "{:?}", r.body);

    let r = h.approve(&bob, &id).await;
    assert_eq!(
        (r.status.as_u16(), r.body["state"].as_str()),
        (200, Some("approved")),
        "{:?}",
        r.body
    );

    // A different argument does not match the approval (and does not use it up).
    let r = h
        .write_call(
            &token,
            json!({ "ticket": "T-1", "status": "deleted" }),
            json!({ "approval_id": id }),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "approval_mismatch"),
        "{:?}",
        r.body
    );
    // Nor does another resource.
    let mut body = json!({ "tool": "tickets.update", "action": "write", "resource": "ticket/T-2", "arguments": args(), "approval_id": id });
    let r = h.post("/v1/decide", Some(&token), body.take()).await;
    assert_eq!(r.code(), "approval_mismatch", "{:?}", r.body);
    // Another task of the same agent cannot use it.
    let (_, other) = h.task(&identity).await;
    let r = h
        .write_call(&other, args(), json!({ "approval_id": id }))
        .await;
    assert_eq!(r.code(), "approval_mismatch", "{:?}", r.body);

    // The exact action runs once.
    let r = h
        .write_call(&token, args(), json!({ "approval_id": id }))
        .await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    assert_eq!(r.body["approval"]["approved_by"], json!(["bob"]));
    assert!(
        r.body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("approved by bob")
    );
    let r = h
        .write_call(&token, args(), json!({ "approval_id": id }))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "approval_used"),
        "{:?}",
        r.body
    );

    let kinds = h.kinds(&task).await;
    for k in [
        "approval.requested",
        "approval.approved",
        "approval.consumed",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    let r = h.get("/v1/audit/verify", Some(ADMIN)).await;
    assert_eq!(r.body["ok"], true);
}

#[tokio::test]
async fn expired_approvals_are_refused() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (task, token) = h.task(&identity).await;
    let bob = h.approver("bob", &["approver"], &["default"]).await;
    let id = ask(&h, &token).await;
    assert_eq!(h.approve(&bob, &id).await.status, 200);
    // Past its 15 minutes... but the task lives 10: the approval ends with the task.
    let r = h.get(&format!("/v1/approvals/{id}"), Some(&bob)).await;
    let exp = r.body["expires_at_ms"].as_i64().unwrap();
    let created = r.body["created_at_ms"].as_i64().unwrap();
    assert!(
        exp - created <= 600_000 && exp - created > 590_000,
        "never outlives its task"
    );

    let (task2, token2) = h.task(&identity).await;
    let id2 = ask(&h, &token2).await;
    h.clock.advance_ms(599_000);
    let r = h
        .write_call(&token2, args(), json!({ "approval_id": id2 }))
        .await;
    assert_eq!(r.body["outcome"], "approval_required");
    assert_eq!(h.approve(&bob, &id2).await.status, 200);
    h.clock.advance_ms(2_000);
    // The task itself expired too; the approval is refused either way.
    let r = h
        .write_call(&token2, args(), json!({ "approval_id": id2 }))
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = h.approve(&bob, &id).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "approval_expired"),
        "{:?}",
        r.body
    );
    // The sweeper records the expiry.
    let mut expired = false;
    for _ in 0..40 {
        if h.kinds(&task)
            .await
            .iter()
            .any(|k| k == "approval.invalidated")
        {
            expired = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(expired, "{:?}", h.kinds(&task).await);
    let _ = task2;
}

#[tokio::test]
async fn approval_shorter_than_task_expires_on_its_own() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let r = h
        .post("/v1/tasks", Some(&identity), json!({
            "purpose": "long task",
            "scope": { "tools": ["tickets.update"], "actions": ["write"], "data_domains": ["support"] },
            "ttl_secs": 1800,
        }))
        .await;
    let token = r.body["task_token"].as_str().unwrap().to_owned();
    let bob = h.approver("bob", &["approver"], &["default"]).await;
    let id = ask(&h, &token).await;
    assert_eq!(h.approve(&bob, &id).await.status, 200);
    h.clock.advance_ms(15 * 60 * 1000 + 1);
    let r = h
        .write_call(&token, args(), json!({ "approval_id": id }))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "approval_expired"),
        "{:?}",
        r.body
    );
    // The sweeper records the expiry.
    let mut expired = false;
    for _ in 0..40 {
        let r = h.get(&format!("/v1/approvals/{id}"), Some(&bob)).await;
        if r.body["state"] == "expired" {
            expired = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(expired, "the sweeper expires unused approvals");
}

#[tokio::test]
async fn separation_of_duties() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    let id = ask(&h, &token).await;

    // The agent's owner may not approve its requests.
    let alice = h
        .approver("alice@example.com", &["approver"], &["default"])
        .await;
    let r = h.approve(&alice, &id).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "separation_of_duties"),
        "{:?}",
        r.body
    );

    // An agent never approves: neither its task token nor its identity token.
    for t in [&token, &identity] {
        let r = h.approve(t, &id).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (403, "approver_required"),
            "{:?}",
            r.body
        );
    }
    // The admin token is not a person.
    let r = h.approve(ADMIN, &id).await;
    assert_eq!(r.code(), "approver_required", "{:?}", r.body);
    // An approver of another group, or without the role, may not either.
    let finance = h.approver("fin", &["approver"], &["finance"]).await;
    assert_eq!(h.approve(&finance, &id).await.code(), "not_in_group");
    let rev = h.approver("rev", &["reviewer"], &["default"]).await;
    assert_eq!(h.approve(&rev, &id).await.code(), "role_required");
    // A disabled approver's token stops working.
    let carol = h.approver("carol", &["approver"], &["default"]).await;
    let r = h
        .post("/v1/approvers/carol/disable", Some(ADMIN), json!({}))
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(h.approve(&carol, &id).await.code(), "approver_required");
    // Nothing was approved by any of them.
    let r = h.get(&format!("/v1/approvals/{id}"), Some(ADMIN)).await;
    assert_eq!(
        (
            r.body["state"].as_str(),
            r.body["votes"].as_array().unwrap().len()
        ),
        (Some("pending"), 0)
    );
    // An agent may read its own approval, not another agent's.
    let r = h.get(&format!("/v1/approvals/{id}"), Some(&token)).await;
    assert_eq!(r.status, 200);
    let other = h.agent("other", 1).await;
    let r = h.get(&format!("/v1/approvals/{id}"), Some(&other)).await;
    assert_eq!(r.code(), "not_your_approval");
}

#[tokio::test]
async fn fifty_concurrent_approves_one_execution() {
    let h = Arc::new(Harness::start().await);
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    let id = ask(&h, &token).await;
    let mut approvers = Vec::new();
    for i in 0..50 {
        approvers.push(
            h.approver(&format!("ap{i}"), &["approver"], &["default"])
                .await,
        );
    }
    let mut joins = Vec::new();
    for t in approvers {
        let (h, id) = (Arc::clone(&h), id.clone());
        joins.push(tokio::spawn(async move {
            h.approve(&t, &id).await.status.as_u16()
        }));
    }
    let mut ok = 0;
    for j in joins {
        if j.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1, "exactly one approve counts");
    // And of 50 concurrent uses, exactly one executes.
    let mut joins = Vec::new();
    for _ in 0..50 {
        let (h, id, token) = (Arc::clone(&h), id.clone(), token.clone());
        joins.push(tokio::spawn(async move {
            let r = h
                .write_call(&token, args(), json!({ "approval_id": id }))
                .await;
            r.body["outcome"] == "allow"
        }));
    }
    let mut allowed = 0;
    for j in joins {
        allowed += usize::from(j.await.unwrap());
    }
    assert_eq!(allowed, 1, "one approval, one execution");
}

#[tokio::test]
async fn a_waiting_call_proceeds_once_approved_and_a_denial_denies() {
    let h = Arc::new(Harness::start().await);
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    let bob = h.approver("bob", &["approver"], &["default"]).await;

    let waiting = {
        let (h, token) = (Arc::clone(&h), token.clone());
        tokio::spawn(async move {
            h.write_call(&token, args(), json!({ "wait_secs": 20 }))
                .await
        })
    };
    // Find the request the waiting call opened, then approve it.
    let mut id = None;
    for _ in 0..100 {
        let r = h.get("/v1/approvals?state=pending", Some(&bob)).await;
        if let Some(a) = r.body.as_array().and_then(|a| a.first()) {
            id = Some(a["id"].as_str().unwrap().to_owned());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let id = id.expect("the waiting call opened an approval");
    assert_eq!(h.approve(&bob, &id).await.status, 200);
    let r = waiting.await.unwrap();
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    assert_eq!(r.body["approval"]["state"], "consumed");

    // A denial: the waiting call ends with a deny naming who refused and why.
    let id = ask(&h, &token).await;
    let r = h
        .post(
            &format!("/v1/approvals/{id}/deny"),
            Some(&bob),
            json!({ "reason": "not during the freeze" }),
        )
        .await;
    assert_eq!(r.body["state"], "denied", "{:?}", r.body);
    let r = h
        .write_call(&token, args(), json!({ "approval_id": id }))
        .await;
    assert_eq!(r.body["outcome"], "deny", "{:?}", r.body);
    assert_eq!(r.body["policies"], json!(["mandate:approval-denied"]));
    assert!(
        r.body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("not during the freeze")
    );
    // Approving a denied request changes nothing.
    assert_eq!(h.approve(&bob, &id).await.code(), "approval_denied");
    // Waits are bounded.
    let r = h
        .write_call(&token, args(), json!({ "wait_secs": 26 }))
        .await;
    assert_eq!(r.status, 422);
}

fn copy_demo(to: &Path) {
    for entry in std::fs::read_dir(common::demo_policies()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "cedar") {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_policy_change_invalidates_approvals() {
    let policies = tempfile::tempdir().unwrap();
    copy_demo(policies.path());
    let h = Harness::start_with(policies.path()).await;
    let identity = h.agent("bot", 1).await;
    let (task, token) = h.task(&identity).await;
    let bob = h.approver("bob", &["approver"], &["default"]).await;
    let pending = ask(&h, &token).await;
    let approved = {
        let r = h
            .write_call(&token, json!({ "ticket": "T-9" }), json!({}))
            .await;
        r.body["approval"]["id"].as_str().unwrap().to_owned()
    };
    assert_eq!(h.approve(&bob, &approved).await.status, 200);

    std::fs::write(
        policies.path().join("extra.cedar"),
        "@id(\"noop\") forbid(principal, action == Mandate::Action::\"execute\", resource);",
    )
    .unwrap();
    let r = h.post("/v1/policies/reload", Some(ADMIN), json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Neither the pending nor the approved one survives the change.
    let r = h.approve(&bob, &pending).await;
    assert_eq!(r.code(), "approval_invalid", "{:?}", r.body);
    let r = h
        .write_call(
            &token,
            json!({ "ticket": "T-9" }),
            json!({ "approval_id": approved }),
        )
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.code(), "approval_invalid");
    let kinds = h.kinds(&task).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "approval.invalidated")
            .count(),
        2,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn two_approvers_task_start_approval_and_queue_bounds() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("p.cedar"),
        r#"
@id("start-needs-a-human")
@approval_required("production tasks need a human")
permit(principal, action == Mandate::Action::"start_task", resource);

@id("payments-need-two")
@approval_required("payments need two people")
@approvals("2")
@approver_group("finance")
permit(principal, action == Mandate::Action::"write", resource == Mandate::Tool::"payments.send");
"#,
    )
    .unwrap();
    let h = Harness::start_with(policies.path()).await;
    let identity = h.agent("bot", 1).await;
    let fin1 = h
        .approver("fin1", &["approver"], &["finance", "default"])
        .await;
    let fin2 = h.approver("fin2", &["approver"], &["finance"]).await;

    // The start waits for a human; no token until then.
    let r = h
        .post(
            "/v1/tasks",
            Some(&identity),
            json!({
                "purpose": "pay the invoice",
                "scope": { "tools": ["payments.send"], "actions": ["write"] },
                "ttl_secs": 600,
            }),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert!(r.body.get("task_token").is_none());
    let task = r.body["task_id"].as_str().unwrap().to_owned();
    let start = r.body["approval"]["id"].as_str().unwrap().to_owned();
    let r = h
        .post(
            &format!("/v1/tasks/{task}/activate"),
            Some(&identity),
            json!({ "approval_id": start }),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "approval_pending"),
        "{:?}",
        r.body
    );
    assert_eq!(h.approve(&fin1, &start).await.status, 200);
    let r = h
        .post(
            &format!("/v1/tasks/{task}/activate"),
            Some(&identity),
            json!({ "approval_id": start }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let token = r.body["task_token"].as_str().unwrap().to_owned();
    let r = h
        .post(
            &format!("/v1/tasks/{task}/activate"),
            Some(&identity),
            json!({ "approval_id": start }),
        )
        .await;
    assert_eq!(r.status, 409, "a start approval is used once: {:?}", r.body);

    // Two distinct finance approvers are needed for a payment.
    let pay = |amount: u32| json!({ "tool": "payments.send", "action": "write", "arguments": { "amount": amount } });
    let r = h.post("/v1/decide", Some(&token), pay(100)).await;
    assert_eq!(r.body["outcome"], "approval_required", "{:?}", r.body);
    assert_eq!(r.body["approval"]["required"], 2);
    let id = r.body["approval"]["id"].as_str().unwrap().to_owned();
    let r = h.approve(&fin1, &id).await;
    assert_eq!(r.body["state"], "pending", "one of two: {:?}", r.body);
    assert_eq!(
        h.approve(&fin1, &id).await.code(),
        "already_approved_by_you"
    );
    let mut body = pay(100);
    body["approval_id"] = json!(id);
    let r = h.post("/v1/decide", Some(&token), body.clone()).await;
    assert_eq!(r.body["outcome"], "approval_required");
    assert_eq!(h.approve(&fin2, &id).await.body["state"], "approved");
    let r = h.post("/v1/decide", Some(&token), body).await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    assert_eq!(r.body["approval"]["approved_by"], json!(["fin1", "fin2"]));
    let kinds = h.kinds(&task).await;
    assert!(
        kinds.iter().any(|k| k == "approval.vote") && kinds.iter().any(|k| k == "task.activated"),
        "{kinds:?}"
    );

    // A task cannot flood approvers: at most 5 pending requests.
    for amount in 0..5 {
        let r = h.post("/v1/decide", Some(&token), pay(amount)).await;
        assert_eq!(r.body["outcome"], "approval_required", "{:?}", r.body);
    }
    let r = h.post("/v1/decide", Some(&token), pay(99)).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (429, "approval_queue_full"),
        "{:?}",
        r.body
    );
}

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn webhook_receiver() -> (String, Received) {
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                store.lock().unwrap().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test]
async fn webhooks_are_signed_and_break_glass_is_loud() {
    let h = Harness::start().await;
    let (url, got) = webhook_receiver().await;
    let r = h
        .post_put("/v1/approver-groups/default", json!({ "webhook_url": url }))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let secret = r.body["webhook_secret"].as_str().unwrap().to_owned();

    let identity = h.agent("bot", 2).await;
    let (task, token) = h.task(&identity).await;
    let id = ask(&h, &token).await;
    let mut delivered = None;
    for _ in 0..100 {
        if let Some(d) = got.lock().unwrap().first().cloned() {
            delivered = Some(d);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (headers, body) = delivered.expect("the group's webhook was called");
    let sig = headers["mandate-signature"].to_str().unwrap();
    let now = h.clock.now_secs_for_test();
    assert!(mandate_server::webhook::verify(
        secret.as_bytes(),
        sig,
        &body,
        now,
        300
    ));
    assert!(!mandate_server::webhook::verify(
        b"wrong", sig, &body, now, 300
    ));
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["event"], "approval.requested");
    assert_eq!(payload["approval"]["id"], id);
    assert_eq!(payload["approval"]["action"]["arguments"], args());
    assert!(
        payload["link"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/approvals/{id}"))
    );

    // Break-glass: only for holders of the role, only with a real justification.
    let dana = h.approver("dana", &["break_glass"], &["default"]).await;
    let erin = h.approver("erin", &["reviewer"], &["default"]).await;
    let declare = |justification: &str| {
        json!({
            "agent": "bot", "justification": justification,
            "scope": { "tools": ["tickets.delete"], "actions": ["delete"], "data_domains": ["support"] },
            "ttl_secs": 600,
        })
    };
    let r = h
        .post(
            "/v1/break-glass",
            Some(&erin),
            declare("the queue is on fire, need to purge spam"),
        )
        .await;
    assert_eq!(r.code(), "role_required", "{:?}", r.body);
    let r = h
        .post("/v1/break-glass", Some(&dana), declare("urgent"))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "justification_required"),
        "{:?}",
        r.body
    );
    let r = h.post("/v1/break-glass", Some(&dana), json!({ "agent": "bot", "scope": { "tools": ["tickets.delete"], "actions": ["delete"] } })).await;
    assert_eq!(r.status, 422, "justification is mandatory: {:?}", r.body);
    let r = h
        .post(
            "/v1/break-glass",
            Some(&dana),
            declare("spam flood: 40k bogus tickets, purge before the SLA clock"),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let bg = r.body["break_glass"]["id"].as_str().unwrap().to_owned();
    let bg_task = r.body["break_glass"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bg_token = r.body["task_token"].as_str().unwrap().to_owned();
    let r = h.post_put_too_long_ttl().await;
    assert_eq!(r.status, 422);

    // Outside policy (the demo forbids deletes), inside the emergency grant, flagged.
    let r = h
        .post(
            "/v1/decide",
            Some(&bg_token),
            json!({ "tool": "tickets.delete", "action": "delete", "data_domain": "support" }),
        )
        .await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    assert_eq!(r.body["break_glass"], true);
    assert_eq!(r.body["policies"], json!(["mandate:break-glass"]));
    let r = h
        .post(
            "/v1/decide",
            Some(&bg_token),
            json!({ "tool": "crm.export", "action": "read" }),
        )
        .await;
    assert_eq!(
        r.body["outcome"], "deny",
        "the grant still bounds it: {:?}",
        r.body
    );
    let events = h
        .get(&format!("/v1/tasks/{bg_task}/events"), Some(ADMIN))
        .await;
    let events = events.body.as_array().unwrap();
    assert_eq!(events[0]["kind"], "break_glass.declared");
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] == "decision")
            .all(|e| e["data"]["break_glass"] == true)
    );

    // The after-review is closed by someone else, once.
    let r = h
        .post(
            &format!("/v1/break-glass/{bg}/review"),
            Some(&dana),
            json!({ "notes": "fine" }),
        )
        .await;
    assert_eq!(r.code(), "role_required");
    let both = h
        .approver("dana2", &["break_glass", "reviewer"], &["default"])
        .await;
    // One emergency at a time per agent: grants cannot be chained.
    let second = declare("second incident on the same queue, purge again");
    let r = h.post("/v1/break-glass", Some(&both), second.clone()).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "break_glass_active"),
        "{:?}",
        r.body
    );
    // The review covers every action: not before the grant has ended.
    let r = h
        .post(
            &format!("/v1/break-glass/{bg}/review"),
            Some(&erin),
            json!({ "notes": "too early" }),
        )
        .await;
    assert_eq!(r.code(), "break_glass_active", "{:?}", r.body);
    let end = |task: String| {
        let h = &h;
        async move {
            let r = h
                .post(
                    &format!("/v1/tasks/{task}/revoke"),
                    Some(ADMIN),
                    json!({ "reason": "incident over" }),
                )
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    end(bg_task.clone()).await;
    let r = h.post("/v1/break-glass", Some(&both), second).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let bg2 = r.body["break_glass"]["id"].as_str().unwrap().to_owned();
    end(r.body["break_glass"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned())
    .await;
    let r = h
        .post(
            &format!("/v1/break-glass/{bg2}/review"),
            Some(&both),
            json!({ "notes": "mine" }),
        )
        .await;
    assert_eq!(r.code(), "separation_of_duties", "{:?}", r.body);
    let r = h
        .post(
            &format!("/v1/break-glass/{bg}/review"),
            Some(&erin),
            json!({ "notes": "spam purge verified" }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["review"]["by"], "erin");
    let r = h
        .post(
            &format!("/v1/break-glass/{bg}/review"),
            Some(&erin),
            json!({ "notes": "again" }),
        )
        .await;
    assert_eq!(r.code(), "already_reviewed");

    // The alert went to the group's webhook too.
    let mut alerted = false;
    for _ in 0..100 {
        alerted = got
            .lock()
            .unwrap()
            .iter()
            .any(|(h, _)| h["mandate-event"] == "break_glass.declared");
        if alerted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(alerted);

    // Reports: who approved what, break-glass uses, granted versus used.
    let r = h.get("/v1/reports/approvals", Some(&erin)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["break_glass"].as_array().unwrap().len(), 2);
    let r = h.get("/v1/reports/access/bot", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let pairs = r.body["pairs"].as_array().unwrap();
    let delete = pairs
        .iter()
        .find(|p| p["tool"] == "tickets.delete")
        .unwrap();
    assert_eq!(delete["allowed"], 1);
    assert!(
        r.body["recommendations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().contains("tickets.update write"))
    );
    let r = h.get("/v1/reports/access/bot", Some(&dana)).await;
    assert_eq!(r.code(), "role_required");
    let _ = task;
}

impl Harness {
    async fn post_put(&self, path: &str, body: Value) -> Reply {
        self.send(self.http.put(self.url(path)).bearer_auth(ADMIN).json(&body))
            .await
    }

    async fn post_put_too_long_ttl(&self) -> Reply {
        let dana = self.approver("dana3", &["break_glass"], &["default"]).await;
        self.post(
            "/v1/break-glass",
            Some(&dana),
            json!({
                "agent": "bot", "justification": "a long enough justification for the test",
                "scope": { "tools": ["tickets.delete"], "actions": ["delete"] }, "ttl_secs": 7200,
            }),
        )
        .await
    }
}

trait NowSecs {
    fn now_secs_for_test(&self) -> i64;
}

impl NowSecs for mandate_core::ManualClock {
    fn now_secs_for_test(&self) -> i64 {
        use mandate_core::Clock as _;
        self.now_secs()
    }
}

#[tokio::test]
async fn an_approval_cannot_satisfy_stricter_rules_that_arrived_later() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("p.cedar"),
        r#"
@id("start") permit(principal, action == Mandate::Action::"start_task", resource);
@id("read") permit(principal, action == Mandate::Action::"read", resource);
@id("write-one")
@approval_required("a write needs a human")
permit(principal, action == Mandate::Action::"write", resource);
@id("write-after-sensitive-read-two")
@approval_required("after reading confidential data, two humans")
@approvals("2")
permit(principal, action == Mandate::Action::"write", resource)
when { context.history.sensitive_reads > 0 };
"#,
    )
    .unwrap();
    let h = Harness::start_with(policies.path()).await;
    let identity = h.agent("bot", 1).await;
    let r = h
        .post(
            "/v1/tasks",
            Some(&identity),
            json!({
                "purpose": "update a ticket",
                "scope": { "tools": ["tickets.update", "crm.read"], "actions": ["read", "write"] },
                "ttl_secs": 600,
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let token = r.body["task_token"].as_str().unwrap().to_owned();
    let bob = h.approver("bob", &["approver"], &["default"]).await;
    let id = ask(&h, &token).await;
    assert_eq!(h.approve(&bob, &id).await.body["state"], "approved");
    // Now the task reads confidential data: the same write needs two people.
    let r = h
        .post(
            "/v1/decide",
            Some(&token),
            json!({ "tool": "crm.read", "action": "read", "sensitivity": "confidential" }),
        )
        .await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    let r = h
        .write_call(&token, args(), json!({ "approval_id": id }))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "approval_mismatch"),
        "{:?}",
        r.body
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 approvers")
    );

    // Refused human attempts are in the audit trail too.
    let store = mandate_store::SqliteStore::open_existing(&h.dir.path().join("data"))
        .await
        .unwrap();
    let alice = h
        .approver("alice@example.com", &["approver"], &["default"])
        .await;
    let id = ask(&h, &token).await;
    assert_eq!(h.approve(&alice, &id).await.code(), "separation_of_duties");
    use mandate_store::Store as _;
    let refused: Vec<_> = store
        .events_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "human.refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].data["by"], "alice@example.com");
    assert_eq!(refused[0].data["code"], "separation_of_duties");
}

impl Harness {
    /// Stops the server and starts another on the same data directory and clock.
    async fn restart(self) -> Harness {
        let data = self.dir.path().join("data");
        let issuer = self.server.issuer.clone();
        let Harness {
            server,
            dir,
            clock,
            http,
        } = self;
        server.shutdown().await.unwrap();
        let mut config = common::config(&data, &common::demo_policies(), clock.clone());
        config.issuer = Some(issuer);
        let server = mandate_server::Server::start(config).await.unwrap();
        Harness {
            server,
            clock,
            http,
            dir,
        }
    }
}

#[tokio::test]
async fn approvals_and_break_glass_survive_a_restart() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    let bob = h.approver("bob", &["approver"], &["default"]).await;
    let dana = h.approver("dana", &["break_glass"], &["default"]).await;
    let id = ask(&h, &token).await;
    assert_eq!(h.approve(&bob, &id).await.status, 200);
    let r = h
        .post(
            "/v1/break-glass",
            Some(&dana),
            json!({
                "agent": "bot", "justification": "the nightly purge is stuck and the disk is full",
                "scope": { "tools": ["tickets.delete"], "actions": ["delete"] }, "ttl_secs": 600,
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let bg_token = r.body["task_token"].as_str().unwrap().to_owned();

    let h = h.restart().await;
    // The acknowledged approval is still there and still good for exactly one use.
    let r = h
        .write_call(&token, args(), json!({ "approval_id": id }))
        .await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    let r = h
        .write_call(&token, args(), json!({ "approval_id": id }))
        .await;
    assert_eq!(r.code(), "approval_used");
    // The break-glass grant is still break-glass (not re-decided away by policy on restart).
    let r = h
        .post(
            "/v1/decide",
            Some(&bg_token),
            json!({ "tool": "tickets.delete", "action": "delete" }),
        )
        .await;
    assert_eq!(
        (r.body["outcome"].as_str(), r.body["break_glass"].as_bool()),
        (Some("allow"), Some(true)),
        "{:?}",
        r.body
    );
    // And the approver's token still works.
    let id = ask(&h, &token).await;
    assert_eq!(h.approve(&bob, &id).await.status, 200);
}

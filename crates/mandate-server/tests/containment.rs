//! Containment (R9) through the real server: each signal firing its configured response
//! (honeytoken → quarantine, denial burst → revoke with its delegates, calls outside the
//! grant → step-up that turns a write into `approval_required`, a human's denial → alert,
//! a rate far above the agent's own baseline → revoke), Security Event Tokens received
//! and verified by a receiver, the alert webhook signed, and plan changes that narrow and
//! widen.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::upstream::Upstream;
use common::{ADMIN, Harness, Reply};
use mandate_server::containment::ContainmentConfig;
use serde_json::{Value, json};

/// A bundle where agents read anything, write `tickets.update` without a human, never
/// delete, and `tickets.export_all` is a honeytoken.
fn bundle(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("policies");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("policies.cedar"),
        r#"
@id("start") permit (principal, action == Mandate::Action::"start_task", resource)
when { principal.status == "active" && !context.tools.contains("billing.refund") };
@id("refunds-need-a-human")
@approval_required("a task that refunds needs a human")
permit (principal, action == Mandate::Action::"start_task", resource)
when { principal.status == "active" && context.tools.contains("billing.refund") };
@id("refund") permit (principal, action == Mandate::Action::"write", resource == Mandate::Tool::"billing.refund");
@id("read") permit (principal, action == Mandate::Action::"read", resource);
@id("write") permit (principal, action == Mandate::Action::"write", resource == Mandate::Tool::"tickets.update");
@id("no-deletes") forbid (principal, action == Mandate::Action::"delete", resource);
@id("delegate") permit (principal, action == Mandate::Action::"delegate", resource);
"#,
    )
    .unwrap();
    std::fs::write(
        p.join("tools.json"),
        r#"{ "tools": [ { "name": "tickets.export_all", "server": "tickets", "risk": "critical", "honeytoken": true } ] }"#,
    )
    .unwrap();
    p
}

async fn start(rules: &str) -> (Harness, Upstream) {
    start_with(rules, |_| None).await
}

/// Starts with containment `rules`, and a gateway when `gateway` makes one of the
/// receiver's address (the receiver also answers as an upstream).
async fn start_with(
    rules: &str,
    gateway: impl FnOnce(std::net::SocketAddr) -> Option<String>,
) -> (Harness, Upstream) {
    let receiver = Upstream::start().await;
    let gateway = gateway(receiver.addr)
        .map(|t| Arc::new(mandate_gateway::GatewayConfig::from_toml(&t).unwrap()));
    let text = format!(
        "{rules}\n[alert_webhook]\nurl = \"http://{0}/alert\"\nsecret = \"alert-secret-0123456789\"\n\
         [[ssf_receiver]]\nurl = \"http://{0}/ssf\"\naudience = \"https://idp.example\"\n",
        receiver.addr
    );
    let config = Arc::new(ContainmentConfig::from_toml(&text).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let policies = bundle(tmp.path());
    let h = Harness::start_configured(&policies, move |c| {
        c.containment = Some(config);
        c.gateway = gateway;
    })
    .await;
    // The bundle outlives the test's server (a restart loads it again).
    std::mem::forget(tmp);
    (h, receiver)
}

impl Harness {
    /// Stops the server and starts it again on the same data, bundle and containment.
    async fn restart(self) -> Harness {
        let data = self.dir.path().join("data");
        let issuer = self.server.issuer.clone();
        let policies = self.server.engine.config.policies.clone();
        let containment = self.server.engine.config.containment.clone();
        let Harness {
            server,
            dir,
            clock,
            http,
        } = self;
        server.shutdown().await.unwrap();
        let mut config = common::config(&data, &policies, clock.clone());
        config.issuer = Some(issuer);
        config.containment = containment;
        let server = mandate_server::Server::start(config).await.unwrap();
        Harness {
            server,
            clock,
            http,
            dir,
        }
    }
}

impl Harness {
    async fn start_task(
        &self,
        identity: &str,
        tools: &[&str],
        actions: &[&str],
    ) -> (String, String) {
        let r = self
            .post(
                "/v1/tasks",
                Some(identity),
                json!({
                    "purpose": "triage open tickets",
                    "scope": { "tools": tools, "actions": actions, "data_domains": ["support"] },
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

    async fn call(&self, token: &str, tool: &str, action: &str) -> Reply {
        self.post(
            "/v1/decide",
            Some(token),
            json!({ "tool": tool, "action": action, "resource": "ticket/T-1", "arguments": {} }),
        )
        .await
    }

    async fn events(&self, task: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
            .await;
        r.body.as_array().cloned().unwrap_or_default()
    }

    /// Waits (bounded) until the task has a `containment.fired` event; returns its details.
    async fn fired(&self, task: &str) -> Value {
        for _ in 0..200 {
            if let Some(e) = self
                .events(task)
                .await
                .into_iter()
                .find(|e| e["kind"] == "containment.fired")
            {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "no containment.fired for task {task}: {:?}",
            self.events(task).await
        );
    }
}

/// SETs the receiver got, verified against Mandate's JWKS: (typ header, claims).
async fn sets(h: &Harness, receiver: &Upstream, want: usize) -> Vec<Value> {
    let jwks: jsonwebtoken::jwk::JwkSet = h
        .http
        .get(h.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for _ in 0..200 {
        let got: Vec<common::upstream::Seen> = receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.target == "/ssf")
            .cloned()
            .collect();
        if got.len() >= want {
            return got
                .iter()
                .map(|s| {
                    assert_eq!(s.method, "POST");
                    assert_eq!(s.header("content-type"), Some("application/secevent+jwt"));
                    let set = std::str::from_utf8(&s.body).unwrap();
                    let header = jsonwebtoken::decode_header(set).unwrap();
                    assert_eq!(header.typ.as_deref(), Some("secevent+jwt"));
                    let key = jsonwebtoken::DecodingKey::from_jwk(
                        jwks.find(header.kid.as_deref().unwrap()).unwrap(),
                    )
                    .unwrap();
                    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
                    v.set_audience(&["https://idp.example"]);
                    v.set_issuer(&[&h.server.issuer]);
                    v.required_spec_claims.clear();
                    v.validate_exp = false;
                    let claims = jsonwebtoken::decode::<Value>(set, &key, &v).unwrap().claims;
                    assert!(
                        claims["jti"].is_string() && claims["iat"].is_i64(),
                        "{claims}"
                    );
                    claims
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the receiver got fewer than {want} SETs: {:?}",
        receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.target.clone())
            .collect::<Vec<_>>()
    );
}

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";

#[tokio::test]
async fn a_honeytoken_call_quarantines_the_agent_and_signals_go_out() {
    let (h, receiver) = start(
        "[[rule]]\nname = \"decoy\"\nsignal = \"honeytoken\"\nresponse = \"quarantine_agent\"\n",
    )
    .await;
    let bot = h.agent("bot", 1).await;
    let bystander = h.agent("bystander", 1).await;
    let (task, token) = h
        .start_task(&bot, &["tickets.search", "tickets.export_all"], &["read"])
        .await;
    let (other, other_token) = h
        .start_task(&bystander, &["tickets.search"], &["read"])
        .await;

    // Even inside the grant, a honeytoken is never allowed.
    let r = h.call(&token, "tickets.export_all", "read").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["outcome"], "deny");
    assert_eq!(r.body["policies"], json!(["mandate:honeytoken"]));

    let fired = h.fired(&task).await;
    let d = &fired["data"];
    assert_eq!(d["rule"], "decoy");
    assert_eq!(d["signal"], "honeytoken");
    assert_eq!(d["response"], "quarantine_agent");
    assert_eq!(d["result"], "applied");
    assert_eq!(d["revoked"], json!([task]));
    // The evidence is the recorded decision.
    let decision = h
        .events(&task)
        .await
        .into_iter()
        .find(|e| e["kind"] == "decision")
        .unwrap();
    assert_eq!(d["evidence"], json!([decision["seq"]]));

    // Once the firing is recorded the agent is quarantined: its task is refused, it cannot
    // start another, and another agent goes on.
    let r = h.get("/v1/agents/bot", Some(ADMIN)).await;
    assert_eq!(r.body["status"], "quarantined", "{:?}", r.body);
    assert_eq!(
        h.call(&token, "tickets.search", "read").await.code(),
        "task_not_active"
    );
    let r = h
        .post("/v1/tasks", Some(&bot), json!({ "purpose": "again", "scope": { "tools": ["tickets.search"], "actions": ["read"] } }))
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(
        h.call(&other_token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    let _ = other;

    // The receiver hears of the task's revocation and the agent's quarantine as CAEP
    // events in signed SETs.
    let got = sets(&h, &receiver, 2).await;
    let session = got
        .iter()
        .find(|c| c["events"][SESSION_REVOKED].is_object())
        .unwrap();
    assert_eq!(session["sub_id"]["session"]["id"], task.as_str());
    assert_eq!(session["sub_id"]["user"]["format"], "iss_sub");
    assert_eq!(session["sub_id"]["user"]["iss"], h.server.issuer.as_str());
    assert_eq!(
        session["sub_id"]["user"]["sub"],
        "spiffe://mandate.local/agent/bot"
    );
    let cred = got
        .iter()
        .find(|c| c["events"][CREDENTIAL_CHANGE].is_object())
        .unwrap();
    assert_eq!(cred["events"][CREDENTIAL_CHANGE]["change_type"], "revoke");
    assert_eq!(cred["sub_id"]["sub"], "spiffe://mandate.local/agent/bot");

    // The alert webhook got the firing, signed with its secret.
    let mut alert = None;
    for _ in 0..200 {
        alert = receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.target == "/alert")
            .cloned();
        if alert.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let alert = alert.expect("the alert webhook got nothing");
    let sig = alert.header("mandate-signature").unwrap();
    let now = mandate_core::Clock::now_secs(h.clock.as_ref());
    assert!(mandate_server::webhook::verify(
        b"alert-secret-0123456789",
        sig,
        &alert.body,
        now,
        300
    ));
    let body: Value = serde_json::from_slice(&alert.body).unwrap();
    assert_eq!(body["containment"]["rule"], "decoy");
}

#[tokio::test]
async fn a_denial_burst_revokes_the_task_and_its_delegates_but_not_its_siblings() {
    let (h, _receiver) = start(
        "[[rule]]\nname = \"burst\"\nsignal = \"denial_burst\"\nper = \"task\"\ncount = 3\nwindow_secs = 60\nresponse = \"revoke_task\"\n",
    )
    .await;
    let bot = h.agent("bot", 1).await;
    let helper = h.agent("helper", 1).await;
    let (task, token) = h
        .start_task(
            &bot,
            &["tickets.search", "tickets.delete"],
            &["read", "delete"],
        )
        .await;
    let (sibling, sibling_token) = h.start_task(&bot, &["tickets.search"], &["read"]).await;
    let details = json!([{ "type": "mandate_task", "purpose": "look things up", "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"] }]).to_string();
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", token.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("actor_token", helper.as_str()),
            ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("authorization_details", details.as_str()),
        ])
        .finish();
    let r = h
        .send(
            h.http
                .post(h.url("/oauth2/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let child_token = r.body["access_token"].as_str().unwrap().to_owned();
    let child = r.body["mandate"]["task_id"].as_str().unwrap().to_owned();

    // Two denials are not a burst.
    for _ in 0..2 {
        assert_eq!(
            h.call(&token, "tickets.delete", "delete").await.body["outcome"],
            "deny"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        h.call(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    // The third is.
    assert_eq!(
        h.call(&token, "tickets.delete", "delete").await.body["outcome"],
        "deny"
    );
    let fired = h.fired(&task).await;
    assert_eq!(fired["data"]["response"], "revoke_task");
    assert_eq!(fired["data"]["evidence"].as_array().unwrap().len(), 3);
    let revoked: Vec<&str> = fired["data"]["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        revoked.contains(&task.as_str()) && revoked.contains(&child.as_str()),
        "{revoked:?}"
    );

    assert_eq!(
        h.call(&token, "tickets.search", "read").await.code(),
        "task_not_active"
    );
    assert_eq!(
        h.call(&child_token, "tickets.search", "read").await.code(),
        "task_not_active"
    );
    let ended = h.get(&format!("/v1/tasks/{task}"), Some(ADMIN)).await;
    assert_eq!(ended.body["state"], "revoked");
    assert!(ended.body["end_reason"].as_str().unwrap().contains("burst"));
    // Per task: the agent's other task goes on, and the agent is not quarantined.
    assert_eq!(
        h.call(&sibling_token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    assert_eq!(
        h.get("/v1/agents/bot", Some(ADMIN)).await.body["status"],
        "active"
    );
    let _ = sibling;
}

#[tokio::test]
async fn calls_outside_the_grant_step_the_task_up_and_a_denied_approval_alerts() {
    let (h, receiver) = start(
        "[[rule]]\nname = \"probe\"\nsignal = \"outside_grant\"\ncount = 2\nresponse = \"step_up\"\n\
         [[rule]]\nname = \"refused-by-human\"\nsignal = \"approval_denials\"\ncount = 1\nresponse = \"alert\"\n",
    )
    .await;
    let bot = h.agent("bot", 1).await;
    let (task, token) = h
        .start_task(
            &bot,
            &["tickets.search", "tickets.update"],
            &["read", "write"],
        )
        .await;
    assert_eq!(
        h.call(&token, "tickets.update", "write").await.body["outcome"],
        "allow"
    );

    for _ in 0..2 {
        let r = h.call(&token, "billing.refund", "write").await;
        assert_eq!(r.body["policies"], json!(["mandate:grant-ceiling"]));
    }
    let fired = h.fired(&task).await;
    assert_eq!(fired["data"]["response"], "step_up");
    assert_eq!(fired["data"]["result"], "applied");
    // Reads go on; every write now needs a human, never the owner.
    assert_eq!(
        h.call(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    let held = h.call(&token, "tickets.update", "write").await;
    assert_eq!(held.body["outcome"], "approval_required", "{:?}", held.body);
    assert!(
        held.body["policies"]
            .as_array()
            .unwrap()
            .contains(&json!("mandate:step-up"))
    );
    assert_eq!(
        h.get(&format!("/v1/tasks/{task}"), Some(ADMIN)).await.body["step_up"],
        true
    );

    let r = h
        .post(
            "/v1/approvers",
            Some(ADMIN),
            json!({ "name": "carol@example.com", "roles": ["approver"], "groups": ["default"] }),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let carol = r.body["token"].as_str().unwrap().to_owned();
    let id = held.body["approval"]["id"].as_str().unwrap().to_owned();
    let r = h
        .post(
            &format!("/v1/approvals/{id}/deny"),
            Some(&carol),
            json!({ "reason": "not today" }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The denial fires the alert-only rule: recorded and announced, nothing revoked.
    for _ in 0..200 {
        let n = h
            .events(&task)
            .await
            .iter()
            .filter(|e| e["kind"] == "containment.fired" && e["data"]["rule"] == "refused-by-human")
            .count();
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let all = h.events(&task).await;
    let alert = all
        .iter()
        .find(|e| e["data"]["rule"] == "refused-by-human")
        .unwrap_or_else(|| {
            panic!(
                "{:#?}",
                all.iter()
                    .map(|e| (&e["kind"], &e["data"]))
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(alert["data"]["response"], "alert");
    assert_eq!(
        h.call(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );

    // A restart keeps the step-up (durable in the task's row).
    drop(receiver);
    let h = h.restart().await;
    assert!(h.server.engine.live_get(&task).unwrap().stepped_up());
    let held = h.call(&token, "tickets.update", "write").await;
    assert_eq!(held.body["outcome"], "approval_required", "{:?}", held.body);
}

#[tokio::test]
async fn counted_per_agent_a_new_task_does_not_start_the_count_afresh() {
    let (h, _receiver) = start(
        "[[rule]]\nname = \"burst\"\nsignal = \"denial_burst\"\ncount = 3\nresponse = \"revoke_task\"\n",
    )
    .await;
    let bot = h.agent("bot", 1).await;
    let (first, first_token) = h
        .start_task(
            &bot,
            &["tickets.search", "tickets.delete"],
            &["read", "delete"],
        )
        .await;
    for _ in 0..2 {
        let r = h.call(&first_token, "tickets.delete", "delete").await;
        assert_eq!(r.body["outcome"], "deny");
    }
    // A fresh task does not wash the two denials out: the third, on the new task, fires,
    // and the response reaches every live task of the agent.
    let (second, second_token) = h
        .start_task(
            &bot,
            &["tickets.search", "tickets.delete"],
            &["read", "delete"],
        )
        .await;
    let r = h.call(&second_token, "tickets.delete", "delete").await;
    assert_eq!(r.body["outcome"], "deny");
    let fired = h.fired(&second).await;
    assert_eq!(fired["data"]["per"], "agent");
    assert_eq!(fired["data"]["evidence"].as_array().unwrap().len(), 3);
    for token in [&first_token, &second_token] {
        assert_eq!(
            h.call(token, "tickets.search", "read").await.code(),
            "task_not_active"
        );
    }
    let _ = first;
}

#[tokio::test]
async fn a_rate_far_above_the_agents_own_baseline_revokes() {
    let (h, _receiver) = start(
        "[[rule]]\nname = \"runaway\"\nsignal = \"rate_above_baseline\"\nfactor = 3.0\nwindow_secs = 10\nmin = 12\nwarmup_windows = 3\nresponse = \"revoke_task\"\n",
    )
    .await;
    let bot = h.agent("bot", 1).await;
    let (task, token) = h.start_task(&bot, &["tickets.search"], &["read"]).await;
    // Three quiet windows of 3 calls each: a baseline of 3 per window.
    for _ in 0..3 {
        for _ in 0..3 {
            assert_eq!(
                h.call(&token, "tickets.search", "read").await.body["outcome"],
                "allow"
            );
        }
        h.clock.advance_ms(10_000);
    }
    // 9 calls is 3× the baseline: not above it.
    for _ in 0..9 {
        assert_eq!(
            h.call(&token, "tickets.search", "read").await.body["outcome"],
            "allow"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        h.events(&task)
            .await
            .iter()
            .all(|e| e["kind"] != "containment.fired")
    );
    // Past 12 calls in the window (min), and above 3× its baseline, the task is revoked.
    for _ in 0..6 {
        let _ = h.call(&token, "tickets.search", "read").await;
    }
    let fired = h.fired(&task).await;
    assert_eq!(fired["data"]["signal"], "rate_above_baseline");
    assert!(
        fired["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("baseline")
    );
    assert_eq!(
        h.call(&token, "tickets.search", "read").await.code(),
        "task_not_active"
    );
}

#[tokio::test]
async fn a_plan_narrows_at_once_and_widens_only_as_policy_decides() {
    let (h, _receiver) = start("").await;
    let bot = h.agent("bot", 1).await;
    let (task, token) = h
        .start_task(
            &bot,
            &["tickets.search", "tickets.update"],
            &["read", "write"],
        )
        .await;
    let plan = |purpose: &str, tools: &[&str], actions: &[&str]| json!({ "purpose": purpose, "scope": { "tools": tools, "actions": actions, "data_domains": ["support"] } });

    // Narrower under the same intent: in force at once, no policy needed.
    let r = h
        .post(
            &format!("/v1/tasks/{task}/plan"),
            Some(&token),
            plan("triage open tickets", &["tickets.search"], &["read"]),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["change"], "narrower");
    assert_eq!(
        r.body["grant"]["tools"],
        json!({ "tickets.search": ["read"] })
    );
    let w = h.call(&token, "tickets.update", "write").await;
    assert_eq!(
        w.body["policies"],
        json!(["mandate:grant-ceiling"]),
        "{:?}",
        w.body
    );
    assert_eq!(
        h.call(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    // A new purpose over no more is decided by policy (purpose is an attribute policies
    // read), and gains nothing.
    let r = h
        .post(
            &format!("/v1/tasks/{task}/plan"),
            Some(&token),
            plan("only read tickets", &["tickets.search"], &["read"]),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["change"], "repurposed");
    assert!(r.body["decision"].is_object());
    assert_eq!(
        r.body["grant"]["tools"],
        json!({ "tickets.search": ["read"] })
    );

    // Wider: decided by policy; the write comes back, the delete stays refused.
    let r = h
        .post(
            &format!("/v1/tasks/{task}/plan"),
            Some(&token),
            plan(
                "fix and clean up tickets",
                &["tickets.search", "tickets.update", "tickets.delete"],
                &["read", "write", "delete"],
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["change"], "wider");
    assert_eq!(r.body["applied"], true);
    assert_eq!(
        h.call(&token, "tickets.update", "write").await.body["outcome"],
        "allow"
    );
    let d = h.call(&token, "tickets.delete", "delete").await;
    assert_eq!(d.body["outcome"], "deny");

    // Wider where policy asks for a human: held (202) with an approval bound to exactly
    // this plan; the same plan repeated with it, once approved, takes effect.
    let refunds = plan(
        "fix and clean up tickets",
        &["tickets.search", "tickets.update", "billing.refund"],
        &["read", "write"],
    );
    let r = h
        .post(
            &format!("/v1/tasks/{task}/plan"),
            Some(&token),
            refunds.clone(),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["applied"], false);
    let approval = r.body["approval"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.call(&token, "billing.refund", "write").await.body["policies"],
        json!(["mandate:grant-ceiling"])
    );
    let mut unapproved = refunds.clone();
    unapproved["approval_id"] = json!(approval);
    let r = h
        .post(
            &format!("/v1/tasks/{task}/plan"),
            Some(&token),
            unapproved.clone(),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "approval_pending"),
        "{:?}",
        r.body
    );
    let r = h
        .post(
            "/v1/approvers",
            Some(ADMIN),
            json!({ "name": "carol@example.com", "roles": ["approver"], "groups": ["default"] }),
        )
        .await;
    let carol = r.body["token"].as_str().unwrap().to_owned();
    let r = h
        .post(
            &format!("/v1/approvals/{approval}/approve"),
            Some(&carol),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The approval is for that plan only.
    let mut other = plan("something else", &["billing.refund"], &["write"]);
    other["approval_id"] = json!(approval);
    let r = h
        .post(&format!("/v1/tasks/{task}/plan"), Some(&token), other)
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "approval_mismatch"),
        "{:?}",
        r.body
    );
    let r = h
        .post(
            &format!("/v1/tasks/{task}/plan"),
            Some(&token),
            unapproved.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["applied"], true);
    assert_eq!(
        h.call(&token, "billing.refund", "write").await.body["outcome"],
        "allow"
    );
    // Used once.
    let r = h
        .post(&format!("/v1/tasks/{task}/plan"), Some(&token), unapproved)
        .await;
    assert!(r.status.is_client_error(), "{:?}", r.body);

    // Every intent is in the record, and the next decision names the new one.
    let events = h.events(&task).await;
    let redeclared: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "task.redeclared")
        .collect();
    assert_eq!(redeclared.len(), 4);
    assert_eq!(redeclared[3]["data"]["approval_id"], approval.as_str());
    assert_eq!(redeclared[0]["data"]["change"], "narrower");
    assert_eq!(
        redeclared[1]["data"]["previous_purpose"],
        "triage open tickets"
    );
    assert_eq!(redeclared[1]["data"]["purpose"], "only read tickets");
    assert_eq!(
        redeclared[2]["data"]["previous_purpose"],
        "only read tickets"
    );
    assert!(redeclared[2]["data"]["decision"].is_object());
    let last = events
        .iter()
        .rev()
        .find(|e| e["kind"] == "decision")
        .unwrap();
    assert_eq!(last["data"]["intent"], "fix and clean up tickets");
    let _ = &redeclared;

    // Refusals: another task's token, a plan only delete (policy grants none of it), and
    // bad input.
    let (_, other_token) = h.start_task(&bot, &["tickets.search"], &["read"]).await;
    let r = h
        .post(
            &format!("/v1/tasks/{task}/plan"),
            Some(&other_token),
            plan("x", &["tickets.search"], &["read"]),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "token_not_bound"));
    let r = h
        .post(
            &format!("/v1/tasks/{task}/plan"),
            Some(&token),
            plan("purge", &["billing.purge"], &["delete"]),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "plan_refused"),
        "{:?}",
        r.body
    );
    assert_eq!(
        h.call(&token, "tickets.update", "write").await.body["outcome"],
        "allow",
        "the plan before stays"
    );
    let r = h
        .post(
            &format!("/v1/tasks/{task}/plan"),
            Some(&token),
            json!({ "purpose": "x", "scope": {}, "extra": 1 }),
        )
        .await;
    assert!(r.status.is_client_error(), "{:?}", r.body);

    // A restart keeps the plan in force.
    let stored = h.get(&format!("/v1/tasks/{task}"), Some(ADMIN)).await;
    assert_eq!(stored.body["purpose"], "fix and clean up tickets");
}

#[tokio::test]
async fn untrusted_content_then_a_write_and_bulk_egress_are_caught() {
    let (h, upstream) = start_with(
        "[[rule]]\nname = \"injection\"\nsignal = \"taint_then_high_risk\"\nresponse = \"step_up\"\n\
         [[rule]]\nname = \"egress\"\nsignal = \"bytes_above_baseline\"\nfactor = 3.0\nwindow_secs = 10\nmin = 100000\nwarmup_windows = 2\nresponse = \"revoke_task\"\n",
        |addr| {
            Some(format!(
                "[[upstream]]\nname = 'tickets'\nbase_url = 'http://{addr}/api'\nallow_private = true\nuntrusted = true\n\n\
                 [[route]]\nupstream = 'tickets'\nmethod = 'GET'\npath = '/tickets/{{id}}/big'\ntool = 'tickets.search'\ndata_domain = 'support'\n"
            ))
        },
    )
    .await;
    let bot = h.agent("bot", 1).await;
    let r = h
        .post("/v1/tasks", Some(&bot), json!({
            "purpose": "read the ticket dump",
            "scope": { "tools": ["tickets.search", "tickets.update"], "actions": ["read", "write"],
                       "data_domains": ["support"], "destinations": [upstream.addr.to_string()] },
            "ttl_secs": 600,
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let task = r.body["task_id"].as_str().unwrap().to_owned();
    let token = r.body["task_token"].as_str().unwrap().to_owned();
    let big = || async {
        h.send(
            h.http
                .get(h.url("/gw/tickets/tickets/1/big"))
                .bearer_auth(&token),
        )
        .await
    };

    // Untrusted content enters the task; the next write is the signal, and the task is
    // stepped up: the write after it needs a human.
    assert_eq!(big().await.status, 200);
    assert_eq!(
        h.call(&token, "tickets.update", "write").await.body["outcome"],
        "allow"
    );
    let fired = h.fired(&task).await;
    assert_eq!(fired["data"]["signal"], "taint_then_high_risk");
    assert_eq!(
        h.call(&token, "tickets.update", "write").await.body["outcome"],
        "approval_required"
    );

    // 64 KiB per window builds the agent's baseline; four times that in one window is
    // more than 3x it, and the task is revoked. (A result is recorded as its stream ends,
    // just after the agent has the body: wait for it before the clock moves on.)
    let results = |n: usize| {
        let h = &h;
        let task = task.clone();
        async move {
            for _ in 0..200 {
                let got = h
                    .events(&task)
                    .await
                    .iter()
                    .filter(|e| e["kind"] == "gateway.result")
                    .count();
                if got >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("fewer than {n} gateway results recorded");
        }
    };
    results(1).await;
    h.clock.advance_ms(10_000);
    assert_eq!(big().await.status, 200);
    results(2).await;
    h.clock.advance_ms(10_000);
    for _ in 0..3 {
        assert_eq!(big().await.status, 200);
    }
    let mut cut = false;
    for _ in 0..5 {
        if big().await.status == 403 {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cut, "{:?}", h.events(&task).await);
    let egress = h
        .events(&task)
        .await
        .into_iter()
        .find(|e| e["data"]["rule"] == "egress")
        .unwrap();
    assert_eq!(egress["data"]["response"], "revoke_task");
    assert!(
        egress["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("bytes returned")
    );
}

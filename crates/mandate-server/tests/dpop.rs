//! Sender-constrained task tokens (RFC 9449 DPoP) end to end: a task started with a
//! proof gets a token bound to the proof's key (`cnf.jkt`); from then on every call needs a
//! fresh proof by that key for that request and that token. A stolen token alone, a
//! replayed proof, a proof for another URL, method or token, or by another key is refused
//! with its code. Proofs come from this test (aws-lc-rs) and, when the identity peers are
//! installed, from PyPI joserfc, an independent implementation.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::dpop::Holder;
use common::{ADMIN, Harness, Reply, demo_policies};
use mandate_core::Clock as _;
use serde_json::{Value, json};

fn now(h: &Harness) -> i64 {
    h.clock.now_ms() / 1000
}

fn base(h: &Harness) -> String {
    h.server.url().trim_end_matches('/').to_owned()
}

const START: &str = r#"{"purpose": "summarise open tickets", "scope": {"tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"]}, "ttl_secs": 600}"#;

async fn start_bound(h: &Harness, identity: &str, holder: &Holder) -> Reply {
    let proof = holder.proof("POST", &format!("{}/v1/tasks", base(h)), None, now(h));
    let req = h
        .http
        .post(h.url("/v1/tasks"))
        .bearer_auth(identity)
        .header("dpop", proof)
        .header("content-type", "application/json")
        .body(START);
    h.send(req).await
}

async fn decide(h: &Harness, token: &str, scheme: &str, proof: Option<String>) -> Reply {
    let mut req = h
        .http
        .post(h.url("/v1/decide"))
        .header("authorization", format!("{scheme} {token}"))
        .json(&json!({"tool": "tickets.search", "action": "read", "resource": "queue/open", "arguments": {"q": "open"}}));
    if let Some(p) = proof {
        req = req.header("dpop", p);
    }
    h.send(req).await
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn a_bound_token_works_only_with_a_fresh_proof_of_its_key() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let holder = Holder::new();
    let r = start_bound(&h, &identity, &holder).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let token = r.body["task_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&token)["cnf"], json!({"jkt": holder.jkt()}));
    let url = format!("{}/v1/decide", base(&h));

    // The holder, with a fresh proof for this request and token: allowed.
    let p = holder.proof("POST", &url, Some(&token), now(&h));
    let r = decide(&h, &token, "DPoP", Some(p.clone())).await;
    assert_eq!(
        (r.status.as_u16(), r.body["outcome"].as_str()),
        (200, Some("allow")),
        "{:?}",
        r.body
    );

    let thief = Holder::new();
    let cases: Vec<(&str, &str, Option<String>)> = vec![
        // A stolen token alone, as a bearer token or under DPoP without a proof.
        ("dpop_required", "Bearer", None),
        ("dpop_proof_missing", "DPoP", None),
        // The same proof again.
        ("dpop_replayed", "DPoP", Some(p)),
        // A proof by the thief's own key.
        (
            "dpop_key_mismatch",
            "DPoP",
            Some(thief.proof("POST", &url, Some(&token), now(&h))),
        ),
        // The holder's proofs, but for another request or token, or stale.
        (
            "dpop_wrong_uri",
            "DPoP",
            Some(holder.proof(
                "POST",
                &format!("{}/v1/tasks", base(&h)),
                Some(&token),
                now(&h),
            )),
        ),
        (
            "dpop_wrong_method",
            "DPoP",
            Some(holder.proof("GET", &url, Some(&token), now(&h))),
        ),
        (
            "dpop_ath_mismatch",
            "DPoP",
            Some(holder.proof("POST", &url, Some("another-token"), now(&h))),
        ),
        (
            "dpop_ath_mismatch",
            "DPoP",
            Some(holder.proof("POST", &url, None, now(&h))),
        ),
        (
            "dpop_stale",
            "DPoP",
            Some(holder.proof("POST", &url, Some(&token), now(&h) - 600)),
        ),
        ("dpop_proof_malformed", "DPoP", Some("not-a-proof".into())),
    ];
    for (code, scheme, proof) in cases {
        let r = decide(&h, &token, scheme, proof).await;
        assert_eq!((r.status.as_u16(), r.code()), (401, code), "{:?}", r.body);
        assert!(
            r.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("DPoP "),
            "{:?}",
            r.headers
        );
    }

    // Two DPoP headers are refused, never one picked.
    let req = h
        .http
        .post(h.url("/v1/decide"))
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", holder.proof("POST", &url, Some(&token), now(&h)))
        .header("dpop", holder.proof("POST", &url, Some(&token), now(&h)))
        .json(&json!({"tool": "tickets.search", "action": "read"}));
    assert_eq!(h.send(req).await.status, 400);

    // An unbound token is not accepted under the DPoP scheme either.
    let (_, plain) = h.task(&identity).await;
    let r = decide(
        &h,
        &plain,
        "DPoP",
        Some(holder.proof("POST", &url, Some(&plain), now(&h))),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "token_not_bound"));
    // And the holder still gets through.
    let r = decide(
        &h,
        &token,
        "DPoP",
        Some(holder.proof("POST", &url, Some(&token), now(&h))),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Introspection says the token is bound, and to which key.
    let req = h
        .http
        .post(h.url("/oauth2/introspect"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"));
    let r = h.send(req).await;
    assert_eq!(r.body["cnf"], json!({"jkt": holder.jkt()}));
    assert_eq!(r.body["token_type"], "DPoP");
}

#[tokio::test]
async fn a_bad_proof_at_issuance_issues_nothing() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let holder = Holder::new();
    let proof = holder.proof("POST", "https://elsewhere.example/v1/tasks", None, now(&h));
    let req = h
        .http
        .post(h.url("/v1/tasks"))
        .bearer_auth(&identity)
        .header("dpop", proof)
        .header("content-type", "application/json")
        .body(START);
    let r = h.send(req).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "dpop_wrong_uri"),
        "{:?}",
        r.body
    );
    let r = h.get("/v1/tasks", Some(ADMIN)).await;
    assert_eq!(r.body, json!([]));
}

#[tokio::test]
async fn the_token_endpoint_binds_and_a_tier_can_require_binding() {
    let h = Harness::start_configured(&demo_policies(), |c| {
        c.limits.dpop_required_from_tier = Some(2)
    })
    .await;
    let low = h.agent("low", 1).await;
    let high = h.agent("high", 2).await;
    // Tier 2 without a proof: refused, and recorded.
    let r = h
        .send(
            h.http
                .post(h.url("/v1/tasks"))
                .bearer_auth(&high)
                .header("content-type", "application/json")
                .body(START),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "dpop_required"),
        "{:?}",
        r.body
    );
    let r = h
        .get("/v1/audit/events?kind=task.refused&agent=high", Some(ADMIN))
        .await;
    assert_eq!(
        r.body["events"][0]["data"]["code"], "dpop_required",
        "{:?}",
        r.body
    );
    // With one: started, bound.
    let holder = Holder::new();
    let r = start_bound(&h, &high, &holder).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    // Tier 1 may choose.
    assert!(claims(&h.task(&low).await.1).get("cnf").is_none());

    // The token endpoint binds the same way and says so in token_type.
    let form = |assertion: &str| {
        format!(
            "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}&scope=tool%3Atickets.search%20action%3Aread"
        )
    };
    let token_url = format!("{}/oauth2/token", base(&h));
    let r = h
        .send(
            h.http
                .post(h.url("/oauth2/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("dpop", holder.proof("POST", &token_url, None, now(&h)))
                .body(form(&high)),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP");
    let token = r.body["access_token"].as_str().unwrap();
    assert_eq!(claims(token)["cnf"]["jkt"], holder.jkt());
    let r = h
        .send(
            h.http
                .post(h.url("/oauth2/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&high)),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["code"].as_str()),
        (400, Some("dpop_required")),
        "{:?}",
        r.body
    );
    let r = h
        .send(
            h.http
                .post(h.url("/oauth2/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header(
                    "dpop",
                    holder.proof("POST", &format!("{}/v1/tasks", base(&h)), None, now(&h)),
                )
                .body(form(&high)),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{:?}",
        r.body
    );
}

/// Proofs from PyPI joserfc: an independent implementation of JWS, JWK thumbprints and the
/// DPoP proof shape. Needs `MANDATE_TEST_IDENTITY_PYTHON` (scripts/install-identity-peers.sh);
/// without it the test says so and passes; set to something that cannot run, it fails.
#[tokio::test]
async fn proofs_from_an_independent_implementation_are_accepted() {
    let Some(python) = common::identity_python(
        "proofs_from_an_independent_implementation_are_accepted",
        "dpop",
    ) else {
        return;
    };
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let key = h.dir.path().join("holder.jwk");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dpop_proof.py");
    let proof = |method: &str, url: String, token: Option<&str>| {
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(&script).arg(&key).arg(method).arg(url);
        if let Some(t) = token {
            cmd.arg(t);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("MANDATE_TEST_IDENTITY_PYTHON={python:?} cannot run: {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["proof"].as_str().unwrap().to_owned(),
            v["jkt"].as_str().unwrap().to_owned(),
        )
    };
    let (p, jkt) = proof("POST", format!("{}/v1/tasks", base(&h)), None);
    let req = h
        .http
        .post(h.url("/v1/tasks"))
        .bearer_auth(&identity)
        .header("dpop", p)
        .header("content-type", "application/json")
        .body(START);
    let r = h.send(req).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let token = r.body["task_token"].as_str().unwrap().to_owned();
    assert_eq!(
        claims(&token)["cnf"]["jkt"],
        jkt,
        "joserfc's thumbprint is Mandate's"
    );
    let (p, _) = proof("POST", format!("{}/v1/decide", base(&h)), Some(&token));
    let r = decide(&h, &token, "DPoP", Some(p.clone())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = decide(&h, &token, "DPoP", Some(p)).await;
    assert_eq!(r.code(), "dpop_replayed");
}

/// A parent token bound to a key delegates only with a proof by that key: a stolen parent
/// token alone mints no child task, and the child is bound to the same key.
#[tokio::test]
async fn a_bound_parent_token_delegates_only_with_its_key() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let child = h.agent("helper", 1).await;
    let holder = Holder::new();
    let r = start_bound(&h, &identity, &holder).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let parent = r.body["task_token"].as_str().unwrap().to_owned();
    let details = json!([{"type": "mandate_task", "purpose": "search for the parent",
        "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"]}])
    .to_string();
    let token_url = format!("{}/oauth2/token", base(&h));
    let exchange = |proof: Option<String>| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        s.append_pair(
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        )
        .append_pair("subject_token", &parent)
        .append_pair(
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        )
        .append_pair("actor_token", &child)
        .append_pair("actor_token_type", "urn:ietf:params:oauth:token-type:jwt")
        .append_pair("authorization_details", &details);
        let mut req = h
            .http
            .post(h.url("/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(s.finish());
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        h.send(req)
    };
    let r = exchange(None).await;
    assert_eq!(
        (r.status.as_u16(), r.body["code"].as_str()),
        (401, Some("dpop_required")),
        "{:?}",
        r.body
    );
    let thief = Holder::new();
    let r = exchange(Some(thief.proof("POST", &token_url, None, now(&h)))).await;
    assert_eq!(
        (r.status.as_u16(), r.body["code"].as_str()),
        (401, Some("dpop_key_mismatch")),
        "{:?}",
        r.body
    );
    let r = exchange(Some(holder.proof("POST", &token_url, None, now(&h)))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["token_type"], "DPoP");
    assert_eq!(
        claims(r.body["access_token"].as_str().unwrap())["cnf"]["jkt"],
        holder.jkt()
    );
}

/// What review found: a bound token in an AuthZEN body beside any Authorization header,
/// revocation by a thief, proofs remembered before their request authenticated, and
/// refusals that left no record.
#[tokio::test]
async fn a_stolen_bound_token_gets_nowhere_and_leaves_a_trace() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let holder = Holder::new();
    let r = start_bound(&h, &identity, &holder).await;
    let token = r.body["task_token"].as_str().unwrap().to_owned();
    let task = r.body["task_id"].as_str().unwrap().to_owned();

    // AuthZEN: the body's token is the one decided on; a header beside it proves nothing.
    let body = json!({"subject": {"type": "agent", "properties": {"token": token}}, "action": {"name": "read"},
        "resource": {"type": "tool", "id": "tickets.search", "properties": {"resource": "queue/open", "data_domain": "support"}}});
    let r = h
        .send(
            h.http
                .post(h.url("/access/v1/evaluation"))
                .bearer_auth("x")
                .json(&body),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "dpop_required"),
        "{:?}",
        r.body
    );

    // Revocation by a thief (the token alone) is refused; the task lives on.
    let revoke = |auth: Option<(String, String)>| {
        let mut req = h
            .http
            .post(h.url("/oauth2/revoke"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"));
        if let Some((authz, proof)) = auth {
            req = req.header("authorization", authz).header("dpop", proof);
        }
        h.send(req)
    };
    let r = revoke(None).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "dpop_required"),
        "{:?}",
        r.body
    );
    assert_eq!(
        h.get(&format!("/v1/tasks/{task}"), Some(ADMIN)).await.body["state"],
        "active"
    );

    // A proof sent with a token that does not verify is not remembered: sent again with
    // the real token it still works (it would be `dpop_replayed` had it been recorded).
    let url = format!("{}/v1/decide", base(&h));
    let p = holder.proof("POST", &url, Some(&token), now(&h));
    let forged = format!("{token}x");
    let r = h
        .send(
            h.http
                .post(h.url("/v1/decide"))
                .header("authorization", format!("DPoP {forged}"))
                .header("dpop", p.clone())
                .json(&json!({"tool": "tickets.search", "action": "read"})),
        )
        .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(
        decide(&h, &token, "DPoP", Some(p.clone())).await.status,
        200
    );
    // Sending the bound token as a bearer token is recorded against its task.
    assert_eq!(
        decide(&h, &token, "Bearer", None).await.code(),
        "dpop_required"
    );
    let events = h
        .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
        .await
        .body;
    let codes: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "call.refused")
        .map(|e| e["data"]["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"dpop_required"), "{codes:?}");

    // The holder revokes with its proof.
    let r = revoke(Some((
        format!("DPoP {token}"),
        holder.proof(
            "POST",
            &format!("{}/oauth2/revoke", base(&h)),
            Some(&token),
            now(&h),
        ),
    )))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        h.get(&format!("/v1/tasks/{task}"), Some(ADMIN)).await.body["state"],
        "revoked"
    );
}

//! End-to-end tests: the real server on an ephemeral port, driven over HTTP.

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
use common::{ADMIN, Harness, demo_policies};
use mandate_core::Grant;
use mandate_token::{KeyRing, StoredKey, TaskClaims};
use serde_json::{Value, json};

#[tokio::test]
async fn the_whole_flow_over_http() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (task_id, token) = h.task(&identity).await;

    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!(
        (r.status.as_u16(), r.body["outcome"].as_str()),
        (200, Some("allow")),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["policies"], json!(["support-read"]));
    assert_eq!(r.body["task_id"], task_id);
    assert!(
        r.body["bundle_version"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(r.body["decision_id"].as_str().unwrap().starts_with("dec_"));

    let r = h.decide(&token, "tickets.update", "write").await;
    assert_eq!(r.body["outcome"], "approval_required", "{:?}", r.body);
    assert_eq!(r.body["policies"], json!(["ticket-write-needs-approval"]));
    assert_eq!(r.body["approval"]["state"], "pending", "{:?}", r.body);
    assert!(
        r.body["approval"]["id"]
            .as_str()
            .unwrap()
            .starts_with("apr_")
    );

    let r = h.decide(&token, "tickets.delete", "delete").await;
    assert_eq!(r.body["outcome"], "deny");
    assert_eq!(
        r.body["policies"],
        json!(["mandate:grant-ceiling", "no-deletes"])
    );

    // Outside the grant entirely: a tool never asked for.
    let r = h.decide(&token, "crm.export", "read").await;
    assert_eq!(r.body["outcome"], "deny");

    let r = h
        .post(
            &format!("/v1/tasks/{task_id}/complete"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "task_not_active"));

    // Every step is in the audit trail, which verifies.
    let r = h
        .get(&format!("/v1/tasks/{task_id}/events"), Some(ADMIN))
        .await;
    let kinds: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "task.started",
            "decision",
            "approval.requested",
            "decision",
            "decision",
            "decision",
            "task.completed",
            "approval.invalidated",
            "call.refused"
        ]
    );
    let r = h.get("/v1/audit/verify", Some(ADMIN)).await;
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
}

#[tokio::test]
async fn standard_jwt_library_verifies_our_tokens_through_jwks() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    let disco = h.get("/.well-known/openid-configuration", None).await;
    assert_eq!(disco.body["issuer"], h.server.issuer);
    let jwks_uri = disco.body["jwks_uri"].as_str().unwrap().to_owned();
    let jwks: jsonwebtoken::jwk::JwkSet = h
        .http
        .get(jwks_uri)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (t, aud) in [
        (&identity, "mandate:control-plane"),
        (&token, "mandate:gateway"),
    ] {
        let header = jsonwebtoken::decode_header(t).unwrap();
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.set_audience(&[aud]);
        v.set_issuer(&[&h.server.issuer]);
        let data = jsonwebtoken::decode::<Value>(t, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "spiffe://mandate.local/agent/bot");
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Every kind of bad token gets 401 (or 403 for a genuine token of a dead task) with its
/// own code, and never a decision.
#[tokio::test]
async fn bad_tokens_are_refused_with_clear_codes() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (task_id, token) = h.task(&identity).await;
    let ring = h.server.engine.keys();
    let now = mandate_core::Clock::now_secs(h.clock.as_ref());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let claims: TaskClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();

    let resign = |ring: &KeyRing, f: &dyn Fn(&mut TaskClaims)| {
        let mut c = claims.clone();
        f(&mut c);
        mandate_token::sign(ring, &c).unwrap()
    };
    let stranger = KeyRing::from_stored(&[StoredKey::generate(0).unwrap()], 1000, 0).unwrap();

    let mut widened: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    widened["grant"]["tools"]["tickets.delete"] = json!(["delete"]);
    let original_payload = parts[1].clone();
    parts[1] = b64(&widened);
    let bad_signature = parts.join(".");
    parts[1] = original_payload;
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": ring.active().kid()})),
        parts[1]
    );

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("bad signature", bad_signature, 401, "token_bad_signature"),
        ("alg none", alg_none, 401, "token_alg_not_allowed"),
        (
            "identity token as task token",
            identity.clone(),
            401,
            "token_wrong_audience",
        ),
        (
            "wrong audience",
            resign(&ring, &|c| c.aud = "someone-else".into()),
            401,
            "token_wrong_audience",
        ),
        (
            "expired",
            resign(&ring, &|c| c.exp = now - 120),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            resign(&ring, &|c| c.nbf = now + 600),
            401,
            "token_not_yet_valid",
        ),
        (
            "unknown kid",
            resign(&stranger, &|_| ()),
            401,
            "token_unknown_kid",
        ),
        ("garbage", "not-a-token".into(), 401, "token_malformed"),
        (
            "jti not bound",
            resign(&ring, &|c| c.jti = "jti_other".into()),
            403,
            "token_not_bound",
        ),
        (
            "other task",
            resign(&ring, &|c| {
                c.task_id = "tsk_nope".into();
                c.grant = Grant::default();
            }),
            403,
            "task_not_active",
        ),
    ];
    for (name, t, status, code) in cases {
        let r = h.decide(&t, "tickets.search", "read").await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (status, code),
            "{name}: {:?}",
            r.body
        );
        if status == 401 {
            assert!(r.headers.get("www-authenticate").is_some(), "{name}");
        }
    }

    // Missing and malformed Authorization headers.
    let r = h
        .post(
            "/v1/decide",
            None,
            json!({"tool": "tickets.search", "action": "read"}),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "missing_token"));
    let r = h
        .send(
            h.http
                .post(h.url("/v1/decide"))
                .header("authorization", "Basic abc")
                .json(&json!({"tool": "t", "action": "read"})),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "invalid_authorization_header")
    );

    // Revoked: refused from that moment, long before exp.
    let r = h
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(ADMIN),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "task_not_active"));
    let r = h
        .post(
            &format!("/v1/tasks/{task_id}/revoke"),
            Some(ADMIN),
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (409, "task_not_active"));
}

#[tokio::test]
async fn tasks_expire_on_time_even_with_a_cached_token() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (task_id, token) = h.task(&identity).await;
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    h.clock.advance_ms(599_000);
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    h.clock.advance_ms(1_000);
    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "task_expired"),
        "{:?}",
        r.body
    );
    // The sweeper records the expiry.
    for _ in 0..50 {
        let t = h.get(&format!("/v1/tasks/{task_id}"), Some(ADMIN)).await;
        if t.body["state"] == "expired" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("task was never marked expired");
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_code() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    let raw = |body: &str| {
        h.http
            .post(h.url("/v1/decide"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("malformed json", raw("{\"tool\": "), 400, "malformed_json"),
        (
            "unknown field",
            raw(r#"{"tool":"tickets.search","action":"read","admin":true}"#),
            422,
            "invalid_request",
        ),
        (
            "bad action",
            raw(r#"{"tool":"tickets.search","action":"sudo"}"#),
            422,
            "invalid_request",
        ),
        (
            "traversal tool",
            raw(r#"{"tool":"../etc/passwd","action":"read"}"#),
            422,
            "invalid_request",
        ),
        (
            "duplicate argument keys",
            raw(r#"{"tool":"tickets.search","action":"read","arguments":{"id":1,"id":2}}"#),
            400,
            "malformed_json",
        ),
        (
            "oversized",
            raw(&format!(
                r#"{{"tool":"tickets.search","action":"read","resource":"{}"}}"#,
                "a".repeat(1024 * 1024 + 10)
            )),
            413,
            "body_too_large",
        ),
        (
            "big arguments",
            raw(&format!(
                r#"{{"tool":"tickets.search","action":"read","arguments":{{"a":"{}"}}}}"#,
                "a".repeat(70 * 1024)
            )),
            422,
            "arguments_too_large",
        ),
        (
            "no content type",
            h.http
                .post(h.url("/v1/decide"))
                .bearer_auth(&token)
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong method",
            h.http.delete(h.url("/v1/decide")),
            405,
            "method_not_allowed",
        ),
        (
            "unknown path",
            h.http.get(h.url("/v1/nothing")),
            404,
            "not_found",
        ),
    ];
    for (name, req, status, code) in cases {
        let r = h.send(req).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (status, code),
            "{name}: {:?}",
            r.body
        );
    }

    // Registration input.
    for (body, code) in [
        (
            json!({"name": "Bad Name", "owner": "a", "tier": 1}),
            "invalid_request",
        ),
        (
            json!({"name": "ok", "owner": "a", "tier": 9}),
            "invalid_request",
        ),
        (
            json!({"name": "ok", "owner": "", "tier": 1}),
            "invalid_request",
        ),
        (
            json!({"name": "ok", "owner": "a", "tier": 1, "attestation": {"method": "oidc"}}),
            "invalid_request",
        ),
    ] {
        let r = h.post("/v1/agents", Some(ADMIN), body.clone()).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (422, code),
            "{body}: {:?}",
            r.body
        );
    }
    let r = h
        .post(
            "/v1/agents",
            Some(ADMIN),
            json!({"name": "bot", "owner": "a", "tier": 1}),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (409, "conflict"));

    // Task start input.
    let start = |body: Value| h.post("/v1/tasks", Some(&identity), body);
    let r = start(json!({"purpose": "x", "scope": {"tools": [], "actions": ["read"]}})).await;
    assert_eq!((r.status.as_u16(), r.code()), (422, "invalid_request"));
    let r = start(json!({"purpose": "x", "scope": {"tools": ["tickets.search"], "actions": ["read"]}, "ttl_secs": 999_999})).await;
    assert_eq!((r.status.as_u16(), r.code()), (422, "invalid_request"));
    let r =
        start(json!({"purpose": "", "scope": {"tools": ["tickets.search"], "actions": ["read"]}}))
            .await;
    assert_eq!((r.status.as_u16(), r.code()), (422, "invalid_request"));
    let r = h
        .post(
            "/v1/tasks",
            Some(&token),
            json!({"purpose": "x", "scope": {"tools": ["tickets.search"], "actions": ["read"]}}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "token_wrong_audience"),
        "task token cannot start tasks"
    );
}

#[tokio::test]
async fn zero_standing_privilege_and_refused_tasks() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    // Nothing requested that policy grants: the task is refused, with the decision.
    let r = h.post("/v1/tasks", Some(&identity), json!({"purpose": "clean up", "scope": {"tools": ["tickets.delete"], "actions": ["delete"]}})).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "task_refused"),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.body["error"]["details"]["items"][0]["policies"],
        json!(["no-deletes"])
    );
    // The identity token alone cannot call anything.
    let r = h.decide(&identity, "tickets.search", "read").await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn join_tokens_are_single_use_and_offboarding_revokes_everything() {
    let h = Harness::start().await;
    let r = h
        .post(
            "/v1/agents",
            Some(ADMIN),
            json!({"name": "bot", "owner": "alice", "tier": 1}),
        )
        .await;
    let join = r.body["join_token"].as_str().unwrap().to_owned();
    let first = h
        .post(
            "/v1/attest",
            None,
            json!({"agent": "bot", "join_token": join}),
        )
        .await;
    assert_eq!(first.status, 200);
    let second = h
        .post(
            "/v1/attest",
            None,
            json!({"agent": "bot", "join_token": join}),
        )
        .await;
    assert_eq!(
        (second.status.as_u16(), second.code()),
        (401, "join_token_invalid")
    );

    let identity = first.body["identity_token"].as_str().unwrap();
    let (_, token) = h.task(identity).await;
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    let r = h
        .post(
            "/v1/agents/bot/status",
            Some(ADMIN),
            json!({"status": "offboarded", "reason": "retired"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["revoked_tasks"].as_array().unwrap().len(), 1);
    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "task_not_active"));
    let r = h
        .post(
            "/v1/tasks",
            Some(identity),
            json!({"purpose": "x", "scope": {"tools": ["tickets.search"], "actions": ["read"]}}),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "agent_not_active"));
    let r = h
        .post("/v1/agents/bot/join-tokens", Some(ADMIN), json!({}))
        .await;
    assert_eq!(r.status, 409);
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    for path in [
        "/v1/agents",
        "/v1/audit/verify",
        "/v1/policies",
        "/v1/tasks",
    ] {
        assert_eq!(h.get(path, None).await.status, 401, "{path}");
        let r = h.get(path, Some(&identity)).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (403, "admin_required"),
            "{path}"
        );
        assert_eq!(h.get(path, Some(ADMIN)).await.status, 200, "{path}");
    }
    let r = h
        .post(
            "/v1/agents",
            Some("wrong-token-wrong-token-wrong"),
            json!({"name": "x", "owner": "a", "tier": 1}),
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn a_bad_bundle_is_rejected_and_the_last_good_one_keeps_enforcing() {
    let policies = tempfile::tempdir().unwrap();
    for f in ["start.cedar", "support.cedar"] {
        std::fs::copy(common::demo_policies().join(f), policies.path().join(f)).unwrap();
    }
    let h = Harness::start_with(policies.path()).await;
    let before = h.get("/v1/policies", Some(ADMIN)).await.body["bundle_version"].clone();
    std::fs::write(
        policies.path().join("broken.cedar"),
        "permit(principal, action, resource)\nwhen { context.nope == 1 };",
    )
    .unwrap();
    let r = h.post("/v1/policies/reload", Some(ADMIN), json!({})).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "policy_invalid"),
        "{:?}",
        r.body
    );
    let d = &r.body["error"]["details"]["diagnostics"][0];
    assert_eq!(
        (d["file"].as_str(), d["line"].as_u64()),
        (Some("broken.cedar"), Some(2)),
        "{d}"
    );
    assert_eq!(
        h.get("/v1/policies", Some(ADMIN)).await.body["bundle_version"],
        before
    );

    // A valid change is picked up, versioned, and enforced.
    std::fs::write(policies.path().join("broken.cedar"), "@id(\"no-search\") forbid(principal, action == Mandate::Action::\"read\", resource == Mandate::Tool::\"tickets.search\");").unwrap();
    let r = h.post("/v1/policies/reload", Some(ADMIN), json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_ne!(r.body["bundle_version"], before);
    let identity = h.agent("bot", 1).await;
    let r = h.post("/v1/tasks", Some(&identity), json!({"purpose": "p", "scope": {"tools": ["tickets.search", "tickets.update"], "actions": ["read", "write"]}})).await;
    assert_eq!(r.status, 201);
    let token = r.body["task_token"].as_str().unwrap();
    let r = h.decide(token, "tickets.update", "write").await;
    assert_eq!(r.body["outcome"], "approval_required");
}

#[tokio::test]
async fn state_survives_a_restart() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    let data = h.dir.path().join("data");
    let clock = h.clock.clone();
    let issuer = h.server.issuer.clone();
    let Harness { server, dir, .. } = h;
    server.shutdown().await.unwrap();
    let mut config = common::config(&data, &common::demo_policies(), clock);
    config.admin_token = None;
    // A new ephemeral port: the issuer must be pinned, as in any real deployment.
    config.issuer = Some(issuer);
    let server = mandate_server::Server::start(config).await.unwrap();
    assert!(
        server.generated_admin_token.is_none(),
        "the stored admin token is kept"
    );
    let http = reqwest::Client::new();
    let r: Value = http
        .post(format!("{}/v1/decide", server.url()))
        .bearer_auth(&token)
        .json(&json!({"tool": "tickets.search", "action": "read"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["outcome"], "allow", "{r}");
    let v: Value = http
        .get(format!("{}/v1/audit/verify", server.url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    server.shutdown().await.unwrap();
    drop(dir);
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    let r = h.post("/v1/keys/rotate", Some(ADMIN), json!({})).await;
    assert_eq!(r.status, 200);
    let jwks = h.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks.body["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    let (_, fresh) = h.task(&identity).await;
    assert_ne!(
        jsonwebtoken::decode_header(&fresh).unwrap().kid,
        jsonwebtoken::decode_header(&token).unwrap().kid
    );
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let h = Harness::start().await;
    let doc = h.get("/openapi.json", None).await.body;
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/agents",
        "/v1/agents/{name}",
        "/v1/agents/{name}/join-tokens",
        "/v1/agents/{name}/status",
        "/v1/attest",
        "/v1/identity/renew",
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/complete",
        "/v1/tasks/{id}/revoke",
        "/v1/tasks/{id}/events",
        "/v1/decide",
        "/v1/audit/verify",
        "/v1/policies",
        "/v1/policies/reload",
        "/v1/keys/rotate",
        "/v1/secrets",
        "/v1/secrets/{name}",
        "/v1/secrets/rotate",
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["task_token"].is_object());
    assert_eq!(h.get("/healthz", None).await.status, 200);
    assert_eq!(h.get("/readyz", None).await.status, 200);
}

#[tokio::test]
async fn identities_renew_until_their_attestation_is_too_old() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    h.clock.advance_ms(200_000);
    let r = h
        .post("/v1/identity/renew", Some(&identity), json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let renewed = r.body["identity_token"].as_str().unwrap().to_owned();
    assert_ne!(renewed, identity);
    // The renewed token starts tasks; the old one still does until it expires.
    let (_, _) = h.task(&renewed).await;
    // Renewing keeps the attestation time: a day later, the chain ends.
    let mut current = renewed;
    for _ in 0..5 {
        h.clock.advance_ms(240_000);
        let r = h
            .post("/v1/identity/renew", Some(&current), json!({}))
            .await;
        assert_eq!(r.status, 200);
        current = r.body["identity_token"].as_str().unwrap().to_owned();
    }
    let day = 24 * 3600 * 1000;
    // Jump near the limit with a token still in date: forge nothing, just move time in
    // steps the token survives.
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(current.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let auth_time = claims["auth_time"].as_i64().unwrap();
    let ring = h.server.engine.keys();
    let mut old: mandate_token::IdentityClaims = serde_json::from_value(claims).unwrap();
    let now = mandate_core::Clock::now_secs(h.clock.as_ref());
    old.auth_time = now - day / 1000;
    old.iat = now;
    old.nbf = now;
    old.exp = now + 300;
    let stale = mandate_token::sign(&ring, &old).unwrap();
    let r = h.post("/v1/identity/renew", Some(&stale), json!({})).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "identity_too_old"),
        "{:?}",
        r.body
    );
    assert!(auth_time > 0);

    // A quarantined agent cannot renew.
    let r = h
        .post(
            "/v1/agents/bot/status",
            Some(ADMIN),
            json!({"status": "quarantined", "reason": "test"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = h
        .post("/v1/identity/renew", Some(&current), json!({}))
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "agent_not_active"));
}

fn policy_copy() -> tempfile::TempDir {
    let policies = tempfile::tempdir().unwrap();
    for f in ["start.cedar", "support.cedar"] {
        std::fs::copy(common::demo_policies().join(f), policies.path().join(f)).unwrap();
    }
    policies
}

#[tokio::test]
async fn policy_drift_revokes_or_narrows_live_tasks() {
    let policies = policy_copy();
    let h = Harness::start_with(policies.path()).await;
    let identity = h.agent("bot", 1).await;
    let (narrowed_id, narrowed) = h.task(&identity).await;
    let before = h.get("/v1/policies", Some(ADMIN)).await.body["bundle_version"].clone();

    // Tighten: searching tickets is no longer allowed. The grant loses tickets.search.
    std::fs::write(policies.path().join("tighten.cedar"), "@id(\"no-search\") forbid(principal, action == Mandate::Action::\"read\", resource == Mandate::Tool::\"tickets.search\");").unwrap();
    let r = h.post("/v1/policies/reload", Some(ADMIN), json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["reduced"], json!([narrowed_id]));
    let middle = r.body["bundle_version"].clone();
    let d = h.decide(&narrowed, "tickets.search", "read").await;
    assert_eq!(
        (d.body["outcome"].as_str(), d.body["policies"][0].as_str()),
        (Some("deny"), Some("mandate:grant-ceiling")),
        "{:?}",
        d.body
    );
    assert_eq!(
        h.decide(&narrowed, "tickets.update", "write").await.body["outcome"],
        "approval_required"
    );

    // Tighten further: no task may start at all. Live tasks are revoked at once.
    std::fs::write(
        policies.path().join("freeze.cedar"),
        "@id(\"freeze\") forbid(principal, action == Mandate::Action::\"start_task\", resource);",
    )
    .unwrap();
    let r = h.post("/v1/policies/reload", Some(ADMIN), json!({})).await;
    assert_eq!(r.body["revoked"], json!([narrowed_id]), "{:?}", r.body);
    let d = h.decide(&narrowed, "tickets.update", "write").await;
    assert_eq!((d.status.as_u16(), d.code()), (403, "task_not_active"));

    let events = h
        .get(&format!("/v1/tasks/{narrowed_id}/events"), Some(ADMIN))
        .await
        .body;
    let reduced = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "task.grant_reduced")
        .unwrap();
    assert_eq!(
        (
            &reduced["data"]["previous_version"],
            &reduced["data"]["bundle_version"]
        ),
        (&before, &middle)
    );
    let revoked = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "task.revoked")
        .unwrap();
    assert_eq!(revoked["data"]["previous_version"], middle);
    assert_ne!(revoked["data"]["bundle_version"], middle);
    assert_eq!(revoked["data"]["policies"], json!(["freeze"]));
    assert_eq!(
        h.get(&format!("/v1/tasks/{narrowed_id}"), Some(ADMIN))
            .await
            .body["state"],
        "revoked"
    );
}

#[tokio::test]
async fn policy_files_are_watched() {
    let policies = policy_copy();
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(mandate_core::ManualClock::new(
        jiff::Timestamp::now().as_millisecond(),
    ));
    let mut config = common::config(&dir.path().join("data"), policies.path(), clock.clone());
    config.watch_policies = true;
    let server = mandate_server::Server::start(config).await.unwrap();
    let h = Harness {
        server,
        clock,
        http: reqwest::Client::new(),
        dir,
    };
    let before = h.server.engine.bundle().version().to_owned();
    std::fs::write(
        policies.path().join("broken.cedar"),
        "permit(principal action resource);",
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        h.server.engine.bundle().version(),
        before,
        "a broken change is not enforced"
    );
    std::fs::write(
        policies.path().join("broken.cedar"),
        "@id(\"x\") forbid(principal, action == Mandate::Action::\"delete\", resource);",
    )
    .unwrap();
    for _ in 0..50 {
        if h.server.engine.bundle().version() != before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the changed policy directory was never reloaded");
}

#[tokio::test]
async fn history_survives_a_restart() {
    let policies = policy_copy();
    std::fs::write(policies.path().join("cap.cedar"), "@id(\"two-searches\") forbid(principal, action == Mandate::Action::\"read\", resource == Mandate::Tool::\"tickets.search\") when { context.history.tool_calls >= 2 };").unwrap();
    let h = Harness::start_with(policies.path()).await;
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    assert_eq!(
        h.decide(&token, "tickets.update", "write").await.body["outcome"],
        "approval_required"
    );
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["policies"],
        json!(["two-searches"])
    );

    let data = h.dir.path().join("data");
    let (clock, issuer) = (h.clock.clone(), h.server.issuer.clone());
    let Harness { server, dir, .. } = h;
    server.shutdown().await.unwrap();
    let mut config = common::config(&data, policies.path(), clock);
    config.issuer = Some(issuer);
    let server = mandate_server::Server::start(config).await.unwrap();
    let r: Value = reqwest::Client::new()
        .post(format!("{}/v1/decide", server.url()))
        .bearer_auth(&token)
        .json(&json!({"tool": "tickets.search", "action": "read"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["policies"],
        json!(["two-searches"]),
        "the cap still holds after a restart: {r}"
    );
    server.shutdown().await.unwrap();
    drop(dir);
}

#[tokio::test]
async fn shadow_mode_records_disagreements_without_enforcing_them() {
    let candidate = policy_copy();
    std::fs::write(candidate.path().join("stricter.cedar"), "@id(\"no-search\") forbid(principal, action == Mandate::Action::\"read\", resource == Mandate::Tool::\"tickets.search\");").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(mandate_core::ManualClock::new(
        jiff::Timestamp::now().as_millisecond(),
    ));
    let mut config = common::config(
        &dir.path().join("data"),
        &common::demo_policies(),
        clock.clone(),
    );
    config.shadow_policies = Some(candidate.path().to_path_buf());
    let server = mandate_server::Server::start(config).await.unwrap();
    let h = Harness {
        server,
        clock,
        http: reqwest::Client::new(),
        dir,
    };
    let identity = h.agent("bot", 1).await;
    let (task_id, token) = h.task(&identity).await;
    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!(r.body["outcome"], "allow", "the enforcing bundle decides");
    assert_eq!(
        h.decide(&token, "tickets.update", "write").await.body["outcome"],
        "approval_required"
    );
    // Disagreements are recorded off the call's path: wait for the record.
    let mut events = Value::Null;
    for _ in 0..50 {
        events = h
            .get(&format!("/v1/tasks/{task_id}/events"), Some(ADMIN))
            .await
            .body;
        if events.to_string().contains("policy.shadow_disagreement") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let shadows: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "policy.shadow_disagreement")
        .collect();
    assert_eq!(
        shadows.len(),
        1,
        "only the disagreement is recorded: {events}"
    );
    assert_eq!(shadows[0]["data"]["enforced"]["outcome"], "allow");
    assert_eq!(shadows[0]["data"]["shadow"]["outcome"], "deny");
    assert_eq!(
        shadows[0]["data"]["shadow"]["policies"],
        json!(["no-search"])
    );
    assert_eq!(shadows[0]["data"]["decision_id"], r.body["decision_id"]);
}

#[tokio::test]
async fn drift_applies_new_ttl_caps_and_new_approval_requirements() {
    let policies = policy_copy();
    let h = Harness::start_with(policies.path()).await;
    let identity = h.agent("bot", 1).await;
    let (_, token) = h.task(&identity).await;
    let start = std::fs::read_to_string(policies.path().join("start.cedar")).unwrap();

    // A lower TTL cap brings the live task's expiry forward.
    std::fs::write(
        policies.path().join("start.cedar"),
        start.replace("@max_ttl_secs(\"1800\")", "@max_ttl_secs(\"60\")"),
    )
    .unwrap();
    let r = h.post("/v1/policies/reload", Some(ADMIN), json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        h.decide(&token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );
    h.clock.advance_ms(61_000);
    let d = h.decide(&token, "tickets.search", "read").await;
    assert_eq!(
        (d.status.as_u16(), d.code()),
        (403, "task_expired"),
        "{:?}",
        d.body
    );

    // Starting tasks now needs a human: running tasks that never had one are revoked.
    let (task_id, token) = h.task(&identity).await;
    std::fs::write(
        policies.path().join("start.cedar"),
        start.replace(
            "@max_ttl_secs(\"1800\")",
            "@max_ttl_secs(\"1800\")\n@approval_required(\"every task needs a human now\")",
        ),
    )
    .unwrap();
    let r = h.post("/v1/policies/reload", Some(ADMIN), json!({})).await;
    assert_eq!(r.body["revoked"], json!([task_id]), "{:?}", r.body);
    let d = h.decide(&token, "tickets.search", "read").await;
    assert_eq!((d.status.as_u16(), d.code()), (403, "task_not_active"));
}

/// Identifiers come from the injected generator (beside the clock): with a sequential one
/// a run's task, decision and token ids are predictable, and they reach the audit trail.
#[tokio::test]
async fn ids_come_from_the_injected_generator() {
    let h = Harness::start_configured(&demo_policies(), |c| {
        c.ids = std::sync::Arc::new(mandate_core::SequentialIds::default());
    })
    .await;
    let identity = h.agent("support-bot", 1).await;
    let (task_id, token) = h.task(&identity).await;
    assert!(task_id.starts_with("tsk_0000000000000000000"), "{task_id}");
    let r = h.decide(&token, "tickets.search", "read").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let decision = r.body["decision_id"].as_str().unwrap();
    assert!(
        decision.starts_with("dec_0000000000000000000"),
        "{decision}"
    );
    let events = h
        .get(&format!("/v1/tasks/{task_id}/events"), Some(ADMIN))
        .await;
    let recorded: Vec<&str> = events.body["events"]
        .as_array()
        .or(events.body.as_array())
        .unwrap()
        .iter()
        .filter_map(|e| e["data"]["decision_id"].as_str())
        .collect();
    assert_eq!(recorded, [decision], "the audit trail carries the same id");
}

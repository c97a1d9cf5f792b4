//! Envoy ext_authz v3 over real gRPC (a tonic client, as Envoy would call): the same
//! decisions as `/v1/decide`, and the agent's token is stripped before forwarding.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{ADMIN, Harness};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use mandate_core::Clock as _;
use mandate_core::ManualClock;
use serde_json::{Value, json};

fn check(token: Option<&str>, method: &str, tool: &str, body: &str) -> CheckRequest {
    let mut headers = HashMap::new();
    if let Some(t) = token {
        headers.insert("authorization".to_owned(), format!("Bearer {t}"));
    }
    let mut ext = HashMap::new();
    ext.insert("mandate_tool".to_owned(), tool.to_owned());
    ext.insert("mandate_data_domain".to_owned(), "support".to_owned());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    headers,
                    path: "/tickets/42?expand=1".to_owned(),
                    host: "tickets.internal".to_owned(),
                    body: body.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ext,
            ..Default::default()
        }),
    }
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().map_or(-1, |s| s.code)
}

#[tokio::test]
async fn ext_authz_check_answers_as_decide_does() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now().as_millisecond()));
    let mut config = common::config(
        &dir.path().join("data"),
        &common::demo_policies(),
        clock.clone(),
    );
    config.ext_authz_listen = Some(([127, 0, 0, 1], 0).into());
    let server = mandate_server::Server::start(config).await.unwrap();
    let grpc = server.ext_authz_addr.unwrap();
    let h = Harness {
        server,
        clock,
        http: reqwest::Client::new(),
        dir,
    };
    let identity = h.agent("bot", 1).await;
    let (task, token) = h.task(&identity).await;
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();

    // GET → read, allowed: OK, and Envoy is told to drop the agent's token upstream.
    let r = client
        .check(check(Some(&token), "GET", "tickets.search", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 0, "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(ok.headers_to_remove, ["authorization"]);
    let direct = h
        .post("/v1/decide", Some(&token), json!({
            "tool": "tickets.search", "action": "read", "resource": "/tickets/42", "data_domain": "support",
            "arguments": { "method": "GET", "query": "expand=1", "body": null },
        }))
        .await;
    assert_eq!(direct.body["outcome"], "allow");

    // POST with a JSON body → write, held for approval: denied with the approval id.
    let r = client
        .check(check(
            Some(&token),
            "POST",
            "tickets.update",
            r#"{"status": "closed"}"#,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 7, "PERMISSION_DENIED: {r:?}");
    let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
        panic!("{r:?}")
    };
    let body: Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(body["error"]["code"], "approval_required");
    assert!(denied.headers.iter().any(|h| {
        h.header
            .as_ref()
            .is_some_and(|h| h.key == "x-mandate-approval-id")
    }));
    // A duplicate key in the body is refused before any decision.
    let r = client
        .check(check(
            Some(&token),
            "POST",
            "tickets.update",
            r#"{"a": 1, "a": 2}"#,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 3, "INVALID_ARGUMENT: {r:?}");

    // DELETE → delete, denied by policy.
    let r = client
        .check(check(Some(&token), "DELETE", "tickets.delete", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 7, "{r:?}");
    // No token: unauthenticated, with a 401 for the client.
    let r = client
        .check(check(None, "GET", "tickets.search", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 16, "UNAUTHENTICATED: {r:?}");
    let Some(HttpResponse::DeniedResponse(denied)) = &r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 401);

    // Each check is one audited decision, like a /v1/decide call.
    let r = h
        .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
        .await;
    let outcomes: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "decision")
        .map(|e| e["data"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["allow", "allow", "approval_required", "deny"]);
    h.server.shutdown().await.unwrap();
}

/// Envoy authenticates itself as an enforcement point once any is configured (gRPC
/// metadata `x-mandate-point-token`), and its decisions name it; a task token bound to a
/// key is good only with a DPoP proof for the request Envoy asks about.
#[tokio::test]
async fn ext_authz_points_authenticate_and_bound_tokens_need_their_proof() {
    const POINT: &str = "envoy-point-token-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now().as_millisecond()));
    let mut config = common::config(
        &dir.path().join("data"),
        &common::demo_policies(),
        clock.clone(),
    );
    config.ext_authz_listen = Some(([127, 0, 0, 1], 0).into());
    config.identity = Some(Arc::new(
        mandate_server::workload::IdentityConfig::from_toml(&format!(
            "[[enforcement_point]]\nname = \"envoy\"\ntoken_sha256 = \"{}\"",
            mandate_core::sha256_hex(POINT.as_bytes())
        ))
        .unwrap(),
    ));
    let server = mandate_server::Server::start(config).await.unwrap();
    let grpc = server.ext_authz_addr.unwrap();
    let h = Harness {
        server,
        clock,
        http: reqwest::Client::new(),
        dir,
    };
    let identity = h.agent("bot", 1).await;
    let holder = common::dpop::Holder::new();
    let now = h.clock.now_ms() / 1000;
    let start = h
        .send(
            h.http
                .post(h.url("/v1/tasks"))
                .bearer_auth(&identity)
                .header("dpop", holder.proof("POST", &format!("{}/v1/tasks", h.server.url().trim_end_matches('/')), None, now))
                .json(&json!({"purpose": "read tickets", "scope": {"tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"]}})),
        )
        .await;
    assert_eq!(start.status, 201, "{:?}", start.body);
    let token = start.body["task_token"].as_str().unwrap().to_owned();
    let task = start.body["task_id"].as_str().unwrap().to_owned();
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let ask = |point: Option<&str>, req: CheckRequest| {
        let mut r = tonic::Request::new(req);
        if let Some(p) = point {
            r.metadata_mut()
                .insert("x-mandate-point-token", p.parse().unwrap());
        }
        r
    };
    let dpop_check = |proof: Option<String>| {
        let mut c = check(None, "GET", "tickets.search", "");
        let http = c
            .attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap();
        http.scheme = "https".into();
        http.headers
            .insert("authorization".into(), format!("DPoP {token}"));
        if let Some(p) = proof {
            http.headers.insert("dpop".into(), p);
        }
        c
    };
    let url = "https://tickets.internal/tickets/42";

    // No point token, or a wrong one: unauthenticated, and no decision is made.
    for point in [None, Some("wrong")] {
        let r = client
            .check(ask(
                point,
                dpop_check(Some(holder.proof("GET", url, Some(&token), now))),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&r), 16, "{r:?}");
    }
    // The point, the holder's proof for this request: allowed.
    let r = client
        .check(ask(
            Some(POINT),
            dpop_check(Some(holder.proof("GET", url, Some(&token), now))),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 0, "{r:?}");
    // The bound token as a bearer, without a proof, or with a proof for another URL: refused.
    let r = client
        .check(ask(
            Some(POINT),
            check(Some(&token), "GET", "tickets.search", ""),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 16, "bearer: {r:?}");
    let r = client
        .check(ask(Some(POINT), dpop_check(None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 16, "no proof: {r:?}");
    let other = holder.proof(
        "GET",
        "https://elsewhere.internal/tickets/42",
        Some(&token),
        now,
    );
    let r = client
        .check(ask(Some(POINT), dpop_check(Some(other))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), 16, "other URL: {r:?}");

    let events = h
        .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
        .await
        .body;
    let points: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "decision")
        .map(|e| &e["data"]["point"])
        .collect();
    assert_eq!(points, [&json!("envoy")]);
    h.server.shutdown().await.unwrap();
}

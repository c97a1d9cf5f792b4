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

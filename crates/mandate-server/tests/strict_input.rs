//! Parser differentials on attacker input, through the real server on real sockets: every
//! entry point reads JSON with the one strict parser (duplicate keys refused after
//! unescaping), a check whose body Mandate was not given is refused rather than decided
//! on `null`, two `Authorization` headers are refused everywhere, and separation of
//! duties compares normalised identities.

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

use common::upstream::Upstream;
use common::{ADMIN, Harness, Reply};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap as EnvoyHeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use mandate_gateway::GatewayConfig;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};

/// A server with an ext_authz listener, an HTTP gateway to a recording upstream and an
/// MCP server entry (whose upstream is never reached by what these tests send).
struct Setup {
    h: Harness,
    up: Upstream,
    grpc: std::net::SocketAddr,
    identity: String,
    task: String,
    token: String,
}

async fn setup() -> Setup {
    let up = Upstream::start().await;
    let toml = format!(
        r#"
[[upstream]]
name = "tickets"
base_url = "http://{addr}/api"
allow_private = true

[[route]]
upstream = "tickets"
method = "POST"
path = "/tickets/search"
tool = "tickets.search"
action = "read"
data_domain = "support"

[[mcp_server]]
name = "docs"
url = "http://{addr}/mcp"
allow_private = true
"#,
        addr = up.addr
    );
    let cfg = GatewayConfig::from_toml(&toml).unwrap();
    let h = Harness::start_configured(&common::demo_policies(), |c| {
        c.gateway = Some(Arc::new(cfg));
        c.ext_authz_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let grpc = h.server.ext_authz_addr.unwrap();
    let identity = h.agent("bot", 1).await;
    let r = h
        .post("/v1/tasks", Some(&identity), json!({
            "purpose": "summarise open tickets",
            "scope": { "tools": ["tickets.search", "tickets.update"], "actions": ["read", "write"],
                       "data_domains": ["support"], "destinations": [up.addr.to_string()] },
            "ttl_secs": 600,
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    Setup {
        task: r.body["task_id"].as_str().unwrap().to_owned(),
        token: r.body["task_token"].as_str().unwrap().to_owned(),
        h,
        up,
        grpc,
        identity,
    }
}

impl Setup {
    /// POSTs `body` byte for byte as JSON.
    async fn raw(&self, path: &str, bearer: Option<&str>, body: &str) -> Reply {
        let mut req = self
            .h
            .http
            .post(self.h.url(path))
            .header(CONTENT_TYPE, "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_owned());
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        self.h.send(req).await
    }

    async fn decisions(&self) -> usize {
        let r = self
            .h
            .get(&format!("/v1/tasks/{}/events", self.task), Some(ADMIN))
            .await;
        r.body
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "decision")
            .count()
    }

    async fn approver(&self, name: &str) -> Reply {
        self.h
            .post(
                "/v1/approvers",
                Some(ADMIN),
                json!({ "name": name, "roles": ["approver", "break_glass", "reviewer"], "groups": ["default"] }),
            )
            .await
    }

    async fn grpc(&self) -> AuthorizationClient<tonic::transport::Channel> {
        AuthorizationClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }
}

fn check(http: HttpRequest) -> CheckRequest {
    let mut ext = HashMap::new();
    ext.insert("mandate_tool".to_owned(), "tickets.search".to_owned());
    ext.insert("mandate_action".to_owned(), "read".to_owned());
    ext.insert("mandate_data_domain".to_owned(), "support".to_owned());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions: ext,
            ..Default::default()
        }),
    }
}

fn http_request(headers: &[(&str, &str)], body: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        path: "/tickets/search".to_owned(),
        host: "tickets.internal".to_owned(),
        body: body.to_owned(),
        ..Default::default()
    }
}

/// gRPC code and the HTTP error code of a denied check.
fn refusal(r: &CheckResponse) -> (i32, String) {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let grpc = r.status.as_ref().map_or(-1, |s| s.code);
    let code = match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            serde_json::from_str::<Value>(&d.body).unwrap()["error"]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        }
        _ => String::new(),
    };
    (grpc, code)
}

fn evaluation(arguments: &str, approval: Option<&str>) -> String {
    let approval = approval.map_or(String::new(), |a| format!(r#","approval_id":"{a}""#));
    format!(
        r#"{{"subject":{{"type":"agent"}},"action":{{"name":"write"}},"resource":{{"type":"tool","id":"tickets.update","properties":{{"resource":"ticket/T-1"}}}},"context":{{"arguments":{arguments}{approval}}}}}"#
    )
}

#[tokio::test]
async fn authzen_refuses_duplicate_keys_like_decide() {
    let s = setup().await;
    let before = s.decisions().await;
    for args in [
        r#"{"amount":1000,"id":42,"amount":10}"#,
        r#"{"amount":1000,"id":42,"\u0061mount":10}"#,
    ] {
        let decide = s
            .raw(
                "/v1/decide",
                Some(&s.token),
                &format!(
                    r#"{{"tool":"tickets.update","action":"write","resource":"ticket/T-1","arguments":{args}}}"#
                ),
            )
            .await;
        let authzen = s
            .raw(
                "/access/v1/evaluation",
                Some(&s.token),
                &evaluation(args, None),
            )
            .await;
        let batch = s
            .raw(
                "/access/v1/evaluations",
                Some(&s.token),
                &format!(r#"{{"evaluations":[{}]}}"#, evaluation(args, None)),
            )
            .await;
        for (what, r) in [
            ("decide", &decide),
            ("evaluation", &authzen),
            ("evaluations", &batch),
        ] {
            assert_eq!(
                (r.status.as_u16(), r.code()),
                (400, "malformed_json"),
                "{what} {args}: {:?}",
                r.body
            );
            let message = r.body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(r#"duplicate key "amount""#),
                "{what}: {message}"
            );
        }
    }
    // A duplicate anywhere in the envelope is refused too, not only in the arguments.
    let r = s
        .raw(
            "/access/v1/evaluation",
            Some(&s.token),
            r#"{"subject":{"type":"agent"},"action":{"name":"read"},"action":{"name":"write"},"resource":{"type":"tool","id":"tickets.search"}}"#,
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "malformed_json"),
        "{:?}",
        r.body
    );
    assert_eq!(s.decisions().await, before, "nothing was decided");

    // The same document without the duplicate is decided, by both.
    let ok = r#"{"amount":1000,"id":42}"#;
    let r = s
        .raw(
            "/access/v1/evaluation",
            Some(&s.token),
            &evaluation(ok, None),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["context"]["outcome"], "approval_required");
}

#[tokio::test]
async fn an_approval_cannot_be_replayed_with_a_duplicate_key() {
    let s = setup().await;
    let approved = r#"{"amount":10,"id":42}"#;
    let r = s
        .raw(
            "/access/v1/evaluation",
            Some(&s.token),
            &evaluation(approved, None),
        )
        .await;
    assert_eq!(
        r.body["context"]["outcome"], "approval_required",
        "{:?}",
        r.body
    );
    let id = r.body["context"]["approval"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = s.approver("bob").await;
    let bob = bob.body["token"].as_str().unwrap().to_owned();
    let r =
        s.h.post(
            &format!("/v1/approvals/{id}/approve"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // The attack: the approved fields last, a larger amount first. A last-wins parser
    // decides on (and matches the approval to) amount 10; the upstream that keeps the
    // first reads 1000.
    for smuggled in [
        r#"{"amount":1000,"id":42,"amount":10}"#,
        r#"{"amount":1000,"id":42,"\u0061mount":10}"#,
    ] {
        let r = s
            .raw(
                "/access/v1/evaluation",
                Some(&s.token),
                &evaluation(smuggled, Some(&id)),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (400, "malformed_json"),
            "{smuggled}: {:?}",
            r.body
        );
        assert_ne!(r.body["decision"], true);
    }
    // The approval was not used up: the exact approved call still goes through, once.
    let r = s
        .raw(
            "/access/v1/evaluation",
            Some(&s.token),
            &evaluation(approved, Some(&id)),
        )
        .await;
    assert_eq!(r.body["decision"], true, "{:?}", r.body);
}

#[tokio::test]
async fn mcp_and_gateway_refuse_duplicate_keys_like_decide() {
    let s = setup().await;
    // MCP: rmcp would keep the last `name`; the body never reaches it.
    let r = s
        .raw(
            "/mcp/docs",
            Some(&s.token),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all","arguments":{"q":"x"},"name":"search"}}"#,
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "malformed_json"),
        "{:?}",
        r.body
    );
    let r = s
        .raw(
            "/mcp/docs",
            Some(&s.token),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","\u006dethod":"tools/call"}"#,
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "malformed_json"),
        "{:?}",
        r.body
    );
    // The gateway decides on JSON bodies with the same parser, whatever the content type.
    for ct in ["application/json", "text/plain"] {
        let r =
            s.h.send(
                s.h.http
                    .post(s.h.url("/gw/tickets/tickets/search"))
                    .bearer_auth(&s.token)
                    .header(CONTENT_TYPE, ct)
                    .body(r#"{"q":"open","\u0071":"all"}"#),
            )
            .await;
        assert_eq!(r.status, 400, "{ct}: {:?}", r.body);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("duplicate key"),
            "{:?}",
            r.body
        );
    }
    assert!(
        s.up.seen.lock().unwrap().is_empty(),
        "nothing was forwarded"
    );
}

#[tokio::test]
async fn ext_authz_refuses_a_body_it_cannot_parse_instead_of_deciding_on_null() {
    let s = setup().await;
    let mut client = s.grpc().await;
    let auth = format!("Bearer {}", s.token);
    let before = s.decisions().await;

    // A request with a body Envoy did not buffer (no `with_request_body`): the check
    // carries none, but the request forwarded has one.
    let mut cases = vec![
        (
            "content-length, no body",
            http_request(&[("authorization", &auth), ("content-length", "27")], ""),
        ),
        (
            "chunked, no body",
            http_request(
                &[("authorization", &auth), ("transfer-encoding", "chunked")],
                "",
            ),
        ),
        (
            "a partial body",
            http_request(
                &[
                    ("authorization", &auth),
                    ("x-envoy-auth-partial-body", "true"),
                ],
                r#"{"q":"open"}"#,
            ),
        ),
        (
            "a duplicate key",
            http_request(
                &[("authorization", &auth)],
                r#"{"q":"open","\u0071":"all"}"#,
            ),
        ),
        (
            "not JSON",
            http_request(&[("authorization", &auth)], "q=open&q=all"),
        ),
    ];
    let mut sized = http_request(&[("authorization", &auth)], "");
    sized.size = 27;
    cases.push(("a declared size, no body", sized));
    let mut two = http_request(&[("authorization", &auth)], r#"{"q":"open"}"#);
    two.raw_body = br#"{"q":"all"}"#.to_vec();
    cases.push(("two different bodies", two));
    let mut bad_utf8 = http_request(&[("authorization", &auth)], "");
    bad_utf8.raw_body = b"{\"q\":\"\xff\"}".to_vec();
    cases.push(("raw bytes that are not UTF-8", bad_utf8));

    for (what, http) in cases {
        let r = client.check(check(http)).await.unwrap().into_inner();
        assert_eq!(
            refusal(&r),
            (3, "invalid_request".to_owned()),
            "{what}: INVALID_ARGUMENT expected, not a decision: {r:?}"
        );
    }
    assert_eq!(s.decisions().await, before, "nothing was decided on null");

    // What Mandate is given whole is decided: a body, or truly none.
    for http in [
        http_request(&[("authorization", &auth)], r#"{"q":"open"}"#),
        http_request(&[("authorization", &auth), ("content-length", "0")], ""),
    ] {
        let r = client.check(check(http)).await.unwrap().into_inner();
        assert_eq!(r.status.as_ref().map_or(-1, |s| s.code), 0, "{r:?}");
    }
    assert_eq!(s.decisions().await, before + 2);
}

#[tokio::test]
async fn two_authorization_headers_are_refused_everywhere() {
    let s = setup().await;
    let two = |first: &str, second: &str| {
        let mut m = HeaderMap::new();
        m.append(AUTHORIZATION, format!("Bearer {first}").parse().unwrap());
        m.append(AUTHORIZATION, format!("Bearer {second}").parse().unwrap());
        m
    };
    let decide = json!({ "tool": "tickets.search", "action": "read", "resource": "queue/open", "data_domain": "support", "arguments": { "q": "open" } });
    let evaluation = json!({
        "subject": { "type": "agent" }, "action": { "name": "read" },
        "resource": { "type": "tool", "id": "tickets.search", "properties": { "resource": "queue/open", "data_domain": "support" } },
        "context": { "arguments": { "q": "open" } },
    });
    let mcp = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } } });
    let before = s.decisions().await;
    // Both orders: whichever a reader picks, the request is refused.
    for (first, second) in [
        (s.token.as_str(), "not-a-token"),
        ("not-a-token", s.token.as_str()),
    ] {
        let requests = [
            ("decide", s.h.http.post(s.h.url("/v1/decide")).json(&decide)),
            (
                "authzen",
                s.h.http
                    .post(s.h.url("/access/v1/evaluation"))
                    .json(&evaluation),
            ),
            (
                "gateway",
                s.h.http
                    .post(s.h.url("/gw/tickets/tickets/search"))
                    .json(&json!({ "q": "open" })),
            ),
            (
                "mcp",
                s.h.http
                    .post(s.h.url("/mcp/docs"))
                    .header("accept", "application/json, text/event-stream")
                    .json(&mcp),
            ),
            (
                "identity",
                s.h.http.post(s.h.url("/v1/tasks")).json(&json!({})),
            ),
        ];
        for (what, req) in requests {
            let r = s.h.send(req.headers(two(first, second))).await;
            assert_eq!(
                (r.status.as_u16(), r.code()),
                (401, "invalid_authorization_header"),
                "{what}: {:?}",
                r.body
            );
        }
        // The admin API: two headers, one of them the admin token.
        let r =
            s.h.send(s.h.http.get(s.h.url("/v1/agents")).headers(two(ADMIN, "x")))
                .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (401, "invalid_authorization_header"),
            "{:?}",
            r.body
        );
    }
    // The identity token and the task token together: still two.
    let r =
        s.h.send(
            s.h.http
                .post(s.h.url("/v1/decide"))
                .json(&decide)
                .headers(two(&s.token, &s.identity)),
        )
        .await;
    assert_eq!(r.code(), "invalid_authorization_header", "{:?}", r.body);
    assert_eq!(s.decisions().await, before, "nothing was decided");
    assert!(
        s.up.seen.lock().unwrap().is_empty(),
        "nothing was forwarded"
    );

    // ext_authz: Envoy merges repeated headers with a comma, or lists them apart with
    // `encode_raw_headers`.
    let mut client = s.grpc().await;
    let merged = format!("Bearer {},Bearer x", s.token);
    let mut raw = http_request(&[], r#"{"q":"open"}"#);
    raw.header_map = Some(EnvoyHeaderMap {
        headers: vec![
            HeaderValue {
                key: "authorization".into(),
                raw_value: format!("Bearer {}", s.token).into_bytes(),
                ..Default::default()
            },
            HeaderValue {
                key: "authorization".into(),
                raw_value: b"Bearer x".to_vec(),
                ..Default::default()
            },
        ],
    });
    for http in [
        http_request(&[("authorization", &merged)], r#"{"q":"open"}"#),
        raw,
    ] {
        let r = client.check(check(http)).await.unwrap().into_inner();
        assert_eq!(
            refusal(&r),
            (16, "invalid_authorization_header".to_owned()),
            "{r:?}"
        );
    }
    assert_eq!(s.decisions().await, before, "nothing was decided");

    // One header, anywhere, still works.
    let r = s.h.post("/v1/decide", Some(&s.token), decide).await;
    assert_eq!(r.body["outcome"], "allow", "{:?}", r.body);
    let mut raw = http_request(&[], r#"{"q":"open"}"#);
    raw.header_map = Some(EnvoyHeaderMap {
        headers: vec![HeaderValue {
            key: "authorization".into(),
            raw_value: format!("Bearer {}", s.token).into_bytes(),
            ..Default::default()
        }],
    });
    let r = client.check(check(raw)).await.unwrap().into_inner();
    assert_eq!(r.status.as_ref().map_or(-1, |s| s.code), 0, "{r:?}");
}

#[tokio::test]
async fn separation_of_duties_compares_normalised_identities() {
    let s = setup().await;
    // The agent's owner was registered as `alice@example.com`; its approval request:
    let r = s
        .raw(
            "/v1/decide",
            Some(&s.token),
            r#"{"tool":"tickets.update","action":"write","resource":"ticket/T-1","arguments":{"status":"closed"}}"#,
        )
        .await;
    assert_eq!(r.body["outcome"], "approval_required", "{:?}", r.body);
    let id = r.body["approval"]["id"].as_str().unwrap().to_owned();

    // The owner under another spelling is still the owner: may not approve.
    let r = s.approver("Alice@Example.COM").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let alice = r.body["token"].as_str().unwrap().to_owned();
    let name = r.body["approver"]["name"].clone();
    let r =
        s.h.post(
            &format!("/v1/approvals/{id}/approve"),
            Some(&alice),
            json!({}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "separation_of_duties"),
        "{:?}",
        r.body
    );
    assert_eq!(name, "alice@example.com", "stored in normal form");
    // One person, one approver: the same name in other case is the same approver.
    let r = s.approver("ALICE@example.com").await;
    assert_eq!(r.status, 409, "{:?}", r.body);

    // An owner registered with odd case and spaces is stored in normal form, and a
    // look-alike or control character is refused rather than made a second person.
    let r =
        s.h.post(
            "/v1/agents",
            Some(ADMIN),
            json!({ "name": "bot2", "owner": "  Carol@Example.com ", "tier": 1 }),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["agent"]["owner"], "carol@example.com");
    for owner in [
        "\u{ff41}lice@example.com",
        "\u{430}lice@example.com",
        "alice\n",
        " ",
    ] {
        let r =
            s.h.post(
                "/v1/agents",
                Some(ADMIN),
                json!({ "name": "bot3", "owner": owner, "tier": 1 }),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (422, "invalid_request"),
            "{owner:?}: {:?}",
            r.body
        );
    }

    // Break-glass: its declarer under another spelling may not review it.
    let r = s.approver("Dana").await;
    let dana = r.body["token"].as_str().unwrap().to_owned();
    let r = s
        .h
        .post("/v1/break-glass", Some(&dana), json!({
            "agent": "bot", "justification": "spam flood: 40k bogus tickets, purge before the SLA clock",
            "scope": { "tools": ["tickets.delete"], "actions": ["delete"], "data_domains": ["support"] },
            "ttl_secs": 600,
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["break_glass"]["declared_by"], "dana");
    let bg = r.body["break_glass"]["id"].as_str().unwrap().to_owned();
    let bg_task = r.body["break_glass"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r =
        s.h.post(
            &format!("/v1/tasks/{bg_task}/revoke"),
            Some(ADMIN),
            json!({ "reason": "incident over" }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A second approver record for Dana cannot be made by changing case…
    assert_eq!(s.approver("DANA").await.status, 409);
    // …so the only way to review is someone else.
    let r = s.approver("erin").await;
    let erin = r.body["token"].as_str().unwrap().to_owned();
    let r =
        s.h.post(
            &format!("/v1/break-glass/{bg}/review"),
            Some(&dana),
            json!({ "notes": "all fine, reviewed by myself" }),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "separation_of_duties"),
        "{:?}",
        r.body
    );
    let r =
        s.h.post(
            &format!("/v1/break-glass/{bg}/review"),
            Some(&erin),
            json!({ "notes": "purge verified against the spam report" }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Someone else approves the original request.
    let r =
        s.h.post(
            &format!("/v1/approvals/{id}/approve"),
            Some(&erin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

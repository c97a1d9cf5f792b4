//! Policy on a route's arguments through the HTTP gateway: the catalog types the path
//! parameters, query and JSON body, a refund over 100 is held for a human, and a body that
//! does not fit the declared schema never reaches the upstream.

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

use common::upstream::Upstream;
use common::{ADMIN, Harness};
use mandate_gateway::GatewayConfig;
use serde_json::{Value, json};

struct Payments {
    h: Harness,
    up: Upstream,
    token: String,
}

async fn start() -> Payments {
    let up = Upstream::start().await;
    let toml = format!(
        r#"
[[upstream]]
name = "payments"
base_url = "http://{addr}/api"
allow_private = true
credential = {{ secret = "payments-token", kind = "bearer" }}

[[route]]
upstream = "payments"
method = "POST"
path = "/invoices/{{id}}/refund"
tool = "payments.refund"
action = "write"
data_domain = "finance"
"#,
        addr = up.addr
    );
    let cfg = GatewayConfig::from_toml(&toml).unwrap();
    let policies =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gateway-args-policies");
    let h = Harness::start_configured(&policies, |c| c.gateway = Some(Arc::new(cfg))).await;
    let r = h
        .send(
            h.http
                .put(h.url("/v1/secrets/payments-token"))
                .bearer_auth(ADMIN)
                .json(&json!({ "value": "payments-upstream-secret-77" })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let identity = h.agent("billing", 1).await;
    let r = h
        .post(
            "/v1/tasks",
            Some(&identity),
            json!({
                "purpose": "refund duplicate charges",
                "scope": { "tools": ["payments.refund"], "actions": ["write"],
                           "data_domains": ["finance"], "destinations": [up.addr.to_string()] },
                "ttl_secs": 600,
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let token = r.body["task_token"].as_str().unwrap().to_owned();
    Payments { h, up, token }
}

impl Payments {
    async fn refund(&self, path: &str, body: &Value, approval: Option<&str>) -> common::Reply {
        let mut req = self
            .h
            .http
            .post(self.h.url(&format!("/gw/payments{path}")))
            .bearer_auth(&self.token)
            .json(body);
        if let Some(a) = approval {
            req = req.header("x-mandate-approval-id", a);
        }
        self.h.send(req).await
    }
}

#[tokio::test]
async fn a_refund_over_100_through_the_gateway_is_held_and_only_the_approved_body_goes() {
    let p = start().await;
    let r = p
        .refund(
            "/invoices/inv-1/refund",
            &json!({ "amount": 40, "currency": "EUR" }),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(p.up.count(), 1);

    let large = json!({ "amount": 250, "currency": "EUR" });
    let r = p.refund("/invoices/inv-2/refund", &large, None).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "approval_required"),
        "{:?}",
        r.body
    );
    let id = r.headers["x-mandate-approval-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(p.up.count(), 1, "held: not forwarded");

    let approver =
        p.h.post(
            "/v1/approvers",
            Some(ADMIN),
            json!({ "name": "bob@example.com", "roles": ["approver"] }),
        )
        .await;
    let approver = approver.body["token"].as_str().unwrap().to_owned();
    // The approver sees the arguments as policy saw them.
    let held =
        p.h.get(&format!("/v1/approvals/{id}"), Some(&approver))
            .await;
    assert_eq!(held.status, 200, "{:?}", held.body);
    assert_eq!(
        held.body["action"]["typed_arguments"],
        json!({ "path": { "id": "inv-2" }, "query": {}, "body": { "amount": "250.0000", "currency": "EUR" } }),
        "{:?}",
        held.body
    );
    let a =
        p.h.post(
            &format!("/v1/approvals/{id}/approve"),
            Some(&approver),
            json!({}),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);

    // The approval covers that refund, not a larger one on its id.
    let r = p
        .refund(
            "/invoices/inv-2/refund",
            &json!({ "amount": 2500, "currency": "EUR" }),
            Some(&id),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = p.refund("/invoices/inv-2/refund", &large, Some(&id)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = p.up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, br#"{"amount":250,"currency":"EUR"}"#);

    // The query is typed too: a silent refund over 10 is refused by policy.
    let r = p
        .refund(
            "/invoices/inv-3/refund?notify=no",
            &json!({ "amount": 20, "currency": "USD" }),
            None,
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "denied"),
        "{:?}",
        r.body
    );
    assert_eq!(
        r.body["error"]["details"]["policies"],
        json!(["no-silent-refunds-over-10"])
    );
}

#[tokio::test]
async fn a_route_whose_arguments_do_not_fit_the_catalog_forwards_nothing() {
    let p = start().await;
    for (path, body, field) in [
        (
            "/invoices/inv-1/refund",
            json!({ "amount": "40", "currency": "EUR" }),
            "body.amount",
        ),
        (
            "/invoices/inv-1/refund",
            json!({ "amount": 40, "currency": "GBP" }),
            "body.currency",
        ),
        (
            "/invoices/inv-1/refund",
            json!({ "amount": -1, "currency": "EUR" }),
            "body.amount",
        ),
        (
            "/invoices/inv-1/refund",
            json!({ "currency": "EUR" }),
            "body.amount",
        ),
        (
            "/invoices/inv-1/refund",
            json!({ "amount": 1, "currency": "EUR", "iban": "x" }),
            "body.iban",
        ),
        ("/invoices/inv-1/refund", json!([1]), "body"),
        (
            "/invoices/inv-1/refund?notify=maybe",
            json!({ "amount": 1, "currency": "EUR" }),
            "query.notify",
        ),
        (
            "/invoices/inv-1/refund?extra=1",
            json!({ "amount": 1, "currency": "EUR" }),
            "query.extra",
        ),
        (
            &format!("/invoices/{}/refund", "x".repeat(33)),
            json!({ "amount": 1, "currency": "EUR" }),
            "path.id",
        ),
    ] {
        let r = p.refund(path, &body, None).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (403, "denied"),
            "{path} {body}: {:?}",
            r.body
        );
        assert_eq!(
            r.body["error"]["details"]["policies"],
            json!(["mandate:arguments"]),
            "{path} {body}"
        );
        let message = r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
            + &r.body["error"]["details"].to_string();
        assert!(
            message.contains(&format!("`{field}`")),
            "{path} {body}: {message}"
        );
    }
    assert_eq!(
        p.up.count(),
        0,
        "nothing that did not fit reached the upstream"
    );
}

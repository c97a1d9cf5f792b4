//! OpenID AuthZEN over real HTTP: the same decisions, and the same audit events, as
//! `/v1/decide` for the same input.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use common::{ADMIN, Harness};
use serde_json::{Value, json};

fn evaluation(token: Option<&str>, action: &str, tool: &str) -> Value {
    let mut subject = json!({ "type": "agent" });
    if let Some(t) = token {
        subject["properties"] = json!({ "token": t });
    }
    json!({
        "subject": subject,
        "action": { "name": action },
        "resource": { "type": "tool", "id": tool, "properties": { "resource": "queue/open", "data_domain": "support" } },
        "context": { "arguments": { "q": "open" } },
    })
}

#[tokio::test]
async fn authzen_answers_as_decide_does() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (task, token) = h.task(&identity).await;

    let disco = h.get("/.well-known/authzen-configuration", None).await;
    assert_eq!(disco.status, 200);
    assert!(
        disco.body["access_evaluation_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/access/v1/evaluation")
    );

    for (action, tool, want) in [
        ("read", "tickets.search", true),
        ("write", "tickets.update", false),
        ("delete", "tickets.delete", false),
        ("read", "crm.export", false),
    ] {
        let direct = h
            .post(
                "/v1/decide",
                Some(&token),
                json!({ "tool": tool, "action": action, "resource": "queue/open", "data_domain": "support", "arguments": { "q": "open" } }),
            )
            .await;
        // The token in the subject, or as the bearer: the same answer.
        let in_subject = h
            .post(
                "/access/v1/evaluation",
                None,
                evaluation(Some(&token), action, tool),
            )
            .await;
        let as_bearer = h
            .post(
                "/access/v1/evaluation",
                Some(&token),
                evaluation(None, action, tool),
            )
            .await;
        for r in [&in_subject, &as_bearer] {
            assert_eq!(r.status, 200, "{:?}", r.body);
            assert_eq!(r.body["decision"], want, "{action} {tool}: {:?}", r.body);
            let ctx = &r.body["context"];
            for k in [
                "outcome",
                "policies",
                "reasons",
                "bundle_version",
                "args_digest",
                "task_id",
            ] {
                assert_eq!(ctx[k], direct.body[k], "{action} {tool}: {k}");
            }
        }
    }
    // Each evaluation is one audited decision, like a /v1/decide call.
    let r = h
        .get(&format!("/v1/tasks/{task}/events"), Some(ADMIN))
        .await;
    let decisions = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "decision")
        .count();
    assert_eq!(decisions, 12, "4 direct + 8 AuthZEN");

    // Batches: defaults, per-item overrides, and the short-circuit semantics.
    let batch = |semantic: &str| {
        json!({
            "subject": { "type": "agent", "properties": { "token": token } },
            "resource": { "type": "tool", "id": "tickets.search" },
            "evaluations": [
                { "action": { "name": "read" } },
                { "action": { "name": "delete" }, "resource": { "type": "tool", "id": "tickets.delete" } },
                { "action": { "name": "read" } },
            ],
            "options": { "evaluations_semantic": semantic },
        })
    };
    let r = h
        .post("/access/v1/evaluations", None, batch("execute_all"))
        .await;
    let got: Vec<bool> = r.body["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"].as_bool().unwrap())
        .collect();
    assert_eq!(got, [true, false, true], "{:?}", r.body);
    let r = h
        .post("/access/v1/evaluations", None, batch("deny_on_first_deny"))
        .await;
    assert_eq!(r.body["evaluations"].as_array().unwrap().len(), 2);
    let r = h
        .post(
            "/access/v1/evaluations",
            None,
            batch("permit_on_first_permit"),
        )
        .await;
    assert_eq!(r.body["evaluations"].as_array().unwrap().len(), 1);

    // Refusals: no token, a subject that is not the token's, a forged token, bad shapes.
    let r = h
        .post(
            "/access/v1/evaluation",
            None,
            evaluation(None, "read", "tickets.search"),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "missing_token"));
    let mut other = evaluation(Some(&token), "read", "tickets.search");
    other["subject"]["id"] = json!("spiffe://mandate.local/agent/someone-else");
    let r = h.post("/access/v1/evaluation", None, other).await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "subject_mismatch"));
    let r = h
        .post(
            "/access/v1/evaluation",
            None,
            evaluation(Some("x.y.z"), "read", "tickets.search"),
        )
        .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let mut bad = evaluation(Some(&token), "read", "tickets.search");
    bad["resource"]["type"] = json!("document");
    assert_eq!(h.post("/access/v1/evaluation", None, bad).await.status, 422);
    let mut bad = evaluation(Some(&token), "read", "tickets.search");
    bad["context"]["admin"] = json!(true);
    assert_eq!(h.post("/access/v1/evaluation", None, bad).await.status, 422);
    let r = h
        .post("/access/v1/evaluations", None, json!({ "evaluations": [] }))
        .await;
    assert_eq!(r.status, 422);
    // An item that cannot be decided answers false with its error; the others proceed.
    let r = h
        .post(
            "/access/v1/evaluations",
            None,
            json!({
                "evaluations": [
                    evaluation(Some("x.y.z"), "read", "tickets.search"),
                    evaluation(Some(&token), "read", "tickets.search"),
                ],
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["evaluations"][0]["decision"], false);
    assert_eq!(r.body["evaluations"][0]["context"]["error"]["status"], 401);
    assert_eq!(r.body["evaluations"][1]["decision"], true);
}

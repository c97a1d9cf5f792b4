//! Tool arguments in policy: the catalog's schema types `context.args`, policies are
//! validated against each tool's record, and a call's arguments are typed once (or denied
//! before policy, naming the field).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

use std::collections::BTreeMap;
use std::path::Path;

use mandate_core::{ActionClass, RequestedScope, Sensitivity, ToolName};
use mandate_policy::{
    ARGUMENTS_POLICY, AgentFacts, Bundle, CallRequest, Decision, History, Outcome, StartRequest,
    TaskEntities, TaskFacts,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn task() -> TaskEntities {
    TaskEntities::build(
        &AgentFacts {
            name: "billing-bot".into(),
            spiffe_id: "spiffe://t/agent/billing-bot".into(),
            owner: "alice".into(),
            tier: 1,
            status: "active".into(),
            trust_domain: "t".into(),
        },
        &TaskFacts {
            id: "tsk_1".into(),
            purpose: "refund duplicate charges".into(),
            environment: "test".into(),
            delegation: None,
        },
    )
    .unwrap()
}

/// The example billing bundle, loaded once.
fn billing() -> &'static Bundle {
    static BILLING: std::sync::LazyLock<Bundle> = std::sync::LazyLock::new(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies/billing");
        Bundle::load_dir(&dir).unwrap()
    });
    &BILLING
}

fn call(b: &Bundle, tool: &str, action: ActionClass, args: &Value) -> Decision {
    let tool = ToolName::parse(tool).unwrap();
    b.decide_call(
        &task(),
        &CallRequest {
            action,
            tool: &tool,
            resource: "",
            destination: None,
            data_domain: None,
            sensitivity: Sensitivity::Internal,
            args_digest: "",
            args: Some(args),
            now_secs: 1_800_000_000,
            history: &History::default(),
        },
    )
}

fn refund(amount: Value, currency: &str) -> Value {
    json!({ "invoice_id": "inv_1", "amount": amount, "currency": currency })
}

fn sources(tools: &Value, cedar: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("tools.json".to_owned(), tools.to_string()),
        ("p.cedar".to_owned(), cedar.to_owned()),
    ])
}

fn load_errors(tools: &Value, cedar: &str) -> Vec<String> {
    match Bundle::from_sources(sources(tools, cedar)) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_refund_over_100_needs_a_human_and_up_to_100_does_not() {
    let b = billing();
    let d = call(
        b,
        "billing.refund",
        ActionClass::Write,
        &refund(json!(100), "EUR"),
    );
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(d.policies, ["refund-small"]);

    for amount in [json!(100.0001), json!(101), json!(250000)] {
        let d = call(
            b,
            "billing.refund",
            ActionClass::Write,
            &refund(amount, "USD"),
        );
        assert_eq!(d.outcome, Outcome::ApprovalRequired, "{d:?}");
        assert_eq!(d.policies, ["refund-large"]);
    }
    let d = call(
        b,
        "billing.refund",
        ActionClass::Write,
        &refund(json!(75), "GBP"),
    );
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policies, ["refund-no-gbp-over-50"]);
}

#[test]
fn arguments_that_do_not_fit_are_denied_before_policy_naming_the_field() {
    let b = billing();
    let cases = [
        (refund(json!(5), "BTC"), "currency"),
        (refund(json!("5"), "EUR"), "amount"),
        (refund(json!(-1), "EUR"), "amount"),
        (refund(json!(1_000_001), "EUR"), "amount"),
        (refund(json!(1.00001), "EUR"), "amount"),
        (refund(json!(null), "EUR"), "amount"),
        (
            json!({ "invoice_id": "inv_1", "currency": "EUR" }),
            "amount",
        ),
        (
            json!({ "invoice_id": "inv_1", "amount": 5, "currency": "EUR", "to_account": "x" }),
            "to_account",
        ),
        (
            json!({ "invoice_id": "x".repeat(65), "amount": 5, "currency": "EUR" }),
            "invoice_id",
        ),
        (json!([1, 2]), "$"),
        (json!("amount=5"), "$"),
    ];
    for (args, field) in cases {
        let d = call(b, "billing.refund", ActionClass::Write, &args);
        assert_eq!(d.outcome, Outcome::Deny, "{args}: {d:?}");
        assert_eq!(d.policies, [ARGUMENTS_POLICY], "{args}");
        let reason = d.reasons.join(" ");
        assert!(reason.contains(&format!("`{field}`")), "{args}: {reason}");
    }
    // No arguments at all for a tool that requires some: denied, naming the first.
    let tool = ToolName::parse("billing.refund").unwrap();
    let d = b.decide_call(
        &task(),
        &CallRequest {
            action: ActionClass::Write,
            tool: &tool,
            resource: "",
            destination: None,
            data_domain: None,
            sensitivity: Sensitivity::Internal,
            args_digest: "",
            args: None,
            now_secs: 0,
            history: &History::default(),
        },
    );
    assert_eq!(d.policies, [ARGUMENTS_POLICY]);
}

#[test]
fn a_task_is_granted_a_tool_whose_permits_all_read_arguments() {
    let b = billing();
    let scope = RequestedScope {
        tools: vec![
            ToolName::parse("billing.refund").unwrap(),
            ToolName::parse("billing.invoice_get").unwrap(),
        ],
        actions: vec![ActionClass::Read, ActionClass::Write],
        data_domains: vec![mandate_core::DataDomain::parse("finance").unwrap()],
        destinations: Vec::new(),
    };
    let d = b.decide_start(
        &task(),
        &StartRequest {
            scope: &scope,
            ttl_secs: 600,
            environment: "test",
            now_secs: 0,
            sender_constrained: false,
        },
    );
    assert_eq!(d.decision.outcome, Outcome::Allow, "{d:?}");
    let refund = d
        .items
        .iter()
        .find(|i| i.tool.as_str() == "billing.refund" && i.action == ActionClass::Write)
        .unwrap();
    assert_eq!(refund.outcome, Outcome::Allow, "{d:?}");

    // When every such permit asks for a human, the grant says so.
    let tools = json!({ "tools": [{ "name": "pay.send", "arguments": {
        "type": "object", "properties": { "amount": { "type": "integer" } }, "required": ["amount"] } }] });
    let b = Bundle::from_sources(sources(
        &tools,
        r#"
        @id("start") permit(principal, action == Mandate::Action::"start_task", resource);
        @id("pay") @approval_required("payments need a human")
        permit(principal, action == Mandate::Action::"write", resource == Mandate::Tool::"pay.send")
        when { context.args.amount > 0 };
        "#,
    ))
    .unwrap();
    let scope = RequestedScope {
        tools: vec![ToolName::parse("pay.send").unwrap()],
        actions: vec![ActionClass::Write],
        data_domains: Vec::new(),
        destinations: Vec::new(),
    };
    let d = b.decide_start(
        &task(),
        &StartRequest {
            scope: &scope,
            ttl_secs: 600,
            environment: "test",
            now_secs: 0,
            sender_constrained: false,
        },
    );
    assert_eq!(d.items[0].outcome, Outcome::ApprovalRequired, "{d:?}");
}

#[test]
fn a_policy_naming_a_field_its_tool_lacks_is_a_located_error_at_load() {
    let tools = json!({ "tools": [{ "name": "billing.refund", "arguments": {
        "type": "object",
        "properties": { "amount": { "type": "number" }, "note": { "type": "string" } },
        "required": ["amount"] } }] });
    let good = r#"@id("ok") permit(principal, action == Mandate::Action::"write", resource == Mandate::Tool::"billing.refund")
when { context.args.amount.lessThan(decimal("10.0")) && (context.args has note && context.args.note like "*dup*") };"#;
    assert!(
        load_errors(&tools, good).is_empty(),
        "{:?}",
        load_errors(&tools, good)
    );

    // A misspelt field: file:line:column and the field named.
    let errs = load_errors(
        &tools,
        "\n\n@id(\"typo\") forbid(principal, action, resource == Mandate::Tool::\"billing.refund\")\n  when { context.args.amout.greaterThan(decimal(\"5.0\")) };",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("p.cedar:4:"), "{errs:?}");
    assert!(errs[0].contains("args.amout"), "{errs:?}");

    // An optional field read without `has`, a number compared as a Long, a string as a
    // decimal: type errors, each located.
    for cedar in [
        r#"@id("p") permit(principal, action, resource == Mandate::Tool::"billing.refund") when { context.args.note == "x" };"#,
        r#"@id("p") permit(principal, action, resource == Mandate::Tool::"billing.refund") when { context.args.amount > 100 };"#,
        r#"@id("p") permit(principal, action, resource == Mandate::Tool::"billing.refund") when { context.args has note && context.args.note.lessThan(decimal("1.0")) };"#,
    ] {
        let errs = load_errors(&tools, cedar);
        assert!(!errs.is_empty(), "{cedar}");
        assert!(errs.iter().all(|e| e.starts_with("p.cedar:1:")), "{errs:?}");
    }

    // Arguments of one tool are not visible to a policy that may apply to another.
    let errs = load_errors(
        &tools,
        r#"@id("any") forbid(principal, action, resource is Mandate::Tool) when { context.args.amount.greaterThan(decimal("5.0")) };"#,
    );
    assert!(!errs.is_empty());
    assert!(
        errs.iter()
            .all(|e| e.contains("only a policy for one tool")),
        "{errs:?}"
    );

    // A tool without declared arguments has none to read.
    let errs = load_errors(
        &tools,
        r#"@id("other") forbid(principal, action, resource == Mandate::Tool::"crm.get") when { context.args.id == "x" };"#,
    );
    assert!(!errs.is_empty());
}

#[test]
fn a_schema_that_says_more_than_mandate_checks_is_refused_at_load() {
    for (schema, needle) in [
        (
            json!({ "type": "object", "properties": { "a": { "type": "string", "pattern": "^x" } } }),
            "pattern",
        ),
        (json!({ "type": "string" }), "root"),
        (
            json!({ "type": "object", "properties": { "a": { "type": "null" } } }),
            "null",
        ),
        (
            json!({ "type": "object", "properties": { "a": { "type": "string", "format": "uri-template" } } }),
            "uri-template",
        ),
        (
            json!({ "type": "object", "required": ["missing"] }),
            "missing",
        ),
        (
            json!({ "type": "object", "properties": { "a": { "type": "integer", "minimum": 5, "maximum": 1 } } }),
            "minimum",
        ),
    ] {
        let tools = json!({ "tools": [{ "name": "t.x", "arguments": schema }] });
        let errs = load_errors(
            &tools,
            r#"@id("s") permit(principal, action == Mandate::Action::"start_task", resource);"#,
        );
        assert_eq!(errs.len(), 1, "{schema}: {errs:?}");
        assert!(errs[0].starts_with("tools.json"), "{errs:?}");
        assert!(errs[0].contains("t.x"), "{errs:?}");
        assert!(errs[0].contains(needle), "{schema}: {errs:?}");
    }
}

#[test]
fn every_declared_type_reaches_policy_typed() {
    let tools = json!({ "tools": [{ "name": "net.connect", "arguments": {
        "type": "object",
        "properties": {
            "host": { "type": "string", "format": "ipaddr" },
            "port": { "type": "integer", "minimum": 1, "maximum": 65535 },
            "until": { "type": "string", "format": "date-time" },
            "price": { "type": "string", "format": "decimal" },
            "tls": { "type": "boolean" },
            "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 4 },
            "opts": { "type": "object", "properties": { "mode": { "type": "string", "enum": ["ro", "rw"] } }, "required": ["mode"] }
        },
        "required": ["host", "port", "until", "price", "tls", "tags", "opts"] } }] });
    let b = Bundle::from_sources(sources(
        &tools,
        r#"@id("typed") permit(principal, action == Mandate::Action::"execute", resource == Mandate::Tool::"net.connect")
when {
  context.args.host.isInRange(ip("10.0.0.0/8")) &&
  context.args.port == 443 &&
  context.args.until < datetime("2030-01-01") &&
  context.args.price.lessThan(decimal("9.99")) &&
  context.args.tls &&
  context.args.tags.contains("prod") &&
  context.args.opts.mode == "ro"
};"#,
    ))
    .unwrap();
    let good = json!({ "host": "10.1.2.3", "port": 443, "until": "2029-12-31T21:00:00Z",
        "price": "9.98", "tls": true, "tags": ["prod", "eu"], "opts": { "mode": "ro" } });
    let d = call(&b, "net.connect", ActionClass::Execute, &good);
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");

    // Each field changed to a value that fits the schema but not the policy: deny by
    // default, not an error.
    for (field, value) in [
        ("host", json!("192.168.0.1")),
        ("port", json!(80)),
        ("until", json!("2030-01-01T00:00:01Z")),
        ("price", json!("9.99")),
        ("tls", json!(false)),
        ("tags", json!(["dev"])),
        ("opts", json!({ "mode": "rw" })),
    ] {
        let mut args = good.clone();
        args[field] = value;
        let d = call(&b, "net.connect", ActionClass::Execute, &args);
        assert_eq!(d.outcome, Outcome::Deny, "{field}");
        assert_ne!(d.policies, [ARGUMENTS_POLICY], "{field}: {d:?}");
        assert!(d.errors.is_empty(), "{field}: {d:?}");
    }
    // And to values that do not fit the schema: denied before policy, naming the field.
    for (field, value, path) in [
        ("host", json!("10.1.2.3.4"), "host"),
        ("host", json!("::ffff:10.1.2.3"), "host"),
        ("host", json!("0:0:0:0:0:0:0:1"), "host"),
        ("port", json!(0), "port"),
        ("port", json!(443.5), "port"),
        ("until", json!("tomorrow"), "until"),
        ("until", json!("2029-12-31T23:00:00+02:00"), "until"),
        ("until", json!("2029-12-31T21:00:00.0001Z"), "until"),
        ("price", json!("1e3"), "price"),
        ("tls", json!("true"), "tls"),
        ("tags", json!(["a", "b", "c", "d", "e"]), "tags"),
        ("tags", json!(["a", 1]), "tags[1]"),
        ("opts", json!({ "mode": "admin" }), "opts.mode"),
        ("opts", json!({}), "opts.mode"),
    ] {
        let mut args = good.clone();
        args[field] = value;
        let d = call(&b, "net.connect", ActionClass::Execute, &args);
        assert_eq!(d.policies, [ARGUMENTS_POLICY], "{field}: {d:?}");
        assert!(
            d.reasons.join(" ").contains(&format!("`{path}`")),
            "{field}: {d:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The threshold is exact at four decimal places, whatever the amount looks like.
    #[test]
    fn refunds_split_exactly_at_the_threshold(cents in 0i64..100_000_000, scale in 0u32..5) {
        let b = billing();
        let div = 10i64.pow(scale);
        let amount = (cents as f64) / (div as f64);
        let text = if scale == 0 {
            cents.to_string()
        } else {
            format!("{}.{:0width$}", cents / div, cents % div, width = scale as usize)
        };
        let rendered: Value = serde_json::from_str(&text).unwrap();
        let d = call(b, "billing.refund", ActionClass::Write, &refund(rendered.clone(), "EUR"));
        if amount > 1_000_000.0 {
            prop_assert_eq!(d.policies, vec![ARGUMENTS_POLICY.to_owned()]);
        } else if cents <= 100 * div {
            prop_assert_eq!(d.outcome, Outcome::Allow, "{}", rendered);
        } else {
            prop_assert_eq!(d.outcome, Outcome::ApprovalRequired, "{}", rendered);
        }
    }
}

#[test]
fn the_typed_view_shows_approvers_what_policy_saw() {
    let tools = json!({ "tools": [{ "name": "web.fetch", "arguments": { "type": "object",
        "properties": {
            "url": { "type": "string", "format": "url" },
            "max": { "type": "number" },
            "argv": { "type": "array", "format": "command" } },
        "required": ["url"] } }] });
    let b = Bundle::from_sources(sources(
        &tools,
        r#"@id("s") permit(principal, action == Mandate::Action::"start_task", resource);"#,
    ))
    .unwrap();
    let schema = b
        .catalog()
        .arguments(&ToolName::parse("web.fetch").unwrap())
        .unwrap();
    let view = schema
        .typed_view(&json!({ "url": "https://docs.example.com/a?b=1", "max": 2.5, "argv": ["/bin/sh", "-c", "x"] }))
        .unwrap();
    assert_eq!(
        view,
        json!({
            "url": { "scheme": "https", "host": "docs.example.com", "port": 443, "path": "/a", "query": "b=1" },
            "max": "2.5000",
            "argv": { "program": "/bin/sh", "name": "sh", "args": ["-c", "x"], "argc": 2, "shell": true }
        })
    );
    assert_eq!(
        schema.typed_view(&json!({ "url": "HTTPS://x.example/" })),
        None
    );
}

//! The decision path as data: one fixture bundle, one table of calls and expected answers,
//! plus properties over random policy sets (default deny, forbid wins, errors deny, and
//! slicing agrees with bare Cedar on the whole set).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

use std::collections::BTreeMap;

use cedar_policy::{Authorizer, Context, Decision as CedarDecision, Request, RestrictedExpression};
use mandate_core::{ActionClass, DataDomain, Destination, RequestedScope, Sensitivity, ToolName};
use mandate_policy::{
    AgentFacts, Bundle, CallRequest, DEFAULT_DENY_POLICY, History, Outcome, StartRequest,
    TaskEntities, TaskFacts,
};
use proptest::prelude::*;

const FIXTURE: &str = r#"
@id("start") @max_ttl_secs("600")
permit(principal, action == Mandate::Action::"start_task", resource)
when { principal.status == "active" && context.ttl_secs <= 3600 };

@id("read-tickets") @reason("support agents read tickets")
permit(principal, action == Mandate::Action::"read", resource == Mandate::Tool::"tickets.search");

@id("write-tickets") @approval_required("ticket writes need a human")
permit(principal, action == Mandate::Action::"write", resource == Mandate::Tool::"tickets.update");

@id("no-deletes") @reason("nothing is deleted by agents")
forbid(principal, action == Mandate::Action::"delete", resource);

@id("delete-allowed-but-forbidden")
permit(principal, action == Mandate::Action::"delete", resource == Mandate::Tool::"tickets.delete");

@id("no-restricted-for-tier0")
forbid(principal, action, resource is Mandate::Tool)
when { principal.tier == 0 && context.sensitivity == "restricted" };

@id("external-only-example")
forbid(principal, action == Mandate::Action::"read", resource == Mandate::Tool::"tickets.search")
when { context has destination && context.destination == "evil.example" };

@id("erroring")
forbid(principal, action == Mandate::Action::"execute", resource)
when { context has destination && context.destination == "boom" && context.now + 9223372036854775807 > 0 };

@id("exec")
permit(principal, action == Mandate::Action::"execute", resource);
"#;

fn bundle(src: &str) -> Bundle {
    Bundle::from_sources(BTreeMap::from([(
        "fixture.cedar".to_owned(),
        src.to_owned(),
    )]))
    .unwrap()
}

fn agent_facts(tier: u8) -> AgentFacts {
    AgentFacts {
        name: "bot".into(),
        spiffe_id: "spiffe://t/agent/bot".into(),
        owner: "alice".into(),
        tier,
        status: "active".into(),
        trust_domain: "t".into(),
    }
}

fn task_facts() -> TaskFacts {
    TaskFacts {
        id: "tsk_1".into(),
        purpose: "summarise open tickets".into(),
        environment: "test".into(),
        delegation: None,
    }
}

fn task(tier: u8) -> TaskEntities {
    TaskEntities::build(&agent_facts(tier), &task_facts()).unwrap()
}

struct Case {
    name: &'static str,
    tier: u8,
    action: ActionClass,
    tool: &'static str,
    destination: Option<&'static str>,
    sensitivity: Sensitivity,
    want: Outcome,
    policies: &'static [&'static str],
}

#[test]
fn call_table() {
    use ActionClass::*;
    use Outcome::*;
    let b = bundle(FIXTURE);
    let cases = [
        Case {
            name: "read allowed",
            tier: 1,
            action: Read,
            tool: "tickets.search",
            destination: None,
            sensitivity: Sensitivity::Internal,
            want: Allow,
            policies: &["read-tickets"],
        },
        Case {
            name: "write needs approval",
            tier: 1,
            action: Write,
            tool: "tickets.update",
            destination: None,
            sensitivity: Sensitivity::Internal,
            want: ApprovalRequired,
            policies: &["write-tickets"],
        },
        Case {
            name: "forbid beats permit",
            tier: 1,
            action: Delete,
            tool: "tickets.delete",
            destination: None,
            sensitivity: Sensitivity::Internal,
            want: Deny,
            policies: &["no-deletes"],
        },
        Case {
            name: "default deny",
            tier: 1,
            action: Read,
            tool: "crm.export",
            destination: None,
            sensitivity: Sensitivity::Internal,
            want: Deny,
            policies: &[DEFAULT_DENY_POLICY],
        },
        Case {
            name: "tier 0 restricted",
            tier: 0,
            action: Read,
            tool: "tickets.search",
            destination: None,
            sensitivity: Sensitivity::Restricted,
            want: Deny,
            policies: &["no-restricted-for-tier0"],
        },
        Case {
            name: "tier 1 restricted",
            tier: 1,
            action: Read,
            tool: "tickets.search",
            destination: None,
            sensitivity: Sensitivity::Restricted,
            want: Allow,
            policies: &["read-tickets"],
        },
        Case {
            name: "destination forbid",
            tier: 1,
            action: Read,
            tool: "tickets.search",
            destination: Some("evil.example"),
            sensitivity: Sensitivity::Internal,
            want: Deny,
            policies: &["external-only-example"],
        },
        Case {
            name: "error denies",
            tier: 1,
            action: Execute,
            tool: "build.run",
            destination: Some("boom"),
            sensitivity: Sensitivity::Internal,
            want: Deny,
            policies: &["erroring"],
        },
        Case {
            name: "no error, exec allowed",
            tier: 1,
            action: Execute,
            tool: "build.run",
            destination: Some("ok.example"),
            sensitivity: Sensitivity::Internal,
            want: Allow,
            policies: &["exec"],
        },
    ];
    for c in cases {
        let t = task(c.tier);
        let tool = ToolName::parse(c.tool).unwrap();
        let dest = c.destination.map(|d| Destination::parse(d).unwrap());
        let d = b.decide_call(
            &t,
            &CallRequest {
                action: c.action,
                tool: &tool,
                resource: "ticket/42",
                destination: dest.as_ref(),
                data_domain: None,
                sensitivity: c.sensitivity,
                args_digest: "00",
                args: None,
                now_secs: 1_000,
                history: &History::default(),
            },
        );
        assert_eq!(d.outcome, c.want, "{}: {d:?}", c.name);
        assert_eq!(d.policies, c.policies, "{}: {d:?}", c.name);
        assert_eq!(d.bundle_version, b.version(), "{}", c.name);
        assert!(!d.reasons.is_empty(), "{}", c.name);
    }
}

#[test]
fn start_grants_a_subset_and_caps_ttl() {
    let b = bundle(FIXTURE);
    let scope = RequestedScope {
        tools: ["tickets.search", "tickets.update", "tickets.delete"]
            .map(|t| ToolName::parse(t).unwrap())
            .to_vec(),
        actions: vec![ActionClass::Read, ActionClass::Write, ActionClass::Delete],
        data_domains: vec![DataDomain::parse("support").unwrap()],
        destinations: vec![],
    };
    let s = b.decide_start(
        &task(1),
        &StartRequest {
            scope: &scope,
            ttl_secs: 900,
            environment: "test",
            now_secs: 0,
            sender_constrained: false,
        },
    );
    assert_eq!(s.decision.outcome, Outcome::Allow);
    assert_eq!(s.ttl_cap_secs, Some(600));
    let granted: Vec<String> = s
        .grant
        .tools
        .iter()
        .flat_map(|(t, a)| a.iter().map(move |a| format!("{t}:{a}")))
        .collect();
    assert_eq!(granted, ["tickets.search:read", "tickets.update:write"]);
    assert_eq!(s.items.len(), 9);
    let delete = s
        .items
        .iter()
        .find(|i| i.tool.as_str() == "tickets.delete" && i.action == ActionClass::Delete)
        .unwrap();
    assert_eq!(delete.policies, ["no-deletes"]);

    let too_long = b.decide_start(
        &task(1),
        &StartRequest {
            scope: &scope,
            ttl_secs: 7200,
            environment: "test",
            now_secs: 0,
            sender_constrained: false,
        },
    );
    assert_eq!(too_long.decision.outcome, Outcome::Deny);
    assert!(too_long.grant.is_empty());
}

#[test]
fn empty_bundle_denies_everything() {
    let b = bundle("");
    let tool = ToolName::parse("anything").unwrap();
    for action in ActionClass::ALL {
        let d = b.decide_call(
            &task(3),
            &CallRequest {
                action,
                tool: &tool,
                resource: "",
                destination: None,
                data_domain: None,
                sensitivity: Sensitivity::Public,
                args_digest: "",
                args: None,
                now_secs: 0,
                history: &History::default(),
            },
        );
        assert_eq!(d.outcome, Outcome::Deny);
        assert_eq!(d.policies, [DEFAULT_DENY_POLICY]);
    }
}

// ---- properties ----

#[derive(Debug, Clone)]
struct Rule {
    permit: bool,
    action: Option<usize>,
    tool: Option<usize>,
    /// 0: no condition, 1: true-ish condition on tier, 2: erroring condition.
    cond: u8,
}

const TOOLS: [&str; 3] = ["a", "b", "c"];

fn render(rules: &[Rule]) -> String {
    let mut out = String::new();
    for r in rules {
        let effect = if r.permit { "permit" } else { "forbid" };
        let action = match r.action {
            Some(i) => format!(
                "action == Mandate::Action::\"{}\"",
                ActionClass::ALL[i].as_str()
            ),
            None => "action".into(),
        };
        let resource = match r.tool {
            Some(i) => format!("resource == Mandate::Tool::\"{}\"", TOOLS[i]),
            None => "resource is Mandate::Tool".into(),
        };
        let cond = match r.cond {
            0 => "",
            1 => " when { principal.tier >= 1 }",
            // Overflows (an evaluation error) exactly when tier >= 1; true when tier is 0.
            _ => " when { principal.tier + 9223372036854775807 > 0 }",
        };
        out.push_str(&format!(
            "{effect}(principal, {action}, {resource}){cond};\n"
        ));
    }
    out
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        any::<bool>(),
        proptest::option::of(0..4usize),
        proptest::option::of(0..3usize),
        0..3u8,
    )
        .prop_map(|(permit, action, tool, cond)| Rule {
            permit,
            action,
            tool,
            cond,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn combination_properties(rules in proptest::collection::vec(rule(), 0..12), action in 0..4usize, tool in 0..3usize, tier in 0..4u8) {
        let b = bundle(&render(&rules));
        let t = task(tier);
        let tool_name = ToolName::parse(TOOLS[tool]).unwrap();
        let action = ActionClass::ALL[action];
        let d = b.decide_call(&t, &CallRequest { action, tool: &tool_name, resource: "", destination: None, data_domain: None, sensitivity: Sensitivity::Internal, args_digest: "", args: None, now_secs: 0, history: &History::default() });

        let applies = |r: &Rule| r.action.is_none_or(|a| ActionClass::ALL[a] == action) && r.tool.is_none_or(|i| i == tool);
        let holds = |r: &Rule| match r.cond { 0 => true, 1 => tier >= 1, _ => tier == 0 };
        let any_error = tier >= 1 && rules.iter().any(|r| applies(r) && r.cond == 2);
        let any_forbid = rules.iter().any(|r| applies(r) && !r.permit && holds(r));
        let any_permit = rules.iter().any(|r| applies(r) && r.permit && holds(r));

        // Errors deny; forbid beats permit; no permit denies.
        if any_error || any_forbid || !any_permit {
            prop_assert_eq!(d.outcome, Outcome::Deny);
        } else {
            prop_assert_eq!(d.outcome, Outcome::Allow);
        }
        if rules.is_empty() {
            prop_assert_eq!(d.policies.clone(), vec![DEFAULT_DENY_POLICY.to_owned()]);
        }

        // Slicing agrees with bare Cedar over the whole set (where Cedar's own answer
        // is not overridden by Mandate's errors-deny rule).
        let context = Context::from_pairs([
            ("phase".to_owned(), RestrictedExpression::new_string("call".into())),
            ("task".to_owned(), RestrictedExpression::new_entity_uid(r#"Mandate::Task::"tsk_1""#.parse().unwrap())),
            ("resource".to_owned(), RestrictedExpression::new_string(String::new())),
            ("sensitivity".to_owned(), RestrictedExpression::new_string("internal".into())),
            ("args_digest".to_owned(), RestrictedExpression::new_string(String::new())),
            ("args".to_owned(), RestrictedExpression::new_record([]).unwrap()),
            ("now".to_owned(), RestrictedExpression::new_long(0)),
            ("history".to_owned(), mandate_policy::history_record(&History::default(), TOOLS[tool])),
            ("delegation".to_owned(), mandate_policy::delegation_record(&agent_facts(tier), &task_facts())),
        ]).unwrap();
        let request = Request::new(
            r#"Mandate::Agent::"bot""#.parse().unwrap(),
            format!("Mandate::Action::\"{}\"", action.as_str()).parse().unwrap(),
            format!("Mandate::Tool::\"{}\"", TOOLS[tool]).parse().unwrap(),
            context,
            Some(b.schema()),
        ).unwrap();
        let bare = Authorizer::new().is_authorized(&request, b.policy_set(), t.entities());
        if !any_error {
            let bare_allow = bare.decision() == CedarDecision::Allow;
            prop_assert_eq!(bare_allow, d.outcome == Outcome::Allow);
        }
    }
}

const SEQUENCE: &str = r#"
@id("crm-read") @obligation_redact("ssn,email") @obligation_max_rate("60/min")
permit(principal, action == Mandate::Action::"read", resource == Mandate::Tool::"crm.get");

@id("write-clean") permit(principal, action == Mandate::Action::"write", resource == Mandate::Tool::"crm.update")
when { context.history.sensitive_reads == 0 };

@id("write-after-sensitive-read") @approval_required("a write after a sensitive read needs a human")
permit(principal, action == Mandate::Action::"write", resource == Mandate::Tool::"crm.update")
when { context.history.sensitive_reads > 0 };

@id("egress-cap") forbid(principal, action == Mandate::Action::"read", resource is Mandate::Tool)
when { context.history.bytes_returned > 1000000 };

@id("no-domain-crossing") forbid(principal, action, resource is Mandate::Tool)
when { context has data_domain && context.history.data_domains.contains("finance") && context.data_domain != "finance" };

@id("rate") forbid(principal, action == Mandate::Action::"read", resource == Mandate::Tool::"crm.get")
when { context.history.tool_calls >= 3 };
"#;

#[test]
fn history_drives_policy_and_obligations_are_returned() {
    let b = bundle(SEQUENCE);
    let t = task(1);
    let crm_get = ToolName::parse("crm.get").unwrap();
    let crm_update = ToolName::parse("crm.update").unwrap();
    let finance = DataDomain::parse("finance").unwrap();
    let support = DataDomain::parse("support").unwrap();
    let decide =
        |h: &History, tool: &ToolName, action: ActionClass, domain: Option<&DataDomain>| {
            b.decide_call(
                &t,
                &CallRequest {
                    action,
                    tool,
                    resource: "",
                    destination: None,
                    data_domain: domain,
                    sensitivity: Sensitivity::Internal,
                    args_digest: "",
                    args: None,
                    now_secs: 0,
                    history: h,
                },
            )
        };
    let mut h = History::default();

    let d = decide(&h, &crm_get, ActionClass::Read, None);
    assert_eq!(d.outcome, Outcome::Allow);
    let obligations: Vec<(&str, &str)> = d
        .obligations
        .iter()
        .map(|o| (o.name.as_str(), o.value.as_str()))
        .collect();
    assert_eq!(
        obligations,
        [("max_rate", "60/min"), ("redact", "ssn,email")]
    );

    assert_eq!(
        decide(&h, &crm_update, ActionClass::Write, None).outcome,
        Outcome::Allow
    );
    h.record(
        "crm.get",
        ActionClass::Read,
        Some("finance"),
        Sensitivity::Confidential,
    );
    let d = decide(&h, &crm_update, ActionClass::Write, None);
    assert_eq!(
        (d.outcome, d.policies.as_slice()),
        (
            Outcome::ApprovalRequired,
            ["write-after-sensitive-read".to_owned()].as_slice()
        )
    );

    assert_eq!(
        decide(&h, &crm_get, ActionClass::Read, Some(&finance)).outcome,
        Outcome::Allow
    );
    let d = decide(&h, &crm_get, ActionClass::Read, Some(&support));
    assert_eq!(d.policies, ["no-domain-crossing"]);

    h.record(
        "crm.get",
        ActionClass::Read,
        Some("finance"),
        Sensitivity::Internal,
    );
    h.record(
        "crm.get",
        ActionClass::Read,
        Some("finance"),
        Sensitivity::Internal,
    );
    assert_eq!(
        decide(&h, &crm_get, ActionClass::Read, None).policies,
        ["rate"]
    );

    let mut big = History::default();
    big.record_result(2_000_000, false);
    assert_eq!(
        decide(&big, &crm_get, ActionClass::Read, None).policies,
        ["egress-cap"]
    );
}

#[test]
fn explain_names_every_policy_part() {
    use mandate_policy::Trace;
    let b = bundle(FIXTURE);
    let tool = ToolName::parse("tickets.delete").unwrap();
    let ex = b.explain_call(
        &task(1),
        &CallRequest {
            action: ActionClass::Delete,
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
    let trace = |id: &str| ex.policies.iter().find(|p| p.id == id).unwrap().trace;
    assert_eq!(ex.decision.policies, ["no-deletes"]);
    assert_eq!(trace("no-deletes"), Trace::Determining);
    assert_eq!(trace("delete-allowed-but-forbidden"), Trace::Matched);
    assert_eq!(trace("no-restricted-for-tier0"), Trace::NotMatched);
    assert_eq!(trace("read-tickets"), Trace::Skipped);
    assert_eq!(trace("start"), Trace::Skipped);
    assert_eq!(ex.policies.len(), b.len());
}

#[test]
fn the_catalog_describes_tools_and_owns_their_data_domain() {
    let b = Bundle::from_sources(BTreeMap::from([
        ("p.cedar".to_owned(), r#"
            @id("low-risk") permit(principal, action == Mandate::Action::"read", resource is Mandate::Tool) when { resource.cataloged && resource.risk == "low" };
            @id("no-destructive") forbid(principal, action, resource is Mandate::Tool) when { resource.destructive };
        "#.to_owned()),
        ("tools.json".to_owned(), r#"{"tools": [
            {"name": "a", "risk": "low", "data_domain": "support"},
            {"name": "b", "risk": "low", "destructive": true},
            {"name": "c", "risk": "high"}]}"#.to_owned()),
    ]))
    .unwrap();
    assert_eq!(b.catalog().len(), 3);
    let agent = AgentFacts {
        name: "bot".into(),
        spiffe_id: "spiffe://t/agent/bot".into(),
        owner: "o".into(),
        tier: 1,
        status: "active".into(),
        trust_domain: "t".into(),
    };
    let facts = TaskFacts {
        id: "t1".into(),
        purpose: "p".into(),
        environment: "e".into(),
        delegation: None,
    };
    let tools: Vec<ToolName> = ["a", "b", "c", "d"]
        .iter()
        .map(|t| ToolName::parse(t).unwrap())
        .collect();
    let t = b.task_entities(&agent, &facts, &tools).unwrap();
    let finance = DataDomain::parse("finance").unwrap();
    let h = History::default();
    let call = |tool: &ToolName, domain: Option<&DataDomain>| {
        b.decide_call(
            &t,
            &CallRequest {
                action: ActionClass::Read,
                tool,
                resource: "",
                destination: None,
                data_domain: domain,
                sensitivity: Sensitivity::Internal,
                args_digest: "",
                args: None,
                now_secs: 0,
                history: &h,
            },
        )
    };
    assert_eq!(call(&tools[0], None).policies, ["low-risk"]);
    assert_eq!(
        call(&tools[0], Some(&finance)).policies,
        ["mandate:catalog"]
    );
    assert_eq!(call(&tools[1], None).policies, ["no-destructive"]);
    assert_eq!(
        call(&tools[2], None).policies,
        ["mandate:default-deny"],
        "high risk"
    );
    assert_eq!(
        call(&tools[3], None).policies,
        ["mandate:default-deny"],
        "uncataloged"
    );
    // A broken catalog rejects the bundle.
    let bad = Bundle::from_sources(BTreeMap::from([(
        "tools.json".to_owned(),
        r#"{"tools": [{"name": "a"}, {"name": "a"}]}"#.to_owned(),
    )]));
    assert_eq!(bad.unwrap_err().diagnostics[0].file, "tools.json");
}

/// Regression: the history record is skipped for slices that never read it; a policy
/// that names it through a string escape must still get it.
#[test]
fn escaped_history_reads_still_see_history() {
    let b = bundle(
        r#"
        @id("r") permit(principal, action == Mandate::Action::"read", resource);
        @id("cap") forbid(principal, action == Mandate::Action::"read", resource)
          when { context["\u{68}istory"].calls > 5 };
    "#,
    );
    let tool = ToolName::parse("x").unwrap();
    let mut h = History::default();
    for _ in 0..6 {
        h.record("x", ActionClass::Read, None, Sensitivity::Internal);
    }
    let d = b.decide_call(
        &task(1),
        &CallRequest {
            action: ActionClass::Read,
            tool: &tool,
            resource: "",
            destination: None,
            data_domain: None,
            sensitivity: Sensitivity::Internal,
            args_digest: "",
            args: None,
            now_secs: 0,
            history: &h,
        },
    );
    assert_eq!(d.policies, ["cap"], "{d:?}");
}

#[test]
fn approval_terms_come_from_the_approval_policies() {
    let src = r#"
@id("two-from-finance")
@approval_required("payments need two people")
@approvals("2")
@approver_group("finance")
permit(principal, action == Mandate::Action::"write", resource == Mandate::Tool::"payments.send");

@id("owner-may")
@approval_required("owners may confirm their own agent's writes")
@owner_may_approve
@approver_group("finance")
permit(principal, action == Mandate::Action::"write", resource);
"#;
    let b = bundle(src);
    let decide = |tool: &str| {
        let tool = ToolName::parse(tool).unwrap();
        b.decide_call(
            &task(1),
            &CallRequest {
                action: ActionClass::Write,
                tool: &tool,
                resource: "",
                destination: None,
                data_domain: None,
                sensitivity: Sensitivity::Internal,
                args_digest: "00",
                args: None,
                now_secs: 1_000,
                history: &History::default(),
            },
        )
    };
    let d = decide("payments.send");
    assert_eq!(d.outcome, Outcome::ApprovalRequired);
    let terms = d.approval.unwrap();
    assert_eq!(terms.approvals, 2, "the strictest policy's count");
    assert!(
        !terms.owner_may_approve,
        "waived only when every approval policy waives it"
    );
    assert_eq!(terms.group, "finance");
    let d = decide("notes.write");
    let terms = d.approval.unwrap();
    assert_eq!(
        (
            terms.approvals,
            terms.owner_may_approve,
            terms.group.as_str()
        ),
        (1, true, "finance")
    );

    // Two approval policies naming different groups: fail closed.
    let conflict = bundle(&format!(
        "{src}\n@id(\"security-too\") @approval_required(\"and security\") @approver_group(\"security\")\npermit(principal, action == Mandate::Action::\"write\", resource == Mandate::Tool::\"payments.send\");"
    ));
    let tool = ToolName::parse("payments.send").unwrap();
    let d = conflict.decide_call(
        &task(1),
        &CallRequest {
            action: ActionClass::Write,
            tool: &tool,
            resource: "",
            destination: None,
            data_domain: None,
            sensitivity: Sensitivity::Internal,
            args_digest: "00",
            args: None,
            now_secs: 1_000,
            history: &History::default(),
        },
    );
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert_eq!(d.policies[0], "mandate:approver-group-conflict");

    for bad in [
        "@approval_required(\"x\") @approvals(\"0\") permit(principal, action, resource);",
        "@approval_required(\"x\") @approvals(\"6\") permit(principal, action, resource);",
        "@approval_required(\"x\") @approvals(\"two\") permit(principal, action, resource);",
        "@approvals(\"2\") permit(principal, action, resource);",
        "@approval_required(\"x\") @owner_may_approve(\"yes\") permit(principal, action, resource);",
        "@approval_required(\"x\") @approver_group(\"Fin Ops\") permit(principal, action, resource);",
    ] {
        assert!(
            Bundle::from_sources(BTreeMap::from([("b.cedar".to_owned(), bad.to_owned())])).is_err(),
            "{bad}"
        );
    }
}

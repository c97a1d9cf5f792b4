//! One example body of every kind, with fixed values: what the golden files in
//! `tests/golden/` pin, what the documentation shows, and what tests use when they need
//! an event of a given kind.

use std::collections::{BTreeMap, BTreeSet};

use mandate_core::{
    ActionClass, AgentName, AgentStatus, ApprovalKind, ApprovalState, ApproverRole,
    AttestationRule, DataDomain, Decision, Delegation, DelegationLink, Destination, Grant, HumanId,
    ItemOutcome, Obligation, Outcome, RequestedScope, RiskTier, Sensitivity, SpanRecord, TaskState,
    ToolName,
};

use crate::EventKind;
use crate::body::*;

/// Every kind, in declaration order.
pub const ALL_KINDS: [EventKind; 48] = [
    EventKind::AgentRegistered,
    EventKind::AgentStatusChanged,
    EventKind::JoinTokenIssued,
    EventKind::AgentAttested,
    EventKind::IdentityRenewed,
    EventKind::AttestationRefused,
    EventKind::TaskStarted,
    EventKind::TaskRefused,
    EventKind::TaskCompleted,
    EventKind::TaskRevoked,
    EventKind::TaskGrantReduced,
    EventKind::TaskExpired,
    EventKind::Decision,
    EventKind::CallRefused,
    EventKind::PolicyLoaded,
    EventKind::PolicyRejected,
    EventKind::ShadowDisagreement,
    EventKind::KeysRotated,
    EventKind::ServerStarted,
    EventKind::TaskActivated,
    EventKind::ApprovalRequested,
    EventKind::ApprovalVote,
    EventKind::ApprovalApproved,
    EventKind::ApprovalDenied,
    EventKind::ApprovalExpired,
    EventKind::ApprovalInvalidated,
    EventKind::ApprovalConsumed,
    EventKind::ApproverAdded,
    EventKind::ApproverRemoved,
    EventKind::ApproverGroupUpdated,
    EventKind::BreakGlassDeclared,
    EventKind::BreakGlassReviewed,
    EventKind::HumanRefused,
    EventKind::SecretPut,
    EventKind::SecretDeleted,
    EventKind::SecretsResealed,
    EventKind::GatewayResult,
    EventKind::ToolPinned,
    EventKind::ToolChanged,
    EventKind::ToolApproved,
    EventKind::McpRequest,
    EventKind::McpServerStarted,
    EventKind::TaskTainted,
    EventKind::StoreRecovered,
    EventKind::TaskDelegated,
    EventKind::DelegationRefused,
    EventKind::ContainmentFired,
    EventKind::TaskRedeclared,
];

fn s(v: &str) -> String {
    v.to_owned()
}

fn tool() -> ToolName {
    ToolName::parse("billing.refund").unwrap_or_else(|_| unreachable!("a valid tool name"))
}

fn human() -> HumanId {
    HumanId::parse("alice@example.com").unwrap_or_else(|_| unreachable!("a valid human id"))
}

fn domain() -> DataDomain {
    DataDomain::parse("payments").unwrap_or_else(|_| unreachable!("a valid data domain"))
}

fn destination() -> Destination {
    Destination::parse("api.example.com:443")
        .unwrap_or_else(|_| unreachable!("a valid destination"))
}

fn scope() -> RequestedScope {
    RequestedScope {
        tools: vec![tool()],
        actions: vec![ActionClass::Write],
        data_domains: vec![domain()],
        destinations: vec![destination()],
    }
}

fn grant() -> Grant {
    Grant {
        tools: BTreeMap::from([(tool(), BTreeSet::from([ActionClass::Write]))]),
        data_domains: BTreeSet::from([domain()]),
        destinations: BTreeSet::from([destination()]),
    }
}

fn delegation() -> Delegation {
    let link = |task: &str, agent: &str| DelegationLink {
        task_id: s(task),
        agent: AgentName::parse(agent).unwrap_or_else(|_| unreachable!("a valid agent name")),
    };
    Delegation {
        depth: 1,
        parent_task: s("tsk_1"),
        root_task: s("tsk_1"),
        root_owner: s("alice@example.com"),
        chain: vec![link("tsk_1", "billing-bot"), link("tsk_2", "ledger-bot")],
    }
}

fn decision(outcome: Outcome) -> Decision {
    Decision {
        outcome,
        policies: vec![s("refunds-up-to-100")],
        reasons: vec![s("refunds up to 100 need no human")],
        errors: Vec::new(),
        obligations: Vec::new(),
        approval: None,
        bundle_version: s("b1"),
    }
}

fn items() -> Vec<ItemOutcome> {
    vec![ItemOutcome {
        tool: tool(),
        action: ActionClass::Write,
        outcome: Outcome::Allow,
        policies: vec![s("refunds-up-to-100")],
        reasons: Vec::new(),
    }]
}

fn ended(reason: &str, by: &str) -> TaskEnded {
    TaskEnded {
        reason: s(reason),
        by: s(by),
        ..TaskEnded::default()
    }
}

fn moved(by: &str, reason: &str) -> ApprovalMoved {
    ApprovalMoved {
        approval_id: s("apr_1"),
        by: s(by),
        reason: s(reason),
        digest: s("d1"),
    }
}

fn voted(state: ApprovalState, approvals: usize) -> ApprovalVoted {
    ApprovalVoted {
        approval_id: s("apr_1"),
        by: human(),
        digest: s("d1"),
        approvals: Some(approvals),
        required: Some(2),
        state: Some(state),
    }
}

fn identity(method: &str) -> IdentityIssued {
    IdentityIssued {
        method: s(method),
        spiffe_id: s("spiffe://mandate.local/agent/billing-bot"),
        jti: s("jti_1"),
        exp: 1_700_000_900,
        auth_time: 1_700_000_000,
        external: None,
    }
}

fn seen(held: bool) -> ToolsSeen {
    ToolsSeen {
        server: s("docs"),
        pinned: if held { Vec::new() } else { vec![s("search")] },
        held: if held {
            vec![HeldTool {
                tool: s("search"),
                reason: s("its definition changed"),
                digest: s("d2"),
            }]
        } else {
            Vec::new()
        },
    }
}

/// An example body of `kind`, with fixed values.
pub fn example(kind: EventKind) -> Body {
    match kind {
        EventKind::AgentRegistered => Body::AgentRegistered(AgentRegistered {
            owner: human(),
            tier: RiskTier::try_from(2).unwrap_or_else(|_| unreachable!("a valid tier")),
            attestation: AttestationRule::JoinToken,
            spiffe_id: s("spiffe://mandate.local/agent/billing-bot"),
        }),
        EventKind::AgentStatusChanged => Body::AgentStatusChanged(AgentStatusChanged {
            from: AgentStatus::Active,
            to: AgentStatus::Quarantined,
            reason: s("anomalous calls"),
        }),
        EventKind::JoinTokenIssued => Body::JoinTokenIssued(JoinTokenIssued {
            expires_at_ms: 1_700_000_600_000,
        }),
        EventKind::AgentAttested => Body::AgentAttested(identity("join_token")),
        EventKind::IdentityRenewed => Body::IdentityRenewed(identity("renewal")),
        EventKind::AttestationRefused => Body::AttestationRefused(Refused {
            code: s("join_token_used"),
        }),
        EventKind::TaskStarted => Body::TaskStarted(TaskStarted {
            purpose: s("refund order 42"),
            state: TaskState::Active,
            requested: scope(),
            grant: grant(),
            items: items(),
            decision: decision(Outcome::Allow),
            ttl_secs: 900,
            expires_at_ms: 1_700_000_900_000,
        }),
        EventKind::TaskRefused => Body::TaskRefused(TaskRefused {
            code: None,
            message: None,
            purpose: Some(s("refund order 42")),
            requested: Some(scope()),
            decision: Some(decision(Outcome::Deny)),
            items: Some(items()),
        }),
        EventKind::TaskCompleted => Body::TaskCompleted(ended("completed by agent", "billing-bot")),
        EventKind::TaskRevoked => Body::TaskRevoked(TaskEnded {
            previous_version: Some(s("b1")),
            bundle_version: Some(s("b2")),
            policies: Some(vec![s("mandate:default-deny")]),
            reasons: Some(Vec::new()),
            ..ended("policy change: the task is no longer permitted", "mandate")
        }),
        EventKind::TaskGrantReduced => Body::TaskGrantReduced(GrantReduced {
            previous_version: s("b1"),
            bundle_version: s("b2"),
            policies: vec![s("refunds-up-to-100")],
            reasons: Vec::new(),
            previous_grant: grant(),
            grant: Grant::default(),
        }),
        EventKind::TaskExpired => Body::TaskExpired(ended("expired", "mandate")),
        EventKind::Decision => Body::Decision(CallDecided {
            decision_id: s("dec_1"),
            intent: s("refund order 42"),
            tool: tool(),
            action: ActionClass::Write,
            resource: s("order/42"),
            destination: Some(destination()),
            data_domain: Some(domain()),
            declared_data_domain: None,
            sensitivity: Sensitivity::default(),
            args_digest: s("a1"),
            outcome: Outcome::Allow,
            policies: vec![s("refunds-up-to-100")],
            reasons: vec![s("refunds up to 100 need no human")],
            errors: Vec::new(),
            obligations: vec![Obligation {
                name: s("redact"),
                value: s("card_number"),
                policy: s("refunds-up-to-100"),
            }],
            bundle_version: s("b1"),
            latency_us: 41,
            approval_id: None,
            approved_by: None,
            break_glass: false,
            trace: Some(SpanRecord {
                trace_id: s("4bf92f3577b34da6a3ce929d0e0e4736"),
                span_id: s("53995c3f42cd8ad8"),
                parent_span_id: Some(s("00f067aa0ba902b7")),
                start_us: 1_767_000_000_000_000,
                end_us: 1_767_000_000_000_041,
            }),
            delegation: Some(ChainRef::from(&delegation())),
            point: None,
        }),
        EventKind::CallRefused => Body::CallRefused(CallRefused {
            code: s("task_not_active"),
            tool: Some(s("billing.refund")),
            action: Some(ActionClass::Write),
            args_digest: Some(s("a1")),
            ..CallRefused::default()
        }),
        EventKind::PolicyLoaded => Body::PolicyLoaded(PolicyLoaded {
            bundle_version: s("b2"),
            previous_version: Some(s("b1")),
            policies: 12,
            source: None,
            trigger: Some(s("api")),
        }),
        EventKind::PolicyRejected => Body::PolicyRejected(PolicyRejected {
            enforcing_version: s("b1"),
            trigger: s("watch"),
            diagnostics: serde_json::json!([{ "file": "refunds.cedar", "line": 3, "column": 7, "message": "unknown field" }]),
        }),
        EventKind::ShadowDisagreement => Body::ShadowDisagreement(ShadowDisagreement {
            decision_id: s("dec_1"),
            tool: tool(),
            action: ActionClass::Write,
            enforced: Verdict {
                outcome: Outcome::Allow,
                policies: vec![s("refunds-up-to-100")],
                bundle_version: s("b1"),
            },
            shadow: Verdict {
                outcome: Outcome::Deny,
                policies: vec![s("mandate:default-deny")],
                bundle_version: s("s1"),
            },
        }),
        EventKind::KeysRotated => Body::KeysRotated(KeysRotated {
            kid: s("k2"),
            reason: s("scheduled rotation"),
        }),
        EventKind::ServerStarted => Body::ServerStarted(ServerStarted {
            version: s("0.1.0"),
        }),
        EventKind::TaskActivated => Body::TaskActivated(TaskActivated {
            approval_id: s("apr_1"),
            approved_by: vec![s("alice@example.com")],
        }),
        EventKind::ApprovalRequested => Body::ApprovalRequested(ApprovalRequested {
            approval_id: s("apr_1"),
            kind: ApprovalKind::Call,
            digest: s("d1"),
            group: s("default"),
            required: 1,
            owner_may_approve: false,
            expires_at_ms: 1_700_000_300_000,
            bundle_version: s("b1"),
            policies: vec![s("refunds-over-100")],
            reasons: vec![s("refunds over 100 need a human")],
            action: ApprovalAction {
                tool: Some(serde_json::json!("billing.refund")),
                action: Some(serde_json::json!("write")),
                resource: Some(serde_json::json!("order/42")),
                args_digest: Some(serde_json::json!("a1")),
                destination: None,
                data_domain: Some(serde_json::json!("payments")),
            },
        }),
        EventKind::ApprovalVote => Body::ApprovalVote(voted(ApprovalState::Pending, 1)),
        EventKind::ApprovalApproved => Body::ApprovalApproved(voted(ApprovalState::Approved, 2)),
        EventKind::ApprovalDenied => {
            Body::ApprovalDenied(moved("alice@example.com", "not this customer"))
        }
        EventKind::ApprovalExpired => Body::ApprovalExpired(moved("mandate", "no answer in time")),
        EventKind::ApprovalInvalidated => {
            Body::ApprovalInvalidated(moved("mandate", "the task ended"))
        }
        EventKind::ApprovalConsumed => {
            Body::ApprovalConsumed(moved("billing-bot", "used for the approved action"))
        }
        EventKind::ApproverAdded => Body::ApproverAdded(ApproverAdded {
            name: human(),
            roles: vec![ApproverRole::Approver],
            groups: vec![s("default")],
            by: s("admin"),
        }),
        EventKind::ApproverRemoved => Body::ApproverRemoved(ApproverRemoved {
            name: s("alice@example.com"),
            by: s("admin"),
        }),
        EventKind::ApproverGroupUpdated => Body::ApproverGroupUpdated(ApproverGroupUpdated {
            group: s("default"),
            webhook_url: Some(s("https://hooks.example.com/mandate")),
            by: s("admin"),
        }),
        EventKind::BreakGlassDeclared => Body::BreakGlassDeclared(BreakGlassDeclared {
            break_glass_id: s("bg_1"),
            declared_by: human(),
            justification: s("payments are down and refunds cannot wait for review"),
            grant: grant(),
            ttl_secs: 600,
            expires_at_ms: 1_700_000_600_000,
            purpose: s("BREAK-GLASS by alice@example.com: payments are down"),
            alert_group: s("default"),
            alert_webhook: true,
        }),
        EventKind::BreakGlassReviewed => Body::BreakGlassReviewed(BreakGlassReviewed {
            break_glass_id: s("bg_1"),
            by: HumanId::parse("bob@example.com").unwrap_or_else(|_| unreachable!("valid")),
            notes: s("justified; refunds reconciled"),
        }),
        EventKind::HumanRefused => Body::HumanRefused(HumanRefused {
            action: s("approve"),
            target: s("apr_1"),
            by: Some(s("alice@example.com")),
            code: s("owner_may_not_approve"),
            message: s("the agent's owner may not approve its actions"),
        }),
        EventKind::SecretPut => Body::SecretPut(SecretPut {
            name: s("billing-api"),
            key_id: s("mk1"),
            by: s("admin"),
            replaced: false,
        }),
        EventKind::SecretDeleted => Body::SecretDeleted(SecretDeleted {
            name: s("billing-api"),
            by: s("admin"),
        }),
        EventKind::SecretsResealed => Body::SecretsResealed(SecretsResealed {
            key_id: s("mk2"),
            resealed: 3,
            by: s("admin"),
        }),
        EventKind::GatewayResult => Body::GatewayResult(GatewayResult {
            protocol: None,
            decision_id: s("dec_1"),
            upstream: s("billing"),
            tool: Some(s("billing.refund")),
            request: None,
            upstream_status: Some(201),
            method: Some(s("POST")),
            target: Some(s("/v1/refunds?customer=c_42")),
            request_digest: Some(s(
                "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
            )),
            location: Some(s("/v1/refunds/rf_981")),
            etag: Some(s("\"v1\"")),
            bytes_returned: 512,
            secret_redacted: Some(false),
            untrusted_content: false,
            error: None,
            duration_us: 1800,
            trace: Some(SpanRecord {
                trace_id: s("4bf92f3577b34da6a3ce929d0e0e4736"),
                span_id: s("00f067aa0ba902b7"),
                parent_span_id: Some(s("a3ce929d0e0e4736")),
                start_us: 1_766_999_999_999_900,
                end_us: 1_767_000_000_001_800,
            }),
        }),
        EventKind::ToolPinned => Body::ToolPinned(seen(false)),
        EventKind::ToolChanged => Body::ToolChanged(seen(true)),
        EventKind::ToolApproved => Body::ToolApproved(ToolApproved {
            server: s("docs"),
            tool: s("search"),
            digest: s("d2"),
            previous_digest: Some(s("d1")),
            was: s("its definition changed"),
            by: s("admin"),
            definition: s("{\"name\":\"search\"}"),
        }),
        EventKind::McpRequest => Body::McpRequest(McpRequest {
            server: s("docs"),
            method: s("tools/list"),
            shown: Some(vec![s("search")]),
            held: Some(vec![HiddenTool {
                tool: s("delete"),
                why: s("new tool on a known server"),
            }]),
        }),
        EventKind::McpServerStarted => Body::McpServerStarted(McpServerStarted {
            server: s("files"),
            transport: s("stdio"),
            restart: true,
            failures_in_row: 0,
            error: None,
        }),
        EventKind::TaskTainted => Body::TaskTainted(TaskTainted { source: s("docs") }),
        EventKind::StoreRecovered => Body::StoreRecovered(StoreRecovered {
            failure: s("database or disk is full"),
        }),
        EventKind::TaskDelegated => Body::TaskDelegated(TaskDelegated {
            purpose: s("look up order 42's refund history"),
            delegation: delegation(),
            requested: scope(),
            parent_grant: grant(),
            grant: grant(),
            items: items(),
            decision: decision(Outcome::Allow),
            ttl_secs: 300,
            expires_at_ms: 1_700_000_300_000,
            inherited: Inherited {
                untrusted_content: true,
                data_domains: vec![s("payments")],
                sensitive_reads: 1,
            },
        }),
        EventKind::DelegationRefused => Body::DelegationRefused(DelegationRefused {
            code: s("delegation_widens"),
            message: s("the sub-task asks for more than its parent holds"),
            child_agent: Some(s("ledger-bot")),
            requested: Some(scope()),
            parent_grant: Some(Grant::default()),
            widening: vec![s("tool `billing.refund` is not in the parent's grant")],
            decision: None,
        }),
        EventKind::ContainmentFired => Body::ContainmentFired(ContainmentFired {
            rule: s("honeytoken-quarantines"),
            signal: s("honeytoken"),
            per: s("agent"),
            summary: s("called honeytoken tool billing.export_all"),
            evidence: vec![41],
            response: s("quarantine_agent"),
            result: s("applied"),
            revoked: vec![s("tsk_1")],
            error: None,
            reaction_us: 850,
        }),
        EventKind::TaskRedeclared => Body::TaskRedeclared(TaskRedeclared {
            change: s("narrower"),
            previous_purpose: s("refund order 42"),
            purpose: s("look up order 42 only"),
            previous_requested: scope(),
            requested: scope(),
            previous_grant: grant(),
            grant: Grant::default(),
            decision: None,
            approval_id: None,
        }),
    }
}

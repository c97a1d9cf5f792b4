//! The control map (R11): which controls of the usual frameworks the running configuration
//! implements, with its evidence (policies, settings, recent events), and which it does
//! not. Each row is decided from what is configured and recorded now, never asserted:
//! a control whose mechanism is switched off, or that nothing has exercised, says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::Error;

/// How far back events count as evidence.
pub const EVIDENCE_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;

/// One framework control and where Mandate stands on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControlRow {
    /// The framework (`OWASP Agentic Top 10 2026`, `NIST CSF 2.0`…).
    pub framework: String,
    /// The control's id in it (`ASI03`, `PR.AA`…).
    pub id: String,
    /// Its title.
    pub title: String,
    /// What in Mandate implements it.
    pub mechanism: String,
    /// `implemented`, `partial` or `gap`.
    pub status: String,
    /// What shows it in this deployment: policies, settings, counts of recent events.
    pub evidence: Vec<String>,
    /// What is missing, named.
    pub gaps: Vec<String>,
    /// The event kinds that evidence it.
    pub event_kinds: Vec<String>,
}

/// The whole map.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControlReport {
    /// When it was computed (unix ms).
    pub generated_at_ms: i64,
    /// The enforcing bundle's version.
    pub bundle_version: String,
    /// Events counted as evidence: those since this time (unix ms).
    pub evidence_since_ms: i64,
    /// One row per control.
    pub controls: Vec<ControlRow>,
    /// Rows per status.
    pub summary: BTreeMap<String, usize>,
}

/// The mechanisms controls are mapped to; each is judged once per report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mechanism {
    /// Cedar policy on every call; default deny; forbid wins.
    CallPolicy,
    /// Policies on the call's typed arguments.
    ArgumentPolicy,
    /// Policies on the task's history and taint.
    HistoryPolicy,
    /// Human approval of high-risk actions.
    Approval,
    /// Tasks: declared intent, scope, short life, owner; revoked at the end.
    TaskScope,
    /// Workload identity for agents.
    Identity,
    /// Credentials injected at the gateway, never held by the agent.
    SecretInjection,
    /// MCP tool definitions pinned, changes held.
    ToolPinning,
    /// Per-agent and per-task rate limits.
    RateLimits,
    /// The hash-chained, checkpointed audit log.
    Audit,
    /// Quarantine, offboarding, revocation.
    Containment,
    /// Emergency grants with after-review.
    BreakGlass,
    /// Candidate bundles decided beside the enforcing one.
    ShadowPolicy,
    /// Delegation that never widens (issue 14).
    Delegation,
    /// Outbound destinations: SSRF guard, destination scope.
    Egress,
    /// Metrics and alerting for operators.
    Monitoring,
}

use Mechanism as M;

/// (framework, id, title, mechanisms).
const CATALOGUE: &[(&str, &str, &str, &[Mechanism])] = &[
    // OWASP Top 10 for Agentic Applications (2026).
    (
        "OWASP Agentic Top 10",
        "ASI01",
        "Agent goal hijack",
        &[M::TaskScope, M::HistoryPolicy, M::CallPolicy],
    ),
    (
        "OWASP Agentic Top 10",
        "ASI02",
        "Tool misuse and exploitation",
        &[M::CallPolicy, M::ArgumentPolicy, M::ToolPinning],
    ),
    (
        "OWASP Agentic Top 10",
        "ASI03",
        "Identity and privilege abuse",
        &[M::Identity, M::TaskScope, M::SecretInjection],
    ),
    (
        "OWASP Agentic Top 10",
        "ASI04",
        "Agentic supply chain vulnerabilities",
        &[M::ToolPinning],
    ),
    (
        "OWASP Agentic Top 10",
        "ASI05",
        "Unexpected code execution",
        &[M::ArgumentPolicy, M::Approval],
    ),
    (
        "OWASP Agentic Top 10",
        "ASI06",
        "Memory and context poisoning",
        &[M::HistoryPolicy],
    ),
    (
        "OWASP Agentic Top 10",
        "ASI07",
        "Insecure inter-agent communication",
        &[M::Delegation, M::Identity],
    ),
    (
        "OWASP Agentic Top 10",
        "ASI08",
        "Cascading failures",
        &[M::RateLimits, M::Containment],
    ),
    (
        "OWASP Agentic Top 10",
        "ASI09",
        "Human-agent trust exploitation",
        &[M::Approval, M::Audit],
    ),
    (
        "OWASP Agentic Top 10",
        "ASI10",
        "Rogue agents",
        &[M::Containment, M::Audit, M::Monitoring],
    ),
    // OWASP Non-Human Identities Top 10 (2025).
    (
        "OWASP NHI Top 10",
        "NHI1",
        "Improper offboarding",
        &[M::Containment],
    ),
    (
        "OWASP NHI Top 10",
        "NHI2",
        "Secret leakage",
        &[M::SecretInjection],
    ),
    (
        "OWASP NHI Top 10",
        "NHI3",
        "Vulnerable third-party NHI",
        &[M::ToolPinning, M::Egress],
    ),
    (
        "OWASP NHI Top 10",
        "NHI4",
        "Insecure authentication",
        &[M::Identity],
    ),
    (
        "OWASP NHI Top 10",
        "NHI5",
        "Overprivileged NHI",
        &[M::TaskScope, M::CallPolicy],
    ),
    (
        "OWASP NHI Top 10",
        "NHI7",
        "Long-lived secrets",
        &[M::TaskScope, M::SecretInjection],
    ),
    (
        "OWASP NHI Top 10",
        "NHI8",
        "Environment isolation",
        &[M::CallPolicy],
    ),
    (
        "OWASP NHI Top 10",
        "NHI10",
        "Human use of NHI",
        &[M::BreakGlass, M::Audit],
    ),
    // OWASP MCP Top 10.
    (
        "OWASP MCP Top 10",
        "MCP01",
        "Token mismanagement and secret exposure",
        &[M::SecretInjection],
    ),
    (
        "OWASP MCP Top 10",
        "MCP02",
        "Privilege escalation via scope creep",
        &[M::TaskScope, M::Delegation],
    ),
    (
        "OWASP MCP Top 10",
        "MCP03",
        "Tool poisoning",
        &[M::ToolPinning],
    ),
    (
        "OWASP MCP Top 10",
        "MCP05",
        "Command injection and execution",
        &[M::ArgumentPolicy],
    ),
    (
        "OWASP MCP Top 10",
        "MCP06",
        "Prompt injection via contextual payloads",
        &[M::HistoryPolicy],
    ),
    (
        "OWASP MCP Top 10",
        "MCP07",
        "Insufficient authentication and authorization",
        &[M::Identity, M::CallPolicy],
    ),
    (
        "OWASP MCP Top 10",
        "MCP08",
        "Lack of audit and telemetry",
        &[M::Audit, M::Monitoring],
    ),
    (
        "OWASP MCP Top 10",
        "MCP09",
        "Shadow MCP servers",
        &[M::ToolPinning, M::Egress],
    ),
    // CSA MAESTRO layers.
    (
        "CSA MAESTRO",
        "L3",
        "Agent frameworks",
        &[M::CallPolicy, M::ToolPinning],
    ),
    (
        "CSA MAESTRO",
        "L4",
        "Deployment and infrastructure",
        &[M::Identity, M::SecretInjection],
    ),
    (
        "CSA MAESTRO",
        "L5",
        "Evaluation and observability",
        &[M::Audit, M::ShadowPolicy, M::Monitoring],
    ),
    (
        "CSA MAESTRO",
        "L6",
        "Security and compliance",
        &[M::CallPolicy, M::Approval, M::Audit],
    ),
    (
        "CSA MAESTRO",
        "L7",
        "Agent ecosystem",
        &[M::Delegation, M::ToolPinning],
    ),
    // MITRE ATLAS techniques.
    (
        "MITRE ATLAS",
        "AML.T0051",
        "LLM prompt injection",
        &[M::HistoryPolicy, M::Approval],
    ),
    (
        "MITRE ATLAS",
        "AML.T0053",
        "LLM plugin compromise",
        &[M::ToolPinning, M::CallPolicy],
    ),
    (
        "MITRE ATLAS",
        "AML.T0055",
        "Unsecured credentials",
        &[M::SecretInjection],
    ),
    (
        "MITRE ATLAS",
        "AML.T0057",
        "LLM data leakage",
        &[M::Egress, M::HistoryPolicy],
    ),
    // NIST AI RMF functions.
    (
        "NIST AI RMF",
        "GOVERN",
        "Policies, accountability, oversight",
        &[M::CallPolicy, M::Approval, M::BreakGlass],
    ),
    (
        "NIST AI RMF",
        "MAP",
        "Context and intended purpose",
        &[M::TaskScope],
    ),
    (
        "NIST AI RMF",
        "MEASURE",
        "Tracking, testing, monitoring",
        &[M::Audit, M::ShadowPolicy, M::Monitoring],
    ),
    (
        "NIST AI RMF",
        "MANAGE",
        "Responding to risks",
        &[M::Containment, M::Approval],
    ),
    // NIST CSF 2.0.
    (
        "NIST CSF 2.0",
        "PR.AA",
        "Identity management, authentication and access control",
        &[M::Identity, M::CallPolicy, M::TaskScope],
    ),
    (
        "NIST CSF 2.0",
        "PR.DS",
        "Data security",
        &[M::SecretInjection, M::Egress],
    ),
    (
        "NIST CSF 2.0",
        "PR.PS",
        "Platform security",
        &[M::RateLimits, M::ToolPinning],
    ),
    (
        "NIST CSF 2.0",
        "DE.CM",
        "Continuous monitoring",
        &[M::Audit, M::Monitoring],
    ),
    (
        "NIST CSF 2.0",
        "DE.AE",
        "Adverse event analysis",
        &[M::Audit],
    ),
    (
        "NIST CSF 2.0",
        "RS.MI",
        "Incident mitigation",
        &[M::Containment],
    ),
];

/// How one mechanism stands.
#[derive(Debug, Clone)]
struct Judged {
    title: &'static str,
    status: Status,
    evidence: Vec<String>,
    gaps: Vec<String>,
    kinds: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Gap,
    Partial,
    Implemented,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Gap => "gap",
            Self::Partial => "partial",
            Self::Implemented => "implemented",
        }
    }
}

/// What the report reads once.
struct Facts {
    policies: usize,
    forbids: Vec<String>,
    approvals: Vec<String>,
    argument_policies: Vec<String>,
    history_policies: Vec<String>,
    destination_policies: Vec<String>,
    delegation_policies: Vec<String>,
    counts: BTreeMap<String, i64>,
}

fn count(f: &Facts, kinds: &[&str]) -> Vec<String> {
    kinds
        .iter()
        .filter_map(|k| {
            f.counts
                .get(*k)
                .map(|n| format!("{n} `{k}` events in the last 30 days"))
        })
        .collect()
}

fn listed(what: &str, ids: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = format!("{} {what}: ", ids.len());
    s.push_str(
        &ids.iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    );
    if ids.len() > SHOWN {
        s.push_str(", …");
    }
    s
}

impl Engine {
    /// The control map of this deployment, now.
    pub async fn control_report(&self) -> Result<ControlReport, Error> {
        let now = self.clock.now_ms();
        let since = now.saturating_sub(EVIDENCE_WINDOW_MS);
        let counts: BTreeMap<String, i64> = self
            .store
            .count_events_by_kind(since)
            .await
            .map_err(|e| Error::store(&e))?
            .into_iter()
            .collect();
        let bundle = self.bundle();
        let mut facts = Facts {
            policies: bundle.len(),
            forbids: Vec::new(),
            approvals: Vec::new(),
            argument_policies: Vec::new(),
            history_policies: Vec::new(),
            destination_policies: Vec::new(),
            delegation_policies: Vec::new(),
            counts,
        };
        for p in bundle.policy_set().policies() {
            let id = p
                .annotation("id")
                .map_or_else(|| p.id().to_string(), str::to_owned);
            let text = p.to_string();
            if p.effect() == cedar_policy::Effect::Forbid {
                facts.forbids.push(id.clone());
            }
            if p.annotation("approval_required").is_some() {
                facts.approvals.push(id.clone());
            }
            if text.contains("context.args") {
                facts.argument_policies.push(id.clone());
            }
            if text.contains("context.history") || text.contains("taint") {
                facts.history_policies.push(id.clone());
            }
            if text.contains("Action::\"delegate\"") || text.contains("context.delegation") {
                facts.delegation_policies.push(id.clone());
            }
            if text.contains("destination") {
                facts.destination_policies.push(id);
            }
        }
        let mut judged: BTreeMap<Mechanism, Judged> = BTreeMap::new();
        for (_, _, _, ms) in CATALOGUE {
            for m in *ms {
                if !judged.contains_key(m) {
                    judged.insert(*m, self.judge(*m, &facts));
                }
            }
        }
        let mut controls = Vec::with_capacity(CATALOGUE.len());
        let mut summary: BTreeMap<String, usize> = BTreeMap::new();
        for (framework, id, title, ms) in CATALOGUE {
            let parts: Vec<&Judged> = ms.iter().filter_map(|m| judged.get(m)).collect();
            // A control stands as well as the weakest of the mechanisms it needs, except
            // that one mechanism in place makes it at least partial.
            let worst = parts.iter().map(|j| j.status).min().unwrap_or(Status::Gap);
            let best = parts.iter().map(|j| j.status).max().unwrap_or(Status::Gap);
            let status = if worst == Status::Gap && best > Status::Gap {
                Status::Partial
            } else {
                worst
            };
            let mut evidence = Vec::new();
            let mut gaps = Vec::new();
            let mut kinds = Vec::new();
            for j in &parts {
                evidence.extend(j.evidence.iter().map(|e| format!("{}: {e}", j.title)));
                gaps.extend(j.gaps.iter().map(|g| format!("{}: {g}", j.title)));
                kinds.extend(j.kinds.iter().map(|k| (*k).to_owned()));
            }
            kinds.sort();
            kinds.dedup();
            *summary.entry(status.as_str().to_owned()).or_default() += 1;
            controls.push(ControlRow {
                framework: (*framework).to_owned(),
                id: (*id).to_owned(),
                title: (*title).to_owned(),
                mechanism: parts.iter().map(|j| j.title).collect::<Vec<_>>().join("; "),
                status: status.as_str().to_owned(),
                evidence,
                gaps,
                event_kinds: kinds,
            });
        }
        Ok(ControlReport {
            generated_at_ms: now,
            bundle_version: bundle.version().to_owned(),
            evidence_since_ms: since,
            controls,
            summary,
        })
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one arm per mechanism, each reading its own settings: a table in code"
    )]
    fn judge(&self, m: Mechanism, f: &Facts) -> Judged {
        let gateway = self.config.gateway.as_deref();
        let upstreams = gateway.map_or(0, |g| g.upstreams.len());
        let mcp = gateway.map_or(0, |g| g.mcp_servers.len());
        let mut evidence = Vec::new();
        let mut gaps = Vec::new();
        let (title, status, kinds): (&'static str, Status, &'static [&'static str]) = match m {
            M::CallPolicy => {
                evidence.push(format!(
                    "{} Cedar policies enforced on every call (bundle {}); no permit means deny, forbid wins",
                    f.policies,
                    self.bundle().version()
                ));
                if !f.forbids.is_empty() {
                    evidence.push(listed("forbid policies", &f.forbids));
                }
                (
                    "Cedar policy on every call",
                    if f.policies > 0 {
                        Status::Implemented
                    } else {
                        Status::Gap
                    },
                    &["decision", "call.refused", "policy.loaded"],
                )
            }
            M::ArgumentPolicy => {
                if f.argument_policies.is_empty() {
                    gaps.push("no policy reads a call's typed arguments (`context.args`)".into());
                } else {
                    evidence.push(listed("policies on typed arguments", &f.argument_policies));
                }
                (
                    "policy on typed arguments",
                    if f.argument_policies.is_empty() {
                        Status::Gap
                    } else {
                        Status::Implemented
                    },
                    &["decision"],
                )
            }
            M::HistoryPolicy => {
                if f.history_policies.is_empty() {
                    gaps.push(
                        "no policy reads the task's history or taint (`context.history`)".into(),
                    );
                } else {
                    evidence.push(listed(
                        "policies on task history or taint",
                        &f.history_policies,
                    ));
                }
                evidence
                    .push("untrusted content taints its task durably before it is relayed".into());
                (
                    "policy on history and taint",
                    if f.history_policies.is_empty() {
                        Status::Partial
                    } else {
                        Status::Implemented
                    },
                    &["task.tainted", "decision"],
                )
            }
            M::Approval => {
                if f.approvals.is_empty() {
                    gaps.push(
                        "no policy holds any action for a human (`@approval_required`)".into(),
                    );
                } else {
                    evidence.push(listed("policies holding actions for a human", &f.approvals));
                    evidence.push(
                        "separation of duties: the agent's owner cannot approve its own calls"
                            .into(),
                    );
                }
                (
                    "human approval of high-risk actions",
                    if f.approvals.is_empty() {
                        Status::Gap
                    } else {
                        Status::Implemented
                    },
                    &[
                        "approval.requested",
                        "approval.approved",
                        "approval.denied",
                        "human.refused",
                    ],
                )
            }
            M::TaskScope => {
                evidence.push(format!(
                    "every call runs under a task with a purpose, a scope and an owner; at most {} s, {} s by default; privilege ends with the task",
                    self.config.limits.max_task_ttl_secs, self.config.limits.default_task_ttl_secs
                ));
                (
                    "tasks: intent, scope, short life",
                    Status::Implemented,
                    &[
                        "task.started",
                        "task.completed",
                        "task.revoked",
                        "task.expired",
                    ],
                )
            }
            M::Identity => {
                evidence.push(format!(
                    "agents hold JWT-SVIDs of the trust domain {} (at most {} s, renewed from attestation)",
                    self.config.trust_domain.as_str(),
                    self.config.limits.identity_token_ttl_secs
                ));
                let sources = self.trust.as_ref().map_or(0, |t| t.config().sources.len());
                if sources == 0 {
                    gaps.push("no external OIDC issuer or SPIFFE trust domain is configured: agents attest with one-time join tokens only (serve --identity FILE)".into());
                } else {
                    evidence.push(format!(
                        "{sources} external issuer(s) or trust domain(s) attest agents through their attestation rules"
                    ));
                }
                match self.config.limits.dpop_required_from_tier {
                    Some(t) => evidence.push(format!(
                        "task tokens of agents of tier {t} and above are bound to a key (DPoP, RFC 9449)"
                    )),
                    None => gaps.push("task tokens are sender-constrained (DPoP) only when the agent binds them: no tier requires it (limits.dpop_required_from_tier)".into()),
                }
                (
                    "workload identity",
                    if sources == 0 {
                        Status::Partial
                    } else {
                        Status::Implemented
                    },
                    &["agent.registered", "agent.attested", "attestation.refused"],
                )
            }
            M::SecretInjection => {
                let with_credentials = gateway.map_or(0, |g| {
                    g.upstreams
                        .values()
                        .filter(|u| u.credential.is_some())
                        .count()
                });
                if upstreams + mcp == 0 {
                    gaps.push("no gateway is configured (`--gateway-config`): agents calling tools directly hold their own credentials".into());
                } else {
                    evidence.push(format!(
                        "{upstreams} HTTP upstreams ({with_credentials} with an injected credential) and {mcp} MCP servers behind the gateway; credentials are sealed and redacted from answers"
                    ));
                }
                gaps.push(
                    "credentials are static secrets injected per call, not minted per task".into(),
                );
                (
                    "credentials injected at the gateway",
                    if upstreams + mcp == 0 {
                        Status::Gap
                    } else {
                        Status::Partial
                    },
                    &["gateway.result", "secret.put", "secrets.resealed"],
                )
            }
            M::ToolPinning => {
                if mcp == 0 {
                    gaps.push(
                        "no MCP server is behind the gateway: tool definitions are not pinned"
                            .into(),
                    );
                } else {
                    evidence.push(format!("{mcp} MCP servers whose tool definitions are pinned; a change is held until an admin approves it"));
                }
                (
                    "MCP tool pinning",
                    if mcp == 0 {
                        Status::Gap
                    } else {
                        Status::Implemented
                    },
                    &["tool.pinned", "tool.changed", "tool.approved"],
                )
            }
            M::RateLimits => {
                evidence.push(format!(
                    "{} decisions/s per agent, {} per task, on every entry point",
                    self.config.limits.agent_decisions_per_sec,
                    self.config.limits.task_decisions_per_sec
                ));
                ("rate limits", Status::Implemented, &["call.refused"])
            }
            M::Audit => {
                evidence.push("every decision durable in a hash-chained log before its answer; RFC 6962 checkpoints signed with a key outside the database".into());
                let witnessed =
                    self.config.log.witness_dir.is_some() || self.config.log.witness_url.is_some();
                if witnessed {
                    evidence
                        .push("checkpoints handed to a witness outside the data directory".into());
                } else {
                    gaps.push("no witness (`--witness-dir`, `--witness-url`): a rewrite of the database with every hash recomputed is caught only against checkpoints kept by hand".into());
                }
                let key_inside = self
                    .config
                    .log
                    .key_file
                    .as_ref()
                    .is_none_or(|k| k.starts_with(&self.config.data_dir));
                if key_inside {
                    gaps.push(
                        "the log key is in the data directory (`--log-key` puts it elsewhere)"
                            .into(),
                    );
                }
                (
                    "tamper-evident audit",
                    if witnessed && !key_inside {
                        Status::Implemented
                    } else {
                        Status::Partial
                    },
                    &["decision", "gateway.result", "policy.loaded"],
                )
            }
            M::Containment => {
                evidence.push("quarantine, offboarding and revocation end every live task of the agent before they are acknowledged; a policy change revokes or narrows live tasks it no longer permits".into());
                let c = self.config.containment.clone().unwrap_or_default();
                let signals: std::collections::BTreeSet<&str> =
                    c.rules.iter().map(|r| r.signal.name()).collect();
                let honeytokens = self
                    .bundle()
                    .catalog()
                    .iter()
                    .filter(|t| t.honeytoken)
                    .count();
                if c.rules.is_empty() {
                    gaps.push("no containment rules: nothing reacts to anomalies automatically (`--containment`)".into());
                } else {
                    evidence.push(format!(
                        "{} containment rule(s) on committed events: {}",
                        c.rules.len(),
                        signals.iter().copied().collect::<Vec<_>>().join(", ")
                    ));
                }
                if honeytokens == 0 {
                    gaps.push("no honeytoken tool in the catalog (`\"honeytoken\": true`)".into());
                } else {
                    evidence.push(format!("{honeytokens} honeytoken tool(s) in the catalog"));
                }
                let anomaly = signals.iter().any(|s| {
                    matches!(
                        *s,
                        "denial_burst" | "rate_above_baseline" | "bytes_above_baseline"
                    )
                });
                if !anomaly {
                    gaps.push("no rule on denial bursts or an agent's rate or volume against its baseline".into());
                }
                if c.ssf_receivers.is_empty() {
                    gaps.push("no Shared Signals receiver: revocations stay inside Mandate".into());
                } else {
                    evidence.push(format!(
                        "revocations and quarantines sent as signed CAEP events to {} receiver(s)",
                        c.ssf_receivers.len()
                    ));
                }
                (
                    "containment and revocation",
                    if anomaly && honeytokens > 0 {
                        Status::Implemented
                    } else {
                        Status::Partial
                    },
                    &["agent.status_changed", "task.revoked", "containment.fired"],
                )
            }
            M::BreakGlass => {
                evidence.push("emergency grants: named human, justification, at most 30 minutes, every call audited, after-review by someone else".into());
                (
                    "break-glass with review",
                    Status::Implemented,
                    &["break_glass.declared", "break_glass.reviewed"],
                )
            }
            M::ShadowPolicy => {
                if self.config.shadow_policies.is_some() {
                    evidence.push("a candidate bundle decides beside the enforcing one; disagreements are audited".into());
                } else {
                    gaps.push("no shadow bundle (`--shadow-policies`); `mandate policy replay` tests candidates offline".into());
                }
                (
                    "policy changes tested before they enforce",
                    if self.config.shadow_policies.is_some() {
                        Status::Implemented
                    } else {
                        Status::Partial
                    },
                    &["policy.shadow_disagreement"],
                )
            }
            M::Delegation => {
                evidence.push(format!(
                    "RFC 8693 token exchange at /oauth2/token: a child's grant stays within every task above it, ends no later than its parent, depth at most {}; each call of a delegate is also decided as its ancestors' would be; ending a task ends its descendants",
                    self.config.limits.max_delegation_depth
                ));
                let status = if f.delegation_policies.is_empty() {
                    gaps.push("no policy names `Action::\"delegate\"` or `context.delegation`: every delegation is refused by default".into());
                    Status::Partial
                } else {
                    evidence.push(listed("policies on delegation", &f.delegation_policies));
                    Status::Implemented
                };
                (
                    "delegation that never widens",
                    status,
                    &["task.delegated", "delegation.refused"],
                )
            }
            M::Egress => {
                if upstreams == 0 {
                    gaps.push("no HTTP upstream is behind the gateway".into());
                } else {
                    evidence.push("gateway upstreams only, through an SSRF guard; destinations must be in the task's scope".into());
                }
                if !f.destination_policies.is_empty() {
                    evidence.push(listed("policies on destinations", &f.destination_policies));
                }
                (
                    "egress control",
                    if upstreams == 0 && f.destination_policies.is_empty() {
                        Status::Gap
                    } else if upstreams == 0 {
                        Status::Partial
                    } else {
                        Status::Implemented
                    },
                    &["gateway.result"],
                )
            }
            M::Monitoring => {
                gaps.push("no metrics endpoint or alerting beyond approver webhooks".into());
                ("operator monitoring", Status::Gap, &[])
            }
        };
        evidence.extend(count(f, kinds));
        Judged {
            title,
            status,
            evidence,
            gaps,
            kinds,
        }
    }
}

//! Evaluation: typed request in, total [`Decision`] out.

use std::collections::{BTreeMap, BTreeSet};

use cedar_policy::{
    AuthorizationError, Context, Decision as CedarDecision, PolicySet, Request, Response,
    RestrictedExpression,
};
use mandate_core::{
    ActionClass, DataDomain, Destination, Grant, RequestedScope, Sensitivity, ToolName,
};
pub use mandate_core::{ApprovalTerms, Decision, ItemOutcome, Obligation, Outcome};

use crate::bundle::PolicyMeta;
use crate::facts::uid;
use crate::{Bundle, DEFAULT_DENY_POLICY, History, TaskEntities};

/// The pseudo policy id of a deny caused by approval policies naming different groups.
pub const APPROVER_GROUP_CONFLICT_POLICY: &str = "mandate:approver-group-conflict";

/// The approver group of an approval-required action whose policies name none.
pub const DEFAULT_APPROVER_GROUP: &str = "default";

/// The pseudo policy id of a call refused because it contradicts the tool catalog.
pub const CATALOG_POLICY: &str = "mandate:catalog";

/// Most policy evaluations a task start may take (pairs × (declared data domains + 1)).
pub const MAX_GRANT_EVALUATIONS: usize = 4096;

/// One tool call to decide, as typed values.
#[derive(Debug, Clone, Copy)]
pub struct CallRequest<'a> {
    /// The action class.
    pub action: ActionClass,
    /// The tool.
    pub tool: &'a ToolName,
    /// What the tool acts on ("" when unnamed).
    pub resource: &'a str,
    /// Where the call sends data.
    pub destination: Option<&'a Destination>,
    /// The data domain touched.
    pub data_domain: Option<&'a DataDomain>,
    /// Declared sensitivity.
    pub sensitivity: Sensitivity,
    /// Hex SHA-256 of the canonical arguments.
    pub args_digest: &'a str,
    /// The canonical arguments (`None` in the grant phase): typed by the catalog's schema
    /// into `context.args`.
    pub args: Option<&'a serde_json::Value>,
    /// Unix seconds.
    pub now_secs: i64,
    /// What the task has done so far.
    pub history: &'a History,
}

/// A task start to decide.
#[derive(Debug, Clone, Copy)]
pub struct StartRequest<'a> {
    /// What the agent asks for.
    pub scope: &'a RequestedScope,
    /// Lifetime asked for, seconds.
    pub ttl_secs: i64,
    /// Deployment environment label.
    pub environment: &'a str,
    /// Unix seconds.
    pub now_secs: i64,
    /// The task's tokens are bound to a key the agent holds (DPoP, RFC 9449).
    pub sender_constrained: bool,
}

/// A delegation to decide: the parent task (its entities) hands a sub-task to `child`.
#[derive(Debug, Clone, Copy)]
pub struct DelegateRequest<'a> {
    /// The agent that will act.
    pub child: &'a crate::AgentFacts,
    /// The sub-task's declared intent.
    pub purpose: &'a str,
    /// What the sub-task asks for.
    pub scope: &'a RequestedScope,
    /// Its lifetime, seconds.
    pub ttl_secs: i64,
    /// `context.delegation` of the child as it would be.
    pub delegation: &'a RestrictedExpression,
    /// Deployment environment label.
    pub environment: &'a str,
    /// Unix seconds.
    pub now_secs: i64,
}

/// The answer to a task start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartDecision {
    /// The `start_task` decision itself.
    pub decision: Decision,
    /// The smallest `@max_ttl_secs` among the determining policies.
    pub ttl_cap_secs: Option<i64>,
    /// Every requested pair and its outcome.
    pub items: Vec<ItemOutcome>,
    /// What is granted: the allowed and approval-required pairs, plus the requested data
    /// domains and destinations (policy on `start_task` sees those and may refuse).
    pub grant: Grant,
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

fn set<'a>(items: impl Iterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.map(s))
}

/// The empty Cedar record.
pub(crate) fn empty_record() -> RestrictedExpression {
    // An empty record cannot have duplicate fields; the set is never reached.
    RestrictedExpression::new_record(std::iter::empty())
        .unwrap_or_else(|_| RestrictedExpression::new_set([]))
}

/// `context.history`, with `tool_calls` narrowed to the tool being called.
pub fn history_record(h: &History, tool: &str) -> RestrictedExpression {
    let long = RestrictedExpression::new_long;
    let fields = [
        ("calls", long(h.calls)),
        ("reads", long(h.reads)),
        ("writes", long(h.writes)),
        ("deletes", long(h.deletes)),
        ("executes", long(h.executes)),
        (
            "tool_calls",
            long(h.tool_calls.get(tool).copied().unwrap_or(0)),
        ),
        ("tools", set(h.tool_calls.keys().map(String::as_str))),
        (
            "data_domains",
            set(h.data_domains.iter().map(String::as_str)),
        ),
        ("sensitive_reads", long(h.sensitive_reads)),
        ("bytes_returned", long(h.bytes_returned)),
        (
            "untrusted_content",
            RestrictedExpression::new_bool(h.untrusted_content),
        ),
    ];
    // Field names are distinct literals, so building the record cannot fail; if it ever
    // did, a set in its place makes every policy that reads history error, which denies.
    RestrictedExpression::new_record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)))
        .unwrap_or_else(|_| RestrictedExpression::new_set([]))
}

impl Bundle {
    /// Decides one tool call for a task. Total: every failure is a deny that says why.
    pub fn decide_call(&self, task: &TaskEntities, req: &CallRequest<'_>) -> Decision {
        match self.effective_data_domain(req.tool, req.data_domain) {
            Ok(domain) => {
                let req = CallRequest {
                    data_domain: domain,
                    ..*req
                };
                match self.typed_args(&req) {
                    Ok(args) => self.decide_call_phase(task, &req, "call", args),
                    Err(deny) => *deny,
                }
            }
            Err(deny) => *deny,
        }
    }

    /// `context.args`: the call's arguments typed by the catalog, or a deny naming the
    /// field that does not fit. A tool the catalog declares no arguments for gets the
    /// empty record (no policy can read its arguments).
    pub(crate) fn typed_args(
        &self,
        req: &CallRequest<'_>,
    ) -> Result<RestrictedExpression, Box<Decision>> {
        let Some(schema) = self.catalog.arguments(req.tool) else {
            return Ok(empty_record());
        };
        let empty = serde_json::Value::Object(serde_json::Map::new());
        schema.to_cedar(req.args.unwrap_or(&empty)).map_err(|e| {
            Box::new(Decision::deny(
                crate::ARGUMENTS_POLICY,
                format!(
                    "{e}: the tool catalog declares the arguments of `{}`",
                    req.tool
                ),
                &self.version,
            ))
        })
    }

    /// The data domain a call touches: the catalog's for a tool it places in one (a call
    /// declaring another is denied), else what the call declared.
    pub fn effective_data_domain<'a>(
        &'a self,
        tool: &ToolName,
        declared: Option<&'a DataDomain>,
    ) -> Result<Option<&'a DataDomain>, Box<Decision>> {
        let Some(cataloged) = self.catalog.get(tool).and_then(|e| e.data_domain.as_ref()) else {
            return Ok(declared);
        };
        match declared {
            Some(d) if d != cataloged => Err(Box::new(Decision::deny(
                CATALOG_POLICY,
                format!(
                    "the call declares data domain `{d}`, but the tool catalog places `{tool}` in `{cataloged}`"
                ),
                &self.version,
            ))),
            _ => Ok(Some(cataloged)),
        }
    }

    fn decide_call_phase(
        &self,
        task: &TaskEntities,
        req: &CallRequest<'_>,
        phase: &str,
        args: RestrictedExpression,
    ) -> Decision {
        let Some(slice) = self.call_slice(req.action) else {
            return self.internal_deny("no slice for action class");
        };
        let tool = req.tool.as_str();
        let with_history = slice.needs_history(tool);
        let request = match self.call_request(task, req, phase, with_history, args) {
            Ok(r) => r,
            Err(what) => return self.internal_deny(&what),
        };
        if phase != "grant" {
            return self.evaluate(&request, slice.for_tool(tool), task);
        }
        // Arguments are not known yet: the policies that read them are left out, and a
        // pair that only such a permit could allow is granted on its terms; every call is
        // then decided on its arguments.
        let d = self.evaluate(&request, slice.for_grant(tool), task);
        let default_denied = d.outcome == Outcome::Deny
            && d.errors.is_empty()
            && d.policies.iter().all(|p| p == DEFAULT_DENY_POLICY);
        let permits = slice.arg_permits(tool);
        if !default_denied || permits.is_empty() {
            return d;
        }
        let needs_approval = permits
            .iter()
            .all(|id| self.meta.get(id).is_some_and(|m| m.approval.is_some()));
        Decision {
            outcome: if needs_approval {
                Outcome::ApprovalRequired
            } else {
                Outcome::Allow
            },
            policies: permits.iter().map(ToString::to_string).collect(),
            reasons: vec![format!(
                "granted for the arguments its policies permit: each call of `{tool}` is decided on its arguments"
            )],
            errors: Vec::new(),
            obligations: Vec::new(),
            approval: None,
            bundle_version: self.version.clone(),
        }
    }

    /// The Cedar request for one call, built from typed values.
    pub(crate) fn call_request(
        &self,
        task: &TaskEntities,
        req: &CallRequest<'_>,
        phase: &str,
        with_history: bool,
        args: RestrictedExpression,
    ) -> Result<Request, String> {
        let action = self
            .call_uid(req.action)
            .ok_or_else(|| "no uid for action class".to_owned())?;
        let mut pairs = Vec::with_capacity(9);
        pairs.push(("phase".to_owned(), s(phase)));
        pairs.push((
            "task".to_owned(),
            RestrictedExpression::new_entity_uid(task.task.clone()),
        ));
        pairs.push(("resource".to_owned(), s(req.resource)));
        if let Some(d) = req.destination {
            pairs.push(("destination".to_owned(), s(d.as_str())));
        }
        if let Some(d) = req.data_domain {
            pairs.push(("data_domain".to_owned(), s(d.as_str())));
        }
        pairs.push(("sensitivity".to_owned(), s(req.sensitivity.as_str())));
        pairs.push(("args_digest".to_owned(), s(req.args_digest)));
        pairs.push(("args".to_owned(), args));
        pairs.push((
            "now".to_owned(),
            RestrictedExpression::new_long(req.now_secs),
        ));
        if with_history {
            pairs.push((
                "history".to_owned(),
                history_record(req.history, req.tool.as_str()),
            ));
        }
        pairs.push(("delegation".to_owned(), task.delegation.clone()));
        let context = Context::from_pairs(pairs).map_err(|e| format!("context: {e}"))?;
        let resource = uid(&self.tool_type, req.tool.as_str());
        Request::new(task.agent.clone(), action.clone(), resource, context, None)
            .map_err(|e| format!("request: {e}"))
    }

    /// Decides a task start: first `start_task`, then each requested (tool, action) pair
    /// in the `grant` phase. Only pairs that policy allows (or allows with approval) are
    /// granted.
    pub fn decide_start(&self, task: &TaskEntities, req: &StartRequest<'_>) -> StartDecision {
        let refused = |decision: Decision| StartDecision {
            decision,
            ttl_cap_secs: None,
            items: Vec::new(),
            grant: Grant::default(),
        };
        let scope = req.scope;
        let context = Context::from_pairs([
            ("environment".to_owned(), s(req.environment)),
            (
                "ttl_secs".to_owned(),
                RestrictedExpression::new_long(req.ttl_secs),
            ),
            (
                "tools".to_owned(),
                set(scope.tools.iter().map(ToolName::as_str)),
            ),
            (
                "actions".to_owned(),
                set(scope.actions.iter().map(|a| a.as_str())),
            ),
            (
                "data_domains".to_owned(),
                set(scope.data_domains.iter().map(DataDomain::as_str)),
            ),
            (
                "destinations".to_owned(),
                set(scope.destinations.iter().map(Destination::as_str)),
            ),
            (
                "now".to_owned(),
                RestrictedExpression::new_long(req.now_secs),
            ),
            (
                "sender_constrained".to_owned(),
                RestrictedExpression::new_bool(req.sender_constrained),
            ),
        ]);
        let context = match context {
            Ok(c) => c,
            Err(e) => return refused(self.internal_deny(&format!("context: {e}"))),
        };
        let request = match Request::new(
            task.agent.clone(),
            self.start_uid.clone(),
            task.task.clone(),
            context,
            None,
        ) {
            Ok(r) => r,
            Err(e) => return refused(self.internal_deny(&format!("request: {e}"))),
        };
        let decision = self.evaluate(&request, &self.start.generic, task);
        if decision.outcome == Outcome::Deny {
            return refused(decision);
        }
        let ttl_cap_secs = decision
            .policies
            .iter()
            .filter_map(|id| self.meta.get(&cedar_policy::PolicyId::new(id)))
            .filter_map(|m| m.max_ttl_secs)
            .min();

        let tools: BTreeSet<&ToolName> = scope.tools.iter().collect();
        let actions: BTreeSet<ActionClass> = scope.actions.iter().copied().collect();
        let mut items = Vec::new();
        let mut granted: BTreeMap<ToolName, BTreeSet<ActionClass>> = BTreeMap::new();
        let empty = History::default();
        // A pair is granted if policy permits it with no data domain named, or for any
        // one of the data domains the task declared: a permit that requires
        // `context.data_domain` can only be satisfied by a declared domain.
        let domains: Vec<Option<&DataDomain>> = std::iter::once(None)
            .chain(scope.data_domains.iter().map(Some))
            .collect();
        let evaluations = tools.len() * actions.len() * domains.len();
        if evaluations > MAX_GRANT_EVALUATIONS {
            return refused(Decision::deny(
                "mandate:scope-too-broad",
                format!(
                    "the requested scope needs {evaluations} grant evaluations; at most {MAX_GRANT_EVALUATIONS} are made: ask for fewer tools, actions or data domains"
                ),
                &self.version,
            ));
        }
        for tool in tools {
            // A tool the catalog places in a data domain is only ever called in it: it is
            // decided in that domain alone, and refused if the task did not declare it.
            let cataloged = self.catalog.get(tool).and_then(|e| e.data_domain.as_ref());
            let tool_domains: Vec<Option<&DataDomain>> = match cataloged {
                Some(d) if scope.data_domains.contains(d) => vec![Some(d)],
                Some(_) => Vec::new(),
                None => domains.clone(),
            };
            for action in &actions {
                if let Some(domain) = cataloged
                    && tool_domains.is_empty()
                {
                    items.push(ItemOutcome {
                        tool: tool.clone(),
                        action: *action,
                        outcome: Outcome::Deny,
                        policies: vec![CATALOG_POLICY.to_owned()],
                        reasons: vec![format!(
                            "the catalog places `{tool}` in data domain `{domain}`, which the task did not declare in `data_domains`"
                        )],
                    });
                    continue;
                }
                let mut first: Option<Decision> = None;
                let mut best: Option<Decision> = None;
                for domain in &tool_domains {
                    let call = CallRequest {
                        action: *action,
                        tool,
                        resource: "",
                        destination: None,
                        data_domain: *domain,
                        sensitivity: Sensitivity::default(),
                        args_digest: "",
                        args: None,
                        now_secs: req.now_secs,
                        history: &empty,
                    };
                    let d = self.decide_call_phase(task, &call, "grant", empty_record());
                    if d.outcome != Outcome::Deny {
                        // Prefer a plain allow over an approval-required one.
                        let better = best.as_ref().is_none_or(|b| {
                            b.outcome == Outcome::ApprovalRequired && d.outcome == Outcome::Allow
                        });
                        if better {
                            best = Some(d);
                        }
                    } else if first.is_none() {
                        first = Some(d);
                    }
                }
                let Some(d) = best.or(first) else { continue };
                if d.outcome != Outcome::Deny {
                    granted.entry(tool.clone()).or_default().insert(*action);
                }
                items.push(ItemOutcome {
                    tool: tool.clone(),
                    action: *action,
                    outcome: d.outcome,
                    policies: d.policies,
                    reasons: d.reasons,
                });
            }
        }
        let grant = if granted.is_empty() {
            Grant::default()
        } else {
            Grant {
                tools: granted,
                data_domains: scope.data_domains.iter().cloned().collect(),
                destinations: scope.destinations.iter().cloned().collect(),
            }
        };
        StartDecision {
            decision,
            ttl_cap_secs,
            items,
            grant,
        }
    }

    /// Decides a delegation (`Action::"delegate"`, the parent's agent as principal, the
    /// parent task as resource). Total: every failure is a deny that says why.
    pub fn decide_delegate(&self, parent: &TaskEntities, req: &DelegateRequest<'_>) -> Decision {
        let child = req.child;
        let child_record = RestrictedExpression::new_record(
            [
                ("name", s(&child.name)),
                ("spiffe_id", s(&child.spiffe_id)),
                ("owner", s(&child.owner)),
                (
                    "tier",
                    RestrictedExpression::new_long(i64::from(child.tier)),
                ),
                ("trust_domain", s(&child.trust_domain)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let child_record = match child_record {
            Ok(r) => r,
            Err(e) => return self.internal_deny(&format!("context: {e}")),
        };
        let scope = req.scope;
        let context = Context::from_pairs([
            ("environment".to_owned(), s(req.environment)),
            ("purpose".to_owned(), s(req.purpose)),
            ("child".to_owned(), child_record),
            (
                "ttl_secs".to_owned(),
                RestrictedExpression::new_long(req.ttl_secs),
            ),
            (
                "tools".to_owned(),
                set(scope.tools.iter().map(ToolName::as_str)),
            ),
            (
                "actions".to_owned(),
                set(scope.actions.iter().map(|a| a.as_str())),
            ),
            (
                "data_domains".to_owned(),
                set(scope.data_domains.iter().map(DataDomain::as_str)),
            ),
            (
                "destinations".to_owned(),
                set(scope.destinations.iter().map(Destination::as_str)),
            ),
            ("delegation".to_owned(), req.delegation.clone()),
            (
                "now".to_owned(),
                RestrictedExpression::new_long(req.now_secs),
            ),
        ]);
        let context = match context {
            Ok(c) => c,
            Err(e) => return self.internal_deny(&format!("context: {e}")),
        };
        match Request::new(
            parent.agent.clone(),
            self.delegate_uid.clone(),
            parent.task.clone(),
            context,
            None,
        ) {
            Ok(r) => self.evaluate(&r, &self.delegate.generic, parent),
            Err(e) => self.internal_deny(&format!("request: {e}")),
        }
    }

    fn internal_deny(&self, what: &str) -> Decision {
        Decision {
            outcome: Outcome::Deny,
            policies: vec!["mandate:internal-error".to_owned()],
            reasons: vec![format!(
                "the request could not be evaluated ({what}); errors deny"
            )],
            errors: vec![what.to_owned()],
            obligations: Vec::new(),
            approval: None,
            bundle_version: self.version.clone(),
        }
    }

    /// Runs Cedar on one slice and turns its response into a decision.
    pub(crate) fn evaluate(
        &self,
        request: &Request,
        set: &PolicySet,
        task: &TaskEntities,
    ) -> Decision {
        let response = self.authorizer.is_authorized(request, set, &task.entities);
        self.conclude(&response)
    }

    fn conclude(&self, response: &Response) -> Decision {
        let diagnostics = response.diagnostics();
        let errors: Vec<(String, String)> = diagnostics
            .errors()
            .map(|e| {
                let AuthorizationError::PolicyEvaluationError(pe) = e;
                (pe.policy_id().to_string(), e.to_string())
            })
            .collect();
        if !errors.is_empty() {
            // Cedar skips a policy that errors; a skipped forbid could turn into an allow.
            // Mandate does not accept that: any error in an applicable policy denies.
            return Decision {
                outcome: Outcome::Deny,
                policies: errors.iter().map(|(id, _)| id.clone()).collect(),
                reasons: errors
                    .iter()
                    .map(|(id, _)| {
                        format!("policy `{id}` failed to evaluate; evaluation errors deny")
                    })
                    .collect(),
                errors: errors.into_iter().map(|(_, e)| e).collect(),
                obligations: Vec::new(),
                approval: None,
                bundle_version: self.version.clone(),
            };
        }
        let ids: Vec<&cedar_policy::PolicyId> = diagnostics.reason().collect();
        let mut policies: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        policies.sort();
        let meta = |id: &cedar_policy::PolicyId| self.meta.get(id);
        match response.decision() {
            CedarDecision::Allow => {
                let mut obligations: Vec<Obligation> = ids
                    .iter()
                    .flat_map(|id| {
                        meta(id).into_iter().flat_map(move |m| {
                            m.obligations.iter().map(move |(name, value)| Obligation {
                                name: name.clone(),
                                value: value.clone(),
                                policy: id.to_string(),
                            })
                        })
                    })
                    .collect();
                obligations.sort_by(|a, b| (&a.name, &a.policy).cmp(&(&b.name, &b.policy)));
                let approvals: Vec<String> = ids
                    .iter()
                    .filter_map(|id| {
                        meta(id)
                            .and_then(|m| m.approval.clone())
                            .map(|a| format!("{a} (policy `{id}`)"))
                    })
                    .collect();
                if approvals.is_empty() {
                    let reasons = ids
                        .iter()
                        .map(|id| match meta(id).and_then(|m| m.reason.clone()) {
                            Some(r) => format!("{r} (policy `{id}`)"),
                            None => format!("permitted by policy `{id}`"),
                        })
                        .collect();
                    Decision {
                        outcome: Outcome::Allow,
                        policies,
                        reasons,
                        errors: Vec::new(),
                        obligations,
                        approval: None,
                        bundle_version: self.version.clone(),
                    }
                } else {
                    let mut asking: Vec<(String, &PolicyMeta)> = ids
                        .iter()
                        .filter_map(|id| {
                            meta(id)
                                .filter(|m| m.approval.is_some())
                                .map(|m| (id.to_string(), m))
                        })
                        .collect();
                    asking.sort_by(|a, b| a.0.cmp(&b.0));
                    let groups: BTreeSet<&str> = asking
                        .iter()
                        .map(|(_, m)| {
                            m.approver_group
                                .as_deref()
                                .unwrap_or(DEFAULT_APPROVER_GROUP)
                        })
                        .collect();
                    if groups.len() > 1 {
                        // Which humans may answer must never depend on which policy sorts
                        // first: conflicting groups fail closed, visibly.
                        let names: Vec<&str> = groups.into_iter().collect();
                        let mut d = Decision::deny(
                            APPROVER_GROUP_CONFLICT_POLICY,
                            format!(
                                "the approval policies that apply ({}) name different approver groups ({}); name one group per action",
                                policies.join(", "),
                                names.join(", ")
                            ),
                            &self.version,
                        );
                        d.policies.extend(policies);
                        return d;
                    }
                    let terms = ApprovalTerms {
                        approvals: asking.iter().map(|(_, m)| m.approvals).max().unwrap_or(1),
                        owner_may_approve: asking.iter().all(|(_, m)| m.owner_may_approve),
                        group: asking
                            .iter()
                            .find_map(|(_, m)| m.approver_group.clone())
                            .unwrap_or_else(|| DEFAULT_APPROVER_GROUP.to_owned()),
                    };
                    Decision {
                        outcome: Outcome::ApprovalRequired,
                        policies,
                        reasons: approvals,
                        errors: Vec::new(),
                        obligations,
                        approval: Some(terms),
                        bundle_version: self.version.clone(),
                    }
                }
            }
            CedarDecision::Deny if ids.is_empty() => Decision::deny(
                DEFAULT_DENY_POLICY,
                "no policy permits this action (default deny)".to_owned(),
                &self.version,
            ),
            CedarDecision::Deny => {
                let reasons = ids
                    .iter()
                    .map(|id| match meta(id).and_then(|m| m.reason.clone()) {
                        Some(r) => format!("{r} (policy `{id}`)"),
                        None => format!("forbidden by policy `{id}`"),
                    })
                    .collect();
                Decision {
                    outcome: Outcome::Deny,
                    policies,
                    reasons,
                    errors: Vec::new(),
                    obligations: Vec::new(),
                    approval: None,
                    bundle_version: self.version.clone(),
                }
            }
        }
    }
}

//! `mandate policy explain`: for one call, every policy in the bundle and what it did.

use std::collections::HashSet;

use cedar_policy::{ActionConstraint, Effect, PolicyId, PolicySet};
use serde::Serialize;

use crate::{Bundle, CallRequest, Decision, TaskEntities};

/// What one policy did for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trace {
    /// It determined the decision.
    Determining,
    /// Its scope and condition held, but it did not determine the decision.
    Matched,
    /// It could apply, but its principal/resource scope or condition did not hold.
    NotMatched,
    /// It could apply, and failed to evaluate (which denies).
    Errored,
    /// It was never evaluated: its scope cannot apply to this action or tool.
    Skipped,
}

/// One policy's part in a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyTrace {
    /// Policy id.
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: &'static str,
    /// What it did.
    pub trace: Trace,
    /// Why, in words.
    pub detail: String,
}

/// A decision with every policy's part in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The decision, exactly as enforced.
    pub decision: Decision,
    /// Every policy of the bundle, in bundle order.
    pub policies: Vec<PolicyTrace>,
}

impl Bundle {
    /// Decides a call and explains it: which policies determined it, which matched, which
    /// were evaluated and did not match or failed, and which were skipped and why.
    pub fn explain_call(&self, task: &TaskEntities, req: &CallRequest<'_>) -> Explanation {
        let decision = self.decide_call(task, req);
        // Trace each policy with the data domain the decision used (the catalog's).
        let domain = self
            .effective_data_domain(req.tool, req.data_domain)
            .unwrap_or(req.data_domain);
        let effective = CallRequest {
            data_domain: domain,
            ..*req
        };
        let req = &effective;
        let slice: HashSet<PolicyId> = self
            .call_slice(req.action)
            .map(|s| {
                s.for_tool(req.tool.as_str())
                    .policies()
                    .map(|p| p.id().clone())
                    .collect()
            })
            .unwrap_or_default();
        let request = self
            .typed_args(req)
            .ok()
            .and_then(|args| self.call_request(task, req, "call", true, args).ok());
        let action = self.call_uid(req.action);
        let determining: HashSet<&str> = decision.policies.iter().map(String::as_str).collect();
        let mut policies = Vec::new();
        for p in self.all.policies() {
            let id = p.id().to_string();
            let effect = if p.effect() == Effect::Permit {
                "permit"
            } else {
                "forbid"
            };
            let (trace, detail) = if !slice.contains(p.id()) {
                let action_fits = match (p.action_constraint(), action) {
                    (ActionConstraint::Any, _) => true,
                    (ActionConstraint::Eq(a), Some(want)) => &a == want,
                    (ActionConstraint::In(list), Some(want)) => list.iter().any(|a| a == want),
                    (_, None) => false,
                };
                let why = if action_fits {
                    format!(
                        "skipped: its resource scope names another tool than `{}`",
                        req.tool
                    )
                } else {
                    format!(
                        "skipped: its action scope does not include `{}`",
                        req.action
                    )
                };
                (Trace::Skipped, why)
            } else {
                let mut alone = PolicySet::new();
                let outcome = match (&request, alone.add(p.clone())) {
                    (Some(r), Ok(())) => {
                        Some(self.authorizer.is_authorized(r, &alone, &task.entities))
                    }
                    _ => None,
                };
                match outcome {
                    None => (
                        Trace::Errored,
                        "could not be evaluated on its own".to_owned(),
                    ),
                    Some(resp) => {
                        let errors: Vec<String> = resp
                            .diagnostics()
                            .errors()
                            .map(ToString::to_string)
                            .collect();
                        let matched = resp.diagnostics().reason().any(|r| r == p.id());
                        if !errors.is_empty() {
                            (
                                Trace::Errored,
                                format!("failed to evaluate: {}", errors.join("; ")),
                            )
                        } else if determining.contains(id.as_str()) {
                            (
                                Trace::Determining,
                                "its scope and condition hold, and it determined the decision"
                                    .to_owned(),
                            )
                        } else if matched {
                            let why = if effect == "permit" {
                                "its scope and condition hold, but a forbid or an error overrides it"
                            } else {
                                "its scope and condition hold"
                            };
                            (Trace::Matched, why.to_owned())
                        } else {
                            (Trace::NotMatched, "evaluated: its principal or resource scope, or its condition, does not hold".to_owned())
                        }
                    }
                }
            };
            policies.push(PolicyTrace {
                id,
                effect,
                trace,
                detail,
            });
        }
        Explanation { decision, policies }
    }
}

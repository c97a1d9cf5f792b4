//! Plan change (R9): a running task re-declares its purpose and scope. A plan within the
//! grant it holds takes effect at once, with no policy needed; a wider one is decided as a
//! start would be (`start_task` and each pair), and waits for a human where policy says so.
//! The old and the new intent are both in the audit record (`task.redeclared`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mandate_audit::{Body, NewEvent, TaskRedeclared, TaskRefused};
use mandate_core::{ApprovalKind, ApprovalState, Grant, RequestedScope, sha256_hex};
use mandate_policy::{Decision, ItemOutcome, Outcome, StartRequest, TaskFacts};
use mandate_store::TaskPlan;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::approvals::{ApprovalRef, Request, conflict, not_pending};
use crate::engine::{Engine, LiveTask, Plan};
use crate::error::{Error, Kind};
use crate::tasks::{checked_text, grant_of};

/// A running task's new plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = RedeclareRequest))]
pub struct Redeclare {
    /// The new intent, in plain words.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 1024))]
    pub purpose: String,
    /// What the task needs now.
    pub scope: RequestedScope,
    /// The approval a wider plan was held for: the same plan, repeated with it, takes
    /// effect once it is approved (used once).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub approval_id: Option<String>,
}

/// What a re-declaration did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = RedeclareResponse))]
pub struct Redeclared {
    /// Task id.
    pub task_id: String,
    /// `narrower` (less, same purpose: no policy needed), `repurposed` (a new purpose over
    /// no more, decided by policy) or `wider` (decided by policy).
    pub change: String,
    /// True when the new plan is in force; false while it waits for `approval`.
    pub applied: bool,
    /// The grant in force now.
    pub grant: Grant,
    /// How policy answered each requested pair of a wider plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemOutcome>,
    /// The `start_task` decision on a wider plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The approval a wider plan waits for (repeat the same plan with its id once it is
    /// approved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
}

/// The binding digest of a plan change: an approval is for exactly this plan of this
/// task under this bundle.
fn plan_digest(task: &LiveTask, purpose: &str, scope: &RequestedScope, bundle: &str) -> String {
    let material = json!({
        "kind": ApprovalKind::PlanChange.as_str(),
        "task": task.id, "agent": task.agent, "purpose": purpose, "requested": scope,
        "bundle_version": bundle,
    });
    sha256_hex(mandate_core::canonical_json(&material).as_bytes())
}

/// True when every requested pair, domain and destination lies within `grant`.
fn within(scope: &RequestedScope, grant: &Grant) -> bool {
    mandate_core::widening(scope, grant).is_empty()
}

impl Engine {
    /// Re-declares a running task's plan with its own task token.
    pub async fn redeclare_task(
        &self,
        token: &str,
        id: &str,
        req: Redeclare,
    ) -> Result<Redeclared, Error> {
        let task = self.own_task(token, id)?;
        let limits = &self.config.limits;
        let purpose = checked_text("purpose", &req.purpose, limits.max_purpose_chars, true)?;
        req.scope
            .check_bounds(limits.max_scope_items)
            .map_err(|e| Error::unprocessable(e.to_string()))?;
        if task.break_glass.is_some() {
            return Err(conflict(
                "break_glass_fixed",
                "a break-glass grant is declared by a human and cannot be re-planned",
            ));
        }
        let before = task.plan();
        let held = task.current_grant();
        // Only the same intent over less needs no policy: a new purpose is an attribute
        // policies read (and TTL caps hang on), so it is decided like a wider plan.
        let same_purpose = purpose == before.purpose;
        if same_purpose && within(&req.scope, &held) {
            return self.narrow(&task, purpose, req.scope, &before, held).await;
        }
        if task.delegation.is_some() {
            return Err(Error::new(
                Kind::Forbidden,
                "delegated_plan_widens",
                "a delegated task can only narrow its plan under the same purpose: ask the task above it to delegate anew",
            )
            .with_details(json!({ "widening": mandate_core::widening(&req.scope, &held) })));
        }
        self.widen(
            &task,
            purpose,
            req.scope,
            req.approval_id.as_deref(),
            &before,
            held,
        )
        .await
    }

    /// A plan within the grant: in force in memory first (it only takes away), then
    /// recorded.
    async fn narrow(
        &self,
        task: &Arc<LiveTask>,
        purpose: &str,
        scope: RequestedScope,
        before: &Plan,
        held: Grant,
    ) -> Result<Redeclared, Error> {
        let grant = held.intersect(&grant_of(&scope));
        let asked: BTreeSet<_> = scope
            .tools
            .iter()
            .flat_map(|t| scope.actions.iter().map(move |a| (t.clone(), *a)))
            .collect();
        let refused: Vec<ItemOutcome> = before
            .refused
            .iter()
            .filter(|i| asked.contains(&(i.tool.clone(), i.action)))
            .cloned()
            .collect();
        let plan = Plan {
            purpose: purpose.to_owned(),
            requested: scope.clone(),
            refused: refused.clone(),
        };
        task.redeclare(plan, grant.clone());
        // Decisions already past their grant check finish before this is acknowledged, and
        // approvals asked under the wider plan are void.
        task.drain().await;
        for d in self.descendants(&task.id) {
            d.drain().await;
        }
        self.invalidate_task_approvals(&task.id, &task.agent).await;
        self.record_plan(
            task, "narrower", purpose, &scope, before, held, &grant, &refused, None, None,
        )
        .await?;
        Ok(Redeclared {
            task_id: task.id.clone(),
            change: "narrower".to_owned(),
            applied: true,
            grant,
            items: Vec::new(),
            decision: None,
            approval: None,
        })
    }

    /// A plan beyond the grant: decided as a start would be, recorded, then in force.
    async fn widen(
        &self,
        task: &Arc<LiveTask>,
        purpose: &str,
        scope: RequestedScope,
        approval_id: Option<&str>,
        before: &Plan,
        held: Grant,
    ) -> Result<Redeclared, Error> {
        // A new purpose over no more than the task holds is decided too, but never gains.
        let change = if within(&scope, &held) {
            "repurposed"
        } else {
            "wider"
        };
        let bundle = self.bundle();
        let facts = task.facts();
        let entities = bundle
            .task_entities(
                &facts.0,
                &TaskFacts {
                    purpose: purpose.to_owned(),
                    ..facts.1.clone()
                },
                &scope.tools,
            )
            .map_err(Error::internal)?;
        let sd = bundle.decide_start(
            &entities,
            &StartRequest {
                scope: &scope,
                ttl_secs: task.ttl_secs,
                environment: &self.config.environment,
                now_secs: self.clock.now_secs(),
                sender_constrained: task.cnf_jkt.is_some(),
            },
        );
        if sd.decision.outcome == Outcome::Deny || sd.grant.is_empty() {
            let ev = NewEvent {
                ts_ms: self.clock.now_ms(),
                agent: Some(task.agent.to_string()),
                task_id: Some(task.id.clone()),
                body: Body::TaskRefused(TaskRefused {
                    code: Some("plan_refused".to_owned()),
                    message: Some(
                        "policy refused the task's wider plan; the plan before stays in force"
                            .to_owned(),
                    ),
                    purpose: Some(purpose.to_owned()),
                    requested: Some(scope.clone()),
                    decision: Some(sd.decision.clone()),
                    items: Some(sd.items.clone()),
                }),
            };
            self.audit.append(ev).await.map_err(|_| Error::audit())?;
            return Err(Error::new(
                Kind::Forbidden,
                "plan_refused",
                format!(
                    "policy refused the wider plan: {}; the plan before stays in force",
                    sd.decision.reasons.join("; ")
                ),
            )
            .with_details(json!({ "decision": sd.decision, "items": sd.items })));
        }
        let granted = if change == "repurposed" {
            sd.grant.intersect(&held)
        } else {
            sd.grant.clone()
        };
        let refused: Vec<ItemOutcome> = sd
            .items
            .iter()
            .filter(|i| i.outcome == Outcome::Deny)
            .cloned()
            .collect();
        let mut used = None;
        if sd.decision.outcome == Outcome::ApprovalRequired {
            let digest = plan_digest(task, purpose, &scope, bundle.version());
            let Some(approval_id) = approval_id else {
                let opened = self
                    .open_approval(Request {
                        kind: ApprovalKind::PlanChange,
                        task_id: &task.id,
                        agent: &task.agent,
                        owner: mandate_core::HumanId::from_stored(task.owner()),
                        digest,
                        action: json!({
                            "previous_purpose": before.purpose, "purpose": purpose,
                            "previous_requested": before.requested, "requested": scope,
                            "previous_grant": held, "grant": sd.grant,
                            "agent_tier": task.tier(),
                            "policies": sd.decision.policies, "reasons": sd.decision.reasons,
                        }),
                        decision: &sd.decision,
                        not_after_ms: task.expires_at(),
                    })
                    .await?;
                return Ok(Redeclared {
                    task_id: task.id.clone(),
                    change: change.to_owned(),
                    applied: false,
                    grant: held,
                    items: sd.items,
                    decision: Some(sd.decision),
                    approval: Some(ApprovalRef::from(&opened)),
                });
            };
            let a = self.load_approval(approval_id).await?;
            if a.task_id != task.id || a.kind != ApprovalKind::PlanChange || a.digest != digest {
                return Err(Error::new(
                    Kind::Forbidden,
                    "approval_mismatch",
                    format!(
                        "approval {approval_id} is not for this plan of task {} under the policy enforcing now",
                        task.id
                    ),
                ));
            }
            let now = self.clock.now_ms();
            if a.state != ApprovalState::Approved || now >= a.expires_at_ms {
                return Err(not_pending(&a, now));
            }
            self.still_valid_for_plan(&a).await?;
            if !self.consume(&a, task.agent.as_str()).await? {
                let a = self.load_approval(&a.id).await?;
                return Err(not_pending(&a, now));
            }
            used = Some(a.id.clone());
        }
        self.record_plan(
            task,
            change,
            purpose,
            &scope,
            before,
            held,
            &granted,
            &refused,
            Some(&sd.decision),
            used.as_deref(),
        )
        .await?;
        task.redeclare(
            Plan {
                purpose: purpose.to_owned(),
                requested: scope,
                refused,
            },
            granted,
        );
        if let Some(cap) = sd.ttl_cap_secs {
            let capped = task.created_at_ms.saturating_add(cap.saturating_mul(1000));
            task.expires_at_ms.fetch_min(capped, Ordering::SeqCst);
        }
        // A reload that swapped bundles after this plan was decided did not see it.
        self.catch_up(task, bundle.version()).await;
        Ok(Redeclared {
            task_id: task.id.clone(),
            change: change.to_owned(),
            applied: true,
            grant: task.current_grant(),
            items: sd.items,
            decision: Some(sd.decision),
            approval: None,
        })
    }

    async fn still_valid_for_plan(&self, a: &mandate_store::ApprovalRecord) -> Result<(), Error> {
        if self.bundle().version() != a.bundle_version {
            self.invalidate(a, "the policy changed since it was asked")
                .await;
            return Err(conflict(
                "approval_invalid",
                format!(
                    "the policy changed since approval {} was asked; it is void",
                    a.id
                ),
            ));
        }
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the plan before and after, as the record names them"
    )]
    async fn record_plan(
        &self,
        task: &LiveTask,
        change: &str,
        purpose: &str,
        scope: &RequestedScope,
        before: &Plan,
        held: Grant,
        grant: &Grant,
        refused: &[ItemOutcome],
        decision: Option<&Decision>,
        approval_id: Option<&str>,
    ) -> Result<(), Error> {
        let ev = NewEvent {
            ts_ms: self.clock.now_ms(),
            agent: Some(task.agent.to_string()),
            task_id: Some(task.id.clone()),
            body: Body::TaskRedeclared(TaskRedeclared {
                change: change.to_owned(),
                previous_purpose: before.purpose.clone(),
                purpose: purpose.to_owned(),
                previous_requested: before.requested.clone(),
                requested: scope.clone(),
                previous_grant: held,
                grant: grant.clone(),
                decision: decision.cloned(),
                approval_id: approval_id.map(str::to_owned),
            }),
        };
        let plan = TaskPlan {
            id: task.id.clone(),
            purpose: purpose.to_owned(),
            requested: scope.clone(),
            grant: grant.clone(),
            items: serde_json::to_value(refused).map_err(Error::internal)?,
        };
        let stored = self
            .store
            .redeclare_task(&plan, ev)
            .await
            .map_err(|e| Error::store(&e))?;
        if !stored {
            return Err(Error::new(
                Kind::Forbidden,
                "task_not_active",
                format!("task {} is no longer active", task.id),
            ));
        }
        Ok(())
    }
}

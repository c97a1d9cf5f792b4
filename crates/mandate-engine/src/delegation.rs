//! Delegation (R8): a live task hands a sub-task to another agent. The child's grant is
//! within what every task above it holds now, it ends no later than its parent, its depth
//! is bounded, policy decides the delegation itself, and its token's `act` claim nests
//! the whole chain (RFC 8693 §4.1).

use std::sync::Arc;

use mandate_audit::{Body, DelegationRefused, Inherited, NewEvent, TaskDelegated};
use mandate_core::{
    Decision, Delegation, DelegationLink, Grant, ItemOutcome, RequestedScope, SpiffeId, TaskState,
    widening,
};
use mandate_policy::{DelegateRequest, Outcome, StartRequest, TaskFacts};
use mandate_store::TaskRecord;
use mandate_token::Act;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, LiveTask, lock};
use crate::error::{Error, Kind};
use crate::tasks::{TokenFor, checked_text, rng_failed};

/// The sub-task asked for: the `mandate_task` entry of RFC 9396 `authorization_details`,
/// whose fields are a task start's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubTask {
    /// Always `mandate_task`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The sub-task's declared intent.
    pub purpose: String,
    /// Tools it needs (each in the parent's grant).
    pub tools: Vec<mandate_core::ToolName>,
    /// Action classes it needs on them (each granted to the parent on every tool asked).
    pub actions: Vec<mandate_core::ActionClass>,
    /// Data domains it touches (each in the parent's grant).
    #[serde(default)]
    pub data_domains: Vec<mandate_core::DataDomain>,
    /// Destinations it sends data to (each in the parent's grant).
    #[serde(default)]
    pub destinations: Vec<mandate_core::Destination>,
    /// Lifetime, seconds (default: the server's default, cut to what the parent has left;
    /// asking for more than the parent has left is refused).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
    /// The key the child's tokens are bound to (RFC 9449 `cnf.jkt`): the thumbprint of
    /// the key of a DPoP proof that came with the exchange, never from the body.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub bind_jkt: Option<String>,
}

impl SubTask {
    /// The scope it asks for.
    pub fn scope(&self) -> RequestedScope {
        RequestedScope {
            tools: self.tools.clone(),
            actions: self.actions.clone(),
            data_domains: self.data_domains.clone(),
            destinations: self.destinations.clone(),
        }
    }
}

/// A delegated task and its token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delegated {
    /// The child task's id.
    pub task_id: String,
    /// Always `active`.
    pub state: TaskState,
    /// The child's declared intent.
    pub purpose: String,
    /// The child's task token: `sub` is the root task's agent, `act` nests every actor
    /// below it, the child outermost.
    pub task_token: String,
    /// When the child expires (unix ms; never after its parent).
    pub expires_at_ms: i64,
    /// What the child may do.
    pub grant: Grant,
    /// Each requested pair and how policy answered it for the child agent.
    pub items: Vec<ItemOutcome>,
    /// The `delegate` decision.
    pub decision: Decision,
    /// Where the child sits in its chain.
    pub delegation: Delegation,
}

/// Why a delegation failed, with what the audit record keeps of it.
struct Refusal {
    error: Error,
    child_agent: Option<String>,
    requested: Option<RequestedScope>,
    parent_grant: Option<Grant>,
    widening: Vec<String>,
    decision: Option<Decision>,
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Self {
        Self {
            error,
            child_agent: None,
            requested: None,
            parent_grant: None,
            widening: Vec::new(),
            decision: None,
        }
    }
}

fn refused(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(Kind::Forbidden, code, message)
}

impl Engine {
    /// Delegates a sub-task of the task whose token is `subject_token` to the agent whose
    /// identity token is `actor_token`. Every refusal is recorded with what was asked and
    /// what the parent held.
    pub async fn delegate_task(
        &self,
        subject_token: &str,
        actor_token: &str,
        sub: SubTask,
    ) -> Result<Delegated, Error> {
        let parent = self.task_for_token(subject_token).map_err(|r| {
            let mut e = r.error;
            if e.kind == Kind::Unauthenticated || e.code.starts_with("token_") {
                e.code = "invalid_subject_token";
            } else {
                e.code = "parent_not_active";
            }
            e
        });
        let parent = match parent {
            Ok(p) => p,
            Err(e) => {
                // No genuine parent: recorded through the unauthenticated budget.
                let ev = self.refusal_event(None, &Refusal::from(e.clone()));
                if self.record_anonymous(ev).await.is_err() {
                    return Err(Error::audit());
                }
                return Err(e);
            }
        };
        match self.delegate_inner(&parent, actor_token, sub).await {
            Ok(d) => Ok(d),
            Err(r) if matches!(r.error.code, "audit_unavailable" | "store_unavailable") => {
                Err(r.error)
            }
            Err(r) => {
                let ev = self.refusal_event(Some(&parent), &r);
                if self.audit.append(ev).await.is_err() {
                    return Err(Error::audit());
                }
                Err(r.error)
            }
        }
    }

    fn refusal_event(&self, parent: Option<&LiveTask>, r: &Refusal) -> NewEvent {
        NewEvent {
            ts_ms: self.clock.now_ms(),
            agent: parent.map(|p| p.agent.to_string()),
            task_id: parent.map(|p| p.id.clone()),
            body: Body::DelegationRefused(DelegationRefused {
                code: r.error.code.to_owned(),
                message: r.error.message.clone(),
                child_agent: r.child_agent.clone(),
                requested: r.requested.clone(),
                parent_grant: r.parent_grant.clone(),
                widening: r.widening.clone(),
                decision: r.decision.clone(),
            }),
        }
    }

    async fn delegate_inner(
        &self,
        parent: &Arc<LiveTask>,
        actor_token: &str,
        sub: SubTask,
    ) -> Result<Delegated, Refusal> {
        if parent.break_glass.is_some() {
            return Err(refused(
                "parent_not_delegable",
                "a break-glass grant cannot be delegated",
            )
            .into());
        }
        let (child_spiffe, child) = self.acting_agent(actor_token).await.map_err(|mut e| {
            if e.code != "agent_not_active" {
                e.code = "invalid_actor_token";
            }
            Refusal::from(e)
        })?;
        let scope = sub.scope();
        let held = parent.effective_grant();
        let mut refusal = |error: Error| Refusal {
            error,
            child_agent: Some(child.name.to_string()),
            requested: Some(scope.clone()),
            parent_grant: Some(held.clone()),
            widening: Vec::new(),
            decision: None,
        };
        if let Err(e) = self.require_binding(child.tier, sub.bind_jkt.as_deref()) {
            return Err(refusal(e));
        }
        if sub.kind != "mandate_task" {
            return Err(refusal(Error::new(
                Kind::Invalid,
                "invalid_authorization_details",
                format!(
                    "authorization_details entry of type {:?}: only `mandate_task` is understood",
                    sub.kind
                ),
            )));
        }
        let limits = &self.config.limits;
        let purpose = checked_text("purpose", &sub.purpose, limits.max_purpose_chars, true)
            .map_err(&mut refusal)?
            .to_owned();
        scope
            .check_bounds(limits.max_scope_items)
            .map_err(|e| refusal(Error::unprocessable(e.to_string())))?;
        let depth = parent.delegation.as_ref().map_or(0, |d| d.depth) + 1;
        if depth > limits.max_delegation_depth {
            return Err(refusal(refused(
                "delegation_too_deep",
                format!(
                    "task {} is at depth {} of its delegation chain; at most {} are allowed",
                    parent.id,
                    depth - 1,
                    limits.max_delegation_depth
                ),
            )));
        }
        let children = self
            .descendants(&parent.id)
            .iter()
            .filter(|d| d.parent.as_ref().is_some_and(|p| p.id == parent.id))
            .count();
        if children >= limits.max_delegates_per_task {
            return Err(refusal(refused(
                "too_many_delegates",
                format!(
                    "task {} has {children} live delegates; at most {} at once",
                    parent.id, limits.max_delegates_per_task
                ),
            )));
        }
        let now_ms = self.clock.now_ms();
        let now_secs = self.clock.now_secs();
        let left_secs = (parent.expires_at() - now_ms).div_euclid(1000);
        if left_secs < 1 {
            return Err(refusal(refused(
                "parent_not_active",
                format!("task {} is about to expire", parent.id),
            )));
        }
        let mut wider = widening(&scope, &held);
        let ttl = match sub.ttl_secs {
            None => limits.default_task_ttl_secs.min(left_secs),
            Some(t) if t <= 0 || t > limits.max_task_ttl_secs => {
                return Err(refusal(Error::unprocessable(format!(
                    "ttl_secs must be between 1 and {}",
                    limits.max_task_ttl_secs
                ))));
            }
            Some(t) => {
                if t > left_secs {
                    wider.push(format!(
                        "ttl_secs {t} outlives the parent, which has {left_secs} s left"
                    ));
                }
                t
            }
        };
        if !wider.is_empty() {
            let mut r = refusal(
                Error::new(
                    Kind::Forbidden,
                    "delegation_widens",
                    format!(
                        "the sub-task asks for more than task {} holds: {}",
                        parent.id,
                        wider.join("; ")
                    ),
                )
                .with_details(serde_json::json!({ "widening": wider, "parent_grant": held })),
            );
            r.widening = wider;
            return Err(r);
        }

        let task_id = self
            .config
            .ids
            .id("tsk")
            .map_err(|e| refusal(rng_failed(e)))?;
        let jti = self
            .config
            .ids
            .id("jti")
            .map_err(|e| refusal(rng_failed(e)))?;
        let link = |t: &str, a: &mandate_core::AgentName| DelegationLink {
            task_id: t.to_owned(),
            agent: a.clone(),
        };
        let delegation = Delegation::child_of(
            parent.delegation.as_ref(),
            link(&parent.id, &parent.agent),
            parent.owner(),
            link(&task_id, &child.name),
        );
        let bundle = self.bundle();
        let child_facts = self.agent_facts(&child);
        let task_facts = TaskFacts {
            id: task_id.clone(),
            purpose: purpose.clone(),
            environment: self.config.environment.clone(),
            delegation: Some(delegation.clone()),
        };
        let parent_entities = parent
            .entities_for(&bundle)
            .map_err(|e| refusal(Error::internal(e)))?;
        let decision = bundle.decide_delegate(
            &parent_entities,
            &DelegateRequest {
                child: &child_facts,
                purpose: &purpose,
                scope: &scope,
                ttl_secs: ttl,
                delegation: &mandate_policy::delegation_record(&child_facts, &task_facts),
                environment: &self.config.environment,
                now_secs,
            },
        );
        let policy_refusal = |r: &mut dyn FnMut(Error) -> Refusal,
                              decision: &Decision,
                              items: Option<&[ItemOutcome]>,
                              what: &str|
         -> Refusal {
            let (code, message) = if decision.outcome == Outcome::ApprovalRequired {
                (
                    "delegation_needs_approval",
                    format!(
                        "policy holds {what} for a human, and a delegated task cannot wait on an approval to start: {}",
                        decision.reasons.join("; ")
                    ),
                )
            } else {
                (
                    "delegation_refused",
                    format!("policy refused {what}: {}", decision.reasons.join("; ")),
                )
            };
            let mut out = r(Error::new(Kind::Forbidden, code, message)
                .with_details(serde_json::json!({ "decision": decision, "items": items })));
            out.decision = Some(decision.clone());
            out
        };
        if decision.outcome != Outcome::Allow {
            return Err(policy_refusal(
                &mut refusal,
                &decision,
                None,
                "this delegation",
            ));
        }
        // The child is also held to what it could get by itself: its own start and grant
        // policies, as its own agent.
        let entities = bundle
            .task_entities(&child_facts, &task_facts, &scope.tools)
            .map_err(|e| refusal(Error::internal(e)))?;
        let sd = bundle.decide_start(
            &entities,
            &StartRequest {
                scope: &scope,
                ttl_secs: ttl,
                environment: &self.config.environment,
                now_secs,
                sender_constrained: sub.bind_jkt.is_some(),
            },
        );
        if sd.decision.outcome != Outcome::Allow {
            return Err(policy_refusal(
                &mut refusal,
                &sd.decision,
                Some(&sd.items),
                "a task with this scope for the child agent",
            ));
        }
        let grant = sd.grant.intersect(&held);
        if grant.is_empty() {
            let mut r = refusal(
                Error::new(
                    Kind::Forbidden,
                    "delegation_refused",
                    "policy granted the child agent none of the requested tool/action pairs",
                )
                .with_details(serde_json::json!({ "items": sd.items })),
            );
            r.decision = Some(sd.decision.clone());
            return Err(r);
        }
        let granted_ttl = sd.ttl_cap_secs.map_or(ttl, |cap| cap.min(ttl));
        let exp_secs = now_secs + granted_ttl;
        let expires_at_ms = (exp_secs * 1000).min(parent.expires_at());
        let inherited = {
            let h = lock(&parent.history);
            Inherited {
                untrusted_content: h.untrusted_content,
                data_domains: h.data_domains.iter().cloned().collect(),
                sensitive_reads: h.sensitive_reads,
            }
        };
        let record = TaskRecord {
            id: task_id.clone(),
            agent: child.name.clone(),
            purpose: purpose.clone(),
            requested: scope.clone(),
            grant: grant.clone(),
            items: serde_json::to_value(&sd.items).map_err(|e| refusal(Error::internal(e)))?,
            state: TaskState::Active,
            bundle_version: bundle.version().to_owned(),
            token_jti: jti.clone(),
            created_at_ms: now_ms,
            expires_at_ms,
            ended_at_ms: None,
            end_reason: None,
            delegation: Some(delegation.clone()),
            step_up: false,
            cnf_jkt: sub.bind_jkt.clone(),
        };
        // RFC 8693 §4.1: the subject stays the root task's agent; the actors nest, the
        // one acting now outermost.
        let spiffe = |l: &DelegationLink| {
            SpiffeId::for_agent(self.config.trust_domain.clone(), l.agent.clone()).to_string()
        };
        let actors: Vec<String> = delegation.chain.iter().skip(1).map(spiffe).collect();
        let root = delegation
            .chain
            .first()
            .map(spiffe)
            .unwrap_or_else(|| child_spiffe.to_string());
        let token = self
            .issue_task_token(TokenFor {
                subject: &root,
                task_id: &task_id,
                jti: &jti,
                grant: grant.clone(),
                expires_at_secs: expires_at_ms.div_euclid(1000),
                act: Act::chain(actors.iter().rev().map(String::as_str)),
                cnf_jkt: sub.bind_jkt.clone(),
            })
            .map_err(&mut refusal)?;
        let ev = NewEvent {
            ts_ms: now_ms,
            agent: Some(child.name.to_string()),
            task_id: Some(task_id.clone()),
            body: Body::TaskDelegated(TaskDelegated {
                purpose: purpose.clone(),
                delegation: delegation.clone(),
                requested: scope.clone(),
                parent_grant: held.clone(),
                grant: grant.clone(),
                items: sd.items.clone(),
                decision: decision.clone(),
                ttl_secs: granted_ttl,
                expires_at_ms,
                inherited: inherited.clone(),
            }),
        };
        self.store
            .insert_task(&record, ev)
            .await
            .map_err(|e| match e {
                mandate_store::StoreError::NotFound(_) => refusal(refused(
                    "parent_not_active",
                    format!(
                        "task {} or agent {} stopped being active while the delegation was made",
                        parent.id, child.name
                    ),
                )),
                other => Refusal::from(Error::store(&other)),
            })?;
        let live = match self.live_task(&child, &record) {
            Ok(l) => l,
            Err(e) => {
                // The parent left memory between the insert and now (it ended): the row
                // just written must not stay active with nobody to end it.
                self.remember_end(
                    &task_id,
                    crate::engine::cascade_end(
                        &child.name,
                        &format!("task {} ended while it was delegating", parent.id),
                        "mandate",
                    ),
                );
                return Err(refusal(e));
            }
        };
        // Shared context does not launder privilege: the child starts with the facts of
        // its parent that would have held or denied the parent's own calls.
        let row = live.change_history(|h| {
            h.untrusted_content = inherited.untrusted_content;
            h.data_domains = inherited.data_domains.iter().cloned().collect();
            h.sensitive_reads = inherited.sensitive_reads;
        });
        self.audit.defer_history(row);
        self.catch_up(&live, bundle.version()).await;
        let grant = live.current_grant();
        let expires_at_ms = live.expires_at();
        self.go_live(
            Arc::clone(&live),
            &[TaskState::Active],
            "the delegation was made",
        )
        .await
        .map_err(&mut refusal)?;
        // An end of the parent that looked for its descendants before this child was
        // live did not see it: it sees the parent ended, and ends itself.
        if live.is_ended() || live.ancestors().any(|a| a.is_ended()) {
            let end = crate::engine::cascade_end(
                &child.name,
                &format!("task {} ended while it was delegating", parent.id),
                "mandate",
            );
            if let Err(e) = self.end_task(&task_id, end).await {
                tracing::error!(task = %task_id, error = %e, "not recorded yet; retried by the sweeper");
            }
            return Err(refusal(refused(
                "parent_not_active",
                format!("task {} ended while it was delegating", parent.id),
            )));
        }
        Ok(Delegated {
            task_id,
            state: TaskState::Active,
            purpose,
            task_token: token,
            expires_at_ms,
            grant,
            items: sd.items,
            decision,
            delegation,
        })
    }
}

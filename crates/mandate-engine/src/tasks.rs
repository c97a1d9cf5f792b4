//! Tasks: the one start path (start, activation after an approval, break-glass), the one
//! function that issues task tokens, and task ends (complete, revoke).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mandate_audit::{
    Body, BreakGlassDeclared, NewEvent, TaskEnd, TaskEnded, TaskRefused,
    TaskStarted as TaskStartedBody,
};
use mandate_core::{
    AgentName, AgentStatus, ApprovalKind, Grant, RequestedScope, SpiffeId, TaskState,
};
use mandate_policy::{Decision, ItemOutcome, Outcome, StartRequest, TaskFacts};
use mandate_store::{AgentRecord, ApproverRecord, BreakGlassRecord, TaskRecord};
use mandate_token::TaskClaims;
use serde::{Deserialize, Serialize};

use crate::approvals::{ApprovalRef, Request, start_digest};
use crate::engine::{Engine, LiveTask, PendingEnd};
use crate::error::{Error, Kind};

/// Longest task id accepted from a caller.
pub const MAX_TASK_ID_BYTES: usize = 64;

/// An agent's ask to start a task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = StartTaskRequest))]
pub struct TaskStart {
    /// The declared intent, in plain words.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 1024,
            pattern = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f]*$"
        )
    )]
    pub purpose: String,
    /// What the task needs.
    pub scope: RequestedScope,
    /// Lifetime asked for, seconds (default 900; at most the server's maximum).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3600))]
    pub ttl_secs: Option<i64>,
    /// The key the task's tokens are bound to (RFC 9449 `cnf.jkt`): the thumbprint of the
    /// key of a DPoP proof that came with the request, never from the body.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub bind_jkt: Option<String>,
}

/// A task that started (or waits on an approval to start).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = StartTaskResponse))]
pub struct Started {
    /// Task id.
    pub task_id: String,
    /// `active` (token issued) or `pending` (waiting on an approval; no token).
    pub state: TaskState,
    /// The task token, when active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_token: Option<String>,
    /// When the task (and its token) expires, unix ms.
    pub expires_at_ms: i64,
    /// What was granted.
    pub grant: Grant,
    /// Each requested (tool, action) pair and how policy answered it.
    pub items: Vec<ItemOutcome>,
    /// The `start_task` decision.
    pub decision: Decision,
    /// The approval the start waits for, when `pending`: once approved, exchange it for
    /// the token at `POST /v1/tasks/{id}/activate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
}

/// An approver's declaration of break-glass: an emergency grant for an agent, outside
/// policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = BreakGlassRequest))]
pub struct BreakGlass {
    /// The agent that will act.
    pub agent: AgentName,
    /// Why this cannot wait for the normal path (mandatory, at least 20 characters).
    #[cfg_attr(feature = "openapi", schema(min_length = 20, max_length = 2048))]
    pub justification: String,
    /// What the emergency needs.
    pub scope: RequestedScope,
    /// Lifetime, seconds (default and maximum: the server's break-glass limit).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1800))]
    pub ttl_secs: Option<i64>,
    /// The approver group alerted through its webhook (default `default`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub alert_group: Option<String>,
}

/// A declared break-glass and the task token it grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = BreakGlassResponse))]
pub struct BreakGlassIssued {
    /// The record (its after-review is open).
    pub break_glass: BreakGlassRecord,
    /// The task token for the agent.
    pub task_token: String,
    /// What is granted.
    pub grant: Grant,
}

/// A task after a transition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = TaskStateResponse))]
pub struct Transitioned {
    /// Task id.
    pub task_id: String,
    /// Its state now.
    pub state: TaskState,
}

/// Trims `value` and checks it is 1 to `max` printable characters (newlines allowed when
/// `newline_ok`), naming `field` when it is not.
pub fn checked_text<'a>(
    field: &str,
    value: &'a str,
    max: usize,
    newline_ok: bool,
) -> Result<&'a str, Error> {
    let t = value.trim();
    let bad_char = |c: char| c.is_control() && !(newline_ok && c == '\n');
    if t.is_empty() || value.chars().count() > max || value.chars().any(bad_char) {
        return Err(Error::unprocessable(format!(
            "{field} must be 1-{max} printable characters"
        )));
    }
    Ok(t)
}

/// Checks an approver group name: 1-64 of a-z, 0-9, '-' and '_'.
pub fn checked_group(v: &str) -> Result<(), Error> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::unprocessable(
            "a group name is 1-64 of a-z, 0-9, '-' and '_'",
        ))
    }
}

pub(crate) fn rng_failed(_: impl std::fmt::Debug) -> Error {
    Error::internal("system RNG failed")
}

pub(crate) fn agent_gone(name: &AgentName, while_: &str) -> Error {
    Error::new(
        Kind::Forbidden,
        "agent_not_active",
        format!("agent {name} stopped being active while {while_}"),
    )
}

/// The grant of a break-glass: every requested tool with every requested action.
pub(crate) fn grant_of(scope: &RequestedScope) -> Grant {
    let actions: BTreeSet<_> = scope.actions.iter().copied().collect();
    Grant {
        tools: scope
            .tools
            .iter()
            .map(|t| (t.clone(), actions.clone()))
            .collect(),
        data_domains: scope.data_domains.iter().cloned().collect(),
        destinations: scope.destinations.iter().cloned().collect(),
    }
}

/// What a task token says: the one input of [`Engine::issue_task_token`].
pub(crate) struct TokenFor<'a> {
    pub subject: &'a str,
    pub task_id: &'a str,
    pub jti: &'a str,
    pub grant: Grant,
    pub expires_at_secs: i64,
    /// The delegation chain's actors (RFC 8693 `act`), for a delegated task.
    pub act: Option<mandate_token::Act>,
    /// The key the token is bound to (RFC 9449), when sender-constrained.
    pub cnf_jkt: Option<String>,
}

impl Engine {
    /// Issues a task token: the one place task-token claims are built and signed.
    pub(crate) fn issue_task_token(&self, t: TokenFor<'_>) -> Result<String, Error> {
        let now_secs = self.clock.now_secs();
        let claims = TaskClaims {
            iss: self.issuer.clone(),
            sub: t.subject.to_owned(),
            aud: self.config.task_audience.clone(),
            exp: t.expires_at_secs,
            iat: now_secs,
            nbf: now_secs,
            jti: t.jti.to_owned(),
            task_id: t.task_id.to_owned(),
            grant: t.grant,
            act: t.act,
            cnf: t.cnf_jkt.map(|jkt| mandate_token::Confirmation { jkt }),
        };
        Ok(mandate_token::sign(&self.keys(), &claims)?)
    }

    /// The registered, active agent an identity token names.
    pub(crate) async fn acting_agent(
        &self,
        identity_token: &str,
    ) -> Result<(SpiffeId, AgentRecord), Error> {
        let claims = self.verify_identity(identity_token)?;
        let spiffe = self.agent_of(&claims)?;
        let agent = self
            .store
            .agent(spiffe.agent())
            .await
            .map_err(|e| Error::store(&e))?
            .ok_or_else(|| {
                Error::new(
                    Kind::Forbidden,
                    "agent_not_active",
                    format!("agent {} is not registered", spiffe.agent()),
                )
            })?;
        if agent.status != AgentStatus::Active {
            return Err(Error::new(
                Kind::Forbidden,
                "agent_not_active",
                format!("agent {} is {}", agent.name, agent.status),
            ));
        }
        Ok((spiffe, agent))
    }

    /// Makes a stored task live, then looks at the store again: a quarantine that
    /// committed between the insert and now revoked the task without seeing it in memory,
    /// and its token must never work for a contained agent.
    pub(crate) async fn go_live(
        &self,
        live: Arc<LiveTask>,
        states: &[TaskState],
        while_: &str,
    ) -> Result<(), Error> {
        let id = live.id.clone();
        let agent = live.agent.clone();
        self.insert_live(live);
        let stored = self.store.task(&id).await;
        if !matches!(&stored, Ok(Some(t)) if states.contains(&t.state)) {
            self.end_live(&id);
            return Err(agent_gone(&agent, while_));
        }
        Ok(())
    }

    /// Starts a task for the agent whose identity token is presented: policy decides what
    /// is granted. Every refusal is recorded, with its decision where policy refused.
    pub async fn start_task(&self, identity_token: &str, req: TaskStart) -> Result<Started, Error> {
        match self.start_inner(identity_token, req).await {
            // Refusals by policy are recorded with their decision; failures of the store
            // or audit cannot be. Every other refusal is recorded here.
            Err(e)
                if !matches!(
                    e.code,
                    "task_refused" | "audit_unavailable" | "store_unavailable" | "internal_error"
                ) =>
            {
                let agent = self
                    .verify_identity(identity_token)
                    .ok()
                    .and_then(|c| SpiffeId::parse(&c.sub).ok())
                    .map(|s| s.agent().to_string());
                let ev = NewEvent {
                    ts_ms: self.clock.now_ms(),
                    agent,
                    task_id: None,
                    body: Body::TaskRefused(TaskRefused {
                        code: Some(e.code.to_owned()),
                        message: Some(e.message.clone()),
                        purpose: None,
                        requested: None,
                        decision: None,
                        items: None,
                    }),
                };
                if self.record_refusal(ev).await.is_err() {
                    return Err(Error::audit());
                }
                Err(e)
            }
            other => other,
        }
    }

    async fn start_inner(&self, identity_token: &str, req: TaskStart) -> Result<Started, Error> {
        let (spiffe, agent) = self.acting_agent(identity_token).await?;
        self.require_binding(agent.tier, req.bind_jkt.as_deref())?;
        let limits = &self.config.limits;
        let purpose = checked_text("purpose", &req.purpose, limits.max_purpose_chars, true)?;
        req.scope
            .check_bounds(limits.max_scope_items)
            .map_err(|e| Error::unprocessable(e.to_string()))?;
        let ttl = req.ttl_secs.unwrap_or(limits.default_task_ttl_secs);
        if ttl <= 0 || ttl > limits.max_task_ttl_secs {
            return Err(Error::unprocessable(format!(
                "ttl_secs must be between 1 and {}",
                limits.max_task_ttl_secs
            )));
        }

        let task_id = self.config.ids.id("tsk").map_err(rng_failed)?;
        let jti = self.config.ids.id("jti").map_err(rng_failed)?;
        let now_ms = self.clock.now_ms();
        let now_secs = self.clock.now_secs();
        let bundle = self.bundle();
        let entities = bundle
            .task_entities(
                &self.agent_facts(&agent),
                &TaskFacts {
                    id: task_id.clone(),
                    purpose: purpose.to_owned(),
                    environment: self.config.environment.clone(),
                    delegation: None,
                },
                &req.scope.tools,
            )
            .map_err(Error::internal)?;
        let sd = bundle.decide_start(
            &entities,
            &StartRequest {
                scope: &req.scope,
                ttl_secs: ttl,
                environment: &self.config.environment,
                now_secs,
                sender_constrained: req.bind_jkt.is_some(),
            },
        );
        let items = serde_json::to_value(&sd.items).map_err(Error::internal)?;

        if sd.decision.outcome == Outcome::Deny || sd.grant.is_empty() {
            let ev = NewEvent {
                ts_ms: now_ms,
                agent: Some(agent.name.to_string()),
                task_id: Some(task_id.clone()),
                body: Body::TaskRefused(TaskRefused {
                    code: None,
                    message: None,
                    purpose: Some(purpose.to_owned()),
                    requested: Some(req.scope.clone()),
                    decision: Some(sd.decision.clone()),
                    items: Some(sd.items.clone()),
                }),
            };
            self.audit.append(ev).await.map_err(|_| Error::audit())?;
            let message = if sd.decision.outcome == Outcome::Deny {
                format!(
                    "policy refused to start this task: {}",
                    sd.decision.reasons.join("; ")
                )
            } else {
                "policy granted none of the requested tool/action pairs".to_owned()
            };
            return Err(Error::new(Kind::Forbidden, "task_refused", message).with_details(
                serde_json::json!({ "task_id": task_id, "decision": sd.decision, "items": sd.items }),
            ));
        }

        let granted_ttl = sd.ttl_cap_secs.map_or(ttl, |cap| cap.min(ttl));
        let exp = now_secs + granted_ttl;
        let pending = sd.decision.outcome == Outcome::ApprovalRequired;
        let state = if pending {
            TaskState::Pending
        } else {
            TaskState::Active
        };
        let record = TaskRecord {
            id: task_id.clone(),
            agent: agent.name.clone(),
            purpose: purpose.to_owned(),
            requested: req.scope.clone(),
            grant: sd.grant.clone(),
            items: items.clone(),
            state,
            bundle_version: bundle.version().to_owned(),
            token_jti: jti.clone(),
            created_at_ms: now_ms,
            expires_at_ms: exp * 1000,
            ended_at_ms: None,
            end_reason: None,
            delegation: None,
            step_up: false,
            cnf_jkt: req.bind_jkt.clone(),
        };
        let token = if pending {
            None
        } else {
            Some(self.issue_task_token(TokenFor {
                subject: &spiffe.to_string(),
                task_id: &task_id,
                jti: &jti,
                grant: sd.grant.clone(),
                expires_at_secs: exp,
                act: None,
                cnf_jkt: req.bind_jkt.clone(),
            })?)
        };
        let ev = NewEvent {
            ts_ms: now_ms,
            agent: Some(agent.name.to_string()),
            task_id: Some(task_id.clone()),
            body: Body::TaskStarted(TaskStartedBody {
                purpose: purpose.to_owned(),
                state,
                requested: req.scope.clone(),
                grant: sd.grant.clone(),
                items: sd.items.clone(),
                decision: sd.decision.clone(),
                ttl_secs: granted_ttl,
                expires_at_ms: record.expires_at_ms,
            }),
        };
        self.store
            .insert_task(&record, ev)
            .await
            .map_err(|e| match e {
                mandate_store::StoreError::NotFound(_) => {
                    agent_gone(&agent.name, "the task was starting")
                }
                other => Error::store(&other),
            })?;
        let live = self.live_task(&agent, &record)?;
        self.insert_live(Arc::clone(&live));
        let approval = if pending {
            let opened = self
                .open_approval(Request {
                    kind: ApprovalKind::TaskStart,
                    task_id: &task_id,
                    agent: &agent.name,
                    owner: agent.owner.clone(),
                    digest: start_digest(&task_id, &agent.name, &req.scope, ttl, bundle.version()),
                    action: serde_json::json!({
                        "purpose": purpose, "requested": req.scope, "ttl_secs": granted_ttl,
                        "grant": sd.grant, "agent_tier": agent.tier.get(),
                        "policies": sd.decision.policies, "reasons": sd.decision.reasons,
                    }),
                    decision: &sd.decision,
                    not_after_ms: record.expires_at_ms,
                })
                .await;
            match opened {
                Ok(a) => Some(ApprovalRef::from(&a)),
                Err(e) => {
                    let end = PendingEnd {
                        from: vec![TaskState::Pending],
                        to: TaskState::Revoked,
                        kind: TaskEnd::Revoked,
                        reason: format!("its approval request could not be opened ({})", e.code),
                        by: "mandate".into(),
                        agent: agent.name.to_string(),
                        detail: TaskEnded::default(),
                    };
                    if let Err(err) = self.end_task(&task_id, end).await {
                        tracing::error!(task = %task_id, error = %err, "not recorded yet; retried by the sweeper");
                    }
                    return Err(e);
                }
            }
        } else {
            None
        };
        // A reload that swapped bundles after this start was decided did not see this
        // task: re-decide it under the bundle enforcing now.
        self.catch_up(&live, bundle.version()).await;
        if live.is_ended() {
            return Err(Error::new(
                Kind::Forbidden,
                "task_refused",
                "the policy changed while the task was starting, and the new policy does not permit it",
            ));
        }
        let grant = live.current_grant();
        let expires_at_ms = live.expires_at();
        self.go_live(
            live,
            &[TaskState::Active, TaskState::Pending],
            "the task was starting",
        )
        .await?;
        Ok(Started {
            task_id,
            state,
            task_token: token,
            expires_at_ms,
            grant,
            items: sd.items,
            decision: sd.decision,
            approval,
        })
    }

    /// Exchanges an approved task start for the task token (the agent's identity token).
    /// The approval is used once; a second exchange is refused.
    pub async fn activate_task(
        &self,
        identity_token: &str,
        id: &str,
        approval_id: &str,
        wait: Duration,
    ) -> Result<Started, Error> {
        let claims = self.verify_identity(identity_token)?;
        let max_wait = u64::try_from(self.config.limits.max_approval_wait_secs).unwrap_or(0);
        if wait > Duration::from_secs(max_wait) {
            return Err(Error::unprocessable(format!(
                "wait_secs must be at most {max_wait}"
            )));
        }
        let record = self.load_task(id).await?;
        let live = self.live_get(id).filter(|t| !t.is_ended());
        let Some(live) = live.filter(|t| t.spiffe_id == claims.sub) else {
            return Err(Error::new(
                Kind::Forbidden,
                "task_not_active",
                format!("task {id} is not a live task of this agent"),
            ));
        };
        if !live.is_pending() {
            return Err(Error::new(
                Kind::Conflict,
                "task_not_pending",
                format!("task {id} is not waiting on an approval"),
            ));
        }
        // Everything that can fail is prepared before the approval is used, so a failure
        // leaves it usable for a retry.
        let items: Vec<ItemOutcome> = serde_json::from_value(record.items).unwrap_or_default();
        let decision: Decision = self
            .store
            .task_events(id)
            .await
            .map_err(|e| Error::store(&e))?
            .into_iter()
            .find_map(|e| match e.body() {
                Ok(Body::TaskStarted(started)) => Some(started.decision),
                _ => None,
            })
            .ok_or_else(|| {
                Error::internal("the task's start decision is missing from its events")
            })?;
        let sign = || {
            self.issue_task_token(TokenFor {
                subject: &live.spiffe_id,
                task_id: id,
                jti: &live.token_jti,
                grant: live.current_grant(),
                expires_at_secs: live.expires_at().div_euclid(1000),
                act: None,
                cnf_jkt: live.cnf_jkt.clone(),
            })
        };
        let (a, token) = self.activate_start(&live, approval_id, wait, sign).await?;
        Ok(Started {
            task_id: id.to_owned(),
            state: TaskState::Active,
            task_token: Some(token),
            expires_at_ms: live.expires_at(),
            grant: live.current_grant(),
            items,
            decision,
            approval: Some(ApprovalRef::from(&a)),
        })
    }

    /// Declares break-glass for `human` (who holds the `break_glass` role): every call
    /// under it is allowed within its grant, audited as break-glass, and alerts the group;
    /// its after-review stays open until someone else closes it.
    pub async fn declare_break_glass(
        &self,
        human: &ApproverRecord,
        req: BreakGlass,
    ) -> Result<BreakGlassIssued, Error> {
        let justification = checked_text("justification", &req.justification, 2048, true)?;
        if justification.chars().count() < 20 {
            return Err(Error::new(
                Kind::Unprocessable,
                "justification_required",
                "break-glass needs a justification of at least 20 characters: say what is broken and why it cannot wait",
            ));
        }
        let limits = &self.config.limits;
        req.scope
            .check_bounds(limits.max_scope_items)
            .map_err(|e| Error::unprocessable(e.to_string()))?;
        let max = limits.max_break_glass_ttl_secs;
        let ttl = req.ttl_secs.unwrap_or(max);
        if !(1..=max).contains(&ttl) {
            return Err(Error::unprocessable(format!(
                "ttl_secs must be between 1 and {max}"
            )));
        }
        let alert_group = req
            .alert_group
            .clone()
            .unwrap_or_else(|| mandate_policy::DEFAULT_APPROVER_GROUP.to_owned());
        checked_group(&alert_group)?;
        let agent = self
            .store
            .agent(&req.agent)
            .await
            .map_err(|e| Error::store(&e))?
            .filter(|a| a.status == AgentStatus::Active)
            .ok_or_else(|| Error::not_found(format!("no active agent named {}", req.agent)))?;
        // One emergency at a time per agent: grants cannot be chained back to back.
        if let Some(open) = self.live_break_glass(&agent.name) {
            return Err(Error::new(
                Kind::Conflict,
                "break_glass_active",
                format!(
                    "agent {} already holds break-glass {}: end it (revoke its task) before declaring another",
                    agent.name, open
                ),
            ));
        }
        let alert_webhook = self
            .store
            .approver_group(&alert_group)
            .await
            .map_err(|e| Error::store(&e))?
            .is_some_and(|g| g.webhook_url.is_some());
        let id = self.config.ids.id("bg").map_err(rng_failed)?;
        let task_id = self.config.ids.id("tsk").map_err(rng_failed)?;
        let jti = self.config.ids.id("jti").map_err(rng_failed)?;
        let now_ms = self.clock.now_ms();
        let now_secs = self.clock.now_secs();
        let grant = grant_of(&req.scope);
        let purpose = format!("BREAK-GLASS by {}: {justification}", human.name);
        let task = TaskRecord {
            id: task_id.clone(),
            agent: agent.name.clone(),
            purpose: purpose.chars().take(limits.max_purpose_chars).collect(),
            requested: req.scope.clone(),
            grant: grant.clone(),
            items: serde_json::json!([]),
            state: TaskState::Active,
            bundle_version: self.bundle().version().to_owned(),
            token_jti: jti.clone(),
            created_at_ms: now_ms,
            expires_at_ms: (now_secs + ttl) * 1000,
            ended_at_ms: None,
            end_reason: None,
            delegation: None,
            step_up: false,
            cnf_jkt: None,
        };
        let record = BreakGlassRecord {
            id: id.clone(),
            declared_by: human.name.clone(),
            agent: agent.name.clone(),
            task_id: task_id.clone(),
            justification: justification.to_owned(),
            created_at_ms: now_ms,
            expires_at_ms: task.expires_at_ms,
            review: None,
        };
        let spiffe = SpiffeId::for_agent(self.config.trust_domain.clone(), agent.name.clone());
        let token = self.issue_task_token(TokenFor {
            subject: &spiffe.to_string(),
            task_id: &task_id,
            jti: &jti,
            grant: grant.clone(),
            expires_at_secs: now_secs + ttl,
            act: None,
            cnf_jkt: None,
        })?;
        let ev = NewEvent {
            ts_ms: now_ms,
            agent: Some(agent.name.to_string()),
            task_id: Some(task_id.clone()),
            body: Body::BreakGlassDeclared(BreakGlassDeclared {
                break_glass_id: id.clone(),
                declared_by: human.name.clone(),
                justification: justification.to_owned(),
                grant: grant.clone(),
                ttl_secs: ttl,
                expires_at_ms: task.expires_at_ms,
                purpose: task.purpose.clone(),
                alert_group: alert_group.clone(),
                alert_webhook,
            }),
        };
        self.store
            .insert_break_glass(&record, &task, ev)
            .await
            .map_err(|e| Error::store(&e))?;
        let mut live = self.live_task(&agent, &task)?;
        if let Some(t) = Arc::get_mut(&mut live) {
            t.break_glass = Some((id.clone(), human.name.to_string()));
        }
        self.go_live(live, &[TaskState::Active], "break-glass was declared")
            .await?;
        self.notify_group(
            &alert_group,
            "break_glass.declared",
            serde_json::json!({ "break_glass": record }),
        );
        if !alert_webhook {
            tracing::warn!(group = alert_group, break_glass = %id, "break-glass declared, but the alert group has no webhook");
        }
        Ok(BreakGlassIssued {
            break_glass: record,
            task_token: token,
            grant,
        })
    }

    /// One task's record.
    pub async fn load_task(&self, id: &str) -> Result<TaskRecord, Error> {
        if id.len() > MAX_TASK_ID_BYTES {
            return Err(Error::invalid("task id is too long"));
        }
        self.store
            .task(id)
            .await
            .map_err(|e| Error::store(&e))?
            .ok_or_else(|| Error::not_found(format!("task {id} does not exist")))
    }

    /// The live task of a task token, which must be the task `id`.
    pub fn own_task(&self, token: &str, id: &str) -> Result<Arc<LiveTask>, Error> {
        let task = self.task_for_token(token).map_err(|r| r.error)?;
        if task.id != id {
            return Err(Error::new(
                Kind::Forbidden,
                "token_not_bound",
                "this task token belongs to another task",
            ));
        }
        Ok(task)
    }

    /// Completes a task with its own task token: the token is refused from this moment.
    pub async fn complete_task(&self, token: &str, id: &str) -> Result<Transitioned, Error> {
        let task = self.own_task(token, id)?;
        let by = task.agent.to_string();
        self.move_task(
            id,
            &[TaskState::Active],
            TaskState::Completed,
            TaskEnd::Completed,
            "completed by agent",
            &by,
        )
        .await
    }

    /// Revokes a task, by `by` (the admin or the task's agent): its token is refused from
    /// this moment.
    pub async fn revoke_task(
        &self,
        id: &str,
        reason: &str,
        by: &str,
    ) -> Result<Transitioned, Error> {
        let reason = checked_text("reason", reason, 1024, false)?;
        self.move_task(
            id,
            &[TaskState::Active, TaskState::Pending],
            TaskState::Revoked,
            TaskEnd::Revoked,
            reason,
            by,
        )
        .await
    }

    async fn move_task(
        &self,
        id: &str,
        from: &[TaskState],
        to: TaskState,
        kind: TaskEnd,
        reason: &str,
        by: &str,
    ) -> Result<Transitioned, Error> {
        let task = self.load_task(id).await?;
        // In memory first: from here on no call of this task is allowed, and if the store
        // write fails the end stays enforced and is retried until it commits.
        let end = PendingEnd {
            from: from.to_vec(),
            to,
            kind,
            reason: reason.to_owned(),
            by: by.to_owned(),
            agent: task.agent.to_string(),
            detail: TaskEnded::default(),
        };
        let moved = self.end_task(id, end).await.map_err(|e| Error::store(&e))?;
        if !moved {
            return Err(Error::new(
                Kind::Conflict,
                "task_not_active",
                format!("task {id} is {} and cannot become {to}", task.state),
            ));
        }
        Ok(Transitioned {
            task_id: id.to_owned(),
            state: to,
        })
    }
}

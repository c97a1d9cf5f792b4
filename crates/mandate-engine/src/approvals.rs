//! Human approvals on the engine: opening a request bound to the exact action, counting
//! approvers under separation of duties, waiting, single use, expiry and invalidation, and
//! the signed webhook notifications that go with them.
//!
//! Invariants:
//! - An approval is bound to a digest of (task, agent, tool, action, canonical arguments,
//!   resource, destination, data domain, sensitivity, bundle version); a call with any
//!   other value does not match it.
//! - It is used at most once: the `approved → consumed` transition has one winner.
//! - Only named humans approve. Agent tokens and the admin token are not approvers.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Kind;
use mandate_audit::{
    ApprovalAction, ApprovalMoved, ApprovalRequested, ApprovalVoted, Body, NewEvent, TaskActivated,
    TaskEnd, TaskEnded,
};
use mandate_core::{
    AgentName, ApprovalKind, ApprovalState, ApproverRole, DataDomain, HumanId, RequestedScope,
    canonical_json, sha256_hex,
};
use mandate_policy::{DEFAULT_APPROVER_GROUP, Decision, Outcome};
use mandate_store::{ApprovalRecord, ApprovalVote, ApproverRecord, VoteOutcome};
use serde_json::{Value, json};

use crate::engine::{Call, Engine, LiveTask};
use crate::error::Error;

/// Who presented a human credential.
#[derive(Debug, Clone)]
pub enum Human {
    /// The admin token: manages approvers, reads everything, approves nothing.
    Admin,
    /// A named approver.
    Approver(ApproverRecord),
}

/// The approval-required decision of one call, settled against its approval.
#[derive(Debug)]
pub struct Settled {
    /// The decision to return and record: `allow` only if an approval was used for it.
    pub decision: Decision,
    /// The approval concerned.
    pub approval: ApprovalRecord,
}

/// What the API says about an approval that concerns a caller.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApprovalRef {
    /// Approval id: poll `GET /v1/approvals/{id}` or retry the call with it.
    pub id: String,
    /// Where it stands.
    pub state: ApprovalState,
    /// When it stops being usable (unix ms).
    pub expires_at_ms: i64,
    /// Distinct approvers needed.
    pub required: u32,
    /// Approvers so far.
    pub approved_by: Vec<String>,
}

impl From<&ApprovalRecord> for ApprovalRef {
    fn from(a: &ApprovalRecord) -> Self {
        Self {
            id: a.id.clone(),
            state: a.state,
            expires_at_ms: a.expires_at_ms,
            required: a.required,
            approved_by: a.votes.iter().map(|v| v.by.to_string()).collect(),
        }
    }
}

pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(Kind::Conflict, code, message)
}

/// The binding digest of one call.
pub fn call_digest(
    task: &LiveTask,
    call: &Call,
    data_domain: Option<&DataDomain>,
    bundle_version: &str,
) -> String {
    let material = json!({
        "kind": ApprovalKind::Call.as_str(),
        "task": task.id, "agent": task.agent, "tool": call.tool, "action": call.action,
        "args_digest": call.args.digest(), "resource": call.resource,
        "destination": call.destination, "data_domain": data_domain,
        "sensitivity": call.sensitivity, "bundle_version": bundle_version,
    });
    sha256_hex(canonical_json(&material).as_bytes())
}

/// The binding digest of a task start.
pub fn start_digest(
    task_id: &str,
    agent: &AgentName,
    scope: &RequestedScope,
    ttl_secs: i64,
    bundle_version: &str,
) -> String {
    let material = json!({
        "kind": ApprovalKind::TaskStart.as_str(),
        "task": task_id, "agent": agent, "requested": scope, "ttl_secs": ttl_secs,
        "bundle_version": bundle_version,
    });
    sha256_hex(canonical_json(&material).as_bytes())
}

/// A new approval request, before it is stored.
#[derive(Debug)]
pub struct Request<'a> {
    pub kind: ApprovalKind,
    pub task_id: &'a str,
    pub agent: &'a AgentName,
    pub owner: HumanId,
    pub digest: String,
    /// What will run, as parsed, plus the context an approver needs.
    pub action: Value,
    pub decision: &'a Decision,
    /// The request is never usable beyond this (the task's own end).
    pub not_after_ms: i64,
}

impl Engine {
    /// The human behind a bearer token: the admin token or an enabled approver's token.
    /// Anything else, agent tokens included, is refused.
    pub async fn human(&self, token: &str) -> Result<Human, Error> {
        if self.is_admin(token) {
            return Ok(Human::Admin);
        }
        let hash = sha256_hex(token.as_bytes());
        match self
            .store
            .approver_by_token(&hash)
            .await
            .map_err(|e| Error::store(&e))?
        {
            Some(a) => Ok(Human::Approver(a)),
            None => Err(Error::new(
                Kind::Forbidden,
                "approver_required",
                "this endpoint needs a human approver's token (agents never approve)",
            )),
        }
    }

    /// The approver behind a token, who must hold `role`.
    pub async fn approver_with(
        &self,
        token: &str,
        role: ApproverRole,
    ) -> Result<ApproverRecord, Error> {
        match self.human(token).await? {
            Human::Approver(a) if a.has(role) => Ok(a),
            Human::Approver(a) => Err(Error::new(
                Kind::Forbidden,
                "role_required",
                format!("{} does not hold the {role} role", a.name),
            )),
            Human::Admin => Err(Error::new(
                Kind::Forbidden,
                "approver_required",
                format!(
                    "the admin token is not a person: use a named approver's token with the {role} role"
                ),
            )),
        }
    }

    /// Opens an approval request (bounded per agent and per task), records it, and
    /// notifies the approver group.
    pub async fn open_approval(&self, r: Request<'_>) -> Result<ApprovalRecord, Error> {
        let now = self.clock.now_ms();
        let terms = r.decision.approval.clone();
        let limits = &self.config.limits;
        let a = ApprovalRecord {
            id: self
                .config
                .ids
                .id("apr")
                .map_err(|_| Error::internal("system RNG failed"))?,
            kind: r.kind,
            task_id: r.task_id.to_owned(),
            agent: r.agent.clone(),
            owner: r.owner,
            group: terms
                .as_ref()
                .map_or_else(|| DEFAULT_APPROVER_GROUP.to_owned(), |t| t.group.clone()),
            digest: r.digest,
            action: r.action,
            bundle_version: r.decision.bundle_version.clone(),
            required: terms.as_ref().map_or(1, |t| t.approvals),
            owner_may_approve: terms.as_ref().is_some_and(|t| t.owner_may_approve),
            votes: Vec::new(),
            state: ApprovalState::Pending,
            created_at_ms: now,
            expires_at_ms: (now + limits.approval_ttl_secs * 1000).min(r.not_after_ms),
            decided_at_ms: None,
            decided_by: None,
            reason: None,
        };
        let ev = NewEvent {
            ts_ms: now,
            agent: Some(a.agent.to_string()),
            task_id: Some(a.task_id.clone()),
            body: Body::ApprovalRequested(ApprovalRequested {
                approval_id: a.id.clone(),
                kind: a.kind,
                digest: a.digest.clone(),
                group: a.group.clone(),
                required: a.required,
                owner_may_approve: a.owner_may_approve,
                expires_at_ms: a.expires_at_ms,
                bundle_version: a.bundle_version.clone(),
                policies: r.decision.policies.clone(),
                reasons: r.decision.reasons.clone(),
                // The arguments themselves stay in the approval record: the chain keeps
                // their digest, never the values (they may be sensitive, and it is
                // append-only).
                action: ApprovalAction {
                    tool: a.action.get("tool").cloned(),
                    action: a.action.get("action").cloned(),
                    resource: a.action.get("resource").cloned(),
                    args_digest: a.action.get("args_digest").cloned(),
                    destination: a.action.get("destination").cloned(),
                    data_domain: a.action.get("data_domain").cloned(),
                },
            }),
        };
        self.store
            .insert_approval(
                &a,
                limits.max_pending_approvals_per_agent,
                limits.max_pending_approvals_per_task,
                ev,
            )
            .await
            .map_err(|e| match e {
                mandate_store::StoreError::Limit(m) => {
                    Error::new(Kind::Exhausted, "approval_queue_full", m)
                }
                other => Error::store(&other),
            })?;
        self.notify_group(&a.group, "approval.requested", json!({ "approval": a }));
        Ok(a)
    }

    /// An approval by id, or 404.
    pub async fn load_approval(&self, id: &str) -> Result<ApprovalRecord, Error> {
        if id.len() > 64 {
            return Err(Error::invalid("approval id is too long"));
        }
        self.store
            .approval(id)
            .await
            .map_err(|e| Error::store(&e))?
            .ok_or_else(|| {
                Error::new(
                    Kind::NotFound,
                    "approval_not_found",
                    format!("approval {id} does not exist"),
                )
            })
    }

    /// Waits (at most `wait`) for a pending approval to be answered; returns it as it
    /// stands then.
    pub async fn wait_for_approval(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<ApprovalRecord, Error> {
        let mut changes = self.approval_changes.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let a = self.load_approval(id).await?;
            if a.state != ApprovalState::Pending || tokio::time::Instant::now() >= deadline {
                return Ok(a);
            }
            // Woken by any approval change (or a lagged channel); re-read and look again.
            loop {
                match tokio::time::timeout_at(deadline, changes.recv()).await {
                    Ok(Ok(changed)) if changed != id => continue,
                    _ => break,
                }
            }
        }
    }

    fn changed(&self, id: &str) {
        // No receiver simply means no call is waiting.
        let _ = self.approval_changes.send(id.to_owned());
    }

    /// One approver approves. Separation of duties: approvers answer only for their
    /// groups, never for an agent they own unless policy allows it, and count once.
    pub async fn approve(
        &self,
        approver: &ApproverRecord,
        id: &str,
    ) -> Result<ApprovalRecord, Error> {
        let a = self.load_approval(id).await?;
        self.may_answer(approver, &a)?;
        self.still_valid(&a).await?;
        let vote = ApprovalVote {
            by: approver.name.clone(),
            at_ms: self.clock.now_ms(),
        };
        let ev = NewEvent {
            ts_ms: vote.at_ms,
            // The store records `approval.approved` when this vote completes it.
            agent: Some(a.agent.to_string()),
            task_id: Some(a.task_id.clone()),
            body: Body::ApprovalVote(ApprovalVoted {
                approval_id: a.id.clone(),
                by: approver.name.clone(),
                digest: a.digest.clone(),
                approvals: None,
                required: None,
                state: None,
            }),
        };
        let outcome = self
            .store
            .vote_approval(id, &vote, ev)
            .await
            .map_err(|e| Error::store(&e))?;
        match outcome {
            VoteOutcome::Counted(a) => {
                self.changed(id);
                if a.state == ApprovalState::Approved {
                    self.notify_group(&a.group, "approval.approved", json!({ "approval": a }));
                }
                Ok(*a)
            }
            VoteOutcome::Duplicate => Err(conflict(
                "already_approved_by_you",
                format!(
                    "{} has already approved {id}; another approver is needed",
                    approver.name
                ),
            )),
            VoteOutcome::NotPending(a) => Err(not_pending(&a, self.clock.now_ms())),
            VoteOutcome::Missing => Err(Error::new(
                Kind::NotFound,
                "approval_not_found",
                format!("approval {id} does not exist"),
            )),
        }
    }

    /// One approver refuses; the request is closed.
    pub async fn deny(
        &self,
        approver: &ApproverRecord,
        id: &str,
        reason: &str,
    ) -> Result<ApprovalRecord, Error> {
        let a = self.load_approval(id).await?;
        self.may_answer(approver, &a)?;
        let now = self.clock.now_ms();
        if now >= a.expires_at_ms {
            return Err(not_pending(&a, now));
        }
        let moved = self
            .move_approval(
                &a,
                &[ApprovalState::Pending],
                ApprovalState::Denied,
                approver.name.as_str(),
                reason,
            )
            .await?;
        if !moved {
            let a = self.load_approval(id).await?;
            return Err(not_pending(&a, now));
        }
        if a.kind == ApprovalKind::TaskStart {
            self.end_denied_start(&a, approver.name.as_str()).await;
        }
        let a = self.load_approval(id).await?;
        self.notify_group(&a.group, "approval.denied", json!({ "approval": a }));
        Ok(a)
    }

    fn may_answer(&self, approver: &ApproverRecord, a: &ApprovalRecord) -> Result<(), Error> {
        if !approver.has(ApproverRole::Approver) {
            return Err(Error::new(
                Kind::Forbidden,
                "role_required",
                format!("{} does not hold the approver role", approver.name),
            ));
        }
        if !approver.groups.iter().any(|g| g == &a.group) {
            return Err(Error::new(
                Kind::Forbidden,
                "not_in_group",
                format!(
                    "approval {} is for the {} group, which {} does not answer for",
                    a.id, a.group, approver.name
                ),
            ));
        }
        // In a delegation chain, every owner above the agent is as much a party to the
        // call as the agent's own: none of them approves it unless policy waives it.
        let chain_owner = self.live_get(&a.task_id).is_some_and(|t| {
            t.ancestors()
                .any(|up| HumanId::from_stored(up.owner()) == approver.name)
        });
        if (approver.name == a.owner || chain_owner) && !a.owner_may_approve {
            return Err(Error::new(
                Kind::Forbidden,
                "separation_of_duties",
                format!(
                    "{} owns agent {} or an agent above it in its delegation chain; someone else must approve its requests (policy does not allow owner approval)",
                    approver.name, a.agent
                ),
            ));
        }
        Ok(())
    }

    /// Refuses (and invalidates) an approval whose task ended or whose bundle no longer
    /// enforces.
    async fn still_valid(&self, a: &ApprovalRecord) -> Result<(), Error> {
        let live = self.live_get(&a.task_id).filter(|t| !t.is_ended());
        let task_ok = match (a.kind, &live) {
            (_, None) => false,
            (ApprovalKind::Call | ApprovalKind::PlanChange, Some(t)) => !t.is_pending(),
            (ApprovalKind::TaskStart, Some(t)) => t.is_pending(),
        };
        if a.state.is_final() {
            return Err(not_pending(a, self.clock.now_ms()));
        }
        if !task_ok {
            self.invalidate(a, "the task is no longer active").await;
            return Err(conflict(
                "approval_invalid",
                format!(
                    "task {} is no longer active; approval {} is void",
                    a.task_id, a.id
                ),
            ));
        }
        let enforcing = self.bundle().version().to_owned();
        if a.bundle_version != enforcing {
            self.invalidate(a, "the policy bundle changed since it was requested")
                .await;
            return Err(conflict(
                "approval_stale",
                format!(
                    "approval {} was requested under policy {}, and {} enforces now: the agent must ask again",
                    a.id, a.bundle_version, enforcing
                ),
            ));
        }
        Ok(())
    }

    async fn move_approval(
        &self,
        a: &ApprovalRecord,
        from: &[ApprovalState],
        to: ApprovalState,
        by: &str,
        reason: &str,
    ) -> Result<bool, Error> {
        let now = self.clock.now_ms();
        let moved = ApprovalMoved {
            approval_id: a.id.clone(),
            by: by.to_owned(),
            reason: reason.to_owned(),
            digest: a.digest.clone(),
        };
        let body = Body::approval_moved(to, moved)
            .ok_or_else(|| Error::internal(format!("an approval cannot move to {to:?}")))?;
        let ev = NewEvent {
            ts_ms: now,
            agent: Some(a.agent.to_string()),
            task_id: Some(a.task_id.clone()),
            body,
        };
        let moved = self
            .store
            .transition_approval(&a.id, from, to, by, now, reason, ev)
            .await
            .map_err(|e| Error::store(&e))?;
        if moved {
            self.changed(&a.id);
        }
        Ok(moved)
    }

    /// Voids a pending or approved approval (best effort: a failure leaves it to expire).
    pub async fn invalidate(&self, a: &ApprovalRecord, reason: &str) {
        if let Err(e) = self
            .move_approval(
                a,
                &[ApprovalState::Pending, ApprovalState::Approved],
                ApprovalState::Invalidated,
                "mandate",
                reason,
            )
            .await
        {
            tracing::warn!(approval = %a.id, error = e.message, "could not record an invalidated approval; it will expire");
        }
    }

    /// Uses an approved approval once. `Ok(true)` for the one caller that won it.
    pub async fn consume(&self, a: &ApprovalRecord, by: &str) -> Result<bool, Error> {
        self.move_approval(
            a,
            &[ApprovalState::Approved],
            ApprovalState::Consumed,
            by,
            "used for the approved action",
        )
        .await
    }

    /// Settles an approval-required call decision: opens an approval (or takes the one
    /// the caller names), optionally waits for it, and uses it if it is approved.
    pub async fn settle_call(
        &self,
        task: &Arc<LiveTask>,
        call: &Call,
        data_domain: Option<&DataDomain>,
        decision: Decision,
        approval_id: Option<&str>,
        wait: Duration,
    ) -> Result<Settled, Error> {
        let digest = call_digest(task, call, data_domain, &decision.bundle_version);
        let mut a = match approval_id {
            Some(id) => {
                let a = self.load_approval(id).await?;
                if a.task_id != task.id || a.kind != ApprovalKind::Call {
                    return Err(Error::new(
                        Kind::Forbidden,
                        "approval_mismatch",
                        format!("approval {id} is not for a call of task {}", task.id),
                    ));
                }
                // A denial is answered below as a deny; every other final state is refused.
                if a.state.is_final() && a.state != ApprovalState::Denied {
                    return Err(not_pending(&a, self.clock.now_ms()));
                }
                if a.bundle_version != decision.bundle_version && !a.state.is_final() {
                    self.still_valid(&a).await?;
                }
                if a.digest != digest {
                    return Err(Error::new(
                        Kind::Forbidden,
                        "approval_mismatch",
                        format!(
                            "approval {id} was given for another action: the tool, arguments, resource, destination, data domain or policy differ from what was approved"
                        ),
                    ));
                }
                if let Err(why) = meets_terms(&a, &decision) {
                    return Err(Error::new(
                        Kind::Forbidden,
                        "approval_mismatch",
                        format!(
                            "approval {id} no longer satisfies this call's approval rules ({why}): call again without approval_id to ask anew"
                        ),
                    ));
                }
                a
            }
            None => {
                // The owner as registered (normalised); read again so it compares.
                let owner = HumanId::from_stored(task.owner());
                let bundle = self.bundle();
                let entry = bundle.catalog().get(&call.tool);
                let tool_risk = entry.map(|e| e.risk.as_str());
                let tool_destructive = entry.map(|e| e.destructive);
                // What policy saw of the arguments (amounts, derived facts), for the
                // approver: the catalog's typed view, when it declares them.
                let typed_arguments = bundle
                    .catalog()
                    .arguments(&call.tool)
                    .and_then(|schema| schema.typed_view(call.args.value()));
                self.open_approval(Request {
                    kind: ApprovalKind::Call,
                    task_id: &task.id,
                    agent: &task.agent,
                    owner,
                    digest,
                    action: json!({
                        "tool": call.tool, "action": call.action, "resource": call.resource,
                        "arguments": call.args, "typed_arguments": typed_arguments,
                        "args_digest": call.args.digest(),
                        "destination": call.destination, "data_domain": data_domain,
                        "sensitivity": call.sensitivity, "purpose": task.plan().purpose,
                        "agent_tier": task.tier(), "tool_risk": tool_risk,
                        "tool_destructive": tool_destructive, "policies": decision.policies,
                        "reasons": decision.reasons,
                    }),
                    decision: &decision,
                    not_after_ms: task.expires_at(),
                })
                .await?
            }
        };
        if a.state == ApprovalState::Pending && !wait.is_zero() {
            a = self.wait_for_approval(&a.id, wait).await?;
        }
        let now = self.clock.now_ms();
        match a.state {
            ApprovalState::Pending => Ok(Settled {
                decision,
                approval: a,
            }),
            ApprovalState::Approved if now < a.expires_at_ms => {
                if task.is_ended() || now >= task.expires_at() {
                    return Err(Error::new(
                        Kind::Forbidden,
                        "task_not_active",
                        format!("task {} ended while its approval was pending", task.id),
                    ));
                }
                if !self.consume(&a, task.agent.as_str()).await? {
                    let a = self.load_approval(&a.id).await?;
                    return Err(not_pending(&a, now));
                }
                let approved_by: Vec<&str> = a.votes.iter().map(|v| v.by.as_str()).collect();
                let mut reasons = vec![format!(
                    "approved by {} (approval {})",
                    approved_by.join(", "),
                    a.id
                )];
                reasons.extend(decision.reasons);
                let decision = Decision {
                    outcome: Outcome::Allow,
                    reasons,
                    approval: None,
                    ..decision
                };
                let a = self.load_approval(&a.id).await?;
                Ok(Settled {
                    decision,
                    approval: a,
                })
            }
            ApprovalState::Denied => {
                let who = a.decided_by.clone().unwrap_or_default();
                let why = a.reason.clone().unwrap_or_default();
                let decision = Decision {
                    outcome: Outcome::Deny,
                    policies: vec![APPROVAL_DENIED_POLICY.to_owned()],
                    reasons: vec![format!("{who} denied approval {}: {why}", a.id)],
                    errors: Vec::new(),
                    obligations: Vec::new(),
                    approval: None,
                    bundle_version: decision.bundle_version,
                };
                Ok(Settled {
                    decision,
                    approval: a,
                })
            }
            _ => Err(not_pending(&a, now)),
        }
    }

    /// A task start approved: the task becomes active, once. `prepare` runs (and may
    /// fail) before the approval is used, so a failure there leaves it usable. Returns the
    /// approval used and what `prepare` made.
    pub async fn activate_start<T>(
        &self,
        task: &Arc<LiveTask>,
        approval_id: &str,
        wait: Duration,
        prepare: impl FnOnce() -> Result<T, Error>,
    ) -> Result<(ApprovalRecord, T), Error> {
        let mut a = self.load_approval(approval_id).await?;
        if a.task_id != task.id || a.kind != ApprovalKind::TaskStart {
            return Err(Error::new(
                Kind::Forbidden,
                "approval_mismatch",
                format!(
                    "approval {approval_id} is not the start approval of task {}",
                    task.id
                ),
            ));
        }
        if a.state == ApprovalState::Pending && !wait.is_zero() {
            a = self.wait_for_approval(&a.id, wait).await?;
        }
        let now = self.clock.now_ms();
        match a.state {
            ApprovalState::Pending => Err(conflict(
                "approval_pending",
                format!("approval {} is still waiting for an approver", a.id),
            )
            .with_details(json!({ "approval": ApprovalRef::from(&a) }))),
            ApprovalState::Approved if now < a.expires_at_ms => {
                self.still_valid(&a).await?;
                let prepared = prepare()?;
                if !self.consume(&a, task.agent.as_str()).await? {
                    let a = self.load_approval(&a.id).await?;
                    return Err(not_pending(&a, now));
                }
                let ev = NewEvent {
                    ts_ms: now,
                    agent: Some(task.agent.to_string()),
                    task_id: Some(task.id.clone()),
                    body: Body::TaskActivated(TaskActivated {
                        approval_id: a.id.clone(),
                        approved_by: a.votes.iter().map(|v| v.by.to_string()).collect(),
                    }),
                };
                let moved = self
                    .store
                    .transition_task(
                        &task.id,
                        &[mandate_core::TaskState::Pending],
                        mandate_core::TaskState::Active,
                        now,
                        "start approved",
                        ev,
                    )
                    .await
                    .map_err(|e| Error::store(&e))?;
                if !moved {
                    return Err(Error::new(
                        Kind::Forbidden,
                        "task_not_active",
                        format!("task {} is no longer pending", task.id),
                    ));
                }
                task.activate();
                Ok((self.load_approval(&a.id).await?, prepared))
            }
            _ => Err(not_pending(&a, now)),
        }
    }

    /// A denied start ends its pending task.
    async fn end_denied_start(&self, a: &ApprovalRecord, by: &str) {
        let end = crate::engine::PendingEnd {
            from: vec![mandate_core::TaskState::Pending],
            to: mandate_core::TaskState::Revoked,
            kind: TaskEnd::Revoked,
            reason: format!("start denied by {by}"),
            by: by.to_owned(),
            agent: a.agent.to_string(),
            detail: TaskEnded {
                approval_id: Some(a.id.clone()),
                ..TaskEnded::default()
            },
        };
        if let Err(e) = self.end_task(&a.task_id, end).await {
            tracing::error!(task = %a.task_id, error = %e, "denied start not recorded yet; retried by the sweeper");
        }
    }

    /// Voids the open approvals of a task that ended (best effort: the rest expire).
    pub async fn invalidate_task_approvals(&self, task_id: &str, agent: &AgentName) {
        for state in [ApprovalState::Pending, ApprovalState::Approved] {
            match self
                .store
                .approvals(Some(state), Some(agent), None, 1000)
                .await
            {
                Ok(list) => {
                    for a in list.iter().filter(|a| a.task_id == task_id) {
                        self.invalidate(a, "the task ended").await;
                    }
                }
                Err(e) => {
                    tracing::warn!(task = task_id, error = %e, "cannot list the task's approvals; they will expire")
                }
            }
        }
    }

    /// Voids the open approvals a disabled approver voted for.
    pub async fn invalidate_votes_of(&self, approver: &HumanId) {
        for state in [ApprovalState::Pending, ApprovalState::Approved] {
            match self.store.approvals(Some(state), None, None, 10_000).await {
                Ok(list) => {
                    for a in list
                        .iter()
                        .filter(|a| a.votes.iter().any(|v| &v.by == approver))
                    {
                        self.invalidate(a, "an approver who approved it was disabled")
                            .await;
                    }
                }
                Err(e) => {
                    tracing::warn!(approver = %approver, error = %e, "cannot list approvals to void; they are refused when they expire")
                }
            }
        }
    }

    /// Expires approvals whose time ran out (called by the sweeper).
    pub async fn expire_approvals(&self) {
        let now = self.clock.now_ms();
        let due = match self.store.due_approvals(now, 256).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot list due approvals");
                return;
            }
        };
        for a in due {
            if let Err(e) = self
                .move_approval(
                    &a,
                    &[ApprovalState::Pending, ApprovalState::Approved],
                    ApprovalState::Expired,
                    "mandate",
                    if a.state == ApprovalState::Pending {
                        "no answer in time"
                    } else {
                        "approved but not used in time"
                    },
                )
                .await
            {
                tracing::error!(approval = %a.id, error = e.message, "could not expire an approval; retrying");
            }
        }
    }

    /// Voids every approval given under another bundle (called after a policy change).
    pub async fn invalidate_stale_approvals(&self) {
        let enforcing = self.bundle().version().to_owned();
        match self.store.stale_approvals(&enforcing).await {
            Ok(stale) => {
                for a in stale {
                    self.invalidate(&a, "the policy bundle changed since it was requested")
                        .await;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot list approvals to invalidate; they are refused on use")
            }
        }
    }

    /// Sends a signed notification to a group's webhook, off the request path.
    pub fn notify_group(&self, group: &str, event: &'static str, mut payload: Value) {
        let store = Arc::clone(&self.store);
        let http = self.http.clone();
        let clock = Arc::clone(&self.clock);
        let group = group.to_owned();
        let id = payload
            .pointer("/approval/id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let (Some(obj), Some(id)) = (payload.as_object_mut(), id) {
            obj.insert(
                "link".into(),
                json!(format!("{}/v1/approvals/{id}", self.issuer)),
            );
            obj.insert(
                "approve_with".into(),
                json!(format!("mandate approvals approve {id}")),
            );
        }
        if let Some(obj) = payload.as_object_mut() {
            obj.insert("event".into(), json!(event));
            obj.insert("group".into(), json!(group));
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "one delivery per approval event; the approval queue is bounded, and each delivery ends after its bounded retries"
        )]
        tokio::spawn(async move {
            let g = match store.approver_group(&group).await {
                Ok(Some(g)) => g,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(group, error = %e, "cannot read the approver group; notification not sent");
                    return;
                }
            };
            let (Some(url), Some(secret)) = (g.webhook_url, g.webhook_secret) else {
                return;
            };
            let body = serde_json::to_vec(&payload).unwrap_or_default();
            if let Err(e) =
                crate::webhook::deliver(&http, &url, &secret, event, body, || clock.now_secs())
                    .await
            {
                tracing::warn!(group, event, error = e, "webhook notification failed");
            }
        });
    }
}

/// Whether an approval given earlier satisfies the approval rules the call is under now
/// (history or time can bring in stricter policies under the same bundle).
fn meets_terms(a: &ApprovalRecord, d: &Decision) -> Result<(), String> {
    let (required, group, owner_may) = d
        .approval
        .as_ref()
        .map_or((1, DEFAULT_APPROVER_GROUP, false), |t| {
            (t.approvals, t.group.as_str(), t.owner_may_approve)
        });
    if a.required < required {
        return Err(format!(
            "it now needs {required} approvers, it was asked with {}",
            a.required
        ));
    }
    if a.group != group {
        return Err(format!(
            "it is now for the {group} group, it was asked of {}",
            a.group
        ));
    }
    if !owner_may && a.votes.iter().any(|v| v.by == a.owner) {
        return Err("its owner approved it, which policy no longer allows".into());
    }
    Ok(())
}

/// The pseudo policy id of a call whose approval was denied.
pub const APPROVAL_DENIED_POLICY: &str = "mandate:approval-denied";

/// Why an approval cannot be used or answered now.
pub(crate) fn not_pending(a: &ApprovalRecord, now_ms: i64) -> Error {
    let (code, what) = match a.state {
        ApprovalState::Pending | ApprovalState::Approved if now_ms >= a.expires_at_ms => {
            ("approval_expired", "has expired".to_owned())
        }
        ApprovalState::Pending => ("approval_pending", "is still pending".to_owned()),
        ApprovalState::Approved => ("approval_approved", "is already approved".to_owned()),
        ApprovalState::Denied => ("approval_denied", "was denied".to_owned()),
        ApprovalState::Expired => ("approval_expired", "has expired".to_owned()),
        ApprovalState::Consumed => (
            "approval_used",
            "was already used: an approval is good for one action, once".to_owned(),
        ),
        ApprovalState::Invalidated => (
            "approval_invalid",
            format!(
                "was invalidated ({})",
                a.reason.as_deref().unwrap_or("no longer valid")
            ),
        ),
    };
    conflict(code, format!("approval {} {what}", a.id))
        .with_details(json!({ "approval": ApprovalRef::from(a) }))
}

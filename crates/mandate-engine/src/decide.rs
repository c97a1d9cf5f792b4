//! The decide path every enforcement adapter shares (`/v1/decide`, AuthZEN, ext_authz, the
//! HTTP gateway, the MCP gateway): bound the call, evaluate, settle approvals, record
//! durably, answer. An allow is returned only after its audit event is durable.

use std::time::{Duration, Instant};

use mandate_audit::{Body, CallDecided, CallRefused, NewEvent, ShadowDisagreement, Verdict};
use mandate_core::{SpanRecord, TraceParent, span_id_for, task_trace_id};
use mandate_policy::Outcome;
use serde::{Deserialize, Serialize};

use crate::approvals::ApprovalRef;
use crate::engine::{Call, Engine};
use crate::error::{Error, Kind};

/// Longest `resource` accepted, in characters.
pub const MAX_RESOURCE_CHARS: usize = 1024;

/// Longest approval id accepted.
pub const MAX_APPROVAL_ID_BYTES: usize = 64;

/// How one call is to be decided, beyond the call itself.
#[derive(Debug, Clone, Default)]
pub struct DecideOptions {
    /// An approval given for exactly this call: used once if it is approved.
    pub approval_id: Option<String>,
    /// When the call needs an approval, wait this long for it (at most the configured
    /// `max_approval_wait_secs`).
    pub wait: Duration,
    /// The caller's trace context (`traceparent`, or the gateway's call span): the
    /// decision's span joins that trace, under that span.
    pub trace: Option<TraceParent>,
    /// The authenticated enforcement point that asked, recorded with the decision.
    pub point: Option<String>,
}

/// The span of a decision or refusal: in the caller's trace under the caller's span, or,
/// without one, in the task's own trace (none when the task is unknown too).
fn span(
    trace: Option<&TraceParent>,
    task: Option<&str>,
    seed: &str,
    start_us: i64,
    end_us: i64,
) -> Option<SpanRecord> {
    let (trace_id, parent) = match (trace, task) {
        (Some(t), _) => (t.trace_id, Some(t.parent_id)),
        (None, Some(task)) => (task_trace_id(task), None),
        (None, None) => return None,
    };
    Some(SpanRecord::new(
        trace_id,
        span_id_for(seed),
        parent,
        start_us,
        end_us,
    ))
}

/// A per-call decision, recorded before it is returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = DecideResponse))]
pub struct Decided {
    /// Decision id (also in the audit event).
    pub decision_id: String,
    /// allow | deny | approval_required.
    pub outcome: Outcome,
    /// Determining policy ids.
    pub policies: Vec<String>,
    /// Human-readable reasons.
    pub reasons: Vec<String>,
    /// Evaluation errors (any error denies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What the enforcement point must do with an allowed call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub obligations: Vec<mandate_policy::Obligation>,
    /// Bundle version that decided.
    pub bundle_version: String,
    /// The task.
    pub task_id: String,
    /// The agent.
    pub agent: String,
    /// SHA-256 of the canonical arguments.
    pub args_digest: String,
    /// The approval this call needs (when `approval_required`) or used (when allowed on
    /// an approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// Allowed by a break-glass grant, outside policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

impl Engine {
    /// Decides one tool call for the task whose token is presented. Every refusal is
    /// recorded; the answer is returned only after its audit event is durable, and if it
    /// cannot be written nothing is allowed.
    pub async fn decide(
        &self,
        token: &str,
        call: Call,
        options: DecideOptions,
    ) -> Result<Decided, Error> {
        let started = Instant::now();
        let started_us = self.clock.now_us();
        self.check_call(&call, &options)?;
        let approval_id = options.approval_id;
        let trace = options.trace;
        let now = self.clock.now_ms();
        let evaluated = match self.evaluate(token, &call) {
            Ok(e) => e,
            Err(refusal) => {
                let ev = NewEvent {
                    ts_ms: now,
                    agent: refusal.agent.clone(),
                    task_id: refusal.task.clone(),
                    body: Body::CallRefused(CallRefused {
                        code: refusal.error.code.to_owned(),
                        tool: Some(call.tool.to_string()),
                        action: Some(call.action),
                        args_digest: Some(call.args.digest().to_owned()),
                        trace: span(
                            trace.as_ref(),
                            refusal.task.as_deref(),
                            &format!("refused:{started_us}:{}", call.args.digest()),
                            started_us,
                            self.clock.now_us(),
                        ),
                        ..CallRefused::default()
                    }),
                };
                self.record_refusal(ev).await?;
                return Err(refusal.error);
            }
        };
        // A honeytoken call is always recorded: containment reacts to the record, and a
        // flood of them must not hide behind the rate limit.
        if !evaluated
            .decision
            .policies
            .iter()
            .any(|p| p == crate::containment::detect::HONEYTOKEN_POLICY)
        {
            self.admit_decision(&evaluated.task)?;
        }
        let decision_id = self
            .config
            .ids
            .id("dec")
            .map_err(|_| Error::internal("system RNG failed"))?;
        let task = evaluated.task;
        let data_domain = evaluated.data_domain;
        let break_glass = task.break_glass.is_some();
        let (d, approval) = if evaluated.decision.outcome == Outcome::ApprovalRequired {
            match self
                .settle_call(
                    &task,
                    &call,
                    data_domain.as_ref(),
                    evaluated.decision,
                    approval_id.as_deref(),
                    options.wait,
                )
                .await
            {
                Ok(s) => (s.decision, Some(ApprovalRef::from(&s.approval))),
                Err(e) => {
                    let ev = NewEvent {
                        ts_ms: self.clock.now_ms(),
                        agent: Some(task.agent.to_string()),
                        task_id: Some(task.id.clone()),
                        body: Body::CallRefused(CallRefused {
                            code: e.code.to_owned(),
                            tool: Some(call.tool.to_string()),
                            action: Some(call.action),
                            args_digest: Some(call.args.digest().to_owned()),
                            approval_id: approval_id.clone(),
                            trace: span(
                                trace.as_ref(),
                                Some(&task.id),
                                &decision_id,
                                started_us,
                                self.clock.now_us(),
                            ),
                            ..CallRefused::default()
                        }),
                    };
                    self.audit.append(ev).await?;
                    return Err(e);
                }
            }
        } else {
            (evaluated.decision, None)
        };
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // From here to the answer the task's end waits for this decision, so the record
        // says what the caller is told: an allow is recorded only while the task is live,
        // and a task that ended (or ran out of time) after policy said yes is recorded as
        // refused.
        let flight = task.enter();
        let now_ms = self.clock.now_ms();
        // After a wait for a human, the task may have been narrowed meanwhile: what it
        // holds now must still cover the call.
        let narrowed = approval.is_some()
            && d.outcome == Outcome::Allow
            && task
                .effective_grant()
                .check(
                    &call.tool,
                    call.action,
                    data_domain.as_ref(),
                    call.destination.as_ref(),
                )
                .is_err();
        if flight.is_none()
            || now_ms >= task.expires_at()
            || task
                .ancestors()
                .any(|a| a.is_ended() || now_ms >= a.expires_at())
            || narrowed
        {
            let ev = NewEvent {
                ts_ms: self.clock.now_ms(),
                agent: Some(task.agent.to_string()),
                task_id: Some(task.id.clone()),
                body: Body::CallRefused(CallRefused {
                    code: "task_not_active".to_owned(),
                    decision_id: Some(decision_id.clone()),
                    tool: Some(call.tool.to_string()),
                    action: Some(call.action),
                    resource: Some(call.resource.clone()),
                    args_digest: Some(call.args.digest().to_owned()),
                    policy_outcome: Some(d.outcome),
                    policies: Some(d.policies.clone()),
                    bundle_version: Some(d.bundle_version.clone()),
                    latency_us: Some(latency_us),
                    trace: span(
                        trace.as_ref(),
                        Some(&task.id),
                        &decision_id,
                        started_us,
                        self.clock.now_us(),
                    ),
                    ..CallRefused::default()
                }),
            };
            self.audit.record(ev, None).await?;
            return Err(Error::new(
                Kind::Forbidden,
                "task_not_active",
                format!(
                    "task {} ended while this call was being decided: start a new task",
                    task.id
                ),
            ));
        }
        let history = (d.outcome == Outcome::Allow)
            .then(|| self.count_allowed(&task, &call, data_domain.as_ref()));
        let ev = NewEvent {
            // After a wait for an approval, the decision is made now, not when the call came.
            ts_ms: self.clock.now_ms(),
            agent: Some(task.agent.to_string()),
            task_id: Some(task.id.clone()),
            body: Body::Decision(CallDecided {
                decision_id: decision_id.clone(),
                intent: task.plan().purpose.clone(),
                tool: call.tool.clone(),
                action: call.action,
                resource: call.resource.clone(),
                destination: call.destination.clone(),
                data_domain: data_domain.clone(),
                declared_data_domain: call.data_domain.clone(),
                sensitivity: call.sensitivity,
                args_digest: call.args.digest().to_owned(),
                outcome: d.outcome,
                policies: d.policies.clone(),
                reasons: d.reasons.clone(),
                errors: d.errors.clone(),
                obligations: d.obligations.clone(),
                bundle_version: d.bundle_version.clone(),
                latency_us,
                approval_id: approval.as_ref().map(|a| a.id.clone()),
                approved_by: approval
                    .as_ref()
                    .filter(|_| d.outcome == Outcome::Allow)
                    .map(|a| a.approved_by.clone()),
                break_glass,
                trace: span(
                    trace.as_ref(),
                    Some(&task.id),
                    &decision_id,
                    started_us,
                    self.clock.now_us(),
                ),
                delegation: task.delegation.as_ref().map(mandate_audit::ChainRef::from),
                point: options.point.clone(),
            }),
        };
        self.audit.record(ev, history).await?;
        drop(flight);
        if let Some(shadow) = evaluated
            .shadow
            .filter(|s| s.outcome != d.outcome || s.policies != d.policies)
        {
            let ev = NewEvent {
                ts_ms: now,
                agent: Some(task.agent.to_string()),
                task_id: Some(task.id.clone()),
                body: Body::ShadowDisagreement(ShadowDisagreement {
                    decision_id: decision_id.clone(),
                    tool: call.tool.clone(),
                    action: call.action,
                    enforced: Verdict {
                        outcome: d.outcome,
                        policies: d.policies.clone(),
                        bundle_version: d.bundle_version.clone(),
                    },
                    shadow: Verdict {
                        outcome: shadow.outcome,
                        policies: shadow.policies,
                        bundle_version: shadow.bundle_version,
                    },
                }),
            };
            // Shadow results are advisory: recorded after the decision, off the call's
            // path, and a failure to record one never changes the answer.
            self.audit.append_deferred(ev);
        }
        Ok(Decided {
            decision_id,
            outcome: d.outcome,
            policies: d.policies,
            reasons: d.reasons,
            errors: d.errors,
            obligations: d.obligations,
            bundle_version: d.bundle_version,
            task_id: task.id.clone(),
            agent: task.agent.to_string(),
            args_digest: call.args.digest().to_owned(),
            approval,
            break_glass,
        })
    }

    /// The bounds every call must keep, whichever adapter it came through.
    fn check_call(&self, call: &Call, options: &DecideOptions) -> Result<(), Error> {
        let resource = &call.resource;
        if resource.chars().count() > MAX_RESOURCE_CHARS || resource.chars().any(char::is_control) {
            return Err(Error::unprocessable(format!(
                "resource must be at most {MAX_RESOURCE_CHARS} printable characters"
            )));
        }
        call.args
            .check_size(self.config.limits.max_args_bytes)
            .map_err(|e| Error::new(Kind::Unprocessable, "arguments_too_large", e.to_string()))?;
        if options
            .approval_id
            .as_ref()
            .is_some_and(|a| a.len() > MAX_APPROVAL_ID_BYTES)
        {
            return Err(Error::unprocessable(format!(
                "approval_id is at most {MAX_APPROVAL_ID_BYTES} characters"
            )));
        }
        let max_wait = u64::try_from(self.config.limits.max_approval_wait_secs).unwrap_or(0);
        if options.wait > Duration::from_secs(max_wait) {
            return Err(Error::unprocessable(format!(
                "wait_secs must be at most {max_wait}"
            )));
        }
        Ok(())
    }
}

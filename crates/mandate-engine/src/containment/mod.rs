//! Containment (R9): signals read from committed audit events, and the responses they
//! trigger — revoke the task, quarantine the agent, step the task up, or alert.
//!
//! One responder task follows the committed events of the kinds signals read (a
//! [`crate::tail::Tail`]: the audit writer's observer, with gaps read back from the store,
//! so events committed outside the writer count too, and none is skipped). It runs a
//! [`Detector`] (pure: no IO, no clock, time comes from the events) and carries out each
//! firing through the same paths a human would use (`Engine::end_task`,
//! `Engine::set_agent_status`), so a contained task has the same guarantee as a revoked
//! one: no allowed call after the acknowledgement. Nothing of this runs on the decide path.
//!
//! `rules.rs` holds the configuration, `detect.rs` the pure detector; this file carries
//! firings out and wires the followers to a server ([`Followers`]).

pub mod detect;
pub mod rules;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mandate_audit::{Body, ContainmentFired, NewEvent};
use mandate_core::{AgentName, AgentStatus, TaskState};

pub use detect::{Detector, Facts, Firing, HONEYTOKEN_POLICY, watched};
pub use rules::{
    AlertWebhook, ContainmentConfig, Per, RawContainment, Response, Rule, Signal, SsfReceiver,
};

use crate::audit_writer::CommitObserver;
use crate::config::ServerConfig;
use crate::engine::{Engine, PendingEnd};
use crate::tail::Tail;

/// Who a containment response is recorded as (`by` of the ends and status changes).
pub const CONTAINMENT_ACTOR: &str = "mandate:containment";

/// The setting holding the last event containment handled (where it resumes).
pub const CONTAINMENT_CURSOR: &str = "containment_cursor";

/// Most alert deliveries in flight at once; beyond it an alert is logged, not posted (the
/// firing is in the audit trail either way).
const MAX_ALERTS_IN_FLIGHT: usize = 64;

static ALERTS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The log followers a server runs for its configuration: containment when it has rules,
/// the SET sender when it has Shared Signals receivers.
#[derive(Debug)]
pub struct Followers {
    containment: Option<Tail>,
    ssf: Option<Tail>,
}

impl Followers {
    /// Adds the followers' taps to the configuration's commit observers (before the
    /// engine opens: the audit writer is told of every batch from its first).
    pub fn attach(config: &mut ServerConfig, store: &Arc<dyn mandate_store::Store>) -> Self {
        let c = config.containment.clone().unwrap_or_default();
        let mut follow = |kinds: crate::tail::Kinds| {
            let (tap, tail) = crate::tail::tail(Arc::clone(store), kinds);
            config.observers.push(tap as Arc<dyn CommitObserver>);
            tail
        };
        Self {
            containment: (!c.rules.is_empty()).then(|| follow(watched(&c.rules))),
            ssf: (!c.ssf_receivers.is_empty()).then(|| {
                follow(std::sync::Arc::new(|e: &mandate_audit::Event| {
                    crate::ssf::watched(&e.kind)
                }))
            }),
        }
    }

    /// Takes each follower's place in the log (where it stopped before a restart, else the
    /// head), then runs it. Call once the engine is open, before anything is served; the
    /// caller owns the tasks (abort them when the server stops).
    pub async fn start(self, engine: &Arc<Engine>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut running = Vec::new();
        let position = |key: &'static str| {
            let store = Arc::clone(&engine.store);
            async move {
                store
                    .setting(key)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|v| v.parse::<i64>().ok())
            }
        };
        if let Some(mut tail) = self.containment {
            tail.resume(position(CONTAINMENT_CURSOR).await).await;
            #[expect(
                clippy::disallowed_methods,
                reason = "the containment responder: one per engine, returned to the server that aborts it"
            )]
            running.push(tokio::spawn(Arc::clone(engine).run_containment(tail)));
        }
        if let Some(mut tail) = self.ssf {
            tail.resume(position(crate::ssf::SSF_CURSOR).await).await;
            #[expect(
                clippy::disallowed_methods,
                reason = "the SET sender: one per engine, returned to the server that aborts it"
            )]
            running.push(tokio::spawn(Arc::clone(engine).run_ssf(tail)));
        }
        running
    }
}

struct EngineFacts<'a>(&'a Engine);

impl Facts for EngineFacts<'_> {
    fn tainted(&self, task: &str) -> bool {
        self.0
            .live_get(task)
            .is_some_and(|t| crate::engine::lock(&t.history).untrusted_content)
    }
}

impl Engine {
    /// The responder: follows the committed events signals read, runs the detector, and
    /// carries out each firing in order; a response that failed is retried (backing off
    /// up to a minute) until it is carried out. Ends when the audit writer is gone.
    pub async fn run_containment(self: Arc<Self>, mut tail: crate::tail::Tail) {
        let Some(config) = self.config.containment.clone() else {
            return;
        };
        let mut detector = Detector::new(config.rules.clone());
        let mut retry: Vec<(usize, Firing, Instant, u32)> = Vec::new();
        let mut saved = Instant::now();
        let mut unsaved = false;
        while let Some(batch) = tail.next().await {
            unsaved |= !batch.is_empty();
            for (event, at) in batch {
                for f in detector.observe(&event, &EngineFacts(&self)) {
                    let Some(rule) = detector.rules().get(f.rule).cloned() else {
                        continue;
                    };
                    if !self
                        .respond(&rule, &f, at, config.alert_webhook.as_ref())
                        .await
                    {
                        retry.push((f.rule, f, Instant::now(), 0));
                    }
                }
            }
            let now = Instant::now();
            let mut still = Vec::new();
            for (i, f, due, attempts) in std::mem::take(&mut retry) {
                let Some(rule) = detector.rules().get(i).cloned() else {
                    continue;
                };
                let backoff = std::time::Duration::from_millis(500u64 << attempts.min(7));
                if now < due + backoff {
                    still.push((i, f, due, attempts));
                } else if !self
                    .respond(&rule, &f, due, config.alert_webhook.as_ref())
                    .await
                {
                    still.push((i, f, Instant::now(), attempts.saturating_add(1)));
                }
            }
            retry = still;
            // Where to resume after a restart, at most once a second: a crash replays at
            // most that second's events (a response already carried out is `already`).
            if unsaved && saved.elapsed() >= std::time::Duration::from_secs(1) {
                if let Some(p) = tail.position()
                    && self
                        .store
                        .put_setting(CONTAINMENT_CURSOR, &p.to_string())
                        .await
                        .is_ok()
                {
                    unsaved = false;
                }
                saved = Instant::now();
            }
        }
    }

    /// The live tasks a firing's response applies to: its task, or every live task of its
    /// agent when the rule counts per agent.
    fn targets(&self, rule: &Rule, f: &Firing) -> Vec<Arc<crate::engine::LiveTask>> {
        match rule.per {
            Per::Task => f.task.iter().filter_map(|t| self.live_get(t)).collect(),
            Per::Agent => AgentName::parse(&f.agent)
                .map(|a| {
                    self.agent_tasks(&a)
                        .iter()
                        .filter_map(|t| self.live_get(t))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Carries out one firing and records it (`containment.fired`), then announces it.
    /// False when the response could not be carried out (to retry).
    async fn respond(
        &self,
        rule: &Rule,
        f: &Firing,
        seen_at: Instant,
        webhook: Option<&AlertWebhook>,
    ) -> bool {
        let reason = format!("containment rule {}: {}", rule.name, f.summary);
        let mut fired = ContainmentFired {
            rule: rule.name.clone(),
            signal: rule.signal.name().to_owned(),
            per: rule.per.as_str().to_owned(),
            summary: f.summary.clone(),
            evidence: f.evidence.clone(),
            response: rule.response.as_str().to_owned(),
            result: "applied".to_owned(),
            revoked: Vec::new(),
            error: None,
            reaction_us: 0,
        };
        let event = |fired: &ContainmentFired| NewEvent {
            ts_ms: self.clock.now_ms(),
            agent: Some(f.agent.clone()),
            task_id: f.task.clone(),
            body: Body::ContainmentFired(fired.clone()),
        };
        let reaction = |at: Instant| u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut done = true;
        match rule.response {
            Response::RevokeTask => {
                let targets = self.targets(rule, f);
                if targets.is_empty() {
                    fired.result = "already".to_owned();
                }
                for t in targets {
                    let below: Vec<String> = self
                        .descendants(&t.id)
                        .iter()
                        .map(|d| d.id.clone())
                        .collect();
                    let end = PendingEnd {
                        from: vec![TaskState::Active, TaskState::Pending],
                        to: TaskState::Revoked,
                        kind: mandate_audit::TaskEnd::Revoked,
                        reason: reason.clone(),
                        by: CONTAINMENT_ACTOR.to_owned(),
                        agent: t.agent.to_string(),
                        detail: mandate_audit::TaskEnded::default(),
                    };
                    if let Err(e) = self.end_task(&t.id, end).await {
                        // Enforced in memory already; the sweeper records it.
                        fired.error =
                            Some(format!("the end is enforced but not yet recorded: {e}"));
                    }
                    fired
                        .revoked
                        .extend(std::iter::once(t.id.clone()).chain(below));
                }
            }
            Response::QuarantineAgent => match AgentName::parse(&f.agent) {
                Err(e) => {
                    fired.result = "failed".to_owned();
                    fired.error = Some(e.to_string());
                }
                Ok(name) => match self.store.agent(&name).await {
                    Ok(Some(a)) if a.status != AgentStatus::Active => {
                        fired.result = "already".to_owned();
                    }
                    _ => {
                        let req = crate::agents::SetStatusRequest {
                            status: AgentStatus::Quarantined,
                            reason: reason.clone(),
                        };
                        match self.set_agent_status(&name, req, CONTAINMENT_ACTOR).await {
                            Ok(r) => fired.revoked = r.revoked_tasks,
                            Err(e) => {
                                fired.result = "failed".to_owned();
                                fired.error = Some(e.message);
                                done = false;
                            }
                        }
                    }
                },
            },
            Response::StepUp => {
                // In force in memory first, for the task and everything it delegated; the
                // decisions already past their check are drained before the firing is
                // recorded; the flags and the record commit together.
                let targets: Vec<_> = self
                    .targets(rule, f)
                    .into_iter()
                    .filter(|t| !t.stepped_up())
                    .collect();
                for t in &targets {
                    t.set_step_up();
                }
                for t in &targets {
                    t.drain().await;
                    for d in self.descendants(&t.id) {
                        d.drain().await;
                    }
                }
                if targets.is_empty() {
                    fired.result = "already".to_owned();
                } else {
                    let ids: Vec<String> = targets.iter().map(|t| t.id.clone()).collect();
                    fired.reaction_us = reaction(seen_at);
                    match self.store.set_task_step_up(&ids, event(&fired)).await {
                        Ok(_) => {
                            self.announce(webhook, f, &fired);
                            return true;
                        }
                        Err(e) => {
                            fired.result = "failed".to_owned();
                            fired.error = Some(format!(
                                "stepped up in memory; not recorded in the store: {e}"
                            ));
                            done = false;
                        }
                    }
                }
            }
            Response::Alert => {}
        }
        fired.reaction_us = reaction(seen_at);
        if let Err(e) = self.audit.append(event(&fired)).await {
            tracing::error!(rule = %rule.name, error = %e, "containment firing not recorded");
            done = false;
        }
        self.announce(webhook, f, &fired);
        done
    }

    /// Posts a firing to the alert webhook, signed, off every request's path.
    fn announce(&self, webhook: Option<&AlertWebhook>, f: &Firing, fired: &ContainmentFired) {
        tracing::info!(rule = %fired.rule, agent = %f.agent, task = ?f.task, response = %fired.response, result = %fired.result, "containment fired");
        let Some(w) = webhook.cloned() else {
            return;
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "event": "containment.fired",
            "agent": f.agent,
            "task_id": f.task,
            "containment": fired,
        }))
        .unwrap_or_default();
        if ALERTS_IN_FLIGHT.fetch_add(1, Ordering::SeqCst) >= MAX_ALERTS_IN_FLIGHT {
            ALERTS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(rule = %fired.rule, "too many containment alerts in flight: this one is in the audit trail only");
            return;
        }
        let http = self.http.clone();
        let clock = Arc::clone(&self.clock);
        #[expect(
            clippy::disallowed_methods,
            reason = "at most MAX_ALERTS_IN_FLIGHT deliveries, each ending after its bounded retries"
        )]
        tokio::spawn(async move {
            if let Err(e) =
                crate::webhook::deliver(&http, &w.url, &w.secret, "containment.fired", body, || {
                    clock.now_secs()
                })
                .await
            {
                tracing::warn!(error = %e, "containment alert not delivered");
            }
            ALERTS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_audit::Event;
    use mandate_audit::{CallDecided, NewEvent};
    use mandate_core::ActionClass;
    use mandate_core::{Sensitivity, ToolName};
    use mandate_policy::{GRANT_CEILING_POLICY, Outcome};

    struct NoTaint;
    impl Facts for NoTaint {
        fn tainted(&self, _: &str) -> bool {
            false
        }
    }
    struct Tainted;
    impl Facts for Tainted {
        fn tainted(&self, _: &str) -> bool {
            true
        }
    }

    fn decision(
        seq: i64,
        ts_ms: i64,
        task: &str,
        outcome: Outcome,
        policy: &str,
        action: ActionClass,
    ) -> Event {
        let body = Body::Decision(CallDecided {
            decision_id: format!("dec_{seq}"),
            intent: "x".into(),
            tool: ToolName::parse("tickets.search").unwrap(),
            action,
            resource: String::new(),
            destination: None,
            data_domain: None,
            declared_data_domain: None,
            sensitivity: Sensitivity::default(),
            args_digest: "d".into(),
            outcome,
            policies: vec![policy.to_owned()],
            reasons: Vec::new(),
            errors: Vec::new(),
            obligations: Vec::new(),
            bundle_version: "b".into(),
            latency_us: 1,
            approval_id: None,
            approved_by: None,
            break_glass: false,
            trace: None,
            delegation: None,
            point: None,
        });
        let ne = NewEvent {
            ts_ms,
            agent: Some("bot".into()),
            task_id: Some(task.into()),
            body,
        };
        mandate_audit::link(ne, seq - 1, mandate_audit::GENESIS_HASH)
    }

    fn rules(text: &str) -> Vec<Rule> {
        ContainmentConfig::from_toml(text).unwrap().rules
    }

    #[test]
    fn a_burst_fires_once_with_its_evidence_and_then_counts_afresh() {
        let mut d = Detector::new(rules(
            "[[rule]]\nname = \"burst\"\nsignal = \"denial_burst\"\nper = \"task\"\ncount = 3\nwindow_secs = 10\nresponse = \"revoke_task\"\n",
        ));
        let deny = |seq, ts| decision(seq, ts, "t1", Outcome::Deny, "p", ActionClass::Read);
        assert!(d.observe(&deny(1, 0), &NoTaint).is_empty());
        assert!(d.observe(&deny(2, 1_000), &NoTaint).is_empty());
        // An allow in between does not count.
        let allow = decision(3, 1_500, "t1", Outcome::Allow, "p", ActionClass::Read);
        assert!(d.observe(&allow, &NoTaint).is_empty());
        let f = d.observe(&deny(4, 2_000), &NoTaint);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].evidence, vec![1, 2, 4]);
        assert_eq!(f[0].task.as_deref(), Some("t1"));
        assert!(
            d.observe(&deny(5, 2_100), &NoTaint).is_empty(),
            "counting starts afresh"
        );
        // Denials spread wider than the window never fire.
        let mut d2 = Detector::new(d.rules().to_vec());
        for i in 0..10 {
            assert!(d2.observe(&deny(i, i * 6_000), &NoTaint).is_empty());
        }
        // Another task's denials are counted apart (per task).
        let mut d3 = Detector::new(d.rules().to_vec());
        assert!(d3.observe(&deny(1, 0), &NoTaint).is_empty());
        assert!(
            d3.observe(
                &decision(2, 0, "t2", Outcome::Deny, "p", ActionClass::Read),
                &NoTaint
            )
            .is_empty()
        );
        assert!(d3.observe(&deny(3, 0), &NoTaint).is_empty());
    }

    #[test]
    fn honeytoken_grant_ceiling_and_taint_signals() {
        let mut d = Detector::new(rules(
            "[[rule]]\nname = \"h\"\nsignal = \"honeytoken\"\nresponse = \"quarantine_agent\"\n\
             [[rule]]\nname = \"g\"\nsignal = \"outside_grant\"\ncount = 2\nresponse = \"step_up\"\n\
             [[rule]]\nname = \"t\"\nsignal = \"taint_then_high_risk\"\nresponse = \"revoke_task\"\n",
        ));
        let h = decision(
            1,
            0,
            "t1",
            Outcome::Deny,
            HONEYTOKEN_POLICY,
            ActionClass::Read,
        );
        let f = d.observe(&h, &NoTaint);
        assert_eq!(f.iter().map(|f| f.rule).collect::<Vec<_>>(), vec![0]);
        let g = |seq| {
            decision(
                seq,
                0,
                "t1",
                Outcome::Deny,
                GRANT_CEILING_POLICY,
                ActionClass::Read,
            )
        };
        assert!(d.observe(&g(2), &NoTaint).is_empty());
        assert_eq!(d.observe(&g(3), &NoTaint)[0].rule, 1);
        let w = decision(4, 0, "t1", Outcome::Allow, "p", ActionClass::Write);
        assert!(
            d.observe(&w, &NoTaint).is_empty(),
            "a write before taint is not a signal"
        );
        assert_eq!(d.observe(&w, &Tainted)[0].rule, 2);
        let r = decision(5, 0, "t1", Outcome::Allow, "p", ActionClass::Read);
        assert!(
            d.observe(&r, &Tainted).is_empty(),
            "a read after taint is not high risk"
        );
    }

    #[test]
    fn a_rate_far_above_the_agents_own_baseline_fires() {
        let mut d = Detector::new(rules(
            "[[rule]]\nname = \"rate\"\nsignal = \"rate_above_baseline\"\nfactor = 4.0\nwindow_secs = 10\nmin = 10\nwarmup_windows = 3\nresponse = \"alert\"\n",
        ));
        let mut seq = 0;
        let mut call = |ts| {
            seq += 1;
            decision(seq, ts, "t1", Outcome::Allow, "p", ActionClass::Read)
        };
        // Three windows of 5 calls build a baseline of 5 per window.
        for w in 0..3 {
            for i in 0..5 {
                assert!(d.observe(&call(w * 10_000 + i * 100), &NoTaint).is_empty());
            }
        }
        // 20 calls in the next window stay under 4 × 5; the 21st crosses it.
        for i in 0..20 {
            assert!(
                d.observe(&call(30_000 + i * 10), &NoTaint).is_empty(),
                "call {i}"
            );
        }
        let f = d.observe(&call(30_500), &NoTaint);
        assert_eq!(f.len(), 1, "fires once past factor × baseline");
        assert!(f[0].summary.contains("21 calls"), "{}", f[0].summary);
        assert!(
            d.observe(&call(30_600), &NoTaint).is_empty(),
            "once per window"
        );
        // Before the warm-up, no baseline, no firing however many calls.
        let mut fresh = Detector::new(d.rules().to_vec());
        for i in 0..500 {
            assert!(fresh.observe(&call(i), &NoTaint).is_empty());
        }
    }

    #[test]
    fn the_tap_passes_on_only_what_the_rules_read() {
        let honeytoken_only = watched(&ContainmentConfig::defaults().rules);
        let decoy = decision(
            1,
            0,
            "t1",
            Outcome::Deny,
            HONEYTOKEN_POLICY,
            ActionClass::Read,
        );
        let plain = decision(2, 0, "t1", Outcome::Deny, "p", ActionClass::Read);
        assert!(honeytoken_only(&decoy));
        assert!(
            !honeytoken_only(&plain),
            "a plain decision is not copied for the default rule"
        );
        let burst = watched(&rules(
            "[[rule]]\nname = \"b\"\nsignal = \"denial_burst\"\nresponse = \"alert\"\n",
        ));
        assert!(burst(&plain) && burst(&decoy));
        let nothing = watched(&[]);
        assert!(!nothing(&decoy));
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let c = ContainmentConfig::from_toml(include_str!(
            "../../../../examples/containment/containment.toml"
        ))
        .unwrap();
        assert_eq!(c.rules.len(), 7);
        assert!(c.alert_webhook.is_some());
        assert_eq!(c.ssf_receivers.len(), 1);
        let injection = c
            .rules
            .iter()
            .find(|r| r.name == "injection-then-action")
            .unwrap();
        assert_eq!(injection.per, Per::Task);
        assert!(
            c.rules
                .iter()
                .filter(|r| r.name != "injection-then-action")
                .all(|r| r.per == Per::Agent)
        );
    }

    #[test]
    fn configurations_are_checked() {
        let bad = [
            (
                "[[rule]]\nname = \"x\"\nsignal = \"nope\"\nresponse = \"alert\"\n",
                "unknown signal",
            ),
            (
                "[[rule]]\nname = \"x\"\nsignal = \"honeytoken\"\nresponse = \"nuke\"\n",
                "unknown response",
            ),
            (
                "[[rule]]\nname = \"x\"\nsignal = \"honeytoken\"\ncount = 3\nresponse = \"alert\"\n",
                "takes no count",
            ),
            (
                "[[rule]]\nname = \"x\"\nsignal = \"denial_burst\"\ncount = 0\nresponse = \"alert\"\n",
                "at least 1",
            ),
            (
                "[[rule]]\nname = \"x\"\nsignal = \"rate_above_baseline\"\nper = \"task\"\nresponse = \"alert\"\n",
                "agent's own",
            ),
            (
                "[[rule]]\nname = \"x\"\nsignal = \"honeytoken\"\nresponse = \"alert\"\nextra = 1\n",
                "unknown field",
            ),
            (
                "[[rule]]\nname = \"x\"\nsignal = \"honeytoken\"\nresponse = \"alert\"\n[[rule]]\nname = \"x\"\nsignal = \"honeytoken\"\nresponse = \"alert\"\n",
                "twice",
            ),
            (
                "[alert_webhook]\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"\n",
                "http",
            ),
            (
                "[alert_webhook]\nurl = \"http://x\"\nsecret = \"short\"\n",
                "16 characters",
            ),
            (
                "[[ssf_receiver]]\nurl = \"http://x\"\naudience = \"\"\n",
                "audience",
            ),
            (
                "[[rule]]\nname = \"x y\"\nsignal = \"honeytoken\"\nresponse = \"alert\"\n",
                "letters",
            ),
        ];
        for (text, want) in bad {
            let e = ContainmentConfig::from_toml(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let ok = ContainmentConfig::from_toml(
            "[[rule]]\nname = \"b\"\nsignal = \"denial_burst\"\nper = \"agent\"\nresponse = \"quarantine_agent\"\n\
             [alert_webhook]\nurl = \"https://alerts.example/hook\"\nsecret = \"0123456789abcdef\"\n\
             [[ssf_receiver]]\nurl = \"https://idp.example/ssf\"\naudience = \"https://idp.example\"\n",
        )
        .unwrap();
        assert_eq!(
            ok.rules[0].signal,
            Signal::DenialBurst {
                count: 10,
                window_ms: 60_000
            }
        );
        assert_eq!(ok.rules[0].per, Per::Agent);
        assert!(!format!("{:?}", ok.alert_webhook).contains("0123456789abcdef"));
        assert_eq!(ok.ssf_receivers.len(), 1);
    }
}

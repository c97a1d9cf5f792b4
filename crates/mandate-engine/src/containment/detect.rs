//! The signals: a pure detector over committed audit events (no IO, no clock: time is
//! the events' own).

use std::collections::{HashMap, VecDeque};

use mandate_audit::{Body, Event};
use mandate_core::ActionClass;
use mandate_policy::{GRANT_CEILING_POLICY, Outcome};

use super::rules::{Per, Rule, Signal};

/// The pseudo policy id of a call to a honeytoken tool (always denied).
pub const HONEYTOKEN_POLICY: &str = "mandate:honeytoken";

/// Most windows (rule × task or agent) kept at once; the oldest idle ones are dropped.
const MAX_WINDOWS: usize = 100_000;

/// Weight of the newest completed window in a rolling baseline.
const BASELINE_ALPHA: f64 = 0.3;

/// The committed events the configured rules can read: only the kinds their signals take,
/// and for a honeytoken-only set only the decisions that name the honeytoken pseudo
/// policy. This is a cheap pre-filter on the writer's thread (the detector reads each event
/// typed); everything it lets through costs a copy for the responder.
pub fn watched(rules: &[Rule]) -> crate::tail::Kinds {
    let has = |f: fn(&Signal) -> bool| rules.iter().any(|r| f(&r.signal));
    let all_decisions = has(|s| {
        matches!(
            s,
            Signal::DenialBurst { .. }
                | Signal::OutsideGrant { .. }
                | Signal::TaintThenHighRisk { .. }
                | Signal::RateAboveBaseline { .. }
        )
    });
    let honeytokens = has(|s| matches!(s, Signal::Honeytoken));
    let refusals = has(|s| {
        matches!(
            s,
            Signal::DenialBurst { .. } | Signal::TaintThenHighRisk { .. }
        )
    });
    let results = has(|s| matches!(s, Signal::BytesAboveBaseline { .. }));
    let denials = has(|s| matches!(s, Signal::ApprovalDenials { .. }));
    std::sync::Arc::new(move |e: &Event| {
        e.agent.is_some()
            && match e.kind.as_str() {
                "decision" => {
                    all_decisions
                        || (honeytokens
                            && e.data
                                .get("policies")
                                .and_then(serde_json::Value::as_array)
                                .is_some_and(|p| {
                                    p.iter().any(|p| p.as_str() == Some(HONEYTOKEN_POLICY))
                                }))
                }
                "call.refused" => refusals,
                "gateway.result" => results,
                "approval.denied" => denials,
                _ => false,
            }
    })
}

/// What the detector needs to know beyond the event itself.
pub trait Facts {
    /// Whether untrusted content has entered the task (its durable history says so).
    fn tainted(&self, task: &str) -> bool;
}

/// A rule that fired, with its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// Index of the rule in the configuration.
    pub rule: usize,
    /// The agent of the last piece of evidence.
    pub agent: String,
    /// The task of the last piece of evidence, when it had one.
    pub task: Option<String>,
    /// Sequence numbers of the evidence, oldest first.
    pub evidence: Vec<i64>,
    /// What was seen, in words.
    pub summary: String,
}

#[derive(Debug, Default)]
struct Baseline {
    window_start_ms: i64,
    current: u64,
    average: f64,
    windows: u32,
    fired: bool,
    evidence: VecDeque<i64>,
}

/// The signals' state: sliding windows of evidence per rule and task or agent, and each
/// agent's rolling baselines. Pure: time is the events' own.
#[derive(Debug)]
pub struct Detector {
    rules: Vec<Rule>,
    windows: HashMap<(usize, String), VecDeque<(i64, i64)>>,
    baselines: HashMap<(usize, String), Baseline>,
}

/// What one event says, as signals read it.
struct Reading<'a> {
    tool: Option<&'a str>,
    honeytoken: bool,
    denied: bool,
    outside_grant: bool,
    approval_denied: bool,
    high_risk: bool,
    call: bool,
    bytes: u64,
}

fn read_event(body: &Body) -> Option<Reading<'_>> {
    let mut r = Reading {
        tool: None,
        honeytoken: false,
        denied: false,
        outside_grant: false,
        approval_denied: false,
        high_risk: false,
        call: false,
        bytes: 0,
    };
    match body {
        Body::Decision(d) => {
            r.tool = Some(d.tool.as_str());
            r.call = true;
            r.honeytoken = d.policies.iter().any(|p| p == HONEYTOKEN_POLICY);
            r.denied = d.outcome == Outcome::Deny;
            r.outside_grant = r.denied && d.policies.iter().any(|p| p == GRANT_CEILING_POLICY);
            r.high_risk = d.action != ActionClass::Read;
        }
        // A refusal of a caller with a genuine credential (ended task, unusable approval,
        // a token bound elsewhere); rate-limit summaries are not attempts one by one.
        Body::CallRefused(c) if c.summarised != Some(true) && c.code != "rate_limited" => {
            r.tool = c.tool.as_deref();
            r.denied = true;
            r.high_risk = c.action.is_some_and(|a| a != ActionClass::Read);
        }
        Body::GatewayResult(g) => r.bytes = g.bytes_returned,
        Body::ApprovalDenied(_) => r.approval_denied = true,
        _ => return None,
    }
    Some(r)
}

impl Detector {
    /// A detector for these rules, with no history.
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            windows: HashMap::new(),
            baselines: HashMap::new(),
        }
    }

    /// The rules it runs.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Reads one committed event; returns the rules it made fire. A rule that fires
    /// starts counting afresh, so one burst is one firing.
    pub fn observe(&mut self, e: &Event, facts: &dyn Facts) -> Vec<Firing> {
        let Some(agent) = e.agent.as_deref() else {
            return Vec::new();
        };
        let Ok(body) = e.body() else {
            return Vec::new();
        };
        let Some(r) = read_event(&body) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for i in 0..self.rules.len() {
            let Some(rule) = self.rules.get(i) else {
                continue;
            };
            let key = match rule.per {
                Per::Agent => agent.to_owned(),
                Per::Task => match &e.task_id {
                    Some(t) => t.clone(),
                    None => continue,
                },
            };
            let fired = match rule.signal.clone() {
                Signal::Honeytoken => r.honeytoken.then(|| {
                    (
                        vec![e.seq],
                        format!("called honeytoken tool {}", r.tool.unwrap_or("(unknown)")),
                    )
                }),
                Signal::DenialBurst { count, window_ms } => self.count_in_window(
                    i,
                    key,
                    r.denied,
                    e,
                    count,
                    window_ms,
                    "denied or refused calls",
                ),
                Signal::OutsideGrant { count, window_ms } => self.count_in_window(
                    i,
                    key,
                    r.outside_grant,
                    e,
                    count,
                    window_ms,
                    "calls outside the grant",
                ),
                Signal::ApprovalDenials { count, window_ms } => self.count_in_window(
                    i,
                    key,
                    r.approval_denied,
                    e,
                    count,
                    window_ms,
                    "approval requests denied by a human",
                ),
                Signal::TaintThenHighRisk { count } => {
                    let hit = r.high_risk
                        && (r.call || r.denied)
                        && e.task_id.as_deref().is_some_and(|t| facts.tainted(t));
                    self.count_in_window(
                        i,
                        key,
                        hit,
                        e,
                        count,
                        i64::MAX,
                        "write, delete or execute attempts after untrusted content entered the task",
                    )
                }
                Signal::RateAboveBaseline {
                    factor,
                    window_ms,
                    min,
                    warmup,
                } => self.above_baseline(
                    i,
                    key,
                    u64::from(r.call),
                    e,
                    (factor, window_ms, min, warmup),
                    "calls",
                ),
                Signal::BytesAboveBaseline {
                    factor,
                    window_ms,
                    min,
                    warmup,
                } => self.above_baseline(
                    i,
                    key,
                    r.bytes,
                    e,
                    (factor, window_ms, min, warmup),
                    "bytes returned",
                ),
            };
            if let Some((evidence, summary)) = fired {
                out.push(Firing {
                    rule: i,
                    agent: agent.to_owned(),
                    task: e.task_id.clone(),
                    evidence,
                    summary,
                });
            }
        }
        if self.windows.len() > MAX_WINDOWS {
            self.windows.retain(|_, w| !w.is_empty());
        }
        if self.windows.len() > MAX_WINDOWS {
            // Still too many keys: the quietest half is forgotten rather than growing
            // without bound (a firing then needs its evidence again).
            let mut by_age: Vec<((usize, String), i64)> = self
                .windows
                .iter()
                .map(|(k, w)| (k.clone(), w.back().map_or(i64::MIN, |x| x.0)))
                .collect();
            by_age.sort_by_key(|x| x.1);
            for (k, _) in by_age.into_iter().take(MAX_WINDOWS / 2) {
                self.windows.remove(&k);
            }
        }
        out
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one rule's window: its key, the event and the rule's parameters"
    )]
    fn count_in_window(
        &mut self,
        rule: usize,
        key: String,
        hit: bool,
        e: &Event,
        count: u32,
        window_ms: i64,
        what: &str,
    ) -> Option<(Vec<i64>, String)> {
        if !hit {
            return None;
        }
        let w = self.windows.entry((rule, key)).or_default();
        w.push_back((e.ts_ms, e.seq));
        let since = e.ts_ms.saturating_sub(window_ms);
        while w.front().is_some_and(|x| x.0 < since) {
            w.pop_front();
        }
        let need = usize::try_from(count).unwrap_or(usize::MAX);
        while w.len() > need {
            w.pop_front();
        }
        if w.len() < need {
            return None;
        }
        let evidence: Vec<i64> = w.drain(..).map(|x| x.1).collect();
        let within = if window_ms == i64::MAX {
            String::new()
        } else {
            format!(" within {} s", window_ms / 1000)
        };
        Some((evidence, format!("{count} {what}{within}")))
    }

    fn above_baseline(
        &mut self,
        rule: usize,
        key: String,
        amount: u64,
        e: &Event,
        (factor, window_ms, min, warmup): (f64, i64, u64, u32),
        what: &str,
    ) -> Option<(Vec<i64>, String)> {
        if amount == 0 {
            return None;
        }
        let b = self.baselines.entry((rule, key)).or_default();
        if b.windows == 0 && b.current == 0 && b.window_start_ms == 0 {
            b.window_start_ms = e.ts_ms;
        }
        // Close every window that ended before this event (empty ones count as zero).
        let mut closed = 0;
        while e.ts_ms >= b.window_start_ms.saturating_add(window_ms) && closed < 1000 {
            let done = b.current as f64;
            b.average = if b.windows == 0 {
                done
            } else {
                BASELINE_ALPHA * done + (1.0 - BASELINE_ALPHA) * b.average
            };
            b.windows = b.windows.saturating_add(1);
            b.current = 0;
            b.fired = false;
            b.evidence.clear();
            b.window_start_ms = b.window_start_ms.saturating_add(window_ms);
            closed += 1;
        }
        if closed == 1000 {
            b.window_start_ms = e.ts_ms;
        }
        b.current = b.current.saturating_add(amount);
        b.evidence.push_back(e.seq);
        if b.evidence.len() > 64 {
            b.evidence.pop_front();
        }
        let limit = factor * b.average.max(1.0);
        if b.fired || b.windows < warmup || b.current < min || (b.current as f64) <= limit {
            return None;
        }
        b.fired = true;
        Some((
            b.evidence.iter().copied().collect(),
            format!(
                "{} {what} in {} s against a baseline of {:.1} per window ({factor}× is {limit:.1})",
                b.current,
                window_ms / 1000,
                b.average
            ),
        ))
    }
}

//! Containment (R9): signals read from committed audit events, and the responses they
//! trigger — revoke the task, quarantine the agent, step the task up, or alert.
//!
//! One responder task follows the committed events of the kinds signals read (a
//! [`crate::tail::Tail`]: the audit writer's observer, with gaps read back from the store,
//! so events committed outside the writer count too, and none is skipped). It runs a
//! [`Detector`] (pure:
//! no IO, no clock, time comes from the events) and carries out each firing through the
//! same paths a human would use (`Engine::end_task`, `Engine::set_agent_status`), so a
//! contained task has the same guarantee as a revoked one: no allowed call after the
//! acknowledgement. Nothing of this runs on the decide path.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mandate_audit::{Body, ContainmentFired, Event, NewEvent};
use mandate_core::{ActionClass, AgentName, AgentStatus, TaskState};
use mandate_policy::{GRANT_CEILING_POLICY, Outcome};
use serde::Deserialize;

use crate::engine::{Engine, HONEYTOKEN_POLICY, PendingEnd};

/// Who a containment response is recorded as (`by` of the ends and status changes).
pub const CONTAINMENT_ACTOR: &str = "mandate:containment";

/// The setting holding the last event containment handled (where it resumes).
pub const CONTAINMENT_CURSOR: &str = "containment_cursor";

/// Most alert deliveries in flight at once; beyond it an alert is logged, not posted (the
/// firing is in the audit trail either way).
const MAX_ALERTS_IN_FLIGHT: usize = 64;

static ALERTS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Most windows (rule × task or agent) kept at once; the oldest idle ones are dropped.
const MAX_WINDOWS: usize = 100_000;

/// Weight of the newest completed window in a rolling baseline.
const BASELINE_ALPHA: f64 = 0.3;

/// A containment configuration as written (TOML): `[[rule]]` tables, an optional
/// `[alert_webhook]` and `[[ssf_receiver]]` tables. Unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainment {
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    alert_webhook: Option<RawWebhook>,
    #[serde(default)]
    ssf_receiver: Vec<RawSsfReceiver>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    signal: String,
    #[serde(default)]
    per: Option<String>,
    response: String,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    window_secs: Option<u32>,
    #[serde(default)]
    factor: Option<f64>,
    #[serde(default)]
    min: Option<u64>,
    #[serde(default)]
    warmup_windows: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsfReceiver {
    url: String,
    audience: String,
    #[serde(default)]
    authorization: Option<String>,
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// Any call of a tool the catalog declares a honeytoken.
    Honeytoken,
    /// `count` denied or refused calls within `window_ms`.
    DenialBurst { count: u32, window_ms: i64 },
    /// `count` calls outside the grant within `window_ms`.
    OutsideGrant { count: u32, window_ms: i64 },
    /// `count` approval requests denied by humans within `window_ms`.
    ApprovalDenials { count: u32, window_ms: i64 },
    /// `count` write, delete or execute attempts after untrusted content entered the task.
    TaintThenHighRisk { count: u32 },
    /// An agent's calls in one window above `factor` × its own rolling baseline (and at
    /// least `min`), once `warmup` windows have built the baseline.
    RateAboveBaseline {
        factor: f64,
        window_ms: i64,
        min: u64,
        warmup: u32,
    },
    /// The same for bytes returned by the gateway.
    BytesAboveBaseline {
        factor: f64,
        window_ms: i64,
        min: u64,
        warmup: u32,
    },
}

impl Signal {
    /// The name configuration and events use.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Honeytoken => "honeytoken",
            Self::DenialBurst { .. } => "denial_burst",
            Self::OutsideGrant { .. } => "outside_grant",
            Self::ApprovalDenials { .. } => "approval_denials",
            Self::TaintThenHighRisk { .. } => "taint_then_high_risk",
            Self::RateAboveBaseline { .. } => "rate_above_baseline",
            Self::BytesAboveBaseline { .. } => "bytes_above_baseline",
        }
    }
}

/// What a rule counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// Each task on its own.
    Task,
    /// All of an agent's tasks together.
    Agent,
}

impl Per {
    fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Agent => "agent",
        }
    }
}

/// What a rule does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// End the task that produced the last piece of evidence, and every task below it.
    RevokeTask,
    /// Quarantine the agent: all its tasks (and their delegates) end, new ones are
    /// refused until a human releases it.
    QuarantineAgent,
    /// Every further write, delete or execute of the task needs a human.
    StepUp,
    /// Record and announce only.
    Alert,
}

impl Response {
    fn as_str(self) -> &'static str {
        match self {
            Self::RevokeTask => "revoke_task",
            Self::QuarantineAgent => "quarantine_agent",
            Self::StepUp => "step_up",
            Self::Alert => "alert",
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name in events and alerts.
    pub name: String,
    /// What it watches.
    pub signal: Signal,
    /// What it counts over.
    pub per: Per,
    /// What it does.
    pub response: Response,
}

/// Where firings are announced: a signed JSON POST (see [`crate::webhook`]).
#[derive(Clone)]
pub struct AlertWebhook {
    /// The receiver.
    pub url: String,
    /// The HMAC key of `Mandate-Signature`.
    pub secret: String,
}

impl std::fmt::Debug for AlertWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertWebhook")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A Shared Signals receiver: revocations and quarantines are pushed to it as signed
/// Security Event Tokens (RFC 8417, RFC 8935 push delivery).
#[derive(Clone, PartialEq, Eq)]
pub struct SsfReceiver {
    /// Where SETs are POSTed.
    pub url: String,
    /// The `aud` of the SETs sent to it.
    pub audience: String,
    /// The `Authorization` header value the receiver asks for (its stream's
    /// `authorization_header`), if any.
    pub authorization: Option<String>,
}

impl std::fmt::Debug for SsfReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsfReceiver")
            .field("url", &self.url)
            .field("audience", &self.audience)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A validated containment configuration.
#[derive(Debug, Clone, Default)]
pub struct ContainmentConfig {
    /// The rules, in the order written.
    pub rules: Vec<Rule>,
    /// Where firings are announced.
    pub alert_webhook: Option<AlertWebhook>,
    /// Where revocations and quarantines are sent as SETs.
    pub ssf_receivers: Vec<SsfReceiver>,
}

fn config_err(rule: &str, message: impl std::fmt::Display) -> String {
    format!("containment rule {rule:?}: {message}")
}

impl ContainmentConfig {
    /// The rules in force without a configuration file: a call of a honeytoken tool
    /// quarantines its agent (no honest task calls one; without honeytokens in the
    /// catalog it never fires).
    pub fn defaults() -> Self {
        Self {
            rules: vec![Rule {
                name: "honeytoken".to_owned(),
                signal: Signal::Honeytoken,
                per: Per::Agent,
                response: Response::QuarantineAgent,
            }],
            alert_webhook: None,
            ssf_receivers: Vec::new(),
        }
    }

    /// Parses and validates a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let raw: RawContainment =
            toml::from_str(text).map_err(|e| format!("not a containment configuration: {e}"))?;
        Self::validate(raw)
    }

    /// Validates a configuration as written: every rule names a known signal and response,
    /// has exactly the parameters its signal takes, within bounds, and a unique name.
    pub fn validate(raw: RawContainment) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(raw.rule.len());
        for r in raw.rule {
            let name = r.name.trim();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(format!(
                    "containment rule name {:?} must be 1-64 of letters, digits, '-', '_' and '.'",
                    r.name
                ));
            }
            if rules.iter().any(|x: &Rule| x.name == name) {
                return Err(config_err(name, "is defined twice"));
            }
            let count = |default: u32| -> Result<u32, String> {
                match r.count.unwrap_or(default) {
                    0 => Err(config_err(name, "count must be at least 1")),
                    c if c > 10_000 => Err(config_err(name, "count must be at most 10000")),
                    c => Ok(c),
                }
            };
            let window_ms = |default: u32| -> Result<i64, String> {
                match r.window_secs.unwrap_or(default) {
                    0 => Err(config_err(name, "window_secs must be at least 1")),
                    w if w > 86_400 => Err(config_err(name, "window_secs must be at most 86400")),
                    w => Ok(i64::from(w) * 1000),
                }
            };
            let factor = || -> Result<f64, String> {
                match r.factor.unwrap_or(5.0) {
                    f if f.is_finite() && (1.0..=1000.0).contains(&f) => Ok(f),
                    _ => Err(config_err(name, "factor must be between 1 and 1000")),
                }
            };
            let warmup = || -> Result<u32, String> {
                match r.warmup_windows.unwrap_or(3) {
                    w if (1..=1000).contains(&w) => Ok(w),
                    _ => Err(config_err(
                        name,
                        "warmup_windows must be between 1 and 1000",
                    )),
                }
            };
            let allowed: &[&str] = match r.signal.as_str() {
                "honeytoken" => &[],
                "denial_burst" | "outside_grant" | "approval_denials" => &["count", "window_secs"],
                "taint_then_high_risk" => &["count"],
                "rate_above_baseline" | "bytes_above_baseline" => {
                    &["factor", "window_secs", "min", "warmup_windows"]
                }
                other => {
                    return Err(config_err(
                        name,
                        format!(
                            "unknown signal {other:?} (honeytoken, denial_burst, outside_grant, approval_denials, taint_then_high_risk, rate_above_baseline, bytes_above_baseline)"
                        ),
                    ));
                }
            };
            let given = [
                ("count", r.count.is_some()),
                ("window_secs", r.window_secs.is_some()),
                ("factor", r.factor.is_some()),
                ("min", r.min.is_some()),
                ("warmup_windows", r.warmup_windows.is_some()),
            ];
            if let Some((p, _)) = given.iter().find(|(p, set)| *set && !allowed.contains(p)) {
                return Err(config_err(
                    name,
                    format!("signal {} takes no {p}", r.signal),
                ));
            }
            let signal = match r.signal.as_str() {
                "honeytoken" => Signal::Honeytoken,
                "denial_burst" => Signal::DenialBurst {
                    count: count(10)?,
                    window_ms: window_ms(60)?,
                },
                "outside_grant" => Signal::OutsideGrant {
                    count: count(3)?,
                    window_ms: window_ms(60)?,
                },
                "approval_denials" => Signal::ApprovalDenials {
                    count: count(2)?,
                    window_ms: window_ms(900)?,
                },
                "taint_then_high_risk" => Signal::TaintThenHighRisk { count: count(1)? },
                "rate_above_baseline" => Signal::RateAboveBaseline {
                    factor: factor()?,
                    window_ms: window_ms(60)?,
                    min: r.min.unwrap_or(50),
                    warmup: warmup()?,
                },
                _ => Signal::BytesAboveBaseline {
                    factor: factor()?,
                    window_ms: window_ms(60)?,
                    min: r.min.unwrap_or(1_000_000),
                    warmup: warmup()?,
                },
            };
            let baseline = matches!(
                signal,
                Signal::RateAboveBaseline { .. } | Signal::BytesAboveBaseline { .. }
            );
            // Counted per agent unless a rule says otherwise: a new task (or a delegate)
            // must not start the count afresh. Taint belongs to a task.
            let task_signal = matches!(signal, Signal::TaintThenHighRisk { .. });
            let per = match (r.per.as_deref(), baseline) {
                (Some("agent"), _) => Per::Agent,
                (None, _) if !task_signal => Per::Agent,
                (None, _) | (Some("task"), false) => Per::Task,
                (Some("task"), true) => {
                    return Err(config_err(
                        name,
                        "a baseline is the agent's own: per must be \"agent\"",
                    ));
                }
                (Some(other), _) => {
                    return Err(config_err(
                        name,
                        format!("per must be \"task\" or \"agent\", not {other:?}"),
                    ));
                }
            };
            let response = match r.response.as_str() {
                "revoke_task" => Response::RevokeTask,
                "quarantine_agent" => Response::QuarantineAgent,
                "step_up" => Response::StepUp,
                "alert" => Response::Alert,
                other => {
                    return Err(config_err(
                        name,
                        format!(
                            "unknown response {other:?} (revoke_task, quarantine_agent, step_up, alert)"
                        ),
                    ));
                }
            };
            rules.push(Rule {
                name: name.to_owned(),
                signal,
                per,
                response,
            });
        }
        let http_url = |what: &str, url: &str| -> Result<(), String> {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() <= 2048
                && !url.chars().any(|c| c.is_control() || c.is_whitespace());
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{what} must be an http:// or https:// URL, not {url:?}"
                ))
            }
        };
        let alert_webhook = match raw.alert_webhook {
            None => None,
            Some(w) => {
                http_url("alert_webhook.url", &w.url)?;
                if w.secret.len() < 16 {
                    return Err("alert_webhook.secret must be at least 16 characters".to_owned());
                }
                Some(AlertWebhook {
                    url: w.url,
                    secret: w.secret,
                })
            }
        };
        let mut ssf_receivers = Vec::new();
        for s in raw.ssf_receiver {
            http_url("ssf_receiver.url", &s.url)?;
            if s.audience.trim().is_empty() || s.audience.len() > 512 {
                return Err("ssf_receiver.audience must be 1-512 characters".to_owned());
            }
            if s.authorization
                .as_ref()
                .is_some_and(|a| a.is_empty() || a.len() > 4096 || a.chars().any(char::is_control))
            {
                return Err(
                    "ssf_receiver.authorization must be 1-4096 printable characters".to_owned(),
                );
            }
            ssf_receivers.push(SsfReceiver {
                url: s.url,
                audience: s.audience,
                authorization: s.authorization,
            });
        }
        Ok(Self {
            rules,
            alert_webhook,
            ssf_receivers,
        })
    }
}

/// The kinds any signal reads.
pub fn watched(kind: &str) -> bool {
    matches!(
        kind,
        "decision" | "call.refused" | "gateway.result" | "approval.denied"
    )
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
                if now < due + backoff
                    || self
                        .respond(&rule, &f, due, config.alert_webhook.as_ref())
                        .await
                {
                    if now < due + backoff {
                        still.push((i, f, due, attempts));
                    }
                    continue;
                }
                still.push((i, f, Instant::now(), attempts.saturating_add(1)));
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
    use mandate_audit::{CallDecided, NewEvent};
    use mandate_core::{Sensitivity, ToolName};

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
    fn the_example_configuration_is_valid() {
        let c = ContainmentConfig::from_toml(include_str!(
            "../../../examples/containment/containment.toml"
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

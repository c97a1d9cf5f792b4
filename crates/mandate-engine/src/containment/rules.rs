//! Containment rules as written (TOML) and validated: signals, what they count over, and
//! responses; the alert webhook and Shared Signals receivers. Pure: no IO.

use serde::Deserialize;

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
    /// The name configuration and events use.
    pub fn as_str(self) -> &'static str {
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
    /// The name configuration and events use.
    pub fn as_str(self) -> &'static str {
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

//! Offline policy tests: fixture files of requests and expected decisions, run against a
//! bundle without a server (`mandate policy test DIR`).
//!
//! A bundle's tests live in `DIR/tests/*.json`, each an array of cases:
//!
//! ```json
//! [{ "name": "support reads tickets",
//!    "agent": { "tier": 1 },
//!    "call": { "tool": "tickets.search", "action": "read" },
//!    "expect": { "outcome": "allow", "policies": ["support-read"] } },
//!  { "name": "tasks are capped at 30 minutes",
//!    "start": { "scope": { "tools": ["tickets.search"], "actions": ["read"] }, "ttl_secs": 600 },
//!    "expect": { "outcome": "allow", "granted": ["tickets.search:read"], "ttl_cap_secs": 1800 } }]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use mandate_core::{ActionClass, DataDomain, Destination, RequestedScope, Sensitivity, ToolName};
use serde::Deserialize;

use crate::{
    AgentFacts, Bundle, CallRequest, History, Outcome, StartRequest, TaskEntities, TaskFacts,
};

/// The agent a case runs as; every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestAgent {
    /// Name (default `test-agent`).
    pub name: String,
    /// Owner (default `owner@example.com`).
    pub owner: String,
    /// Tier (default 1).
    pub tier: u8,
    /// Status (default `active`).
    pub status: String,
    /// Trust domain (default `mandate.local`).
    pub trust_domain: String,
}

impl Default for TestAgent {
    fn default() -> Self {
        Self {
            name: "test-agent".into(),
            owner: "owner@example.com".into(),
            tier: 1,
            status: "active".into(),
            trust_domain: "mandate.local".into(),
        }
    }
}

/// The task a case runs in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestTask {
    /// Purpose (default `policy test`).
    pub purpose: String,
    /// Environment (default `production`).
    pub environment: String,
}

impl Default for TestTask {
    fn default() -> Self {
        Self {
            purpose: "policy test".into(),
            environment: "production".into(),
        }
    }
}

/// One tool call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCall {
    /// Tool.
    pub tool: ToolName,
    /// Action class.
    pub action: ActionClass,
    /// Resource.
    #[serde(default)]
    pub resource: String,
    /// Destination.
    #[serde(default)]
    pub destination: Option<Destination>,
    /// Data domain.
    #[serde(default)]
    pub data_domain: Option<DataDomain>,
    /// Sensitivity (default internal).
    #[serde(default)]
    pub sensitivity: Sensitivity,
    /// Hex digest of the arguments (default: the digest of `arguments`, or empty).
    #[serde(default)]
    pub args_digest: String,
    /// The call's arguments, as a JSON object (typed by the catalog into `context.args`).
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
    /// Unix seconds (default 1,800,000,000).
    #[serde(default)]
    pub now: Option<i64>,
}

impl TestCall {
    /// The call as the decision path sees it.
    fn request<'a>(&'a self, digest: &'a str, history: &'a History) -> CallRequest<'a> {
        CallRequest {
            action: self.action,
            tool: &self.tool,
            resource: &self.resource,
            destination: self.destination.as_ref(),
            data_domain: self.data_domain.as_ref(),
            sensitivity: self.sensitivity,
            args_digest: digest,
            args: self.arguments.as_ref(),
            now_secs: self.now.unwrap_or(1_800_000_000),
            history,
        }
    }

    /// `args_digest`, or the digest of the canonical `arguments` when none is given.
    fn digest(&self) -> String {
        match (&self.arguments, self.args_digest.is_empty()) {
            (Some(v), true) => mandate_core::CanonicalArgs::from_value(v.clone())
                .digest()
                .to_owned(),
            _ => self.args_digest.clone(),
        }
    }
}

/// A task start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestStart {
    /// Requested scope.
    pub scope: RequestedScope,
    /// Requested lifetime (default 900).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
    /// Whether the task's tokens are bound to a key (DPoP); default false.
    #[serde(default)]
    pub sender_constrained: bool,
}

/// What the case expects; only the fields given are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// allow | deny | approval_required.
    pub outcome: Outcome,
    /// The determining policy ids, in any order.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
    /// Obligations as `name=value`, in any order.
    #[serde(default)]
    pub obligations: Option<Vec<String>>,
    /// For starts: granted pairs as `tool:action`, in any order.
    #[serde(default)]
    pub granted: Option<Vec<String>>,
    /// For starts: the TTL cap.
    #[serde(default)]
    pub ttl_cap_secs: Option<i64>,
}

/// One fixture case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What it checks, in words.
    pub name: String,
    /// The agent.
    #[serde(default)]
    pub agent: TestAgent,
    /// The task.
    #[serde(default)]
    pub task: TestTask,
    /// What the task has done so far.
    #[serde(default)]
    pub history: History,
    /// A call to decide (or `start`).
    #[serde(default)]
    pub call: Option<TestCall>,
    /// A task start to decide (or `call`).
    #[serde(default)]
    pub start: Option<TestStart>,
    /// The expected answer.
    pub expect: Expect,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// Fixture file, relative to the bundle.
    pub file: String,
    /// Case name.
    pub name: String,
    /// Empty when it passed; otherwise one line per difference.
    pub differences: Vec<String>,
}

impl CaseResult {
    /// True when the decision matched.
    pub fn passed(&self) -> bool {
        self.differences.is_empty()
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn compare(differences: &mut Vec<String>, what: &str, want: Option<Vec<String>>, got: Vec<String>) {
    if let Some(want) = want {
        let (want, got) = (sorted(want), sorted(got));
        if want != got {
            differences.push(format!(
                "{what}: expected [{}], got [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
    }
}

/// Runs one case against a bundle.
pub fn run_case(bundle: &Bundle, file: &str, case: &TestCase) -> CaseResult {
    let mut differences = Vec::new();
    let tools: Vec<&ToolName> = match (&case.call, &case.start) {
        (Some(c), _) => vec![&c.tool],
        (None, Some(s)) => s.scope.tools.iter().collect(),
        (None, None) => Vec::new(),
    };
    let entities = match entities(bundle, &case.agent, &case.task, tools) {
        Ok(e) => e,
        Err(e) => {
            differences.push(format!("could not build the agent and task: {e}"));
            return CaseResult {
                file: file.to_owned(),
                name: case.name.clone(),
                differences,
            };
        }
    };
    let explain = |d: &crate::Decision| {
        format!(
            "decided {} by [{}]: {}",
            d.outcome.as_str(),
            d.policies.join(", "),
            d.reasons.join("; ")
        )
    };
    match (&case.call, &case.start) {
        (Some(call), None) => {
            let digest = call.digest();
            let d = bundle.decide_call(&entities, &call.request(&digest, &case.history));
            if d.outcome != case.expect.outcome {
                differences.push(format!(
                    "outcome: expected {}, {}",
                    case.expect.outcome.as_str(),
                    explain(&d)
                ));
            }
            compare(
                &mut differences,
                "policies",
                case.expect.policies.clone(),
                d.policies.clone(),
            );
            compare(
                &mut differences,
                "obligations",
                case.expect.obligations.clone(),
                d.obligations
                    .iter()
                    .map(|o| format!("{}={}", o.name, o.value))
                    .collect(),
            );
            if case.expect.granted.is_some() || case.expect.ttl_cap_secs.is_some() {
                differences.push("`granted` and `ttl_cap_secs` apply to `start` cases only".into());
            }
        }
        (None, Some(start)) => {
            let sd = bundle.decide_start(
                &entities,
                &StartRequest {
                    scope: &start.scope,
                    ttl_secs: start.ttl_secs.unwrap_or(900),
                    environment: &case.task.environment,
                    now_secs: 1_800_000_000,
                    sender_constrained: start.sender_constrained,
                },
            );
            if sd.decision.outcome != case.expect.outcome {
                differences.push(format!(
                    "outcome: expected {}, {}",
                    case.expect.outcome.as_str(),
                    explain(&sd.decision)
                ));
            }
            compare(
                &mut differences,
                "policies",
                case.expect.policies.clone(),
                sd.decision.policies.clone(),
            );
            let before = differences.len();
            compare(
                &mut differences,
                "granted",
                case.expect.granted.clone(),
                sd.grant
                    .tools
                    .iter()
                    .flat_map(|(t, a)| a.iter().map(move |a| format!("{t}:{a}")))
                    .collect(),
            );
            if differences.len() > before {
                // Say why each pair was refused.
                for item in sd.items.iter().filter(|i| i.outcome == Outcome::Deny) {
                    differences.push(format!(
                        "  refused {}:{} by [{}]: {}",
                        item.tool,
                        item.action,
                        item.policies.join(", "),
                        item.reasons.join("; ")
                    ));
                }
            }
            if let Some(want) = case.expect.ttl_cap_secs
                && sd.ttl_cap_secs != Some(want)
            {
                differences.push(format!(
                    "ttl_cap_secs: expected {want}, got {:?}",
                    sd.ttl_cap_secs
                ));
            }
        }
        _ => differences.push("a case needs exactly one of `call` or `start`".into()),
    }
    CaseResult {
        file: file.to_owned(),
        name: case.name.clone(),
        differences,
    }
}

/// Why the tests could not run at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TestError {
    /// No fixtures.
    #[error("no test fixtures in {0}: add tests/*.json (see `mandate policy test --help`)")]
    NoTests(String),
    /// A fixture file could not be read or parsed.
    #[error("{file}: {message}")]
    Fixture {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

/// Runs every case in `dir/tests/*.json` against `bundle`, in file order.
pub fn run_dir(bundle: &Bundle, dir: &Path) -> Result<Vec<CaseResult>, TestError> {
    let tests = dir.join("tests");
    let shown = tests.display().to_string();
    let entries = std::fs::read_dir(&tests).map_err(|_| TestError::NoTests(shown.clone()))?;
    let mut files = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "json") {
            let name = format!("tests/{}", entry.file_name().to_string_lossy());
            let text = std::fs::read_to_string(&path).map_err(|e| TestError::Fixture {
                file: name.clone(),
                message: e.to_string(),
            })?;
            files.insert(name, text);
        }
    }
    if files.is_empty() {
        return Err(TestError::NoTests(shown));
    }
    let mut results = Vec::new();
    for (file, text) in files {
        let cases: Vec<TestCase> = serde_json::from_str(&text).map_err(|e| TestError::Fixture {
            file: file.clone(),
            message: format!("not a list of test cases: {e}"),
        })?;
        results.extend(cases.iter().map(|c| run_case(bundle, &file, c)));
    }
    Ok(results)
}

/// One call or task start to explain: a test case without an expectation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainCase {
    /// The agent.
    #[serde(default)]
    pub agent: TestAgent,
    /// The task.
    #[serde(default)]
    pub task: TestTask,
    /// What the task has done so far.
    #[serde(default)]
    pub history: History,
    /// The call (or `start`).
    #[serde(default)]
    pub call: Option<TestCall>,
    /// The task start (or `call`).
    #[serde(default)]
    pub start: Option<TestStart>,
}

/// A task start, explained: the `start_task` decision and how each requested pair fared,
/// with the reason of every refusal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StartExplanation {
    /// The `start_task` decision.
    pub decision: crate::Decision,
    /// The smallest `@max_ttl_secs` of the determining policies.
    pub ttl_cap_secs: Option<i64>,
    /// Every requested (tool, action) pair.
    pub items: Vec<crate::ItemOutcome>,
}

/// What [`explain_case`] explains.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Explained {
    /// A call.
    Call(crate::Explanation),
    /// A task start.
    Start(StartExplanation),
}

fn entities<'a>(
    bundle: &Bundle,
    agent: &TestAgent,
    task: &TestTask,
    tools: impl IntoIterator<Item = &'a ToolName>,
) -> Result<TaskEntities, String> {
    let facts = AgentFacts {
        name: agent.name.clone(),
        spiffe_id: format!("spiffe://{}/agent/{}", agent.trust_domain, agent.name),
        owner: agent.owner.clone(),
        tier: agent.tier,
        status: agent.status.clone(),
        trust_domain: agent.trust_domain.clone(),
    };
    let task = TaskFacts {
        id: "tsk_test".into(),
        purpose: task.purpose.clone(),
        environment: task.environment.clone(),
        delegation: None,
    };
    bundle
        .task_entities(&facts, &task, tools)
        .map_err(|e| e.to_string())
}

/// Decides and explains one call or task start.
pub fn explain_case(bundle: &Bundle, case: &ExplainCase) -> Result<Explained, String> {
    match (&case.call, &case.start) {
        (Some(call), None) => {
            let e = entities(bundle, &case.agent, &case.task, [&call.tool])?;
            let digest = call.digest();
            Ok(Explained::Call(
                bundle.explain_call(&e, &call.request(&digest, &case.history)),
            ))
        }
        (None, Some(start)) => {
            let e = entities(bundle, &case.agent, &case.task, &start.scope.tools)?;
            let sd = bundle.decide_start(
                &e,
                &StartRequest {
                    scope: &start.scope,
                    ttl_secs: start.ttl_secs.unwrap_or(900),
                    environment: &case.task.environment,
                    now_secs: 1_800_000_000,
                    sender_constrained: start.sender_constrained,
                },
            );
            Ok(Explained::Start(StartExplanation {
                decision: sd.decision,
                ttl_cap_secs: sd.ttl_cap_secs,
                items: sd.items,
            }))
        }
        _ => Err("a request needs exactly one of `call` or `start`".into()),
    }
}

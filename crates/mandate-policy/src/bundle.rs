//! Loading a policy bundle: every `*.cedar` file under a directory, parsed, given stable
//! ids, validated against the built-in schema, versioned by content hash and sliced.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Authorizer, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    ResourceConstraint, Schema, ValidationMode, Validator,
};
use mandate_core::{ActionClass, sha256_hex};

use crate::facts::{type_name, uid};

/// The built-in schema every bundle is validated against.
pub const SCHEMA_TEXT: &str = include_str!("mandate.cedarschema");

/// Largest policy file accepted.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most policies in one bundle.
const MAX_POLICIES: usize = 10_000;
/// Deepest directory nesting under the bundle root.
const MAX_DEPTH: usize = 16;

/// One problem in a bundle, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Diagnostic {
    /// File, relative to the bundle directory (or `<schema>`, `<bundle>`).
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What is wrong, and where helpful what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A bundle that cannot enforce. It is refused whole: nothing of it is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BundleError {
    /// Every problem found.
    pub diagnostics: Vec<Diagnostic>,
}

impl BundleError {
    fn one(file: &str, message: impl Into<String>) -> Self {
        Self {
            diagnostics: vec![Diagnostic {
                file: file.to_owned(),
                line: 0,
                column: 0,
                message: message.into(),
            }],
        }
    }

    pub(crate) fn internal(message: String) -> Self {
        Self::one("<internal>", message)
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policy bundle rejected ({} problem(s))",
            self.diagnostics.len()
        )?;
        for d in &self.diagnostics {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// Obligations and explanations read from a policy's annotations.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyMeta {
    /// `@reason("…")`: the human-readable reason reported when this policy determines.
    pub reason: Option<String>,
    /// `@approval_required("…")`: an allow by this policy needs a human first.
    pub approval: Option<String>,
    /// `@approvals("N")`: distinct approvers needed (1 when absent).
    pub approvals: u32,
    /// `@owner_may_approve`: the agent's owner may approve (separation of duties waived).
    pub owner_may_approve: bool,
    /// `@approver_group("name")`: the group asked to approve.
    pub approver_group: Option<String>,
    /// `@max_ttl_secs("N")`: caps the life of a task this policy lets start.
    pub max_ttl_secs: Option<i64>,
    /// `@obligation_<name>("value")`: what an enforcement point must do with an allow.
    pub obligations: Vec<(String, String)>,
}

/// The policies that can apply to one action, split by the tool they name.
#[derive(Debug, Default)]
pub(crate) struct Slice {
    /// Policies whose resource scope is not an equality on a tool.
    pub generic: PolicySet,
    /// For each tool named by `resource == Mandate::Tool::"…"`: `generic` plus those.
    pub by_tool: HashMap<String, PolicySet>,
    /// Whether any policy of `generic` mentions `history`.
    pub generic_history: bool,
    /// Tools whose slice mentions `history`.
    pub history_tools: std::collections::HashSet<String>,
    /// For the grant phase (arguments not yet known): each tool's slice without the
    /// policies that read `context.args`, where some do.
    pub grant_by_tool: HashMap<String, PolicySet>,
    /// The permits left out of `grant_by_tool`: a pair they could permit for some
    /// arguments is granted, and each call is decided on its arguments.
    pub arg_permits: HashMap<String, Vec<PolicyId>>,
}

impl Slice {
    pub fn for_tool(&self, tool: &str) -> &PolicySet {
        self.by_tool.get(tool).unwrap_or(&self.generic)
    }

    /// The policies that decide a grant of `tool`: those that do not read its arguments.
    pub fn for_grant(&self, tool: &str) -> &PolicySet {
        self.grant_by_tool
            .get(tool)
            .unwrap_or_else(|| self.for_tool(tool))
    }

    /// Permits of `tool` that read its arguments (left out of the grant phase).
    pub fn arg_permits(&self, tool: &str) -> &[PolicyId] {
        self.arg_permits.get(tool).map_or(&[], Vec::as_slice)
    }

    /// Whether the slice for `tool` can read `context.history`. Building the history
    /// record is the costliest part of a call's context, so it is built only when some
    /// policy that can apply names it. The test is textual and so conservative: an
    /// attribute can only be read by naming it.
    pub fn needs_history(&self, tool: &str) -> bool {
        if self.by_tool.contains_key(tool) {
            self.history_tools.contains(tool)
        } else {
            self.generic_history
        }
    }
}

/// Conservative: true if the policy's source or its JSON form names `history` (the JSON
/// form has string escapes such as `\u{68}istory` resolved), or if it cannot be rendered.
fn mentions_history(set: &PolicySet) -> bool {
    set.policies().any(|p| {
        p.to_string().contains("history")
            || p.to_json()
                .map_or(true, |j| j.to_string().contains("history"))
    })
}

/// Conservative: true if the policy reads an attribute named `args` (of `context`), or if
/// it cannot be rendered. `context.args_digest` is another attribute and does not count.
pub(crate) fn reads_args(p: &Policy) -> bool {
    p.to_json()
        .map_or(true, |j| j.to_string().contains("\"attr\":\"args\""))
}

/// A validated, versioned, sliced set of policies: the unit that enforces.
#[derive(Debug)]
pub struct Bundle {
    pub(crate) version: String,
    pub(crate) all: PolicySet,
    pub(crate) schema: Schema,
    pub(crate) meta: HashMap<PolicyId, PolicyMeta>,
    pub(crate) start: Slice,
    pub(crate) delegate: Slice,
    pub(crate) calls: [Slice; 4],
    pub(crate) start_uid: EntityUid,
    pub(crate) delegate_uid: EntityUid,
    pub(crate) call_uids: [EntityUid; 4],
    pub(crate) tool_type: EntityTypeName,
    pub(crate) authorizer: Authorizer,
    pub(crate) sources: BTreeMap<String, String>,
    pub(crate) catalog: crate::ToolCatalog,
}

fn action_index(a: ActionClass) -> usize {
    match a {
        ActionClass::Read => 0,
        ActionClass::Write => 1,
        ActionClass::Delete => 2,
        ActionClass::Execute => 3,
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn located(file: &str, text: &str, diag: &dyn miette::Diagnostic, message: String) -> Diagnostic {
    let offset = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let (line, column) = offset.map_or((0, 0), |o| line_col(text, o));
    let message = match diag.help() {
        Some(help) => format!("{message} (help: {help})"),
        None => message,
    };
    Diagnostic {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

impl Bundle {
    /// Loads every `*.cedar` file under `dir` (recursively, in path order) as one bundle.
    pub fn load_dir(dir: &Path) -> Result<Self, BundleError> {
        Self::from_sources(read_sources(dir)?)
    }

    /// The version the files under `dir` would have as a bundle, without validating them:
    /// cheap enough to poll for changes.
    pub fn version_of_dir(dir: &Path) -> Result<String, BundleError> {
        Ok(bundle_version(&read_sources(dir)?))
    }

    /// Builds a bundle from `(file name, Cedar text)` pairs.
    pub fn from_sources(files: BTreeMap<String, String>) -> Result<Self, BundleError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA_TEXT)
            .map_err(|e| BundleError::internal(format!("built-in schema: {e}")))?;
        let mut diagnostics = Vec::new();
        let mut all = PolicySet::new();
        let mut origin: HashMap<PolicyId, String> = HashMap::new();
        let mut meta = HashMap::new();

        let mut catalog = crate::ToolCatalog::default();
        if let Some(text) = files.get(crate::CATALOG_FILE) {
            match crate::ToolCatalog::parse(text) {
                Ok(c) => catalog = c,
                Err(message) => diagnostics.push(Diagnostic {
                    file: crate::CATALOG_FILE.into(),
                    line: 0,
                    column: 0,
                    message,
                }),
            }
        }
        for (file, text) in files.iter().filter(|(f, _)| f.ends_with(".cedar")) {
            let parsed = match PolicySet::from_str(text) {
                Ok(p) => p,
                Err(errs) => {
                    for e in errs.iter() {
                        diagnostics.push(located(file, text, e, e.to_string()));
                    }
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                diagnostics.push(Diagnostic {
                    file: file.clone(),
                    line: 0,
                    column: 0,
                    message: "policy templates are not supported; write static policies".into(),
                });
                continue;
            }
            let stem = file.strip_suffix(".cedar").unwrap_or(file);
            for (index, policy) in parsed.policies().enumerate() {
                let id = match policy.annotation("id") {
                    Some(id) if !id.is_empty() => id.to_owned(),
                    _ => format!("{stem}:{index}"),
                };
                let policy: Policy = policy.new_id(PolicyId::new(&id));
                let pid = policy.id().clone();
                // The public API exposes no source span for a parsed policy, so problems
                // found after parsing are located by the annotation that caused them.
                let loc = |needle: &str, message: String| {
                    let (line, column) = text.rfind(needle).map_or((0, 0), |o| line_col(text, o));
                    Diagnostic {
                        file: file.clone(),
                        line,
                        column,
                        message,
                    }
                };
                if let Some(first) = origin.get(&pid) {
                    diagnostics.push(loc(&format!("\"{id}\""), format!("policy id {id:?} is already used in {first}: give each policy a unique @id")));
                    continue;
                }
                match policy_meta(&policy) {
                    Ok(m) => {
                        meta.insert(pid.clone(), m);
                    }
                    Err((annotation, message)) => {
                        diagnostics.push(loc(annotation, message));
                        continue;
                    }
                }
                origin.insert(pid, file.clone());
                if let Err(e) = all.add(policy) {
                    diagnostics.push(loc(&id, e.to_string()));
                }
            }
        }
        if all.policies().count() > MAX_POLICIES {
            diagnostics.push(Diagnostic {
                file: "<bundle>".into(),
                line: 0,
                column: 0,
                message: format!("bundle holds more than {MAX_POLICIES} policies"),
            });
        }
        if diagnostics.is_empty() {
            validate(&all, &schema, &catalog, &files, &origin, &mut diagnostics)?;
        }
        if !diagnostics.is_empty() {
            return Err(BundleError { diagnostics });
        }

        let action_ty = type_name("Mandate::Action")?;
        let start_uid = uid(&action_ty, "start_task");
        let call_uids = ActionClass::ALL.map(|a| uid(&action_ty, a.as_str()));
        let tool_type = type_name("Mandate::Tool")?;
        let version = bundle_version(&files);
        let start = slice(&all, &start_uid, &tool_type)?;
        let delegate_uid = uid(&action_ty, "delegate");
        let delegate = slice(&all, &delegate_uid, &tool_type)?;
        let mut calls: [Slice; 4] = Default::default();
        for (i, a) in call_uids.iter().enumerate() {
            if let Some(s) = calls.get_mut(i) {
                *s = slice(&all, a, &tool_type)?;
            }
        }
        Ok(Self {
            version,
            all,
            schema,
            meta,
            start,
            delegate,
            calls,
            start_uid,
            delegate_uid,
            call_uids,
            tool_type,
            authorizer: Authorizer::new(),
            sources: files,
            catalog,
        })
    }

    /// The content hash that versions this bundle: `sha256:<hex>`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.all.policies().count()
    }

    /// True when the bundle holds no policy (and so denies everything).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole policy set, unsliced.
    pub fn policy_set(&self) -> &PolicySet {
        &self.all
    }

    /// The schema the bundle was validated against.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The trusted tool catalog (`tools.json`), empty when the bundle has none.
    pub fn catalog(&self) -> &crate::ToolCatalog {
        &self.catalog
    }

    /// The Cedar entities of a task: its agent, the task, and each named tool as the
    /// catalog describes it (uncataloged tools get `cataloged: false` and the most
    /// cautious defaults).
    pub fn task_entities<'a>(
        &self,
        agent: &crate::AgentFacts,
        task: &crate::TaskFacts,
        tools: impl IntoIterator<Item = &'a mandate_core::ToolName>,
    ) -> Result<crate::TaskEntities, BundleError> {
        crate::TaskEntities::build_with(agent, task, tools, &self.catalog)
    }

    /// The bundle's files, by relative path.
    pub fn sources(&self) -> &BTreeMap<String, String> {
        &self.sources
    }

    pub(crate) fn call_slice(&self, action: ActionClass) -> Option<&Slice> {
        self.calls.get(action_index(action))
    }

    pub(crate) fn call_uid(&self, action: ActionClass) -> Option<&EntityUid> {
        self.call_uids.get(action_index(action))
    }
}

/// The placeholder in the built-in schema that a tool's declared arguments replace.
const ARGS_PLACEHOLDER: &str = "type Args = {};";

/// The built-in schema with `context.args` typed as `args` declares.
pub(crate) fn schema_with_args(args: &crate::ArgSchema) -> Result<Schema, BundleError> {
    let text = SCHEMA_TEXT.replace(
        ARGS_PLACEHOLDER,
        &format!("type Args = {};", args.cedar_type()),
    );
    Schema::from_cedarschema_str(&text)
        .map(|(s, _)| s)
        .map_err(|e| BundleError::internal(format!("schema for declared arguments: {e}")))
}

/// The tool a policy's resource scope pins it to (`resource == Mandate::Tool::"…"`).
fn pinned_tool(p: &Policy) -> Option<String> {
    match p.resource_constraint() {
        ResourceConstraint::Eq(r) if r.type_name().to_string() == "Mandate::Tool" => {
            Some(r.id().unescaped().to_owned())
        }
        _ => None,
    }
}

/// Validates every policy strictly: one pinned to a tool whose arguments the catalog
/// declares against the schema with `context.args` typed as that tool's record, every
/// other against the built-in schema (where `context.args` has no fields), so a policy
/// that names an argument its tool does not have is an error, located in its file.
fn validate(
    all: &PolicySet,
    schema: &Schema,
    catalog: &crate::ToolCatalog,
    files: &BTreeMap<String, String>,
    origin: &HashMap<PolicyId, String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<(), BundleError> {
    let mut groups: BTreeMap<Option<String>, PolicySet> = BTreeMap::new();
    for p in all.policies() {
        let tool = pinned_tool(p).filter(|t| {
            mandate_core::ToolName::parse(t).is_ok_and(|t| catalog.arguments(&t).is_some())
        });
        groups
            .entry(tool)
            .or_default()
            .add(p.clone())
            .map_err(|e| BundleError::internal(format!("validation groups: {e}")))?;
    }
    // Strict validation reports one error per action a policy may apply to: one is kept
    // for each place in a policy.
    let mut reported = std::collections::HashSet::new();
    for (tool, set) in &groups {
        let typed = match tool
            .as_deref()
            .and_then(|t| mandate_core::ToolName::parse(t).ok())
            .and_then(|t| catalog.arguments(&t).cloned())
        {
            Some(args) => schema_with_args(&args)?,
            None => schema.clone(),
        };
        let result = Validator::new(typed).validate(set, ValidationMode::Strict);
        for e in result.validation_errors() {
            let file = origin.get(e.policy_id()).cloned().unwrap_or_default();
            let text = files.get(&file).map(String::as_str).unwrap_or_default();
            let mut message = format!("policy {}: {e}", e.policy_id());
            if all.policy(e.policy_id()).is_some_and(reads_args) {
                let hint = match tool {
                    Some(t) => format!(
                        "; `context.args` has the fields the catalog declares for `{t}`"
                    ),
                    None => "; only a policy for one tool whose arguments the catalog declares (`resource == Mandate::Tool::\"…\"`) can read fields of `context.args`".to_owned(),
                };
                message.push_str(&hint);
            }
            let d = located(&file, text, e, message);
            if reported.insert((e.policy_id().clone(), d.file.clone(), d.line, d.column)) {
                diagnostics.push(d);
            }
        }
    }
    Ok(())
}

/// Reads every `*.cedar` file under `dir`, following symbolic links, bounded in depth
/// and size.
fn read_sources(dir: &Path) -> Result<BTreeMap<String, String>, BundleError> {
    let shown = dir.display().to_string();
    if !dir.is_dir() {
        return Err(BundleError::one(
            &shown,
            "policy directory does not exist or is not a directory: create it, or pass --policies <dir> (examples/policies/demo is a starting point)",
        ));
    }
    let mut files = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    let mut seen = std::collections::HashSet::new();
    while let Some((d, depth)) = stack.pop() {
        // Symbolic links are followed (policy repos use them), but each directory is
        // read once and nesting is bounded, so a link loop cannot hang the loader.
        let real = std::fs::canonicalize(&d).map_err(|e| {
            BundleError::one(
                &d.display().to_string(),
                format!("cannot resolve directory: {e}"),
            )
        })?;
        if !seen.insert(real) {
            continue;
        }
        if depth > MAX_DEPTH {
            return Err(BundleError::one(
                &d.display().to_string(),
                format!("policy directories nest deeper than {MAX_DEPTH} levels"),
            ));
        }
        let entries = std::fs::read_dir(&d).map_err(|e| {
            BundleError::one(
                &d.display().to_string(),
                format!("cannot read directory: {e}"),
            )
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                BundleError::one(
                    &d.display().to_string(),
                    format!("cannot read directory: {e}"),
                )
            })?;
            let path = entry.path();
            // `fs::metadata` follows symbolic links: a linked directory or file is
            // read, never silently skipped, and size limits apply to the target.
            let meta = std::fs::metadata(&path).map_err(|e| {
                BundleError::one(
                    &path.display().to_string(),
                    format!("cannot read (dangling link?): {e}"),
                )
            })?;
            if meta.is_dir() {
                stack.push((path, depth + 1));
            } else if path.extension().is_some_and(|x| x == "cedar")
                || (depth == 0 && path.file_name().is_some_and(|n| n == crate::CATALOG_FILE))
            {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                if meta.len() > MAX_FILE_BYTES {
                    return Err(BundleError::one(&rel, "policy file is larger than 1 MiB"));
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| BundleError::one(&rel, format!("cannot read: {e}")))?;
                files.insert(rel, text);
            }
        }
    }
    Ok(files)
}

/// Most distinct approvers a policy may require.
pub const MAX_APPROVALS: u32 = 5;

fn policy_meta(p: &Policy) -> Result<PolicyMeta, (&'static str, String)> {
    let max_ttl_secs = match p.annotation("max_ttl_secs") {
        None => None,
        Some(v) => Some(v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            (
                "@max_ttl_secs",
                format!("@max_ttl_secs({v:?}) must be a positive whole number of seconds"),
            )
        })?),
    };
    let permit = p.effect() == cedar_policy::Effect::Permit;
    let approval = p.annotation("approval_required").map(str::to_owned);
    if approval.is_some() && !permit {
        return Err((
            "@approval_required",
            "@approval_required only makes sense on a permit policy".into(),
        ));
    }
    let approvals = match p.annotation("approvals") {
        None => 1,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_APPROVALS).contains(n))
            .ok_or_else(|| {
                (
                    "@approvals",
                    format!("@approvals({v:?}) must be a whole number from 1 to {MAX_APPROVALS}"),
                )
            })?,
    };
    let owner_may_approve = match p.annotation("owner_may_approve") {
        None => false,
        Some("" | "true") => true,
        Some(v) => {
            return Err((
                "@owner_may_approve",
                format!("@owner_may_approve takes no value (or \"true\"), not {v:?}"),
            ));
        }
    };
    let approver_group = match p.annotation("approver_group") {
        None => None,
        Some(v) => {
            let ok = !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !ok {
                return Err((
                    "@approver_group",
                    format!("@approver_group({v:?}) must be 1-64 of a-z, 0-9, '-' and '_'"),
                ));
            }
            Some(v.to_owned())
        }
    };
    let approval_terms = p.annotation("approvals").is_some()
        || p.annotation("owner_may_approve").is_some()
        || approver_group.is_some();
    if approval_terms && approval.is_none() {
        return Err((
            "@approvals",
            "@approvals, @owner_may_approve and @approver_group only make sense beside @approval_required".into(),
        ));
    }
    let mut obligations = Vec::new();
    for (key, value) in p.annotations() {
        if let Some(name) = key.strip_prefix("obligation_") {
            if name.is_empty() || value.is_empty() {
                return Err((
                    "@obligation_",
                    format!(
                        "@{key}({value:?}) needs a name after `obligation_` and a non-empty value"
                    ),
                ));
            }
            if p.effect() != cedar_policy::Effect::Permit {
                return Err((
                    "@obligation_",
                    format!("@{key} only makes sense on a permit policy"),
                ));
            }
            obligations.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok(PolicyMeta {
        reason: p.annotation("reason").map(str::to_owned),
        approval,
        approvals,
        owner_may_approve,
        approver_group,
        max_ttl_secs,
        obligations,
    })
}

fn bundle_version(files: &BTreeMap<String, String>) -> String {
    let mut material = Vec::new();
    for part in std::iter::once(("<schema>", SCHEMA_TEXT))
        .chain(files.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        material.extend_from_slice(part.0.as_bytes());
        material.push(0);
        material.extend_from_slice(part.1.len().to_string().as_bytes());
        material.push(0);
        material.extend_from_slice(part.1.as_bytes());
    }
    format!("sha256:{}", sha256_hex(&material))
}

/// Can a policy with this action scope apply to `action`? `in` lists are matched by
/// equality: the built-in schema defines no action groups, so validation has already
/// refused any policy naming one.
fn action_may_apply(c: &ActionConstraint, action: &EntityUid) -> bool {
    match c {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => a == action,
        ActionConstraint::In(list) => list.iter().any(|a| a == action),
    }
}

fn slice(
    all: &PolicySet,
    action: &EntityUid,
    tool_type: &EntityTypeName,
) -> Result<Slice, BundleError> {
    let mut generic = PolicySet::new();
    let mut pinned: Vec<(String, Policy)> = Vec::new();
    let add = |set: &mut PolicySet, p: &Policy| {
        set.add(p.clone())
            .map_err(|e| BundleError::internal(format!("slicing: {e}")))
    };
    for p in all.policies() {
        if !action_may_apply(&p.action_constraint(), action) {
            continue;
        }
        match p.resource_constraint() {
            ResourceConstraint::Eq(r) if r.type_name() == tool_type => {
                pinned.push((r.id().unescaped().to_owned(), p.clone()));
            }
            _ => add(&mut generic, p)?,
        }
    }
    let mut by_tool: HashMap<String, PolicySet> = HashMap::new();
    let mut grant_by_tool: HashMap<String, PolicySet> = HashMap::new();
    let mut arg_permits: HashMap<String, Vec<PolicyId>> = HashMap::new();
    for (tool, p) in &pinned {
        if !by_tool.contains_key(tool) {
            by_tool.insert(tool.clone(), generic.clone());
        }
        if let Some(set) = by_tool.get_mut(tool) {
            add(set, p)?;
        }
        if reads_args(p) && p.effect() == cedar_policy::Effect::Permit {
            arg_permits
                .entry(tool.clone())
                .or_default()
                .push(p.id().clone());
        }
    }
    for (tool, p) in &pinned {
        if !pinned.iter().any(|(t, q)| t == tool && reads_args(q)) {
            continue;
        }
        if !grant_by_tool.contains_key(tool) {
            grant_by_tool.insert(tool.clone(), generic.clone());
        }
        if !reads_args(p)
            && let Some(set) = grant_by_tool.get_mut(tool)
        {
            add(set, p)?;
        }
    }
    let generic_history = mentions_history(&generic);
    let history_tools = by_tool
        .iter()
        .filter(|(_, set)| mentions_history(set))
        .map(|(tool, _)| tool.clone())
        .collect();
    Ok(Slice {
        generic,
        by_tool,
        generic_history,
        history_tools,
        grant_by_tool,
        arg_permits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(files: &[(&str, &str)]) -> Result<Bundle, BundleError> {
        Bundle::from_sources(
            files
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn parse_error_is_located() {
        let err = bundle(&[(
            "a.cedar",
            "permit(principal, action, resource);\n\npermit(principal action);",
        )])
        .unwrap_err();
        let d = &err.diagnostics[0];
        assert_eq!(d.file, "a.cedar");
        assert_eq!(d.line, 3, "{d}");
        assert!(d.column > 1, "{d}");
    }

    #[test]
    fn validation_error_is_located() {
        let src = "permit(principal, action == Mandate::Action::\"read\", resource)\n  when { context.no_such_field == 1 };";
        let err = bundle(&[("v.cedar", src)]).unwrap_err();
        let d = &err.diagnostics[0];
        assert_eq!(d.file, "v.cedar");
        assert_eq!(d.line, 2, "{d}");
        assert!(d.message.contains("v:0"), "{d}");
    }

    #[test]
    fn duplicate_ids_and_bad_annotations_refused() {
        let dup = "@id(\"x\") permit(principal, action, resource);\n@id(\"x\") permit(principal, action, resource);";
        assert!(
            bundle(&[("d.cedar", dup)]).unwrap_err().diagnostics[0]
                .message
                .contains("already used")
        );
        let ttl = "@max_ttl_secs(\"soon\") permit(principal, action, resource);";
        assert!(bundle(&[("t.cedar", ttl)]).is_err());
        let forbid_approval = "@approval_required(\"x\") forbid(principal, action, resource);";
        assert!(bundle(&[("f.cedar", forbid_approval)]).is_err());
        assert!(
            bundle(&[(
                "t.cedar",
                "permit(principal == ?principal, action, resource);"
            )])
            .is_err()
        );
    }

    #[test]
    fn version_tracks_content() {
        let a = bundle(&[("a.cedar", "permit(principal, action, resource);")]).unwrap();
        let b = bundle(&[("a.cedar", "permit(principal, action, resource); ")]).unwrap();
        let c = bundle(&[("a.cedar", "permit(principal, action, resource);")]).unwrap();
        assert_ne!(a.version(), b.version());
        assert_eq!(a.version(), c.version());
        assert!(bundle(&[]).unwrap().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn linked_directories_are_read_and_loops_end() {
        let root = tempfile::tempdir().unwrap();
        let shared = tempfile::tempdir().unwrap();
        std::fs::write(
            shared.path().join("forbid.cedar"),
            "@id(\"shared-forbid\") forbid(principal, action, resource);",
        )
        .unwrap();
        std::os::unix::fs::symlink(shared.path(), root.path().join("common")).unwrap();
        std::os::unix::fs::symlink(root.path(), root.path().join("loop")).unwrap();
        let b = Bundle::load_dir(root.path()).unwrap();
        assert_eq!(b.len(), 1, "the policy behind the link is loaded once");
        std::os::unix::fs::symlink(
            root.path().join("missing"),
            root.path().join("dangling.cedar"),
        )
        .unwrap();
        assert!(
            Bundle::load_dir(root.path()).is_err(),
            "a dangling link is an error, not a skip"
        );
    }

    #[test]
    fn slices_hold_only_applicable_policies() {
        let b = bundle(&[(
            "s.cedar",
            r#"permit(principal, action == Mandate::Action::"read", resource == Mandate::Tool::"a");
               permit(principal, action == Mandate::Action::"read", resource);
               forbid(principal, action in [Mandate::Action::"write", Mandate::Action::"delete"], resource);
               permit(principal, action, resource == Mandate::Tool::"b");"#,
        )])
        .unwrap();
        let read = b.call_slice(ActionClass::Read).unwrap();
        assert_eq!(read.for_tool("a").policies().count(), 2);
        assert_eq!(read.for_tool("b").policies().count(), 2);
        assert_eq!(read.for_tool("zzz").policies().count(), 1);
        let write = b.call_slice(ActionClass::Write).unwrap();
        assert_eq!(write.for_tool("zzz").policies().count(), 1);
        assert_eq!(b.start.generic.policies().count(), 0);
    }
}

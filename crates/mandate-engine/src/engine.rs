//! The engine: keys, the enforcing policy bundle, live tasks and the verified-token caches,
//! and the in-process decide path that every enforcement point calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use mandate_audit::{
    Body, CallRefused, GrantReduced, KeysRotated, NewEvent, PolicyLoaded, PolicyRejected,
    StoreRecovered, TaskEnd, TaskEnded, TaskTainted,
};
use mandate_core::{
    ActionClass, AgentName, CanonicalArgs, Clock, DataDomain, Destination, Grant, RequestedScope,
    Sensitivity, SpiffeId, TaskState, ToolName,
};
use mandate_gateway::ratelimit::Buckets;
use mandate_policy::{
    AgentFacts, Bundle, CallRequest, Decision, GRANT_CEILING_POLICY, History, ItemOutcome,
    TaskEntities, TaskFacts,
};
use mandate_store::{AgentRecord, HistoryRow, KeyRow, Store, TaskRecord};
use mandate_token::{
    Expectations, IdentityClaims, KeyRing, StoredKey, TaskClaims, TokenError, VerifiedCache,
};

use crate::audit_writer::{AuditError, AuditWriter};
use crate::checkpoints::CHAIN_BREAK_KEY;
use crate::config::ServerConfig;
use crate::containment::detect::HONEYTOKEN_POLICY;
use crate::error::Error;
use crate::error::Kind;
pub use crate::sync::{lock, read, write};

/// A task that may still act, held in memory so every call is checked without a query.
#[derive(Debug)]
pub struct LiveTask {
    /// Task id.
    pub id: String,
    /// Its agent.
    pub agent: AgentName,
    /// The agent's SPIFFE ID (the token's `sub`).
    pub spiffe_id: String,
    /// The key its tokens are bound to (RFC 9449 `cnf.jkt`), when sender-constrained.
    pub cnf_jkt: Option<String>,
    /// The declared plan: purpose, requested scope and what policy refused of it; replaced
    /// whole when the task re-declares it.
    plan: RwLock<Arc<Plan>>,
    /// The grant ceiling; narrowed in place when a policy change reduces it.
    pub grant: RwLock<Grant>,
    /// The lifetime it asked for, seconds.
    pub ttl_secs: i64,
    /// What the task has done so far (R5).
    pub history: Mutex<History>,
    /// Start (unix ms).
    pub created_at_ms: i64,
    /// Expiry (unix ms); a policy change may bring it forward, never back.
    pub expires_at_ms: AtomicI64,
    /// `jti` of its token.
    pub token_jti: String,
    /// Cedar entities of the agent, the task and its requested tools; rebuilt when a
    /// policy change brings a new tool catalog.
    entities: RwLock<(String, Arc<TaskEntities>)>,
    /// What the entities were built from.
    facts: (AgentFacts, TaskFacts),
    /// Waiting on an approval: holds no usable token.
    pending: AtomicBool,
    /// Set when the task is a break-glass grant: (break-glass id, the human who declared it).
    pub break_glass: Option<(String, String)>,
    /// Where it sits in its delegation chain, when another task delegated it.
    pub delegation: Option<mandate_core::Delegation>,
    /// The live task that delegated it: its grant bounds every call of this one, and its
    /// policy decides each of them too.
    pub parent: Option<Arc<LiveTask>>,
    /// Set when a containment rule stepped the task up: every further write, delete or
    /// execute needs a human (durable in the task's row).
    step_up: AtomicBool,
    /// Set the moment the task ends; checked on every call.
    ended: AtomicBool,
    /// Wakes whatever waits on the task's end (calls in flight, streams).
    end_signal: tokio::sync::Notify,
    /// Revision of `history`: increases with each change, so the newest durable snapshot
    /// wins whatever order snapshots are committed in.
    history_rev: AtomicI64,
    /// Decisions of this task between their last check that it is live and their answer;
    /// an end waits for them before it is acknowledged.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Wakes an end waiting for `in_flight` to drain.
    drained: tokio::sync::Notify,
}

/// What a task declared it is for: replaced whole by a re-declaration.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Declared purpose.
    pub purpose: String,
    /// What the task asked for, re-evaluated on every policy change.
    pub requested: RequestedScope,
    /// Requested pairs policy refused (to explain grant-ceiling denials).
    pub refused: Vec<ItemOutcome>,
}

/// A decision in flight on a live task: while it is held, an end of the task waits.
#[derive(Debug)]
pub struct Flight<'a>(&'a LiveTask);

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// Longest an end waits for the decisions in flight on its task.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl LiveTask {
    /// Expiry (unix ms).
    pub fn expires_at(&self) -> i64 {
        self.expires_at_ms.load(Ordering::SeqCst)
    }

    /// The task's Cedar entities as `bundle`'s tool catalog describes them, rebuilt if
    /// another bundle built them: calls never mix one bundle's policies with another's
    /// catalog.
    pub fn entities_for(
        &self,
        bundle: &Bundle,
    ) -> Result<Arc<TaskEntities>, mandate_policy::BundleError> {
        {
            let cur = read(&self.entities);
            if cur.0 == bundle.version() {
                return Ok(Arc::clone(&cur.1));
            }
        }
        let plan = self.plan();
        let task = TaskFacts {
            purpose: plan.purpose.clone(),
            ..self.facts.1.clone()
        };
        let rebuilt =
            Arc::new(bundle.task_entities(&self.facts.0, &task, &plan.requested.tools)?);
        *write(&self.entities) = (bundle.version().to_owned(), Arc::clone(&rebuilt));
        Ok(rebuilt)
    }

    /// What the agent's and the task's entities are built from (the task's purpose as it
    /// started: [`LiveTask::plan`] has the purpose in force).
    pub fn facts(&self) -> &(AgentFacts, TaskFacts) {
        &self.facts
    }

    /// The plan in force now.
    pub fn plan(&self) -> Arc<Plan> {
        Arc::clone(&read(&self.plan))
    }

    /// Replaces the plan and the grant; the entities are rebuilt on the next call (the
    /// purpose is one of their attributes).
    pub fn redeclare(&self, plan: Plan, grant: Grant) {
        *write(&self.plan) = Arc::new(plan);
        *write(&self.grant) = grant;
        write(&self.entities).0.clear();
    }

    /// True when a containment rule stepped this task, or one above it in its chain, up.
    pub fn stepped_up(&self) -> bool {
        self.step_up.load(Ordering::SeqCst)
            || self.ancestors().any(|a| a.step_up.load(Ordering::SeqCst))
    }

    /// From now on every write, delete or execute of this task (and of its delegates)
    /// needs a human.
    pub fn set_step_up(&self) {
        self.step_up.store(true, Ordering::SeqCst);
    }

    /// The grant in force now (a policy change may have narrowed it).
    pub fn current_grant(&self) -> Grant {
        read(&self.grant).clone()
    }

    /// The agent's accountable owner.
    pub fn owner(&self) -> &str {
        &self.facts.0.owner
    }

    /// The agent's risk tier.
    pub fn tier(&self) -> u8 {
        self.facts.0.tier
    }

    /// True while it waits on the approval of its start.
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Its start was approved: from now on its token is honoured.
    pub fn activate(&self) {
        self.pending.store(false, Ordering::SeqCst);
    }

    /// True once completed, expired or revoked.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Resolves once the task has ended (at once if it already has): race it against
    /// anything done on the task's behalf that must stop when it ends.
    pub async fn until_ended(&self) {
        let notified = self.end_signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_ended() {
            return;
        }
        notified.await;
    }

    /// Registers a decision about to be recorded and answered; `None` once the task has
    /// ended. An end is acknowledged only after every decision that found the task live
    /// has been recorded, so what a caller was told and what the audit says agree, and no
    /// allow follows an acknowledged end.
    pub fn enter(&self) -> Option<Flight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let flight = Flight(self);
        (!self.is_ended()).then_some(flight)
    }

    /// Waits (bounded) until no decision that found the task live is still in flight.
    pub async fn drain(&self) {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(DRAIN_WAIT, wait).await.is_err() {
            tracing::error!(task = %self.id, "decisions still in flight after the end; acknowledging it anyway");
        }
    }

    /// Applies `change` to the history and returns the snapshot to make durable with the
    /// event that caused it.
    pub fn change_history(&self, change: impl FnOnce(&mut History)) -> HistoryRow {
        let mut h = lock(&self.history);
        change(&mut h);
        let rev = self.history_rev.fetch_add(1, Ordering::SeqCst) + 1;
        HistoryRow {
            task_id: self.id.clone(),
            rev,
            // Cannot fail (string keys only); were it to, the snapshot says "tainted", the
            // stricter reading, rather than "nothing happened".
            data: serde_json::to_string(&*h)
                .unwrap_or_else(|_| r#"{"untrusted_content":true}"#.to_owned()),
        }
    }

    /// The tasks above this one in its delegation chain, its parent first.
    pub fn ancestors(&self) -> impl Iterator<Item = &Arc<LiveTask>> {
        std::iter::successors(self.parent.as_ref(), |t| t.parent.as_ref())
    }

    /// True when `id` is this task or one above it in its chain.
    pub fn descends_from(&self, id: &str) -> bool {
        self.ancestors().any(|t| t.id == id)
    }

    /// What the task may do now: its own grant within every grant above it.
    pub fn effective_grant(&self) -> Grant {
        let own = self.current_grant();
        self.ancestors()
            .fold(own, |g, a| g.intersect(&read(&a.grant)))
    }

    /// Marks the task ended and wakes everything waiting on it.
    fn mark_ended(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.end_signal.notify_waiters();
    }
}

/// One tool call, parsed and canonicalised.
#[derive(Debug, Clone)]
pub struct Call {
    /// The tool.
    pub tool: ToolName,
    /// Its action class.
    pub action: ActionClass,
    /// What it acts on.
    pub resource: String,
    /// Canonical arguments.
    pub args: CanonicalArgs,
    /// Where it sends data.
    pub destination: Option<Destination>,
    /// Data domain touched.
    pub data_domain: Option<DataDomain>,
    /// Declared sensitivity.
    pub sensitivity: Sensitivity,
}

/// A refused call: the error to return, and who it concerned when that is known.
#[derive(Debug)]
pub struct Refusal {
    /// What the caller gets.
    pub error: Error,
    /// The agent, if the token was genuine.
    pub agent: Option<String>,
    /// The task, if the token was genuine.
    pub task: Option<String>,
}

impl Refusal {
    fn anonymous(error: Error) -> Self {
        Self {
            error,
            agent: None,
            task: None,
        }
    }
}

/// The decision on a call, with the task it was made for.
#[derive(Debug)]
pub struct Evaluated {
    /// The task.
    pub task: Arc<LiveTask>,
    /// The decision.
    pub decision: Decision,
    /// The shadow bundle's decision on the same input, when one is configured.
    pub shadow: Option<Decision>,
    /// The data domain the call touches (the catalog's, where it names one).
    pub data_domain: Option<DataDomain>,
}

const ADMIN_HASH_KEY: &str = "admin_token_sha256";

/// Every request's time budget, seconds (long-polls included).
pub const REQUEST_TIMEOUT_SECS: i64 = 30;

/// The pseudo policy id that holds a stepped-up task's write, delete or execute for a
/// human.
pub const STEP_UP_POLICY: &str = "mandate:step-up";

/// The pseudo policy id of a call allowed by a break-glass grant.
pub const BREAK_GLASS_POLICY: &str = "mandate:break-glass";

/// Refusals of callers who presented no valid credential that are recorded per second;
/// beyond it they are counted and summarised, so an unauthenticated flood cannot fill the
/// audit queue that real decisions wait on.
const ANONYMOUS_EVENTS_PER_SEC: u32 = 100;

/// A task end that is in force in memory but not yet recorded in the store.
#[derive(Debug, Clone)]
pub struct PendingEnd {
    pub from: Vec<TaskState>,
    pub to: TaskState,
    pub kind: TaskEnd,
    pub reason: String,
    pub by: String,
    pub agent: String,
    /// Extra fields for the event (e.g. both bundle versions on a policy drift); its
    /// `reason` and `by` are the end's own.
    pub detail: TaskEnded,
}

#[derive(Debug, Default)]
struct AnonymousBudget {
    window_secs: i64,
    used: u32,
    suppressed: u64,
}

/// Shared state of one server.
#[derive(Debug)]
pub struct Engine {
    pub config: ServerConfig,
    pub issuer: String,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub audit: AuditWriter,
    keys: RwLock<Arc<KeyRing>>,
    bundle: RwLock<Arc<Bundle>>,
    /// A candidate bundle evaluated beside the enforcing one (shadow mode).
    shadow: RwLock<Option<Arc<Bundle>>>,
    tasks: RwLock<HashMap<String, Arc<LiveTask>>>,
    task_cache: VerifiedCache<TaskClaims>,
    identity_cache: VerifiedCache<IdentityClaims>,
    /// External issuers and trust domains that attest agents, with their cached keys.
    pub(crate) trust: Option<crate::workload::Trust>,
    /// DPoP proof checks and their replay cache.
    pub(crate) dpop: crate::sender::Dpop,
    admin_hash: RwLock<String>,
    /// Task ends enforced in memory whose store transition has not committed yet; the
    /// sweeper retries them, so a revocation is never silently forgotten.
    unrecorded_ends: Mutex<HashMap<String, PendingEnd>>,
    anonymous: Mutex<AnonymousBudget>,
    /// Decision rates per agent and per task (S4): a flood from one agent is refused with
    /// 429 before it costs an audit record, and does not starve others.
    decision_buckets: Mutex<(Buckets, Buckets)>,
    /// Decisions refused by rate, per (agent, task), summarised into the audit each second.
    rate_refused: Mutex<HashMap<(String, String), u64>>,
    /// Serialises policy reloads so the audit order matches the enforcement order.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Ids of approvals whose state changed, for calls waiting on them.
    pub approval_changes: tokio::sync::broadcast::Sender<String>,
    /// Outbound HTTP for approver-group webhooks.
    pub http: reqwest::Client,
    /// Sealed upstream credentials.
    pub secrets: crate::secrets::SecretStore,
    /// Pinned MCP tool definitions.
    pub pins: crate::pins::Pins,
    /// The signed log: checkpoints and proofs over the audit chain.
    pub log: Arc<crate::checkpoints::AuditLog>,
}

/// What a policy reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyChange {
    /// The bundle now enforcing.
    pub bundle_version: String,
    /// The bundle before.
    pub previous_version: String,
    /// Number of policies.
    pub policies: usize,
    /// Tasks revoked because the new bundle no longer permits them.
    pub revoked: Vec<String>,
    /// Tasks whose grant the new bundle narrowed.
    pub reduced: Vec<String>,
}

/// What [`Engine::open`] reports back to the operator.
#[derive(Debug)]
pub struct Opened {
    /// The engine.
    pub engine: Arc<Engine>,
    /// A freshly generated admin token: shown once, never stored in clear.
    pub generated_admin_token: Option<String>,
}

impl Engine {
    /// Loads keys, the policy bundle, the admin token and the live tasks from the store.
    /// Refuses to start on a bad bundle: there is never a silent allow.
    pub async fn open(
        config: ServerConfig,
        issuer: String,
        store: Arc<dyn Store>,
    ) -> Result<Opened, String> {
        let clock = Arc::clone(&config.clock);
        let l = &config.limits;
        let longest = l
            .identity_token_ttl_secs
            .max(l.max_task_ttl_secs)
            .max(l.max_break_glass_ttl_secs)
            + l.token_leeway_secs;
        if l.max_approval_wait_secs >= REQUEST_TIMEOUT_SECS {
            return Err(format!(
                "max_approval_wait_secs ({}) must be below the {REQUEST_TIMEOUT_SECS}s request timeout",
                l.max_approval_wait_secs
            ));
        }
        if l.max_connections == 0
            || l.header_read_timeout_secs == 0
            || l.idle_timeout_secs == 0
            || l.body_read_timeout_secs == 0
        {
            return Err(
                "max_connections, header_read_timeout_secs, idle_timeout_secs and body_read_timeout_secs must be at least 1"
                    .to_owned(),
            );
        }
        if l.body_read_timeout_secs >= REQUEST_TIMEOUT_SECS.unsigned_abs() {
            return Err(format!(
                "body_read_timeout_secs ({}) must be below the {REQUEST_TIMEOUT_SECS}s request timeout",
                l.body_read_timeout_secs
            ));
        }
        if l.key_overlap_secs < longest {
            return Err(format!(
                "key_overlap_secs ({}) must cover the longest token life plus leeway ({longest}s), or rotation would strand live tokens",
                l.key_overlap_secs
            ));
        }
        let bundle = Bundle::load_dir(&config.policies).map_err(|e| e.to_string())?;
        let shadow = match &config.shadow_policies {
            Some(dir) => Some(Bundle::load_dir(dir).map_err(|e| format!("shadow bundle: {e}"))?),
            None => None,
        };
        let log = crate::checkpoints::AuditLog::open(
            config.log.clone(),
            &config.data_dir,
            config.trust_domain.as_str(),
        )?;
        let mut observers = config.observers.clone();
        observers.push(Arc::clone(&log) as Arc<dyn crate::audit_writer::CommitObserver>);
        if let Some(otlp) = &config.otlp {
            let exporter = crate::otlp::OtlpExporter::spawn(otlp.clone())?;
            observers.push(exporter as Arc<dyn crate::audit_writer::CommitObserver>);
        }
        let audit = AuditWriter::spawn_observed(Arc::clone(&store), observers);
        // A broken chain is never appended to: the server starts (so readiness can say
        // why) but records and decides nothing.
        let chain_break = chain_tail_break(&*store).await?;
        if let Some(why) = &chain_break {
            audit.health().halt(why);
        }

        let now = clock.now_ms();
        let mut rows = store.signing_keys().await.map_err(|e| e.to_string())?;
        let active = rows.iter().find(|k| k.retired_at_ms.is_none());
        let reason = match active {
            None => Some("first start"),
            // No rotation event can be recorded on a broken chain: keep the key.
            Some(_) if chain_break.is_some() => None,
            // A key from before the ES256 upgrade stops signing at once; it stays
            // published, and its tokens verify, for the overlap.
            Some(k) if signs_legacy_alg(k) => Some("algorithm upgrade to ES256"),
            Some(k) if now - k.created_at_ms >= config.key_rotation_secs.saturating_mul(1000) => {
                Some("scheduled rotation")
            }
            Some(_) => None,
        };
        if let Some(reason) = reason {
            let key = StoredKey::generate(now).map_err(|e| e.to_string())?;
            let event = NewEvent {
                ts_ms: now,
                agent: None,
                task_id: None,
                body: Body::KeysRotated(KeysRotated {
                    kid: key.kid.clone(),
                    reason: reason.to_owned(),
                }),
            };
            store
                .rotate_keys(
                    &to_row(&key),
                    now,
                    now - config.limits.key_overlap_secs * 1000,
                    Some(event),
                )
                .await
                .map_err(|e| e.to_string())?;
            rows = store.signing_keys().await.map_err(|e| e.to_string())?;
        }
        let ring = ring_from(&rows, &config, now).map_err(|e| e.to_string())?;

        let mut generated_admin_token = None;
        let stored_hash = store
            .setting(ADMIN_HASH_KEY)
            .await
            .map_err(|e| e.to_string())?;
        let admin_hash = match (&config.admin_token, stored_hash) {
            (Some(t), _) => {
                if t.len() < 24 {
                    return Err("MANDATE_ADMIN_TOKEN is shorter than 24 characters: use a long random value".into());
                }
                let h = mandate_core::sha256_hex(t.as_bytes());
                store
                    .put_setting(ADMIN_HASH_KEY, &h)
                    .await
                    .map_err(|e| e.to_string())?;
                h
            }
            (None, Some(h)) => h,
            (None, None) => {
                let t = mandate_core::random_secret("mdt_admin")
                    .map_err(|_| "system RNG failed".to_owned())?;
                let h = mandate_core::sha256_hex(t.as_bytes());
                store
                    .put_setting(ADMIN_HASH_KEY, &h)
                    .await
                    .map_err(|e| e.to_string())?;
                generated_admin_token = Some(t);
                h
            }
        };
        let secrets = crate::secrets::SecretStore::open(
            Arc::clone(&store),
            Arc::clone(&clock),
            config.master_key.clone(),
            config.data_dir.clone(),
        )
        .await?;
        let pins = crate::pins::Pins::load(Arc::clone(&store), Arc::clone(&clock)).await?;

        let (agent_rate, task_rate) = (
            config.limits.agent_decisions_per_sec,
            config.limits.task_decisions_per_sec,
        );
        let decision_buckets = (
            Buckets::new(agent_rate, agent_rate.saturating_mul(2)),
            Buckets::new(task_rate, task_rate.saturating_mul(2)),
        );
        let engine = Arc::new(Self {
            task_cache: VerifiedCache::new(config.limits.token_cache_capacity),
            identity_cache: VerifiedCache::new(config.limits.token_cache_capacity),
            trust: config.identity.clone().map(crate::workload::Trust::new),
            dpop: crate::sender::Dpop::new(
                config.limits.dpop_replay_capacity,
                config.limits.dpop_proof_max_age_secs,
            ),
            config,
            issuer,
            store,
            clock,
            audit,
            keys: RwLock::new(Arc::new(ring)),
            bundle: RwLock::new(Arc::new(bundle)),
            shadow: RwLock::new(shadow.map(Arc::new)),
            tasks: RwLock::new(HashMap::new()),
            admin_hash: RwLock::new(admin_hash),
            unrecorded_ends: Mutex::new(HashMap::new()),
            anonymous: Mutex::new(AnonymousBudget::default()),
            decision_buckets: Mutex::new(decision_buckets),
            rate_refused: Mutex::new(HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            approval_changes: tokio::sync::broadcast::channel(1024).0,
            http: crate::webhook::client().map_err(|e| format!("webhook client: {e}"))?,
            secrets,
            pins,
            log,
        });
        engine.load_live_tasks().await?;
        // Policies may have changed while the server was down: re-decide every live task
        // under the bundle enforcing now, as a reload would.
        let mut change = PolicyChange::default();
        let enforcing = engine.bundle().version().to_owned();
        engine
            .reevaluate_live(
                &format!("as stored (server restart under {enforcing})"),
                &mut change,
            )
            .await;
        let b = engine.bundle();
        let loaded = engine
            .audit
            .record(
                NewEvent {
                    ts_ms: now,
                    agent: None,
                    task_id: None,
                    body: Body::PolicyLoaded(PolicyLoaded {
                        bundle_version: b.version().to_owned(),
                        previous_version: None,
                        policies: b.len(),
                        source: Some(engine.config.policies.display().to_string()),
                        trigger: None,
                    }),
                },
                None,
            )
            .await;
        match loaded {
            Ok(_) => {}
            Err(AuditError::ChainBroken(why)) => {
                tracing::error!(reason = %why, "the audit chain is broken: serving refusals only until it is restored");
            }
            Err(e) => return Err(e.to_string()),
        }
        engine.log.spawn(
            Arc::clone(&engine.store),
            engine.audit.clone(),
            Arc::clone(&engine.clock),
        );
        Ok(Opened {
            engine,
            generated_admin_token,
        })
    }

    async fn load_live_tasks(&self) -> Result<(), String> {
        let mut live = self.store.live_tasks().await.map_err(|e| e.to_string())?;
        // Parents before their delegates, whatever their start times: a delegate is built
        // on its live parent.
        live.sort_by(|a, b| {
            let depth = |t: &TaskRecord| t.delegation.as_ref().map_or(0, |d| d.depth);
            (depth(a), a.created_at_ms, &a.id).cmp(&(depth(b), b.created_at_ms, &b.id))
        });
        let break_glass: HashMap<String, (String, String)> = self
            .store
            .break_glass_records()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|b| (b.task_id, (b.id, b.declared_by.into())))
            .collect();
        let agents: HashMap<AgentName, AgentRecord> = self
            .store
            .agents()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|a| (a.name.clone(), a))
            .collect();
        // History is durable state, one row per task: restoring it costs one query for all
        // live tasks, whatever the number of events.
        let mut histories: HashMap<String, HistoryRow> = self
            .store
            .live_histories()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|h| (h.task_id.clone(), h))
            .collect();
        for t in live {
            let Some(agent) = agents.get(&t.agent) else {
                continue;
            };
            if agent.status != mandate_core::AgentStatus::Active {
                // Its revocation did not commit before a crash: keep it refused.
                continue;
            }
            let mut task = match self.live_task(agent, &t) {
                Ok(task) => task,
                Err(e) if e.code == "parent_not_active" => {
                    // Its parent's end committed, the cascade to it did not: end it now.
                    self.remember_end(&t.id, cascade_end(&t.agent, &e.message, "mandate"));
                    continue;
                }
                Err(e) => return Err(e.message),
            };
            if let (Some(bg), Some(t)) = (break_glass.get(&t.id), Arc::get_mut(&mut task)) {
                t.break_glass = Some(bg.clone());
            }
            match histories.remove(&t.id) {
                Some(row) => {
                    let h: History = serde_json::from_str(&row.data).map_err(|e| {
                        format!("the stored history of task {} is corrupt: {e}", t.id)
                    })?;
                    *lock(&task.history) = h;
                    task.history_rev.store(row.rev, Ordering::SeqCst);
                }
                None => {
                    // Written before history was durable state (schema 4 and older):
                    // replay the task's decisions once and make the result durable.
                    let events = self
                        .store
                        .task_events(&t.id)
                        .await
                        .map_err(|e| e.to_string())?;
                    let row = task.change_history(|h| rebuild_history(h, &events));
                    self.audit.defer_history(row);
                }
            }
            self.insert_live(task);
        }
        Ok(())
    }

    /// Builds the in-memory form of an active task.
    pub fn live_task(&self, agent: &AgentRecord, t: &TaskRecord) -> Result<Arc<LiveTask>, Error> {
        let spiffe_id =
            SpiffeId::for_agent(self.config.trust_domain.clone(), agent.name.clone()).to_string();
        let facts = (
            self.agent_facts(agent),
            TaskFacts {
                id: t.id.clone(),
                purpose: t.purpose.clone(),
                environment: self.config.environment.clone(),
                delegation: t.delegation.clone(),
            },
        );
        let parent = match &t.delegation {
            None => None,
            Some(d) => Some(self.live_get(&d.parent_task).ok_or_else(|| {
                Error::new(
                    Kind::Forbidden,
                    "parent_not_active",
                    format!(
                        "task {} is not live: it cannot have live delegates",
                        d.parent_task
                    ),
                )
            })?),
        };
        let bundle = self.bundle();
        let bundle_version = bundle.version().to_owned();
        let entities = bundle
            .task_entities(&facts.0, &facts.1, &t.requested.tools)
            .map_err(Error::internal)?;
        let refused = serde_json::from_value::<Vec<ItemOutcome>>(t.items.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.outcome == mandate_policy::Outcome::Deny)
            .collect();
        Ok(Arc::new(LiveTask {
            id: t.id.clone(),
            agent: agent.name.clone(),
            spiffe_id,
            cnf_jkt: t.cnf_jkt.clone(),
            plan: RwLock::new(Arc::new(Plan {
                purpose: t.purpose.clone(),
                requested: t.requested.clone(),
                refused,
            })),
            grant: RwLock::new(t.grant.clone()),
            ttl_secs: (t.expires_at_ms - t.created_at_ms).div_euclid(1000).max(1),
            history: Mutex::new(History::default()),
            created_at_ms: t.created_at_ms,
            expires_at_ms: AtomicI64::new(t.expires_at_ms),
            token_jti: t.token_jti.clone(),
            entities: RwLock::new((bundle_version, Arc::new(entities))),
            facts,
            pending: AtomicBool::new(t.state == TaskState::Pending),
            break_glass: None,
            delegation: t.delegation.clone(),
            parent,
            step_up: AtomicBool::new(t.step_up),
            ended: AtomicBool::new(false),
            end_signal: tokio::sync::Notify::new(),
            history_rev: AtomicI64::new(0),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
        }))
    }

    pub fn agent_facts(&self, a: &AgentRecord) -> AgentFacts {
        AgentFacts {
            name: a.name.to_string(),
            spiffe_id: SpiffeId::for_agent(self.config.trust_domain.clone(), a.name.clone())
                .to_string(),
            owner: a.owner.to_string(),
            tier: a.tier.get(),
            status: a.status.as_str().to_owned(),
            trust_domain: self.config.trust_domain.to_string(),
        }
    }

    pub fn insert_live(&self, task: Arc<LiveTask>) {
        write(&self.tasks).insert(task.id.clone(), task);
    }

    /// Marks a task ended in memory at once (before the store is told), so no call is
    /// allowed from this moment; returns it if it was live.
    pub fn end_live(&self, id: &str) -> Option<Arc<LiveTask>> {
        let t = write(&self.tasks).remove(id);
        if let Some(t) = &t {
            t.mark_ended();
        }
        t
    }

    /// Ends a task: in memory at once, then in the store with its event. If the store
    /// write fails, the end stays enforced and is retried by the sweeper until it commits.
    /// `Ok(false)` when the store says the task was not in one of `end.from`.
    pub async fn end_task(
        &self,
        id: &str,
        end: PendingEnd,
    ) -> Result<bool, mandate_store::StoreError> {
        // Ended in memory first, then its descendants are looked for: a delegation racing
        // this end either is found here or sees its parent ended and ends itself.
        let ended = self.end_live(id);
        self.remember_end(id, end.clone());
        let why = format!(
            "task {id} above it in its delegation chain became {}: {}",
            end.to, end.reason
        );
        let below: Vec<(Arc<LiveTask>, PendingEnd)> = self
            .descendants(id)
            .into_iter()
            .map(|t| {
                self.end_live(&t.id);
                let e = cascade_end(&t.agent, &why, &end.by);
                self.remember_end(&t.id, e.clone());
                (t, e)
            })
            .collect();
        if let Some(t) = &ended {
            t.drain().await;
        }
        for (t, _) in &below {
            t.drain().await;
        }
        let mut r = if below.is_empty() {
            self.record_end(id, &end).await
        } else {
            self.record_ends(id, &end, &below).await
        };
        if matches!(r, Ok(false)) && ended.is_some() {
            // This call ended the live task; while it waited for decisions in flight the
            // sweeper may have recorded the end already.
            if let Ok(Some(t)) = self.store.task(id).await
                && t.state == end.to
            {
                r = Ok(true);
            }
        }
        if r.is_ok() {
            self.forget_end(id);
            for (t, _) in &below {
                self.forget_end(&t.id);
            }
        }
        if let Ok(agent) = AgentName::parse(&end.agent) {
            self.invalidate_task_approvals(id, &agent).await;
        }
        for (t, _) in &below {
            self.invalidate_task_approvals(&t.id, &t.agent).await;
        }
        r
    }

    /// Every live task delegated below `id`, however deep.
    pub fn descendants(&self, id: &str) -> Vec<Arc<LiveTask>> {
        read(&self.tasks)
            .values()
            .filter(|t| t.descends_from(id))
            .cloned()
            .collect()
    }

    /// Records a task's end and its descendants' in one transaction.
    async fn record_ends(
        &self,
        id: &str,
        end: &PendingEnd,
        below: &[(Arc<LiveTask>, PendingEnd)],
    ) -> Result<bool, mandate_store::StoreError> {
        let now = self.clock.now_ms();
        let one = |id: &str, end: &PendingEnd| mandate_store::TaskMove {
            id: id.to_owned(),
            from: end.from.clone(),
            to: end.to,
            reason: end.reason.clone(),
            event: NewEvent {
                ts_ms: now,
                agent: Some(end.agent.clone()),
                task_id: Some(id.to_owned()),
                body: Body::task_end(
                    end.kind,
                    TaskEnded {
                        reason: end.reason.clone(),
                        by: end.by.clone(),
                        ..end.detail.clone()
                    },
                ),
            },
        };
        let moves = std::iter::once(one(id, end))
            .chain(below.iter().map(|(t, e)| one(&t.id, e)))
            .collect();
        let moved = self.store.transition_tasks(moves, now).await?;
        Ok(moved.first().copied().unwrap_or(false))
    }

    /// Notes an end enforced in memory but not yet in the store.
    pub fn remember_end(&self, id: &str, end: PendingEnd) {
        lock(&self.unrecorded_ends).insert(id.to_owned(), end);
    }

    /// The store has the end now.
    pub fn forget_end(&self, id: &str) {
        lock(&self.unrecorded_ends).remove(id);
    }

    async fn record_end(
        &self,
        id: &str,
        end: &PendingEnd,
    ) -> Result<bool, mandate_store::StoreError> {
        let now = self.clock.now_ms();
        let event = NewEvent {
            ts_ms: now,
            agent: Some(end.agent.clone()),
            task_id: Some(id.to_owned()),
            body: Body::task_end(
                end.kind,
                TaskEnded {
                    reason: end.reason.clone(),
                    by: end.by.clone(),
                    ..end.detail.clone()
                },
            ),
        };
        self.store
            .transition_task(id, &end.from, end.to, now, &end.reason, event)
            .await
    }

    /// Records a refusal: in full when it names an agent (a genuine credential was shown),
    /// through the unauthenticated budget otherwise.
    pub async fn record_refusal(&self, event: NewEvent) -> Result<(), AuditError> {
        if event.agent.is_some() {
            self.audit.append(event).await.map(|_| ())
        } else {
            self.record_anonymous(event).await
        }
    }

    /// Records a refusal of a caller with no valid credential, within the per-second
    /// budget; beyond it the refusal is only counted (see the sweeper's summary event).
    pub async fn record_anonymous(&self, event: NewEvent) -> Result<(), AuditError> {
        let now = self.clock.now_secs();
        {
            let mut b = lock(&self.anonymous);
            if b.window_secs != now {
                b.window_secs = now;
                b.used = 0;
            }
            if b.used >= ANONYMOUS_EVENTS_PER_SEC {
                b.suppressed += 1;
                return Ok(());
            }
            b.used += 1;
        }
        self.audit.append(event).await.map(|_| ())
    }

    /// Ids of live tasks past their expiry.
    pub fn expired_tasks(&self, now_ms: i64) -> Vec<String> {
        read(&self.tasks)
            .values()
            .filter(|t| t.expires_at() <= now_ms)
            .map(|t| t.id.clone())
            .collect()
    }

    /// The live task with this id.
    pub fn live_get(&self, id: &str) -> Option<Arc<LiveTask>> {
        read(&self.tasks).get(id).cloned()
    }

    /// Ids of every live task of an agent.
    pub fn agent_tasks(&self, agent: &AgentName) -> Vec<String> {
        read(&self.tasks)
            .values()
            .filter(|t| &t.agent == agent)
            .map(|t| t.id.clone())
            .collect()
    }

    /// The break-glass id of a live break-glass task of an agent, if any.
    pub fn live_break_glass(&self, agent: &AgentName) -> Option<String> {
        read(&self.tasks)
            .values()
            .filter(|t| &t.agent == agent && !t.is_ended())
            .find_map(|t| t.break_glass.as_ref().map(|(id, _)| id.clone()))
    }

    /// Number of live tasks.
    pub fn live_count(&self) -> usize {
        read(&self.tasks).len()
    }

    /// Reloads the shadow bundle from its directory, keeping the previous one if the
    /// directory no longer validates.
    pub fn reload_shadow(&self) {
        let Some(dir) = &self.config.shadow_policies else {
            return;
        };
        match Bundle::load_dir(dir) {
            Ok(b) => *write(&self.shadow) = Some(Arc::new(b)),
            Err(e) => {
                tracing::warn!(error = %e, "shadow bundle rejected; the previous shadow stays")
            }
        }
    }

    /// The enforcing bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        Arc::clone(&read(&self.bundle))
    }

    /// Loads the policy directory and, if it is valid and different, makes it enforce:
    /// audited, then every live task re-evaluated under it (drift). A bad bundle is
    /// audited as rejected and the current one keeps enforcing.
    pub async fn reload_policies(
        &self,
        trigger: &str,
    ) -> Result<PolicyChange, mandate_policy::BundleError> {
        let _serial = self.reload_lock.lock().await;
        self.reload_shadow();
        let old = self.bundle().version().to_owned();
        let now = self.clock.now_ms();
        let b = match Bundle::load_dir(&self.config.policies) {
            Ok(b) => b,
            Err(e) => {
                let ev = NewEvent {
                    ts_ms: now,
                    agent: None,
                    task_id: None,
                    body: Body::PolicyRejected(PolicyRejected {
                        enforcing_version: old.clone(),
                        trigger: trigger.to_owned(),
                        diagnostics: serde_json::to_value(&e.diagnostics).unwrap_or_default(),
                    }),
                };
                if self.audit.append(ev).await.is_err() {
                    tracing::error!("could not record a rejected policy bundle");
                }
                return Err(e);
            }
        };
        let mut change = PolicyChange {
            bundle_version: b.version().to_owned(),
            previous_version: old.clone(),
            policies: b.len(),
            revoked: Vec::new(),
            reduced: Vec::new(),
        };
        if b.version() == old {
            return Ok(change);
        }
        let ev = NewEvent {
            ts_ms: now,
            agent: None,
            task_id: None,
            body: Body::PolicyLoaded(PolicyLoaded {
                bundle_version: b.version().to_owned(),
                previous_version: Some(old.clone()),
                policies: b.len(),
                source: None,
                trigger: Some(trigger.to_owned()),
            }),
        };
        if let Err(e) = self.audit.append(ev).await {
            // Not recorded, so not enforced: the previous bundle stays.
            tracing::error!(error = %e, "could not record the new policy bundle; keeping the previous one");
            return Err(mandate_policy::BundleError {
                diagnostics: vec![mandate_policy::Diagnostic {
                    file: "<audit>".into(),
                    line: 0,
                    column: 0,
                    message: "the policy change could not be recorded in the audit trail; the previous bundle keeps enforcing".into(),
                }],
            });
        }
        *write(&self.bundle) = Arc::new(b);
        self.reevaluate_live(&old, &mut change).await;
        self.invalidate_stale_approvals().await;
        Ok(change)
    }

    /// Drift: re-decides every live task's start under the enforcing bundle. A task the
    /// bundle would no longer start without a human is revoked; a grant it would narrow is
    /// narrowed; a lower TTL cap shortens the task. All of it takes effect in memory for
    /// every task first, then is recorded, each event naming both bundle versions.
    pub async fn reevaluate_live(&self, previous: &str, change: &mut PolicyChange) {
        let tasks: Vec<Arc<LiveTask>> = read(&self.tasks).values().cloned().collect();
        self.reevaluate(&tasks, previous, change).await;
    }

    async fn reevaluate(&self, tasks: &[Arc<LiveTask>], previous: &str, change: &mut PolicyChange) {
        let bundle = self.bundle();
        let now_secs = self.clock.now_secs();
        let mut narrowed: Vec<(Arc<LiveTask>, Grant, Grant, TaskEnded)> = Vec::new();
        let mut ended: Vec<(Arc<LiveTask>, PendingEnd)> = Vec::new();
        // Pass 1, no await: every change is in force before anything is written.
        let now_ms = self.clock.now_ms();
        for task in tasks {
            if task.expires_at() <= now_ms || task.is_ended() {
                // Already over: the sweeper records its end.
                continue;
            }
            if task.break_glass.is_some() {
                // A break-glass grant stands outside policy by design; its own short life,
                // audit and after-review bound it.
                continue;
            }
            let entities = match task.entities_for(&bundle) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(task = %task.id, error = %e, "cannot rebuild task entities under the new bundle; revoking");
                    ended.push((
                        Arc::clone(task),
                        drift_end(
                            task,
                            TaskEnded {
                                previous_version: Some(previous.to_owned()),
                                bundle_version: Some(bundle.version().to_owned()),
                                error: Some(e.to_string()),
                                ..TaskEnded::default()
                            },
                        ),
                    ));
                    self.end_live(&task.id);
                    continue;
                }
            };
            let plan = task.plan();
            let sd = bundle.decide_start(
                &entities,
                &mandate_policy::StartRequest {
                    scope: &plan.requested,
                    ttl_secs: task.ttl_secs,
                    environment: &self.config.environment,
                    now_secs,
                    sender_constrained: task.cnf_jkt.is_some(),
                },
            );
            let old_grant = read(&task.grant).clone();
            let new_grant = old_grant.intersect(&sd.grant);
            let versions = TaskEnded {
                previous_version: Some(previous.to_owned()),
                bundle_version: Some(bundle.version().to_owned()),
                policies: Some(sd.decision.policies.clone()),
                reasons: Some(sd.decision.reasons.clone()),
                ..TaskEnded::default()
            };
            // An active task stands only if the new bundle would start it outright; one
            // that would now need a human is revoked (a pending task may stay pending).
            let stands = match sd.decision.outcome {
                mandate_policy::Outcome::Allow => true,
                mandate_policy::Outcome::ApprovalRequired => task.is_pending(),
                mandate_policy::Outcome::Deny => false,
            };
            if !stands || new_grant.is_empty() {
                self.end_live(&task.id);
                ended.push((Arc::clone(task), drift_end(task, versions)));
                change.revoked.push(task.id.clone());
                continue;
            }
            if let Some(cap) = sd.ttl_cap_secs {
                let capped = task.created_at_ms.saturating_add(cap.saturating_mul(1000));
                task.expires_at_ms.fetch_min(capped, Ordering::SeqCst);
            }
            if new_grant != old_grant {
                *write(&task.grant) = new_grant.clone();
                narrowed.push((Arc::clone(task), old_grant, new_grant, versions));
                change.reduced.push(task.id.clone());
            }
        }
        // Pass 2: record, through the one end path every revocation takes: the task's
        // delegates end with it (a delegate's calls are already refused, its ancestor
        // having ended), decisions in flight drain before the end is recorded, and open
        // approvals are voided. Ends that fail to record stay enforced and are retried by
        // the sweeper; a narrowing that fails to record is re-derived on restart, which
        // re-decides every live task under the bundle then enforcing.
        for (task, end) in ended {
            task.drain().await;
            if let Err(e) = self.end_task(&task.id, end).await {
                tracing::error!(task = %task.id, error = %e, "drift revocation not recorded yet; enforced, and retried by the sweeper");
            }
        }
        for (task, old_grant, new_grant, versions) in narrowed {
            let ev = NewEvent {
                ts_ms: self.clock.now_ms(),
                agent: Some(task.agent.to_string()),
                task_id: Some(task.id.clone()),
                body: Body::TaskGrantReduced(GrantReduced {
                    previous_version: versions.previous_version.unwrap_or_default(),
                    bundle_version: versions.bundle_version.unwrap_or_default(),
                    policies: versions.policies.unwrap_or_default(),
                    reasons: versions.reasons.unwrap_or_default(),
                    previous_grant: old_grant,
                    grant: new_grant.clone(),
                }),
            };
            if let Err(e) = self.store.update_task_grant(&task.id, &new_grant, ev).await {
                tracing::error!(task = %task.id, error = %e, "narrowed grant not recorded; enforced in memory");
            }
        }
    }

    /// Re-decides one task that started under `version` if another bundle enforces now
    /// (a start that raced a reload).
    pub async fn catch_up(&self, task: &Arc<LiveTask>, version: &str) {
        let _serial = self.reload_lock.lock().await;
        if self.bundle().version() != version {
            let mut change = PolicyChange::default();
            self.reevaluate(std::slice::from_ref(task), version, &mut change)
                .await;
        }
    }

    /// The key ring.
    pub fn keys(&self) -> Arc<KeyRing> {
        Arc::clone(&read(&self.keys))
    }

    /// Generates a new signing key; the old one stays published for the overlap.
    pub async fn rotate_keys(&self, reason: &str) -> Result<String, Error> {
        let now = self.clock.now_ms();
        let key = StoredKey::generate(now).map_err(Error::internal)?;
        let event = NewEvent {
            ts_ms: now,
            agent: None,
            task_id: None,
            body: Body::KeysRotated(KeysRotated {
                kid: key.kid.clone(),
                reason: reason.to_owned(),
            }),
        };
        self.store
            .rotate_keys(
                &to_row(&key),
                now,
                now - self.config.limits.key_overlap_secs * 1000,
                Some(event),
            )
            .await
            .map_err(|e| Error::store(&e))?;
        let rows = self
            .store
            .signing_keys()
            .await
            .map_err(|e| Error::store(&e))?;
        let ring = ring_from(&rows, &self.config, now).map_err(Error::internal)?;
        *write(&self.keys) = Arc::new(ring);
        Ok(key.kid)
    }

    fn expectations<'a>(&'a self, audience: &'a str) -> Expectations<'a> {
        Expectations {
            issuer: &self.issuer,
            audience,
            leeway_secs: self.config.limits.token_leeway_secs,
            now_secs: self.clock.now_secs(),
        }
    }

    /// Verifies an identity token (cached by digest after the first verification).
    pub fn verify_identity(&self, token: &str) -> Result<Arc<IdentityClaims>, TokenError> {
        let now = self.clock.now_secs();
        if let Some(c) = self.identity_cache.get(token, now) {
            return Ok(c);
        }
        let ring = self.keys();
        let claims: IdentityClaims = mandate_token::verify(
            token,
            &ring,
            &self.expectations(&self.config.identity_audience),
        )?;
        let claims = Arc::new(claims);
        self.identity_cache.insert(
            token,
            Arc::clone(&claims),
            claims.exp + self.config.limits.token_leeway_secs,
            now,
        );
        Ok(claims)
    }

    /// A task token's claims if it was verified before and is still cached.
    pub(crate) fn cached_task_claims(&self, token: &str) -> Option<Arc<TaskClaims>> {
        self.task_cache.get(token, self.clock.now_secs())
    }

    /// Verifies a task token (cached by digest after the first verification).
    pub fn verify_task_token(&self, token: &str) -> Result<Arc<TaskClaims>, TokenError> {
        let now = self.clock.now_secs();
        if let Some(c) = self.task_cache.get(token, now) {
            return Ok(c);
        }
        let ring = self.keys();
        let claims: TaskClaims =
            mandate_token::verify(token, &ring, &self.expectations(&self.config.task_audience))?;
        let claims = Arc::new(claims);
        self.task_cache.insert(
            token,
            Arc::clone(&claims),
            claims.exp + self.config.limits.token_leeway_secs,
            now,
        );
        Ok(claims)
    }

    /// The live task a task token is bound to, or why it may not act.
    pub fn task_for_token(&self, token: &str) -> Result<Arc<LiveTask>, Box<Refusal>> {
        let claims = self
            .verify_task_token(token)
            .map_err(|e| Refusal::anonymous(e.into()))?;
        let refusal = |code: &'static str, message: String| -> Box<Refusal> {
            Box::new(Refusal {
                error: Error::new(Kind::Forbidden, code, message),
                agent: SpiffeId::parse(claims.actor())
                    .ok()
                    .map(|s| s.agent().to_string()),
                task: Some(claims.task_id.clone()),
            })
        };
        let task = read(&self.tasks).get(&claims.task_id).cloned();
        let Some(task) = task else {
            return Err(refusal(
                "task_not_active",
                format!(
                    "task {} is not active (completed, expired, revoked or unknown): start a new task",
                    claims.task_id
                ),
            ));
        };
        if task.is_pending() {
            return Err(refusal(
                "task_not_active",
                format!("task {} is pending an approval", task.id),
            ));
        }
        if task.is_ended() {
            return Err(refusal(
                "task_not_active",
                format!("task {} has ended: start a new task", task.id),
            ));
        }
        if task.token_jti != claims.jti || task.spiffe_id != claims.actor() {
            return Err(refusal(
                "token_not_bound",
                "the token is not the one issued for this task and agent".into(),
            ));
        }
        if self.clock.now_ms() >= task.expires_at() {
            return Err(refusal(
                "task_expired",
                format!("task {} has expired: start a new task", task.id),
            ));
        }
        Ok(task)
    }

    /// The in-process decide path: cached token check, grant ceiling, sliced Cedar
    /// evaluation. Total: every failure is a refusal or a deny.
    pub fn evaluate(&self, token: &str, call: &Call) -> Result<Evaluated, Box<Refusal>> {
        let task = self.task_for_token(token)?;
        let bundle = self.bundle();
        if bundle.catalog().is_honeytoken(&call.tool) {
            // A decoy: whatever the grant or policy says, no call of it is ever allowed;
            // containment's `honeytoken` signal reacts to the recorded decision.
            let decision = Decision::deny(
                HONEYTOKEN_POLICY,
                format!(
                    "tool {} is a honeytoken: no honest task calls it",
                    call.tool
                ),
                bundle.version(),
            );
            return Ok(Evaluated {
                task,
                decision,
                shadow: None,
                data_domain: None,
            });
        }
        let data_domain = match bundle.effective_data_domain(&call.tool, call.data_domain.as_ref())
        {
            Ok(d) => d.cloned(),
            Err(deny) => {
                return Ok(Evaluated {
                    task,
                    decision: *deny,
                    shadow: None,
                    data_domain: None,
                });
            }
        };
        let within = read(&task.grant).check(
            &call.tool,
            call.action,
            data_domain.as_ref(),
            call.destination.as_ref(),
        );
        if let Err(outside) = within {
            let mut decision =
                Decision::deny(GRANT_CEILING_POLICY, outside.to_string(), bundle.version());
            for r in task
                .plan()
                .refused
                .iter()
                .filter(|r| r.tool == call.tool && r.action == call.action)
            {
                decision.policies.extend(r.policies.iter().cloned());
                decision.reasons.push(format!(
                    "refused when the task started by policy {}",
                    r.policies.join(", ")
                ));
            }
            return Ok(Evaluated {
                task,
                decision,
                shadow: None,
                data_domain,
            });
        }
        if let Some(decision) = self.outside_chain(&task, call, data_domain.as_ref(), &bundle) {
            return Ok(Evaluated {
                task,
                decision,
                shadow: None,
                data_domain,
            });
        }
        if let Some((bg, by)) = &task.break_glass {
            let decision = Decision {
                outcome: mandate_policy::Outcome::Allow,
                policies: vec![BREAK_GLASS_POLICY.to_owned()],
                reasons: vec![format!(
                    "break-glass {bg} declared by {by}: allowed within its emergency grant, outside policy"
                )],
                errors: Vec::new(),
                obligations: vec![mandate_policy::Obligation {
                    name: "alert".into(),
                    value: "break-glass".into(),
                    policy: BREAK_GLASS_POLICY.to_owned(),
                }],
                approval: None,
                bundle_version: bundle.version().to_owned(),
            };
            // Outside policy, not outside containment.
            let decision = if call.action != ActionClass::Read && task.stepped_up() {
                stepped_up(decision)
            } else {
                decision
            };
            return Ok(Evaluated {
                task,
                decision,
                shadow: None,
                data_domain,
            });
        }
        let history = lock(&task.history);
        let request = CallRequest {
            action: call.action,
            tool: &call.tool,
            resource: &call.resource,
            destination: call.destination.as_ref(),
            data_domain: data_domain.as_ref(),
            sensitivity: call.sensitivity,
            args_digest: call.args.digest(),
            args: Some(call.args.value()),
            now_secs: self.clock.now_secs(),
            history: &history,
        };
        let entities = match task.entities_for(&bundle) {
            Ok(e) => e,
            Err(e) => {
                drop(history);
                let decision = Decision::deny(
                    "mandate:internal-error",
                    format!(
                        "the task's entities could not be built under this bundle ({e}); errors deny"
                    ),
                    bundle.version(),
                );
                return Ok(Evaluated {
                    task,
                    decision,
                    shadow: None,
                    data_domain,
                });
            }
        };
        let mut decision = bundle.decide_call(&entities, &request);
        // A delegate's call is also decided as each task above it would have been (its
        // agent, its entities, its history, which counts what its delegates did): the
        // strictest answer wins, so handing work down never skips a deny or an approval.
        for a in task.ancestors() {
            if decision.outcome == mandate_policy::Outcome::Deny {
                break;
            }
            let link = match a.entities_for(&bundle) {
                Ok(e) => {
                    let h = lock(&a.history);
                    bundle.decide_call(
                        &e,
                        &CallRequest {
                            history: &h,
                            ..request
                        },
                    )
                }
                Err(e) => Decision::deny(
                    "mandate:internal-error",
                    format!(
                        "the entities of task {} could not be built ({e}); errors deny",
                        a.id
                    ),
                    bundle.version(),
                ),
            };
            decision = stricter(decision, link, a);
        }
        if decision.outcome != mandate_policy::Outcome::Deny
            && call.action != ActionClass::Read
            && task.stepped_up()
        {
            decision = stepped_up(decision);
        }
        // Shadow mode: the candidate decides the same input; only disagreements matter,
        // and they are recorded, never enforced.
        // The shadow bundle sees the call as its own catalog describes it, with the data
        // domain the caller declared (its catalog may place the tool elsewhere). Building
        // its entities costs a few microseconds, paid only in shadow mode.
        let shadow = read(&self.shadow).clone().map(|b| {
            let declared = CallRequest {
                data_domain: call.data_domain.as_ref(),
                ..request
            };
            let plan = task.plan();
            let facts = TaskFacts {
                purpose: plan.purpose.clone(),
                ..task.facts.1.clone()
            };
            match b.task_entities(&task.facts.0, &facts, &plan.requested.tools) {
                Ok(e) => b.decide_call(&e, &declared),
                Err(e) => Decision::deny(
                    "mandate:internal-error",
                    format!("shadow entities: {e}"),
                    b.version(),
                ),
            }
        });
        drop(history);
        Ok(Evaluated {
            task,
            decision,
            shadow,
            data_domain,
        })
    }

    /// A deny when a call of a delegate falls outside the grant of a task above it, or one
    /// of them has ended; `None` when every link holds it.
    fn outside_chain(
        &self,
        task: &LiveTask,
        call: &Call,
        data_domain: Option<&DataDomain>,
        bundle: &Bundle,
    ) -> Option<Decision> {
        let now_ms = self.clock.now_ms();
        for a in task.ancestors() {
            if a.is_ended() || now_ms >= a.expires_at() {
                return Some(Decision::deny(
                    GRANT_CEILING_POLICY,
                    format!("task {} above it in its delegation chain has ended", a.id),
                    bundle.version(),
                ));
            }
            let within = read(&a.grant).check(
                &call.tool,
                call.action,
                data_domain,
                call.destination.as_ref(),
            );
            if let Err(outside) = within {
                return Some(Decision::deny(
                    GRANT_CEILING_POLICY,
                    format!(
                        "outside the grant of task {} (agent {}) that delegated it: {outside}",
                        a.id, a.agent
                    ),
                    bundle.version(),
                ));
            }
        }
        None
    }

    /// Counts an allowed call into its task's history, before its allow is recorded: the
    /// snapshot returned commits in the same transaction as the decision event. Should the
    /// commit fail, memory keeps the count (the stricter reading: the call is refused).
    pub fn count_allowed(
        &self,
        task: &LiveTask,
        call: &Call,
        data_domain: Option<&DataDomain>,
    ) -> HistoryRow {
        let count = |h: &mut History| {
            h.record(
                call.tool.as_str(),
                call.action,
                data_domain.map(DataDomain::as_str),
                call.sensitivity,
            );
        };
        // What a delegate does is the chain's history too: the tasks above it see it on
        // their own later calls.
        for a in task.ancestors() {
            self.audit.defer_history(a.change_history(count));
        }
        task.change_history(count)
    }

    /// Counts what an allowed call returned (the gateway reports it); the snapshot is
    /// written with the next transaction. Untrusted content should have been recorded by
    /// [`Engine::taint`] before it reached the agent; this is the backstop.
    pub fn record_result(&self, task: &LiveTask, bytes_returned: u64, untrusted_content: bool) {
        let count = |h: &mut History| h.record_result(bytes_returned, untrusted_content);
        self.audit.defer_history(task.change_history(count));
        for a in task.ancestors() {
            self.audit.defer_history(a.change_history(count));
        }
    }

    /// Records, durably and before the content reaches the agent, that content from an
    /// untrusted source entered the task. Once per task: a tainted task stays tainted.
    /// An error means the taint is not durable: the content must not be relayed.
    pub async fn taint(&self, task: &LiveTask, source: &str) -> Result<(), AuditError> {
        if lock(&task.history).untrusted_content {
            return Ok(());
        }
        let row = task.change_history(|h| h.record_result(0, true));
        for a in task.ancestors() {
            self.audit
                .defer_history(a.change_history(|h| h.record_result(0, true)));
        }
        let event = NewEvent {
            ts_ms: self.clock.now_ms(),
            agent: Some(task.agent.to_string()),
            task_id: Some(task.id.clone()),
            body: Body::TaskTainted(TaskTainted {
                source: source.to_owned(),
            }),
        };
        self.audit.record(event, Some(row)).await.map(|_| ())
    }

    /// Takes a decision from the task's and its agent's budgets: 429 `rate_limited` when
    /// either is empty. Refusals are counted and summarised once a second, not recorded one
    /// by one (that would be the flood the limit stops).
    pub fn admit_decision(&self, task: &LiveTask) -> Result<(), Error> {
        let now = self.clock.now_ms();
        let refused = {
            let mut b = lock(&self.decision_buckets);
            // The task's bucket first: a call its task may not make costs its agent nothing.
            b.1.take(&task.id, now)
                .and_then(|()| b.0.take(task.agent.as_str(), now))
                .err()
        };
        let Some(retry_ms) = refused else {
            return Ok(());
        };
        *lock(&self.rate_refused)
            .entry((task.agent.to_string(), task.id.clone()))
            .or_insert(0) += 1;
        Err(Error::new(
            Kind::Exhausted,
            "rate_limited",
            format!(
                "agent {} or task {} is over its decision rate: retry in {retry_ms} ms",
                task.agent, task.id
            ),
        )
        .with_details(serde_json::json!({ "retry_after_ms": retry_ms })))
    }

    /// Checks a bearer admin token in constant time.
    pub fn is_admin(&self, token: &str) -> bool {
        let given = mandate_core::sha256_hex(token.as_bytes());
        let want = read(&self.admin_hash).clone();
        aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), want.as_bytes()).is_ok()
    }

    /// Expires every live task past its time: in memory first, then in the store.
    pub async fn sweep(&self) {
        let now = self.clock.now_ms();
        for id in self.expired_tasks(now) {
            let Some(t) = self.live_get(&id) else {
                continue;
            };
            let end = PendingEnd {
                from: vec![TaskState::Active, TaskState::Pending],
                to: TaskState::Expired,
                kind: TaskEnd::Expired,
                reason: "expired".into(),
                by: "mandate".into(),
                agent: t.agent.to_string(),
                detail: TaskEnded::default(),
            };
            if let Err(e) = self.end_task(&id, end).await {
                tracing::error!(task = %id, error = %e, "could not record expiry yet; the task stays refused and the write is retried");
            }
        }
        let pending: Vec<(String, PendingEnd)> = lock(&self.unrecorded_ends)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, end) in pending {
            match self.record_end(&id, &end).await {
                Ok(_) => self.forget_end(&id),
                Err(e) => {
                    tracing::error!(task = %id, error = %e, "task end still not recorded; retrying")
                }
            }
        }
        self.expire_approvals().await;
        let limited = std::mem::take(&mut *lock(&self.rate_refused));
        for ((agent, task), count) in limited {
            let event = NewEvent {
                ts_ms: now,
                agent: Some(agent),
                task_id: Some(task),
                body: Body::CallRefused(CallRefused {
                    code: "rate_limited".to_owned(),
                    count: Some(count),
                    summarised: Some(true),
                    ..CallRefused::default()
                }),
            };
            self.audit.append_deferred(event);
        }
        if let Some(why) = self.audit.health().failure() {
            // Nothing else may be writing while the store fails: try a commit, so readiness
            // turns green again by itself once space (or the database) is back.
            let event = NewEvent {
                ts_ms: now,
                agent: None,
                task_id: None,
                body: Body::StoreRecovered(StoreRecovered { failure: why }),
            };
            if self.audit.record(event, None).await.is_ok() {
                tracing::warn!("the store commits again; decisions resume");
            }
        }
        let suppressed = std::mem::take(&mut lock(&self.anonymous).suppressed);
        if suppressed > 0 {
            let event = NewEvent {
                ts_ms: now,
                agent: None,
                task_id: None,
                body: Body::CallRefused(CallRefused {
                    code: "unauthenticated_refusals_summarised".to_owned(),
                    count: Some(suppressed),
                    ..CallRefused::default()
                }),
            };
            if self.audit.append(event).await.is_err() {
                lock(&self.anonymous).suppressed += suppressed;
            }
        }
        if now - self.active_key_created_ms() >= self.config.key_rotation_secs.saturating_mul(1000)
            && let Err(e) = self.rotate_keys("scheduled rotation").await
        {
            tracing::error!(error = e.message, "scheduled key rotation failed");
        }
    }

    fn active_key_created_ms(&self) -> i64 {
        self.keys().active_created_ms()
    }
}

fn to_row(k: &StoredKey) -> KeyRow {
    KeyRow {
        kid: k.kid.clone(),
        pkcs8: k.pkcs8.clone(),
        created_at_ms: k.created_at_ms,
        retired_at_ms: k.retired_at_ms,
    }
}

fn from_row(r: &KeyRow) -> StoredKey {
    StoredKey {
        kid: r.kid.clone(),
        pkcs8: r.pkcs8.clone(),
        created_at_ms: r.created_at_ms,
        retired_at_ms: r.retired_at_ms,
    }
}

/// Whether a stored key signs with the algorithm of before the ES256 upgrade (Ed25519). An
/// unreadable key is not: [`ring_from`] refuses it with its reason.
fn signs_legacy_alg(r: &KeyRow) -> bool {
    from_row(r)
        .alg()
        .is_ok_and(|alg| alg != mandate_token::jwk::Alg::ES256)
}

/// The ring from the stored rows. The key type (ES256, or Ed25519 from before the
/// upgrade) is read from each PKCS#8 document: the table has no algorithm column.
fn ring_from(rows: &[KeyRow], config: &ServerConfig, now: i64) -> Result<KeyRing, TokenError> {
    let stored: Vec<StoredKey> = rows.iter().map(from_row).collect();
    KeyRing::from_stored(&stored, config.limits.key_overlap_secs * 1000, now)
}

/// Checks, before anything is appended, that the chain ends where its head says and that
/// its last record is intact. On a break, names the first bad record (a full walk, only
/// then). The rest of the chain is walked in the background once the server runs
/// (the checkpointer's first walk, [`crate::checkpoints::AuditLog::spawn`]).
async fn chain_tail_break(store: &dyn Store) -> Result<Option<String>, String> {
    let known = store
        .setting(CHAIN_BREAK_KEY)
        .await
        .map_err(|e| e.to_string())?;
    if known.is_some_and(|k| !k.is_empty()) {
        // A walk found the chain broken before: walk it all now (it may have been
        // restored since), before anything is appended.
        let report = crate::verify::verify_chain(store)
            .await
            .map_err(|e| e.to_string())?;
        return match report.first_bad {
            Some(b) => Ok(Some(format!("first bad record {}: {}", b.seq, b.problem))),
            None => {
                store
                    .put_setting(CHAIN_BREAK_KEY, "")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(None)
            }
        };
    }
    let head = store.audit_head().await.map_err(|e| e.to_string())?;
    let tail = store.audit_tail().await.map_err(|e| e.to_string())?;
    let intact = match (&head, &tail) {
        (Some((0, h)), None) => h == mandate_audit::GENESIS_HASH,
        (Some((seq, hash)), Some(e)) => {
            e.seq == *seq
                && e.hash == *hash
                && mandate_audit::event_hash(
                    e.seq,
                    e.ts_ms,
                    &e.kind,
                    e.agent.as_deref(),
                    e.task_id.as_deref(),
                    &e.data,
                    &e.prev_hash,
                ) == e.hash
        }
        _ => false,
    };
    if intact {
        return Ok(None);
    }
    let report = crate::verify::verify_chain(store)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(report.first_bad.map_or_else(
        || "the last record does not match the chain head".to_owned(),
        |b| format!("first bad record {}: {}", b.seq, b.problem),
    )))
}

/// Replays a task's recorded allows into its history.
fn rebuild_history(h: &mut History, events: &[mandate_audit::Event]) {
    for e in events {
        if let Ok(Body::Decision(d)) = e.body()
            && d.outcome == mandate_policy::Outcome::Allow
        {
            h.record(
                d.tool.as_str(),
                d.action,
                d.data_domain.as_ref().map(DataDomain::as_str),
                d.sensitivity,
            );
        }
    }
}

/// The stricter of a decision and the one a task above it in the chain gave the same call.
fn stricter(own: Decision, link: Decision, above: &LiveTask) -> Decision {
    use mandate_policy::Outcome;
    let rank = |o: Outcome| match o {
        Outcome::Allow => 0,
        Outcome::ApprovalRequired => 1,
        Outcome::Deny => 2,
    };
    if rank(link.outcome) > rank(own.outcome) {
        let mut d = link;
        let prefix = format!(
            "as task {} of agent {} above it in its delegation chain would be",
            above.id, above.agent
        );
        if d.reasons.is_empty() {
            d.reasons.push(prefix);
        } else {
            for r in &mut d.reasons {
                *r = format!("{prefix}: {r}");
            }
        }
        d
    } else if link.outcome != own.outcome {
        own
    } else if own.outcome == Outcome::ApprovalRequired {
        // Both links ask for a human: the approval must satisfy both, as approval
        // policies within one bundle are combined.
        match (own.approval.clone(), link.approval.clone()) {
            (Some(a), Some(b)) if a.group != b.group => {
                let mut d = Decision::deny(
                    mandate_policy::APPROVER_GROUP_CONFLICT_POLICY,
                    format!(
                        "this task and task {} above it in its delegation chain ask different approver groups ({}, {})",
                        above.id, a.group, b.group
                    ),
                    &own.bundle_version,
                );
                d.policies
                    .extend(own.policies.into_iter().chain(link.policies));
                d
            }
            (a, b) => {
                let mut d = own;
                d.approval = match (a, b) {
                    (Some(a), Some(b)) => Some(mandate_policy::ApprovalTerms {
                        approvals: a.approvals.max(b.approvals),
                        owner_may_approve: a.owner_may_approve && b.owner_may_approve,
                        group: a.group,
                    }),
                    (a, b) => a.or(b),
                };
                d.policies.extend(link.policies);
                d.reasons.extend(link.reasons);
                d.obligations.extend(link.obligations);
                d
            }
        }
    } else {
        let mut d = own;
        d.obligations.extend(link.obligations);
        d
    }
}

/// A stepped-up task's write, delete or execute that policy allows or holds: a request for
/// at least one human, never the agent's owner (whatever policy waived), in the group
/// policy asked for (`default` otherwise).
fn stepped_up(mut d: Decision) -> Decision {
    d.outcome = mandate_policy::Outcome::ApprovalRequired;
    d.policies.push(STEP_UP_POLICY.to_owned());
    d.reasons.push(
        "a containment rule stepped this task up: every write, delete or execute needs a human"
            .to_owned(),
    );
    d.approval = Some(match d.approval.take() {
        Some(t) => mandate_policy::ApprovalTerms {
            approvals: t.approvals.max(1),
            owner_may_approve: false,
            group: t.group,
        },
        None => mandate_policy::ApprovalTerms {
            approvals: 1,
            owner_may_approve: false,
            group: mandate_policy::DEFAULT_APPROVER_GROUP.to_owned(),
        },
    });
    d
}

/// The end of a task because one above it in its chain ended.
pub(crate) fn cascade_end(agent: &AgentName, why: &str, by: &str) -> PendingEnd {
    PendingEnd {
        from: vec![TaskState::Active, TaskState::Pending],
        to: TaskState::Revoked,
        kind: TaskEnd::Revoked,
        reason: why.to_owned(),
        by: by.to_owned(),
        agent: agent.to_string(),
        detail: TaskEnded::default(),
    }
}

fn drift_end(task: &LiveTask, detail: TaskEnded) -> PendingEnd {
    PendingEnd {
        from: vec![TaskState::Active, TaskState::Pending],
        to: TaskState::Revoked,
        kind: TaskEnd::Revoked,
        reason: "policy change: the task is no longer permitted".into(),
        by: "mandate".into(),
        agent: task.agent.to_string(),
        detail,
    }
}

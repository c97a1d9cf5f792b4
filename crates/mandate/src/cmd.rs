//! The client-side subcommands: thin wrappers over the HTTP API, plus the offline audit
//! and policy tools that read the data directory or policy files directly.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use mandate_store::{SqliteStore, Store};
use serde_json::{Value, json};

use crate::client::Client;
use crate::{style, trace};

/// A declared intent and the scope it needs: what `task start`, `task delegate` and
/// `task plan` ask for.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// The declared intent, in plain words.
    #[arg(long)]
    purpose: String,
    /// A tool it needs (repeat).
    #[arg(long = "tool", required = true)]
    tools: Vec<String>,
    /// An action class it needs on every tool listed: read, write, delete, execute (repeat).
    #[arg(long = "action", required = true)]
    actions: Vec<String>,
    /// A data domain it touches (repeat).
    #[arg(long = "data-domain")]
    data_domains: Vec<String>,
    /// A destination it sends data to (repeat).
    #[arg(long = "destination")]
    destinations: Vec<String>,
}

impl ScopeArgs {
    /// The requested scope as the API takes it.
    fn requested(&self) -> serde_json::Value {
        json!({
            "tools": self.tools, "actions": self.actions,
            "data_domains": self.data_domains, "destinations": self.destinations,
        })
    }
}

/// Where the server is, and the admin token for admin operations.
#[derive(Debug, Args)]
pub struct ServerOpts {
    /// Base URL of the Mandate server.
    #[arg(long, default_value = "http://127.0.0.1:8181", env = "MANDATE_URL")]
    server: String,
    /// Admin token (printed by `mandate serve` on first start).
    #[arg(long, env = "MANDATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

impl ServerOpts {
    pub fn client(&self) -> Result<Client> {
        Client::new(&self.server)
    }

    pub fn admin(&self) -> Result<&str> {
        self.admin_token.as_deref().context(
            "this command needs the admin token: pass --admin-token or set MANDATE_ADMIN_TOKEN",
        )
    }
}

pub fn print(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Register an agent; prints its SPIFFE ID and, for a join-token agent, a one-time
    /// join token.
    Register {
        /// Agent name (becomes spiffe://<trust-domain>/agent/<name>).
        name: String,
        /// Accountable human owner.
        #[arg(long)]
        owner: String,
        /// Risk tier, 0 (most constrained) to 3.
        #[arg(long, default_value_t = 1)]
        tier: u8,
        /// Attest with tokens of this configured OIDC issuer (its `[[oidc]] name`) instead
        /// of a join token; give the claims with --claim.
        #[arg(long, conflicts_with = "spiffe_id")]
        oidc_issuer: Option<String>,
        /// A claim the issuer's token must carry, `NAME=VALUE` (repeatable; NAME starting
        /// with `/` is a JSON pointer into nested claims, e.g.
        /// `/kubernetes.io/namespace=prod`).
        #[arg(long = "claim", requires = "oidc_issuer")]
        claims: Vec<String>,
        /// Attest with a JWT-SVID carrying exactly this SPIFFE ID, from a trusted trust
        /// domain (`[[spiffe]]`), instead of a join token.
        #[arg(long, conflicts_with = "x509_spiffe_id")]
        spiffe_id: Option<String>,
        /// Attest with an X.509-SVID carrying exactly this SPIFFE ID, presented over mutual
        /// TLS (the server needs --tls-client-ca), instead of a join token.
        #[arg(long, conflicts_with = "oidc_issuer")]
        x509_spiffe_id: Option<String>,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// List agents.
    List {
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Show one agent.
    Show {
        name: String,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Issue another one-time join token.
    JoinToken {
        name: String,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Attest with a join token, or with a workload token from a trusted issuer; prints
    /// a JWT-SVID identity token.
    Attest {
        /// The agent (with --join-token; a workload token names its agent by its claims).
        #[arg(required_unless_present = "assertion_file")]
        name: Option<String>,
        /// The one-time join token.
        #[arg(
            long,
            env = "MANDATE_JOIN_TOKEN",
            hide_env_values = true,
            conflicts_with = "assertion_file"
        )]
        join_token: Option<String>,
        /// A file holding the workload's token (a Kubernetes service-account token, a
        /// GitHub Actions OIDC token, a JWT-SVID…).
        #[arg(long)]
        assertion_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Renew an identity token with a still-valid one (until 24 h after attestation).
    Renew {
        #[arg(long, env = "MANDATE_IDENTITY_TOKEN", hide_env_values = true)]
        identity_token: String,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Quarantine an agent: every live task is revoked at once.
    Quarantine {
        name: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Release a quarantined agent.
    Release {
        name: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Offboard an agent for good: everything it holds is revoked.
    Offboard {
        name: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerOpts,
    },
}

pub async fn agent(c: AgentCmd) -> Result<()> {
    match c {
        AgentCmd::Register {
            name,
            owner,
            tier,
            oidc_issuer,
            claims,
            spiffe_id,
            x509_spiffe_id,
            server,
        } => {
            let mut body = json!({ "name": name, "owner": owner, "tier": tier });
            if let Some(issuer) = oidc_issuer {
                let mut map = serde_json::Map::new();
                for c in claims {
                    let (k, v) = c
                        .split_once('=')
                        .with_context(|| format!("--claim {c:?}: expected NAME=VALUE"))?;
                    // A value that reads as JSON (true, 42, [..]) compares as JSON.
                    let v = serde_json::from_str(v).unwrap_or_else(|_| json!(v));
                    map.insert(k.to_owned(), v);
                }
                body["attestation"] = json!({ "method": "oidc", "issuer": issuer, "claims": map });
            } else if let Some(id) = spiffe_id {
                body["attestation"] = json!({ "method": "spiffe", "id": id });
            } else if let Some(id) = x509_spiffe_id {
                body["attestation"] = json!({ "method": "x509_svid", "id": id });
            }
            let r = server
                .client()?
                .post("/v1/agents", Some(server.admin()?), &body)
                .await?;
            print(&r.ok()?)
        }
        AgentCmd::List { server } => print(
            &server
                .client()?
                .get("/v1/agents", Some(server.admin()?))
                .await?
                .ok()?,
        ),
        AgentCmd::Show { name, server } => print(
            &server
                .client()?
                .get(&format!("/v1/agents/{name}"), Some(server.admin()?))
                .await?
                .ok()?,
        ),
        AgentCmd::JoinToken { name, server } => print(
            &server
                .client()?
                .post(
                    &format!("/v1/agents/{name}/join-tokens"),
                    Some(server.admin()?),
                    &json!({}),
                )
                .await?
                .ok()?,
        ),
        AgentCmd::Attest {
            name,
            join_token,
            assertion_file,
            server,
        } => {
            let body = match (name, join_token, assertion_file) {
                (None, None, Some(file)) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    json!({ "assertion": text.trim() })
                }
                (Some(name), Some(join_token), None) => {
                    json!({ "agent": name, "join_token": join_token })
                }
                _ => anyhow::bail!(
                    "give NAME with --join-token, or --assertion-file alone (the token names its agent)"
                ),
            };
            print(
                &server
                    .client()?
                    .post("/v1/attest", None, &body)
                    .await?
                    .ok()?,
            )
        }
        AgentCmd::Renew {
            identity_token,
            server,
        } => print(
            &server
                .client()?
                .post("/v1/identity/renew", Some(&identity_token), &json!({}))
                .await?
                .ok()?,
        ),
        AgentCmd::Quarantine {
            name,
            reason,
            server,
        } => status(&server, &name, "quarantined", &reason).await,
        AgentCmd::Release {
            name,
            reason,
            server,
        } => status(&server, &name, "active", &reason).await,
        AgentCmd::Offboard {
            name,
            reason,
            server,
        } => status(&server, &name, "offboarded", &reason).await,
    }
}

async fn status(server: &ServerOpts, name: &str, status: &str, reason: &str) -> Result<()> {
    let r = server
        .client()?
        .post(
            &format!("/v1/agents/{name}/status"),
            Some(server.admin()?),
            &json!({ "status": status, "reason": reason }),
        )
        .await?;
    print(&r.ok()?)
}

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Start a task with an identity token; prints the grant and the task token.
    Start {
        /// Identity token from `mandate agent attest`.
        #[arg(long, env = "MANDATE_IDENTITY_TOKEN", hide_env_values = true)]
        identity_token: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Lifetime asked for, in seconds.
        #[arg(long)]
        ttl: Option<i64>,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Delegate a sub-task of a running task to another agent (RFC 8693 token exchange
    /// at /oauth2/token); prints the child task, its grant, its chain and its token.
    Delegate {
        /// The parent's task token.
        #[arg(long, env = "MANDATE_TASK_TOKEN", hide_env_values = true)]
        parent_token: String,
        /// The child agent's identity token (from its `mandate agent attest`).
        #[arg(long, env = "MANDATE_ACTOR_TOKEN", hide_env_values = true)]
        actor_token: String,
        /// What the sub-task needs (each pair within the parent's grant).
        #[command(flatten)]
        scope: ScopeArgs,
        /// Lifetime in seconds (at most what the parent has left).
        #[arg(long)]
        ttl: Option<i64>,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Re-declare a running task's plan with its own task token: a new purpose and scope.
    /// Within the grant it holds, in force at once; wider, decided by policy (and held for
    /// a human where policy says so: repeat with --approval-id once approved).
    Plan {
        id: String,
        #[arg(long, env = "MANDATE_TASK_TOKEN", hide_env_values = true)]
        task_token: String,
        /// The new plan.
        #[command(flatten)]
        scope: ScopeArgs,
        /// The approval a wider plan was held for.
        #[arg(long)]
        approval_id: Option<String>,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Show a task.
    Show {
        id: String,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// List live tasks.
    List {
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Complete a task with its own task token.
    Complete {
        id: String,
        #[arg(long, env = "MANDATE_TASK_TOKEN", hide_env_values = true)]
        task_token: String,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Exchange an approved task start for its task token (identity token).
    Activate {
        id: String,
        #[arg(long, env = "MANDATE_IDENTITY_TOKEN", hide_env_values = true)]
        identity_token: String,
        /// The start's approval id.
        #[arg(long)]
        approval_id: String,
        /// Wait up to this many seconds for the approval.
        #[arg(long)]
        wait: Option<u64>,
        #[command(flatten)]
        server: ServerOpts,
    },
    /// Revoke a task (admin).
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerOpts,
    },
}

pub async fn task(c: TaskCmd) -> Result<()> {
    match c {
        TaskCmd::Start {
            identity_token,
            scope,
            ttl,
            server,
        } => {
            let body = json!({
                "purpose": scope.purpose,
                "scope": scope.requested(),
                "ttl_secs": ttl,
            });
            print(
                &server
                    .client()?
                    .post("/v1/tasks", Some(&identity_token), &body)
                    .await?
                    .ok()?,
            )
        }
        TaskCmd::Delegate {
            parent_token,
            actor_token,
            scope,
            ttl,
            server,
        } => {
            let details = json!([strip_nulls(json!({
                "type": "mandate_task",
                "purpose": scope.purpose,
                "tools": scope.tools,
                "actions": scope.actions,
                "data_domains": scope.data_domains,
                "destinations": scope.destinations,
                "ttl_secs": ttl,
            }))])
            .to_string();
            print(
                &server
                    .client()?
                    .post_form(
                        "/oauth2/token",
                        &[
                            (
                                "grant_type",
                                "urn:ietf:params:oauth:grant-type:token-exchange",
                            ),
                            ("subject_token", &parent_token),
                            (
                                "subject_token_type",
                                "urn:ietf:params:oauth:token-type:access_token",
                            ),
                            ("actor_token", &actor_token),
                            ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                            ("authorization_details", &details),
                        ],
                    )
                    .await?
                    .ok()?,
            )
        }
        TaskCmd::Show { id, server } => print(
            &server
                .client()?
                .get(&format!("/v1/tasks/{id}"), Some(server.admin()?))
                .await?
                .ok()?,
        ),
        TaskCmd::List { server } => print(
            &server
                .client()?
                .get("/v1/tasks", Some(server.admin()?))
                .await?
                .ok()?,
        ),
        TaskCmd::Plan {
            id,
            task_token,
            scope,
            approval_id,
            server,
        } => {
            let mut body = json!({
                "purpose": scope.purpose,
                "scope": scope.requested(),
            });
            if let (Some(a), Some(obj)) = (approval_id, body.as_object_mut()) {
                obj.insert("approval_id".into(), json!(a));
            }
            print(
                &server
                    .client()?
                    .post(&format!("/v1/tasks/{id}/plan"), Some(&task_token), &body)
                    .await?
                    .ok()?,
            )
        }
        TaskCmd::Complete {
            id,
            task_token,
            server,
        } => print(
            &server
                .client()?
                .post(
                    &format!("/v1/tasks/{id}/complete"),
                    Some(&task_token),
                    &json!({}),
                )
                .await?
                .ok()?,
        ),
        TaskCmd::Activate {
            id,
            identity_token,
            approval_id,
            wait,
            server,
        } => print(
            &server
                .client()?
                .post(
                    &format!("/v1/tasks/{id}/activate"),
                    Some(&identity_token),
                    &strip_nulls(json!({ "approval_id": approval_id, "wait_secs": wait })),
                )
                .await?
                .ok()?,
        ),
        TaskCmd::Revoke { id, reason, server } => print(
            &server
                .client()?
                .post(
                    &format!("/v1/tasks/{id}/revoke"),
                    Some(server.admin()?),
                    &json!({ "reason": reason }),
                )
                .await?
                .ok()?,
        ),
    }
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// Task token from `mandate task start`.
    #[arg(long, env = "MANDATE_TASK_TOKEN", hide_env_values = true)]
    task_token: String,
    /// The tool being called.
    #[arg(long)]
    tool: String,
    /// Its action class: read, write, delete or execute.
    #[arg(long)]
    action: String,
    /// What the tool acts on.
    #[arg(long)]
    resource: Option<String>,
    /// The call's arguments as JSON.
    #[arg(long)]
    args: Option<String>,
    /// Where the call sends data (host[:port]).
    #[arg(long)]
    destination: Option<String>,
    /// Data domain touched.
    #[arg(long)]
    data_domain: Option<String>,
    /// Sensitivity: public, internal, confidential, restricted.
    #[arg(long)]
    sensitivity: Option<String>,
    /// Use this approval (given for exactly this call) if it is approved.
    #[arg(long)]
    approval_id: Option<String>,
    /// If the call needs an approval, wait up to this many seconds for it.
    #[arg(long)]
    wait: Option<u64>,
    /// Print the whole decision as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerOpts,
}

pub async fn decide(a: DecideArgs) -> Result<ExitCode> {
    let args: Option<Value> = a
        .args
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--args is not valid JSON")?;
    let body = json!({
        "tool": a.tool, "action": a.action, "resource": a.resource, "arguments": args,
        "destination": a.destination, "data_domain": a.data_domain, "sensitivity": a.sensitivity,
        "approval_id": a.approval_id, "wait_secs": a.wait,
    });
    let body = strip_nulls(body);
    let d = a
        .server
        .client()?
        .post("/v1/decide", Some(&a.task_token), &body)
        .await?
        .ok()?;
    let outcome = d["outcome"].as_str().unwrap_or("deny").to_owned();
    if a.json {
        print(&d)?;
    } else {
        println!(
            "{}  {}",
            style::outcome(&outcome),
            d["policies"]
                .as_array()
                .map(|p| p
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        for r in d["reasons"].as_array().into_iter().flatten() {
            println!("  {}", r.as_str().unwrap_or(""));
        }
        if outcome == "approval_required"
            && let Some(id) = d["approval"]["id"].as_str()
        {
            println!(
                "  approval {id} ({}): an approver runs `mandate approvals approve {id}`; then repeat this call with --approval-id {id}",
                d["approval"]["state"].as_str().unwrap_or("pending")
            );
        }
    }
    Ok(match outcome.as_str() {
        "allow" => ExitCode::SUCCESS,
        "approval_required" => ExitCode::from(3),
        _ => ExitCode::from(2),
    })
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Walk the hash chain and name the first bad record (edit, deletion, reorder, truncation).
    ///
    /// Reads the data directory directly; works while the server runs. Exit 0 when intact,
    /// 2 when broken.
    ///
    /// With --checkpoint, the log is also checked against signed checkpoints held
    /// elsewhere (a note file, or a witness directory with its hashes): this catches a
    /// rewrite with every hash recomputed, and a truncation with the head moved back.
    /// Reads the database read-only with its own queries, or an export (--export).
    Verify {
        /// The server's data directory.
        #[arg(long, default_value = "./mandate-data", env = "MANDATE_DATA_DIR")]
        data_dir: PathBuf,
        /// Verify an export (JSON lines from `mandate audit export`) instead of the database.
        #[arg(long)]
        export: Option<PathBuf>,
        /// A signed checkpoint to check against: a note file, or a witness directory (its
        /// `checkpoint` and `hashes`). Repeatable.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// The log's verifier key (`name+id+key`, or a file holding it). Default: derived
        /// from the data directory's log key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Write audit records as JSON lines, from a cursor; with --follow, keep writing new
    /// ones as they commit.
    Export {
        /// The server's data directory.
        #[arg(long, default_value = "./mandate-data", env = "MANDATE_DATA_DIR")]
        data_dir: PathBuf,
        /// Start after this sequence number (0: from the first record).
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep following new records.
        #[arg(long)]
        follow: bool,
    },
    /// What a task changed, oldest first: every allowed write and delete, with what the
    /// gateway recorded of it (method, canonical target, body digest, upstream status, the
    /// Location and ETag the upstream answered), so its effects can be reversed.
    Changes {
        /// The task.
        task: String,
        /// The server's data directory.
        #[arg(long, default_value = "./mandate-data", env = "MANDATE_DATA_DIR")]
        data_dir: PathBuf,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print one task's events as a timeline, every task delegated below it indented
    /// under it (delegations, calls, approvals, revocations).
    Trace {
        /// Task id.
        task: String,
        /// The server's data directory.
        #[arg(long, default_value = "./mandate-data", env = "MANDATE_DATA_DIR")]
        data_dir: PathBuf,
        /// Print the raw events as JSON lines.
        #[arg(long)]
        json: bool,
    },
}

pub async fn audit(c: AuditCmd) -> Result<ExitCode> {
    match c {
        AuditCmd::Verify {
            data_dir,
            export,
            checkpoint,
            key,
        } => {
            let anchors = crate::evidence::read_anchors(&checkpoint)?;
            let mut checkpoints = Vec::new();
            if !anchors.notes.is_empty() {
                let (verifier, given) = crate::evidence::verifier_key(key.as_deref(), &data_dir)?;
                if !given {
                    eprintln!(
                        "note: checking checkpoints with the key in the data directory; pass --key with the verifier key kept elsewhere for a check that does not trust this directory"
                    );
                }
                for (path, note) in &anchors.notes {
                    let cp = mandate_audit::note::Checkpoint::open(note, &verifier)
                        .with_context(|| format!("checkpoint {}", path.display()))?;
                    checkpoints.push(cp);
                }
            }
            let source = match export {
                Some(f) => crate::evidence::Source::Export(f),
                None => crate::evidence::Source::Database(data_dir),
            };
            let found = crate::evidence::verify(&source, checkpoints, anchors.hashes).await?;
            match found.first_bad {
                None => {
                    let against = found
                        .checkpoint_size
                        .map(|s| format!(", consistent with the signed checkpoint of {s} records"))
                        .unwrap_or_default();
                    println!(
                        "{} audit chain intact: {} records verified{against}",
                        style::green("ok"),
                        found.records
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some(b) => {
                    println!("{} {b}", style::red("BROKEN"));
                    Ok(ExitCode::from(2))
                }
            }
        }
        AuditCmd::Export {
            data_dir,
            after,
            follow,
        } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            crate::evidence::export(&data_dir, after, follow, &mut out).await?;
            std::io::Write::flush(&mut out).ok();
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Changes {
            task,
            data_dir,
            json,
        } => {
            let changes = crate::changes::changes(&data_dir, &task).await?;
            if json {
                for c in &changes {
                    println!("{}", serde_json::to_string(c)?);
                }
            } else {
                print!("{}", crate::changes::render(&task, &changes));
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Trace {
            task,
            data_dir,
            json,
        } => {
            let store = SqliteStore::open_existing(&data_dir).await?;
            let tree = delegation_tree(&store, &task).await?;
            if tree.first().is_none_or(|(_, _, e)| e.is_empty()) {
                bail!("no events for task {task} in {}", data_dir.display());
            }
            if json {
                for (_, _, events) in &tree {
                    for e in events {
                        println!("{}", serde_json::to_string(e)?);
                    }
                }
            } else {
                print!("{}", trace::render_tree(&tree));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A task and every task delegated below it, depth first: (depth, task id, its events).
async fn delegation_tree(
    store: &SqliteStore,
    root: &str,
) -> Result<Vec<(usize, String, Vec<mandate_audit::Event>)>> {
    let filter = mandate_store::EventFilter {
        kind: Some("task.delegated".to_owned()),
        ..Default::default()
    };
    let mut children: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut after = 0;
    loop {
        let page = store.search_events(&filter, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            if let (Some(parent), Some(id)) =
                (e.data["delegation"]["parent_task"].as_str(), &e.task_id)
            {
                children
                    .entry(parent.to_owned())
                    .or_default()
                    .push(id.clone());
            }
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![(0usize, root.to_owned())];
    while let Some((depth, id)) = stack.pop() {
        let events = store.task_events(&id).await?;
        for child in children.get(&id).into_iter().flatten().rev() {
            stack.push((depth + 1, child.clone()));
        }
        out.push((depth, id, events));
    }
    Ok(out)
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate every *.cedar file in a directory against Mandate's schema.
    Validate {
        /// Policy directory.
        dir: PathBuf,
    },
    /// Validate a policy directory, then run its tests (DIR/tests/*.json): each case is a
    /// request (`call` or `start`) and the expected decision (`expect.outcome`, and
    /// optionally `policies`, `obligations`, `granted`, `ttl_cap_secs`). Exit 0 when all
    /// pass, 2 when any fails.
    Test {
        /// Policy directory.
        dir: PathBuf,
    },
    /// Decide one call against a policy directory and show every policy's part in it:
    /// which determined the decision, which matched, which did not, which failed, and
    /// which were skipped because their scope cannot apply. Or decide a task start and
    /// show how each requested (tool, action) pair fared, and why each refused one was.
    Explain {
        /// Policy directory.
        dir: PathBuf,
        /// The call or start as JSON, like a test case without `expect`:
        /// '{"agent": {"tier": 0}, "call": {"tool": "tickets.search", "action": "read"}}'
        /// or '{"start": {"scope": {"tools": ["tickets.search"], "actions": ["read"]}}}'.
        /// Prefix with @ to read a file.
        request: String,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-run the decisions recorded in a data directory against a candidate bundle and
    /// show what would change (allow → deny, deny → allow, new approvals), before anyone
    /// enforces it. Each task's history is rebuilt as it happened; agents are taken as
    /// they are now.
    Replay {
        /// The server's data directory.
        #[arg(
            long = "audit",
            default_value = "./mandate-data",
            env = "MANDATE_DATA_DIR"
        )]
        data_dir: PathBuf,
        /// The candidate policy directory.
        #[arg(long)]
        candidate: PathBuf,
        /// Environment label the recorded tasks ran in.
        #[arg(long, default_value = "development")]
        environment: String,
        /// The SPIFFE trust domain the server ran with.
        #[arg(long, default_value = "mandate.local", env = "MANDATE_TRUST_DOMAIN")]
        trust_domain: String,
        /// Most changed decisions to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print Mandate's built-in Cedar schema.
    Schema,
}

pub async fn policy(c: PolicyCmd) -> Result<ExitCode> {
    match c {
        PolicyCmd::Replay {
            data_dir,
            candidate,
            environment,
            trust_domain,
            limit,
        } => {
            let td = mandate_core::TrustDomain::parse(&trust_domain)?;
            crate::replay::run(&data_dir, &candidate, &environment, &td, limit).await
        }
        PolicyCmd::Validate { dir } => match mandate_policy::Bundle::load_dir(&dir) {
            Ok(b) => {
                println!(
                    "{} {} policies valid; bundle {}",
                    style::green("ok"),
                    b.len(),
                    b.version()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                for d in &e.diagnostics {
                    println!("{}: {d}", style::red("error"));
                }
                Ok(ExitCode::from(2))
            }
        },
        PolicyCmd::Test { dir } => {
            let Some(bundle) = load_or_report(&dir) else {
                return Ok(ExitCode::from(2));
            };
            let results = match mandate_policy::testing::run_dir(&bundle, &dir) {
                Ok(r) => r,
                Err(e) => {
                    println!("{}: {e}", style::red("error"));
                    return Ok(ExitCode::from(2));
                }
            };
            let failed = results.iter().filter(|r| !r.passed()).count();
            for r in &results {
                if r.passed() {
                    println!("{} {} — {}", style::green("ok  "), r.file, r.name);
                } else {
                    println!("{} {} — {}", style::red("FAIL"), r.file, r.name);
                    for d in &r.differences {
                        println!("       {d}");
                    }
                }
            }
            println!("{}", dir.display());
            println!("policy: {} passed, {failed} failed", results.len() - failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        PolicyCmd::Explain { dir, request, json } => {
            let text = match request.strip_prefix('@') {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
                }
                None => request,
            };
            let case: mandate_policy::testing::ExplainCase =
                serde_json::from_str(&text).context("the request is not a valid explain case")?;
            let Some(bundle) = load_or_report(&dir) else {
                return Ok(ExitCode::from(2));
            };
            let ex = mandate_policy::testing::explain_case(&bundle, &case)
                .map_err(anyhow::Error::msg)?;
            if json {
                print(&serde_json::to_value(&ex)?)?;
            } else if let mandate_policy::testing::Explained::Start(st) = &ex {
                let d = &st.decision;
                println!(
                    "start_task: {}  by {}  (bundle {})",
                    style::outcome(d.outcome.as_str()),
                    d.policies.join(", "),
                    d.bundle_version
                );
                for r in &d.reasons {
                    println!("  {r}");
                }
                if let Some(cap) = st.ttl_cap_secs {
                    println!("  lifetime capped at {cap} s");
                }
                println!();
                for i in &st.items {
                    println!(
                        "  {}  {}:{}  by {}",
                        style::outcome(i.outcome.as_str()),
                        i.tool,
                        i.action,
                        i.policies.join(", ")
                    );
                    for r in &i.reasons {
                        println!("      {r}");
                    }
                }
            } else if let mandate_policy::testing::Explained::Call(ex) = &ex {
                let d = &ex.decision;
                println!(
                    "{}  by {}  (bundle {})",
                    style::outcome(d.outcome.as_str()),
                    d.policies.join(", "),
                    d.bundle_version
                );
                for r in &d.reasons {
                    println!("  {r}");
                }
                for o in &d.obligations {
                    println!(
                        "  obligation {}={} (policy `{}`)",
                        o.name, o.value, o.policy
                    );
                }
                println!();
                for p in &ex.policies {
                    let mark = match p.trace {
                        mandate_policy::Trace::Determining => style::bold("determining"),
                        mandate_policy::Trace::Matched => style::yellow("matched    "),
                        mandate_policy::Trace::NotMatched => "not matched".to_owned(),
                        mandate_policy::Trace::Errored => style::red("errored    "),
                        mandate_policy::Trace::Skipped => style::dim("skipped    "),
                    };
                    println!("  {mark}  {:<6} {:<32} {}", p.effect, p.id, p.detail);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Schema => {
            print!("{}", mandate_policy::SCHEMA_TEXT);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads a bundle, or prints every problem with its file:line:column.
pub fn load_or_report(dir: &std::path::Path) -> Option<mandate_policy::Bundle> {
    match mandate_policy::Bundle::load_dir(dir) {
        Ok(b) => Some(b),
        Err(e) => {
            for d in &e.diagnostics {
                println!("{}: {d}", style::red("error"));
            }
            None
        }
    }
}

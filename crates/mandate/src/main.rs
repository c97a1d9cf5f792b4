//! `mandate`: the runtime authorization control plane for AI agents, in one binary.

// The binary reads API replies as `serde_json::Value`, whose `v["key"]` indexing yields
// `Null` for anything missing instead of panicking; slicing is still avoided by hand.
#![allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing by key cannot panic"
)]

mod changes;
mod client;
mod cmd;
mod demo;
mod evidence;
mod humans;
mod replay;
mod secret;
mod style;
mod tools;
mod trace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// Mandate: every agent action authorised at the moment it happens, under a task with a
/// declared intent, a scope, a short life and an owner, and written to a tamper-evident
/// audit trail.
#[derive(Debug, Parser)]
#[command(name = "mandate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: identity, tasks, decisions and audit over HTTP.
    ///
    /// All state lives in an embedded database in --data-dir; nothing to install. On first
    /// start an admin token is generated and printed once (or set MANDATE_ADMIN_TOKEN).
    /// A policy directory with any invalid policy refuses to start.
    Serve(Box<ServeArgs>),
    /// Register, inspect, attest, quarantine and offboard agents.
    #[command(subcommand)]
    Agent(cmd::AgentCmd),
    /// Start, inspect, complete and revoke tasks (mandates).
    #[command(subcommand)]
    Task(cmd::TaskCmd),
    /// Ask for a decision on one tool call with a task token.
    ///
    /// Exit status: 0 allow, 2 deny, 3 approval required, 1 error.
    Decide(cmd::DecideArgs),
    /// Verify the audit chain, or print a task's timeline.
    #[command(subcommand)]
    Audit(cmd::AuditCmd),
    /// Validate a policy directory against Mandate's schema.
    #[command(subcommand)]
    Policy(cmd::PolicyCmd),
    /// The approval queue: list, show, approve and deny requests for exact actions.
    #[command(subcommand)]
    Approvals(humans::ApprovalsCmd),
    /// Human approvers, their roles and groups, and group webhooks (admin).
    #[command(subcommand)]
    Approvers(humans::ApproversCmd),
    /// Emergency grants outside policy: declare, list, and close their after-review.
    #[command(subcommand, name = "break-glass")]
    BreakGlass(humans::BreakGlassCmd),
    /// Oversight reports: approvals and who gave them, granted versus used per agent.
    #[command(subcommand)]
    Report(humans::ReportCmd),
    /// Upstream credentials for the gateway: put, list, rotate the master key, delete.
    /// Values are sealed by the server and never shown again.
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// MCP tools: definitions held after a change (rug-pull defence), and approving them.
    #[command(subcommand)]
    Tools(tools::ToolsCmd),
    /// Watch the whole idea work in a few seconds: an in-process server, an agent, a task,
    /// an allowed read, a write held until `mandate approvals approve` lets it through
    /// (once), a denied delete, a forged token, the task's end, and a verified audit
    /// chain. Exits 0 only if every step behaves.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8181", env = "MANDATE_LISTEN")]
    listen: SocketAddr,
    /// Directory for the embedded database (created if missing).
    #[arg(long, default_value = "./mandate-data", env = "MANDATE_DATA_DIR")]
    data_dir: PathBuf,
    /// Directory of *.cedar policy files.
    #[arg(long, default_value = "./policies", env = "MANDATE_POLICIES")]
    policies: PathBuf,
    /// SPIFFE trust domain of agent identities.
    #[arg(long, default_value = "mandate.local", env = "MANDATE_TRUST_DOMAIN")]
    trust_domain: String,
    /// Environment label that policies see as `context.task.environment`.
    #[arg(long, default_value = "development", env = "MANDATE_ENVIRONMENT")]
    environment: String,
    /// Shadow mode: a candidate policy directory evaluated beside the enforcing one;
    /// every disagreement is audited as `policy.shadow_disagreement`, none is enforced.
    #[arg(long, env = "MANDATE_SHADOW_POLICIES")]
    shadow_policies: Option<PathBuf>,
    /// Do not watch the policy directory for changes (reload only through the API).
    #[arg(long)]
    no_watch: bool,
    /// Issuer URL in tokens (default http://<listen address>, https:// with --tls-cert).
    #[arg(long, env = "MANDATE_ISSUER")]
    issuer: Option<String>,
    /// Also serve Envoy ext_authz v3 over gRPC on this address (e.g. 127.0.0.1:9191).
    #[arg(long, env = "MANDATE_EXT_AUTHZ_LISTEN")]
    ext_authz_listen: Option<SocketAddr>,
    /// Gateway configuration (TOML: upstreams, routes, credentials, limits); agents then
    /// reach those upstreams only through /gw/<upstream>/...
    #[arg(long, env = "MANDATE_GATEWAY_CONFIG")]
    gateway_config: Option<PathBuf>,
    /// Master key ring sealing upstream secrets: one base64 32-byte key per line, the
    /// first seals. Without it, MANDATE_MASTER_KEY (keys separated by commas), else a key
    /// generated in the data directory.
    #[arg(long, env = "MANDATE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// The audit log key (C2SP signed-note `PRIVATE+KEY+…`), created owner-only on first
    /// start (default: audit-log.key in the data directory). Keep it off the database's disk
    /// where you can: whoever holds it can sign checkpoints.
    #[arg(long, env = "MANDATE_LOG_KEY")]
    log_key: Option<PathBuf>,
    /// The log's name in its checkpoints (default: <trust domain>/audit).
    #[arg(long, env = "MANDATE_LOG_ORIGIN")]
    log_origin: Option<String>,
    /// Sign an audit checkpoint at least every this many records...
    #[arg(long, default_value_t = 1000, env = "MANDATE_CHECKPOINT_EVERY",
          value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// ...and at least this often (seconds) while records arrive.
    #[arg(long, default_value_t = 10, env = "MANDATE_CHECKPOINT_SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_secs: u64,
    /// A directory outside the data directory that receives every checkpoint and the
    /// records' hashes; the log is checked against it at each start.
    #[arg(long, env = "MANDATE_WITNESS_DIR")]
    witness_dir: Option<PathBuf>,
    /// A URL every signed checkpoint is POSTed to (text/plain), best effort.
    #[arg(long, env = "MANDATE_WITNESS_URL")]
    witness_url: Option<String>,
    /// Decisions one agent may ask for per second, across its tasks (bursts up to twice
    /// that); over it, 429 `rate_limited` with `retry_after_ms`.
    #[arg(long, default_value_t = 500, env = "MANDATE_AGENT_DECISIONS_PER_SEC",
          value_parser = clap::value_parser!(u32).range(1..))]
    agent_decisions_per_sec: u32,
    /// Agents of this risk tier (0-3) or above must bind their task tokens to a key with a
    /// DPoP proof (RFC 9449); without one a task start, token request or delegation is
    /// refused (`dpop_required`). Default: binding is the agent's choice.
    #[arg(long, env = "MANDATE_REQUIRE_DPOP_FROM_TIER",
          value_parser = clap::value_parser!(u8).range(0..=3))]
    require_dpop_from_tier: Option<u8>,
    /// Decisions one task may ask for per second (bursts up to twice that).
    #[arg(long, default_value_t = 250, env = "MANDATE_TASK_DECISIONS_PER_SEC",
          value_parser = clap::value_parser!(u32).range(1..))]
    task_decisions_per_sec: u32,
    /// Most HTTP connections served at once (lowered to fit the open-file limit); past it
    /// a new connection gets 503 `too_many_connections` and is closed.
    #[arg(long, default_value_t = 1024, env = "MANDATE_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Seconds a connection has to send a whole request head (silent and slowloris
    /// connections are closed after it).
    #[arg(long, default_value_t = 10, env = "MANDATE_HEADER_READ_TIMEOUT_SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_secs: u64,
    /// Seconds a kept-alive connection may sit with no request before it is closed.
    #[arg(long, default_value_t = 60, env = "MANDATE_IDLE_TIMEOUT_SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// Seconds a request body may take to arrive (API and MCP; the gateway has its own).
    #[arg(long, default_value_t = 10, env = "MANDATE_BODY_READ_TIMEOUT_SECS",
          value_parser = clap::value_parser!(u64).range(1..30))]
    body_read_timeout_secs: u64,
    /// Export a span for every decision, refusal and gateway call to this OpenTelemetry
    /// collector (OTLP/HTTP protobuf; spans go to <URL>/v1/traces). Spans join the agent's
    /// trace when it sends a W3C `traceparent`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    #[arg(long, default_value = "mandate", env = "OTEL_SERVICE_NAME")]
    otlp_service_name: String,
    /// Containment configuration (TOML: `[[rule]]` signals and responses, an
    /// `[alert_webhook]`, `[[ssf_receiver]]`s). Without it, a call of a honeytoken tool
    /// quarantines its agent and nothing else reacts.
    #[arg(long, env = "MANDATE_CONTAINMENT")]
    containment: Option<PathBuf>,
    /// Workload identity configuration (TOML: `[[oidc]]` issuers and `[[spiffe]]` trust
    /// domains whose tokens attest agents through their attestation rules). Without it,
    /// agents attest with join tokens only.
    #[arg(long, env = "MANDATE_IDENTITY")]
    identity: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (leaf first). Needs --tls-key. The files
    /// are read again every 5 s and a change is served to new connections (a change that
    /// does not load is logged and the previous certificate keeps serving).
    #[arg(long, value_name = "FILE", env = "MANDATE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "FILE", env = "MANDATE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Ask clients for X.509-SVIDs (mutual TLS) that chain to these PEM CA certificates (a
    /// SPIFFE trust bundle). A presented certificate that does not chain or is not an
    /// X.509-SVID fails the handshake. Needs --tls-cert.
    #[arg(long, value_name = "FILE", env = "MANDATE_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Whether every connection must present an X.509-SVID (`required`), or agents that use
    /// tokens may connect without one (`optional`, the default). Needs --tls-client-ca.
    #[arg(long, value_enum, env = "MANDATE_TLS_CLIENT_AUTH")]
    tls_client_auth: Option<TlsClientAuth>,
}

/// `--tls-client-auth`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TlsClientAuth {
    Optional,
    Required,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Keep the demo's data directory here instead of a temporary one.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MANDATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(a) => {
                init_tracing("info");
                serve(*a).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Demo(a) => {
                init_tracing("warn");
                demo::run(a.data_dir).await
            }
            Command::Agent(c) => cmd::agent(c).await.map(|()| ExitCode::SUCCESS),
            Command::Task(c) => cmd::task(c).await.map(|()| ExitCode::SUCCESS),
            Command::Decide(a) => cmd::decide(a).await,
            Command::Audit(c) => cmd::audit(c).await,
            Command::Policy(c) => cmd::policy(c).await,
            Command::Approvals(c) => humans::approvals(c).await,
            Command::Approvers(c) => humans::approvers(c).await,
            Command::BreakGlass(c) => humans::break_glass(c).await,
            Command::Report(c) => humans::report(c).await,
            Command::Secret(c) => secret::secret(c).await,
            Command::Tools(c) => tools::tools(c).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut config = mandate_server::ServerConfig::new(a.data_dir, a.policies);
    config.listen = a.listen;
    config.trust_domain = mandate_core::TrustDomain::parse(&a.trust_domain)?;
    config.environment = a.environment;
    config.issuer = a.issuer;
    config.shadow_policies = a.shadow_policies;
    config.watch_policies = !a.no_watch;
    config.log = mandate_server::checkpoints::LogSettings {
        key_file: a.log_key,
        origin: a.log_origin,
        every_events: a.checkpoint_every,
        every_secs: a.checkpoint_secs,
        witness_dir: a.witness_dir,
        witness_url: a.witness_url,
    };
    config.ext_authz_listen = a.ext_authz_listen;
    if let Some(endpoint) = a.otlp_endpoint.filter(|e| !e.is_empty()) {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            anyhow::bail!("--otlp-endpoint must be an http:// or https:// URL, not {endpoint:?}");
        }
        config.otlp = Some(mandate_server::otlp::OtlpSettings {
            endpoint,
            service_name: a.otlp_service_name,
            resource: vec![
                ("mandate.trust_domain".to_owned(), a.trust_domain.clone()),
                (
                    "deployment.environment.name".to_owned(),
                    config.environment.clone(),
                ),
            ],
        });
    }
    config.limits.agent_decisions_per_sec = a.agent_decisions_per_sec;
    config.limits.dpop_required_from_tier = a.require_dpop_from_tier;
    config.limits.task_decisions_per_sec = a.task_decisions_per_sec;
    config.limits.max_connections = usize::try_from(a.max_connections).unwrap_or(usize::MAX);
    config.limits.header_read_timeout_secs = a.header_read_timeout_secs;
    config.limits.idle_timeout_secs = a.idle_timeout_secs;
    config.limits.body_read_timeout_secs = a.body_read_timeout_secs;
    config.admin_token = std::env::var("MANDATE_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    config.master_key = match (a.master_key_file, std::env::var("MANDATE_MASTER_KEY").ok()) {
        (Some(f), _) => mandate_server::secrets::MasterKeySource::File(f),
        (None, Some(k)) if !k.is_empty() => mandate_server::secrets::MasterKeySource::Text(
            std::sync::Arc::new(zeroize::Zeroizing::new(k)),
        ),
        _ => mandate_server::secrets::MasterKeySource::DataDir,
    };
    if let Some(path) = a.gateway_config {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the gateway config {}", path.display()))?;
        let gc = mandate_gateway::GatewayConfig::from_toml(&text)
            .with_context(|| format!("in {}", path.display()))?;
        config.gateway = Some(std::sync::Arc::new(gc));
    }
    if let Some(path) = a.containment {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the containment config {}", path.display()))?;
        let c = mandate_server::containment::ContainmentConfig::from_toml(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("in {}", path.display()))?;
        config.containment = Some(std::sync::Arc::new(c));
    }
    if let Some(path) = a.identity {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the identity config {}", path.display()))?;
        let c = mandate_server::workload::IdentityConfig::from_toml(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("in {}", path.display()))?;
        config.identity = Some(std::sync::Arc::new(c));
    }
    config.tls = tls_settings(a.tls_cert, a.tls_key, a.tls_client_ca, a.tls_client_auth)?;
    config.vault_token = std::env::var("VAULT_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| mandate_gateway::SecretValue::new(t.into_bytes()));
    let running = mandate_server::Server::start(config)
        .await
        .map_err(anyhow::Error::msg)?;
    if let Some(token) = &running.generated_admin_token {
        eprintln!(
            "\nAdmin token (shown once; stored only as a hash):\n\n    {token}\n\nexport MANDATE_ADMIN_TOKEN={token}\n"
        );
    }
    eprintln!(
        "mandate listening on {} (issuer {})",
        running.url(),
        running.issuer
    );
    if let Some(a) = running.ext_authz_addr {
        eprintln!("ext_authz gRPC listening on {a}");
    }
    running.run_until_signal().await.map_err(anyhow::Error::msg)
}

/// The listener's TLS from the `--tls-*` flags; files are read (and refused with a message
/// naming them) when the server starts.
fn tls_settings(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_auth: Option<TlsClientAuth>,
) -> anyhow::Result<Option<mandate_server::config::TlsSettings>> {
    use mandate_server::config::{ClientAuth, ClientCertificates, TlsSettings};
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            anyhow::bail!("--tls-cert needs --tls-key (the certificate's private key)")
        }
        (None, Some(_)) => {
            anyhow::bail!("--tls-key needs --tls-cert (the certificate chain it belongs to)")
        }
        (None, None) if client_ca.is_some() => anyhow::bail!(
            "--tls-client-ca needs --tls-cert and --tls-key: client certificates are asked for over TLS only"
        ),
        (None, None) if client_auth.is_some() => {
            anyhow::bail!("--tls-client-auth needs --tls-cert, --tls-key and --tls-client-ca")
        }
        (None, None) => return Ok(None),
    };
    let mut settings = TlsSettings::new(cert, key);
    settings.client = match (client_ca, client_auth) {
        (Some(ca_bundle), auth) => Some(ClientCertificates {
            ca_bundle,
            auth: match auth {
                Some(TlsClientAuth::Required) => ClientAuth::Required,
                Some(TlsClientAuth::Optional) | None => ClientAuth::Optional,
            },
        }),
        (None, Some(_)) => anyhow::bail!(
            "--tls-client-auth needs --tls-client-ca (the CA certificates client X.509-SVIDs chain to)"
        ),
        (None, None) => None,
    };
    Ok(Some(settings))
}

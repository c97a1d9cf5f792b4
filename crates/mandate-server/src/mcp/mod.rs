//! The MCP gateway: Mandate is an MCP server to the agent (`/mcp/<server>`, streamable
//! HTTP, rmcp) and an MCP client to the real servers (remote over streamable HTTP, or a
//! local process over stdio started with a clean environment). Listings are filtered to the
//! task's grant and to pinned definitions; every `tools/call`, `resources/read` and
//! `prompts/get` is decided on the shared decide path with its arguments before it is
//! forwarded. The agent's token never reaches a server.

pub(crate) mod proxy;
mod relay;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mandate_gateway::CredentialKind;
use mandate_gateway::mcp::{McpServer, McpTransport};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::error::ApiError;
use mandate_engine::engine::Engine;

type Upstream = RunningService<RoleClient, relay::Relay>;

/// One (server, task, agent session)'s place for its upstream session.
struct SessionSlot {
    agent: String,
    session: tokio::sync::Mutex<Option<Arc<Upstream>>>,
    /// The connected session, to cut it without waiting on a connect in progress.
    cut: std::sync::Mutex<Option<Arc<Upstream>>>,
}

/// Key of an upstream session: server, task, agent session.
type SlotKey = (String, String, String);

/// What is known of one server's health: starts, restarts, and failures in a row (each
/// failure doubles the wait before the next start, up to [`MAX_BACKOFF`]).
#[derive(Debug, Default, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ServerHealth {
    /// Sessions started with it.
    pub started: u64,
    /// Sessions started again after the previous one closed (a stdio server that exited,
    /// a remote server that dropped the session).
    pub restarted: u64,
    /// Failed starts since the last good one.
    pub failures_in_row: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// No start is tried before this (while backing off).
    #[serde(skip)]
    #[schema(ignore)]
    next_try: Option<std::time::Instant>,
}

/// Longest wait between failed starts of a server.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why no upstream session could be had.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// The server could not be reached or started.
    Unavailable(String),
    /// The session caps are reached: refused before anything is started.
    Exhausted(String),
}

impl From<String> for UpstreamError {
    fn from(e: String) -> Self {
        Self::Unavailable(e)
    }
}

impl From<&str> for UpstreamError {
    fn from(e: &str) -> Self {
        Self::Unavailable(e.to_owned())
    }
}

/// How long a server's tool listing is reused by calls before it is asked again (a
/// listing by the agent always asks, and any change it shows is held until approved).
pub const LISTING_TTL: Duration = Duration::from_secs(2);

/// The MCP side of the gateway.
pub struct McpGateway {
    engine: Arc<Engine>,
    servers: BTreeMap<String, McpServer>,
    /// Client sessions with the servers, one per (server, task, agent session): a
    /// stateful server's session never carries one task's state into another's, what it
    /// sends back reaches the one agent session it serves, and it ends with its task or
    /// that session.
    /// The map is held only to find or reserve a slot; connecting waits on the slot alone,
    /// so one slow server does not hold up sessions with the others.
    upstreams: std::sync::Mutex<HashMap<SlotKey, Arc<SessionSlot>>>,
    health: std::sync::Mutex<HashMap<String, ServerHealth>>,
    /// Each server's own description, as the agent is told it.
    infos: std::sync::Mutex<HashMap<String, rmcp::model::ServerConfig>>,
    /// Most upstream sessions open at once, and per agent (each stdio one is a process).
    max_sessions: usize,
    max_sessions_per_agent: usize,
    http: HashMap<String, reqwest::Client>,
    listings: std::sync::Mutex<HashMap<String, (std::time::Instant, Vec<rmcp::model::Tool>)>>,
}

impl std::fmt::Debug for McpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpGateway")
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl McpGateway {
    /// The MCP servers of the gateway configuration.
    pub fn new(
        engine: Arc<Engine>,
        servers: BTreeMap<String, McpServer>,
        limits: &mandate_gateway::GatewayLimits,
    ) -> Result<Self, String> {
        let mut http = HashMap::new();
        for (name, s) in &servers {
            if let McpTransport::Remote(url) = &s.transport {
                crate::edge::check_literal(url, s.allow_private)
                    .map_err(|e| format!("mcp_server {name}: {e}"))?;
                http.insert(
                    name.clone(),
                    crate::edge::client(
                        s.allow_private,
                        Duration::from_secs(5),
                        Duration::from_secs(300),
                    )?,
                );
            }
        }
        Ok(Self {
            engine,
            servers,
            upstreams: std::sync::Mutex::new(HashMap::new()),
            health: std::sync::Mutex::new(HashMap::new()),
            infos: std::sync::Mutex::new(HashMap::new()),
            max_sessions: limits.max_mcp_sessions,
            max_sessions_per_agent: limits.max_mcp_sessions_per_agent,
            http,
            listings: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The agent session's live client session with `server` for `task`, connecting (or
    /// restarting) as needed; it is closed when the task or the agent session ends,
    /// cutting whatever is in flight on it.
    async fn upstream(
        self: &Arc<Self>,
        server: &McpServer,
        task: &Arc<mandate_engine::engine::LiveTask>,
        session: &str,
        relay: impl FnOnce() -> relay::Relay,
    ) -> Result<Arc<Upstream>, UpstreamError> {
        if task.is_ended() {
            return Err("the task has ended".into());
        }
        let key = (server.name.clone(), task.id.clone(), session.to_owned());
        let slot = self.slot(&key, task)?;
        let mut current = slot.session.lock().await;
        let restart = match current.as_ref() {
            // rmcp does not cancel a session whose transport ended (a stdio server that
            // exited): the peer says so.
            Some(u) if !u.is_closed() && !u.peer().is_transport_closed() => {
                return Ok(Arc::clone(u));
            }
            Some(_) => true,
            None => false,
        };
        match self.start(server, relay(), restart, task).await {
            Ok(running) => {
                if task.is_ended() {
                    // Its watcher may have come and gone while this connected.
                    running.cancellation_token().cancel();
                    return Err("the task has ended".into());
                }
                if let Some(theirs) = running.peer_info() {
                    mandate_engine::engine::lock(&self.infos)
                        .insert(server.name.clone(), proxy::mirrored(&theirs));
                }
                let running = Arc::new(running);
                *current = Some(Arc::clone(&running));
                *mandate_engine::engine::lock(&slot.cut) = Some(Arc::clone(&running));
                Ok(running)
            }
            Err(e) => {
                drop(current);
                // A slot that never held a session does not count against the caps.
                let mut map = mandate_engine::engine::lock(&self.upstreams);
                if map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    map.remove(&key);
                }
                Err(e)
            }
        }
    }

    /// Starts a session with `server`, unless it is backing off after failures; records
    /// the start (and a restart, audited) or the failure in its health.
    async fn start(
        &self,
        server: &McpServer,
        relay: relay::Relay,
        restart: bool,
        task: &mandate_engine::engine::LiveTask,
    ) -> Result<Upstream, UpstreamError> {
        {
            let health = mandate_engine::engine::lock(&self.health);
            if let Some(h) = health.get(&server.name)
                && let Some(at) = h.next_try
                && at > std::time::Instant::now()
            {
                return Err(UpstreamError::Unavailable(format!(
                    "mcp server {} is backing off after {} failed starts ({})",
                    server.name,
                    h.failures_in_row,
                    h.last_error.as_deref().unwrap_or("unknown")
                )));
            }
        }
        let result = self.connect(server, relay).await;
        let (failures, error) = {
            let mut health = mandate_engine::engine::lock(&self.health);
            let h = health.entry(server.name.clone()).or_default();
            match &result {
                Ok(_) => {
                    h.started += 1;
                    h.restarted += u64::from(restart);
                    h.failures_in_row = 0;
                    h.next_try = None;
                    (0, None)
                }
                Err(e) => {
                    h.failures_in_row = h.failures_in_row.saturating_add(1);
                    let why = match e {
                        UpstreamError::Unavailable(w) | UpstreamError::Exhausted(w) => w.clone(),
                    };
                    h.last_error = Some(why.clone());
                    let wait = Duration::from_millis(100)
                        .saturating_mul(1 << h.failures_in_row.min(16))
                        .min(MAX_BACKOFF);
                    h.next_try = Some(std::time::Instant::now() + wait);
                    (h.failures_in_row, Some(why))
                }
            }
        };
        if restart || error.is_some() {
            let ev = mandate_audit::NewEvent {
                ts_ms: self.engine.clock.now_ms(),
                agent: Some(task.agent.to_string()),
                task_id: Some(task.id.clone()),
                body: mandate_audit::Body::McpServerStarted(mandate_audit::McpServerStarted {
                    server: server.name.clone(),
                    transport: match server.transport {
                        McpTransport::Remote(_) => "streamable_http".to_owned(),
                        McpTransport::Stdio { .. } => "stdio".to_owned(),
                    },
                    restart,
                    failures_in_row: failures,
                    error,
                }),
            };
            self.engine.audit.append_deferred(ev);
        }
        result
    }

    /// Each server's health, by name.
    pub fn health(&self) -> BTreeMap<String, ServerHealth> {
        let health = mandate_engine::engine::lock(&self.health);
        self.servers
            .keys()
            .map(|n| (n.clone(), health.get(n).cloned().unwrap_or_default()))
            .collect()
    }

    /// The upstream sessions of an agent session.
    fn session_upstreams(&self, session: &str) -> Vec<Arc<Upstream>> {
        let map = mandate_engine::engine::lock(&self.upstreams);
        map.iter()
            .filter(|(k, _)| k.2 == session)
            .filter_map(|(_, s)| mandate_engine::engine::lock(&s.cut).clone())
            .collect()
    }

    /// Closes every upstream session of an agent session that ended.
    fn close_session(&self, session: &str) {
        let slots: Vec<Arc<SessionSlot>> = {
            let mut map = mandate_engine::engine::lock(&self.upstreams);
            let keys: Vec<SlotKey> = map.keys().filter(|k| k.2 == session).cloned().collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for s in slots {
            if let Some(u) = mandate_engine::engine::lock(&s.cut).take() {
                u.cancellation_token().cancel();
            }
        }
    }

    /// The slot of `key`, reserved within the caps; it and its session go when the task
    /// ends.
    fn slot(
        self: &Arc<Self>,
        key: &SlotKey,
        task: &Arc<mandate_engine::engine::LiveTask>,
    ) -> Result<Arc<SessionSlot>, UpstreamError> {
        let mut map = mandate_engine::engine::lock(&self.upstreams);
        if let Some(s) = map.get(key) {
            return Ok(Arc::clone(s));
        }
        let agent = task.agent.to_string();
        if map.len() >= self.max_sessions {
            return Err(UpstreamError::Exhausted(format!(
                "the gateway holds its cap of {} MCP server sessions; end a task and retry",
                self.max_sessions
            )));
        }
        if map.values().filter(|s| s.agent == agent).count() >= self.max_sessions_per_agent {
            return Err(UpstreamError::Exhausted(format!(
                "agent {agent} holds its cap of {} MCP server sessions; end a task and retry",
                self.max_sessions_per_agent
            )));
        }
        let slot = Arc::new(SessionSlot {
            agent,
            session: tokio::sync::Mutex::new(None),
            cut: std::sync::Mutex::new(None),
        });
        map.insert(key.clone(), Arc::clone(&slot));
        let (this, task, key) = (Arc::clone(self), Arc::clone(task), key.clone());
        let watched = Arc::clone(&slot);
        #[expect(
            clippy::disallowed_methods,
            reason = "one watcher per upstream session, bounded by the session caps; it ends with its task"
        )]
        tokio::spawn(async move {
            task.until_ended().await;
            {
                let mut map = mandate_engine::engine::lock(&this.upstreams);
                if map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &watched)) {
                    map.remove(&key);
                }
            }
            // Cuts whatever is in flight on it, and closes it (a stdio server exits).
            if let Some(u) = mandate_engine::engine::lock(&watched.cut).take() {
                u.cancellation_token().cancel();
            }
            if let Some(u) = watched.session.lock().await.take() {
                u.cancellation_token().cancel();
            }
        });
        Ok(slot)
    }

    /// A new client session with `server`, relaying what it sends back through `relay`.
    async fn connect(
        &self,
        server: &McpServer,
        relay: relay::Relay,
    ) -> Result<Upstream, UpstreamError> {
        use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
        // The lifecycle of the agent's revision: `initialize` up to 2025-11-25, discovery
        // and per-request metadata from 2026-07-28 (falling back to `initialize` for a
        // server that predates it).
        let lifecycle = match relay.0.version() {
            Some(v) if !v.has_initialize() => ClientLifecycleMode::Auto {
                preferred_versions: vec![v],
                legacy_version: Some(rmcp::model::ProtocolVersion::LATEST_WITH_INITIALIZE),
            },
            _ => ClientLifecycleMode::Initialize,
        };
        let running = match &server.transport {
            McpTransport::Remote(url) => {
                use rmcp::transport::StreamableHttpClientTransport;
                use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
                let mut cfg = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                if let Some(c) = &server.credential {
                    let v = self.secret(&c.secret).await?;
                    let text = String::from_utf8(v.expose().to_vec())
                        .map_err(|_| "credential is not UTF-8")?;
                    match c.kind {
                        CredentialKind::Bearer => cfg = cfg.auth_header(text),
                        CredentialKind::Header | CredentialKind::Basic => {
                            let (name, value) = match c.kind {
                                CredentialKind::Header => {
                                    (c.header.clone().unwrap_or_default(), text)
                                }
                                _ => {
                                    use base64::Engine as _;
                                    (
                                        "authorization".to_owned(),
                                        format!(
                                            "Basic {}",
                                            base64::engine::general_purpose::STANDARD.encode(text)
                                        ),
                                    )
                                }
                            };
                            let mut headers = HashMap::new();
                            let mut hv = HeaderValue::from_str(&value)
                                .map_err(|_| "credential is not a header value")?;
                            hv.set_sensitive(true);
                            headers.insert(
                                axum::http::HeaderName::from_bytes(name.as_bytes())
                                    .map_err(|_| "bad header name")?,
                                hv,
                            );
                            cfg = cfg.custom_headers(headers);
                        }
                    }
                }
                let client = self.http.get(&server.name).cloned().ok_or("no client")?;
                let transport = relay::Ordered::new(
                    StreamableHttpClientTransport::with_client(client, cfg),
                    &relay,
                );
                relay
                    .serve_with_lifecycle(transport, lifecycle)
                    .await
                    .map_err(|e| format!("cannot reach mcp server {}: {e}", server.name))?
            }
            McpTransport::Stdio { command, env } => {
                let (program, args) = command.split_first().ok_or("empty command")?;
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args)
                    .env_clear()
                    .stderr(std::process::Stdio::null());
                for (var, secret) in env {
                    let v = self.secret(secret).await?;
                    let text = String::from_utf8(v.expose().to_vec())
                        .map_err(|_| "secret is not UTF-8")?;
                    cmd.env(var, text);
                }
                let child = rmcp::transport::TokioChildProcess::new(cmd)
                    .map_err(|e| format!("cannot start mcp server {}: {e}", server.name))?;
                let child = relay::Ordered::new(child, &relay);
                relay
                    .serve_with_lifecycle(child, lifecycle)
                    .await
                    .map_err(|e| format!("mcp server {} did not initialise: {e}", server.name))?
            }
        };
        Ok(running)
    }

    /// What the agent is told of `server` (its own identity and capabilities), once any
    /// session with it has started.
    fn server_info(&self, server: &str) -> Option<rmcp::model::ServerConfig> {
        mandate_engine::engine::lock(&self.infos)
            .get(server)
            .cloned()
    }

    /// A tool as the server last listed it, however long ago.
    fn last_listed(&self, server: &str, name: &str) -> Option<rmcp::model::Tool> {
        mandate_engine::engine::lock(&self.listings)
            .get(server)
            .and_then(|(_, t)| t.iter().find(|t| t.name == name).cloned())
    }

    fn cached_listing(&self, server: &str) -> Option<Vec<rmcp::model::Tool>> {
        mandate_engine::engine::lock(&self.listings)
            .get(server)
            .filter(|(at, _)| at.elapsed() < LISTING_TTL)
            .map(|(_, t)| t.clone())
    }

    /// Makes a server's tool listing stale (it said its tools changed): the next call or
    /// listing asks it again.
    fn forget_listing(&self, server: &str) {
        if let Some((at, _)) = mandate_engine::engine::lock(&self.listings).get_mut(server)
            && let Some(old) = at.checked_sub(LISTING_TTL)
        {
            *at = old;
        }
    }

    fn cache_listing(&self, server: &str, tools: &[rmcp::model::Tool]) {
        mandate_engine::engine::lock(&self.listings).insert(
            server.to_owned(),
            (std::time::Instant::now(), tools.to_vec()),
        );
    }

    /// The secrets Mandate gives `server` (its credential, its environment), to redact
    /// from what it answers.
    async fn secrets_of(&self, server: &McpServer) -> Vec<mandate_gateway::SecretValue> {
        let mut names: Vec<&str> = server
            .credential
            .iter()
            .map(|c| c.secret.as_str())
            .collect();
        if let McpTransport::Stdio { env, .. } = &server.transport {
            names.extend(env.values().map(String::as_str));
        }
        let mut out = Vec::new();
        for n in names {
            if let Ok(v) = self.secret(n).await {
                out.push(v);
            }
        }
        out
    }

    /// Masks any echo of the secrets Mandate gave `server`, in every encoding, in what it
    /// sends towards the agent: the value, its serialised size, and whether anything was
    /// masked. A value that cannot be read back after masking is withheld (an error).
    async fn redact<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        server: &McpServer,
        value: T,
    ) -> Result<(T, usize, bool), rmcp::ErrorData> {
        let bytes = serde_json::to_vec(&value)
            .map_err(|_| rmcp::ErrorData::internal_error("unserialisable answer", None))?;
        let secrets = self.secrets_of(server).await;
        let forms: Vec<&[u8]> = secrets.iter().map(|s| s.expose()).collect();
        let mut r = mandate_gateway::Redactor::new(forms);
        let clean = r.redact_all(&bytes);
        if !r.found() {
            return Ok((value, bytes.len(), false));
        }
        tracing::warn!(server = %server.name, "an MCP server echoed the secret Mandate gave it: redacted");
        let v = serde_json::from_slice(&clean).map_err(|_| {
            rmcp::ErrorData::internal_error("the answer carried a secret and was withheld", None)
        })?;
        Ok((v, bytes.len(), true))
    }

    async fn secret(&self, name: &str) -> Result<mandate_gateway::SecretValue, String> {
        self.engine
            .secrets
            .open_value(name)
            .await?
            .ok_or_else(|| format!("no secret named {name:?}"))
    }

    /// `/mcp/<server>` for every server, and their RFC 9728 protected-resource metadata.
    pub fn router(self: Arc<Self>) -> Router {
        let mut router = Router::new().route(
            "/v1/mcp/servers",
            axum::routing::get(servers_health).with_state(Arc::clone(&self)),
        );
        let limit = self.engine.config.limits.max_body_bytes;
        for name in self.servers.keys() {
            let gw = Arc::clone(&self);
            let server = name.clone();
            // DNS-rebinding guard: the Host an agent uses must be loopback or the issuer's.
            let mut hosts = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            if let Ok(u) = url::Url::parse(&self.engine.issuer)
                && let Some(h) = u.host_str()
            {
                hosts.push(h.to_owned());
                if let Some(p) = u.port() {
                    hosts.push(format!("{h}:{p}"));
                }
            }
            let config = StreamableHttpServerConfig::default().with_allowed_hosts(hosts);
            let service: StreamableHttpService<proxy::ProxyHandler, LocalSessionManager> =
                StreamableHttpService::new(
                    move || Ok(proxy::ProxyHandler::new(Arc::clone(&gw), server.clone())),
                    Default::default(),
                    config,
                );
            let path = format!("/mcp/{name}");
            let guarded = Router::new()
                .nest_service(&path, service)
                .layer(axum::middleware::from_fn(routing_headers))
                // JSON-RPC bodies are checked as strictly as every other JSON Mandate
                // reads, before rmcp (which keeps the last of duplicate keys) parses them.
                .layer(axum::middleware::from_fn_with_state(
                    limit,
                    crate::edge::strict_json_body,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    (Arc::clone(&self), name.clone()),
                    authenticate,
                ));
            router = router.merge(guarded).route(
                &format!("/.well-known/oauth-protected-resource/mcp/{name}"),
                axum::routing::get(resource_metadata).with_state((Arc::clone(&self), name.clone())),
            );
        }
        router
    }
}

type ServerState = State<(Arc<McpGateway>, String)>;

/// Each MCP server's health (admin): sessions started and restarted (a stdio server that
/// exited, a remote one that dropped the session), failed starts in a row (each one
/// doubles the wait before the next try, up to 30 s) and the last failure. 404 when no MCP
/// server is configured.
#[utoipa::path(get, path = "/v1/mcp/servers", tag = "tools", security(("admin_token" = [])),
    responses((status = 200, body = BTreeMap<String, ServerHealth>), (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn servers_health(
    State(gw): State<Arc<McpGateway>>,
    bearer: crate::edge::Bearer,
) -> Result<axum::Json<BTreeMap<String, ServerHealth>>, ApiError> {
    crate::api::require_admin(&gw.engine, &bearer)?;
    Ok(axum::Json(gw.health()))
}

/// RFC 9728 protected-resource metadata: where the bearer token comes from.
async fn resource_metadata(
    State((gw, server)): ServerState,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let issuer = &gw.engine.issuer;
    // The resource as the client named it (clients check it against the URL they used):
    // this server's origin under the host the request came to, if it is one of ours.
    let origin = gw
        .engine
        .origin_for_host(headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    // What a client that names no scope asks for (the MCP SDKs request all of these): the
    // server's known tools, read only. Policy still decides what is granted.
    let tools = gw.engine.mcp_server_tools(&server);
    let scopes: Vec<String> = if tools.is_empty() {
        Vec::new()
    } else {
        tools
            .iter()
            .map(|t| format!("tool:{t}"))
            .chain(std::iter::once("action:read".to_owned()))
            .collect()
    };
    let mut doc = serde_json::json!({
        "resource": format!("{origin}/mcp/{server}"),
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Mandate MCP gateway for {server}"),
        "resource_documentation": format!("{issuer}/openapi.json"),
        "mandate_token_endpoint": format!("{issuer}/v1/tasks"),
    });
    if !scopes.is_empty()
        && let Some(o) = doc.as_object_mut()
    {
        o.insert("scopes_supported".to_owned(), serde_json::json!(scopes));
    }
    axum::Json(doc)
}

/// A request without a verifiable task token gets 401 pointing at the metadata; the
/// task's state is checked per request inside, so a call after the task ended gets an MCP
/// error rather than a transport failure.
async fn authenticate(State((gw, server)): ServerState, req: Request, next: Next) -> Response {
    // DNS rebinding and cross-site requests (MCP transport, "Security Warning"): a
    // browser's Origin must be this server's (rmcp checks the Host, not the Origin).
    let mut origins = req.headers().get_all(header::ORIGIN).iter();
    if let Some(origin) = origins.next() {
        let ok =
            origins.next().is_none() && origin.to_str().is_ok_and(|o| gw.engine.origin_allowed(o));
        if !ok {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "this Origin may not use the MCP gateway: only this server's own origin (or loopback in development) may",
            )
            .into_response();
        }
    }
    let token = crate::edge::bearer_token(req.headers());
    let ok = token
        .as_ref()
        .is_ok_and(|t| gw.engine.verify_task_token(t).is_ok());
    if ok {
        return next.run(req).await;
    }
    let code = match token {
        Err(e) => e.code,
        Ok(_) => "token_invalid",
    };
    let mut res = ApiError::new(
        StatusCode::UNAUTHORIZED,
        code,
        "send `Authorization: Bearer <task token>` (start a task: POST /v1/tasks)",
    )
    .into_response();
    let meta = format!(
        "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp/{server}\", error=\"invalid_token\"",
        gw.engine.issuer
    );
    if let Ok(v) = HeaderValue::from_str(&meta) {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    res
}

/// SEP-2243: `Mcp-Method` and `Mcp-Name` let proxies route on headers without reading the
/// body, so a header that disagrees with the body (or is repeated) is refused whatever
/// revision the client names: 400 `mcp_header_mismatch`, nothing forwarded. A DELETE that
/// ends a session answers 200 (rmcp says 202, which clients log as a failed close).
async fn routing_headers(req: Request, next: Next) -> Response {
    let is_delete = req.method() == axum::http::Method::DELETE;
    let method_h: Vec<_> = req
        .headers()
        .get_all("mcp-method")
        .iter()
        .cloned()
        .collect();
    let name_h: Vec<_> = req.headers().get_all("mcp-name").iter().cloned().collect();
    if method_h.is_empty() && name_h.is_empty() {
        let mut res = next.run(req).await;
        if is_delete && res.status() == StatusCode::ACCEPTED {
            *res.status_mut() = StatusCode::OK;
        }
        return res;
    }
    let (parts, body) = req.into_parts();
    // The body was read and bounded by `strict_json_body` before this layer.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let msg: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    // A JSON-RPC error (-32020, HeaderMismatch), as MCP clients expect, naming Mandate's
    // code in its data.
    let id = msg.get("id").cloned().unwrap_or(serde_json::Value::Null);
    let mismatch = |why: String| {
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": id,
            "error": { "code": -32020, "message": why, "data": { "code": "mcp_header_mismatch" } },
        });
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    };
    if method_h.len() > 1 || name_h.len() > 1 {
        return mismatch("Mcp-Method and Mcp-Name may each be sent once".to_owned());
    }
    let method = msg.get("method").and_then(serde_json::Value::as_str);
    let params = msg.get("params");
    let name = match method {
        Some("tools/call" | "prompts/get") => params.and_then(|p| p.get("name")),
        Some("tasks/get" | "tasks/update" | "tasks/cancel") => params.and_then(|p| p.get("taskId")),
        Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
            params.and_then(|p| p.get("uri"))
        }
        _ => None,
    }
    .and_then(serde_json::Value::as_str);
    if let Some(h) = method_h.first() {
        let h = h.to_str().unwrap_or("\u{fffd}");
        if method != Some(h) {
            return mismatch(format!(
                "Mcp-Method {h:?} does not match the body's method {:?}",
                method.unwrap_or("")
            ));
        }
    }
    if let Some(h) = name_h.first() {
        // A name that is not plain ASCII travels as `=?base64?…?=`.
        let h = h.to_str().ok().map(|v| {
            v.strip_prefix("=?base64?")
                .and_then(|i| i.strip_suffix("?="))
                .and_then(|i| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(i).ok()
                })
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_else(|| v.to_owned())
        });
        let h = h.as_deref().unwrap_or("\u{fffd}");
        if name != Some(h) {
            return mismatch(format!(
                "Mcp-Name {h:?} does not match the body's name {:?}",
                name.unwrap_or("")
            ));
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

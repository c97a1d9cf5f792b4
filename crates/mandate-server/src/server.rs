//! Starting and stopping a server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mandate_store::{SqliteStore, Store};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use mandate_engine::config::ServerConfig;
use mandate_engine::engine::{Engine, Opened};

/// Entry point.
#[derive(Debug)]
pub struct Server;

/// A server accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The issuer URL in its tokens.
    pub issuer: String,
    /// The engine, for in-process callers (the demo, tests, benchmarks).
    pub engine: Arc<Engine>,
    /// Set on first start when no admin token was configured: print once.
    pub generated_admin_token: Option<String>,
    /// The bound address of the Envoy `ext_authz` gRPC service, when configured.
    pub ext_authz_addr: Option<SocketAddr>,
    /// `https` when the listener speaks TLS, else `http`.
    scheme: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    ext_authz: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    handle: JoinHandle<Result<(), String>>,
    sweeper: JoinHandle<()>,
    /// The log followers (containment, Shared Signals): aborted at shutdown.
    followers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the store in the data directory, loads policies and keys, binds, and serves in
    /// the background. Refuses to start on a bad policy bundle.
    pub async fn start(config: ServerConfig) -> Result<RunningServer, String> {
        let store = SqliteStore::open(&config.data_dir)
            .await
            .map_err(|e| e.to_string())?;
        Self::start_with_store(config, Arc::new(store)).await
    }

    /// As [`Server::start`], with a given store.
    pub async fn start_with_store(
        config: ServerConfig,
        store: Arc<dyn Store>,
    ) -> Result<RunningServer, String> {
        // TLS material is checked before the listener binds or the engine opens, so a bad
        // file stops the start with a message naming it.
        let tls = match &config.tls {
            Some(settings) => Some(Arc::new(
                crate::tls::Tls::load(settings.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let grpc_listener = match config.ext_authz_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| format!("cannot listen for ext_authz on {a}: {e}"))?,
            ),
            None => None,
        };
        let issuer = config
            .issuer
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        // What follows the audit log (containment, Shared Signals) taps the writer from its
        // first batch, and takes its place in the log before anything is served.
        let mut config = config;
        let followers = mandate_engine::containment::Followers::attach(&mut config, &store);
        let Opened {
            engine,
            generated_admin_token,
        } = Engine::open(config, issuer.clone(), store).await?;
        let followers = followers.start(&engine).await;
        let mut app = crate::api::router(Arc::clone(&engine));
        if let Some(gc) = engine.config.gateway.clone() {
            if !gc.mcp_servers.is_empty() {
                let mcp = crate::mcp::McpGateway::new(
                    Arc::clone(&engine),
                    gc.mcp_servers.clone(),
                    &gc.limits,
                )?;
                app = app.merge(Arc::new(mcp).router());
            }
            let gw = crate::gateway::Gateway::new(
                Arc::clone(&engine),
                gc,
                engine.config.vault_token.clone(),
            )?;
            app = app.merge(Arc::new(gw).router());
        }
        let rules = crate::listener::BodyRules {
            api: (
                engine.config.limits.max_body_bytes,
                Duration::from_secs(engine.config.limits.body_read_timeout_secs),
            ),
            gateway: engine.config.gateway.as_ref().map(|g| {
                (
                    g.limits.max_request_body_bytes,
                    Duration::from_secs(g.limits.request_body_timeout_secs),
                )
            }),
        };
        let app = app
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&engine),
                crate::edge::sender::sender_constraint,
            ))
            .layer(axum::middleware::from_fn_with_state(
                rules,
                crate::listener::whole_body,
            ));
        let limits = crate::listener::ConnectionLimits::from_limits(&engine.config.limits);
        let (tx, rx) = oneshot::channel::<()>();
        #[expect(
            clippy::disallowed_methods,
            reason = "the listener: owned by the server handle, joined at shutdown"
        )]
        let handle = tokio::spawn(crate::listener::serve(listener, app, limits, tls, rx));
        let sweep_engine = Arc::clone(&engine);
        #[expect(
            clippy::disallowed_methods,
            reason = "the sweeper: owned by the server handle, aborted at shutdown"
        )]
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let watch = sweep_engine.config.watch_policies;
            let mut seen = sweep_engine.bundle().version().to_owned();
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                sweep_engine.sweep().await;
                n = n.wrapping_add(1);
                if watch && n.is_multiple_of(2) {
                    watch_policies(&sweep_engine, &mut seen).await;
                }
            }
        });
        let mut ext_authz_addr = None;
        let mut ext_authz = None;
        if let Some(l) = grpc_listener {
            ext_authz_addr = Some(l.local_addr().map_err(|e| e.to_string())?);
            let service = envoy_types::ext_authz::v3::pb::AuthorizationServer::new(
                crate::ext_authz::ExtAuthz::new(Arc::clone(&engine)),
            )
            .max_decoding_message_size(engine.config.limits.max_body_bytes);
            let (gtx, grx) = oneshot::channel::<()>();
            #[expect(
                clippy::disallowed_methods,
                reason = "the gRPC listener: owned by the server handle, joined at shutdown"
            )]
            let grpc = tokio::spawn(async move {
                let served = tonic::transport::Server::builder()
                    .timeout(Duration::from_secs(
                        mandate_engine::engine::REQUEST_TIMEOUT_SECS.unsigned_abs(),
                    ))
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(l),
                        async move {
                            let _ = grx.await;
                        },
                    )
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "ext_authz service stopped");
                }
            });
            ext_authz = Some((gtx, grpc));
            tracing::info!(addr = ?ext_authz_addr, "ext_authz gRPC serving");
        }
        tracing::info!(%addr, bundle = engine.bundle().version(), "mandate serving");
        Ok(RunningServer {
            addr,
            issuer,
            engine,
            generated_admin_token,
            ext_authz_addr,
            scheme,
            shutdown: Some(tx),
            ext_authz,
            handle,
            sweeper,
            followers,
        })
    }
}

impl RunningServer {
    /// The base URL, e.g. `http://127.0.0.1:8181` (`https://…` when serving TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops accepting, finishes in-flight requests, and returns.
    pub async fn shutdown(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some((tx, handle)) = self.ext_authz.take() {
            let _ = tx.send(());
            let _ = handle.await;
        }
        self.sweeper.abort();
        for f in &self.followers {
            f.abort();
        }
        let served = match self.handle.await {
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        };
        // What the last responses left deferred (results, bytes returned) is committed
        // before the process goes.
        if let Err(e) = self.engine.audit.flush().await {
            tracing::error!(error = %e, "records deferred at shutdown could not be committed");
        }
        served
    }

    /// Serves until the process receives Ctrl-C / SIGTERM.
    pub async fn run_until_signal(self) -> Result<(), String> {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Reloads the policy directory when its content changes. A rejected change is recorded
/// once, not on every poll; the last good bundle keeps enforcing.
async fn watch_policies(engine: &Engine, seen: &mut String) {
    let dir = engine.config.policies.clone();
    #[expect(
        clippy::disallowed_methods,
        reason = "one directory read per poll, awaited here"
    )]
    let version =
        match tokio::task::spawn_blocking(move || mandate_policy::Bundle::version_of_dir(&dir))
            .await
        {
            Ok(Ok(v)) => v,
            // An unreadable directory is reported by the reload it triggers.
            Ok(Err(_)) => "unreadable".to_owned(),
            Err(_) => return,
        };
    if version == *seen {
        return;
    }
    let previous = std::mem::replace(seen, version);
    match engine.reload_policies("file change").await {
        Ok(change) => tracing::info!(
            bundle = change.bundle_version,
            revoked = change.revoked.len(),
            reduced = change.reduced.len(),
            "policy bundle reloaded"
        ),
        Err(e) if e.diagnostics.iter().any(|d| d.file == "<audit>") => {
            // A valid bundle that could not be recorded: try again on the next poll.
            tracing::warn!(error = %e, "policy change not recorded; retrying");
            *seen = previous;
        }
        Err(e) => {
            tracing::warn!(error = %e, "policy change rejected; the previous bundle keeps enforcing")
        }
    }
}

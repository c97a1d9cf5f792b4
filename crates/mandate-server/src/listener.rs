//! The HTTP listener: connections within a cap, bounded time to send a request head or to
//! sit idle between requests, and the body rule every route runs behind.
//!
//! - **Connection cap.** At most `max_connections` connections are served at once (lowered
//!   to what the process's open-file limit can hold). One more is answered
//!   `503 too_many_connections` with `Connection: close` and closed; the connections already
//!   served are not touched, so a flood of new sockets cannot starve established clients.
//! - **Head and idle time.** A new connection must deliver a whole request head within
//!   `header_read_timeout_secs`, and so must a kept-alive one from the first byte of its next
//!   head; a kept-alive connection with nothing in flight is closed after
//!   `idle_timeout_secs`. Silent and slowloris connections therefore end on their own.
//! - **Bodies.** A declared `Content-Length` over the limit is refused with 413 before any
//!   byte of the body is read; a body that arrives is read whole (bounded in size and time)
//!   before a handler runs, so an endpoint that ignores its body still leaves the connection
//!   reusable. Every refusal carries the JSON error body, and one that leaves the body
//!   unread says `Connection: close`.
//! - **TLS.** With [`crate::tls`] configured, the handshake runs inside the new connection's
//!   head time, and a connection past the cap gets its 503 over TLS (or is closed at once when
//!   too many refusals are being written). Every request on a connection whose client
//!   authenticated with an X.509-SVID carries a [`PeerSvid`] extension.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::error::ApiError;
use crate::tls::{Handshake, PeerSvid, Tls};

/// File descriptors kept back from the connection cap for the store, upstreams and logs.
const RESERVED_FDS: u64 = 64;
/// How long connections may take to finish their requests once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Refusals past the cap being written at once; beyond that a new socket is closed at once.
const MAX_REFUSALS_IN_FLIGHT: usize = 32;

/// The connection-level bounds, from [`mandate_core::Limits`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    pub(crate) fn from_limits(l: &mandate_core::Limits) -> Self {
        Self {
            max_connections: l.max_connections,
            header_read_timeout: Duration::from_secs(l.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(l.idle_timeout_secs),
        }
    }

    /// The cap actually enforced: the configured one, or what the open-file limit can hold
    /// (each connection may also hold an upstream socket), whichever is lower.
    fn effective_cap(&self) -> usize {
        let Some(soft) = open_files_soft_limit() else {
            return self.max_connections;
        };
        let fits = usize::try_from(soft.saturating_sub(RESERVED_FDS) / 2)
            .unwrap_or(usize::MAX)
            .max(1);
        if fits < self.max_connections {
            tracing::warn!(
                configured = self.max_connections,
                enforced = fits,
                open_files = soft,
                "the open-file limit holds fewer connections than max_connections; enforcing the lower cap"
            );
        }
        fits.min(self.max_connections)
    }
}

/// The soft `RLIMIT_NOFILE` of this process, where the platform says.
fn open_files_soft_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Serves `app` on `listener` (over TLS when `tls` is given, its files watched for changes)
/// until `shutdown` fires, then lets connections finish their requests for a bounded time.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<Tls>>,
    mut shutdown: oneshot::Receiver<()>,
) -> Result<(), String> {
    let cap = limits.effective_cap();
    let permits = Arc::new(Semaphore::new(cap));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut last_accept_error: Option<Instant> = None;
    let over_cap: Arc<[u8]> = over_cap_answer(cap).into();
    // The TLS files are watched on this task: the watch never ends, and stops with the loop.
    let watch = async {
        match &tls {
            Some(t) => t.watch().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(watch);
    let mut watching = true;
    tracing::debug!(cap, "accepting connections");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            () = &mut watch, if watching => watching = false,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let conn = Connection::new(tcp, app.clone(), limits, stop_rx.clone(), tls.clone());
                        conns.spawn(async move {
                            conn.run().await;
                            drop(permit);
                        });
                    }
                    Err(_) => match Arc::clone(&refusals).try_acquire_owned() {
                        Ok(slot) => {
                            let answer = Arc::clone(&over_cap);
                            let tls = tls.clone();
                            #[expect(clippy::disallowed_methods, reason = "refusals past the cap are bounded by the refusal semaphore held by the task")]
                            tokio::spawn(async move {
                                match tls {
                                    None => answer_and_close(tcp, &answer).await,
                                    Some(tls) => refuse_over_cap_tls(&tls, tcp, &answer).await,
                                }
                                drop(slot);
                            });
                        }
                        // Too many refusals at once: answer what fits without waiting (over
                        // TLS that would take a handshake, so the socket is just closed).
                        Err(_) => {
                            if tls.is_none() {
                                let _ = tcp.try_write(&over_cap);
                            }
                        }
                    },
                },
                Err(e) => {
                    // Out of file descriptors (or a connection reset before accept): back off
                    // instead of spinning, and say so at most once a second.
                    if last_accept_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        last_accept_error = Some(Instant::now());
                    }
                    #[expect(clippy::disallowed_methods, reason = "backing off after accept errors (EMFILE) instead of spinning")]
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "connections still open after the shutdown grace; closing them"
        );
        conns.abort_all();
    }
    Ok(())
}

/// The answer to a connection past the cap.
fn over_cap_answer(cap: usize) -> Vec<u8> {
    closing_answer(
        "503 Service Unavailable",
        "retry-after: 1\r\n",
        "too_many_connections",
        &format!("the server is at its cap of {cap} open connections; retry shortly"),
    )
}

/// A whole HTTP/1.1 answer with the JSON error body, after which the connection closes.
fn closing_answer(status: &str, headers: &str, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `answer` (a refusal), then closes. What the client already sent is drained for a
/// moment after the answer, so that closing does not reset the connection before the
/// client has read why.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, answer: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(answer)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_millis(250), async {
        let mut sink = [0_u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut io, &mut sink)
            .await
            .is_ok_and(|n| n > 0)
        {}
    })
    .await;
}

/// How long a connection past the cap may take to finish its TLS handshake before it is
/// closed without an answer.
const REFUSAL_HANDSHAKE: Duration = Duration::from_secs(1);

/// Answers a connection past the cap on the TLS listener: its 503 over TLS once the
/// handshake is done (plain HTTP gets it in plain text).
async fn refuse_over_cap_tls(tls: &Tls, tcp: TcpStream, answer: &[u8]) {
    match tokio::time::timeout(REFUSAL_HANDSHAKE, tls.accept(tcp)).await {
        Ok(Handshake::Tls(stream, _)) => answer_and_close(*stream, answer).await,
        Ok(Handshake::PlainHttp(tcp)) => answer_and_close(tcp, answer).await,
        Ok(Handshake::Failed) | Err(_) => {}
    }
}

/// The answer to plain HTTP sent to the TLS port.
fn tls_required_answer() -> Vec<u8> {
    closing_answer(
        "400 Bad Request",
        "",
        "tls_required",
        "this port speaks HTTPS only; use an https:// URL",
    )
}

/// One served connection and what its watchdog needs to know.
struct Connection {
    tcp: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
    state: Arc<ConnState>,
    tls: Option<Arc<Tls>>,
}

/// Shared between the socket, the service and the watchdog of one connection.
struct ConnState {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Whether a request head has ever been completed on this connection.
    served: AtomicBool,
    /// Milliseconds since `opened` when the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Milliseconds since `opened` of the first byte read while idle, or `NONE`.
    head_since_ms: AtomicU64,
    changed: Notify,
}

const NONE: u64 = u64::MAX;

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    /// When the connection must be closed if nothing changes, or `None` while a request is
    /// being served.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |ms: u64, d: Duration| self.opened + Duration::from_millis(ms) + d;
        let head = self.head_since_ms.load(Ordering::Acquire);
        Some(if !self.served.load(Ordering::Acquire) {
            at(0, limits.header_read_timeout)
        } else if head != NONE {
            at(head, limits.header_read_timeout)
        } else {
            at(
                self.idle_since_ms.load(Ordering::Acquire),
                limits.idle_timeout,
            )
        })
    }

    fn request_began(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::Release);
        self.head_since_ms.store(NONE, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) == NONE
        {
            self.head_since_ms.store(self.now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
    }
}

/// Held until a response has been sent whole (its body dropped).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since_ms.store(s.now_ms(), Ordering::Release);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
        s.changed.notify_one();
    }
}

impl Connection {
    fn new(
        tcp: TcpStream,
        app: Router,
        limits: ConnectionLimits,
        stop: watch::Receiver<bool>,
        tls: Option<Arc<Tls>>,
    ) -> Self {
        Self {
            tcp,
            app,
            limits,
            stop,
            tls,
            state: Arc::new(ConnState {
                opened: Instant::now(),
                in_flight: AtomicUsize::new(0),
                served: AtomicBool::new(false),
                idle_since_ms: AtomicU64::new(0),
                head_since_ms: AtomicU64::new(NONE),
                changed: Notify::new(),
            }),
        }
    }

    async fn run(self) {
        let Self {
            tcp,
            app,
            limits,
            mut stop,
            state,
            tls,
        } = self;
        // Answers go out in more than one write (headers, then body or SSE events): without
        // TCP_NODELAY a keep-alive client can wait ~40 ms on Nagle and delayed ACKs.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let Some(tls) = tls else {
            return serve_http(tcp, None, app, limits, stop, state).await;
        };
        // The handshake spends the new connection's head time: a client that opens TCP and
        // never handshakes is closed when a silent plain-HTTP one would be.
        let handshake_until = state.opened + limits.header_read_timeout;
        let handshake = tokio::select! {
            h = tokio::time::timeout_at(handshake_until, tls.accept(tcp)) => h,
            _ = stop.changed() => return,
        };
        match handshake {
            Ok(Handshake::Tls(stream, peer)) => {
                serve_http(*stream, peer, app, limits, stop, state).await;
            }
            Ok(Handshake::PlainHttp(tcp)) => answer_and_close(tcp, &tls_required_answer()).await,
            Ok(Handshake::Failed) => {}
            Err(_) => tracing::debug!(
                "closing a connection that did not finish its TLS handshake in time"
            ),
        }
    }
}

/// Serves HTTP/1.1 on one connection (plain or TLS) under the head and idle watchdog,
/// with `peer` in every request's extensions when the client authenticated.
async fn serve_http<S>(
    io: S,
    peer: Option<PeerSvid>,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    state: Arc<ConnState>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched {
        inner: io,
        state: Arc::clone(&state),
    });
    let svc_state = Arc::clone(&state);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let in_flight = svc_state.request_began();
        let app = app.clone();
        let mut req = req.map(Body::new);
        if let Some(peer) = &peer {
            req.extensions_mut().insert(peer.clone());
        }
        async move {
            let Ok(res) = app.oneshot(req).await;
            Ok::<_, Infallible>(res.map(|b| {
                Body::new(b.map_frame(move |f| {
                    let _held = &in_flight;
                    f
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's own head timer runs from the moment it waits for a head, idle time
        // included; the watchdog below is the finer rule, this is the backstop.
        .header_read_timeout(limits.header_read_timeout.max(limits.idle_timeout))
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = state.deadline(&limits);
        let changed = state.changed.notified();
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = changed => {}
            () = sleep_until(deadline) => {
                if state.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("closing a connection that sent no request in time");
                    return;
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The socket (or TLS stream), telling the watchdog when bytes arrive while no request is
/// in flight.
struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How large a request body may be and how long it may take to arrive, per route family.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyRules {
    /// The API and MCP routes.
    pub api: (usize, Duration),
    /// `/gw/...`, when a gateway is configured (its own limits).
    pub gateway: Option<(usize, Duration)>,
}

/// Reads a request body whole before the handler runs: 413 on a declared length over the
/// limit without reading it, 413 or 408 when it turns out too large or too slow, and the
/// body handed on as bytes otherwise.
pub(crate) async fn whole_body(
    State(rules): State<BodyRules>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let (max, wait) = match rules.gateway {
        Some(g) if req.uri().path().starts_with("/gw/") => g,
        _ => rules.api,
    };
    let too_large = || {
        closing(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are at most {max} bytes"),
        ))
    };
    // hyper has already refused a malformed or repeated Content-Length.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if !chunked && declared.unwrap_or(0) == 0 {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(wait, http_body_util::Limited::new(body, max).collect()).await;
    let bytes = match read {
        Err(_) => {
            return closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body did not arrive within {}s", wait.as_secs()),
            ));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "request body could not be read");
            return closing(ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                "the request body could not be read",
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// An error answer after which the connection is closed (its request body was not read).
fn closing(e: ApiError) -> Response {
    let mut res = e.into_response();
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// Bounds a handler's time, answering 503 `request_timeout` with the JSON error body.
pub(crate) async fn within_request_timeout(
    State(limit): State<Duration>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!("the request was not answered within {}s", limit.as_secs()),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::disallowed_methods,
        reason = "test code: a slow handler sleeps"
    )]

    use super::*;

    #[tokio::test]
    async fn a_handler_over_the_request_timeout_gets_the_json_error_body() {
        let app: Router = Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Duration::from_millis(50),
                within_request_timeout,
            ));
        let res = app
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "request_timeout");
    }

    /// Serves `app` over TLS (client certificates optional) until the returned sender fires.
    async fn serve_tls(
        app: Router,
        max_connections: usize,
    ) -> (
        std::net::SocketAddr,
        rcgen::Issuer<'static, rcgen::KeyPair>,
        reqwest::Certificate,
        oneshot::Sender<()>,
        tempfile::TempDir,
    ) {
        use mandate_engine::config::{ClientAuth, ClientCertificates, TlsSettings};
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_pem) = crate::tls::testing::ca("test CA");
        let (cert, key) = crate::tls::testing::server(&ca);
        let path = |f: &str| dir.path().join(f);
        std::fs::write(path("cert.pem"), cert).unwrap();
        std::fs::write(path("key.pem"), key).unwrap();
        std::fs::write(path("ca.pem"), &ca_pem).unwrap();
        let mut settings = TlsSettings::new(path("cert.pem"), path("key.pem"));
        settings.client = Some(ClientCertificates {
            ca_bundle: path("ca.pem"),
            auth: ClientAuth::Optional,
        });
        let tls = Arc::new(Tls::load(settings).await.unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            max_connections,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        let (tx, rx) = oneshot::channel();
        tokio::spawn(serve(listener, app, limits, Some(tls), rx));
        let root = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
        (addr, ca, root, tx, dir)
    }

    #[tokio::test]
    async fn requests_on_an_mtls_connection_carry_the_peer_svid_and_others_none() {
        let app = Router::new().route(
            "/whoami",
            axum::routing::get(|req: Request| async move {
                crate::tls::peer_svid_of(&req).map_or("none".to_owned(), |p| p.spiffe_id.clone())
            }),
        );
        let (addr, ca, root, stop, _dir) = serve_tls(app, 16).await;
        let id = "spiffe://partner.example/ns/billing/sa/agent";
        let (leaf, key) = crate::tls::testing::signed(&crate::tls::testing::svid_params(id), &ca);
        let with = reqwest::Client::builder()
            .tls_certs_only([root.clone()])
            .identity(reqwest::Identity::from_pem(format!("{leaf}{key}").as_bytes()).unwrap())
            .build()
            .unwrap();
        let without = reqwest::Client::builder()
            .tls_certs_only([root])
            .build()
            .unwrap();
        let url = format!("https://{addr}/whoami");
        for _ in 0..2 {
            // Twice: the second request rides the kept-alive connection.
            let r = with.get(&url).send().await.unwrap();
            assert_eq!(r.text().await.unwrap(), id);
        }
        let r = without.get(&url).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "none");
        stop.send(()).unwrap();
    }

    #[tokio::test]
    async fn past_the_cap_a_tls_client_gets_the_503_over_tls() {
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (addr, _ca, root, stop, _dir) = serve_tls(app, 1).await;
        let client = || {
            reqwest::Client::builder()
                .tls_certs_only([root.clone()])
                .build()
                .unwrap()
        };
        let first = client();
        let url = format!("https://{addr}/");
        // The first client's kept-alive connection holds the only place.
        assert_eq!(first.get(&url).send().await.unwrap().status(), 200);
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
        assert_eq!(first.get(&url).send().await.unwrap().status(), 200);
        stop.send(()).unwrap();
    }

    #[test]
    fn the_open_file_limit_is_read_on_linux() {
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(open_files_soft_limit().is_some_and(|n| n > 0));
        }
    }
}

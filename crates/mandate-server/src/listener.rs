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

/// Serves `app` on `listener` until `shutdown` fires, then lets connections finish their
/// requests for a bounded time.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut shutdown: oneshot::Receiver<()>,
) -> Result<(), String> {
    let cap = limits.effective_cap();
    let permits = Arc::new(Semaphore::new(cap));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut last_accept_error: Option<Instant> = None;
    let over_cap: Arc<[u8]> = over_cap_answer(cap).into();
    tracing::debug!(cap, "accepting connections");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let conn = Connection::new(tcp, app.clone(), limits, stop_rx.clone());
                        conns.spawn(async move {
                            conn.run().await;
                            drop(permit);
                        });
                    }
                    Err(_) => match Arc::clone(&refusals).try_acquire_owned() {
                        Ok(slot) => {
                            let answer = Arc::clone(&over_cap);
                            #[expect(clippy::disallowed_methods, reason = "refusals past the cap are bounded by the refusal semaphore held by the task")]
                            tokio::spawn(async move {
                                refuse_over_cap(tcp, answer).await;
                                drop(slot);
                            });
                        }
                        // Too many refusals at once: answer what fits without waiting.
                        Err(_) => {
                            let _ = tcp.try_write(&over_cap);
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
    let body = serde_json::json!({ "error": {
        "code": "too_many_connections",
        "message": format!("the server is at its cap of {cap} open connections; retry shortly"),
    }})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection past the cap with a clear refusal, then closes it. What the client
/// already sent is drained for a moment after the answer, so that closing does not reset
/// the connection before the client has read why.
async fn refuse_over_cap(mut tcp: TcpStream, answer: Arc<[u8]>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&answer)).await;
    let _ = tcp.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_millis(250), async {
        let mut sink = [0_u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink)
            .await
            .is_ok_and(|n| n > 0)
        {}
    })
    .await;
}

/// One served connection and what its watchdog needs to know.
struct Connection {
    tcp: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
    state: Arc<ConnState>,
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
    ) -> Self {
        Self {
            tcp,
            app,
            limits,
            stop,
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
        } = self;
        // Answers go out in more than one write (headers, then body or SSE events): without
        // TCP_NODELAY a keep-alive client can wait ~40 ms on Nagle and delayed ACKs.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let io = TokioIo::new(Watched {
            inner: tcp,
            state: Arc::clone(&state),
        });
        let svc_state = Arc::clone(&state);
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let in_flight = svc_state.request_began();
                let app = app.clone();
                async move {
                    let Ok(res) = app.oneshot(req.map(Body::new)).await;
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
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The socket, telling the watchdog when bytes arrive while no request is in flight.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
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

impl AsyncWrite for Watched {
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

    #[test]
    fn the_open_file_limit_is_read_on_linux() {
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(open_files_soft_limit().is_some_and(|n| n > 0));
        }
    }
}

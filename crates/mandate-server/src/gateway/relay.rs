//! The response on its way back: streamed, counted, redacted, cut when the task ends or
//! the response outgrows its limit, and recorded (`gateway.result`, task history) once it
//! is over, however it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Instant;

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use futures_util::Stream;
use mandate_audit::{Body, GatewayResult, NewEvent};
use mandate_gateway::Redactor;

use mandate_engine::engine::{Engine, LiveTask};

/// What the result event needs to know about the call.
pub struct Context {
    pub engine: Arc<Engine>,
    pub task: Arc<LiveTask>,
    pub decision_id: String,
    pub upstream: String,
    pub tool: String,
    pub untrusted: bool,
    pub started: Instant,
    /// The call's span (none when the token did not verify).
    pub span: Option<mandate_core::CallSpan>,
    /// What a change through the gateway did, for `mandate audit changes`: the method, the
    /// canonical target (path and query as forwarded), the request body's digest.
    pub change: Change,
    /// The agent's in-flight slot, held until the response has been relayed.
    pub _slot: Option<super::AgentSlot>,
}

/// What was sent, and what the upstream said it made: the rollback evidence.
#[derive(Debug, Default, Clone)]
pub struct Change {
    pub method: String,
    pub target: String,
    pub request_digest: Option<String>,
    pub location: Option<String>,
    pub etag: Option<String>,
}

/// Longest `Location` or `ETag` recorded (longer ones are cut, marked with `…`).
const MAX_IDENTIFIER: usize = 2048;

impl Change {
    /// Notes the identifiers the upstream returned, from the headers as relayed (already
    /// redacted).
    pub fn answered(&mut self, headers: &HeaderMap) {
        let take = |name: header::HeaderName| {
            headers.get(name).map(|v| {
                let s = String::from_utf8_lossy(v.as_bytes());
                if s.len() > MAX_IDENTIFIER {
                    let mut end = MAX_IDENTIFIER;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    format!("{}…", s.get(..end).unwrap_or_default())
                } else {
                    s.into_owned()
                }
            })
        };
        self.location = take(header::LOCATION);
        self.etag = take(header::ETAG);
    }
}

/// The context once the upstream answered.
pub struct Answered {
    ctx: Context,
    status: u16,
    redacted_header: bool,
}

impl Context {
    /// The upstream answered with `status`.
    pub fn with_status(self, status: u16, redacted_header: bool) -> Answered {
        Answered {
            ctx: self,
            status,
            redacted_header,
        }
    }

    /// Records an allowed call that got no answer to relay.
    pub fn finish_without_response(self, error: &str) {
        record(&self, None, 0, false, Some(error));
    }
}

fn record(ctx: &Context, status: Option<u16>, bytes: u64, redacted: bool, error: Option<&str>) {
    ctx.engine
        .record_result(&ctx.task, bytes, ctx.untrusted && status.is_some());
    if redacted {
        tracing::warn!(task = %ctx.task.id, decision = %ctx.decision_id, upstream = %ctx.upstream,
            "the upstream echoed the injected credential: redacted from the response");
    }
    let ev = NewEvent {
        ts_ms: ctx.engine.clock.now_ms(),
        agent: Some(ctx.task.agent.to_string()),
        task_id: Some(ctx.task.id.clone()),
        body: Body::GatewayResult(GatewayResult {
            protocol: None,
            decision_id: ctx.decision_id.clone(),
            upstream: ctx.upstream.clone(),
            tool: Some(ctx.tool.clone()),
            request: None,
            upstream_status: status,
            method: Some(ctx.change.method.clone()),
            target: Some(ctx.change.target.clone()),
            request_digest: ctx.change.request_digest.clone(),
            location: ctx.change.location.clone(),
            etag: ctx.change.etag.clone(),
            bytes_returned: bytes,
            secret_redacted: Some(redacted),
            untrusted_content: ctx.untrusted,
            error: error.map(|e| e.to_string()),
            duration_us: u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            trace: ctx.span.map(|s| s.record(ctx.engine.clock.now_us())),
        }),
    };
    // The decision was recorded durably before forwarding; the result joins the next
    // group commit without holding this response or the next call.
    ctx.engine.audit.append_deferred(ev);
}

/// Why an upstream answer cannot be relayed as it came: its body bytes, as the client
/// hands them over, would not be the plain bytes of the answer, so the redactor could not
/// see an echoed credential in them (and the agent, decoding them, would).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotPlain {
    /// A transfer coding other than one `chunked` (`gzip, chunked`, `chunked, chunked`,
    /// `identity`, an unknown coding, a repeated header): the client removes the chunked
    /// framing at most, and the gateway drops the header, so the rest would reach the
    /// agent undeclared.
    TransferCoding,
    /// `transfer-encoding` and `content-length` together: two framings, two readings.
    TwoFramings,
    /// A content coding other than one `identity` (several headers, a list, any other
    /// value or spelling).
    ContentCoding,
}

impl NotPlain {
    /// What the agent is told (no header value is repeated: it could carry the secret).
    pub fn message(self) -> &'static str {
        match self {
            Self::TransferCoding => {
                "the upstream used a transfer coding other than a single `chunked`, which could hide the injected credential from redaction; nothing of its answer was forwarded"
            }
            Self::TwoFramings => {
                "the upstream sent both transfer-encoding and content-length, so its answer has two readings; nothing of it was forwarded"
            }
            Self::ContentCoding => {
                "the upstream encoded its answer (content-encoding other than `identity`), which could hide the injected credential from redaction; nothing of it was forwarded"
            }
        }
    }
}

/// Checks that an upstream answer's body arrives as plain bytes. The framing is checked
/// for every answer (the gateway drops `transfer-encoding`, so a coding left in the body
/// would misrepresent it); the content coding only when something is to be redacted
/// (`content-encoding` itself is relayed, so the agent can decode what has no secret).
pub fn plain_body(headers: &HeaderMap, redacting: bool) -> Result<(), NotPlain> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => {}
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            if headers.contains_key(header::CONTENT_LENGTH) {
                return Err(NotPlain::TwoFramings);
            }
        }
        _ => return Err(NotPlain::TransferCoding),
    }
    let mut ce = headers.get_all(header::CONTENT_ENCODING).iter();
    match (ce.next(), ce.next()) {
        (None, _) => Ok(()),
        (Some(v), None) if v.as_bytes() == b"identity" => Ok(()),
        _ if !redacting => Ok(()),
        _ => Err(NotPlain::ContentCoding),
    }
}

type Inner = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The relayed response body.
pub struct Relay {
    inner: Inner,
    redactor: Redactor,
    bytes: u64,
    max: u64,
    deadline: Instant,
    answered: Option<Answered>,
    error: Option<&'static str>,
}

impl Relay {
    /// Relays `inner`.
    pub fn new(
        inner: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
        redactor: Redactor,
        max: u64,
        max_duration: std::time::Duration,
        answered: Answered,
    ) -> Self {
        Self {
            inner: Box::pin(inner),
            redactor,
            bytes: 0,
            max,
            deadline: answered.ctx.started + max_duration,
            answered: Some(answered),
            error: None,
        }
    }

    fn finish(&mut self) {
        if let Some(a) = self.answered.take() {
            let redacted = a.redacted_header || self.redactor.found();
            record(&a.ctx, Some(a.status), self.bytes, redacted, self.error);
        }
    }

    fn cut(&mut self, why: &'static str) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        self.error = Some(why);
        self.finish();
        Poll::Ready(Some(Err(std::io::Error::other(why))))
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let Some(a) = &self.answered else {
            return Poll::Ready(None);
        };
        if a.ctx.task.is_ended() {
            // Revocation cuts the stream: nothing more of it reaches the agent.
            return self.cut("task_ended");
        }
        if Instant::now() >= self.deadline {
            return self.cut("response_too_slow");
        }
        match ready!(self.inner.as_mut().poll_next(cx)) {
            Some(Ok(chunk)) => {
                self.bytes = self.bytes.saturating_add(chunk.len() as u64);
                if self.bytes > self.max {
                    return self.cut("response_too_large");
                }
                let out = self.redactor.push(&chunk);
                Poll::Ready(Some(Ok(Bytes::from(out))))
            }
            Some(Err(_)) => self.cut("upstream_stream_error"),
            None => {
                let tail = self.redactor.finish();
                self.finish();
                if tail.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Bytes::from(tail))))
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(a) = &self.answered {
            // A response that has no body (204, 304, an answer to HEAD) is dropped unread
            // by the server: that is its end, not the agent going away.
            let bodiless = matches!(a.status, 204 | 304) || a.ctx.change.method == "HEAD";
            if !(bodiless && self.bytes == 0) {
                self.error = Some("client_disconnected");
            }
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &[(&str, &str)], redacting: bool) -> Result<(), NotPlain> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap_or(header::VIA),
                header::HeaderValue::from_str(v).unwrap_or(header::HeaderValue::from_static("?")),
            );
        }
        plain_body(&map, redacting)
    }

    #[test]
    fn only_plain_bodies_are_relayed() {
        use NotPlain::*;
        let te = "transfer-encoding";
        let ce = "content-encoding";
        for (headers, want) in [
            (vec![], Ok(())),
            (vec![("content-length", "3")], Ok(())),
            (vec![(te, "chunked")], Ok(())),
            (vec![(te, "Chunked")], Ok(())),
            (vec![(te, "CHUNKED ")], Ok(())),
            (vec![(ce, "identity")], Ok(())),
            (vec![(te, "gzip, chunked")], Err(TransferCoding)),
            (vec![(te, "gzip,chunked")], Err(TransferCoding)),
            (vec![(te, "chunked, chunked")], Err(TransferCoding)),
            (vec![(te, "gzip"), (te, "chunked")], Err(TransferCoding)),
            (vec![(te, "chunked"), (te, "chunked")], Err(TransferCoding)),
            (vec![(te, "identity")], Err(TransferCoding)),
            (vec![(te, "x-unknown")], Err(TransferCoding)),
            (vec![(te, "")], Err(TransferCoding)),
            (vec![(te, "chunked;q=1")], Err(TransferCoding)),
            (
                vec![(te, "chunked"), ("content-length", "5")],
                Err(TwoFramings),
            ),
            (vec![(ce, "gzip")], Err(ContentCoding)),
            (vec![(ce, "Identity")], Err(ContentCoding)),
            (vec![(ce, "identity ")], Err(ContentCoding)),
            (vec![(ce, "identity, gzip")], Err(ContentCoding)),
            (vec![(ce, "identity"), (ce, "identity")], Err(ContentCoding)),
            (vec![(ce, "identity"), (ce, "br")], Err(ContentCoding)),
            (vec![(ce, "")], Err(ContentCoding)),
        ] {
            assert_eq!(check(&headers, true), want, "{headers:?}");
        }
        // Nothing to redact: a content coding is relayed (with its header), a transfer
        // coding never.
        assert_eq!(check(&[(ce, "gzip")], false), Ok(()));
        assert_eq!(check(&[(te, "gzip, chunked")], false), Err(TransferCoding));
    }
}

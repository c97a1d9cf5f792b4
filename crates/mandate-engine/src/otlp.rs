//! OpenTelemetry trace export (OTLP/HTTP, binary protobuf): every decision, refusal and
//! gateway call that has a span in its audit record is sent to a collector, in the
//! agent's trace when the agent sent a `traceparent`, so Mandate's checks show up inside
//! the agent's own traces.
//!
//! The export reads the audit log; it never sits on the decide path. Spans are handed
//! over after their events commit (a [`CommitObserver`]), queued in a bounded channel,
//! and sent in batches by one background task. A full queue or a collector that stays
//! down loses spans (counted and logged), never a decision: the audit log remains the
//! record, and every span can be rebuilt from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mandate_audit::{Body, Event};
use mandate_core::SpanRecord;
use tokio::sync::mpsc;

use crate::audit_writer::CommitObserver;

/// Spans waiting to be sent; past this, new spans are dropped (and counted).
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;
/// How long a partial batch waits for more spans.
const LINGER: Duration = Duration::from_secs(1);
/// Attempts per batch (429 and 5xx answers, connection errors), with doubling backoff.
const ATTEMPTS: u32 = 4;

/// Where spans go.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans are posted to
    /// `<endpoint>/v1/traces`. A URL already ending in `/v1/traces` is used as it is.
    pub endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Extra resource attributes (`deployment.environment.name`, `mandate.trust_domain`).
    pub resource: Vec<(String, String)>,
}

impl OtlpSettings {
    /// The traces URL.
    pub fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

/// What the exporter did so far.
#[derive(Debug, Default)]
pub struct OtlpStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped after the collector kept refusing or could not be reached.
    pub dropped_send_failed: AtomicU64,
}

/// The exporter: a commit observer feeding one background sender.
#[derive(Debug)]
pub struct OtlpExporter {
    tx: mpsc::Sender<Event>,
    stats: Arc<OtlpStats>,
}

impl OtlpExporter {
    /// Starts the sender on the current runtime. It ends when the exporter is dropped.
    pub fn spawn(settings: OtlpSettings) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("mandate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("OTLP client: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats: Arc<OtlpStats> = Arc::default();
        #[expect(
            clippy::disallowed_methods,
            reason = "the single OTLP sender: one task for the server life, ended when the exporter is dropped"
        )]
        tokio::spawn(run(http, settings, rx, Arc::clone(&stats)));
        Ok(Arc::new(Self { tx, stats }))
    }

    /// Counters of what was sent and lost.
    pub fn stats(&self) -> &OtlpStats {
        &self.stats
    }
}

/// The events that carry a span.
fn has_span(e: &Event) -> bool {
    matches!(
        e.kind.as_str(),
        "decision" | "call.refused" | "gateway.result"
    ) && e
        .data
        .get("trace")
        .is_some_and(serde_json::Value::is_object)
}

impl CommitObserver for OtlpExporter {
    fn committed(&self, events: &[Event]) {
        for e in events.iter().filter(|e| has_span(e)) {
            if self.tx.try_send(e.clone()).is_err() {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn run(
    http: reqwest::Client,
    settings: OtlpSettings,
    mut rx: mpsc::Receiver<Event>,
    stats: Arc<OtlpStats>,
) {
    let url = settings.traces_url();
    let mut warned_queue = 0;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        #[expect(
            clippy::disallowed_methods,
            reason = "a partial batch waits a bounded time for more spans; no decision waits on it"
        )]
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(e) => batch.push(e),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let spans: Vec<Span> = batch.iter().filter_map(Span::of).collect();
        if spans.is_empty() {
            continue;
        }
        let body = encode_request(&settings, &spans);
        let n = spans.len() as u64;
        match send(&http, &url, body).await {
            Ok(()) => {
                stats.exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(why) => {
                stats.dropped_send_failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    url,
                    spans = n,
                    error = why,
                    "OTLP export failed; spans dropped (the audit log still holds them)"
                );
            }
        }
        let full = stats.dropped_queue_full.load(Ordering::Relaxed);
        if full > warned_queue {
            tracing::warn!(
                dropped = full - warned_queue,
                "OTLP export queue full; spans dropped (the audit log still holds them)"
            );
            warned_queue = full;
        }
    }
}

async fn send(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            #[expect(
                clippy::disallowed_methods,
                reason = "bounded backoff between export attempts, off the decide path"
            )]
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        let res = http
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status().as_u16();
                last = format!("collector answered {status}");
                // Only these are worth repeating (OTLP/HTTP specification, "Retryable
                // response codes").
                if !matches!(status, 429 | 502 | 503 | 504) {
                    return Err(last);
                }
            }
            Err(e) => last = format!("collector unreachable: {e}"),
        }
    }
    Err(last)
}

/// `SpanKind` values of the OTLP protocol.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Internal = 1,
    Server = 2,
}

/// One attribute value.
#[derive(Debug, Clone)]
enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Strs(Vec<String>),
}

/// A span ready to encode.
#[derive(Debug)]
struct Span {
    record: SpanRecord,
    ids: mandate_core::SpanIds,
    name: String,
    kind: Kind,
    attributes: Vec<(&'static str, Value)>,
    error: Option<String>,
}

impl Span {
    /// The span an audit event stands for, if it has one.
    fn of(e: &Event) -> Option<Self> {
        let body = e.body().ok()?;
        let mut attrs: Vec<(&'static str, Value)> = Vec::new();
        let mut push = |k: &'static str, v: Option<Value>| {
            if let Some(v) = v {
                attrs.push((k, v));
            }
        };
        push("mandate.audit.seq", Some(Value::Int(e.seq)));
        push("mandate.task.id", e.task_id.clone().map(Value::Str));
        push("gen_ai.agent.name", e.agent.clone().map(Value::Str));
        let (record, name, kind, error) = match body {
            Body::Decision(d) => {
                push("gen_ai.tool.name", Some(Value::Str(d.tool.to_string())));
                push("mandate.action", Some(Value::Str(d.action.to_string())));
                push("mandate.decision.id", Some(Value::Str(d.decision_id)));
                push(
                    "mandate.decision.outcome",
                    Some(Value::Str(outcome_name(d.outcome))),
                );
                push("mandate.policy.ids", Some(Value::Strs(d.policies)));
                push(
                    "mandate.policy.bundle_version",
                    Some(Value::Str(d.bundle_version)),
                );
                push(
                    "mandate.break_glass",
                    d.break_glass.then_some(Value::Bool(true)),
                );
                (
                    d.trace?,
                    format!("authorize {}", d.tool),
                    Kind::Internal,
                    None,
                )
            }
            Body::CallRefused(r) => {
                let tool = r.tool.clone().unwrap_or_else(|| "call".to_owned());
                push("gen_ai.tool.name", r.tool.map(Value::Str));
                push("mandate.decision.id", r.decision_id.map(Value::Str));
                push(
                    "mandate.decision.outcome",
                    Some(Value::Str("refused".into())),
                );
                push("mandate.refusal.code", Some(Value::Str(r.code.clone())));
                push("error.type", Some(Value::Str(r.code.clone())));
                (
                    r.trace?,
                    format!("authorize {tool}"),
                    Kind::Internal,
                    Some(r.code),
                )
            }
            Body::GatewayResult(g) => {
                let mcp = g.protocol.as_deref() == Some("mcp");
                push("mandate.decision.id", Some(Value::Str(g.decision_id)));
                push("mandate.upstream", Some(Value::Str(g.upstream.clone())));
                push(
                    "gen_ai.operation.name",
                    Some(Value::Str("execute_tool".into())),
                );
                push("gen_ai.tool.name", g.tool.clone().map(Value::Str));
                push("http.request.method", g.method.map(Value::Str));
                push(
                    "url.path",
                    g.target
                        .as_deref()
                        .map(|t| Value::Str(t.split('?').next().unwrap_or_default().to_owned())),
                );
                push(
                    "http.response.status_code",
                    g.upstream_status.map(|s| Value::Int(i64::from(s))),
                );
                push(
                    "mcp.method.name",
                    g.request.clone().filter(|_| mcp).map(Value::Str),
                );
                push(
                    "mandate.response.bytes",
                    Some(Value::Int(
                        i64::try_from(g.bytes_returned).unwrap_or(i64::MAX),
                    )),
                );
                push(
                    "mandate.secret_redacted",
                    g.secret_redacted.filter(|r| *r).map(Value::Bool),
                );
                let error = g.error.clone().or_else(|| {
                    g.upstream_status
                        .filter(|s| *s >= 500)
                        .map(|s| s.to_string())
                });
                push("error.type", error.clone().map(Value::Str));
                let name = if mcp {
                    format!(
                        "{} {}",
                        g.request.as_deref().unwrap_or("mcp"),
                        g.tool.as_deref().unwrap_or(&g.upstream)
                    )
                } else {
                    format!("execute_tool {}", g.tool.as_deref().unwrap_or(&g.upstream))
                };
                (g.trace?, name, Kind::Server, error)
            }
            _ => return None,
        };
        Some(Self {
            ids: record.ids()?,
            record,
            name,
            kind,
            attributes: attrs,
            error,
        })
    }
}

fn outcome_name(o: mandate_core::Outcome) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Protocol buffers, the little of it OTLP needs: length-delimited fields, varints and
/// fixed 64-bit integers.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire));
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(out, field, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    pub fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 0);
        varint(out, v);
    }

    pub fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A nested message, built by `f`.
    pub fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
        let mut inner = Vec::new();
        f(&mut inner);
        bytes(out, field, &inner);
    }
}

/// `AnyValue` (opentelemetry/proto/common/v1/common.proto).
fn any_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => pb::bytes(out, 1, s.as_bytes()),
        Value::Bool(b) => pb::uint(out, 2, u64::from(*b)),
        Value::Int(i) => pb::uint(out, 3, *i as u64),
        Value::Strs(items) => pb::message(out, 5, |arr| {
            for s in items {
                pb::message(arr, 1, |a| pb::bytes(a, 1, s.as_bytes()));
            }
        }),
    }
}

/// `KeyValue` as field `field` of its message.
fn attribute(out: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    pb::message(out, field, |kv| {
        pb::bytes(kv, 1, k.as_bytes());
        pb::message(kv, 2, |a| any_value(a, v));
    });
}

fn nanos(us: i64) -> u64 {
    u64::try_from(us).unwrap_or(0).saturating_mul(1000)
}

/// `ExportTraceServiceRequest` (opentelemetry/proto/collector/trace/v1): one resource
/// (this Mandate), one scope, the spans.
fn encode_request(settings: &OtlpSettings, spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::new();
    pb::message(&mut out, 1, |rs| {
        pb::message(rs, 1, |res| {
            attribute(
                res,
                1,
                "service.name",
                &Value::Str(settings.service_name.clone()),
            );
            attribute(
                res,
                1,
                "service.version",
                &Value::Str(env!("CARGO_PKG_VERSION").to_owned()),
            );
            for (k, v) in &settings.resource {
                attribute(res, 1, k, &Value::Str(v.clone()));
            }
        });
        pb::message(rs, 2, |ss| {
            pb::message(ss, 1, |scope| {
                pb::bytes(scope, 1, b"mandate");
                pb::bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                pb::message(ss, 2, |sp| encode_span(sp, s));
            }
        });
    });
    out
}

/// `Span` (opentelemetry/proto/trace/v1/trace.proto).
fn encode_span(out: &mut Vec<u8>, s: &Span) {
    let (trace, span, parent) = s.ids;
    pb::bytes(out, 1, &trace);
    pb::bytes(out, 2, &span);
    if let Some(p) = parent {
        pb::bytes(out, 4, &p);
    }
    pb::bytes(out, 5, s.name.as_bytes());
    pb::uint(out, 6, s.kind as u64);
    pb::fixed64(out, 7, nanos(s.record.start_us));
    pb::fixed64(out, 8, nanos(s.record.end_us));
    for (k, v) in &s.attributes {
        attribute(out, 9, k, v);
    }
    pb::message(out, 15, |st| {
        if let Some(why) = &s.error {
            pb::bytes(st, 2, why.as_bytes());
            pb::uint(st, 3, 2);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_examples() {
        // From the protocol buffers encoding guide: 1 is 01, 150 is 96 01.
        let mut out = Vec::new();
        pb::varint(&mut out, 1);
        pb::varint(&mut out, 150);
        pb::varint(&mut out, u64::MAX);
        assert_eq!(out[..3], [0x01, 0x96, 0x01]);
        assert_eq!(out.len(), 3 + 10);
    }

    #[test]
    fn the_traces_url_is_the_endpoint_with_the_signal_path() {
        let mut s = OtlpSettings {
            endpoint: "http://127.0.0.1:4318/".into(),
            service_name: "mandate".into(),
            resource: Vec::new(),
        };
        assert_eq!(s.traces_url(), "http://127.0.0.1:4318/v1/traces");
        s.endpoint = "https://collector/otlp/v1/traces".into();
        assert_eq!(s.traces_url(), "https://collector/otlp/v1/traces");
    }
}

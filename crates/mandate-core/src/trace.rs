//! W3C Trace Context: the `traceparent` an agent sends, and the span Mandate records for
//! its own work, so Mandate's spans join the agent's trace.

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

/// A parsed `traceparent` (W3C Trace Context, level 1): the trace and the caller's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace (never all zeros).
    pub trace_id: [u8; 16],
    /// The caller's span, the parent of the span Mandate opens (never all zeros).
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header value. Anything that is not a valid context (wrong
    /// length, upper-case or non-hex digits, version `ff`, all-zero ids, a version-00
    /// value with extra fields) is `None`: the call then starts a trace of its own, as
    /// the specification says, and is not refused for it.
    pub fn parse(value: &str) -> Option<Self> {
        let b = value.trim_matches([' ', '\t']).as_bytes();
        if b.len() < 55 {
            return None;
        }
        let version = hex_bytes::<1>(b.get(0..2)?)?;
        if version == [0xff] || b.get(2) != Some(&b'-') || b.get(35) != Some(&b'-') {
            return None;
        }
        if b.get(52) != Some(&b'-') {
            return None;
        }
        // Version 00 is exactly 55 characters; a later version may add fields after a '-'.
        if (version == [0] && b.len() != 55) || (b.len() > 55 && b.get(55) != Some(&b'-')) {
            return None;
        }
        let trace_id = hex_bytes::<16>(b.get(3..35)?)?;
        let parent_id = hex_bytes::<8>(b.get(36..52)?)?;
        let [flags] = hex_bytes::<1>(b.get(53..55)?)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The same trace with `span` as the parent: what Mandate sends on to an upstream so
    /// the upstream's spans hang under Mandate's.
    pub fn with_parent(self, span: [u8; 8]) -> Self {
        Self {
            parent_id: span,
            ..self
        }
    }

    /// The header value (version 00).
    pub fn header_value(&self) -> String {
        format!(
            "00-{}-{}-{}",
            crate::hex(&self.trace_id),
            crate::hex(&self.parent_id),
            crate::hex(&[self.flags])
        )
    }
}

fn hex_bytes<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *slot = (digit(*hi)? << 4) | digit(*lo)?;
    }
    Some(out)
}

fn derived<const N: usize>(domain: &str, seed: &str) -> [u8; N] {
    let d = digest::digest(&digest::SHA256, format!("{domain}\0{seed}").as_bytes());
    let mut out = [0u8; N];
    for (slot, b) in out.iter_mut().zip(d.as_ref()) {
        *slot = *b;
    }
    if out.iter().all(|b| *b == 0) {
        // All zeros is invalid in W3C and OTLP; one chance in 2^64 at worst.
        if let Some(last) = out.last_mut() {
            *last = 1;
        }
    }
    out
}

/// The trace a task's calls join when the agent sent no `traceparent`: derived from the
/// task id, so every call of one task is one trace.
pub fn task_trace_id(task_id: &str) -> [u8; 16] {
    derived("mandate-trace", task_id)
}

/// A span id derived from what the span stands for (a decision id, a call's id), so the
/// same record always names the same span.
pub fn span_id_for(seed: &str) -> [u8; 8] {
    derived("mandate-span", seed)
}

/// The span of one call through a gateway, opened when the call arrives: in the agent's
/// trace (or the task's own), under the agent's span. The decision's span and the
/// upstream's spans hang under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSpan {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// The agent's span, when it sent a `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// Trace flags carried on (sampled when the agent sent none).
    pub flags: u8,
    /// When the call arrived (µs since the Unix epoch).
    pub start_us: i64,
}

impl CallSpan {
    /// Opens the span of a call of `task_id` that arrived at `start_us`, with the agent's
    /// context if it sent one. `nonce` makes the span id unique (a fresh random value).
    pub fn open(agent: Option<TraceParent>, task_id: &str, nonce: &str, start_us: i64) -> Self {
        let span_id = span_id_for(&format!("call:{task_id}:{start_us}:{nonce}"));
        match agent {
            Some(t) => Self {
                trace_id: t.trace_id,
                span_id,
                parent: Some(t.parent_id),
                flags: t.flags,
                start_us,
            },
            None => Self {
                trace_id: task_trace_id(task_id),
                span_id,
                parent: None,
                flags: 1,
                start_us,
            },
        }
    }

    /// The context children of this span see: the decision, and the upstream (its
    /// `traceparent`).
    pub fn child_context(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: self.flags,
        }
    }

    /// The span as recorded once the call is over.
    pub fn record(&self, end_us: i64) -> SpanRecord {
        SpanRecord::new(
            self.trace_id,
            self.span_id,
            self.parent,
            self.start_us,
            end_us,
        )
    }
}

/// A span's ids as bytes: the trace, the span, its parent.
pub type SpanIds = ([u8; 16], [u8; 8], Option<[u8; 8]>);

/// The span an audit record stands for, as exported over OTLP: ids in lower-case hex,
/// times in microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SpanRecord {
    /// The trace (32 hex digits): the agent's, or the task's own.
    pub trace_id: String,
    /// This span (16 hex digits).
    pub span_id: String,
    /// The parent span (the agent's, or Mandate's call span), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// When the span began (µs since the Unix epoch).
    pub start_us: i64,
    /// When it ended (µs since the Unix epoch).
    pub end_us: i64,
}

impl SpanRecord {
    /// A span in `trace`, under `parent`.
    pub fn new(
        trace: [u8; 16],
        span: [u8; 8],
        parent: Option<[u8; 8]>,
        start_us: i64,
        end_us: i64,
    ) -> Self {
        Self {
            trace_id: crate::hex(&trace),
            span_id: crate::hex(&span),
            parent_span_id: parent.map(|p| crate::hex(&p)),
            start_us,
            end_us: end_us.max(start_us),
        }
    }

    /// The trace, span and parent ids as bytes; `None` when a stored id is not the hex it
    /// should be (a record edited by hand).
    pub fn ids(&self) -> Option<SpanIds> {
        let parent = match &self.parent_span_id {
            Some(p) => Some(hex_bytes::<8>(p.as_bytes())?),
            None => None,
        };
        Some((
            hex_bytes::<16>(self.trace_id.as_bytes())?,
            hex_bytes::<8>(self.span_id.as_bytes())?,
            parent,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_specification_example_and_round_trips() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(v).unwrap();
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.header_value(), v);
        let child = tp.with_parent(span_id_for("x"));
        assert_eq!(child.trace_id, tp.trace_id);
        assert_ne!(child.parent_id, tp.parent_id);
    }

    #[test]
    fn refuses_every_malformed_context() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields after a dash.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ab")
                .is_some()
        );
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(task_trace_id("tsk_1"), task_trace_id("tsk_1"));
        assert_ne!(task_trace_id("tsk_1"), task_trace_id("tsk_2"));
        assert_ne!(span_id_for("dec_1"), span_id_for("dec_2"));
    }
}

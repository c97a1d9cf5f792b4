//! `mandate audit changes TASK`: what a task changed, in order, so an operator can reverse
//! it. Read from the audit log (the database file, read-only): every allowed write or
//! delete, joined with what the gateway recorded of it (method, canonical target, body
//! digest, upstream status, the `Location` and `ETag` the upstream answered), and calls
//! allowed outside the gateway, which Mandate decided but did not see carried out.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

/// One change, as the log knows it.
#[derive(Debug, Serialize)]
pub struct Change {
    /// The record that shows it (the gateway's result, or the decision).
    pub seq: i64,
    pub ts_ms: i64,
    pub decision_id: String,
    pub tool: String,
    pub action: String,
    /// `http` or `mcp` through the gateway; `decide` when the call went elsewhere.
    pub via: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The canonical target: path and query forwarded (HTTP), the request (MCP), or the
    /// decision's resource.
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
    pub args_digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Whether the change surely reached the upstream: `done` (it answered), `unknown`
    /// (allowed but no answer, or outside the gateway).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn text(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// The task's changes, in the order they happened.
pub async fn changes(data_dir: &Path, task: &str) -> Result<Vec<Change>> {
    let db = crate::evidence::open_readonly(data_dir).await?;
    let rows = sqlx::query(
        "SELECT seq, ts_ms, kind, data FROM audit_events WHERE task_id = ?1 AND kind IN ('decision', 'gateway.result') ORDER BY seq",
    )
    .bind(task)
    .fetch_all(&db)
    .await?;
    if rows.is_empty() {
        let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM tasks WHERE id = ?1")
            .bind(task)
            .fetch_optional(&db)
            .await?;
        if known.is_none() {
            bail!("no task {task} in {}", data_dir.display());
        }
    }
    // Allowed writes and deletes, by decision id, in decision order.
    let mut order: Vec<String> = Vec::new();
    let mut decided: HashMap<String, Change> = HashMap::new();
    for r in &rows {
        let kind: String = r.try_get("kind")?;
        let seq: i64 = r.try_get("seq")?;
        let ts_ms: i64 = r.try_get("ts_ms")?;
        let data: Value = serde_json::from_str(r.try_get::<&str, _>("data")?)?;
        let Some(id) = text(&data, "decision_id") else {
            continue;
        };
        if kind == "decision" {
            let action = text(&data, "action").unwrap_or_default();
            if data["outcome"] != "allow" || !matches!(action.as_str(), "write" | "delete") {
                continue;
            }
            order.push(id.clone());
            decided.insert(
                id.clone(),
                Change {
                    seq,
                    ts_ms,
                    decision_id: id,
                    tool: text(&data, "tool").unwrap_or_default(),
                    action,
                    via: "decide".into(),
                    upstream: None,
                    method: None,
                    target: text(&data, "resource").unwrap_or_default(),
                    request_digest: None,
                    args_digest: text(&data, "args_digest").unwrap_or_default(),
                    upstream_status: None,
                    location: None,
                    etag: None,
                    outcome: "unknown".into(),
                    error: None,
                },
            );
        } else if let Some(c) = decided.get_mut(&id) {
            c.seq = seq;
            c.ts_ms = ts_ms;
            c.via = text(&data, "protocol").unwrap_or_else(|| "http".into());
            c.upstream = text(&data, "upstream");
            c.method = text(&data, "method");
            if let Some(t) = text(&data, "target").or_else(|| text(&data, "request")) {
                c.target = t;
            }
            c.request_digest = text(&data, "request_digest");
            c.upstream_status = data.get("upstream_status").and_then(Value::as_u64);
            c.location = text(&data, "location");
            c.etag = text(&data, "etag");
            c.error = text(&data, "error");
            c.outcome = if c.error.is_none() || c.upstream_status.is_some() {
                "done".into()
            } else {
                "unknown".into()
            };
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|id| decided.remove(&id))
        .collect())
}

/// One line per change.
pub fn render(task: &str, changes: &[Change]) -> String {
    let mut out = format!(
        "{} changes by task {task}{}\n",
        changes.len(),
        if changes.is_empty() {
            ": nothing was written or deleted"
        } else {
            ", oldest first (reverse them newest first)"
        }
    );
    for c in changes {
        let mut line = format!(
            "#{:<6} {}  {:<6} {} via {}",
            c.seq,
            crate::trace::time(c.ts_ms),
            c.action,
            c.tool,
            c.via
        );
        if let Some(u) = &c.upstream {
            line.push_str(&format!(" {u}"));
        }
        if let Some(m) = &c.method {
            line.push_str(&format!(" {m}"));
        }
        line.push_str(&format!(" {}", c.target));
        if let Some(s) = c.upstream_status {
            line.push_str(&format!(" -> {s}"));
        }
        if let Some(l) = &c.location {
            line.push_str(&format!("  Location: {l}"));
        }
        if let Some(e) = &c.etag {
            line.push_str(&format!("  ETag: {e}"));
        }
        if let Some(d) = &c.request_digest {
            line.push_str(&format!("  body {d}"));
        }
        match (c.outcome.as_str(), &c.error) {
            ("done", _) => {}
            (_, Some(e)) => line.push_str(&format!("  [not known to have happened: {e}]")),
            _ => line.push_str("  [allowed; carried out outside the gateway, not seen]"),
        }
        line.push_str(&format!("  ({})\n", c.decision_id));
        out.push_str(&line);
    }
    out
}

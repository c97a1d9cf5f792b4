//! Rendering a task's audit events as a readable timeline.

use mandate_audit::Event;
use serde_json::Value;

use crate::style;

pub fn time(ts_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ts_ms)
        .map(|t| t.strftime("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|_| ts_ms.to_string())
}

pub fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub fn grant(v: &Value) -> String {
    let Some(tools) = v["tools"].as_object() else {
        return "nothing".into();
    };
    let parts: Vec<String> = tools
        .iter()
        .map(|(t, a)| format!("{t}:{}", list(a).replace(", ", "+")))
        .collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(" ")
    }
}

fn short(version: &Value) -> String {
    let v = version.as_str().unwrap_or("");
    v.strip_prefix("sha256:")
        .map_or(v, |h| h.get(..12).unwrap_or(h))
        .to_owned()
}

/// One line per event.
pub fn line(e: &Event) -> String {
    let d = &e.data;
    let what = match e.kind.as_str() {
        "task.started" => format!(
            "{} purpose {:?}; granted {} for {}s (bundle {})",
            d["state"].as_str().unwrap_or(""),
            d["purpose"].as_str().unwrap_or(""),
            grant(&d["grant"]),
            d["ttl_secs"],
            short(&d["decision"]["bundle_version"])
        ),
        "task.refused" => format!("refused: {}", list(&d["decision"]["reasons"])),
        "decision" => {
            format!(
                "{:<17} {} {} {}  by {}",
                style::outcome(d["outcome"].as_str().unwrap_or("")),
                d["action"].as_str().unwrap_or(""),
                d["tool"].as_str().unwrap_or(""),
                d["resource"]
                    .as_str()
                    .filter(|r| !r.is_empty())
                    .map(|r| format!("on {r}"))
                    .unwrap_or_default(),
                list(&d["policies"])
            ) + &match (d["approval_id"].as_str(), d["break_glass"].as_bool()) {
                (_, Some(true)) => format!("  {}", style::red("[break-glass]")),
                (Some(id), _) if d["outcome"] == "allow" => {
                    format!("  approved by {} ({id})", list(&d["approved_by"]))
                }
                (Some(id), _) => format!("  ({id})"),
                _ => String::new(),
            }
        }
        "task.delegated" => format!(
            "delegated by task {} at depth {}: purpose {:?}; granted {} for {}s",
            d["delegation"]["parent_task"].as_str().unwrap_or(""),
            d["delegation"]["depth"],
            d["purpose"].as_str().unwrap_or(""),
            grant(&d["grant"]),
            d["ttl_secs"]
        ),
        "delegation.refused" => format!(
            "{} delegating to {}: {}",
            style::red(d["code"].as_str().unwrap_or("")),
            d["child_agent"].as_str().unwrap_or("?"),
            d["message"].as_str().unwrap_or("")
        ),
        "containment.fired" => format!(
            "{} rule {} ({}): {} → {} {}{}",
            style::red("contained"),
            d["rule"].as_str().unwrap_or(""),
            d["signal"].as_str().unwrap_or(""),
            d["summary"].as_str().unwrap_or(""),
            d["response"].as_str().unwrap_or(""),
            d["result"].as_str().unwrap_or(""),
            d["evidence"]
                .as_array()
                .map(|e| format!(
                    " (evidence #{})",
                    e.iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", #")
                ))
                .unwrap_or_default()
        ),
        "task.redeclared" => format!(
            "{} plan: purpose {:?} → {:?}; granted {}",
            d["change"].as_str().unwrap_or(""),
            d["previous_purpose"].as_str().unwrap_or(""),
            d["purpose"].as_str().unwrap_or(""),
            grant(&d["grant"])
        ),
        "call.refused" => format!(
            "{} {} {}",
            style::red(d["code"].as_str().unwrap_or("")),
            d["action"].as_str().unwrap_or(""),
            d["tool"].as_str().unwrap_or("")
        ),
        "task.completed" | "task.revoked" | "task.expired" => format!(
            "{} (by {})",
            d["reason"].as_str().unwrap_or(""),
            d["by"].as_str().unwrap_or("mandate")
        ),
        "approval.requested" => format!(
            "{} {} {} needs {} approver(s) of {} until {} ({})",
            d["approval_id"].as_str().unwrap_or(""),
            d["action"]["action"].as_str().unwrap_or("start"),
            d["action"]["tool"].as_str().unwrap_or("of the task"),
            d["required"],
            d["group"].as_str().unwrap_or(""),
            time(d["expires_at_ms"].as_i64().unwrap_or(0)),
            list(&d["reasons"])
        ),
        "approval.vote" | "approval.approved" => format!(
            "{} approved by {} ({}/{})",
            d["approval_id"].as_str().unwrap_or(""),
            d["by"].as_str().unwrap_or(""),
            d["approvals"],
            d["required"]
        ),
        "approval.denied" | "approval.expired" | "approval.invalidated" | "approval.consumed" => {
            format!(
                "{} by {}: {}",
                d["approval_id"].as_str().unwrap_or(""),
                d["by"].as_str().unwrap_or("mandate"),
                d["reason"].as_str().unwrap_or("")
            )
        }
        "task.activated" => format!(
            "start approved ({}) by {}",
            d["approval_id"].as_str().unwrap_or(""),
            list(&d["approved_by"])
        ),
        "break_glass.declared" => format!(
            "{} {} by {}: {:?}; granted {} for {}s",
            style::red("BREAK-GLASS"),
            d["break_glass_id"].as_str().unwrap_or(""),
            d["declared_by"].as_str().unwrap_or(""),
            d["justification"].as_str().unwrap_or(""),
            grant(&d["grant"]),
            d["ttl_secs"]
        ),
        "break_glass.reviewed" => format!(
            "{} reviewed by {}: {:?}",
            d["break_glass_id"].as_str().unwrap_or(""),
            d["by"].as_str().unwrap_or(""),
            d["notes"].as_str().unwrap_or("")
        ),
        "gateway.result" => format!(
            "{} {} {} → {} {} bytes in {} µs{}{}",
            d["protocol"].as_str().unwrap_or("http"),
            d["upstream"].as_str().unwrap_or(""),
            d["request"].as_str().or(d["tool"].as_str()).unwrap_or(""),
            d["upstream_status"]
                .as_u64()
                .map_or("-".to_owned(), |s| s.to_string()),
            d["bytes_returned"],
            d["duration_us"],
            if d["secret_redacted"] == true {
                format!("  {}", style::red("[secret redacted]"))
            } else {
                String::new()
            },
            d["error"]
                .as_str()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        ),
        "mcp.request" => format!(
            "{} {}: shown {} held {}",
            d["server"].as_str().unwrap_or(""),
            d["method"].as_str().unwrap_or(""),
            list(&d["shown"]),
            d["held"].as_array().map_or(0, Vec::len)
        ),
        _ => d.to_string(),
    };
    format!(
        "  #{:<5} {}  {:<15} {}",
        e.seq,
        style::dim(&time(e.ts_ms)),
        e.kind,
        what
    )
}

/// The whole timeline of one task.
/// A delegation tree: each task's timeline, its delegates indented below it, depth first.
pub fn render_tree(tasks: &[(usize, String, Vec<Event>)]) -> String {
    let mut out = String::new();
    for (depth, id, events) in tasks {
        let pad = "    ".repeat(*depth);
        for line in render(id, events).lines() {
            out.push_str(&pad);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

pub fn render(task_id: &str, events: &[Event]) -> String {
    let mut out = String::new();
    let agent = events
        .iter()
        .find_map(|e| e.agent.clone())
        .unwrap_or_default();
    out.push_str(&format!(
        "{} {task_id}  agent {agent}\n",
        style::bold("task")
    ));
    for e in events {
        out.push_str(&line(e));
        out.push('\n');
    }
    out
}

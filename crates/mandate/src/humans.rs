//! The human side: approvals, approvers and their groups, break-glass, oversight reports.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Client;
use crate::cmd::print;
use crate::style;
use crate::trace::{grant, list};

/// Where the server is, and whose credential acts.
#[derive(Debug, Args)]
pub struct HumanOpts {
    /// Base URL of the Mandate server.
    #[arg(long, default_value = "http://127.0.0.1:8181", env = "MANDATE_URL")]
    server: String,
    /// Your approver token (from `mandate approvers add`).
    #[arg(long, env = "MANDATE_APPROVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Admin token: reads the queue and reports without an approver token.
    #[arg(long, env = "MANDATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl HumanOpts {
    fn client(&self) -> Result<Client> {
        Client::new(&self.server)
    }

    /// The approver token (needed to approve, deny, declare or review).
    fn approver(&self) -> Result<&str> {
        self.token.as_deref().context(
            "this needs your approver token: pass --token or set MANDATE_APPROVER_TOKEN (the admin token cannot approve)",
        )
    }

    /// An approver token, or else the admin token (for reading).
    fn reader(&self) -> Result<&str> {
        self.token
            .as_deref()
            .or(self.admin_token.as_deref())
            .context("pass --token (approver) or --admin-token, or set MANDATE_APPROVER_TOKEN or MANDATE_ADMIN_TOKEN")
    }

    fn admin(&self) -> Result<&str> {
        self.admin_token.as_deref().context(
            "this command needs the admin token: pass --admin-token or set MANDATE_ADMIN_TOKEN",
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCmd {
    /// The approval queue (pending by default).
    List {
        /// Only this state: pending, approved, denied, expired, consumed, invalidated, or all.
        #[arg(long, default_value = "pending")]
        state: String,
        /// Only this agent's requests.
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// Everything about one request: what will run, exactly as Mandate parsed it.
    Show {
        id: String,
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// Approve a request (your approver token).
    Approve {
        id: String,
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// Deny a request (your approver token).
    Deny {
        id: String,
        /// Why; the agent sees it.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        opts: HumanOpts,
    },
}

fn one_line(a: &Value) -> String {
    let act = &a["action"];
    let what = if a["kind"] == "task_start" {
        format!("start task {:?}", act["purpose"].as_str().unwrap_or(""))
    } else {
        format!(
            "{} {} {}",
            act["action"].as_str().unwrap_or(""),
            act["tool"].as_str().unwrap_or(""),
            act["resource"].as_str().unwrap_or("")
        )
    };
    format!(
        "{}  {:<11} {}  agent {} (owner {})  {}/{} approvals  group {}",
        a["id"].as_str().unwrap_or(""),
        a["state"].as_str().unwrap_or(""),
        style::bold(what.trim()),
        a["agent"].as_str().unwrap_or(""),
        a["owner"].as_str().unwrap_or(""),
        a["votes"].as_array().map_or(0, Vec::len),
        a["required"],
        a["group"].as_str().unwrap_or("")
    )
}

fn details(a: &Value) -> String {
    let act = &a["action"];
    let mut out = one_line(a);
    out.push('\n');
    let mut field = |k: &str, v: String| {
        if !v.is_empty() && v != "null" {
            out.push_str(&format!("  {:<13} {v}\n", k));
        }
    };
    field("purpose", act["purpose"].as_str().unwrap_or("").to_owned());
    field("risk tier", act["agent_tier"].to_string());
    field(
        "tool risk",
        act["tool_risk"].as_str().unwrap_or("").to_owned(),
    );
    field("task", a["task_id"].as_str().unwrap_or("").to_owned());
    if a["kind"] == "task_start" {
        field("grant", grant(&act["grant"]));
    } else {
        field(
            "arguments",
            serde_json::to_string_pretty(&act["arguments"]).unwrap_or_default(),
        );
        // What policy saw: amounts as decimals, URLs, paths, SQL and commands as facts.
        field(
            "as typed",
            serde_json::to_string_pretty(&act["typed_arguments"]).unwrap_or_default(),
        );
        field("destination", act["destination"].to_string());
        field("data domain", act["data_domain"].to_string());
        field("sensitivity", act["sensitivity"].to_string());
    }
    field("why held", list(&act["reasons"]));
    field("policies", list(&act["policies"]));
    field(
        "approved by",
        a["votes"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| x["by"].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
    );
    field("reason", a["reason"].as_str().unwrap_or("").to_owned());
    field("digest", a["digest"].as_str().unwrap_or("").to_owned());
    out
}

pub async fn approvals(c: ApprovalsCmd) -> Result<ExitCode> {
    match c {
        ApprovalsCmd::List { state, agent, opts } => {
            let mut q = Vec::new();
            if state != "all" {
                q.push(format!("state={state}"));
            }
            if let Some(a) = agent {
                q.push(format!("agent={a}"));
            }
            let path = format!("/v1/approvals?{}", q.join("&"));
            let v = opts
                .client()?
                .get(&path, Some(opts.reader()?))
                .await?
                .ok()?;
            if opts.json {
                print(&v)?;
            } else {
                let items = v.as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    println!("no approvals");
                }
                for a in items {
                    println!("{}", one_line(&a));
                }
            }
        }
        ApprovalsCmd::Show { id, opts } => {
            let v = opts
                .client()?
                .get(&format!("/v1/approvals/{id}"), Some(opts.reader()?))
                .await?
                .ok()?;
            if opts.json {
                print(&v)?;
            } else {
                print!("{}", details(&v));
            }
        }
        ApprovalsCmd::Approve { id, opts } => {
            let v = opts
                .client()?
                .post(
                    &format!("/v1/approvals/{id}/approve"),
                    Some(opts.approver()?),
                    &json!({}),
                )
                .await?
                .ok()?;
            if opts.json {
                print(&v)?;
            } else {
                println!("{}", one_line(&v));
            }
        }
        ApprovalsCmd::Deny { id, reason, opts } => {
            let v = opts
                .client()?
                .post(
                    &format!("/v1/approvals/{id}/deny"),
                    Some(opts.approver()?),
                    &json!({ "reason": reason }),
                )
                .await?
                .ok()?;
            if opts.json {
                print(&v)?;
            } else {
                println!("{}", one_line(&v));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum ApproversCmd {
    /// Add a human approver (admin); prints their token once.
    Add {
        /// Unique name (an email or login); compared with agent owners for separation of duties.
        name: String,
        /// A role: approver, break_glass, reviewer (repeat).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// An approver group they answer for (repeat; default: default).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// List approvers (admin).
    List {
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// Disable an approver (admin): their token stops working at once.
    Disable {
        name: String,
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// Point an approver group's notifications at a webhook (admin); prints the signing
    /// secret once.
    Group {
        name: String,
        /// Webhook URL; omit to stop notifications.
        #[arg(long)]
        webhook: Option<String>,
        #[command(flatten)]
        opts: HumanOpts,
    },
}

pub async fn approvers(c: ApproversCmd) -> Result<ExitCode> {
    match c {
        ApproversCmd::Add {
            name,
            roles,
            groups,
            opts,
        } => {
            let mut body = json!({ "name": name, "roles": roles });
            if !groups.is_empty() {
                body["groups"] = json!(groups);
            }
            let v = opts
                .client()?
                .post("/v1/approvers", Some(opts.admin()?), &body)
                .await?
                .ok()?;
            print(&v)?;
            eprintln!(
                "\nThe token is shown once. Give it to {name}: export MANDATE_APPROVER_TOKEN=<token>"
            );
        }
        ApproversCmd::List { opts } => print(
            &opts
                .client()?
                .get("/v1/approvers", Some(opts.admin()?))
                .await?
                .ok()?,
        )?,
        ApproversCmd::Disable { name, opts } => {
            opts.client()?
                .post(
                    &format!("/v1/approvers/{name}/disable"),
                    Some(opts.admin()?),
                    &json!({}),
                )
                .await?
                .ok()?;
            println!("{name} disabled");
        }
        ApproversCmd::Group {
            name,
            webhook,
            opts,
        } => print(
            &opts
                .client()?
                .put(
                    &format!("/v1/approver-groups/{name}"),
                    Some(opts.admin()?),
                    &json!({ "webhook_url": webhook }),
                )
                .await?
                .ok()?,
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum BreakGlassCmd {
    /// Declare break-glass: an emergency grant for an agent, outside policy, loudly
    /// audited, with an after-review someone else must close. Prints the task token.
    Declare {
        /// The agent that will act.
        #[arg(long)]
        agent: String,
        /// Why it cannot wait (at least 20 characters).
        #[arg(long)]
        justification: String,
        /// A tool it needs (repeat).
        #[arg(long = "tool", required = true)]
        tools: Vec<String>,
        /// An action class it needs (repeat).
        #[arg(long = "action", required = true)]
        actions: Vec<String>,
        /// A data domain it touches (repeat).
        #[arg(long = "data-domain")]
        data_domains: Vec<String>,
        /// A destination it sends data to (repeat).
        #[arg(long = "destination")]
        destinations: Vec<String>,
        /// Lifetime in seconds (at most the server's break-glass limit).
        #[arg(long)]
        ttl: Option<i64>,
        /// The approver group whose webhook is alerted (default: default).
        #[arg(long)]
        alert_group: Option<String>,
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// Break-glass uses and their reviews.
    List {
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// Close the after-review of a break-glass you did not declare (reviewer role).
    Review {
        id: String,
        /// What the review found.
        #[arg(long)]
        notes: String,
        #[command(flatten)]
        opts: HumanOpts,
    },
}

pub async fn break_glass(c: BreakGlassCmd) -> Result<ExitCode> {
    match c {
        BreakGlassCmd::Declare {
            agent,
            justification,
            tools,
            actions,
            data_domains,
            destinations,
            ttl,
            alert_group,
            opts,
        } => {
            let body = json!({
                "agent": agent, "justification": justification,
                "scope": { "tools": tools, "actions": actions, "data_domains": data_domains, "destinations": destinations },
                "ttl_secs": ttl, "alert_group": alert_group,
            });
            let v = opts
                .client()?
                .post("/v1/break-glass", Some(opts.approver()?), &body)
                .await?
                .ok()?;
            print(&v)?;
            eprintln!(
                "\n{} declared: every action is audited as break-glass; the after-review stays open until someone else closes it.",
                style::red("BREAK-GLASS")
            );
        }
        BreakGlassCmd::List { opts } => {
            let v = opts
                .client()?
                .get("/v1/break-glass", Some(opts.reader()?))
                .await?
                .ok()?;
            if opts.json {
                print(&v)?;
            } else {
                for b in v.as_array().cloned().unwrap_or_default() {
                    println!("{}", break_glass_line(&b));
                }
            }
        }
        BreakGlassCmd::Review { id, notes, opts } => print(
            &opts
                .client()?
                .post(
                    &format!("/v1/break-glass/{id}/review"),
                    Some(opts.approver()?),
                    &json!({ "notes": notes }),
                )
                .await?
                .ok()?,
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

fn break_glass_line(b: &Value) -> String {
    let review = match b["review"]["by"].as_str() {
        Some(by) => format!("reviewed by {by}"),
        None => style::yellow("REVIEW OPEN"),
    };
    format!(
        "{}  agent {}  by {}  task {}  {}  {:?}",
        b["id"].as_str().unwrap_or(""),
        b["agent"].as_str().unwrap_or(""),
        b["declared_by"].as_str().unwrap_or(""),
        b["task_id"].as_str().unwrap_or(""),
        review,
        b["justification"].as_str().unwrap_or("")
    )
}

#[derive(Debug, Subcommand)]
pub enum ReportCmd {
    /// Approvals given and by whom, how requests ended, break-glass uses.
    Approvals {
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// One agent: what was granted versus used, approvals, break-glass uses, and
    /// least-privilege recommendations.
    Access {
        agent: String,
        #[command(flatten)]
        opts: HumanOpts,
    },
    /// The control map: OWASP Agentic, NHI and MCP Top 10s, CSA MAESTRO, MITRE ATLAS,
    /// NIST AI RMF and CSF 2.0, each control with its evidence here and its gaps.
    Controls {
        /// Only controls with this status (implemented, partial, gap).
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        opts: HumanOpts,
    },
}

pub async fn report(c: ReportCmd) -> Result<ExitCode> {
    match c {
        ReportCmd::Approvals { opts } => {
            let v = opts
                .client()?
                .get("/v1/reports/approvals", Some(opts.reader()?))
                .await?
                .ok()?;
            if opts.json {
                return print(&v).map(|()| ExitCode::SUCCESS);
            }
            println!("{}", style::bold("Approval requests by outcome"));
            for (k, n) in v["by_state"].as_object().into_iter().flatten() {
                println!("  {k:<12} {n}");
            }
            println!("{}", style::bold("Approvals given, by approver"));
            for (k, n) in v["by_approver"].as_object().into_iter().flatten() {
                println!("  {k:<24} {n}");
            }
            if let Some(ms) = v["median_answer_ms"].as_i64() {
                println!("Median time to an answer: {:.1}s", ms as f64 / 1000.0);
            }
            println!("{}", style::bold("Requests"));
            for a in v["approvals"].as_array().into_iter().flatten() {
                println!("  {}", one_line(a));
            }
            println!("{}", style::bold("Break-glass"));
            for b in v["break_glass"].as_array().into_iter().flatten() {
                println!("  {}", break_glass_line(b));
            }
        }
        ReportCmd::Access { agent, opts } => {
            let v = opts
                .client()?
                .get(&format!("/v1/reports/access/{agent}"), Some(opts.reader()?))
                .await?
                .ok()?;
            if opts.json {
                return print(&v).map(|()| ExitCode::SUCCESS);
            }
            println!(
                "{} {}  owner {}  status {}  tasks {}",
                style::bold("agent"),
                v["agent"].as_str().unwrap_or(""),
                v["owner"].as_str().unwrap_or(""),
                v["status"].as_str().unwrap_or(""),
                v["tasks"]
            );
            println!(
                "  {:<28} {:<8} {:>8} {:>8} {:>8} {:>9}",
                "tool", "action", "granted", "allowed", "denied", "approval"
            );
            for p in v["pairs"].as_array().into_iter().flatten() {
                println!(
                    "  {:<28} {:<8} {:>8} {:>8} {:>8} {:>9}",
                    p["tool"].as_str().unwrap_or(""),
                    p["action"].as_str().unwrap_or(""),
                    p["granted_in_tasks"],
                    p["allowed"],
                    p["denied"],
                    p["approval_required"]
                );
            }
            println!("{}", style::bold("Least-privilege recommendations"));
            let recs = v["recommendations"].as_array().cloned().unwrap_or_default();
            if recs.is_empty() {
                println!("  none: everything granted was used");
            }
            for r in recs {
                println!("  - {}", r.as_str().unwrap_or(""));
            }
            println!("{}", style::bold("Approvals"));
            for a in v["approvals"].as_array().into_iter().flatten() {
                println!("  {}", one_line(a));
            }
            println!("{}", style::bold("Break-glass"));
            for b in v["break_glass"].as_array().into_iter().flatten() {
                println!("  {}", break_glass_line(b));
            }
        }
        ReportCmd::Controls { status, opts } => {
            let mut v = opts
                .client()?
                .get("/v1/reports/controls", Some(opts.reader()?))
                .await?
                .ok()?;
            if let Some(want) = &status
                && let Some(rows) = v["controls"].as_array_mut()
            {
                rows.retain(|r| r["status"].as_str() == Some(want.as_str()));
            }
            if opts.json {
                return print(&v).map(|()| ExitCode::SUCCESS);
            }
            println!(
                "{} bundle {}  {}",
                style::bold("Controls"),
                v["bundle_version"].as_str().unwrap_or(""),
                v["summary"]
            );
            let mut framework = "";
            for r in v["controls"].as_array().into_iter().flatten() {
                let f = r["framework"].as_str().unwrap_or("");
                if f != framework {
                    println!("\n{}", style::bold(f));
                    framework = f;
                }
                let st = r["status"].as_str().unwrap_or("");
                let mark = match st {
                    "implemented" => style::green(st),
                    "gap" => style::red(st),
                    _ => st.to_owned(),
                };
                println!(
                    "  {:<10} {:<52} {mark}",
                    r["id"].as_str().unwrap_or(""),
                    r["title"].as_str().unwrap_or("")
                );
                for e in r["evidence"].as_array().into_iter().flatten() {
                    println!("      + {}", e.as_str().unwrap_or(""));
                }
                for g in r["gaps"].as_array().into_iter().flatten() {
                    println!("      - {}", g.as_str().unwrap_or(""));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

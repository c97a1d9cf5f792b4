//! `mandate tools`: MCP tool definitions Mandate has pinned, and approving held ones.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use serde_json::json;

use crate::cmd::{ServerOpts, print};

#[derive(Debug, Subcommand)]
pub enum ToolsCmd {
    /// Tools held until an admin approves them: new, changed or shadowing definitions.
    Pending {
        /// Print every pin, not only the held ones.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        opts: ServerOpts,
    },
    /// Approve the reviewed definition of a held tool; it becomes callable. Without
    /// --digest, the definition held now is printed (stderr) and that one is approved; if
    /// the server shows another before the approval lands, it is refused.
    Approve {
        /// The MCP server (as in the gateway configuration).
        #[arg(value_name = "SERVER")]
        mcp_server: String,
        /// The tool's name on that server.
        tool: String,
        /// The digest of the definition you reviewed (from `mandate tools pending`).
        #[arg(long)]
        digest: Option<String>,
        #[command(flatten)]
        opts: ServerOpts,
    },
}

pub async fn tools(c: ToolsCmd) -> Result<ExitCode> {
    match c {
        ToolsCmd::Pending { all, opts } => {
            let v = opts
                .client()?
                .get("/v1/tools/pins", Some(opts.admin()?))
                .await?
                .ok()?;
            let shown: Vec<_> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| all || p["status"] == "pending")
                .cloned()
                .collect();
            print(&json!(shown))?;
        }
        ToolsCmd::Approve {
            mcp_server,
            tool,
            digest,
            opts,
        } => {
            let client = opts.client()?;
            let digest = match digest {
                Some(d) => d,
                None => {
                    let pins = client
                        .get("/v1/tools/pins", Some(opts.admin()?))
                        .await?
                        .ok()?;
                    let pin = pins
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| p["server"] == mcp_server.as_str() && p["tool"] == tool.as_str())
                        .with_context(|| format!("no pinned tool {tool} on server {mcp_server}"))?;
                    eprintln!(
                        "approving this definition of {tool} on {mcp_server} ({}):\n{}",
                        pin["reason"].as_str().unwrap_or(""),
                        pin["definition"].as_str().unwrap_or("")
                    );
                    pin["digest"].as_str().unwrap_or_default().to_owned()
                }
            };
            let v = client
                .post(
                    "/v1/tools/approve",
                    Some(opts.admin()?),
                    &json!({ "server": mcp_server, "tool": tool, "digest": digest }),
                )
                .await?
                .ok()?;
            print(&v)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `mandate tools`: MCP tool definitions Mandate has pinned, and approving held ones.

use std::process::ExitCode;

use anyhow::Result;
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
    /// Approve the definition a server shows now for a held tool; it becomes callable.
    Approve {
        /// The MCP server (as in the gateway configuration).
        #[arg(value_name = "SERVER")]
        mcp_server: String,
        /// The tool's name on that server.
        tool: String,
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
            opts,
        } => {
            let v = opts
                .client()?
                .post(
                    "/v1/tools/approve",
                    Some(opts.admin()?),
                    &json!({ "server": mcp_server, "tool": tool }),
                )
                .await?
                .ok()?;
            print(&v)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

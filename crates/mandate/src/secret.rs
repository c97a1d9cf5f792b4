//! `mandate secret`: upstream credentials, sealed by the server, never printed.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::json;

use crate::cmd::{ServerOpts as AdminOpts, print};

#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Store or replace a secret. The value is read from a file, an environment variable
    /// or standard input (never from the command line, where `ps` would show it).
    Put {
        /// Name upstream credentials refer to (1-64 of [a-z0-9._-]).
        name: String,
        /// Read the value from this file (trailing newline trimmed).
        #[arg(long, conflicts_with = "from_env")]
        value_file: Option<PathBuf>,
        /// Read the value from this environment variable.
        #[arg(long)]
        from_env: Option<String>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// List secrets: names, descriptions and sealing keys, never values.
    List {
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Re-read the master key ring and re-seal every secret under its first key.
    Rotate {
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Delete a secret; upstreams using it fail closed.
    Delete {
        name: String,
        #[command(flatten)]
        opts: AdminOpts,
    },
}

fn read_value(file: Option<PathBuf>, env: Option<String>) -> Result<String> {
    let raw = match (file, env) {
        (Some(f), _) => std::fs::read_to_string(&f)
            .with_context(|| format!("reading the secret from {}", f.display()))?,
        (None, Some(var)) => {
            std::env::var(&var).with_context(|| format!("environment variable {var} is not set"))?
        }
        (None, None) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the secret from standard input")?;
            s
        }
    };
    let v = raw.trim_end_matches(['\n', '\r']).to_owned();
    if v.is_empty() {
        bail!("the secret value is empty");
    }
    Ok(v)
}

pub async fn secret(c: SecretCmd) -> Result<ExitCode> {
    match c {
        SecretCmd::Put {
            name,
            value_file,
            from_env,
            description,
            opts,
        } => {
            let value = read_value(value_file, from_env)?;
            let v = opts
                .client()?
                .put(
                    &format!("/v1/secrets/{name}"),
                    Some(opts.admin()?),
                    &json!({ "value": value, "description": description }),
                )
                .await?
                .ok()?;
            print(&v)?;
        }
        SecretCmd::List { opts } => print(
            &opts
                .client()?
                .get("/v1/secrets", Some(opts.admin()?))
                .await?
                .ok()?,
        )?,
        SecretCmd::Rotate { opts } => print(
            &opts
                .client()?
                .post("/v1/secrets/rotate", Some(opts.admin()?), &json!({}))
                .await?
                .ok()?,
        )?,
        SecretCmd::Delete { name, opts } => {
            opts.client()?
                .delete(&format!("/v1/secrets/{name}"), Some(opts.admin()?))
                .await?
                .ok()?;
            println!("secret {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! The gateway's configuration file (`gateway.toml`): upstreams, their credentials, the
//! route table and the limits. Read in two phases: [`RawGatewayConfig`] as written (every
//! table denies unknown fields), then [`GatewayConfig`], validated and typed.

use std::collections::BTreeMap;

use mandate_core::{ActionClass, DataDomain, Destination, Sensitivity, ToolName};
use serde::Deserialize;

use crate::routes::{PathPattern, Route};

/// Why a configuration was refused. Each message names the offending entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gateway config: {0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// As written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatewayConfig {
    /// Bounds.
    #[serde(default)]
    pub limits: GatewayLimits,
    /// Where `vault://` references are read.
    #[serde(default)]
    pub vault: Option<VaultConfig>,
    /// Upstreams.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<RawUpstream>,
    /// Routes.
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
    /// MCP servers, reached at `/mcp/<name>`.
    #[serde(default, rename = "mcp_server")]
    pub mcp_servers: Vec<crate::mcp::RawMcpServer>,
}

/// A HashiCorp Vault / OpenBao server holding KV v2 secrets.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// e.g. `http://127.0.0.1:8200`.
    pub address: String,
    /// A file holding the Vault token (read at start; never logged). Without it,
    /// `VAULT_TOKEN` from the environment.
    #[serde(default)]
    pub token_file: Option<String>,
    /// Permit a loopback or private address (a dev server on this machine).
    #[serde(default)]
    pub allow_private: bool,
}

/// Every bound the gateway enforces (S4).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayLimits {
    /// Largest request body forwarded, in bytes; larger gets 413 before any upstream
    /// connection.
    pub max_request_body_bytes: usize,
    /// Largest response accepted from an upstream, in bytes; the stream is cut beyond.
    pub max_response_bytes: u64,
    /// Longest a response may take to relay, in seconds; the stream is cut beyond (each
    /// read is also bounded by `upstream_timeout_secs`).
    pub max_response_secs: u64,
    /// Time allowed to read the whole request body, in seconds.
    pub request_body_timeout_secs: u64,
    /// Time allowed for the upstream to answer (headers), in seconds.
    pub upstream_timeout_secs: u64,
    /// Time allowed to connect to the upstream, in seconds.
    pub connect_timeout_secs: u64,
    /// Calls per second one agent may make through the gateway (sustained).
    pub agent_rate_per_sec: u32,
    /// Burst above that rate one agent may make.
    pub agent_burst: u32,
    /// Calls per second one task may make (sustained).
    pub task_rate_per_sec: u32,
    /// Burst above that rate one task may make.
    pub task_burst: u32,
    /// Most calls in flight through the gateway at once; beyond, 503.
    pub max_in_flight: usize,
    /// Most calls one agent may have in flight at once (a response being relayed counts);
    /// beyond, 429, so one agent cannot take every slot.
    pub max_in_flight_per_agent: usize,
    /// Most MCP server sessions open at once over all servers (one per server and task;
    /// a stdio server runs one process per session); beyond, the call is refused with
    /// `mcp_sessions_exhausted` before anything is started.
    pub max_mcp_sessions: usize,
    /// Most of those one agent may hold at once.
    pub max_mcp_sessions_per_agent: usize,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            max_response_secs: 300,
            request_body_timeout_secs: 10,
            upstream_timeout_secs: 30,
            connect_timeout_secs: 5,
            agent_rate_per_sec: 100,
            agent_burst: 200,
            task_rate_per_sec: 50,
            task_burst: 100,
            max_in_flight: 1024,
            max_in_flight_per_agent: 64,
            max_mcp_sessions: 256,
            max_mcp_sessions_per_agent: 16,
        }
    }
}

/// An upstream as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Name used in gateway URLs: `/gw/<name>/...`.
    pub name: String,
    /// Base URL requests are forwarded under.
    pub base_url: String,
    /// Hosts (`host` or `host:port`) this upstream may reach; default: the base URL's.
    #[serde(default)]
    pub allowed_destinations: Vec<String>,
    /// Permit loopback, private and link-local addresses (never cloud metadata ones).
    #[serde(default)]
    pub allow_private: bool,
    /// Responses carry untrusted content (web pages, mail, tickets): the task is tainted.
    #[serde(default)]
    pub untrusted: bool,
    /// Request headers forwarded besides the standard content-negotiation ones.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// The credential injected into every forwarded request.
    #[serde(default)]
    pub credential: Option<Credential>,
}

/// How the upstream's credential is injected.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// A secret's name in Mandate's store, or `vault://<mount>/<path>#<field>`.
    pub secret: String,
    /// bearer | header | basic (`user:password`).
    pub kind: CredentialKind,
    /// The header name, for `kind = "header"`.
    #[serde(default)]
    pub header: Option<String>,
}

/// How a credential travels.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<header>: <secret>`.
    Header,
    /// `Authorization: Basic base64(<secret>)`, the secret being `user:password`.
    Basic,
}

/// A route as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The upstream it belongs to.
    pub upstream: String,
    /// HTTP method.
    pub method: String,
    /// Path pattern under the upstream: `/tickets/{id}`, `/files/{*path}`.
    pub path: String,
    /// The tool the call is decided as.
    pub tool: String,
    /// Action class; default from the method (GET/HEAD read, POST/PUT/PATCH write,
    /// DELETE delete).
    #[serde(default)]
    pub action: Option<ActionClass>,
    /// The data domain the route touches.
    #[serde(default)]
    pub data_domain: Option<String>,
    /// Sensitivity of its data.
    #[serde(default)]
    pub sensitivity: Option<Sensitivity>,
}

/// A validated upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its name.
    pub name: String,
    /// Base URL (scheme, host, port, path prefix).
    pub base: url::Url,
    /// The destination policy sees (the base URL's `host[:port]`).
    pub destination: Destination,
    /// Hosts it may reach.
    pub allowed_destinations: Vec<Destination>,
    /// Loopback and private addresses permitted.
    pub allow_private: bool,
    /// Responses taint the task.
    pub untrusted: bool,
    /// Extra request headers forwarded (lowercase).
    pub forward_headers: Vec<String>,
    /// Injected credential.
    pub credential: Option<Credential>,
    /// Its routes, in file order (first match wins).
    pub routes: Vec<Route>,
}

/// The validated configuration.
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// Bounds.
    pub limits: GatewayLimits,
    /// Vault, when any credential is a `vault://` reference.
    pub vault: Option<VaultConfig>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Upstream>,
    /// MCP servers by name.
    pub mcp_servers: BTreeMap<String, crate::mcp::McpServer>,
}

/// Headers that may never be configured for forwarding: credentials, hop-by-hop, and
/// Mandate's own.
const NEVER_FORWARDED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
];

impl GatewayConfig {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawGatewayConfig = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        Self::validate(raw)
    }

    /// Validates a configuration as written.
    pub fn validate(raw: RawGatewayConfig) -> Result<Self, ConfigError> {
        let l = &raw.limits;
        if l.max_request_body_bytes == 0
            || l.max_in_flight == 0
            || l.max_in_flight_per_agent == 0
            || l.agent_rate_per_sec == 0
            || l.task_rate_per_sec == 0
            || l.upstream_timeout_secs == 0
            || l.request_body_timeout_secs == 0
            || l.connect_timeout_secs == 0
            || l.max_response_secs == 0
            || l.max_mcp_sessions == 0
            || l.max_mcp_sessions_per_agent == 0
        {
            return Err(err(
                "limits must be positive (a zero limit would refuse every call)",
            ));
        }
        let mut upstreams = BTreeMap::new();
        for u in raw.upstreams {
            let up = upstream(u)?;
            if upstreams.contains_key(&up.name) {
                return Err(err(format!("upstream {:?} is defined twice", up.name)));
            }
            upstreams.insert(up.name.clone(), up);
        }
        let needs_vault = upstreams.values().any(|u| {
            u.credential
                .as_ref()
                .is_some_and(|c| c.secret.starts_with("vault://"))
        });
        if needs_vault && raw.vault.is_none() {
            return Err(err(
                "a credential is a vault:// reference but there is no [vault] table",
            ));
        }
        for r in raw.routes {
            let Some(up) = upstreams.get_mut(&r.upstream) else {
                return Err(err(format!(
                    "route {} {} names unknown upstream {:?}",
                    r.method, r.path, r.upstream
                )));
            };
            up.routes.push(route(r)?);
        }
        let mut mcp_servers = BTreeMap::new();
        for m in raw.mcp_servers {
            let m = crate::mcp::validate(m)?;
            if mcp_servers.contains_key(&m.name) {
                return Err(err(format!("mcp_server {:?} is defined twice", m.name)));
            }
            mcp_servers.insert(m.name.clone(), m);
        }
        Ok(Self {
            limits: raw.limits,
            vault: raw.vault,
            upstreams,
            mcp_servers,
        })
    }
}

fn upstream(u: RawUpstream) -> Result<Upstream, ConfigError> {
    let name_ok = !u.name.is_empty()
        && u.name.len() <= 64
        && u.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        return Err(err(format!(
            "upstream name {:?} must be 1-64 of [a-z0-9_-]",
            u.name
        )));
    }
    let base = url::Url::parse(&u.base_url).map_err(|e| {
        err(format!(
            "upstream {}: base_url {:?}: {e}",
            u.name, u.base_url
        ))
    })?;
    if !matches!(base.scheme(), "http" | "https")
        || base.query().is_some()
        || base.fragment().is_some()
        || !base.username().is_empty()
        || base.password().is_some()
    {
        return Err(err(format!(
            "upstream {}: base_url must be http(s) with no credentials, query or fragment",
            u.name
        )));
    }
    let destination = destination_of(&base)
        .ok_or_else(|| err(format!("upstream {}: base_url has no usable host", u.name)))?;
    let mut allowed = Vec::new();
    for d in &u.allowed_destinations {
        allowed.push(
            Destination::parse(d)
                .map_err(|e| err(format!("upstream {}: allowed destination: {e}", u.name)))?,
        );
    }
    if allowed.is_empty() {
        allowed.push(destination.clone());
    } else if !allowed.contains(&destination) {
        return Err(err(format!(
            "upstream {}: its base URL's host {destination} is not among its allowed_destinations",
            u.name
        )));
    }
    let mut forward_headers = Vec::new();
    for h in u.forward_headers {
        let h = h.to_ascii_lowercase();
        if NEVER_FORWARDED.contains(&h.as_str()) || h.starts_with("x-mandate-") {
            return Err(err(format!(
                "upstream {}: header {h:?} is never forwarded",
                u.name
            )));
        }
        forward_headers.push(h);
    }
    if let Some(c) = &u.credential {
        match (c.kind, &c.header) {
            (CredentialKind::Header, Some(h)) if valid_header_name(h) => {}
            (CredentialKind::Header, _) => {
                return Err(err(format!(
                    "upstream {}: a header credential needs a valid `header` name",
                    u.name
                )));
            }
            (_, Some(_)) => {
                return Err(err(format!(
                    "upstream {}: `header` applies only to kind = \"header\"",
                    u.name
                )));
            }
            _ => {}
        }
        if c.secret.starts_with("vault://") {
            crate::VaultRef::parse(&c.secret)
                .map_err(|e| err(format!("upstream {}: {e}", u.name)))?;
        } else if c.secret.is_empty() {
            return Err(err(format!(
                "upstream {}: credential names no secret",
                u.name
            )));
        }
    }
    Ok(Upstream {
        name: u.name,
        base,
        destination,
        allowed_destinations: allowed,
        allow_private: u.allow_private,
        untrusted: u.untrusted,
        forward_headers,
        credential: u.credential,
        routes: Vec::new(),
    })
}

fn valid_header_name(h: &str) -> bool {
    let lower = h.to_ascii_lowercase();
    !h.is_empty()
        && h.len() <= 64
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !NEVER_FORWARDED.contains(&lower.as_str())
        && !lower.starts_with("x-mandate-")
}

/// `host[:port]` of a URL, the port only when it is not the scheme's default.
pub fn destination_of(url: &url::Url) -> Option<Destination> {
    let host = url.host_str()?;
    let text = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    Destination::parse(&text).ok()
}

fn route(r: RawRoute) -> Result<Route, ConfigError> {
    let where_ = format!("route {} {}", r.method, r.path);
    let method = r.method.to_ascii_uppercase();
    let action = match (r.action, method.as_str()) {
        (Some(a), _) => a,
        (None, "GET" | "HEAD") => ActionClass::Read,
        (None, "POST" | "PUT" | "PATCH") => ActionClass::Write,
        (None, "DELETE") => ActionClass::Delete,
        (None, other) => {
            return Err(err(format!(
                "{where_}: method {other} has no default action class; set `action`"
            )));
        }
    };
    if !matches!(
        method.as_str(),
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
    ) {
        return Err(err(format!("{where_}: unsupported method")));
    }
    let tool = ToolName::parse(&r.tool).map_err(|e| err(format!("{where_}: tool: {e}")))?;
    let data_domain: Option<DataDomain> = r
        .data_domain
        .map(|d| DataDomain::parse(&d))
        .transpose()
        .map_err(|e| err(format!("{where_}: data_domain: {e}")))?;
    let pattern = PathPattern::parse(&r.path).map_err(|e| err(format!("{where_}: {e}")))?;
    Ok(Route {
        method,
        pattern,
        tool,
        action,
        data_domain,
        sensitivity: r.sensitivity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[limits]
max_request_body_bytes = 1000

[[upstream]]
name = "tickets"
base_url = "http://127.0.0.1:9000/api"
allow_private = true
credential = { secret = "tickets-token", kind = "bearer" }

[[route]]
upstream = "tickets"
method = "GET"
path = "/tickets/{id}"
tool = "tickets.get"
data_domain = "support-tickets"

[[route]]
upstream = "tickets"
method = "delete"
path = "/tickets/{id}"
tool = "tickets.delete"
"#;

    #[test]
    fn a_good_config() {
        let c = GatewayConfig::from_toml(GOOD).unwrap_or_default();
        let up = c.upstreams.get("tickets");
        assert_eq!(up.map(|u| u.destination.as_str()), Some("127.0.0.1:9000"));
        assert_eq!(up.map(|u| u.routes.len()), Some(2));
        assert_eq!(
            up.and_then(|u| u.routes.get(1)).map(|r| r.action),
            Some(ActionClass::Delete)
        );
        assert_eq!(c.limits.max_request_body_bytes, 1000);
        assert_eq!(c.limits.task_burst, GatewayLimits::default().task_burst);
    }

    #[test]
    fn refused_configs() {
        for (text, why) in [
            ("[[upstream]]\nname='a'\nbase_url='ftp://x'", "http(s)"),
            (
                "[[upstream]]\nname='a'\nbase_url='http://u:p@x'",
                "no credentials",
            ),
            (
                "[[upstream]]\nname='A b'\nbase_url='http://x'",
                "[a-z0-9_-]",
            ),
            (
                "[[upstream]]\nname='a'\nbase_url='http://x'\nallowed_destinations=['y']",
                "not among",
            ),
            (
                "[[upstream]]\nname='a'\nbase_url='http://x'\nforward_headers=['Cookie']",
                "never forwarded",
            ),
            (
                "[[upstream]]\nname='a'\nbase_url='http://x'\ncredential={secret='s',kind='header'}",
                "valid `header`",
            ),
            (
                "[[upstream]]\nname='a'\nbase_url='http://x'\ncredential={secret='vault://kv/a#b',kind='bearer'}",
                "[vault]",
            ),
            (
                "[[upstream]]\nname='a'\nbase_url='http://x'\ncredential={secret='vault://kv',kind='bearer'}",
                "vault://",
            ),
            (
                "[[route]]\nupstream='nope'\nmethod='GET'\npath='/'\ntool='t.x'",
                "unknown upstream",
            ),
            (
                "[[upstream]]\nname='a'\nbase_url='http://x'\n[[route]]\nupstream='a'\nmethod='TRACE'\npath='/'\ntool='t.x'",
                "action",
            ),
            (
                "[[upstream]]\nname='a'\nbase_url='http://x'\n[[route]]\nupstream='a'\nmethod='GET'\npath='/a/../b'\ntool='t.x'",
                "dot",
            ),
            ("[limits]\nagent_rate_per_sec = 0", "positive"),
            ("[limits]\nmax_response_secs = 0", "positive"),
            ("[limits]\nsurprise = 1", "unknown field"),
            (
                "[[upstream]]\nname='a'\nbase_url='http://x'\n[[upstream]]\nname='a'\nbase_url='http://y'",
                "twice",
            ),
        ] {
            match GatewayConfig::from_toml(text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => assert!(e.to_string().contains(why), "{text}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod example {
    /// The example shipped in the repository stays valid.
    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../examples/gateway/gateway.toml");
        let c = super::GatewayConfig::from_toml(text);
        assert!(c.is_ok(), "{c:?}");
        assert_eq!(c.as_ref().map(|c| c.upstreams.len()).ok(), Some(1));
        assert_eq!(c.map(|c| c.mcp_servers.len()).ok(), Some(1));
    }
}

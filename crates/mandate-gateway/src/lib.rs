//! Building blocks of Mandate's enforcement point, free of IO so each is tested (and
//! fuzzed) alone: the gateway configuration ([`config`]), request canonicalisation
//! ([`path`]), the route table ([`routes`]), the SSRF destination guard ([`guard`]),
//! secret sealing and Vault references ([`seal`]), redaction of secrets from responses
//! ([`redact`]) and per-agent/per-task rate limits ([`ratelimit`]).
//!
//! Invariants:
//! - What is canonicalised here is what the gateway decides on and what it forwards: an
//!   input that two parsers could read differently is refused, never "fixed".
//! - Secret material never appears in `Debug` output or error messages.

pub mod config;
pub mod guard;
pub mod mcp;
pub mod path;
pub mod ratelimit;
pub mod redact;
pub mod routes;
pub mod seal;

pub use config::{Credential, CredentialKind, GatewayConfig, GatewayLimits, Upstream};
pub use path::{CanonicalPath, CanonicalQuery, PathError};
pub use redact::Redactor;
pub use routes::Route;
pub use seal::{KeyRing, SealError, SecretValue, VaultRef};

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// An agent name broke the naming rule.
    #[error(
        "agent name {0:?} is invalid: use 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
    )]
    AgentName(String),
    /// A trust domain broke the naming rule.
    #[error(
        "trust domain {0:?} is invalid: use a lowercase DNS-style name (a-z, 0-9, '-', '.'), at most 255 characters"
    )]
    TrustDomain(String),
    /// A SPIFFE ID could not be parsed.
    #[error("spiffe id {0:?} is invalid: expected spiffe://<trust-domain>/agent/<name>")]
    SpiffeId(String),
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
}

/// An agent's registered name: the last segment of its SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
pub struct AgentName(String);

impl AgentName {
    /// Parses a name, refusing anything outside `[a-z0-9][a-z0-9._-]{0,62}`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if first_ok && s.len() <= 63 && s.chars().all(is_name_char) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::AgentName(s.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<AgentName> for String {
    fn from(n: AgentName) -> String {
        n.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE trust domain, e.g. `mandate.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain (lowercase letters, digits, `-` and `.`).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && !s.starts_with('.')
            && !s.ends_with('.')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::TrustDomain(s.to_owned()))
        }
    }

    /// The domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    /// `mandate.local`.
    fn default() -> Self {
        Self("mandate.local".to_owned())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent's workload identity: `spiffe://<trust-domain>/agent/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    agent: AgentName,
}

impl SpiffeId {
    /// The identity of `agent` in `trust_domain`.
    pub fn for_agent(trust_domain: TrustDomain, agent: AgentName) -> Self {
        Self {
            trust_domain,
            agent,
        }
    }

    /// Parses `spiffe://<trust-domain>/agent/<name>`; any other shape is refused.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = || IdError::SpiffeId(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(err)?;
        let (td, path) = rest.split_once('/').ok_or_else(err)?;
        let name = path.strip_prefix("agent/").ok_or_else(err)?;
        Ok(Self {
            trust_domain: TrustDomain::parse(td).map_err(|_| err())?,
            agent: AgentName::parse(name).map_err(|_| err())?,
        })
    }

    /// Checks any workload SPIFFE ID (`spiffe://<trust-domain>/<path>`, per the SPIFFE ID
    /// specification: a non-empty path of segments of letters, digits, `.`, `-` and `_`,
    /// none empty, `.` or `..`; no query, fragment, port or user info; at most 2048 bytes)
    /// and returns its trust domain. Used for workloads outside Mandate's own naming.
    pub fn parse_any(s: &str) -> Result<TrustDomain, IdError> {
        let err = || IdError::SpiffeId(s.to_owned());
        if s.len() > 2048 {
            return Err(err());
        }
        let rest = s.strip_prefix("spiffe://").ok_or_else(err)?;
        let (td, path) = rest.split_once('/').ok_or_else(err)?;
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        };
        if !path.split('/').all(segment_ok) {
            return Err(err());
        }
        TrustDomain::parse(td).map_err(|_| err())
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The agent name part.
    pub fn agent(&self) -> &AgentName {
        &self.agent
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/agent/{}", self.trust_domain, self.agent)
    }
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// Invariant: a failing system RNG leaves no usable identifier, so callers get an error
/// rather than a predictable value.
fn fill_random(buf: &mut [u8]) -> Result<(), aws_lc_rs::error::Unspecified> {
    SystemRandom::new().fill(buf)
}

/// The system random number generator failed: nothing that needed an identifier happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RngFailed;

/// Where identifiers (decision, task, approval, token ids) come from: injected beside the
/// clock, so tests and golden files can fix them.
pub trait IdGen: std::fmt::Debug + Send + Sync {
    /// A fresh identifier `<prefix>_<suffix>`, never handed out before by this generator.
    fn id(&self, prefix: &str) -> Result<String, RngFailed>;
}

/// Identifiers carrying 128 random bits each ([`random_id`]): the production generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomIds;

impl IdGen for RandomIds {
    fn id(&self, prefix: &str) -> Result<String, RngFailed> {
        random_id(prefix).map_err(|_| RngFailed)
    }
}

/// Identifiers `<prefix>_<n>` counting up from 1, zero-padded to 22 digits: for tests.
/// Predictable, so never for production (token ids must not be guessable).
#[derive(Debug, Default)]
pub struct SequentialIds(std::sync::atomic::AtomicU64);

impl IdGen for SequentialIds {
    fn id(&self, prefix: &str) -> Result<String, RngFailed> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        Ok(format!("{prefix}_{n:022}"))
    }
}

/// A fresh identifier `<prefix>_<22 url-safe characters>` carrying 128 random bits.
pub fn random_id(prefix: &str) -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut buf = [0u8; 16];
    fill_random(&mut buf)?;
    Ok(format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(buf)))
}

/// A fresh bearer secret `<prefix>_<43 url-safe characters>` carrying 256 random bits.
pub fn random_secret(prefix: &str) -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut buf = [0u8; 32];
    fill_random(&mut buf)?;
    Ok(format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(buf)))
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names() {
        for ok in ["a", "ticket-bot", "a.b_c-1", "0agent"] {
            assert!(AgentName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-a", "A", "a/b", "a b", "ä", long.as_str(), "..%2f"] {
            assert!(AgentName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workload_spiffe_ids() {
        let td = SpiffeId::parse_any("spiffe://prod.example/ns/web/sa/api_v1").unwrap();
        assert_eq!(td.as_str(), "prod.example");
        for bad in [
            "spiffe://prod.example",
            "spiffe://prod.example/",
            "spiffe://prod.example/a//b",
            "spiffe://prod.example/a/../b",
            "spiffe://prod.example/a/./b",
            "spiffe://prod.example/a?x=1",
            "spiffe://prod.example/a#f",
            "spiffe://Prod.example/a",
            "spiffe://user@prod.example/a",
            "spiffe://prod.example:443/a",
            "https://prod.example/a",
            "spiffe://prod.example/a/",
        ] {
            assert!(SpiffeId::parse_any(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spiffe_round_trip() {
        let id = SpiffeId::parse("spiffe://mandate.local/agent/bot-1").unwrap();
        assert_eq!(id.to_string(), "spiffe://mandate.local/agent/bot-1");
        for bad in [
            "spiffe://mandate.local/bot",
            "https://mandate.local/agent/x",
            "spiffe://Mandate/agent/x",
            "spiffe://m/agent/x/y",
            "spiffe:///agent/x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_ids_differ() {
        let a = random_id("tsk").unwrap();
        let b = random_id("tsk").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("tsk_") && a.len() == 4 + 22);
    }

    #[test]
    fn sha256_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

//! Workload identity from the platforms agents run on (R1): tokens from external OIDC
//! issuers (Kubernetes service accounts, GitHub Actions, GitLab, cloud workload identity)
//! and JWT-SVIDs from trusted SPIFFE trust domains attest an agent, without any secret
//! shared with Mandate.
//!
//! Trust is configured, never discovered from a token: each source names its issuer (or
//! trust domain), the one audience its tokens must carry and the algorithms allowed. Keys
//! come from the issuer's discovery document and JWKS (or the SPIFFE bundle), cached and
//! refreshed on an unknown `kid` at a bounded rate. A verified token maps to a registered
//! agent only through that agent's attestation rule, and to exactly one: none or several
//! is a refusal. A token that carries a `jti` attests once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mandate_audit::{Body, ExternalSubject, NewEvent, Refused};
use mandate_core::{AgentName, AgentStatus, AttestationRule, SpiffeId, TrustDomain};
use mandate_store::AgentRecord;
use mandate_token::TokenError;
use mandate_token::external::{self, Policy, Verified};
use mandate_token::jwk::{Alg, PublicJwk, parse_jwks};
use serde::Deserialize;

use crate::agents::AttestResponse;
use crate::engine::Engine;
use crate::error::{Error, Kind};
use crate::sync::lock;

/// Largest discovery document, JWKS or bundle read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Keys that could not be refreshed for this long are dropped: an issuer that withdrew a
/// key while unreachable is not trusted with it forever (its tokens then fail closed).
const STALE_KEYS_MS: i64 = 24 * 3600 * 1000;

/// The identity configuration (`mandate serve --identity FILE`, TOML).
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Trusted sources, in the order configured.
    pub sources: Vec<Source>,
    /// Least time between two key refreshes of one source caused by unknown `kid`s.
    pub refresh_min_interval_secs: i64,
    /// Keys older than this are fetched again before use (a failed fetch keeps them).
    pub keys_max_age_secs: i64,
    /// Enforcement points (AuthZEN and ext_authz callers) that authenticate themselves;
    /// when any is configured, those entry points require one.
    pub points: Vec<EnforcementPoint>,
}

/// An enforcement point Mandate does not run (an API gateway, Envoy, a service mesh), known
/// by the SHA-256 of the token it presents.
#[derive(Clone)]
pub struct EnforcementPoint {
    /// Recorded with every decision it asks for.
    pub name: String,
    /// SHA-256 of its token, lowercase hex.
    pub token_sha256: String,
}

impl std::fmt::Debug for EnforcementPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnforcementPoint")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One trusted issuer of workload tokens.
#[derive(Debug, Clone)]
pub struct Source {
    /// The name attestation rules use (`issuer` of an `oidc` rule).
    pub name: String,
    /// Where its tokens come from.
    pub kind: SourceKind,
    /// The one audience its tokens must be for.
    pub audience: String,
    /// Signature algorithms accepted.
    pub algs: Vec<Alg>,
    /// `iat` required and no older than this, when set.
    pub max_token_age_secs: Option<i64>,
    /// A token with a `jti` attests once.
    pub one_time_jti: bool,
}

/// An OIDC issuer or a SPIFFE trust domain.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// An OIDC issuer: `iss` must equal `issuer`; keys from discovery or `jwks_uri`.
    Oidc {
        /// The issuer URL, exactly as its tokens carry it.
        issuer: String,
        /// The JWKS location, when discovery is not used.
        jwks_uri: Option<String>,
    },
    /// A SPIFFE trust domain: `sub` must be a SPIFFE ID in it; keys from its bundle.
    Spiffe {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// Where the bundle is read.
        bundle: BundleFrom,
    },
}

/// Where a SPIFFE bundle comes from.
#[derive(Debug, Clone)]
pub enum BundleFrom {
    /// A file holding the bundle (a JWKS with `use: jwt-svid` keys), read again on refresh.
    File(PathBuf),
    /// A SPIFFE bundle endpoint (`https_web` profile).
    Endpoint(String),
}

impl Source {
    /// `oidc:<name>` or `spiffe:<name>`, as recorded.
    pub fn label(&self) -> String {
        match self.kind {
            SourceKind::Oidc { .. } => format!("oidc:{}", self.name),
            SourceKind::Spiffe { .. } => format!("spiffe:{}", self.name),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    oidc: Vec<RawOidc>,
    #[serde(default)]
    spiffe: Vec<RawSpiffe>,
    refresh_min_interval_secs: Option<i64>,
    keys_max_age_secs: Option<i64>,
    #[serde(default)]
    enforcement_point: Vec<RawPoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    name: String,
    token_sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    name: String,
    issuer: String,
    audience: String,
    algorithms: Option<Vec<String>>,
    jwks_uri: Option<String>,
    max_token_age_secs: Option<i64>,
    one_time_jti: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpiffe {
    name: String,
    trust_domain: String,
    audience: String,
    bundle_file: Option<PathBuf>,
    bundle_endpoint: Option<String>,
    algorithms: Option<Vec<String>>,
    max_token_age_secs: Option<i64>,
    one_time_jti: Option<bool>,
}

/// An `https` URL, or `http` to a loopback host (a local issuer in development and tests).
/// No user info, query or fragment.
pub fn fetchable_url(what: &str, raw: &str) -> Result<(), String> {
    let u = url::Url::parse(raw).map_err(|e| format!("{what} {raw:?} is not a URL: {e}"))?;
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match u.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(format!(
                "{what} {raw:?} must be https (http only to a loopback host)"
            ));
        }
    }
    if !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
        return Err(format!(
            "{what} {raw:?} must not carry user info or a fragment"
        ));
    }
    Ok(())
}

fn algorithms(raw: Option<Vec<String>>, default: &[Alg], name: &str) -> Result<Vec<Alg>, String> {
    let Some(raw) = raw else {
        return Ok(default.to_vec());
    };
    if raw.is_empty() {
        return Err(format!("source {name}: algorithms must not be empty"));
    }
    raw.iter()
        .map(|a| {
            Alg::parse(a).ok_or_else(|| {
                format!("source {name}: algorithm {a:?} is not supported (RS/PS/ES 256-512 or EdDSA; never none or HMAC)")
            })
        })
        .collect()
}

/// A configured name: 1-64 of a-z, 0-9, `-` and `_`.
fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?}: 1-64 of a-z, 0-9, '-' and '_'"
        ))
    }
}

fn positive(v: Option<i64>, default: i64, what: &str) -> Result<i64, String> {
    match v {
        None => Ok(default),
        Some(n) if n > 0 && n <= 86_400 * 30 => Ok(n),
        Some(n) => Err(format!("{what} must be between 1 and 2592000, not {n}")),
    }
}

impl IdentityConfig {
    /// Parses and validates the TOML configuration; unknown fields are refused.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut sources = Vec::new();
        for o in raw.oidc {
            let name = o.name.clone();
            fetchable_url(&format!("oidc {name}: issuer"), &o.issuer)?;
            if let Some(j) = &o.jwks_uri {
                fetchable_url(&format!("oidc {name}: jwks_uri"), j)?;
            }
            sources.push(Source {
                kind: SourceKind::Oidc {
                    issuer: o.issuer,
                    jwks_uri: o.jwks_uri,
                },
                audience: o.audience,
                algs: algorithms(o.algorithms, &[Alg::RS256, Alg::ES256], &name)?,
                max_token_age_secs: Some(positive(
                    o.max_token_age_secs,
                    3600,
                    "max_token_age_secs",
                )?),
                one_time_jti: o.one_time_jti.unwrap_or(true),
                name,
            });
        }
        for s in raw.spiffe {
            let name = s.name.clone();
            let trust_domain = TrustDomain::parse(&s.trust_domain)
                .map_err(|e| format!("spiffe {name}: trust_domain: {e}"))?;
            let bundle = match (s.bundle_file, s.bundle_endpoint) {
                (Some(f), None) => BundleFrom::File(f),
                (None, Some(u)) => {
                    fetchable_url(&format!("spiffe {name}: bundle_endpoint"), &u)?;
                    BundleFrom::Endpoint(u)
                }
                _ => {
                    return Err(format!(
                        "spiffe {name}: give exactly one of bundle_file and bundle_endpoint"
                    ));
                }
            };
            sources.push(Source {
                kind: SourceKind::Spiffe {
                    trust_domain,
                    bundle,
                },
                audience: s.audience,
                algs: algorithms(
                    s.algorithms,
                    &[Alg::ES256, Alg::ES384, Alg::RS256, Alg::PS256],
                    &name,
                )?,
                max_token_age_secs: s
                    .max_token_age_secs
                    .map(|v| positive(Some(v), v, "max_token_age_secs"))
                    .transpose()?,
                one_time_jti: s.one_time_jti.unwrap_or(true),
                name,
            });
        }
        let config = Self {
            sources,
            refresh_min_interval_secs: positive(
                raw.refresh_min_interval_secs,
                30,
                "refresh_min_interval_secs",
            )?,
            keys_max_age_secs: positive(raw.keys_max_age_secs, 3600, "keys_max_age_secs")?,
            points: raw
                .enforcement_point
                .into_iter()
                .map(|p| {
                    let hex = p.token_sha256.to_ascii_lowercase();
                    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!(
                            "enforcement_point {}: token_sha256 must be 64 hex digits (sha256sum of the token)",
                            p.name
                        ));
                    }
                    Ok(EnforcementPoint {
                        name: p.name,
                        token_sha256: hex,
                    })
                })
                .collect::<Result<_, String>>()?,
        };
        config.check()?;
        config.check_points()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        let mut issuers = std::collections::BTreeSet::new();
        for s in &self.sources {
            check_name("source", &s.name)?;
            if !names.insert(s.name.as_str()) {
                return Err(format!("source name {:?} is used twice", s.name));
            }
            if s.audience.is_empty() || s.audience.len() > 512 {
                return Err(format!(
                    "source {}: audience must be 1-512 characters",
                    s.name
                ));
            }
            let key = match &s.kind {
                SourceKind::Oidc { issuer, .. } => format!("iss {issuer}"),
                SourceKind::Spiffe { trust_domain, .. } => format!("td {trust_domain}"),
            };
            if !issuers.insert(key) {
                return Err(format!(
                    "source {}: its issuer or trust domain is configured twice",
                    s.name
                ));
            }
        }
        Ok(())
    }

    fn check_points(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        let mut hashes = std::collections::BTreeSet::new();
        for p in &self.points {
            check_name("enforcement_point", &p.name)?;
            if !names.insert(p.name.as_str()) || !hashes.insert(p.token_sha256.as_str()) {
                return Err(format!(
                    "enforcement_point {:?}: its name or token is configured twice",
                    p.name
                ));
            }
        }
        Ok(())
    }

    /// The source with this name.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }
}

/// The cached keys of one source.
#[derive(Default)]
struct KeyState {
    keys: Option<Arc<Vec<PublicJwk>>>,
    fetched_at_ms: i64,
    last_attempt_ms: Option<i64>,
    last_error: Option<String>,
}

/// Trusted sources with their cached keys.
pub struct Trust {
    config: Arc<IdentityConfig>,
    keys: Vec<(Mutex<KeyState>, tokio::sync::Mutex<()>)>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("sources", &self.config.sources.len())
            .finish()
    }
}

impl Trust {
    /// Trust in the configured sources; keys are fetched on first use.
    pub fn new(config: Arc<IdentityConfig>) -> Self {
        let keys = config
            .sources
            .iter()
            .map(|_| (Mutex::new(KeyState::default()), tokio::sync::Mutex::new(())))
            .collect();
        Self { config, keys }
    }

    /// The configuration.
    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// The source a token names (its `iss` for OIDC, its `sub`'s trust domain for SPIFFE),
    /// read from the unverified payload only to pick the keys to verify with.
    fn pick(&self, iss: Option<&str>, sub: Option<&str>) -> Option<usize> {
        let by_iss = iss.and_then(|iss| {
            self.config
                .sources
                .iter()
                .position(|s| matches!(&s.kind, SourceKind::Oidc { issuer, .. } if issuer == iss))
        });
        by_iss.or_else(|| {
            let td = SpiffeId::parse_any(sub?).ok()?;
            self.config.sources.iter().position(
                |s| matches!(&s.kind, SourceKind::Spiffe { trust_domain, .. } if *trust_domain == td),
            )
        })
    }
}

/// What a verified external token proved.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The one registered agent its claims map to.
    pub agent: AgentRecord,
    /// The source that vouched for it.
    pub source: ExternalSubject,
}

fn refusal(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(Kind::Unauthenticated, code, message)
}

/// `iss` and `sub` of a compact JWS, unverified.
fn peek(token: &str) -> Result<(Option<String>, Option<String>), Error> {
    use base64::Engine as _;
    let bad = || refusal("token_malformed", "the assertion is not a compact JWT");
    if token.len() > 16 * 1024 {
        return Err(refusal(
            "token_malformed",
            "the assertion is longer than 16 KiB",
        ));
    }
    let payload = token.split('.').nth(1).ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| bad())?;
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    Ok((text("iss"), text("sub")))
}

/// Whether an agent's rule accepts a token verified by `source`.
fn rule_matches(rule: &AttestationRule, source: &Source, v: &Verified) -> bool {
    match (rule, &source.kind) {
        (AttestationRule::Oidc { issuer, claims }, SourceKind::Oidc { .. }) => {
            *issuer == source.name
                && claims.iter().all(|(k, want)| {
                    let got = if k.starts_with('/') {
                        serde_json::Value::Object(v.claims.clone())
                            .pointer(k)
                            .cloned()
                    } else {
                        v.claims.get(k).cloned()
                    };
                    got.as_ref() == Some(want)
                })
        }
        (AttestationRule::Spiffe { id }, SourceKind::Spiffe { trust_domain, .. }) => {
            v.claims.get("sub").and_then(|s| s.as_str()) == Some(id.as_str())
                && SpiffeId::parse_any(id).is_ok_and(|td| td == *trust_domain)
        }
        _ => false,
    }
}

async fn read_limited(resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut resp = resp;
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err("the document is over 1 MiB".into());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        out.extend_from_slice(&chunk);
        if out.len() > MAX_DOCUMENT_BYTES {
            return Err("the document is over 1 MiB".into());
        }
    }
    Ok(out)
}

impl Engine {
    async fn get_document(&self, url: &str) -> Result<Vec<u8>, String> {
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        read_limited(resp)
            .await
            .map_err(|e| format!("GET {url}: {e}"))
    }

    /// Fetches a source's keys: OIDC discovery (whose `issuer` must be the configured
    /// one) then the JWKS, or the SPIFFE bundle.
    async fn fetch_keys(&self, source: &Source) -> Result<Vec<PublicJwk>, String> {
        let bytes = match &source.kind {
            SourceKind::Oidc {
                jwks_uri: Some(uri),
                ..
            } => self.get_document(uri).await?,
            SourceKind::Oidc {
                issuer,
                jwks_uri: None,
            } => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc = self.get_document(&discovery).await?;
                let doc: serde_json::Value = serde_json::from_slice(&doc)
                    .map_err(|e| format!("{discovery}: not JSON: {e}"))?;
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer.as_str()) {
                    return Err(format!(
                        "{discovery}: its issuer is not {issuer:?} (OpenID Connect Discovery §4.3)"
                    ));
                }
                let uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("{discovery}: no jwks_uri"))?;
                fetchable_url("jwks_uri", uri)?;
                self.get_document(uri).await?
            }
            SourceKind::Spiffe {
                bundle: BundleFrom::File(path),
                ..
            } => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                if bytes.len() > MAX_DOCUMENT_BYTES {
                    return Err(format!("{} is over 1 MiB", path.display()));
                }
                bytes
            }
            SourceKind::Spiffe {
                bundle: BundleFrom::Endpoint(url),
                ..
            } => self.get_document(url).await?,
        };
        let keys = parse_jwks(&bytes).map_err(|e| e.to_string())?;
        if keys.is_empty() {
            return Err("the key set holds no usable signing key".into());
        }
        Ok(keys)
    }

    /// The keys of source `i`: cached, fetched when missing or old, and fetched again on
    /// `unknown_kid` at most once per `refresh_min_interval_secs`. A failed fetch keeps
    /// the keys already held; with none held, the source is unavailable.
    async fn source_keys(
        &self,
        trust: &Trust,
        i: usize,
        unknown_kid: bool,
    ) -> Result<Arc<Vec<PublicJwk>>, Error> {
        let config = trust.config();
        let (Some(source), Some((state, fetching))) = (config.sources.get(i), trust.keys.get(i))
        else {
            return Err(Error::internal("identity source index out of range"));
        };
        let min_gap = config.refresh_min_interval_secs * 1000;
        let max_age = config.keys_max_age_secs * 1000;
        let wanted = |s: &KeyState, now: i64| -> Option<Arc<Vec<PublicJwk>>> {
            let keys = s.keys.clone()?;
            let fresh = now - s.fetched_at_ms < max_age;
            let recently_tried = s.last_attempt_ms.is_some_and(|t| now - t < min_gap);
            if (fresh && !unknown_kid) || recently_tried {
                Some(keys)
            } else {
                None
            }
        };
        let now = self.clock.now_ms();
        if let Some(k) = wanted(&lock(state), now) {
            return Ok(k);
        }
        let _one = fetching.lock().await;
        let now = self.clock.now_ms();
        {
            let s = lock(state);
            // Another caller fetched while this one waited.
            if s.last_attempt_ms.is_some_and(|t| now - t < min_gap)
                && let Some(k) = s.keys.clone()
            {
                return Ok(k);
            }
            if s.keys.is_none()
                && let (Some(t), Some(e)) = (s.last_attempt_ms, &s.last_error)
                && now - t < min_gap
            {
                tracing::debug!(source = %source.label(), error = %e, "identity keys still unavailable");
                return Err(Error::new(
                    Kind::Unavailable,
                    "issuer_unavailable",
                    format!(
                        "the keys of {} cannot be read now: try again later",
                        source.label()
                    ),
                ));
            }
        }
        let fetched = self.fetch_keys(source).await;
        let mut s = lock(state);
        s.last_attempt_ms = Some(now);
        match fetched {
            Ok(keys) => {
                let keys = Arc::new(keys);
                s.keys = Some(Arc::clone(&keys));
                s.fetched_at_ms = now;
                s.last_error = None;
                Ok(keys)
            }
            Err(e) => {
                tracing::warn!(source = %source.label(), error = %e, "identity keys not refreshed");
                s.last_error = Some(e.clone());
                if now - s.fetched_at_ms >= STALE_KEYS_MS {
                    s.keys = None;
                }
                s.keys.clone().ok_or_else(|| {
                    // The cause (URLs, addresses) is logged above, not told to the caller.
                    Error::new(
                        Kind::Unavailable,
                        "issuer_unavailable",
                        format!(
                            "the keys of {} cannot be read now: try again later",
                            source.label()
                        ),
                    )
                })
            }
        }
    }

    /// Verifies an external workload token and finds the one agent it attests, consuming
    /// its `jti`. Records nothing: callers record what they did with the answer.
    pub async fn workload_identity(&self, assertion: &str) -> Result<Attested, Error> {
        let Some(trust) = self.trust.as_ref() else {
            return Err(refusal(
                "untrusted_issuer",
                "no external issuer is configured on this server (mandate serve --identity FILE)",
            ));
        };
        let (iss, sub) = peek(assertion)?;
        let i = trust.pick(iss.as_deref(), sub.as_deref()).ok_or_else(|| {
            refusal(
                "untrusted_issuer",
                format!(
                    "the token's issuer {:?} is not a configured OIDC issuer, and its subject is not in a trusted SPIFFE trust domain",
                    iss.unwrap_or_default()
                ),
            )
        })?;
        let source = trust
            .config()
            .sources
            .get(i)
            .ok_or_else(|| Error::internal("identity source index out of range"))?;
        let issuer = match &source.kind {
            SourceKind::Oidc { issuer, .. } => Some(issuer.as_str()),
            SourceKind::Spiffe { .. } => None,
        };
        let policy = |now_secs| Policy {
            issuer,
            audience: &source.audience,
            algs: &source.algs,
            max_age_secs: source.max_token_age_secs,
            leeway_secs: self.config.limits.token_leeway_secs,
            now_secs,
        };
        let keys = self.source_keys(trust, i, false).await?;
        let verified = match external::verify(assertion, &keys, &policy(self.clock.now_secs())) {
            Err(TokenError::UnknownKid(_)) => {
                let keys = self.source_keys(trust, i, true).await?;
                external::verify(assertion, &keys, &policy(self.clock.now_secs()))
            }
            other => other,
        }?;
        let subject = verified
            .claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_owned();
        if let SourceKind::Spiffe { trust_domain, .. } = &source.kind
            && SpiffeId::parse_any(&subject).ok().as_ref() != Some(trust_domain)
        {
            return Err(refusal(
                "token_wrong_subject",
                format!("the JWT-SVID's subject {subject:?} is not a SPIFFE ID of {trust_domain}"),
            ));
        }
        if source.one_time_jti
            && let Some(jti) = &verified.jti
        {
            let until = (verified.exp + self.config.limits.token_leeway_secs) * 1000;
            let fresh = self
                .store
                .consume_assertion(&source.label(), jti, until, self.clock.now_ms())
                .await
                .map_err(|e| Error::store(&e))?;
            if !fresh {
                return Err(refusal(
                    "assertion_replayed",
                    format!(
                        "this token (jti {jti:?}) has already been used to attest: get a fresh one from {}",
                        source.label()
                    ),
                ));
            }
        }
        let agents = self.store.agents().await.map_err(|e| Error::store(&e))?;
        let mut matching: Vec<AgentRecord> = agents
            .into_iter()
            .filter(|a| {
                a.status != AgentStatus::Offboarded
                    && rule_matches(&a.attestation, source, &verified)
            })
            .collect();
        if matching.len() > 1 {
            return Err(refusal(
                "ambiguous_agent",
                format!(
                    "the attestation rules of several agents accept this token from {} (subject {subject:?}): an administrator must make them exclusive",
                    source.label()
                ),
            ));
        }
        let Some(agent) = matching.pop() else {
            return Err(refusal(
                "no_agent_matches",
                format!(
                    "no registered agent's attestation rule accepts this token from {} (subject {subject:?})",
                    source.label()
                ),
            ));
        };
        Ok(Attested {
            agent,
            source: ExternalSubject {
                source: source.label(),
                subject,
                jti: verified.jti,
            },
        })
    }

    /// The one agent whose `spiffe` rule names the SPIFFE ID of an X.509-SVID the client
    /// presented over mutual TLS (already verified against the listener's client CA
    /// bundle, with exactly one SPIFFE ID). Records nothing.
    pub async fn x509_identity(&self, spiffe_id: &str) -> Result<Attested, Error> {
        let agents = self.store.agents().await.map_err(|e| Error::store(&e))?;
        let mut matching: Vec<AgentRecord> = agents
            .into_iter()
            .filter(|a| {
                a.status != AgentStatus::Offboarded
                    && matches!(&a.attestation, AttestationRule::X509Svid { id } if id == spiffe_id)
            })
            .collect();
        let Some(agent) = matching.pop() else {
            return Err(refusal(
                "no_agent_matches",
                format!("no registered agent's attestation rule names {spiffe_id:?}"),
            ));
        };
        if !matching.is_empty() {
            return Err(refusal(
                "ambiguous_agent",
                format!("the attestation rules of several agents name {spiffe_id:?}"),
            ));
        }
        Ok(Attested {
            agent,
            source: ExternalSubject {
                source: "x509-svid".to_owned(),
                subject: spiffe_id.to_owned(),
                jti: None,
            },
        })
    }

    /// Attests with the X.509-SVID of the client's TLS connection: a JWT-SVID identity
    /// token for the one agent whose `spiffe` rule names it. Every refusal is recorded.
    pub async fn attest_x509(&self, spiffe_id: &str) -> Result<AttestResponse, Error> {
        let attested = match self.x509_identity(spiffe_id).await {
            Ok(a) => a,
            Err(e) => return Err(self.refuse_workload(None, e).await),
        };
        self.issue_attested(attested).await
    }

    /// A JWT-SVID for an agent an external credential attested, if it is active.
    async fn issue_attested(&self, attested: Attested) -> Result<AttestResponse, Error> {
        if attested.agent.status != AgentStatus::Active {
            let e = Error::new(
                Kind::Forbidden,
                "agent_not_active",
                format!("agent {} is {}", attested.agent.name, attested.agent.status),
            );
            return Err(self.refuse_workload(Some(&attested.agent.name), e).await);
        }
        let auth_time = self.clock.now_secs();
        let method = attested.source.source.clone();
        self.issue_identity(
            &attested.agent,
            auth_time,
            Body::AgentAttested,
            &method,
            Some(attested.source),
        )
        .await
    }

    /// Attests with an external workload token: a JWT-SVID identity token for the one
    /// agent the token maps to. Every refusal is recorded.
    pub async fn attest_assertion(&self, assertion: &str) -> Result<AttestResponse, Error> {
        let attested = match self.workload_identity(assertion).await {
            Ok(a) => a,
            Err(e) => return Err(self.refuse_workload(None, e).await),
        };
        self.issue_attested(attested).await
    }

    /// Records a refused workload attestation (unless the failure was the server's own),
    /// and returns the refusal (`audit_unavailable` if it could not be recorded).
    pub(crate) async fn refuse_workload(&self, agent: Option<&AgentName>, e: Error) -> Error {
        if matches!(e.kind, Kind::Internal | Kind::Unavailable) {
            return e;
        }
        let ev = NewEvent {
            ts_ms: self.clock.now_ms(),
            agent: agent.map(ToString::to_string),
            task_id: None,
            body: Body::AttestationRefused(Refused {
                code: e.code.to_owned(),
            }),
        };
        if self.record_anonymous(ev).await.is_err() {
            return Error::audit();
        }
        e
    }

    /// The tools a client of MCP server `server` may ask for by default (RFC 9728
    /// `scopes_supported`, and the task a token request for that resource starts when it
    /// names none): the server's tools in the catalog (never a honeytoken) and the approved
    /// tools Mandate has seen it list, as `<server>.<tool>`, sorted.
    pub fn mcp_server_tools(&self, server: &str) -> Vec<mandate_core::ToolName> {
        let bundle = self.bundle();
        let mut tools: std::collections::BTreeSet<mandate_core::ToolName> = bundle
            .catalog()
            .entries()
            .filter(|e| e.server == server && !e.honeytoken)
            .map(|e| e.name.clone())
            .collect();
        let honeytoken = |t: &mandate_core::ToolName| {
            bundle
                .catalog()
                .entries()
                .any(|e| e.honeytoken && e.name == *t)
        };
        for pin in self.pins.all() {
            if pin.server == server
                && pin.status == "approved"
                && let Ok(t) = mandate_core::ToolName::parse(&format!("{server}.{}", pin.tool))
                && !honeytoken(&t)
            {
                tools.insert(t);
            }
        }
        tools.into_iter().collect()
    }

    /// Whether AuthZEN and ext_authz callers must authenticate (some point is configured).
    pub fn points_required(&self) -> bool {
        self.trust
            .as_ref()
            .is_some_and(|t| !t.config().points.is_empty())
    }

    /// The enforcement point a token authenticates (compared by SHA-256, in constant time
    /// against every configured point).
    pub fn enforcement_point(&self, token: &str) -> Option<String> {
        let given = mandate_core::sha256_hex(token.as_bytes());
        let points = &self.trust.as_ref()?.config().points;
        let mut found = None;
        for p in points {
            if aws_lc_rs::constant_time::verify_slices_are_equal(
                given.as_bytes(),
                p.token_sha256.as_bytes(),
            )
            .is_ok()
            {
                found = Some(p.name.clone());
            }
        }
        found
    }

    /// Checks an attestation rule against the configured sources at registration: an
    /// `oidc` rule must name a configured issuer, a `spiffe` rule a trusted trust domain.
    pub(crate) fn check_rule(&self, rule: &AttestationRule) -> Result<(), Error> {
        rule.check().map_err(Error::unprocessable)?;
        let sources = self.trust.as_ref().map(|t| &t.config().sources);
        let known = |f: &dyn Fn(&Source) -> bool| sources.is_some_and(|s| s.iter().any(f));
        match rule {
            AttestationRule::JoinToken => Ok(()),
            AttestationRule::X509Svid { id } => {
                let td =
                    SpiffeId::parse_any(id).map_err(|e| Error::unprocessable(e.to_string()))?;
                if td == self.config.trust_domain {
                    return Err(Error::unprocessable(format!(
                        "{id} is in Mandate's own trust domain: agents of {td} attest with a join token"
                    )));
                }
                if self.config.tls.as_ref().is_some_and(|t| t.client.is_some()) {
                    Ok(())
                } else {
                    Err(Error::new(
                        Kind::Unprocessable,
                        "unknown_issuer",
                        "X.509-SVIDs are not trusted: serve with --tls-client-ca (the trust domain's X.509 bundle)",
                    ))
                }
            }
            AttestationRule::Oidc { issuer, .. } => {
                if known(&|s| s.name == *issuer && matches!(s.kind, SourceKind::Oidc { .. })) {
                    Ok(())
                } else {
                    Err(Error::new(
                        Kind::Unprocessable,
                        "unknown_issuer",
                        format!(
                            "no OIDC issuer named {issuer:?} is configured (mandate serve --identity FILE)"
                        ),
                    ))
                }
            }
            AttestationRule::Spiffe { id } => {
                let td =
                    SpiffeId::parse_any(id).map_err(|e| Error::unprocessable(e.to_string()))?;
                if td == self.config.trust_domain {
                    return Err(Error::unprocessable(format!(
                        "{id} is in Mandate's own trust domain: agents of {td} attest with a join token"
                    )));
                }
                if known(
                    &|s| matches!(&s.kind, SourceKind::Spiffe { trust_domain, .. } if *trust_domain == td),
                ) {
                    Ok(())
                } else {
                    Err(Error::new(
                        Kind::Unprocessable,
                        "unknown_issuer",
                        format!(
                            "the trust domain {td} is not trusted (add a [[spiffe]] source, or serve with --tls-client-ca for X.509-SVIDs)"
                        ),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let c = IdentityConfig::from_toml(include_str!("../../../examples/identity/identity.toml"))
            .unwrap();
        assert_eq!(c.sources.len(), 4);
        assert_eq!(c.refresh_min_interval_secs, 30);
    }

    #[test]
    fn config_parses_and_refuses() {
        let c = IdentityConfig::from_toml(
            r#"
            [[oidc]]
            name = "k8s"
            issuer = "https://kubernetes.default.svc"
            audience = "mandate"
            [[oidc]]
            name = "gha"
            issuer = "https://token.actions.githubusercontent.com"
            audience = "https://mandate.example"
            algorithms = ["RS256"]
            one_time_jti = false
            [[spiffe]]
            name = "prod"
            trust_domain = "prod.example"
            bundle_file = "/etc/spiffe/bundle.json"
            audience = "mandate"
            "#,
        )
        .unwrap();
        assert_eq!(c.sources.len(), 3);
        assert_eq!(c.source("k8s").unwrap().max_token_age_secs, Some(3600));
        assert!(!c.source("gha").unwrap().one_time_jti);
        assert_eq!(c.source("prod").unwrap().label(), "spiffe:prod");
        assert!(c.points.is_empty());
        let p = IdentityConfig::from_toml(&format!(
            "[[enforcement_point]]\nname = 'envoy'\ntoken_sha256 = '{}'",
            "AB".repeat(32)
        ))
        .unwrap();
        assert_eq!(p.points[0].token_sha256, "ab".repeat(32));
        assert!(!format!("{:?}", p.points[0]).contains("abab"));
        for bad in [
            "[[enforcement_point]]\nname = 'envoy'\ntoken_sha256 = 'abc'".to_owned(),
            format!(
                "[[enforcement_point]]\nname = 'a'\ntoken_sha256 = '{0}'\n[[enforcement_point]]\nname = 'b'\ntoken_sha256 = '{0}'",
                "ab".repeat(32)
            ),
        ] {
            assert!(IdentityConfig::from_toml(&bad).is_err(), "{bad}");
        }

        for bad in [
            // http to a remote host
            "[[oidc]]\nname='a'\nissuer='http://issuer.example'\naudience='m'",
            // unknown field
            "[[oidc]]\nname='a'\nissuer='https://i.example'\naudience='m'\nkeys='x'",
            // HMAC and none are never algorithms here
            "[[oidc]]\nname='a'\nissuer='https://i.example'\naudience='m'\nalgorithms=['HS256']",
            "[[oidc]]\nname='a'\nissuer='https://i.example'\naudience='m'\nalgorithms=['none']",
            // two names, two issuers
            "[[oidc]]\nname='a'\nissuer='https://i.example'\naudience='m'\n[[oidc]]\nname='a'\nissuer='https://j.example'\naudience='m'",
            "[[oidc]]\nname='a'\nissuer='https://i.example'\naudience='m'\n[[oidc]]\nname='b'\nissuer='https://i.example'\naudience='m'",
            // a bundle from nowhere, or from two places
            "[[spiffe]]\nname='p'\ntrust_domain='p.example'\naudience='m'",
            "[[spiffe]]\nname='p'\ntrust_domain='p.example'\naudience='m'\nbundle_file='/b'\nbundle_endpoint='https://b.example'",
            "[[oidc]]\nname='A'\nissuer='https://i.example'\naudience='m'",
            "[[oidc]]\nname='a'\nissuer='https://i.example'\naudience=''",
        ] {
            assert!(IdentityConfig::from_toml(bad).is_err(), "{bad}");
        }
        assert!(
            IdentityConfig::from_toml(
                "[[oidc]]\nname='a'\nissuer='http://127.0.0.1:9/'\naudience='m'"
            )
            .is_ok()
        );
    }
}

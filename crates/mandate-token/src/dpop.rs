//! DPoP proofs (RFC 9449): sender-constrained task tokens.
//!
//! A DPoP proof is a small JWS the client signs with its own key for each request; the
//! public key travels in the proof's `jwk` header. [`verify`] checks one proof against the
//! request it came with (RFC 9449 §4.3) and returns the key's RFC 7638 thumbprint. The
//! caller then does the stateful parts: [`ReplayCache::check_and_insert`] so each proof is
//! used once (§11.1), and [`check_binding`] so the proof's key is the one the access token
//! is bound to by its `cnf.jkt` (§6.1).
//!
//! Pure: no I/O, no clock (the time is in [`Request::now_secs`]). Server-provided nonces
//! (§8, §9) are not implemented: a proof's `nonce` claim is ignored.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::TokenError;
use crate::jwk::{Alg, PublicJwk};

/// Longest proof accepted, in bytes. Anything larger is refused before decoding.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Longest `jti` accepted, in bytes.
pub const MAX_JTI_BYTES: usize = 256;

/// The algorithms [`Limits::default`] accepts.
pub const DEFAULT_ALGS: &[Alg] = &[Alg::ES256, Alg::EdDSA, Alg::RS256, Alg::PS256];

/// The `typ` header every proof carries (RFC 9449 §4.2).
const PROOF_TYP: &str = "dpop+jwt";

/// Header fields that point at keys elsewhere or demand extensions: the key must be the
/// `jwk` in the proof itself.
const FORBIDDEN_HEADER_FIELDS: [&str; 4] = ["jku", "x5u", "x5c", "crit"];

/// Why a DPoP proof was refused. Each variant has a stable machine-readable
/// [`code`](Self::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// The request carried no proof where one is required (for callers: [`verify`] never
    /// returns it).
    #[error("the request has no DPoP proof: send one in the DPoP header")]
    Missing,
    /// Not a well-formed proof: size, structure, header, key or claims.
    #[error("DPoP proof is malformed: {0}")]
    Malformed(String),
    /// The algorithm is not on the allow-list or does not fit the proof's key.
    #[error("DPoP proof algorithm {0:?} is not allowed")]
    AlgNotAllowed(String),
    /// The signature does not verify under the proof's own key.
    #[error("DPoP proof signature is invalid")]
    BadSignature,
    /// `htm` is not the request's method.
    #[error("DPoP proof is for method {proof:?}, not this request's {request:?}")]
    WrongMethod {
        /// The proof's `htm`.
        proof: String,
        /// The request's method.
        request: String,
    },
    /// `htu` is not the request's URL (after normalisation).
    #[error("DPoP proof is for URL {proof:?}, not this request's {request:?}")]
    WrongUri {
        /// The proof's `htu`, as written.
        proof: String,
        /// The request's URL, as given.
        request: String,
    },
    /// `iat` is outside the accepted window.
    #[error(
        "DPoP proof was issued at {iat} (unix seconds), outside the accepted window \
         {earliest}..={latest}: make a fresh proof and check the client's clock"
    )]
    Stale {
        /// The proof's `iat`.
        iat: i64,
        /// The oldest `iat` accepted now.
        earliest: i64,
        /// The newest `iat` accepted now.
        latest: i64,
    },
    /// `ath` is missing or is not the hash of the access token sent with the proof.
    #[error("DPoP proof `ath` does not match the access token: {0}")]
    AthMismatch(String),
    /// This key already used this `jti`.
    #[error("DPoP proof jti {0:?} was already used: make a fresh proof for every request")]
    Replayed(String),
    /// The proof's key is not the key the token is bound to.
    #[error("DPoP proof key {proof_jkt:?} is not the key {token_jkt:?} the token is bound to")]
    KeyMismatch {
        /// Thumbprint of the proof's key.
        proof_jkt: String,
        /// The token's `cnf.jkt`.
        token_jkt: String,
    },
    /// The replay cache is full of unexpired entries, so a new proof cannot be remembered.
    #[error("DPoP replay cache is full ({0} unexpired proofs): retry shortly")]
    ReplayCacheFull(usize),
}

impl DpopError {
    /// The stable error code reported to clients.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "dpop_proof_missing",
            Self::Malformed(_) => "dpop_proof_malformed",
            Self::AlgNotAllowed(_) => "dpop_alg_not_allowed",
            Self::BadSignature => "dpop_bad_signature",
            Self::WrongMethod { .. } => "dpop_wrong_method",
            Self::WrongUri { .. } => "dpop_wrong_uri",
            Self::Stale { .. } => "dpop_stale",
            Self::AthMismatch(_) => "dpop_ath_mismatch",
            Self::Replayed(_) => "dpop_replayed",
            Self::KeyMismatch { .. } => "dpop_key_mismatch",
            Self::ReplayCacheFull(_) => "dpop_replay_cache_full",
        }
    }
}

/// The request a proof came with, as the server sees it.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// The request's full URL as the server sees it (`scheme://host[:port]/path`); query
    /// and fragment are ignored.
    pub uri: &'a str,
    /// The access token sent with the proof, if any: then `ath` must be its hash.
    pub access_token: Option<&'a str>,
    /// "Now", in unix seconds.
    pub now_secs: i64,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .field("access_token", &self.access_token.map(|_| "<redacted>"))
            .field("now_secs", &self.now_secs)
            .finish()
    }
}

/// How fresh a proof must be and which algorithms it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Oldest accepted `iat`, in seconds before now (e.g. 60).
    pub max_age_secs: i64,
    /// Newest accepted `iat`, in seconds after now: tolerated client clock skew (e.g. 5).
    pub max_future_secs: i64,
    /// The accepted algorithms.
    pub algs: &'static [Alg],
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_age_secs: 60,
            max_future_secs: 5,
            algs: DEFAULT_ALGS,
        }
    }
}

impl Limits {
    /// The last second at which a proof with this `iat` is still accepted: how long the
    /// [`ReplayCache`] must remember its `jti`.
    pub fn replay_expiry(&self, proof: &Proof) -> i64 {
        proof.iat.saturating_add(self.max_age_secs)
    }
}

/// A verified proof: who signed it, and what the replay cache needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof's `jwk`: compare with the token's `cnf.jkt`.
    pub jkt: String,
    /// The proof's unique id.
    pub jti: String,
    /// When the proof was made (unix seconds).
    pub iat: i64,
}

fn malformed(msg: impl Into<String>) -> DpopError {
    DpopError::Malformed(msg.into())
}

/// base64url(SHA-256(`token`)): the `ath` of a proof sent with this access token.
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// Verifies a DPoP proof against the request it came with (RFC 9449 §4.3) and returns the
/// thumbprint of its key, its `jti` and `iat`.
///
/// Checks run cheapest-first and the signature is checked before any claim is read:
/// size, three-part compact JWS, `typ` exactly `dpop+jwt`, `alg` on the allow-list, no
/// key-locating header (`jku`, `x5u`, `x5c`) nor `crit`, a public `jwk`, the signature
/// under that `jwk`, then the claims `jti`, `htm`, `htu`, `iat` and, when an access
/// token came with the proof, `ath`. Replay and token binding are the caller's next steps
/// ([`ReplayCache::check_and_insert`], [`check_binding`]).
pub fn verify(proof: &str, req: &Request<'_>, limits: &Limits) -> Result<Proof, DpopError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(malformed(format!(
            "proof is {} bytes: the limit is {MAX_PROOF_BYTES}",
            proof.len()
        )));
    }
    let mut parts = proof.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "expected a compact JWS of three dot-separated parts",
        ));
    };
    let header = decode_object(h64, "header")?;

    match header.get("typ") {
        Some(Value::String(t)) if t == PROOF_TYP => {}
        Some(other) => {
            return Err(malformed(format!(
                "header typ must be \"{PROOF_TYP}\", not {other}"
            )));
        }
        None => {
            return Err(malformed(format!(
                "header has no typ: it must be \"{PROOF_TYP}\""
            )));
        }
    }
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::parse(name)
            .filter(|a| limits.algs.contains(a))
            .ok_or_else(|| DpopError::AlgNotAllowed(name.clone()))?,
        Some(other) => return Err(DpopError::AlgNotAllowed(other.to_string())),
        None => return Err(malformed("header has no alg")),
    };
    if let Some(field) = FORBIDDEN_HEADER_FIELDS
        .iter()
        .find(|f| header.contains_key(**f))
    {
        return Err(malformed(format!(
            "header field `{field}` is not allowed: the key must be the proof's own `jwk`"
        )));
    }
    let jwk = match header.get("jwk") {
        Some(v @ Value::Object(_)) => {
            PublicJwk::from_json(v).map_err(|e| malformed(format!("header jwk: {}", detail(e))))?
        }
        Some(_) => return Err(malformed("header jwk is not a JSON object")),
        None => return Err(malformed("header has no jwk")),
    };

    let sig = URL_SAFE_NO_PAD
        .decode(s64)
        .map_err(|_| malformed("signature is not base64url"))?;
    let signed_len = h64.len() + 1 + p64.len();
    let signed = proof
        .get(..signed_len)
        .ok_or_else(|| malformed("proof is truncated"))?;
    jwk.verify(alg, signed.as_bytes(), &sig)
        .map_err(|e| match e {
            TokenError::AlgNotAllowed(_) => DpopError::AlgNotAllowed(format!(
                "{alg} with a {} key{}",
                jwk.key_type(),
                jwk.alg()
                    .map(|a| format!(" meant for {a}"))
                    .unwrap_or_default()
            )),
            TokenError::BadSignature => DpopError::BadSignature,
            other => malformed(detail(other)),
        })?;

    let claims = decode_object(p64, "payload")?;
    let jti = string_claim(&claims, "jti")?;
    if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
        return Err(malformed(format!(
            "claim jti must be 1 to {MAX_JTI_BYTES} bytes, got {}",
            jti.len()
        )));
    }
    let htm = string_claim(&claims, "htm")?;
    let htu = string_claim(&claims, "htu")?;
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .ok_or_else(|| malformed(format!("claim iat {n} is not a time")))?,
        Some(other) => {
            return Err(malformed(format!(
                "claim iat must be a number, not {other}"
            )));
        }
        None => return Err(malformed("claim iat is missing")),
    };

    if htm != req.method {
        return Err(DpopError::WrongMethod {
            proof: htm.to_owned(),
            request: req.method.to_owned(),
        });
    }
    let wrong_uri = || DpopError::WrongUri {
        proof: htu.to_owned(),
        request: req.uri.to_owned(),
    };
    match (normalize_http_uri(htu), normalize_http_uri(req.uri)) {
        (Some(a), Some(b)) if a == b => {}
        _ => return Err(wrong_uri()),
    }
    let earliest = req.now_secs.saturating_sub(limits.max_age_secs);
    let latest = req.now_secs.saturating_add(limits.max_future_secs);
    if !(earliest..=latest).contains(&iat) {
        return Err(DpopError::Stale {
            iat,
            earliest,
            latest,
        });
    }
    if let Some(token) = req.access_token {
        match claims.get("ath") {
            Some(Value::String(ath)) if *ath == access_token_hash(token) => {}
            Some(Value::String(_)) => {
                return Err(DpopError::AthMismatch(
                    "it is the hash of another token".into(),
                ));
            }
            Some(_) => return Err(DpopError::AthMismatch("it is not a string".into())),
            None => {
                return Err(DpopError::AthMismatch(
                    "the proof has none, but an access token came with it".into(),
                ));
            }
        }
    }
    Ok(Proof {
        jkt: jwk.thumbprint(),
        jti: jti.to_owned(),
        iat,
    })
}

/// The `cnf.jkt` check (RFC 9449 §6.1): the proof's key must be the one the token is
/// bound to.
pub fn check_binding(proof: &Proof, token_jkt: &str) -> Result<(), DpopError> {
    if proof.jkt == token_jkt {
        Ok(())
    } else {
        Err(DpopError::KeyMismatch {
            proof_jkt: proof.jkt.clone(),
            token_jkt: token_jkt.to_owned(),
        })
    }
}

/// The message of a [`TokenError::Malformed`], without its "token is malformed" prefix.
fn detail(e: TokenError) -> String {
    match e {
        TokenError::Malformed(m) => m,
        other => other.to_string(),
    }
}

fn decode_object(b64: &str, what: &str) -> Result<Map<String, Value>, DpopError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| malformed(format!("{what} is not base64url")))?;
    serde_json::from_slice(&bytes).map_err(|_| malformed(format!("{what} is not a JSON object")))
}

fn string_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<&'a str, DpopError> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(malformed(format!(
            "claim {name} must be a string, not {other}"
        ))),
        None => Err(malformed(format!("claim {name} is missing"))),
    }
}

/// Normalises an absolute `http`/`https` URL for the `htu` comparison (RFC 9449 §4.3 step
/// 9, with RFC 3986 §6.2.2 syntax-based and §6.2.3 scheme-based normalisation): query and
/// fragment dropped; scheme and host lowercased; the default port (and an empty one)
/// removed; an empty path made `/`; percent-escapes uppercased, unreserved characters
/// decoded, characters that must be escaped escaped; `.` and `..` segments removed.
///
/// `None` for anything that is not such a URL: another scheme, no host, user info
/// (`user@host`, which could make one host look like another), a bad port or escape, or
/// bytes outside printable ASCII.
fn normalize_http_uri(uri: &str) -> Option<String> {
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let uri = uri.split('#').next().unwrap_or_default();
    let uri = uri.split('?').next().unwrap_or_default();
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = split_host_port(authority)?;
    let mut out = format!("{scheme}://{}", host.to_ascii_lowercase());
    if let Some(port) = port.filter(|p| *p != default_port) {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(&remove_dot_segments(&normalize_escapes(path)?));
    Some(out)
}

/// Splits `host[:port]` or `[v6]:port`; refuses user info and anything that is not a
/// plain DNS name, IPv4 or bracketed IPv6 literal. An empty port is no port.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, after) = authority.split_at(end + 1);
        let inner = host.get(1..end)?;
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let dns = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if host.is_empty() || !host.bytes().all(dns) {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters a path may carry unescaped: unreserved, sub-delims, `:`, `@` and `/`.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

/// Percent-encoding normalisation of a path: one spelling for every octet.
fn normalize_escapes(path: &str) -> Option<String> {
    let mut out = String::with_capacity(path.len().max(1));
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        let octet = if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()?
        } else {
            b
        };
        if is_unreserved(octet) || (b != b'%' && is_path_char(octet)) {
            out.push(char::from(octet));
        } else {
            out.push_str(&format!("%{octet:02X}"));
        }
    }
    Some(out)
}

/// RFC 3986 §5.2.4 for an absolute path (or an empty one, which becomes `/`).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.into_iter().enumerate() {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        // A trailing `.` or `..` leaves a trailing slash.
        if i == last && matches!(seg, "." | "..") {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// A bounded memory of the proofs already seen (RFC 9449 §11.1), keyed by key thumbprint
/// and `jti`, each kept until its `iat` falls out of the accepted window.
///
/// Fails closed: when full of unexpired entries it refuses new proofs
/// ([`DpopError::ReplayCacheFull`]) rather than forget one that could still be replayed.
/// Expired entries are dropped as time passes, oldest first.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    inner: Mutex<Seen>,
}

/// A fixed-size digest of (jkt, jti): the stored key, whatever the `jti`'s length.
type SeenKey = [u8; 32];

#[derive(Debug, Default)]
struct Seen {
    /// Key → the last second it must be remembered.
    until: HashMap<SeenKey, i64>,
    /// The same entries ordered by expiry, for cheap removal; an entry whose expiry
    /// differs from `until` was replaced and is skipped.
    by_expiry: BinaryHeap<Reverse<(i64, SeenKey)>>,
}

impl Seen {
    fn drop_expired(&mut self, now_secs: i64) {
        while let Some(Reverse((until, key))) = self.by_expiry.peek().copied() {
            if until >= now_secs {
                break;
            }
            self.by_expiry.pop();
            if self.until.get(&key) == Some(&until) {
                self.until.remove(&key);
            }
        }
    }
}

impl ReplayCache {
    /// A cache that remembers at most `capacity` unexpired proofs.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Seen::default()),
        }
    }

    /// Records the proof `(jkt, jti)` as used until `expires_at_secs` (inclusive; see
    /// [`Limits::replay_expiry`]). Refuses a proof seen before and still remembered
    /// ([`DpopError::Replayed`]), or a new one when the cache is full of unexpired proofs
    /// ([`DpopError::ReplayCacheFull`]).
    pub fn check_and_insert(
        &self,
        jkt: &str,
        jti: &str,
        expires_at_secs: i64,
        now_secs: i64,
    ) -> Result<(), DpopError> {
        let key = seen_key(jkt, jti);
        // The maps are consistent after every statement that can be interrupted, so a
        // poisoned lock still guards valid data.
        let mut seen = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        seen.drop_expired(now_secs);
        let len = seen.until.len();
        match seen.until.entry(key) {
            Entry::Occupied(_) => return Err(DpopError::Replayed(jti.to_owned())),
            Entry::Vacant(_) if len >= self.capacity => {
                return Err(DpopError::ReplayCacheFull(len));
            }
            Entry::Vacant(v) => {
                v.insert(expires_at_secs);
            }
        }
        seen.by_expiry.push(Reverse((expires_at_secs, key)));
        Ok(())
    }

    /// How many proofs are remembered (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .until
            .len()
    }

    /// Whether no proof is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn seen_key(jkt: &str, jti: &str) -> SeenKey {
    let mut ctx = digest::Context::new(&digest::SHA256);
    // jkt is base64url, so it never contains the separator.
    ctx.update(jkt.as_bytes());
    ctx.update(b".");
    ctx.update(jti.as_bytes());
    // SHA-256 is always 32 bytes; the fallback is unreachable.
    ctx.finish().as_ref().try_into().unwrap_or([0; 32])
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    };
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_750_000_000;
    const URL: &str = "https://mandate.example/v1/decide";
    const TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudCJ9.c2ln";

    type SignFn = Box<dyn Fn(&[u8]) -> Vec<u8>>;

    /// A client key: its public JWK, its alg, and a signer.
    struct Client {
        jwk: Value,
        alg: &'static str,
        sign: SignFn,
    }

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn es256() -> Client {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        Client {
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])}),
            alg: "ES256",
            sign: Box::new(move |m| {
                pair.sign(&SystemRandom::new(), m)
                    .unwrap()
                    .as_ref()
                    .to_vec()
            }),
        }
    }

    fn ed25519() -> Client {
        let pair = Ed25519KeyPair::generate().unwrap();
        Client {
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())}),
            alg: "EdDSA",
            sign: Box::new(move |m| pair.sign(m).as_ref().to_vec()),
        }
    }

    impl Client {
        fn header(&self) -> Value {
            json!({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk})
        }

        /// Signs any header and claims.
        fn sign_raw(&self, header: &Value, claims: &Value) -> String {
            let msg = format!(
                "{}.{}",
                b64(&serde_json::to_vec(header).unwrap()),
                b64(&serde_json::to_vec(claims).unwrap())
            );
            let sig = (self.sign)(msg.as_bytes());
            format!("{msg}.{}", b64(&sig))
        }

        /// A good proof for [`req`], with some header members and claims replaced
        /// (`null` removes one).
        fn proof(&self, header: Value, claims: Value) -> String {
            self.sign_raw(&merge(self.header(), header), &merge(good_claims(), claims))
        }
    }

    fn merge(mut base: Value, over: Value) -> Value {
        for (k, v) in over.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    }

    fn good_claims() -> Value {
        json!({
            "jti": "e1j3V_bKic8-LAEB",
            "htm": "POST",
            "htu": URL,
            "iat": NOW,
            "ath": access_token_hash(TOKEN),
        })
    }

    fn req() -> Request<'static> {
        Request {
            method: "POST",
            uri: URL,
            access_token: Some(TOKEN),
            now_secs: NOW,
        }
    }

    fn thumbprint(jwk: &Value) -> String {
        PublicJwk::from_json(jwk).unwrap().thumbprint()
    }

    #[test]
    fn good_proofs_verify() {
        for client in [es256(), ed25519()] {
            let p = verify(
                &client.proof(json!({}), json!({})),
                &req(),
                &Limits::default(),
            )
            .unwrap();
            assert_eq!(
                p,
                Proof {
                    jkt: thumbprint(&client.jwk),
                    jti: "e1j3V_bKic8-LAEB".into(),
                    iat: NOW,
                }
            );
        }
    }

    #[test]
    fn accepted_variations() {
        let c = es256();
        let limits = Limits::default();
        let no_token = Request {
            access_token: None,
            ..req()
        };
        let cases: Vec<(&str, String, Request<'_>)> = vec![
            (
                "no token, no ath",
                c.proof(json!({}), json!({"ath": null})),
                no_token,
            ),
            (
                "no token, stray ath ignored",
                c.proof(json!({}), json!({})),
                no_token,
            ),
            (
                "nonce ignored",
                c.proof(json!({}), json!({"nonce": "n-1"})),
                req(),
            ),
            (
                "kid beside jwk ignored",
                c.proof(json!({"kid": "k"}), json!({})),
                req(),
            ),
            (
                "oldest iat",
                c.proof(json!({}), json!({"iat": NOW - 60})),
                req(),
            ),
            (
                "newest iat",
                c.proof(json!({}), json!({"iat": NOW + 5})),
                req(),
            ),
            (
                "fractional iat",
                c.proof(json!({}), json!({"iat": NOW as f64 + 0.5})),
                req(),
            ),
            (
                "htu differs only in query and fragment",
                c.proof(json!({}), json!({"htu": format!("{URL}?a=1#frag")})),
                req(),
            ),
            (
                "jwk declares its alg",
                c.proof(
                    json!({"jwk": merge(c.jwk.clone(), json!({"alg": "ES256"}))}),
                    json!({}),
                ),
                req(),
            ),
            (
                "longest jti",
                c.proof(json!({}), json!({"jti": "j".repeat(MAX_JTI_BYTES)})),
                req(),
            ),
        ];
        for (name, proof, r) in cases {
            if let Err(e) = verify(&proof, &r, &limits) {
                panic!("{name}: {e}");
            }
        }
    }

    /// One table of hostile or mistaken proofs, each with the code it must produce.
    #[test]
    fn refusals() {
        let c = es256();
        let other = es256();
        let ed = ed25519();
        let good = c.proof(json!({}), json!({}));
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        sig[0] ^= 1;
        parts[2] = b64(&sig);
        let flipped = parts.join(".");
        let unsigned = format!(
            "{}.{}.",
            b64(&serde_json::to_vec(&merge(c.header(), json!({"alg": "none"}))).unwrap()),
            b64(&serde_json::to_vec(&good_claims()).unwrap())
        );
        let not_json = {
            let h = b64(&serde_json::to_vec(&c.header()).unwrap());
            let msg = format!("{h}.{}", b64(b"not json"));
            format!("{msg}.{}", b64(&(c.sign)(msg.as_bytes())))
        };
        let with_private = merge(c.jwk.clone(), json!({"d": b64(&[7; 32])}));
        let h = |over: Value| c.proof(over, json!({}));
        let cl = |over: Value| c.proof(json!({}), over);
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "too big",
                "a".repeat(MAX_PROOF_BYTES + 1),
                "dpop_proof_malformed",
            ),
            ("two parts", "a.b".into(), "dpop_proof_malformed"),
            ("four parts", format!("{good}.x"), "dpop_proof_malformed"),
            ("garbage", "!!.@@.##".into(), "dpop_proof_malformed"),
            ("no typ", h(json!({"typ": null})), "dpop_proof_malformed"),
            ("typ JWT", h(json!({"typ": "JWT"})), "dpop_proof_malformed"),
            (
                "typ upper case",
                h(json!({"typ": "DPOP+JWT"})),
                "dpop_proof_malformed",
            ),
            ("alg none", unsigned, "dpop_alg_not_allowed"),
            (
                "alg HS256",
                h(json!({"alg": "HS256"})),
                "dpop_alg_not_allowed",
            ),
            (
                "alg off the list",
                h(json!({"alg": "ES384"})),
                "dpop_alg_not_allowed",
            ),
            (
                "alg not a string",
                h(json!({"alg": 1})),
                "dpop_alg_not_allowed",
            ),
            ("no alg", h(json!({"alg": null})), "dpop_proof_malformed"),
            (
                "alg for another key type",
                h(json!({"alg": "EdDSA"})),
                "dpop_alg_not_allowed",
            ),
            (
                "jwk declares another alg",
                h(json!({"jwk": merge(c.jwk.clone(), json!({"alg": "ES384"}))})),
                "dpop_proof_malformed",
            ),
            (
                "jku",
                h(json!({"jku": "https://evil.example/jwks"})),
                "dpop_proof_malformed",
            ),
            (
                "x5u",
                h(json!({"x5u": "https://evil.example/cert"})),
                "dpop_proof_malformed",
            ),
            ("x5c", h(json!({"x5c": ["MIIB"]})), "dpop_proof_malformed"),
            ("crit", h(json!({"crit": ["exp"]})), "dpop_proof_malformed"),
            (
                "no jwk (kid only)",
                h(json!({"jwk": null, "kid": "k1"})),
                "dpop_proof_malformed",
            ),
            (
                "jwk not an object",
                h(json!({"jwk": "k"})),
                "dpop_proof_malformed",
            ),
            (
                "private jwk",
                h(json!({"jwk": with_private})),
                "dpop_proof_malformed",
            ),
            (
                "symmetric jwk",
                h(json!({"jwk": {"kty": "oct", "k": b64(b"secret")}})),
                "dpop_proof_malformed",
            ),
            ("flipped signature", flipped, "dpop_bad_signature"),
            (
                "signed by another key",
                other.sign_raw(&c.header(), &good_claims()),
                "dpop_bad_signature",
            ),
            (
                "Ed25519 key, signed by another",
                ed25519().sign_raw(&ed.header(), &good_claims()),
                "dpop_bad_signature",
            ),
            ("payload not JSON", not_json, "dpop_proof_malformed"),
            ("no jti", cl(json!({"jti": null})), "dpop_proof_malformed"),
            ("empty jti", cl(json!({"jti": ""})), "dpop_proof_malformed"),
            (
                "jti too long",
                cl(json!({"jti": "j".repeat(MAX_JTI_BYTES + 1)})),
                "dpop_proof_malformed",
            ),
            (
                "jti a number",
                cl(json!({"jti": 7})),
                "dpop_proof_malformed",
            ),
            ("no htm", cl(json!({"htm": null})), "dpop_proof_malformed"),
            ("no htu", cl(json!({"htu": null})), "dpop_proof_malformed"),
            ("no iat", cl(json!({"iat": null})), "dpop_proof_malformed"),
            (
                "iat a string",
                cl(json!({"iat": NOW.to_string()})),
                "dpop_proof_malformed",
            ),
            ("htm GET", cl(json!({"htm": "GET"})), "dpop_wrong_method"),
            (
                "htm lower case",
                cl(json!({"htm": "post"})),
                "dpop_wrong_method",
            ),
            (
                "htu other host",
                cl(json!({"htu": "https://evil.example/v1/decide"})),
                "dpop_wrong_uri",
            ),
            (
                "htu other path",
                cl(json!({"htu": "https://mandate.example/v1/tasks"})),
                "dpop_wrong_uri",
            ),
            (
                "htu path case",
                cl(json!({"htu": "https://mandate.example/V1/decide"})),
                "dpop_wrong_uri",
            ),
            (
                "htu http",
                cl(json!({"htu": "http://mandate.example/v1/decide"})),
                "dpop_wrong_uri",
            ),
            (
                "htu other port",
                cl(json!({"htu": "https://mandate.example:8443/v1/decide"})),
                "dpop_wrong_uri",
            ),
            (
                "htu relative",
                cl(json!({"htu": "/v1/decide"})),
                "dpop_wrong_uri",
            ),
            (
                "htu with user info",
                cl(json!({"htu": "https://mandate.example@evil.example/v1/decide"})),
                "dpop_wrong_uri",
            ),
            ("iat too old", cl(json!({"iat": NOW - 61})), "dpop_stale"),
            (
                "iat in the future",
                cl(json!({"iat": NOW + 6})),
                "dpop_stale",
            ),
            (
                "no ath with a token",
                cl(json!({"ath": null})),
                "dpop_ath_mismatch",
            ),
            (
                "ath of another token",
                cl(json!({"ath": access_token_hash("other")})),
                "dpop_ath_mismatch",
            ),
            ("ath a number", cl(json!({"ath": 1})), "dpop_ath_mismatch"),
        ];
        for (name, proof, code) in cases {
            let err = verify(&proof, &req(), &Limits::default()).unwrap_err();
            assert_eq!(err.code(), code, "{name}: {err}");
        }
    }

    #[test]
    fn allow_list_is_honoured() {
        let ed = ed25519();
        let only_es256 = Limits {
            algs: &[Alg::ES256],
            ..Limits::default()
        };
        let err = verify(&ed.proof(json!({}), json!({})), &req(), &only_es256).unwrap_err();
        assert_eq!(err, DpopError::AlgNotAllowed("EdDSA".into()));
    }

    #[test]
    fn messages_say_what_was_wrong() {
        let c = es256();
        let err = verify(
            &c.proof(json!({}), json!({"htm": "GET"})),
            &req(),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"DPoP proof is for method "GET", not this request's "POST""#
        );
        let err = verify(
            &c.proof(json!({}), json!({"iat": NOW - 100})),
            &req(),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{}..={}", NOW - 60, NOW + 5)),
            "{err}"
        );
        let err = verify(
            &c.proof(json!({"jku": "x"}), json!({})),
            &req(),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`jku`"), "{err}");
        let private = json!({"jwk": merge(c.jwk.clone(), json!({"d": "AAAA"}))});
        let err = verify(&c.proof(private, json!({})), &req(), &Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DPoP proof is malformed: header jwk: jwk has the private member `d`: only public keys are accepted"
        );
        let r = Request {
            access_token: Some("secret-token"),
            ..req()
        };
        assert!(!format!("{r:?}").contains("secret-token"));
    }

    /// `htu` normalisation: (proof's htu, request URI, same resource?).
    #[test]
    fn htu_normalisation() {
        let cases = [
            ("https://a.example/p", "https://a.example/p", true),
            ("HTTPS://A.Example/p", "https://a.example/p", true),
            ("https://a.example:443/p", "https://a.example/p", true),
            ("http://a.example:80/p", "http://a.example/p", true),
            ("https://a.example:/p", "https://a.example/p", true),
            ("https://a.example:0443/p", "https://a.example/p", true),
            ("https://a.example", "https://a.example/", true),
            ("https://a.example?x=1", "https://a.example/", true),
            ("https://a.example/p?x=1#f", "https://a.example/p?y=2", true),
            ("https://a.example/p#f?x", "https://a.example/p", true),
            ("https://a.example/%7euser", "https://a.example/~user", true),
            ("https://a.example/a%2fb", "https://a.example/a%2Fb", true),
            ("https://a.example/a|b", "https://a.example/a%7Cb", true),
            (
                "https://a.example/a/./b/../c",
                "https://a.example/a/c",
                true,
            ),
            ("https://a.example/a/%2E%2E/c", "https://a.example/c", true),
            ("https://a.example/a/..", "https://a.example/", true),
            ("https://a.example/../../p", "https://a.example/p", true),
            ("https://[::1]:443/p", "https://[::1]/p", true),
            ("https://[::1]:8443/p", "https://[::1]:8443/p", true),
            ("https://[2001:DB8::1]/p", "https://[2001:db8::1]/p", true),
            ("https://127.0.0.1:8181/p", "https://127.0.0.1:8181/p", true),
            // Different resources.
            ("https://a.example/p", "https://a.example/P", false),
            ("https://a.example/p", "https://a.example/p/", false),
            ("https://a.example/a%2Fb", "https://a.example/a/b", false),
            ("https://a.example/p", "http://a.example/p", false),
            ("https://a.example:80/p", "https://a.example/p", false),
            ("http://a.example:443/p", "http://a.example/p", false),
            ("https://a.example/p", "https://b.example/p", false),
            ("https://a.example.evil/p", "https://a.example/p", false),
            ("https://[::1]/p", "https://[::2]/p", false),
            // Not comparable at all.
            ("https://a.example/p", "/p", false),
            ("ftp://a.example/p", "ftp://a.example/p", false),
            ("https:///p", "https:///p", false),
            ("https://u@a.example/p", "https://u@a.example/p", false),
            (
                "https://a.example:99999/p",
                "https://a.example:99999/p",
                false,
            ),
            ("https://a.example:8x/p", "https://a.example:8x/p", false),
            ("https://a.example/%zz", "https://a.example/%zz", false),
            ("https://a.example/%2", "https://a.example/%2", false),
            ("https://a.example/a b", "https://a.example/a b", false),
            ("https://a.exämple/p", "https://a.exämple/p", false),
            ("https://[::1/p", "https://[::1/p", false),
            ("https://[]/p", "https://[]/p", false),
            ("https://[::1]x/p", "https://[::1]x/p", false),
            ("https://a:b:1/p", "https://a:b:1/p", false),
        ];
        let c = es256();
        for (htu, uri, same) in cases {
            let proof = c.proof(json!({}), json!({"htu": htu}));
            let r = Request { uri, ..req() };
            let got = verify(&proof, &r, &Limits::default());
            match (same, got) {
                (true, Ok(_)) => {}
                (false, Err(e)) if e.code() == "dpop_wrong_uri" => {}
                (_, other) => panic!("htu {htu:?} vs {uri:?}: expected same={same}, got {other:?}"),
            }
        }
    }

    #[test]
    fn binding() {
        let c = es256();
        let p = verify(&c.proof(json!({}), json!({})), &req(), &Limits::default()).unwrap();
        check_binding(&p, &thumbprint(&c.jwk)).unwrap();
        let err = check_binding(&p, &thumbprint(&es256().jwk)).unwrap_err();
        assert_eq!(err.code(), "dpop_key_mismatch");
    }

    #[test]
    fn replay_cache() {
        let cache = ReplayCache::new(2);
        cache.check_and_insert("k1", "a", NOW + 60, NOW).unwrap();
        let err = cache
            .check_and_insert("k1", "a", NOW + 60, NOW + 1)
            .unwrap_err();
        assert_eq!(err, DpopError::Replayed("a".into()));
        // The same jti from another key is another proof.
        cache.check_and_insert("k2", "a", NOW + 60, NOW).unwrap();
        // Full of unexpired proofs: fail closed, even at the last remembered second.
        let err = cache
            .check_and_insert("k1", "b", NOW + 60, NOW + 60)
            .unwrap_err();
        assert_eq!(err.code(), "dpop_replay_cache_full");
        assert_eq!(
            cache
                .check_and_insert("k1", "a", NOW + 60, NOW + 60)
                .unwrap_err()
                .code(),
            "dpop_replayed"
        );
        // Once expired, entries make room and may be inserted again.
        cache
            .check_and_insert("k1", "b", NOW + 200, NOW + 61)
            .unwrap();
        assert_eq!(cache.len(), 1);
        cache
            .check_and_insert("k1", "a", NOW + 200, NOW + 61)
            .unwrap();
        assert_eq!(cache.len(), 2);

        let none = ReplayCache::new(0);
        assert_eq!(
            none.check_and_insert("k", "a", NOW, NOW)
                .unwrap_err()
                .code(),
            "dpop_replay_cache_full"
        );
        assert!(none.is_empty());
    }

    /// A replaced entry's old expiry does not evict its newer self.
    #[test]
    fn replay_cache_reinsert_after_expiry() {
        let cache = ReplayCache::new(4);
        cache.check_and_insert("k", "a", NOW + 10, NOW).unwrap();
        cache
            .check_and_insert("k", "a", NOW + 100, NOW + 11)
            .unwrap();
        cache
            .check_and_insert("k", "b", NOW + 100, NOW + 12)
            .unwrap();
        assert_eq!(
            cache
                .check_and_insert("k", "a", NOW + 100, NOW + 50)
                .unwrap_err()
                .code(),
            "dpop_replayed"
        );
    }

    #[test]
    fn verified_proof_feeds_the_cache() {
        let c = ed25519();
        let limits = Limits::default();
        let cache = ReplayCache::new(16);
        let proof = c.proof(json!({}), json!({}));
        let p = verify(&proof, &req(), &limits).unwrap();
        let until = limits.replay_expiry(&p);
        assert_eq!(until, NOW + 60);
        cache.check_and_insert(&p.jkt, &p.jti, until, NOW).unwrap();
        // The same proof, replayed at the last second it verifies, is caught.
        let r = Request {
            now_secs: NOW + 60,
            ..req()
        };
        let p = verify(&proof, &r, &limits).unwrap();
        assert_eq!(
            cache.check_and_insert(&p.jkt, &p.jti, until, NOW + 60),
            Err(DpopError::Replayed("e1j3V_bKic8-LAEB".into()))
        );
    }

    #[test]
    fn codes_are_distinct() {
        let all = [
            DpopError::Missing,
            DpopError::Malformed(String::new()),
            DpopError::AlgNotAllowed(String::new()),
            DpopError::BadSignature,
            DpopError::WrongMethod {
                proof: String::new(),
                request: String::new(),
            },
            DpopError::WrongUri {
                proof: String::new(),
                request: String::new(),
            },
            DpopError::Stale {
                iat: 0,
                earliest: 0,
                latest: 0,
            },
            DpopError::AthMismatch(String::new()),
            DpopError::Replayed(String::new()),
            DpopError::KeyMismatch {
                proof_jkt: String::new(),
                token_jkt: String::new(),
            },
            DpopError::ReplayCacheFull(0),
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(DpopError::code).collect();
        assert_eq!(codes.len(), all.len());
        assert!(codes.iter().all(|c| c.starts_with("dpop_")));
    }

    /// RFC 9449 §7.1: the example access token's `ath`.
    #[test]
    fn ath_matches_rfc_example() {
        assert_eq!(
            access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }
}

//! Sender-constrained task tokens (RFC 9449 DPoP, ../shared/BRIEF.md S2). A task token
//! can be bound to a key the agent holds (`cnf.jkt`); from then on it is accepted only
//! under the `DPoP` scheme with a fresh proof, signed by that key, for that very request
//! and that token. A stolen token without the key is useless.
//!
//! Binding happens where a token is issued (task start, the token endpoint, delegation),
//! from the proof sent with that request — never from a body field. The proofs' `jti`s are
//! remembered (bounded) so a captured proof cannot be replayed.

use mandate_token::dpop::{self, DpopError, Limits, ReplayCache};

use crate::engine::Engine;
use crate::error::{Error, Kind};

/// The replay cache and proof limits of one server.
#[derive(Debug)]
pub struct Dpop {
    replay: ReplayCache,
    limits: Limits,
}

impl Dpop {
    /// A cache of `capacity` proofs, accepting proofs up to `max_age_secs` old.
    pub fn new(capacity: usize, max_age_secs: i64) -> Self {
        Self {
            replay: ReplayCache::new(capacity),
            limits: Limits {
                max_age_secs,
                ..Limits::default()
            },
        }
    }
}

fn refused(e: &DpopError) -> Error {
    let kind = match e {
        DpopError::ReplayCacheFull(_) => Kind::Unavailable,
        _ => Kind::Unauthenticated,
    };
    Error::new(kind, e.code(), e.to_string())
}

/// `cnf.jkt` of a token's payload, unverified.
fn unverified_jkt(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    if payload.len() > 16 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("cnf")?.get("jkt")?.as_str().map(str::to_owned)
}

impl Engine {
    /// The URL a request for `path` was sent to, as clients of this server see it (the
    /// issuer is the server's public URL): what a DPoP proof's `htu` must name.
    pub fn public_url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer.trim_end_matches('/'))
    }

    /// The origin a request with this `Host` header was sent to: the issuer's, or the same
    /// port on a loopback name (`localhost`, `127.0.0.1`, `[::1]`) when the client used one.
    /// Any other host is not this server's, and the issuer's origin is returned.
    pub fn origin_for_host(&self, host: Option<&str>) -> String {
        let issuer = self.issuer.trim_end_matches('/');
        host.and_then(|h| self.same_server(&format!("{}://{h}", self.issuer_scheme())))
            .unwrap_or_else(|| issuer.to_owned())
    }

    fn issuer_scheme(&self) -> &str {
        self.issuer.split("://").next().unwrap_or("http")
    }

    /// Whether a browser's `Origin` may talk to this server (MCP's DNS-rebinding rule): this
    /// server's own origin, or — when the issuer is on loopback, as in development — any
    /// loopback origin (a local inspector on another port). `null` and every other origin
    /// are refused.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        if self.same_server(origin).is_some() {
            return true;
        }
        let loopback = |u: &str| {
            url::Url::parse(u).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && (matches!(u.host(), Some(url::Host::Domain("localhost")))
                        || matches!(u.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                        || matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback()))
            })
        };
        loopback(&self.issuer) && loopback(origin)
    }

    /// `url`'s origin, when it is this server's: the issuer's scheme, host and port, or —
    /// only when the issuer itself is on loopback — the same port under another loopback
    /// name (a production server does not answer to `localhost` for proofs or resources).
    pub fn same_server(&self, url: &str) -> Option<String> {
        let ours = url::Url::parse(&self.issuer).ok()?;
        let theirs = url::Url::parse(url).ok()?;
        let is_loopback = |u: &url::Url| {
            matches!(u.host(), Some(url::Host::Domain("localhost")))
                || matches!(u.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                || matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        };
        let same = theirs.scheme() == ours.scheme()
            && theirs.port_or_known_default() == ours.port_or_known_default()
            && (theirs.host() == ours.host() || (is_loopback(&ours) && is_loopback(&theirs)))
            && theirs.username().is_empty()
            && theirs.password().is_none();
        same.then(|| theirs.origin().ascii_serialization())
    }

    /// Verifies a DPoP proof for a request (method, URL, the token it accompanies), without
    /// remembering it yet: a proof is recorded against replay only once the request it
    /// came with has authenticated ([`Engine::record_proof`]), so nobody fills the replay
    /// cache with proofs of their own keys.
    pub fn dpop_proof(
        &self,
        proof: &str,
        method: &str,
        url: &str,
        token: Option<&str>,
    ) -> Result<dpop::Proof, Error> {
        let req = dpop::Request {
            method,
            uri: url,
            access_token: token,
            now_secs: self.clock.now_secs(),
        };
        dpop::verify(proof, &req, &self.dpop.limits).map_err(|e| refused(&e))
    }

    /// Remembers a verified proof: a second use of it is refused (`dpop_replayed`).
    pub fn record_proof(&self, p: &dpop::Proof) -> Result<(), Error> {
        self.dpop
            .replay
            .check_and_insert(
                &p.jkt,
                &p.jti,
                self.dpop.limits.replay_expiry(p),
                self.clock.now_secs(),
            )
            .map_err(|e| refused(&e))
    }

    /// Checks a request made under the `DPoP` scheme: the proof is for this request, fresh,
    /// for this token (`ath`), signed by the key the token is bound to, and new. The token
    /// is verified before the proof is remembered.
    pub fn check_dpop(
        &self,
        token: &str,
        proof: &str,
        method: &str,
        url: &str,
    ) -> Result<(), Error> {
        let p = self.dpop_proof(proof, method, url, Some(token))?;
        let claims = self.verify_task_token(token)?;
        let Some(cnf) = &claims.cnf else {
            return Err(Error::new(
                Kind::Unauthenticated,
                "token_not_bound",
                "this task token is not bound to a key: send it as `Authorization: Bearer`",
            ));
        };
        dpop::check_binding(&p, &cnf.jkt).map_err(|e| refused(&e))?;
        self.record_proof(&p)
    }

    /// The key a task token is bound to, if any: from the verified claims when cached,
    /// else from the unverified payload (a token whose `cnf` was stripped or changed fails
    /// its signature anyway). Used to refuse a bound token sent as a bearer token.
    pub fn bound_key(&self, token: &str) -> Option<String> {
        match self.cached_task_claims(token) {
            Some(c) => c.cnf.as_ref().map(|c| c.jkt.clone()),
            None => unverified_jkt(token),
        }
    }

    /// Records a refused sender check (`call.refused` with its `dpop_*` code): a bound
    /// token without its proof, or with a proof by another key, is the clearest sign of a
    /// stolen token. Attributed to the token's task and agent when the token verifies;
    /// otherwise counted against the budget for unauthenticated refusals. Returns the
    /// refusal (`audit_unavailable` if it could not be recorded).
    pub async fn refuse_sender(&self, token: &str, e: Error) -> Error {
        if matches!(e.kind, Kind::Internal | Kind::Unavailable) {
            return e;
        }
        let claims = self.verify_task_token(token).ok();
        let ev = mandate_audit::NewEvent {
            ts_ms: self.clock.now_ms(),
            agent: claims.as_ref().and_then(|c| {
                mandate_core::SpiffeId::parse(c.actor())
                    .ok()
                    .map(|s| s.agent().to_string())
            }),
            task_id: claims.as_ref().map(|c| c.task_id.clone()),
            body: mandate_audit::Body::CallRefused(mandate_audit::CallRefused {
                code: e.code.to_owned(),
                why: Some(e.message.clone()),
                ..mandate_audit::CallRefused::default()
            }),
        };
        if self.record_refusal(ev).await.is_err() {
            return Error::audit();
        }
        e
    }

    /// Refuses a task start, token request or delegation without a key binding for an
    /// agent whose tier requires one.
    pub(crate) fn require_binding(
        &self,
        tier: mandate_core::RiskTier,
        jkt: Option<&str>,
    ) -> Result<(), Error> {
        match self.config.limits.dpop_required_from_tier {
            Some(from) if tier.get() >= from && jkt.is_none() => Err(Error::new(
                Kind::Unauthenticated,
                "dpop_required",
                format!(
                    "agents of tier {} must bind their task tokens to a key: send a DPoP proof (RFC 9449) with this request",
                    tier.get()
                ),
            )),
            _ => Ok(()),
        }
    }
}

//! Tokens issued by someone else (an OIDC issuer, a SPIFFE trust domain), verified against
//! their published keys.
//!
//! The same strictness as Mandate's own tokens ([`crate::verify`]), shared rather than
//! copied: the size bound, the three-part shape, the refused key-carrying and `crit`
//! headers. What differs is where the keys and the algorithm allow-list come from — the
//! caller passes the issuer's keys ([`crate::jwk::parse_jwks`]) and a [`Policy`] — and
//! that the claims are returned as the JSON object they are, since each issuer has its own.
//!
//! Order of checks: header shape, algorithm allow-list, key by `kid`, signature; only then
//! is the payload read, and the claims are checked issuer, audience, `exp`, `nbf`, `iat`,
//! age, `sub`, `jti`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::TokenError;
use crate::jwk::{Alg, PublicJwk};
use crate::jws::{malformed, split};

/// The largest clock-skew leeway [`verify`] applies, in seconds; a larger
/// [`Policy::leeway_secs`] is cut to this, a negative one is taken as zero.
pub const MAX_LEEWAY_SECS: i64 = 300;

/// Accepted `typ` headers (compared case-insensitively): a plain JWT, an RFC 9068 access
/// token, or a generic JWS, each with or without the `application/` prefix
/// (RFC 7515 §4.1.9). Anything else — a DPoP proof, a Security Event Token, a logout
/// token — is another kind of token and is refused.
const TYPS: [&str; 6] = [
    "JWT",
    "at+jwt",
    "JOSE",
    "application/jwt",
    "application/at+jwt",
    "application/jose",
];

/// What a token from another issuer must satisfy, and the time to check it at.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// `Some`: `iss` is required and must equal it exactly. `None`: `iss` is not checked
    /// (SPIFFE trust bundles, where the keys themselves name the trust domain).
    pub issuer: Option<&'a str>,
    /// The one expected audience: `aud` must be this string, or an array holding exactly
    /// this one value. An array of several values is refused — a token meant for several
    /// parties could be replayed by any of them.
    pub audience: &'a str,
    /// Accepted algorithms; a header `alg` outside them is refused.
    pub algs: &'a [Alg],
    /// `Some`: `iat` is required and may be at most this many seconds old.
    pub max_age_secs: Option<i64>,
    /// Tolerated clock skew, in seconds, within `0..=`[`MAX_LEEWAY_SECS`].
    pub leeway_secs: i64,
    /// "Now", in unix seconds.
    pub now_secs: i64,
}

/// A token whose signature and claims passed [`verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Every claim, as the issuer wrote them. `sub` is a string, `exp` a number.
    pub claims: Map<String, Value>,
    /// The `kid` of the key that verified it.
    pub kid: String,
    /// The algorithm it was verified with.
    pub alg: Alg,
    /// The `jti`, if there was one.
    pub jti: Option<String>,
    /// Expiry, unix seconds (a fractional `exp` rounded down).
    pub exp: i64,
    /// Issued at, unix seconds (a fractional `iat` rounded up), if there was one.
    pub iat: Option<i64>,
}

impl Verified {
    /// The subject (present and a string: [`verify`] checked it).
    pub fn sub(&self) -> &str {
        self.claims.get("sub").and_then(Value::as_str).unwrap_or("")
    }
}

/// Verifies a compact JWS issued by someone else against that issuer's keys and `policy`.
///
/// The key is chosen by the header's `kid` (required) among `keys` only: no key with that
/// id is [`TokenError::UnknownKid`], on which a caller may refresh the issuer's key set
/// once. A key that declares an `alg` verifies that algorithm only. The signature is
/// checked before any claim is read.
pub fn verify(
    token: &str,
    keys: &[PublicJwk],
    policy: &Policy<'_>,
) -> Result<Verified, TokenError> {
    let jws = split(token, &TYPS)?;
    if !policy.algs.contains(&jws.alg) {
        return Err(TokenError::AlgNotAllowed(jws.alg.as_str().to_owned()));
    }
    let mut named = keys
        .iter()
        .filter(|k| k.kid() == Some(jws.kid.as_str()))
        .peekable();
    if named.peek().is_none() {
        return Err(TokenError::UnknownKid(jws.kid));
    }
    // Several keys may share a kid (an RSA and an EC key during a migration): take the
    // one that can verify this algorithm; none is an algorithm refusal.
    let key = named
        .find(|k| k.fits(jws.alg) && k.alg().is_none_or(|a| a == jws.alg))
        .ok_or_else(|| TokenError::AlgNotAllowed(jws.alg.as_str().to_owned()))?;
    key.verify(jws.alg, jws.signed, &jws.sig)?;

    let payload = URL_SAFE_NO_PAD
        .decode(jws.payload)
        .map_err(|_| malformed("payload is not base64url"))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| malformed("payload is not a JSON object"))?;
    let checked = check_claims(&claims, policy)?;
    Ok(Verified {
        claims,
        kid: jws.kid,
        alg: jws.alg,
        jti: checked.jti,
        exp: checked.exp,
        iat: checked.iat,
    })
}

struct Checked {
    jti: Option<String>,
    exp: i64,
    iat: Option<i64>,
}

fn check_claims(claims: &Map<String, Value>, policy: &Policy<'_>) -> Result<Checked, TokenError> {
    let leeway = policy.leeway_secs.clamp(0, MAX_LEEWAY_SECS);
    let now = policy.now_secs;
    if let Some(issuer) = policy.issuer {
        let iss = string(claims, "iss")?.ok_or_else(|| missing("iss"))?;
        if iss != issuer {
            return Err(TokenError::WrongIssuer(iss.to_owned()));
        }
    }
    check_audience(claims.get("aud"), policy.audience)?;
    let exp = date(claims, "exp", Round::Down)?.ok_or_else(|| missing("exp"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired(exp));
    }
    if let Some(nbf) = date(claims, "nbf", Round::Up)?
        && nbf > now.saturating_add(leeway)
    {
        return Err(TokenError::NotYetValid(nbf));
    }
    let iat = date(claims, "iat", Round::Up)?;
    if let Some(iat) = iat
        && iat > now.saturating_add(leeway)
    {
        return Err(TokenError::NotYetValid(iat));
    }
    if let Some(max_age_secs) = policy.max_age_secs {
        let iat = iat.ok_or_else(|| missing("iat"))?;
        if now > iat.saturating_add(max_age_secs).saturating_add(leeway) {
            return Err(TokenError::TooOld { iat, max_age_secs });
        }
    }
    match string(claims, "sub")? {
        Some("") => return Err(malformed("claim `sub` is empty")),
        Some(_) => {}
        None => return Err(missing("sub")),
    }
    let jti = string(claims, "jti")?.map(str::to_owned);
    Ok(Checked { jti, exp, iat })
}

fn missing(claim: &str) -> TokenError {
    TokenError::MissingClaim(claim.to_owned())
}

/// A string claim: `None` when absent, malformed when present as anything else.
fn string<'c>(claims: &'c Map<String, Value>, name: &str) -> Result<Option<&'c str>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenError::Malformed(format!(
            "claim `{name}` is not a string"
        ))),
    }
}

/// `aud` is the expected audience, or an array holding exactly that one value.
fn check_audience(aud: Option<&Value>, expected: &str) -> Result<(), TokenError> {
    let wrong = |got: &str| TokenError::WrongAudience(got.to_owned(), expected.to_owned());
    match aud {
        None => Err(missing("aud")),
        Some(Value::String(a)) if a == expected => Ok(()),
        Some(Value::String(a)) => Err(wrong(a)),
        Some(Value::Array(list)) => match list.as_slice() {
            [] => Err(missing("aud")),
            [Value::String(a)] if a == expected => Ok(()),
            [Value::String(a)] => Err(wrong(a)),
            list if list.iter().all(Value::is_string) => {
                Err(TokenError::TooManyAudiences(list.len()))
            }
            _ => Err(malformed("claim `aud` holds a value that is not a string")),
        },
        Some(_) => Err(malformed("claim `aud` is neither a string nor an array")),
    }
}

/// Which way a fractional NumericDate is rounded: always towards the stricter reading.
#[derive(Clone, Copy)]
enum Round {
    /// For `exp`: a token never lives longer than it says.
    Down,
    /// For `nbf` and `iat`: a token is never older, or valid earlier, than it says.
    Up,
}

/// A NumericDate claim (RFC 7519 §2): `None` when absent, malformed when not a number.
fn date(claims: &Map<String, Value>, name: &str, round: Round) -> Result<Option<i64>, TokenError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    if let Some(i) = v.as_i64() {
        return Ok(Some(i));
    }
    match v.as_f64().filter(|f| f.is_finite()) {
        // `as` saturates at the i64 range, which the time checks treat as far away.
        Some(f) => Ok(Some(match round {
            Round::Down => f.floor() as i64,
            Round::Up => f.ceil() as i64,
        })),
        None => Err(TokenError::Malformed(format!(
            "claim `{name}` is not a number of seconds"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
        RSA_PKCS1_SHA256, RSA_PSS_SHA256,
    };
    use serde_json::json;

    use super::*;
    use crate::jws::{FORBIDDEN_HEADER_FIELDS, MAX_TOKEN_BYTES};

    const ISS: &str = "https://idp.example";
    const AUD: &str = "mandate";
    const NOW: i64 = 1_000_000;

    enum Pair {
        Ec(EcdsaKeyPair),
        Rsa(&'static RsaKeyPair),
        Ed(Ed25519KeyPair),
    }

    /// A key of another issuer, made in the test: its public JWK and a signer.
    struct Issuer {
        kid: &'static str,
        pair: Pair,
    }

    static RSA: LazyLock<RsaKeyPair> =
        LazyLock::new(|| RsaKeyPair::generate(KeySize::Rsa2048).unwrap());

    fn ec(kid: &'static str) -> Issuer {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        Issuer {
            kid,
            pair: Pair::Ec(pair),
        }
    }

    fn ed(kid: &'static str) -> Issuer {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Issuer {
            kid,
            pair: Pair::Ed(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()),
        }
    }

    /// The one RSA key of the tests (2048-bit generation is slow), under any kid.
    fn rsa(kid: &'static str) -> Issuer {
        Issuer {
            kid,
            pair: Pair::Rsa(&RSA),
        }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    impl Issuer {
        /// The public JWK, with `kid` and any extra members.
        fn jwk_json(&self, extra: Value) -> Value {
            let mut v = match &self.pair {
                Pair::Ec(p) => {
                    let point = p.public_key().as_ref();
                    json!({"kty":"EC","crv":"P-256","x":b64(&point[1..33]),"y":b64(&point[33..])})
                }
                Pair::Rsa(p) => {
                    let public = p.public_key();
                    json!({"kty":"RSA",
                        "n":b64(public.modulus().big_endian_without_leading_zero()),
                        "e":b64(public.exponent().big_endian_without_leading_zero())})
                }
                Pair::Ed(p) => {
                    json!({"kty":"OKP","crv":"Ed25519","x":b64(p.public_key().as_ref())})
                }
            };
            v["kid"] = json!(self.kid);
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
            v
        }

        fn jwk(&self) -> PublicJwk {
            PublicJwk::from_json(&self.jwk_json(json!({}))).unwrap()
        }

        fn alg(&self) -> &'static str {
            match self.pair {
                Pair::Ec(_) => "ES256",
                Pair::Rsa(_) => "RS256",
                Pair::Ed(_) => "EdDSA",
            }
        }

        /// Signs exactly this header and payload JSON with `alg`.
        fn sign_as(&self, alg: &str, header: &Value, claims: &Value) -> String {
            let msg = format!(
                "{}.{}",
                b64(&serde_json::to_vec(header).unwrap()),
                b64(&serde_json::to_vec(claims).unwrap())
            );
            let sig = match &self.pair {
                Pair::Ec(p) => p
                    .sign(&SystemRandom::new(), msg.as_bytes())
                    .unwrap()
                    .as_ref()
                    .to_vec(),
                Pair::Ed(p) => p.sign(msg.as_bytes()).as_ref().to_vec(),
                Pair::Rsa(p) => {
                    let padding = if alg == "PS256" {
                        &RSA_PSS_SHA256
                    } else {
                        &RSA_PKCS1_SHA256
                    };
                    let mut sig = vec![0; p.public_modulus_len()];
                    p.sign(padding, &SystemRandom::new(), msg.as_bytes(), &mut sig)
                        .unwrap();
                    sig
                }
            };
            format!("{msg}.{}", b64(&sig))
        }

        /// A token with the standard header (`alg`, `kid`, `typ: JWT`) over `claims`.
        fn sign(&self, claims: &Value) -> String {
            self.sign_as(
                self.alg(),
                &json!({"alg":self.alg(),"kid":self.kid,"typ":"JWT"}),
                claims,
            )
        }

        /// A token with a header of the test's choosing over the good claims.
        fn with_header(&self, header: Value) -> String {
            let alg = header["alg"].as_str().unwrap_or("none").to_owned();
            self.sign_as(&alg, &header, &claims())
        }
    }

    fn claims() -> Value {
        json!({"iss":ISS,"sub":"user-1","aud":AUD,"exp":NOW + 300,"iat":NOW - 10,"nbf":NOW - 10,"jti":"j-1"})
    }

    fn claims_with(k: &str, v: Value) -> Value {
        let mut c = claims();
        c[k] = v;
        c
    }

    fn claims_without(k: &str) -> Value {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(k);
        c
    }

    const ALL: [Alg; 4] = [Alg::ES256, Alg::RS256, Alg::PS256, Alg::EdDSA];

    fn policy() -> Policy<'static> {
        Policy {
            issuer: Some(ISS),
            audience: AUD,
            algs: &ALL,
            max_age_secs: None,
            leeway_secs: 30,
            now_secs: NOW,
        }
    }

    /// A token that must be refused with `code`; the good keys and policy unless changed.
    struct Case<'a> {
        name: &'a str,
        token: String,
        keys: Vec<PublicJwk>,
        policy: Policy<'a>,
        code: &'a str,
    }

    impl<'a> Case<'a> {
        fn new(name: &'a str, token: String, keys: &[PublicJwk], code: &'a str) -> Self {
            Self {
                name,
                token,
                keys: keys.to_vec(),
                policy: policy(),
                code,
            }
        }
        fn keys(self, keys: Vec<PublicJwk>) -> Self {
            Self { keys, ..self }
        }
        fn policy(self, policy: Policy<'a>) -> Self {
            Self { policy, ..self }
        }
    }

    #[test]
    fn each_key_type_verifies() {
        let ps = rsa("ps");
        for (issuer, alg) in [
            (ec("e1"), Alg::ES256),
            (rsa("r1"), Alg::RS256),
            (ed("o1"), Alg::EdDSA),
        ] {
            let keys = [ec("other").jwk(), issuer.jwk()];
            let v = verify(&issuer.sign(&claims()), &keys, &policy()).unwrap();
            assert_eq!(
                (
                    v.kid.as_str(),
                    v.alg,
                    v.exp,
                    v.iat,
                    v.jti.as_deref(),
                    v.sub()
                ),
                (
                    issuer.kid,
                    alg,
                    NOW + 300,
                    Some(NOW - 10),
                    Some("j-1"),
                    "user-1"
                )
            );
            assert_eq!(Value::Object(v.claims), claims());
        }
        let pss = ps.sign_as("PS256", &json!({"alg":"PS256","kid":"ps"}), &claims());
        assert_eq!(
            verify(&pss, &[ps.jwk()], &policy()).unwrap().alg,
            Alg::PS256
        );
    }

    /// What a conforming issuer may send, and is accepted.
    #[test]
    fn accepted_variants() {
        let k = ec("k");
        let keys = [k.jwk()];
        let ok = |token: String, p: Policy<'_>| {
            verify(&token, &keys, &p).unwrap_or_else(|e| panic!("{token}: {e}"))
        };
        ok(k.sign(&claims_with("aud", json!([AUD]))), policy());
        for typ in [
            None,
            Some("at+jwt"),
            Some("application/JWT"),
            Some("JOSE"),
            Some("jwt"),
        ] {
            let mut h = json!({"alg":"ES256","kid":"k"});
            if let Some(t) = typ {
                h["typ"] = json!(t);
            }
            ok(k.with_header(h), policy());
        }
        // No issuer to check (a SPIFFE bundle): any `iss`, or none.
        let spiffe = Policy {
            issuer: None,
            ..policy()
        };
        ok(k.sign(&claims_without("iss")), spiffe);
        ok(k.sign(&claims_with("iss", json!("someone"))), spiffe);
        // No nbf, iat or jti: all optional without a maximum age.
        let mut bare = claims();
        for c in ["nbf", "iat", "jti"] {
            bare.as_object_mut().unwrap().remove(c);
        }
        let v = ok(k.sign(&bare), policy());
        assert_eq!((v.iat, v.jti), (None, None));
        // Fractional dates, each rounded the strict way.
        let v = ok(
            k.sign(&claims_with("exp", json!(NOW as f64 + 10.9))),
            policy(),
        );
        assert_eq!(v.exp, NOW + 10);
        let v = ok(
            k.sign(&claims_with("iat", json!(NOW as f64 - 0.5))),
            policy(),
        );
        assert_eq!(v.iat, Some(NOW));
        // Leeway covers skew both ways, and a maximum age within it passes.
        ok(k.sign(&claims_with("exp", json!(NOW - 29))), policy());
        ok(k.sign(&claims_with("nbf", json!(NOW + 30))), policy());
        ok(
            k.sign(&claims_with("iat", json!(NOW - 3_630))),
            Policy {
                max_age_secs: Some(3_600),
                ..policy()
            },
        );
        // Two keys share the kid: the one that fits the algorithm verifies.
        let r = rsa("k");
        let both = [r.jwk(), k.jwk()];
        assert!(verify(&k.sign(&claims()), &both, &policy()).is_ok());
        assert!(verify(&r.sign(&claims()), &both, &policy()).is_ok());
    }

    /// Every refusal, each with the code it must produce.
    #[test]
    fn refusals() {
        let k = ec("k");
        let r = rsa("r");
        let o = ed("o");
        let impostor = ec("k");
        let keys = vec![k.jwk(), r.jwk(), o.jwk()];
        let good = k.sign(&claims());
        let (msg, _) = good.rsplit_once('.').unwrap();
        let bad_sig = format!("{msg}.{}", b64(&[0u8; 64]));
        let tampered = {
            let mut parts: Vec<&str> = good.split('.').collect();
            let other = b64(&serde_json::to_vec(&claims_with("sub", json!("admin"))).unwrap());
            parts[1] = &other;
            parts.join(".")
        };
        let der_sig = {
            let raw = URL_SAFE_NO_PAD
                .decode(good.rsplit('.').next().unwrap())
                .unwrap();
            let int = |b: &[u8]| {
                let b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
                let pad = b.first().is_some_and(|x| x & 0x80 != 0);
                let mut v = vec![0x02, u8::try_from(b.len() + usize::from(pad)).unwrap()];
                if pad {
                    v.push(0);
                }
                v.extend(b);
                v
            };
            let body = [int(&raw[..32]), int(&raw[32..])].concat();
            let der = [vec![0x30, u8::try_from(body.len()).unwrap()], body].concat();
            format!("{msg}.{}", b64(&der))
        };
        let not_object = k.sign_as("ES256", &json!({"alg":"ES256","kid":"k"}), &json!([1]));
        let declares_rs256 = PublicJwk::from_json(&r.jwk_json(json!({"alg":"RS256"}))).unwrap();
        let no_kid_key = PublicJwk::from_json(&{
            let mut v = k.jwk_json(json!({}));
            v.as_object_mut().unwrap().remove("kid");
            v
        })
        .unwrap();
        let h = |v: Value| k.with_header(v);
        let es_only: &[Alg] = &[Alg::ES256];

        let max_age = Policy {
            max_age_secs: Some(60),
            ..policy()
        };
        let not_json = format!("{}.e30.", b64(b"{"));
        let alg_none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","kid":"k"}"#),
            good.split('.').nth(1).unwrap()
        );
        let expired_bad_sig = {
            let t = k.sign(&claims_with("exp", json!(1)));
            let (m, _) = t.rsplit_once('.').unwrap();
            format!("{m}.{}", b64(&[1u8; 64]))
        };
        let c = |name, token: String, code| Case::new(name, token, &keys, code);
        let mut cases = vec![
            c("huge", "a".repeat(MAX_TOKEN_BYTES + 1), "token_malformed"),
            c("two parts", "a.b".into(), "token_malformed"),
            c("four parts", format!("{good}.x"), "token_malformed"),
            c("header not json", not_json, "token_malformed"),
            c(
                "header not object",
                format!("{}.e30.", b64(b"[]")),
                "token_malformed",
            ),
            c("no alg", h(json!({"kid":"k"})), "token_malformed"),
            c("alg none", alg_none, "token_alg_not_allowed"),
            c(
                "alg HS256",
                h(json!({"alg":"HS256","kid":"k"})),
                "token_alg_not_allowed",
            ),
            c(
                "alg not a string",
                h(json!({"alg":1,"kid":"k"})),
                "token_alg_not_allowed",
            ),
            c(
                "alg off the allow-list",
                o.sign(&claims()),
                "token_alg_not_allowed",
            )
            .policy(Policy {
                algs: es_only,
                ..policy()
            }),
            c("no kid", h(json!({"alg":"ES256"})), "token_malformed"),
            c(
                "kid not a string",
                h(json!({"alg":"ES256","kid":7})),
                "token_malformed",
            ),
            c(
                "typ dpop+jwt",
                h(json!({"alg":"ES256","kid":"k","typ":"dpop+jwt"})),
                "token_malformed",
            ),
            c(
                "typ secevent+jwt",
                h(json!({"alg":"ES256","kid":"k","typ":"secevent+jwt"})),
                "token_malformed",
            ),
            c(
                "unknown kid",
                ec("nope").sign(&claims()),
                "token_unknown_kid",
            ),
            c("keys without kid", good.clone(), "token_unknown_kid").keys(vec![no_kid_key]),
            c("no keys", good.clone(), "token_unknown_kid").keys(vec![]),
            c(
                "key declares another alg",
                r.sign_as("PS256", &json!({"alg":"PS256","kid":"r"}), &claims()),
                "token_alg_not_allowed",
            )
            .keys(vec![declares_rs256]),
            c(
                "alg does not fit the key",
                r.sign_as("ES256", &json!({"alg":"ES256","kid":"r"}), &claims()),
                "token_alg_not_allowed",
            ),
            c(
                "EdDSA on an EC key",
                k.sign_as("EdDSA", &json!({"alg":"EdDSA","kid":"k"}), &claims()),
                "token_alg_not_allowed",
            ),
            c("bad signature", bad_sig, "token_bad_signature"),
            c("tampered payload", tampered, "token_bad_signature"),
            c("DER signature", der_sig, "token_bad_signature"),
            c(
                "same kid, other key",
                impostor.sign(&claims()),
                "token_bad_signature",
            ),
            c(
                "signature before claims",
                expired_bad_sig,
                "token_bad_signature",
            ),
            c("payload not an object", not_object, "token_malformed"),
            c("wrong issuer", good.clone(), "token_wrong_issuer").policy(Policy {
                issuer: Some("https://other"),
                ..policy()
            }),
            c(
                "no iss",
                k.sign(&claims_without("iss")),
                "token_missing_claim",
            ),
            c(
                "iss not a string",
                k.sign(&claims_with("iss", json!(1))),
                "token_malformed",
            ),
            c("wrong audience", good.clone(), "token_wrong_audience").policy(Policy {
                audience: "other",
                ..policy()
            }),
            c(
                "aud one wrong",
                k.sign(&claims_with("aud", json!(["other"]))),
                "token_wrong_audience",
            ),
            c(
                "aud several",
                k.sign(&claims_with("aud", json!([AUD, "x"]))),
                "token_multiple_audiences",
            ),
            c(
                "aud empty",
                k.sign(&claims_with("aud", json!([]))),
                "token_missing_claim",
            ),
            c(
                "no aud",
                k.sign(&claims_without("aud")),
                "token_missing_claim",
            ),
            c(
                "aud number",
                k.sign(&claims_with("aud", json!(1))),
                "token_malformed",
            ),
            c(
                "aud numbers",
                k.sign(&claims_with("aud", json!([1, 2]))),
                "token_malformed",
            ),
            c(
                "no exp",
                k.sign(&claims_without("exp")),
                "token_missing_claim",
            ),
            c(
                "exp a string",
                k.sign(&claims_with("exp", json!("2030"))),
                "token_malformed",
            ),
            c(
                "expired",
                k.sign(&claims_with("exp", json!(NOW - 30))),
                "token_expired",
            ),
            c(
                "leeway is bounded",
                k.sign(&claims_with("exp", json!(NOW - MAX_LEEWAY_SECS))),
                "token_expired",
            )
            .policy(Policy {
                leeway_secs: 86_400,
                ..policy()
            }),
            c(
                "nbf ahead",
                k.sign(&claims_with("nbf", json!(NOW + 31))),
                "token_not_yet_valid",
            ),
            c(
                "nbf a string",
                k.sign(&claims_with("nbf", json!("x"))),
                "token_malformed",
            ),
            c(
                "iat ahead",
                k.sign(&claims_with("iat", json!(NOW + 31))),
                "token_not_yet_valid",
            ),
            c(
                "no iat, max age",
                k.sign(&claims_without("iat")),
                "token_missing_claim",
            )
            .policy(max_age),
            c(
                "too old",
                k.sign(&claims_with("iat", json!(NOW - 91))),
                "token_too_old",
            )
            .policy(max_age),
            c(
                "no sub",
                k.sign(&claims_without("sub")),
                "token_missing_claim",
            ),
            c(
                "sub a number",
                k.sign(&claims_with("sub", json!(7))),
                "token_malformed",
            ),
            c(
                "sub empty",
                k.sign(&claims_with("sub", json!(""))),
                "token_malformed",
            ),
            c(
                "jti a number",
                k.sign(&claims_with("jti", json!(7))),
                "token_malformed",
            ),
        ];
        for field in FORBIDDEN_HEADER_FIELDS {
            let mut header = json!({"alg":"ES256","kid":"k"});
            header[field] = json!("x");
            cases.push(c(field, h(header), "token_header_not_allowed"));
        }
        for case in cases {
            match verify(&case.token, &case.keys, &case.policy) {
                Ok(v) => panic!("{}: accepted {v:?}", case.name),
                Err(e) => assert_eq!(e.code(), case.code, "{}: {e}", case.name),
            }
        }
    }
}

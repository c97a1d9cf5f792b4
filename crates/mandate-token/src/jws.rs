use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::jwk::Alg;
use crate::{KeyRing, RegisteredClaims, TokenError};

/// Longest token accepted, in bytes. Anything larger is refused before decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Header fields that carry or locate keys, or demand extensions we do not implement.
/// Refused by every verifier in this crate: keys come only from the verifier's own set.
pub(crate) const FORBIDDEN_HEADER_FIELDS: [&str; 7] =
    ["jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit"];

/// What a verified token must say, and the time to check it at.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// The only accepted `iss`.
    pub issuer: &'a str,
    /// The only accepted `aud`.
    pub audience: &'a str,
    /// Tolerated clock skew, in seconds.
    pub leeway_secs: i64,
    /// "Now", in unix seconds.
    pub now_secs: i64,
}

/// Signs `claims` with the ring's active key as a compact JWS (`typ: JWT`; `alg: ES256`,
/// or `EdDSA` while a ring from before the upgrade still signs with its Ed25519 key).
pub fn sign<C: Serialize>(ring: &KeyRing, claims: &C) -> Result<String, TokenError> {
    sign_typed(ring, "JWT", claims)
}

/// [`sign`] with another `typ` header (e.g. `secevent+jwt` for a Security Event Token,
/// RFC 8417 §2.3), so a receiver can tell it from an access or identity token.
pub fn sign_typed<C: Serialize>(
    ring: &KeyRing,
    typ: &str,
    claims: &C,
) -> Result<String, TokenError> {
    let key = ring.active();
    let header = serde_json::json!({ "alg": key.alg().as_str(), "typ": typ, "kid": key.kid() });
    let header = serde_json::to_vec(&header).map_err(|e| TokenError::Signing(e.to_string()))?;
    let payload = serde_json::to_vec(claims).map_err(|e| TokenError::Signing(e.to_string()))?;
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let sig = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(token)
}

pub(crate) fn malformed(what: &str) -> TokenError {
    TokenError::Malformed(what.to_owned())
}

/// A compact JWS whose shape and header have been checked, before any key is chosen and
/// before anything in it is trusted.
#[derive(Debug)]
pub(crate) struct Compact<'t> {
    /// The header's `alg`: one with a public-key verifier (never `none` or HMAC).
    pub(crate) alg: Alg,
    /// The header's `kid`.
    pub(crate) kid: String,
    /// The signing input: `header.payload` as sent.
    pub(crate) signed: &'t [u8],
    /// The payload, still base64url.
    pub(crate) payload: &'t str,
    /// The decoded signature.
    pub(crate) sig: Vec<u8>,
}

/// Splits a compact JWS and checks its header, cheapest first: at most
/// [`MAX_TOKEN_BYTES`], three parts, a JSON object header whose `alg` is a public-key
/// algorithm, none of [`FORBIDDEN_HEADER_FIELDS`], `typ` absent or one of `typs`
/// (case-insensitive), and a string `kid`. The caller then applies its own algorithm
/// allow-list, picks the key by `kid` and verifies [`Compact::sig`].
pub(crate) fn split<'t>(token: &'t str, typs: &[&str]) -> Result<Compact<'t>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed("token is longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };

    let header_bytes = URL_SAFE_NO_PAD
        .decode(h64)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
        .map_err(|_| malformed("header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => {
            Alg::parse(alg).ok_or_else(|| TokenError::AlgNotAllowed(alg.clone()))?
        }
        Some(other) => return Err(TokenError::AlgNotAllowed(other.to_string())),
        None => return Err(malformed("header has no alg")),
    };
    if let Some(field) = FORBIDDEN_HEADER_FIELDS
        .iter()
        .find(|f| header.contains_key(**f))
    {
        return Err(TokenError::HeaderNotAllowed((*field).to_owned()));
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if typs.iter().any(|ok| t.eq_ignore_ascii_case(ok)) => {}
        Some(_) => {
            return Err(TokenError::Malformed(format!(
                "header typ must be {}",
                typs.join(" or ")
            )));
        }
    }
    let Some(Value::String(kid)) = header.get("kid") else {
        return Err(malformed("header has no kid"));
    };
    let sig = URL_SAFE_NO_PAD
        .decode(s64)
        .map_err(|_| malformed("signature is not base64url"))?;
    let signed_len = h64.len() + 1 + p64.len();
    let signed = token
        .get(..signed_len)
        .ok_or_else(|| malformed("token is truncated"))?;
    Ok(Compact {
        alg,
        kid: kid.clone(),
        signed: signed.as_bytes(),
        payload: p64,
        sig,
    })
}

/// Verifies a compact JWS against the ring and the expectations, then decodes its claims
/// as `C`. Checks run cheapest-first and every failure names what was wrong.
///
/// The header's `alg` must be `ES256` or `EdDSA` *and* the algorithm of the key its `kid`
/// names: a key verifies under its own algorithm only.
pub fn verify<C: DeserializeOwned>(
    token: &str,
    ring: &KeyRing,
    expect: &Expectations<'_>,
) -> Result<C, TokenError> {
    let jws = split(token, &["JWT"])?;
    if !matches!(jws.alg, Alg::ES256 | Alg::EdDSA) {
        return Err(TokenError::AlgNotAllowed(jws.alg.as_str().to_owned()));
    }
    let now_ms = expect.now_secs.saturating_mul(1000);
    let key = ring
        .verifier(&jws.kid, now_ms)
        .ok_or_else(|| TokenError::UnknownKid(jws.kid.clone()))?;
    if key.key.alg != jws.alg {
        return Err(TokenError::AlgNotAllowed(jws.alg.as_str().to_owned()));
    }
    key.parsed
        .verify_sig(jws.signed, &jws.sig)
        .map_err(|_| TokenError::BadSignature)?;

    let payload = URL_SAFE_NO_PAD
        .decode(jws.payload)
        .map_err(|_| malformed("payload is not base64url"))?;
    let reg: RegisteredClaims = serde_json::from_slice(&payload).map_err(|e| {
        TokenError::Malformed(format!(
            "registered claims missing or mistyped (iss, sub, single-string aud, exp, iat, nbf, jti): {e}"
        ))
    })?;
    if reg.iss != expect.issuer {
        return Err(TokenError::WrongIssuer(reg.iss));
    }
    if reg.aud != expect.audience {
        return Err(TokenError::WrongAudience(
            reg.aud,
            expect.audience.to_owned(),
        ));
    }
    if expect.now_secs >= reg.exp.saturating_add(expect.leeway_secs) {
        return Err(TokenError::Expired(reg.exp));
    }
    if reg.nbf > expect.now_secs.saturating_add(expect.leeway_secs) {
        return Err(TokenError::NotYetValid(reg.nbf));
    }
    if reg.iat > expect.now_secs.saturating_add(expect.leeway_secs) {
        return Err(TokenError::NotYetValid(reg.iat));
    }
    serde_json::from_slice(&payload)
        .map_err(|e| TokenError::Malformed(format!("claims do not fit this token kind: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IdentityClaims, StoredKey, TaskClaims};

    const ISS: &str = "http://127.0.0.1:8181";
    const AUD: &str = "mandate:control-plane";

    fn ring() -> KeyRing {
        KeyRing::from_stored(&[StoredKey::generate(0).unwrap()], 1000, 0).unwrap()
    }

    fn claims(now: i64) -> IdentityClaims {
        IdentityClaims {
            iss: ISS.into(),
            sub: "spiffe://mandate.local/agent/bot".into(),
            aud: AUD.into(),
            exp: now + 300,
            iat: now,
            nbf: now,
            jti: "j1".into(),
            auth_time: now,
        }
    }

    fn expect(now: i64) -> Expectations<'static> {
        Expectations {
            issuer: ISS,
            audience: AUD,
            leeway_secs: 30,
            now_secs: now,
        }
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    /// Re-signs arbitrary header and payload JSON with the ring's key.
    fn forge(ring: &KeyRing, header: &Value, payload: &Value) -> String {
        let msg = format!("{}.{}", b64(header), b64(payload));
        let sig = ring.active().sign(msg.as_bytes()).unwrap();
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    #[test]
    fn round_trip() {
        let r = ring();
        let t = sign(&r, &claims(1000)).unwrap();
        let c: IdentityClaims = verify(&t, &r, &expect(1000)).unwrap();
        assert_eq!(c, claims(1000));
    }

    /// One table of hostile tokens, each with the error code it must produce.
    #[test]
    fn refusals() {
        let r = ring();
        let other = ring();
        let now = 1000;
        let good = sign(&r, &claims(now)).unwrap();
        let kid = r.active().kid().to_owned();
        let alg = r.active().alg().as_str();
        let payload = serde_json::to_value(claims(now)).unwrap();
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let hdr = |v: Value| forge(&r, &v, &payload);
        let with_claim = |k: &str, v: Value| {
            let mut p = payload.clone();
            p[k] = v;
            forge(&r, &serde_json::json!({"alg":alg,"kid":kid}), &p)
        };
        parts[2] = URL_SAFE_NO_PAD.encode([0u8; 64]);
        let bad_sig = parts.join(".");
        let alg_none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg":"none","kid":kid})),
            b64(&payload)
        );
        let cases: Vec<(&str, String, Expectations<'_>)> = vec![
            ("bad signature", bad_sig, expect(now)),
            ("alg none", alg_none, expect(now)),
            (
                "alg HS256",
                hdr(serde_json::json!({"alg":"HS256","kid":kid})),
                expect(now),
            ),
            (
                "alg RS256",
                hdr(serde_json::json!({"alg":"RS256","kid":kid})),
                expect(now),
            ),
            (
                "EdDSA named for an ES256 key",
                hdr(serde_json::json!({"alg":"EdDSA","kid":kid})),
                expect(now),
            ),
            (
                "alg not a string",
                hdr(serde_json::json!({"alg":["ES256"],"kid":kid})),
                expect(now),
            ),
            (
                "typ not JWT",
                hdr(serde_json::json!({"alg":alg,"kid":kid,"typ":"at+jwt"})),
                expect(now),
            ),
            (
                "embedded jwk",
                hdr(serde_json::json!({"alg":alg,"kid":kid,"jwk":{}})),
                expect(now),
            ),
            (
                "jku",
                hdr(serde_json::json!({"alg":alg,"kid":kid,"jku":"http://x"})),
                expect(now),
            ),
            (
                "unknown kid",
                sign(&other, &claims(now)).unwrap(),
                expect(now),
            ),
            (
                "wrong audience",
                good.clone(),
                Expectations {
                    audience: "mandate:gateway",
                    ..expect(now)
                },
            ),
            (
                "wrong issuer",
                good.clone(),
                Expectations {
                    issuer: "http://evil",
                    ..expect(now)
                },
            ),
            ("expired", good.clone(), expect(now + 300 + 30)),
            (
                "not yet valid",
                with_claim("nbf", Value::from(now + 100)),
                expect(now),
            ),
            (
                "issued in future",
                with_claim("iat", Value::from(now + 100)),
                expect(now),
            ),
            (
                "aud array",
                with_claim("aud", serde_json::json!([AUD, "x"])),
                expect(now),
            ),
            (
                "no exp",
                {
                    let mut p = payload.clone();
                    p.as_object_mut().unwrap().remove("exp");
                    forge(&r, &serde_json::json!({"alg":alg,"kid":kid}), &p)
                },
                expect(now),
            ),
            ("two parts", "a.b".into(), expect(now)),
            ("garbage", "!!!.@@@.###".into(), expect(now)),
            ("huge", "a".repeat(MAX_TOKEN_BYTES + 1), expect(now)),
        ];
        let want = [
            "token_bad_signature",
            "token_alg_not_allowed",
            "token_alg_not_allowed",
            "token_alg_not_allowed",
            "token_alg_not_allowed",
            "token_alg_not_allowed",
            "token_malformed",
            "token_header_not_allowed",
            "token_header_not_allowed",
            "token_unknown_kid",
            "token_wrong_audience",
            "token_wrong_issuer",
            "token_expired",
            "token_not_yet_valid",
            "token_not_yet_valid",
            "token_malformed",
            "token_malformed",
            "token_malformed",
            "token_malformed",
            "token_malformed",
        ];
        assert_eq!(cases.len(), want.len());
        for ((name, token, exp), code) in cases.into_iter().zip(want) {
            let err = verify::<IdentityClaims>(&token, &r, &exp).unwrap_err();
            assert_eq!(err.code(), code, "{name}: {err}");
        }
    }

    #[test]
    fn identity_token_is_not_a_task_token() {
        let r = ring();
        let t = sign(&r, &claims(1000)).unwrap();
        let err = verify::<TaskClaims>(&t, &r, &expect(1000)).unwrap_err();
        assert_eq!(err.code(), "token_malformed");
    }

    #[test]
    fn leeway_is_bounded() {
        let r = ring();
        let t = sign(&r, &claims(1000)).unwrap();
        assert!(verify::<IdentityClaims>(&t, &r, &expect(1000 + 300 + 29)).is_ok());
        assert!(verify::<IdentityClaims>(&t, &r, &expect(1000 + 300 + 30)).is_err());
    }

    #[test]
    fn es256_is_the_default_with_fixed_width_signatures() {
        let r = ring();
        assert_eq!(r.active().alg(), Alg::ES256);
        let t = sign(&r, &claims(1000)).unwrap();
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg":"ES256","typ":"JWT","kid":r.active().kid()})
        );
        let sig = URL_SAFE_NO_PAD
            .decode(t.rsplit('.').next().unwrap())
            .unwrap();
        assert_eq!(sig.len(), 64, "r || s, not DER");
        // The same signature DER-encoded (as a non-JWS ECDSA signer would send it) fails.
        let der = der_ecdsa(&sig);
        let (msg, _) = t.rsplit_once('.').unwrap();
        let der_token = format!("{msg}.{}", URL_SAFE_NO_PAD.encode(der));
        let err = verify::<IdentityClaims>(&der_token, &r, &expect(1000)).unwrap_err();
        assert_eq!(err.code(), "token_bad_signature");
    }

    /// ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } for a 64-byte `r || s`.
    fn der_ecdsa(fixed: &[u8]) -> Vec<u8> {
        let int = |b: &[u8]| {
            let b: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
            let mut v = vec![0x02];
            if b.first().is_some_and(|x| x & 0x80 != 0) {
                v.push(u8::try_from(b.len() + 1).unwrap());
                v.push(0);
            } else {
                v.push(u8::try_from(b.len()).unwrap());
            }
            v.extend(b);
            v
        };
        let (r, s) = fixed.split_at(32);
        let body = [int(r), int(s)].concat();
        [vec![0x30, u8::try_from(body.len()).unwrap()], body].concat()
    }

    /// A server upgraded in place: tokens its Ed25519 key signed keep verifying (as EdDSA
    /// only) while that key is published, and stop when its overlap ends.
    #[test]
    fn legacy_eddsa_tokens_verify_while_their_key_is_published() {
        let mut old = StoredKey::generate_legacy_ed25519(0).unwrap();
        let before = KeyRing::from_stored(std::slice::from_ref(&old), 1000, 0).unwrap();
        assert_eq!(before.active().alg(), Alg::EdDSA);
        let legacy = sign(&before, &claims(1000)).unwrap();
        let c: IdentityClaims = verify(&legacy, &before, &expect(1000)).unwrap();
        assert_eq!(c, claims(1000));

        old.retired_at_ms = Some(1_000_000);
        let new = StoredKey::generate(1_000_000).unwrap();
        let after = KeyRing::from_stored(&[old.clone(), new], 300_000, 1_000_000).unwrap();
        assert_eq!(after.active().alg(), Alg::ES256);
        let c: IdentityClaims = verify(&legacy, &after, &expect(1000)).unwrap();
        assert_eq!(c, claims(1000));
        let fresh = sign(&after, &claims(1000)).unwrap();
        assert!(verify::<IdentityClaims>(&fresh, &after, &expect(1000)).is_ok());

        // The Ed25519 key verifies EdDSA only: the same token relabelled ES256 is refused
        // for its algorithm, before any signature check.
        let relabel = |token: &str, alg: &str, kid: &str| {
            let (_, rest) = token.split_once('.').unwrap();
            format!(
                "{}.{rest}",
                b64(&serde_json::json!({"alg":alg,"typ":"JWT","kid":kid}))
            )
        };
        let err =
            verify::<IdentityClaims>(&relabel(&legacy, "ES256", &old.kid), &after, &expect(1000))
                .unwrap_err();
        assert_eq!(err.code(), "token_alg_not_allowed", "{err}");
        let ec_kid = after.active().kid().to_owned();
        let err =
            verify::<IdentityClaims>(&relabel(&fresh, "EdDSA", &ec_kid), &after, &expect(1000))
                .unwrap_err();
        assert_eq!(err.code(), "token_alg_not_allowed", "{err}");

        // Past the overlap the old key is gone, and so are its tokens.
        let expect_late = Expectations {
            now_secs: 1_300,
            ..expect(1000)
        };
        assert_eq!(
            verify::<IdentityClaims>(&legacy, &after, &expect_late)
                .unwrap_err()
                .code(),
            "token_unknown_kid"
        );
    }

    /// An independent JWT library verifies both generations through the published JWKS.
    #[test]
    fn jsonwebtoken_verifies_through_the_jwks() {
        let mut old = StoredKey::generate_legacy_ed25519(0).unwrap();
        let legacy = sign(
            &KeyRing::from_stored(std::slice::from_ref(&old), 1000, 0).unwrap(),
            &claims(1000),
        )
        .unwrap();
        old.retired_at_ms = Some(1_000);
        let r = KeyRing::from_stored(
            &[old, StoredKey::generate(1_000).unwrap()],
            1_000_000,
            1_000,
        )
        .unwrap();
        let fresh = sign(&r, &claims(1000)).unwrap();
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(serde_json::to_value(r.jwks(1_000)).unwrap()).unwrap();
        for (t, alg) in [
            (&fresh, jsonwebtoken::Algorithm::ES256),
            (&legacy, jsonwebtoken::Algorithm::EdDSA),
        ] {
            let header = jsonwebtoken::decode_header(t).unwrap();
            assert_eq!(header.alg, alg);
            let key = jsonwebtoken::DecodingKey::from_jwk(
                set.find(header.kid.as_deref().unwrap()).unwrap(),
            )
            .unwrap();
            let mut v = jsonwebtoken::Validation::new(alg);
            v.set_audience(&[AUD]);
            v.set_issuer(&[ISS]);
            v.validate_exp = false;
            let data = jsonwebtoken::decode::<Value>(t, &key, &v).unwrap();
            assert_eq!(data.claims["sub"], "spiffe://mandate.local/agent/bot");
        }
    }
}

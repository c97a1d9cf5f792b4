//! Public JSON Web Keys from outside Mandate: parsing, verification and RFC 7638 thumbprints.
//!
//! Mandate's own keys live in [`crate::KeyRing`]; this module is for keys that others hold:
//! the key in a DPoP proof (RFC 9449), the keys of an external identity provider's JWKS,
//! or a SPIFFE trust bundle. A [`PublicJwk`] is validated once at the edge (parse, don't
//! validate): after [`PublicJwk::from_json`] succeeds the key is a usable public key of a
//! supported type, and nothing private came with it.
//!
//! Supported: EC P-256 (ES256), EC P-384 (ES384), OKP Ed25519 (EdDSA) and RSA with a
//! 2048–8192-bit modulus (RS256/384/512, PS256/384/512). Symmetric keys (`kty: oct`) are
//! refused: an HMAC "public" key would let anyone who can read it forge signatures.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    self, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::TokenError;

/// Largest JWKS document [`parse_jwks`] reads, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Most keys [`parse_jwks`] accepts in one document.
pub const MAX_JWKS_KEYS: usize = 100;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Largest RSA modulus accepted, in bits (aws-lc-rs verifies up to 8192).
pub const MAX_RSA_BITS: usize = 8192;

/// Members that only a private or symmetric key has (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "k", "oth"];

/// A JWS signature algorithm that a [`PublicJwk`] can verify (RFC 7518 §3.1, RFC 8037).
///
/// `none` and the HMAC algorithms are deliberately absent: they cannot be verified with
/// a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
}

impl Alg {
    /// Every algorithm, in declaration order.
    pub const ALL: [Alg; 9] = [
        Alg::EdDSA,
        Alg::ES256,
        Alg::ES384,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
    ];

    /// The algorithm named by a JWS `alg` value (case-sensitive, as RFC 7515 §4.1.1 says),
    /// or `None` for anything else, `none` and HMAC included.
    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The JWS `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
        }
    }

    fn rsa_params(self) -> Option<&'static RsaParameters> {
        match self {
            Alg::RS256 => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
            Alg::RS384 => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
            Alg::RS512 => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
            Alg::PS256 => Some(&signature::RSA_PSS_2048_8192_SHA256),
            Alg::PS384 => Some(&signature::RSA_PSS_2048_8192_SHA384),
            Alg::PS512 => Some(&signature::RSA_PSS_2048_8192_SHA512),
            Alg::EdDSA | Alg::ES256 | Alg::ES384 => None,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The NIST curves supported for `kty: EC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }

    /// Length of one coordinate, in bytes.
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    fn alg(self) -> Alg {
        match self {
            Curve::P256 => Alg::ES256,
            Curve::P384 => Alg::ES384,
        }
    }

    fn verification(self) -> &'static signature::EcdsaVerificationAlgorithm {
        match self {
            Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
            Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
        }
    }
}

/// The key material, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    /// `point` is the SEC 1 uncompressed encoding `04 || x || y`, checked to be on the curve.
    Ec { curve: Curve, point: Vec<u8> },
    /// Raw 32-byte Ed25519 public key.
    Ed25519 { x: Vec<u8> },
    /// Big-endian modulus and exponent, both without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// A validated public JWK: EC P-256/P-384, OKP Ed25519 or RSA of at least 2048 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    key: Key,
    kid: Option<String>,
    /// The JWK's `alg` member exactly as written, if any.
    declared_alg: Option<String>,
}

fn malformed(msg: impl Into<String>) -> TokenError {
    TokenError::Malformed(msg.into())
}

fn string_member<'a>(
    jwk: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, TokenError> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(malformed(format!(
            "jwk member `{name}` must be a string, not {other}"
        ))),
    }
}

fn required_string<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, TokenError> {
    string_member(jwk, name)?.ok_or_else(|| malformed(format!("jwk has no `{name}` member")))
}

/// Decodes a base64url member (no padding, canonical), so re-encoding gives back the
/// same string and the thumbprint is unambiguous.
fn b64_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(required_string(jwk, name)?)
        .map_err(|_| malformed(format!("jwk member `{name}` is not unpadded base64url")))
}

fn ec_key(jwk: &Map<String, Value>) -> Result<Key, TokenError> {
    let curve = match required_string(jwk, "crv")? {
        "P-256" => Curve::P256,
        "P-384" => Curve::P384,
        other => {
            return Err(malformed(format!(
                "EC curve {other:?} is not supported: use P-256 or P-384"
            )));
        }
    };
    let (x, y) = (b64_member(jwk, "x")?, b64_member(jwk, "y")?);
    let len = curve.coordinate_len();
    if x.len() != len || y.len() != len {
        return Err(malformed(format!(
            "{} coordinates must be {len} bytes each, got x {} and y {}",
            curve.name(),
            x.len(),
            y.len()
        )));
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    ParsedPublicKey::new(curve.verification(), &point)
        .map_err(|_| malformed(format!("the point is not on curve {}", curve.name())))?;
    Ok(Key::Ec { curve, point })
}

fn okp_key(jwk: &Map<String, Value>) -> Result<Key, TokenError> {
    match required_string(jwk, "crv")? {
        "Ed25519" => {}
        other => {
            return Err(malformed(format!(
                "OKP curve {other:?} is not supported: use Ed25519"
            )));
        }
    }
    let x = b64_member(jwk, "x")?;
    if x.len() != 32 {
        return Err(malformed(format!(
            "Ed25519 public key must be 32 bytes, got {}",
            x.len()
        )));
    }
    ParsedPublicKey::new(&signature::ED25519, &x)
        .map_err(|_| malformed("the Ed25519 public key was rejected"))?;
    Ok(Key::Ed25519 { x })
}

fn rsa_key(jwk: &Map<String, Value>) -> Result<Key, TokenError> {
    let (n, e) = (b64_member(jwk, "n")?, b64_member(jwk, "e")?);
    // RFC 7518 §6.3.1: the minimum number of octets. A leading zero would also make the
    // RFC 7638 thumbprint ambiguous.
    if n.first().is_none_or(|b| *b == 0) || e.first().is_none_or(|b| *b == 0) {
        return Err(malformed(
            "RSA `n` and `e` must be non-empty and have no leading zero octets",
        ));
    }
    let bits = n
        .len()
        .saturating_mul(8)
        .saturating_sub(n.first().map_or(8, |b| b.leading_zeros() as usize));
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(malformed(format!(
            "RSA modulus is {bits} bits: it must be {MIN_RSA_BITS} to {MAX_RSA_BITS} bits"
        )));
    }
    // The exponent: odd, at least 65537 (as *ring* requires) and fitting in 32 bits.
    let exponent = if e.len() <= 4 {
        e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    } else {
        0
    };
    if exponent < 65537 || exponent > u64::from(u32::MAX) || exponent % 2 == 0 {
        return Err(malformed(
            "RSA exponent `e` must be odd, at least 65537 and at most 32 bits",
        ));
    }
    RsaPublicKeyComponents { n: &n, e: &e }
        .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
        .map_err(|_| malformed("the RSA public key was rejected"))?;
    Ok(Key::Rsa { n, e })
}

impl PublicJwk {
    /// Parses and validates one JWK (RFC 7517 §4). Refuses private or symmetric members,
    /// unknown `kty` or `crv`, wrongly sized coordinates, points not on the curve, RSA
    /// moduli outside 2048–8192 bits, odd exponents below 65537, and an `alg` member that
    /// names a known algorithm the key cannot do.
    pub fn from_json(v: &Value) -> Result<PublicJwk, TokenError> {
        let Value::Object(jwk) = v else {
            return Err(malformed("jwk is not a JSON object"));
        };
        if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
            return Err(malformed(format!(
                "jwk has the private member `{member}`: only public keys are accepted"
            )));
        }
        let key = match required_string(jwk, "kty")? {
            "EC" => ec_key(jwk)?,
            "OKP" => okp_key(jwk)?,
            "RSA" => rsa_key(jwk)?,
            "oct" => {
                return Err(malformed(
                    "jwk kty \"oct\" is a symmetric key: only public keys are accepted",
                ));
            }
            other => {
                return Err(malformed(format!(
                    "jwk kty {other:?} is not supported: use EC, OKP or RSA"
                )));
            }
        };
        let kid = string_member(jwk, "kid")?.map(str::to_owned);
        let declared_alg = string_member(jwk, "alg")?.map(str::to_owned);
        let jwk = PublicJwk {
            key,
            kid,
            declared_alg,
        };
        if let Some(alg) = jwk.alg()
            && !jwk.fits(alg)
        {
            return Err(malformed(format!(
                "jwk alg {alg} does not fit its key type {}",
                jwk.key_type()
            )));
        }
        Ok(jwk)
    }

    /// The key id, if the JWK has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The JWK's own `alg`, if it names an algorithm this module knows.
    pub fn alg(&self) -> Option<Alg> {
        self.declared_alg.as_deref().and_then(Alg::parse)
    }

    /// A short description of the key type, for messages: `EC P-256`, `OKP Ed25519`, `RSA`.
    pub fn key_type(&self) -> &'static str {
        match &self.key {
            Key::Ec {
                curve: Curve::P256, ..
            } => "EC P-256",
            Key::Ec {
                curve: Curve::P384, ..
            } => "EC P-384",
            Key::Ed25519 { .. } => "OKP Ed25519",
            Key::Rsa { .. } => "RSA",
        }
    }

    /// Whether `alg` can be verified with this key type.
    pub fn fits(&self, alg: Alg) -> bool {
        match &self.key {
            Key::Ec { curve, .. } => curve.alg() == alg,
            Key::Ed25519 { .. } => alg == Alg::EdDSA,
            Key::Rsa { .. } => alg.rsa_params().is_some(),
        }
    }

    /// The RFC 7638 JWK thumbprint: base64url(SHA-256 of the required members in
    /// lexicographic order, no whitespace).
    pub fn thumbprint(&self) -> String {
        // Every value is either a fixed name or base64url text, so no JSON escaping is
        // needed.
        let canonical = match &self.key {
            Key::Ec { curve, point } => {
                let coords = point.get(1..).unwrap_or_default();
                let (x, y) = coords.split_at(coords.len() / 2);
                format!(
                    r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                    curve.name(),
                    URL_SAFE_NO_PAD.encode(x),
                    URL_SAFE_NO_PAD.encode(y)
                )
            }
            Key::Ed25519 { x } => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(x)
            ),
            Key::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(e),
                URL_SAFE_NO_PAD.encode(n)
            ),
        };
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    /// Verifies a JWS signature over `signed` (the ASCII `header.payload`).
    ///
    /// `alg` must fit the key type (P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA, RSA →
    /// RS*/PS*) and, when the JWK declares an `alg`, equal it; otherwise
    /// [`TokenError::AlgNotAllowed`]. ECDSA signatures are the JWS fixed-length `r || s`.
    pub fn verify(&self, alg: Alg, signed: &[u8], sig: &[u8]) -> Result<(), TokenError> {
        let declared_other = self
            .declared_alg
            .as_deref()
            .is_some_and(|d| d != alg.as_str());
        if declared_other || !self.fits(alg) {
            return Err(TokenError::AlgNotAllowed(alg.as_str().to_owned()));
        }
        let result = match &self.key {
            Key::Ec { curve, point } => {
                UnparsedPublicKey::new(curve.verification(), point).verify(signed, sig)
            }
            Key::Ed25519 { x } => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(signed, sig)
            }
            Key::Rsa { n, e } => match alg.rsa_params() {
                Some(params) => RsaPublicKeyComponents { n, e }.verify(params, signed, sig),
                None => return Err(TokenError::AlgNotAllowed(alg.as_str().to_owned())),
            },
        };
        result.map_err(|_| TokenError::BadSignature)
    }
}

/// Parses a JWKS document (RFC 7517 §5) or a SPIFFE bundle (keys with `"use": "jwt-svid"`
/// or `"x509-svid"`).
///
/// Keeps the usable signature keys: `use` absent, `"sig"` or `"jwt-svid"`, and `key_ops`
/// absent or containing `"verify"`. Other uses (`enc`, `x509-svid`) and keys that do not
/// parse as a supported public key are skipped, so one odd key does not take down the set.
/// Errors only when the document is over [`MAX_JWKS_BYTES`], is not a JSON object with a
/// `keys` array, or has more than [`MAX_JWKS_KEYS`] keys.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<PublicJwk>, TokenError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(malformed(format!(
            "jwks is {} bytes: the limit is {MAX_JWKS_BYTES}",
            bytes.len()
        )));
    }
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("jwks is not JSON: {e}")))?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err(malformed("jwks is not a JSON object with a `keys` array"));
    };
    if keys.len() > MAX_JWKS_KEYS {
        return Err(malformed(format!(
            "jwks has {} keys: the limit is {MAX_JWKS_KEYS}",
            keys.len()
        )));
    }
    Ok(keys
        .iter()
        .filter(|k| is_signature_key(k))
        .filter_map(|k| PublicJwk::from_json(k).ok())
        .collect())
}

fn is_signature_key(k: &Value) -> bool {
    let use_ok = match k.get("use") {
        None => true,
        Some(Value::String(u)) => u == "sig" || u == "jwt-svid",
        Some(_) => false,
    };
    let ops_ok = match k.get("key_ops") {
        None => true,
        Some(Value::Array(ops)) => ops.iter().any(|op| op == "verify"),
        Some(_) => false,
    };
    use_ok && ops_ok
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair as _, RsaKeyPair,
    };
    use serde_json::json;

    use super::*;

    const MSG: &[u8] = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0";

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    type Signer = Box<dyn Fn(&[u8]) -> Vec<u8>>;

    /// A test key: its public JWK and a signer.
    struct TestKey {
        jwk: Value,
        alg: Alg,
        sign: Signer,
    }

    fn ec(signing: &'static signature::EcdsaSigningAlgorithm, crv: &str, alg: Alg) -> TestKey {
        let pair = EcdsaKeyPair::generate(signing).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let (x, y) = point[1..].split_at((point.len() - 1) / 2);
        let jwk = json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)});
        TestKey {
            jwk,
            alg,
            sign: Box::new(move |m| {
                pair.sign(&SystemRandom::new(), m)
                    .unwrap()
                    .as_ref()
                    .to_vec()
            }),
        }
    }

    fn ed25519() -> TestKey {
        let pair = Ed25519KeyPair::generate().unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
        TestKey {
            jwk,
            alg: Alg::EdDSA,
            sign: Box::new(move |m| pair.sign(m).as_ref().to_vec()),
        }
    }

    fn rsa(alg: Alg) -> TestKey {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let public = pair.public_key();
        let jwk = json!({
            "kty": "RSA",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        });
        let padding: &'static dyn signature::RsaEncoding = match alg {
            Alg::RS256 => &signature::RSA_PKCS1_SHA256,
            Alg::PS256 => &signature::RSA_PSS_SHA256,
            Alg::PS512 => &signature::RSA_PSS_SHA512,
            _ => unreachable!(),
        };
        TestKey {
            jwk,
            alg,
            sign: Box::new(move |m| {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &SystemRandom::new(), m, &mut sig)
                    .unwrap();
                sig
            }),
        }
    }

    fn all_keys() -> Vec<TestKey> {
        vec![
            ec(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", Alg::ES256),
            ec(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", Alg::ES384),
            ed25519(),
            rsa(Alg::RS256),
            rsa(Alg::PS256),
        ]
    }

    #[test]
    fn alg_names_round_trip() {
        for alg in Alg::ALL {
            assert_eq!(Alg::parse(alg.as_str()), Some(alg));
        }
        for bad in ["none", "HS256", "es256", "ES512", ""] {
            assert_eq!(Alg::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn real_signatures_verify_and_tampering_is_refused() {
        for k in all_keys() {
            let jwk = PublicJwk::from_json(&k.jwk).unwrap();
            let sig = (k.sign)(MSG);
            jwk.verify(k.alg, MSG, &sig).unwrap();

            let mut bad = sig.clone();
            bad[5] ^= 1;
            let err = jwk.verify(k.alg, MSG, &bad).unwrap_err();
            assert_eq!(err, TokenError::BadSignature, "{}", k.alg);
            let err = jwk.verify(k.alg, b"other message", &sig).unwrap_err();
            assert_eq!(err, TokenError::BadSignature, "{}", k.alg);
            let err = jwk.verify(k.alg, MSG, &sig[1..]).unwrap_err();
            assert_eq!(err, TokenError::BadSignature, "{}", k.alg);
        }
    }

    #[test]
    fn mismatched_alg_is_refused() {
        for k in all_keys() {
            let jwk = PublicJwk::from_json(&k.jwk).unwrap();
            let sig = (k.sign)(MSG);
            for alg in Alg::ALL {
                if jwk.fits(alg) {
                    continue;
                }
                let err = jwk.verify(alg, MSG, &sig).unwrap_err();
                assert_eq!(err, TokenError::AlgNotAllowed(alg.as_str().into()));
            }
        }
        // An RSA key signing PS256 does not verify as RS256 and vice versa.
        let k = rsa(Alg::PS256);
        let jwk = PublicJwk::from_json(&k.jwk).unwrap();
        let sig = (k.sign)(MSG);
        assert_eq!(
            jwk.verify(Alg::RS256, MSG, &sig),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn declared_alg_binds_the_key() {
        let k = rsa(Alg::PS256);
        let mut v = k.jwk.clone();
        v["alg"] = json!("PS256");
        let jwk = PublicJwk::from_json(&v).unwrap();
        assert_eq!(jwk.alg(), Some(Alg::PS256));
        let sig = (k.sign)(MSG);
        jwk.verify(Alg::PS256, MSG, &sig).unwrap();
        assert_eq!(
            jwk.verify(Alg::RS256, MSG, &sig),
            Err(TokenError::AlgNotAllowed("RS256".into()))
        );
        // A known alg that does not fit the key type is refused at parse.
        v["alg"] = json!("ES256");
        assert_eq!(
            PublicJwk::from_json(&v).unwrap_err().code(),
            "token_malformed"
        );
        // An unknown alg parses, reads as None, and verifies nothing.
        v["alg"] = json!("RSA-OAEP");
        let jwk = PublicJwk::from_json(&v).unwrap();
        assert_eq!(jwk.alg(), None);
        assert!(matches!(
            jwk.verify(Alg::PS256, MSG, &sig),
            Err(TokenError::AlgNotAllowed(_))
        ));
    }

    #[test]
    fn kid_is_kept() {
        let mut v = ed25519().jwk;
        assert_eq!(PublicJwk::from_json(&v).unwrap().kid(), None);
        v["kid"] = json!("k1");
        assert_eq!(PublicJwk::from_json(&v).unwrap().kid(), Some("k1"));
        v["kid"] = json!(7);
        assert!(PublicJwk::from_json(&v).is_err());
    }

    /// Hostile or unsupported JWKs, each with a word its error message must contain.
    #[test]
    fn refusals() {
        let p256 = ec(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", Alg::ES256).jwk;
        let okp = ed25519().jwk;
        let rsa_jwk = rsa(Alg::RS256).jwk;
        let with = |base: &Value, k: &str, v: Value| {
            let mut j = base.clone();
            j[k] = v;
            j
        };
        let without = |base: &Value, k: &str| {
            let mut j = base.clone();
            j.as_object_mut().unwrap().remove(k);
            j
        };
        // Flip the last byte of y: almost certainly off the curve.
        let mut y = URL_SAFE_NO_PAD.decode(p256["y"].as_str().unwrap()).unwrap();
        *y.last_mut().unwrap() ^= 1;
        let off_curve = with(&p256, "y", json!(b64(&y)));
        let n = URL_SAFE_NO_PAD
            .decode(rsa_jwk["n"].as_str().unwrap())
            .unwrap();
        let short_n = with(&rsa_jwk, "n", json!(b64(&n[..128])));
        let mut zero_n = vec![0u8];
        zero_n.extend_from_slice(&n);
        let cases: Vec<(&str, Value, &str)> = vec![
            ("not an object", json!("x"), "object"),
            ("private d on EC", with(&p256, "d", json!("AAAA")), "`d`"),
            ("private d on OKP", with(&okp, "d", json!("AAAA")), "`d`"),
            (
                "private p on RSA",
                with(&rsa_jwk, "p", json!("AAAA")),
                "`p`",
            ),
            (
                "private qi on RSA",
                with(&rsa_jwk, "qi", json!("AAAA")),
                "`qi`",
            ),
            ("oth on RSA", with(&rsa_jwk, "oth", json!([])), "`oth`"),
            ("symmetric", json!({"kty": "oct", "k": "AAAA"}), "`k`"),
            ("symmetric without k", json!({"kty": "oct"}), "symmetric"),
            ("no kty", without(&p256, "kty"), "kty"),
            (
                "unknown kty",
                with(&p256, "kty", json!("ECX")),
                "not supported",
            ),
            ("P-521", with(&p256, "crv", json!("P-521")), "P-521"),
            (
                "secp256k1",
                with(&p256, "crv", json!("secp256k1")),
                "secp256k1",
            ),
            ("X25519", with(&okp, "crv", json!("X25519")), "X25519"),
            ("Ed448", with(&okp, "crv", json!("Ed448")), "Ed448"),
            (
                "P-256 named P-384",
                with(&p256, "crv", json!("P-384")),
                "48 bytes",
            ),
            (
                "short x",
                with(&p256, "x", json!(b64(&[1; 31]))),
                "32 bytes",
            ),
            ("no y", without(&p256, "y"), "`y`"),
            ("off the curve", off_curve, "not on curve"),
            (
                "padded base64",
                with(&okp, "x", json!(format!("{}=", okp["x"].as_str().unwrap()))),
                "base64url",
            ),
            (
                "short Ed25519",
                with(&okp, "x", json!(b64(&[1; 31]))),
                "32 bytes",
            ),
            ("RSA 1024", short_n, "1024 bits"),
            (
                "RSA leading zero",
                with(&rsa_jwk, "n", json!(b64(&zero_n))),
                "leading zero",
            ),
            ("RSA e=3", with(&rsa_jwk, "e", json!(b64(&[3]))), "exponent"),
            (
                "RSA even e",
                with(&rsa_jwk, "e", json!(b64(&[1, 0, 0]))),
                "exponent",
            ),
            (
                "RSA huge e",
                with(&rsa_jwk, "e", json!(b64(&[1, 0, 0, 0, 1]))),
                "exponent",
            ),
            ("alg not a string", with(&okp, "alg", json!(1)), "`alg`"),
        ];
        for (name, v, needle) in cases {
            let err = PublicJwk::from_json(&v).unwrap_err();
            assert_eq!(err.code(), "token_malformed", "{name}");
            assert!(err.to_string().contains(needle), "{name}: {err}");
        }
    }

    /// RFC 7638 §3.1: the example RSA key and its thumbprint.
    #[test]
    fn rfc7638_thumbprint() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let jwk = PublicJwk::from_json(&jwk).unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(jwk.alg(), Some(Alg::RS256));
        assert_eq!(jwk.kid(), Some("2011-04-29"));
    }

    /// RFC 8037 Appendix A.3: the Ed25519 example key's thumbprint.
    #[test]
    fn rfc8037_thumbprint() {
        let jwk =
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(
            PublicJwk::from_json(&jwk).unwrap().thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    /// The thumbprint ignores optional members and agrees with the canonical form built
    /// by hand for EC keys.
    #[test]
    fn ec_thumbprint_is_over_required_members_only() {
        let k = ec(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", Alg::ES384).jwk;
        let plain = PublicJwk::from_json(&k).unwrap().thumbprint();
        let mut decorated = k.clone();
        decorated["kid"] = json!("x");
        decorated["use"] = json!("sig");
        decorated["alg"] = json!("ES384");
        assert_eq!(
            PublicJwk::from_json(&decorated).unwrap().thumbprint(),
            plain
        );
        let canonical = format!(
            r#"{{"crv":"P-384","kty":"EC","x":"{}","y":"{}"}}"#,
            k["x"].as_str().unwrap(),
            k["y"].as_str().unwrap()
        );
        assert_eq!(
            plain,
            b64(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
    }

    #[test]
    fn jwks_keeps_signature_keys_and_skips_the_rest() {
        let p256 = ec(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", Alg::ES256).jwk;
        let okp = ed25519().jwk;
        let tagged = |base: &Value, kid: &str, extra: Value| {
            let mut j = base.clone();
            j["kid"] = json!(kid);
            for (k, v) in extra.as_object().unwrap() {
                j[k] = v.clone();
            }
            j
        };
        let doc = json!({
            "spiffe_sequence": 3,
            "keys": [
                tagged(&p256, "plain", json!({})),
                tagged(&okp, "sig", json!({"use": "sig"})),
                tagged(&p256, "svid", json!({"use": "jwt-svid"})),
                tagged(&p256, "x509", json!({"use": "x509-svid", "x5c": ["MII"]})),
                tagged(&p256, "enc", json!({"use": "enc"})),
                tagged(&p256, "ops-verify", json!({"key_ops": ["verify"]})),
                tagged(&p256, "ops-encrypt", json!({"key_ops": ["encrypt"]})),
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                {"kty": "EC", "crv": "P-521", "kid": "p521"},
                tagged(&okp, "private", json!({"d": "AAAA"})),
                "not even an object",
            ]
        });
        let keys = parse_jwks(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid().unwrap()).collect();
        assert_eq!(kids, ["plain", "sig", "svid", "ops-verify"]);
    }

    #[test]
    fn jwks_document_errors() {
        let one = ed25519().jwk;
        let many = json!({"keys": vec![one.clone(); MAX_JWKS_KEYS + 1]});
        let limit = json!({"keys": vec![one; MAX_JWKS_KEYS]});
        assert_eq!(
            parse_jwks(&serde_json::to_vec(&limit).unwrap())
                .unwrap()
                .len(),
            MAX_JWKS_KEYS
        );
        let huge = vec![b' '; MAX_JWKS_BYTES + 1];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not json", b"{".to_vec()),
            ("array", b"[]".to_vec()),
            ("no keys", b"{}".to_vec()),
            ("keys not array", br#"{"keys":{}}"#.to_vec()),
            ("too many keys", serde_json::to_vec(&many).unwrap()),
            ("too big", huge),
        ];
        for (name, bytes) in cases {
            let err = parse_jwks(&bytes).unwrap_err();
            assert_eq!(err.code(), "token_malformed", "{name}");
        }
        assert!(parse_jwks(br#"{"keys":[]}"#).unwrap().is_empty());
    }
}

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair as _, ParsedPublicKey, VerificationAlgorithm,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::TokenError;
use crate::jwk::Alg;

/// A signing key as persisted: PKCS#8 bytes plus its life.
///
/// The key type is read from the PKCS#8 document itself, so keys of both generations share
/// one table: ECDSA P-256 (ES256, every key made now) and Ed25519 (EdDSA, keys made before
/// the ES256 upgrade, kept only to verify what they signed until their overlap ends).
///
/// The PKCS#8 bytes are secret: `Debug` never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Key id: the RFC 7638 JWK thumbprint of the public key.
    pub kid: String,
    /// PKCS#8 document holding the private key (ECDSA P-256, or Ed25519 for old keys).
    pub pkcs8: Vec<u8>,
    /// When the key was created (unix ms).
    pub created_at_ms: i64,
    /// When the key stopped signing (unix ms); `None` while it is the active key.
    pub retired_at_ms: Option<i64>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("pkcs8", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .field("retired_at_ms", &self.retired_at_ms)
            .finish()
    }
}

impl StoredKey {
    /// Generates a fresh ECDSA P-256 key (signs `ES256`, the algorithm JWT-SVID verifiers
    /// such as go-spiffe and py-spiffe accept).
    pub fn generate(now_ms: i64) -> Result<Self, TokenError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| TokenError::Signing("key generation failed".into()))?;
        Self::from_generated(doc.as_ref(), now_ms)
    }

    /// Generates an Ed25519 key, the kind Mandate made before the ES256 upgrade. Only for
    /// tests of the upgrade path: a server never creates one.
    pub fn generate_legacy_ed25519(now_ms: i64) -> Result<Self, TokenError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| TokenError::Signing("key generation failed".into()))?;
        Self::from_generated(doc.as_ref(), now_ms)
    }

    fn from_generated(pkcs8: &[u8], now_ms: i64) -> Result<Self, TokenError> {
        let pair = Pair::from_pkcs8(pkcs8)
            .map_err(|e| TokenError::Signing(format!("generated key rejected: {e}")))?;
        Ok(Self {
            kid: thumbprint(pair.alg(), pair.public()),
            pkcs8: pkcs8.to_vec(),
            created_at_ms: now_ms,
            retired_at_ms: None,
        })
    }

    /// The algorithm this key signs with, read from its PKCS#8 document: `ES256` or, for a
    /// key made before the upgrade, `EdDSA`.
    pub fn alg(&self) -> Result<Alg, TokenError> {
        Pair::from_pkcs8(&self.pkcs8)
            .map(|p| p.alg())
            .map_err(|e| TokenError::Signing(format!("stored key {} rejected: {e}", self.kid)))
    }
}

/// A private key of either supported type.
enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl Pair {
    /// Reads a PKCS#8 document as a P-256 key, else as an Ed25519 key; the error names both
    /// refusals.
    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8) {
            Ok(p) => Ok(Self::Es256(p)),
            Err(ec) => Ed25519KeyPair::from_pkcs8(pkcs8)
                .map(Self::EdDsa)
                .map_err(|ed| {
                    format!("neither an ECDSA P-256 key ({ec}) nor an Ed25519 key ({ed})")
                }),
        }
    }

    fn alg(&self) -> Alg {
        match self {
            Self::Es256(_) => Alg::ES256,
            Self::EdDsa(_) => Alg::EdDSA,
        }
    }

    /// The public key: the uncompressed SEC1 point (`04 || x || y`, 65 bytes) for P-256,
    /// the raw 32 bytes for Ed25519.
    fn public(&self) -> &[u8] {
        match self {
            Self::Es256(p) => p.public_key().as_ref(),
            Self::EdDsa(p) => p.public_key().as_ref(),
        }
    }
}

/// The affine coordinates of an uncompressed P-256 point, 32 bytes each.
fn ec_xy(point: &[u8]) -> Option<(&[u8], &[u8])> {
    match point.split_first() {
        Some((4, xy)) if xy.len() == 64 => xy.split_at_checked(32),
        _ => None,
    }
}

/// RFC 7638 thumbprint of a public key: base64url(SHA-256 of the canonical JWK, whose
/// members are the required ones in lexicographic order).
fn thumbprint(alg: Alg, public: &[u8]) -> String {
    let canonical = match (alg, ec_xy(public)) {
        (Alg::ES256, Some((x, y))) => format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(x),
            URL_SAFE_NO_PAD.encode(y)
        ),
        _ => format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            URL_SAFE_NO_PAD.encode(public)
        ),
    };
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

/// The key that signs new tokens.
pub struct SigningKey {
    kid: String,
    pair: Pair,
    created_at_ms: i64,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.pair.alg())
            .finish()
    }
}

impl SigningKey {
    /// The key id written into every token it signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWS `alg` of every token it signs.
    pub fn alg(&self) -> Alg {
        self.pair.alg()
    }

    /// Signs `msg`: the fixed-width `r || s` form (64 bytes) for ES256, as JWS requires
    /// (RFC 7518 §3.4), or the 64-byte Ed25519 signature.
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, TokenError> {
        match &self.pair {
            // aws-lc-rs draws the ECDSA nonce from its own generator; the argument is
            // kept for ring compatibility and unused.
            Pair::Es256(p) => p
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| TokenError::Signing("ECDSA signing failed".into())),
            Pair::EdDsa(p) => Ok(p.sign(msg).as_ref().to_vec()),
        }
    }
}

/// A published verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Key id.
    pub kid: String,
    /// The one algorithm tokens under this key may name: `ES256`, or `EdDSA` for a key
    /// made before the upgrade.
    pub alg: Alg,
    /// The public key: the uncompressed SEC1 point for ES256 (65 bytes), the raw 32 bytes
    /// for EdDSA.
    pub bytes: Vec<u8>,
    /// After this instant (unix ms) the key is no longer published or accepted.
    pub publish_until_ms: Option<i64>,
}

impl PublicKey {
    fn jwk(&self) -> Jwk {
        let (kty, crv, x, y) = match (self.alg, ec_xy(&self.bytes)) {
            (Alg::ES256, Some((x, y))) => ("EC", "P-256", x, Some(URL_SAFE_NO_PAD.encode(y))),
            _ => ("OKP", "Ed25519", self.bytes.as_slice(), None),
        };
        Jwk {
            kty: kty.into(),
            crv: crv.into(),
            x: URL_SAFE_NO_PAD.encode(x),
            y,
            kid: self.kid.clone(),
            alg: self.alg.as_str().into(),
            key_use: "sig".into(),
        }
    }
}

/// A published key with its public half parsed once, for verification.
#[derive(Debug)]
pub(crate) struct Verifier {
    pub(crate) key: PublicKey,
    pub(crate) parsed: ParsedPublicKey,
}

/// The active signing key and every key still published for verification.
#[derive(Debug)]
pub struct KeyRing {
    active: SigningKey,
    published: Vec<Verifier>,
}

impl KeyRing {
    /// Builds the ring from stored keys: the single unretired key signs; retired keys stay
    /// published until `retired_at + overlap_ms`, which must cover the longest token life.
    pub fn from_stored(
        keys: &[StoredKey],
        overlap_ms: i64,
        now_ms: i64,
    ) -> Result<Self, TokenError> {
        let mut active = None;
        let mut published = Vec::new();
        for k in keys {
            let pair = Pair::from_pkcs8(&k.pkcs8)
                .map_err(|e| TokenError::Signing(format!("stored key {} rejected: {e}", k.kid)))?;
            let publish_until_ms = k.retired_at_ms.map(|r| r.saturating_add(overlap_ms));
            if publish_until_ms.is_some_and(|until| until <= now_ms) {
                continue;
            }
            let alg = pair.alg();
            let verification: &'static dyn VerificationAlgorithm = match alg {
                Alg::EdDSA => &ED25519,
                _ => &ECDSA_P256_SHA256_FIXED,
            };
            let parsed = ParsedPublicKey::new(verification, pair.public()).map_err(|e| {
                TokenError::Signing(format!("stored key {} has a bad public key: {e}", k.kid))
            })?;
            published.push(Verifier {
                key: PublicKey {
                    kid: k.kid.clone(),
                    alg,
                    bytes: pair.public().to_vec(),
                    publish_until_ms,
                },
                parsed,
            });
            if k.retired_at_ms.is_none() {
                if active.is_some() {
                    return Err(TokenError::Signing(
                        "more than one active signing key is stored".into(),
                    ));
                }
                active = Some(SigningKey {
                    kid: k.kid.clone(),
                    pair,
                    created_at_ms: k.created_at_ms,
                });
            }
        }
        let active = active.ok_or_else(|| TokenError::Signing("no active signing key".into()))?;
        Ok(Self { active, published })
    }

    /// The key that signs.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// When the signing key was created (unix ms): drives scheduled rotation.
    pub fn active_created_ms(&self) -> i64 {
        self.active.created_at_ms
    }

    fn live(&self, now_ms: i64) -> impl Iterator<Item = &Verifier> {
        self.published
            .iter()
            .filter(move |v| v.key.publish_until_ms.is_none_or(|until| now_ms < until))
    }

    /// The published key with this id, if it is still accepted at `now_ms`.
    pub fn find(&self, kid: &str, now_ms: i64) -> Option<&PublicKey> {
        self.verifier(kid, now_ms).map(|v| &v.key)
    }

    pub(crate) fn verifier(&self, kid: &str, now_ms: i64) -> Option<&Verifier> {
        self.live(now_ms).find(|v| v.key.kid == kid)
    }

    /// The JWKS document for `/.well-known/jwks.json`.
    pub fn jwks(&self, now_ms: i64) -> Jwks {
        Jwks {
            keys: self.live(now_ms).map(|v| v.key.jwk()).collect(),
        }
    }
}

/// A JSON Web Key Set (RFC 7517).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Jwks {
    /// The published keys.
    pub keys: Vec<Jwk>,
}

/// One published public key: an EC P-256 JWK (RFC 7518 §6.2) for the ES256 keys Mandate
/// signs with, or an OKP Ed25519 JWK (RFC 8037) for a key from before the ES256 upgrade
/// still published for its overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Jwk {
    /// `EC`, or `OKP` for an Ed25519 key.
    pub kty: String,
    /// `P-256`, or `Ed25519` for an OKP key.
    pub crv: String,
    /// The x coordinate (EC) or the public key (OKP), base64url.
    pub x: String,
    /// The y coordinate, base64url; EC keys only (absent, never null, for OKP keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub y: Option<String>,
    /// Key id: the RFC 7638 thumbprint.
    pub kid: String,
    /// `ES256`, or `EdDSA` for an OKP key.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub key_use: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwk::PublicJwk;

    #[test]
    fn ring_keeps_retired_keys_for_the_overlap() {
        let mut old = StoredKey::generate(0).unwrap();
        old.retired_at_ms = Some(1_000);
        let new = StoredKey::generate(1_000).unwrap();
        let ring = KeyRing::from_stored(&[old.clone(), new.clone()], 500, 1_200).unwrap();
        assert_eq!(ring.active().kid(), new.kid);
        assert!(ring.find(&old.kid, 1_200).is_some());
        assert!(ring.find(&old.kid, 1_500).is_none());
        assert_eq!(ring.jwks(1_200).keys.len(), 2);
        assert_eq!(ring.jwks(1_600).keys.len(), 1);
        let later = KeyRing::from_stored(&[old.clone(), new], 500, 2_000).unwrap();
        assert!(later.find(&old.kid, 2_000).is_none());
        assert!(KeyRing::from_stored(&[old], 500, 1_200).is_err());
    }

    #[test]
    fn debug_hides_private_key() {
        let k = StoredKey::generate(0).unwrap();
        assert!(!format!("{k:?}").contains(&format!("{:?}", k.pkcs8)));
    }

    /// New keys are P-256; a ring upgraded in place still publishes its Ed25519 key, as an
    /// OKP JWK, until the overlap ends. Each kid is the RFC 7638 thumbprint of the JWK
    /// published for it (checked by the independent implementation in `jwk`).
    #[test]
    fn jwks_publishes_ec_and_legacy_okp_keys() {
        let mut old = StoredKey::generate_legacy_ed25519(0).unwrap();
        old.retired_at_ms = Some(1_000);
        let new = StoredKey::generate(1_000).unwrap();
        assert_eq!(old.alg().unwrap(), Alg::EdDSA);
        assert_eq!(new.alg().unwrap(), Alg::ES256);
        let ring = KeyRing::from_stored(&[old.clone(), new.clone()], 500, 1_200).unwrap();
        assert_eq!(ring.active().alg(), Alg::ES256);
        let jwks = serde_json::to_value(ring.jwks(1_200)).unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        let shape = |k: &serde_json::Value| {
            let mut names: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
            names.sort_unstable();
            names.join(",")
        };
        let ec = &keys[1];
        assert_eq!(shape(ec), "alg,crv,kid,kty,use,x,y");
        assert_eq!(
            (&ec["kty"], &ec["crv"], &ec["alg"], &ec["use"], &ec["kid"]),
            (
                &"EC".into(),
                &"P-256".into(),
                &"ES256".into(),
                &"sig".into(),
                &new.kid.clone().into()
            )
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(ec["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(ec["y"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        let okp = &keys[0];
        assert_eq!(shape(okp), "alg,crv,kid,kty,use,x");
        assert_eq!(
            (&okp["kty"], &okp["crv"], &okp["alg"], &okp["kid"]),
            (
                &"OKP".into(),
                &"Ed25519".into(),
                &"EdDSA".into(),
                &old.kid.clone().into()
            )
        );
        for k in keys {
            let parsed = PublicJwk::from_json(k).unwrap();
            assert_eq!(Some(parsed.thumbprint().as_str()), k["kid"].as_str());
        }
        let back: Jwks = serde_json::from_value(jwks).unwrap();
        assert_eq!(back, ring.jwks(1_200));
    }

    #[test]
    fn unknown_key_material_is_refused_at_load() {
        let mut k = StoredKey::generate(0).unwrap();
        k.pkcs8 = b"not a key".to_vec();
        let err = KeyRing::from_stored(&[k.clone()], 500, 0).unwrap_err();
        assert_eq!(err.code(), "signing_failed");
        assert!(
            err.to_string().contains("neither an ECDSA P-256 key"),
            "{err}"
        );
        assert!(k.alg().is_err());
    }
}

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::TokenError;

/// A signing key as persisted: PKCS#8 bytes plus its life.
///
/// The PKCS#8 bytes are secret: `Debug` never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Key id: the RFC 7638 JWK thumbprint of the public key.
    pub kid: String,
    /// PKCS#8 v2 document holding the Ed25519 private key.
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
    /// Generates a fresh Ed25519 key.
    pub fn generate(now_ms: i64) -> Result<Self, TokenError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| TokenError::Signing("key generation failed".into()))?;
        let pkcs8 = doc.as_ref().to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| TokenError::Signing(format!("generated key rejected: {e}")))?;
        Ok(Self {
            kid: thumbprint(pair.public_key().as_ref()),
            pkcs8,
            created_at_ms: now_ms,
            retired_at_ms: None,
        })
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key: base64url(SHA-256 of the canonical JWK).
fn thumbprint(public: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

/// The key that signs new tokens.
pub struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
    created_at_ms: i64,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// The key id written into every token it signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// A published verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Key id.
    pub kid: String,
    /// Raw 32-byte Ed25519 public key.
    pub bytes: Vec<u8>,
    /// After this instant (unix ms) the key is no longer published or accepted.
    pub publish_until_ms: Option<i64>,
}

/// The active signing key and every key still published for verification.
#[derive(Debug)]
pub struct KeyRing {
    active: SigningKey,
    published: Vec<PublicKey>,
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
            let pair = Ed25519KeyPair::from_pkcs8(&k.pkcs8)
                .map_err(|e| TokenError::Signing(format!("stored key {} rejected: {e}", k.kid)))?;
            let publish_until_ms = k.retired_at_ms.map(|r| r.saturating_add(overlap_ms));
            if publish_until_ms.is_some_and(|until| until <= now_ms) {
                continue;
            }
            published.push(PublicKey {
                kid: k.kid.clone(),
                bytes: pair.public_key().as_ref().to_vec(),
                publish_until_ms,
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

    /// The published key with this id, if it is still accepted at `now_ms`.
    pub fn find(&self, kid: &str, now_ms: i64) -> Option<&PublicKey> {
        self.published
            .iter()
            .find(|k| k.kid == kid && k.publish_until_ms.is_none_or(|until| now_ms < until))
    }

    /// The JWKS document for `/.well-known/jwks.json`.
    pub fn jwks(&self, now_ms: i64) -> Jwks {
        Jwks {
            keys: self
                .published
                .iter()
                .filter(|k| k.publish_until_ms.is_none_or(|until| now_ms < until))
                .map(|k| Jwk {
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    x: URL_SAFE_NO_PAD.encode(&k.bytes),
                    kid: k.kid.clone(),
                    alg: "EdDSA".into(),
                    key_use: "sig".into(),
                })
                .collect(),
        }
    }
}

/// A JSON Web Key Set (RFC 7517).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Jwks {
    /// The published keys.
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key as an OKP JWK (RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    /// Key id.
    pub kid: String,
    /// Always `EdDSA`.
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub key_use: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

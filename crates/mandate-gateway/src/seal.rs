//! Secrets at rest: AES-256-GCM under a master key ring, and references to secrets kept in
//! HashiCorp Vault / OpenBao (KV v2).
//!
//! The key ring is text: one base64 32-byte key per line, `#` comments allowed. The first
//! key seals; every key opens. Rotation: put a new key on the first line, ask the server
//! to re-seal everything (`mandate secret rotate`), then remove the old line.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// Why sealing or opening failed. Never carries key or secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key ring text is unusable.
    #[error("master key ring: {0}")]
    KeyRing(String),
    /// A sealed value names a key the ring does not hold.
    #[error(
        "sealed with master key {0}, which is not in the key ring: add it back to open this secret"
    )]
    UnknownKey(String),
    /// Authentication failed: the value or its name was altered, or the key is wrong.
    #[error("sealed value does not open (altered, or sealed for another name)")]
    Corrupt,
    /// The system RNG failed.
    #[error("system random number generator failed")]
    Rng,
}

/// A secret in memory: wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes, for injection into one upstream request.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

struct MasterKey {
    id: String,
    key: LessSafeKey,
}

/// The master keys: the first seals, all open.
pub struct KeyRing {
    keys: Vec<MasterKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

/// The id of a key: the first 16 hex digits of its SHA-256 (public, names the key).
fn key_id(bytes: &[u8]) -> String {
    let mut id = mandate_core::sha256_hex(bytes);
    id.truncate(16);
    id
}

impl KeyRing {
    /// Parses key ring text.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(line)
                    .map_err(|_| SealError::KeyRing(format!("line {} is not base64", n + 1)))?,
            );
            if bytes.len() != 32 {
                return Err(SealError::KeyRing(format!(
                    "line {} holds {} bytes; a key is 32 (generate one with `openssl rand -base64 32`)",
                    n + 1,
                    bytes.len()
                )));
            }
            let id = key_id(&bytes);
            if keys.iter().any(|k: &MasterKey| k.id == id) {
                return Err(SealError::KeyRing(format!(
                    "line {} repeats key {id}",
                    n + 1
                )));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| SealError::KeyRing("key rejected by AES-256-GCM".into()))?;
            keys.push(MasterKey {
                id,
                key: LessSafeKey::new(key),
            });
        }
        if keys.is_empty() {
            return Err(SealError::KeyRing("no key in the key ring".into()));
        }
        Ok(Self { keys })
    }

    /// A new random key, as a key ring line.
    pub fn generate_line(rng: &dyn SecureRandom) -> Result<String, SealError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill(bytes.as_mut()).map_err(|_| SealError::Rng)?;
        Ok(STANDARD.encode(bytes.as_ref()))
    }

    /// The id of the sealing key.
    pub fn current_id(&self) -> &str {
        self.keys.first().map(|k| k.id.as_str()).unwrap_or_default()
    }

    /// Every key's id, sealing key first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Seals `plain` for the secret called `name` (bound as associated data, so a sealed
    /// value moved to another name does not open). Returns `(key id, sealed text)`.
    pub fn seal(&self, name: &str, plain: &SecretValue) -> Result<(String, String), SealError> {
        self.seal_with(name, plain, &SystemRandom::new())
    }

    /// As [`KeyRing::seal`], with a given RNG.
    pub fn seal_with(
        &self,
        name: &str,
        plain: &SecretValue,
        rng: &dyn SecureRandom,
    ) -> Result<(String, String), SealError> {
        let key = self.keys.first().ok_or(SealError::Corrupt)?;
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| SealError::Rng)?;
        let mut buf = Zeroizing::new(plain.expose().to_vec());
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| SealError::Corrupt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok((key.id.clone(), STANDARD.encode(out)))
    }

    /// Opens a value sealed for `name` under key `kid`.
    pub fn open(&self, name: &str, kid: &str, sealed: &str) -> Result<SecretValue, SealError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or_else(|| SealError::UnknownKey(kid.to_owned()))?;
        let raw = STANDARD.decode(sealed).map_err(|_| SealError::Corrupt)?;
        let (nonce, body) = raw.split_at_checked(NONCE_LEN).ok_or(SealError::Corrupt)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Corrupt)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| SealError::Corrupt)?;
        Ok(SecretValue::new(plain.to_vec()))
    }
}

/// A reference to a field of a KV v2 secret: `vault://<mount>/<path>#<field>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VaultRef {
    /// The KV v2 mount (`secret`).
    pub mount: String,
    /// The secret's path under the mount.
    pub path: String,
    /// The field of the secret's data.
    pub field: String,
}

impl VaultRef {
    /// Parses `vault://mount/path#field`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not vault://<mount>/<path>#<field>");
        let rest = text.strip_prefix("vault://").ok_or_else(bad)?;
        let (loc, field) = rest.split_once('#').ok_or_else(bad)?;
        let (mount, path) = loc.split_once('/').ok_or_else(bad)?;
        let seg_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !seg_ok(mount) || !path.split('/').all(seg_ok) || !seg_ok(field) {
            return Err(bad());
        }
        Ok(Self {
            mount: mount.to_owned(),
            path: path.to_owned(),
            field: field.to_owned(),
        })
    }

    /// The KV v2 read path: `/v1/<mount>/data/<path>`.
    pub fn api_path(&self) -> String {
        format!("/v1/{}/data/{}", self.mount, self.path)
    }
}

impl std::fmt::Display for VaultRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vault://{}/{}#{}", self.mount, self.path, self.field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    #[test]
    fn seal_open_and_rotate() {
        let old = KeyRing::parse(K1).map_err(|e| e.to_string());
        let Ok(old) = old else { panic!("{old:?}") };
        let s = SecretValue::new(b"tok-123".to_vec());
        let Ok((kid, sealed)) = old.seal("api", &s) else {
            panic!()
        };
        assert!(!sealed.contains("tok-123"));
        assert_eq!(old.open("api", &kid, &sealed), Ok(s.clone()));
        // Bound to its name.
        assert_eq!(old.open("other", &kid, &sealed), Err(SealError::Corrupt));
        // Rotation: new key first, old one still opens.
        let Ok(both) = KeyRing::parse(&format!("# rotated\n{K2}\n{K1}\n")) else {
            panic!()
        };
        assert_ne!(both.current_id(), kid);
        assert_eq!(both.open("api", &kid, &sealed), Ok(s.clone()));
        let Ok(new) = KeyRing::parse(K2) else {
            panic!()
        };
        assert_eq!(
            new.open("api", &kid, &sealed),
            Err(SealError::UnknownKey(kid.clone()))
        );
        // Altered ciphertext.
        let mut bytes = STANDARD.decode(&sealed).unwrap_or_default();
        if let Some(b) = bytes.last_mut() {
            *b ^= 1;
        }
        assert_eq!(
            old.open("api", &kid, &STANDARD.encode(bytes)),
            Err(SealError::Corrupt)
        );
        assert!(!format!("{old:?} {s:?}").contains("tok-123"));
    }

    #[test]
    fn bad_key_rings() {
        assert!(KeyRing::parse("").is_err());
        assert!(KeyRing::parse("not base64!").is_err());
        assert!(KeyRing::parse("AAAA").is_err());
        assert!(KeyRing::parse(&format!("{K1}\n{K1}")).is_err());
    }

    #[test]
    fn vault_refs() {
        let r = VaultRef::parse("vault://secret/apps/tickets#token");
        assert_eq!(
            r.as_ref().map(VaultRef::api_path).ok().as_deref(),
            Some("/v1/secret/data/apps/tickets")
        );
        for bad in [
            "vault://secret#x",
            "vault://secret/a",
            "vault://s/../x#f",
            "vault:///a#b",
            "http://x/y#z",
            "vault://s/a b#f",
        ] {
            assert!(VaultRef::parse(bad).is_err(), "{bad}");
        }
    }
}

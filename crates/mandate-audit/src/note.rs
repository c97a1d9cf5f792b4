//! Signed checkpoints in the C2SP formats that transparency-log tooling reads
//! (`c2sp.org/signed-note`, `c2sp.org/tlog-checkpoint`): the text
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//! ```
//!
//! followed by a blank line and one line per signature, `— <key name> <base64(key id ||
//! Ed25519 signature)>`, where the key id is the first four bytes of `SHA-256(name || 0x0A || 0x01 || public key)`.
//! Keys are written as the Go `sumdb/note` tools write them: a verifier key
//! `<name>+<hex id>+<base64(0x01 || public key)>`, a signer key
//! `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
//!
//! Written here on aws-lc-rs (the one crypto stack of the workspace) rather than taken from
//! the `signed_note` crate, which brings ed25519-dalek, a second SHA-256 and older base64 and
//! rand versions; it is pinned by the Go implementation's published vectors (tests below).

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::merkle::Hash;

/// The Ed25519 signature type byte of signed-note keys.
const ALG_ED25519: u8 = 0x01;
/// Most signature lines read from one note (as the Go implementation).
const MAX_SIGNATURES: usize = 100;
/// Largest note read.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

/// Why a key, note or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key is malformed.
    #[error("malformed note key: {0}")]
    Key(&'static str),
    /// The note is malformed.
    #[error("malformed signed note: {0}")]
    Format(&'static str),
    /// No signature by the expected key, or a bad one.
    #[error("the note is not signed by {0}")]
    Unsigned(String),
    /// The note's text is not a checkpoint.
    #[error("not a checkpoint: {0}")]
    Checkpoint(&'static str),
    /// The system random generator failed.
    #[error("could not generate a key: the system random generator failed")]
    Random,
}

fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ALG_ED25519]);
    ctx.update(public);
    let d = ctx.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(d.as_ref().get(..4).unwrap_or(&[0; 4]));
    id
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

fn hex4(id: &[u8; 4]) -> String {
    crate::hex(id)
}

/// A log's signing key.
#[derive(Debug)]
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl NoteSigner {
    /// A fresh key named `name` (the log's origin).
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| NoteError::Random)?;
        Self::from_seed(name, seed)
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key(
                "a key name is non-empty, without spaces or '+'",
            ));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| NoteError::Key("not an Ed25519 seed"))?;
        let id = key_id(name, pair.public_key().as_ref());
        Ok(Self {
            name: name.to_owned(),
            id,
            pair,
            seed,
        })
    }

    /// Reads `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::Key("a signer key starts with PRIVATE+KEY+"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::Key("expected PRIVATE+KEY+name+id+key"));
        };
        let raw = B64
            .decode(key)
            .map_err(|_| NoteError::Key("the key is not base64"))?;
        let (&[ALG_ED25519], seed) = raw.split_at(1.min(raw.len())) else {
            return Err(NoteError::Key(
                "only Ed25519 keys (type 0x01) are supported",
            ));
        };
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| NoteError::Key("an Ed25519 seed is 32 bytes"))?;
        let signer = Self::from_seed(name, seed)?;
        if hex4(&signer.id) != id {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        Ok(signer)
    }

    /// The signer key in its text form (secret: write it with owner-only permissions).
    pub fn to_private_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex4(&self.id),
            B64.encode(raw)
        )
    }

    /// The matching verifier key, to hand to whoever checks checkpoints.
    pub fn verifier(&self) -> NoteVerifier {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            public,
        }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs `text` (non-empty, ending in a newline, without a blank line) as a note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if text.is_empty() || !text.ends_with('\n') || text.contains("\n\n") {
            return Err(NoteError::Format(
                "a note's text is non-empty, ends with a newline and has no blank line",
            ));
        }
        let sig = self.pair.sign(text.as_bytes());
        let mut raw = self.id.to_vec();
        raw.extend_from_slice(sig.as_ref());
        Ok(format!(
            "{text}\n\u{2014} {} {}\n",
            self.name,
            B64.encode(raw)
        ))
    }
}

impl Drop for NoteSigner {
    fn drop(&mut self) {
        self.seed = [0u8; 32];
    }
}

/// A log's public key: checks its signature on a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    public: [u8; 32],
}

impl NoteVerifier {
    /// Reads `<name>+<hex id>+<base64(0x01 || public key)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::Key("expected name+id+key"));
        };
        if !valid_name(name) {
            return Err(NoteError::Key(
                "a key name is non-empty, without spaces or '+'",
            ));
        }
        let raw = B64
            .decode(key)
            .map_err(|_| NoteError::Key("the key is not base64"))?;
        let (&[ALG_ED25519], public) = raw.split_at(1.min(raw.len())) else {
            return Err(NoteError::Key(
                "only Ed25519 keys (type 0x01) are supported",
            ));
        };
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::Key("an Ed25519 public key is 32 bytes"))?;
        let want = key_id(name, &public);
        if hex4(&want) != id {
            return Err(NoteError::Key("the key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id: want,
            public,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key in its text form.
    pub fn to_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.public);
        format!("{}+{}+{}", self.name, hex4(&self.id), B64.encode(raw))
    }

    /// Checks `note` carries a good signature by this key and returns its text. Signature
    /// lines of other keys are ignored (witness cosignatures); a bad signature by this key
    /// refuses the note.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(NoteError::Format("the note is too large"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Format("no blank line before the signatures"))?;
        let (text, sigs) = note.split_at(split + 1);
        let sigs = sigs
            .strip_prefix('\n')
            .ok_or(NoteError::Format("no blank line before the signatures"))?;
        if !sigs.ends_with('\n') {
            return Err(NoteError::Format("the last signature line has no newline"));
        }
        let mut found = false;
        for (n, line) in sigs.lines().enumerate() {
            if n >= MAX_SIGNATURES {
                return Err(NoteError::Format("too many signatures"));
            }
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(NoteError::Format("a signature line starts with '— '"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(NoteError::Format("a signature line is '— name signature'"))?;
            let raw = B64
                .decode(b64)
                .map_err(|_| NoteError::Format("a signature is not base64"))?;
            if raw.len() < 5 {
                return Err(NoteError::Format("a signature is too short"));
            }
            let (id, sig) = raw.split_at(4);
            if name != self.name || id != self.id {
                continue;
            }
            UnparsedPublicKey::new(&ED25519, self.public)
                .verify(text.as_bytes(), sig)
                .map_err(|_| NoteError::Unsigned(self.name.clone()))?;
            found = true;
        }
        if found {
            Ok(text)
        } else {
            Err(NoteError::Unsigned(self.name.clone()))
        }
    }
}

/// A tree head: what a checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name.
    pub origin: String,
    /// Records covered.
    pub size: u64,
    /// The Merkle root over them.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint's text, to sign.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Signs the checkpoint as a note.
    pub fn sign(&self, key: &NoteSigner) -> Result<String, NoteError> {
        key.sign(&self.text())
    }

    /// Reads a signed checkpoint, checking the signature by `key` and that its origin is
    /// the key's name.
    pub fn open(note: &str, key: &NoteVerifier) -> Result<Self, NoteError> {
        let text = key.open(note)?;
        let cp = Self::parse_text(text)?;
        if cp.origin != key.name() {
            return Err(NoteError::Checkpoint(
                "its origin is not the name of the log key",
            ));
        }
        Ok(cp)
    }

    fn parse_text(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Checkpoint("no origin line"))?;
        let size = lines
            .next()
            .filter(|s| !s.is_empty() && (s == &"0" || !s.starts_with('0')))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(NoteError::Checkpoint("the size is not a decimal number"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::Checkpoint("the root is not 32 bytes of base64"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors published with the Go `golang.org/x/mod/sumdb/note` package and its ports.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const GO_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const FOO_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const FOO_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn signs_exactly_as_the_go_implementation() {
        let k = NoteSigner::parse(GO_SKEY).unwrap();
        assert_eq!(k.to_private_text(), GO_SKEY);
        let note = k.sign(GO_TEXT).unwrap();
        assert_eq!(note, format!("{GO_TEXT}\n{GO_SIG}"));
        assert_eq!(k.verifier().open(&note).unwrap(), GO_TEXT);
    }

    #[test]
    fn opens_a_note_signed_elsewhere() {
        let v = NoteVerifier::parse(FOO_VKEY).unwrap();
        assert_eq!(v.to_text(), FOO_VKEY);
        assert_eq!(v.open(FOO_NOTE).unwrap(), "This is an example message.\n");
        let edited = FOO_NOTE.replace("example message", "exemple message");
        assert!(matches!(v.open(&edited), Err(NoteError::Unsigned(_))));
        let other = NoteSigner::generate("example.com/foo").unwrap().verifier();
        assert!(other.open(FOO_NOTE).is_err(), "same name, other key");
    }

    #[test]
    fn checkpoints_round_trip_and_refuse_tampering() {
        let k = NoteSigner::generate("mandate.local/audit").unwrap();
        let cp = Checkpoint {
            origin: "mandate.local/audit".into(),
            size: 42,
            root: crate::merkle::leaf_hash(b"x"),
        };
        let note = cp.sign(&k).unwrap();
        assert_eq!(Checkpoint::open(&note, &k.verifier()).unwrap(), cp);
        let bigger = note.replacen("\n42\n", "\n43\n", 1);
        assert!(Checkpoint::open(&bigger, &k.verifier()).is_err());
        let again = NoteSigner::parse(&k.to_private_text()).unwrap();
        assert_eq!(again.verifier(), k.verifier());
        for bad in ["", "x", "a+b+c", "PRIVATE+KEY+a+00000000+AAAA"] {
            assert!(NoteSigner::parse(bad).is_err(), "{bad}");
        }
    }
}

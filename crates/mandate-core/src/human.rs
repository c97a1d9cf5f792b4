//! The identity of a human: an agent's owner, an approver, a break-glass declarer or
//! reviewer. Separation of duties compares these, so they are compared in one normal
//! form, made once when the name is registered (and again when a stored one is read).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// Why a human identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HumanIdError {
    /// Nothing left after trimming.
    #[error("a human identity cannot be empty")]
    Empty,
    /// Longer than [`HumanId::MAX_CHARS`].
    #[error("a human identity is at most {max} characters")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A control character (a newline, a tab, NUL…).
    #[error("a human identity cannot hold control characters")]
    Control,
    /// A character outside ASCII.
    #[error(
        "a human identity must be ASCII: {0:?} could be a compatibility form or a look-alike of another character (write e.g. `alice@example.com`)"
    )]
    NonAscii(char),
}

/// A human's identity in normal form: trimmed, ASCII, lowercase. `Alice@Example.COM` and
/// ` alice@example.com ` are one person.
///
/// Non-ASCII characters are refused at registration rather than normalised: without a
/// Unicode normalisation table among the allowed dependencies, `ａlice` (fullwidth) or
/// `аlice` (Cyrillic) cannot be folded onto `alice`, and letting them in would let one
/// person hold two identities that separation of duties tells apart.
///
/// A stored identity is normalised again when read ([`HumanId::from_stored`], which never
/// fails), so data written before normalisation existed compares the same way.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String)]
pub struct HumanId(String);

impl HumanId {
    /// Longest identity accepted, in characters.
    pub const MAX_CHARS: usize = 256;

    /// Parses an identity given at registration: refused if it holds a control character;
    /// trimmed, then refused if empty, longer than [`Self::MAX_CHARS`] or holding a
    /// non-ASCII character; lowercased.
    pub fn parse(s: &str) -> Result<Self, HumanIdError> {
        // Control characters are refused anywhere, trailing ones too (`alice\n`).
        if s.chars().any(char::is_control) {
            return Err(HumanIdError::Control);
        }
        let t = s.trim();
        if t.is_empty() {
            return Err(HumanIdError::Empty);
        }
        if t.chars().count() > Self::MAX_CHARS {
            return Err(HumanIdError::TooLong {
                max: Self::MAX_CHARS,
            });
        }
        if let Some(c) = t.chars().find(|c| !c.is_ascii()) {
            return Err(HumanIdError::NonAscii(c));
        }
        Ok(Self(t.to_ascii_lowercase()))
    }

    /// The normal form of an identity read back from storage: trimmed and lowercased like
    /// [`Self::parse`], but never refused (what was accepted once must still load).
    pub fn from_stored(s: &str) -> Self {
        Self(s.trim().to_ascii_lowercase())
    }

    /// The normal form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HumanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for HumanId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<HumanId> for String {
    fn from(h: HumanId) -> String {
        h.0
    }
}

/// Deserialising reads stored or trusted data (records, audit payloads), so it normalises
/// like [`HumanId::from_stored`]; identities from a request go through [`HumanId::parse`].
impl<'de> Deserialize<'de> for HumanId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self::from_stored(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_person_one_form() {
        let a = HumanId::parse("Alice@Example.COM").unwrap();
        assert_eq!(a.as_str(), "alice@example.com");
        assert_eq!(HumanId::parse("  alice@example.com\u{a0}").unwrap(), a);
        assert_eq!(HumanId::from_stored("ALICE@example.com "), a);
        let back: HumanId = serde_json::from_str("\"Alice@EXAMPLE.com\"").unwrap();
        assert_eq!(back, a);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"alice@example.com\"");
    }

    #[test]
    fn refuses_what_cannot_be_compared() {
        assert_eq!(HumanId::parse("  "), Err(HumanIdError::Empty));
        assert_eq!(HumanId::parse("al\nice"), Err(HumanIdError::Control));
        assert_eq!(HumanId::parse("a\u{0}b"), Err(HumanIdError::Control));
        assert_eq!(HumanId::parse("alice\n"), Err(HumanIdError::Control));
        // Fullwidth `ａ` (NFKC folds it to `a`), Cyrillic `а`, a Kelvin sign (lowercases
        // to `k`): none is let in as a second name for the same person.
        for s in ["\u{ff41}lice", "\u{430}lice", "\u{212a}en"] {
            assert!(
                matches!(HumanId::parse(s), Err(HumanIdError::NonAscii(_))),
                "{s}"
            );
        }
        assert!(HumanId::parse(&"a".repeat(257)).is_err());
        assert!(HumanId::parse(&"a".repeat(256)).is_ok());
    }
}

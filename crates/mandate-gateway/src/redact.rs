//! Redaction of secret values from upstream responses, in every common encoding, over a
//! stream whose chunks may split a secret anywhere.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// What replaces a secret.
pub const MASK: &[u8] = b"[REDACTED]";

/// Shortest secret the redactor looks for; shorter ones would match ordinary text.
pub const MIN_SECRET_LEN: usize = 8;

/// The encodings of `secret` a response could carry it in: raw, base64 and base64url at
/// every alignment inside a longer encoded string, hex in both cases, percent-encoded, and
/// JSON-escaped.
pub fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![secret.to_vec()];
    for engine in [&STANDARD, &URL_SAFE] {
        out.push(engine.encode(secret).into_bytes());
        // Inside a longer base64 text the secret starts at byte offset 0, 1 or 2 of a
        // 3-byte group; keep the characters that depend on the secret's bits alone.
        for k in 0..3usize {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(secret);
            let enc = engine.encode(&padded).into_bytes();
            let start = (k * 8).div_ceil(6);
            let end = (padded.len() * 8) / 6;
            if let Some(core) = enc.get(start..end)
                && core.len() >= MIN_SECRET_LEN
            {
                out.push(core.to_vec());
            }
        }
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(secret).into_bytes());
    }
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_ascii_uppercase().into_bytes());
    out.push(hex.into_bytes());
    let pct: String = secret
        .iter()
        .map(|&b| {
            let c = char::from(b);
            if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                c.to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    out.push(pct.to_ascii_lowercase().into_bytes());
    out.push(pct.into_bytes());
    if let Ok(text) = std::str::from_utf8(secret)
        && let Ok(json) = serde_json::to_string(text)
    {
        let inner = json.trim_matches('"').as_bytes().to_vec();
        out.push(inner.clone());
        out.push(
            inner
                .iter()
                .flat_map(|&b| if b == b'/' { b"\\/".to_vec() } else { vec![b] })
                .collect(),
        );
    }
    out.retain(|f| f.len() >= MIN_SECRET_LEN.min(secret.len()) && !f.is_empty());
    out.sort();
    out.dedup();
    out
}

/// A streaming redactor: feed chunks, get redacted chunks; a suffix shorter than the
/// longest form is held back until the next chunk (or [`Redactor::finish`]) shows whether
/// it starts a secret.
#[derive(Clone)]
pub struct Redactor {
    forms: Vec<Vec<u8>>,
    /// Bytes any form starts with: most positions are skipped with one lookup.
    first: [bool; 256],
    hold: usize,
    tail: Vec<u8>,
    found: bool,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("forms", &self.forms.len())
            .field("found", &self.found)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for these secrets (each in all its [`forms`]).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut all: Vec<Vec<u8>> = secrets.into_iter().flat_map(forms).collect();
        // Longest first, so a longer form is masked whole before a shorter one inside it.
        all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        all.dedup();
        let hold = all
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        let mut first = [false; 256];
        for f in &all {
            if let Some(&b) = f.first()
                && let Some(slot) = first.get_mut(usize::from(b))
            {
                *slot = true;
            }
        }
        Self {
            forms: all,
            first,
            hold,
            tail: Vec::new(),
            found: false,
        }
    }

    /// True when there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// True once any secret form was found (and masked).
    pub fn found(&self) -> bool {
        self.found
    }

    /// Redacts a whole value at once (headers, error bodies).
    pub fn redact_all(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = self.push(data);
        out.extend(self.finish());
        out
    }

    /// Feeds one chunk; returns what can be released.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.forms.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(chunk);
        let buf = self.mask(&buf);
        // Any form starting before `cut` ends inside `buf`, so it has been masked.
        let cut = buf.len().saturating_sub(self.hold);
        let (out, tail) = buf.split_at(cut);
        self.tail = tail.to_vec();
        out.to_vec()
    }

    /// Releases what is held back at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let tail = std::mem::take(&mut self.tail);
        self.mask(&tail)
    }

    fn mask(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        'scan: while let Some(&b) = data.get(i) {
            if !self.first.get(usize::from(b)).copied().unwrap_or(false) {
                out.push(b);
                i += 1;
                continue;
            }
            let rest = data.get(i..).unwrap_or_default();
            for f in &self.forms {
                if rest.starts_with(f) {
                    out.extend_from_slice(MASK);
                    i += f.len();
                    self.found = true;
                    continue 'scan;
                }
            }
            out.push(b);
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &[u8] = b"canary-7f3a9c2e-SECRET/value+x";

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn every_encoding_is_masked() {
        let wrapped_b64 = STANDARD.encode([b"user:".as_slice(), CANARY].concat());
        for text in [
            CANARY.to_vec(),
            STANDARD.encode(CANARY).into_bytes(),
            URL_SAFE_NO_PAD.encode(CANARY).into_bytes(),
            wrapped_b64.into_bytes(),
            CANARY
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
            b"canary-7f3a9c2e-SECRET%2Fvalue%2Bx".to_vec(),
            serde_json::to_string(std::str::from_utf8(CANARY).unwrap_or_default())
                .unwrap_or_default()
                .into_bytes(),
        ] {
            let body = [b"before ".as_slice(), &text, b" after"].concat();
            let mut r = Redactor::new([CANARY]);
            let out = r.redact_all(&body);
            assert!(r.found(), "{}", String::from_utf8_lossy(&text));
            assert!(contains(&out, MASK));
            assert!(!contains(&out, &text), "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn split_anywhere_in_a_stream() {
        let body = [b"xx".as_slice(), CANARY, b"yy", CANARY].concat();
        for size in 1..body.len() {
            let mut r = Redactor::new([CANARY]);
            let mut out = Vec::new();
            for chunk in body.chunks(size) {
                out.extend(r.push(chunk));
            }
            out.extend(r.finish());
            assert_eq!(out, b"xx[REDACTED]yy[REDACTED]", "chunk size {size}");
        }
    }

    #[test]
    fn clean_text_passes_unchanged() {
        let mut r = Redactor::new([CANARY]);
        let body = b"{\"ok\":true,\"items\":[1,2,3]}";
        assert_eq!(r.redact_all(body), body);
        assert!(!r.found());
        let mut none = Redactor::new(std::iter::empty::<&[u8]>());
        assert_eq!(none.push(b"abc"), b"abc");
    }

    proptest::proptest! {
        #[test]
        fn the_secret_never_survives(prefix in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                                     suffix in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                                     size in 1usize..17) {
            let body = [prefix.as_slice(), CANARY, &suffix].concat();
            let mut r = Redactor::new([CANARY]);
            let mut out = Vec::new();
            for chunk in body.chunks(size) { out.extend(r.push(chunk)); }
            out.extend(r.finish());
            proptest::prop_assert!(!contains(&out, CANARY));
        }
    }
}

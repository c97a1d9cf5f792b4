//! Redaction of secret values from upstream responses, in every common encoding, over a
//! stream whose chunks may split a secret anywhere.
//!
//! Two matchers look at every position that could start an echo of a secret:
//! - a *decoding* matcher walks the input one token at a time — a literal byte, a `%XX`
//!   escape (either hex case), a JSON escape (`\uXXXX` in any hex case, surrogate pairs,
//!   `\"`, `\\`, `\/`, `\n`…), a `+` standing for a space — and compares what the tokens
//!   decode to with the secret's bytes. Any mix of escaped and literal bytes matches, in any
//!   hex case, without enumerating encodings; the secret's own letters keep their case.
//! - *text* forms, compared as they are: base64 and base64url at every alignment inside a
//!   longer encoded text, and hex in any case.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// What replaces a secret.
pub const MASK: &[u8] = b"[REDACTED]";

/// Shortest secret the redactor looks for; shorter ones would match ordinary text.
pub const MIN_SECRET_LEN: usize = 8;

/// Most input bytes one secret byte can take: `\u00XX`. A surrogate pair is 12 bytes for 4,
/// `\uXXXX` 6 for 2 or 3, `%XX` 3 for 1.
pub const MAX_BYTES_PER_SECRET_BYTE: usize = 6;

/// Representative encodings of `secret` (raw, base64 and base64url at every alignment,
/// hex, percent-encoded, JSON-escaped): what an echo would most likely look like, for tests
/// and canary checks. The redactor matches more than these: any mix of escaped and literal
/// bytes, in any hex case.
pub fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![secret.to_vec()];
    out.extend(text_forms(secret).into_iter().map(|f| f.text));
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.to_ascii_uppercase().into_bytes());
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let pct = |upper: bool| -> Vec<u8> {
        let mut v = Vec::new();
        for &b in secret {
            if unreserved(b) {
                v.push(b);
            } else if upper {
                v.extend(format!("%{b:02X}").into_bytes());
            } else {
                v.extend(format!("%{b:02x}").into_bytes());
            }
        }
        v
    };
    out.push(pct(true));
    out.push(pct(false));
    out.push(
        secret
            .iter()
            .flat_map(|b| format!("%{b:02x}").into_bytes())
            .collect(),
    );
    out.push(
        secret
            .iter()
            .flat_map(|b| format!("\\u{b:04x}").into_bytes())
            .collect(),
    );
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

/// An encoding compared as text.
#[derive(Clone)]
struct TextForm {
    text: Vec<u8>,
    /// Compared without regard to ASCII case (hex).
    fold: bool,
}

/// The forms the decoding matcher cannot see: base64 (both alphabets, padded or not, and
/// the characters that depend on the secret alone when it starts at offset 0, 1 or 2 of a
/// 3-byte group in a longer text) and hex (any case).
fn text_forms(secret: &[u8]) -> Vec<TextForm> {
    let mut out = Vec::new();
    let exact = |text: Vec<u8>| TextForm { text, fold: false };
    for engine in [&STANDARD, &URL_SAFE] {
        out.push(exact(engine.encode(secret).into_bytes()));
        for k in 0..3usize {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(secret);
            let enc = engine.encode(&padded).into_bytes();
            let start = (k * 8).div_ceil(6);
            let end = (padded.len() * 8) / 6;
            if let Some(core) = enc.get(start..end)
                && core.len() >= MIN_SECRET_LEN
            {
                out.push(exact(core.to_vec()));
            }
        }
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        out.push(exact(engine.encode(secret).into_bytes()));
    }
    out.push(TextForm {
        text: secret
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect(),
        fold: true,
    });
    out.retain(|f| f.text.len() >= MIN_SECRET_LEN.min(secret.len()) && !f.text.is_empty());
    out.sort_by(|a, b| a.text.cmp(&b.text));
    out.dedup_by(|a, b| a.text == b.text);
    out
}

/// One way to read the input at a position: the bytes it stands for, and how many input
/// bytes it takes.
#[derive(Clone, Copy, Default)]
struct Token {
    bytes: [u8; 4],
    n: usize,
    len: usize,
}

impl Token {
    fn byte(b: u8, len: usize) -> Self {
        Self {
            bytes: [b, 0, 0, 0],
            n: 1,
            len,
        }
    }

    fn char(c: char, len: usize) -> Self {
        let mut bytes = [0u8; 4];
        let n = c.encode_utf8(&mut bytes).len();
        Self { bytes, n, len }
    }

    fn decoded(&self) -> &[u8] {
        self.bytes.get(..self.n).unwrap_or_default()
    }
}

fn hex_at(data: &[u8], at: usize, digits: usize) -> Option<u32> {
    let mut v = 0u32;
    for j in at..at + digits {
        v = v * 16 + char::from(*data.get(j)?).to_digit(16)?;
    }
    Some(v)
}

/// The readings of `data` at `at` (at most three): the byte itself, and what an escape
/// starting there decodes to.
fn tokens(data: &[u8], at: usize) -> ([Token; 3], usize) {
    let mut out = [Token::default(); 3];
    let mut n = 0;
    let mut add = |t: Token| {
        if let Some(slot) = out.get_mut(n) {
            *slot = t;
            n += 1;
        }
    };
    let Some(&b) = data.get(at) else {
        return (out, 0);
    };
    add(Token::byte(b, 1));
    match b {
        b'+' => add(Token::byte(b' ', 1)),
        b'%' => {
            if let Some(v) = hex_at(data, at + 1, 2).and_then(|v| u8::try_from(v).ok()) {
                add(Token::byte(v, 3));
            }
        }
        b'\\' => match data.get(at + 1) {
            Some(b'u') => {
                let Some(cp) = hex_at(data, at + 2, 4) else {
                    return (out, n);
                };
                if (0xD800..0xDC00).contains(&cp) {
                    let low = (data.get(at + 6..at + 8) == Some(b"\\u"))
                        .then(|| hex_at(data, at + 8, 4))
                        .flatten()
                        .filter(|lo| (0xDC00..0xE000).contains(lo));
                    if let Some(c) = low.and_then(|lo| {
                        char::from_u32(0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00))
                    }) {
                        add(Token::char(c, 12));
                    }
                } else if let Some(c) = char::from_u32(cp) {
                    add(Token::char(c, 6));
                    // `\u00XX` written for a raw byte, not for the code point.
                    if let Ok(raw) = u8::try_from(cp)
                        && raw >= 0x80
                    {
                        add(Token::byte(raw, 6));
                    }
                }
            }
            Some(&e) => {
                let short = match e {
                    b'"' | b'\\' | b'/' => Some(e),
                    b'b' => Some(0x08),
                    b'f' => Some(0x0C),
                    b'n' => Some(b'\n'),
                    b'r' => Some(b'\r'),
                    b't' => Some(b'\t'),
                    _ => None,
                };
                if let Some(v) = short {
                    add(Token::byte(v, 2));
                }
            }
            None => {}
        },
        _ => {}
    }
    (out, n)
}

/// Reusable state of the decoding matcher: no allocation per position once warm.
#[derive(Clone, Default)]
struct Scratch {
    /// States to explore: (secret bytes matched, input position).
    stack: Vec<(usize, usize)>,
    /// States already reached once two readings of the input both fit the secret (its own
    /// `%` read literally or as the start of `%25`, its own backslash…): such paths can
    /// meet again, and each state is explored once. Before the first fork the path is a
    /// line, so most searches never touch this.
    seen: HashSet<(usize, usize)>,
}

/// The end of the longest echo of `secret` starting at `start`, read through tokens.
fn decoded_match(secret: &[u8], data: &[u8], start: usize, s: &mut Scratch) -> Option<usize> {
    s.stack.clear();
    s.stack.push((0, start));
    let mut forked = false;
    let mut best = None;
    while let Some((matched, at)) = s.stack.pop() {
        let Some(rest) = secret.get(matched..) else {
            continue;
        };
        if rest.is_empty() {
            best = best.max(Some(at));
            continue;
        }
        let (toks, n) = tokens(data, at);
        let mut next = [(0usize, 0usize); 3];
        let mut fits = 0;
        for t in toks.iter().take(n) {
            if rest.starts_with(t.decoded())
                && let Some(slot) = next.get_mut(fits)
            {
                *slot = (matched + t.n, at + t.len);
                fits += 1;
            }
        }
        if fits > 1 && !forked {
            // Every state from here on matches more of the secret than any state before
            // the fork, so none of those can be reached again.
            forked = true;
            s.seen.clear();
        }
        for &state in next.iter().take(fits) {
            if forked && !s.seen.insert(state) {
                continue;
            }
            s.stack.push(state);
        }
    }
    best
}

/// A streaming redactor: feed chunks, get redacted chunks; a suffix shorter than the
/// longest echo is held back until the next chunk (or [`Redactor::finish`]) shows whether
/// it starts a secret.
#[derive(Clone)]
pub struct Redactor {
    secrets: Vec<Vec<u8>>,
    texts: Vec<TextForm>,
    /// Bytes an echo can start with: most positions are skipped with one lookup.
    first: [bool; 256],
    hold: usize,
    tail: Vec<u8>,
    found: bool,
    scratch: Scratch,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .field("found", &self.found)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for these secrets (each in every encoding the matchers know).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut all: Vec<Vec<u8>> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        all.sort();
        all.dedup();
        let mut texts: Vec<TextForm> = all.iter().flat_map(|s| text_forms(s)).collect();
        texts.sort_by(|a, b| a.text.cmp(&b.text));
        texts.dedup_by(|a, b| a.text == b.text);
        let mut first = [false; 256];
        let mut mark = |b: u8| {
            if let Some(slot) = first.get_mut(usize::from(b)) {
                *slot = true;
            }
        };
        for s in &all {
            if let Some(&b) = s.first() {
                mark(b);
                mark(b'%');
                mark(b'\\');
                if b == b' ' {
                    mark(b'+');
                }
            }
        }
        for f in &texts {
            if let Some(&b) = f.text.first() {
                mark(b);
                if f.fold {
                    mark(b.to_ascii_uppercase());
                    mark(b.to_ascii_lowercase());
                }
            }
        }
        let longest = all
            .iter()
            .map(|s| s.len().saturating_mul(MAX_BYTES_PER_SECRET_BYTE))
            .chain(texts.iter().map(|f| f.text.len()))
            .max()
            .unwrap_or(1);
        Self {
            secrets: all,
            texts,
            first,
            hold: longest.saturating_sub(1),
            tail: Vec::new(),
            found: false,
            scratch: Scratch::default(),
        }
    }

    /// True when there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// True once any secret was found (and masked).
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
        if self.secrets.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(chunk);
        // An echo starting before `limit` ends inside `buf` (none is longer than
        // `hold + 1` bytes), so every position before it can be decided now.
        let limit = buf.len().saturating_sub(self.hold);
        let mut out = Vec::with_capacity(limit);
        let stop = self.mask(&buf, limit, &mut out);
        // What is held back is input not yet decided, never output.
        buf.drain(..stop.min(buf.len()));
        self.tail = buf;
        out
    }

    /// Releases what is held back at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let tail = std::mem::take(&mut self.tail);
        let mut out = Vec::with_capacity(tail.len());
        self.mask(&tail, tail.len(), &mut out);
        out
    }

    /// Masks echoes starting before `limit`; returns where it stopped (at `limit`, or past
    /// it when an echo started before it ends after it).
    fn mask(&mut self, data: &[u8], limit: usize, out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        while i < limit {
            let rest = data.get(i..limit).unwrap_or_default();
            let skip = rest
                .iter()
                .position(|&b| self.first.get(usize::from(b)).copied().unwrap_or(false))
                .unwrap_or(rest.len());
            out.extend_from_slice(rest.get(..skip).unwrap_or_default());
            i += skip;
            if i >= limit {
                break;
            }
            match self.longest_at(data, i) {
                Some(end) if end > i => {
                    out.extend_from_slice(MASK);
                    self.found = true;
                    i = end;
                }
                _ => {
                    out.extend_from_slice(data.get(i..=i).unwrap_or_default());
                    i += 1;
                }
            }
        }
        i
    }

    /// The end of the longest echo of any secret starting at `at`.
    fn longest_at(&mut self, data: &[u8], at: usize) -> Option<usize> {
        let mut best = None;
        for s in &self.secrets {
            best = best.max(decoded_match(s, data, at, &mut self.scratch));
        }
        let rest = data.get(at..).unwrap_or_default();
        for f in &self.texts {
            let hit = rest.get(..f.text.len()).is_some_and(|w| {
                if f.fold {
                    w.eq_ignore_ascii_case(&f.text)
                } else {
                    w == f.text.as_slice()
                }
            });
            if hit {
                best = best.max(Some(at + f.text.len()));
            }
        }
        best
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

    /// Writes `secret` byte by byte in the encoding `pick` chooses for each byte.
    fn encode_each(secret: &[u8], pick: impl Fn(usize, u8) -> String) -> Vec<u8> {
        secret
            .iter()
            .enumerate()
            .flat_map(|(i, &b)| pick(i, b).into_bytes())
            .collect()
    }

    /// Redacts `body` fed in chunks of `size`.
    fn redact_in_chunks(secrets: &[&[u8]], body: &[u8], size: usize) -> (Vec<u8>, bool) {
        let mut r = Redactor::new(secrets.iter().copied());
        let mut out = Vec::new();
        for chunk in body.chunks(size.max(1)) {
            out.extend(r.push(chunk));
        }
        out.extend(r.finish());
        (out, r.found())
    }

    #[test]
    fn fully_escaped_echoes_are_masked() {
        let lower_pct = |_: usize, b: u8| format!("%{b:02x}");
        let upper_pct = |_: usize, b: u8| format!("%{b:02X}");
        let json_lower = |_: usize, b: u8| format!("\\u{b:04x}");
        let json_upper = |_: usize, b: u8| format!("\\u{b:04X}");
        for (what, text) in [
            ("every byte %xx", encode_each(CANARY, lower_pct)),
            ("every byte %XX", encode_each(CANARY, upper_pct)),
            (
                "every byte %Xx / %xX",
                encode_each(CANARY, |i, b| {
                    let h = format!("{b:02x}");
                    let (hi, lo) = h.split_at(1);
                    if i % 2 == 0 {
                        format!("%{}{lo}", hi.to_ascii_uppercase())
                    } else {
                        format!("%{hi}{}", lo.to_ascii_uppercase())
                    }
                }),
            ),
            ("every byte \\u00xx", encode_each(CANARY, json_lower)),
            ("every byte \\u00XX", encode_each(CANARY, json_upper)),
            (
                "literal, %xx, %XX, \\u00xx and \\u00XX in turn",
                encode_each(CANARY, |i, b| match i % 5 {
                    0 => char::from(b).to_string(),
                    1 => lower_pct(i, b),
                    2 => upper_pct(i, b),
                    3 => json_lower(i, b),
                    _ => json_upper(i, b),
                }),
            ),
            // Only the reserved bytes escaped, in lowercase hex: the secret's own letters
            // keep their case (`SECRET`), which a case-folded form would miss.
            (
                "reserved bytes as %xx",
                b"canary-7f3a9c2e-SECRET%2fvalue%2bx".to_vec(),
            ),
            (
                "JSON with \\/",
                b"canary-7f3a9c2e-SECRET\\/value+x".to_vec(),
            ),
        ] {
            let body = [b"{\"echo\":\"".as_slice(), &text, b"\"}"].concat();
            for size in [body.len(), 1, 2, 3, 5, 7, 13] {
                let (out, found) = redact_in_chunks(&[CANARY], &body, size);
                assert!(found, "{what}, chunks of {size}");
                assert_eq!(
                    out,
                    b"{\"echo\":\"[REDACTED]\"}",
                    "{what}, chunks of {size}: {}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }

    #[test]
    fn secrets_with_escape_characters_and_non_ascii() {
        // The secret's own `%`, `\\` and `+` read literally or escaped, and UTF-8 as
        // `\\u` of its code point, of its bytes, or a surrogate pair.
        let tricky: &[u8] = b"p%41ss\\w+rd secret";
        let emoji = "key-\u{1F600}-caf\u{e9}-0123".as_bytes();
        for (secret, text) in [
            (tricky, tricky.to_vec()),
            (tricky, b"p%2541ss%5Cw%2Brd+secret".to_vec()),
            (tricky, b"p%41ss\\\\w+rd secret".to_vec()),
            (tricky, encode_each(tricky, |_, b| format!("%{b:02x}"))),
            (emoji, emoji.to_vec()),
            (emoji, b"key-\\ud83d\\uDE00-caf\\u00e9-0123".to_vec()),
            (emoji, encode_each(emoji, |_, b| format!("\\u00{b:02X}"))),
            (emoji, encode_each(emoji, |_, b| format!("%{b:02x}"))),
        ] {
            let body = [b"<".as_slice(), &text, b">"].concat();
            for size in [body.len(), 1, 4] {
                let (out, found) = redact_in_chunks(&[secret], &body, size);
                assert!(found, "{}", String::from_utf8_lossy(&text));
                assert_eq!(out, b"<[REDACTED]>", "{}", String::from_utf8_lossy(&text));
            }
        }
    }

    #[test]
    fn readings_that_meet_again_are_explored_once() {
        // Each backslash of the input is the secret's own or half of an escaped one: the
        // readings fork at every byte and would take exponential time without dedup.
        let secret = vec![b'\\'; 40];
        let body = [vec![b'\\'; 300], b"x".to_vec()].concat();
        let (out, found) = redact_in_chunks(&[&secret], &body, 64);
        assert!(found);
        assert!(
            !contains(&out, &secret),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(out.ends_with(b"x"));
    }

    #[test]
    fn near_misses_and_escape_heavy_text_pass_unchanged() {
        for body in [
            b"canary-7f3a9c2e-SECRET/value+".to_vec(),
            b"canary-7f3a9c2e-secret/value+x".to_vec(),
            b"%63%61%6e%61%72%79-7f3a9c2e-SECRET/valu".to_vec(),
            b"\\u0063anary-7f3a9c2e-SECRET/value+y".to_vec(),
            b"100% \\ %zz %4 \\u12 \\ud800 \\x41 \\".to_vec(),
            "%%%%\\\\\\u0063\\u00".repeat(40).into_bytes(),
        ] {
            for size in [body.len().max(1), 1, 3] {
                let (out, found) = redact_in_chunks(&[CANARY], &body, size);
                assert!(!found, "{}", String::from_utf8_lossy(&body));
                assert_eq!(out, body);
            }
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

        /// Each byte of the secret literal, `%XX` or `\\u00XX` in any hex case, at any
        /// chunk size: always masked, and nothing of the text around it is lost.
        #[test]
        fn any_mix_of_escapes_is_masked(choice in proptest::collection::vec(0u8..6, CANARY.len()),
                                        prefix in "[a-z {}:\\\\%\"]{0,12}",
                                        size in 1usize..40) {
            let text = encode_each(CANARY, |i, b| match choice.get(i).copied().unwrap_or(0) {
                0 => char::from(b).to_string(),
                1 => format!("%{b:02x}"),
                2 => format!("%{b:02X}"),
                3 => format!("\\u{b:04x}"),
                4 => format!("\\u{b:04X}"),
                _ => format!("%{:x}{:X}", b >> 4, b & 15),
            });
            let body = [prefix.as_bytes(), b"|", &text, b"|end"].concat();
            let (out, found) = redact_in_chunks(&[CANARY], &body, size);
            proptest::prop_assert!(found);
            proptest::prop_assert!(out.ends_with(b"|[REDACTED]|end"), "{}", String::from_utf8_lossy(&out));
        }
    }
}

//! Canonical request paths and queries.
//!
//! The gateway decides on, and forwards, the canonical form produced here; anything that
//! could be read two ways by two parsers is refused instead of normalised: `.` and `..`
//! segments (raw or percent-encoded), empty segments, encoded separators (`%2F`, `%5C`),
//! backslashes, `;` path parameters, double encoding (`%25`), NUL and control
//! characters, bytes that are not UTF-8 once decoded, and segments that Unicode
//! compatibility normalisation (NFKC) would change: an upstream that normalises reads
//! `%EF%BC%8E%EF%BC%8E` (fullwidth full stops) or `․․` (one dot leaders) as `..`, and
//! `／` or `＼` as a separator.

use std::fmt;

/// Longest raw path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest raw query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 8192;
/// Most query parameters accepted.
pub const MAX_QUERY_PAIRS: usize = 128;

/// Why a path or query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than the limit.
    #[error("the {what} is longer than {max} bytes")]
    TooLong {
        /// path or query
        what: &'static str,
        /// the limit
        max: usize,
    },
    /// A `.` or `..` segment, raw or encoded.
    #[error("path segment {0:?} is a dot segment: traversal is refused")]
    DotSegment(String),
    /// `//` or a path not starting with `/`.
    #[error("the path has an empty segment (`//`) or does not start with `/`")]
    EmptySegment,
    /// A character or escape that different parsers read differently.
    #[error("path segment {segment:?} contains {what}, which is refused")]
    Ambiguous {
        /// the raw segment
        segment: String,
        /// what was found
        what: &'static str,
    },
    /// A malformed percent escape.
    #[error("{0:?} has a malformed percent escape")]
    BadEscape(String),
    /// Decoded bytes are not UTF-8.
    #[error("{0:?} does not decode to UTF-8")]
    NotUtf8(String),
    /// The decoded segment is not its own NFKC normal form.
    #[error(
        "path segment {0:?} changes under Unicode compatibility normalisation (NFKC), so an upstream that normalises could read another path (`．．` as `..`, `／` as `/`): send it in NFKC form"
    )]
    NotNormalised(String),
    /// Too many query parameters.
    #[error("the query has more than {0} parameters")]
    TooManyPairs(usize),
}

/// A path in canonical form: decoded segments, and the re-encoded text forwarded upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    segments: Vec<String>,
    trailing_slash: bool,
}

impl CanonicalPath {
    /// Parses a raw (still percent-encoded) path such as `/tickets/42`.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                what: "path",
                max: MAX_PATH_BYTES,
            });
        }
        let rest = raw.strip_prefix('/').ok_or(PathError::EmptySegment)?;
        if rest.is_empty() {
            return Ok(Self {
                segments: Vec::new(),
                trailing_slash: false,
            });
        }
        let (rest, trailing_slash) = match rest.strip_suffix('/') {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let mut segments = Vec::new();
        for raw_seg in rest.split('/') {
            segments.push(decode_segment(raw_seg)?);
        }
        Ok(Self {
            segments,
            trailing_slash,
        })
    }

    /// The decoded segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Appends this path to a base path (`/api` + `/tickets/42`).
    pub fn under(&self, base: &str) -> String {
        let mut out = base.trim_end_matches('/').to_owned();
        out.push_str(&self.to_string());
        out
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            f.write_str("/")?;
            f.write_str(&encode(s, PATH_SAFE))?;
        }
        if self.trailing_slash {
            f.write_str("/")?;
        }
        Ok(())
    }
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    if raw.is_empty() {
        return Err(PathError::EmptySegment);
    }
    let ambiguous = |what| PathError::Ambiguous {
        segment: raw.to_owned(),
        what,
    };
    if raw.contains('\\') {
        return Err(ambiguous("a backslash"));
    }
    if raw.contains(';') {
        return Err(ambiguous("a `;` path parameter"));
    }
    let decoded = percent_decode(raw)?;
    if raw.contains("%25") {
        return Err(ambiguous("an encoded `%` (double encoding)"));
    }
    if decoded.contains(['/', '\\']) {
        return Err(ambiguous("an encoded separator"));
    }
    if decoded.chars().any(char::is_control) {
        return Err(ambiguous("a control character"));
    }
    // Whether the text came encoded or as raw UTF-8, one reading only: the one that an
    // upstream normalising to NFKC would also see. ASCII is always in NFKC.
    if !decoded.is_ascii() && !unicode_normalization::is_nfkc(&decoded) {
        return Err(PathError::NotNormalised(raw.to_owned()));
    }
    if decoded == "." || decoded == ".." {
        return Err(PathError::DotSegment(raw.to_owned()));
    }
    Ok(decoded)
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |j: usize| {
                bytes
                    .get(j)
                    .and_then(|c| char::from(*c).to_digit(16))
                    .ok_or_else(|| PathError::BadEscape(raw.to_owned()))
            };
            let v = hex(i + 1)? * 16 + hex(i + 2)?;
            out.push(u8::try_from(v).map_err(|_| PathError::BadEscape(raw.to_owned()))?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8(raw.to_owned()))
}

/// Characters left as they are in a path segment (RFC 3986 unreserved, and the
/// sub-delimiters and `:@` that `pchar` allows, without `;`).
const PATH_SAFE: &str = "-._~!$&'()*+,=:@";
/// Characters left as they are in a query key or value (no `&`, `=`, `+`).
const QUERY_SAFE: &str = "-._~!$'()*,:@/?";

fn encode(s: &str, safe: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let c = char::from(b);
        if c.is_ascii_alphanumeric() || (b.is_ascii() && safe.contains(c)) {
            out.push(c);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query in canonical form: decoded pairs in their original order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanonicalQuery {
    pairs: Vec<(String, String)>,
}

impl CanonicalQuery {
    /// Parses a raw query (without `?`). `+` is a space, as in forms.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.len() > MAX_QUERY_BYTES {
            return Err(PathError::TooLong {
                what: "query",
                max: MAX_QUERY_BYTES,
            });
        }
        let mut pairs = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_QUERY_PAIRS {
                return Err(PathError::TooManyPairs(MAX_QUERY_PAIRS));
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = percent_decode(&k.replace('+', " "))?;
            let v = percent_decode(&v.replace('+', " "))?;
            if k.chars().chain(v.chars()).any(char::is_control) {
                return Err(PathError::Ambiguous {
                    segment: part.to_owned(),
                    what: "a control character",
                });
            }
            pairs.push((k, v));
        }
        Ok(Self { pairs })
    }

    /// The decoded pairs.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The query as policy sees it: each key to its value, or to the list of its values
    /// when it repeats.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (k, v) in &self.pairs {
            match map.get_mut(k) {
                None => {
                    map.insert(k.clone(), serde_json::Value::String(v.clone()));
                }
                Some(serde_json::Value::Array(list)) => list.push(v.clone().into()),
                Some(first) => {
                    let prev = first.take();
                    *first = serde_json::Value::Array(vec![prev, v.clone().into()]);
                }
            }
        }
        serde_json::Value::Object(map)
    }
}

impl fmt::Display for CanonicalQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            write!(f, "{}={}", encode(k, QUERY_SAFE), encode(v, QUERY_SAFE))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, want: Result<&str, &str>) {
        match (CanonicalPath::parse(raw), want) {
            (Ok(p), Ok(w)) => assert_eq!(p.to_string(), w, "{raw}"),
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{raw}: {e}"),
            (got, want) => panic!("{raw}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn canonical_paths() {
        check("/", Ok("/"));
        check("/tickets/42", Ok("/tickets/42"));
        check("/tickets/42/", Ok("/tickets/42/"));
        check("/a%20b", Ok("/a%20b"));
        check("/%61dmin", Ok("/admin"));
        check("/caf%C3%A9", Ok("/caf%C3%A9"));
        check("/caf\u{e9}", Ok("/caf%C3%A9"));
        check("/%E6%97%A5%E6%9C%AC", Ok("/%E6%97%A5%E6%9C%AC"));
        check("/x:y@z", Ok("/x:y@z"));
    }

    #[test]
    fn refused_paths() {
        for (raw, why) in [
            ("/../etc/passwd", "dot segment"),
            ("/a/./b", "dot segment"),
            ("/a/%2e%2e/b", "dot segment"),
            ("/a/%2E/b", "dot segment"),
            ("/a/.%2e/b", "dot segment"),
            ("/a/%2fetc", "encoded separator"),
            ("/a/%5Cetc", "encoded separator"),
            ("/a\\..\\b", "backslash"),
            ("/a/..;/b", "`;`"),
            ("/a/%252e%252e/b", "double encoding"),
            ("/a//b", "empty segment"),
            ("a/b", "empty segment"),
            ("/a%00b", "control"),
            ("/a%0Ab", "control"),
            ("/a%zz", "malformed"),
            ("/a%2", "malformed"),
            ("/a%ff", "UTF-8"),
            ("/a%c0%ae%c0%ae", "UTF-8"),
            // Compatibility characters an NFKC-normalising upstream reads as dots or
            // separators, encoded and raw.
            ("/a/%EF%BC%8E%EF%BC%8E/b", "NFKC"),
            ("/a/%ef%bc%8e%ef%bc%8e/b", "NFKC"),
            ("/a/\u{ff0e}\u{ff0e}/b", "NFKC"),
            ("/a/%E2%80%A4%E2%80%A4/b", "NFKC"),
            ("/a/\u{2024}\u{2024}/b", "NFKC"),
            ("/a/%E2%80%A5/b", "NFKC"),
            ("/a/%EF%B9%92%EF%B9%92/b", "NFKC"),
            ("/a/..%EF%BC%8Fetc", "NFKC"),
            ("/a/\u{ff0f}etc", "NFKC"),
            ("/a/..%EF%BC%BCetc", "NFKC"),
            ("/a/\u{ff3c}etc", "NFKC"),
            ("/%EF%BD%81dmin", "NFKC"),
            ("/\u{fb01}le", "NFKC"),
            // Not composed: NFKC composes `e` + U+0301 into `é`.
            ("/cafe%CC%81", "NFKC"),
        ] {
            check(raw, Err(why));
        }
        assert!(matches!(
            CanonicalPath::parse(&format!("/{}", "a".repeat(MAX_PATH_BYTES))),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn queries() {
        let q = CanonicalQuery::parse("b=2&a=1&a=x+y&c=%26").unwrap_or_default();
        assert_eq!(q.to_string(), "b=2&a=1&a=x%20y&c=%26");
        assert_eq!(
            q.to_json(),
            serde_json::json!({"b": "2", "a": ["1", "x y"], "c": "&"})
        );
        assert!(CanonicalQuery::parse("a=%00").is_err());
        assert!(CanonicalQuery::parse("a=%f").is_err());
        let many = vec!["a=1"; MAX_QUERY_PAIRS + 1].join("&");
        assert!(CanonicalQuery::parse(&many).is_err());
    }

    proptest::proptest! {
        /// Arbitrary input never panics, and whatever is accepted has no dot segment, no
        /// empty segment and no separator inside a segment.
        #[test]
        fn arbitrary_paths_are_refused_or_clean(raw in "/[ -~]{0,40}", q in "[ -~]{0,40}") {
            if let Ok(p) = CanonicalPath::parse(&raw) {
                for s in p.segments() {
                    proptest::prop_assert!(s != "." && s != ".." && !s.is_empty() && !s.contains(['/', '\\']));
                }
                proptest::prop_assert_eq!(CanonicalPath::parse(&p.to_string()).ok(), Some(p));
            }
            if let Ok(query) = CanonicalQuery::parse(&q) {
                proptest::prop_assert_eq!(CanonicalQuery::parse(&query.to_string()).ok(), Some(query));
            }
        }

        /// Canonicalisation is idempotent: the canonical text parses to itself.
        #[test]
        fn canonical_is_a_fixed_point(raw in "(/[a-zA-Z0-9%._~:@ -]{1,8}){0,5}") {
            if let Ok(p) = CanonicalPath::parse(&raw) {
                let again = CanonicalPath::parse(&p.to_string());
                proptest::prop_assert_eq!(again.as_ref().ok(), Some(&p));
            }
        }
    }
}

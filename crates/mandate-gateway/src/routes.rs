//! The route table: method + path pattern → tool, action class, data domain.

use mandate_core::{ActionClass, DataDomain, Sensitivity, ToolName};

use crate::path::{CanonicalPath, PathError};

/// One piece of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Must equal this decoded segment.
    Literal(String),
    /// Any one segment, captured under this name.
    Param(String),
    /// One or more remaining segments, captured (joined with `/`) under this name.
    Rest(String),
}

/// A path pattern such as `/tickets/{id}` or `/files/{*path}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pieces: Vec<Piece>,
    text: String,
}

impl PathPattern {
    /// Parses a pattern; literal segments follow the same rules as request paths.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let path = CanonicalPath::parse(text)?;
        let mut pieces = Vec::new();
        let n = path.segments().len();
        for (i, s) in path.segments().iter().enumerate() {
            let piece = match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => match name.strip_prefix('*') {
                    Some(rest) if i + 1 == n && valid_name(rest) => Piece::Rest(rest.to_owned()),
                    None if valid_name(name) => Piece::Param(name.to_owned()),
                    _ => {
                        return Err(PathError::Ambiguous {
                            segment: s.clone(),
                            what: "a bad parameter (`{name}`, or `{*name}` last)",
                        });
                    }
                },
                None => Piece::Literal(s.clone()),
            };
            pieces.push(piece);
        }
        Ok(Self {
            pieces,
            text: text.to_owned(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The captured parameters when `path` matches.
    pub fn matches(&self, path: &CanonicalPath) -> Option<Vec<(String, String)>> {
        let segs = path.segments();
        let mut captured = Vec::new();
        let mut i = 0;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => {
                    if segs.get(i) != Some(l) {
                        return None;
                    }
                }
                Piece::Param(name) => captured.push((name.clone(), segs.get(i)?.clone())),
                Piece::Rest(name) => {
                    let rest = segs.get(i..).filter(|r| !r.is_empty())?;
                    captured.push((name.clone(), rest.join("/")));
                    return Some(captured);
                }
            }
            i += 1;
        }
        (i == segs.len()).then_some(captured)
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 32 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A route: what a matching request is decided as.
#[derive(Debug, Clone)]
pub struct Route {
    /// Uppercase HTTP method.
    pub method: String,
    /// Path pattern under the upstream.
    pub pattern: PathPattern,
    /// The tool.
    pub tool: ToolName,
    /// Its action class.
    pub action: ActionClass,
    /// The data domain it touches.
    pub data_domain: Option<DataDomain>,
    /// Sensitivity of its data.
    pub sensitivity: Option<Sensitivity>,
}

/// The first route (in file order) matching the method and path, with its captures.
pub fn find<'a>(
    routes: &'a [Route],
    method: &str,
    path: &CanonicalPath,
) -> Option<(&'a Route, Vec<(String, String)>)> {
    routes
        .iter()
        .filter(|r| r.method == method)
        .find_map(|r| r.pattern.matches(path).map(|c| (r, c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, path: &str, want: Option<&[(&str, &str)]>) {
        let p = PathPattern::parse(pattern);
        let path = CanonicalPath::parse(path);
        let got = match (&p, &path) {
            (Ok(p), Ok(path)) => p.matches(path),
            _ => panic!("bad fixture {pattern} {path:?}"),
        };
        let want = want.map(|w| {
            w.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect::<Vec<_>>()
        });
        assert_eq!(got, want, "{pattern}");
    }

    #[test]
    fn matching() {
        check("/tickets", "/tickets", Some(&[]));
        check("/tickets", "/tickets/1", None);
        check("/tickets/{id}", "/tickets/42", Some(&[("id", "42")]));
        check("/tickets/{id}", "/tickets", None);
        check("/tickets/{id}", "/tickets/a%20b", Some(&[("id", "a b")]));
        check("/files/{*path}", "/files/a/b/c", Some(&[("path", "a/b/c")]));
        check("/files/{*path}", "/files", None);
        check("/", "/", Some(&[]));
        assert!(PathPattern::parse("/{*rest}/x").is_err());
        assert!(PathPattern::parse("/{a-b}").is_err());
    }
}

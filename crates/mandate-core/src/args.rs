//! Canonical tool-call arguments.
//!
//! Arguments arrive as JSON written by an agent. They are parsed once, here, into a value
//! whose serialisation is canonical (object keys sorted, no insignificant whitespace), so
//! the digest that policy, approvals and audit see is the digest of exactly what runs.
//! Duplicate keys are refused rather than resolved: two parsers that pick different
//! duplicates are the classic way to make a checker and an executor disagree.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::ids::sha256_hex;

/// The canonical JSON text of a value: object keys sorted by their UTF-8 bytes at every
/// level, no insignificant whitespace, strings and numbers as serde_json writes them.
///
/// Sorting is done here rather than left to `serde_json::Map`, whose order depends on
/// whether any crate in the build enables its `preserve_order` feature.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Deepest nesting accepted while parsing; deeper documents are refused.
pub const MAX_DEPTH: usize = 32;

/// Deepest nesting accepted in a whole document (an API body, a JSON-RPC message) read by
/// [`strict_json`]: the arguments' own limit plus room for the envelopes that carry them
/// (`{"evaluations":[{"context":{"arguments":…}}]}`).
pub const MAX_DOCUMENT_DEPTH: usize = MAX_DEPTH + 8;

/// Checks attacker-written JSON text the one way every entry point checks it: exactly one
/// value, no duplicate key in any object (keys compared after unescaping, so `"a"` and
/// `"\u0061"` are the same key), nesting at most [`MAX_DOCUMENT_DEPTH`], no trailing
/// text. Returns the value.
///
/// A parser that resolves duplicates (serde_json keeps the last, others the first) lets a
/// checker and an executor read two different documents from the same bytes; refusing
/// them here, once, means no entry point can disagree with another.
pub fn strict_json(bytes: &[u8]) -> Result<Value, ArgsError> {
    strict_value(bytes, MAX_DOCUMENT_DEPTH)
}

/// Deserialises attacker-written JSON into `T` after [`strict_json`] accepted the text:
/// the typed parse then sees a document with one reading only.
pub fn from_slice_strict<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StrictJsonError> {
    strict_json(bytes).map_err(StrictJsonError::Syntax)?;
    serde_json::from_slice(bytes).map_err(|e| StrictJsonError::Data(e.to_string()))
}

/// Why [`from_slice_strict`] refused a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    /// Not acceptable JSON: syntax, a duplicate key, too deep, trailing text.
    #[error("{0}")]
    Syntax(ArgsError),
    /// Acceptable JSON that does not fit the type (unknown field, wrong type…).
    #[error("{0}")]
    Data(String),
}

fn strict_value(bytes: &[u8], max_depth: usize) -> Result<Value, ArgsError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = ValueSeed {
        depth: 0,
        max: max_depth,
    }
    .deserialize(&mut de)
    .map_err(|e| ArgsError::Json(e.to_string()))?;
    de.end().map_err(|e| ArgsError::Json(e.to_string()))?;
    Ok(value)
}

/// Why arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// The canonical form is larger than allowed.
    #[error("arguments are {got} bytes in canonical form; the limit is {max}")]
    TooLarge {
        /// Canonical size.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The JSON could not be parsed.
    #[error("arguments are not acceptable JSON: {0}")]
    Json(String),
}

/// Arguments in canonical form, with their SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalArgs {
    value: Value,
    canonical: String,
    digest: String,
}

impl CanonicalArgs {
    /// Empty arguments (`{}`).
    pub fn empty() -> Self {
        Self::from_value(Value::Object(Map::new()))
    }

    /// Parses JSON text, refusing duplicate keys and nesting deeper than 32 levels.
    pub fn parse(json: &str) -> Result<Self, ArgsError> {
        strict_value(json.as_bytes(), MAX_DEPTH).map(Self::from_value)
    }

    /// Arguments from a value built by trusted code (the gateway composes a request's
    /// path, query and parsed body this way); untrusted text goes through [`Self::parse`].
    pub fn from_value(value: Value) -> Self {
        let canonical = canonical_json(&value);
        let digest = sha256_hex(canonical.as_bytes());
        Self {
            value,
            canonical,
            digest,
        }
    }

    /// Refuses arguments whose canonical form exceeds `max` bytes.
    pub fn check_size(&self, max: usize) -> Result<(), ArgsError> {
        if self.canonical.len() > max {
            Err(ArgsError::TooLarge {
                got: self.canonical.len(),
                max,
            })
        } else {
            Ok(())
        }
    }

    /// The parsed value.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The canonical JSON text.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Hex SHA-256 of the canonical text.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

impl Default for CanonicalArgs {
    fn default() -> Self {
        Self::empty()
    }
}

impl Serialize for CanonicalArgs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<'de> Deserialize<'de> for CanonicalArgs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ValueSeed {
            depth: 0,
            max: MAX_DEPTH,
        }
        .deserialize(d)
        .map(Self::from_value)
    }
}

struct ValueSeed {
    depth: usize,
    max: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth > self.max {
            return Err(de::Error::custom(format!(
                "JSON nests deeper than {} levels",
                self.max
            )));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed {
            depth: self.depth + 1,
            max: self.max,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let v = map.next_value_seed(ValueSeed {
                depth: self.depth + 1,
                max: self.max,
            })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys() {
        let a = CanonicalArgs::parse(r#"{ "b": 1, "a": {"y": [1, 2], "x": null} }"#).unwrap();
        let b = CanonicalArgs::parse(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(a.canonical(), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn refuses_duplicates_depth_and_trailing() {
        assert!(CanonicalArgs::parse(r#"{"a":1,"a":2}"#).is_err());
        assert!(CanonicalArgs::parse(r#"{"x":{"a":1,"a":1}}"#).is_err());
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert!(CanonicalArgs::parse(&deep).is_err());
        let ok = format!("{}{}", "[".repeat(30), "]".repeat(30));
        assert!(CanonicalArgs::parse(&ok).is_ok());
        assert!(CanonicalArgs::parse(r#"{} {}"#).is_err());
    }

    #[test]
    fn strict_json_refuses_duplicates_after_unescaping() {
        let err = strict_json(br#"{"amount":1000,"id":42,"\u0061mount":10}"#).unwrap_err();
        assert!(
            err.to_string().contains("duplicate key \"amount\""),
            "{err}"
        );
        assert!(strict_json(br#"{"a":{"b":[{"c":1,"c":1}]}}"#).is_err());
        assert!(strict_json(br#"{"a":1} x"#).is_err());
        assert!(strict_json(b"\xff").is_err());
        // Documents may carry arguments at their own limit inside a few envelopes.
        let inner = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let doc = format!(r#"{{"evaluations":[{{"context":{{"arguments":{inner}}}}}]}}"#);
        assert!(strict_json(doc.as_bytes()).is_ok());
        let deep = format!("{}{}", "[".repeat(60), "]".repeat(60));
        assert!(strict_json(deep.as_bytes()).is_err());
    }

    #[test]
    fn from_slice_strict_tells_syntax_from_data() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Req {
            #[allow(dead_code, reason = "only parsed")]
            amount: u32,
        }
        assert!(from_slice_strict::<Req>(br#"{"amount":1}"#).is_ok());
        assert!(matches!(
            from_slice_strict::<Req>(br#"{"amount":1,"amount":2}"#),
            Err(StrictJsonError::Syntax(_))
        ));
        assert!(matches!(
            from_slice_strict::<Req>(br#"{"amount":1,"other":2}"#),
            Err(StrictJsonError::Data(_))
        ));
    }

    #[test]
    fn deserialize_inside_struct() {
        #[derive(Deserialize)]
        struct Call {
            args: CanonicalArgs,
        }
        let c: Call = serde_json::from_str(r#"{"args":{"z":1,"a":"x"}}"#).unwrap();
        assert_eq!(c.args.canonical(), r#"{"a":"x","z":1}"#);
        assert!(serde_json::from_str::<Call>(r#"{"args":{"a":1,"a":1}}"#).is_err());
        let small = CanonicalArgs::parse(r#"{"a":"0123456789"}"#).unwrap();
        assert!(small.check_size(8).is_err());
        assert!(small.check_size(1024).is_ok());
    }
}

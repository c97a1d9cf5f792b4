//! Tool arguments as the trusted catalog declares them: a JSON Schema subset, the Cedar
//! type it derives for `context.args`, and the conversion of a call's canonical
//! arguments into typed Cedar values, done once per call.
//!
//! The subset: `object` (`properties`, `required`, `additionalProperties`, default
//! `false`: an argument the catalog does not declare is refused, because policy could not
//! see it), `string` (`enum`, `maxLength`, `format`: `decimal`, `ipaddr`, `date-time`),
//! `integer` (`minimum`, `maximum`; Cedar `Long`), `number` (`minimum`, `maximum`; Cedar
//! `decimal`, at most four decimal places), `boolean`, and `array` (`items`, `maxItems`;
//! a Cedar set, so order and repeats are not visible to policy). Any other keyword is an
//! error at load: a schema that says more than Mandate checks would promise what it does
//! not enforce.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use cedar_policy::RestrictedExpression;
use serde_json::{Map, Value};

use crate::derived;

/// Deepest nesting of objects and arrays a schema may declare.
pub const MAX_SCHEMA_DEPTH: usize = 8;
/// Longest property name a schema may declare.
pub const MAX_FIELD_NAME: usize = 64;

/// One declared argument type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgSchema {
    /// A JSON object: a Cedar record.
    Object {
        /// Declared fields.
        properties: BTreeMap<String, ArgSchema>,
        /// Fields that must be present.
        required: BTreeSet<String>,
        /// Whether undeclared fields are accepted (they stay invisible to policy).
        additional: bool,
    },
    /// A JSON string: a Cedar `String`, or an extension value by `format`.
    String {
        /// The only values accepted, when declared.
        one_of: Option<BTreeSet<String>>,
        /// Longest value, in characters.
        max_length: Option<usize>,
        /// How the string is typed for policy.
        format: Option<StringFormat>,
        /// For `format: "path"`: the root `under_root` is computed against.
        root: Option<String>,
    },
    /// A JSON integer: a Cedar `Long`.
    Integer {
        /// Smallest value accepted.
        minimum: Option<i64>,
        /// Largest value accepted.
        maximum: Option<i64>,
    },
    /// A JSON number: a Cedar `decimal` (four decimal places).
    Number {
        /// Smallest value accepted, in ten-thousandths.
        minimum: Option<i64>,
        /// Largest value accepted, in ten-thousandths.
        maximum: Option<i64>,
    },
    /// A JSON boolean: a Cedar `Bool`.
    Boolean,
    /// An argv array of strings (`format: "command"`): a record of derived facts.
    Command {
        /// Most items accepted.
        max_items: Option<usize>,
    },
    /// A JSON array: a Cedar set.
    Array {
        /// The type of every item.
        items: Box<ArgSchema>,
        /// Most items accepted.
        max_items: Option<usize>,
    },
}

/// Which addresses an `ipaddr` argument admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4 or IPv6.
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

impl IpFamily {
    fn admits(self, canonical: &str) -> bool {
        let v6 = canonical.contains(':');
        match self {
            Self::Any => true,
            Self::V4 => !v6,
            Self::V6 => v6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Any => "IP",
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// How a string argument is typed for policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringFormat {
    /// `decimal`: a Cedar `decimal`, e.g. `"12.50"`.
    Decimal,
    /// `ipaddr` (either family), `ipv4` or `ipv6`: a Cedar `ipaddr`, an address or a
    /// CIDR range, in canonical form.
    IpAddr(IpFamily),
    /// `date-time`: an RFC 3339 instant, a Cedar `datetime` (in UTC).
    DateTime,
    /// `url`: an absolute URL, as the record `{scheme, host, port, path, query}`.
    Url,
    /// `email`: an address, as `{local, domain}`.
    Email,
    /// `path`: a canonical absolute path, as `{path, name, depth, under_root?}`.
    Path,
    /// `sql`: SQL text, as `{parsed, statements, kinds, tables}` from a real parser.
    Sql,
}

/// An argument that does not fit the declared schema: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// The field, as a path from the arguments' root (`$` for the root itself).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "argument `{}` {}", self.field, self.problem)
    }
}

impl ArgSchema {
    /// Parses a schema as the catalog writes it. Errors name the offending location.
    pub fn parse(v: &Value) -> Result<Self, String> {
        let s = parse_at(v, "$", 0)?;
        if !matches!(s, Self::Object { .. }) {
            return Err("arguments: the root must be `\"type\": \"object\"`".into());
        }
        Ok(s)
    }

    /// The Cedar schema type of this argument, in Cedar schema syntax.
    pub fn cedar_type(&self) -> String {
        match self {
            Self::Object {
                properties,
                required,
                ..
            } => {
                let mut out = String::from("{");
                for (i, (name, s)) in properties.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let opt = if required.contains(name) { "" } else { "?" };
                    let _ = write!(out, "\"{name}\"{opt}: {}", s.cedar_type());
                }
                out.push('}');
                out
            }
            Self::String { format, root, .. } => match format {
                None => "String".into(),
                Some(StringFormat::Decimal) => "__cedar::decimal".into(),
                Some(StringFormat::IpAddr(_)) => "__cedar::ipaddr".into(),
                Some(StringFormat::DateTime) => "__cedar::datetime".into(),
                Some(StringFormat::Url) => derived::URL_TYPE.into(),
                Some(StringFormat::Email) => derived::EMAIL_TYPE.into(),
                Some(StringFormat::Path) => derived::path_type(root.is_some()),
                Some(StringFormat::Sql) => derived::SQL_TYPE.into(),
            },
            Self::Command { .. } => derived::COMMAND_TYPE.into(),
            Self::Integer { .. } => "Long".into(),
            Self::Number { .. } => "__cedar::decimal".into(),
            Self::Boolean => "Bool".into(),
            Self::Array { items, .. } => format!("Set<{}>", items.cedar_type()),
        }
    }

    /// Converts a call's arguments into the typed Cedar value policy sees, or says which
    /// field does not fit.
    pub fn to_cedar(&self, v: &Value) -> Result<RestrictedExpression, ArgError> {
        convert(self, v, "$")
    }

    /// What policy sees of a call's arguments, as JSON, for the people who read
    /// approvals: declared fields only, amounts as four-place decimals, formats as their
    /// derived facts. `None` when the arguments do not fit.
    pub fn typed_view(&self, v: &Value) -> Option<Value> {
        self.to_cedar(v).ok()?;
        Some(view(self, v))
    }
}

/// [`ArgSchema::typed_view`] of arguments already known to fit.
fn view(s: &ArgSchema, v: &Value) -> Value {
    let text = || v.as_str().unwrap_or_default();
    match s {
        ArgSchema::Object { properties, .. } => Value::Object(
            v.as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, x)| properties.get(k).map(|ps| (k.clone(), view(ps, x))))
                .collect(),
        ),
        ArgSchema::String { format, root, .. } => {
            let facts = match format {
                None => return v.clone(),
                Some(StringFormat::Decimal) => {
                    return parse_decimal(text()).map_or(Value::Null, |d| decimal_text(d).into());
                }
                Some(StringFormat::IpAddr(_)) => {
                    return ip_text(text()).map_or(Value::Null, Into::into);
                }
                Some(StringFormat::DateTime) => {
                    return datetime_text(text()).map_or(Value::Null, Into::into);
                }
                Some(StringFormat::Url) => derived::url(text()),
                Some(StringFormat::Email) => derived::email(text()),
                Some(StringFormat::Path) => derived::path(text(), root.as_deref()),
                Some(StringFormat::Sql) => derived::sql(text()),
            };
            facts.map_or(Value::Null, |f| f.to_json())
        }
        ArgSchema::Command { .. } => {
            let argv: Vec<String> = v
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            derived::command(&argv).map_or(Value::Null, |f| f.to_json())
        }
        ArgSchema::Number { .. } => {
            number_to_decimal(v).map_or(Value::Null, |d| decimal_text(d).into())
        }
        ArgSchema::Integer { .. } | ArgSchema::Boolean => v.clone(),
        ArgSchema::Array { items, .. } => Value::Array(
            v.as_array()
                .into_iter()
                .flatten()
                .map(|x| view(items, x))
                .collect(),
        ),
    }
}

fn bad(at: &str, msg: impl std::fmt::Display) -> String {
    format!("arguments: {at}: {msg}")
}

fn parse_at(v: &Value, at: &str, depth: usize) -> Result<ArgSchema, String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(bad(at, format!("nested deeper than {MAX_SCHEMA_DEPTH}")));
    }
    let Value::Object(m) = v else {
        return Err(bad(at, "a schema must be a JSON object"));
    };
    let ty = m
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(at, "needs a \"type\" string"))?;
    let allowed: &[&str] = match ty {
        "object" => &[
            "type",
            "properties",
            "required",
            "additionalProperties",
            "description",
            "title",
        ],
        "string" => &[
            "type",
            "enum",
            "maxLength",
            "format",
            "root",
            "description",
            "title",
        ],
        "integer" | "number" => &["type", "minimum", "maximum", "description", "title"],
        "boolean" => &["type", "description", "title"],
        "array" => &[
            "type",
            "items",
            "maxItems",
            "format",
            "description",
            "title",
        ],
        other => {
            return Err(bad(
                at,
                format!(
                    "type {other:?} is not supported (object, string, integer, number, boolean, array)"
                ),
            ));
        }
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(
            at,
            format!(
                "keyword {k:?} is not supported for type {ty}; Mandate checks only {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(match ty {
        "object" => parse_object(m, at, depth)?,
        "string" => {
            let one_of = match m.get("enum") {
                None => None,
                Some(Value::Array(items)) if !items.is_empty() => Some(
                    items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| bad(at, "enum values must be strings"))
                        })
                        .collect::<Result<BTreeSet<_>, _>>()?,
                ),
                Some(_) => return Err(bad(at, "enum must be a non-empty array")),
            };
            let format = match m.get("format").map(|f| f.as_str()) {
                None => None,
                Some(Some("decimal")) => Some(StringFormat::Decimal),
                Some(Some("ipaddr")) => Some(StringFormat::IpAddr(IpFamily::Any)),
                Some(Some("ipv4")) => Some(StringFormat::IpAddr(IpFamily::V4)),
                Some(Some("ipv6")) => Some(StringFormat::IpAddr(IpFamily::V6)),
                Some(Some("date-time")) => Some(StringFormat::DateTime),
                Some(Some("url")) => Some(StringFormat::Url),
                Some(Some("email")) => Some(StringFormat::Email),
                Some(Some("path")) => Some(StringFormat::Path),
                Some(Some("sql")) => Some(StringFormat::Sql),
                Some(other) => {
                    return Err(bad(
                        at,
                        format!(
                            "format {other:?} is not supported (decimal, ipaddr, ipv4, ipv6, date-time, url, email, path, sql; command on an array)"
                        ),
                    ));
                }
            };
            if format.is_some() && one_of.is_some() {
                return Err(bad(at, "enum and format cannot be combined"));
            }
            let root = match m.get("root") {
                None => None,
                Some(_) if format != Some(StringFormat::Path) => {
                    return Err(bad(at, "root is only for format \"path\""));
                }
                Some(Value::String(r)) => {
                    derived::check_path(r).map_err(|e| bad(at, format!("root {e}")))?;
                    Some(r.clone())
                }
                Some(_) => return Err(bad(at, "root must be a path string")),
            };
            ArgSchema::String {
                one_of,
                max_length: usize_kw(m, "maxLength", at)?,
                format,
                root,
            }
        }
        "integer" => {
            let (minimum, maximum) = (i64_kw(m, "minimum", at)?, i64_kw(m, "maximum", at)?);
            check_order(minimum, maximum, at)?;
            ArgSchema::Integer { minimum, maximum }
        }
        "number" => {
            let bound = |k: &str| match m.get(k) {
                None => Ok(None),
                Some(v) => number_to_decimal(v).map(Some).ok_or_else(|| {
                    bad(
                        at,
                        format!("{k} must be a number with at most four decimal places"),
                    )
                }),
            };
            let (minimum, maximum) = (bound("minimum")?, bound("maximum")?);
            check_order(minimum, maximum, at)?;
            ArgSchema::Number { minimum, maximum }
        }
        "boolean" => ArgSchema::Boolean,
        _ if m.contains_key("format") => {
            if m.get("format").and_then(Value::as_str) != Some("command") {
                return Err(bad(
                    at,
                    "an array's only format is \"command\" (argv: an array of strings)",
                ));
            }
            if m.get("items")
                .is_some_and(|i| i != &serde_json::json!({ "type": "string" }))
            {
                return Err(bad(at, "a command's items are {\"type\": \"string\"}"));
            }
            ArgSchema::Command {
                max_items: usize_kw(m, "maxItems", at)?,
            }
        }
        _ => {
            let items = m
                .get("items")
                .ok_or_else(|| bad(at, "an array needs \"items\""))?;
            ArgSchema::Array {
                items: Box::new(parse_at(items, &format!("{at}[]"), depth + 1)?),
                max_items: usize_kw(m, "maxItems", at)?,
            }
        }
    })
}

fn parse_object(m: &Map<String, Value>, at: &str, depth: usize) -> Result<ArgSchema, String> {
    let mut properties = BTreeMap::new();
    match m.get("properties") {
        None => {}
        Some(Value::Object(props)) => {
            for (name, s) in props {
                if name.is_empty()
                    || name.len() > MAX_FIELD_NAME
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
                {
                    return Err(bad(
                        at,
                        format!(
                            "field name {name:?} must be 1-{MAX_FIELD_NAME} printable ASCII characters without quotes or backslashes"
                        ),
                    ));
                }
                properties.insert(
                    name.clone(),
                    parse_at(s, &format!("{at}.{name}"), depth + 1)?,
                );
            }
        }
        Some(_) => return Err(bad(at, "properties must be an object")),
    }
    let required = match m.get("required") {
        None => BTreeSet::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i.as_str() {
                Some(n) if properties.contains_key(n) => Ok(n.to_owned()),
                Some(n) => Err(bad(
                    at,
                    format!("required field {n:?} is not in properties"),
                )),
                None => Err(bad(at, "required must list field names")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad(at, "required must be an array")),
    };
    let additional = match m.get("additionalProperties") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad(at, "additionalProperties must be true or false")),
    };
    Ok(ArgSchema::Object {
        properties,
        required,
        additional,
    })
}

fn usize_kw(m: &Map<String, Value>, k: &str, at: &str) -> Result<Option<usize>, String> {
    match m.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(at, format!("{k} must be a non-negative integer"))),
    }
}

fn i64_kw(m: &Map<String, Value>, k: &str, at: &str) -> Result<Option<i64>, String> {
    match m.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad(at, format!("{k} must be an integer"))),
    }
}

fn check_order(min: Option<i64>, max: Option<i64>, at: &str) -> Result<(), String> {
    match (min, max) {
        (Some(a), Some(b)) if a > b => Err(bad(at, "minimum is above maximum")),
        _ => Ok(()),
    }
}

/// Ten-thousandths per unit: Cedar's `decimal` has four decimal places.
const DECIMAL_SCALE: i64 = 10_000;

/// A JSON number as Cedar decimal ten-thousandths, if it fits exactly.
fn number_to_decimal(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return i.checked_mul(DECIMAL_SCALE);
    }
    parse_decimal(&n.to_string())
}

/// `[-]digits[.digits]` with at most four fractional digits, as ten-thousandths.
fn parse_decimal(text: &str) -> Option<i64> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 4
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (body.contains('.') && frac.is_empty())
    {
        return None;
    }
    let int: i64 = int.parse().ok()?;
    let mut frac_v: i64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        frac_v += i64::from(b - b'0') * 10_i64.pow(3 - u32::try_from(i).ok()?);
    }
    let v = int.checked_mul(DECIMAL_SCALE)?.checked_add(frac_v)?;
    Some(if neg { -v } else { v })
}

/// Ten-thousandths as the text Cedar's `decimal(...)` accepts.
fn decimal_text(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    let scale = DECIMAL_SCALE.unsigned_abs();
    format!("{sign}{}.{:04}", a / scale, a % scale)
}

fn field(at: &str, name: &str) -> String {
    if at == "$" {
        name.to_owned()
    } else {
        format!("{at}.{name}")
    }
}

fn err(at: &str, problem: impl Into<String>) -> ArgError {
    ArgError {
        field: at.to_owned(),
        problem: problem.into(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn convert(s: &ArgSchema, v: &Value, at: &str) -> Result<RestrictedExpression, ArgError> {
    match s {
        ArgSchema::Object {
            properties,
            required,
            additional,
        } => {
            let Value::Object(m) = v else {
                return Err(err(at, format!("must be an object, not {}", kind(v))));
            };
            if let Some(missing) = required.iter().find(|r| !m.contains_key(*r)) {
                return Err(err(&field(at, missing), "is required"));
            }
            let mut fields = Vec::with_capacity(m.len());
            for (name, value) in m {
                match properties.get(name) {
                    Some(ps) => fields.push((name.clone(), convert(ps, value, &field(at, name))?)),
                    None if *additional => {}
                    None => {
                        return Err(err(
                            &field(at, name),
                            "is not declared in the tool catalog (policy could not see it)",
                        ));
                    }
                }
            }
            RestrictedExpression::new_record(fields).map_err(|e| err(at, e.to_string()))
        }
        ArgSchema::String {
            one_of,
            max_length,
            format,
            root,
        } => {
            let Value::String(text) = v else {
                return Err(err(at, format!("must be a string, not {}", kind(v))));
            };
            if let Some(max) = max_length
                && text.chars().count() > *max
            {
                return Err(err(at, format!("is longer than {max} characters")));
            }
            if let Some(allowed) = one_of
                && !allowed.contains(text)
            {
                return Err(err(
                    at,
                    format!(
                        "must be one of {}",
                        allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            match format {
                None => Ok(RestrictedExpression::new_string(text.clone())),
                Some(StringFormat::Decimal) => parse_decimal(text)
                    .map(|d| RestrictedExpression::new_decimal(decimal_text(d)))
                    .ok_or_else(|| {
                        err(
                            at,
                            "must be a decimal number with at most four decimal places",
                        )
                    }),
                Some(StringFormat::IpAddr(family)) => match ip_text(text) {
                    Some(canonical) if canonical != *text => Err(err(
                        at,
                        format!("must be written in canonical form ({canonical:?})"),
                    )),
                    Some(canonical) if !family.admits(&canonical) => {
                        Err(err(at, format!("must be an {} address", family.name())))
                    }
                    Some(canonical) => Ok(RestrictedExpression::new_ip(canonical)),
                    None => Err(err(
                        at,
                        "must be an IP address or CIDR range (IPv4-mapped IPv6 forms are refused: write the IPv4 address)",
                    )),
                },
                Some(StringFormat::DateTime) => datetime_text(text)
                    .map(RestrictedExpression::new_datetime)
                    .ok_or_else(|| err(at, "must be an RFC 3339 date-time in UTC, written YYYY-MM-DDTHH:MM:SS[.fff]Z")),
                Some(StringFormat::Url) => derived::url(text)
                    .and_then(|f| f.to_cedar())
                    .map_err(|e| err(at, e)),
                Some(StringFormat::Email) => derived::email(text)
                    .and_then(|f| f.to_cedar())
                    .map_err(|e| err(at, e)),
                Some(StringFormat::Path) => derived::path(text, root.as_deref())
                    .and_then(|f| f.to_cedar())
                    .map_err(|e| err(at, e)),
                Some(StringFormat::Sql) => derived::sql(text)
                    .and_then(|f| f.to_cedar())
                    .map_err(|e| err(at, e)),
            }
        }
        ArgSchema::Command { max_items } => {
            let Value::Array(list) = v else {
                return Err(err(
                    at,
                    format!("must be an argv array of strings, not {}", kind(v)),
                ));
            };
            if let Some(max) = max_items
                && list.len() > *max
            {
                return Err(err(at, format!("has more than {max} items")));
            }
            let argv = list
                .iter()
                .enumerate()
                .map(|(n, a)| {
                    a.as_str().map(str::to_owned).ok_or_else(|| {
                        err(
                            &format!("{at}[{n}]"),
                            format!("must be a string, not {}", kind(a)),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            derived::command(&argv)
                .and_then(|f| f.to_cedar())
                .map_err(|e| err(at, e))
        }
        ArgSchema::Integer { minimum, maximum } => {
            let n = v
                .as_i64()
                .ok_or_else(|| err(at, format!("must be an integer, not {}", describe(v))))?;
            bounds(n, *minimum, *maximum, at, &n.to_string())?;
            Ok(RestrictedExpression::new_long(n))
        }
        ArgSchema::Number { minimum, maximum } => {
            let d = number_to_decimal(v).ok_or_else(|| {
                err(
                    at,
                    format!(
                        "must be a number with at most four decimal places, not {}",
                        describe(v)
                    ),
                )
            })?;
            bounds(d, *minimum, *maximum, at, &decimal_text(d))?;
            Ok(RestrictedExpression::new_decimal(decimal_text(d)))
        }
        ArgSchema::Boolean => v
            .as_bool()
            .map(RestrictedExpression::new_bool)
            .ok_or_else(|| err(at, format!("must be a boolean, not {}", kind(v)))),
        ArgSchema::Array { items, max_items } => {
            let Value::Array(list) = v else {
                return Err(err(at, format!("must be an array, not {}", kind(v))));
            };
            if let Some(max) = max_items
                && list.len() > *max
            {
                return Err(err(at, format!("has more than {max} items")));
            }
            let converted = list
                .iter()
                .enumerate()
                .map(|(n, i)| convert(items, i, &format!("{at}[{n}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RestrictedExpression::new_set(converted))
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => kind(other).to_owned(),
    }
}

fn bounds(
    n: i64,
    min: Option<i64>,
    max: Option<i64>,
    at: &str,
    shown: &str,
) -> Result<(), ArgError> {
    if min.is_some_and(|m| n < m) {
        return Err(err(at, format!("is {shown}, below the declared minimum")));
    }
    if max.is_some_and(|m| n > m) {
        return Err(err(at, format!("is {shown}, above the declared maximum")));
    }
    Ok(())
}

/// An address or CIDR range, in the form Cedar's `ip(...)` accepts.
fn ip_text(text: &str) -> Option<String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    // `::ffff:10.0.0.1` is the IPv4 address to most upstreams but not to an IPv4 range in
    // policy: refused, as are the deprecated IPv4-compatible forms.
    if let std::net::IpAddr::V6(v6) = ip
        && (v6.to_ipv4_mapped().is_some()
            || (v6.segments().get(..6) == Some(&[0; 6])
                && !v6.is_loopback()
                && !v6.is_unspecified()))
    {
        return None;
    }
    match prefix {
        None => Some(ip.to_string()),
        Some(p) => {
            let bits: u8 = p.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            (bits <= max && !p.starts_with('+') && (p == "0" || !p.starts_with('0')))
                .then(|| format!("{ip}/{bits}"))
        }
    }
}

/// An RFC 3339 instant as the UTC text Cedar's `datetime(...)` accepts.
/// The canonical text of a date-time, if `text` is already canonical: RFC 3339 in UTC,
/// `YYYY-MM-DDTHH:MM:SS[.f{1,3}]Z`. Anything else (an offset, a lowercase separator, a
/// space, more than millisecond precision that Cedar would truncate, a leap second) is
/// refused, so the upstream receives the very instant policy decided on.
fn datetime_text(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19)
        && match b.len() {
            20 => b.get(19) == Some(&b'Z'),
            22..=24 => {
                b.get(19) == Some(&b'.') && digits(20..b.len() - 1) && b.last() == Some(&b'Z')
            }
            _ => false,
        };
    if !shape {
        return None;
    }
    let ts: jiff::Timestamp = text.parse().ok()?;
    // A field jiff normalised (a leap second) no longer reads back as written.
    if !text.starts_with(&ts.strftime("%Y-%m-%dT%H:%M:%S").to_string()) {
        return None;
    }
    Some(ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> ArgSchema {
        ArgSchema::parse(&v).unwrap()
    }

    fn refund() -> ArgSchema {
        schema(json!({
            "type": "object",
            "properties": {
                "amount": { "type": "number", "minimum": 0 },
                "currency": { "type": "string", "enum": ["EUR", "USD"] },
                "order": { "type": "integer", "minimum": 1 },
                "note": { "type": "string", "maxLength": 10 },
                "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 2 },
                "from": { "type": "string", "format": "ipaddr" },
                "at": { "type": "string", "format": "date-time" },
            },
            "required": ["amount", "currency"],
        }))
    }

    #[test]
    fn date_times_must_be_canonical_utc() {
        for ok in [
            "2029-12-31T21:00:00Z",
            "2029-12-31T21:00:00.5Z",
            "2029-12-31T21:00:00.123Z",
        ] {
            assert!(datetime_text(ok).is_some(), "{ok}");
        }
        assert_eq!(
            datetime_text("2029-12-31T21:00:00Z").as_deref(),
            Some("2029-12-31T21:00:00.000Z")
        );
        for bad in [
            "2029-12-31T23:00:00+02:00",
            "2029-12-31T21:00:00+00:00",
            "2029-12-31t21:00:00Z",
            "2029-12-31 21:00:00Z",
            "2029-12-31T21:00:00z",
            "2029-12-31T21:00:00.1234Z",
            "2029-12-31T21:00:00.Z",
            "2029-12-31T21:00Z",
            "2029-12-31T23:59:60Z",
            "2029-02-30T21:00:00Z",
            "2029-12-31",
            "+2029-12-31T21:00:00Z",
        ] {
            assert_eq!(datetime_text(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_cedar_type_follows_the_schema() {
        assert_eq!(
            refund().cedar_type(),
            "{\"amount\": __cedar::decimal, \"at\"?: __cedar::datetime, \"currency\": String, \"from\"?: __cedar::ipaddr, \"note\"?: String, \"order\"?: Long, \"tags\"?: Set<String>}"
        );
    }

    #[test]
    fn arguments_that_do_not_fit_name_the_field() {
        let s = refund();
        let cases = [
            (json!({ "currency": "EUR" }), "amount", "is required"),
            (
                json!({ "amount": "ten", "currency": "EUR" }),
                "amount",
                "must be a number",
            ),
            (
                json!({ "amount": 1.23456, "currency": "EUR" }),
                "amount",
                "four decimal places",
            ),
            (
                json!({ "amount": -1, "currency": "EUR" }),
                "amount",
                "below the declared minimum",
            ),
            (
                json!({ "amount": 1, "currency": "GBP" }),
                "currency",
                "must be one of",
            ),
            (
                json!({ "amount": 1, "currency": "EUR", "order": 1.5 }),
                "order",
                "must be an integer",
            ),
            (
                json!({ "amount": 1, "currency": "EUR", "note": "far too long" }),
                "note",
                "longer than 10",
            ),
            (
                json!({ "amount": 1, "currency": "EUR", "tags": ["a", "b", "c"] }),
                "tags",
                "more than 2",
            ),
            (
                json!({ "amount": 1, "currency": "EUR", "tags": [1] }),
                "tags[0]",
                "must be a string",
            ),
            (
                json!({ "amount": 1, "currency": "EUR", "from": "10.0.0.256" }),
                "from",
                "IP address",
            ),
            (
                json!({ "amount": 1, "currency": "EUR", "at": "yesterday" }),
                "at",
                "RFC 3339",
            ),
            (
                json!({ "amount": 1, "currency": "EUR", "amount_override": 5000 }),
                "amount_override",
                "not declared",
            ),
            (json!([1]), "$", "must be an object"),
        ];
        for (args, field, problem) in cases {
            let e = s.to_cedar(&args).unwrap_err();
            assert_eq!(e.field, field, "{args}: {e}");
            assert!(e.problem.contains(problem), "{args}: {e}");
        }
    }

    #[test]
    fn fitting_arguments_convert() {
        let s = refund();
        for args in [
            json!({ "amount": 100, "currency": "EUR" }),
            json!({ "amount": 99.99, "currency": "USD", "order": 7, "tags": ["x"], "from": "10.0.0.0/8", "at": "2026-12-03T09:00:00Z" }),
        ] {
            s.to_cedar(&args).unwrap();
        }
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("100"), Some(1_000_000));
        assert_eq!(parse_decimal("0.5"), Some(5_000));
        assert_eq!(parse_decimal("-12.3456"), Some(-123_456));
        assert_eq!(parse_decimal("1.23456"), None);
        assert_eq!(parse_decimal("1."), None);
        assert_eq!(parse_decimal(".5"), None);
        assert_eq!(parse_decimal("1e5"), None);
        assert_eq!(decimal_text(-123_456), "-12.3456");
        assert_eq!(decimal_text(5_000), "0.5000");
        assert_eq!(
            datetime_text("2026-12-03T09:00:00.25Z").unwrap(),
            "2026-12-03T09:00:00.250Z"
        );
    }

    #[test]
    fn schemas_that_promise_more_than_is_checked_are_refused() {
        for bad in [
            json!({ "type": "string" }),
            json!({ "type": "object", "properties": { "a": { "type": "string", "pattern": "^x" } } }),
            json!({ "type": "object", "properties": { "a": { "type": "null" } } }),
            json!({ "type": "object", "properties": { "a": { "type": "string", "format": "uuid" } } }),
            json!({ "type": "object", "required": ["missing"] }),
            json!({ "type": "object", "properties": { "a\"b": { "type": "string" } } }),
            json!({ "type": "object", "properties": { "n": { "type": "integer", "minimum": 5, "maximum": 1 } } }),
        ] {
            assert!(ArgSchema::parse(&bad).is_err(), "{bad}");
        }
    }
}

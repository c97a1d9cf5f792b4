//! Derived facts: what policy cannot compute from a string itself, parsed once at the edge
//! by one parser. Each `format` turns an argument into a Cedar record of facts.
//!
//! A value that is not already in its canonical form is refused rather than rewritten, so
//! the upstream receives exactly the text whose facts were decided.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use cedar_policy::RestrictedExpression;
use sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor, Visit, Visitor,
    visit_expressions, visit_relations, visit_statements,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use unicode_normalization::UnicodeNormalization as _;

/// `format: "url"`: the facts of an absolute URL with a host.
pub const URL_TYPE: &str =
    "{\"scheme\": String, \"host\": String, \"port\": Long, \"path\": String, \"query\": String}";
/// `format: "email"`: an address's local part and domain.
pub const EMAIL_TYPE: &str = "{\"local\": String, \"domain\": String}";
/// `format: "sql"`: whether the text parsed, how many statements, their kinds and tables.
pub const SQL_TYPE: &str = "{\"parsed\": Bool, \"statements\": Long, \"kinds\": Set<String>, \"tables\": Set<String>, \"functions\": Set<String>, \"comments\": Bool}";
/// `format: "command"`: an argv array.
pub const COMMAND_TYPE: &str = "{\"program\": String, \"name\": String, \"args\": Set<String>, \"argc\": Long, \"shell\": Bool}";

/// `format: "path"`: the Cedar type, with `under_root` when the schema declares a root.
pub fn path_type(root: bool) -> String {
    let under = if root { ", \"under_root\": Bool" } else { "" };
    format!("{{\"path\": String, \"name\": String, \"depth\": Long{under}}}")
}

/// One derived fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A Cedar `String`.
    Str(String),
    /// A Cedar `Long`.
    Long(i64),
    /// A Cedar `Bool`.
    Bool(bool),
    /// A Cedar `Set<String>`.
    Set(Vec<String>),
}

/// The facts derived from one argument: a Cedar record for policy, and the same as JSON
/// for the people who read approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts(Vec<(&'static str, Fact)>);

impl Facts {
    /// The record policy sees.
    pub fn to_cedar(&self) -> Result<RestrictedExpression, String> {
        RestrictedExpression::new_record(self.0.iter().map(|(k, f)| {
            let v = match f {
                Fact::Str(v) => RestrictedExpression::new_string(v.clone()),
                Fact::Long(n) => RestrictedExpression::new_long(*n),
                Fact::Bool(b) => RestrictedExpression::new_bool(*b),
                Fact::Set(items) => RestrictedExpression::new_set(
                    items
                        .iter()
                        .map(|i| RestrictedExpression::new_string(i.clone())),
                ),
            };
            ((*k).to_owned(), v)
        }))
        .map_err(|e| e.to_string())
    }

    /// The same facts as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, f)| {
                    let v = match f {
                        Fact::Str(v) => serde_json::Value::String(v.clone()),
                        Fact::Long(n) => serde_json::Value::from(*n),
                        Fact::Bool(b) => serde_json::Value::Bool(*b),
                        Fact::Set(items) => serde_json::Value::from(items.clone()),
                    };
                    ((*k).to_owned(), v)
                })
                .collect(),
        )
    }
}

fn s(v: &str) -> Fact {
    Fact::Str(v.to_owned())
}

fn long(n: usize) -> Fact {
    Fact::Long(i64::try_from(n).unwrap_or(i64::MAX))
}

fn record(fields: impl IntoIterator<Item = (&'static str, Fact)>) -> Result<Facts, String> {
    Ok(Facts(fields.into_iter().collect()))
}

/// An absolute URL with a host, no credentials, in the form the URL parser writes it.
pub fn url(text: &str) -> Result<Facts, String> {
    let u = url::Url::parse(text).map_err(|e| format!("must be an absolute URL ({e})"))?;
    let host = u
        .host_str()
        .ok_or_else(|| "must be a URL with a host".to_owned())?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if u.as_str() != text {
        return Err(format!(
            "must be written in canonical form ({:?}), so that what is forwarded is what was decided",
            u.as_str()
        ));
    }
    let port = u
        .port_or_known_default()
        .ok_or_else(|| "must name a port (its scheme has no default)".to_owned())?;
    record([
        ("scheme", s(u.scheme())),
        ("host", s(host)),
        ("port", Fact::Long(i64::from(port))),
        ("path", s(u.path())),
        ("query", s(u.query().unwrap_or_default())),
    ])
}

/// Characters of a dot-atom, less `%` and `!`: the "percent hack" and bang paths are
/// routing syntax some relays still honour (`victim%evil.example@example.com`).
const ATOM_SPECIALS: &str = "#$&'*+/=?^_`{|}~-";

/// `local@domain`: a dot-atom local part (no quoted or commented forms) and a lowercase
/// ASCII domain of at least two labels.
pub fn email(text: &str) -> Result<Facts, String> {
    let (local, domain) = match text.split_once('@') {
        Some((l, d)) if !d.contains('@') => (l, d),
        _ => return Err("must be one address, local@domain".into()),
    };
    let atom_ok = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ATOM_SPECIALS.contains(c))
    };
    if local.len() > 64 || !local.split('.').all(atom_ok) {
        return Err(
            "must have a plain local part (letters, digits, dots between atoms, no quotes or comments)"
                .into(),
        );
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if domain.len() > 253 || domain.split('.').count() < 2 || !domain.split('.').all(label_ok) {
        return Err(
            "must have a domain of lowercase ASCII labels (IDNs in their xn-- form)".into(),
        );
    }
    record([("local", s(local)), ("domain", s(domain))])
}

/// An absolute path with no `.`, `..` or empty segments, no backslash or control
/// characters, and nothing that compatibility normalisation would change.
pub fn path(text: &str, root: Option<&str>) -> Result<Facts, String> {
    check_path(text)?;
    let name = text.rsplit('/').next().unwrap_or_default();
    let depth = text.split('/').filter(|seg| !seg.is_empty()).count();
    let mut fields = vec![("path", s(text)), ("name", s(name)), ("depth", long(depth))];
    if let Some(root) = root {
        let under = root == "/"
            || text == root
            || text
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'));
        fields.push(("under_root", Fact::Bool(under)));
    }
    record(fields)
}

/// Whether `text` is a canonical absolute path (see [`path`]); the reason if not.
pub fn check_path(text: &str) -> Result<(), String> {
    if !text.starts_with('/') {
        return Err("must be an absolute path".into());
    }
    if text.chars().any(|c| c.is_control() || c == '\\') {
        return Err("must not contain control characters or backslashes".into());
    }
    if text != "/" {
        for seg in text.split('/').skip(1) {
            match seg {
                "" => return Err("must not have empty segments (`//` or a trailing `/`)".into()),
                "." | ".." => return Err("must not have `.` or `..` segments".into()),
                _ => {}
            }
        }
    }
    if text.nfkc().ne(text.chars()) {
        return Err("must not contain characters that compatibility normalisation changes".into());
    }
    Ok(())
}

/// Programs that run code given in their arguments: a policy on argv means little there.
const SHELLS: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "fish",
    "csh",
    "tcsh",
    "ash",
    "busybox",
    "env",
    "xargs",
    "sudo",
    "doas",
    "su",
    "nohup",
    "timeout",
    "nice",
    "cmd",
    "cmd.exe",
    "powershell",
    "powershell.exe",
    "pwsh",
];

/// An argv array: the program, its base name, the arguments after it (as a set), their
/// count, and whether the program is a shell or a launcher of other programs.
pub fn command(argv: &[String]) -> Result<Facts, String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "must name a program (argv is empty)".to_owned())?;
    if program.is_empty() {
        return Err("must name a program (argv[0] is empty)".into());
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("must not contain NUL characters".into());
    }
    let name = program.rsplit(['/', '\\']).next().unwrap_or(program);
    let shell = SHELLS.contains(&name.to_ascii_lowercase().as_str());
    record([
        ("program", s(program)),
        ("name", s(name)),
        ("args", Fact::Set(args.to_vec())),
        ("argc", long(args.len())),
        ("shell", Fact::Bool(shell)),
    ])
}

/// Longest SQL text parsed: the parser builds a tree as deep as the text is long (a chain
/// of `+1`), and walking a very deep tree could exhaust a worker's stack.
pub const MAX_SQL_BYTES: usize = 16 * 1024;

/// What a SQL text does, from a real parser: whether it parsed, the number of statements,
/// the kind of every statement (nested ones too, e.g. a data-modifying CTE) and every table
/// it names. Text that does not parse is a fact (`parsed: false`), not an error.
pub fn sql(text: &str) -> Result<Facts, String> {
    if text.len() > MAX_SQL_BYTES {
        return Err(format!(
            "is longer than {MAX_SQL_BYTES} bytes: SQL arguments are parsed up to that size"
        ));
    }
    let facts = SqlFacts::of(text);
    let set = |items: &BTreeSet<String>| Fact::Set(items.iter().cloned().collect());
    record([
        ("parsed", Fact::Bool(facts.parsed)),
        ("statements", long(facts.statements)),
        ("kinds", set(&facts.kinds)),
        ("tables", set(&facts.tables)),
        ("functions", set(&facts.functions)),
        ("comments", Fact::Bool(facts.comments)),
    ])
}

/// The facts a `format: "sql"` argument exposes to policy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SqlFacts {
    /// Whether the text parsed.
    pub parsed: bool,
    /// Top-level statements.
    pub statements: usize,
    /// Kinds of every statement, nested ones included: `select`, `select_into`,
    /// `insert`, `update`, `delete`, `merge`, `create`, `alter`, `drop`, `truncate`,
    /// `grant`, `revoke`, `copy`, `call`, `execute`, `other`.
    pub kinds: BTreeSet<String>,
    /// Tables named (and common table expressions, which read like tables), as written
    /// without quotes; unquoted names lowercased.
    pub tables: BTreeSet<String>,
    /// Functions called, named as tables are.
    pub functions: BTreeSet<String>,
    /// Whether the text has a comment marker (`--`, `/*`, `#`) anywhere, even inside a
    /// string literal: databases disagree on what a comment is (MySQL runs `/*! … */`,
    /// PostgreSQL nests block comments, MySQL reads `#`), so a policy can refuse them all.
    pub comments: bool,
}

fn has_comment_marker(text: &str) -> bool {
    text.contains("--") || text.contains("/*") || text.contains('#')
}

/// A name as policy sees it: parts joined by `.`, unquoted parts lowercased.
fn name_of(name: &ObjectName) -> String {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) if i.quote_style.is_none() => i.value.to_lowercase(),
            ObjectNamePart::Identifier(i) => i.value.clone(),
            ObjectNamePart::Function(f) => f.name.value.to_lowercase(),
        })
        .collect();
    parts.join(".")
}

impl SqlFacts {
    /// Parses `text` with the generic dialect.
    pub fn of(text: &str) -> Self {
        let Ok(statements) = Parser::parse_sql(&GenericDialect {}, text) else {
            return Self {
                comments: has_comment_marker(text),
                ..Self::default()
            };
        };
        let mut facts = Self {
            parsed: true,
            statements: statements.len(),
            ..Self::default()
        };
        let _ = visit_statements(&statements, |st| {
            facts.kinds.insert(kind(st).to_owned());
            ControlFlow::<()>::Continue(())
        });
        let _ = visit_relations(&statements, |name| {
            facts.tables.insert(name_of(name));
            ControlFlow::<()>::Continue(())
        });
        // What the visitors above do not name: `TABLE x` bodies, `SELECT … INTO` anywhere
        // in a query, and table-valued functions in `FROM`.
        let _ = statements.visit(&mut Hidden(&mut facts));
        let _ = visit_expressions(&statements, |e| {
            if let Expr::Function(f) = e {
                facts.functions.insert(name_of(&f.name));
            }
            ControlFlow::<()>::Continue(())
        });
        facts.comments = has_comment_marker(text);
        facts
    }
}

/// Collects the facts the generic visitors miss.
struct Hidden<'a>(&'a mut SqlFacts);

impl Hidden<'_> {
    fn body(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(sel) if sel.into.is_some() => {
                self.0.kinds.insert("select_into".into());
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.body(left);
                self.body(right);
            }
            SetExpr::Query(q) => self.body(&q.body),
            SetExpr::Table(t) => {
                let name = [&t.schema_name, &t.table_name]
                    .into_iter()
                    .flatten()
                    .map(|i| match i.quote_style {
                        None => i.value.to_lowercase(),
                        Some(_) => i.value.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(".");
                self.0.tables.insert(name);
            }
            _ => {}
        }
    }
}

impl Visitor for Hidden<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.body(&query.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let function = match factor {
            TableFactor::Table { args: None, .. }
            | TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. } => None,
            TableFactor::Table { name, .. } | TableFactor::Function { name, .. } => {
                Some(name_of(name))
            }
            TableFactor::UNNEST { .. } => Some("unnest".to_owned()),
            TableFactor::JsonTable { .. } => Some("json_table".to_owned()),
            // Any other row source (table functions, XMLTABLE, PIVOT…) is named as a
            // function no allow-list holds, so a policy listing functions refuses it.
            _ => Some("table_function".to_owned()),
        };
        if let Some(f) = function {
            self.0.functions.insert(f);
        }
        ControlFlow::Continue(())
    }
}

fn kind(st: &Statement) -> &'static str {
    match st {
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Select(sel) if sel.into.is_some() => "select_into",
            _ => "select",
        },
        Statement::Insert(_) => "insert",
        Statement::Update(_) => "update",
        Statement::Delete(_) => "delete",
        Statement::Merge(_) => "merge",
        Statement::CreateTable(_)
        | Statement::CreateView { .. }
        | Statement::CreateIndex(_)
        | Statement::CreateFunction(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateRole(_) => "create",
        Statement::AlterTable(_) | Statement::AlterIndex { .. } | Statement::AlterRole { .. } => {
            "alter"
        }
        Statement::Drop { .. } => "drop",
        Statement::Truncate(_) => "truncate",
        Statement::Grant(_) | Statement::GrantRole(_) => "grant",
        Statement::Revoke(_) | Statement::RevokeRole(_) => "revoke",
        Statement::Copy { .. } => "copy",
        Statement::Call(_) => "call",
        Statement::Execute { .. } => "execute",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn sql_facts_name_every_statement_and_table() {
        let f = SqlFacts::of(
            "SELECT a FROM Orders o JOIN \"Users\" u ON o.u = u.id WHERE x IN (SELECT y FROM audit.log)",
        );
        assert!(f.parsed);
        assert_eq!(f.statements, 1);
        assert_eq!(f.kinds, set(&["select"]));
        assert_eq!(f.tables, set(&["orders", "Users", "audit.log"]));

        let f = SqlFacts::of("SELECT 1; DROP TABLE users");
        assert_eq!(f.statements, 2);
        assert_eq!(f.kinds, set(&["select", "drop"]));

        let f = SqlFacts::of("WITH gone AS (DELETE FROM users RETURNING *) SELECT * FROM gone");
        assert_eq!(f.kinds, set(&["delete", "select"]), "a data-modifying CTE");
        assert!(f.tables.contains("users"));

        let f = SqlFacts::of("SELECT pg_read_file('/etc/passwd'), Lower(x) FROM t");
        assert_eq!(f.functions, set(&["pg_read_file", "lower"]));
        assert!(!f.comments);
        for hidden in [
            "SELECT 1 /*! ; DROP TABLE b */",
            "SELECT 1 -- ; DROP TABLE b",
            "SELECT 1 # ; DROP TABLE b",
            "SELECT '--'",
        ] {
            assert!(SqlFacts::of(hidden).comments, "{hidden}");
        }
        let f = SqlFacts::of("SELECT * INTO backup FROM users");
        assert!(f.kinds.contains("select_into"), "{f:?}");
        for into in [
            "SELECT * INTO backup FROM orders UNION SELECT * FROM orders",
            "(SELECT * INTO backup FROM orders)",
        ] {
            assert!(SqlFacts::of(into).kinds.contains("select_into"), "{into}");
        }
        for hidden in [
            "SELECT * FROM orders UNION TABLE secrets",
            "SELECT * FROM orders WHERE a IN (TABLE secrets)",
        ] {
            let f = SqlFacts::of(hidden);
            assert!(f.tables.contains("secrets"), "{hidden}: {f:?}");
        }
        for hidden in [
            "SELECT * FROM orders, LATERAL pg_read_file('/etc/passwd')",
            "SELECT * FROM pg_read_file('/etc/passwd')",
            "SELECT * FROM UNNEST(ARRAY[1, 2])",
        ] {
            let f = SqlFacts::of(hidden);
            assert!(f.parsed, "{hidden}");
            assert!(
                f.functions.iter().any(|x| x != "count"),
                "{hidden}: a row source that is a function is named: {f:?}"
            );
        }

        let f = SqlFacts::of("SELEC * FROM users");
        assert_eq!(
            f,
            SqlFacts::default(),
            "unparseable is a fact, with no kinds"
        );
        let f = SqlFacts::of("");
        assert_eq!(f.statements, 0);
    }

    #[test]
    fn urls_must_be_canonical_with_a_host_and_no_credentials() {
        assert!(url("https://api.example.com/v1/x?q=1").is_ok());
        for bad in [
            "HTTPS://api.example.com/",
            "https://api.example.com",
            "https://user:pw@api.example.com/",
            "https://api.example.com:443/",
            "https://api.example.com/a/../b",
            "https://exämple.com/",
            "mailto:a@b.example",
            "/relative",
            "https://api.example.com/a b",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_and_paths_refuse_ambiguous_forms() {
        assert!(email("first.last+tag@example.com").is_ok());
        for bad in [
            "a@b@example.com",
            "\"a b\"@example.com",
            "a@Example.com",
            "a..b@example.com",
            "a@localhost",
            "a(comment)@example.com",
            "@example.com",
            "a@-x.example.com",
            "victim%evil.example@example.com",
            "evil.example!victim@example.com",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
        assert!(path("/srv/work/a.txt", Some("/srv/work")).is_ok());
        for bad in [
            "srv/a",
            "/srv//a",
            "/srv/a/",
            "/srv/../etc",
            "/srv/./a",
            "/srv\\a",
            "/srv/\u{FF0E}\u{FF0E}/etc",
            "/srv/\u{2024}",
            "/srv/a\u{0}",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commands_know_shells() {
        let argv = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(command(&argv(&["/usr/bin/git", "status"])).is_ok());
        assert!(command(&argv(&[])).is_err());
        assert!(command(&argv(&["", "x"])).is_err());
        assert!(command(&argv(&["git", "a\0b"])).is_err());
    }
}

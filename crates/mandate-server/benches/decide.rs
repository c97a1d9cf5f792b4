//! P1: the in-process decide path (cached token check + grant ceiling + context build +
//! sliced Cedar evaluation) beside bare `cedar_policy::Authorizer::is_authorized` over the
//! same ~100 policies, with 10k entities in the bare store.
//!
//! Run: `cargo bench -p mandate-server --bench decide`

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "benchmark code"
)]

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityUid, Request, RestrictedExpression,
};
use mandate_core::{ActionClass, CanonicalArgs, ManualClock, Sensitivity, ToolName};
use mandate_server::{Call, Server, ServerConfig};
use serde_json::json;

const TOOLS: usize = 50;
const ENTITIES: usize = 10_000;
const ITERS: usize = 200_000;

/// The ten-field argument record every tool declares in the arguments run.
const ARGS_SCHEMA: &str = r#"{ "type": "object", "properties": {
    "amount": { "type": "number", "minimum": 0 },
    "currency": { "type": "string", "enum": ["EUR", "USD", "GBP"] },
    "count": { "type": "integer", "minimum": 0, "maximum": 10000 },
    "urgent": { "type": "boolean" },
    "note": { "type": "string", "maxLength": 200 },
    "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 8 },
    "host": { "type": "string", "format": "ipaddr" },
    "until": { "type": "string", "format": "date-time" },
    "region": { "type": "string" },
    "priority": { "type": "integer" } },
  "required": ["amount", "currency", "count", "urgent", "note", "tags", "host", "until", "region", "priority"] }"#;

/// One call's arguments in the arguments run.
const ARGS: &str = r#"{"amount":42.5,"count":3,"currency":"EUR","host":"10.1.2.3","note":"duplicate charge","priority":2,"region":"eu-west","tags":["billing","refund"],"until":"2030-01-01T00:00:00Z","urgent":false}"#;

/// What a tool-pinned permit also requires of the arguments in the arguments run.
const ARGS_CONDITION: &str = r#" && context.args.amount.lessThan(decimal("1000.0")) && context.args.count < 100 && context.args.currency == "EUR" && context.args.host.isInRange(ip("10.0.0.0/8")) && !context.args.tags.contains("blocked")"#;

/// A bundle of `n` policies: 1 start, ~88% tool-pinned permits, ~11% broad forbids.
/// With `args`, every permit also reads five of the tool's ten typed arguments.
fn policies(n: usize, args: bool) -> String {
    let actions = ["read", "write", "delete", "execute"];
    let forbids = (n * 11 / 100).max(1);
    let permits = n - 1 - forbids;
    let mut out = String::from(
        "@id(\"start\") permit(principal, action == Mandate::Action::\"start_task\", resource) when { principal.status == \"active\" };\n",
    );
    // Tool-specific permits, writes needing approval.
    for i in 0..permits {
        let a = actions[i % 4];
        let approval = if a == "write" {
            "@approval_required(\"writes need a human\") "
        } else {
            ""
        };
        out.push_str(&format!(
            "@id(\"p{i}\") {approval}permit(principal, action == Mandate::Action::\"{a}\", resource == Mandate::Tool::\"tool{}\") when {{ principal.tier >= 1 && context.sensitivity != \"restricted\"{} }};\n",
            i % TOOLS,
            if args { ARGS_CONDITION } else { "" }
        ));
    }
    // Broad forbids, evaluated for every request of their action.
    for i in 0..forbids {
        let a = actions[i % 4];
        out.push_str(&format!(
            "@id(\"f{i}\") forbid(principal, action == Mandate::Action::\"{a}\", resource is Mandate::Tool) when {{ context has destination && context.destination == \"blocked{i}.example\" }};\n"
        ));
    }
    out
}

fn percentiles(mut ns: Vec<u64>) -> (f64, f64, f64) {
    ns.sort_unstable();
    let p = |q: f64| ns[((ns.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
    (p(0.5), p(0.99), mean)
}

fn time(iters: usize, mut f: impl FnMut(usize)) -> Vec<u64> {
    for i in 0..iters / 10 {
        f(i);
    }
    let mut out = Vec::with_capacity(iters);
    for i in 0..iters {
        let t = Instant::now();
        f(i);
        out.push(t.elapsed().as_nanos() as u64);
    }
    out
}

fn main() {
    println!(
        "P1 decide path vs bare Cedar ({} entities in the bare store; all {} (tool, action) pairs compared identical first)",
        ENTITIES + 2,
        TOOLS * 4
    );
    println!(
        "{:<9} {:<60} {:>9} {:>9} {:>9}",
        "policies", "", "p50 µs", "p99 µs", "mean µs"
    );
    for n in [10, 100, 1000] {
        run(n, false);
    }
    println!("with arguments: every tool declares a 10-field record; every permit reads 5 fields");
    run(100, true);
}

fn run(n_policies: usize, with_args: bool) {
    // Bare Cedar over 1,000 policies takes ~1 ms a call: fewer iterations keep the run short.
    let iters = (20_000_000 / n_policies).clamp(20_000, ITERS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("bench.cedar"), policies(n_policies, with_args)).unwrap();
    if with_args {
        let tools: Vec<String> = (0..TOOLS)
            .map(|i| format!(r#"{{ "name": "tool{i}", "arguments": {ARGS_SCHEMA} }}"#))
            .collect();
        std::fs::write(
            pdir.join("tools.json"),
            format!(r#"{{ "tools": [{}] }}"#, tools.join(",")),
        )
        .unwrap();
    }
    let args_value: serde_json::Value = serde_json::from_str(ARGS).unwrap();
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now().as_millisecond()));
    let mut config = ServerConfig::new(dir.path().join("data"), pdir);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.admin_token = Some("bench-admin-token-0123456789abcdef".into());
    config.clock = clock;
    // One agent and one task drive the whole run: no rate limit in the way.
    config.limits.agent_decisions_per_sec = u32::MAX / 2;
    config.limits.task_decisions_per_sec = u32::MAX / 2;
    let server = rt.block_on(Server::start(config)).unwrap();
    let http = reqwest::Client::new();
    let url = server.url();
    let token: String = rt.block_on(async {
        let r: serde_json::Value = http.post(format!("{url}/v1/agents")).bearer_auth("bench-admin-token-0123456789abcdef")
            .json(&json!({"name": "bench", "owner": "o", "tier": 2})).send().await.unwrap().json().await.unwrap();
        let r: serde_json::Value = http.post(format!("{url}/v1/attest"))
            .json(&json!({"agent": "bench", "join_token": r["join_token"]})).send().await.unwrap().json().await.unwrap();
        let tools: Vec<String> = (0..TOOLS).map(|i| format!("tool{i}")).collect();
        let r: serde_json::Value = http.post(format!("{url}/v1/tasks")).bearer_auth(r["identity_token"].as_str().unwrap())
            .json(&json!({"purpose": "bench", "scope": {"tools": tools, "actions": ["read", "write", "delete", "execute"]}, "ttl_secs": 3600}))
            .send().await.unwrap().json().await.unwrap();
        r["task_token"].as_str().expect("task token").to_owned()
    });
    let engine = Arc::clone(&server.engine);
    let bundle = engine.bundle();

    // Bare Cedar: the whole set, 10k agents plus the task in the entity store.
    let mut entities: Vec<Entity> = (0..ENTITIES)
        .map(|i| {
            let attrs = HashMap::from([
                (
                    "name".to_owned(),
                    RestrictedExpression::new_string(format!("agent{i}")),
                ),
                (
                    "spiffe_id".to_owned(),
                    RestrictedExpression::new_string(format!(
                        "spiffe://mandate.local/agent/agent{i}"
                    )),
                ),
                (
                    "owner".to_owned(),
                    RestrictedExpression::new_string("o".into()),
                ),
                ("tier".to_owned(), RestrictedExpression::new_long(2)),
                (
                    "status".to_owned(),
                    RestrictedExpression::new_string("active".into()),
                ),
                (
                    "trust_domain".to_owned(),
                    RestrictedExpression::new_string("mandate.local".into()),
                ),
            ]);
            Entity::new(
                EntityUid::from_str(&format!("Mandate::Agent::\"agent{i}\"")).unwrap(),
                attrs,
                HashSet::new(),
            )
            .unwrap()
        })
        .collect();
    let bench_agent = HashMap::from([
        (
            "name".to_owned(),
            RestrictedExpression::new_string("bench".into()),
        ),
        (
            "spiffe_id".to_owned(),
            RestrictedExpression::new_string("spiffe://mandate.local/agent/bench".into()),
        ),
        (
            "owner".to_owned(),
            RestrictedExpression::new_string("o".into()),
        ),
        ("tier".to_owned(), RestrictedExpression::new_long(2)),
        (
            "status".to_owned(),
            RestrictedExpression::new_string("active".into()),
        ),
        (
            "trust_domain".to_owned(),
            RestrictedExpression::new_string("mandate.local".into()),
        ),
    ]);
    entities.push(
        Entity::new(
            EntityUid::from_str("Mandate::Agent::\"bench\"").unwrap(),
            bench_agent,
            HashSet::new(),
        )
        .unwrap(),
    );
    let task_attrs = HashMap::from([
        (
            "id".to_owned(),
            RestrictedExpression::new_string("t".into()),
        ),
        (
            "purpose".to_owned(),
            RestrictedExpression::new_string("bench".into()),
        ),
        (
            "agent".to_owned(),
            RestrictedExpression::new_entity_uid(
                EntityUid::from_str("Mandate::Agent::\"bench\"").unwrap(),
            ),
        ),
        (
            "environment".to_owned(),
            RestrictedExpression::new_string("development".into()),
        ),
    ]);
    entities.push(
        Entity::new(
            EntityUid::from_str("Mandate::Task::\"t\"").unwrap(),
            task_attrs,
            HashSet::new(),
        )
        .unwrap(),
    );
    let entities = Entities::from_entities(entities, Some(bundle.schema())).unwrap();
    let authorizer = Authorizer::new();
    let bare_request = |tool: usize, action: ActionClass| {
        let ctx = Context::from_pairs([
            (
                "phase".to_owned(),
                RestrictedExpression::new_string("call".into()),
            ),
            (
                "task".to_owned(),
                RestrictedExpression::new_entity_uid(
                    EntityUid::from_str("Mandate::Task::\"t\"").unwrap(),
                ),
            ),
            (
                "resource".to_owned(),
                RestrictedExpression::new_string("r".into()),
            ),
            (
                "sensitivity".to_owned(),
                RestrictedExpression::new_string("internal".into()),
            ),
            (
                "args_digest".to_owned(),
                RestrictedExpression::new_string("d".into()),
            ),
            (
                "args".to_owned(),
                if with_args {
                    bare_args(&args_value)
                } else {
                    RestrictedExpression::new_record([]).unwrap()
                },
            ),
            ("now".to_owned(), RestrictedExpression::new_long(0)),
            (
                "history".to_owned(),
                mandate_policy::history_record(
                    &mandate_policy::History::default(),
                    &format!("tool{tool}"),
                ),
            ),
        ])
        .unwrap();
        Request::new(
            EntityUid::from_str("Mandate::Agent::\"bench\"").unwrap(),
            EntityUid::from_str(&format!("Mandate::Action::\"{}\"", action.as_str())).unwrap(),
            EntityUid::from_str(&format!("Mandate::Tool::\"tool{tool}\"")).unwrap(),
            ctx,
            // The built-in schema types `context.args` as `{}`; with arguments, the
            // request is not checked against a schema (as Mandate's own is not: its
            // values come typed from the catalog).
            (!with_args).then(|| bundle.schema()),
        )
        .unwrap()
    };
    let call = |tool: usize, action: ActionClass| Call {
        tool: ToolName::parse(&format!("tool{tool}")).unwrap(),
        action,
        resource: "r".into(),
        args: CanonicalArgs::parse(if with_args { ARGS } else { r#"{"id":42}"# }).unwrap(),
        destination: None,
        data_domain: None,
        sensitivity: Sensitivity::Internal,
    };

    // Identical decisions on a sample (Mandate's approval_required is Cedar's Allow).
    let mut compared = 0;
    for tool in 0..TOOLS {
        for action in ActionClass::ALL {
            let ours = engine
                .evaluate(&token, &call(tool, action))
                .unwrap()
                .decision
                .outcome;
            let bare = authorizer
                .is_authorized(&bare_request(tool, action), bundle.policy_set(), &entities)
                .decision();
            let ours_allow = ours != mandate_policy::Outcome::Deny;
            assert_eq!(
                ours_allow,
                bare == cedar_policy::Decision::Allow,
                "tool{tool} {action}"
            );
            compared += 1;
        }
    }

    // Timed calls hit pairs some permit names (allowed or approval-required), so the
    // grant ceiling's cheap deny never flatters the figures.
    let permits = n_policies - 1 - (n_policies * 11 / 100).max(1);
    let pair = |i: usize| {
        let j = i % permits;
        (j % TOOLS, ActionClass::ALL[j % 4])
    };
    let calls: Vec<Call> = (0..64)
        .map(|i| {
            let (t, a) = pair(i);
            call(t, a)
        })
        .collect();
    let requests: Vec<Request> = (0..64)
        .map(|i| {
            let (t, a) = pair(i);
            bare_request(t, a)
        })
        .collect();

    let ours = time(iters, |i| {
        black_box(engine.evaluate(black_box(&token), &calls[i % 64]).unwrap());
    });
    let bare = time(iters, |i| {
        black_box(authorizer.is_authorized(&requests[i % 64], bundle.policy_set(), &entities));
    });
    let bare_with_request = time(iters, |i| {
        let (t, a) = pair(i % 64);
        let r = bare_request(t, a);
        black_box(authorizer.is_authorized(&r, bundle.policy_set(), &entities));
    });
    let uncached: Vec<u64> = {
        let mut out = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t = Instant::now();
            black_box(
                mandate_token::verify::<mandate_token::TaskClaims>(
                    &token,
                    &engine.keys(),
                    &mandate_token::Expectations {
                        issuer: &server.issuer,
                        audience: "mandate:gateway",
                        leeway_secs: 30,
                        now_secs: jiff::Timestamp::now().as_second(),
                    },
                )
                .unwrap(),
            );
            out.push(t.elapsed().as_nanos() as u64);
        }
        out
    };

    let _ = compared;
    let n = if with_args {
        format!("{}+args", bundle.len())
    } else {
        bundle.len().to_string()
    };
    let row = |label: &str, (p50, p99, mean): (f64, f64, f64)| {
        println!("{n:<9} {label:<60} {p50:>9.2} {p99:>9.2} {mean:>9.2}");
    };
    let (o50, ..) = percentiles(ours.clone());
    let (b50, ..) = percentiles(bare.clone());
    let (r50, ..) = percentiles(bare_with_request.clone());
    row(
        "mandate Engine::evaluate (cached token, sliced set)",
        percentiles(ours),
    );
    row(
        "bare Cedar is_authorized, full set, prebuilt request",
        percentiles(bare),
    );
    row(
        "bare Cedar is_authorized, full set, request built per call",
        percentiles(bare_with_request),
    );
    row(
        "token signature verification (cache miss, once per token)",
        percentiles(uncached),
    );
    println!(
        "{n:<9} ratio mandate/bare at p50: {:.2} (prebuilt request), {:.2} (request built per call)",
        o50 / b50,
        o50 / r50
    );
    rt.block_on(server.shutdown()).unwrap();
}

/// The call's arguments as a Cedar record, built by hand for bare Cedar (the same values
/// Mandate derives from the catalog).
fn bare_args(v: &serde_json::Value) -> RestrictedExpression {
    let str_of = |k: &str| v[k].as_str().unwrap().to_owned();
    RestrictedExpression::new_record([
        (
            "amount".to_owned(),
            RestrictedExpression::new_decimal(format!("{:.4}", v["amount"].as_f64().unwrap())),
        ),
        (
            "currency".to_owned(),
            RestrictedExpression::new_string(str_of("currency")),
        ),
        (
            "count".to_owned(),
            RestrictedExpression::new_long(v["count"].as_i64().unwrap()),
        ),
        (
            "urgent".to_owned(),
            RestrictedExpression::new_bool(v["urgent"].as_bool().unwrap()),
        ),
        (
            "note".to_owned(),
            RestrictedExpression::new_string(str_of("note")),
        ),
        (
            "tags".to_owned(),
            RestrictedExpression::new_set(
                v["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| RestrictedExpression::new_string(t.as_str().unwrap().to_owned())),
            ),
        ),
        (
            "host".to_owned(),
            RestrictedExpression::new_ip(str_of("host")),
        ),
        (
            "until".to_owned(),
            RestrictedExpression::new_datetime(str_of("until")),
        ),
        (
            "region".to_owned(),
            RestrictedExpression::new_string(str_of("region")),
        ),
        (
            "priority".to_owned(),
            RestrictedExpression::new_long(v["priority"].as_i64().unwrap()),
        ),
    ])
    .unwrap()
}

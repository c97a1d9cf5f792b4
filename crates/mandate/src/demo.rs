//! `mandate demo`: the whole idea, end to end, over real HTTP against an in-process server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_store::{SqliteStore, Store};
use serde_json::{Value, json};

use crate::client::{Client, Reply};
use crate::trace::list;
use crate::{style, trace};

/// The demo's policies: the same files as `examples/policies/demo/`.
const POLICIES: [(&str, &str); 4] = [
    (
        "start.cedar",
        include_str!("../../../examples/policies/demo/start.cedar"),
    ),
    (
        "support.cedar",
        include_str!("../../../examples/policies/demo/support.cedar"),
    ),
    (
        "tools.json",
        include_str!("../../../examples/policies/demo/tools.json"),
    ),
    (
        "delegation.cedar",
        include_str!("../../../examples/policies/demo/delegation.cedar"),
    ),
];

struct Narrator {
    step: usize,
    failures: Vec<String>,
}

impl Narrator {
    fn say(&mut self, what: &str) {
        self.step += 1;
        println!(
            "\n{} {}",
            style::bold(&format!("{:>2}.", self.step)),
            style::bold(what)
        );
    }

    fn check(&mut self, ok: bool, detail: &str) {
        if ok {
            println!("    {} {detail}", style::green("✓"));
        } else {
            println!("    {} {detail}", style::red("✗ unexpected:"));
            self.failures.push(format!("step {}: {detail}", self.step));
        }
    }
}

fn decision_line(r: &Reply) -> String {
    if r.status.is_success() {
        format!(
            "{}  by {}  — {}",
            style::outcome(r.body["outcome"].as_str().unwrap_or("?")),
            list(&r.body["policies"]),
            list(&r.body["reasons"])
        )
    } else {
        format!(
            "{} {}: {}",
            r.status.as_u16(),
            style::red(r.code()),
            r.body["error"]["message"].as_str().unwrap_or("")
        )
    }
}

/// Runs the demo. Exit 0 only if every step behaved as stated.
pub async fn run(data_dir: Option<PathBuf>) -> Result<ExitCode> {
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let data_dir = data_dir.unwrap_or_else(|| tmp.path().join("data"));
    let policy_dir = tmp.path().join("policies");
    std::fs::create_dir_all(&policy_dir)?;
    for (name, text) in POLICIES {
        std::fs::write(policy_dir.join(name), text)?;
    }

    println!(
        "{}",
        style::bold("Mandate demo — every agent action authorised at the moment it happens")
    );
    let mut n = Narrator {
        step: 0,
        failures: Vec::new(),
    };

    n.say("Start a Mandate server in-process (embedded store, demo policies, a gateway)");
    let ticket_api = TicketApi::start().await?;
    let mut config = mandate_server::ServerConfig::new(data_dir.clone(), policy_dir);
    config.listen = ([127, 0, 0, 1], 0).into();
    config.environment = "demo".into();
    config.gateway = Some(std::sync::Arc::new(
        mandate_gateway::GatewayConfig::from_toml(&ticket_api.gateway_toml())
            .map_err(anyhow::Error::msg)?,
    ));
    let server = mandate_server::Server::start(config)
        .await
        .map_err(anyhow::Error::msg)?;
    let admin = server
        .generated_admin_token
        .clone()
        .context("a fresh data directory should yield a generated admin token")?;
    let c = Client::new(&server.url())?;
    let bundle = server.engine.bundle();
    n.check(
        bundle.len() == 7,
        &format!(
            "listening on {} with {} policies, bundle {}",
            server.url(),
            bundle.len(),
            bundle.version().get(..19).unwrap_or(bundle.version())
        ),
    );

    n.say("Register agent `ticket-summariser`, owned by alice@example.com, risk tier 1");
    let reg = c
        .post(
            "/v1/agents",
            Some(&admin),
            &json!({ "name": "ticket-summariser", "owner": "alice@example.com", "tier": 1 }),
        )
        .await?;
    n.check(
        reg.status == 201,
        &format!(
            "registered as {} with a one-time join token",
            reg.body["spiffe_id"].as_str().unwrap_or("?")
        ),
    );
    let join = reg.body["join_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    n.say("The agent attests with its join token and receives a short-lived JWT-SVID");
    let att = c
        .post(
            "/v1/attest",
            None,
            &json!({ "agent": "ticket-summariser", "join_token": join }),
        )
        .await?;
    let identity = att.body["identity_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    n.check(
        att.status == 200 && !identity.is_empty(),
        &format!(
            "ES256 identity token (JWT-SVID) for {}, verifiable at /.well-known/jwks.json",
            att.body["spiffe_id"].as_str().unwrap_or("?")
        ),
    );
    let replay = c
        .post(
            "/v1/attest",
            None,
            &json!({ "agent": "ticket-summariser", "join_token": join }),
        )
        .await?;
    n.check(
        replay.status == 401 && replay.code() == "join_token_invalid",
        "the join token is single-use: a second attestation is refused",
    );

    n.say("Start a task \"summarise open tickets\", asking to read, write and delete tickets");
    let start = c
        .post("/v1/tasks", Some(&identity), &json!({
            "purpose": "summarise open tickets",
            "scope": { "tools": ["tickets.search", "tickets.update", "tickets.delete"], "actions": ["read", "write", "delete"], "data_domains": ["support"], "destinations": [ticket_api.addr.to_string()] },
            "ttl_secs": 900,
        }))
        .await?;
    let task_token = start.body["task_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let task_id = start.body["task_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let granted = trace::grant(&start.body["grant"]);
    n.check(
        start.status == 201 && granted == "tickets.search:read tickets.update:write",
        &format!(
            "policy granted only {granted}, for {}",
            start.body["decision"]["reasons"][0].as_str().unwrap_or("?")
        ),
    );
    let refused_delete = start.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|i| {
            i["tool"] == "tickets.delete"
                && i["action"] == "delete"
                && i["outcome"] == "deny"
                && list(&i["policies"]) == "no-deletes"
        });
    n.check(
        refused_delete,
        "delete on tickets.delete was refused at the start by policy `no-deletes`",
    );

    let call = |tool: &str, action: &str, args: Value| json!({ "tool": tool, "action": action, "resource": "queue/open", "arguments": args, "data_domain": "support" });

    n.say("Read: search open tickets");
    let r = decide(
        &c,
        &task_token,
        call("tickets.search", "read", json!({ "status": "open" })),
    )
    .await?;
    n.check(
        r.status == 200 && r.body["outcome"] == "allow",
        &decision_line(&r),
    );

    n.say("Through the gateway: read ticket 42 from the ticket API (the agent holds no API key)");
    let put = c
        .put(
            "/v1/secrets/ticket-api-key",
            Some(&admin),
            &json!({ "value": TICKET_API_KEY, "description": "ticket API key" }),
        )
        .await?;
    n.check(
        put.status == 200 && !put.body.to_string().contains(TICKET_API_KEY),
        "the ticket API's key is stored sealed (AES-256-GCM); the API never returns it",
    );
    let r = c
        .get_text("/gw/tickets/tickets/42", Some(&task_token))
        .await?;
    let seen = ticket_api.seen();
    n.check(
        r.0 == 200 && seen.len() == 1,
        &format!("decided as tickets.search:read, forwarded: {}", r.1),
    );
    n.check(
        seen.first()
            .is_some_and(|a| a == &format!("Bearer {TICKET_API_KEY}")),
        "the ticket API received Mandate's injected key and not the agent's task token",
    );
    n.check(
        !r.1.contains(TICKET_API_KEY) && r.1.contains("[REDACTED]"),
        "the API echoed its key back; the gateway redacted it before the agent saw it",
    );
    let r = c
        .get_text("/gw/tickets/tickets/..%2f..%2fadmin", Some(&task_token))
        .await?;
    n.check(
        r.0 == 400 && ticket_api.seen().len() == 1,
        "a traversal trick (`..%2f..%2fadmin`) is refused with 400 and never reaches the API",
    );

    n.say("Write: update a ticket — the call is held for a human, and waits");
    let approver_token = {
        let r = c
            .post(
                "/v1/approvers",
                Some(&admin),
                &json!({ "name": "bob@example.com", "roles": ["approver"], "groups": ["default"] }),
            )
            .await?;
        r.body["token"].as_str().unwrap_or_default().to_owned()
    };
    let write = call(
        "tickets.update",
        "write",
        json!({ "id": 42, "status": "closed" }),
    );
    let waiting = {
        let (c, token) = (c.clone(), task_token.clone());
        let mut body = write.clone();
        body["wait_secs"] = json!(20);
        tokio::spawn(async move { decide(&c, &token, body).await })
    };
    let mut pending = Value::Null;
    for _ in 0..100 {
        let q = c
            .get("/v1/approvals?state=pending", Some(&approver_token))
            .await?;
        if let Some(a) = q.body.as_array().and_then(|a| a.first()) {
            pending = a.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let approval_id = pending["id"].as_str().unwrap_or_default().to_owned();
    n.check(
        !approval_id.is_empty()
            && pending["action"]["arguments"] == json!({ "id": 42, "status": "closed" }),
        &format!(
            "approval {approval_id} opened for exactly {} (owner {}); the agent's call is waiting",
            canonical(&pending["action"]["arguments"]),
            pending["owner"].as_str().unwrap_or("?")
        ),
    );

    n.say(&format!(
        "bob@example.com runs `mandate approvals approve {approval_id}`"
    ));
    let approved = run_cli(
        &[
            "approvals",
            "approve",
            &approval_id,
            "--server",
            &server.url(),
        ],
        &approver_token,
    )
    .await;
    n.check(
        approved.as_ref().is_ok_and(|o| o.contains("approved")),
        &match &approved {
            Ok(o) => o.trim().to_owned(),
            Err(e) => format!("{e:#}"),
        },
    );
    let r = waiting.await.context("the waiting call")??;
    n.check(
        r.status == 200 && r.body["outcome"] == "allow",
        &format!("the waiting call proceeds: {}", decision_line(&r)),
    );
    let mut again = write.clone();
    again["approval_id"] = json!(approval_id);
    let r = decide(&c, &task_token, again).await?;
    n.check(
        r.status == 409 && r.code() == "approval_used",
        &format!("the same approval a second time: {}", decision_line(&r)),
    );

    n.say("Delete: remove a ticket — denied");
    let r = decide(
        &c,
        &task_token,
        call("tickets.delete", "delete", json!({ "id": 42 })),
    )
    .await?;
    n.check(
        r.status == 200 && r.body["outcome"] == "deny",
        &decision_line(&r),
    );

    n.say("Delegate: the summariser hands a read-only sub-task to agent `ticket-reader` (RFC 8693 token exchange)");
    let reg = c
        .post(
            "/v1/agents",
            Some(&admin),
            &json!({ "name": "ticket-reader", "owner": "alice@example.com", "tier": 1 }),
        )
        .await?;
    let att = c
        .post(
            "/v1/attest",
            None,
            &json!({ "agent": "ticket-reader", "join_token": reg.body["join_token"] }),
        )
        .await?;
    let reader_identity = att.body["identity_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let details = json!([{
        "type": "mandate_task",
        "purpose": "read the open tickets for the summary",
        "tools": ["tickets.search"],
        "actions": ["read"],
        "data_domains": ["support"],
        "destinations": [ticket_api.addr.to_string()],
        "ttl_secs": 300,
    }])
    .to_string();
    let exchange = |details: String| {
        let c = c.clone();
        let (parent, actor) = (task_token.clone(), reader_identity.clone());
        async move {
            c.post_form(
                "/oauth2/token",
                &[
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange",
                    ),
                    ("subject_token", &parent),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:access_token",
                    ),
                    ("actor_token", &actor),
                    ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                    ("authorization_details", &details),
                ],
            )
            .await
        }
    };
    let d = exchange(details).await?;
    let child_token = d.body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    n.check(
        d.status == 200 && trace::grant(&d.body["mandate"]["grant"]) == "tickets.search:read",
        &format!(
            "child task {} granted {} at depth {}, for {}s at most",
            d.body["mandate"]["task_id"].as_str().unwrap_or("?"),
            trace::grant(&d.body["mandate"]["grant"]),
            d.body["mandate"]["delegation"]["depth"],
            d.body["expires_in"]
        ),
    );
    let wider = json!([{
        "type": "mandate_task", "purpose": "tidy up tickets",
        "tools": ["tickets.delete"], "actions": ["delete"],
    }])
    .to_string();
    let r = exchange(wider).await?;
    n.check(
        r.status == 400 && r.code() == "delegation_widens",
        &format!(
            "asking for more than the parent holds: {} {}",
            r.body["error"].as_str().unwrap_or("?"),
            r.code()
        ),
    );
    let r = decide(
        &c,
        &child_token,
        call("tickets.search", "read", json!({ "status": "open" })),
    )
    .await?;
    n.check(
        r.status == 200 && r.body["outcome"] == "allow",
        &format!("the reader searches: {}", decision_line(&r)),
    );
    let r = decide(
        &c,
        &child_token,
        call(
            "tickets.update",
            "write",
            json!({ "id": 42, "status": "closed" }),
        ),
    )
    .await?;
    n.check(
        r.status == 200 && r.body["outcome"] == "deny",
        &format!("the reader tries to write: {}", decision_line(&r)),
    );

    n.say("A forged token: the agent widens its own grant and re-uses the signature");
    let forged = forge(&task_token);
    let r = c
        .post(
            "/v1/decide",
            Some(&forged),
            &call("tickets.delete", "delete", json!({ "id": 42 })),
        )
        .await?;
    n.check(
        r.status == 401 && r.code() == "token_bad_signature",
        &decision_line(&r),
    );

    n.say("The agent completes its task");
    let r = c
        .post(
            &format!("/v1/tasks/{task_id}/complete"),
            Some(&task_token),
            &json!({}),
        )
        .await?;
    n.check(
        r.status == 200 && r.body["state"] == "completed",
        &format!(
            "task {task_id} is {}",
            r.body["state"].as_str().unwrap_or("?")
        ),
    );

    n.say("The next call with the same, unexpired token");
    let r = decide(
        &c,
        &task_token,
        call("tickets.search", "read", json!({ "status": "open" })),
    )
    .await?;
    n.check(
        r.status == 403 && r.code() == "task_not_active",
        &decision_line(&r),
    );
    let r = decide(
        &c,
        &child_token,
        call("tickets.search", "read", json!({ "status": "open" })),
    )
    .await?;
    n.check(
        r.status == 403 && r.code() == "task_not_active",
        &format!(
            "the delegated sub-task ended with it: {}",
            decision_line(&r)
        ),
    );

    n.say("A compromised agent reaches for a decoy: `tickets.export_all` is a honeytoken in the catalog");
    let rogue = c
        .post(
            "/v1/agents",
            Some(&admin),
            &json!({ "name": "ticket-exporter", "owner": "alice@example.com", "tier": 1 }),
        )
        .await?;
    let rogue_join = rogue.body["join_token"].as_str().unwrap_or_default();
    let att = c
        .post(
            "/v1/attest",
            None,
            &json!({ "agent": "ticket-exporter", "join_token": rogue_join }),
        )
        .await?;
    let rogue_identity = att.body["identity_token"].as_str().unwrap_or_default();
    let started = c
        .post(
            "/v1/tasks",
            Some(rogue_identity),
            &json!({ "purpose": "export a report of open tickets",
                     "scope": { "tools": ["tickets.search", "tickets.export_all"], "actions": ["read"], "data_domains": ["support"] } }),
        )
        .await?;
    let rogue_task = started.body["task_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = decide(
        &c,
        &rogue_task,
        call("tickets.export_all", "read", json!({ "status": "any" })),
    )
    .await?;
    n.check(
        r.status == 200 && r.body["outcome"] == "deny",
        &format!("the call: {}", decision_line(&r)),
    );
    // Containment reacts to the committed decision off the decide path: wait for it.
    let mut status = String::new();
    for _ in 0..100 {
        let a = c.get("/v1/agents/ticket-exporter", Some(&admin)).await?;
        status = a.body["status"].as_str().unwrap_or_default().to_owned();
        if status == "quarantined" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    n.check(
        status == "quarantined",
        &format!("containment quarantined ticket-exporter (agent status: {status})"),
    );
    let r = decide(
        &c,
        &rogue_task,
        call("tickets.search", "read", json!({ "status": "open" })),
    )
    .await?;
    n.check(
        r.status == 403 && r.code() == "task_not_active",
        &format!("its task is revoked: {}", decision_line(&r)),
    );
    let again = c
        .post(
            "/v1/tasks",
            Some(rogue_identity),
            &json!({ "purpose": "try again", "scope": { "tools": ["tickets.search"], "actions": ["read"] } }),
        )
        .await?;
    n.check(
        again.status == 403,
        &format!(
            "a new task is refused until a human releases it: {} {}",
            again.status,
            again.code()
        ),
    );

    n.say("Verify the audit chain and rebuild the task's timeline");
    let store = SqliteStore::open_existing(&data_dir).await?;
    let report = mandate_server::verify::verify_chain(&store).await?;
    n.check(
        report.first_bad.is_none(),
        &format!(
            "{} hash-chained records verified, none altered",
            report.records
        ),
    );
    let events = store.task_events(&task_id).await?;
    let child_id = d.body["mandate"]["task_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let child_events = store.task_events(&child_id).await?;
    n.check(
        events.len() == 13 && child_events.len() == 5,
        &format!(
            "{} events recorded for the task, {} for its delegate (`mandate audit trace` shows the tree):",
            events.len(),
            child_events.len()
        ),
    );
    print!(
        "{}",
        trace::render_tree(&[(0, task_id.clone(), events), (1, child_id, child_events)])
    );

    server.shutdown().await.map_err(anyhow::Error::msg)?;
    if n.failures.is_empty() {
        println!(
            "\n{} every step behaved as stated.",
            style::green("Demo complete:")
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "\n{} {} step(s) misbehaved:",
            style::red("Demo failed:"),
            n.failures.len()
        );
        for f in &n.failures {
            println!("  {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn canonical(v: &Value) -> String {
    mandate_core::canonical_json(v)
}

/// Runs this very binary with `args` as the approver would, returning its output.
async fn run_cli(args: &[&str], approver_token: &str) -> Result<String> {
    let exe = std::env::current_exe().context("locating the mandate binary")?;
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let token = approver_token.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(&args)
            .env("MANDATE_APPROVER_TOKEN", token)
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .context("running the mandate binary")?
    .context("running the mandate binary")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        anyhow::bail!(
            "exit {}: {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Rewrites the token's payload to grant delete on every requested tool, keeping the
/// original signature: what a compromised agent might try.
fn forge(token: &str) -> String {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return token.to_owned();
    };
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(p) else {
        return token.to_owned();
    };
    let Ok(mut claims) = serde_json::from_slice::<Value>(&bytes) else {
        return token.to_owned();
    };
    claims["grant"]["tools"]["tickets.delete"] = json!(["delete"]);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{h}.{payload}.{s}")
}

async fn decide(c: &Client, token: &str, body: Value) -> Result<Reply> {
    c.post("/v1/decide", Some(token), &body).await
}

const TICKET_API_KEY: &str = "tk-live-7d2f9a4c1e8b";

/// A ticket API on loopback that wants an API key, records the `Authorization` it is
/// given, and (carelessly) echoes it back.
struct TicketApi {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TicketApi {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let log = std::sync::Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let log = std::sync::Arc::clone(&log);
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if let Ok(mut l) = log.lock() {
                    l.push(auth.clone());
                }
                axum::Json(
                    json!({ "id": 42, "status": "open", "debug": { "authorization": auth } }),
                )
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, seen })
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn gateway_toml(&self) -> String {
        format!(
            "[[upstream]]\nname = \"tickets\"\nbase_url = \"http://{}/api\"\nallow_private = true\n\
             credential = {{ secret = \"ticket-api-key\", kind = \"bearer\" }}\n\n\
             [[route]]\nupstream = \"tickets\"\nmethod = \"GET\"\npath = \"/tickets/{{id}}\"\n\
             tool = \"tickets.search\"\ndata_domain = \"support\"\n",
            self.addr
        )
    }
}

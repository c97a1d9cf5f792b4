//! One agent session's MCP server: each request is authenticated with its own bearer
//! token, decided, and only then sent to the real server.

use std::sync::Arc;
use std::time::Instant;

use mandate_audit::{Body, CallRefused, GatewayResult, HiddenTool, McpRequest, NewEvent};
use mandate_core::{ActionClass, CallSpan, CanonicalArgs, ToolName};
use mandate_gateway::mcp::{McpServer, McpTransport};
use mandate_policy::Outcome;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{Value, json};

use super::McpGateway;
use crate::edge::DecideRequest;
use crate::error::ApiError;
use mandate_engine::engine::LiveTask;
use mandate_engine::pins::{Definition, Verdict};

/// `_meta` key naming an approval for exactly this call.
pub const APPROVAL_META: &str = "mandate/approval_id";
/// `_meta` key: wait up to this many seconds for the call's approval.
pub const WAIT_META: &str = "mandate/approval_wait_secs";

pub struct ProxyHandler {
    gw: Arc<McpGateway>,
    server: String,
}

impl ProxyHandler {
    pub fn new(gw: Arc<McpGateway>, server: String) -> Self {
        Self { gw, server }
    }

    fn config(&self) -> Result<&McpServer, ErrorData> {
        self.gw
            .servers
            .get(&self.server)
            .ok_or_else(|| ErrorData::internal_error("unknown mcp server", None))
    }

    /// The request's own task token (each request carries it; a session is not a grant).
    fn token(ctx: &RequestContext<RoleServer>) -> Result<String, ErrorData> {
        ctx.extensions
            .get::<axum::http::request::Parts>()
            .ok_or_else(|| ErrorData::invalid_request("no HTTP request", None))
            .and_then(|p| {
                crate::edge::bearer_token(&p.headers).map_err(|e| {
                    ErrorData::invalid_request(e.message, Some(json!({ "code": e.code })))
                })
            })
    }

    /// The span of one request: in the trace of `_meta.traceparent` (the MCP way) or of
    /// the HTTP `traceparent` header, else in the task's own trace.
    fn span(
        ctx: &RequestContext<RoleServer>,
        meta: Option<&serde_json::Map<String, Value>>,
        task: &LiveTask,
        start_us: i64,
    ) -> CallSpan {
        let agent = meta
            .and_then(|m| m.get("traceparent"))
            .and_then(Value::as_str)
            .and_then(mandate_core::TraceParent::parse)
            .or_else(|| {
                ctx.extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|p| crate::edge::traceparent(&p.headers))
            });
        CallSpan::open(
            agent,
            &task.id,
            &mandate_core::random_id("span").unwrap_or_default(),
            start_us,
        )
    }

    fn task(&self, token: &str) -> Result<Arc<LiveTask>, ErrorData> {
        self.gw
            .engine
            .task_for_token(token)
            .map_err(|r| refusal(&r.error.into()))
    }

    async fn audit(&self, task: &LiveTask, body: Body) -> Result<(), ErrorData> {
        let ev = NewEvent {
            ts_ms: self.gw.engine.clock.now_ms(),
            agent: Some(task.agent.to_string()),
            task_id: Some(task.id.clone()),
            body,
        };
        self.gw
            .engine
            .audit
            .append(ev)
            .await
            .map(|_| ())
            .map_err(|_| ErrorData::internal_error("audit unavailable: refused", None))
    }

    /// What the server lists, pinned, with each tool's verdict. A call reuses a listing
    /// younger than [`super::LISTING_TTL`]; `tools/list` always asks the server.
    async fn listing(
        &self,
        task: &Arc<LiveTask>,
        fresh: bool,
    ) -> Result<Vec<(Tool, Verdict)>, ErrorData> {
        if !fresh && let Some(tools) = self.gw.cached_listing(&self.server) {
            return Ok(tools
                .into_iter()
                .map(|t| {
                    let v = self
                        .gw
                        .engine
                        .pins
                        .verdict(&self.server, &t.name)
                        .unwrap_or(Verdict::Held("unrecorded".into()));
                    (t, v)
                })
                .collect());
        }
        let server = self.config()?;
        let up = self.gw.upstream(server, task).await.map_err(upstream_err)?;
        let tools = up
            .list_all_tools()
            .await
            .map_err(|e| upstream_err(format!("tools/list failed: {e}")))?;
        let defs: Vec<Definition> = tools
            .iter()
            .map(|t| Definition {
                name: t.name.to_string(),
                description: t.description.as_ref().map(ToString::to_string),
                input_schema: Value::Object((*t.input_schema).clone()),
                listed: serde_json::to_value(t).unwrap_or(Value::Null),
            })
            .collect();
        self.gw.cache_listing(&self.server, &tools);
        let verdicts = self
            .gw
            .engine
            .pins
            .observe(&self.server, &defs)
            .await
            .map_err(|_| ErrorData::internal_error("could not record tool pins: refused", None))?;
        Ok(tools
            .into_iter()
            .map(|t| {
                let v = verdicts
                    .get(t.name.as_ref())
                    .cloned()
                    .unwrap_or(Verdict::Held("unrecorded".into()));
                (t, v)
            })
            .collect())
    }

    fn policy_tool(&self, name: &str) -> Result<ToolName, ErrorData> {
        ToolName::parse(&format!("{}.{name}", self.server)).map_err(|_| {
            ErrorData::invalid_params(
                format!("tool name {name:?} cannot be governed: refused"),
                None,
            )
        })
    }

    /// The action class: from the trusted catalog, else from annotations of a trusted
    /// server, else `write` (the cautious default).
    fn action_of(&self, tool: &ToolName, def: Option<&Tool>) -> ActionClass {
        if let Some(e) = self.gw.engine.bundle().catalog().get(tool) {
            return if e.destructive {
                ActionClass::Delete
            } else if e.read_only {
                ActionClass::Read
            } else {
                ActionClass::Write
            };
        }
        let trusted = self.config().is_ok_and(|s| s.trusted);
        match def.and_then(|d| d.annotations.as_ref()).filter(|_| trusted) {
            Some(a) if a.destructive_hint == Some(true) => ActionClass::Delete,
            Some(a) if a.read_only_hint == Some(true) => ActionClass::Read,
            _ => ActionClass::Write,
        }
    }

    fn destination(&self) -> Option<mandate_core::Destination> {
        match &self.config().ok()?.transport {
            McpTransport::Remote(url) => mandate_gateway::config::destination_of(url),
            McpTransport::Stdio { .. } => None,
        }
    }

    /// Decides one MCP request as a call. `Ok(None)` when allowed; `Ok(Some(result))` is the
    /// tool error to give the agent (denied or held).
    async fn decide(
        &self,
        token: &str,
        tool: ToolName,
        action: ActionClass,
        resource: &str,
        arguments: Value,
        (meta, span): (Option<&serde_json::Map<String, Value>>, &CallSpan),
    ) -> Result<Result<mandate_engine::Decided, CallToolResult>, ErrorData> {
        let args = CanonicalArgs::parse(&arguments.to_string())
            .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
        let approval_id = meta
            .and_then(|m| m.get(APPROVAL_META))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let wait_secs = meta.and_then(|m| m.get(WAIT_META)).and_then(Value::as_u64);
        let call = DecideRequest {
            tool,
            action,
            resource: Some(resource.to_owned()),
            arguments: Some(args),
            destination: self.destination(),
            data_domain: None,
            sensitivity: None,
            approval_id,
            wait_secs,
        };
        let (call, options) = call.into_call(Some(span.child_context()));
        let d = self
            .gw
            .engine
            .decide(token, call, options)
            .await
            .map_err(|e| refusal(&e.into()))?;
        if d.outcome == Outcome::Allow {
            return Ok(Ok(d));
        }
        let text = match (&d.outcome, &d.approval) {
            (Outcome::ApprovalRequired, Some(a)) => format!(
                "approval required: {}. A human must approve {} (mandate approvals approve {}); then repeat exactly this call with _meta {{\"{APPROVAL_META}\": \"{}\"}}.",
                d.reasons.join("; "),
                a.id,
                a.id,
                a.id
            ),
            _ => format!("denied by policy: {}", d.reasons.join("; ")),
        };
        let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
        r.structured_content = Some(json!({ "mandate": {
            "outcome": d.outcome, "decision_id": d.decision_id, "policies": d.policies,
            "approval": d.approval,
            "approval_url": d.approval.as_ref().map(|a| format!("{}/v1/approvals/{}", self.gw.engine.issuer, a.id)),
        }}));
        Ok(Err(r))
    }

    /// `resources/read` and `prompts/get`: decided as a read of `<server>.<kind>` on
    /// `resource`, then sent with `send`, redacted and recorded.
    async fn decided_read<T, F, Fut>(
        &self,
        ctx: &RequestContext<RoleServer>,
        kind: &str,
        resource: &str,
        args: Value,
        send: F,
    ) -> Result<T, ErrorData>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        F: FnOnce(Arc<super::Upstream>) -> Fut,
        Fut: std::future::Future<Output = Result<T, rmcp::ServiceError>>,
    {
        let started = (Instant::now(), self.gw.engine.clock.now_us());
        let token = Self::token(ctx)?;
        let task = self.task(&token)?;
        let span = Self::span(ctx, None, &task, started.1);
        let tool = self.policy_tool(kind)?;
        let d = match self
            .decide(
                &token,
                tool,
                ActionClass::Read,
                resource,
                args,
                (None, &span),
            )
            .await?
        {
            Ok(d) => d,
            Err(r) => {
                let why = r
                    .content
                    .first()
                    .and_then(|c| c.as_text())
                    .map(|t| t.text.clone())
                    .unwrap_or_default();
                return Err(ErrorData::invalid_request(why, r.structured_content));
            }
        };
        let up = self
            .gw
            .upstream(self.config()?, &task)
            .await
            .map_err(upstream_err)?;
        let res = tokio::select! {
            r = send(up) => r.map_err(|e| upstream_err(e.to_string()))?,
            () = task.until_ended() => {
                self.result(&task, (&d.decision_id, kind), Answer::None("task_ended".into()), (started.0, &span))
                    .await
                    .ok();
                return Err(ended_in_flight());
            }
        };
        let (res, size, _) = self.redact(res).await?;
        let what = format!(
            "{kind}/{}",
            if kind == "resources" { "read" } else { "get" }
        );
        self.result(
            &task,
            (&d.decision_id, &what),
            Answer::Relayed { size, note: None },
            (started.0, &span),
        )
        .await?;
        Ok(res)
    }

    /// Masks any echo of the secrets Mandate gave this server, in every encoding.
    async fn redact<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        value: T,
    ) -> Result<(T, usize, bool), ErrorData> {
        let bytes = serde_json::to_vec(&value)
            .map_err(|_| ErrorData::internal_error("unserialisable answer", None))?;
        let secrets = self.gw.secrets_of(self.config()?).await;
        let forms: Vec<&[u8]> = secrets.iter().map(|s| s.expose()).collect();
        let mut r = mandate_gateway::Redactor::new(forms);
        let clean = r.redact_all(&bytes);
        if !r.found() {
            return Ok((value, bytes.len(), false));
        }
        tracing::warn!(server = %self.server, "an MCP server echoed the secret Mandate gave it: redacted");
        let v = serde_json::from_slice(&clean).map_err(|_| {
            ErrorData::internal_error("the answer carried a secret and was withheld", None)
        })?;
        Ok((v, bytes.len(), true))
    }

    /// Records what the server answered to an allowed request.
    async fn result(
        &self,
        task: &LiveTask,
        (decision, what): (&str, &str),
        answer: Answer,
        (started, span): (Instant, &CallSpan),
    ) -> Result<(), ErrorData> {
        let (size, error, answered) = match answer {
            Answer::Relayed { size, note } => (size, note, true),
            Answer::None(why) => (0, Some(why), false),
        };
        let untrusted = self.config().is_ok_and(|s| s.untrusted_content);
        // Untrusted content reaches the agent only once the task's taint is durable.
        let tainted = if untrusted && answered {
            self.gw
                .engine
                .taint(task, &self.server)
                .await
                .map_err(|e| refusal(&e.into()))
        } else {
            Ok(())
        };
        self.gw
            .engine
            .record_result(task, size as u64, untrusted && answered);
        let ev = NewEvent {
            ts_ms: self.gw.engine.clock.now_ms(),
            agent: Some(task.agent.to_string()),
            task_id: Some(task.id.clone()),
            body: Body::GatewayResult(GatewayResult {
                protocol: Some("mcp".to_owned()),
                decision_id: decision.to_owned(),
                upstream: self.server.clone(),
                tool: None,
                request: Some(what.to_owned()),
                upstream_status: None,
                method: None,
                target: None,
                request_digest: None,
                location: None,
                etag: None,
                bytes_returned: size as u64,
                secret_redacted: None,
                untrusted_content: untrusted,
                error,
                duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                trace: Some(span.record(self.gw.engine.clock.now_us())),
            }),
        };
        self.gw.engine.audit.append_deferred(ev);
        tainted
    }
}

fn refusal(e: &ApiError) -> ErrorData {
    let data = Some(json!({ "code": e.code, "status": e.status.as_u16() }));
    match e.status.as_u16() {
        401 | 403 | 404 | 409 | 413 | 422 | 429 => {
            ErrorData::invalid_request(format!("{}: {}", e.code, e.message), data)
        }
        _ => ErrorData::internal_error(format!("{}: refused", e.code), data),
    }
}

/// What came back from the server for an allowed request.
enum Answer {
    /// An answer relayed to the agent (`note`: what was done to it).
    Relayed { size: usize, note: Option<String> },
    /// No answer reached the agent: why.
    None(String),
}

fn ended_in_flight() -> ErrorData {
    ErrorData::invalid_request(
        "task_not_active: the task ended while the server was answering; nothing was relayed",
        Some(json!({ "code": "task_not_active", "status": 403 })),
    )
}

fn upstream_err(e: impl Into<super::UpstreamError>) -> ErrorData {
    match e.into() {
        super::UpstreamError::Exhausted(why) => refusal(&ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "mcp_sessions_exhausted",
            why,
        )),
        super::UpstreamError::Unavailable(e) => {
            tracing::warn!(error = %e, "mcp upstream failed");
            ErrorData::internal_error("the MCP server is unavailable: nothing was forwarded", None)
        }
    }
}

impl ServerHandler for ProxyHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        .with_instructions(format!(
            "Mandate MCP gateway for {}: every call is authorised against your task",
            self.server
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let token = Self::token(&ctx)?;
        let task = self.task(&token)?;
        let grant = task.current_grant();
        let bundle = self.gw.engine.bundle();
        let mut shown = Vec::new();
        let mut held = Vec::new();
        for (mut t, v) in self.listing(&task, true).await? {
            let Ok(name) = self.policy_tool(&t.name) else {
                continue;
            };
            match v {
                Verdict::Held(why) => held.push(HiddenTool {
                    tool: t.name.to_string(),
                    why,
                }),
                Verdict::Callable if grant.tools.contains_key(&name) => {
                    if let Some(d) = bundle
                        .catalog()
                        .get(&name)
                        .and_then(|e| e.description.clone())
                    {
                        t.description = Some(d.into());
                    }
                    shown.push(t);
                }
                Verdict::Callable => {}
            }
        }
        self.audit(
            &task,
            Body::McpRequest(McpRequest {
                server: self.server.clone(),
                method: "tools/list".to_owned(),
                shown: Some(shown.iter().map(|t| t.name.to_string()).collect()),
                held: Some(held),
            }),
        )
        .await?;
        Ok(ListToolsResult::with_all_items(shown))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let started = (Instant::now(), self.gw.engine.clock.now_us());
        let token = Self::token(&ctx)?;
        let task = self.task(&token)?;
        // rmcp moves a request's `_meta` into the context.
        let meta = request
            .meta
            .as_ref()
            .map(|m| &m.0.0)
            .or(Some(&ctx.meta.0.0));
        let span = Self::span(&ctx, meta, &task, started.1);
        let tool = self.policy_tool(&request.name)?;
        // The definition must be pinned and approved: look at what the server shows now.
        let listing = self.listing(&task, false).await?;
        let def = listing.iter().find(|(t, _)| t.name == request.name);
        match def.map(|(_, v)| v) {
            Some(Verdict::Callable) => {}
            Some(Verdict::Held(why)) => {
                self.audit(
                    &task,
                    Body::CallRefused(CallRefused {
                        code: "tool_held".to_owned(),
                        server: Some(self.server.clone()),
                        tool: Some(request.name.to_string()),
                        why: Some(why.clone()),
                        ..CallRefused::default()
                    }),
                )
                .await?;
                return Ok(CallToolResult::error(vec![ContentBlock::text(why.clone())]).into());
            }
            None => {
                return Err(ErrorData::invalid_params(
                    format!("no tool {:?} on {}", request.name, self.server),
                    None,
                ));
            }
        }
        let action = self.action_of(&tool, def.map(|(t, _)| t));
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default());
        let d = match self
            .decide(
                &token,
                tool,
                action,
                &request.name,
                arguments.clone(),
                (meta, &span),
            )
            .await?
        {
            Ok(d) => d,
            Err(result) => return Ok(result.into()),
        };
        let server = self.config()?;
        let up = self
            .gw
            .upstream(server, &task)
            .await
            .map_err(upstream_err)?;
        if task.is_ended() {
            return Err(ErrorData::invalid_request(
                "task_not_active: the task ended before the call was forwarded",
                None,
            ));
        }
        // Exactly the arguments decided on, in canonical form; never the agent's token.
        let mut forward = CallToolRequestParams::new(request.name.clone());
        if let Value::Object(m) = arguments {
            forward.arguments = Some(m);
        }
        // A task that ends while the server works gets nothing back: the call is cut (its
        // session is closed) as the HTTP gateway cuts a stream.
        let answer = tokio::select! {
            r = up.call_tool(forward) => r,
            () = task.until_ended() => {
                self.result(&task, (&d.decision_id, "tools/call"), Answer::None("task_ended".into()), (started.0, &span))
                    .await
                    .ok();
                return Err(ended_in_flight());
            }
        };
        match answer {
            Ok(result) => {
                let (result, size, redacted) = self.redact(result).await?;
                let note = redacted.then(|| "secret redacted from the answer".to_owned());
                self.result(
                    &task,
                    (&d.decision_id, "tools/call"),
                    Answer::Relayed { size, note },
                    (started.0, &span),
                )
                .await?;
                Ok(result.into())
            }
            Err(e) => {
                self.result(
                    &task,
                    (&d.decision_id, "tools/call"),
                    Answer::None(e.to_string()),
                    (started.0, &span),
                )
                .await
                .ok();
                Ok(CallToolResult::error(vec![ContentBlock::text(
                    "the MCP server failed to answer",
                )])
                .into())
            }
        }
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let (uri, args) = (request.uri.clone(), json!({ "uri": request.uri }));
        let res = self
            .decided_read(&ctx, "resources", &uri, args, |up| async move {
                up.read_resource(request).await
            })
            .await?;
        Ok(res.into())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let name = request.name.clone();
        let args = json!({ "name": request.name, "arguments": request.arguments });
        let res = self
            .decided_read(&ctx, "prompts", &name, args, |up| async move {
                up.get_prompt(request).await
            })
            .await?;
        Ok(res.into())
    }
}

//! One agent session's MCP server: each request is authenticated with its own bearer
//! token, decided, and only then sent to the real server.

#![expect(
    deprecated,
    reason = "logging, subscriptions and sampling are deprecated by SEP-2577 but still in the 2025-11-25 revision that clients speak: Mandate relays them"
)]

use std::sync::Arc;
use std::time::Instant;

use mandate_audit::{Body, CallRefused, GatewayResult, HiddenTool, McpRequest, NewEvent};
use mandate_core::{ActionClass, CallSpan, CanonicalArgs, ToolName};
use mandate_gateway::mcp::{McpServer, McpTransport};
use mandate_policy::Outcome;
use rmcp::model::GetMeta as _;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult,
    CancelledNotificationParam, ClientRequest, CompleteRequest, CompleteRequestParams,
    CompleteResult, ContentBlock, GetPromptRequest, GetPromptRequestParams, GetPromptResponse,
    InitializeRequestParams, InitializeResult, ListPromptsRequest, ListPromptsResult,
    ListResourceTemplatesRequest, ListResourceTemplatesResult, ListResourcesRequest,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequest,
    ReadResourceRequestParams, ReadResourceResponse, Reference, RequestMetaObject, ResultType,
    ServerCapabilities, ServerConfig, ServerResult, SetLevelRequest, SetLevelRequestParams,
    SubscribeRequest, SubscribeRequestParams, Tool, UnsubscribeRequest, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RoleServer};
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

/// One agent session.
pub struct ProxyHandler {
    gw: Arc<McpGateway>,
    server: String,
    /// This agent session (its upstream sessions are its own).
    session: String,
    /// It began with `initialize`: a session of its own. Without one (the stateless
    /// 2026-07-28 revision, one handler per request), the task's upstream session is shared
    /// by its requests.
    stateful: std::sync::atomic::AtomicBool,
    /// What the agent is told of the server: the server's own identity, instructions and
    /// capabilities (less what Mandate does not relay), once a session with it is up.
    info: std::sync::OnceLock<ServerConfig>,
}

impl Drop for ProxyHandler {
    fn drop(&mut self) {
        if self.stateful.load(std::sync::atomic::Ordering::Relaxed) {
            self.gw.close_session(&self.session);
        }
    }
}

impl ProxyHandler {
    pub fn new(gw: Arc<McpGateway>, server: String) -> Self {
        Self {
            gw,
            server,
            session: mandate_core::random_id("mcps").unwrap_or_default(),
            stateful: std::sync::atomic::AtomicBool::new(false),
            info: std::sync::OnceLock::new(),
        }
    }

    /// This agent session's upstream session for `task`, started as needed.
    async fn up(
        &self,
        ctx: &RequestContext<RoleServer>,
        task: &Arc<LiveTask>,
        token: &str,
    ) -> Result<Arc<super::Upstream>, ErrorData> {
        let server = self.config()?;
        let caps = ctx.client_capabilities();
        let session = if self.stateful.load(std::sync::atomic::Ordering::Relaxed) {
            self.session.as_str()
        } else {
            ""
        };
        let up = self
            .gw
            .upstream(server, task, session, || {
                super::relay::Relay::new(&self.gw, &self.server, &ctx.peer, caps, token)
            })
            .await
            .map_err(upstream_err)?;
        up.service().0.set_agent(token, &ctx.peer);
        Ok(up)
    }

    /// Sends `request` on `up` with the agent's `_meta` (progress token, trace context,
    /// anything else but Mandate's own keys and the protocol fields of the agent's own
    /// session), relays what the server sends about it while it works, and passes on a
    /// cancellation by the agent.
    async fn forward(
        &self,
        up: &super::Upstream,
        request: ClientRequest,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, ErrorData> {
        let relay = &up.service().0;
        let mut options = PeerRequestOptions::no_options();
        // A server that predates 2026-07-28 (its session began with `initialize`) does not
        // read the per-request envelope, and may refuse it: it gets the request as its
        // revision has it.
        let legacy = up
            .peer_info()
            .is_some_and(|i| i.protocol_version.has_initialize());
        options.meta = forwarded_meta(&ctx.meta, legacy);
        let handle = relay
            .register(
                (&ctx.peer, ctx.id.clone()),
                ctx.meta.get_progress_token(),
                || async {
                    let h = up.send_request_with_option(request, options).await?;
                    let (id, token) = (h.id.clone(), h.progress_token.clone());
                    Ok((h, id, token))
                },
            )
            .await
            .map_err(|e| upstream_err(format!("cannot send to the MCP server: {e}")))?;
        let id = handle.id.clone();
        let answer = tokio::select! {
            r = handle.await_response() => r,
            () = ctx.ct.cancelled() => {
                up.notify_cancelled(CancelledNotificationParam::new(
                    Some(id.clone()),
                    Some("cancelled by the agent".to_owned()),
                ))
                .await
                .ok();
                relay.unregister(&id).await;
                return Err(ErrorData::invalid_request("cancelled by the agent", None));
            }
        };
        relay.unregister(&id).await;
        match answer {
            Ok(ServerResult::InputRequiredResult(r)) => {
                Self::vet_input(up, &r).await?;
                Ok(ServerResult::InputRequiredResult(r))
            }
            Ok(mut r) => {
                mark_complete(&mut r);
                Ok(r)
            }
            // The server's own error, as it gave it.
            Err(rmcp::ServiceError::McpError(e)) => Err(e),
            Err(e) => Err(upstream_err(format!("the MCP server failed: {e}"))),
        }
    }

    /// `tools`' grant check for the pseudo-tool `<server>.<kind>`.
    fn granted(&self, task: &LiveTask, kind: &str) -> bool {
        self.policy_tool(kind).is_ok_and(|t| {
            task.current_grant()
                .tools
                .get(&t)
                .is_some_and(|a| a.contains(&ActionClass::Read))
        })
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
        (ctx, token): (&RequestContext<RoleServer>, &str),
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
        let up = self.up(ctx, task, token).await?;
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
    ) -> Result<Result<mandate_engine::Decided, (CallToolResult, Option<Held>)>, ErrorData> {
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
        let held = match (&d.outcome, &d.approval) {
            (Outcome::ApprovalRequired, Some(a)) => Some(Held {
                id: a.id.clone(),
                url: format!("{}/v1/approvals/{}", self.gw.engine.issuer, a.id),
                why: d.reasons.join("; "),
            }),
            _ => None,
        };
        let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
        r.structured_content = Some(json!({ "mandate": {
            "outcome": d.outcome, "decision_id": d.decision_id, "policies": d.policies,
            "approval": d.approval,
            "approval_url": held.as_ref().map(|h| h.url.clone()),
        }}));
        Ok(Err((r, held)))
    }

    /// `resources/read` and `prompts/get`: decided as a read of `<server>.<kind>` on
    /// `resource` (an approval named in `_meta` is used as for `tools/call`), then sent,
    /// redacted and recorded.
    async fn decided_read(
        &self,
        ctx: &RequestContext<RoleServer>,
        (kind, resource): (&str, &str),
        args: Value,
        request: ClientRequest,
    ) -> Result<ServerResult, ErrorData> {
        let started = (Instant::now(), self.gw.engine.clock.now_us());
        let token = Self::token(ctx)?;
        let task = self.task(&token)?;
        let meta = Some(&ctx.meta.0.0);
        let span = Self::span(ctx, meta, &task, started.1);
        let tool = self.policy_tool(kind)?;
        let d = match self
            .decide(
                &token,
                tool,
                ActionClass::Read,
                resource,
                args,
                (meta, &span),
            )
            .await?
        {
            Ok(d) => d,
            Err((r, _)) => {
                let why = r
                    .content
                    .first()
                    .and_then(|c| c.as_text())
                    .map(|t| t.text.clone())
                    .unwrap_or_default();
                return Err(ErrorData::invalid_request(why, r.structured_content));
            }
        };
        let up = self.up(ctx, &task, &token).await?;
        let res = tokio::select! {
            r = self.forward(&up, request, ctx) => r?,
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

    /// A listing of resources, templates or prompts: relayed as the server gives it (with
    /// its cursors) when the task may read `<server>.<kind>`, else empty; recorded.
    async fn relayed_listing(
        &self,
        ctx: &RequestContext<RoleServer>,
        (kind, method): (&str, &str),
        request: ClientRequest,
    ) -> Result<Option<ServerResult>, ErrorData> {
        let token = Self::token(ctx)?;
        let task = self.task(&token)?;
        if !self.granted(&task, kind) {
            self.audit(
                &task,
                Body::McpRequest(McpRequest {
                    server: self.server.clone(),
                    method: method.to_owned(),
                    shown: Some(Vec::new()),
                    held: None,
                }),
            )
            .await?;
            return Ok(None);
        }
        let up = self.up(ctx, &task, &token).await?;
        let res = self.forward(&up, request, ctx).await?;
        let (res, _, _) = self.redact(res).await?;
        let shown = match &res {
            ServerResult::ListResourcesResult(r) => {
                r.resources.iter().map(|x| x.uri.clone()).collect()
            }
            ServerResult::ListResourceTemplatesResult(r) => r
                .resource_templates
                .iter()
                .map(|x| x.uri_template.clone())
                .collect(),
            ServerResult::ListPromptsResult(r) => {
                r.prompts.iter().map(|x| x.name.to_string()).collect()
            }
            _ => Vec::new(),
        };
        self.audit(
            &task,
            Body::McpRequest(McpRequest {
                server: self.server.clone(),
                method: method.to_owned(),
                shown: Some(shown),
                held: None,
            }),
        )
        .await?;
        Ok(Some(res))
    }

    /// A request relayed when the task may read `<server>.<kind>` (subscriptions,
    /// completion), refused otherwise.
    async fn relayed_if_granted(
        &self,
        ctx: &RequestContext<RoleServer>,
        kind: &str,
        request: ClientRequest,
    ) -> Result<ServerResult, ErrorData> {
        let token = Self::token(ctx)?;
        let task = self.task(&token)?;
        if !self.granted(&task, kind) {
            return Err(ErrorData::invalid_request(
                format!(
                    "outside_grant: this task may not read {}.{kind}: refused",
                    self.server
                ),
                Some(json!({ "code": "outside_grant", "status": 403 })),
            ));
        }
        let up = self.up(ctx, &task, &token).await?;
        let res = self.forward(&up, request, ctx).await?;
        Ok(self.redact(res).await?.0)
    }

    /// Masks any echo of the secrets Mandate gave this server, in every encoding.
    async fn redact<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        value: T,
    ) -> Result<(T, usize, bool), ErrorData> {
        self.gw.redact(self.config()?, value).await
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

impl ProxyHandler {
    /// The agent meets the server it asked for: its name, version, instructions and
    /// capabilities, less what Mandate does not relay (tasks, extensions). Without a
    /// session with it (no valid token yet, or it is down), Mandate's own description.
    async fn meet_server(&self, ctx: &RequestContext<RoleServer>) {
        if self.info.get().is_some() {
            return;
        }
        let Ok(token) = Self::token(ctx) else { return };
        let Ok(task) = self.task(&token) else { return };
        match self.up(ctx, &task, &token).await {
            Ok(up) => {
                if let Some(theirs) = up.peer_info() {
                    self.info.set(mirrored(&theirs)).ok();
                }
            }
            Err(e) => {
                tracing::warn!(server = %self.server, error = %e.message, "mcp server unavailable when the agent met it");
            }
        }
    }

    /// Policy on what a 2026-07-28 server asks of the client inside an `input_required`
    /// result (sampling, elicitation, roots): each is decided as its request would be;
    /// one refused refuses the whole answer, and the agent's client is asked nothing.
    async fn vet_input(
        up: &super::Upstream,
        r: &rmcp::model::InputRequiredResult,
    ) -> Result<(), ErrorData> {
        use rmcp::model::InputRequest;
        for req in r.input_requests.iter().flat_map(|m| m.values()) {
            let (what, params) = match req {
                InputRequest::CreateMessage(x) => ("sampling", serde_json::to_value(&x.params)),
                InputRequest::Elicitation(x) => ("elicitation", serde_json::to_value(&x.params)),
                InputRequest::ListRoots(_) => ("roots", Ok(json!({}))),
                // A kind Mandate cannot decide on is not relayed (fail closed).
                _ => {
                    return Err(ErrorData::invalid_request(
                        "the MCP server asked the client for input of a kind Mandate does not relay: refused",
                        Some(json!({ "code": "denied_by_policy" })),
                    ));
                }
            };
            up.service()
                .0
                .decide(what, &params.unwrap_or(Value::Null))
                .await?;
        }
        Ok(())
    }
}

/// A call held for a human.
pub(crate) struct Held {
    /// The approval's id.
    id: String,
    /// Where a human decides it.
    url: String,
    /// Why it is held.
    why: String,
}

impl ProxyHandler {
    /// The agent's client can show a URL to its user (URL elicitation), on a revision that
    /// still lets a server ask the client.
    fn asks_by_url(&self, ctx: &RequestContext<RoleServer>) -> bool {
        let legacy = ctx
            .protocol_version()
            .is_none_or(|v| v.as_str() < rmcp::model::ProtocolVersion::V_2026_07_28.as_str());
        legacy
            && ctx
                .client_capabilities()
                .and_then(|c| c.elicitation)
                .is_some_and(|e| e.url.is_some())
    }

    /// Asks the agent's client to show the approval page, then waits (at most
    /// `max_approval_wait_secs`) for a human's decision. `Some` when the call may go on.
    async fn approve_by_url(
        &self,
        ctx: &RequestContext<RoleServer>,
        held: &Held,
        (token, tool, action): (&str, ToolName, ActionClass),
        (name, arguments): (&str, &Value),
        span: &CallSpan,
    ) -> Result<Option<mandate_engine::Decided>, ErrorData> {
        use rmcp::model::{
            ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction, ServerRequest,
        };
        let wait = u64::try_from(self.gw.engine.config.limits.max_approval_wait_secs).unwrap_or(0);
        if wait == 0 {
            return Ok(None);
        }
        let params = ElicitRequestParams::UrlElicitationParams {
            meta: None,
            message: format!(
                "Mandate holds this call to {}.{name} for a human ({}). Open the page to review it; the call goes on once it is approved.",
                self.server, held.why
            ),
            url: held.url.clone(),
            elicitation_id: held.id.clone(),
        };
        let mut options = PeerRequestOptions::no_options();
        options.timeout = Some(std::time::Duration::from_secs(wait));
        let asked = match ctx
            .peer
            .send_request_with_option(
                ServerRequest::ElicitRequest(ElicitRequest::new(params)),
                options,
            )
            .await
        {
            Ok(h) => h.await_response().await,
            Err(e) => Err(e),
        };
        match asked {
            Ok(ClientResult::ElicitResult(r)) if r.action == ElicitationAction::Accept => {}
            _ => return Ok(None),
        }
        let mut meta = serde_json::Map::new();
        meta.insert(APPROVAL_META.to_owned(), Value::String(held.id.clone()));
        meta.insert(WAIT_META.to_owned(), Value::from(wait));
        match self
            .decide(
                token,
                tool,
                action,
                name,
                arguments.clone(),
                (Some(&meta), span),
            )
            .await?
        {
            Ok(d) => Ok(Some(d)),
            Err(_) => Ok(None),
        }
    }
}

/// The agent's `_meta` as the server gets it: without the progress token (the relay
/// maps its own) and Mandate's keys. A request of the 2026-07-28 revision keeps what it
/// declares of itself (revision, client, capabilities, log level): the server answers it
/// as it would answer the agent.
fn forwarded_meta(meta: &RequestMetaObject, legacy: bool) -> Option<RequestMetaObject> {
    let mut m = meta.clone();
    m.0.0.retain(|k, _| {
        k != "progressToken"
            && !k.starts_with("mandate/")
            && k != "io.modelcontextprotocol/subscriptionId"
            && !(legacy && k.starts_with("io.modelcontextprotocol/"))
    });
    (!m.0.0.is_empty()).then_some(m)
}

/// A relayed result says it is complete where the server left that implicit (the
/// 2026-07-28 revision's clients require `resultType`; rmcp drops it again for older
/// ones).
fn mark_complete(r: &mut ServerResult) {
    let t = match r {
        ServerResult::CallToolResult(x) => &mut x.result_type,
        ServerResult::GetPromptResult(x) => &mut x.result_type,
        ServerResult::ReadResourceResult(x) => &mut x.result_type,
        ServerResult::CompleteResult(x) => &mut x.result_type,
        ServerResult::ListPromptsResult(x) => &mut x.result_type,
        ServerResult::ListResourcesResult(x) => &mut x.result_type,
        ServerResult::ListResourceTemplatesResult(x) => &mut x.result_type,
        ServerResult::ListToolsResult(x) => &mut x.result_type,
        _ => return,
    };
    t.get_or_insert(ResultType::COMPLETE);
}

/// What the agent is told of the server, from what the server said.
pub(crate) fn mirrored(theirs: &rmcp::model::ServerPeerInfo) -> ServerConfig {
    let c = &theirs.capabilities;
    let mut caps = ServerCapabilities::builder().enable_tools().build();
    if let Some(t) = &c.tools {
        caps.tools = Some(t.clone());
    }
    caps.resources.clone_from(&c.resources);
    caps.prompts.clone_from(&c.prompts);
    caps.logging.clone_from(&c.logging);
    caps.completions.clone_from(&c.completions);
    let mut info = ServerConfig::new(caps);
    if let Some(i) = &theirs.server_info {
        info.server_info = i.clone();
    }
    info.instructions.clone_from(&theirs.instructions);
    info
}

fn other_answer() -> ErrorData {
    ErrorData::internal_error("the MCP server answered with something else", None)
}

pub(crate) fn refusal(e: &ApiError) -> ErrorData {
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
        if let Some(info) = self.info.get() {
            return info.clone();
        }
        if let Some(info) = self.gw.server_info(&self.server) {
            return info;
        }
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .enable_logging()
                .enable_completions()
                .build(),
        )
        .with_instructions(format!(
            "Mandate MCP gateway for {}: every call is authorised against your task",
            self.server
        ))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        ctx.peer.set_peer_info(request.clone());
        self.stateful
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.meet_server(&ctx).await;
        self.negotiate_initialize(&request)
    }

    async fn discover(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::DiscoverResult, ErrorData> {
        self.meet_server(&ctx).await;
        Ok(rmcp::model::DiscoverResult::from_server_info(
            self.supported_protocol_versions().into_owned(),
            self.get_info(),
        ))
    }

    /// The tool's definition as the server last listed it: rmcp checks a call's
    /// `Mcp-Param-*` headers (SEP-2243) against its input schema.
    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.gw.last_listed(&self.server, name)
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
        for (mut t, v) in self.listing((&ctx, &token), &task, true).await? {
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
        let listing = self.listing((&ctx, &token), &task, false).await?;
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
            // A tool error, as the servers behind Mandate answer a name they do not have
            // (nothing is forwarded: an unlisted tool is never decided or sent).
            None => {
                let mut r = CallToolResult::error(vec![ContentBlock::text(format!(
                    "no tool {:?} on {}",
                    request.name, self.server
                ))]);
                r.structured_content = Some(json!({ "mandate": { "code": "unknown_tool" } }));
                return Ok(r.into());
            }
        }
        let action = self.action_of(&tool, def.map(|(t, _)| t));
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default());
        let decided = self
            .decide(
                &token,
                tool.clone(),
                action,
                &request.name,
                arguments.clone(),
                (meta, &span),
            )
            .await?;
        let d = match decided {
            Ok(d) => d,
            Err((result, Some(held))) if self.asks_by_url(&ctx) => {
                // The MCP way: the agent's client shows the approval page to its user,
                // and the call goes on once a human has decided (bounded wait).
                match self
                    .approve_by_url(
                        &ctx,
                        &held,
                        (&token, tool, action),
                        (&request.name, &arguments),
                        &span,
                    )
                    .await?
                {
                    Some(d) => d,
                    None => return Ok(result.into()),
                }
            }
            Err((result, _)) => return Ok(result.into()),
        };
        let up = self.up(&ctx, &task, &token).await?;
        if task.is_ended() {
            return Err(ErrorData::invalid_request(
                "task_not_active: the task ended before the call was forwarded",
                None,
            ));
        }
        // Exactly the arguments decided on, in canonical form; never the agent's token.
        let mut forward = request.clone();
        forward.meta = None;
        forward.arguments = match arguments {
            Value::Object(m) => Some(m),
            _ => None,
        };
        // A task that ends while the server works gets nothing back: the call is cut (its
        // session is closed) as the HTTP gateway cuts a stream.
        let answer = tokio::select! {
            r = self.forward(&up, ClientRequest::CallToolRequest(CallToolRequest::new(forward)), &ctx) => r,
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
                match result {
                    ServerResult::CallToolResult(r) => Ok(CallToolResponse::Complete(r)),
                    ServerResult::InputRequiredResult(r) => Ok(CallToolResponse::InputRequired(r)),
                    _ => Err(ErrorData::internal_error(
                        "the MCP server answered tools/call with something else",
                        None,
                    )),
                }
            }
            Err(e) => {
                self.result(
                    &task,
                    (&d.decision_id, "tools/call"),
                    Answer::None(e.message.to_string()),
                    (started.0, &span),
                )
                .await
                .ok();
                // The server's request for input was refused by policy: a tool error,
                // as a refused call is (on earlier revisions the server gets the refusal
                // and answers with one itself).
                let refused = e
                    .data
                    .as_ref()
                    .and_then(|d| d.get("code"))
                    .is_some_and(|c| c == "denied_by_policy");
                if refused {
                    let mut r =
                        CallToolResult::error(vec![ContentBlock::text(e.message.to_string())]);
                    r.structured_content = Some(json!({ "mandate": e.data }));
                    return Ok(r.into());
                }
                Err(e)
            }
        }
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let (uri, args) = (request.uri.clone(), json!({ "uri": request.uri }));
        let mut forward = request;
        forward.meta = None;
        let res = self
            .decided_read(
                &ctx,
                ("resources", &uri),
                args,
                ClientRequest::ReadResourceRequest(ReadResourceRequest::new(forward)),
            )
            .await?;
        match res {
            ServerResult::ReadResourceResult(r) => Ok(ReadResourceResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(ReadResourceResponse::InputRequired(r)),
            _ => Err(other_answer()),
        }
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let name = request.name.clone();
        let args = json!({ "name": request.name, "arguments": request.arguments });
        let mut forward = request;
        forward.meta = None;
        let res = self
            .decided_read(
                &ctx,
                ("prompts", &name),
                args,
                ClientRequest::GetPromptRequest(GetPromptRequest::new(forward)),
            )
            .await?;
        match res {
            ServerResult::GetPromptResult(r) => Ok(GetPromptResponse::Complete(r)),
            ServerResult::InputRequiredResult(r) => Ok(GetPromptResponse::InputRequired(r)),
            _ => Err(other_answer()),
        }
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let req = ClientRequest::ListResourcesRequest(ListResourcesRequest {
            method: Default::default(),
            params: request,
            extensions: Default::default(),
        });
        match self
            .relayed_listing(&ctx, ("resources", "resources/list"), req)
            .await?
        {
            Some(ServerResult::ListResourcesResult(r)) => Ok(r),
            Some(_) => Err(other_answer()),
            None => Ok(ListResourcesResult::default()),
        }
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let req = ClientRequest::ListResourceTemplatesRequest(ListResourceTemplatesRequest {
            method: Default::default(),
            params: request,
            extensions: Default::default(),
        });
        match self
            .relayed_listing(&ctx, ("resources", "resources/templates/list"), req)
            .await?
        {
            Some(ServerResult::ListResourceTemplatesResult(r)) => Ok(r),
            Some(_) => Err(other_answer()),
            None => Ok(ListResourceTemplatesResult::default()),
        }
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let req = ClientRequest::ListPromptsRequest(ListPromptsRequest {
            method: Default::default(),
            params: request,
            extensions: Default::default(),
        });
        match self
            .relayed_listing(&ctx, ("prompts", "prompts/list"), req)
            .await?
        {
            Some(ServerResult::ListPromptsResult(r)) => Ok(r),
            Some(_) => Err(other_answer()),
            None => Ok(ListPromptsResult::default()),
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let req = ClientRequest::SubscribeRequest(SubscribeRequest::new(request));
        self.relayed_if_granted(&ctx, "resources", req)
            .await
            .map(|_| ())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let req = ClientRequest::UnsubscribeRequest(UnsubscribeRequest::new(request));
        self.relayed_if_granted(&ctx, "resources", req)
            .await
            .map(|_| ())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        // Completing a prompt's argument or a template's reveals what reading it would.
        let kind = match &request.r#ref {
            Reference::Prompt(_) => "prompts",
            _ => "resources",
        };
        let req = ClientRequest::CompleteRequest(CompleteRequest::new(request));
        match self.relayed_if_granted(&ctx, kind, req).await? {
            ServerResult::CompleteResult(r) => Ok(r),
            _ => Err(other_answer()),
        }
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let token = Self::token(&ctx)?;
        let task = self.task(&token)?;
        let up = self.up(&ctx, &task, &token).await?;
        let req = ClientRequest::SetLevelRequest(SetLevelRequest::new(request));
        self.forward(&up, req, &ctx).await.map(|_| ())
    }

    /// `subscriptions/listen` (2026-07-28): what the agent asks for is acknowledged as far
    /// as the server advertises it, and relayed from a subscription of Mandate's own with
    /// the server for as long as the agent's lasts (or the task).
    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, sub: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        let ctx = sub.request_context();
        let token = Self::token(ctx)?;
        let task = self.task(&token)?;
        // Resources and prompts only as the grant allows.
        let mut filter = sub.accepted().clone();
        if !self.granted(&task, "resources") {
            filter.resources_list_changed = None;
            filter.resource_subscriptions = None;
        }
        if !self.granted(&task, "prompts") {
            filter.prompts_list_changed = None;
        }
        let up = self.up(ctx, &task, &token).await?;
        let mut theirs = up.listen(filter).await.map_err(|e| match e {
            rmcp::ServiceError::McpError(e) => e,
            e => upstream_err(format!("subscriptions/listen failed: {e}")),
        })?;
        loop {
            tokio::select! {
                n = theirs.next() => match n {
                    Ok(Some(mut n)) => {
                        if matches!(n, rmcp::model::ServerNotification::ToolListChangedNotification(_)) {
                            self.gw.forget_listing(&self.server);
                        }
                        // Mandate's own subscription id is not the agent's: the sink tags it.
                        *n.get_meta_mut() = Default::default();
                        let Ok((n, _, _)) = self.redact(n).await else { continue };
                        if sub.sink().send(n).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                () = sub.cancelled() => {
                    theirs.cancel().await.ok();
                    break;
                }
                () = task.until_ended() => {
                    theirs.cancel().await.ok();
                    break;
                }
            }
        }
        Ok(())
    }

    async fn on_roots_list_changed(&self, _ctx: NotificationContext<RoleServer>) {
        for up in self.gw.session_upstreams(&self.session) {
            up.notify_roots_list_changed().await.ok();
        }
    }
}

//! The relay between one agent session and its own session with a server: what the server
//! sends back while it works (progress, log messages, list and resource changes) reaches
//! the agent's client, and what it asks of the client (sampling, elicitation, roots) is
//! decided by policy first and then forwarded to the agent's client, on the stream of the
//! call it belongs to.

#![expect(
    deprecated,
    reason = "logging, roots and sampling are deprecated by SEP-2577 but still in the 2025-11-25 revision that clients speak: Mandate relays them"
)]

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use mandate_core::{ActionClass, CanonicalArgs, ToolName};
use mandate_policy::Outcome;
use rmcp::ErrorData;
use rmcp::model::{
    ClientCapabilities, ClientInfo, ClientResult, CreateMessageRequest, CreateMessageRequestParams,
    CreateMessageResult, ElicitRequest, ElicitRequestParams, ElicitResult, GetExtensions as _,
    GetMeta as _, ListRootsRequest, ListRootsResult, ProgressToken, RequestId, ServerNotification,
    ServerRequest,
};
use rmcp::service::{
    InboundStreamOrigin, OriginatingRequestId, Peer, PeerRequestOptions, RequestContext,
    RoleClient, RoleServer, RxJsonRpcMessage, TxJsonRpcMessage,
};
use rmcp::transport::Transport;
use serde_json::Value;

use super::McpGateway;

/// An agent request in flight on the upstream session.
struct InFlight {
    /// The agent's session (or, on the stateless revision, its request) that sent it.
    peer: Peer<RoleServer>,
    /// The agent's own request id (its stream is where related messages go).
    agent_id: RequestId,
    /// The agent's progress token, if it asked for progress.
    agent_progress: Option<ProgressToken>,
    /// The token Mandate's client put on the forwarded request.
    upstream_progress: ProgressToken,
}

/// One agent session's side of an upstream session.
pub(crate) struct RelayState {
    gw: Weak<McpGateway>,
    server: String,
    /// The agent's client that sent the newest request: where what the server sends
    /// about no request in particular goes.
    agent: std::sync::Mutex<Peer<RoleServer>>,
    capabilities: ClientCapabilities,
    client: rmcp::model::Implementation,
    /// The protocol revision the agent asked for: the server is asked for the same.
    version: Option<rmcp::model::ProtocolVersion>,
    /// The newest task token the agent sent on this session: server requests are decided
    /// under it, like the agent's own calls.
    token: std::sync::Mutex<String>,
    /// Requests in flight, by the upstream request id. Held while a request is sent and
    /// registered, so a notification about it never overtakes its registration.
    calls: tokio::sync::Mutex<HashMap<RequestId, InFlight>>,
}

/// The upstream client's handler: one per (agent session, task, server).
#[derive(Clone)]
pub(crate) struct Relay(pub Arc<RelayState>);

impl Relay {
    pub fn new(
        gw: &Arc<McpGateway>,
        server: &str,
        agent: &Peer<RoleServer>,
        capabilities: Option<ClientCapabilities>,
        token: &str,
    ) -> Self {
        let info = agent.peer_info();
        let capabilities = capabilities
            .or_else(|| info.as_ref().map(|i| i.capabilities.clone()))
            .unwrap_or_default();
        // What the agent's client can do, without extensions Mandate does not relay.
        let mut caps = ClientCapabilities::default();
        caps.sampling = capabilities.sampling;
        caps.elicitation = capabilities.elicitation;
        caps.roots = capabilities.roots;
        let client = info.as_ref().map_or_else(
            || rmcp::model::Implementation::new("mandate-gateway", env!("CARGO_PKG_VERSION")),
            |i| i.client_info.clone(),
        );
        Self(Arc::new(RelayState {
            gw: Arc::downgrade(gw),
            server: server.to_owned(),
            agent: std::sync::Mutex::new(agent.clone()),
            capabilities: caps,
            client,
            version: info.as_ref().map(|i| i.protocol_version.clone()),
            token: std::sync::Mutex::new(token.to_owned()),
            calls: tokio::sync::Mutex::new(HashMap::new()),
        }))
    }
}

impl RelayState {
    /// The task token and client of the agent's newest request.
    pub fn set_agent(&self, token: &str, agent: &Peer<RoleServer>) {
        {
            let mut t = mandate_engine::engine::lock(&self.token);
            if *t != token {
                token.clone_into(&mut t);
            }
        }
        *mandate_engine::engine::lock(&self.agent) = agent.clone();
    }

    /// The agent's client for what the server sends about no request in particular: the
    /// one whose call is in flight if there is just one, else the newest.
    async fn agent(&self) -> Peer<RoleServer> {
        let calls = self.calls.lock().await;
        let mut it = calls.values();
        if let (Some(c), None) = (it.next(), it.next()) {
            return c.peer.clone();
        }
        drop(calls);
        mandate_engine::engine::lock(&self.agent).clone()
    }

    /// Registers a request being sent upstream; `send` sends it while the registry is held.
    pub async fn register<F, Fut, T>(
        &self,
        (peer, agent_id): (&Peer<RoleServer>, RequestId),
        agent_progress: Option<ProgressToken>,
        send: F,
    ) -> Result<T, rmcp::ServiceError>
    where
        F: FnOnce() -> Fut,
        Fut:
            std::future::Future<Output = Result<(T, RequestId, ProgressToken), rmcp::ServiceError>>,
    {
        let mut calls = self.calls.lock().await;
        let (handle, id, upstream_progress) = send().await?;
        calls.insert(
            id,
            InFlight {
                peer: peer.clone(),
                agent_id,
                agent_progress,
                upstream_progress,
            },
        );
        Ok(handle)
    }

    pub async fn unregister(&self, id: &RequestId) {
        self.calls.lock().await.remove(id);
    }

    /// The agent request a server request belongs to, with its client: the one whose
    /// stream it came on, or the only one in flight.
    async fn originating(
        &self,
        origin: Option<&InboundStreamOrigin>,
    ) -> Option<(Peer<RoleServer>, RequestId)> {
        let calls = self.calls.lock().await;
        if let Some(InboundStreamOrigin::OutboundRequest(id)) = origin
            && let Some(c) = calls.get(id)
        {
            return Some((c.peer.clone(), c.agent_id.clone()));
        }
        let mut it = calls.values();
        match (it.next(), it.next()) {
            (Some(c), None) => Some((c.peer.clone(), c.agent_id.clone())),
            _ => None,
        }
    }

    /// Policy on a server's request to the agent's client: decided as a read of
    /// `<server>.<what>` under the session's task, like any call.
    pub async fn decide(&self, what: &str, params: &Value) -> Result<(), ErrorData> {
        let gw = self
            .gw
            .upgrade()
            .ok_or_else(|| ErrorData::internal_error("the gateway is stopping", None))?;
        let token = mandate_engine::engine::lock(&self.token).clone();
        let tool = ToolName::parse(&format!("{}.{what}", self.server))
            .map_err(|_| ErrorData::internal_error("ungovernable server name", None))?;
        let args = CanonicalArgs::parse(&params.to_string())
            .map_err(|e| ErrorData::invalid_params(format!("refused: {e}"), None))?;
        let call = crate::edge::DecideRequest {
            tool,
            action: ActionClass::Read,
            resource: Some(what.to_owned()),
            arguments: Some(args),
            destination: None,
            data_domain: None,
            sensitivity: None,
            approval_id: None,
            wait_secs: None,
        };
        let (call, options) = call.into_call(None);
        let d = gw
            .engine
            .decide(&token, call, options)
            .await
            .map_err(|e| super::proxy::refusal(&e.into()))?;
        if d.outcome == Outcome::Allow {
            return Ok(());
        }
        Err(ErrorData::invalid_request(
            format!(
                "Mandate refused this server's {what} request: {}",
                d.reasons.join("; ")
            ),
            Some(serde_json::json!({ "code": "denied_by_policy", "decision_id": d.decision_id })),
        ))
    }

    /// Sends `request` to the agent's client on the stream of the call it belongs to.
    async fn ask_agent(
        self: &Arc<Self>,
        mut request: ServerRequest,
        origin: Option<&InboundStreamOrigin>,
    ) -> Result<ClientResult, ErrorData> {
        let agent = match self.originating(origin).await {
            Some((peer, id)) => {
                request.extensions_mut().insert(OriginatingRequestId(id));
                peer
            }
            None => mandate_engine::engine::lock(&self.agent).clone(),
        };
        // A task of its own: inside this handler rmcp would mark the request as coming
        // from the server's request id, which means nothing to the agent's session.
        #[expect(
            clippy::disallowed_methods,
            reason = "one task per server request relayed, bounded by the upstream session; it ends with the agent's answer or its session"
        )]
        let sent = tokio::spawn(async move {
            let handle = agent
                .send_request_with_option(request, PeerRequestOptions::no_options())
                .await?;
            handle.await_response().await
        });
        match sent.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(rmcp::ServiceError::McpError(e))) => Err(e),
            Ok(Err(e)) => Err(ErrorData::internal_error(
                format!("the agent's client did not answer: {e}"),
                None,
            )),
            Err(_) => Err(ErrorData::internal_error("relay failed", None)),
        }
    }

    /// The revision the agent asked for.
    pub fn version(&self) -> Option<rmcp::model::ProtocolVersion> {
        self.version.clone()
    }

    /// What the server sends towards the agent, as the agent may see it: masked of the
    /// secrets Mandate gave the server and, from an `untrusted_content` server, only once
    /// the task's taint is durable (as for answers). `None`: it is not relayed.
    async fn vetted<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        value: T,
    ) -> Option<T> {
        let gw = self.gateway()?;
        let server = gw.servers.get(&self.server)?;
        let (value, _, _) = gw.redact(server, value).await.ok()?;
        if server.untrusted_content {
            let token = mandate_engine::engine::lock(&self.token).clone();
            let task = gw.engine.task_for_token(&token).ok()?;
            gw.engine.taint(&task, &self.server).await.ok()?;
        }
        Some(value)
    }

    fn gateway(&self) -> Option<Arc<McpGateway>> {
        self.gw.upgrade()
    }
}

impl rmcp::ClientHandler for Relay {
    fn get_info(&self) -> ClientInfo {
        let mut info = ClientInfo::new(self.0.capabilities.clone(), self.0.client.clone());
        if let Some(v) = &self.0.version {
            info.protocol_version = v.clone();
        }
        info
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        ctx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let v = serde_json::to_value(&params).unwrap_or(Value::Null);
        self.0.decide("sampling", &v).await?;
        let params = self.0.vetted(params).await.ok_or_else(withheld)?;
        let origin = ctx.extensions.get::<InboundStreamOrigin>();
        match self
            .0
            .ask_agent(
                ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params)),
                origin,
            )
            .await?
        {
            ClientResult::CreateMessageResult(r) => Ok(*r),
            _ => Err(ErrorData::internal_error(
                "the agent's client answered something else",
                None,
            )),
        }
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        ctx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let v = serde_json::to_value(&params).unwrap_or(Value::Null);
        self.0.decide("elicitation", &v).await?;
        let params = self.0.vetted(params).await.ok_or_else(withheld)?;
        let origin = ctx.extensions.get::<InboundStreamOrigin>();
        match self
            .0
            .ask_agent(
                ServerRequest::ElicitRequest(ElicitRequest::new(params)),
                origin,
            )
            .await?
        {
            ClientResult::ElicitResult(r) => Ok(r),
            _ => Err(ErrorData::internal_error(
                "the agent's client answered something else",
                None,
            )),
        }
    }

    async fn list_roots(
        &self,
        ctx: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.0
            .decide("roots", &Value::Object(Default::default()))
            .await?;
        let origin = ctx.extensions.get::<InboundStreamOrigin>();
        match self
            .0
            .ask_agent(
                ServerRequest::ListRootsRequest(ListRootsRequest::default()),
                origin,
            )
            .await?
        {
            ClientResult::ListRootsResult(r) => Ok(r),
            _ => Err(ErrorData::internal_error(
                "the agent's client answered something else",
                None,
            )),
        }
    }
}

impl RelayState {
    /// Relays what the server sends about its work, in the order it sent it: called from
    /// the transport as each message arrives, so everything the server sent about a call
    /// reaches the agent before the call's answer does (rmcp hands notifications to tasks
    /// of their own, which an answer can overtake).
    async fn relay_notification(&self, n: &ServerNotification) {
        let agent = match n {
            ServerNotification::ProgressNotification(p) => {
                let to = {
                    let calls = self.calls.lock().await;
                    calls
                        .values()
                        .find(|c| c.upstream_progress == p.params.progress_token)
                        .and_then(|c| Some((c.peer.clone(), c.agent_progress.clone()?)))
                };
                // Progress the agent did not ask for, or about nothing it asked, is dropped.
                let Some((peer, token)) = to else { return };
                let Some(mut params) = self.vetted(p.params.clone()).await else {
                    return;
                };
                params.progress_token = token;
                bounded(peer.notify_progress(params)).await;
                return;
            }
            ServerNotification::ToolListChangedNotification(_) => {
                // The next listing asks the server again and pins what changed (held until
                // a human approves it) before the agent, told now, lists again.
                if let Some(gw) = self.gateway() {
                    gw.forget_listing(&self.server);
                }
                self.agent().await
            }
            ServerNotification::LoggingMessageNotification(_)
            | ServerNotification::ResourceUpdatedNotification(_)
            | ServerNotification::ResourceListChangedNotification(_)
            | ServerNotification::PromptListChangedNotification(_) => self.agent().await,
            _ => return,
        };
        match n {
            ServerNotification::LoggingMessageNotification(m) => {
                if let Some(params) = self.vetted(m.params.clone()).await {
                    bounded(agent.notify_logging_message(params)).await;
                }
            }
            ServerNotification::ResourceUpdatedNotification(m) => {
                if let Some(params) = self.vetted(m.params.clone()).await {
                    bounded(agent.notify_resource_updated(params)).await;
                }
            }
            ServerNotification::ResourceListChangedNotification(_) => {
                bounded(agent.notify_resource_list_changed()).await;
            }
            ServerNotification::PromptListChangedNotification(_) => {
                bounded(agent.notify_prompt_list_changed()).await;
            }
            ServerNotification::ToolListChangedNotification(_) => {
                bounded(agent.notify_tool_list_changed()).await;
            }
            _ => {}
        }
    }
}

/// Waits for a notification to be handed to the agent's session, at most 5 s (an agent
/// that reads nothing slows its own server session, not others).
async fn bounded<F: std::future::Future>(f: F) {
    tokio::time::timeout(std::time::Duration::from_secs(5), f)
        .await
        .ok();
}

/// The upstream transport, watched: notifications are relayed in arrival order, before
/// anything after them is handed on.
pub(crate) struct Ordered<T> {
    inner: T,
    relay: Arc<RelayState>,
}

impl<T> Ordered<T> {
    pub fn new(inner: T, relay: &Relay) -> Self {
        Self {
            inner,
            relay: Arc::clone(&relay.0),
        }
    }
}

impl<T: Transport<RoleClient> + 'static> Transport<RoleClient> for Ordered<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let msg = self.inner.receive().await?;
        // What belongs to a subscription (2026-07-28 `subscriptions/listen`) reaches the
        // agent through the subscription Mandate relays.
        if let rmcp::model::JsonRpcMessage::Notification(n) = &msg
            && n.notification.get_meta().subscription_id().is_none()
        {
            self.relay.relay_notification(&n.notification).await;
        }
        Some(msg)
    }

    fn close(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

fn withheld() -> ErrorData {
    ErrorData::internal_error(
        "Mandate withheld this request from the agent: it could not be cleaned of secrets or the task's taint not recorded",
        None,
    )
}

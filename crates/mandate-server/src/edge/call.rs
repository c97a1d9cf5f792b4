//! The wire form of one tool call, shared by every adapter that receives calls as JSON
//! (`/v1/decide`, AuthZEN, ext_authz) or builds them (the gateways): one strict shape,
//! turned into the engine's `Call` and `DecideOptions`.

use std::time::Duration;

use axum::http::HeaderMap;
use mandate_core::{
    ActionClass, CanonicalArgs, DataDomain, Destination, Sensitivity, ToolName, TraceParent,
};
use mandate_engine::{Call, DecideOptions};
use serde::Deserialize;
use utoipa::ToSchema;

/// One attempted tool call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// The tool.
    pub tool: ToolName,
    /// Its action class.
    pub action: ActionClass,
    /// What the tool acts on (a ticket id, a path, a table).
    #[serde(default)]
    #[schema(max_length = 1024, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub resource: Option<String>,
    /// The call's arguments: canonicalised, duplicate keys refused.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<CanonicalArgs>,
    /// Where the call sends data (host or host:port).
    #[serde(default)]
    pub destination: Option<Destination>,
    /// The data domain it touches.
    #[serde(default)]
    pub data_domain: Option<DataDomain>,
    /// Sensitivity of the data (default `internal`).
    #[serde(default)]
    pub sensitivity: Option<Sensitivity>,
    /// An approval given for exactly this call: used once if it is approved.
    #[serde(default)]
    #[schema(max_length = 64)]
    pub approval_id: Option<String>,
    /// When the call needs an approval, wait up to this many seconds for it (long-poll;
    /// at most the server's limit, default 0: answer at once).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 25)]
    pub wait_secs: Option<u64>,
}

impl DecideRequest {
    /// The engine's call and options, with the caller's trace context; the engine checks
    /// the bounds.
    pub fn into_call(self, trace: Option<TraceParent>) -> (Call, DecideOptions) {
        let call = Call {
            tool: self.tool,
            action: self.action,
            resource: self.resource.unwrap_or_default(),
            args: self.arguments.unwrap_or_default(),
            destination: self.destination,
            data_domain: self.data_domain,
            sensitivity: self.sensitivity.unwrap_or_default(),
        };
        let options = DecideOptions {
            approval_id: self.approval_id,
            wait: Duration::from_secs(self.wait_secs.unwrap_or(0)),
            trace,
            point: None,
        };
        (call, options)
    }
}

/// The caller's W3C trace context: exactly one valid `traceparent` header, else none (a
/// repeated or malformed header starts a new trace, as the specification says; the call
/// is not refused for it).
pub fn traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all("traceparent").iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    TraceParent::parse(first.to_str().ok()?)
}

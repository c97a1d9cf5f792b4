//! Mandate's control plane adapters and wiring: the HTTP API, AuthZEN, Envoy ext_authz,
//! the HTTP and MCP gateways, the listener, and the server's life cycle. Every decision is
//! the engine's (`mandate-engine`); this crate parses wire formats into its typed values and
//! maps its errors onto each protocol.
//!
//! Invariants:
//! - Fail closed: a store, audit or policy failure on the decision path is a refusal or a
//!   deny, never an allow. An allow is returned only after its audit event is durable.
//! - Revocation is immediate: a task is marked ended in memory before its store
//!   transition, so no call is allowed after the revoke is acknowledged.
//! - Input is parsed once at the edge into typed values; handlers see only those.

pub mod api;
pub mod edge;
pub mod error;
pub mod ext_authz;
pub mod gateway;
mod listener;
pub mod mcp;
mod server;
pub mod tls;

pub use mandate_engine::{
    ApprovalRef, Call, DecideOptions, Engine, Evaluated, LiveTask, ServerConfig, checkpoints,
    config, containment, engine, otlp, secrets, ssf, verify, webhook, workload,
};
pub use server::{RunningServer, Server};

//! Mandate's control plane: the HTTP API, the engine behind it (keys, policy bundle, live
//! tasks, decide path), group-committed audit, and the server's life cycle.
//!
//! Invariants:
//! - Fail closed: a store, audit or policy failure on the decision path is a refusal or a
//!   deny, never an allow. An allow is returned only after its audit event is durable.
//! - Revocation is immediate: a task is marked ended in memory before its store
//!   transition, so no call is allowed after the revoke is acknowledged.
//! - Input is parsed once at the edge into typed values; handlers see only those.

pub mod api;
mod approvals;
mod audit_writer;
pub mod config;
pub mod engine;
pub mod error;
pub mod ext_authz;
pub mod gateway;
mod listener;
pub mod mcp;
pub mod secrets;
mod server;
pub mod verify;
pub mod webhook;

pub use approvals::ApprovalRef;
pub use config::ServerConfig;
pub use engine::{Call, Engine, Evaluated, LiveTask};
pub use server::{RunningServer, Server};

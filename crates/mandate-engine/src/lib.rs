//! Mandate's decision core, with no HTTP, gRPC or MCP types: the engine (keys, policy
//! bundle, live tasks, the decide path), task starts and ends, approvals and the humans who
//! give them, sealed secrets, MCP tool pins, and the group-committed audit writer.
//! Adapters (the HTTP API, AuthZEN, ext_authz, the HTTP and MCP gateways) live in
//! `mandate-server` and call in here; they map [`Error`]'s [`Kind`] onto their protocol.
//!
//! Invariants:
//! - Fail closed: a store, audit or policy failure on the decision path is a refusal or a
//!   deny, never an allow. An allow is returned only after its audit event is durable.
//! - Revocation is immediate: a task is marked ended in memory before its store
//!   transition, so no call is allowed after the revoke is acknowledged.
//! - Input arrives parsed into typed values; the engine never sees wire formats.

pub mod agents;
pub mod approvals;
pub mod audit_writer;
pub mod checkpoints;
pub mod config;
pub mod containment;
pub mod controls;
pub mod decide;
pub mod delegation;
pub mod engine;
pub mod error;
pub mod otlp;
pub mod pins;
pub mod plans;
pub mod secrets;
pub mod sender;
pub mod ssf;
mod sync;
pub mod tail;
pub mod tasks;
pub mod verify;
pub mod webhook;
pub mod workload;

pub use approvals::{APPROVAL_DENIED_POLICY, ApprovalRef};
pub use audit_writer::{AuditError, AuditWriter, CommitObserver, StoreHealth};
pub use config::ServerConfig;
pub use decide::{DecideOptions, Decided};
pub use delegation::{Delegated, SubTask};
pub use engine::{Call, Engine, Evaluated, LiveTask};
pub use error::{Error, Kind};
pub use tasks::{BreakGlass, BreakGlassIssued, Started, TaskStart, Transitioned};

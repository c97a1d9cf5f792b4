//! Mandate's domain vocabulary: agents, tasks, scopes, grants, canonical arguments,
//! limits and the injected clock.
//!
//! Invariant: this crate does no IO. Every value that crosses a trust boundary is parsed
//! here once into a typed value (an [`AgentName`], a [`ToolName`], [`CanonicalArgs`]…),
//! and only typed values travel inward.

mod agent;
mod approval;
mod args;
mod clock;
mod decision;
mod human;
mod ids;
mod limits;
mod scope;
mod task;
mod trace;

pub use agent::{AgentStatus, AttestationRule, RiskTier};
pub use approval::{ApprovalKind, ApprovalState, ApproverRole};
pub use args::{
    ArgsError, CanonicalArgs, MAX_DOCUMENT_DEPTH, StrictJsonError, canonical_json,
    from_slice_strict, strict_json,
};
pub use clock::{Clock, ManualClock, SystemClock, UnixMillis};
pub use decision::{ApprovalTerms, Decision, ItemOutcome, Obligation, Outcome};
pub use human::{HumanId, HumanIdError};
pub use ids::{
    AgentName, IdError, IdGen, RandomIds, RngFailed, SequentialIds, SpiffeId, TrustDomain, hex,
    random_id, random_secret, sha256_hex,
};
pub use limits::Limits;
pub use scope::{
    ActionClass, DataDomain, Destination, Grant, OutsideGrant, RequestedScope, ScopeError,
    Sensitivity, ToolName,
};
pub use task::{Delegation, DelegationLink, TaskState, TransitionError, widening};
pub use trace::{CallSpan, SpanIds, SpanRecord, TraceParent, span_id_for, task_trace_id};

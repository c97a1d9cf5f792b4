//! Mandate's policy layer: the built-in Cedar schema, policy bundles loaded from a
//! directory and validated as a unit, and the sliced evaluator that turns a typed request
//! into a [`Decision`].
//!
//! Invariants:
//! - Decisions are total: every evaluation returns a [`Decision`], never an error a caller
//!   could mistake for permission. No applicable permit is a deny; forbid beats permit;
//!   any evaluation error in a policy that could apply is a deny.
//! - Slicing never changes an answer: a policy is left out of a request's slice only when
//!   its scope (action, or resource equality) proves it cannot apply to that request.
//! - Obligations (approval, TTL caps) come from policy annotations, never from Rust.

mod arguments;
mod bundle;
mod catalog;
mod decide;
mod derived;
mod explain;
mod facts;
mod history;
pub mod testing;

pub use arguments::{ArgError, ArgSchema, IpFamily, StringFormat};
pub use bundle::{Bundle, BundleError, Diagnostic, MAX_APPROVALS, SCHEMA_TEXT};
pub use catalog::{CATALOG_FILE, Risk, ToolCatalog, ToolEntry};
pub use decide::{
    APPROVER_GROUP_CONFLICT_POLICY, ApprovalTerms, CATALOG_POLICY, CallRequest,
    DEFAULT_APPROVER_GROUP, Decision, DelegateRequest, ItemOutcome, Obligation, Outcome,
    StartDecision, StartRequest, history_record,
};
pub use derived::SqlFacts;
pub use explain::{Explanation, PolicyTrace, Trace};
pub use facts::{AgentFacts, TaskEntities, TaskFacts, delegation_record};
pub use history::History;

/// The pseudo policy id reported when a call falls outside its task's grant.
pub const GRANT_CEILING_POLICY: &str = "mandate:grant-ceiling";
/// The pseudo policy id reported when nothing permitted an action.
pub const DEFAULT_DENY_POLICY: &str = "mandate:default-deny";
/// The pseudo policy id reported when a call's arguments do not fit the catalog's schema.
pub const ARGUMENTS_POLICY: &str = "mandate:arguments";

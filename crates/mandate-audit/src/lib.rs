//! Mandate's audit chain: the shape of an event, how each event is bound to the one
//! before it, and how a chain is verified.
//!
//! Invariant: this crate does no IO. Storage appends events it builds here
//! ([`link`]) inside the same transaction as the change they record; verification
//! ([`Verifier`]) walks any sequence of stored events and names the first bad one.
//!
//! Each event's hash is SHA-256 over the canonical JSON of its content and the previous
//! event's hash, so editing, deleting or reordering any record breaks every hash after it.
//! The head row (last sequence number and hash), written in the same transaction as every
//! append, catches truncation of the tail.

use std::fmt;

mod body;
pub mod check;
mod examples;
pub mod merkle;
pub mod note;

pub use body::*;
pub use examples::{ALL_KINDS, example};

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, by stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventKind {
    /// An agent was registered.
    #[serde(rename = "agent.registered")]
    AgentRegistered,
    /// An agent's status changed (quarantine, offboarding, release).
    #[serde(rename = "agent.status_changed")]
    AgentStatusChanged,
    /// A join token was issued.
    #[serde(rename = "join_token.issued")]
    JoinTokenIssued,
    /// An agent attested and received an identity token.
    #[serde(rename = "agent.attested")]
    AgentAttested,
    /// An agent renewed its identity token with a valid one.
    #[serde(rename = "identity.renewed")]
    IdentityRenewed,
    /// An attestation was refused.
    #[serde(rename = "attestation.refused")]
    AttestationRefused,
    /// A task started (or was refused: see the outcome in its data).
    #[serde(rename = "task.started")]
    TaskStarted,
    /// A task start was refused.
    #[serde(rename = "task.refused")]
    TaskRefused,
    /// A task was completed by its agent.
    #[serde(rename = "task.completed")]
    TaskCompleted,
    /// A task was revoked.
    #[serde(rename = "task.revoked")]
    TaskRevoked,
    /// A policy change narrowed a live task's grant.
    #[serde(rename = "task.grant_reduced")]
    TaskGrantReduced,
    /// A task ran out of time.
    #[serde(rename = "task.expired")]
    TaskExpired,
    /// A per-call decision.
    #[serde(rename = "decision")]
    Decision,
    /// A call refused before any decision (bad token, inactive task…).
    #[serde(rename = "call.refused")]
    CallRefused,
    /// A policy bundle started enforcing.
    #[serde(rename = "policy.loaded")]
    PolicyLoaded,
    /// A candidate bundle was rejected; the previous one stays.
    #[serde(rename = "policy.rejected")]
    PolicyRejected,
    /// A shadow bundle decided a call differently from the enforcing one.
    #[serde(rename = "policy.shadow_disagreement")]
    ShadowDisagreement,
    /// The signing key was rotated.
    #[serde(rename = "keys.rotated")]
    KeysRotated,
    /// The server started.
    #[serde(rename = "server.started")]
    ServerStarted,
    /// A pending task was approved and became active.
    #[serde(rename = "task.activated")]
    TaskActivated,
    /// A decision needed a human: an approval request was opened.
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    /// One approver approved a request that needs more than one.
    #[serde(rename = "approval.vote")]
    ApprovalVote,
    /// A request gathered its approvals.
    #[serde(rename = "approval.approved")]
    ApprovalApproved,
    /// An approver refused a request.
    #[serde(rename = "approval.denied")]
    ApprovalDenied,
    /// A request or an unused approval ran out of time.
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    /// An approval stopped being valid (task ended, policy changed).
    #[serde(rename = "approval.invalidated")]
    ApprovalInvalidated,
    /// An approval was used for the action it was bound to.
    #[serde(rename = "approval.consumed")]
    ApprovalConsumed,
    /// A human approver was added.
    #[serde(rename = "approver.added")]
    ApproverAdded,
    /// A human approver was disabled.
    #[serde(rename = "approver.removed")]
    ApproverRemoved,
    /// An approver group's notification webhook changed.
    #[serde(rename = "approver_group.updated")]
    ApproverGroupUpdated,
    /// A human declared break-glass: an emergency grant.
    #[serde(rename = "break_glass.declared")]
    BreakGlassDeclared,
    /// A break-glass use was reviewed afterwards and closed.
    #[serde(rename = "break_glass.reviewed")]
    BreakGlassReviewed,
    /// A human's approve, deny, break-glass or review attempt was refused.
    #[serde(rename = "human.refused")]
    HumanRefused,
    /// An upstream secret was stored or replaced (the value is never recorded).
    #[serde(rename = "secret.put")]
    SecretPut,
    /// An upstream secret was deleted.
    #[serde(rename = "secret.deleted")]
    SecretDeleted,
    /// Every stored secret was re-sealed under the current master key.
    #[serde(rename = "secrets.resealed")]
    SecretsResealed,
    /// What the upstream answered to an allowed gateway call: status, bytes, duration,
    /// and whether a secret had to be redacted from the response.
    #[serde(rename = "gateway.result")]
    GatewayResult,
    /// MCP tool definitions were pinned on first sight.
    #[serde(rename = "tool.pinned")]
    ToolPinned,
    /// An MCP server showed a new, changed or shadowing tool: held until approved.
    #[serde(rename = "tool.changed")]
    ToolChanged,
    /// An admin approved a held tool definition.
    #[serde(rename = "tool.approved")]
    ToolApproved,
    /// An MCP request that is not a tool call (listing, reading a resource, a prompt).
    #[serde(rename = "mcp.request")]
    McpRequest,
    /// Mandate started a session with an MCP server again after the last one closed (a
    /// stdio server that exited, a remote one that dropped it), or failed to start one.
    #[serde(rename = "mcp_server.started")]
    McpServerStarted,
    /// Content from an untrusted source entered a task (recorded before it reaches the agent).
    #[serde(rename = "task.tainted")]
    TaskTainted,
    /// The store commits again after failing (full disk, I/O error).
    #[serde(rename = "store.recovered")]
    StoreRecovered,
    /// A task delegated a sub-task to an agent.
    #[serde(rename = "task.delegated")]
    TaskDelegated,
    /// A delegation was refused.
    #[serde(rename = "delegation.refused")]
    DelegationRefused,
    /// A containment rule fired on what an agent or task did, and its response ran.
    #[serde(rename = "containment.fired")]
    ContainmentFired,
    /// A running task declared a new plan (purpose and scope).
    #[serde(rename = "task.redeclared")]
    TaskRedeclared,
}

impl EventKind {
    /// The stable name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentRegistered => "agent.registered",
            Self::AgentStatusChanged => "agent.status_changed",
            Self::JoinTokenIssued => "join_token.issued",
            Self::AgentAttested => "agent.attested",
            Self::IdentityRenewed => "identity.renewed",
            Self::AttestationRefused => "attestation.refused",
            Self::TaskStarted => "task.started",
            Self::TaskRefused => "task.refused",
            Self::TaskCompleted => "task.completed",
            Self::TaskRevoked => "task.revoked",
            Self::TaskGrantReduced => "task.grant_reduced",
            Self::TaskExpired => "task.expired",
            Self::Decision => "decision",
            Self::CallRefused => "call.refused",
            Self::PolicyLoaded => "policy.loaded",
            Self::PolicyRejected => "policy.rejected",
            Self::ShadowDisagreement => "policy.shadow_disagreement",
            Self::KeysRotated => "keys.rotated",
            Self::ServerStarted => "server.started",
            Self::TaskActivated => "task.activated",
            Self::ApprovalRequested => "approval.requested",
            Self::ApprovalVote => "approval.vote",
            Self::ApprovalApproved => "approval.approved",
            Self::ApprovalDenied => "approval.denied",
            Self::ApprovalExpired => "approval.expired",
            Self::ApprovalInvalidated => "approval.invalidated",
            Self::ApprovalConsumed => "approval.consumed",
            Self::ApproverAdded => "approver.added",
            Self::ApproverRemoved => "approver.removed",
            Self::ApproverGroupUpdated => "approver_group.updated",
            Self::BreakGlassDeclared => "break_glass.declared",
            Self::BreakGlassReviewed => "break_glass.reviewed",
            Self::HumanRefused => "human.refused",
            Self::SecretPut => "secret.put",
            Self::SecretDeleted => "secret.deleted",
            Self::SecretsResealed => "secrets.resealed",
            Self::GatewayResult => "gateway.result",
            Self::ToolPinned => "tool.pinned",
            Self::ToolChanged => "tool.changed",
            Self::ToolApproved => "tool.approved",
            Self::McpRequest => "mcp.request",
            Self::McpServerStarted => "mcp_server.started",
            Self::TaskTainted => "task.tainted",
            Self::StoreRecovered => "store.recovered",
            Self::TaskDelegated => "task.delegated",
            Self::DelegationRefused => "delegation.refused",
            Self::ContainmentFired => "containment.fired",
            Self::TaskRedeclared => "task.redeclared",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event before it has a place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// When it happened (unix ms).
    pub ts_ms: i64,
    /// The agent concerned, if any.
    pub agent: Option<String>,
    /// The task concerned, if any.
    pub task_id: Option<String>,
    /// What happened, typed. Must never hold a secret.
    pub body: Body,
}

impl NewEvent {
    /// What happened, by stable name.
    pub fn kind(&self) -> EventKind {
        self.body.kind()
    }
}

/// A stored event whose body does not read as its kind: written by another version, or
/// edited outside Mandate.
#[derive(Debug, thiserror::Error)]
#[error("audit record {seq} ({kind}) does not read as a {kind} event: {source}")]
pub struct BodyError {
    /// The record.
    pub seq: i64,
    /// Its stored kind.
    pub kind: String,
    /// Why.
    pub source: serde_json::Error,
}

/// An event in the chain, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When it happened (unix ms).
    pub ts_ms: i64,
    /// Stable event name.
    pub kind: String,
    /// The agent concerned.
    pub agent: Option<String>,
    /// The task concerned.
    pub task_id: Option<String>,
    /// Details.
    pub data: Value,
    /// Hash of the previous event (or the genesis hash).
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

impl Event {
    /// The event's typed body, read back from what was stored.
    pub fn body(&self) -> Result<Body, BodyError> {
        Body::from_parts(&self.kind, &self.data).map_err(|source| BodyError {
            seq: self.seq,
            kind: self.kind.clone(),
            source,
        })
    }
}

/// The body's details as stored: serialised once, here.
fn body_data(body: &Body) -> Value {
    match serde_json::to_value(body) {
        Ok(Value::Object(mut tagged)) => tagged.remove("data").unwrap_or(Value::Null),
        // A body is a struct of plain data: its serialisation cannot fail.
        _ => Value::Null,
    }
}

/// Lowercase hex, without a formatting call per byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

/// Writes canonical JSON (`mandate_core::canonical_json`: object keys in byte order, no
/// spaces) into a digest or a buffer, without building the document.
struct Canon<W: std::io::Write>(W);

impl<W: std::io::Write> Canon<W> {
    fn raw(&mut self, b: &str) {
        // Writing into a digest or a Vec cannot fail.
        let _ = self.0.write_all(b.as_bytes());
    }

    /// A JSON string or scalar, as serde_json writes it (the canonical form's escaping).
    fn scalar<T: Serialize + ?Sized>(&mut self, v: &T) {
        // A str or number always serialises.
        let _ = serde_json::to_writer(&mut self.0, v);
    }

    fn canonical(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                self.raw("{");
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        self.raw(",");
                    }
                    self.scalar(k.as_str());
                    self.raw(":");
                    self.canonical(item);
                }
                self.raw("}");
            }
            Value::Array(items) => {
                self.raw("[");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.raw(",");
                    }
                    self.canonical(item);
                }
                self.raw("]");
            }
            scalar => self.scalar(scalar),
        }
    }
}

/// The canonical JSON text of a value: what the chain hashes, and what the store keeps.
pub fn canonical_text(v: &Value) -> String {
    let mut c = Canon(Vec::with_capacity(256));
    c.canonical(v);
    // serde_json writes UTF-8.
    String::from_utf8(c.0).unwrap_or_default()
}

/// The chain hash of an event's content: SHA-256 over the canonical JSON of
/// `{agent, data, kind, prev_hash, seq, task_id, ts_ms}` (keys in byte order, no spaces),
/// written without building the document.
pub fn event_hash(
    seq: i64,
    ts_ms: i64,
    kind: &str,
    agent: Option<&str>,
    task_id: Option<&str>,
    data: &Value,
    prev_hash: &str,
) -> String {
    hash_with(seq, ts_ms, kind, agent, task_id, prev_hash, |c| {
        c.canonical(data)
    })
}

/// [`event_hash`] with the data given as its canonical text ([`canonical_text`]): equal
/// to it exactly when `data` is that text, so a record stored canonically is checked by
/// hashing its bytes, without parsing them.
pub fn event_hash_text(
    seq: i64,
    ts_ms: i64,
    kind: &str,
    agent: Option<&str>,
    task_id: Option<&str>,
    data: &str,
    prev_hash: &str,
) -> String {
    hash_with(seq, ts_ms, kind, agent, task_id, prev_hash, |c| c.raw(data))
}

fn hash_with(
    seq: i64,
    ts_ms: i64,
    kind: &str,
    agent: Option<&str>,
    task_id: Option<&str>,
    prev_hash: &str,
    data: impl FnOnce(&mut Canon<Vec<u8>>),
) -> String {
    // The document is written into one buffer and hashed at once: many small digest
    // updates cost more than the copy.
    let mut h = Canon(Vec::with_capacity(1024));
    h.raw("{\"agent\":");
    h.scalar(&agent);
    h.raw(",\"data\":");
    data(&mut h);
    h.raw(",\"kind\":");
    h.scalar(kind);
    h.raw(",\"prev_hash\":");
    h.scalar(prev_hash);
    h.raw(",\"seq\":");
    h.scalar(&seq);
    h.raw(",\"task_id\":");
    h.scalar(&task_id);
    h.raw(",\"ts_ms\":");
    h.scalar(&ts_ms);
    h.raw("}");
    hex(digest::digest(&digest::SHA256, &h.0).as_ref())
}

/// Places `new` after the event with `(prev_seq, prev_hash)`.
pub fn link(new: NewEvent, prev_seq: i64, prev_hash: &str) -> Event {
    link_text(new, prev_seq, prev_hash).0
}

/// [`link`], with the data's canonical text: serialised once, hashed as those bytes, and
/// what the store keeps (so verification can hash the stored bytes as they are).
pub fn link_text(new: NewEvent, prev_seq: i64, prev_hash: &str) -> (Event, String) {
    let seq = prev_seq.saturating_add(1);
    let kind = new.kind().as_str();
    let data = body_data(&new.body);
    let text = canonical_text(&data);
    let hash = event_hash_text(
        seq,
        new.ts_ms,
        kind,
        new.agent.as_deref(),
        new.task_id.as_deref(),
        &text,
        prev_hash,
    );
    let e = Event {
        seq,
        ts_ms: new.ts_ms,
        kind: kind.to_owned(),
        agent: new.agent,
        task_id: new.task_id,
        data,
        prev_hash: prev_hash.to_owned(),
        hash,
    };
    (e, text)
}

/// A record as stored: its data as the stored JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the chain.
    pub seq: i64,
    /// When (unix ms).
    pub ts_ms: i64,
    /// Stable event name.
    pub kind: String,
    /// The agent concerned.
    pub agent: Option<String>,
    /// The task concerned.
    pub task_id: Option<String>,
    /// The details, as stored (canonical JSON for records written since canonical storage).
    pub data: String,
    /// The hash of the previous record.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

impl StoredEvent {
    /// Whether its content matches its hash: the stored bytes hashed as they are, and if
    /// that differs (records stored before canonical storage, or reformatted), the data
    /// parsed and hashed canonically, as [`event_hash`] defines it.
    pub fn content_matches(&self) -> bool {
        let direct = event_hash_text(
            self.seq,
            self.ts_ms,
            &self.kind,
            self.agent.as_deref(),
            self.task_id.as_deref(),
            &self.data,
            &self.prev_hash,
        );
        if direct == self.hash {
            return true;
        }
        serde_json::from_str::<Value>(&self.data).is_ok_and(|data| {
            event_hash(
                self.seq,
                self.ts_ms,
                &self.kind,
                self.agent.as_deref(),
                self.task_id.as_deref(),
                &data,
                &self.prev_hash,
            ) == self.hash
        })
    }
}

/// The first thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, thiserror::Error)]
#[error("audit chain broken at record {seq}: {problem}")]
pub struct ChainBreak {
    /// The first bad record (or the first missing one).
    pub seq: i64,
    /// What is wrong with it.
    pub problem: String,
}

/// Walks a chain in sequence order.
#[derive(Debug)]
pub struct Verifier {
    next_seq: i64,
    prev_hash: String,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
        }
    }
}

impl Verifier {
    /// A verifier expecting record 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next record.
    pub fn feed(&mut self, e: &Event) -> Result<(), ChainBreak> {
        self.feed_with(e.seq, &e.prev_hash, &e.hash, || {
            event_hash(
                e.seq,
                e.ts_ms,
                &e.kind,
                e.agent.as_deref(),
                e.task_id.as_deref(),
                &e.data,
                &e.prev_hash,
            ) == e.hash
        })
    }

    /// Checks the next record as stored (see [`StoredEvent::content_matches`]).
    pub fn feed_stored(&mut self, e: &StoredEvent) -> Result<(), ChainBreak> {
        self.feed_with(e.seq, &e.prev_hash, &e.hash, || e.content_matches())
    }

    fn feed_with(
        &mut self,
        seq: i64,
        prev_hash: &str,
        hash: &str,
        content_matches: impl FnOnce() -> bool,
    ) -> Result<(), ChainBreak> {
        let brk = |seq: i64, problem: String| Err(ChainBreak { seq, problem });
        if seq > self.next_seq {
            return brk(
                self.next_seq,
                format!("record is missing (next stored record is {seq}): deleted"),
            );
        }
        if seq < self.next_seq {
            return brk(seq, "record is out of order or duplicated".into());
        }
        if prev_hash != self.prev_hash {
            return brk(
                seq,
                "its previous-hash does not match the record before it: records were deleted, inserted or reordered".into(),
            );
        }
        if !content_matches() {
            return brk(
                seq,
                "its content does not match its hash: the record was edited".into(),
            );
        }
        self.next_seq = seq.saturating_add(1);
        hash.clone_into(&mut self.prev_hash);
        Ok(())
    }

    /// Takes the next record as one this process's own writer just linked and committed:
    /// its place in the chain (sequence, previous hash) is checked, its content is not
    /// hashed again (the writer computed that hash from the typed event a moment ago).
    pub fn feed_own(&mut self, seq: i64, prev_hash: &str, hash: &str) -> Result<(), ChainBreak> {
        if seq != self.next_seq || prev_hash != self.prev_hash {
            return Err(ChainBreak {
                seq,
                problem: "a record the writer committed does not follow the one before it".into(),
            });
        }
        self.next_seq = seq.saturating_add(1);
        hash.clone_into(&mut self.prev_hash);
        Ok(())
    }

    /// Checks the end of the chain against the head recorded with the last append.
    pub fn finish(&self, head_seq: i64, head_hash: &str) -> Result<i64, ChainBreak> {
        let last = self.next_seq.saturating_sub(1);
        if head_seq > last {
            return Err(ChainBreak {
                seq: last.saturating_add(1),
                problem: format!(
                    "the chain ends at record {last} but its head says {head_seq}: records were truncated"
                ),
            });
        }
        if head_seq < last {
            return Err(ChainBreak {
                seq: head_seq.saturating_add(1),
                problem: format!(
                    "records after the recorded head ({head_seq}) were appended outside Mandate"
                ),
            });
        }
        if head_hash != self.prev_hash {
            return Err(ChainBreak {
                seq: last,
                problem: "the last record's hash does not match the recorded head".into(),
            });
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for i in 0..n {
            let (seq, prev) = out
                .last()
                .map_or((0, GENESIS_HASH.to_owned()), |e| (e.seq, e.hash.clone()));
            out.push(link(
                NewEvent {
                    ts_ms: 1000 + i,
                    agent: Some("bot".into()),
                    task_id: Some("tsk_1".into()),
                    body: Body::JoinTokenIssued(JoinTokenIssued { expires_at_ms: i }),
                },
                seq,
                &prev,
            ));
        }
        out
    }

    fn verify(events: &[Event], head: (i64, &str)) -> Result<i64, ChainBreak> {
        let mut v = Verifier::new();
        for e in events {
            v.feed(e)?;
        }
        v.finish(head.0, head.1)
    }

    #[test]
    fn tampering_is_named() {
        let good = chain(5);
        let head = (5, good[4].hash.clone());
        assert_eq!(verify(&good, (head.0, &head.1)), Ok(5));

        let mut edited = good.clone();
        edited[2].data = serde_json::json!({"n": 99});
        assert_eq!(verify(&edited, (head.0, &head.1)).unwrap_err().seq, 3);

        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(verify(&deleted, (head.0, &head.1)).unwrap_err().seq, 2);

        let mut reordered = good.clone();
        reordered.swap(1, 2);
        assert_eq!(verify(&reordered, (head.0, &head.1)).unwrap_err().seq, 2);

        // Reorder and renumber: the hashes still refuse it.
        let mut renumbered = good.clone();
        renumbered.swap(1, 2);
        renumbered[1].seq = 2;
        renumbered[2].seq = 3;
        assert_eq!(verify(&renumbered, (head.0, &head.1)).unwrap_err().seq, 2);

        let truncated = &good[..3];
        assert_eq!(verify(truncated, (head.0, &head.1)).unwrap_err().seq, 4);

        let empty: Vec<Event> = Vec::new();
        assert_eq!(verify(&empty, (head.0, &head.1)).unwrap_err().seq, 1);
        assert_eq!(verify(&empty, (0, GENESIS_HASH)), Ok(0));
    }
}

#[cfg(test)]
mod vectors {
    use super::*;

    fn stored(e: &Event, data: &str) -> StoredEvent {
        StoredEvent {
            seq: e.seq,
            ts_ms: e.ts_ms,
            kind: e.kind.clone(),
            agent: e.agent.clone(),
            task_id: e.task_id.clone(),
            data: data.to_owned(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }

    /// The stored text is canonical, so its bytes hash to the chain hash as they are; a
    /// reformatted record still checks (the same meaning), an edited one does not.
    #[test]
    fn stored_text_hashes_as_it_is_and_reformatting_is_not_a_break() {
        for kind in &crate::examples::ALL_KINDS {
            let (e, text) = link_text(
                NewEvent {
                    ts_ms: 5,
                    agent: Some("a".into()),
                    task_id: None,
                    body: crate::example(*kind),
                },
                3,
                GENESIS_HASH,
            );
            assert_eq!(text, canonical_text(&e.data));
            assert_eq!(
                event_hash_text(
                    e.seq,
                    e.ts_ms,
                    &e.kind,
                    e.agent.as_deref(),
                    None,
                    &text,
                    &e.prev_hash
                ),
                e.hash,
                "{kind:?}"
            );
            assert_eq!(
                e.hash,
                link(
                    NewEvent {
                        ts_ms: 5,
                        agent: Some("a".into()),
                        task_id: None,
                        body: crate::example(*kind)
                    },
                    3,
                    GENESIS_HASH
                )
                .hash
            );
            assert!(stored(&e, &text).content_matches());
            let pretty = serde_json::to_string_pretty(&e.data).unwrap_or_default();
            assert!(
                stored(&e, &pretty).content_matches(),
                "{kind:?}: reformatted"
            );
            let mut edited = e.data.clone();
            if let Value::Object(m) = &mut edited {
                m.insert("zz_added".into(), Value::Bool(true));
            }
            assert!(
                !stored(&e, &edited.to_string()).content_matches(),
                "{kind:?}: edited"
            );
            assert!(!stored(&e, "not json").content_matches());
        }
    }

    /// Pins the chain hash: a change here breaks verification of every stored chain. The
    /// same digest comes from Python: sha256(json.dumps(record, sort_keys=True,
    /// separators=(",", ":"))), so external tools can verify a chain.
    #[test]
    fn event_hash_vector() {
        let data = serde_json::json!({ "z": [1, "two"], "a": { "y": null, "b": true } });
        let h = event_hash(
            7,
            1_700_000_000_000,
            "decision",
            Some("bot"),
            Some("tsk_1"),
            &data,
            GENESIS_HASH,
        );
        assert_eq!(
            h,
            "ba1e1508d3b8ef433921bbba61a849e7b969a77f547d9d9ceb1a8d87515e5c3b"
        );
    }

    /// The streamed hash is the canonical JSON document's hash, key order, escapes and
    /// numbers included.
    #[test]
    fn streamed_hash_is_the_canonical_documents_hash() {
        let samples = [
            serde_json::json!(null),
            serde_json::json!({"b": 1, "a": [1.5, -2, "x\"\n\u{1}é"], "": {"z": {}, "Z": []}}),
            serde_json::json!({"ä": true, "a": false, "aa": 1e300, "k": u64::MAX}),
        ];
        for data in samples {
            for (agent, task) in [(None, None), (Some("bot\"1"), Some("tsk_1"))] {
                let doc = serde_json::json!({
                    "seq": 3, "ts_ms": -5, "kind": "decision", "agent": agent,
                    "task_id": task, "data": data, "prev_hash": GENESIS_HASH,
                });
                let want = mandate_core::sha256_hex(mandate_core::canonical_json(&doc).as_bytes());
                assert_eq!(
                    event_hash(3, -5, "decision", agent, task, &data, GENESIS_HASH),
                    want
                );
            }
        }
    }
}

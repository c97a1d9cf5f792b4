//! A task's history (R5): what it has done so far, exposed to policy as `context.history`.

use std::collections::{BTreeMap, BTreeSet};

use mandate_core::{ActionClass, Sensitivity};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a task has done so far. Only allowed calls count: a call that was denied or is
/// waiting for approval did not run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct History {
    /// Allowed calls, all tools.
    pub calls: i64,
    /// Allowed reads.
    pub reads: i64,
    /// Allowed writes.
    pub writes: i64,
    /// Allowed deletes.
    pub deletes: i64,
    /// Allowed executes.
    pub executes: i64,
    /// Allowed calls per tool.
    pub tool_calls: BTreeMap<String, i64>,
    /// Data domains touched.
    pub data_domains: BTreeSet<String>,
    /// Reads of confidential or restricted data.
    pub sensitive_reads: i64,
    /// Bytes returned to the agent (counted by the gateway).
    pub bytes_returned: i64,
    /// Whether content from an untrusted source has entered the task.
    pub untrusted_content: bool,
}

impl History {
    /// Counts one allowed call.
    pub fn record(
        &mut self,
        tool: &str,
        action: ActionClass,
        data_domain: Option<&str>,
        sensitivity: Sensitivity,
    ) {
        self.calls = self.calls.saturating_add(1);
        let class = match action {
            ActionClass::Read => &mut self.reads,
            ActionClass::Write => &mut self.writes,
            ActionClass::Delete => &mut self.deletes,
            ActionClass::Execute => &mut self.executes,
        };
        *class = class.saturating_add(1);
        let n = self.tool_calls.entry(tool.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        if let Some(d) = data_domain {
            self.data_domains.insert(d.to_owned());
        }
        if action == ActionClass::Read && sensitivity >= Sensitivity::Confidential {
            self.sensitive_reads = self.sensitive_reads.saturating_add(1);
        }
    }

    /// Counts what a call returned.
    pub fn record_result(&mut self, bytes_returned: u64, untrusted_content: bool) {
        self.bytes_returned = self
            .bytes_returned
            .saturating_add(i64::try_from(bytes_returned).unwrap_or(i64::MAX));
        self.untrusted_content |= untrusted_content;
    }
}

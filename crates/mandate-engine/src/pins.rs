//! Tool pinning (rug-pull defence): each MCP tool's definition is hashed on first sight;
//! a changed description or schema, a new tool on a known server, or a tool whose name
//! shadows another server's tool is not callable until an admin approves it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use mandate_audit::{Body, HeldTool, NewEvent, ToolApproved, ToolsSeen};
use mandate_core::Clock;
use mandate_gateway::mcp::{definition_digest, tool_digest};
use mandate_store::{Store, ToolPin};

use crate::sync::{read, write};

/// What the pinning says of one tool the server listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Callable: its definition is the approved one.
    Callable,
    /// Held: why.
    Held(String),
}

/// The pins, mirrored in memory from the store.
pub struct Pins {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    map: RwLock<HashMap<(String, String), ToolPin>>,
    /// Serialises observations and approvals so two listings cannot race a pin.
    write: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pins")
            .field("pins", &read(&self.map).len())
            .finish_non_exhaustive()
    }
}

/// One tool as a server describes it.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// Its input schema.
    pub input_schema: serde_json::Value,
    /// The whole definition as listed (title, annotations, output schema...): pinned.
    pub listed: serde_json::Value,
}

/// Why an approval was refused.
#[derive(Debug)]
pub enum ApproveError {
    /// The definition held now is not the one reviewed.
    DigestMismatch {
        /// What is held now.
        current: String,
    },
    /// The store could not record it.
    Store(String),
}

impl Pins {
    /// Loads every pin.
    pub async fn load(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let all = store.tool_pins().await.map_err(|e| e.to_string())?;
        let map = all
            .into_iter()
            .map(|p| ((p.server.clone(), p.tool.clone()), p))
            .collect();
        Ok(Self {
            store,
            clock,
            map: RwLock::new(map),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// Every pin, held ones first.
    pub fn all(&self) -> Vec<ToolPin> {
        let mut v: Vec<ToolPin> = read(&self.map).values().cloned().collect();
        v.sort_by(|a, b| {
            (a.status != "pending", &a.server, &a.tool).cmp(&(
                b.status != "pending",
                &b.server,
                &b.tool,
            ))
        });
        v
    }

    /// The verdict on a tool already seen, without recording anything.
    pub fn verdict(&self, server: &str, tool: &str) -> Option<Verdict> {
        read(&self.map)
            .get(&(server.to_owned(), tool.to_owned()))
            .map(verdict_of)
    }

    /// Records what `server` lists now, and says which tools are callable. Changes are
    /// written (with their event) before any verdict is given; a store failure holds
    /// every tool of the listing.
    pub async fn observe(
        &self,
        server: &str,
        defs: &[Definition],
    ) -> Result<HashMap<String, Verdict>, String> {
        let _w = self.write.lock().await;
        let now = self.clock.now_ms();
        let (changes, first_sight) = {
            let map = read(&self.map);
            let first_sight = !map.keys().any(|(s, _)| s == server);
            let mut changes = Vec::new();
            for d in defs {
                let digest = definition_digest(server, &d.listed);
                let definition = d.listed.to_string();
                let legacy =
                    tool_digest(server, &d.name, d.description.as_deref(), &d.input_schema);
                match map.get(&(server.to_owned(), d.name.clone())) {
                    Some(p) if p.digest == digest => {}
                    // Pinned before whole definitions were: re-pinned as it stands.
                    Some(p) if p.digest == legacy => changes.push(ToolPin {
                        approved_digest: (p.approved_digest.as_deref() == Some(legacy.as_str()))
                            .then(|| digest.clone())
                            .or_else(|| p.approved_digest.clone()),
                        digest,
                        definition,
                        reason: format!("{} (re-pinned with the whole definition)", p.reason),
                        updated_at_ms: now,
                        ..p.clone()
                    }),
                    Some(p) => changes.push(ToolPin {
                        digest,
                        definition,
                        status: "pending".into(),
                        reason: "changed".into(),
                        decided_by: None,
                        updated_at_ms: now,
                        ..p.clone()
                    }),
                    None => {
                        let shadowed = map
                            .keys()
                            .find(|(s, t)| s != server && t == &d.name)
                            .map(|(s, _)| s.clone());
                        let (status, reason, by) = match (&shadowed, first_sight) {
                            (Some(other), _) => ("pending", format!("shadows {other}"), None),
                            (None, true) => (
                                "approved",
                                "first sight".to_owned(),
                                Some("first-sight".to_owned()),
                            ),
                            (None, false) => ("pending", "new".to_owned(), None),
                        };
                        changes.push(ToolPin {
                            server: server.to_owned(),
                            tool: d.name.clone(),
                            approved_digest: (status == "approved").then(|| digest.clone()),
                            digest,
                            definition,
                            status: status.into(),
                            reason,
                            decided_by: by,
                            updated_at_ms: now,
                        });
                    }
                }
            }
            (changes, first_sight)
        };
        if !changes.is_empty() {
            let held: Vec<_> = changes
                .iter()
                .filter(|p| p.status == "pending")
                .map(|p| HeldTool {
                    tool: p.tool.clone(),
                    reason: p.reason.clone(),
                    digest: p.digest.clone(),
                })
                .collect();
            let kind = if held.is_empty() && first_sight {
                Body::ToolPinned
            } else {
                Body::ToolChanged
            };
            let ev = NewEvent {
                ts_ms: now,
                agent: None,
                task_id: None,
                body: kind(ToolsSeen {
                    server: server.to_owned(),
                    pinned: changes
                        .iter()
                        .filter(|p| p.status == "approved")
                        .map(|p| p.tool.clone())
                        .collect(),
                    held,
                }),
            };
            self.store
                .put_tool_pins(&changes, ev)
                .await
                .map_err(|e| e.to_string())?;
            let mut map = write(&self.map);
            for p in changes {
                map.insert((p.server.clone(), p.tool.clone()), p);
            }
        }
        let map = read(&self.map);
        Ok(defs
            .iter()
            .map(|d| {
                let v = map
                    .get(&(server.to_owned(), d.name.clone()))
                    .map_or(Verdict::Held("unrecorded".into()), verdict_of);
                (d.name.clone(), v)
            })
            .collect())
    }

    /// Approves the definition of a held tool that was reviewed (`reviewed`, its digest):
    /// refused when the server has shown another since. `None` when there is no such pin.
    pub async fn approve(
        &self,
        server: &str,
        tool: &str,
        reviewed: &str,
        by: &str,
    ) -> Result<Option<ToolPin>, ApproveError> {
        let _w = self.write.lock().await;
        let Some(p) = read(&self.map)
            .get(&(server.to_owned(), tool.to_owned()))
            .cloned()
        else {
            return Ok(None);
        };
        if p.digest != reviewed {
            return Err(ApproveError::DigestMismatch { current: p.digest });
        }
        let now = self.clock.now_ms();
        let approved = ToolPin {
            approved_digest: Some(p.digest.clone()),
            status: "approved".into(),
            reason: format!("approved ({})", p.reason),
            decided_by: Some(by.to_owned()),
            updated_at_ms: now,
            ..p.clone()
        };
        let ev = NewEvent {
            ts_ms: now,
            agent: None,
            task_id: None,
            body: Body::ToolApproved(ToolApproved {
                server: server.to_owned(),
                tool: tool.to_owned(),
                digest: p.digest.clone(),
                previous_digest: p.approved_digest.clone(),
                was: p.reason.clone(),
                by: by.to_owned(),
                definition: p.definition.clone(),
            }),
        };
        self.store
            .put_tool_pins(std::slice::from_ref(&approved), ev)
            .await
            .map_err(|e| ApproveError::Store(e.to_string()))?;
        write(&self.map).insert((server.to_owned(), tool.to_owned()), approved.clone());
        Ok(Some(approved))
    }
}

fn verdict_of(p: &ToolPin) -> Verdict {
    if p.status == "approved" && p.approved_digest.as_deref() == Some(p.digest.as_str()) {
        Verdict::Callable
    } else {
        Verdict::Held(format!(
            "tool {} of {} is held ({}) until an admin reviews and approves it: mandate tools approve {} {} --digest {}",
            p.tool, p.server, p.reason, p.server, p.tool, p.digest
        ))
    }
}

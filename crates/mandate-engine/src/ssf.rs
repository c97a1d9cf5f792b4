//! Signals out: revocations and quarantines as Security Event Tokens (RFC 8417) in the
//! Shared Signals Framework's CAEP vocabulary, pushed to configured receivers (RFC 8935).
//!
//! One sender task follows the committed `task.revoked` and `agent.status_changed` events
//! (to quarantined or offboarded) with a [`crate::tail::Tail`], and turns each into a SET per receiver, signed with Mandate's token keys (the
//! receiver verifies it against `/.well-known/jwks.json`), and POSTs it as
//! `application/secevent+jwt`. Delivery is best effort with bounded retries: it never
//! holds up a revocation, which has already taken effect when its event commits.
//!
//! - A task revoked → CAEP `session-revoked`; the subject is the task (a session) of the
//!   agent: `{"format":"complex","session":{"format":"opaque","id":<task>},
//!   "user":{"format":"iss_sub","iss":<issuer>,"sub":<spiffe id>}}`.
//! - An agent quarantined or offboarded → CAEP `credential-change` with `change_type`
//!   `revoke` and `credential_type` `jwt-svid` (a type Mandate and its receivers agree
//!   on, as CAEP allows); the subject is the agent (`iss_sub`, as above).

use std::sync::Arc;
use std::time::Duration;

use mandate_audit::{Body, Event};
use mandate_core::{AgentName, AgentStatus, SpiffeId};
use serde_json::{Value, json};

use crate::containment::rules::SsfReceiver;
use crate::engine::Engine;

/// CAEP's session-revoked event type.
pub const SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP's credential-change event type.
pub const CREDENTIAL_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// The media type of a pushed SET (RFC 8935 §2).
pub const SET_MEDIA_TYPE: &str = "application/secevent+jwt";

const ATTEMPTS: u32 = 3;

/// The setting holding the last event the SET sender handled (where it resumes).
pub const SSF_CURSOR: &str = "ssf_cursor";

/// The kinds receivers hear about (a status change only when it revokes).
pub fn watched(kind: &str) -> bool {
    matches!(kind, "task.revoked" | "agent.status_changed")
}

/// The SET payload (without `aud` and `jti`, which are per receiver) for a committed
/// event, or `None` when the event is not one receivers hear about.
pub fn set_event(
    e: &Event,
    trust_domain: &mandate_core::TrustDomain,
    issuer: &str,
) -> Option<Value> {
    // The agent as Mandate's own tokens name it: issuer and SPIFFE ID (RFC 9493 `iss_sub`).
    let agent_id = |agent: &str| {
        AgentName::parse(agent).ok().map(|a| {
            json!({
                "format": "iss_sub",
                "iss": issuer,
                "sub": SpiffeId::for_agent(trust_domain.clone(), a).to_string(),
            })
        })
    };
    let said = |reason: &str, otherwise: &str| {
        if reason.trim().is_empty() {
            otherwise.to_owned()
        } else {
            reason.to_owned()
        }
    };
    let ts = e.ts_ms.div_euclid(1000);
    match e.body().ok()? {
        Body::TaskRevoked(t) => {
            let task = e.task_id.as_deref()?;
            let user = agent_id(e.agent.as_deref()?)?;
            let initiating = if t.by == "admin" {
                "admin"
            } else if t.by.starts_with("mandate") {
                "policy"
            } else {
                "user"
            };
            Some(json!({
                "sub_id": {
                    "format": "complex",
                    "session": { "format": "opaque", "id": task },
                    "user": user,
                },
                "events": { SESSION_REVOKED: {
                    "event_timestamp": ts,
                    "initiating_entity": initiating,
                    "reason_admin": { "en": said(&t.reason, "task revoked") },
                }},
            }))
        }
        Body::AgentStatusChanged(s)
            if matches!(s.to, AgentStatus::Quarantined | AgentStatus::Offboarded) =>
        {
            let user = agent_id(e.agent.as_deref()?)?;
            Some(json!({
                "sub_id": user,
                "events": { CREDENTIAL_CHANGE: {
                    "event_timestamp": ts,
                    "credential_type": "jwt-svid",
                    "change_type": "revoke",
                    "initiating_entity": "policy",
                    "reason_admin": { "en": format!("agent {}: {}", s.to, s.reason) },
                }},
            }))
        }
        _ => None,
    }
}

impl Engine {
    /// The sender: one SET per receiver for each revocation or quarantine, in commit
    /// order. Ends when the audit writer is gone.
    pub async fn run_ssf(self: Arc<Self>, mut tail: crate::tail::Tail) {
        let receivers: Vec<SsfReceiver> = self
            .config
            .containment
            .as_ref()
            .map(|c| c.ssf_receivers.clone())
            .unwrap_or_default();
        let mut saved = std::time::Instant::now();
        let mut unsaved = false;
        while let Some(batch) = tail.next().await {
            unsaved |= !batch.is_empty();
            for (e, _) in batch {
                self.send_sets(&e, &receivers).await;
            }
            // Where to resume after a restart, at most once a second (a crash re-sends at
            // most that second's SETs; receivers tell them apart by `txn`).
            if unsaved && saved.elapsed() >= Duration::from_secs(1) {
                if let Some(p) = tail.position()
                    && self
                        .store
                        .put_setting(SSF_CURSOR, &p.to_string())
                        .await
                        .is_ok()
                {
                    unsaved = false;
                }
                saved = std::time::Instant::now();
            }
        }
    }

    async fn send_sets(&self, e: &Event, receivers: &[SsfReceiver]) {
        {
            let Some(payload) = set_event(e, &self.config.trust_domain, &self.issuer) else {
                return;
            };
            for r in receivers {
                let Ok(jti) = self.config.ids.id("set") else {
                    tracing::error!("system RNG failed; SET not sent");
                    continue;
                };
                let mut claims = payload.clone();
                if let Some(obj) = claims.as_object_mut() {
                    obj.insert("iss".into(), json!(self.issuer));
                    obj.insert("iat".into(), json!(self.clock.now_secs()));
                    obj.insert("jti".into(), json!(jti));
                    obj.insert("aud".into(), json!(r.audience));
                    // The audit record it reports, so a receiver can ask for its proof.
                    obj.insert("txn".into(), json!(e.seq.to_string()));
                }
                let set = match mandate_token::sign_typed(&self.keys(), "secevent+jwt", &claims) {
                    Ok(s) => s,
                    Err(err) => {
                        tracing::error!(error = %err, "SET not signed");
                        continue;
                    }
                };
                if let Err(err) = push(&self.http, r, set).await {
                    tracing::warn!(receiver = %r.url, seq = e.seq, error = %err, "SET not delivered");
                }
            }
        }
    }
}

/// RFC 8935 push: POST the SET; 202 (or any 2xx) is accepted, a 400 with an error
/// object is the receiver refusing it (not retried).
async fn push(http: &reqwest::Client, r: &SsfReceiver, set: String) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            #[expect(
                clippy::disallowed_methods,
                reason = "backoff between SET delivery attempts, bounded by ATTEMPTS"
            )]
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        let mut req = http
            .post(&r.url)
            .header(reqwest::header::CONTENT_TYPE, SET_MEDIA_TYPE)
            .header(reqwest::header::ACCEPT, "application/json")
            .body(set.clone());
        if let Some(auth) = &r.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, auth.as_str());
        }
        let sent = req.send().await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status() == reqwest::StatusCode::BAD_REQUEST => {
                let body = r.text().await.unwrap_or_default();
                return Err(format!("receiver refused the SET: {}", truncate(&body)));
            }
            Ok(r) if r.status().is_redirection() => {
                return Err(format!("receiver answered a redirect ({})", r.status()));
            }
            Ok(r) => last = format!("receiver answered {}", r.status()),
            Err(e) => last = format!("receiver unreachable: {e}"),
        }
    }
    Err(last)
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandate_audit::{AgentStatusChanged, NewEvent, TaskEnded};

    fn linked(body: Body, task: Option<&str>) -> Event {
        mandate_audit::link(
            NewEvent {
                ts_ms: 1_700_000_000_500,
                agent: Some("ticket-bot".into()),
                task_id: task.map(str::to_owned),
                body,
            },
            6,
            mandate_audit::GENESIS_HASH,
        )
    }

    #[test]
    fn revocations_and_quarantines_become_caep_events() {
        let td = mandate_core::TrustDomain::default();
        let revoked = linked(
            Body::TaskRevoked(TaskEnded {
                reason: "containment rule burst: 3 denied".into(),
                by: "mandate:containment".into(),
                ..TaskEnded::default()
            }),
            Some("tsk_1"),
        );
        let v = set_event(&revoked, &td, "https://mandate.example").unwrap();
        assert_eq!(v["sub_id"]["session"]["id"], "tsk_1");
        assert_eq!(v["sub_id"]["user"]["format"], "iss_sub");
        assert_eq!(v["sub_id"]["user"]["iss"], "https://mandate.example");
        assert_eq!(
            v["sub_id"]["user"]["sub"],
            "spiffe://mandate.local/agent/ticket-bot"
        );
        assert_eq!(v["events"][SESSION_REVOKED]["initiating_entity"], "policy");
        assert_eq!(
            v["events"][SESSION_REVOKED]["event_timestamp"],
            1_700_000_000
        );

        let q = linked(
            Body::AgentStatusChanged(AgentStatusChanged {
                from: AgentStatus::Active,
                to: AgentStatus::Quarantined,
                reason: "honeytoken".into(),
            }),
            None,
        );
        let v = set_event(&q, &td, "https://mandate.example").unwrap();
        assert_eq!(v["events"][CREDENTIAL_CHANGE]["change_type"], "revoke");
        // A release is not a revocation.
        let released = linked(
            Body::AgentStatusChanged(AgentStatusChanged {
                from: AgentStatus::Quarantined,
                to: AgentStatus::Active,
                reason: "reviewed".into(),
            }),
            None,
        );
        assert!(set_event(&released, &td, "https://mandate.example").is_none());
    }
}

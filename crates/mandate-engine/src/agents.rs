//! Agents: registration, join tokens, status changes (quarantine, offboarding, release,
//! which revoke every live task first), attestation and identity renewal.

use mandate_audit::{
    AgentRegistered, AgentStatusChanged, Body, IdentityIssued, JoinTokenIssued, NewEvent, Refused,
};
use mandate_core::{
    AgentName, AgentStatus, AttestationRule, HumanId, RiskTier, SpiffeId, random_secret, sha256_hex,
};
use mandate_store::{AgentRecord, JoinTokenRecord};
use mandate_token::IdentityClaims;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{Error, Kind};
use crate::tasks::checked_text;

/// Register an agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterAgentRequest {
    /// Name: the last segment of its SPIFFE ID.
    pub name: AgentName,
    /// Accountable human owner (an email or user id): printable ASCII, stored trimmed and
    /// lowercased so that separation of duties compares one form.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "^[ -~]*[!-~][ -~]*$")
    )]
    pub owner: String,
    /// Risk tier 0..3.
    pub tier: RiskTier,
    /// How it attests; defaults to a one-time join token.
    #[serde(default)]
    pub attestation: Option<AttestationRule>,
}

/// A registered agent and its first join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterAgentResponse {
    /// The agent.
    pub agent: AgentRecord,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// One-time join token: shown once, stored only as a hash. Only for agents that
    /// attest with one; an agent with an `oidc` or `spiffe` rule gets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// When the join token stops working (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token_expires_at_ms: Option<i64>,
}

/// A fresh one-time join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinTokenResponse {
    /// The token: shown once.
    pub join_token: String,
    /// When it stops working (unix ms).
    pub expires_at_ms: i64,
}

/// Change an agent's status.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetStatusRequest {
    /// `quarantined` or `offboarded` revoke every live task; `active` releases a quarantine.
    pub status: AgentStatus,
    /// Why (recorded in the audit trail).
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 1024,
            pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
        )
    )]
    pub reason: String,
}

/// The agent after a status change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetStatusResponse {
    /// The agent.
    pub agent: AgentRecord,
    /// Tasks revoked by the change.
    pub revoked_tasks: Vec<String>,
}

/// Attest: with a one-time join token (`agent` and `join_token`), or with a workload
/// token from a trusted OIDC issuer or SPIFFE trust domain (`assertion` alone: the agent
/// is the one whose attestation rule accepts it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttestRequest {
    /// The agent's name (with `join_token`).
    #[serde(default)]
    pub agent: Option<AgentName>,
    /// The one-time join token issued for it.
    #[serde(default)]
    pub join_token: Option<String>,
    /// A workload token: a Kubernetes service-account token, a GitHub Actions OIDC token,
    /// a JWT-SVID from a trusted trust domain…
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 16384))]
    pub assertion: Option<String>,
}

/// An identity token (JWT-SVID).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttestResponse {
    /// The JWT-SVID.
    pub identity_token: String,
    /// Always `JWT-SVID`.
    pub token_type: String,
    /// The SPIFFE ID it asserts.
    pub spiffe_id: String,
    /// Expiry (unix seconds).
    pub expires_at: i64,
}

/// Longest reason for a status change.
const MAX_REASON: usize = 1024;

fn event(engine: &Engine, agent: &AgentName, body: Body) -> NewEvent {
    NewEvent {
        ts_ms: engine.clock.now_ms(),
        agent: Some(agent.to_string()),
        task_id: None,
        body,
    }
}

impl Engine {
    /// The agent a verified identity token is for: a SPIFFE ID of this trust domain.
    pub fn agent_of(&self, claims: &mandate_token::IdentityClaims) -> Result<SpiffeId, Error> {
        SpiffeId::parse(&claims.sub)
            .ok()
            .filter(|s| s.trust_domain() == &self.config.trust_domain)
            .ok_or_else(|| {
                Error::new(
                    Kind::Unauthenticated,
                    "token_malformed",
                    "identity token subject is not an agent of this trust domain",
                )
            })
    }
}

/// An agent name from a path segment.
pub fn parse_agent_name(name: &str) -> Result<AgentName, Error> {
    AgentName::parse(name).map_err(|e| Error::invalid(e.to_string()))
}

impl Engine {
    async fn issue_join(&self, agent: &AgentName) -> Result<(String, JoinTokenRecord), Error> {
        let token = random_secret("mdt_join").map_err(|_| Error::internal("system RNG failed"))?;
        let now = self.clock.now_ms();
        let rec = JoinTokenRecord {
            token_hash: sha256_hex(token.as_bytes()),
            agent: agent.clone(),
            created_at_ms: now,
            expires_at_ms: now + self.config.limits.join_token_ttl_secs * 1000,
        };
        Ok((token, rec))
    }

    /// Registers an agent and issues its first join token.
    pub async fn register_agent(
        &self,
        req: RegisterAgentRequest,
    ) -> Result<RegisterAgentResponse, Error> {
        // Normalised once, here: separation of duties compares this form with approvers'.
        let owner =
            HumanId::parse(&req.owner).map_err(|e| Error::unprocessable(format!("owner: {e}")))?;
        let attestation = req.attestation.unwrap_or(AttestationRule::JoinToken);
        self.check_rule(&attestation)?;
        if attestation != AttestationRule::JoinToken {
            let agents = self.agents().await?;
            if let Some(other) = agents
                .iter()
                .find(|a| a.status != AgentStatus::Offboarded && a.attestation == attestation)
            {
                return Err(Error::new(
                    Kind::Conflict,
                    "attestation_rule_taken",
                    format!(
                        "agent {} already attests with this rule: a token must map to exactly one agent",
                        other.name
                    ),
                ));
            }
        }
        let now = self.clock.now_ms();
        let agent = AgentRecord {
            name: req.name.clone(),
            owner,
            tier: req.tier,
            status: AgentStatus::Active,
            attestation,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let join = if agent.attestation == AttestationRule::JoinToken {
            Some(self.issue_join(&req.name).await?)
        } else {
            None
        };
        let spiffe_id =
            SpiffeId::for_agent(self.config.trust_domain.clone(), req.name.clone()).to_string();
        let ev = event(
            self,
            &req.name,
            Body::AgentRegistered(AgentRegistered {
                owner: agent.owner.clone(),
                tier: agent.tier,
                attestation: agent.attestation.clone(),
                spiffe_id: spiffe_id.clone(),
            }),
        );
        self.store
            .insert_agent(&agent, join.as_ref().map(|(_, j)| j), ev)
            .await
            .map_err(|e| Error::store(&e))?;
        Ok(RegisterAgentResponse {
            agent,
            spiffe_id,
            join_token_expires_at_ms: join.as_ref().map(|(_, j)| j.expires_at_ms),
            join_token: join.map(|(t, _)| t),
        })
    }

    /// Every registered agent.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, Error> {
        self.store.agents().await.map_err(|e| Error::store(&e))
    }

    /// One registered agent.
    pub async fn load_agent(&self, name: &AgentName) -> Result<AgentRecord, Error> {
        self.store
            .agent(name)
            .await
            .map_err(|e| Error::store(&e))?
            .ok_or_else(|| Error::not_found(format!("agent {name} is not registered")))
    }

    /// Issues another one-time join token for an active agent.
    pub async fn issue_join_token(&self, name: &AgentName) -> Result<JoinTokenResponse, Error> {
        let agent = self.load_agent(name).await?;
        if agent.status != AgentStatus::Active {
            return Err(Error::new(
                Kind::Conflict,
                "agent_not_active",
                format!(
                    "agent {name} is {}: only active agents get join tokens",
                    agent.status
                ),
            ));
        }
        if agent.attestation != AttestationRule::JoinToken {
            return Err(Error::new(
                Kind::Conflict,
                "attestation_method_mismatch",
                format!(
                    "agent {name} attests by {}: a join token would bypass that rule",
                    agent.attestation.method()
                ),
            ));
        }
        let (token, join) = self.issue_join(name).await?;
        let ev = event(
            self,
            name,
            Body::JoinTokenIssued(JoinTokenIssued {
                expires_at_ms: join.expires_at_ms,
            }),
        );
        self.store
            .insert_join_token(&join, ev)
            .await
            .map_err(|e| Error::store(&e))?;
        Ok(JoinTokenResponse {
            join_token: token,
            expires_at_ms: join.expires_at_ms,
        })
    }

    /// Quarantines, offboards or releases an agent, by `by`. Leaving `active` revokes
    /// every live task of the agent, in memory first, before this returns.
    pub async fn set_agent_status(
        &self,
        name: &AgentName,
        req: SetStatusRequest,
        by: &str,
    ) -> Result<SetStatusResponse, Error> {
        checked_text("reason", &req.reason, MAX_REASON, false)?;
        let agent = self.load_agent(name).await?;
        if agent.status == AgentStatus::Offboarded {
            return Err(Error::new(
                Kind::Conflict,
                "agent_offboarded",
                format!("agent {name} is offboarded; register a new agent instead"),
            ));
        }
        // Cut the agent off in memory first, so no call is allowed while the store catches
        // up; if the store fails, each revocation stays enforced and is retried.
        let revoke = |id: &str| -> Option<std::sync::Arc<crate::engine::LiveTask>> {
            let t = self.end_live(id)?;
            let reason = if t.agent == *name {
                format!("agent {}", req.status)
            } else {
                format!(
                    "a task above it in its delegation chain was revoked: agent {name} {}",
                    req.status
                )
            };
            self.remember_end(id, crate::engine::cascade_end(&t.agent, &reason, by));
            Some(t)
        };
        // Its tasks and every task delegated below them, whichever agent runs it.
        let cut: Vec<String> = if req.status == AgentStatus::Active {
            Vec::new()
        } else {
            let own = self.agent_tasks(name);
            let below = own.iter().flat_map(|id| self.descendants(id));
            let mut all: Vec<String> = below.map(|t| t.id.clone()).collect();
            all.extend(own);
            all.sort();
            all.dedup();
            all
        };
        let ended: Vec<_> = cut.iter().filter_map(|id| revoke(id)).collect();
        // Decisions that found a task live are recorded before the change is: what a
        // caller was told and what the audit says agree, and no allow follows it.
        for t in &ended {
            t.drain().await;
        }
        let now = self.clock.now_ms();
        let ev = event(
            self,
            name,
            Body::AgentStatusChanged(AgentStatusChanged {
                from: agent.status,
                to: req.status,
                reason: req.reason.clone(),
            }),
        );
        let revoked = self
            .store
            .set_agent_status(name, req.status, now, by, ev)
            .await
            .map_err(|e| Error::store(&e))?;
        // The store revoked every live task of the agent in the same transaction,
        // including any that started after the scan above: cut those off too.
        for id in cut.iter().chain(&revoked) {
            if let Some(t) = self.end_live(id) {
                // Started after the scan above: cut off now, its decisions drained too.
                t.drain().await;
            }
            self.forget_end(id);
        }
        let agent = self.load_agent(name).await?;
        Ok(SetStatusResponse {
            agent,
            revoked_tasks: revoked,
        })
    }

    /// Attests an agent, with a one-time join token, a workload token, or the X.509-SVID
    /// the client authenticated its TLS connection with (`peer_svid`, its SPIFFE ID, when
    /// the body names nothing): a JWT-SVID identity token.
    pub async fn attest(
        &self,
        req: AttestRequest,
        peer_svid: Option<&str>,
    ) -> Result<AttestResponse, Error> {
        match (req.agent, req.join_token, req.assertion, peer_svid) {
            (Some(agent), Some(join_token), None, _) => self.attest_join(agent, &join_token).await,
            (None, None, Some(assertion), _) => self.attest_assertion(&assertion).await,
            (None, None, None, Some(id)) => self.attest_x509(id).await,
            _ => Err(Error::invalid(
                "send either `agent` and `join_token`, or `assertion` alone (or nothing, over mutual TLS with an X.509-SVID)",
            )),
        }
    }

    async fn attest_join(
        &self,
        name: AgentName,
        join_token: &str,
    ) -> Result<AttestResponse, Error> {
        let now = self.clock.now_ms();
        let hash = sha256_hex(join_token.as_bytes());
        // Consume first: a token presented with the wrong agent name is burnt too, so a
        // leaked token cannot be replayed while the guess is refined.
        let owner = self
            .store
            .consume_join_token(&hash, now)
            .await
            .map_err(|e| Error::store(&e))?;
        match owner {
            Some(agent) if agent == name => {}
            _ => {
                return Err(self
                    .refuse_attest(
                        &name,
                        now,
                        "join_token_invalid",
                        "the join token is unknown, used, expired or for another agent: ask an administrator for a new one".into(),
                    )
                    .await);
            }
        }
        let agent = self.load_agent(&name).await?;
        if agent.status != AgentStatus::Active {
            return Err(self
                .refuse_attest(
                    &name,
                    now,
                    "agent_not_active",
                    format!("agent {} is {}", agent.name, agent.status),
                )
                .await);
        }
        let auth_time = self.clock.now_secs();
        self.issue_identity(&agent, auth_time, Body::AgentAttested, "join_token", None)
            .await
    }

    /// Renews an identity token with a valid one, keeping the original attestation time:
    /// after `max_identity_lifetime_secs` the agent must attest again.
    pub async fn renew_identity(&self, identity_token: &str) -> Result<AttestResponse, Error> {
        let claims = self.verify_identity(identity_token)?;
        let spiffe = self.agent_of(&claims)?;
        let agent = self.load_agent(spiffe.agent()).await?;
        let now = self.clock.now_ms();
        if agent.status != AgentStatus::Active {
            return Err(self
                .refuse_attest(
                    &agent.name,
                    now,
                    "agent_not_active",
                    format!("agent {} is {}", agent.name, agent.status),
                )
                .await);
        }
        if self.clock.now_secs() - claims.auth_time >= self.config.limits.max_identity_lifetime_secs
        {
            return Err(self
                .refuse_attest(
                    &agent.name,
                    now,
                    "identity_too_old",
                    "this identity was attested too long ago to renew: attest again with a new join token"
                        .into(),
                )
                .await);
        }
        self.issue_identity(
            &agent,
            claims.auth_time,
            Body::IdentityRenewed,
            "renewal",
            None,
        )
        .await
    }

    /// Signs a fresh identity token for an active agent and records it; it is returned
    /// only once the event is durable.
    pub(crate) async fn issue_identity(
        &self,
        agent: &AgentRecord,
        auth_time: i64,
        kind: fn(IdentityIssued) -> Body,
        method: &str,
        external: Option<mandate_audit::ExternalSubject>,
    ) -> Result<AttestResponse, Error> {
        let spiffe_id =
            SpiffeId::for_agent(self.config.trust_domain.clone(), agent.name.clone()).to_string();
        let iat = self.clock.now_secs();
        let claims = IdentityClaims {
            iss: self.issuer.clone(),
            sub: spiffe_id.clone(),
            aud: self.config.identity_audience.clone(),
            exp: iat + self.config.limits.identity_token_ttl_secs,
            iat,
            nbf: iat,
            jti: self
                .config
                .ids
                .id("jti")
                .map_err(|_| Error::internal("system RNG failed"))?,
            auth_time,
        };
        let token = mandate_token::sign(&self.keys(), &claims)?;
        let ev = NewEvent {
            ts_ms: self.clock.now_ms(),
            agent: Some(agent.name.to_string()),
            task_id: None,
            body: kind(IdentityIssued {
                method: method.to_owned(),
                spiffe_id: spiffe_id.clone(),
                jti: claims.jti.clone(),
                exp: claims.exp,
                auth_time,
                external,
            }),
        };
        self.audit.append(ev).await.map_err(|_| Error::audit())?;
        Ok(AttestResponse {
            identity_token: token,
            token_type: "JWT-SVID".into(),
            spiffe_id,
            expires_at: claims.exp,
        })
    }

    /// Records a refused attestation, then builds the refusal (`audit_unavailable` if it
    /// could not be recorded).
    async fn refuse_attest(
        &self,
        agent: &AgentName,
        now: i64,
        code: &'static str,
        message: String,
    ) -> Error {
        let ev = NewEvent {
            ts_ms: now,
            agent: Some(agent.to_string()),
            task_id: None,
            body: Body::AttestationRefused(Refused {
                code: code.to_owned(),
            }),
        };
        // The agent name is the caller's claim, unproven: count it against the budget for
        // unauthenticated refusals.
        if self.record_anonymous(ev).await.is_err() {
            return Error::audit();
        }
        let kind = if code == "agent_not_active" {
            Kind::Forbidden
        } else {
            Kind::Unauthenticated
        };
        Error::new(kind, code, message)
    }
}

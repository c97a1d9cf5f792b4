use mandate_core::Grant;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The registered claims every Mandate token carries, read before the full claim set so
/// issuer, audience and time are checked first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredClaims {
    /// Issuer URL.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Audience: one string. Arrays are refused.
    pub aud: String,
    /// Expiry, unix seconds. Required.
    pub exp: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Unique token id.
    pub jti: String,
}

/// A JWT-SVID: the short-lived identity an agent receives after attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityClaims {
    /// Issuer URL.
    pub iss: String,
    /// `spiffe://<trust-domain>/agent/<name>`.
    pub sub: String,
    /// The control plane's audience.
    pub aud: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Unique token id.
    pub jti: String,
    /// When the agent last proved its identity by attestation (unix seconds). Renewal
    /// keeps it, so an identity cannot be stretched past the server's maximum by renewing.
    pub auth_time: i64,
}

/// One link of an RFC 8693 delegation chain: who acted for whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Act {
    /// The acting party's subject.
    pub sub: String,
    /// The party it acted for, if that was itself delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub act: Option<Box<Act>>,
}

/// The capability an agent presents on each call: bound to one agent and one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskClaims {
    /// Issuer URL.
    pub iss: String,
    /// The agent's SPIFFE ID.
    pub sub: String,
    /// The gateway / decision service audience.
    pub aud: String,
    /// Expiry, unix seconds; never later than the task's grant.
    pub exp: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Unique token id.
    pub jti: String,
    /// The task this token is bound to.
    pub task_id: String,
    /// What policy granted the task (informational: the server's task record is
    /// authoritative and is checked on every call).
    pub grant: Grant,
    /// The delegation chain, if this task was delegated (RFC 8693 §4.1): `sub` stays the
    /// root task's agent, the outermost `act` is the agent acting now, and each nested
    /// `act` the one that delegated to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Act>,
    /// Proof-of-possession (RFC 9449 §6.1): the token is bound to the key with this
    /// thumbprint, and is only accepted with a DPoP proof signed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim of a sender-constrained token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// RFC 7638 thumbprint (base64url SHA-256) of the key the holder proves with.
    pub jkt: String,
}

impl TaskClaims {
    /// The SPIFFE ID of the agent that acts with this token: the current actor of a
    /// delegated task, the subject otherwise.
    pub fn actor(&self) -> &str {
        self.act.as_ref().map_or(&self.sub, |a| &a.sub)
    }
}

impl Act {
    /// The `act` claim of a chain of actors, most recent first.
    pub fn chain<'a>(actors: impl DoubleEndedIterator<Item = &'a str>) -> Option<Act> {
        actors.rev().fold(None, |inner, sub| {
            Some(Act {
                sub: sub.to_owned(),
                act: inner.map(Box::new),
            })
        })
    }
}

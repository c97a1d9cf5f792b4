use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How much damage an agent could do: 0 is the most constrained, 3 the most trusted.
/// Policy reads it as `principal.tier`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(try_from = "u8", into = "u8")]
#[schema(value_type = u8, minimum = 0, maximum = 3)]
pub struct RiskTier(u8);

impl RiskTier {
    /// The highest tier.
    pub const MAX: u8 = 3;

    /// The tier as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for RiskTier {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        if value <= Self::MAX {
            Ok(Self(value))
        } else {
            Err(format!(
                "risk tier {value} is out of range: use 0 (most constrained) to {}",
                Self::MAX
            ))
        }
    }
}

impl From<RiskTier> for u8 {
    fn from(t: RiskTier) -> u8 {
        t.0
    }
}

/// Where an agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// May attest and start tasks.
    Active,
    /// Contained: holds nothing, may not attest or start tasks until released.
    Quarantined,
    /// Permanently retired: everything it held is revoked.
    Offboarded,
}

impl AgentStatus {
    /// The stable lowercase name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Quarantined => "quarantined",
            Self::Offboarded => "offboarded",
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "quarantined" => Ok(Self::Quarantined),
            "offboarded" => Ok(Self::Offboarded),
            other => Err(format!("unknown agent status {other:?}")),
        }
    }
}

/// How an agent proves what it is at runtime. Each method names exactly what it accepts,
/// so a token maps to an agent only through a rule an administrator wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttestationRule {
    /// A one-time join token issued by an administrator, consumed on first use.
    JoinToken,
    /// A token from an external OIDC issuer configured on the server (Kubernetes
    /// service-account tokens, GitHub Actions, GitLab, cloud workload identity), whose
    /// claims all equal the values given.
    Oidc {
        /// The configured issuer's name (`[[oidc]] name` in the identity configuration).
        issuer: String,
        /// Claims the token must carry, each with exactly this value. A key starting with
        /// `/` is a JSON pointer into nested claims (`/kubernetes.io/namespace`); any other
        /// key is a top-level claim name. Non-string claims compare as JSON.
        #[schema(value_type = Object)]
        claims: std::collections::BTreeMap<String, serde_json::Value>,
    },
    /// A JWT-SVID with exactly this SPIFFE ID, from a trust domain whose bundle the server
    /// trusts (`[[spiffe]]` in the identity configuration).
    Spiffe {
        /// The workload's SPIFFE ID, `spiffe://<trust-domain>/<path>`.
        id: String,
    },
    /// An X.509-SVID with exactly this SPIFFE ID, presented over mutual TLS and verified
    /// against the listener's client CA bundle (`--tls-client-ca`). Distinct from `spiffe`
    /// so that trusting a CA bundle never opens rules written for JWT-SVIDs.
    X509Svid {
        /// The workload's SPIFFE ID, `spiffe://<trust-domain>/<path>`.
        id: String,
    },
}

impl AttestationRule {
    /// The method name as stored and shown.
    pub fn method(&self) -> &'static str {
        match self {
            Self::JoinToken => "join_token",
            Self::Oidc { .. } => "oidc",
            Self::Spiffe { .. } => "spiffe",
            Self::X509Svid { .. } => "x509_svid",
        }
    }

    /// Checks the rule's own shape (not whether its issuer is configured): at least one
    /// claim for OIDC, bounded sizes, pointers that parse, a SPIFFE ID that is one.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::JoinToken => Ok(()),
            Self::Oidc { issuer, claims } => {
                if issuer.is_empty() || issuer.len() > 64 {
                    return Err("attestation.issuer must be 1-64 characters".into());
                }
                if claims.is_empty() {
                    return Err("attestation.claims must name at least one claim: a rule that matches every token of an issuer is not an identity".into());
                }
                if claims.len() > 16 {
                    return Err("attestation.claims holds at most 16 claims".into());
                }
                for (k, v) in claims {
                    if k.is_empty() || k.len() > 256 || k.chars().any(char::is_control) {
                        return Err(format!("attestation claim name {k:?} is not usable"));
                    }
                    if v.is_null() || v.to_string().len() > 1024 {
                        return Err(format!(
                            "attestation claim {k:?} must have a non-null value of at most 1 KiB"
                        ));
                    }
                }
                Ok(())
            }
            Self::Spiffe { id } | Self::X509Svid { id } => crate::SpiffeId::parse_any(id)
                .map(|_| ())
                .map_err(|e| format!("attestation.id: {e}")),
        }
    }
}

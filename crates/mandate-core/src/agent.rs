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

/// How an agent proves what it is at runtime. Only methods Mandate can check are listed:
/// external OIDC and SPIFFE JWT attestation will be added as further variants, each
/// naming the issuer it trusts, so an agent's rule always says exactly what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttestationRule {
    /// A one-time join token issued by an administrator, consumed on first use.
    JoinToken,
}

impl AttestationRule {
    /// The method name as stored and shown.
    pub fn method(&self) -> &'static str {
        match self {
            Self::JoinToken => "join_token",
        }
    }
}

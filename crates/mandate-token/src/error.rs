/// Why a token was refused. Each variant has a stable machine-readable [`code`](Self::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed compact JWS, or claims of the wrong shape.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// The header named an algorithm outside the verifier's allow-list, or one that is not
    /// the algorithm of the key its `kid` names.
    #[error(
        "token algorithm {0:?} is not allowed: the algorithm must be on the verifier's allow-list and match the key named by kid (Mandate's own keys: ES256, or EdDSA for keys from before the ES256 upgrade)"
    )]
    AlgNotAllowed(String),
    /// The header carried a key or a key location, or critical extensions.
    #[error(
        "token header field `{0}` is not allowed: keys come only from the verifier's own key set"
    )]
    HeaderNotAllowed(String),
    /// No published key has this id.
    #[error(
        "token key id {0:?} is unknown: no published key has it (never issued, or retired); a verifier of another issuer's tokens may refresh that issuer's key set once"
    )]
    UnknownKid(String),
    /// The signature does not verify under the named key.
    #[error("token signature is invalid")]
    BadSignature,
    /// Issued by someone else.
    #[error("token issuer {0:?} is not the expected issuer")]
    WrongIssuer(String),
    /// Meant for another audience.
    #[error("token audience {0:?} is not the expected audience {1:?}")]
    WrongAudience(String, String),
    /// Past its `exp`.
    #[error("token expired at {0} (unix seconds)")]
    Expired(i64),
    /// Before its `nbf` or issued in the future.
    #[error("token is not valid before {0} (unix seconds)")]
    NotYetValid(i64),
    /// A claim this verifier requires is absent.
    #[error("token has no `{0}` claim, which this verifier requires")]
    MissingClaim(String),
    /// `iat` is further in the past than the verifier's maximum token age.
    #[error(
        "token was issued at {iat} (unix seconds), longer ago than the maximum age of {max_age_secs} s: get a fresh token"
    )]
    TooOld {
        /// The token's `iat`.
        iat: i64,
        /// The maximum age, in seconds.
        max_age_secs: i64,
    },
    /// `aud` names several parties; a token must be meant for exactly one.
    #[error("token names {0} audiences: only a token for exactly one audience is accepted")]
    TooManyAudiences(usize),
    /// Signing failed (a key that aws-lc-rs refused).
    #[error("signing failed: {0}")]
    Signing(String),
}

impl TokenError {
    /// The stable error code reported to clients.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "token_malformed",
            Self::AlgNotAllowed(_) => "token_alg_not_allowed",
            Self::HeaderNotAllowed(_) => "token_header_not_allowed",
            Self::UnknownKid(_) => "token_unknown_kid",
            Self::BadSignature => "token_bad_signature",
            Self::WrongIssuer(_) => "token_wrong_issuer",
            Self::WrongAudience(..) => "token_wrong_audience",
            Self::Expired(_) => "token_expired",
            Self::NotYetValid(_) => "token_not_yet_valid",
            Self::MissingClaim(_) => "token_missing_claim",
            Self::TooOld { .. } => "token_too_old",
            Self::TooManyAudiences(_) => "token_multiple_audiences",
            Self::Signing(_) => "signing_failed",
        }
    }
}

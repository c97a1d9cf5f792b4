//! Mandate's tokens: ECDSA P-256 signing keys with rotation, JWT-SVID identity tokens,
//! task tokens, the JWKS that publishes the keys, and the bounded cache of verified tokens.
//!
//! Tokens are compact JWS with `alg: ES256` (the fixed 64-byte `r || s` signature), the
//! algorithm the SPIFFE JWT-SVID specification and its verifiers (go-spiffe, py-spiffe)
//! accept. Keys made before the ES256 upgrade are Ed25519: a ring upgraded in place keeps
//! publishing them, and verifying their `EdDSA` tokens, until their overlap ends.
//! Verification is strict by construction (../shared/BRIEF.md S2): the algorithm must be
//! the one of the key the `kid` names, the key comes from Mandate's own key ring only
//! (headers that carry or point at keys are refused), `aud` must be a single string equal
//! to the expected audience, `exp` is required, and leeway is bounded. Time is passed in,
//! never read from the system.
//!
//! Tokens from other issuers (an OIDC provider, a SPIFFE trust domain) are verified by
//! [`external::verify`] against that issuer's keys ([`jwk::parse_jwks`]), with the same
//! header rules and an explicit algorithm allow-list.
//!
//! Why not the `jsonwebtoken` crate: its claim validation reads the system clock, which
//! would make expiry untestable without sleeping, and its errors do not distinguish the
//! header faults we must report. Signing and verification here are a thin layer over
//! aws-lc-rs; interoperability is proven in tests by verifying our tokens with
//! `jsonwebtoken` and py-spiffe through the published JWKS.

mod cache;
mod claims;
pub mod dpop;
mod error;
pub mod external;
pub mod jwk;
mod jws;
mod keys;

pub use cache::VerifiedCache;
pub use claims::{Act, Confirmation, IdentityClaims, RegisteredClaims, TaskClaims};
pub use error::TokenError;
pub use jws::{Expectations, sign, sign_typed, verify};
pub use keys::{Jwk, Jwks, KeyRing, PublicKey, SigningKey, StoredKey};

//! Mandate's tokens: Ed25519 signing keys with rotation, JWT-SVID identity tokens, task
//! tokens, the JWKS that publishes the keys, and the bounded cache of verified tokens.
//!
//! Tokens are compact JWS with `alg: EdDSA` only. Verification is strict by construction
//! (../shared/BRIEF.md S2): the algorithm allow-list has one entry, the key is chosen by
//! `kid` from Mandate's own key ring only (headers that carry or point at keys are
//! refused), `aud` must be a single string equal to the expected audience, `exp` is
//! required, and leeway is bounded. Time is passed in, never read from the system.
//!
//! Why not the `jsonwebtoken` crate: its claim validation reads the system clock, which
//! would make expiry untestable without sleeping, and its errors do not distinguish the
//! header faults we must report. Signing and verification here are a thin layer over
//! aws-lc-rs; interoperability is proven in tests by verifying our tokens with
//! `jsonwebtoken` through the published JWKS.

mod cache;
mod claims;
pub mod dpop;
mod error;
pub mod external;
pub mod jwk;
mod jws;
mod keys;

pub use cache::VerifiedCache;
pub use claims::{Act, IdentityClaims, RegisteredClaims, TaskClaims};
pub use error::TokenError;
pub use jws::{Expectations, sign, sign_typed, verify};
pub use keys::{Jwk, Jwks, KeyRing, PublicKey, SigningKey, StoredKey};

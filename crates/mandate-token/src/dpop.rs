//! DPoP proofs (RFC 9449): sender-constrained task tokens.

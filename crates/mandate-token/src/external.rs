//! Tokens issued by someone else (an OIDC issuer, a SPIFFE trust domain), verified against
//! their published keys.

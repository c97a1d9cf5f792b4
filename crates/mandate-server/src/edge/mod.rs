//! The HTTP edge every adapter shares, so that no adapter depends on another: strict
//! extraction of attacker input (one JSON parser, one bearer-token reader) and the one
//! outbound client with its SSRF guard.

pub mod call;
pub mod extract;
pub mod sender;
pub mod upstream;

pub use call::{DecideRequest, traceparent};
pub use extract::{
    ApiJson, ApiQuery, Bearer, POINT_HEADER, bearer_token, enforcement_point, strict_json_body,
};
pub use upstream::{check_literal, client};

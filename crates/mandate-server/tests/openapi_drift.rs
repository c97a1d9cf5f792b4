//! The committed OpenAPI document must match the one generated from the code.
//! Regenerate with `MANDATE_UPDATE_OPENAPI=1 cargo test -p mandate-server --test openapi_drift`.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

use std::path::Path;

#[test]
fn committed_openapi_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = format!("{}\n", mandate_server::api::openapi_document());
    if std::env::var_os("MANDATE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        panic!(
            "docs/openapi.json is out of date with the code: run `MANDATE_UPDATE_OPENAPI=1 cargo test -p mandate-server --test openapi_drift` and commit it"
        );
    }
}

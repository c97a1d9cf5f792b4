//! Mandate's JWT-SVIDs judged by an independent SPIFFE implementation, and the in-place
//! upgrade from Ed25519 to ES256 keys.
//!
//! py-spiffe (PyPI `spiffe`) validates the identity token an attested agent receives
//! against the JWKS Mandate publishes, read as the trust domain's JWT bundle: signature,
//! `alg` (the SPIFFE JWT-SVID spec allows RS/ES/PS only, so an EdDSA token is refused),
//! audience, expiry, and the subject's trust domain. These tests need
//! `MANDATE_TEST_IDENTITY_PYTHON=<python with spiffe>` (`bash
//! scripts/install-identity-peers.sh` installs it and prints the path). Without the
//! variable they say so on stderr and pass; set to something that cannot run, they fail.
//!
//! The upgrade test needs nothing outside: a store whose active key is Ed25519 (as every
//! Mandate before ES256 made) starts, rotates to ES256 with a `keys.rotated` event, and
//! keeps accepting the identity tokens the old key signed while it is published.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Harness, demo_policies};
use mandate_core::{Clock as _, ManualClock};
use mandate_store::{KeyRow, SqliteStore, Store as _};
use mandate_token::{IdentityClaims, KeyRing, StoredKey};
use serde_json::{Value, json};

const PY_ENV: &str = "MANDATE_TEST_IDENTITY_PYTHON";
const TRUST_DOMAIN: &str = "mandate.local";
const CONTROL_PLANE: &str = "mandate:control-plane";

fn python(test: &str) -> Option<PathBuf> {
    common::identity_python(test, "svid_interop")
}

/// One token for py-spiffe to judge.
struct Case<'a> {
    token: &'a str,
    jwks: &'a str,
    trust_domain: &'a str,
    audience: &'a str,
}

/// Runs every case through `fixtures/svid_check.py` in one process; one result per case.
fn py_spiffe(python: &Path, cases: &[Case<'_>]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/svid_check.py");
    let input = json!({
        "cases": cases.iter().map(|c| json!({
            "token": c.token,
            "jwks": c.jwks,
            "trust_domain": c.trust_domain,
            "audience": [c.audience],
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PY_ENV}={} cannot run: {e}", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "svid_check.py failed (is PyPI spiffe installed in {}?): {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), cases.len());
    results
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

fn refusal(result: &Value) -> &str {
    assert_eq!(result["ok"], false, "py-spiffe accepted it: {result}");
    result["error"].as_str().unwrap()
}

#[tokio::test]
async fn py_spiffe_validates_our_jwt_svid_with_our_bundle() {
    let Some(py) = python("py_spiffe_validates_our_jwt_svid_with_our_bundle") else {
        return;
    };
    let h = Harness::start().await;
    // Register, then attest with the join token (`Harness::agent`).
    let svid = h.agent("bot", 1).await;
    assert_eq!(header_of(&svid)["alg"], "ES256");
    let jwks = h
        .http
        .get(h.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let claims = claims_of(&svid);
    let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/agent/bot");
    assert_eq!(claims["sub"], spiffe_id);
    // Mandate writes `aud` as one string; the JWT-SVID spec allows a string or an array,
    // and py-spiffe reads either.
    assert_eq!(claims["aud"], CONTROL_PLANE);

    let tampered = {
        let mut c = claims.clone();
        c["sub"] = json!(format!("spiffe://{TRUST_DOMAIN}/agent/root"));
        let parts: Vec<&str> = svid.split('.').collect();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    // What an older Mandate issued: an EdDSA JWT-SVID under an Ed25519 key, published in
    // the same bundle. py-spiffe refuses it (the reason for ES256).
    let legacy_ring =
        KeyRing::from_stored(&[StoredKey::generate_legacy_ed25519(0).unwrap()], 1, 0).unwrap();
    let legacy = {
        let c: IdentityClaims = serde_json::from_value(claims.clone()).unwrap();
        mandate_token::sign(&legacy_ring, &c).unwrap()
    };
    let mut legacy_jwks: Value = serde_json::from_str(&jwks).unwrap();
    let legacy_now = h.clock.now_ms();
    legacy_jwks["keys"].as_array_mut().unwrap().extend(
        serde_json::to_value(legacy_ring.jwks(legacy_now)).unwrap()["keys"]
            .as_array()
            .unwrap()
            .clone(),
    );
    let legacy_jwks = legacy_jwks.to_string();

    let case = |token, jwks, trust_domain, audience| Case {
        token,
        jwks,
        trust_domain,
        audience,
    };
    let results = py_spiffe(
        &py,
        &[
            case(&svid, &jwks, TRUST_DOMAIN, CONTROL_PLANE),
            case(&svid, &jwks, TRUST_DOMAIN, "mandate:gateway"),
            case(&tampered, &jwks, TRUST_DOMAIN, CONTROL_PLANE),
            case(&svid, &jwks, "other.example", CONTROL_PLANE),
            case(&legacy, &legacy_jwks, TRUST_DOMAIN, CONTROL_PLANE),
        ],
    );

    eprintln!("py-spiffe said: {}", Value::from(results.clone()));
    let ok = &results[0];
    assert_eq!(ok["ok"], true, "py-spiffe refused our JWT-SVID: {ok}");
    assert_eq!(ok["spiffe_id"], spiffe_id);
    assert_eq!(ok["audience"], json!([CONTROL_PLANE]));
    assert_eq!(ok["expiry"], claims["exp"]);
    assert_eq!(
        ok["authorities"],
        json!([header_of(&svid)["kid"]]),
        "the bundle's one authority is the key that signed"
    );
    let wrong_aud = refusal(&results[1]);
    assert!(wrong_aud.to_lowercase().contains("audience"), "{wrong_aud}");
    let bad_sig = refusal(&results[2]);
    assert!(bad_sig.to_lowercase().contains("signature"), "{bad_sig}");
    let other_domain = refusal(&results[3]);
    assert!(other_domain.contains("trust domain"), "{other_domain}");
    let eddsa = refusal(&results[4]);
    assert!(eddsa.contains("EdDSA"), "{eddsa}");
}

#[tokio::test]
async fn a_server_upgraded_in_place_rotates_to_es256_and_keeps_old_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let clock = Arc::new(ManualClock::new(jiff::Timestamp::now().as_millisecond()));
    let now = clock.now_ms();
    // The store as a Mandate before ES256 left it: one active Ed25519 key, an hour old.
    let legacy = StoredKey::generate_legacy_ed25519(now - 3_600_000).unwrap();
    {
        let store = SqliteStore::open(&data).await.unwrap();
        let row = KeyRow {
            kid: legacy.kid.clone(),
            pkcs8: legacy.pkcs8.clone(),
            created_at_ms: legacy.created_at_ms,
            retired_at_ms: None,
        };
        store
            .rotate_keys(&row, now - 3_600_000, 0, None)
            .await
            .unwrap();
    }

    let server =
        mandate_server::Server::start(common::config(&data, &demo_policies(), clock.clone()))
            .await
            .unwrap();
    let h = Harness {
        server,
        clock,
        http: reqwest::Client::new(),
        dir,
    };
    let ring = h.server.engine.keys();
    assert_eq!(ring.active().alg(), mandate_token::jwk::Alg::ES256);
    assert_ne!(ring.active().kid(), legacy.kid);
    let store = SqliteStore::open_existing(&data).await.unwrap();
    let rotations: Vec<_> = store
        .events_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "keys.rotated")
        .collect();
    assert_eq!(rotations.len(), 1, "{rotations:?}");
    assert_eq!(rotations[0].data["reason"], "algorithm upgrade to ES256");
    assert_eq!(rotations[0].data["kid"], ring.active().kid());

    // Both keys are published: the new EC key and the old OKP key for its overlap.
    let jwks = h.get("/.well-known/jwks.json", None).await.body;
    let mut published: Vec<(String, String)> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kty"].as_str().unwrap().to_owned(),
                k["alg"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    published.sort();
    assert_eq!(
        published,
        [
            ("EC".to_owned(), "ES256".to_owned()),
            ("OKP".to_owned(), "EdDSA".to_owned())
        ]
    );

    // New identities are ES256; one the old key signed (same claims, EdDSA) still starts a
    // task while that key is published.
    let fresh = h.agent("bot", 1).await;
    assert_eq!(header_of(&fresh)["alg"], "ES256");
    let old_ring = KeyRing::from_stored(&[legacy], 1, 0).unwrap();
    let c: IdentityClaims = serde_json::from_value(claims_of(&fresh)).unwrap();
    let old = mandate_token::sign(&old_ring, &c).unwrap();
    assert_eq!(header_of(&old)["alg"], "EdDSA");
    let (_, task_token) = h.task(&old).await;
    assert_eq!(header_of(&task_token)["alg"], "ES256");
}

//! DPoP proofs made by an independent implementation: PyPI `joserfc` generates the key,
//! signs the proof (header `typ: dpop+jwt`, `jwk` = its public key), hashes the access
//! token into `ath` and computes the key's RFC 7638 thumbprint. `dpop::verify` must accept
//! the proof and arrive at the same thumbprint, and refuse it for another request.
//!
//! Needs `MANDATE_TEST_IDENTITY_PYTHON=<python with joserfc>` (`bash
//! scripts/install-identity-peers.sh` installs it and prints the path). Without the
//! variable the tests say so on stderr and pass; set to something that cannot run, they
//! fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mandate_token::dpop::{self, Limits, Request};
use serde_json::Value;

const PY_ENV: &str = "MANDATE_TEST_IDENTITY_PYTHON";

const NOW: i64 = 1_750_000_000;
const URL: &str = "https://mandate.example/v1/decide";
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl";

/// Makes one key and one proof with joserfc; prints `{"proof": .., "jkt": ..}`.
/// argv: key type (`P-256` or `Ed25519`), htm, htu, iat, access token or "".
const MAKE_PROOF: &str = r#"
import base64, hashlib, json, sys, uuid
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey

kind, htm, htu, iat, token = sys.argv[1:6]
if kind == "P-256":
    key, alg = ECKey.generate_key("P-256"), "ES256"
else:
    key, alg = OKPKey.generate_key("Ed25519"), "EdDSA"
header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
claims = {"jti": str(uuid.uuid4()), "htm": htm, "htu": htu, "iat": int(iat)}
if token:
    digest = hashlib.sha256(token.encode("ascii")).digest()
    claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
proof = jwt.encode(header, claims, key, algorithms=[alg])
print(json.dumps({"proof": proof, "jkt": key.thumbprint()}))
"#;

fn python(test: &str) -> Option<PathBuf> {
    let Some(p) = std::env::var_os(PY_ENV) else {
        eprintln!(
            "SKIPPED {test}: {PY_ENV} is not set. To run the DPoP interop tests: \
             {PY_ENV}=\"$(bash scripts/install-identity-peers.sh | tail -n 1)\" \
             cargo test -p mandate-token --test dpop_interop"
        );
        return None;
    };
    Some(PathBuf::from(p))
}

/// A proof from joserfc, and joserfc's thumbprint of its key.
struct Made {
    proof: String,
    jkt: String,
}

fn joserfc_proof(python: &Path, kind: &str, htm: &str, htu: &str, token: Option<&str>) -> Made {
    let out = Command::new(python)
        .args(["-c", MAKE_PROOF, kind, htm, htu, &NOW.to_string()])
        .arg(token.unwrap_or_default())
        .output()
        .unwrap_or_else(|e| panic!("{PY_ENV}={} cannot run: {e}", python.display()));
    assert!(
        out.status.success(),
        "joserfc failed (is it installed in {}?): {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "joserfc printed no proof ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    Made {
        proof: v["proof"].as_str().unwrap().to_owned(),
        jkt: v["jkt"].as_str().unwrap().to_owned(),
    }
}

fn request(token: Option<&'static str>) -> Request<'static> {
    Request {
        method: "POST",
        uri: URL,
        access_token: token,
        now_secs: NOW,
    }
}

#[test]
fn joserfc_proofs_verify_with_the_same_thumbprint() {
    let Some(py) = python("joserfc_proofs_verify_with_the_same_thumbprint") else {
        return;
    };
    for kind in ["P-256", "Ed25519"] {
        for token in [Some(TOKEN), None] {
            let made = joserfc_proof(&py, kind, "POST", URL, token);
            let proof = dpop::verify(&made.proof, &request(token), &Limits::default())
                .unwrap_or_else(|e| panic!("{kind}, token {token:?}: {e}"));
            assert_eq!(proof.jkt, made.jkt, "{kind}: thumbprints differ");
            assert_eq!(proof.iat, NOW);
            dpop::check_binding(&proof, &made.jkt).unwrap();
        }
    }
}

#[test]
fn joserfc_htu_is_compared_after_normalisation() {
    let Some(py) = python("joserfc_htu_is_compared_after_normalisation") else {
        return;
    };
    let htu = "HTTPS://Mandate.Example:443/v1/./decide?from=joserfc#f";
    let made = joserfc_proof(&py, "P-256", "POST", htu, Some(TOKEN));
    let proof = dpop::verify(&made.proof, &request(Some(TOKEN)), &Limits::default()).unwrap();
    assert_eq!(proof.jkt, made.jkt);
}

#[test]
fn joserfc_proofs_are_refused_for_another_request() {
    let Some(py) = python("joserfc_proofs_are_refused_for_another_request") else {
        return;
    };
    let made = joserfc_proof(&py, "P-256", "POST", URL, Some(TOKEN));
    let limits = Limits::default();
    let cases: Vec<(&str, Request<'_>, &str)> = vec![
        (
            "another method",
            Request {
                method: "GET",
                ..request(Some(TOKEN))
            },
            "dpop_wrong_method",
        ),
        (
            "another URL",
            Request {
                uri: "https://mandate.example/v1/tasks",
                ..request(Some(TOKEN))
            },
            "dpop_wrong_uri",
        ),
        (
            "another token",
            request(Some("another.access.token")),
            "dpop_ath_mismatch",
        ),
        (
            "too late",
            Request {
                now_secs: NOW + 61,
                ..request(Some(TOKEN))
            },
            "dpop_stale",
        ),
    ];
    for (name, req, code) in cases {
        let err = dpop::verify(&made.proof, &req, &limits).unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err}");
    }
    let only_eddsa = Limits {
        algs: &[mandate_token::jwk::Alg::EdDSA],
        ..Limits::default()
    };
    let err = dpop::verify(&made.proof, &request(Some(TOKEN)), &only_eddsa).unwrap_err();
    assert_eq!(err.code(), "dpop_alg_not_allowed");
    let other = joserfc_proof(&py, "P-256", "POST", URL, Some(TOKEN));
    let proof = dpop::verify(&made.proof, &request(Some(TOKEN)), &limits).unwrap();
    assert_eq!(
        dpop::check_binding(&proof, &other.jkt).unwrap_err().code(),
        "dpop_key_mismatch"
    );
}

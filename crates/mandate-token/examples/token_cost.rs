//! Cost of signing and verifying one identity token: with the ES256 key Mandate signs with,
//! and with an Ed25519 key from before the upgrade (EdDSA), side by side.
//!
//! Wall clock: `cargo run --release -p mandate-token --example token_cost` (µs per op over
//! 10,000 ops after a warm-up). Instructions: run the release binary under
//! `valgrind --tool=callgrind --toggle-collect='*token_cost*sign_loop*'` (or `verify_loop`)
//! with `sign`, `verify`, `sign-eddsa` or `verify-eddsa` and a count as arguments; divide
//! the total by the count.

use std::hint::black_box;
use std::time::Instant;

use mandate_token::{Expectations, IdentityClaims, KeyRing, StoredKey};

const ISS: &str = "http://127.0.0.1:8181";
const AUD: &str = "mandate:control-plane";

fn claims() -> IdentityClaims {
    IdentityClaims {
        iss: ISS.into(),
        sub: "spiffe://mandate.local/agent/bot".into(),
        aud: AUD.into(),
        exp: 1_300,
        iat: 1_000,
        nbf: 1_000,
        jti: "0190a3c2-7d4e-7c3b-9e51-3f1a2b4c5d6e".into(),
        auth_time: 1_000,
    }
}

fn expect() -> Expectations<'static> {
    Expectations {
        issuer: ISS,
        audience: AUD,
        leeway_secs: 30,
        now_secs: 1_000,
    }
}

#[inline(never)]
fn sign_loop(ring: &KeyRing, c: &IdentityClaims, n: u32) -> usize {
    let mut total = 0;
    for _ in 0..n {
        total += black_box(mandate_token::sign(ring, c).map_or(0, |t| t.len()));
    }
    total
}

#[inline(never)]
fn verify_loop(ring: &KeyRing, token: &str, n: u32) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        ok += usize::from(
            mandate_token::verify::<IdentityClaims>(black_box(token), ring, &expect()).is_ok(),
        );
    }
    ok
}

fn time(label: &str, n: u32, f: impl Fn(u32) -> usize) {
    f(n / 10);
    let start = Instant::now();
    let out = black_box(f(n));
    let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("{label}: {us:.2} µs/op over {n} ops ({out})");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let es256 = KeyRing::from_stored(&[StoredKey::generate(0)?], 1_000, 0)?;
    let eddsa = KeyRing::from_stored(&[StoredKey::generate_legacy_ed25519(0)?], 1_000, 0)?;
    let c = claims();
    let es_token = mandate_token::sign(&es256, &c)?;
    let ed_token = mandate_token::sign(&eddsa, &c)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, n] => {
            let n: u32 = n.parse()?;
            let out = match mode.as_str() {
                "sign" => sign_loop(&es256, &c, n),
                "verify" => verify_loop(&es256, &es_token, n),
                "sign-eddsa" => sign_loop(&eddsa, &c, n),
                "verify-eddsa" => verify_loop(&eddsa, &ed_token, n),
                other => return Err(format!("unknown mode {other:?}").into()),
            };
            println!("{mode} x{n}: {out}");
        }
        _ => {
            time("ES256 sign", 10_000, |n| sign_loop(&es256, &c, n));
            time("ES256 verify", 10_000, |n| {
                verify_loop(&es256, &es_token, n)
            });
            time("EdDSA sign", 10_000, |n| sign_loop(&eddsa, &c, n));
            time("EdDSA verify", 10_000, |n| {
                verify_loop(&eddsa, &ed_token, n)
            });
        }
    }
    Ok(())
}

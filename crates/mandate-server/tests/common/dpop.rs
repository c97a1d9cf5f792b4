//! An agent's proof-of-possession key and the DPoP proofs (RFC 9449) it signs, made here
//! with aws-lc-rs (the `dpop` test also checks proofs from PyPI joserfc).

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// An agent's proof-of-possession key.
pub struct Holder {
    key: EcdsaKeyPair,
    n: std::cell::Cell<u32>,
}

impl Holder {
    pub fn new() -> Self {
        Self {
            key: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            n: std::cell::Cell::new(0),
        }
    }

    pub fn jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])})
    }

    pub fn jkt(&self) -> String {
        let j = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            j["x"].as_str().unwrap(),
            j["y"].as_str().unwrap()
        );
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    pub fn proof(&self, method: &str, url: &str, token: Option<&str>, iat: i64) -> String {
        self.n.set(self.n.get() + 1);
        let mut claims = json!({"jti": format!("p-{}-{}", iat, self.n.get()), "htm": method, "htu": url, "iat": iat});
        if let Some(t) = token {
            claims["ath"] =
                json!(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, t.as_bytes())));
        }
        let mut t = b64(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()}));
        t.push('.');
        t.push_str(&b64(&claims));
        let sig = self.key.sign(&SystemRandom::new(), t.as_bytes()).unwrap();
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        t
    }
}

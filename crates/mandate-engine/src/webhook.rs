//! Approver-group webhooks: signed JSON notifications that teams wire into chat tools.
//!
//! Each POST carries `Mandate-Signature: t=<unix secs>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<body>"` under the group's secret, so a receiver can check that Mandate sent it
//! and refuse replays outside its tolerance. Delivery is best effort with retries, off the
//! request path; the approval itself never depends on it. Redirects are not followed.

use std::time::Duration;

use aws_lc_rs::hmac;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "mandate-signature";
/// Header naming the event.
pub const EVENT_HEADER: &str = "mandate-event";

const ATTEMPTS: u32 = 3;

/// The client webhooks are sent with: short timeouts, no redirects.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .user_agent(concat!("mandate/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `t=<ts>,v1=<hex>`: HMAC-SHA256 of `"<ts>.<body>"` under `secret`.
pub fn signature(secret: &[u8], ts_secs: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(ts_secs.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={ts_secs},v1={hex}")
}

/// Checks a `Mandate-Signature` header value against the body, in constant time, with a
/// tolerance on its timestamp (for receivers, and for tests).
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> bool {
    let mut ts = None;
    let mut sig = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => ts = v.parse::<i64>().ok(),
            Some(("v1", v)) => sig = Some(v),
            _ => {}
        }
    }
    let (Some(ts), Some(sig)) = (ts, sig) else {
        return false;
    };
    if (now_secs - ts).abs() > tolerance_secs {
        return false;
    }
    let want = signature(secret, ts, body);
    let given = format!("t={ts},v1={sig}");
    aws_lc_rs::constant_time::verify_slices_are_equal(want.as_bytes(), given.as_bytes()).is_ok()
}

/// Posts `body` to `url`, signed, retrying transient failures. Returns the last error.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    event: &str,
    body: Vec<u8>,
    now_secs: impl Fn() -> i64,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            #[expect(
                clippy::disallowed_methods,
                reason = "backoff between webhook delivery attempts"
            )]
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        let sig = signature(secret.as_bytes(), now_secs(), &body);
        let sent = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sig)
            .header(EVENT_HEADER, event)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return Ok(()),
            // A redirect is not followed (it could point anywhere), nor retried.
            Ok(r) if r.status().is_redirection() => {
                return Err(format!("webhook answered a redirect ({})", r.status()));
            }
            Ok(r) => last = format!("webhook answered {}", r.status()),
            Err(e) => last = format!("webhook unreachable: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_catch_tampering() {
        let h = signature(b"k", 1_000, b"{\"a\":1}");
        assert!(h.starts_with("t=1000,v1="));
        assert!(verify(b"k", &h, b"{\"a\":1}", 1_010, 300));
        assert!(!verify(b"k", &h, b"{\"a\":2}", 1_010, 300), "body changed");
        assert!(!verify(b"other", &h, b"{\"a\":1}", 1_010, 300), "wrong key");
        assert!(!verify(b"k", &h, b"{\"a\":1}", 2_000, 300), "too old");
        assert!(!verify(b"k", "t=1000", b"{\"a\":1}", 1_000, 300));
        // RFC 4231 test case 2 pins the primitive.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

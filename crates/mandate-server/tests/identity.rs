//! Workload identity end to end: a local OIDC issuer the test starts (its own keys,
//! discovery document and JWKS, on a real socket) and a SPIFFE bundle file attest agents
//! through their rules; every hostile variant is refused with its code and recorded. The
//! OAuth face: RFC 8414 metadata, `client_credentials` with a client assertion starting a
//! task, RFC 7662 introspection and RFC 7009 revocation.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{ADMIN, Harness, Reply, demo_policies};
use mandate_core::Clock as _;
use mandate_engine::workload::IdentityConfig;
use serde_json::{Value, json};

const AUDIENCE: &str = "mandate-test";

/// `application/x-www-form-urlencoded` bodies (reqwest is built without its form feature).
trait Form {
    fn form<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self;
}

impl Form for reqwest::RequestBuilder {
    fn form<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k.as_ref(), v.as_ref());
        }
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(s.finish())
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// One signing key of the test issuer.
enum Key {
    Es(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Key {
    fn es() -> Self {
        Self::Es(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    fn ed() -> Self {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self::Ed(Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap())
    }
    fn alg(&self) -> &'static str {
        match self {
            Self::Es(_) => "ES256",
            Self::Ed(_) => "EdDSA",
        }
    }
    fn jwk(&self, kid: &str) -> Value {
        match self {
            Self::Es(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&p[1..33]),
                       "y": URL_SAFE_NO_PAD.encode(&p[33..65]), "kid": kid, "use": "sig", "alg": "ES256"})
            }
            Self::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(k.public_key().as_ref()), "kid": kid, "use": "sig"}),
        }
    }
    fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut t = b64(&json!({"alg": self.alg(), "typ": "JWT", "kid": kid}));
        t.push('.');
        t.push_str(&b64(claims));
        let sig = match self {
            Self::Es(k) => k
                .sign(&SystemRandom::new(), t.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            Self::Ed(k) => k.sign(t.as_bytes()).as_ref().to_vec(),
        };
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
    }
}

/// A real OIDC issuer on a loopback socket: discovery, JWKS, and tokens signed with its
/// keys. Keys can be added (rotation); JWKS fetches are counted.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<(String, Key)>>>,
    fetches: Arc<AtomicUsize>,
    /// While set, the JWKS answers 503.
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Issuer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys: Arc<Mutex<Vec<(String, Key)>>> = Arc::new(Mutex::new(vec![
            ("es-1".into(), Key::es()),
            ("ed-1".into(), Key::ed()),
        ]));
        let fetches = Arc::new(AtomicUsize::new(0));
        let discovery = json!({
            "issuer": url, "jwks_uri": format!("{url}/keys"),
            "id_token_signing_alg_values_supported": ["ES256"],
        });
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (k, f, d) = (Arc::clone(&keys), Arc::clone(&fetches), Arc::clone(&down));
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/keys",
                axum::routing::get(move || async move {
                    use axum::response::IntoResponse as _;
                    f.fetch_add(1, Ordering::SeqCst);
                    if d.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let keys: Vec<Value> = k
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(kid, k)| k.jwk(kid))
                        .collect();
                    axum::Json(json!({ "keys": keys })).into_response()
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            keys,
            fetches,
            down,
        }
    }

    fn sign_with(&self, kid: &str, claims: &Value) -> String {
        let keys = self.keys.lock().unwrap();
        let (_, k) = keys.iter().find(|(id, _)| id == kid).unwrap();
        k.sign(kid, claims)
    }

    fn rotate(&self, kid: &str) {
        self.keys.lock().unwrap().push((kid.into(), Key::es()));
    }
}

/// Claims of a Kubernetes projected service-account token.
fn k8s_claims(iss: &str, now: i64, sa: &str, jti: &str) -> Value {
    json!({
        "iss": iss, "aud": [AUDIENCE], "sub": format!("system:serviceaccount:prod:{sa}"),
        "iat": now, "nbf": now, "exp": now + 600, "jti": jti,
        "kubernetes.io": { "namespace": "prod", "serviceaccount": { "name": sa, "uid": "u-1" } },
    })
}

fn identity_config(issuer: &str, bundle: &std::path::Path) -> IdentityConfig {
    IdentityConfig::from_toml(&format!(
        r#"
        refresh_min_interval_secs = 60
        [[oidc]]
        name = "k8s"
        issuer = "{issuer}"
        audience = "{AUDIENCE}"
        algorithms = ["ES256"]
        max_token_age_secs = 900
        [[spiffe]]
        name = "partner"
        trust_domain = "partner.example"
        bundle_file = "{}"
        audience = "{AUDIENCE}"
        "#,
        bundle.display()
    ))
    .unwrap()
}

struct World {
    h: Harness,
    issuer: Issuer,
    spiffe: (String, Key),
    _bundle_dir: tempfile::TempDir,
}

async fn world() -> World {
    let issuer = Issuer::start().await;
    let spiffe_key = Key::es();
    let bundle_dir = tempfile::tempdir().unwrap();
    let bundle = bundle_dir.path().join("partner.json");
    let mut jwk = spiffe_key.jwk("svid-1");
    jwk["use"] = json!("jwt-svid");
    std::fs::write(
        &bundle,
        serde_json::to_vec(&json!({"keys": [jwk], "spiffe_refresh_hint": 300})).unwrap(),
    )
    .unwrap();
    let config = Arc::new(identity_config(&issuer.url, &bundle));
    let h = Harness::start_configured(&demo_policies(), |c| c.identity = Some(config)).await;
    World {
        h,
        issuer,
        spiffe: ("svid-1".into(), spiffe_key),
        _bundle_dir: bundle_dir,
    }
}

impl World {
    fn now(&self) -> i64 {
        self.h.clock.now_ms() / 1000
    }

    async fn register(&self, name: &str, attestation: Value) -> Reply {
        self.h
            .post(
                "/v1/agents",
                Some(ADMIN),
                json!({"name": name, "owner": "alice@example.com", "tier": 1, "attestation": attestation}),
            )
            .await
    }

    async fn attest(&self, assertion: &str) -> Reply {
        self.h
            .post("/v1/attest", None, json!({ "assertion": assertion }))
            .await
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Reply {
        let req = self.h.http.post(self.h.url("/oauth2/token")).form(form);
        self.h.send(req).await
    }

    async fn refused_codes(&self) -> Vec<String> {
        let r = self
            .h
            .get(
                "/v1/audit/events?kind=attestation.refused&limit=1000",
                Some(ADMIN),
            )
            .await;
        r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["data"]["code"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn rule(sa: &str) -> Value {
    json!({"method": "oidc", "issuer": "k8s", "claims": {
        "sub": format!("system:serviceaccount:prod:{sa}"),
        "/kubernetes.io/namespace": "prod",
    }})
}

#[tokio::test]
async fn an_oidc_token_attests_the_one_agent_its_claims_map_to() {
    let w = world().await;
    let r = w.register("web", rule("web")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(
        r.body.get("join_token").is_none(),
        "an OIDC agent gets no join token: {:?}",
        r.body
    );
    // A join token would bypass the rule.
    let r =
        w.h.post("/v1/agents/web/join-tokens", Some(ADMIN), json!({}))
            .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "attestation_method_mismatch")
    );

    let token = w
        .issuer
        .sign_with("es-1", &k8s_claims(&w.issuer.url, w.now(), "web", "j-1"));
    let r = w.attest(&token).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.body["spiffe_id"]
            .as_str()
            .unwrap()
            .ends_with("/agent/web")
    );
    let identity = r.body["identity_token"].as_str().unwrap().to_owned();
    let (_, task_token) = w.h.task(&identity).await;
    assert_eq!(
        w.h.decide(&task_token, "tickets.search", "read").await.body["outcome"],
        "allow"
    );

    // The attestation record names the issuer, the subject and the token's jti.
    let r =
        w.h.get(
            "/v1/audit/events?kind=agent.attested&agent=web",
            Some(ADMIN),
        )
        .await;
    let ev = &r.body["events"][0]["data"];
    assert_eq!(ev["method"], "oidc:k8s");
    assert_eq!(
        ev["external"],
        json!({"source": "oidc:k8s", "subject": "system:serviceaccount:prod:web", "jti": "j-1"})
    );
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_their_code_and_recorded() {
    let w = world().await;
    assert_eq!(w.register("web", rule("web")).await.status, 201);
    let now = w.now();
    let iss = w.issuer.url.clone();
    let good = |jti: &str| k8s_claims(&iss, now, "web", jti);
    let with = |jti: &str, f: &dyn Fn(&mut Value)| {
        let mut c = good(jti);
        f(&mut c);
        c
    };
    let forged = {
        // Same kid, another key: the signature does not verify.
        Key::es().sign("es-1", &good("f-1"))
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "token_wrong_audience",
            w.issuer.sign_with(
                "es-1",
                &with("a-1", &|c| c["aud"] = json!(["someone-else"])),
            ),
        ),
        (
            "token_wrong_audience",
            w.issuer
                .sign_with("es-1", &with("a-2", &|c| c["aud"] = json!("someone-else"))),
        ),
        // A token for several parties could be replayed by any of them.
        (
            "token_multiple_audiences",
            w.issuer.sign_with(
                "es-1",
                &with("a-3", &|c| c["aud"] = json!([AUDIENCE, "other"])),
            ),
        ),
        (
            "untrusted_issuer",
            w.issuer.sign_with(
                "es-1",
                &with("i-1", &|c| c["iss"] = json!("https://evil.example")),
            ),
        ),
        (
            "token_expired",
            w.issuer.sign_with(
                "es-1",
                &with("e-1", &|c| {
                    c["iat"] = json!(now - 700);
                    c["nbf"] = json!(now - 700);
                    c["exp"] = json!(now - 100);
                }),
            ),
        ),
        (
            "token_not_yet_valid",
            w.issuer
                .sign_with("es-1", &with("n-1", &|c| c["nbf"] = json!(now + 600))),
        ),
        (
            "token_too_old",
            w.issuer.sign_with(
                "es-1",
                &with("o-1", &|c| {
                    c["iat"] = json!(now - 1000);
                    c["exp"] = json!(now + 600);
                }),
            ),
        ),
        // Published by the issuer, but not an allowed algorithm for it.
        (
            "token_alg_not_allowed",
            w.issuer.sign_with("ed-1", &good("g-1")),
        ),
        ("token_bad_signature", forged),
        (
            "no_agent_matches",
            w.issuer
                .sign_with("es-1", &k8s_claims(&iss, now, "db", "m-1")),
        ),
        (
            "no_agent_matches",
            w.issuer.sign_with(
                "es-1",
                &with("m-2", &|c| c["kubernetes.io"]["namespace"] = json!("dev")),
            ),
        ),
        ("token_malformed", "not-a-jwt".into()),
    ];
    let mut expected = Vec::new();
    for (code, token) in &cases {
        let r = w.attest(token).await;
        assert_eq!(r.status, 401, "{code}: {:?}", r.body);
        assert_eq!(r.code(), *code, "{:?}", r.body);
        expected.push(code.to_string());
    }

    // Replay: the first use attests, the second is refused.
    let once = w.issuer.sign_with("es-1", &good("r-1"));
    assert_eq!(w.attest(&once).await.status, 200);
    let r = w.attest(&once).await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "assertion_replayed"));
    expected.push("assertion_replayed".into());

    // Two agents whose rules both accept the token: ambiguous, refused.
    let r = w
        .register(
            "web-admin",
            json!({"method": "oidc", "issuer": "k8s", "claims": {
            "/kubernetes.io/serviceaccount/name": "web"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = w.attest(&w.issuer.sign_with("es-1", &good("b-1"))).await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "ambiguous_agent"));
    expected.push("ambiguous_agent".into());

    // Quarantined: refused as not active.
    let r =
        w.h.post(
            "/v1/agents/web-admin/status",
            Some(ADMIN),
            json!({"status": "offboarded", "reason": "duplicate rule"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r =
        w.h.post(
            "/v1/agents/web/status",
            Some(ADMIN),
            json!({"status": "quarantined", "reason": "test"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = w.attest(&w.issuer.sign_with("es-1", &good("q-1"))).await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "agent_not_active"));
    expected.push("agent_not_active".into());

    assert_eq!(w.refused_codes().await, expected);
}

#[tokio::test]
async fn registration_checks_rules_against_the_configured_sources() {
    let w = world().await;
    for (attestation, status, code) in [
        (
            json!({"method": "oidc", "issuer": "gitlab", "claims": {"sub": "x"}}),
            422,
            "unknown_issuer",
        ),
        (
            json!({"method": "oidc", "issuer": "k8s", "claims": {}}),
            422,
            "invalid_request",
        ),
        (
            json!({"method": "spiffe", "id": "spiffe://elsewhere.example/x"}),
            422,
            "unknown_issuer",
        ),
        (
            json!({"method": "spiffe", "id": "spiffe://partner.example/a/../b"}),
            422,
            "invalid_request",
        ),
        (
            json!({"method": "oidc", "issuer": "k8s"}),
            422,
            "invalid_request",
        ),
    ] {
        let r = w.register("x", attestation.clone()).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (status, code),
            "{attestation}: {:?}",
            r.body
        );
    }
    assert_eq!(w.register("web", rule("web")).await.status, 201);
    let r = w.register("web2", rule("web")).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "attestation_rule_taken")
    );
}

#[tokio::test]
async fn new_keys_are_fetched_on_an_unknown_kid_at_a_bounded_rate() {
    let w = world().await;
    assert_eq!(w.register("web", rule("web")).await.status, 201);
    let now = w.now();
    let r = w
        .attest(
            &w.issuer
                .sign_with("es-1", &k8s_claims(&w.issuer.url, now, "web", "k-1")),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.issuer.fetches.load(Ordering::SeqCst), 1);

    // The issuer rotates: the new kid is unknown, so the keys are fetched again (once
    // the least interval since the last fetch has passed).
    w.h.clock.advance_ms(61_000);
    let now = w.now();
    w.issuer.rotate("es-2");
    let r = w
        .attest(
            &w.issuer
                .sign_with("es-2", &k8s_claims(&w.issuer.url, now, "web", "k-2")),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.issuer.fetches.load(Ordering::SeqCst), 2);

    // A flood of unknown kids costs no further fetch within the interval.
    for i in 0..20 {
        let token = Key::es().sign(
            &format!("nope-{i}"),
            &k8s_claims(&w.issuer.url, now, "web", &format!("u-{i}")),
        );
        assert_eq!(w.attest(&token).await.code(), "token_unknown_kid");
    }
    assert_eq!(w.issuer.fetches.load(Ordering::SeqCst), 2);
    // After the interval, one more.
    w.h.clock.advance_ms(61_000);
    w.issuer.rotate("es-3");
    let now = w.now();
    let r = w
        .attest(
            &w.issuer
                .sign_with("es-3", &k8s_claims(&w.issuer.url, now, "web", "k-3")),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(w.issuer.fetches.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_jwt_svid_from_a_trusted_bundle_attests() {
    let w = world().await;
    let id = "spiffe://partner.example/ns/billing/sa/agent";
    assert_eq!(
        w.register("partner-bot", json!({"method": "spiffe", "id": id}))
            .await
            .status,
        201
    );
    let now = w.now();
    let svid = |sub: &str, jti: &str| {
        w.spiffe.1.sign(
            &w.spiffe.0,
            &json!({"sub": sub, "aud": [AUDIENCE], "exp": now + 300, "iat": now, "jti": jti}),
        )
    };
    let r = w.attest(&svid(id, "s-1")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.body["spiffe_id"]
            .as_str()
            .unwrap()
            .ends_with("/agent/partner-bot")
    );

    // Another workload of the same trust domain has no agent; another trust domain is
    // not trusted at all; the bundle's key cannot vouch for it either.
    let r = w
        .attest(&svid("spiffe://partner.example/ns/other", "s-2"))
        .await;
    assert_eq!(r.code(), "no_agent_matches");
    let r = w
        .attest(&svid("spiffe://evil.example/ns/billing/sa/agent", "s-3"))
        .await;
    assert_eq!(r.code(), "untrusted_issuer");
}

#[tokio::test]
async fn the_token_endpoint_starts_a_task_for_a_workload_assertion() {
    let w = world().await;
    assert_eq!(w.register("web", rule("web")).await.status, 201);
    let now = w.now();
    let meta =
        w.h.get("/.well-known/oauth-authorization-server", None)
            .await;
    assert_eq!(meta.status, 200);
    let issuer = w.h.server.url().to_string();
    assert_eq!(
        meta.body["issuer"].as_str().unwrap().trim_end_matches('/'),
        issuer.trim_end_matches('/')
    );
    assert!(
        meta.body["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("client_credentials"))
    );
    assert_eq!(
        meta.body["token_endpoint"],
        format!("{}/oauth2/token", issuer.trim_end_matches('/'))
    );

    let assertion = w
        .issuer
        .sign_with("es-1", &k8s_claims(&w.issuer.url, now, "web", "t-1"));
    let details = json!([{"type": "mandate_task", "purpose": "triage the queue",
        "tools": ["tickets.search"], "actions": ["read"], "data_domains": ["support"], "ttl_secs": 300}])
    .to_string();
    let r = w
        .token_request(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion),
            ("authorization_details", &details),
        ])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.body["token_type"], "Bearer");
    assert!(r.body["expires_in"].as_i64().unwrap() <= 300);
    assert_eq!(
        r.body["authorization_details"][0]["purpose"],
        "triage the queue"
    );
    let access = r.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        w.h.decide(&access, "tickets.search", "read").await.body["outcome"],
        "allow"
    );

    // `scope` is the simpler form; the granted scope comes back.
    let assertion = w
        .issuer
        .sign_with("es-1", &k8s_claims(&w.issuer.url, now, "web", "t-2"));
    let r = w
        .token_request(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion),
            ("scope", "tool:tickets.search action:read data:support"),
        ])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["scope"],
        "tool:tickets.search action:read data:support"
    );

    // Refusals: OAuth errors with Mandate's code beside them.
    let replayed = w
        .token_request(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion),
            ("scope", "tool:tickets.search action:read"),
        ])
        .await;
    assert_eq!(replayed.status, 401);
    assert_eq!(
        (
            replayed.body["error"].as_str(),
            replayed.body["code"].as_str()
        ),
        (Some("invalid_client"), Some("assertion_replayed"))
    );
    let fresh = |jti: &str| {
        w.issuer
            .sign_with("es-1", &k8s_claims(&w.issuer.url, now, "web", jti))
    };
    for (form, status, error, code) in [
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:x"),
                ("client_assertion", "a"),
                ("scope", "tool:tickets.search action:read"),
            ],
            400,
            "invalid_client",
            "unsupported_assertion_type",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("scope", "tool:tickets.search action:read"),
            ],
            400,
            "invalid_request",
            "missing_parameter",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", "x.y.z"),
                ("scope", "tool:tickets.search action:read"),
            ],
            401,
            "invalid_client",
            "token_malformed",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &fresh("t-3")),
                ("scope", "tool:tickets.search"),
            ],
            400,
            "invalid_scope",
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &fresh("t-4")),
                ("scope", "tool:tickets.search action:read"),
                ("resource", "https://elsewhere.example/mcp/x"),
            ],
            400,
            "invalid_target",
            "invalid_target",
        ),
        (
            vec![
                ("grant_type", "password"),
                ("username", "a"),
                ("password", "b"),
            ],
            400,
            "unsupported_grant_type",
            "unsupported_grant_type",
        ),
    ] {
        let r = w.token_request(&form).await;
        assert_eq!(
            (
                r.status.as_u16(),
                r.body["error"].as_str().unwrap_or(""),
                r.body["code"].as_str().unwrap_or("")
            ),
            (status, error, code),
            "{form:?}: {:?}",
            r.body
        );
    }
    let r =
        w.h.get("/oauth2/authorize?response_type=code&client_id=x", None)
            .await;
    assert_eq!(
        (r.status.as_u16(), r.body["error"].as_str()),
        (400, Some("unsupported_response_type"))
    );
}

#[tokio::test]
async fn mandate_identity_tokens_are_client_assertions_too() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let req = h.http.post(h.url("/oauth2/token")).form(&[
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", identity.as_str()),
        ("client_id", "bot"),
        ("scope", "tool:tickets.search action:read"),
    ]);
    let r = h.send(req).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let req = h.http.post(h.url("/oauth2/token")).form(&[
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", identity.as_str()),
        ("client_id", "someone-else"),
        ("scope", "tool:tickets.search action:read"),
    ]);
    let r = h.send(req).await;
    assert_eq!(
        (r.status.as_u16(), r.body["code"].as_str()),
        (400, Some("client_id_mismatch"))
    );
    // Without any configured issuer, a foreign token is untrusted.
    let foreign = Key::es().sign(
        "k",
        &json!({"iss": "https://x.example", "sub": "a", "aud": "b", "exp": 9_999_999_999_i64}),
    );
    let r = h
        .post("/v1/attest", None, json!({"assertion": foreign}))
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "untrusted_issuer"));
    let r = h
        .post(
            "/v1/attest",
            None,
            json!({"assertion": foreign, "agent": "bot"}),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (400, "invalid_request"));
}

#[tokio::test]
async fn introspection_and_revocation() {
    let h = Harness::start().await;
    let identity = h.agent("bot", 1).await;
    let (task_id, token) = h.task(&identity).await;
    let introspect = |bearer: Option<&'static str>, token: String| {
        let mut req = h
            .http
            .post(h.url("/oauth2/introspect"))
            .form(&[("token", token)]);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        h.send(req)
    };
    let r = introspect(Some(ADMIN), token.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["active"], true);
    assert_eq!(r.body["task_id"], task_id);
    assert_eq!(r.body["client_id"], "bot");
    assert!(
        r.body["scope"]
            .as_str()
            .unwrap()
            .contains("tool:tickets.search")
    );
    // Only an authenticated caller may ask.
    let r = introspect(None, token.clone()).await;
    assert_eq!(
        (r.status.as_u16(), r.body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let r = introspect(Some("wrong"), token.clone()).await;
    assert_eq!(r.status, 401);
    // Garbage is inactive and says nothing more.
    let r = introspect(Some(ADMIN), "garbage".into()).await;
    assert_eq!(r.body, json!({"active": false}));

    // The holder revokes: the task ends, the token is inactive at once and refused.
    let req = h
        .http
        .post(h.url("/oauth2/revoke"))
        .form(&[("token", token.as_str())]);
    assert_eq!(h.send(req).await.status, 200);
    let r = introspect(Some(ADMIN), token.clone()).await;
    assert_eq!(r.body, json!({"active": false}));
    let r = h.get(&format!("/v1/tasks/{task_id}"), Some(ADMIN)).await;
    assert_eq!(r.body["state"], "revoked");
    assert_ne!(h.decide(&token, "tickets.search", "read").await.status, 200);
    // Revoking again, or garbage, is still 200 (RFC 7009 §2.2).
    let req = h
        .http
        .post(h.url("/oauth2/revoke"))
        .form(&[("token", token.as_str())]);
    assert_eq!(h.send(req).await.status, 200);
    let req = h
        .http
        .post(h.url("/oauth2/revoke"))
        .form(&[("token", "garbage")]);
    assert_eq!(h.send(req).await.status, 200);
}

/// The official Python MCP SDK (PyPI `mcp`) with its private-key-JWT client-credentials
/// provider: from the 401 it finds Mandate's RFC 9728 and RFC 8414 metadata, gets a task
/// token with the workload's OIDC token as its assertion, and calls a tool through
/// `/mcp/<server>`. Needs `MANDATE_TEST_IDENTITY_PYTHON` (scripts/install-identity-peers.sh);
/// without it the test says so and passes; set to something that cannot run, it fails.
#[tokio::test]
async fn the_python_mcp_sdk_gets_a_token_and_calls_a_tool() {
    let Some(python) = common::identity_python(
        "the_python_mcp_sdk_gets_a_token_and_calls_a_tool",
        "identity",
    ) else {
        return;
    };
    let issuer = Issuer::start().await;
    let logs = tempfile::tempdir().unwrap();
    let gateway = mandate_gateway::GatewayConfig::from_toml(&format!(
        r#"
[[mcp_server]]
name = "local"
command = ["{bin}", "{log}"]
env = {{ FIXTURE_TOKEN = "local-token" }}
"#,
        bin = env!("CARGO_BIN_EXE_mandate-mcp-fixture"),
        log = logs.path().join("calls.jsonl").display()
    ))
    .unwrap();
    let config = Arc::new(identity_config(&issuer.url, &logs.path().join("none.json")));
    let policies =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp-policies");
    let h = Harness::start_configured(&policies, |c| {
        c.identity = Some(config);
        c.gateway = Some(Arc::new(gateway));
    })
    .await;
    let r = h
        .send(
            h.http
                .put(h.url("/v1/secrets/local-token"))
                .bearer_auth(ADMIN)
                .json(&json!({"value": "stdio-secret"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = h
        .post("/v1/agents", Some(ADMIN), json!({"name": "web", "owner": "alice@example.com", "tier": 1, "attestation": rule("web")}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let now = h.clock.now_ms() / 1000;
    let assertion = issuer.sign_with("es-1", &k8s_claims(&issuer.url, now, "web", "sdk-1"));
    let file = logs.path().join("assertion.jwt");
    std::fs::write(&file, &assertion).unwrap();

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_oauth_client.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(h.url("/mcp/local"))
        .arg(&file)
        .arg("web")
        .arg("tool:local.whoami action:read")
        .arg("whoami")
        .arg("{}")
        .arg("--issuer")
        .arg(h.server.url().trim_end_matches('/'))
        .output()
        .await
        .unwrap_or_else(|e| panic!("MANDATE_TEST_IDENTITY_PYTHON={python:?} cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["tools"], json!(["whoami"]), "{v}");
    assert_eq!(v["token_requests"], 1, "{v}");
    assert_ne!(v["result"]["isError"], true, "{v}");
    // The task the SDK's token request started, and the call, are in the audit trail.
    let r = h
        .get("/v1/audit/events?kind=task.started&agent=web", Some(ADMIN))
        .await;
    assert_eq!(
        r.body["events"].as_array().unwrap().len(),
        1,
        "{:?}",
        r.body
    );
    let r = h
        .get(
            "/v1/audit/events?kind=decision&agent=web&tool=local.whoami",
            Some(ADMIN),
        )
        .await;
    assert_eq!(
        r.body["events"][0]["data"]["outcome"], "allow",
        "{:?}",
        r.body
    );
}

/// Enforcement points Mandate does not run authenticate themselves once any is
/// configured: AuthZEN without (or with a wrong) point token is refused, with the right one
/// its decisions name the point; introspection takes the point's token too.
#[tokio::test]
async fn enforcement_points_authenticate_and_are_recorded() {
    const POINT: &str = "envoy-point-token-0123456789abcdef";
    let config = IdentityConfig::from_toml(&format!(
        "[[enforcement_point]]\nname = \"envoy-prod\"\ntoken_sha256 = \"{}\"",
        mandate_core::sha256_hex(POINT.as_bytes())
    ))
    .unwrap();
    let h =
        Harness::start_configured(&demo_policies(), |c| c.identity = Some(Arc::new(config))).await;
    let identity = h.agent("bot", 1).await;
    let (task_id, token) = h.task(&identity).await;
    let body = json!({"subject": {"type": "agent", "properties": {"token": token}}, "action": {"name": "read"},
        "resource": {"type": "tool", "id": "tickets.search", "properties": {"resource": "queue/open", "data_domain": "support"}}});
    let ask = |point: Option<&str>| {
        let mut req = h.http.post(h.url("/access/v1/evaluation")).json(&body);
        if let Some(p) = point {
            req = req.header("x-mandate-point-token", p);
        }
        h.send(req)
    };
    for point in [None, Some("wrong-token")] {
        let r = ask(point).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (401, "point_unauthenticated"),
            "{:?}",
            r.body
        );
    }
    let r = ask(Some(POINT)).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["decision"]),
        (200, &json!(true)),
        "{:?}",
        r.body
    );
    let events = h
        .get(&format!("/v1/tasks/{task_id}/events"), Some(ADMIN))
        .await
        .body;
    let decisions: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "decision")
        .collect();
    assert_eq!(
        decisions.len(),
        1,
        "refused callers cost no decision: {events:?}"
    );
    assert_eq!(decisions[0]["data"]["point"], "envoy-prod");
    // The agent's own /v1/decide needs no point.
    assert_eq!(h.decide(&token, "tickets.search", "read").await.status, 200);

    let introspect = |bearer: &str| {
        h.send(
            h.http
                .post(h.url("/oauth2/introspect"))
                .bearer_auth(bearer)
                .form(&[("token", token.as_str())]),
        )
    };
    assert_eq!(introspect(POINT).await.body["active"], true);
    assert_eq!(introspect("wrong-token").await.status, 401);
}

/// A SPIFFE trust domain whose bundle is served by a bundle endpoint: fetched over HTTP
/// like a JWKS, then JWT-SVIDs signed by its keys attest.
#[tokio::test]
async fn a_bundle_endpoint_is_fetched_for_its_trust_domain() {
    let issuer = Issuer::start().await;
    let config = IdentityConfig::from_toml(&format!(
        "[[spiffe]]\nname = \"edge\"\ntrust_domain = \"edge.example\"\naudience = \"{AUDIENCE}\"\nbundle_endpoint = \"{}/keys\"\nalgorithms = [\"ES256\"]",
        issuer.url
    ))
    .unwrap();
    let h =
        Harness::start_configured(&demo_policies(), |c| c.identity = Some(Arc::new(config))).await;
    let id = "spiffe://edge.example/workload/agent";
    let r = h
        .post("/v1/agents", Some(ADMIN), json!({"name": "edge-bot", "owner": "alice@example.com", "tier": 1, "attestation": {"method": "spiffe", "id": id}}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let now = h.clock.now_ms() / 1000;
    let svid = issuer.sign_with(
        "es-1",
        &json!({"sub": id, "aud": AUDIENCE, "exp": now + 300, "iat": now}),
    );
    let r = h.post("/v1/attest", None, json!({"assertion": svid})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    // Signed by a key the bundle does not hold: refused.
    let forged = Key::es().sign(
        "es-1",
        &json!({"sub": id, "aud": AUDIENCE, "exp": now + 300, "iat": now}),
    );
    let r = h
        .post("/v1/attest", None, json!({"assertion": forged}))
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "token_bad_signature"));
}

/// An issuer that cannot be reached keeps its last keys for a while (a blip costs no
/// attestation), but not forever: keys not refreshed for a day are dropped and its tokens
/// are refused until it answers again.
#[tokio::test]
async fn keys_of_an_unreachable_issuer_expire_after_a_day() {
    let w = world().await;
    assert_eq!(w.register("web", rule("web")).await.status, 201);
    let token = |jti: &str| {
        w.issuer
            .sign_with("es-1", &k8s_claims(&w.issuer.url, w.now(), "web", jti))
    };
    assert_eq!(w.attest(&token("d-1")).await.status, 200);
    w.issuer.down.store(true, Ordering::SeqCst);
    // Two hours on, the keys are old enough to refetch; the fetch fails; they are kept.
    w.h.clock.advance_ms(2 * 3600 * 1000);
    let r = w.attest(&token("d-2")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A day on, they are dropped: refused, and said to be unavailable.
    w.h.clock.advance_ms(23 * 3600 * 1000);
    let r = w.attest(&token("d-3")).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (503, "issuer_unavailable"),
        "{:?}",
        r.body
    );
    // Back up (after the least interval between fetches): accepted again.
    w.issuer.down.store(false, Ordering::SeqCst);
    w.h.clock.advance_ms(61_000);
    let r = w.attest(&token("d-4")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

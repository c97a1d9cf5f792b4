//! TLS on the listener: HTTPS, plain HTTP refused, the https issuer, the handshake within
//! the head time, X.509-SVID client authentication (optional and required), and reloading
//! the certificate and client CA bundle from their files.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test code: a panic is a test failure"
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Harness, demo_policies};
use mandate_server::config::{ClientAuth, ClientCertificates, TlsSettings};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const AGENT: &str = "spiffe://partner.example/ns/billing/sa/agent";

/// A CA: what it signs with, and its certificate in PEM.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = p.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(p, key),
            pem,
        }
    }

    /// A certificate and its key, in PEM.
    fn sign(&self, p: &CertificateParams) -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Pair {
            der: cert.der().to_vec(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost, named `cn`.
    fn server(&self, cn: &str) -> Pair {
        let mut p =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        self.sign(&p)
    }

    /// An X.509-SVID client leaf, changed by `change`.
    fn svid(&self, change: impl FnOnce(&mut CertificateParams)) -> Pair {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.subject_alt_names = vec![SanType::URI(AGENT.try_into().unwrap())];
        change(&mut p);
        self.sign(&p)
    }
}

struct Pair {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Pair {
    fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.cert, self.key).as_bytes()).unwrap()
    }
}

/// The server's files in a directory of their own.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(server: &Pair, client_ca: Option<&Ca>) -> Self {
        let f = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write_server(server);
        if let Some(ca) = client_ca {
            std::fs::write(f.path("client-ca.pem"), &ca.pem).unwrap();
        }
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the certificate and key (each written whole, then renamed into place).
    fn write_server(&self, server: &Pair) {
        replace(&self.path("cert.pem"), &server.cert);
        replace(&self.path("key.pem"), &server.key);
    }

    fn settings(&self, client: Option<ClientAuth>) -> TlsSettings {
        let mut s = TlsSettings::new(self.path("cert.pem"), self.path("key.pem"));
        s.client = client.map(|auth| ClientCertificates {
            ca_bundle: self.path("client-ca.pem"),
            auth,
        });
        s.reload_every = Duration::from_millis(100);
        s
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn start(settings: TlsSettings) -> Harness {
    Harness::start_configured(&demo_policies(), |c| c.tls = Some(settings)).await
}

/// A client that trusts `ca` only, reports the server's certificate, and opens a new
/// connection for every request unless `keep_alive`.
fn client(ca: &Ca, identity: Option<&Pair>, keep_alive: bool) -> reqwest::Client {
    client_with(reqwest::Client::builder(), ca, identity, keep_alive)
}

fn client_with(
    b: reqwest::ClientBuilder,
    ca: &Ca,
    identity: Option<&Pair>,
    keep_alive: bool,
) -> reqwest::Client {
    let mut b = b
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()])
        .tls_info(true);
    if !keep_alive {
        b = b.pool_max_idle_per_host(0);
    }
    if let Some(p) = identity {
        b = b.identity(p.identity());
    }
    b.build().unwrap()
}

/// The certificate the server presented for `/healthz`, or why the request failed.
async fn healthz(h: &Harness, c: &reqwest::Client) -> Result<Vec<u8>, String> {
    let res = c
        .get(h.url("/healthz"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    assert_eq!(res.status(), 200);
    let info = res.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    Ok(info.peer_certificate().unwrap().to_vec())
}

#[tokio::test]
async fn https_serves_with_an_https_issuer_and_plain_http_is_told_to_use_tls() {
    let ca = Ca::new("server CA");
    let server = ca.server("mandate");
    let files = Files::new(&server, None);
    let h = start(files.settings(None)).await;
    assert!(h.server.url().starts_with("https://"), "{}", h.server.url());
    assert!(h.server.issuer.starts_with("https://"));

    let c = client(&ca, None, true);
    assert_eq!(healthz(&h, &c).await.unwrap(), server.der);
    for doc in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let v: serde_json::Value = c
            .get(h.url(doc))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["issuer"], h.server.issuer.as_str(), "{doc}");
        assert!(v["issuer"].as_str().unwrap().starts_with("https://"), "{v}");
    }

    // A client that does not trust the server's CA does not get through.
    let stranger = client(&Ca::new("another CA"), None, true);
    assert!(healthz(&h, &stranger).await.is_err());

    // Plain HTTP to the TLS port: one clear answer, then the connection closes.
    let plain = format!("http://{}/healthz", h.server.addr);
    let r = reqwest::Client::new().get(&plain).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["connection"], "close");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "tls_required");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed_within_the_head_time() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca.server("mandate"), None);
    let settings = files.settings(None);
    let h = Harness::start_configured(&demo_policies(), |c| {
        c.tls = Some(settings);
        c.limits.header_read_timeout_secs = 1;
    })
    .await;
    // One opens TCP and sends nothing; one starts a TLS record and stops.
    for first_bytes in [&b""[..], &[22, 3, 1][..]] {
        let began = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(h.server.addr).await.unwrap();
        tcp.write_all(first_bytes).await.unwrap();
        let mut buf = [0_u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the connection should be closed: {read:?}"
        );
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }
    // The listener still serves.
    assert!(healthz(&h, &client(&ca, None, false)).await.is_ok());
}

#[tokio::test]
async fn client_certificates_must_be_x509_svids_from_the_bundle() {
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("partner.example X.509-SVID CA");
    let files = Files::new(&server_ca.server("mandate"), Some(&clients));
    let h = start(files.settings(Some(ClientAuth::Optional))).await;

    let valid = clients.svid(|_| {});
    let two_uris = clients.svid(|p| {
        p.subject_alt_names.push(SanType::URI(
            "spiffe://partner.example/ns/billing/sa/other"
                .try_into()
                .unwrap(),
        ))
    });
    let ca_flagged = clients.svid(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    let signing_usage = clients.svid(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign));
    let no_uri = clients.svid(|p| {
        p.subject_alt_names = vec![SanType::DnsName(
            "agent.partner.example".try_into().unwrap(),
        )]
    });
    let not_spiffe = clients.svid(|p| {
        p.subject_alt_names = vec![SanType::URI(
            "https://partner.example/agent".try_into().unwrap(),
        )]
    });
    let foreign = Ca::new("someone else's CA").svid(|_| {});

    assert!(
        healthz(&h, &client(&server_ca, Some(&valid), false))
            .await
            .is_ok()
    );
    // Optional: an agent that uses tokens connects without a certificate.
    assert!(healthz(&h, &client(&server_ca, None, false)).await.is_ok());
    for (name, leaf) in [
        ("two URI SANs", &two_uris),
        ("a CA certificate as leaf", &ca_flagged),
        ("keyCertSign on a leaf", &signing_usage),
        ("no URI SAN", &no_uri),
        ("an https URI SAN", &not_spiffe),
        ("a leaf from another CA", &foreign),
    ] {
        let got = healthz(&h, &client(&server_ca, Some(leaf), false)).await;
        assert!(got.is_err(), "{name} should fail the handshake");
    }

    // The same over TLS 1.2.
    let tls12 = || reqwest::Client::builder().tls_version_max(reqwest::tls::Version::TLS_1_2);
    assert!(
        healthz(&h, &client_with(tls12(), &server_ca, Some(&valid), false))
            .await
            .is_ok()
    );
    for leaf in [&two_uris, &foreign] {
        let got = healthz(&h, &client_with(tls12(), &server_ca, Some(leaf), false)).await;
        assert!(got.is_err());
    }
}

#[tokio::test]
async fn required_client_authentication_refuses_a_connection_without_a_certificate() {
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("partner.example X.509-SVID CA");
    let files = Files::new(&server_ca.server("mandate"), Some(&clients));
    let h = start(files.settings(Some(ClientAuth::Required))).await;
    assert!(healthz(&h, &client(&server_ca, None, false)).await.is_err());
    let valid = clients.svid(|_| {});
    assert!(
        healthz(&h, &client(&server_ca, Some(&valid), false))
            .await
            .is_ok()
    );
    // Plain HTTP is still told to use TLS.
    let plain = format!("http://{}/healthz", h.server.addr);
    let r = reqwest::Client::new().get(&plain).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

/// Asks with new connections until the server presents `want` (or 10 s pass).
async fn wait_for_certificate(h: &Harness, c: &reqwest::Client, want: &[u8]) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if healthz(h, c).await.as_deref() == Ok(want) {
            return;
        }
        assert!(Instant::now() < until, "the new certificate was not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn changed_files_are_served_to_new_connections_and_a_bad_change_is_not() {
    let ca = Ca::new("server CA");
    let first = ca.server("first");
    let files = Files::new(&first, None);
    let h = start(files.settings(None)).await;
    let kept = client(&ca, None, true);
    let fresh = client(&ca, None, false);
    assert_eq!(healthz(&h, &kept).await.unwrap(), first.der);

    let second = ca.server("second");
    files.write_server(&second);
    wait_for_certificate(&h, &fresh, &second.der).await;
    // The connection opened before the reload was not dropped: it still has the first.
    assert_eq!(healthz(&h, &kept).await.unwrap(), first.der);

    // A certificate whose key does not match, then garbage: the second keeps serving.
    let third = ca.server("third");
    replace(&files.path("cert.pem"), &third.cert);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(healthz(&h, &fresh).await.unwrap(), second.der);
    replace(
        &files.path("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(healthz(&h, &fresh).await.unwrap(), second.der);
    // Its key arrives: the third is served.
    files.write_server(&third);
    wait_for_certificate(&h, &fresh, &third.der).await;
}

#[tokio::test]
async fn a_changed_client_ca_bundle_decides_new_handshakes() {
    let server_ca = Ca::new("server CA");
    let old = Ca::new("old X.509-SVID CA");
    let new = Ca::new("new X.509-SVID CA");
    let files = Files::new(&server_ca.server("mandate"), Some(&old));
    let h = start(files.settings(Some(ClientAuth::Required))).await;
    let from_old = client(&server_ca, Some(&old.svid(|_| {})), false);
    let from_new = client(&server_ca, Some(&new.svid(|_| {})), false);
    assert!(healthz(&h, &from_old).await.is_ok());
    assert!(healthz(&h, &from_new).await.is_err());

    replace(&files.path("client-ca.pem"), &new.pem);
    let until = Instant::now() + Duration::from_secs(10);
    while healthz(&h, &from_new).await.is_err() {
        assert!(Instant::now() < until, "the new bundle was not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthz(&h, &from_old).await.is_err());

    // A bundle of both CAs (a SPIFFE trust bundle during a CA rotation) accepts both.
    replace(
        &files.path("client-ca.pem"),
        &format!("{}{}", old.pem, new.pem),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while healthz(&h, &from_old).await.is_err() {
        assert!(Instant::now() < until, "the two-CA bundle was not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthz(&h, &from_new).await.is_ok());
}

/// An agent whose rule names a SPIFFE ID attests with the X.509-SVID it connected with
/// (an empty `POST /v1/attest` over mutual TLS), and gets a task token the same way
/// (`client_credentials` with no assertion: RFC 8705 in SPIFFE form). Without a
/// certificate, or with an SVID no rule names, nothing is issued.
#[tokio::test]
async fn an_x509_svid_attests_its_agent_and_starts_tasks() {
    let server_ca = Ca::new("server CA");
    let clients = Ca::new("partner.example X.509-SVID CA");
    let files = Files::new(&server_ca.server("mandate"), Some(&clients));
    let h = start(files.settings(Some(ClientAuth::Optional))).await;
    let admin = client(&server_ca, None, true);
    let agent = client(&server_ca, Some(&clients.svid(|_| {})), true);
    let stranger = client(
        &server_ca,
        Some(&clients.svid(|p| {
            p.subject_alt_names = vec![SanType::URI(
                "spiffe://partner.example/ns/other".try_into().unwrap(),
            )]
        })),
        true,
    );
    let r = admin
        .post(h.url("/v1/agents"))
        .bearer_auth(common::ADMIN)
        .json(
            &serde_json::json!({"name": "partner-bot", "owner": "alice@example.com", "tier": 1,
            "attestation": {"method": "x509_svid", "id": AGENT}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let attest = |c: &reqwest::Client| {
        c.post(h.url("/v1/attest"))
            .json(&serde_json::json!({}))
            .send()
    };
    let r = attest(&agent).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["spiffe_id"]
            .as_str()
            .unwrap()
            .ends_with("/agent/partner-bot"),
        "{body}"
    );
    let r = attest(&stranger).await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_agent_matches");
    let r = attest(&admin).await.unwrap();
    assert_eq!(
        r.status(),
        400,
        "no certificate, no body: nothing to attest with"
    );

    let token = |c: &reqwest::Client| {
        c.post(h.url("/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&scope=tool%3Atickets.search%20action%3Aread%20data%3Asupport")
            .send()
    };
    let r = token(&agent).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer", "{body}");
    let r = token(&admin).await.unwrap();
    assert_eq!(
        r.status(),
        400,
        "without a certificate the assertion is required"
    );
}

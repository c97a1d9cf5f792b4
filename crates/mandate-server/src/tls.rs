//! TLS on the listener, reloaded when its files change, and X.509-SVID client
//! authentication (mutual TLS).
//!
//! - **Handshake.** rustls with the aws-lc-rs provider (the one crypto stack), TLS 1.3 and
//!   1.2, ALPN `http/1.1` only (the listener speaks HTTP/1.1). The handshake is part of a new
//!   connection's head time: handshake and first request head together must arrive within
//!   `header_read_timeout_secs`, so a client that opens TCP and never handshakes is dropped.
//!   A client that speaks plain HTTP to the TLS port gets one plain-text
//!   `400 tls_required` and is closed.
//! - **Reload.** The certificate chain, key and client CA bundle are read again every
//!   [`TlsSettings::reload_every`] (5 s by default; polling rather than SIGHUP, so files
//!   rotated by cert-manager, the SPIRE helper or a mounted secret are picked up without a
//!   signal). When any byte changed, new handshakes use the new material; established
//!   connections keep theirs. A change that does not load (unreadable, bad PEM, a key that
//!   does not fit the certificate, a bundle without a CA) is logged once as an error and the
//!   previous material keeps serving.
//! - **Client authentication.** With a client CA bundle, a presented certificate must chain
//!   to it (rustls' `WebPkiClientVerifier`: signatures, validity, the clientAuth extended key
//!   usage when present, a leaf that is not a CA) and be an X.509-SVID leaf (keyUsage with
//!   digitalSignature and neither keyCertSign nor cRLSign, exactly one URI SAN, and that a
//!   SPIFFE ID with a path). Anything else fails the handshake with a TLS alert, so no request
//!   on such a connection is ever read. With [`ClientAuth::Required`] a connection without a
//!   certificate fails too; with [`ClientAuth::Optional`] it is served without a
//!   [`PeerSvid`]. Sessions are not resumed while client certificates are asked for, so every
//!   connection's certificate is checked against the bundle loaded at that moment.
//! - **The peer's identity.** Every request on an authenticated connection carries a
//!   [`PeerSvid`] request extension, put there by the listener (never read from the wire).
//!
//! The bundle is one set of trust anchors: it is trusted for whatever SPIFFE IDs its CAs
//! sign, so what a [`PeerSvid`] may do is for the caller to match on its exact ID.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use mandate_engine::config::{ClientAuth, TlsSettings};

/// The X.509-SVID a request's connection authenticated with (mutual TLS).
///
/// The listener inserts it into the extensions of every request on a connection whose
/// client presented a certificate that chains to the configured client CA bundle and is a
/// valid X.509-SVID leaf; requests on other connections have none. Handlers read it with
/// `axum::Extension<PeerSvid>` (as an `Option<Extension<PeerSvid>>` where certificates are
/// optional) or [`peer_svid_of`]. A request cannot carry one by any header or body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSvid {
    /// The leaf's one URI SAN: a SPIFFE ID with a trust domain and a non-empty path,
    /// checked by [`mandate_core::SpiffeId::parse_any`].
    pub spiffe_id: String,
    /// The leaf's `notAfter` (unix seconds). A kept-alive connection outlives its
    /// handshake: what it proves is used only until then ([`PeerSvid::current`]).
    pub not_after_secs: i64,
}

impl PeerSvid {
    /// The SPIFFE ID, while the certificate is still valid at `now_secs`; after that the
    /// connection proves nothing more (a fresh handshake with a fresh SVID does).
    pub fn current(&self, now_secs: i64) -> Result<&str, crate::error::ApiError> {
        if now_secs < self.not_after_secs {
            Ok(&self.spiffe_id)
        } else {
            Err(crate::error::ApiError::new(
                http::StatusCode::UNAUTHORIZED,
                "certificate_expired",
                "the X.509-SVID this connection was made with has expired: reconnect with a fresh one",
            ))
        }
    }
}

/// A certificate's `notAfter`, unix seconds (0 when it cannot be read: nothing is proved).
fn not_after(der: &[u8]) -> i64 {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    X509Certificate::from_der(der).map_or(0, |(_, c)| c.validity().not_after.timestamp())
}

/// The X.509-SVID the connection of `req` authenticated with, if any.
pub fn peer_svid_of<B>(req: &http::Request<B>) -> Option<&PeerSvid> {
    req.extensions().get::<PeerSvid>()
}

/// The largest certificate, key or bundle file read (a CA bundle of a few hundred roots
/// fits many times over).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The shortest period between two looks at the files.
const MIN_RELOAD_EVERY: Duration = Duration::from_millis(100);

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TlsError {
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS {what} {} is larger than {MAX_PEM_BYTES} bytes; is it the right file?", path.display())]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("the TLS {what} {} holds no {expected}; give a PEM file with one", path.display())]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("the TLS {what} {} is not valid PEM ({detail}); give a PEM file", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("the TLS private key {} holds {count} private keys; give only the certificate's key", path.display())]
    ManyKeys { path: PathBuf, count: usize },
    #[error("the TLS private key {} does not fit the certificate {} ({detail}); give the key the certificate was issued for", key.display(), cert.display())]
    Key {
        key: PathBuf,
        cert: PathBuf,
        detail: String,
    },
    #[error("the TLS client CA bundle {} is not usable ({detail}); give PEM CA certificates", path.display())]
    ClientCa { path: PathBuf, detail: String },
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// Why a client certificate is not an X.509-SVID leaf (SPIFFE X509-SVID §2, §4, §5.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SvidError {
    #[error("the certificate is not well-formed DER X.509 (or repeats an extension)")]
    Malformed,
    #[error("the certificate is a CA (basicConstraints cA true), not an X.509-SVID leaf")]
    CaCertificate,
    #[error("the certificate has no keyUsage extension; an X.509-SVID leaf sets digitalSignature")]
    NoKeyUsage,
    #[error("the certificate's keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    #[error(
        "the certificate's keyUsage has keyCertSign or cRLSign, which an X.509-SVID leaf must not"
    )]
    SigningKeyUsage,
    #[error("the certificate has no URI SAN; an X.509-SVID carries its SPIFFE ID in exactly one")]
    NoUriSan,
    #[error("the certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    ManyUriSans(usize),
    #[error("the certificate's URI SAN {0:?} is not a SPIFFE ID with a trust domain and a path")]
    NotSpiffeId(String),
}

/// Reads the SPIFFE ID of an X.509-SVID leaf (DER), checking what the X.509-SVID
/// specification asks of a leaf beyond path validation: not a CA, keyUsage with
/// digitalSignature and without keyCertSign or cRLSign, exactly one URI SAN, and that SAN a
/// SPIFFE ID with a non-empty path. Other SAN types (DNS, IP) may be present.
///
/// This does not check signatures or validity: the rustls verifier has done that first.
pub(crate) fn svid_spiffe_id(der: &[u8]) -> Result<String, SvidError> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

    let (rest, cert) = X509Certificate::from_der(der).map_err(|_| SvidError::Malformed)?;
    if !rest.is_empty() {
        return Err(SvidError::Malformed);
    }
    let constraints = cert.basic_constraints().map_err(|_| SvidError::Malformed)?;
    if constraints.is_some_and(|c| c.value.ca) {
        return Err(SvidError::CaCertificate);
    }
    let usage = cert
        .key_usage()
        .map_err(|_| SvidError::Malformed)?
        .ok_or(SvidError::NoKeyUsage)?;
    if !usage.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if usage.value.key_cert_sign() || usage.value.crl_sign() {
        return Err(SvidError::SigningKeyUsage);
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| SvidError::Malformed)?
        .ok_or(SvidError::NoUriSan)?;
    let mut uris = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(uri) => uris.push(*uri),
            // A name that did not decode (bad UTF-8 in a URI, say) could hide a second URI.
            GeneralName::Invalid(..) => return Err(SvidError::Malformed),
            _ => {}
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(if uris.is_empty() {
            SvidError::NoUriSan
        } else {
            SvidError::ManyUriSans(uris.len())
        });
    };
    if mandate_core::SpiffeId::parse_any(uri).is_err() {
        return Err(SvidError::NotSpiffeId(uri.chars().take(256).collect()));
    }
    Ok((*uri).to_owned())
}

/// The bytes of the configured files, as last read.
#[derive(PartialEq, Eq)]
struct Files {
    cert_chain: Vec<u8>,
    private_key: Zeroizing<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    async fn read(settings: &TlsSettings) -> Result<Self, TlsError> {
        Ok(Self {
            cert_chain: read_bounded(&settings.cert_chain, "certificate").await?,
            private_key: Zeroizing::new(read_bounded(&settings.private_key, "private key").await?),
            client_ca: match &settings.client {
                Some(c) => Some(read_bounded(&c.ca_bundle, "client CA bundle").await?),
                None => None,
            },
        })
    }
}

async fn read_bounded(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let read = async {
        let file = tokio::fs::File::open(path).await?;
        let mut buf = Vec::new();
        file.take(MAX_PEM_BYTES + 1).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = read.await.map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_owned(),
        });
    }
    Ok(buf)
}

/// Builds the rustls configuration from the files' bytes.
fn build(files: &Files, settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert_path = &settings.cert_chain;
    let chain = CertificateDer::pem_slice_iter(&files.cert_chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            path: cert_path.clone(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            what: "certificate",
            path: cert_path.clone(),
            expected: "CERTIFICATE block",
        });
    }
    let key_path = &settings.private_key;
    let mut keys = PrivateKeyDer::pem_slice_iter(&files.private_key)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "private key",
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
    let key = match keys.len() {
        0 => None,
        1 => keys.pop(),
        count => {
            return Err(TlsError::ManyKeys {
                path: key_path.clone(),
                count,
            });
        }
    }
    .ok_or_else(|| TlsError::Empty {
        what: "private key",
        path: key_path.clone(),
        expected: "PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block",
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Key {
        key: key_path.clone(),
        cert: cert_path.clone(),
        detail: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = match (&settings.client, &files.client_ca) {
        (Some(client), Some(bundle)) => Some(client_verifier(
            bundle,
            &client.ca_bundle,
            client.auth,
            provider,
        )?),
        _ => None,
    };
    let asks_for_certificates = verifier.is_some();
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if asks_for_certificates {
        // A resumed session skips certificate verification: with client certificates every
        // connection is verified against the bundle (and the clock) of now.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

fn client_verifier(
    bundle: &[u8],
    path: &Path,
    auth: ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let bad = |detail: String| TlsError::ClientCa {
        path: path.to_owned(),
        detail,
    };
    let cas = CertificateDer::pem_slice_iter(bundle)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if cas.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    for (n, ca) in cas.into_iter().enumerate() {
        roots
            .add(ca)
            .map_err(|e| bad(format!("certificate {}: {e}", n + 1)))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match auth {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        ClientAuth::Required => builder,
    };
    let inner = builder.build().map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(SvidVerifier { inner }))
}

/// rustls' WebPKI client verifier, then the X.509-SVID leaf rules: a certificate that chains
/// but is not an X.509-SVID fails the handshake like one that does not chain.
#[derive(Debug)]
struct SvidVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for SvidVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match svid_spiffe_id(end_entity) {
            Ok(_) => Ok(verified),
            Err(e) => {
                tracing::debug!(error = %e, "client certificate refused");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(e))),
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// What the last look at the files found.
enum Seen {
    Files(Files),
    Unreadable(String),
}

/// What [`Tls::reload_if_changed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reload {
    Unchanged,
    Reloaded,
    /// The files changed and did not load; the previous material keeps serving.
    Failed,
}

/// The outcome of accepting one connection on the TLS listener.
pub(crate) enum Handshake {
    /// A finished handshake, and the client's X.509-SVID if it presented one.
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        Option<PeerSvid>,
    ),
    /// The client spoke plain HTTP to the TLS port.
    PlainHttp(TcpStream),
    /// The handshake failed (a refused certificate, a protocol error, a closed socket).
    Failed,
}

/// The listener's TLS: the material now in use, and what the files held when last read.
pub(crate) struct Tls {
    settings: TlsSettings,
    current: RwLock<Arc<rustls::ServerConfig>>,
    seen: Mutex<Seen>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the files; an error names the file and what to do.
    pub(crate) async fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let files = Files::read(&settings).await?;
        let config = build(&files, &settings)?;
        tracing::info!(
            cert = %settings.cert_chain.display(),
            client_certificates = match &settings.client {
                None => "not asked for",
                Some(c) if c.auth == ClientAuth::Required => "required (X.509-SVID)",
                Some(_) => "optional (X.509-SVID)",
            },
            reload_every_secs = settings.reload_every.as_secs_f64(),
            "TLS on"
        );
        Ok(Self {
            settings,
            current: RwLock::new(config),
            seen: Mutex::new(Seen::Files(files)),
        })
    }

    fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs the handshake on a new connection (the caller bounds its time).
    pub(crate) async fn accept(&self, tcp: TcpStream) -> Handshake {
        let mut first = [0_u8; 1];
        match tcp.peek(&mut first).await {
            Ok(1) => {}
            _ => return Handshake::Failed,
        }
        let [first] = first;
        // 22 is a TLS handshake record; an HTTP method starts with a capital letter.
        if first != 22 {
            return if first.is_ascii_uppercase() {
                Handshake::PlainHttp(tcp)
            } else {
                Handshake::Failed
            };
        }
        let stream = match tokio_rustls::TlsAcceptor::from(self.config())
            .accept(tcp)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return Handshake::Failed;
            }
        };
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first());
        let peer = match leaf.map(|der| (svid_spiffe_id(der), der)) {
            None => None,
            Some((Ok(spiffe_id), der)) => Some(PeerSvid {
                spiffe_id,
                not_after_secs: not_after(der),
            }),
            // The verifier accepted only X.509-SVIDs; fail closed all the same.
            Some((Err(e), _)) => {
                tracing::warn!(error = %e, "a verified client certificate is not an X.509-SVID");
                return Handshake::Failed;
            }
        };
        Handshake::Tls(Box::new(stream), peer)
    }

    /// Looks at the files every [`TlsSettings::reload_every`] and reloads on a change;
    /// never returns.
    pub(crate) async fn watch(&self) {
        let mut tick = tokio::time::interval(self.settings.reload_every.max(MIN_RELOAD_EVERY));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.reload_if_changed().await;
        }
    }

    /// Reads the files; when they differ from the last read, loads them for new
    /// handshakes, or logs why not (once per change) and keeps the material in use.
    pub(crate) async fn reload_if_changed(&self) -> Reload {
        let read = Files::read(&self.settings).await;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = match (&read, &*seen) {
            (Ok(now), Seen::Files(before)) => now != before,
            (Err(e), Seen::Unreadable(before)) => e.to_string() != *before,
            _ => true,
        };
        if !changed {
            return Reload::Unchanged;
        }
        let files = match read {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed and cannot be read; the previous certificate keeps serving");
                *seen = Seen::Unreadable(e.to_string());
                return Reload::Failed;
            }
        };
        let built = build(&files, &self.settings);
        *seen = Seen::Files(files);
        match built {
            Ok(config) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
                tracing::info!(cert = %self.settings.cert_chain.display(), "TLS material reloaded");
                Reload::Reloaded
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed and do not load; the previous certificate keeps serving");
                Reload::Failed
            }
        }
    }
}

/// Certificates for tests, made with rcgen.
#[cfg(test)]
pub(crate) mod testing {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    /// A CA that signs, and its certificate in PEM.
    pub(crate) fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = p.self_signed(&key).unwrap().pem();
        (Issuer::new(p, key), pem)
    }

    /// An X.509-SVID leaf's parameters, for a case to change.
    pub(crate) fn svid_params(uri: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        p
    }

    /// A certificate signed by `issuer` and its key, both in PEM.
    pub(crate) fn signed(p: &CertificateParams, issuer: &Issuer<'_, KeyPair>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        (
            p.signed_by(&key, issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub(crate) fn server(issuer: &Issuer<'_, KeyPair>) -> (String, String) {
        let p =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        signed(&p, issuer)
    }
}

#[cfg(test)]
mod tests {
    use mandate_engine::config::ClientCertificates;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};

    use super::testing::svid_params;
    use super::*;

    fn ca() -> rcgen::Issuer<'static, KeyPair> {
        super::testing::ca("test CA").0
    }

    #[test]
    fn a_connection_proves_its_svid_only_until_the_certificate_expires() {
        let mut p = svid_params("spiffe://partner.example/agent");
        p.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let der = p
            .signed_by(&KeyPair::generate().unwrap(), &ca())
            .unwrap()
            .der()
            .to_vec();
        let until = not_after(&der);
        assert_eq!(until, 1_893_456_000);
        let peer = PeerSvid {
            spiffe_id: svid_spiffe_id(&der).unwrap(),
            not_after_secs: until,
        };
        assert_eq!(
            peer.current(until - 1).unwrap(),
            "spiffe://partner.example/agent"
        );
        assert_eq!(peer.current(until).unwrap_err().code, "certificate_expired");
        assert_eq!(not_after(b"not a certificate"), 0);
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    const ID: &str = "spiffe://partner.example/ns/billing/sa/agent";

    #[test]
    fn x509_svid_leaf_rules() {
        let issuer = ca();
        type Change = fn(&mut CertificateParams);
        let cases: &[(&str, Change, Result<&str, SvidError>)] = &[
            ("a valid leaf", |_| {}, Ok(ID)),
            (
                "DNS and IP SANs beside the URI",
                |p| {
                    p.subject_alt_names
                        .push(SanType::DnsName("agent.example".try_into().unwrap()));
                    p.subject_alt_names
                        .push(SanType::IpAddress([10, 0, 0, 1].into()));
                },
                Ok(ID),
            ),
            (
                "keyEncipherment and keyAgreement beside digitalSignature",
                |p| {
                    p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
                    p.key_usages.push(KeyUsagePurpose::KeyAgreement);
                },
                Ok(ID),
            ),
            (
                "no basicConstraints at all",
                |p| p.is_ca = IsCa::NoCa,
                Ok(ID),
            ),
            (
                "two URI SANs",
                |p| {
                    p.subject_alt_names
                        .push(uri("spiffe://partner.example/other"))
                },
                Err(SvidError::ManyUriSans(2)),
            ),
            (
                "a second, non-SPIFFE URI SAN",
                |p| p.subject_alt_names.push(uri("https://example.com/")),
                Err(SvidError::ManyUriSans(2)),
            ),
            (
                "no URI SAN",
                |p| p.subject_alt_names = vec![SanType::DnsName("a.example".try_into().unwrap())],
                Err(SvidError::NoUriSan),
            ),
            (
                "no SAN extension",
                |p| p.subject_alt_names.clear(),
                Err(SvidError::NoUriSan),
            ),
            (
                "a CA flag",
                |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained),
                Err(SvidError::CaCertificate),
            ),
            (
                "keyCertSign",
                |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign),
                Err(SvidError::SigningKeyUsage),
            ),
            (
                "cRLSign",
                |p| p.key_usages.push(KeyUsagePurpose::CrlSign),
                Err(SvidError::SigningKeyUsage),
            ),
            (
                "no digitalSignature",
                |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
                Err(SvidError::NoDigitalSignature),
            ),
            (
                "no keyUsage",
                |p| p.key_usages.clear(),
                Err(SvidError::NoKeyUsage),
            ),
            (
                "an https URI",
                |p| p.subject_alt_names = vec![uri("https://partner.example/agent")],
                Err(SvidError::NotSpiffeId(
                    "https://partner.example/agent".into(),
                )),
            ),
            (
                "a SPIFFE ID without a path",
                |p| p.subject_alt_names = vec![uri("spiffe://partner.example")],
                Err(SvidError::NotSpiffeId("spiffe://partner.example".into())),
            ),
            (
                "a SPIFFE ID with a query",
                |p| p.subject_alt_names = vec![uri("spiffe://partner.example/a?b=c")],
                Err(SvidError::NotSpiffeId(
                    "spiffe://partner.example/a?b=c".into(),
                )),
            ),
            (
                "a SPIFFE ID with an upper-case trust domain",
                |p| p.subject_alt_names = vec![uri("spiffe://Partner.example/a")],
                Err(SvidError::NotSpiffeId("spiffe://Partner.example/a".into())),
            ),
        ];
        for (name, change, want) in cases {
            let mut p = svid_params(ID);
            change(&mut p);
            let cert = p.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap();
            let got = svid_spiffe_id(cert.der());
            assert_eq!(got.as_deref().map_err(Clone::clone), *want, "{name}");
        }
        assert_eq!(
            svid_spiffe_id(b"not a certificate"),
            Err(SvidError::Malformed)
        );
    }

    struct Material {
        dir: tempfile::TempDir,
        settings: TlsSettings,
    }

    /// A server certificate and key, and a client CA bundle, written to files.
    fn material() -> Material {
        let dir = tempfile::tempdir().unwrap();
        let issuer = ca();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca_cert = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let mut settings =
            TlsSettings::new(dir.path().join("cert.pem"), dir.path().join("key.pem"));
        settings.client = Some(ClientCertificates {
            ca_bundle: dir.path().join("ca.pem"),
            auth: ClientAuth::Optional,
        });
        Material { dir, settings }
    }

    #[tokio::test]
    async fn loading_refuses_bad_material_with_a_message_naming_the_file() {
        let m = material();
        let p = |f: &str| m.dir.path().join(f);
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        std::fs::write(p("other-key.pem"), &other_key).unwrap();
        std::fs::write(p("two-keys.pem"), format!("{other_key}{other_key}")).unwrap();
        std::fs::write(p("garbage.pem"), "-----BEGIN CERTIFICATE-----\n!!!\n").unwrap();
        std::fs::write(p("empty.pem"), "").unwrap();
        type Change = fn(&mut TlsSettings, &Path);
        let cases: &[(Change, &str)] = &[
            (
                |s, d| s.private_key = d.join("other-key.pem"),
                "does not fit the certificate",
            ),
            (
                |s, d| s.private_key = d.join("two-keys.pem"),
                "holds 2 private keys",
            ),
            (
                |s, d| s.private_key = d.join("cert.pem"),
                "holds no PRIVATE KEY",
            ),
            (
                |s, d| s.cert_chain = d.join("key.pem"),
                "holds no CERTIFICATE",
            ),
            (
                |s, d| s.cert_chain = d.join("garbage.pem"),
                "is not valid PEM",
            ),
            (
                |s, d| s.cert_chain = d.join("missing.pem"),
                "cannot read the TLS certificate",
            ),
            (
                |s, d| {
                    if let Some(c) = &mut s.client {
                        c.ca_bundle = d.join("empty.pem");
                    }
                },
                "client CA bundle",
            ),
            (
                |s, d| {
                    if let Some(c) = &mut s.client {
                        c.ca_bundle = d.join("key.pem");
                    }
                },
                "no CERTIFICATE block",
            ),
        ];
        for (change, want) in cases {
            let mut s = m.settings.clone();
            change(&mut s, m.dir.path());
            let err = Tls::load(s).await.unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        assert!(Tls::load(m.settings.clone()).await.is_ok());
    }

    #[tokio::test]
    async fn a_change_that_does_not_load_keeps_the_previous_material_and_is_reported_once() {
        let m = material();
        let tls = Tls::load(m.settings.clone()).await.unwrap();
        let before = tls.config();
        assert_eq!(tls.reload_if_changed().await, Reload::Unchanged);
        std::fs::write(
            &m.settings.private_key,
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        assert_eq!(tls.reload_if_changed().await, Reload::Failed);
        assert_eq!(tls.reload_if_changed().await, Reload::Unchanged);
        assert!(Arc::ptr_eq(&before, &tls.config()));
        std::fs::remove_file(&m.settings.private_key).unwrap();
        assert_eq!(tls.reload_if_changed().await, Reload::Failed);
        assert_eq!(tls.reload_if_changed().await, Reload::Unchanged);
        assert!(Arc::ptr_eq(&before, &tls.config()));
        // A new certificate with its key.
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&m.settings.cert_chain, cert.pem()).unwrap();
        std::fs::write(&m.settings.private_key, key.serialize_pem()).unwrap();
        assert_eq!(tls.reload_if_changed().await, Reload::Reloaded);
        assert!(!Arc::ptr_eq(&before, &tls.config()));
    }

    #[tokio::test]
    async fn alpn_is_http1_and_sessions_are_not_resumed_with_client_certificates() {
        let m = material();
        let with = Tls::load(m.settings.clone()).await.unwrap().config();
        assert_eq!(with.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(with.send_tls13_tickets, 0);
        let mut plain = m.settings.clone();
        plain.client = None;
        let without = Tls::load(plain).await.unwrap().config();
        assert_eq!(without.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}

//! Server configuration: typed, validated, with defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use mandate_core::{Clock, Limits, SystemClock, TrustDomain};

/// Everything `mandate serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where to serve Envoy `ext_authz` v3 over gRPC (off when `None`).
    pub ext_authz_listen: Option<SocketAddr>,
    /// Directory holding the embedded database.
    pub data_dir: PathBuf,
    /// Directory of `*.cedar` policy files.
    pub policies: PathBuf,
    /// Issuer URL written into tokens; defaults to `http://<listen address>` (`https://`
    /// with [`ServerConfig::tls`]).
    pub issuer: Option<String>,
    /// SPIFFE trust domain of agent identities.
    pub trust_domain: TrustDomain,
    /// Environment label policies see (`context.task.environment`).
    pub environment: String,
    /// Audience of identity tokens (the control plane).
    pub identity_audience: String,
    /// Audience of task tokens (gateways and the decision API).
    pub task_audience: String,
    /// Admin token to install (from `MANDATE_ADMIN_TOKEN`); generated on first start if
    /// neither this nor a stored one exists.
    pub admin_token: Option<String>,
    /// A candidate policy directory evaluated beside the enforcing one; disagreements are
    /// audited (`policy.shadow_disagreement`), never enforced.
    pub shadow_policies: Option<PathBuf>,
    /// Watch the policy directory and reload on change (polled every second).
    pub watch_policies: bool,
    /// Rotate the signing key when it is older than this, in seconds.
    pub key_rotation_secs: i64,
    /// Where the master key ring sealing upstream secrets comes from.
    pub master_key: crate::secrets::MasterKeySource,
    /// The gateway: upstreams, routes and their limits (off when `None`).
    pub gateway: Option<std::sync::Arc<mandate_gateway::GatewayConfig>>,
    /// The Vault token (`VAULT_TOKEN`) for `vault://` credentials without a token file.
    pub vault_token: Option<mandate_gateway::SecretValue>,
    /// Bounds.
    pub limits: Limits,
    /// Source of time.
    pub clock: Arc<dyn Clock>,
    /// Source of identifiers (decision, task, approval, token ids).
    pub ids: Arc<dyn mandate_core::IdGen>,
    /// How the audit log is checkpointed, signed and witnessed.
    pub log: crate::checkpoints::LogSettings,
    /// Told of every committed audit event, after its commit (none by default).
    pub observers: Vec<Arc<dyn crate::audit_writer::CommitObserver>>,
    /// Where decision and gateway spans are exported over OTLP/HTTP (off when `None`).
    pub otlp: Option<crate::otlp::OtlpSettings>,
    /// Containment rules, the alert webhook and Shared Signals receivers (off when
    /// `None`; `mandate serve` installs [`ContainmentConfig::defaults`] without a file).
    ///
    /// [`ContainmentConfig::defaults`]: crate::containment::rules::ContainmentConfig::defaults
    pub containment: Option<Arc<crate::containment::rules::ContainmentConfig>>,
    /// External OIDC issuers and SPIFFE trust domains whose tokens attest agents (none
    /// when `None`: join tokens only).
    pub identity: Option<Arc<crate::workload::IdentityConfig>>,
    /// TLS on the listener, and X.509-SVID client authentication (plain HTTP when `None`).
    pub tls: Option<TlsSettings>,
}

/// TLS on Mandate's listener: where the certificate material lives and whether clients
/// authenticate with X.509-SVIDs. Only paths and flags: the server reads and watches the
/// files (the engine holds no TLS code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_chain: PathBuf,
    /// PEM private key of the leaf (PKCS#8, SEC1 or PKCS#1).
    pub private_key: PathBuf,
    /// Client authentication with X.509-SVIDs (none requested when `None`).
    pub client: Option<ClientCertificates>,
    /// How often the files are checked for a change, and reloaded when they have one.
    pub reload_every: std::time::Duration,
}

impl TlsSettings {
    /// How often [`TlsSettings::new`] checks the files.
    pub const DEFAULT_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    /// A certificate chain and its key, no client authentication, the default reload period.
    pub fn new(cert_chain: PathBuf, private_key: PathBuf) -> Self {
        Self {
            cert_chain,
            private_key,
            client: None,
            reload_every: Self::DEFAULT_RELOAD_EVERY,
        }
    }
}

/// Which client certificates authenticate a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificates {
    /// PEM bundle of the CA certificates X.509-SVIDs must chain to (a SPIFFE trust bundle).
    pub ca_bundle: PathBuf,
    /// Whether a connection without a certificate is served.
    pub auth: ClientAuth,
}

/// Whether a client certificate is required on every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// Asked for, not required: agents that present tokens need no certificate. A
    /// certificate that is presented must still be a valid X.509-SVID.
    #[default]
    Optional,
    /// Every connection presents a valid X.509-SVID.
    Required,
}

impl ServerConfig {
    /// Defaults for a data directory and policy directory.
    pub fn new(data_dir: PathBuf, policies: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8181)),
            ext_authz_listen: None,
            data_dir,
            policies,
            issuer: None,
            trust_domain: TrustDomain::default(),
            environment: "development".to_owned(),
            identity_audience: "mandate:control-plane".to_owned(),
            task_audience: "mandate:gateway".to_owned(),
            admin_token: None,
            shadow_policies: None,
            watch_policies: true,
            key_rotation_secs: 24 * 3600,
            master_key: crate::secrets::MasterKeySource::DataDir,
            gateway: None,
            vault_token: None,
            limits: Limits::default(),
            clock: Arc::new(SystemClock),
            ids: Arc::new(mandate_core::RandomIds),
            log: crate::checkpoints::LogSettings::default(),
            observers: Vec::new(),
            otlp: None,
            identity: None,
            tls: None,
            containment: Some(Arc::new(
                crate::containment::rules::ContainmentConfig::defaults(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn defaults() {
        let c = super::ServerConfig::new("d".into(), "p".into());
        assert_eq!(c.trust_domain.as_str(), "mandate.local");
        assert_eq!(c.limits.max_body_bytes, 1024 * 1024);
    }
}

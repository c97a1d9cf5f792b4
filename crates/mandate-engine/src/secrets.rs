//! The secret broker's store side: upstream credentials sealed under the master key ring,
//! kept in the store, opened only to be injected into one upstream request.
//!
//! The key ring comes from a file (`--master-key-file`), from `MANDATE_MASTER_KEY`, or,
//! when neither is given, from `master.key` generated in the data directory on first start
//! (like a dev-mode vault: convenient, and said loudly in the log). Rotation re-reads the
//! file and re-seals every secret under its first key, while the server keeps serving.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::error::Kind;
use mandate_audit::{Body, NewEvent, SecretDeleted, SecretPut, SecretsResealed};
use mandate_core::Clock;
use mandate_gateway::{KeyRing, SecretValue};
use mandate_store::{SecretRecord, Store, StoreError};
use serde::Serialize;

use crate::error::Error;

/// Where the master key ring comes from.
#[derive(Clone)]
pub enum MasterKeySource {
    /// A key ring file, re-read on rotation.
    File(PathBuf),
    /// Key ring text given at start (`MANDATE_MASTER_KEY`): rotation re-seals under its
    /// first key, and a new key needs a restart.
    Text(Arc<zeroize::Zeroizing<String>>),
    /// `master.key` in the data directory, generated when missing.
    DataDir,
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::Text(_) => f.write_str("Text([redacted])"),
            Self::DataDir => f.write_str("DataDir"),
        }
    }
}

/// Name of the generated key ring file in the data directory.
pub const GENERATED_KEY_FILE: &str = "master.key";

/// Longest secret value accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// What the API says of a secret: never its value.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// The master key that sealed it.
    pub key_id: String,
    /// Stored at (unix ms).
    pub created_at_ms: i64,
    /// Last replaced or re-sealed (unix ms).
    pub updated_at_ms: i64,
}

impl From<&SecretRecord> for SecretInfo {
    fn from(r: &SecretRecord) -> Self {
        Self {
            name: r.name.clone(),
            description: r.description.clone(),
            key_id: r.key_id.clone(),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RotationReport {
    /// The key now sealing.
    pub key_id: String,
    /// Secrets re-sealed under it.
    pub resealed: usize,
    /// Every key in the ring (sealing first); old ones can be removed once nothing uses them.
    pub key_ids: Vec<String>,
}

/// Sealed secrets.
pub struct SecretStore {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    source: MasterKeySource,
    data_dir: PathBuf,
    ring: RwLock<Arc<KeyRing>>,
    /// Opened values by name.
    opened: Mutex<HashMap<String, SecretValue>>,
    /// Bumped by every put, delete and rotation, so a value opened across one is not cached.
    generation: std::sync::atomic::AtomicU64,
    /// Serialises puts, deletes and rotations.
    write: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("source", &self.source)
            .field("ring", &*crate::sync::read(&self.ring))
            .finish_non_exhaustive()
    }
}

fn read_ring(source: &MasterKeySource, data_dir: &std::path::Path) -> Result<KeyRing, String> {
    let text = match source {
        MasterKeySource::File(p) => zeroize::Zeroizing::new(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read master key file {}: {e}", p.display()))?,
        ),
        MasterKeySource::Text(t) => zeroize::Zeroizing::new(t.replace(',', "\n")),
        MasterKeySource::DataDir => {
            let p = data_dir.join(GENERATED_KEY_FILE);
            if !p.exists() {
                let line = KeyRing::generate_line(&aws_lc_rs::rand::SystemRandom::new())
                    .map_err(|e| e.to_string())?;
                write_private(&p, &format!("{line}\n"))?;
                tracing::warn!(
                    path = %p.display(),
                    "generated a master key beside the database: anyone who can read the data directory can open its secrets; set --master-key-file for production"
                );
            }
            zeroize::Zeroizing::new(
                std::fs::read_to_string(&p)
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))?,
            )
        }
    };
    KeyRing::parse(&text).map_err(|e| e.to_string())
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn store_err(e: &StoreError) -> Error {
    Error::store(e)
}

/// A secret's name: 1-64 of `[a-z0-9._-]`, not starting with `vault:`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("a secret name is 1-64 of [a-z0-9._-]"))
    }
}

impl SecretStore {
    /// Loads the key ring and checks that every stored secret opens with it.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        source: MasterKeySource,
        data_dir: PathBuf,
    ) -> Result<Self, String> {
        let ring = read_ring(&source, &data_dir)?;
        for s in store.secrets().await.map_err(|e| e.to_string())? {
            if !ring.key_ids().contains(&s.key_id) {
                return Err(format!(
                    "secret {:?} is sealed under master key {}, which the key ring does not hold: add that key back",
                    s.name, s.key_id
                ));
            }
        }
        tracing::info!(key = ring.current_id(), "master key ring loaded");
        Ok(Self {
            store,
            clock,
            source,
            data_dir,
            ring: RwLock::new(Arc::new(ring)),
            opened: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            write: tokio::sync::Mutex::new(()),
        })
    }

    fn forget(&self, name: Option<&str>) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut opened = crate::sync::lock(&self.opened);
        match name {
            Some(n) => {
                opened.remove(n);
            }
            None => opened.clear(),
        }
    }

    fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&crate::sync::read(&self.ring))
    }

    /// Seals and stores a secret (replacing one of the same name).
    pub async fn put(
        &self,
        name: &str,
        value: SecretValue,
        description: &str,
        by: &str,
    ) -> Result<SecretInfo, Error> {
        check_name(name)?;
        let min = mandate_gateway::redact::MIN_SECRET_LEN;
        if value.expose().len() < min || value.expose().len() > MAX_SECRET_BYTES {
            return Err(Error::invalid(format!(
                "a secret value is {min}-{MAX_SECRET_BYTES} bytes (shorter ones cannot be redacted reliably from responses)"
            )));
        }
        let _w = self.write.lock().await;
        let now = self.clock.now_ms();
        let created = self
            .store
            .secret(name)
            .await
            .map_err(|e| store_err(&e))?
            .map_or(now, |s| s.created_at_ms);
        let (key_id, sealed) = self
            .ring()
            .seal(name, &value)
            .map_err(|_| Error::internal("could not seal the secret"))?;
        let rec = SecretRecord {
            name: name.to_owned(),
            key_id,
            sealed,
            description: description.to_owned(),
            created_at_ms: created,
            updated_at_ms: now.max(created),
        };
        let ev = NewEvent {
            ts_ms: now,
            agent: None,
            task_id: None,
            body: Body::SecretPut(SecretPut {
                name: name.to_owned(),
                key_id: rec.key_id.clone(),
                by: by.to_owned(),
                replaced: created != now,
            }),
        };
        self.store
            .put_secret(&rec, ev)
            .await
            .map_err(|e| store_err(&e))?;
        self.forget(Some(name));
        Ok(SecretInfo::from(&rec))
    }

    /// Every secret's description (never a value).
    pub async fn list(&self) -> Result<Vec<SecretInfo>, Error> {
        Ok(self
            .store
            .secrets()
            .await
            .map_err(|e| store_err(&e))?
            .iter()
            .map(SecretInfo::from)
            .collect())
    }

    /// Deletes a secret.
    pub async fn delete(&self, name: &str, by: &str) -> Result<bool, Error> {
        check_name(name)?;
        let _w = self.write.lock().await;
        let ev = NewEvent {
            ts_ms: self.clock.now_ms(),
            agent: None,
            task_id: None,
            body: Body::SecretDeleted(SecretDeleted {
                name: name.to_owned(),
                by: by.to_owned(),
            }),
        };
        let gone = self
            .store
            .delete_secret(name, ev)
            .await
            .map_err(|e| store_err(&e))?;
        self.forget(Some(name));
        Ok(gone)
    }

    /// Re-reads the key ring and re-seals every secret not sealed under its first key, in
    /// one transaction. Calls keep being served throughout: the old ring opens until the
    /// new one is swapped in, and the new one holds the old keys too.
    pub async fn rotate(&self, by: &str) -> Result<RotationReport, Error> {
        let _w = self.write.lock().await;
        let ring = read_ring(&self.source, &self.data_dir)
            .map_err(|e| Error::new(Kind::Unprocessable, "master_key_invalid", e))?;
        let all = self.store.secrets().await.map_err(|e| store_err(&e))?;
        let now = self.clock.now_ms();
        let mut resealed = Vec::new();
        for s in all.iter().filter(|s| s.key_id != ring.current_id()) {
            let plain = ring.open(&s.name, &s.key_id, &s.sealed).map_err(|e| {
                Error::new(
                    Kind::Conflict,
                    "master_key_missing",
                    format!("secret {:?}: {e}", s.name),
                )
            })?;
            let (key_id, sealed) = ring
                .seal(&s.name, &plain)
                .map_err(|_| Error::internal("could not seal"))?;
            let rec = SecretRecord {
                key_id,
                sealed,
                updated_at_ms: now.max(s.updated_at_ms + 1),
                ..s.clone()
            };
            resealed.push((rec, s.updated_at_ms));
        }
        let ev = NewEvent {
            ts_ms: now,
            agent: None,
            task_id: None,
            body: Body::SecretsResealed(SecretsResealed {
                key_id: ring.current_id().to_owned(),
                resealed: resealed.len(),
                by: by.to_owned(),
            }),
        };
        self.store
            .reseal_secrets(&resealed, ev)
            .await
            .map_err(|e| store_err(&e))?;
        let report = RotationReport {
            key_id: ring.current_id().to_owned(),
            resealed: resealed.len(),
            key_ids: ring.key_ids(),
        };
        *crate::sync::write(&self.ring) = Arc::new(ring);
        self.forget(None);
        Ok(report)
    }

    /// Opens a stored secret for one injection. `None` when there is no such secret.
    /// Opened values stay in memory until a put, delete or rotation on this node.
    pub async fn open_value(&self, name: &str) -> Result<Option<SecretValue>, String> {
        if let Some(v) = crate::sync::lock(&self.opened).get(name) {
            return Ok(Some(v.clone()));
        }
        let seen = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let Some(rec) = self.store.secret(name).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let v = self
            .ring()
            .open(name, &rec.key_id, &rec.sealed)
            .map_err(|e| e.to_string())?;
        let mut opened = crate::sync::lock(&self.opened);
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == seen {
            opened.insert(name.to_owned(), v.clone());
        }
        Ok(Some(v))
    }
}

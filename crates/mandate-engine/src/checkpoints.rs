//! Signed checkpoints of the audit log, and what vouches for the log outside its database.
//!
//! One background task walks the chain as it commits (the same walk that verifies it at
//! start-up), keeps the RFC 6962 tree's right edge in memory, and every
//! [`LogSettings::every_events`] records or [`LogSettings::every_secs`] seconds signs a
//! checkpoint (C2SP tlog-checkpoint, Ed25519) with the log key, a file outside the
//! database. Each checkpoint is kept in the store (for the API) and, when configured,
//! handed to a witness: a directory outside the data directory (the checkpoint, and the
//! records' hashes so a later check can name the exact record that changed) and/or a
//! webhook. At start-up the log is checked against the witness's checkpoint: a rewrite,
//! even with every hash recomputed, a truncation, or a replaced log key halts every append
//! and decision, as a broken chain does.
//!
//! What a checkpoint does not prove: records committed after the newest checkpoint a
//! witness holds are vouched for by nothing outside the database yet (at most
//! `every_events` records or `every_secs` seconds), and whoever holds the log key can sign
//! a different history — which a witness holding an earlier checkpoint refuses.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mandate_audit::check::LogCheck;
use mandate_audit::merkle::{self, Hash};
use mandate_audit::note::{Checkpoint, NoteSigner, NoteVerifier};
use mandate_audit::{ChainBreak, Event};
use mandate_core::Clock;
use mandate_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::audit_writer::{AuditWriter, CommitObserver};
use crate::error::{Error, Kind};
use crate::sync::lock;

/// Where a walk that found the chain broken leaves its finding, so the next start walks
/// the whole chain before appending anything.
pub const CHAIN_BREAK_KEY: &str = "audit_chain_break";
/// The newest checkpoint, as signed (JSON of [`SignedCheckpoint`]).
const CHECKPOINT_KEY: &str = "audit_checkpoint";
/// The witness directory's files.
const WITNESS_CHECKPOINT: &str = "checkpoint";
const WITNESS_HASHES: &str = "hashes";
/// Records read per query while walking.
const PAGE: i64 = 10_000;
/// Most committed records held for the checkpointer between two walks; past it, records
/// are read back from the store instead.
const MAX_HANDED_OVER: usize = 1_000_000;
/// Most leaves read to build one proof.
pub const MAX_PROOF_TREE: u64 = 50_000_000;

/// How the log is signed and witnessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The log key file (`PRIVATE+KEY+…`, created owner-only on first start); defaults to
    /// `audit-log.key` in the data directory. Keep it on other storage than the database
    /// where you can.
    pub key_file: Option<PathBuf>,
    /// The log's name in its checkpoints; defaults to `<trust domain>/audit`.
    pub origin: Option<String>,
    /// Sign a checkpoint at least every this many records…
    pub every_events: u64,
    /// …and at least this often while records arrive.
    pub every_secs: u64,
    /// A directory outside the data directory that receives each checkpoint and the
    /// records' hashes.
    pub witness_dir: Option<PathBuf>,
    /// A URL each signed checkpoint is POSTed to (`text/plain`), best effort.
    pub witness_url: Option<String>,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            key_file: None,
            origin: None,
            every_events: 1000,
            every_secs: 10,
            witness_dir: None,
            witness_url: None,
        }
    }
}

/// A signed tree head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedCheckpoint {
    /// The log's name.
    pub origin: String,
    /// Records covered (records 1..=size).
    pub size: u64,
    /// The RFC 6962 root over them, hex.
    pub root_hash: String,
    /// When it was signed (unix ms).
    pub signed_at_ms: i64,
    /// The checkpoint as a C2SP signed note: what to hand a witness or keep elsewhere.
    pub note: String,
    /// The verifier key that checks it (`<name>+<id>+<key>`).
    pub key: String,
}

/// An inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InclusionProof {
    /// The record.
    pub seq: i64,
    /// Its leaf index (seq - 1).
    pub index: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// The leaf hash: SHA-256(0x00 || the record's 32-byte chain hash), hex.
    pub leaf_hash: String,
    /// The root of the tree of that size, hex.
    pub root_hash: String,
    /// The audit path, hex, leaf to root.
    pub proof: Vec<String>,
}

/// A consistency proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsistencyProof {
    /// The older tree size.
    pub from: u64,
    /// The newer tree size.
    pub to: u64,
    /// The older root, hex.
    pub from_root: String,
    /// The newer root, hex.
    pub to_root: String,
    /// The proof, hex.
    pub proof: Vec<String>,
}

#[derive(Debug)]
struct State {
    check: LogCheck,
    latest: Option<SignedCheckpoint>,
    /// Record hashes not yet handed to the witness directory.
    unwitnessed: Vec<Hash>,
    /// Set once the walk found the log broken: nothing is signed after.
    broken: Option<String>,
    /// Why the last hand-over to the witness failed, while it fails.
    witness_failure: Option<String>,
}

/// The signed log: its key, its tree so far, its newest checkpoint.
#[derive(Debug)]
pub struct AuditLog {
    settings: LogSettings,
    origin: String,
    signer: NoteSigner,
    verifier: NoteVerifier,
    state: tokio::sync::Mutex<State>,
    /// Committed records not yet in a checkpoint, as the writer counts them.
    pending: AtomicU64,
    wake: Notify,
    witness_failure: std::sync::Mutex<Option<String>>,
    /// (seq, previous hash, hash) of records the writer committed since the last walk.
    own: std::sync::Mutex<Vec<(i64, String, String)>>,
}

impl CommitObserver for AuditLog {
    fn committed(&self, events: &[Event]) {
        {
            let mut own = lock(&self.own);
            if own.len() + events.len() <= MAX_HANDED_OVER {
                own.extend(
                    events
                        .iter()
                        .map(|e| (e.seq, e.prev_hash.clone(), e.hash.clone())),
                );
            }
        }
        let n = u64::try_from(events.len()).unwrap_or(u64::MAX);
        let before = self.pending.fetch_add(n, Ordering::Relaxed);
        if before < self.settings.every_events && before + n >= self.settings.every_events {
            self.wake.notify_one();
        }
    }
}

fn hex_list(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(merkle::to_hex).collect()
}

/// Reads or creates the log key.
fn load_key(path: &Path, origin: &str) -> Result<NoteSigner, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = NoteSigner::parse(&text)
                .map_err(|e| format!("the audit log key {}: {e}", path.display()))?;
            if key.name() != origin {
                return Err(format!(
                    "the audit log key {} is for the log {:?}, not {origin:?}: set the origin it was made for, or move the file away to start a new key (witnesses holding the old key's checkpoints will refuse the new one)",
                    path.display(),
                    key.name()
                ));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = NoteSigner::generate(origin).map_err(|e| e.to_string())?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(path)
                .map_err(|e| format!("cannot create the audit log key {}: {e}", path.display()))?;
            f.write_all(format!("{}\n", key.to_private_text()).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot write the audit log key {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), key = %key.verifier().to_text(), "created the audit log key");
            Ok(key)
        }
        Err(e) => Err(format!(
            "cannot read the audit log key {}: {e}",
            path.display()
        )),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, synced.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What the witness directory holds: its checkpoint (as a note) and its hashes.
fn read_witness(dir: &Path) -> Result<(Option<String>, Vec<Hash>), String> {
    let note = match std::fs::read_to_string(dir.join(WITNESS_CHECKPOINT)) {
        Ok(n) => Some(n),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read the witness checkpoint: {e}")),
    };
    let hashes = match std::fs::read(dir.join(WITNESS_HASHES)) {
        Ok(b) => b
            .chunks_exact(32)
            .filter_map(|c| <Hash>::try_from(c).ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read the witness hashes: {e}")),
    };
    Ok((note, hashes))
}

impl AuditLog {
    /// Loads (or creates) the log key. Nothing is read from the store yet.
    pub fn open(
        settings: LogSettings,
        data_dir: &Path,
        trust_domain: &str,
    ) -> Result<Arc<Self>, String> {
        if settings.every_events == 0 || settings.every_secs == 0 {
            return Err("checkpoint intervals (events and seconds) must be at least 1".into());
        }
        let origin = settings
            .origin
            .clone()
            .unwrap_or_else(|| format!("{trust_domain}/audit"));
        let key_path = settings
            .key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("audit-log.key"));
        let signer = load_key(&key_path, &origin)?;
        let verifier = signer.verifier();
        if let Some(dir) = &settings.witness_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!("cannot create the witness directory {}: {e}", dir.display())
            })?;
        }
        Ok(Arc::new(Self {
            settings,
            origin,
            signer,
            verifier,
            state: tokio::sync::Mutex::new(State {
                check: LogCheck::new(Vec::new(), Vec::new())?,
                latest: None,
                unwitnessed: Vec::new(),
                broken: None,
                witness_failure: None,
            }),
            pending: AtomicU64::new(0),
            wake: Notify::new(),
            witness_failure: std::sync::Mutex::new(None),
            own: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// The verifier key of the log (`<name>+<id>+<key>`).
    pub fn verifier_key(&self) -> String {
        self.verifier.to_text()
    }

    /// Why the witness is not receiving checkpoints, while it is not.
    pub fn witness_failure(&self) -> Option<String> {
        lock(&self.witness_failure).clone()
    }

    /// Walks the whole log against what vouches for it (the witness's checkpoint and
    /// hashes, the stored checkpoint), then keeps signing checkpoints as records commit.
    /// A break halts the writer and is remembered in the store.
    pub fn spawn(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        audit: AuditWriter,
        clock: Arc<dyn Clock>,
    ) {
        let log = Arc::clone(self);
        #[expect(
            clippy::disallowed_methods,
            reason = "the one checkpointer: lives as long as the server, ends with the runtime"
        )]
        tokio::spawn(async move {
            if let Err(why) = log.start(&*store, &audit).await {
                tracing::error!(reason = %why, "the audit log does not match what vouches for it");
                log.halt(&*store, &audit, &why).await;
                return;
            }
            let every = Duration::from_secs(log.settings.every_secs);
            loop {
                tokio::select! {
                    () = log.wake.notified() => {}
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(e) = log.checkpoint(&*store, &audit, &*clock).await
                    && e.code == "audit_chain_broken"
                {
                    return;
                }
            }
        });
    }

    async fn halt(&self, store: &dyn Store, audit: &AuditWriter, why: &str) {
        audit.health().halt(why);
        lock_broken(&self.state, why).await;
        if let Err(e) = store.put_setting(CHAIN_BREAK_KEY, why).await {
            tracing::error!(error = %e, "could not remember the chain break");
        }
    }

    /// The first walk: every record, against the checkpoints held outside the log.
    async fn start(&self, store: &dyn Store, audit: &AuditWriter) -> Result<(), String> {
        let mut checkpoints = Vec::new();
        let mut witnessed = Vec::new();
        let mut witness_size = 0;
        if let Some(dir) = &self.settings.witness_dir {
            let (note, hashes) = read_witness(dir)?;
            if let Some(note) = note {
                let cp = Checkpoint::open(&note, &self.verifier).map_err(|e| {
                    format!(
                        "the witness in {} holds a checkpoint the log key does not verify ({e}): the log key was replaced or the witness copy altered",
                        dir.display()
                    )
                })?;
                witness_size = cp.size;
                checkpoints.push(cp);
                witnessed = hashes;
            }
        }
        let stored = store
            .setting(CHECKPOINT_KEY)
            .await
            .map_err(|e| e.to_string())?;
        let mut latest = None;
        if let Some(s) = stored.filter(|s| !s.is_empty()) {
            match serde_json::from_str::<SignedCheckpoint>(&s)
                .map_err(|e| e.to_string())
                .and_then(|sc| {
                    Checkpoint::open(&sc.note, &self.verifier)
                        .map(|cp| (sc, cp))
                        .map_err(|e| e.to_string())
                }) {
                Ok((sc, cp)) => {
                    checkpoints.push(cp);
                    latest = Some(sc);
                }
                // The stored copy lives with the log: an attacker can rewrite both, so it
                // adds nothing when it fails; the witness's copy is what counts.
                Err(e) => {
                    tracing::warn!(error = %e, "the stored audit checkpoint does not verify under the log key; ignored")
                }
            }
        }
        let witnessed_len = witnessed.len();
        let mut st = self.state.lock().await;
        st.check = LogCheck::new(checkpoints, witnessed)?;
        st.latest = latest;
        let covered = witnessed_len.min(usize::try_from(witness_size).unwrap_or(usize::MAX));
        drop(st);
        self.catch_up(store).await.map_err(|b| broken_at(&b))?;
        let mut st = self.state.lock().await;
        st.check.finish(None).map_err(|b| broken_at(&b))?;
        // The witness keeps the hashes up to its checkpoint; the rest is handed over with
        // the next checkpoint.
        if let Some(dir) = &self.settings.witness_dir {
            let path = dir.join(WITNESS_HASHES);
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) {
                let keep = u64::try_from(covered)
                    .unwrap_or(u64::MAX)
                    .saturating_mul(32);
                f.set_len(keep).and_then(|()| f.sync_all()).map_err(|e| {
                    format!("cannot trim the witness hashes {}: {e}", path.display())
                })?;
            }
            // Held under the state lock: no walk runs meanwhile, so exactly the records
            // walked and not witnessed are queued.
            let walked = st.check.size();
            st.unwitnessed = read_hashes(store, covered, walked)
                .await
                .map_err(|e| e.to_string())?;
        }
        let size = st.check.size();
        drop(st);
        if audit.health().chain_break().is_none() {
            tracing::info!(records = size, "audit log verified against its checkpoints");
            // A break found by an earlier walk is cleared once the whole log checks.
            let _ = store.put_setting(CHAIN_BREAK_KEY, "").await;
        }
        Ok(())
    }

    /// Feeds every committed record not yet walked: those the writer handed over as it
    /// committed them are linked without being hashed again; any other (committed before
    /// the walk began, or past the hand-over's bound) is read from the store and checked
    /// in full.
    async fn catch_up(&self, store: &dyn Store) -> Result<(), ChainBreak> {
        let own = std::mem::take(&mut *lock(&self.own));
        let mut own = own.into_iter().peekable();
        let mut st = self.state.lock().await;
        let witnessing = self.settings.witness_dir.is_some();
        loop {
            while let Some((seq, prev, hash)) = own.peek() {
                let size = i64::try_from(st.check.size()).unwrap_or(i64::MAX);
                if *seq <= size {
                    own.next();
                    continue;
                }
                if *seq != size + 1 {
                    break;
                }
                st.check.feed_own(*seq, prev, hash)?;
                if witnessing && let Some(h) = merkle::from_hex(hash) {
                    st.unwitnessed.push(h);
                }
                own.next();
            }
            let after = i64::try_from(st.check.size()).unwrap_or(i64::MAX);
            let next_own = own.peek().map(|o| o.0);
            let want = next_own.map_or(PAGE, |n| (n - 1 - after).clamp(1, PAGE));
            let page = store
                .events_after(after, want)
                .await
                .map_err(|e| ChainBreak {
                    seq: after + 1,
                    problem: format!("could not be read: {e}"),
                })?;
            if page.is_empty() {
                return match next_own {
                    Some(_) => Err(ChainBreak {
                        seq: after + 1,
                        problem: "committed by the writer but no longer in the store: removed"
                            .into(),
                    }),
                    None => Ok(()),
                };
            }
            for e in &page {
                st.check.feed(e)?;
                if witnessing && let Some(h) = merkle::from_hex(&e.hash) {
                    st.unwitnessed.push(h);
                }
            }
        }
    }

    /// Signs a checkpoint over everything committed, if anything was committed since the
    /// last one, and hands it to the witness. Returns the newest checkpoint.
    pub async fn checkpoint(
        &self,
        store: &dyn Store,
        audit: &AuditWriter,
        clock: &dyn Clock,
    ) -> Result<SignedCheckpoint, Error> {
        if let Some(why) = audit.health().chain_break() {
            return Err(Error::new(
                Kind::Unavailable,
                "audit_chain_broken",
                format!("the audit chain is broken, so no checkpoint is signed: {why}"),
            ));
        }
        if let Err(b) = self.catch_up(store).await {
            let why = broken_at(&b);
            self.halt(store, audit, &why).await;
            return Err(Error::new(Kind::Unavailable, "audit_chain_broken", why));
        }
        let mut st = self.state.lock().await;
        if let Some(why) = &st.broken {
            return Err(Error::new(
                Kind::Unavailable,
                "audit_chain_broken",
                why.clone(),
            ));
        }
        let size = st.check.size();
        if let Some(l) = &st.latest
            && l.size == size
        {
            return Ok(l.clone());
        }
        self.pending.store(0, Ordering::Relaxed);
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size,
            root: st.check.tree().root(),
        };
        let note = cp.sign(&self.signer).map_err(Error::internal)?;
        let signed = SignedCheckpoint {
            origin: cp.origin,
            size,
            root_hash: merkle::to_hex(&cp.root),
            signed_at_ms: clock.now_ms(),
            note,
            key: self.verifier.to_text(),
        };
        let json = serde_json::to_string(&signed).map_err(Error::internal)?;
        store
            .put_setting(CHECKPOINT_KEY, &json)
            .await
            .map_err(|e| Error::store(&e))?;
        if let Some(dir) = &self.settings.witness_dir {
            match witness_append(dir, &st.unwitnessed, &signed.note) {
                Ok(()) => {
                    st.unwitnessed.clear();
                    *lock(&self.witness_failure) = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, dir = %dir.display(), "the witness directory did not take the checkpoint; retried with the next one");
                    *lock(&self.witness_failure) = Some(e.to_string());
                }
            }
        }
        st.latest = Some(signed.clone());
        drop(st);
        if let Some(url) = &self.settings.witness_url {
            post_witness(url.clone(), signed.note.clone());
        }
        Ok(signed)
    }

    /// The newest checkpoint, if one was signed.
    pub async fn latest(&self) -> Option<SignedCheckpoint> {
        self.state.lock().await.latest.clone()
    }

    /// The proof that record `seq` is in the tree of `size` records (default: the newest
    /// checkpoint's).
    pub async fn inclusion(
        &self,
        store: &dyn Store,
        seq: i64,
        size: Option<u64>,
    ) -> Result<InclusionProof, Error> {
        let size = self.size_or_latest(size).await?;
        if seq < 1 || u64::try_from(seq).unwrap_or(u64::MAX) > size {
            return Err(Error::new(
                Kind::NotFound,
                "not_in_tree",
                format!("record {seq} is not in the tree of {size} records"),
            ));
        }
        let leaves = leaves(store, size).await?;
        let index = usize::try_from(seq - 1).unwrap_or(usize::MAX);
        let proof = merkle::inclusion_proof(index, &leaves)
            .map_err(|e| Error::new(Kind::NotFound, "not_in_tree", e.to_string()))?;
        Ok(InclusionProof {
            seq,
            index: u64::try_from(index).unwrap_or(u64::MAX),
            size,
            leaf_hash: leaves.get(index).map(merkle::to_hex).unwrap_or_default(),
            root_hash: merkle::to_hex(&merkle::root(&leaves)),
            proof: hex_list(&proof),
        })
    }

    /// The proof that the tree of `from` records is a prefix of the tree of `to` (default:
    /// the newest checkpoint's size).
    pub async fn consistency(
        &self,
        store: &dyn Store,
        from: u64,
        to: Option<u64>,
    ) -> Result<ConsistencyProof, Error> {
        let to = self.size_or_latest(to).await?;
        if from > to {
            return Err(Error::new(
                Kind::Unprocessable,
                "bad_tree_sizes",
                format!("from ({from}) must not exceed to ({to})"),
            ));
        }
        let leaves = leaves(store, to).await?;
        let old = leaves
            .get(..usize::try_from(from).unwrap_or(usize::MAX))
            .unwrap_or_default();
        let proof = merkle::consistency_proof(old.len(), &leaves)
            .map_err(|e| Error::new(Kind::Unprocessable, "bad_tree_sizes", e.to_string()))?;
        Ok(ConsistencyProof {
            from,
            to,
            from_root: merkle::to_hex(&merkle::root(old)),
            to_root: merkle::to_hex(&merkle::root(&leaves)),
            proof: hex_list(&proof),
        })
    }

    async fn size_or_latest(&self, size: Option<u64>) -> Result<u64, Error> {
        let walked = self.state.lock().await.check.size();
        match size {
            Some(s) if s <= walked => Ok(s),
            Some(s) => Err(Error::new(
                Kind::NotFound,
                "not_in_tree",
                format!("the log has {walked} verified records, not {s}"),
            )),
            None => self.latest().await.map(|l| l.size).ok_or_else(|| {
                Error::new(
                    Kind::NotFound,
                    "no_checkpoint",
                    "no checkpoint has been signed yet: ask for one with GET /v1/audit/checkpoint",
                )
            }),
        }
    }
}

/// How a break is told to readiness, the log and the next start.
fn broken_at(b: &ChainBreak) -> String {
    format!("first bad record {}: {}", b.seq, b.problem)
}

async fn lock_broken(state: &tokio::sync::Mutex<State>, why: &str) {
    let mut st = state.lock().await;
    if st.broken.is_none() {
        st.broken = Some(why.to_owned());
    }
    st.witness_failure = None;
}

/// The raw hashes of records `after + 1 ..= upto`.
async fn read_hashes(
    store: &dyn Store,
    after: usize,
    upto: u64,
) -> Result<Vec<Hash>, mandate_store::StoreError> {
    let mut out = Vec::new();
    let mut after = i64::try_from(after).unwrap_or(i64::MAX);
    let upto = i64::try_from(upto).unwrap_or(i64::MAX);
    while after < upto {
        let page = store.event_hashes(after, (upto - after).min(PAGE)).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.0;
        out.extend(page.iter().filter_map(|(_, h)| merkle::from_hex(h)));
    }
    Ok(out)
}

/// The leaf hashes of records 1..=size.
async fn leaves(store: &dyn Store, size: u64) -> Result<Vec<Hash>, Error> {
    if size > MAX_PROOF_TREE {
        return Err(Error::new(
            Kind::Exhausted,
            "tree_too_large",
            format!("proofs are built for trees of at most {MAX_PROOF_TREE} records"),
        ));
    }
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut after = 0;
    while (out.len() as u64) < size {
        let want = i64::try_from(size - out.len() as u64)
            .unwrap_or(i64::MAX)
            .min(PAGE);
        let page = store
            .event_hashes(after, want)
            .await
            .map_err(|e| Error::store(&e))?;
        let Some(last) = page.last() else { break };
        after = last.0;
        for (seq, hash) in &page {
            let leaf = merkle::from_hex(hash)
                .map(|h| merkle::leaf_hash(&h))
                .ok_or_else(|| {
                    Error::new(
                        Kind::Unavailable,
                        "audit_chain_broken",
                        format!("record {seq}'s hash is not 64 hex digits"),
                    )
                })?;
            out.push(leaf);
        }
    }
    if (out.len() as u64) < size {
        return Err(Error::new(
            Kind::Unavailable,
            "audit_chain_broken",
            format!("the log holds {} records, fewer than {size}", out.len()),
        ));
    }
    Ok(out)
}

fn witness_append(dir: &Path, hashes: &[Hash], note: &str) -> std::io::Result<()> {
    if !hashes.is_empty() {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(WITNESS_HASHES))?;
        let mut buf = Vec::with_capacity(hashes.len() * 32);
        for h in hashes {
            buf.extend_from_slice(h);
        }
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    replace_file(&dir.join(WITNESS_CHECKPOINT), note.as_bytes())
}

fn post_witness(url: String, note: String) {
    #[expect(
        clippy::disallowed_methods,
        reason = "one delivery per checkpoint, bounded by the client's 5 s timeout"
    )]
    tokio::spawn(async move {
        let sent = match crate::webhook::client() {
            Ok(c) => c
                .post(&url)
                .header("content-type", "text/plain; charset=utf-8")
                .body(note)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, url = %url, "the witness webhook did not take the checkpoint");
        }
    });
}

//! The audit log read as evidence, without the server's storage code: the database file
//! opened read-only with this module's own queries, or an export (JSON lines). Verifying
//! here shares only the pure chain and tree definitions (`mandate_audit`) with the server,
//! so a bug or a compromise of the server's store cannot make its own log look intact.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mandate_audit::check::LogCheck;
use mandate_audit::merkle::Hash;
use mandate_audit::note::{Checkpoint, NoteSigner, NoteVerifier};
use mandate_audit::{ChainBreak, Event, StoredEvent};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

/// Records read per query.
const PAGE: i64 = 10_000;

/// The database file, opened read-only (works while the server runs: WAL readers never
/// block the writer).
pub async fn open_readonly(data_dir: &Path) -> Result<SqlitePool> {
    let path = data_dir.join("mandate.db");
    if !path.exists() {
        bail!("no Mandate database at {}", path.display());
    }
    let opts = SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .with_context(|| format!("cannot open {} read-only", path.display()))
}

/// Records after `after`, at most `limit`, in order.
pub async fn page(db: &SqlitePool, after: i64, limit: i64) -> Result<Vec<Event>> {
    let rows = sqlx::query(
        "SELECT seq, ts_ms, kind, agent, task_id, data, prev_hash, hash FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let data: String = r.try_get("data")?;
            Ok(Event {
                seq: r.try_get("seq")?,
                ts_ms: r.try_get("ts_ms")?,
                kind: r.try_get("kind")?,
                agent: r.try_get("agent")?,
                task_id: r.try_get("task_id")?,
                data: serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data)),
                prev_hash: r.try_get("prev_hash")?,
                hash: r.try_get("hash")?,
            })
        })
        .collect()
}

/// Records after `after` as stored (the data as its text), at most `limit`, in order.
async fn page_stored(db: &SqlitePool, after: i64, limit: i64) -> Result<Vec<StoredEvent>> {
    let rows = sqlx::query(
        "SELECT seq, ts_ms, kind, agent, task_id, data, prev_hash, hash FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredEvent {
                seq: r.try_get("seq")?,
                ts_ms: r.try_get("ts_ms")?,
                kind: r.try_get("kind")?,
                agent: r.try_get("agent")?,
                task_id: r.try_get("task_id")?,
                data: r.try_get("data")?,
                prev_hash: r.try_get("prev_hash")?,
                hash: r.try_get("hash")?,
            })
        })
        .collect()
}

async fn head(db: &SqlitePool) -> Result<Option<(i64, String)>> {
    let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(db)
        .await?;
    Ok(match row {
        Some(r) => Some((r.try_get("seq")?, r.try_get("hash")?)),
        None => None,
    })
}

/// Where the records come from.
#[derive(Debug)]
pub enum Source {
    /// The data directory's database, read-only.
    Database(PathBuf),
    /// An export (`mandate audit export`): JSON lines, one record each.
    Export(PathBuf),
}

/// What vouches for the log: checkpoint notes, and the hashes a witness kept.
#[derive(Debug, Default)]
pub struct Anchors {
    /// Signed checkpoint notes, each as read.
    pub notes: Vec<(PathBuf, String)>,
    /// The witnessed record hashes, if a witness directory was given.
    pub hashes: Vec<Hash>,
}

/// Reads `--checkpoint` arguments: a note file, or a witness directory (its `checkpoint`
/// and `hashes` files).
pub fn read_anchors(paths: &[PathBuf]) -> Result<Anchors> {
    let mut a = Anchors::default();
    for p in paths {
        let (note_path, hashes_path) = if p.is_dir() {
            (p.join("checkpoint"), Some(p.join("hashes")))
        } else {
            (p.clone(), None)
        };
        let note = std::fs::read_to_string(&note_path)
            .with_context(|| format!("cannot read the checkpoint {}", note_path.display()))?;
        a.notes.push((note_path, note));
        if let Some(h) = hashes_path.filter(|h| h.exists()) {
            let bytes =
                std::fs::read(&h).with_context(|| format!("cannot read {}", h.display()))?;
            if bytes.len() % 32 != 0 {
                bail!("{} is not a whole number of 32-byte hashes", h.display());
            }
            if a.hashes.is_empty() {
                a.hashes = bytes
                    .chunks_exact(32)
                    .filter_map(|c| <Hash>::try_from(c).ok())
                    .collect();
            }
        }
    }
    Ok(a)
}

/// The verifier key: given as text (`name+id+key`), or a file holding it, or, failing
/// both, derived from the data directory's log key (convenient, but a key next to the
/// database proves less than one kept elsewhere).
pub fn verifier_key(key: Option<&str>, data_dir: &Path) -> Result<(NoteVerifier, bool)> {
    if let Some(k) = key {
        let text = if Path::new(k).is_file() {
            std::fs::read_to_string(k).with_context(|| format!("cannot read the key file {k}"))?
        } else {
            k.to_owned()
        };
        return Ok((NoteVerifier::parse(&text)?, true));
    }
    let path = data_dir.join("audit-log.key");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no --key given and no log key at {}: pass the log's verifier key (GET /v1/audit/checkpoint shows it)",
            path.display()
        )
    })?;
    Ok((NoteSigner::parse(&text)?.verifier(), false))
}

/// What a verification found.
#[derive(Debug)]
pub struct Finding {
    /// Records checked.
    pub records: i64,
    /// Checkpoints checked against (largest size).
    pub checkpoint_size: Option<u64>,
    /// The first bad record, if any.
    pub first_bad: Option<ChainBreak>,
}

/// Walks the log from `source` against the checkpoints.
pub async fn verify(
    source: &Source,
    checkpoints: Vec<Checkpoint>,
    hashes: Vec<Hash>,
) -> Result<Finding> {
    let checkpoint_size = checkpoints.iter().map(|c| c.size).max();
    let mut check = LogCheck::new(checkpoints, hashes).map_err(anyhow::Error::msg)?;
    let mut records = 0;
    let fail = |records, b| Finding {
        records,
        checkpoint_size,
        first_bad: Some(b),
    };
    let head = match source {
        Source::Database(dir) => {
            let db = open_readonly(dir).await?;
            // The head first: records appended while walking are left for the next walk.
            let Some(head) = head(&db).await? else {
                return Ok(fail(
                    0,
                    ChainBreak {
                        seq: 0,
                        problem: "the audit head row is missing: the store was altered".into(),
                    },
                ));
            };
            let mut after = 0;
            'pages: loop {
                let events = page_stored(&db, after, PAGE).await?;
                let Some(last) = events.last() else { break };
                after = last.seq;
                for e in &events {
                    if e.seq > head.0 {
                        break 'pages;
                    }
                    if let Err(b) = check.feed_stored(e) {
                        return Ok(fail(records, b));
                    }
                    records += 1;
                }
            }
            Some(head)
        }
        Source::Export(path) => {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot open the export {}", path.display()))?;
            for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let e: Event = serde_json::from_str(&line).with_context(|| {
                    format!("{} line {}: not an audit record", path.display(), n + 1)
                })?;
                if let Err(b) = check.feed(&e) {
                    return Ok(fail(records, b));
                }
                records += 1;
            }
            None
        }
    };
    let first_bad = check
        .finish(head.as_ref().map(|(s, h)| (*s, h.as_str())))
        .err();
    Ok(Finding {
        records,
        checkpoint_size,
        first_bad,
    })
}

/// Writes records after `after` as JSON lines; with `follow`, keeps writing new ones as
/// they commit (polling), like `tail -f`, until the output closes.
pub async fn export(data_dir: &Path, after: i64, follow: bool, out: &mut dyn Write) -> Result<()> {
    let db = open_readonly(data_dir).await?;
    let mut after = after;
    loop {
        let events = page(&db, after, PAGE).await?;
        for e in &events {
            let line = serde_json::to_string(e)?;
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
            after = e.seq;
        }
        if events.is_empty() {
            if !follow {
                return Ok(());
            }
            if out.flush().is_err() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

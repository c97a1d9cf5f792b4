//! Checking a log against what was vouched for outside it: the hash chain walk
//! ([`Verifier`]) plus the Merkle tree, compared with signed checkpoints and, where a
//! witness kept them, the records' hashes as they were when witnessed.
//!
//! What each piece catches:
//! - the chain alone: any edit, deletion, reordering or insertion that was not followed by
//!   recomputing every later hash and the head;
//! - a checkpoint of size N: any change to records 1..=N, even with every hash and the
//!   head recomputed, and any truncation below N (the root or the size no longer match);
//! - the witnessed hashes: which record, exactly, a recomputed rewrite changed first.
//!
//! Pure: the server feeds it from its store, `mandate audit verify` from its own
//! read-only reading of the database or from an export.

use crate::merkle::{Frontier, Hash, from_hex, leaf_hash};
use crate::note::Checkpoint;
use crate::{ChainBreak, Event, Verifier};

/// The leaf data of a record: its chain hash, as 32 bytes.
pub fn record_leaf(e: &Event) -> Result<Hash, ChainBreak> {
    from_hex(&e.hash).map(|h| leaf_hash(&h)).ok_or(ChainBreak {
        seq: e.seq,
        problem: "its hash is not 64 hex digits: the record was edited".into(),
    })
}

/// Walks a log in sequence order against checkpoints (and optional witnessed hashes).
#[derive(Debug)]
pub struct LogCheck {
    chain: Verifier,
    tree: Frontier,
    /// Checkpoints not reached yet, smallest first.
    ahead: Vec<Checkpoint>,
    /// The largest checkpoint size matched so far.
    matched: u64,
    /// Record hashes as a witness kept them (record n at index n - 1).
    witnessed: Vec<Hash>,
}

impl LogCheck {
    /// A check of a whole log, from record 1, against `checkpoints` (already signature
    /// checked) and the hashes a witness kept (authenticated here against the largest
    /// checkpoint they cover).
    pub fn new(mut checkpoints: Vec<Checkpoint>, mut witnessed: Vec<Hash>) -> Result<Self, String> {
        checkpoints.sort_by_key(|c| c.size);
        checkpoints.dedup_by(|a, b| a.size == b.size && a.root == b.root);
        if let Some(w) = checkpoints
            .windows(2)
            .find(|w| w.first().map(|c| c.size) == w.get(1).map(|c| c.size))
        {
            return Err(format!(
                "two checkpoints of size {} have different roots: the log was forked (its key signed two histories)",
                w.first().map_or(0, |c| c.size)
            ));
        }
        if !witnessed.is_empty() {
            let mut t = Frontier::new();
            let mut covered = 0;
            for h in &witnessed {
                t.push(leaf_hash(h));
                if let Some(cp) = checkpoints.iter().find(|c| c.size == t.size()) {
                    if t.root() != cp.root {
                        return Err(format!(
                            "the witnessed hashes do not match the checkpoint of size {}: the witness copy was altered",
                            cp.size
                        ));
                    }
                    covered = t.size();
                }
            }
            // Hashes past the last checkpoint are vouched for by nothing: not used.
            witnessed.truncate(usize::try_from(covered).unwrap_or(usize::MAX));
            if covered == 0 {
                return Err(
                    "no checkpoint covers the witnessed hashes, so they cannot be trusted".into(),
                );
            }
        }
        Ok(Self {
            chain: Verifier::new(),
            tree: Frontier::new(),
            ahead: checkpoints,
            matched: 0,
            witnessed,
        })
    }

    /// Records checked so far.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The tree so far.
    pub fn tree(&self) -> &Frontier {
        &self.tree
    }

    /// Checks the next record.
    pub fn feed(&mut self, e: &Event) -> Result<(), ChainBreak> {
        self.chain.feed(e)?;
        self.grow(e.seq, &e.hash)
    }

    /// Checks the next record as stored (its bytes hashed as they are where they are
    /// canonical).
    pub fn feed_stored(&mut self, e: &crate::StoredEvent) -> Result<(), ChainBreak> {
        self.chain.feed_stored(e)?;
        self.grow(e.seq, &e.hash)
    }

    /// Takes the next record as committed by this process's own writer (see
    /// [`Verifier::feed_own`]): linked and compared with the witness and checkpoints, not
    /// re-hashed.
    pub fn feed_own(&mut self, seq: i64, prev_hash: &str, hash: &str) -> Result<(), ChainBreak> {
        self.chain.feed_own(seq, prev_hash, hash)?;
        self.grow(seq, hash)
    }

    fn grow(&mut self, seq: i64, hash: &str) -> Result<(), ChainBreak> {
        let raw = from_hex(hash).ok_or(ChainBreak {
            seq,
            problem: "its hash is not 64 hex digits: the record was edited".into(),
        })?;
        let leaf = leaf_hash(&raw);
        let index = usize::try_from(self.tree.size()).unwrap_or(usize::MAX);
        if let Some(kept) = self.witnessed.get(index)
            && *kept != raw
        {
            return Err(ChainBreak {
                seq,
                problem: "the record is not the one the witness holds: it was rewritten and every later hash recomputed".into(),
            });
        }
        self.tree.push(leaf);
        while let Some(cp) = self.ahead.first() {
            if cp.size > self.tree.size() {
                break;
            }
            if cp.root != self.tree.root() {
                let first = self.matched.saturating_add(1);
                return Err(ChainBreak {
                    seq: i64::try_from(first).unwrap_or(i64::MAX),
                    problem: format!(
                        "records {first}..={} do not match the signed checkpoint of size {}: at least one of them was rewritten and the chain recomputed (keep the witness's hashes to name the record)",
                        cp.size, cp.size
                    ),
                });
            }
            self.matched = cp.size;
            self.ahead.remove(0);
        }
        Ok(())
    }

    /// Checks the end of the log: against the head recorded with the last append, then
    /// that no checkpoint vouched for more records than there are.
    pub fn finish(&self, head: Option<(i64, &str)>) -> Result<i64, ChainBreak> {
        let size = self.tree.size();
        if let Some(cp) = self.ahead.first() {
            let first = size.saturating_add(1);
            return Err(ChainBreak {
                seq: i64::try_from(first).unwrap_or(i64::MAX),
                problem: format!(
                    "a signed checkpoint vouches for {} records but the log ends at {size}: records {first}..={} were removed (truncated, the head moved back)",
                    cp.size, cp.size
                ),
            });
        }
        if let Some((seq, hash)) = head {
            return self.chain.finish(seq, hash);
        }
        Ok(i64::try_from(size).unwrap_or(i64::MAX))
    }
}

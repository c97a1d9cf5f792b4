//! The RFC 6962 (RFC 9162 §2.1) Merkle tree over the audit chain: leaf `i` is record
//! `i + 1`, and its leaf data is that record's 32-byte chain hash. A tree head (size and
//! root) commits to every record up to its size; an inclusion proof shows one record is
//! in it, a consistency proof that a larger tree extends a smaller one without changing
//! any record. Pure functions over leaf hashes: no IO.
//!
//! Why RFC 6962 and not only the hash chain: the chain proves order, but anyone able to
//! rewrite the database can recompute it. A signed tree head held outside the database
//! (a checkpoint, see [`crate::note`]) pins the records up to its size, and a consistency
//! proof shows a later log still contains them, in logarithmic size.

use aws_lc_rs::digest;

/// A node or leaf hash.
pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The hash of an empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// `MTH({d}) = SHA-256(0x00 || d)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0u8], data])
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[1u8], left, right])
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root of the tree over `leaves` (already leaf-hashed).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            let (l, r) = leaves.split_at(k);
            node_hash(&root(l), &root(r))
        }
    }
}

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index or sizes asked for are outside the tree.
    #[error("{0}")]
    OutOfRange(String),
    /// The proof does not lead to the root it should.
    #[error("the proof does not match the tree head: {0}")]
    Mismatch(&'static str),
}

/// The audit path of leaf `index` in the tree over `leaves` (RFC 9162 §2.1.3.1).
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    if index >= leaves.len() {
        return Err(ProofError::OutOfRange(format!(
            "leaf {index} is not in a tree of {} leaves",
            leaves.len()
        )));
    }
    let mut out = Vec::new();
    path(index, leaves, &mut out);
    Ok(out)
}

fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    let (l, r) = leaves.split_at(k);
    if m < k {
        path(m, l, out);
        out.push(root(r));
    } else {
        path(m - k, r, out);
        out.push(root(l));
    }
}

/// The proof that the tree of `old_size` leaves is a prefix of the tree over `leaves`
/// (RFC 9162 §2.1.4.1).
pub fn consistency_proof(old_size: usize, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    if old_size > leaves.len() {
        return Err(ProofError::OutOfRange(format!(
            "a tree of {old_size} leaves cannot be a prefix of one of {}",
            leaves.len()
        )));
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < leaves.len() {
        subproof(old_size, leaves, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: usize, leaves: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    let (l, r) = leaves.split_at(k);
    if m <= k {
        subproof(m, l, whole, out);
        out.push(root(r));
    } else {
        subproof(m - k, r, false, out);
        out.push(root(l));
    }
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Mismatch("the proof is longer than the tree"));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Mismatch("the proof is shorter than the tree"));
    }
    if &r != root {
        return Err(ProofError::Mismatch("the leaf does not lead to the root"));
    }
    Ok(())
}

/// Checks a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OutOfRange(format!(
            "the old tree ({old_size}) is larger than the new one ({new_size})"
        )));
    }
    if old_size == new_size {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch(
                "two trees of the same size have different roots",
            ))
        };
    }
    if old_size == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Mismatch("a proof from the empty tree is empty"))
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::Mismatch("the proof is empty"));
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Mismatch("the proof is longer than the trees"));
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Mismatch("the proof is shorter than the trees"));
    }
    if &fr != old_root {
        return Err(ProofError::Mismatch(
            "the proof does not rebuild the old root: the log was rewritten before the old size",
        ));
    }
    if &sr != new_root {
        return Err(ProofError::Mismatch(
            "the proof does not rebuild the new root",
        ));
    }
    Ok(())
}

/// The right edge of a growing tree: one root per perfect subtree, largest first, so
/// appending is O(log n) and the root is always at hand (what the checkpointer keeps in
/// memory as records commit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (subtree height, subtree root), heights strictly decreasing.
    stack: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Adds the next leaf (already leaf-hashed).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.stack.last() {
            if h != node.0 {
                break;
            }
            self.stack.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.size += 1;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            r = node_hash(left, &r);
        }
        r
    }
}

/// Lowercase hex of a hash.
pub fn to_hex(h: &Hash) -> String {
    crate::hex(h)
}

/// Reads 64 hex digits.
pub fn from_hex(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        let &[hi, lo] = pair else {
            return None;
        };
        *o = u8::try_from(digit(hi)? * 16 + digit(lo)?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&[i as u8])).collect()
    }

    #[test]
    fn rfc6962_empty_and_single_vectors() {
        // The empty tree and a tree of one empty leaf, as every RFC 6962 log computes them.
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            to_hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn frontier_matches_the_recursive_root_at_every_size() {
        let all = leaves(70);
        let mut f = Frontier::new();
        assert_eq!(f.root(), root(&[]));
        for (i, l) in all.iter().enumerate() {
            f.push(*l);
            assert_eq!(f.root(), root(&all[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn every_proof_verifies_and_every_wrong_one_fails() {
        let all = leaves(33);
        for n in 1..=all.len() {
            let tree = &all[..n];
            let r = root(tree);
            for i in 0..n {
                let p = inclusion_proof(i, tree).unwrap();
                verify_inclusion(i as u64, n as u64, &tree[i], &p, &r).unwrap();
                let other = leaf_hash(b"not here");
                assert!(verify_inclusion(i as u64, n as u64, &other, &p, &r).is_err());
                for k in 0..p.len() {
                    let mut bent = p.clone();
                    bent[k][0] ^= 1;
                    assert!(verify_inclusion(i as u64, n as u64, &tree[i], &bent, &r).is_err());
                }
            }
            for m in 0..=n {
                let p = consistency_proof(m, tree).unwrap();
                let old = root(&tree[..m]);
                verify_consistency(m as u64, n as u64, &old, &r, &p).unwrap();
                if m > 0 && m < n {
                    let forged = root(&leaves(m + 1)[1..]);
                    assert!(verify_consistency(m as u64, n as u64, &forged, &r, &p).is_err());
                }
            }
        }
    }

    #[test]
    fn hex_round_trip() {
        let h = leaf_hash(b"x");
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }
}

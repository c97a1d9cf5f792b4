use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_lc_rs::digest;

/// A bounded cache of tokens whose signature and claims have already been verified.
///
/// Entries are found by the token's signature segment (short, and unique per signed
/// content) and then confirmed by comparing the whole token text, so a hit is exact: no
/// hash collision, crafted or not, can make one token pass as another.
///
/// A hit skips only the signature check: the caller still checks expiry (kept beside the
/// entry) and revocation on every call. Rotation does not clear it (retired keys stay valid
/// for the overlap, which the server checks covers every token's life); withdrawing a key
/// must call [`VerifiedCache::clear`].
pub struct VerifiedCache<C> {
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Entry<C>>>,
}

struct Entry<C> {
    token: Box<str>,
    claims: Arc<C>,
    /// Token expiry plus leeway, unix seconds: a hit at or after this is a miss.
    valid_until_secs: i64,
}

impl<C> fmt::Debug for VerifiedCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("capacity", &self.capacity)
            .field("len", &self.lock().len())
            .finish()
    }
}

/// The lookup key: SHA-256 of the signature segment (the text after the last dot), which
/// is at most a few hundred bytes whatever the size of the claims.
fn key(token: &str) -> [u8; 32] {
    let sig = token.rsplit('.').next().unwrap_or(token);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, sig.as_bytes()).as_ref());
    out
}

impl<C> VerifiedCache<C> {
    /// A cache holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Entry<C>>> {
        // A panic while holding the lock cannot leave a half-written entry (inserts and
        // removes are single calls), so a poisoned map is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The verified claims of `token`, if it was verified before and is still in date.
    pub fn get(&self, token: &str, now_secs: i64) -> Option<Arc<C>> {
        let k = key(token);
        let mut map = self.lock();
        match map.get(&k) {
            Some(e) if now_secs < e.valid_until_secs && *e.token == *token => {
                Some(Arc::clone(&e.claims))
            }
            // Same signature, different text: never served from the cache.
            Some(e) if now_secs < e.valid_until_secs => None,
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token until `valid_until_secs`. When full, expired entries are
    /// dropped first; if it is still full, the whole cache is cleared (the cost is one
    /// re-verification per live token, never a wrong answer).
    pub fn insert(&self, token: &str, claims: Arc<C>, valid_until_secs: i64, now_secs: i64) {
        if self.capacity == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity {
            map.retain(|_, e| now_secs < e.valid_until_secs);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(
            key(token),
            Entry {
                token: token.into(),
                claims,
                valid_until_secs,
            },
        );
    }

    /// Forgets everything (after a key-ring change).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_bound() {
        let c = VerifiedCache::new(2);
        c.insert("a", Arc::new(1), 100, 0);
        assert_eq!(c.get("a", 99).as_deref(), Some(&1));
        assert!(c.get("a", 100).is_none());
        assert!(c.is_empty());
        c.insert("a", Arc::new(1), 100, 0);
        c.insert("b", Arc::new(2), 100, 0);
        c.insert("c", Arc::new(3), 100, 0);
        assert!(c.len() <= 2);
        assert_eq!(c.get("c", 0).as_deref(), Some(&3));
    }

    #[test]
    fn a_hit_needs_the_exact_token() {
        let c = VerifiedCache::new(8);
        c.insert("header.payload.sig", Arc::new(1), 100, 0);
        assert_eq!(c.get("header.payload.sig", 0).as_deref(), Some(&1));
        // Same signature segment, altered payload: a miss, so it is verified (and refused).
        assert!(c.get("header.payl0ad.sig", 0).is_none());
        assert!(c.get("sig", 0).is_none());
    }
}

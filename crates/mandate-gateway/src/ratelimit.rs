//! Token buckets keyed by agent or task, on time passed in (so tests move a clock).

use std::collections::HashMap;

/// Keys kept before idle (full) buckets are dropped.
const PRUNE_AT: usize = 10_000;

/// A set of token buckets: `rate` tokens per second, up to `burst`.
#[derive(Debug)]
pub struct Buckets {
    rate_per_ms: f64,
    burst: f64,
    map: HashMap<String, (f64, i64)>,
}

impl Buckets {
    /// Buckets refilling `rate` per second, holding at most `burst` (at least one).
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate_per_ms: f64::from(rate) / 1000.0,
            burst: f64::from(burst.max(1)),
            map: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now_ms`; `Err(retry_after_ms)` when empty.
    pub fn take(&mut self, key: &str, now_ms: i64) -> Result<(), u64> {
        if self.map.len() >= PRUNE_AT && !self.map.contains_key(key) {
            let (rate, burst) = (self.rate_per_ms, self.burst);
            self.map
                .retain(|_, (tokens, at)| *tokens + (now_ms - *at) as f64 * rate < burst);
        }
        let (rate, burst) = (self.rate_per_ms, self.burst);
        let entry = self.map.entry(key.to_owned()).or_insert((burst, now_ms));
        let elapsed = (now_ms - entry.1).max(0) as f64;
        let tokens = (entry.0 + elapsed * rate).min(burst);
        entry.1 = now_ms.max(entry.1);
        if tokens >= 1.0 {
            entry.0 = tokens - 1.0;
            Ok(())
        } else {
            entry.0 = tokens;
            let wait = if rate > 0.0 {
                (1.0 - tokens) / rate
            } else {
                1000.0
            };
            Err(wait.ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = Buckets::new(10, 3);
        assert!((0..3).all(|_| b.take("a", 0).is_ok()));
        assert_eq!(b.take("a", 0), Err(100));
        // Another key is unaffected.
        assert!(b.take("b", 0).is_ok());
        assert!(b.take("a", 100).is_ok());
        assert!(b.take("a", 100).is_err());
        assert!((0..3).all(|_| b.take("a", 10_000).is_ok()));
        assert!(b.take("a", 10_000).is_err());
    }
}

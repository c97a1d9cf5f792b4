use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// The source of "now". Injected everywhere so expiry, TTL and revocation races are tested
/// by moving a [`ManualClock`] rather than by sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMillis;

    /// The current time in whole seconds since the Unix epoch (JWT `iat`/`exp` units).
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// The current time in microseconds since the Unix epoch (span times).
    fn now_us(&self) -> i64 {
        self.now_ms().saturating_mul(1000)
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the real clock: the one place wall time is read"
    )]
    fn now_ms(&self) -> UnixMillis {
        jiff::Timestamp::now().as_millisecond()
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "the real clock: the one place wall time is read"
    )]
    fn now_us(&self) -> i64 {
        jiff::Timestamp::now().as_microsecond()
    }
}

/// A clock that only moves when told to. For tests and replays.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock frozen at `now_ms`.
    pub fn new(now_ms: UnixMillis) -> Self {
        Self {
            now: AtomicI64::new(now_ms),
        }
    }

    /// Moves the clock forward (or backward, with a negative delta) by `delta_ms`.
    pub fn advance_ms(&self, delta_ms: i64) {
        self.now.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// Sets the clock to `now_ms`.
    pub fn set_ms(&self, now_ms: UnixMillis) {
        self.now.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.now.load(Ordering::SeqCst)
    }
}

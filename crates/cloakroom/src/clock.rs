//! Time, as the token lifecycle reads it: one [`Clock`] that every expiry, skew and cool-off
//! decision goes through, so tests advance time instead of sleeping.
//!
//! Owns: "what time is it" for sessions, refresh and cool-offs. Never sleeps and never drives
//! timers: waiting on real I/O (an IdP call, a lock held by another instance) stays on Tokio's
//! timers, which is what those waits are about.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of the current time.
pub trait TimeSource: Send + Sync + fmt::Debug {
    /// Monotonic now (for cool-offs and other in-process intervals).
    fn now(&self) -> Instant;
    /// Wall-clock now, in milliseconds since the Unix epoch.
    fn unix_ms(&self) -> i64;
    /// Wall-clock now, in seconds since the Unix epoch (for token and session expiry).
    fn unix(&self) -> i64 {
        self.unix_ms().div_euclid(1000)
    }
}

/// The clock the lifecycle reads. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Clock(Arc<dyn TimeSource>);

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock.
    #[must_use]
    pub fn system() -> Self {
        Self(Arc::new(System))
    }

    /// A clock that runs with the system clock plus an offset the returned handle moves
    /// forward (tests: "two minutes later" without waiting two minutes).
    #[must_use]
    pub fn manual() -> (Self, ManualClock) {
        let m = ManualClock::default();
        (Self(Arc::new(m.clone())), m)
    }

    /// Monotonic now.
    #[must_use]
    pub fn now(&self) -> Instant {
        self.0.now()
    }

    /// Seconds since the Unix epoch.
    #[must_use]
    pub fn unix(&self) -> i64 {
        self.0.unix()
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub fn unix_ms(&self) -> i64 {
        self.0.unix_ms()
    }
}

#[derive(Debug)]
struct System;

impl TimeSource for System {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix_ms(&self) -> i64 {
        system_unix_ms()
    }
}

fn system_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The handle of a [`Clock::manual`] clock: the system clock plus `advance`d time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    offset_ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// Moves this clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// How far ahead of the system clock this clock is.
    #[must_use]
    pub fn offset(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.offset_ms.load(Ordering::SeqCst)).unwrap_or(0))
    }
}

impl TimeSource for ManualClock {
    fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }
    fn unix_ms(&self) -> i64 {
        system_unix_ms().saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_times_forward() {
        let (clock, handle) = Clock::manual();
        let (i0, u0) = (clock.now(), clock.unix());
        handle.advance(Duration::from_secs(120));
        assert!(clock.now() >= i0 + Duration::from_secs(120));
        assert!(clock.unix() >= u0 + 120);
        assert!(Clock::system().unix() < clock.unix());
    }
}

//! Per-client-IP rate limits for the endpoints an anonymous browser can call to make work for
//! us: `/auth/login` and `/auth/callback` (SPEC §1). A `governor` keyed limiter (GCRA), one
//! budget per client IP shared by both endpoints.
//!
//! Owns: whether this request may go on. Never writes to the store; its own memory is bounded
//! by a periodic `retain_recent` (keys whose budget is full again are dropped).

use crate::config::ServerConfig;
use crate::error::Error;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The login rate limit (off when `server.login_rate_limit = 0`).
#[derive(Debug, Clone, Default)]
pub struct LoginLimiter(Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>);

impl LoginLimiter {
    /// From `server.login_rate_limit` (per minute) and `server.login_rate_burst`. Spawns the
    /// upkeep task, so it must run inside the Tokio runtime.
    #[must_use]
    pub fn from_config(c: &ServerConfig) -> Self {
        let (Some(per_minute), Some(burst)) = (
            NonZeroU32::new(c.login_rate_limit),
            NonZeroU32::new(c.login_rate_burst.max(1)),
        ) else {
            return Self(None);
        };
        let limiter = Arc::new(RateLimiter::keyed(
            Quota::per_minute(per_minute).allow_burst(burst),
        ));
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                let Some(l) = weak.upgrade() else { return };
                l.retain_recent();
                l.shrink_to_fit();
            }
        });
        Self(Some(limiter))
    }

    /// One request from the client at `ip` (see `context::ClientIp`).
    ///
    /// # Errors
    /// [`Error::RateLimited`] with the time until the next request would be allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Error> {
        let Some(l) = &self.0 else {
            return Ok(());
        };
        l.check_key(&ip).map_err(|not_until| {
            crate::metrics::rate_limited();
            Error::RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
        })
    }

    /// Client IPs tracked now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.0.as_ref().map_or(0, |l| l.len())
    }
}

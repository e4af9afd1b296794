//! Per-client-IP rate limits for the endpoints an anonymous browser can call to make work for
//! us: `/auth/login` and `/auth/callback` (SPEC §1). A `governor` keyed limiter (GCRA), one
//! budget per client IP shared by both endpoints.
//!
//! The budget is per IPv4 address and per IPv6 /64 ([`budget_key`]). A reload keeps the
//! limiter, and with it every budget spent, unless the limit's settings changed.
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

/// The login rate limit (off when `server.login_rate_limit = 0`). Clones share one budget.
#[derive(Debug, Clone, Default)]
pub struct LoginLimiter {
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// `(login_rate_limit, login_rate_burst)` it was built with.
    settings: (u32, u32),
}

/// The budget a client IP spends: an IPv4 address (an IPv4-mapped IPv6 one counted as that
/// IPv4 address), or an IPv6 address's /64 — the smallest block an ISP or cloud hands one
/// customer, so rotating through its addresses buys no new budget.
#[must_use]
pub fn budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

impl LoginLimiter {
    /// From `server.login_rate_limit` (per minute) and `server.login_rate_burst`. Spawns the
    /// upkeep task, so it must run inside the Tokio runtime.
    #[must_use]
    pub fn from_config(c: &ServerConfig) -> Self {
        let settings = (c.login_rate_limit, c.login_rate_burst);
        let (Some(per_minute), Some(burst)) = (
            NonZeroU32::new(c.login_rate_limit),
            NonZeroU32::new(c.login_rate_burst.max(1)),
        ) else {
            return Self {
                limiter: None,
                settings,
            };
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
        Self {
            limiter: Some(limiter),
            settings,
        }
    }

    /// For a reload to `c`: this limiter itself (its budgets spent so far and all) when the
    /// settings are the same, so a reload gives nobody a fresh budget; a new one otherwise.
    #[must_use]
    pub fn reload(&self, c: &ServerConfig) -> Self {
        if self.settings == (c.login_rate_limit, c.login_rate_burst) {
            self.clone()
        } else {
            Self::from_config(c)
        }
    }

    /// One request from the client at `ip` (see `context::ClientIp`).
    ///
    /// # Errors
    /// [`Error::RateLimited`] with the time until the next request would be allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Error> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        l.check_key(&budget_key(ip)).map_err(|not_until| {
            crate::metrics::rate_limited();
            Error::RateLimited {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
        })
    }

    /// Client IPs tracked now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::budget_key;
    use std::net::IpAddr;

    #[test]
    fn ipv6_addresses_share_their_64_and_ipv4_stays_exact() {
        let k = |s: &str| budget_key(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(
            k("2001:db8:1:2:aaaa::1"),
            k("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(
            k("2001:db8:1:2::7"),
            "2001:db8:1:2::".parse::<IpAddr>().expect("ip")
        );
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("192.0.2.7"), "192.0.2.7".parse::<IpAddr>().expect("ip"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
        assert_eq!(
            k("::ffff:192.0.2.7"),
            k("192.0.2.7"),
            "IPv4-mapped is the IPv4 address"
        );
    }
}

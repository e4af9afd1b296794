//! The reaper (`session.reconstitute`): sessions that time out are *ended*, not just dropped
//! by the store — their tokens revoked at the IdP — and one that timed out **idle** leaves a
//! small sealed [`Leftover`] (its user, creation time and the SPA's state) for
//! `session.reconstitute.window`, which a re-login of the same user in the same browser takes
//! over (`auth/callback.rs`).
//!
//! How: with the reaper on, every record is on the store's expiry schedule (a sorted set by
//! expiry, `Sessions::with_linger`) and stays [`LINGER`] past its expiry, unreadable to the
//! request path. Each instance looks at the due part of the schedule every [`REAP_EVERY`]; a
//! session still live (slid since it was scheduled) is rescheduled, an expired one is taken
//! (read and deleted in one step: one instance wins) and handled. A browser that signs in
//! before the reaper got there has its previous session reaped on the spot.
//!
//! Owns: the order "read the state, take the record, revoke, leave the leftover".

use crate::end::Ender;
use crate::session::{short, Leftover, Sessions, StoreError};
use std::time::Duration;

/// How often each instance looks at the schedule.
pub const REAP_EVERY: Duration = Duration::from_secs(1);
/// How long a record stays past its expiry for the reaper to find it.
pub const LINGER: Duration = Duration::from_secs(600);
/// At most this many sessions per look.
const BATCH: usize = 100;

/// Ends expired sessions and leaves what re-constitution needs.
#[derive(Debug, Clone)]
pub struct Reaper {
    sessions: Sessions,
    ender: Ender,
    /// `session.reconstitute.window`: how long an idle timeout's leftover is kept; `None`
    /// (`session.end_timed_out` alone) keeps none.
    window: Option<Duration>,
}

impl Reaper {
    /// Over these sessions (made `with_linger`), keeping leftovers for `window` (none without).
    #[must_use]
    pub fn new(sessions: Sessions, ender: Ender, window: Option<Duration>) -> Self {
        Self {
            sessions,
            ender,
            window,
        }
    }

    /// One look at the schedule. Returns how many sessions it ended.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let now = self.sessions.clock().unix();
        let mut n = 0;
        for handle in self.sessions.store().due(now, BATCH).await? {
            if self.reap(&handle).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Ends session `handle` if it has expired (idle or absolute); true if this call ended it.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    pub async fn reap(&self, handle: &str) -> Result<bool, StoreError> {
        let now = self.sessions.clock().unix();
        let idle = self.sessions.idle_timeout();
        let s = match self.sessions.peek(handle).await? {
            None => {
                self.sessions.store().unschedule(handle).await?;
                return Ok(false);
            }
            Some(None) => {
                // Another instance's key (a rotation): the record lapses by its TTL.
                tracing::warn!(session = %short(handle), "an expired session does not open here; its tokens were not revoked");
                self.sessions.store().unschedule(handle).await?;
                return Ok(false);
            }
            Some(Some(s)) => s,
        };
        if s.expires_at(idle) > now {
            // Slid since it was scheduled.
            self.sessions
                .store()
                .schedule(handle, s.expires_at(idle))
                .await?;
            return Ok(false);
        }
        // The state first: taking the record deletes it.
        let state = self.sessions.load_state(handle).await?;
        let Some(Some(taken)) = self.sessions.take(handle, Some(&s)).await? else {
            return Ok(false);
        };
        let by_idle = taken.idle_expires_at(idle) < taken.absolute_expires_at;
        tracing::info!(
            target: "audit", event = "session_ended",
            reason = if by_idle { "idle_timeout" } else { "absolute_timeout" },
            session = %short(handle),
            sub = %taken.sub,
            sid = taken.sid.as_deref(),
            ip = taken.ip.as_deref(),
            user_agent = taken.user_agent.as_deref(),
            "session timed out; its tokens are revoked"
        );
        if let (true, Some(window)) = (by_idle, self.window) {
            let left = Leftover {
                sub: taken.sub.clone(),
                created_at: taken.created_at,
                state: state.and_then(|b| String::from_utf8(b).ok()),
                provider: taken.provider.clone(),
                issuer: taken.issuer.clone(),
                client_id: taken.client_id.clone(),
            };
            self.sessions.save_leftover(handle, &left, window).await?;
        }
        self.ender.revoke_session_later(taken);
        Ok(true)
    }

    /// Runs [`Reaper::run_once`] every [`REAP_EVERY`] while the app lives.
    pub(crate) fn spawn<T: Send + Sync + 'static>(self, alive: std::sync::Weak<T>) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if alive.upgrade().is_none() {
                    return;
                }
                if let Err(e) = self.run_once().await {
                    tracing::debug!(error = %e, "reaping expired sessions failed; the next look retries");
                }
            }
        });
    }
}

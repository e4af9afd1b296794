//! `[session]`: session lifetimes and the refresh rule's knobs.

use super::Problems;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSession {
    #[serde(with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    absolute_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    refresh_skew: Option<Duration>,
    #[serde(with = "humantime_serde")]
    refresh_cooloff: Option<Duration>,
    #[serde(with = "humantime_serde")]
    refresh_wait: Option<Duration>,
    remember: RawRemember,
    reconstitute: RawReconstitute,
    without_refresh_token: Option<String>,
    end_timed_out: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRemember {
    enabled: Option<bool>,
    #[serde(with = "humantime_serde")]
    absolute_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    idle_timeout: Option<Duration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawReconstitute {
    enabled: Option<bool>,
    #[serde(with = "humantime_serde")]
    window: Option<Duration>,
}

/// `[session.remember]`: "remember me" sessions (`/auth/login?remember=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RememberConfig {
    /// Whether a login may ask for it.
    pub enabled: bool,
    /// A remembered session's absolute lifetime (bounded by the refresh token's, when the IdP
    /// says it).
    pub absolute_timeout: Duration,
    /// A remembered session's idle timeout.
    pub idle_timeout: Duration,
}

/// `[session.reconstitute]`: what is kept of a session that timed out idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconstituteConfig {
    /// Whether a small record (user, creation time, the SPA's state) outlives an idle timeout.
    pub enabled: bool,
    /// How long it is kept.
    pub window: Duration,
}

/// `[session]`, validated.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Sliding idle timeout.
    pub idle_timeout: Duration,
    /// Absolute session lifetime.
    pub absolute_timeout: Duration,
    /// Refresh when the access token has less than this left (or half its lifetime, if less).
    pub refresh_skew: Duration,
    /// How long a transient refresh failure is remembered per session.
    pub refresh_cooloff: Duration,
    /// How long a request with an expired token waits for its session's refresh.
    pub refresh_wait: Duration,
    /// "Remember me".
    pub remember: RememberConfig,
    /// Re-constituted sessions.
    pub reconstitute: ReconstituteConfig,
    /// `session.end_timed_out` (or `reconstitute.enabled`, which needs it): sessions that time
    /// out are ended by the reaper within about a second — tokens revoked, one audit event
    /// each — instead of lapsing silently in the store.
    pub end_timed_out: bool,
    /// What a session without a refresh token does when its access token is due.
    pub without_refresh_token: WithoutRefreshToken,
}

/// `session.without_refresh_token`: a session the IdP gave no refresh token (no
/// `offline_access`) lasts until its access token expires; then it ends, and the API call's
/// 401 either just says so or also names a silent re-authentication to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutRefreshToken {
    /// `"end"`: 401 `unauthenticated`.
    End,
    /// `"silent_login"`: 401 `unauthenticated` with `login_url` = `/auth/login?prompt=none`,
    /// for the SPA to navigate to (the IdP's own session usually outlives the token).
    SilentLogin,
}

impl SessionConfig {
    /// `default_refresh_wait` covers one IdP call and two store operations (it depends on
    /// `oidc.timeout` and `store.timeout`); `warnings` collects valid-but-surprising settings.
    pub(super) fn build(
        raw: RawSession,
        default_refresh_wait: Duration,
        errs: &mut Problems,
        warnings: &mut Vec<String>,
    ) -> Self {
        let idle_timeout = raw.idle_timeout.unwrap_or(Duration::from_secs(30 * 60));
        let absolute_timeout = raw
            .absolute_timeout
            .unwrap_or(Duration::from_secs(12 * 3600));
        let refresh_skew = raw.refresh_skew.unwrap_or(Duration::from_secs(60));
        if idle_timeout < Duration::from_secs(1) {
            errs.push("session.idle_timeout: must be at least 1s".into());
        }
        if absolute_timeout < Duration::from_secs(1) {
            errs.push("session.absolute_timeout: must be at least 1s".into());
        }
        if refresh_skew >= absolute_timeout {
            errs.push("session.refresh_skew: must be shorter than session.absolute_timeout".into());
        }
        if refresh_skew > Duration::from_secs(300) {
            warnings.push(format!(
                "session.refresh_skew: {refresh_skew:?} is longer than typical access-token lifetimes (5 to 60 minutes); \
                 tokens are refreshed when less than min(refresh_skew, half their lifetime) is left, \
                 so short-lived tokens are still refreshed at half-life, but a skew this long refreshes \
                 long-lived ones early"
            ));
        }
        let refresh_cooloff = raw.refresh_cooloff.unwrap_or(Duration::from_secs(5));
        if refresh_cooloff > Duration::from_secs(300) {
            errs.push("session.refresh_cooloff: must be at most 5m".into());
        }
        let refresh_wait = raw.refresh_wait.unwrap_or(default_refresh_wait);
        if refresh_wait > Duration::from_secs(120) {
            errs.push("session.refresh_wait: must be at most 2m".into());
        }
        let remember = RememberConfig {
            enabled: raw.remember.enabled.unwrap_or(false),
            absolute_timeout: raw
                .remember
                .absolute_timeout
                .unwrap_or(Duration::from_secs(30 * 24 * 3600)),
            idle_timeout: raw
                .remember
                .idle_timeout
                .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
        };
        if remember.enabled {
            if remember.idle_timeout < Duration::from_secs(1) {
                errs.push("session.remember.idle_timeout: must be at least 1s".into());
            }
            if remember.absolute_timeout <= refresh_skew {
                errs.push(
                    "session.remember.absolute_timeout: must be longer than session.refresh_skew"
                        .into(),
                );
            }
            if remember.absolute_timeout > Duration::from_secs(400 * 24 * 3600) {
                errs.push(
                    "session.remember.absolute_timeout: must be at most 400d (browsers cap a cookie's Max-Age there)".into(),
                );
            }
        }
        let reconstitute = ReconstituteConfig {
            enabled: raw.reconstitute.enabled.unwrap_or(false),
            window: raw
                .reconstitute
                .window
                .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
        };
        if reconstitute.enabled && reconstitute.window < Duration::from_secs(60) {
            errs.push("session.reconstitute.window: must be at least 1m".into());
        }
        let without_refresh_token = match raw.without_refresh_token.as_deref() {
            None | Some("end") => WithoutRefreshToken::End,
            Some("silent_login") => WithoutRefreshToken::SilentLogin,
            Some(o) => {
                errs.push(format!(
                    "session.without_refresh_token: `{o}` must be end or silent_login"
                ));
                WithoutRefreshToken::End
            }
        };
        Self {
            idle_timeout,
            absolute_timeout,
            refresh_skew,
            refresh_cooloff,
            refresh_wait,
            remember,
            end_timed_out: raw.end_timed_out.unwrap_or(false) || reconstitute.enabled,
            reconstitute,
            without_refresh_token,
        }
    }
}

//! Our two cookies: the session cookie and the login-binding cookie (SPEC §1).
//!
//! Owns: building `Set-Cookie` values with every attribute explicit, reading our cookies from a
//! request, sealing/opening their values with the key ring. Pure: no I/O.

use crate::config::{Config, CookieConfig};
use crate::crypto::KeyRing;
use crate::session::SessionId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cookie::{Cookie, SameSite};
use http::{header, HeaderMap, HeaderValue};
use std::sync::Arc;

/// Longest session-cookie value we try to open (SPEC: under 200 bytes).
pub const MAX_SESSION_COOKIE: usize = 200;
/// Longest login-cookie value we try to open.
pub const MAX_LOGIN_COOKIE: usize = 2048;
/// Logins in flight per browser (tabs); the oldest is dropped beyond this.
pub const MAX_PENDING_PER_BROWSER: usize = 8;
/// Bytes of SHA-256 in a login cookie's name tag (base64url: 11 characters).
const LOGIN_TAG_BYTES: usize = 8;

/// Every value of cookie `name` in the request (there may be several `Cookie` headers).
///
/// Works on raw bytes, pair by pair: another cookie with a non-ASCII value (which a parent
/// domain can set) must not hide ours.
pub fn request_cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (n, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            if n != name.as_bytes() {
                return None;
            }
            std::str::from_utf8(v).ok()
        })
}

/// What the request says about its session cookie.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionCookie {
    /// No session cookie.
    Absent,
    /// One value (possibly sent more than once); it may or may not open.
    One(String),
    /// More than one distinct value: ambiguous credentials, never authenticated (SPEC §1), and
    /// the response clears the cookie.
    Ambiguous,
}

/// The values of cookie `name` in the request: none, one (repeats of the same value count as
/// one), or ambiguous.
#[must_use]
pub fn single_cookie(headers: &HeaderMap, name: &str) -> SessionCookie {
    let mut it = request_cookies(headers, name);
    let Some(first) = it.next() else {
        return SessionCookie::Absent;
    };
    if it.any(|v| v != first) {
        return SessionCookie::Ambiguous;
    }
    SessionCookie::One(first.to_string())
}

/// Our cookies, built and read with the cookie settings and the key ring.
#[derive(Debug, Clone)]
pub struct Cookies {
    cfg: CookieConfig,
    keys: Arc<KeyRing>,
    /// `Max-Age` of a persistent session cookie: the absolute session lifetime.
    max_age: i64,
}

impl Cookies {
    /// From `[cookie]`, the key ring and `session.absolute_timeout`.
    #[must_use]
    pub fn new(
        cfg: &CookieConfig,
        keys: Arc<KeyRing>,
        absolute_timeout: std::time::Duration,
    ) -> Self {
        Self {
            cfg: cfg.clone(),
            keys,
            max_age: i64::try_from(absolute_timeout.as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// From the whole configuration (tests, tools).
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        Self::new(
            &config.cookie,
            config.keys.clone(),
            config.session.absolute_timeout,
        )
    }

    /// Whether the request carries more than one distinct value for the session cookie's name
    /// (every request asks: no allocation).
    #[must_use]
    pub fn ambiguous_session(&self, headers: &HeaderMap) -> bool {
        let mut it = request_cookies(headers, &self.cfg.name);
        it.next().is_some_and(|first| it.any(|v| v != first))
    }

    /// The session id in the request's session cookie, if exactly one value is sent and it opens
    /// under the key ring.
    #[must_use]
    pub fn session_id(&self, headers: &HeaderMap) -> Option<SessionId> {
        let SessionCookie::One(v) = single_cookie(headers, &self.cfg.name) else {
            return None;
        };
        let raw = self
            .keys
            .open_text(self.cfg.name.as_bytes(), &v, MAX_SESSION_COOKIE)?;
        if raw.len() != 32 {
            return None;
        }
        Some(SessionId::from_cookie_plaintext(
            URL_SAFE_NO_PAD.encode(raw),
        ))
    }

    fn base<'c>(&self, name: String, value: String, same_site: SameSite) -> Cookie<'c> {
        let mut c = Cookie::new(name, value);
        c.set_http_only(true);
        c.set_secure(self.cfg.secure);
        c.set_same_site(same_site);
        c.set_path("/");
        c
    }

    /// `Set-Cookie` for a new session.
    #[must_use]
    pub fn set_session(&self, id: &SessionId) -> HeaderValue {
        let raw = URL_SAFE_NO_PAD.decode(id.expose()).unwrap_or_default();
        let value = self.keys.seal_text(self.cfg.name.as_bytes(), &raw);
        let mut c = self.base(self.cfg.name.clone(), value, SameSite::Strict);
        if self.cfg.persistent {
            c.set_max_age(cookie::time::Duration::seconds(self.max_age));
        }
        to_header(&c)
    }

    /// `Set-Cookie` for a remembered session: always persistent, for `max_age` seconds (the
    /// session's absolute lifetime).
    #[must_use]
    pub fn set_persistent_session(&self, id: &SessionId, max_age: i64) -> HeaderValue {
        let raw = URL_SAFE_NO_PAD.decode(id.expose()).unwrap_or_default();
        let value = self.keys.seal_text(self.cfg.name.as_bytes(), &raw);
        let mut c = self.base(self.cfg.name.clone(), value, SameSite::Strict);
        c.set_max_age(cookie::time::Duration::seconds(max_age));
        to_header(&c)
    }

    /// `Set-Cookie` that removes the session cookie.
    #[must_use]
    pub fn expire_session(&self) -> HeaderValue {
        self.expire(&self.cfg.name, SameSite::Strict)
    }

    fn expire(&self, name: &str, same_site: SameSite) -> HeaderValue {
        let mut c = self.base(name.to_string(), String::new(), same_site);
        c.set_max_age(cookie::time::Duration::ZERO);
        c.set_expires(cookie::time::OffsetDateTime::UNIX_EPOCH);
        to_header(&c)
    }

    /// The name of the login cookie of the pending login with this `state`:
    /// `<cookie.login_name>-<tag>`, the tag a short hash of the state (SPEC §1).
    #[must_use]
    pub fn login_cookie_name(&self, state: &str) -> String {
        format!("{}-{}", self.cfg.login_name, login_tag(state))
    }

    /// `Set-Cookie` carrying a sealed pending login for `state` (SameSite=Lax: it must come back
    /// on the IdP's cross-site redirect to the callback), for [`crate::session::PENDING_TTL`].
    /// The value is `<created unix s>.<sealed>`: the plain time only orders a browser's pending
    /// logins for eviction ([`Cookies::pending_cookies`]); the sealed JSON carries it again.
    #[must_use]
    pub fn set_pending(&self, state: &str, created: i64, json: &[u8]) -> HeaderValue {
        let value = format!("{created}.{}", self.keys.seal_text(&login_aad(state), json));
        let mut c = self.base(self.login_cookie_name(state), value, SameSite::Lax);
        c.set_max_age(cookie::time::Duration::seconds(
            i64::try_from(crate::session::PENDING_TTL.as_secs()).unwrap_or(600),
        ));
        to_header(&c)
    }

    /// The pending login for `state` from its login cookie: `Err(())` when that cookie is sent
    /// with more than one distinct value, `Ok(None)` when it is absent or does not open.
    ///
    /// # Errors
    /// `Err(())` for an ambiguous login cookie.
    #[allow(clippy::result_unit_err)]
    pub fn pending(&self, headers: &HeaderMap, state: &str) -> Result<Option<Vec<u8>>, ()> {
        match single_cookie(headers, &self.login_cookie_name(state)) {
            SessionCookie::Absent => Ok(None),
            SessionCookie::Ambiguous => Err(()),
            SessionCookie::One(v) => Ok(v.split_once('.').and_then(|(_, sealed)| {
                self.keys
                    .open_text(&login_aad(state), sealed, MAX_LOGIN_COOKIE)
            })),
        }
    }

    /// `Set-Cookie` that removes the login cookie of `state`.
    #[must_use]
    pub fn expire_pending(&self, state: &str) -> HeaderValue {
        self.expire(&self.login_cookie_name(state), SameSite::Lax)
    }

    /// Every pending-login cookie in the request (`<cookie.login_name>-…`) with the creation
    /// time its value starts with (0 when unreadable), oldest first.
    #[must_use]
    pub fn pending_cookies(&self, headers: &HeaderMap) -> Vec<(String, i64)> {
        let prefix = format!("{}-", self.cfg.login_name);
        let mut found: Vec<(String, i64)> = headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .filter_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                let n = std::str::from_utf8(pair[..eq].trim_ascii()).ok()?;
                if !n.starts_with(&prefix) {
                    return None;
                }
                let created = std::str::from_utf8(pair[eq + 1..].trim_ascii())
                    .ok()
                    .and_then(|v| v.split_once('.'))
                    .and_then(|(t, _)| t.parse().ok())
                    .unwrap_or(0);
                Some((n.to_string(), created))
            })
            .collect();
        found.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        found.dedup_by(|a, b| a.0 == b.0);
        found
    }

    /// `Set-Cookie` that removes cookie `name` (a pending-login cookie being evicted).
    #[must_use]
    pub fn expire_login_named(&self, name: &str) -> HeaderValue {
        self.expire(name, SameSite::Lax)
    }
}

fn to_header(c: &Cookie<'_>) -> HeaderValue {
    // Names are validated at start-up and values are base64url: always a valid header value.
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn login_tag(state: &str) -> String {
    let h = <sha2::Sha256 as sha2::Digest>::digest(format!("cloakroom-login-tag:{state}"));
    URL_SAFE_NO_PAD.encode(&h[..LOGIN_TAG_BYTES])
}

/// The AAD of a sealed pending login: its purpose and its state, so a login cookie opens only
/// for the state it was made for.
fn login_aad(state: &str) -> Vec<u8> {
    let h = <sha2::Sha256 as sha2::Digest>::digest(state.as_bytes());
    let mut aad = b"cloakroom-pending-login\0".to_vec();
    aad.extend_from_slice(&h);
    aad
}

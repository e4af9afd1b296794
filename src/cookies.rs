//! Our two cookies: the session cookie and the login-binding cookie (SPEC §1).
//!
//! Owns: building `Set-Cookie` values with every attribute explicit, reading our cookies from a
//! request, sealing/opening their values with the key ring. Pure: no I/O.

use crate::config::Config;
use crate::crypto::KeyRing;
use crate::session::SessionId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cookie::{Cookie, SameSite};
use http::{header, HeaderMap, HeaderValue};

/// Longest session-cookie value we try to open (SPEC: under 200 bytes).
pub const MAX_SESSION_COOKIE: usize = 200;
/// Longest login-cookie value we try to open.
pub const MAX_LOGIN_COOKIE: usize = 400;
/// Logins in flight per browser (tabs); the oldest is dropped beyond this.
pub const MAX_PENDING_PER_BROWSER: usize = 8;
const TAG_LEN: usize = 16;

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

/// The session id in the request's session cookie, if one opens under the key ring.
#[must_use]
pub fn session_id(headers: &HeaderMap, config: &Config) -> Option<SessionId> {
    request_cookies(headers, &config.cookie_name).find_map(|v| {
        let raw = config
            .keys
            .open_text(config.cookie_name.as_bytes(), v, MAX_SESSION_COOKIE)?;
        if raw.len() != 32 {
            return None;
        }
        Some(SessionId::from_cookie_plaintext(
            URL_SAFE_NO_PAD.encode(raw),
        ))
    })
}

fn base<'c>(config: &Config, name: String, value: String, same_site: SameSite) -> Cookie<'c> {
    let mut c = Cookie::new(name, value);
    c.set_http_only(true);
    c.set_secure(config.cookie_secure);
    c.set_same_site(same_site);
    c.set_path("/");
    c
}

fn to_header(c: &Cookie<'_>) -> HeaderValue {
    // Names are validated at start-up and values are base64url: always a valid header value.
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` for a new session.
#[must_use]
pub fn set_session(config: &Config, id: &SessionId) -> HeaderValue {
    let raw = URL_SAFE_NO_PAD.decode(id.expose()).unwrap_or_default();
    let value = config.keys.seal_text(config.cookie_name.as_bytes(), &raw);
    let mut c = base(config, config.cookie_name.clone(), value, SameSite::Strict);
    if config.cookie_persistent {
        c.set_max_age(cookie::time::Duration::seconds(
            i64::try_from(config.absolute_timeout.as_secs()).unwrap_or(i64::MAX),
        ));
    }
    to_header(&c)
}

/// `Set-Cookie` that removes the session cookie.
#[must_use]
pub fn expire_session(config: &Config) -> HeaderValue {
    expire(config, &config.cookie_name, SameSite::Strict)
}

fn expire(config: &Config, name: &str, same_site: SameSite) -> HeaderValue {
    let mut c = base(config, name.to_string(), String::new(), same_site);
    c.set_max_age(cookie::time::Duration::ZERO);
    c.set_expires(cookie::time::OffsetDateTime::UNIX_EPOCH);
    to_header(&c)
}

/// The binding tags in the request's login cookie (empty if none opens).
#[must_use]
pub fn login_tags(headers: &HeaderMap, config: &Config) -> Vec<String> {
    let aad = config.login_cookie_name.as_bytes();
    request_cookies(headers, &config.login_cookie_name)
        .find_map(|v| config.keys.open_text(aad, v, MAX_LOGIN_COOKIE))
        .map(|raw| {
            raw.chunks_exact(TAG_LEN)
                .map(|c| URL_SAFE_NO_PAD.encode(c))
                .collect()
        })
        .unwrap_or_default()
}

/// A new random binding tag for one login.
#[must_use]
pub fn new_tag() -> String {
    let mut raw = [0u8; TAG_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// `Set-Cookie` for the login cookie holding `tags` (expired when `tags` is empty).
#[must_use]
pub fn set_login(config: &Config, keys: &KeyRing, tags: &[String]) -> HeaderValue {
    if tags.is_empty() {
        return expire(config, &config.login_cookie_name, SameSite::Lax);
    }
    let start = tags.len().saturating_sub(MAX_PENDING_PER_BROWSER);
    let raw: Vec<u8> = tags[start..]
        .iter()
        .filter_map(|t| URL_SAFE_NO_PAD.decode(t).ok())
        .flatten()
        .collect();
    let value = keys.seal_text(config.login_cookie_name.as_bytes(), &raw);
    let mut c = base(
        config,
        config.login_cookie_name.clone(),
        value,
        SameSite::Lax,
    );
    c.set_max_age(cookie::time::Duration::seconds(
        i64::try_from(crate::session::PENDING_TTL.as_secs()).unwrap_or(600),
    ));
    to_header(&c)
}

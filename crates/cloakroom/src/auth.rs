//! The browser-facing endpoints under `server.auth_prefix` (SPEC §1), one file each, and the
//! helpers they share: CSRF/Origin checks, `return_to` validation, loading the current session.
//!
//! Owns: what a browser sees of login state. Never puts a token in a response.

mod backchannel;
mod callback;
mod login;
mod logout;
mod user;

pub(crate) use backchannel::backchannel_logout;
pub(crate) use callback::callback;
pub(crate) use login::login;
pub(crate) use logout::logout;
pub(crate) use user::user;

use crate::app::AppState;
use crate::cookies;
use crate::error::Error;
use crate::session::Session;
use http::{header, HeaderMap};
use std::sync::Arc;

/// SPEC §2: the CSRF header must be present with value `1`, and a present `Origin` must be ours
/// or allowed. WebSocket upgrades cannot carry custom headers: for them an allowed `Origin` is
/// required instead.
///
/// # Errors
/// [`Error::Origin`] or [`Error::Csrf`].
pub(crate) fn check_csrf(
    state: &AppState,
    headers: &HeaderMap,
    websocket: bool,
) -> Result<(), Error> {
    let origin = headers.get(header::ORIGIN);
    if let Some(o) = origin {
        let ok = o.to_str().is_ok_and(|o| {
            o == state.config.server.public_origin
                || state.config.csrf.allowed_origins.iter().any(|a| a == o)
        });
        if !ok {
            return Err(Error::Origin);
        }
    }
    if websocket {
        return if origin.is_some() {
            Ok(())
        } else {
            Err(Error::Origin)
        };
    }
    match headers.get(&state.config.csrf.header) {
        Some(v) if v.as_bytes() == b"1" => Ok(()),
        _ => Err(Error::Csrf),
    }
}

/// Longest `return_to` accepted (SPEC §1 v2).
pub const MAX_RETURN_TO: usize = 512;

/// SPEC §1: `return_to` must be a same-origin relative path: starts with `/`, not `//` or `/\`,
/// no scheme, visible ASCII only (no control characters, no space, nothing a `Location` header
/// could not carry), no backslash, at most [`MAX_RETURN_TO`] bytes. Refused at `/auth/login`
/// (400), so nothing can fail at the callback after the session is stored.
#[must_use]
pub fn valid_return_to(r: &str) -> bool {
    if r.is_empty() || r.len() > MAX_RETURN_TO || !r.starts_with('/') || r.starts_with("//") {
        return false;
    }
    if !r.bytes().all(|b| b.is_ascii_graphic()) || r.contains('\\') {
        return false;
    }
    // Belt and braces: resolved against a dummy origin it must stay there.
    let Ok(base) = url::Url::parse("https://return-to.invalid/") else {
        return false;
    };
    base.join(r)
        .is_ok_and(|u| u.host_str() == Some("return-to.invalid") && u.scheme() == "https")
}

/// The browser's current session: `(handle, session)`, or `None` for no, bad or expired cookie.
/// With `slide`, activity moves the idle timeout (written at most once per slide interval).
///
/// # Errors
/// [`Error::StoreUnavailable`].
pub(crate) async fn current_session(
    state: &AppState,
    headers: &HeaderMap,
    slide: bool,
) -> Result<Option<(String, Session)>, Error> {
    Ok(current_session_shared(state, headers, slide)
        .await?
        .map(|(handle, s)| (handle, Arc::unwrap_or_clone(s))))
}

/// As [`current_session`], sharing the session with the session cache instead of copying it
/// (the API proxy path).
///
/// # Errors
/// [`Error::StoreUnavailable`].
pub(crate) async fn current_session_shared(
    state: &AppState,
    headers: &HeaderMap,
    slide: bool,
) -> Result<Option<(String, Arc<Session>)>, Error> {
    let Some(id) = cookies::session_id(headers, &state.config) else {
        return Ok(None);
    };
    let handle = id.handle();
    let Some(mut s) = state.sessions.load_shared(&handle).await? else {
        return Ok(None);
    };
    if slide {
        let now = state.clock.unix();
        if now - s.last_seen >= slide_interval(state) {
            Arc::make_mut(&mut s).last_seen = now;
            if !state.sessions.touch(&handle, &s).await? {
                return Ok(None);
            }
        }
    }
    Ok(Some((handle, s)))
}

/// Sliding writes at most once per this many seconds: a tenth of the idle timeout, between 1 s
/// and 60 s. The idle expiry is therefore exact to within that interval, and a busy session
/// costs one store write per interval instead of one per request.
pub(crate) fn slide_interval(state: &AppState) -> i64 {
    let idle = i64::try_from(state.config.session.idle_timeout.as_secs()).unwrap_or(i64::MAX);
    (idle / 10).clamp(1, 60)
}

/// Query parameters as pairs (decoded).
pub(crate) fn query_pairs(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The single value of query parameter `name`; a repeated parameter is an error.
pub(crate) fn query_param(pairs: &[(String, String)], name: &str) -> Result<Option<String>, Error> {
    let mut it = pairs.iter().filter(|(k, _)| k == name);
    let first = it.next().map(|(_, v)| v.clone());
    if it.next().is_some() {
        return Err(Error::InvalidRequest(format!("repeated parameter {name}")));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::{valid_return_to, MAX_RETURN_TO};

    #[test]
    fn return_to_accepts_same_origin_paths_only() {
        let longest = format!("/{}", "a".repeat(MAX_RETURN_TO - 1));
        for ok in [
            "/",
            "/app",
            "/app/page?x=1#frag",
            "/a/b%20c",
            "/caf%C3%A9",
            longest.as_str(),
        ] {
            assert!(valid_return_to(ok), "{ok}");
        }
        for bad in [
            "",
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "/ok\r\nSet-Cookie: x=1",
            "/\tx",
            "relative",
            "\\\\evil",
            "/a\\b",
            "/café",
            "/a b",
            "/\u{7f}",
            &format!("/{}", "a".repeat(MAX_RETURN_TO)),
        ] {
            assert!(!valid_return_to(bad), "{bad:?}");
        }
    }
}

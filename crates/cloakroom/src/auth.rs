//! The browser-facing endpoints under `server.auth_prefix` (SPEC §1), one file each, and the
//! `return_to` validation they share. CSRF/Origin checks are `cors::Origins`, the current
//! session is `loader::SessionLoader`.
//!
//! Owns: what a browser sees of login state. Never puts a token in a response.

mod backchannel;
mod callback;
mod login;
mod logout;
mod sessions;
mod user;

pub(crate) use backchannel::Backchannel;
pub(crate) use callback::Callback;
pub(crate) use login::Login;
pub(crate) use logout::Logout;
pub(crate) use sessions::Devices;
pub use sessions::{device, MAX_STATE};
pub(crate) use user::User;

/// The browser-facing endpoints, each holding what it uses.
#[derive(Debug)]
pub(crate) struct Endpoints {
    pub(crate) login: Login,
    pub(crate) callback: Callback,
    pub(crate) user: User,
    pub(crate) logout: Logout,
    pub(crate) devices: Devices,
    pub(crate) backchannel: Backchannel,
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

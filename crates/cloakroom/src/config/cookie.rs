//! `[cookie]`: the session and login cookies' names and attributes.

use super::Problems;
use serde::Deserialize;
use url::Url;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCookie {
    name: Option<String>,
    login_name: Option<String>,
    persistent: Option<bool>,
    secure: Option<bool>,
}

/// `[cookie]`, validated.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// Session cookie name.
    pub name: String,
    /// Login-binding cookie name (each pending login's cookie is `<login_name>-<tag>`).
    pub login_name: String,
    /// Persistent (Max-Age) rather than browser-session cookie.
    pub persistent: bool,
    /// `Secure` attribute (only a loopback http demo may turn it off).
    pub secure: bool,
}

impl CookieConfig {
    /// `public_url`: `Secure` may only be off for an `http://` public URL.
    pub(super) fn build(raw: RawCookie, public_url: &Url, errs: &mut Problems) -> Self {
        let name = raw.name.unwrap_or_else(|| "__Host-cloakroom".into());
        let login_name = raw
            .login_name
            .unwrap_or_else(|| "__Host-cloakroom-login".into());
        let secure = raw.secure.unwrap_or(true);
        for (key, name) in [("cookie.name", &name), ("cookie.login_name", &login_name)] {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid {
                errs.push(format!("{key}: `{name}` is not a valid cookie name"));
            }
            if name.starts_with("__Host-") && !secure {
                errs.push(format!(
                    "{key}: a `__Host-` cookie must be Secure; rename it or set cookie.secure = true"
                ));
            }
        }
        if name == login_name {
            errs.push("cookie.login_name: must differ from cookie.name".into());
        }
        if !secure && public_url.scheme() == "https" {
            errs.push("cookie.secure: may only be false when server.public_url is http".into());
        }
        Self {
            name,
            login_name,
            persistent: raw.persistent.unwrap_or(false),
            secure,
        }
    }
}

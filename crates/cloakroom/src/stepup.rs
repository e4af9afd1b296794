//! Step-up authentication (RFC 9470): reading an upstream's
//! `WWW-Authenticate: Bearer error="insufficient_user_authentication"` challenge.
//!
//! The route-side check (`acr_values`/`max_age` on a route) is in `routes.rs`, the step-up login
//! in `auth/login.rs` and `auth/callback.rs`.

use crate::error::StepUpChallenge;
use http::HeaderMap;

/// The step-up an upstream's `401` asks for, if its `WWW-Authenticate` (any field, scheme
/// `Bearer` or `DPoP`) says `error="insufficient_user_authentication"` (RFC 9470 §3), with its
/// `acr_values` and `max_age`.
#[must_use]
pub fn upstream_challenge(headers: &HeaderMap, auth_prefix: &str) -> Option<StepUpChallenge> {
    for v in headers.get_all(http::header::WWW_AUTHENTICATE) {
        let Ok(v) = v.to_str() else { continue };
        let params = auth_params(v);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if get("error").as_deref() != Some("insufficient_user_authentication") {
            continue;
        }
        let acr_values = get("acr_values")
            .map(|a| a.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|a| {
                !a.is_empty()
                    && a.len() <= 512
                    && a.chars().all(|c| c.is_ascii_graphic() || c == ' ')
            });
        let max_age = get("max_age").and_then(|m| m.trim().parse::<u64>().ok());
        return Some(StepUpChallenge::new(auth_prefix, acr_values, max_age));
    }
    None
}

/// The `name=value` auth-params of a challenge (RFC 9110 §11.2), values unquoted; the scheme
/// and anything unreadable are skipped.
fn auth_params(v: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // a name
        while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b'=' | b' ' | b',' | b'\t') {
            i += 1;
        }
        let name = &v[start..i];
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            // a scheme or a token68 without `=`: not a parameter
            continue;
        }
        i += 1;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(char::from(b[i]));
                i += 1;
            }
            i += 1;
        } else {
            let s = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            value.push_str(v[s..i].trim());
        }
        if !name.is_empty() {
            out.push((name.to_string(), value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(http::header::WWW_AUTHENTICATE, v.parse().unwrap());
        m
    }

    #[test]
    fn an_rfc_9470_challenge_is_read() {
        let c = upstream_challenge(
            &h(r#"Bearer error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="myACR otherACR""#),
            "/auth",
        )
        .unwrap();
        assert_eq!(c.acr_values.as_deref(), Some("myACR otherACR"));
        assert_eq!(c.max_age, None);
        let c = upstream_challenge(
            &h(r#"Bearer error="insufficient_user_authentication", error_description="More recent authentication is required", max_age="5""#),
            "/auth",
        )
        .unwrap();
        assert_eq!(c.max_age, Some(5));
        assert_eq!(c.login_url, "/auth/login?max_age=5");
        let c = upstream_challenge(
            &h("DPoP error=insufficient_user_authentication, max_age=60"),
            "/a",
        )
        .unwrap();
        assert_eq!(c.max_age, Some(60));
    }

    #[test]
    fn other_challenges_are_not_step_ups() {
        for v in [
            r#"Bearer error="invalid_token""#,
            "Bearer",
            r#"Basic realm="x""#,
            r#"Bearer error_description="insufficient_user_authentication""#,
        ] {
            assert!(upstream_challenge(&h(v), "/auth").is_none(), "{v}");
        }
        assert!(upstream_challenge(&HeaderMap::new(), "/auth").is_none());
    }
}

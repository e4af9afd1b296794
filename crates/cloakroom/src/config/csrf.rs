//! `[csrf]`: the CSRF header, the other origins allowed, and their CORS preflight answer.

use super::Problems;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use url::Url;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCsrf {
    header: Option<String>,
    allowed_origins: Vec<String>,
    allowed_methods: Option<Vec<String>>,
    allowed_headers: Option<Vec<String>>,
}

/// `[csrf]`, validated.
#[derive(Debug, Clone)]
pub struct CsrfConfig {
    /// The CSRF header name (value must be `1`).
    pub header: HeaderName,
    /// Origins accepted besides the public origin.
    pub allowed_origins: Vec<String>,
    /// CORS preflight answer for an allowed origin: `Access-Control-Allow-Methods`.
    pub cors_allow_methods: HeaderValue,
    /// CORS preflight answer for an allowed origin: `Access-Control-Allow-Headers` (always
    /// including the CSRF header).
    pub cors_allow_headers: HeaderValue,
}

/// An RFC 9110 token (a method name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl CsrfConfig {
    pub(super) fn build(raw: RawCsrf, errs: &mut Problems) -> Self {
        let header = if let Ok(h) =
            HeaderName::from_bytes(raw.header.as_deref().unwrap_or("x-csrf").as_bytes())
        {
            h
        } else {
            errs.push("csrf.header: not a valid header name".into());
            HeaderName::from_static("x-csrf")
        };
        let mut allowed_origins = Vec::new();
        for o in &raw.allowed_origins {
            match Url::parse(o) {
                Ok(u) if u.host().is_some() => {
                    allowed_origins.push(u.origin().ascii_serialization());
                }
                _ => errs.push(format!(
                    "csrf.allowed_origins: `{o}` is not an origin like https://app.example.com"
                )),
            }
        }
        let methods = raw.allowed_methods.unwrap_or_else(|| {
            ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec()
        });
        for m in &methods {
            if m == "*" {
                errs.push(
                    "csrf.allowed_methods: `*` is not allowed with credentials; list the methods"
                        .into(),
                );
            } else if !is_token(m) {
                errs.push(format!("csrf.allowed_methods: `{m}` is not a method name"));
            }
        }
        let mut headers = vec![header.as_str().to_string()];
        for h in raw
            .allowed_headers
            .unwrap_or_else(|| vec!["content-type".into()])
        {
            if h == "*" {
                errs.push(
                    "csrf.allowed_headers: `*` is not allowed with credentials; list the headers"
                        .into(),
                );
            } else if HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(format!("csrf.allowed_headers: `{h}` is not a header name"));
            } else if !headers.iter().any(|x| x.eq_ignore_ascii_case(&h)) {
                headers.push(h.to_ascii_lowercase());
            }
        }
        Self {
            header,
            allowed_origins,
            cors_allow_methods: HeaderValue::from_str(&methods.join(", "))
                .unwrap_or_else(|_| HeaderValue::from_static("GET")),
            cors_allow_headers: HeaderValue::from_str(&headers.join(", "))
                .unwrap_or_else(|_| HeaderValue::from_static("x-csrf")),
        }
    }
}

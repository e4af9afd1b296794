//! Sessions for the benchmark.
//!
//! - Seeded: written straight into Redis through the cloakroom library (`Sessions::save`, with
//!   the key ring the binary uses), with an access token that never needs a refresh. The cookie
//!   value comes from `cookies::set_session`, so the binary opens it exactly like a real one.
//!   A real login costs the IdP an RSA signature and several round trips; 100,000 of them would
//!   measure the IdP, not Cloakroom.
//! - Logged in: the real code flow through Cloakroom and the IdP (refresh storm, IdP outage),
//!   or through Apache + mod_auth_openidc and the same IdP (the incumbent reference), following
//!   the redirect chain of tests/idp/README.md with a tiny cookie jar.

use cloakroom::config::Config;
use cloakroom::secret::Secret;
use cloakroom::session::{now_unix, Session, SessionId, Sessions, Tokens, FORMAT_VERSION};
use futures_util::StreamExt;
use std::collections::BTreeMap;

/// The `name=value` pair of a `Set-Cookie` value.
fn pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap_or_default().trim()
}

fn fake_jwt(len: usize, i: usize) -> String {
    // Random-looking, header-safe, a realistic size for a signed JWT.
    let seed = cloakroom::crypto::random_token();
    let mut s = format!("eyJhbGciOiJSUzI1NiJ9.bench{i}.");
    while s.len() < len {
        s.push_str(&seed);
    }
    s.truncate(len);
    s
}

/// Writes `count` sessions (ids `first..first+count`) and returns their `Cookie` pairs.
pub(crate) async fn seed(
    config: &Config,
    first: usize,
    count: usize,
) -> Result<Vec<String>, String> {
    let cookies = cloakroom::cookies::Cookies::from_config(config);
    let store = cloakroom::app::connect_store(&config.store)
        .await
        .map_err(|e| format!("seeding: {e}"))?;
    let sessions = Sessions::new(
        store,
        config.keys.clone(),
        config.session.idle_timeout,
        config.session.absolute_timeout,
    );
    let now = now_unix();
    let absolute = i64::try_from(config.session.absolute_timeout.as_secs()).unwrap_or(i64::MAX);
    let results: Vec<Result<String, String>> = futures_util::stream::iter(first..first + count)
        .map(|i| {
            let sessions = sessions.clone();
            let cookies = cookies.clone();
            async move {
                let sub = format!("bench-user-{i}");
                let claims = serde_json::json!({
                    "sub": sub,
                    "name": format!("Bench User {i}"),
                    "email": format!("bench-user-{i}@example.test"),
                    "email_verified": true,
                    "sid": format!("sid-{i}"),
                    "aud": "cloakroom",
                    "iss": "http://127.0.0.1/bench",
                    "iat": now,
                    "exp": now + 3600,
                });
                let s = Session {
                    v: FORMAT_VERSION,
                    sub,
                    sid: None,
                    claims: claims.as_object().cloned().unwrap_or_default(),
                    tokens: Tokens {
                        access_token: Secret::new(cloakroom::crypto::random_token()),
                        // Never due for a refresh: scenario (c) measures the steady state.
                        access_expires_at: None,
                        access_lifetime: None,
                        refresh_token: None,
                        id_token: Secret::new(fake_jwt(700, i)),
                        dpop: None,
                        derived: Default::default(),
                        resources: None,
                        bearer_header: Default::default(),
                    },
                    created_at: now,
                    last_seen: now,
                    absolute_expires_at: now + absolute,
                    user_agent: Some("cloakroom-bench".into()),
                    ip: Some("127.0.0.1".into()),
                    remembered: false,
                    idle_timeout: None,
                    reconstituted: false,
                    provider: None,
                    issuer: None,
                    client_id: None,
                    generation: 0,
                };
                let id = SessionId::generate();
                let saved = sessions
                    .save(&id.handle(), &s)
                    .await
                    .map_err(|e| format!("seeding: {e}"))?;
                if !saved {
                    return Err("seeding: session expired at once".into());
                }
                let set = cookies.set_session(&id);
                Ok(pair(set.to_str().unwrap_or_default()).to_string())
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    results.into_iter().collect()
}

/// A cookie jar for one browser on 127.0.0.1 (cookies ignore ports, so the IdP's and the
/// relying party's share it, as in a real browser).
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn absorb(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(c) = v.to_str() else { continue };
            let Some((name, value)) = pair(c).split_once('=') else {
                continue;
            };
            let lower = c.to_ascii_lowercase();
            let gone = value.is_empty()
                || lower.contains("max-age=0")
                || lower.contains("expires=thu, 01 jan 1970");
            if gone {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_string(), value.to_string());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn location(resp: &reqwest::Response, issuer: &str) -> Result<String, String> {
    let loc = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("no Location in a {} answer", resp.status()))?;
    Ok(if loc.starts_with('/') {
        format!("{issuer}{loc}")
    } else {
        loc.to_string()
    })
}

async fn get(
    client: &reqwest::Client,
    jar: &mut Jar,
    url: &str,
) -> Result<reqwest::Response, String> {
    let r = client
        .get(url)
        .header(reqwest::header::COOKIE, jar.header())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    jar.absorb(&r);
    Ok(r)
}

/// One real login as alice through Cloakroom at `base`; returns the session `Cookie` pair.
pub(crate) async fn login(
    client: &reqwest::Client,
    base: &str,
    issuer: &str,
) -> Result<String, String> {
    login_at(
        client,
        &format!("{base}/auth/login?return_to=/app"),
        issuer,
        "__Host-cloakroom",
    )
    .await
}

/// One real login as alice, starting at `start` (a relying party's URL that redirects to the
/// IdP at `issuer`), following the redirect chain of tests/idp/README.md back to the relying
/// party's callback; returns the `Cookie` pair named `session_cookie` the callback set.
///
/// One jar holds the IdP's cookies and the relying party's, as a browser's would on 127.0.0.1
/// (cookies ignore ports); their names differ (`idp_*`, `__Host-cloakroom`,
/// `mod_auth_openidc_*`).
pub(crate) async fn login_at(
    client: &reqwest::Client,
    start: &str,
    issuer: &str,
    session_cookie: &str,
) -> Result<String, String> {
    let mut jar = Jar::default();
    let r = get(client, &mut jar, start).await?;
    let authorize = location(&r, issuer)?;
    if !at_issuer(&authorize, issuer) {
        return Err(format!(
            "{start} answered {} to {authorize}, not to the IdP",
            r.status()
        ));
    }
    let r = get(client, &mut jar, &authorize).await?;
    let mut loc = location(&r, issuer)?;
    if loc.contains("/interaction/") {
        let r = client
            .post(format!("{loc}/login"))
            .header(reqwest::header::COOKIE, jar.header())
            .form(&[("login", "alice"), ("password", "wonderland")])
            .send()
            .await
            .map_err(|e| format!("interaction login: {e}"))?;
        jar.absorb(&r);
        loc = location(&r, issuer)?;
    }
    for _ in 0..5 {
        if !at_issuer(&loc, issuer) {
            break;
        }
        let r = get(client, &mut jar, &loc).await?;
        loc = location(&r, issuer)?;
    }
    let r = get(client, &mut jar, &loc).await?;
    if !r.status().is_redirection() {
        return Err(format!("callback {loc} answered {}", r.status()));
    }
    jar.0
        .iter()
        .find(|(k, _)| k.as_str() == session_cookie)
        .map(|(k, v)| format!("{k}={v}"))
        .ok_or_else(|| format!("no {session_cookie} cookie after the callback"))
}

/// Whether `url` is the IdP's (`http://127.0.0.1:4000` is a prefix of `http://127.0.0.1:40001`).
fn at_issuer(url: &str, issuer: &str) -> bool {
    url.strip_prefix(issuer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// `n` real logins through Cloakroom at `base`, 16 at a time; their session `Cookie` pairs.
pub(crate) async fn login_many(
    client: &reqwest::Client,
    base: &str,
    issuer: &str,
    n: usize,
) -> Result<Vec<String>, String> {
    let logins: Vec<Result<String, String>> = futures_util::stream::iter(0..n)
        .map(|_| login(client, base, issuer))
        .buffer_unordered(16)
        .collect()
        .await;
    logins.into_iter().collect()
}

/// `n` real logins through another relying party (see [`login_at`]), 16 at a time.
pub(crate) async fn login_many_at(
    client: &reqwest::Client,
    start: &str,
    issuer: &str,
    session_cookie: &str,
    n: usize,
) -> Result<Vec<String>, String> {
    let logins: Vec<Result<String, String>> = futures_util::stream::iter(0..n)
        .map(|_| login_at(client, start, issuer, session_cookie))
        .buffer_unordered(16)
        .collect()
        .await;
    logins.into_iter().collect()
}

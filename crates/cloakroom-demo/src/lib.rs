//! `cloakroom-demo`: the whole story on one machine, with nothing installed but Rust.
//!
//! [`start`] runs, on loopback only:
//! - [`idp::DevIdp`], a development OpenID provider (code flow with PKCE, refresh-token
//!   rotation, revocation, end_session), clearly labelled as such, twice: the "Demo IdP"
//!   (`[oidc]`, provider `default`, DPoP-bound tokens) and the "Partner IdP"
//!   (`[[oidc.providers]] name = "partners"`, [`PARTNER_PROVIDER`]: bearer tokens, its own
//!   client registration, secret and session cookie);
//! - [`api::DemoApi`], an API that verifies the access token (from either IdP; the Demo IdP's
//!   must be DPoP-bound and come with their proof) and says what it learned from it;
//! - a static server for the demo SPA (`spa.html`, `deep.html`, and the client library
//!   `clients/js` at `/cloakroom.js`);
//! - Cloakroom itself, configured with `/api/` → the API (`token = "required"`),
//!   `/api/sensitive` → the API's "sensitive action", which needs a recent login (`max_age`,
//!   [`DemoOptions::sensitive_max_age`]: step-up authentication; the Demo IdP's sessions only),
//!   and `/` → the SPA (`token = "none"`), the memory store (or Redis with `--redis`), a fresh
//!   key ring and client secrets on every run.
//!
//! The two-provider story: the SPA has "Log in" (the Demo IdP) and "Sign in with the Partner
//! IdP" (`/auth/login?provider=partners`), and shows which one the session is from
//! (`/auth/user`'s `provider`). A partner session's refresh, revocation and end-session go to
//! the Partner IdP; its calls to the sensitive action get 403 `provider_not_allowed`.
//!
//! The step-up story: a call to `/api/sensitive` with a login older than `max_age` gets
//! Cloakroom's 401 `step_up_required` with a `login_url`; the SPA offers "Confirm it's you",
//! which goes there (with `max_age` for the IdP, which then asks for the password again), and
//! Cloakroom upgrades the same session in place: same cookie, newer `auth_time`.
//!
//! The demo runs over plain http on `http://localhost:<port>`, so its cookies are not `Secure`
//! and therefore cannot carry the `__Host-` prefix: they are `cloakroom-demo` and
//! `cloakroom-demo-login`. Config validation allows that only for an http `public_url`.
//!
//! This crate is not a dependency of the `cloakroom` binary: production builds
//! (`cargo build -p cloakroom`, the Dockerfile) contain none of it.

pub mod api;
pub mod dpop;
pub mod idp;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use cloakroom::body::{full, Body};
use cloakroom::config::{Config, ConfigErrors, Env};
use cloakroom::crypto::KeyRing;
use cloakroom::error::StartupError;
use cloakroom::server::{serve, Limits};
use cloakroom::{App, Listeners, RunningApp};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::Digest;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The OAuth client id Cloakroom uses at the development IdP.
pub const CLIENT_ID: &str = "cloakroom-demo";
/// What the demo calls its primary development IdP (`[oidc]`, provider `default`).
pub const DEMO_IDP_NAME: &str = "Demo IdP";
/// The provider name of the second development IdP (`[[oidc.providers]]`): what
/// `/auth/login?provider=` and `/auth/user`'s `provider` say.
pub const PARTNER_PROVIDER: &str = "partners";
/// What the demo calls its second development IdP.
pub const PARTNER_IDP_NAME: &str = "Partner IdP";
/// The OAuth client id Cloakroom uses at the Partner IdP.
pub const PARTNER_CLIENT_ID: &str = "cloakroom-demo-partners";
/// The Partner IdP's session cookie: cookies ignore ports, so not the Demo IdP's
/// ([`idp::SESSION_COOKIE`]), or signing in at one would sign the browser out of the other.
pub const PARTNER_SESSION_COOKIE: &str = "partneridp_session";
/// The demo's session cookie (no `__Host-` prefix: the demo runs over plain http).
pub const COOKIE_NAME: &str = "cloakroom-demo";
/// The demo's login-binding cookie.
pub const LOGIN_COOKIE_NAME: &str = "cloakroom-demo-login";
/// The session idle timeout: short enough that the SPA's countdown is worth watching.
pub const IDLE_TIMEOUT: &str = "5m";
/// Refresh this long before the access token expires: with the IdP's 60 s access tokens,
/// refreshes happen during the demo.
pub const REFRESH_SKEW: &str = "20s";
/// The route prefix of the demo API's sensitive action (step-up: `max_age`).
pub const SENSITIVE_PREFIX: &str = "/api/sensitive";
/// The default [`DemoOptions::sensitive_max_age`].
pub const SENSITIVE_MAX_AGE: Duration = Duration::from_secs(5 * 60);

const SPA_HTML: &str = include_str!("spa.html");
/// A page that needs a session: the client library sends it to the login and back (`/deep`).
const DEEP_HTML: &str = include_str!("deep.html");
/// The SPA client library (`clients/js`, `@cloakroom/client`), as built and checked in: the
/// Rust build never needs npm. Served at [`CLIENT_JS_PATH`].
pub const CLIENT_JS: &str = include_str!("../../../clients/js/dist/index.js");
/// Where the demo serves [`CLIENT_JS`] (the pages import it from there).
pub const CLIENT_JS_PATH: &str = "/cloakroom.js";

/// What `cloakroom-demo` accepts.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Cloakroom's public port on 127.0.0.1 (the URL to open is `http://localhost:<port>/`);
    /// 0 picks a free one (tests).
    pub port: u16,
    /// Keep sessions in this Redis (`redis://…`) instead of memory.
    pub redis: Option<String>,
    /// Lifetime of the access tokens the development IdP issues.
    pub access_token_ttl: Duration,
    /// How Cloakroom authenticates to the development IdP.
    pub client_auth: DemoClientAuth,
    /// The `max_age` of the `/api/sensitive` route: a login older than this (whole seconds,
    /// at least 1) must be confirmed again before the sensitive action is forwarded.
    pub sensitive_max_age: Duration,
    /// Cloakroom's clock (sessions, token expiry); `None` is the system clock. Tests pass a
    /// [`cloakroom::clock::Clock::manual`] one and move it forward ("a minute later, the token
    /// is due for a refresh") instead of sleeping; the IdPs and the API keep real time.
    pub clock: Option<cloakroom::clock::Clock>,
}

/// The demo's client authentication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DemoClientAuth {
    /// A client secret (`client_secret_basic`), made at start-up.
    #[default]
    Secret,
    /// `private_key_jwt` with an EC P-256 key made at start-up and registered at the IdP.
    PrivateKeyJwt,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            port: 8080,
            redis: None,
            access_token_ttl: Duration::from_secs(60),
            client_auth: DemoClientAuth::Secret,
            sensitive_max_age: SENSITIVE_MAX_AGE,
            clock: None,
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A development server was asked to listen on a non-loopback address.
    #[error(
        "refusing to listen on {0}: the demo's development servers bind loopback addresses only"
    )]
    NotLoopback(SocketAddr),
    /// A listener could not bind.
    #[error("cannot bind {addr}: {source} (is the port in use? pick another with --port)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The development IdP's signing key could not be made.
    #[error("development IdP signing key: {0}")]
    Key(String),
    /// The generated configuration was refused (a bug, or a bad `--redis` URL).
    #[error("demo configuration: {0}")]
    Config(#[from] ConfigErrors),
    /// Cloakroom did not start.
    #[error(transparent)]
    Startup(#[from] StartupError),
}

/// A running demo. Dropping it stops the development servers; [`DemoHandle::shutdown`] stops
/// everything gracefully.
#[derive(Debug)]
pub struct DemoHandle {
    /// The URL to open: the SPA, through Cloakroom (`http://localhost:<port>/`).
    pub url: String,
    /// Cloakroom.
    pub app: RunningApp,
    /// The development IdP (the "Demo IdP", `[oidc]`).
    pub idp: idp::DevIdp,
    /// The development IdP's address (its issuer is `http://<idp_addr>`).
    pub idp_addr: SocketAddr,
    /// The second development IdP (the "Partner IdP", provider [`PARTNER_PROVIDER`]).
    pub partner_idp: idp::DevIdp,
    /// The demo API's address (reached through Cloakroom at `/api/`).
    pub api_addr: SocketAddr,
    /// The SPA's static server (reached through Cloakroom at `/`).
    pub spa_addr: SocketAddr,
    api: api::DemoApi,
    spa: LocalServer,
}

impl DemoHandle {
    /// What to print for the newcomer.
    #[must_use]
    pub fn banner(&self) -> String {
        format!(
            "\n  Cloakroom demo is running. Open {url}\n  Log in as `{user}` with password `{password}` \
             at either identity provider (development IdPs; not for production):\n    \
             {demo} at {issuer} (\"Log in\", provider `default`, DPoP-bound tokens)\n    \
             {partner} at {partner_issuer} (\"Sign in with the Partner IdP\", provider \
             `{provider}`, bearer tokens)\n  Press Ctrl-C to stop.\n",
            url = self.url,
            user = idp::DEMO_USER,
            password = idp::DEMO_PASSWORD,
            demo = DEMO_IDP_NAME,
            issuer = self.idp.issuer(),
            partner = PARTNER_IDP_NAME,
            partner_issuer = self.partner_idp.issuer(),
            provider = PARTNER_PROVIDER,
        )
    }

    /// Stops Cloakroom (draining in-flight requests), then the API, the SPA server and the IdPs.
    pub async fn shutdown(self) {
        self.app.shutdown().await;
        self.api.shutdown().await;
        self.spa.shutdown().await;
        self.idp.shutdown().await;
        self.partner_idp.shutdown().await;
    }
}

/// Pretty logs at `info` (or `RUST_LOG`), for the `cloakroom-demo` binary.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Starts the development IdPs, the demo API, the SPA server and Cloakroom, all on loopback.
///
/// # Errors
/// [`DemoError`] when a port is taken, Redis cannot be reached, or a part fails to start.
pub async fn start(opts: DemoOptions) -> Result<DemoHandle, DemoError> {
    let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let public_addr = loopback(opts.port);
    let public = std::net::TcpListener::bind(public_addr).map_err(|source| DemoError::Bind {
        addr: public_addr,
        source,
    })?;
    let port = public
        .local_addr()
        .map_err(|source| DemoError::Bind {
            addr: public_addr,
            source,
        })?
        .port();
    // localhost, not 127.0.0.1: browsers treat it as a secure context.
    let public_url = format!("http://localhost:{port}");

    let client_secret = cloakroom::crypto::random_token();
    let client_key = match opts.client_auth {
        DemoClientAuth::Secret => None,
        DemoClientAuth::PrivateKeyJwt => Some(
            cloakroom::oidc::ClientKey::generate_pem(cloakroom::oidc::KeyKind::P256)
                .map_err(DemoError::Key)?,
        ),
    };
    let jwks = match &client_key {
        None => None,
        Some(pem) => {
            let keys = cloakroom::oidc::ClientKey::parse_all(pem).map_err(DemoError::Key)?;
            Some(serde_json::json!({ "keys": [keys[0].public_jwk(None)] }))
        }
    };
    // Each IdP has the callback of its own provider registered, and only that one: `[oidc]`'s
    // is the shared `/auth/callback`, the partners' `/auth/callback/partners` (mix-up defence).
    let registration =
        |client_id: &str, client_secret: &str, jwks, callback: &str| idp::ClientRegistration {
            client_id: client_id.into(),
            client_secret: cloakroom::secret::Secret::new(client_secret),
            redirect_uri: format!("{public_url}/auth/callback{callback}"),
            post_logout_redirect_uri: format!("{public_url}/"),
            jwks,
        };
    let idp = idp::DevIdp::start(
        loopback(0),
        idp::IdpOptions {
            name: DEMO_IDP_NAME.into(),
            ..idp::IdpOptions::new(
                registration(CLIENT_ID, &client_secret, jwks, ""),
                opts.access_token_ttl,
            )
        },
    )
    .await?;
    // The second provider: its own issuer (port), key, client, secret and session cookie.
    let partner_secret = cloakroom::crypto::random_token();
    let partner_idp = idp::DevIdp::start(
        loopback(0),
        idp::IdpOptions {
            name: PARTNER_IDP_NAME.into(),
            session_cookie: PARTNER_SESSION_COOKIE.into(),
            ..idp::IdpOptions::new(
                registration(
                    PARTNER_CLIENT_ID,
                    &partner_secret,
                    None,
                    &format!("/{PARTNER_PROVIDER}"),
                ),
                opts.access_token_ttl,
            )
        },
    )
    .await?;
    let api = api::DemoApi::start(
        loopback(0),
        vec![
            api::TrustedIdp {
                name: DEMO_IDP_NAME.into(),
                verifier: idp.access_token_verifier(),
                dpop_required: true,
            },
            // Extra providers do not do DPoP (Cloakroom binds tokens for [oidc] only).
            api::TrustedIdp {
                name: PARTNER_IDP_NAME.into(),
                verifier: partner_idp.access_token_verifier(),
                dpop_required: false,
            },
        ],
    )
    .await?;
    let spa = start_spa(loopback(0), format!("localhost:{port}"), public_url.clone())?;

    let toml = demo_toml(
        port,
        idp.issuer(),
        partner_idp.issuer(),
        api.addr(),
        spa.addr,
        opts.redis.as_deref(),
        opts.sensitive_max_age,
    );
    let mut env = Env::new();
    env.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), client_secret);
    // CLOAKROOM_OIDC_PARTNERS_CLIENT_SECRET
    env.insert(
        format!(
            "{}CLIENT_SECRET",
            cloakroom::config::provider_env_prefix(PARTNER_PROVIDER)
        ),
        partner_secret,
    );
    if let Some(key) = client_key {
        env.insert(
            "CLOAKROOM_OIDC_CLIENT_AUTH_METHOD".into(),
            "private_key_jwt".into(),
        );
        env.insert("CLOAKROOM_OIDC_CLIENT_KEY".into(), key);
    }
    env.insert("CLOAKROOM_COOKIE_KEYS".into(), KeyRing::generate_entry(1));
    let config = Config::from_toml(&toml, &env)?;
    let app = App::start_with(
        config,
        Listeners {
            public: Some(public),
            clock: opts.clock,
            ..Listeners::default()
        },
    )
    .await?;
    Ok(DemoHandle {
        url: format!("{public_url}/"),
        idp_addr: idp.addr(),
        partner_idp,
        api_addr: api.addr(),
        spa_addr: spa.addr,
        app,
        idp,
        api,
        spa,
    })
}

/// The demo's Cloakroom configuration (secrets come separately, through the env map).
fn demo_toml(
    port: u16,
    issuer: &str,
    partner_issuer: &str,
    api: SocketAddr,
    spa: SocketAddr,
    redis: Option<&str>,
    sensitive_max_age: Duration,
) -> String {
    // Whole seconds (what `auth_time` counts in), at least one.
    let max_age = sensitive_max_age.as_secs().max(1);
    let store = match redis {
        None => "kind = \"memory\"".to_string(),
        // A TOML string value, quoted and escaped.
        Some(url) => format!(
            "kind = \"redis\"\nurl = {}\nkey_prefix = \"cloakroom-demo\"",
            toml::Value::String(url.to_string())
        ),
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://localhost:{port}"
shutdown_drain = "2s"
[admin]
listen = "127.0.0.1:0"
[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_auth_method = "client_secret_basic"
# DPoP-bound tokens (RFC 9449): the demo API checks the proof that comes with each call.
dpop = true
# A second identity provider, the Partner IdP: /auth/login?provider={PARTNER_PROVIDER}. Its secret
# comes from CLOAKROOM_OIDC_PARTNERS_CLIENT_SECRET. Extra providers do not do DPoP: its tokens
# are bearer tokens.
[[oidc.providers]]
name = "{PARTNER_PROVIDER}"
issuer = "{partner_issuer}"
client_id = "{PARTNER_CLIENT_ID}"
client_auth_method = "client_secret_post"
[session]
idle_timeout = "{IDLE_TIMEOUT}"
absolute_timeout = "1h"
refresh_skew = "{REFRESH_SKEW}"
# The SPA's "Remember me" checkbox: a persistent cookie and longer lifetimes.
[session.remember]
enabled = true
absolute_timeout = "1d"
idle_timeout = "1h"
# A session that timed out idle leaves its saved state (the SPA's notes) for the same user's
# next login in this browser.
[session.reconstitute]
enabled = true
window = "1h"
[cookie]
# Plain http on localhost: not Secure, hence no __Host- prefix.
name = "{COOKIE_NAME}"
login_name = "{LOGIN_COOKIE_NAME}"
secure = false
[store]
{store}
[log]
format = "pretty"
level = "info"
# Step-up: the sensitive action needs a login at most {max_age} s old (longest prefix wins),
# and is for the Demo IdP's users only: a Partner IdP session gets 403 provider_not_allowed.
[[routes]]
prefix = "{SENSITIVE_PREFIX}"
upstream = "http://{api}"
token = "required"
max_age = "{max_age}s"
providers = ["default"]
[[routes]]
prefix = "/api/"
upstream = "http://{api}"
token = "required"
[[routes]]
prefix = "/"
upstream = "http://{spa}"
token = "none"
"#
    )
}

// ------------------------------------------------------------------ the SPA's static server

/// Serves `spa.html` at `/`, `deep.html` at `/deep` and the client library at
/// [`CLIENT_JS_PATH`]. A request that did not come in as `expected_host` (e.g. someone opened
/// `http://127.0.0.1:8080/`) is sent to the public URL: the session cookie lives on
/// `localhost`, and the CSRF check wants that origin.
fn start_spa(
    addr: SocketAddr,
    expected_host: String,
    public_url: String,
) -> Result<LocalServer, DemoError> {
    let pages = Arc::new(SpaPages::new());
    let expected_host = Arc::new(expected_host);
    let public_url = Arc::new(public_url);
    LocalServer::start(addr, move |req, _peer| {
        let pages = pages.clone();
        let expected_host = expected_host.clone();
        let public_url = public_url.clone();
        async move { Ok(pages.answer(&req, &expected_host, &public_url)) }
    })
}

/// One HTML page of the SPA and its Content-Security-Policy: scripts from this origin (the
/// client library) and the page's own inline module script, by hash; its inline style, by hash.
struct Page {
    html: &'static str,
    csp: HeaderValue,
}

impl Page {
    fn new(html: &'static str) -> Self {
        let csp = format!(
            "default-src 'none'; script-src 'self' {}; style-src {}; connect-src 'self'; \
             img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            csp_hash_of_element(html, "script"),
            csp_hash_of_element(html, "style"),
        );
        Self {
            html,
            csp: HeaderValue::from_str(&csp)
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
        }
    }

    fn answer(&self) -> Response<Body> {
        let mut resp = html(StatusCode::OK, self.html.to_string());
        resp.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        resp
    }
}

struct SpaPages {
    spa: Page,
    deep: Page,
}

impl SpaPages {
    fn new() -> Self {
        Self {
            spa: Page::new(SPA_HTML),
            deep: Page::new(DEEP_HTML),
        }
    }

    fn answer<B>(&self, req: &Request<B>, expected_host: &str, public_url: &str) -> Response<Body> {
        let host = req
            .headers()
            .get("x-forwarded-host")
            .and_then(|v| v.to_str().ok());
        if host.is_some_and(|h| h != expected_host) {
            return redirect(StatusCode::FOUND, &format!("{public_url}/"));
        }
        if !matches!(req.method(), &Method::GET | &Method::HEAD) {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        match req.uri().path() {
            "/" | "/index.html" => self.spa.answer(),
            "/deep" => self.deep.answer(),
            CLIENT_JS_PATH => client_js(),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl std::fmt::Debug for SpaPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaPages").finish_non_exhaustive()
    }
}

/// The client library: a JavaScript module, revalidated on every load (a rebuilt demo serves
/// the new one at once).
fn client_js() -> Response<Body> {
    typed(
        StatusCode::OK,
        Bytes::from_static(CLIENT_JS.as_bytes()),
        "text/javascript; charset=utf-8",
        "no-cache",
    )
}

// ------------------------------------------------------------------ shared HTTP helpers

/// One small HTTP server of the demo, on a loopback address. Dropping it stops it.
#[derive(Debug)]
pub(crate) struct LocalServer {
    pub(crate) addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LocalServer {
    /// Binds `addr` (loopback only) and serves `handler` on it.
    pub(crate) fn start<F, Fut>(addr: SocketAddr, handler: F) -> Result<Self, DemoError>
    where
        F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        Self::serve(Self::bind(addr)?, handler)
    }

    /// Binds `addr`, refusing anything but a loopback address.
    pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, DemoError> {
        if !addr.ip().is_loopback() {
            return Err(DemoError::NotLoopback(addr));
        }
        std::net::TcpListener::bind(addr).map_err(|source| DemoError::Bind { addr, source })
    }

    /// Serves `handler` on a listener from [`LocalServer::bind`].
    pub(crate) fn serve<F, Fut>(
        listener: std::net::TcpListener,
        handler: F,
    ) -> Result<Self, DemoError>
    where
        F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let bind_err = |source| DemoError::Bind { addr, source };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 256,
            drain: Duration::from_secs(1),
            ..Limits::default()
        };
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(serve(vec![(None, listener)], limits, None, handler, rx));
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    /// Stops accepting and waits for in-flight requests (briefly).
    pub(crate) async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Request bodies the demo servers accept (forms): small.
const MAX_FORM: usize = 64 * 1024;

/// Reads an `application/x-www-form-urlencoded` body. `None` if too large or unreadable.
pub(crate) async fn read_form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_FORM);
    let bytes = body.collect().await.ok()?.to_bytes();
    Some(parse_pairs(&bytes))
}

/// Decoded `k=v&…` pairs.
pub(crate) fn parse_pairs(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The single value of `name`; a repeated parameter is an error (RFC 6749 §3.1, §3.2).
pub(crate) fn single<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, String> {
    let mut it = pairs.iter().filter(|(k, _)| k == name);
    let first = it.next().map(|(_, v)| v.as_str());
    if it.next().is_some() {
        return Err(format!("parameter {name} is repeated"));
    }
    Ok(first.filter(|v| !v.is_empty()))
}

/// An HTML page, not cached, not frameable.
pub(crate) fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = typed(
        status,
        Bytes::from(body),
        "text/html; charset=utf-8",
        "no-store",
    );
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// A `content_type` answer with `cache_control`, which browsers must not sniff as anything else.
fn typed(
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    cache_control: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A redirect to `location` (never cached).
pub(crate) fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut resp = Response::new(cloakroom::body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    resp
}

/// Escapes text for HTML element content and double-quoted attributes.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The CSP source (`'sha256-…'`) of the first `<tag>…</tag>` (attributes allowed, e.g.
/// `<script type="module">`) in `page`, so the demo pages can keep their inline script and
/// style under a strict policy.
pub(crate) fn csp_hash_of_element(page: &str, tag: &str) -> String {
    let close = format!("</{tag}>");
    let open = format!("<{tag}");
    let content = page
        .match_indices(&open)
        .map(|(i, _)| &page[i + open.len()..])
        // `<script>` or `<script …>`, not `<scripts>`.
        .find(|rest| rest.starts_with('>') || rest.starts_with(char::is_whitespace))
        .and_then(|rest| rest.find('>').map(|j| &rest[j + 1..]))
        .and_then(|rest| rest.find(&close).map(|j| &rest[..j]))
        .unwrap_or_default();
    format!(
        "'sha256-{}'",
        STANDARD.encode(sha2::Sha256::digest(content.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_config_is_valid_and_plain_http_friendly() {
        let toml = demo_toml(
            8080,
            "http://127.0.0.1:9999",
            "http://127.0.0.1:9998",
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            Some("redis://127.0.0.1:6379/\"odd"),
            Duration::from_secs(90),
        );
        let mut env = Env::new();
        env.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), "s".into());
        env.insert("CLOAKROOM_OIDC_PARTNERS_CLIENT_SECRET".into(), "p".into());
        env.insert("CLOAKROOM_COOKIE_KEYS".into(), KeyRing::generate_entry(1));
        let c = Config::from_toml(&toml, &env).unwrap_or_else(|e| panic!("{e}"));
        // Two providers: [oidc] with DPoP, and the Partner IdP with its own client and secret.
        assert_eq!(c.oidc.name, "default");
        assert!(c.oidc.dpop);
        assert_eq!(c.oidc.providers.len(), 1);
        let partner = &c.oidc.providers[0];
        assert_eq!(partner.name, PARTNER_PROVIDER);
        assert_eq!(partner.issuer_id, "http://127.0.0.1:9998");
        assert_eq!(partner.client_id, PARTNER_CLIENT_ID);
        assert_eq!(partner.client_secret.expose(), "p");
        assert!(!partner.dpop);
        assert!(!c.cookie.secure);
        assert!(c.session.remember.enabled && c.session.reconstitute.enabled);
        assert_eq!(c.cookie.name, COOKIE_NAME);
        assert_eq!(c.server.public_origin, "http://localhost:8080");
        assert_eq!(c.routes.len(), 3);
        // Longest prefix first: the sensitive route, with its step-up, before `/api/`.
        assert_eq!(c.routes[0].prefix, SENSITIVE_PREFIX);
        let step = c.routes[0]
            .step_up
            .as_ref()
            .expect("step-up on the sensitive route");
        assert_eq!(step.max_age, Some(Duration::from_secs(90)));
        assert!(step.acr_values.is_empty());
        assert!(c.routes[0].takes_provider(None));
        assert!(!c.routes[0].takes_provider(Some(PARTNER_PROVIDER)));
        assert_eq!(c.routes[1].prefix, "/api/");
        assert!(c.routes[1].step_up.is_none());
        assert!(c.routes[1].takes_provider(Some(PARTNER_PROVIDER)));
        assert!(matches!(
            c.store.kind,
            cloakroom::config::StoreKind::Redis(_)
        ));
    }

    fn sha(s: &str) -> String {
        format!(
            "'sha256-{}'",
            STANDARD.encode(sha2::Sha256::digest(s.as_bytes()))
        )
    }

    #[test]
    fn csp_hashes_cover_the_inline_script_and_style() {
        let page = "<style>a{}</style><script>x()</script>";
        assert_eq!(csp_hash_of_element(page, "script"), sha("x()"));
        assert_eq!(csp_hash_of_element(page, "style"), sha("a{}"));
        // Attributes are skipped; so are other elements whose names start alike.
        let page = "<scripts>no</scripts><script type=\"module\">\nimport \"/x.js\";\n</script>";
        assert_eq!(
            csp_hash_of_element(page, "script"),
            sha("\nimport \"/x.js\";\n")
        );
    }

    /// The inline part of each page, as the browser hashes it.
    fn inline(page: &str, open: &str, close: &str) -> String {
        let start = page.find(open).expect(open) + open.len();
        let len = page[start..].find(close).expect(close);
        page[start..start + len].to_string()
    }

    #[test]
    fn each_page_is_allowed_its_own_module_script_and_style_and_the_library() {
        let pages = SpaPages::new();
        for (page, html) in [(&pages.spa, SPA_HTML), (&pages.deep, DEEP_HTML)] {
            let csp = page.csp.to_str().expect("ASCII");
            let script = inline(html, "<script type=\"module\">", "</script>");
            assert!(
                script.contains(&format!("from \"{CLIENT_JS_PATH}\"")),
                "the page imports the library"
            );
            assert!(
                csp.contains(&format!("script-src 'self' {};", sha(&script))),
                "{csp}"
            );
            let style = inline(html, "<style>", "</style>");
            assert!(
                csp.contains(&format!("style-src {};", sha(&style))),
                "{csp}"
            );
            assert!(csp.starts_with("default-src 'none';"), "{csp}");
            assert_eq!(html.matches("<script").count(), 1, "one inline script");
        }
    }

    #[test]
    fn the_spa_server_serves_the_pages_and_the_library() {
        let pages = SpaPages::new();
        let get = |path: &str| {
            let req = Request::get(path)
                .header("x-forwarded-host", "localhost:8080")
                .body(())
                .unwrap();
            pages.answer(&req, "localhost:8080", "http://localhost:8080")
        };
        let js = get(CLIENT_JS_PATH);
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(js.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(CLIENT_JS.contains("export function createCloakroom("));
        for path in ["/", "/index.html", "/deep"] {
            let r = get(path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        assert_eq!(get("/nope").status(), StatusCode::NOT_FOUND);
        let other = Request::get("/")
            .header("x-forwarded-host", "127.0.0.1:8080")
            .body(())
            .unwrap();
        let r = pages.answer(&other, "localhost:8080", "http://localhost:8080");
        assert_eq!(r.status(), StatusCode::FOUND);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html(r#"<a href="x">'&"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }

    #[tokio::test]
    async fn demo_servers_refuse_non_loopback_addresses() {
        let r = LocalServer::start("0.0.0.0:0".parse().unwrap(), |_req, _peer| async {
            Ok(text(StatusCode::OK, "x"))
        });
        assert!(matches!(r, Err(DemoError::NotLoopback(_))));
    }
}

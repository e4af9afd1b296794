//! `TestEnv::start()`: real Redis + the real IdP + an echo upstream + Cloakroom on port 0.
// Helpers serve different test modules; not every one is used by every build of the suite.
#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod chromium;
pub(crate) mod dot_idp;
pub(crate) mod fault;
pub(crate) mod hostile_idp;
pub(crate) mod idp;
pub(crate) mod otlp;
pub(crate) mod pki;
pub(crate) mod redis;
pub(crate) mod upstream;

use browser::Browser;
use cloakroom::config::{Config, Env};
use cloakroom::crypto::KeyRing;
use cloakroom::{App, Listeners, RunningApp};
use idp::Idp;
use redis::RedisServer;
use std::sync::{Arc, Mutex, OnceLock};
use upstream::Upstream;

pub(crate) const CLIENT_ID: &str = "cloakroom";
pub(crate) const CLIENT_SECRET: &str = "test-client-secret-0123456789";

/// The repository's root (for `tests/idp`, `target/`, …).
pub(crate) fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Everything Cloakroom logged in this test process (at debug level), for leak scans.
pub(crate) fn logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().expect("log lock")).to_string()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct LogWriter;
impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        log_buffer().lock().expect("log lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("cloakroom=trace,info")
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .try_init();
    });
}

/// Which real IdP an env runs against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Provider {
    /// npm `oidc-provider` (tests/idp), one process per env, configured by the `idp_*` options.
    #[default]
    OidcProvider,
    /// django-oauth-toolkit (tests/idp-dot), one process per test binary, a client and users
    /// of the env's own registered there (`TestEnv::dot`). The `idp_*` options do not apply.
    Dot,
}

#[derive(Clone)]
pub(crate) struct Opts {
    /// The IdP (default: oidc-provider).
    pub provider: Provider,
    pub instances: usize,
    pub access_token_ttl: u64,
    pub idle_timeout: &'static str,
    pub absolute_timeout: &'static str,
    pub client_auth: &'static str,
    /// `oidc.par` (`auto`, Cloakroom's default: the test IdP advertises PAR).
    pub par: &'static str,
    /// The IdP takes authorization requests only through PAR.
    pub idp_require_par: bool,
    /// The IdP has no PAR endpoint.
    pub idp_without_par: bool,
    /// The `private_key_jwt` key(s) (PEM, `CLOAKROOM_OIDC_CLIENT_KEY`), with `client_auth`
    /// `private_key_jwt`.
    pub client_key: Option<String>,
    /// The public keys the IdP has registered for the client (default: those of `client_key`).
    pub idp_client_jwks: Option<serde_json::Value>,
    /// The one assertion algorithm the IdP lets the client use.
    pub idp_client_auth_alg: Option<&'static str>,
    /// `oidc.client_assertion_audience`.
    pub client_assertion_audience: &'static str,
    /// `oidc.dpop`.
    pub dpop: bool,
    /// The IdP insists on DPoP nonces at its token endpoint (RFC 9449 §8).
    pub idp_dpop_nonce: bool,
    /// The IdP issues the client DPoP-bound tokens only (`dpop_bound_access_tokens`).
    pub idp_dpop_bound: bool,
    /// `oidc.profile`.
    pub profile: &'static str,
    /// The IdP runs oidc-provider's FAPI 2.0 profile, PAR required, ID tokens PS256.
    pub idp_fapi2: bool,
    /// Mutual TLS (RFC 8705): the IdP gets an mTLS alias listener with this PKI's server
    /// certificate, and Cloakroom `oidc.tls_ca_file` and a client certificate (the CA-issued
    /// one, or with `client_auth = "self_signed_tls_client_auth"` the self-signed one).
    pub pki: Option<std::sync::Arc<pki::Pki>>,
    /// The IdP binds the client's tokens to its certificate.
    pub idp_cert_bound: bool,
    /// The only algorithms the IdP offers for client assertions.
    pub idp_client_auth_algs: Option<Vec<&'static str>>,
    /// Extra top-level keys of the test IdP's configuration (tests/idp/README.md), e.g.
    /// `resource_servers`, `token_exchange`, `acr_values`.
    pub idp_extra: serde_json::Map<String, serde_json::Value>,
    /// More `[oidc]` keys for Cloakroom (TOML lines).
    pub oidc_toml: String,
    /// Extra keys of Cloakroom's client registration at the test IdP, e.g.
    /// `client_credentials`, `token_exchange`, `scope` (at DOT: `algorithm`).
    pub idp_client_extra: serde_json::Map<String, serde_json::Value>,
    pub refresh_skew: &'static str,
    pub oidc_timeout: &'static str,
    pub extra_toml: String,
    /// Extra keys for the `[session]` section (e.g. `refresh_cooloff = "1s"`).
    pub session_toml: String,
    /// Replaces the `[store]` section (default: the env's own standalone redis-server).
    pub store_toml: Option<String>,
    /// Extra arguments for the env's redis-server (e.g. persistence).
    pub redis_args: Vec<&'static str>,
    /// Register a callback URL for one `spawn_binary` process, so it can run logins.
    pub binary: bool,
    /// Point Cloakroom at another issuer (e.g. the hostile IdP) instead of the real one.
    pub issuer: Option<String>,
    /// Put a [`fault::FaultProxy`] between Cloakroom and the IdP (`TestEnv::idp_fault`).
    pub idp_fault: bool,
    /// Put a [`fault::FaultProxy`] between Cloakroom and Redis (`TestEnv::redis_fault`).
    pub redis_fault: bool,
    /// Key rings per instance (`CLOAKROOM_COOKIE_KEYS`), instead of one shared ring.
    pub instance_keys: Vec<String>,
    /// `server.login_rate_limit` and `login_rate_burst` (every test client is 127.0.0.1: high
    /// by default, so only the rate-limit test meets the limit).
    pub login_rate_limit: u32,
    /// A second `oidc-provider` of its own (same client registration and users), configured
    /// as `[[oidc.providers]] name = "second"` ([`TestEnv::idp2`]).
    pub second_idp: bool,
    /// DOT as one more provider, `[[oidc.providers]] name = "dot"` ([`TestEnv::dot2`]).
    pub dot_provider: bool,
    /// More keys of the `second` provider's entry (TOML lines), e.g. `callback = "shared"`
    /// (then the second IdP registers the shared callback URLs instead of its own).
    pub second_toml: String,
    /// More environment variables for Cloakroom (e.g. `CLOAKROOM_OTLP_HEADERS`).
    pub env: Vec<(&'static str, String)>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            provider: Provider::OidcProvider,
            instances: 1,
            access_token_ttl: 3600,
            idle_timeout: "30m",
            absolute_timeout: "12h",
            client_auth: "client_secret_basic",
            par: "auto",
            idp_require_par: false,
            idp_without_par: false,
            client_key: None,
            idp_client_jwks: None,
            idp_client_auth_alg: None,
            client_assertion_audience: "issuer",
            dpop: false,
            idp_dpop_nonce: false,
            idp_dpop_bound: false,
            profile: "none",
            idp_fapi2: false,
            pki: None,
            idp_cert_bound: false,
            idp_client_auth_algs: None,
            idp_extra: serde_json::Map::new(),
            oidc_toml: String::new(),
            idp_client_extra: serde_json::Map::new(),
            refresh_skew: "60s",
            oidc_timeout: "5s",
            extra_toml: String::new(),
            session_toml: String::new(),
            store_toml: None,
            redis_args: Vec::new(),
            binary: false,
            issuer: None,
            idp_fault: false,
            redis_fault: false,
            instance_keys: Vec::new(),
            login_rate_limit: 1_000_000,
            second_idp: false,
            dot_provider: false,
            second_toml: String::new(),
            env: Vec::new(),
        }
    }
}

/// An env's `oidc-provider` — none when the env runs against DOT ([`Opts::provider`]), where
/// any use of `env.idp` panics saying so (use `env.dot()`).
pub(crate) struct IdpSlot(Option<Idp>);

impl std::ops::Deref for IdpSlot {
    type Target = Idp;
    fn deref(&self) -> &Idp {
        self.0.as_ref().expect(
            "this env runs against DOT (Opts::provider): env.idp is oidc-provider's; use env.dot()",
        )
    }
}

impl std::ops::DerefMut for IdpSlot {
    fn deref_mut(&mut self) -> &mut Idp {
        self.0.as_mut().expect(
            "this env runs against DOT (Opts::provider): env.idp is oidc-provider's; use env.dot()",
        )
    }
}

pub(crate) struct TestEnv {
    pub binary_port: Option<u16>,
    pub redis: RedisServer,
    pub idp: IdpSlot,
    /// With [`Opts::second_idp`]: the provider named `second`.
    pub idp2: Option<Idp>,
    /// The DOT IdP and this env's client there, with `Provider::Dot`.
    pub dot: Option<dot_idp::DotEnv>,
    /// With [`Opts::dot_provider`]: DOT as the provider named `dot`.
    pub dot2: Option<dot_idp::DotEnv>,
    pub upstream: Upstream,
    pub apps: Vec<RunningApp>,
    /// Each instance's clock (the system clock until a test advances it).
    pub clocks: Vec<cloakroom::clock::ManualClock>,
    /// Between Cloakroom (and the test's browsers) and the IdP, with `Opts::idp_fault`.
    pub idp_fault: Option<fault::FaultProxy>,
    /// Between Cloakroom and Redis, with `Opts::redis_fault`.
    pub redis_fault: Option<fault::FaultProxy>,
    pub keys: String,
    pub opts: Opts,
}

/// A URL's query parameters (the last of a repeated name wins).
pub(crate) fn query(url: &str) -> std::collections::BTreeMap<String, String> {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Starts an instance with `config`, which must fail, and returns its start-up error.
pub(crate) async fn start_up_error(config: Config) -> String {
    match App::start_with(
        config,
        Listeners {
            public: Some(bind0()),
            admin: Some(bind0()),
            ..Default::default()
        },
    )
    .await
    {
        Ok(app) => {
            app.shutdown().await;
            panic!("cloakroom started")
        }
        Err(e) => e.to_string(),
    }
}

pub(crate) fn bind0() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

impl TestEnv {
    pub(crate) async fn start() -> Self {
        Self::start_with(Opts::default()).await
    }

    pub(crate) async fn start_with(opts: Opts) -> Self {
        init_logs();
        let redis = RedisServer::start_with(&opts.redis_args);
        let upstream = Upstream::start().await;
        let mut listeners = Vec::new();
        let mut redirects = Vec::new();
        let mut post_logout = Vec::new();
        for _ in 0..opts.instances {
            let l = bind0();
            let port = l.local_addr().expect("addr").port();
            redirects.push(format!("http://127.0.0.1:{port}/auth/callback"));
            post_logout.push(format!("http://127.0.0.1:{port}/"));
            listeners.push((l, bind0()));
        }
        let binary_port = opts.binary.then(|| {
            let port = redis::free_port();
            redirects.push(format!("http://127.0.0.1:{port}/auth/callback"));
            post_logout.push(format!("http://127.0.0.1:{port}/"));
            port
        });
        let (idp, idp_fault, dot) = match opts.provider {
            Provider::OidcProvider => {
                let (idp, fault) = Self::start_idp(&opts, &redirects, &post_logout).await;
                *upstream.seen.introspection.lock().expect("lock") =
                    Some(idp.url("/token/introspection"));
                (Some(idp), fault, None)
            }
            Provider::Dot => {
                assert!(!opts.idp_fault, "Opts::idp_fault is for oidc-provider only");
                let dot = dot_idp::DotIdp::shared()
                    .register(
                        dot_idp::CLIENT_SECRET,
                        &redirects,
                        &post_logout,
                        opts.access_token_ttl,
                        &opts.idp_client_extra,
                    )
                    .await;
                (None, None, Some(dot))
            }
        };
        // Each provider beside [oidc] has a callback of its own (`callback = "own"`, the
        // default), and only that one is registered at its IdP.
        let own = |name: &str| -> Vec<String> {
            redirects.iter().map(|r| format!("{r}/{name}")).collect()
        };
        let dot2 = if opts.dot_provider {
            Some(
                dot_idp::DotIdp::shared()
                    .register(
                        dot_idp::CLIENT_SECRET,
                        &own("dot"),
                        &post_logout,
                        opts.access_token_ttl,
                        &serde_json::Map::new(),
                    )
                    .await,
            )
        } else {
            None
        };
        let idp2 = if opts.second_idp {
            let plain = Opts {
                idp_fault: false,
                ..opts.clone()
            };
            let second = if opts.second_toml.contains("callback = \"shared\"") {
                redirects.clone()
            } else {
                own("second")
            };
            Some(Self::start_idp(&plain, &second, &post_logout).await.0)
        } else {
            None
        };
        let keys = KeyRing::generate_entry(1);
        let redis_fault = if opts.redis_fault {
            Some(fault::FaultProxy::start(([127, 0, 0, 1], redis.port).into()).await)
        } else {
            None
        };
        let mut env = Self {
            binary_port,
            redis,
            idp: IdpSlot(idp),
            idp2,
            dot,
            dot2,
            upstream,
            apps: Vec::new(),
            clocks: Vec::new(),
            idp_fault,
            redis_fault,
            keys,
            opts,
        };
        for (i, (public, admin)) in listeners.into_iter().enumerate() {
            let port = public.local_addr().expect("addr").port();
            let keys = env
                .opts
                .instance_keys
                .get(i)
                .cloned()
                .unwrap_or_else(|| env.keys.clone());
            let config = env.config(port, &keys, &env.opts.extra_toml.clone());
            env.start_app(config, public, admin).await;
        }
        env
    }

    /// The real IdP on a fresh free port, behind a fault proxy with `Opts::idp_fault`. A port
    /// found free can be taken before node binds it, and node rarely hangs at start-up, so each
    /// of three tries takes a new port.
    async fn start_idp(
        opts: &Opts,
        redirects: &[String],
        post_logout: &[String],
    ) -> (Idp, Option<fault::FaultProxy>) {
        let self_signed = opts.client_auth == "self_signed_tls_client_auth";
        let jwks = opts.idp_client_jwks.clone().or_else(|| {
            if let Some(pki) = opts.pki.as_ref().filter(|_| self_signed) {
                return Some(pki.self_signed_jwks());
            }
            let keys = cloakroom::oidc::ClientKey::parse_all(opts.client_key.as_deref()?)
                .expect("test client key");
            Some(serde_json::json!({
                "keys": keys.iter().map(|k| k.public_jwk(None)).collect::<Vec<_>>()
            }))
        });
        let mut why = Vec::new();
        for _ in 0..3 {
            let idp_port = redis::free_port();
            // With a fault proxy in front of the IdP, the IdP names the proxy as its issuer, so
            // every call Cloakroom makes to it (discovery, token, JWKS, revocation) crosses it.
            let idp_fault = if opts.idp_fault {
                Some(fault::FaultProxy::start(([127, 0, 0, 1], idp_port).into()).await)
            } else {
                None
            };
            let mut config = serde_json::json!({
                "port": idp_port,
                "issuer": idp_fault.as_ref().map(|f| f.url("http")),
                "access_token_ttl": opts.access_token_ttl,
                "require_par": opts.idp_require_par,
                "par": !opts.idp_without_par,
                "dpop_nonce": opts.idp_dpop_nonce,
                "fapi2": opts.idp_fapi2,
                "client_auth_algs": opts.idp_client_auth_algs,
                "mtls": opts.pki.as_ref().map(|p| serde_json::json!({
                    "cert": p.server_cert_pem,
                    "key": p.server_key_pem,
                    "ca": p.ca_pem,
                })),
                "clients": [{
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uris": redirects,
                    "post_logout_redirect_uris": post_logout,
                    "backchannel_logout_uri": format!("{}/auth/backchannel-logout", post_logout[0].trim_end_matches('/')),
                    "token_endpoint_auth_method": opts.client_auth,
                    "jwks": jwks,
                    "token_endpoint_auth_signing_alg": opts.idp_client_auth_alg,
                    "dpop_bound_access_tokens": opts.idp_dpop_bound,
                    "tls_client_auth_subject_dn": (opts.client_auth == "tls_client_auth").then_some(pki::CLIENT_DN),
                    "tls_client_certificate_bound_access_tokens": opts.idp_cert_bound,
                }, {
                    // The echo upstream's resource server (`/checked/*`): introspection only.
                    "client_id": upstream::RS_CLIENT_ID,
                    "client_secret": upstream::RS_CLIENT_SECRET,
                    "resource_server": true,
                }]
            });
            for (k, v) in &opts.idp_extra {
                config[k] = v.clone();
            }
            for (k, v) in &opts.idp_client_extra {
                config["clients"][0][k] = v.clone();
            }
            let started = Idp::start_once(&config);
            match started {
                Ok(idp) => return (idp, idp_fault),
                Err(e) => why.push(format!("port {idp_port}: {e}")),
            }
        }
        panic!(
            "the test IdP did not start three times:\n{}",
            why.join("\n")
        );
    }

    async fn start_app(
        &mut self,
        config: Config,
        public: std::net::TcpListener,
        admin: std::net::TcpListener,
    ) -> usize {
        let (clock, handle) = cloakroom::clock::Clock::manual();
        let app = App::start_with(
            config,
            Listeners {
                public: Some(public),
                admin: Some(admin),
                clock: Some(clock),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("cloakroom did not start: {e}"));
        self.apps.push(app);
        self.clocks.push(handle);
        self.apps.len() - 1
    }

    /// Moves every instance's clock forward (tokens and sessions age without sleeping; the IdP
    /// and Redis keep real time).
    pub(crate) fn advance(&self, d: std::time::Duration) {
        for c in &self.clocks {
            c.advance(d);
        }
    }

    /// The TOML config of an instance listening on `port`.
    /// `@UPSTREAM@` in `extra` is the echo upstream's address.
    pub(crate) fn toml(&self, port: u16, extra: &str) -> String {
        let up = self.upstream.addr;
        let extra = extra.replace("@UPSTREAM@", &up.to_string());
        let closed = upstream_closed_port();
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
login_rate_limit = {rate}
login_rate_burst = {rate}
[admin]
listen = "127.0.0.1:0"
[oidc]
issuer = "{issuer}"
client_id = "{client_id}"
client_auth_method = "{auth}"
par = "{par}"
client_assertion_audience = "{aud}"
dpop = {dpop}
profile = "{profile}"
{mtls}
{oidc_extra}
timeout = "{oidc_timeout}"
{second}
[session]
idle_timeout = "{idle}"
absolute_timeout = "{abs}"
refresh_skew = "{skew}"
{session_extra}
[store]
{store}
[log]
level = "debug"
[[routes]]
prefix = "/api/"
upstream = "http://{up}"
token = "required"
[[routes]]
prefix = "/public/"
upstream = "http://{up}"
token = "none"
[[routes]]
prefix = "/opt/"
upstream = "http://{up}"
token = "optional"
[[routes]]
prefix = "/api/slow/"
upstream = "http://{up}"
timeout = "1s"
[[routes]]
prefix = "/down/"
upstream = "http://127.0.0.1:{closed}"
[[routes]]
prefix = "/stripped/"
upstream = "http://{up}/base"
strip_prefix = true
{extra}
"#,
            issuer = self
                .opts
                .issuer
                .clone()
                .or_else(|| self.dot.as_ref().map(|d| d.idp.issuer.clone()))
                .unwrap_or_else(|| self.idp.issuer.clone()),
            client_id = self.client_id(),
            auth = self.opts.client_auth,
            par = self.opts.par,
            aud = self.opts.client_assertion_audience,
            dpop = self.opts.dpop,
            profile = self.opts.profile,
            oidc_extra = self.opts.oidc_toml,
            mtls = self.opts.pki.as_ref().map_or_else(String::new, |p| {
                let cert = if self.opts.client_auth == "self_signed_tls_client_auth" {
                    "self-signed.pem"
                } else {
                    "client.pem"
                };
                format!(
                    "client_cert_file = \"{}\"\ntls_ca_file = \"{}\"",
                    p.path(cert),
                    p.path("ca.pem")
                )
            }),
            idle = self.opts.idle_timeout,
            abs = self.opts.absolute_timeout,
            skew = self.opts.refresh_skew,
            rate = self.opts.login_rate_limit,
            session_extra = self.opts.session_toml,
            oidc_timeout = self.opts.oidc_timeout,
            second = self
                .idp2
                .as_ref()
                .map(|i| format!(
                    "[[oidc.providers]]\nname = \"second\"\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n{}\n",
                    i.issuer, self.opts.second_toml
                ))
                .into_iter()
                .chain(self.dot2.as_ref().map(|d| format!(
                    "[[oidc.providers]]\nname = \"dot\"\nissuer = \"{}\"\nclient_id = \"{}\"\n",
                    d.idp.issuer, d.client_id
                )))
                .collect::<String>(),
            store = self
                .opts
                .store_toml
                .clone()
                .unwrap_or_else(|| format!("kind = \"redis\"\nurl = \"{}\"", self.store_url())),
        )
    }

    /// Where Cloakroom finds Redis: through the fault proxy when there is one.
    pub(crate) fn store_url(&self) -> String {
        self.redis_fault
            .as_ref()
            .map_or_else(|| self.redis.url(), |f| f.url("redis"))
    }

    pub(crate) fn env_vars(&self, keys: &str) -> Env {
        let mut e = Env::new();
        let secret = self.dot.as_ref().map_or(CLIENT_SECRET, |d| &d.secret);
        e.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), secret.into());
        e.insert("CLOAKROOM_COOKIE_KEYS".into(), keys.into());
        e.insert("CLOAKROOM_ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
        if self.idp2.is_some() {
            e.insert(
                "CLOAKROOM_OIDC_SECOND_CLIENT_SECRET".into(),
                CLIENT_SECRET.into(),
            );
        }
        if let Some(d) = &self.dot2 {
            e.insert("CLOAKROOM_OIDC_DOT_CLIENT_SECRET".into(), d.secret.clone());
        }
        if let Some(key) = &self.opts.client_key {
            e.insert("CLOAKROOM_OIDC_CLIENT_KEY".into(), key.clone());
        }
        if let Some(p) = &self.opts.pki {
            let key = if self.opts.client_auth == "self_signed_tls_client_auth" {
                &p.self_signed_key_pem
            } else {
                &p.client_key_pem
            };
            e.insert("CLOAKROOM_OIDC_CLIENT_CERT_KEY".into(), key.clone());
        }
        for (k, v) in &self.opts.env {
            e.insert((*k).into(), v.clone());
        }
        e
    }

    pub(crate) fn config(&self, port: u16, keys: &str, extra: &str) -> Config {
        Config::from_toml(&self.toml(port, extra), &self.env_vars(keys))
            .unwrap_or_else(|e| panic!("test config: {e}"))
    }

    pub(crate) fn base(&self, i: usize) -> String {
        format!("http://{}", self.apps[i].public_addr)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base(0))
    }

    pub(crate) fn admin_url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.apps[i].admin_addr)
    }

    /// Starts one more instance on a fresh port, sharing Redis and the IdP.
    /// (Its callback URL is not registered at the IdP: use it for API calls, not logins.)
    pub(crate) async fn start_extra(&mut self, keys: &str) -> usize {
        let public = bind0();
        let port = public.local_addr().expect("addr").port();
        let config = self.config(port, keys, &self.opts.extra_toml.clone());
        self.start_app(config, public, bind0()).await
    }

    /// As [`TestEnv::start_extra`] with the same keys and `extra` in place of the routes and
    /// other TOML of [`Opts::extra_toml`] (a changed deployment over the same store).
    pub(crate) async fn start_extra_routes(&mut self, extra: &str) -> usize {
        let public = bind0();
        let port = public.local_addr().expect("addr").port();
        let keys = self.keys.clone();
        let config = self.config(port, &keys, extra);
        self.start_app(config, public, bind0()).await
    }

    /// As [`TestEnv::start_extra`] with a whole config of the caller's (e.g. another client
    /// secret, another store URL); `toml(port)` gets the new instance's port.
    pub(crate) async fn start_extra_with(
        &mut self,
        toml: impl Fn(u16) -> String,
        env: &Env,
    ) -> usize {
        let public = bind0();
        let port = public.local_addr().expect("addr").port();
        let config =
            Config::from_toml(&toml(port), env).unwrap_or_else(|e| panic!("test config: {e}"));
        self.start_app(config, public, bind0()).await
    }

    /// A full login as `user` in `browser` through instance `i`; returns the callback response.
    pub(crate) async fn login_as(
        &self,
        browser: &mut Browser,
        i: usize,
        user: &str,
        password: &str,
    ) -> browser::Resp {
        let r = browser
            .get(&format!("{}/auth/login?return_to=/app", self.base(i)))
            .await;
        assert_eq!(r.status, 302, "login: {}", r.body);
        let callback = match &self.dot {
            Some(dot) => dot.login(browser, &r.location(), user, password).await,
            None => self.idp.login(browser, &r.location(), user, password).await,
        };
        assert!(callback.starts_with(&self.base(i)), "callback {callback}");
        let r = browser.get(&callback).await;
        assert_eq!(r.status, 302, "callback: {}", r.body);
        r
    }

    /// Follows the IdP's redirects from `loc` (an authorization URL) without any interaction
    /// until one comes back to instance 0, and returns that URL (a silent login's callback).
    pub(crate) async fn follow_back(&self, browser: &mut Browser, loc: &str) -> String {
        let absolute = |l: &str| match &self.dot {
            Some(d) => d.absolute(l),
            None => self.idp.absolute(l),
        };
        let mut loc = loc.to_string();
        for _ in 0..5 {
            if loc.starts_with(&self.base(0)) {
                return loc;
            }
            let r = browser.get(&absolute(&loc)).await;
            assert!(
                r.status == 302 || r.status == 303,
                "no interaction expected: {} {}",
                r.status,
                r.body
            );
            loc = absolute(&r.location());
        }
        panic!("the IdP did not send the browser back: {loc}")
    }

    /// Cloakroom's client id at the env's IdP.
    pub(crate) fn client_id(&self) -> String {
        self.dot
            .as_ref()
            .map_or_else(|| CLIENT_ID.to_string(), |d| d.client_id.clone())
    }

    /// The env's DOT client (panics unless the env runs against DOT).
    pub(crate) fn dot(&self) -> &dot_idp::DotEnv {
        self.dot
            .as_ref()
            .expect("this env runs against oidc-provider (Opts::provider)")
    }

    pub(crate) async fn login(&self, browser: &mut Browser) -> browser::Resp {
        self.login_as(browser, 0, "alice", "wonderland").await
    }

    /// The session (with its tokens) behind a browser's cookie, read the way Cloakroom does.
    pub(crate) async fn session_of(
        &self,
        browser: &Browser,
    ) -> Option<cloakroom::session::Session> {
        self.session_of_with(browser, &self.keys).await
    }

    /// As [`TestEnv::session_of`], opening records and cookies with the key ring `keys`.
    pub(crate) async fn session_of_with(
        &self,
        browser: &Browser,
        keys: &str,
    ) -> Option<cloakroom::session::Session> {
        let mut config = self.config(1, keys, "");
        if self.opts.store_toml.is_none() {
            // Straight to Redis, past any fault proxy.
            config.store.kind = cloakroom::config::StoreKind::Redis(
                cloakroom::session::redis::Topology::Single(self.redis.url()),
            );
        }
        let mut headers = http::HeaderMap::new();
        let cookie = self.cookie_header(browser)?;
        headers.insert(http::header::COOKIE, cookie.parse().ok()?);
        let id = cloakroom::cookies::Cookies::from_config(&config).session_id(&headers)?;
        let store = cloakroom::app::connect_store(&config.store).await.ok()?;
        let sessions = cloakroom::session::Sessions::new(
            store,
            config.keys.clone(),
            config.session.idle_timeout,
            config.session.absolute_timeout,
        );
        sessions.load(&id.handle()).await.ok()?
    }

    /// A back-channel logout as the IdP sends it: a logout token for `sub` and/or `sid`, signed
    /// by the real IdP's key, posted to instance 0. Returns the token (to post again) and the
    /// status.
    pub(crate) async fn backchannel_logout(
        &self,
        sub: Option<&str>,
        sid: Option<&str>,
    ) -> (String, u16) {
        let mut claims = serde_json::json!({
            "iss": self.idp.issuer, "aud": CLIENT_ID, "iat": cloakroom::session::now_unix(),
            "jti": cloakroom::crypto::random_token(),
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        });
        if let Some(sub) = sub {
            claims["sub"] = sub.into();
        }
        if let Some(sid) = sid {
            claims["sid"] = sid.into();
        }
        let token = self.idp.sign(&claims, &serde_json::json!({})).await;
        let status = self.post_logout_token(&token).await;
        (token, status)
    }

    /// Posts a logout token to instance 0's back-channel endpoint; returns the status.
    pub(crate) async fn post_logout_token(&self, token: &str) -> u16 {
        reqwest::Client::new()
            .post(self.url("/auth/backchannel-logout"))
            .form(&[("logout_token", token)])
            .send()
            .await
            .expect("back-channel logout")
            .status()
            .as_u16()
    }

    fn cookie_header(&self, browser: &Browser) -> Option<String> {
        browser
            .jar
            .get("__Host-cloakroom")
            .map(|v| format!("__Host-cloakroom={v}"))
    }
}

pub(crate) const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

fn upstream_closed_port() -> u16 {
    // A port nobody listens on: bind, read, close.
    redis::free_port()
}

/// Sends raw bytes to `addr` and returns the raw response (for requests a client library would
/// normalise: dot segments, smuggling attempts).
pub(crate) async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

/// The real `cloakroom` binary, run as its own process (for per-process measurements and
/// signals). Killed on drop.
pub(crate) struct Binary {
    pub addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub child: std::process::Child,
    pub stderr_path: std::path::PathBuf,
    /// The config file it runs on (a reload test rewrites it).
    pub config_path: std::path::PathBuf,
    /// With [`TestEnv::spawn_binary_file_secrets`]: where each secret's `_FILE` is
    /// (`CLOAKROOM_COOKIE_KEYS`, `CLOAKROOM_ADMIN_TOKEN`, `CLOAKROOM_OIDC_CLIENT_SECRET` → path).
    pub secret_files: std::collections::BTreeMap<String, std::path::PathBuf>,
}

impl Binary {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A line of /proc/<pid>/status in KiB (e.g. `VmRSS`, `VmHWM`).
    pub(crate) fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(&format!("{field}:")))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestEnv {
    /// Starts the `cloakroom` binary with this environment's config on a free port, sharing
    /// Redis and the IdP. (Its callback URL is not registered: log in through an in-process
    /// instance and use the cookie here.)
    pub(crate) async fn spawn_binary(&self, extra: &str) -> Binary {
        self.spawn_binary_logging(extra, "level = \"info\"").await
    }

    /// As [`TestEnv::spawn_binary`], with extra `[server]` keys (given as a `[server]` block).
    pub(crate) async fn spawn_binary_with_server(&self, server: &str) -> Binary {
        let extra_server = server.trim_start_matches("[server]\n");
        let port = self.binary_port.unwrap_or_else(redis::free_port);
        let text = self
            .toml(port, "")
            .replacen("[server]\n", &format!("[server]\n{extra_server}"), 1)
            .replace("level = \"debug\"", "level = \"info\"");
        self.spawn_config(port, text).await
    }

    /// As [`TestEnv::spawn_binary`], with `log` as the body of the `[log]` section.
    pub(crate) async fn spawn_binary_logging(&self, extra: &str, log: &str) -> Binary {
        let port = self.binary_port.unwrap_or_else(redis::free_port);
        let text = self.toml(port, extra).replace("level = \"debug\"", log);
        self.spawn_config(port, text).await
    }

    /// Runs `cloakroom check` on this env's configuration (the instance-0 TOML with `extra`):
    /// its exit code and what it printed.
    pub(crate) fn run_check(&self, extra: &str) -> (i32, String) {
        let dir = std::env::temp_dir().join(format!(
            "cloakroom-check-{}-{}",
            std::process::id(),
            redis::free_port()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("config.toml");
        std::fs::write(&config, self.toml(redis::free_port(), extra)).expect("config");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cloakroom"));
        cmd.args(["check", "--config"]).arg(&config);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in self.env_vars(&self.keys) {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run cloakroom check");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// As [`TestEnv::spawn_binary`], with the key ring, the admin token and the client secret
    /// given as `<VAR>_FILE` (files a reload test rewrites: [`Binary::secret_files`]).
    pub(crate) async fn spawn_binary_file_secrets(&self, extra: &str) -> Binary {
        let port = self.binary_port.unwrap_or_else(redis::free_port);
        let text = self
            .toml(port, extra)
            .replace("level = \"debug\"", "level = \"info\"");
        self.spawn_config_with(port, text, true).await
    }

    async fn spawn_config(&self, port: u16, text: String) -> Binary {
        self.spawn_config_with(port, text, false).await
    }

    async fn spawn_config_with(&self, port: u16, text: String, file_secrets: bool) -> Binary {
        let admin_port = redis::free_port();
        let text = text.replacen(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
            1,
        );
        let dir = std::env::temp_dir().join(format!("cloakroom-bin-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("config.toml");
        std::fs::write(&config, text).expect("config");
        let stderr_path = dir.join("stderr.log");
        // CLOAKROOM_IT_BINARY runs another build instead (a baseline, for a measurement).
        let exe = std::env::var_os("CLOAKROOM_IT_BINARY")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_cloakroom").into());
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["run", "--config"]).arg(&config);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let mut secret_files = std::collections::BTreeMap::new();
        for (k, v) in self.env_vars(&self.keys) {
            let as_file = file_secrets
                && [
                    "CLOAKROOM_COOKIE_KEYS",
                    "CLOAKROOM_ADMIN_TOKEN",
                    "CLOAKROOM_OIDC_CLIENT_SECRET",
                ]
                .contains(&k.as_str());
            if as_file {
                let path = dir.join(k.to_ascii_lowercase());
                std::fs::write(&path, &v).expect("secret file");
                cmd.env(format!("{k}_FILE"), &path);
                secret_files.insert(k, path);
            } else {
                cmd.env(k, v);
            }
        }
        let child = cmd
            .stdout(std::fs::File::create(&stderr_path).expect("log file"))
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&stderr_path)
                    .expect("log file"),
            )
            .spawn()
            .expect("spawn cloakroom");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let bin = Binary {
            addr,
            admin_addr: ([127, 0, 0, 1], admin_port).into(),
            child,
            stderr_path,
            config_path: config.clone(),
            secret_files,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return bin;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cloakroom binary did not listen: {}",
                std::fs::read_to_string(&bin.stderr_path).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The sum of the Prometheus samples whose line starts with `prefix` (a metric name, with or
/// without labels) on the admin listener `admin`.
pub(crate) async fn metric_sum(admin: std::net::SocketAddr, prefix: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

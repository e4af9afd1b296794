//! Wiring: build every part from a [`Config`], bind the listeners, run until shut down.

use crate::admin::Admin;
use crate::auth::{Backchannel, Callback, Endpoints, Login, Logout, User};
use crate::clock::Clock;
use crate::config::{Config, StoreConfig, StoreKind};
use crate::context::ClientIp;
use crate::cookies::Cookies;
use crate::cors::Origins;
use crate::end::Ender;
use crate::error::StartupError;
use crate::loader::SessionLoader;
use crate::oidc::{OidcClient, Providers};
use crate::proxy::Forwarder;
use crate::ratelimit::LoginLimiter;
use crate::refresh::{RefreshConfig, Refresher};
use crate::routes::{Api, Router};
use crate::server::{self, Limits};
use crate::session::{memory::MemoryStore, redis::RedisStore, Sessions, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The stages, built once: what the two listeners serve, and what the tunnel sweep reads.
/// No module imports this one back: each stage was given what it uses.
#[derive(Debug)]
pub struct AppState {
    /// The public service; a reload swaps it ([`RunningApp::reload`]).
    router: Arc<arc_swap::ArcSwap<Router>>,
    /// What a reload rebuilds the router from, and the configuration it runs on.
    parts: Parts,
    /// The admin service.
    admin: Arc<Admin>,
    /// Sessions over the store.
    sessions: Sessions,
    /// Live WebSocket tunnels and event streams, by session: `tunnels.close_session(handle)`
    /// cuts a session's streams on this instance.
    tunnels: crate::tunnels::Tunnels,
}

/// The stages a reload keeps (sessions, IdP client, refresher, ...) and the configuration in
/// force.
struct Parts {
    sessions: Sessions,
    providers: Providers,
    ender: Ender,
    refresher: Arc<Refresher>,
    clock: Clock,
    clients: Arc<crate::client_tokens::ClientTokens>,
    reaper: Option<crate::reaper::Reaper>,
    /// The login rate limit in force: a reload keeps it (and every budget spent) unless its
    /// settings changed.
    limiter: std::sync::Mutex<LoginLimiter>,
    config: std::sync::Mutex<Config>,
    /// One reload at a time (a reload may wait on the IdPs' discovery).
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts").finish_non_exhaustive()
    }
}

/// The forwarder for `config`'s routes: pools, timeouts, the client certificate.
fn forwarder(
    config: &Config,
    tunnels: &crate::tunnels::Tunnels,
    cores: usize,
) -> Result<Forwarder, StartupError> {
    let mut forwarder = Forwarder::new(
        &config.upstream,
        &config.server,
        &config.cookie,
        config.csrf.header.clone(),
        tunnels.clone(),
        cores,
    );
    if let Some(cert) = config
        .oidc
        .client_cert
        .as_ref()
        .filter(|_| config.routes.iter().any(|r| r.upstream_client_cert))
    {
        forwarder = forwarder
            .with_client_cert(&config.upstream, cert)
            .map_err(StartupError::Tls)?;
    }
    Ok(forwarder)
}

/// What a reload may not change: each differing setting, named (a restart applies it).
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut same = |key: &str, a: String, b: String| {
        if a != b {
            out.push(format!(
                "{key}: changed; it takes a restart (a reload keeps the running value)"
            ));
        }
    };
    // What only the router reads from [server] is reloaded: the login rate limit and the
    // trusted proxies. The rest (listener, limits the connections are served with) is not.
    let mut new_server = new.server.clone();
    new_server.login_rate_limit = old.server.login_rate_limit;
    new_server.login_rate_burst = old.server.login_rate_burst;
    new_server
        .trusted_proxies
        .clone_from(&old.server.trusted_proxies);
    same(
        "server",
        format!("{:?}", old.server),
        format!("{new_server:?}"),
    );
    same(
        "admin.listen",
        format!("{:?}", old.admin.listen),
        format!("{:?}", new.admin.listen),
    );
    same(
        "store",
        format!("{:?}", old.store),
        format!("{:?}", new.store),
    );
    same(
        "session",
        format!("{:?}", old.session),
        format!("{:?}", new.session),
    );
    same(
        "cookie",
        format!("{:?}", old.cookie),
        format!("{:?}", new.cookie),
    );
    // `log.level` is reloaded; the format and the audit file are not.
    let mut new_log = new.log.clone();
    new_log.level.clone_from(&old.log.level);
    same("log", format!("{:?}", old.log), format!("{new_log:?}"));
    same(
        "telemetry",
        format!("{:?}", old.telemetry),
        format!("{:?}", new.telemetry),
    );
    same(
        "reload.watch",
        format!("{:?}", old.reload),
        format!("{:?}", new.reload),
    );
    out
}

/// Whether the identity providers must be discovered again: their settings or secrets changed,
/// or the routes' resources a login asks for.
fn providers_changed(old: &Config, new: &Config) -> bool {
    let view = |c: &Config| {
        let providers: Vec<String> = c
            .oidc
            .all()
            .map(|p| format!("{p:?}|{}", secrets_fingerprint(p)))
            .collect();
        (
            providers,
            crate::config::login_resources(&c.routes),
            c.oidc.default_provider.clone(),
        )
    };
    view(old) != view(new)
}

/// A digest of a provider's secrets (which `Debug` redacts): a reload that re-read a rotated
/// `CLOAKROOM_OIDC_CLIENT_SECRET_FILE` or key sees the change.
fn secrets_fingerprint(p: &crate::config::OidcConfig) -> String {
    let keys: Vec<String> = p
        .client_keys
        .iter()
        .map(|k| k.public_jwk(None).to_string())
        .collect();
    crate::crypto::hash(&format!(
        "{}|{}|{}",
        p.client_secret.expose(),
        keys.join(","),
        p.client_cert.as_ref().map_or("", |c| c.thumbprint())
    ))
}

/// Discovers every provider of `config` (`[oidc]` first), each asking at login for the
/// resources of the routes that take its sessions.
async fn discover_providers(
    config: &Config,
    clock: &Clock,
) -> Result<(Arc<OidcClient>, Vec<Arc<OidcClient>>), StartupError> {
    let mut clients = Vec::new();
    for (i, p) in config.oidc.all().enumerate() {
        let redirect = crate::oidc::redirect_uri(config, p)?;
        let recorded = (i > 0).then_some(p.name.as_str());
        let (resources, resource_scopes) =
            crate::config::login_resources_for(&config.routes, recorded);
        clients.push(Arc::new(
            OidcClient::discover(p, redirect.clone())
                .await?
                .with_clock(clock.clone())
                .with_login_resources(resources, resource_scopes),
        ));
    }
    let mut clients = clients.into_iter();
    let primary = clients.next().ok_or_else(|| StartupError::Discovery {
        issuer: config.oidc.issuer_id.clone(),
        reason: "no provider".into(),
    })?;
    Ok((primary, clients.collect()))
}

/// What the caller provides instead of the defaults: listeners it bound (tests bind port 0
/// first so the IdP knows our address) and the clock (tests advance it).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Public listener; `None` binds `server.listen`.
    pub public: Option<std::net::TcpListener>,
    /// Admin listener; `None` binds `admin.listen`.
    pub admin: Option<std::net::TcpListener>,
    /// The lifecycle's clock; `None` is the system clock.
    pub clock: Option<Clock>,
}

/// A running Cloakroom.
#[derive(Debug)]
pub struct RunningApp {
    /// Where the public listener is bound.
    pub public_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The per-core runtimes serving the public listener; stopped once the drain is over (or
    /// when the app is dropped).
    cores: crate::cores::Cores,
    tunnels: crate::tunnels::Tunnels,
    drain: std::time::Duration,
    drain_deadline: std::sync::OnceLock<tokio::time::Instant>,
    /// `POST /admin/reload` requests, for whoever runs the process to serve
    /// ([`RunningApp::reload_requests`]).
    reloads: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::admin::ReloadReply>>>,
    /// Keeps the stages alive (the tunnel sweep holds only a weak reference) until the app is
    /// dropped.
    _state: Arc<AppState>,
}

impl RunningApp {
    /// Stops accepting, drains in-flight requests (bounded), and returns when both listeners
    /// are done.
    pub async fn shutdown(self) {
        self.trigger();
        self.join().await;
    }

    /// Starts the shutdown: both listeners stop accepting and drain, and every tunnel and
    /// event stream drains, for at most `server.shutdown_drain`.
    pub fn trigger(&self) {
        let _ = self
            .drain_deadline
            .set(tokio::time::Instant::now() + self.drain);
        let _ = self.shutdown.send(true);
        self.tunnels.begin_drain();
    }

    /// Waits for the listeners and the tunnels to finish (after [`RunningApp::trigger`]);
    /// whatever is left at the end of the drain is closed.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        let deadline = self
            .drain_deadline
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now);
        if tokio::time::timeout_at(deadline, self.tunnels.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                tunnels = self.tunnels.live(),
                "drain time over; closing the remaining tunnels"
            );
        }
        self.tunnels.close_all();
        self.cores.stop();
    }

    /// Applies a new configuration without a restart (SIGHUP, `POST /admin/reload`): routes,
    /// upstreams and their pools, CSRF origins, the admin token, the identity providers
    /// (discovered again when `[oidc]`, `[[oidc.providers]]`, their secrets or the routes'
    /// login resources changed) and the cookie key ring (its first key seals from now on;
    /// removed keys stop opening). In-flight requests and open tunnels finish on the
    /// configuration they started with. Settings a reload cannot change (listeners, store,
    /// session lifetimes, cookie settings, log settings) must be as they are; otherwise nothing
    /// changes.
    ///
    /// # Errors
    /// Every setting that needs a restart, named; a provider's discovery failing; or the
    /// routes' TLS client failing to build. Then nothing changed.
    pub async fn reload(&self, new: Config) -> Result<(), Vec<String>> {
        let s = &self._state;
        let p = &s.parts;
        let _one = p.reloading.lock().await;
        let current = p
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let problems = needs_restart(&current, &new);
        if !problems.is_empty() {
            crate::metrics::config_reload("error");
            return Err(problems);
        }
        // Everything that can fail first; then the swap, all of it or nothing.
        let providers = if providers_changed(&current, &new) {
            match discover_providers(&new, &p.clock).await {
                Ok(found) => Some(found),
                Err(e) => {
                    crate::metrics::config_reload("error");
                    return Err(vec![format!("oidc: {e}")]);
                }
            }
        } else {
            None
        };
        let forwarder = match forwarder(&new, &self.tunnels, self.cores.len()) {
            Ok(f) => f,
            Err(e) => {
                crate::metrics::config_reload("error");
                return Err(vec![e.to_string()]);
            }
        };
        let keys_changed = current.keys.fingerprint() != new.keys.fingerprint();
        if let Some((primary, others)) = providers.as_ref() {
            p.providers
                .replace(primary.clone(), others.clone(), &new.oidc.default_provider);
        }
        // The new ring seals from now on; a record only a removed key opens stops opening.
        p.sessions.set_keys(new.keys.clone());
        let limiter = p
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reload(&new.server);
        let next = router(
            &new,
            &p.sessions,
            &p.providers,
            &p.ender,
            &p.refresher,
            &p.clock,
            forwarder,
            p.clients.clone(),
            p.reaper.clone(),
            limiter.clone(),
        );
        *p.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limiter;
        s.router.store(Arc::new(next));
        s.admin.token.store(new.admin.token.clone().map(Arc::new));
        if new.log.level != current.log.level {
            if let Err(e) = crate::telemetry::set_level(&new.log.level) {
                tracing::warn!(error = %e, "log.level not changed");
            }
        }
        tracing::info!(
            target: "audit", event = "reload",
            routes = new.routes.len(),
            providers = providers.as_ref().map_or(0, |(_, o)| o.len() + 1),
            keys_changed,
            "configuration reloaded"
        );
        crate::metrics::config_reload("ok");
        *p.config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        Ok(())
    }

    /// The `POST /admin/reload` requests, once: the process that knows the config file serves
    /// them (re-read, [`RunningApp::reload`], answer). Unserved, the endpoint answers 503.
    pub fn reload_requests(
        &self,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::admin::ReloadReply>> {
        self.reloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The registry of live tunnels and event streams.
    #[must_use]
    pub fn tunnels(&self) -> &crate::tunnels::Tunnels {
        &self.tunnels
    }
}

/// The application.
#[derive(Debug)]
pub struct App;

/// Connects the store `[store]` names.
///
/// # Errors
/// [`StartupError::Store`] when Redis cannot be reached.
pub async fn connect_store(store: &StoreConfig) -> Result<Store, StartupError> {
    Ok(match &store.kind {
        StoreKind::Memory => Store::Memory(MemoryStore::new()),
        StoreKind::Redis(topology) => Store::Redis(
            RedisStore::connect_to(
                topology,
                store.tls_ca.as_deref(),
                &store.key_prefix,
                store.timeout,
            )
            .await
            .map_err(|e| StartupError::Store(e.0))?,
        ),
    })
}

/// The listening sockets of one listener: `n` of them on `addr` sharing its port
/// (`SO_REUSEPORT`), or `n` handles on the one the caller bound.
fn bind(
    given: Option<std::net::TcpListener>,
    addr: SocketAddr,
    n: usize,
) -> Result<Vec<std::net::TcpListener>, StartupError> {
    match given {
        Some(l) => crate::cores::share(l, n),
        None => crate::cores::bind_group(addr, n),
    }
    .map_err(|source| StartupError::Bind { addr, source })
}

impl App {
    /// Starts Cloakroom on the configured addresses.
    ///
    /// # Errors
    /// See [`App::start_with`].
    pub async fn start(config: Config) -> Result<RunningApp, StartupError> {
        Self::start_with(config, Listeners::default()).await
    }

    /// Starts Cloakroom: store, OIDC discovery, upstream client, both listeners.
    ///
    /// # Errors
    /// [`StartupError`] for store, discovery or bind failures.
    pub async fn start_with(
        config: Config,
        listeners: Listeners,
    ) -> Result<RunningApp, StartupError> {
        crate::admin::prometheus();
        for w in &config.warnings {
            tracing::warn!(warning = %w, "configuration");
        }
        let clock = listeners.clock.clone().unwrap_or_default();
        let store = connect_store(&config.store).await?;
        let (primary, others) = discover_providers(&config, &clock).await?;
        let providers = Providers::new(primary.clone(), others, &config.oidc.default_provider);
        let oidc = primary;
        let sessions = Sessions::new(
            store,
            config.keys.clone(),
            config.session.idle_timeout,
            config.session.absolute_timeout,
        )
        .with_clock(clock.clone())
        .with_local_cache();
        let sessions = if config.session.end_timed_out {
            sessions.with_linger(crate::reaper::LINGER)
        } else {
            sessions
        };
        let ender = Ender::new(
            sessions.clone(),
            providers.clone(),
            crate::refresh::lease(config.oidc.timeout, config.store.timeout),
        );
        let reaper = config.session.end_timed_out.then(|| {
            crate::reaper::Reaper::new(
                sessions.clone(),
                ender.clone(),
                config
                    .session
                    .reconstitute
                    .enabled
                    .then_some(config.session.reconstitute.window),
            )
        });
        let refresh_cfg = RefreshConfig::from_config(&config);
        let clients = Arc::new(crate::client_tokens::ClientTokens::new(
            providers.clone(),
            sessions.store().clone(),
            sessions.shared_keys(),
            clock.clone(),
            refresh_cfg.skew,
            refresh_cfg.cooloff,
            refresh_cfg.lease,
        ));
        let refresher = Arc::new(
            Refresher::new(sessions.clone(), ender.clone(), clock.clone(), refresh_cfg)
                .with_client_tokens(clients.clone()),
        );
        let tunnels = crate::tunnels::Tunnels::new(config.server.tunnel_idle_timeout);
        // A session that ends — logout, admin, back-channel, re-login, a dead grant, here or
        // (through the invalidation channel) on another instance — takes its WebSocket tunnels
        // and event streams with it.
        sessions.ended_hooks().add({
            let tunnels = tunnels.clone();
            move |handle| {
                let n = tunnels.close_session(handle);
                if n > 0 {
                    tracing::info!(
                        event = "tunnels_closed",
                        session = %crate::session::short(handle),
                        count = n,
                        "the session ended; its tunnels and streams were closed"
                    );
                }
            }
        });
        let cores = crate::cores::Cores::start(crate::cores::count(config.server.workers))
            .map_err(|e| StartupError::Runtime(e.to_string()))?;
        let forwarder = forwarder(&config, &tunnels, cores.len())?;
        let tls = match &config.server.tls {
            None => None,
            Some((cert, key)) => Some(server::tls_acceptor(cert, key).map_err(StartupError::Tls)?),
        };
        let public = bind(listeners.public, config.server.listen, cores.len())?;
        let admin = bind(listeners.admin, config.admin.listen, 1)?;
        let local = |l: &[std::net::TcpListener], addr: SocketAddr| {
            l[0].local_addr()
                .map_err(|source| StartupError::Bind { addr, source })
        };
        let public_addr = local(&public, config.server.listen)?;
        let admin_addr = local(&admin, config.admin.listen)?;
        let limits = Limits::from_config(&config.server);
        let limiter = LoginLimiter::from_config(&config.server);
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let state = Arc::new(AppState {
            router: Arc::new(arc_swap::ArcSwap::from_pointee(router(
                &config,
                &sessions,
                &providers,
                &ender,
                &refresher,
                &clock,
                forwarder,
                clients.clone(),
                reaper.clone(),
                limiter.clone(),
            ))),
            admin: Arc::new(Admin {
                sessions: sessions.clone(),
                ender: ender.clone(),
                token: arc_swap::ArcSwapOption::new(config.admin.token.clone().map(Arc::new)),
                reload: reload_tx,
            }),
            parts: Parts {
                sessions: sessions.clone(),
                providers: providers.clone(),
                ender,
                refresher,
                clock,
                clients,
                reaper: reaper.clone(),
                limiter: std::sync::Mutex::new(limiter),
                config: std::sync::Mutex::new(config),
                reloading: tokio::sync::Mutex::new(()),
            },
            sessions,
            tunnels: tunnels.clone(),
        });
        spawn_tunnel_sweep(Arc::downgrade(&state));
        if let Some(r) = reaper {
            r.spawn(Arc::downgrade(&state));
        }
        let (tx, rx) = watch::channel(false);
        let router = state.router.clone();
        // One accept loop per core, each on its own socket; the admin listener on this runtime.
        let public = public
            .into_iter()
            .enumerate()
            .map(|(i, l)| (Some(cores.handle(i).clone()), l))
            .collect();
        let admin = admin.into_iter().map(|l| (None, l)).collect();
        let public_task = tokio::spawn(server::serve(
            public,
            limits,
            tls,
            // The router in force when the request came: a reload never changes a request
            // midway.
            move |req, peer| crate::routes::handle(router.load_full(), req, peer),
            rx.clone(),
        ));
        let admin_state = state.admin.clone();
        let admin_task = tokio::spawn(server::serve(
            admin,
            limits,
            None,
            move |req, _peer| crate::admin::handle(admin_state.clone(), req),
            rx,
        ));
        tracing::info!(
            %public_addr,
            %admin_addr,
            issuer = %oidc.issuer(),
            providers = providers.len(),
            workers = cores.len(),
            "cloakroom listening"
        );
        Ok(RunningApp {
            public_addr,
            admin_addr,
            shutdown: tx,
            tasks: vec![public_task, admin_task],
            cores,
            tunnels,
            drain: limits.drain,
            drain_deadline: std::sync::OnceLock::new(),
            reloads: std::sync::Mutex::new(Some(reload_rx)),
            _state: state,
        })
    }
}

/// The public service's stages, each given what it uses.
#[allow(clippy::too_many_arguments)]
fn router(
    config: &Config,
    sessions: &Sessions,
    providers: &Providers,
    ender: &Ender,
    refresher: &Arc<Refresher>,
    clock: &Clock,
    forwarder: Forwarder,
    clients: Arc<crate::client_tokens::ClientTokens>,
    reaper: Option<crate::reaper::Reaper>,
    limiter: LoginLimiter,
) -> Router {
    let cookies = Arc::new(Cookies::new(
        &config.cookie,
        config.keys.clone(),
        config.session.absolute_timeout,
    ));
    let origins = Arc::new(Origins::new(&config.server.public_origin, &config.csrf));
    let loader = SessionLoader::new(
        sessions.clone(),
        cookies.clone(),
        clock.clone(),
        config.session.idle_timeout,
        providers.clone(),
    );
    // Route labels live as long as the process (the metrics keep them too): one copy per
    // distinct prefix, however often a reload rebuilds the router.
    let labels = config
        .routes
        .iter()
        .map(|r| route_label(&r.prefix))
        .collect();
    Router {
        trust_incoming_trace: config.telemetry.trust_incoming_trace,
        auth_prefix: config.server.auth_prefix.clone(),
        client_ip: ClientIp::new(&config.server.trusted_proxies),
        origins: origins.clone(),
        cookies: cookies.clone(),
        auth: Endpoints {
            login: Login {
                limiter: limiter.clone(),
                providers: providers.clone(),
                cookies: cookies.clone(),
                clock: clock.clone(),
                remember_enabled: config.session.remember.enabled,
            },
            callback: Callback {
                limiter,
                cookies: cookies.clone(),
                providers: providers.clone(),
                sessions: sessions.clone(),
                ender: ender.clone(),
                clock: clock.clone(),
                absolute_timeout: config.session.absolute_timeout,
                remember: config.session.remember,
                // Re-constitution at login only with `session.reconstitute`.
                reaper: reaper.filter(|_| config.session.reconstitute.enabled),
            },
            user: User {
                origins: origins.clone(),
                loader: loader.clone(),
                idle_timeout: sessions.idle_timeout(),
                clock: clock.clone(),
                primary_provider: config.oidc.name.clone(),
            },
            logout: Logout {
                origins: origins.clone(),
                loader: loader.clone(),
                ender: ender.clone(),
                providers: providers.clone(),
                cookies: cookies.clone(),
                sessions: sessions.clone(),
            },
            devices: crate::auth::Devices {
                origins: origins.clone(),
                loader: loader.clone(),
                sessions: sessions.clone(),
                ender: ender.clone(),
                cookies,
            },
            backchannel: Backchannel {
                providers: providers.clone(),
                sessions: sessions.clone(),
                ender: ender.clone(),
                clock_skew: config.oidc.clock_skew,
            },
        },
        api: Api {
            routes: config.routes.clone(),
            labels,
            origins,
            loader,
            refresher: refresher.clone(),
            clients,
            auth_prefix: config.server.auth_prefix.clone(),
            upstream: Arc::new(forwarder),
        },
    }
}

/// The metric label of a route prefix, for the life of the process: the one copy of it, made
/// the first time the prefix is seen. A reload that keeps its routes allocates nothing here;
/// one that adds a prefix adds that prefix once (as the metrics recorder does for its series).
fn route_label(prefix: &str) -> &'static str {
    static LABELS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    let mut labels = LABELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(l) = labels.get(prefix) {
        return l;
    }
    let l: &'static str = String::leak(prefix.to_string());
    labels.insert(l);
    l
}

/// A session that just expires (idle or absolute timeout: Redis removes it, nobody ends it) or
/// is ended where no invalidation message reaches this instance (Sentinel, Cluster) is noticed
/// here: every [`TUNNEL_SWEEP`], each session with open streams is looked up, and the streams
/// of a missing one are cut. Runs until the app is dropped.
fn spawn_tunnel_sweep(state: std::sync::Weak<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TUNNEL_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            for handle in state.tunnels.sessions() {
                if let Ok(crate::session::Loaded::Missing) =
                    state.sessions.load_record(&handle).await
                {
                    let n = state.tunnels.close_session(&handle);
                    tracing::info!(
                        event = "tunnels_closed",
                        session = %crate::session::short(&handle),
                        count = n,
                        "the session is gone; its tunnels and streams were closed"
                    );
                }
            }
        }
    });
}

/// How often sessions with open tunnels are checked (see `spawn_tunnel_sweep`).
pub const TUNNEL_SWEEP: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str, keys: &str) -> Config {
        let mut env = crate::config::Env::new();
        env.insert("CLOAKROOM_OIDC_CLIENT_SECRET".into(), "s".into());
        env.insert("CLOAKROOM_COOKIE_KEYS".into(), keys.into());
        Config::from_toml(
            &format!(
                "[server]\npublic_url = \"https://app.example\"\n{server}\n[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\n"
            ),
            &env,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn route_labels_are_made_once_per_prefix() {
        let a = route_label("/issue-30/a/");
        let b = route_label(&String::from("/issue-30/a/"));
        assert!(std::ptr::eq(a, b), "the same prefix, the same label");
        assert_eq!(route_label("/issue-30/b/"), "/issue-30/b/");
    }

    #[test]
    fn a_reload_takes_rate_limits_proxies_providers_and_keys_but_not_listener_limits() {
        let k1 = crate::crypto::KeyRing::generate_entry(1);
        let k2 = crate::crypto::KeyRing::generate_entry(2);
        let old = config("", &k1);
        let new = config(
            "login_rate_limit = 7\nlogin_rate_burst = 9\ntrusted_proxies = [\"10.0.0.1\"]",
            &format!("{k2},{k1}"),
        );
        assert!(
            needs_restart(&old, &new).is_empty(),
            "{:?}",
            needs_restart(&old, &new)
        );
        let limits = config("max_connections = 3", &k1);
        assert_eq!(
            needs_restart(&old, &limits),
            ["server: changed; it takes a restart (a reload keeps the running value)"]
        );
        let mut other_idp = old.clone();
        other_idp.oidc.client_id = "d".into();
        assert!(providers_changed(&old, &other_idp));
        let mut other_secret = old.clone();
        other_secret.oidc.client_secret = crate::secret::Secret::new("t");
        assert!(
            providers_changed(&old, &other_secret),
            "a secret read from its _FILE"
        );
        assert!(!providers_changed(&old, &old.clone()));
    }
}

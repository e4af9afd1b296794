//! The `cloakroom` binary: parse the CLI, load the config, start, wait for a signal.

use clap::{Parser, Subcommand};
use cloakroom::config::{Config, Env};
use cloakroom::crypto::KeyRing;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "cloakroom",
    version,
    about = "A backend-for-frontend token-handler proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the default).
    Run {
        /// Config file.
        #[arg(long, short, env = "CLOAKROOM_CONFIG", default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validate the config, reach the store and the IdP, report, exit.
    Check {
        /// Config file.
        #[arg(long, short, env = "CLOAKROOM_CONFIG", default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validate the config, then ask the running instance to reload it (`POST /admin/reload`
    /// on `admin.listen`, with CLOAKROOM_ADMIN_TOKEN); exits 0 when it did.
    Reload {
        /// Config file.
        #[arg(long, short, env = "CLOAKROOM_CONFIG", default_value = "config.toml")]
        config: PathBuf,
    },
    /// Print a new random key-ring entry for CLOAKROOM_COOKIE_KEYS, or with --client-key a
    /// private key for private_key_jwt (PEM, for CLOAKROOM_OIDC_CLIENT_KEY) followed by its
    /// public JWK set to register at the IdP.
    Keygen {
        /// Key id (1-255); use a new one for each rotation.
        #[arg(long, default_value_t = 1)]
        id: u8,
        /// A client key for `oidc.client_auth_method = "private_key_jwt"` instead.
        #[arg(long)]
        client_key: bool,
        /// The client key's type: `ec` (P-256, ES256) or `ed25519` (EdDSA).
        #[arg(long, default_value = "ec", requires = "client_key")]
        key_type: String,
    },
}

/// A new private key of `key_type` in PEM, then its public JWK set (what the IdP registers;
/// text outside the PEM block is ignored when the key is read back).
fn client_key(key_type: &str) -> Result<String, String> {
    let kind = match key_type {
        "ec" => cloakroom::oidc::KeyKind::P256,
        "ed25519" => cloakroom::oidc::KeyKind::Ed25519,
        o => return Err(format!("--key-type: `{o}` must be ec or ed25519")),
    };
    let pem = cloakroom::oidc::ClientKey::generate_pem(kind)?;
    let key = cloakroom::oidc::ClientKey::parse_all(&pem)?;
    let jwks = serde_json::json!({ "keys": [key[0].public_jwk(None)] });
    Ok(format!(
        "{pem}\nThe public JWK set to register at the IdP (jwks), kid = RFC 7638 thumbprint:\n{jwks}\n"
    ))
}

fn env() -> Env {
    std::env::vars().collect()
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path, &env()).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run {
        config: std::env::var_os("CLOAKROOM_CONFIG")
            .map_or_else(|| PathBuf::from("config.toml"), PathBuf::from),
    });
    match command {
        Command::Keygen {
            client_key: true,
            key_type,
            ..
        } => match client_key(&key_type) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("{why}");
                ExitCode::from(2)
            }
        },
        Command::Keygen { id, .. } => {
            if id == 0 {
                eprintln!("--id: must be from 1 to 255");
                return ExitCode::from(2);
            }
            println!("{}", KeyRing::generate_entry(id));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match load(&config) {
            Err(code) => code,
            Ok(c) => runtime().block_on(check(c)),
        },
        Command::Reload { config } => match load(&config) {
            Err(code) => code,
            Ok(c) => runtime().block_on(reload(c)),
        },
        Command::Run { config } => match load(&config) {
            Err(code) => code,
            Ok(c) => runtime().block_on(run(&config, c)),
        },
    }
}

/// The control runtime, on the main thread: the admin listener, the store's connections, the
/// invalidation subscriber, the reaper, signals and reloads. The public listener is served by
/// the per-core runtimes `App::start` starts beside it ([`cloakroom::cores`]).
fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn check(config: Config) -> ExitCode {
    println!("config: ok");
    for w in &config.warnings {
        println!("config: warning: {w}");
    }
    let mut ok = true;
    match cloakroom::app::connect_store(&config.store).await {
        Ok(store) => match store.ping().await {
            Ok(()) => println!("store: ok"),
            Err(e) => {
                ok = false;
                println!("store: FAILED ({e})");
            }
        },
        Err(e) => {
            ok = false;
            println!("store: FAILED ({e})");
        }
    }
    let several = !config.oidc.providers.is_empty();
    for p in config.oidc.all() {
        // With several providers each report is named: "idp [name]: ...".
        let label = if several {
            format!(" [{}]", p.name)
        } else {
            String::new()
        };
        let redirect = cloakroom::oidc::redirect_uri(&config, p);
        if !check_provider(p, &label, redirect.as_ref()).await {
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// What `cloakroom check` says of one provider: what its discovery advertises against what its
/// configuration needs, then whether the client can be built from it. False when it cannot.
async fn check_provider(
    p: &cloakroom::config::OidcConfig,
    label: &str,
    redirect: Result<&url::Url, &cloakroom::error::StartupError>,
) -> bool {
    let mut ok = true;
    match cloakroom::oidc::capability_report(p).await {
        Ok(lines) => {
            println!("idp{label} capabilities ({}):", p.issuer_id);
            for l in &lines {
                println!("  {l}");
            }
            if lines.iter().any(|l| l.verdict == "MISSING") {
                ok = false;
            }
        }
        Err(e) => println!("idp{label} capabilities: not read ({e})"),
    }
    let discovered = match redirect {
        Ok(redirect) => cloakroom::oidc::OidcClient::discover(p, redirect.clone())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match discovered {
        Ok(o) => {
            println!(
                "idp{label}: ok (issuer {}; client authentication {}; PAR {}; DPoP {})",
                o.issuer(),
                o.client_auth_summary(),
                if o.uses_par() { "on" } else { "off" },
                if o.uses_dpop() { "on (ES256)" } else { "off" }
            );
            if let Some(c) = o.client_cert_summary() {
                println!("client certificate{label}: {c}");
            }
            if o.is_fapi2() {
                println!(
                    "profile: fapi2, every requirement met (PAR, PKCE S256, private_key_jwt with the issuer as audience or mTLS client authentication, DPoP- or certificate-bound tokens, RFC 9207 iss required, ID tokens PS256/ES256/EdDSA, clock skew <= 10s)"
                );
            }
        }
        Err(e) => {
            ok = false;
            println!("idp{label}: FAILED ({e})");
        }
    }
    ok
}

async fn run(path: &std::path::Path, config: Config) -> ExitCode {
    let watch = config.reload.watch;
    if let Err(e) = cloakroom::telemetry::init(&config.log, &config.telemetry) {
        eprintln!("start-up failed: {e}");
        return ExitCode::from(1);
    }
    let app = match cloakroom::App::start(config).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            cloakroom::trace::shutdown().await;
            cloakroom::telemetry::flush();
            eprintln!("start-up failed: {e}");
            return ExitCode::from(1);
        }
    };
    // SIGHUP reloads the configuration (re-read, validated whole, applied or refused whole);
    // SIGTERM or Ctrl-C stops.
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut requests = app.reload_requests();
    let mut changed = watch.then(|| watch_file(path.to_path_buf()));
    loop {
        #[cfg(unix)]
        let reload = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let reload = std::future::pending::<()>();
        let asked = async {
            match requests.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        let edited = async {
            match changed.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cloakroom::server::wait_for_signal() => break,
            Some(()) = edited => {
                tracing::info!(path = %path.display(), "the config file changed; reloading");
                let _ = reload_from(path, &app).await;
            }
            () = reload => {
                let _ = reload_from(path, &app).await;
            }
            Some(reply) = asked => {
                let _ = reply.send(reload_from(path, &app).await);
            }
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    app.shutdown().await;
    tracing::info!("stopped");
    cloakroom::trace::shutdown().await;
    cloakroom::telemetry::flush();
    ExitCode::SUCCESS
}

/// Re-reads `path` and the environment and applies the result, or logs every problem and
/// changes nothing.
async fn reload_from(
    path: &std::path::Path,
    app: &cloakroom::app::RunningApp,
) -> Result<(), Vec<String>> {
    let problems = match Config::load(path, &env()) {
        Ok(config) => match app.reload(config).await {
            Ok(()) => return Ok(()),
            Err(p) => p,
        },
        Err(e) => {
            cloakroom::metrics::config_reload("error");
            e.0
        }
    };
    tracing::error!(
        event = "reload_failed",
        problems = %problems.join("; "),
        "configuration reload refused; nothing changed"
    );
    Err(problems)
}

/// `reload.watch`: a message whenever `path` changes (its modification time, size or, for a
/// Kubernetes ConfigMap's symlink swap, the file it resolves to), looked at every 2 s.
fn watch_file(path: std::path::PathBuf) -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stamp = |p: &std::path::Path| {
        let real = std::fs::canonicalize(p).ok();
        let meta = std::fs::metadata(p).ok();
        (
            real,
            meta.as_ref().and_then(|m| m.modified().ok()),
            meta.map(|m| m.len()),
        )
    };
    tokio::spawn(async move {
        let mut last = stamp(&path);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now != last {
                last = now;
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// `cloakroom reload`: the file is valid here, then the running instance is asked.
async fn reload(config: Config) -> ExitCode {
    let Some(token) = config.admin.token.as_ref() else {
        eprintln!("reload: CLOAKROOM_ADMIN_TOKEN is not set (the admin API is off)");
        return ExitCode::from(2);
    };
    let mut addr = config.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let answer = reqwest::Client::new()
        .post(format!("http://{addr}/admin/reload"))
        .bearer_auth(token.expose())
        .timeout(std::time::Duration::from_secs(40))
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => {
            println!("reload: ok");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            println!("reload: refused ({status})");
            for p in body["problems"].as_array().into_iter().flatten() {
                println!("  {}", p.as_str().unwrap_or_default());
            }
            ExitCode::from(1)
        }
        Err(e) => {
            println!("reload: the instance at {addr} did not answer ({e})");
            ExitCode::from(1)
        }
    }
}

/// mimalloc, measured against the system allocator in `scripts/bench` (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Print a new random key-ring entry for CLOAKROOM_COOKIE_KEYS.
    Keygen {
        /// Key id (1-255); use a new one for each rotation.
        #[arg(long, default_value_t = 1)]
        id: u8,
    },
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
        Command::Keygen { id } => {
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
        Command::Run { config } => match load(&config) {
            Err(code) => code,
            Ok(c) => runtime().block_on(run(c)),
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
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
    let discovered = match cloakroom::oidc::redirect_uri(&config) {
        Ok(redirect) => cloakroom::oidc::OidcClient::discover(&config.oidc, redirect).await,
        Err(e) => Err(e),
    };
    match discovered {
        Ok(o) => println!("idp: ok (issuer {})", o.issuer()),
        Err(e) => {
            ok = false;
            println!("idp: FAILED ({e})");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn run(config: Config) -> ExitCode {
    cloakroom::telemetry::init(&config.log);
    let app = match cloakroom::App::start(config).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            cloakroom::telemetry::flush();
            eprintln!("start-up failed: {e}");
            return ExitCode::from(1);
        }
    };
    cloakroom::server::wait_for_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    app.shutdown().await;
    tracing::info!("stopped");
    cloakroom::telemetry::flush();
    ExitCode::SUCCESS
}

/// mimalloc, measured against the system allocator in `scripts/bench` (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

//! The `cloakroom-demo` binary: a development IdP, a demo API and SPA, and Cloakroom, on
//! loopback. `cargo run --release -p cloakroom-demo`, then open <http://localhost:8080/>.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "cloakroom-demo",
    version,
    about = "Run the whole story on localhost: a development IdP, a demo API and SPA, and Cloakroom"
)]
struct Cli {
    /// Cloakroom's port; open http://localhost:PORT/.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Keep sessions in this Redis (redis://…) instead of memory.
    #[arg(long)]
    redis: Option<String>,
    /// How Cloakroom authenticates to the development IdP: `secret` (client_secret_basic) or
    /// `private_key_jwt` (a key made at start-up and registered at the IdP).
    #[arg(long, default_value = "secret", value_parser = ["secret", "private_key_jwt"])]
    client_auth: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(demo(cli))
}

async fn demo(cli: Cli) -> ExitCode {
    cloakroom_demo::init_logging();
    let opts = cloakroom_demo::DemoOptions {
        port: cli.port,
        redis: cli.redis,
        client_auth: if cli.client_auth == "private_key_jwt" {
            cloakroom_demo::DemoClientAuth::PrivateKeyJwt
        } else {
            cloakroom_demo::DemoClientAuth::Secret
        },
        ..Default::default()
    };
    let demo = match cloakroom_demo::start(opts).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("the demo did not start: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{}", demo.banner());
    cloakroom::server::wait_for_signal().await;
    tracing::info!("shutting down the demo");
    demo.shutdown().await;
    ExitCode::SUCCESS
}

//! The `cloakroom-demo` binary: two development IdPs (the Demo IdP and the Partner IdP), a
//! demo API and SPA, and Cloakroom, on loopback. `cargo run --release -p cloakroom-demo`, then open <http://localhost:8080/>.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "cloakroom-demo",
    version,
    about = "Run the whole story on localhost: two development IdPs, a demo API and SPA, and Cloakroom"
)]
struct Cli {
    /// Cloakroom's port; open http://localhost:PORT/.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Keep sessions in this Redis (redis://…) instead of memory.
    #[arg(long)]
    redis: Option<String>,
    /// How Cloakroom authenticates to the Demo IdP: `secret` (client_secret_basic) or
    /// `private_key_jwt` (a key made at start-up and registered at the IdP). The Partner IdP
    /// always takes a secret of its own (client_secret_post).
    #[arg(long, default_value = "secret", value_parser = ["secret", "private_key_jwt"])]
    client_auth: String,
    /// How recent a login the demo's "sensitive action" (`/api/sensitive`) needs: older logins
    /// are asked to sign in again (step-up, the route's `max_age`). Seconds, or with a unit:
    /// `90s`, `5m`, `1h`.
    #[arg(long, default_value = "5m", value_parser = parse_max_age)]
    sensitive_max_age: std::time::Duration,
}

/// `300`, `300s`, `5m` or `1h`: at least one second.
fn parse_max_age(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}`: a whole number of seconds, or with s, m or h"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => return Err(format!("`{s}`: the unit must be s, m or h")),
    }
    .ok_or_else(|| format!("`{s}` is too long"))?;
    if secs == 0 {
        return Err("it must be at least one second".into());
    }
    Ok(std::time::Duration::from_secs(secs))
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
        sensitive_max_age: cli.sensitive_max_age,
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

#[cfg(test)]
mod tests {
    use super::parse_max_age;
    use std::time::Duration;

    #[test]
    fn sensitive_max_age_takes_seconds_minutes_and_hours() {
        assert_eq!(parse_max_age("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_max_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_max_age("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_max_age("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["0", "0m", "", "m", "-1", "1.5m", "5 min", "1d"] {
            assert!(parse_max_age(bad).is_err(), "{bad}");
        }
    }
}

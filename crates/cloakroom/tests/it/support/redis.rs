//! A real `redis-server` per test on a free port, `--save ""`, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

/// A free port whose cluster bus port (port + 10000, which Redis Cluster also listens on) is
/// free too.
pub(crate) fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A port that is free now, for a server the test starts as another process (Redis, the IdP,
/// the `cloakroom` binary), which binds it a moment later.
///
/// It comes from below the kernel's ephemeral range (`ip_local_port_range`), never from
/// `bind(0)`: a port from that range can be taken, between this check and the server's bind, by
/// any outgoing connection another test opens (a CI run lost the IdP that way). Candidates are
/// walked from a per-process offset so that parallel tests do not pick the same one, and the
/// highest is 10000 below the range so that a cluster node's bus port is outside it too.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 11000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let span = ephemeral_low
        .saturating_sub(10000)
        .saturating_sub(LOW)
        .max(1000);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + span)
}

fn redis_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `--appendonly yes`,
    /// `--cluster-enabled yes`, `--replicaof 127.0.0.1 6379`).
    pub(crate) fn start_with(extra: &[&str]) -> Self {
        let port = if extra.contains(&"--cluster-enabled") {
            free_cluster_port()
        } else {
            free_port()
        };
        let dir = std::env::temp_dir().join(format!("cloakroom-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut s = Self {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// A TLS-only server on `port` (readiness is checked by connecting, since PING needs TLS).
    pub(crate) fn start_tls(port: u16, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("cloakroom-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let child = Command::new(redis_bin())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "TLS redis-server did not listen (is it built with TLS?)"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Self {
            port,
            child: Some(child),
            dir,
            extra: Vec::new(),
        }
    }

    /// A sentinel monitoring `master_port` as `mymaster` (quorum 2).
    pub(crate) fn sentinel(master_port: u16) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cloakroom-sentinel-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n"
            ),
        )
        .expect("sentinel.conf");
        let mut s = Self {
            port,
            child: None,
            dir,
            extra: vec!["--sentinel".into()],
        };
        s.spawn_with_conf(Some(conf));
        s
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        self.spawn_with_conf(None);
    }

    fn spawn_with_conf(&mut self, conf: Option<std::path::PathBuf>) {
        let mut cmd = Command::new(redis_bin());
        if let Some(c) = &conf {
            cmd.arg(c);
        }
        let base: Vec<String> = if conf.is_some() {
            Vec::new()
        } else {
            [
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::once(self.dir.display().to_string()))
            .collect()
        };
        let child = cmd
            .args(base)
            .args(&self.extra)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}). The integration tests need it: \
                     `apt-get install redis-server` (or set REDIS_SERVER_BIN)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Runs a command through a plain RESP connection (no redis-cli needed); returns the raw reply.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        cli_at(self.port, args)
    }

    /// Calls of `command` this server has served (`INFO commandstats`).
    pub(crate) fn calls(&self, command: &str) -> u64 {
        calls_at(self.port, command)
    }

    /// As [`Self::cli`], the reply's values alone, one a line: bulk and integer replies
    /// without their RESP headers.
    pub(crate) fn values(&self, args: &[&str]) -> Vec<String> {
        self.cli(args)
            .lines()
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
            .map(|l| l.trim_start_matches(':').to_string())
            .collect()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// [`RedisServer::cli`] for the server on `port`.
pub(crate) fn cli_at(port: u16, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    if s.write_all(cmd.as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = vec![0u8; 1 << 16];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.trim_start_matches('+').to_string()
}

/// Calls of `command` the server on `port` has served (`INFO commandstats`).
pub(crate) fn calls_at(port: u16, command: &str) -> u64 {
    cli_at(port, &["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

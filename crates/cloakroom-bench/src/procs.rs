//! The processes a benchmark run needs, each on a free loopback port and killed on drop:
//! `redis-server`, the test IdP (`tests/idp`, npm oidc-provider) and the real `cloakroom`
//! binary; plus the per-process measurements (CPU time, peak RSS, Redis command counts).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that is free now, for a server the bench starts as another process, which binds it a
/// moment later. It comes from below the kernel's ephemeral range (`ip_local_port_range`), never
/// from `bind(0)`: a port from that range can be taken by any outgoing connection (wrk opens
/// hundreds) between this check and the server's bind. The highest is 10000 below the range so
/// that a Redis Cluster node's bus port (+10000) is outside it too.
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

fn wait_listening(port: u16, what: &str, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not listen on port {port}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`, usually 100).
pub(crate) fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The fields of `/proc/<pid>/stat` after the command name: index 0 is field 3 (state).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    // The state is a letter; every field used here is a number.
    Some(
        after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime of a whole process (all threads), in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_split(pid).map(|(u, k)| u + k)
}

/// (utime, stime) of a whole process (all threads), in seconds: user and kernel time.
pub(crate) fn cpu_split(pid: u32) -> Option<(f64, f64)> {
    let f = stat_fields(pid)?;
    // utime is field 14, stime field 15.
    let tck = clk_tck();
    Some((*f.get(11)? as f64 / tck, *f.get(12)? as f64 / tck))
}

/// Every live descendant of `root` (children, their children, …), from `/proc/*/stat`.
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // Field 4 (ppid) is index 1.
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).copied()) {
                children
                    .entry(u32::try_from(ppid).unwrap_or(0))
                    .or_default()
                    .push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map_or(&[][..], Vec::as_slice) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// (user, kernel) CPU seconds of the process tree under `root`: the root and every live
/// descendant (all threads), plus what their children that have exited and been reaped used
/// (`cutime`, `cstime`), so a worker process replaced during a run still counts.
pub(crate) fn tree_cpu(root: u32) -> Option<(f64, f64)> {
    let tck = clk_tck();
    let mut user = 0u64;
    let mut kernel = 0u64;
    let root_fields = stat_fields(root)?;
    for f in
        std::iter::once(Some(root_fields)).chain(descendants(root).into_iter().map(stat_fields))
    {
        let Some(f) = f else { continue };
        // utime, stime, cutime, cstime: fields 14–17.
        user += f.get(11).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0);
        kernel += f.get(12).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0);
    }
    Some((user as f64 / tck, kernel as f64 / tck))
}

/// Whole-machine CPU counters from `/proc/stat`: (busy, steal, total) in ticks.
pub(crate) fn machine_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, *v.get(7)?, total))
}

/// A `/proc/<pid>/status` value in KiB (`VmHWM`, `VmRSS`).
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

/// Resets the peak RSS (`VmHWM`) of a process to its current RSS (`echo 5 > clear_refs`).
pub(crate) fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

// ---------------------------------------------------------------------------------------------

pub(crate) struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub(crate) fn start(dir: &Path) -> Result<Self, String> {
        Self::start_in(&dir.join("redis"), &[])
    }

    /// A Sentinel (in `dir`) watching the master on `master_port` as `mymaster`, quorum 1.
    pub(crate) fn sentinel(dir: &Path, master_port: u16) -> Result<Self, String> {
        let port = free_port();
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n",
                dir.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let child =
            Command::new(std::env::var("REDIS_SERVER_BIN").unwrap_or("redis-server".into()))
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start redis-server --sentinel ({e})"))?;
        let r = Self {
            port,
            child: Some(child),
        };
        r.answering("the sentinel")
    }

    /// A server with its files in `dir` and extra `redis-server` arguments.
    pub(crate) fn start_in(dir: &Path, extra: &[&str]) -> Result<Self, String> {
        // A cluster node also listens on port + 10000 (its bus): that must exist and be free.
        let port = loop {
            let p = free_port();
            if !extra.contains(&"--cluster-enabled")
                || (std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok())
            {
                break p;
            }
        };
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let child =
            Command::new(std::env::var("REDIS_SERVER_BIN").unwrap_or("redis-server".into()))
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "no", "--dir"])
                .arg(dir)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!("cannot start redis-server ({e}); apt-get install redis-server")
                })?;
        let r = Self {
            port,
            child: Some(child),
        };
        r.answering("redis-server")
    }

    /// Waits (at most 10 s) until the server answers `PING`.
    fn answering(self, what: &str) -> Result<Self, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cmd(&["PING"]).trim() != "+PONG" {
            if Instant::now() > deadline {
                return Err(format!("{what} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(self)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command over a plain RESP connection; the raw reply (bulk replies read to the end).
    pub(crate) fn cmd(&self, args: &[&str]) -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        if s.write_all(out.as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1 << 16];
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                continue;
            };
            if buf[0] != b'$' {
                break; // a one-line reply
            }
            // A bulk reply `$<len>\r\n<data>\r\n`: stop once all of it is here.
            let len: i64 = String::from_utf8_lossy(&buf[1..eol]).parse().unwrap_or(-1);
            if len < 0 || buf.len() >= eol + 2 + usize::try_from(len).unwrap_or(0) + 2 {
                break;
            }
        }
        String::from_utf8_lossy(&buf).to_string()
    }

    /// `INFO <section>` as key → value.
    pub(crate) fn info(&self, section: &str) -> BTreeMap<String, String> {
        self.cmd(&["INFO", section])
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    /// Calls per command since start (`INFO commandstats`), without the benchmark's own INFO.
    pub(crate) fn command_calls(&self) -> BTreeMap<String, u64> {
        self.info("commandstats")
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("cmdstat_")?.to_string();
                let calls = v
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                (name != "info").then_some((name, calls))
            })
            .collect()
    }

    /// Redis' own CPU time (user + sys), seconds.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        let i = self.info("cpu");
        let g = |k: &str| i.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        g("used_cpu_user") + g("used_cpu_sys")
    }

    pub(crate) fn version(&self) -> String {
        self.info("server")
            .get("redis_version")
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------------

pub(crate) struct Idp {
    pub issuer: String,
    /// Where the `/test/*` controls are: the issuer, or the IdP itself when `config` names its
    /// `port` and an `issuer` in front of it (a proxy).
    control: String,
    child: Option<Child>,
}

impl Idp {
    /// Starts `tests/idp/server.js` (running `npm ci` there first when needed).
    pub(crate) fn start(
        repo: &Path,
        dir: &Path,
        config: &serde_json::Value,
    ) -> Result<Self, String> {
        let idp_dir = repo.join("tests/idp");
        if !idp_dir.join("node_modules/oidc-provider").exists() {
            let ok = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&idp_dir)
                .status()
                .map_err(|e| format!("cannot run npm ({e}); apt-get install nodejs npm"))?
                .success();
            if !ok {
                return Err("`npm ci` in tests/idp failed".into());
            }
        }
        let log = dir.join("idp.log");
        let register = lift_store_bound(dir)?;
        let mut child = Command::new("node")
            .arg("--import")
            .arg(register)
            .arg(idp_dir.join("server.js"))
            .env("IDP_CONFIG", config.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(&log).map_err(|e| e.to_string())?,
            ))
            .spawn()
            .map_err(|e| format!("cannot start node ({e}); apt-get install nodejs"))?;
        let stdout = child.stdout.take().ok_or("no IdP stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        // Keep draining stdout, or the IdP dies of EPIPE at its next console.log.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        let Some(issuer) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            return Err(format!(
                "the test IdP did not start: {line:?} {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        };
        let control = match config["port"].as_u64() {
            Some(port) if config.get("issuer").is_some() => format!("http://127.0.0.1:{port}"),
            _ => issuer.to_string(),
        };
        Ok(Self {
            issuer: issuer.to_string(),
            control,
            child: Some(child),
        })
    }

    /// The IdP's counters so far (`GET /test/stats`).
    pub(crate) async fn stats(&self, client: &reqwest::Client) -> Result<IdpStats, String> {
        let v: serde_json::Value = client
            .get(format!("{}/test/stats", self.control))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let n = |x: &serde_json::Value| {
            x.as_u64()
                .ok_or_else(|| format!("unexpected IdP stats: {v}"))
        };
        Ok(IdpStats {
            refreshes: n(&v["token_requests"]["refresh_token"])?,
            token_endpoint_hits: n(&v["token_endpoint_hits"])?,
            grants_revoked: n(&v["grants_revoked"])?,
            refresh_reuse: n(&v["refresh_reuse"])?,
            grant_errors: v["grant_errors"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, c)| (k.clone(), c.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Starts (`mode` = `reset` or `503`) or ends (`none`) a simulated outage of the OIDC paths
    /// starting with `paths` (`POST /test/outage`; tests/idp/server.js).
    pub(crate) async fn outage(
        &self,
        client: &reqwest::Client,
        mode: &str,
        paths: &str,
    ) -> Result<(), String> {
        let r = client
            .post(format!(
                "{}/test/outage?mode={mode}&paths={paths}",
                self.control
            ))
            .send()
            .await
            .map_err(|e| format!("IdP outage control: {e}"))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("IdP outage control answered {}", r.status()))
        }
    }
}

/// The test IdP's counters (`GET /test/stats`), or a difference of two readings.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdpStats {
    /// Successful refresh-token grants.
    pub refreshes: u64,
    /// Every HTTP request to the token endpoint, answered or not (counted before the outage check).
    pub token_endpoint_hits: u64,
    /// Whole grants destroyed (reuse detection, code replay, revocation, logout).
    pub grants_revoked: u64,
    /// Refresh grants refused because the refresh token had already been rotated out.
    pub refresh_reuse: u64,
    /// Failed token requests by OAuth error code.
    pub grant_errors: BTreeMap<String, u64>,
}

impl IdpStats {
    /// What happened between `before` and this reading.
    pub(crate) fn since(&self, before: &IdpStats) -> IdpStats {
        let mut grant_errors = BTreeMap::new();
        for (k, v) in &self.grant_errors {
            let d = v.saturating_sub(before.grant_errors.get(k).copied().unwrap_or(0));
            if d > 0 {
                grant_errors.insert(k.clone(), d);
            }
        }
        IdpStats {
            refreshes: self.refreshes.saturating_sub(before.refreshes),
            token_endpoint_hits: self
                .token_endpoint_hits
                .saturating_sub(before.token_endpoint_hits),
            grants_revoked: self.grants_revoked.saturating_sub(before.grants_revoked),
            refresh_reuse: self.refresh_reuse.saturating_sub(before.refresh_reuse),
            grant_errors,
        }
    }
}

/// oidc-provider's in-memory adapter keeps at most 1,000 entries (sessions, grants, codes,
/// tokens: about 150 logins' worth) and silently evicts the rest, so refresh tokens of earlier
/// logins vanish. For the refresh storm's 1,000 logins the benchmark starts the unchanged
/// tests/idp/server.js with a Node module hook that gives that adapter's LRU a larger bound.
/// Returns the `--import` argument.
fn lift_store_bound(dir: &Path) -> Result<String, String> {
    let files = [
        (
            "idp-register.mjs",
            "import { register } from 'node:module';\nregister('./idp-hooks.mjs', import.meta.url);\n",
        ),
        (
            "idp-hooks.mjs",
            "const shim = new URL('./idp-lru.mjs', import.meta.url).href;\n\
             export async function resolve(specifier, context, next) {\n\
             \x20 if (specifier === '../helpers/lru.js' && context.parentURL?.endsWith('/oidc-provider/lib/adapters/memory_adapter.js')) {\n\
             \x20   const real = new URL(specifier, context.parentURL).href;\n\
             \x20   return { url: `${shim}?real=${encodeURIComponent(real)}`, shortCircuit: true };\n\
             \x20 }\n\
             \x20 return next(specifier, context);\n\
             }\n",
        ),
        (
            "idp-lru.mjs",
            "const real = new URL(import.meta.url).searchParams.get('real');\n\
             const { default: LRU } = await import(real);\n\
             export default class BenchLRU extends LRU {\n\
             \x20 constructor(options) { super({ ...options, maxSize: 10_000_000 }); }\n\
             }\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
    }
    Ok(format!("file://{}", dir.join("idp-register.mjs").display()))
}

impl Drop for Idp {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------------

pub(crate) struct Cloakroom {
    pub port: u16,
    pub admin_port: u16,
    child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Cloakroom {
    /// Runs `<bin> run --config <dir>/config.toml` with only `PATH` and `env` in its environment.
    /// Its stdout (the logs, access log included) goes to `<dir>/cloakroom.log` with `keep_log`,
    /// else nowhere.
    pub(crate) fn spawn(
        bin: &Path,
        dir: &Path,
        port: u16,
        admin_port: u16,
        config_text: &str,
        env: &[(String, String)],
        keep_log: bool,
    ) -> Result<Self, String> {
        let config = dir.join("config.toml");
        std::fs::write(&config, config_text).map_err(|e| e.to_string())?;
        let stderr_path = dir.join("cloakroom.stderr.log");
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--config"]).arg(&config);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // The access log (one line per request, as in production) goes into a pipe, as to a
        // container runtime, which a thread of the benchmark drains and discards (a run would
        // leave gigabytes behind); with `keep_log` into a file.
        let stdout = if keep_log {
            Stdio::from(
                std::fs::File::create(dir.join("cloakroom.log")).map_err(|e| e.to_string())?,
            )
        } else {
            Stdio::piped()
        };
        let mut child = cmd
            .stdout(stdout)
            .stderr(std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start {} ({e})", bin.display()))?;
        if let Some(mut pipe) = child.stdout.take() {
            std::thread::spawn(move || std::io::copy(&mut pipe, &mut std::io::sink()));
        }
        let c = Self {
            port,
            admin_port,
            child: Some(child),
            stderr_path,
        };
        wait_listening(port, "cloakroom", &c.stderr_path)?;
        wait_listening(admin_port, "cloakroom admin", &c.stderr_path)?;
        Ok(c)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A counter or gauge from the admin `/metrics` (summed over its label sets).
    pub(crate) async fn metric(&self, client: &reqwest::Client, name: &str) -> Option<f64> {
        self.metric_where(client, name, "").await
    }

    /// Like [`Cloakroom::metric`], over the label sets that contain `label` (e.g.
    /// `outcome="transient"`; empty: all of them).
    pub(crate) async fn metric_where(
        &self,
        client: &reqwest::Client,
        name: &str,
        label: &str,
    ) -> Option<f64> {
        let text = client
            .get(format!("http://127.0.0.1:{}/metrics", self.admin_port))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let mut found = None;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            if !label.is_empty() && !rest.split(' ').next().is_some_and(|l| l.contains(label)) {
                continue;
            }
            let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            *found.get_or_insert(0.0) += v;
        }
        // A counter never incremented is not exported yet: that is a zero, not a failure.
        Some(found.unwrap_or(0.0))
    }

    pub(crate) fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Cloakroom {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Any child process listening on `port`, killed on drop.
pub(crate) struct Reference(Option<std::process::Child>);

impl Reference {
    pub(crate) fn spawn(cmd: &mut Command, port: u16) -> Result<Self, String> {
        let c = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let c = Self(Some(c));
        wait_listening(port, "child process", Path::new("/dev/null"))?;
        Ok(c)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    pub(crate) fn kill(&mut self) {
        kill(&mut self.0);
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

/// A reference server (nginx, Apache httpd) run as a child in the foreground: a master or parent
/// process and its workers. Stopped with SIGTERM (both stop their workers on it), then whatever
/// of its tree is left gets SIGKILL, by pid.
pub(crate) struct Server {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Server {
    /// Spawns `cmd` (stdout and stderr to `log`) and waits until `port` accepts connections.
    pub(crate) fn spawn(
        name: &str,
        cmd: &mut Command,
        port: u16,
        log: &Path,
    ) -> Result<Self, String> {
        let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({e})"))?;
        let mut s = Self {
            name: name.into(),
            child: Some(child),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if !s.alive() || Instant::now() > deadline {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                s.stop();
                return Err(format!("{name} did not listen on port {port}: {text}"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(s)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // The tree before the parent goes: once it has exited its workers are no longer its
        // descendants.
        let tree: Vec<(u32, String)> = descendants(pid)
            .into_iter()
            .map(|p| (p, cmdline(p)))
            .collect();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        for (p, cmd) in tree {
            // Still there and still the same program (not a reused pid).
            if !cmd.is_empty() && cmdline(p) == cmd {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

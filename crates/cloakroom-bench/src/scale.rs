//! Scenario (f): scale-out (issue #13). Two Cloakroom instances share one 3-master Redis Cluster
//! (its own redis-server processes, `redis-cli --cluster create`), the run's upstream and IdP,
//! and the same seeded sessions; both are loaded at once, each by its own load generator with
//! half of (c)'s connections, over the same sessions.
//!
//! What it reports: both instances' throughput together, their CPU per request, the Redis
//! commands per request summed over the cluster's nodes (with the session cache this is the
//! cache's own traffic: liveness markers, `CLUSTER NODES`, the rare reload), Redis' CPU, and
//! the Redis memory one session takes in the cluster (`used_memory` before and after seeding).
//! On this 2-core machine two instances share the cores with each other, the load generators,
//! the upstream and Redis: the figure shows what scaling out costs and that nothing in it
//! serialises (Redis commands per request, errors), not what two machines would do.

use crate::load::{self, Load};
use crate::procs::{self, Cloakroom, Redis};
use crate::{log, seed, split_url, write_cookies, Args, Scenario};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What (f) measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scale {
    pub instances: usize,
    pub masters: usize,
    pub sessions: usize,
    /// Both instances together: requests and req/s summed, CPU over both processes,
    /// percentiles the worse of the two runs.
    pub scenario: Scenario,
    /// Each instance's own run (CPU of that process only; no Redis figures).
    pub per_instance: Vec<Scenario>,
    /// Redis memory per session in the cluster (`used_memory` delta of the seeding over the
    /// sessions seeded, all masters), bytes.
    pub redis_bytes_per_session: Option<f64>,
    /// One instance on a Sentinel-monitored master, the same load as (c): Redis commands on
    /// the master per request.
    pub sentinel: Scenario,
}

/// A Redis Cluster of `n` masters, no replicas.
struct Cluster {
    nodes: Vec<Redis>,
}

impl Cluster {
    fn start(dir: &Path, n: usize) -> Result<Self, String> {
        let nodes = (0..n)
            .map(|i| {
                Redis::start_in(
                    &dir.join(format!("cluster-{i}")),
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"],
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let addrs: Vec<String> = nodes
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| {
                format!("redis-cli is needed for (f) ({e}): apt-get install redis-tools")
            })?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes
            .iter()
            .all(|r| r.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            if Instant::now() > deadline {
                return Err("the cluster never became ok".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self { nodes })
    }

    fn store_toml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|r| format!("\"{}\"", r.url()))
            .collect();
        format!("kind = \"cluster\"\nnodes = [{}]", urls.join(", "))
    }

    fn calls(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for r in &self.nodes {
            for (k, v) in r.command_calls() {
                *all.entry(k).or_insert(0) += v;
            }
        }
        all
    }

    fn cpu_seconds(&self) -> f64 {
        self.nodes.iter().map(Redis::cpu_seconds).sum()
    }

    fn used_memory(&self) -> Option<f64> {
        self.nodes
            .iter()
            .map(|r| r.info("memory").get("used_memory")?.parse::<f64>().ok())
            .sum()
    }
}

/// Everything (f) needs from the run.
pub(crate) struct Inputs<'a> {
    pub args: &'a Args,
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub issuer: &'a str,
    pub upstream: std::net::SocketAddr,
    /// The configuration's environment (secrets, key ring), and the processes' (with extras).
    pub env: &'a [(String, String)],
    pub proc_env: &'a [(String, String)],
}

/// Runs (f).
pub(crate) async fn run(i: Inputs<'_>) -> Result<Scale, String> {
    const INSTANCES: usize = 2;
    const MASTERS: usize = 3;
    let args = i.args;
    let dir = i.dir.join("scale");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    log(format!(
        "(f) scale-out: {INSTANCES} Cloakroom instances on a {MASTERS}-master Redis Cluster"
    ));
    let cluster = Cluster::start(&dir, MASTERS)?;
    let mut cloaks = Vec::new();
    let mut texts = Vec::new();
    for n in 0..INSTANCES {
        let (port, admin) = (procs::free_port(), procs::free_port());
        let text = crate::cloakroom_toml(port, admin, i.issuer, "redis://unused", i.upstream)
            .replace(
                "kind = \"redis\"\nurl = \"redis://unused\"",
                &cluster.store_toml(),
            );
        let own = dir.join(format!("instance-{n}"));
        std::fs::create_dir_all(&own).map_err(|e| e.to_string())?;
        cloaks.push(Cloakroom::spawn(
            i.bin, &own, port, admin, &text, i.proc_env, false,
        )?);
        texts.push(text);
    }
    let config = cloakroom::Config::from_toml(&texts[0], &i.env.iter().cloned().collect())
        .map_err(|e| format!("(f) config: {e}"))?;
    let before_seed = cluster.used_memory();
    let cookies = Arc::new(seed::seed(&config, 0, args.sessions).await?);
    let bytes_per_session = cluster
        .used_memory()
        .zip(before_seed)
        .map(|(a, b)| (a - b) / args.sessions.max(1) as f64);
    let file = write_cookies(&dir, "cookies.txt", &cookies)?;
    let urls: Vec<String> = cloaks
        .iter()
        .map(|c| format!("{}/api/bench", c.base()))
        .collect();
    let conns = (args.connections / INSTANCES).max(1);
    let both = |secs: u64| {
        let (urls, cookies, file, dir) = (urls.clone(), cookies.clone(), file.clone(), dir.clone());
        let builtin = args.builtin_load;
        async move {
            let runs = urls.iter().enumerate().map(|(n, url)| {
                let (url, cookies, file) = (url.clone(), cookies.clone(), file.clone());
                let own = dir.join(format!("instance-{n}"));
                async move {
                    let (addr, path) = split_url(&url)?;
                    if builtin {
                        return Ok(
                            load::closed_loop(addr, &path, cookies, conns, secs as f64).await
                        );
                    }
                    tokio::task::spawn_blocking(move || {
                        load::wrk(&own, &url, 1, conns, secs, &file)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                }
            });
            futures_util::future::join_all(runs)
                .await
                .into_iter()
                .collect::<Result<Vec<Load>, String>>()
        }
    };
    if args.warmup > 0 {
        both(args.warmup).await?;
    }
    let pids: Vec<u32> = cloaks.iter().map(Cloakroom::pid).collect();
    let cpu = || -> Vec<Option<(f64, f64)>> { pids.iter().map(|p| procs::cpu_split(*p)).collect() };
    let (cpu_before, calls_before, redis_cpu_before) =
        (cpu(), cluster.calls(), cluster.cpu_seconds());
    let loads = both(args.duration).await?;
    let (cpu_after, calls_after, redis_cpu_after) = (cpu(), cluster.calls(), cluster.cpu_seconds());
    for c in &mut cloaks {
        if !c.alive() {
            return Err(format!(
                "a cloakroom of (f) exited during the run: {}",
                std::fs::read_to_string(&c.stderr_path).unwrap_or_default()
            ));
        }
    }

    let mut per_instance = Vec::new();
    for (n, load) in loads.iter().enumerate() {
        let (c, k) = crate::cpu_per_req(cpu_before[n], cpu_after[n], load.requests.max(1) as f64);
        per_instance.push(Scenario {
            id: format!("f{n}"),
            title: format!("instance {n}"),
            load: load.clone(),
            cpu_us_per_req: c,
            cpu_kernel_us_per_req: k,
            ..Scenario::default()
        });
    }
    let requests: u64 = loads.iter().map(|l| l.requests).sum();
    let n = requests.max(1) as f64;
    let sum_cpu = |get: fn((f64, f64)) -> f64| -> Option<f64> {
        cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(b, a)| Some(get((*a)?) - get((*b)?)))
            .sum::<Option<f64>>()
            .map(|s| s * 1e6 / n)
    };
    let max = |get: fn(&Load) -> f64| loads.iter().map(get).fold(0.0, f64::max);
    let cmds = crate::cmds_since(&calls_before, &calls_after);
    let combined = Scenario {
        id: "f".into(),
        title: format!(
            "{INSTANCES} Cloakroom instances, {MASTERS}-master Redis Cluster, token = \"required\""
        ),
        load: Load {
            tool: loads.first().map(|l| l.tool.clone()).unwrap_or_default(),
            requests,
            errors: loads.iter().map(|l| l.errors).sum(),
            seconds: max(|l| l.seconds),
            rps: loads.iter().map(|l| l.rps).sum(),
            p50_us: max(|l| l.p50_us),
            p99_us: max(|l| l.p99_us),
            p999_us: max(|l| l.p999_us),
        },
        cpu_us_per_req: sum_cpu(|(u, k)| u + k),
        cpu_kernel_us_per_req: sum_cpu(|(_, k)| k),
        redis_cmds_per_req: Some(cmds.values().sum::<u64>() as f64 / n),
        redis_cmds: cmds,
        redis_cpu_us_per_req: Some((redis_cpu_after - redis_cpu_before) * 1e6 / n),
        ..Scenario::default()
    };
    log(format!(
        "    {:.0} req/s together, {} µs CPU/req, {} Redis cmds/req, errors {}",
        combined.load.rps,
        crate::report::fmt_opt(combined.cpu_us_per_req, 1),
        crate::report::fmt_opt(combined.redis_cmds_per_req, 4),
        combined.load.errors
    ));
    drop(cloaks);
    drop(cluster);
    let sentinel = sentinel_run(&i, &dir).await?;
    Ok(Scale {
        instances: INSTANCES,
        masters: MASTERS,
        sessions: args.sessions,
        scenario: combined,
        per_instance,
        redis_bytes_per_session: bytes_per_session,
        sentinel,
    })
}

/// One instance whose store is a master found through a Sentinel, loaded like (c): what the
/// session cache leaves for Redis in that topology.
async fn sentinel_run(i: &Inputs<'_>, dir: &Path) -> Result<Scenario, String> {
    let args = i.args;
    log("(f) … and one instance on a Sentinel-monitored master");
    let master = Redis::start_in(&dir.join("sentinel-master"), &[])?;
    let sentinel = Redis::sentinel(&dir.join("sentinel"), master.port)?;
    let (port, admin) = (procs::free_port(), procs::free_port());
    let text = crate::cloakroom_toml(port, admin, i.issuer, "redis://unused", i.upstream).replace(
        "kind = \"redis\"\nurl = \"redis://unused\"",
        &format!(
            "kind = \"sentinel\"\nsentinels = [\"{}\"]\nmaster_name = \"mymaster\"",
            sentinel.url()
        ),
    );
    let own = dir.join("sentinel-instance");
    std::fs::create_dir_all(&own).map_err(|e| e.to_string())?;
    let mut cloak = Cloakroom::spawn(i.bin, &own, port, admin, &text, i.proc_env, false)?;
    let config = cloakroom::Config::from_toml(&text, &i.env.iter().cloned().collect())
        .map_err(|e| format!("(f) sentinel config: {e}"))?;
    let cookies = Arc::new(seed::seed(&config, 0, args.sessions).await?);
    let file = write_cookies(&own, "cookies.txt", &cookies)?;
    let url = format!("{}/api/bench", cloak.base());
    let (addr, path) = split_url(&url)?;
    let (builtin, conns) = (args.builtin_load, args.connections);
    let run = |secs: u64| {
        let (url, file, own, cookies) = (url.clone(), file.clone(), own.clone(), cookies.clone());
        let path = path.clone();
        async move {
            if builtin {
                return Ok(load::closed_loop(addr, &path, cookies, conns, secs as f64).await);
            }
            tokio::task::spawn_blocking(move || load::wrk(&own, &url, 1, conns, secs, &file))
                .await
                .map_err(|e| e.to_string())?
        }
    };
    if args.warmup > 0 {
        run(args.warmup).await?;
    }
    let pid = cloak.pid();
    let (cpu_before, calls_before) = (procs::cpu_split(pid), master.command_calls());
    let load: Load = run(args.duration).await?;
    let (cpu_after, calls_after) = (procs::cpu_split(pid), master.command_calls());
    if !cloak.alive() {
        return Err(format!(
            "the cloakroom of (f) on Sentinel exited: {}",
            std::fs::read_to_string(&cloak.stderr_path).unwrap_or_default()
        ));
    }
    let n = load.requests.max(1) as f64;
    let (cpu, kernel) = crate::cpu_per_req(cpu_before, cpu_after, n);
    let cmds = crate::cmds_since(&calls_before, &calls_after);
    let s = Scenario {
        id: "f-sentinel".into(),
        title: "1 Cloakroom instance, Sentinel-monitored master, token = \"required\"".into(),
        load,
        cpu_us_per_req: cpu,
        cpu_kernel_us_per_req: kernel,
        redis_cmds_per_req: Some(cmds.values().sum::<u64>() as f64 / n),
        redis_cmds: cmds,
        ..Scenario::default()
    };
    log(format!(
        "    {:.0} req/s, {} Redis cmds/req on the master",
        s.load.rps,
        crate::report::fmt_opt(s.redis_cmds_per_req, 4)
    ));
    Ok(s)
}

//! Load generators: `wrk` (closed loop, throughput), `oha` (open loop at a fixed rate, latency
//! corrected for coordinated omission) and a small built-in hyper client (the smoke run, and the
//! refresh storm, whose shape — N sessions × M concurrent calls each — no stock tool makes).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one load run measured from the client side.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Load {
    pub tool: String,
    pub requests: u64,
    /// Non-2xx answers plus connection-level errors.
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// The wrk script: rotates over pre-formatted requests, one per session cookie, so that every
/// scenario costs wrk the same per request; `done` prints the summary as JSON.
const WRK_LUA: &str = r#"
local reqs = {}
local i = 0
local n = 0
setup = function(thread)
  n = n + 1
  thread:set("offset", n * 7919)
end
init = function(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    reqs[#reqs + 1] = wrk.format("GET", nil, { ["Cookie"] = line, ["X-Csrf"] = "1" })
  end
  f:close()
  i = (offset or 0) % #reqs
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// `wrk -t<threads> -c<conns> -d<secs>` against `url`, one request per line of `cookie_file`.
pub fn wrk(
    dir: &Path,
    url: &str,
    threads: usize,
    conns: usize,
    secs: u64,
    cookie_file: &Path,
) -> Result<Load, String> {
    let script = dir.join("bench.lua");
    std::fs::write(&script, WRK_LUA).map_err(|e| e.to_string())?;
    let out = Command::new("wrk")
        .args([
            format!("-t{threads}"),
            format!("-c{conns}"),
            format!("-d{secs}s"),
            "--timeout".into(),
            "5s".into(),
            "-s".into(),
        ])
        .arg(&script)
        .arg(url)
        .arg("--")
        .arg(cookie_file)
        .output()
        .map_err(|e| format!("cannot run wrk ({e})"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("BENCHJSON "))
        .ok_or_else(|| {
            format!(
                "wrk printed no summary: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let g = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let seconds = g("duration_us") / 1e6;
    Ok(Load {
        tool: format!("wrk -t{threads} -c{conns} -d{secs}s"),
        requests: g("requests") as u64,
        errors: (g("status_errors") + g("socket_errors")) as u64,
        seconds,
        rps: g("requests") / seconds.max(1e-9),
        p50_us: g("p50"),
        p99_us: g("p99"),
        p999_us: g("p999"),
    })
}

/// `oha` at a fixed rate with latency correction (open loop).
pub fn oha(
    oha_bin: &Path,
    url: &str,
    conns: usize,
    rate: f64,
    secs: u64,
    cookie: &str,
) -> Result<Load, String> {
    let rate = rate.max(1.0).round() as u64;
    let out = Command::new(oha_bin)
        .args(["-z", &format!("{secs}s"), "-c", &conns.to_string()])
        .args(["-q", &rate.to_string(), "--latency-correction", "--no-tui"])
        .args(["--output-format", "json"])
        .args(["-H", &format!("cookie: {cookie}"), "-H", "x-csrf: 1"])
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run {} ({e})", oha_bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| {
        format!(
            "oha output is not JSON ({e}): {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let statuses = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut ok = 0u64;
    let mut bad = 0u64;
    for (code, n) in statuses {
        let n = n.as_u64().unwrap_or(0);
        if code.starts_with('2') {
            ok += n;
        } else {
            bad += n;
        }
    }
    // Requests still in flight when `-z` ends are cut off ("aborted due to deadline"): not
    // failures of the server.
    let errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let p = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1e6;
    let seconds = v["summary"]["total"].as_f64().unwrap_or(secs as f64);
    Ok(Load {
        tool: format!("oha -c{conns} -q{rate} -z{secs}s --latency-correction"),
        requests: ok + bad,
        errors: bad + errors,
        seconds,
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_us: p("p50"),
        p99_us: p("p99"),
        p999_us: p("p99.9"),
    })
}

// ---------------------------------------------------------------------------------------------
// The built-in generator: hyper HTTP/1.1 client connections, one task each.

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(send)
}

/// One request on `send` (reconnecting first when needed); `Some(status)` or `None` on an I/O error.
async fn one(send: &mut Option<Sender>, addr: SocketAddr, path: &str, cookie: &str) -> Option<u16> {
    if send.as_ref().is_none_or(|s| s.is_closed()) {
        *send = connect(addr).await;
    }
    let s = send.as_mut()?;
    if s.ready().await.is_err() {
        *send = None;
        return None;
    }
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::COOKIE, cookie)
        .header("x-csrf", "1")
        .body(Empty::<Bytes>::new())
        .ok()?;
    let Ok(resp) = s.send_request(req).await else {
        *send = None;
        return None;
    };
    let status = resp.status().as_u16();
    if resp.into_body().collect().await.is_err() {
        *send = None;
        return None;
    }
    Some(status)
}

fn summarise(tool: String, mut lat: Vec<u32>, errors: u64, seconds: f64) -> Load {
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return f64::NAN;
        }
        let idx = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        f64::from(lat[idx.clamp(1, lat.len()) - 1])
    };
    let requests = lat.len() as u64 + errors;
    Load {
        tool,
        requests,
        errors,
        seconds,
        rps: requests as f64 / seconds.max(1e-9),
        p50_us: pct(50.0),
        p99_us: pct(99.0),
        p999_us: pct(99.9),
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Closed loop: `conns` connections, each sending back to back for `secs`, rotating `cookies`.
pub async fn closed_loop(
    addr: SocketAddr,
    path: &str,
    cookies: Arc<Vec<String>>,
    conns: usize,
    secs: f64,
) -> Load {
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|w| {
            let cookies = cookies.clone();
            let path = path.to_string();
            tokio::spawn(async move {
                let mut send = None;
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut i = w * 7919;
                while Instant::now() < end {
                    i += 1;
                    let cookie = &cookies[i % cookies.len()];
                    let t = Instant::now();
                    match one(&mut send, addr, &path, cookie).await {
                        Some(s) if (200..300).contains(&s) => lat.push(micros(t.elapsed())),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    summarise(
        format!("built-in closed loop, {conns} connections"),
        lat,
        errors,
        started.elapsed().as_secs_f64(),
    )
}

/// Open loop at `rate` requests/s over `conns` connections for `secs`; each latency counts from
/// the request's scheduled send time (corrected for coordinated omission).
pub async fn fixed_rate(
    addr: SocketAddr,
    path: &str,
    cookie: &str,
    conns: usize,
    rate: f64,
    secs: f64,
) -> Load {
    let started = Instant::now();
    let total = (rate * secs).max(1.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let tasks: Vec<_> = (0..conns)
        .map(|w| {
            let path = path.to_string();
            let cookie = cookie.to_string();
            tokio::spawn(async move {
                let mut send = None;
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut k = w;
                while k < total {
                    let due = started + interval * u32::try_from(k).unwrap_or(u32::MAX);
                    tokio::time::sleep_until(due.into()).await;
                    match one(&mut send, addr, &path, &cookie).await {
                        Some(s) if (200..300).contains(&s) => lat.push(micros(due.elapsed())),
                        _ => errors += 1,
                    }
                    k += conns;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    summarise(
        format!("built-in open loop, {conns} connections, {rate:.0} req/s"),
        lat,
        errors,
        started.elapsed().as_secs_f64(),
    )
}

/// The refresh storm: every cookie gets `per_session` calls, queued session after session and
/// taken by `conns` connections, so each session's calls are in flight at the same time.
/// Returns the load and the statuses that were not 200 (status 0 = I/O error).
pub async fn storm(
    addr: SocketAddr,
    path: &str,
    cookies: &[String],
    per_session: usize,
    conns: usize,
) -> (Load, Vec<u16>) {
    let jobs: Vec<String> = cookies
        .iter()
        .flat_map(|c| std::iter::repeat_n(c.clone(), per_session))
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let queue = queue.clone();
            let path = path.to_string();
            tokio::spawn(async move {
                let mut send = None;
                let mut lat = Vec::new();
                let mut bad = Vec::new();
                loop {
                    let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                    let Some(cookie) = next else { break };
                    let t = Instant::now();
                    match one(&mut send, addr, &path, &cookie).await {
                        Some(200) => lat.push(micros(t.elapsed())),
                        Some(s) => bad.push(s),
                        None => bad.push(0),
                    }
                }
                (lat, bad)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut bad = Vec::new();
    for t in tasks {
        if let Ok((l, b)) = t.await {
            lat.extend(l);
            bad.extend(b);
        }
    }
    let load = summarise(
        format!(
            "built-in: {} sessions × {per_session} concurrent calls, {conns} connections",
            cookies.len()
        ),
        lat,
        bad.len() as u64,
        started.elapsed().as_secs_f64(),
    );
    (load, bad)
}

//! Load generators: `wrk` (closed loop, throughput), `oha` (open loop at a fixed rate, latency
//! corrected for coordinated omission) and a small built-in hyper client (the smoke run; the
//! refresh storm, whose shape — N sessions × M concurrent calls each, some abandoned by the client
//! over HTTP/1.1 or HTTP/2 — no stock tool makes; and the paced per-session calls of the IdP
//! outage, which keep every call's status and due time).

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
pub(crate) fn wrk(
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
pub(crate) fn oha(
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
pub(crate) async fn closed_loop(
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
pub(crate) async fn fixed_rate(
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

/// How the client abandons a storm call before its answer.
#[derive(Debug, Clone, Copy)]
enum Abort {
    /// HTTP/1.1 on a connection of its own, reset (`SO_LINGER` 0) after the delay.
    Tcp(Duration),
    /// HTTP/2 on a connection kept open, the stream cancelled (`RST_STREAM`) after the delay.
    H2(Duration),
}

/// Whether storm call `i` is aborted: exactly `pct` of every 100 consecutive calls, the first
/// of each ten (so with 10 %, a session's first call, the one likely to start its refresh, is
/// often among them).
fn aborts(i: usize, pct: u32) -> bool {
    pct > 0 && (i * pct as usize) % 100 < pct as usize
}

/// The `k`-th abort: HTTP/1.1 and HTTP/2 in turn, after 1 to 10 ms (while the call waits for
/// its session's refresh, which takes longer than that).
fn abort_kind(k: usize) -> Abort {
    let after = Duration::from_millis(1 + (k as u64 * 7) % 10);
    if k % 2 == 0 {
        Abort::Tcp(after)
    } else {
        Abort::H2(after)
    }
}

/// What the storm measured.
#[derive(Debug, Default)]
pub(crate) struct StormRun {
    /// Every call made, aborted ones included (`requests`); `errors` and the latencies are those
    /// of the calls that were answered.
    pub load: Load,
    /// Statuses of the answered calls that were not 200 (0 = I/O error).
    pub bad: Vec<u16>,
    /// Calls the client was told to abort.
    pub planned_aborts: u64,
    /// … that were cut before any answer: HTTP/1.1 connection reset.
    pub aborted_tcp: u64,
    /// … that were cut before any answer: HTTP/2 `RST_STREAM`.
    pub aborted_h2: u64,
    /// … that were answered before their abort time (then counted like every other call).
    pub answered_before_abort: u64,
}

/// A storm call abandoned over HTTP/1.1: sends it on a new connection, waits `after` for an
/// answer, then resets the connection. `None`: aborted; `Some(status)`: answered first.
async fn abort_tcp(addr: SocketAddr, path: &str, cookie: &str, after: Duration) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return Some(0);
    };
    let _ = s.set_nodelay(true);
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nX-Csrf: 1\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return Some(0);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    let abort_at = tokio::time::Instant::now() + after;
    // Once part of an answer arrived in time, read its status line to the end.
    let give_up = abort_at + Duration::from_secs(5);
    while buf.len() < 12 {
        let deadline = if buf.is_empty() { abort_at } else { give_up };
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) if buf.is_empty() => {
                let _ = s.set_zero_linger();
                return None;
            }
            Err(_) | Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(status_of(&buf))
}

fn status_of(head: &[u8]) -> u16 {
    // "HTTP/1.1 200 OK"
    head.get(9..12)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn connect_h2(addr: SocketAddr) -> Option<H2Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(send)
}

/// A storm call abandoned over HTTP/2: sent on `h2` (prior knowledge, kept open for the next
/// ones), its stream cancelled after `after` by dropping the response future (hyper then sends
/// `RST_STREAM(CANCEL)`; the connection stays up). `None`: aborted; `Some(status)`: answered
/// first.
async fn abort_h2(
    h2: &mut Option<H2Sender>,
    addr: SocketAddr,
    path: &str,
    cookie: &str,
    after: Duration,
) -> Option<u16> {
    if h2.as_ref().is_none_or(|s| s.is_closed()) {
        *h2 = connect_h2(addr).await;
    }
    let Some(s) = h2.as_mut() else {
        return Some(0);
    };
    if s.ready().await.is_err() {
        *h2 = None;
        return Some(0);
    }
    let Ok(req) = http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::COOKIE, cookie)
        .header("x-csrf", "1")
        .body(Empty::<Bytes>::new())
    else {
        return Some(0);
    };
    match tokio::time::timeout(after, s.send_request(req)).await {
        Err(_) => None,
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            Some(status)
        }
        Ok(Err(_)) => {
            *h2 = None;
            Some(0)
        }
    }
}

/// The refresh storm: every cookie gets `per_session` calls, queued session after session and
/// taken by `conns` connections, so each session's calls are in flight at the same time.
/// `abort_pct` % of the calls are abandoned by the client a few ms after sending (see
/// [`aborts`], [`abort_kind`]).
pub(crate) async fn storm(
    addr: SocketAddr,
    path: &str,
    cookies: &[String],
    per_session: usize,
    conns: usize,
    abort_pct: u32,
) -> StormRun {
    let mut k = 0;
    let jobs: Vec<(String, Option<Abort>)> = cookies
        .iter()
        .flat_map(|c| std::iter::repeat_n(c.clone(), per_session))
        .enumerate()
        .map(|(i, c)| {
            if aborts(i, abort_pct) {
                k += 1;
                (c, Some(abort_kind(k - 1)))
            } else {
                (c, None)
            }
        })
        .collect();
    let planned_aborts = k as u64;
    let total = jobs.len() as u64;
    let queue = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let queue = queue.clone();
            let path = path.to_string();
            tokio::spawn(async move {
                let mut send = None;
                let mut h2 = None;
                let mut lat = Vec::new();
                let mut bad = Vec::new();
                let (mut tcp, mut h2_cut, mut answered) = (0u64, 0u64, 0u64);
                loop {
                    let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
                    let Some((cookie, abort)) = next else { break };
                    let t = Instant::now();
                    let status = match abort {
                        None => one(&mut send, addr, &path, &cookie).await.unwrap_or(0),
                        Some(a) => {
                            let r = match a {
                                Abort::Tcp(d) => abort_tcp(addr, &path, &cookie, d).await,
                                Abort::H2(d) => abort_h2(&mut h2, addr, &path, &cookie, d).await,
                            };
                            match (r, a) {
                                (None, Abort::Tcp(_)) => tcp += 1,
                                (None, Abort::H2(_)) => h2_cut += 1,
                                (Some(_), _) => answered += 1,
                            }
                            let Some(s) = r else { continue };
                            s
                        }
                    };
                    if status == 200 {
                        lat.push(micros(t.elapsed()));
                    } else {
                        bad.push(status);
                    }
                }
                (lat, bad, tcp, h2_cut, answered)
            })
        })
        .collect();
    let mut run = StormRun {
        planned_aborts,
        ..StormRun::default()
    };
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok((l, b, tcp, h2_cut, answered)) = t.await {
            lat.extend(l);
            run.bad.extend(b);
            run.aborted_tcp += tcp;
            run.aborted_h2 += h2_cut;
            run.answered_before_abort += answered;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    run.load = summarise(
        format!(
            "built-in: {} sessions × {per_session} concurrent calls ({abort_pct} % aborted), {conns} connections",
            cookies.len()
        ),
        lat,
        run.bad.len() as u64,
        seconds,
    );
    // Aborted calls were made too: they count as requests (not as errors).
    run.load.requests = total;
    run.load.rps = total as f64 / seconds.max(1e-9);
    run
}

/// One call of a paced run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    /// Index of the cookie (session) it used.
    pub session: usize,
    /// When it was due, seconds after the run's `start`.
    pub at: f64,
    /// When it was sent (later than `at` when every connection was busy), likewise.
    pub sent: f64,
    /// From when it was due to the end of its answer, µs (corrected for coordinated omission).
    pub latency_us: u32,
    /// HTTP status, 0 = I/O error.
    pub status: u16,
}

/// Open loop: every cookie is called once per `period`, the sessions' calls spread evenly over
/// it, from `start` for `secs`, over at most `conns` connections at a time. Returns every call.
pub(crate) async fn paced(
    addr: SocketAddr,
    path: &str,
    cookies: Arc<Vec<String>>,
    period: Duration,
    conns: usize,
    start: Instant,
    secs: f64,
) -> Vec<Call> {
    let n = cookies.len().max(1);
    let interval = period.as_secs_f64() / n as f64;
    let total = (secs / interval).floor() as usize;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (cookies, next, path) = (cookies.clone(), next.clone(), path.to_string());
            tokio::spawn(async move {
                let mut send = None;
                let mut calls = Vec::new();
                loop {
                    let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if j >= total {
                        break;
                    }
                    let at = interval * j as f64;
                    let due = start + Duration::from_secs_f64(at);
                    tokio::time::sleep_until(due.into()).await;
                    let sent = start.elapsed().as_secs_f64();
                    let session = j % n;
                    let status = one(&mut send, addr, &path, &cookies[session])
                        .await
                        .unwrap_or(0);
                    calls.push(Call {
                        session,
                        at,
                        sent,
                        latency_us: micros(due.elapsed()),
                        status,
                    });
                }
                calls
            })
        })
        .collect();
    let mut calls = Vec::new();
    for t in tasks {
        if let Ok(c) = t.await {
            calls.extend(c);
        }
    }
    calls.sort_by(|a, b| a.at.total_cmp(&b.at));
    calls
}

/// Latency percentiles of `lat` (µs): p50, p99, p99.9, max.
pub(crate) fn percentiles(mut lat: Vec<u32>) -> [f64; 4] {
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return f64::NAN;
        }
        let idx = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        f64::from(lat[idx.clamp(1, lat.len()) - 1])
    };
    [pct(50.0), pct(99.0), pct(99.9), pct(100.0)]
}

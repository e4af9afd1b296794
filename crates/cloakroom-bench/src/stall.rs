//! Scenario (e): the IdP's token endpoint down during load (issue #10).
//!
//! It has its own Redis, test IdP and Cloakroom, started at the beginning of the run: its tokens
//! must live longer than the storm's, and its `session.refresh_cooloff` is a setting of the run.
//! Two groups of sessions, each a real login:
//!
//! - **expired**: logged in when the run starts; by the outage their access tokens have long
//!   expired, so every call of theirs needs a refresh (and waits for it);
//! - **valid**: logged in `W + 1` s before the outage, with tokens of `2W` s (`W` = outage +
//!   recovery + a margin, at most the 60 s refresh skew): at the outage their tokens are due
//!   (less than half their lifetime left) but stay valid until after the recovery, so Cloakroom
//!   must forward each of their calls at once while it tries to refresh behind them.
//!
//! Timeline: the valid group's baseline (the same calls at the same rate, the IdP healthy, its
//! tokens not yet due) → the token endpoint fails for `stall_seconds` while both groups call at
//! `stall_rate` per session (open loop, latency from each call's due time) → the outage ends and
//! the calls go on for cool-off + 2 s (recovery), in which each session must be refreshed
//! exactly once. The outage (`--stall-mode`) is tests/idp's outage mode on `/token`
//! (`POST /test/outage?mode=reset|503&paths=/token`: connections destroyed unanswered, or 503;
//! the IdP processes nothing, so no refresh token is consumed), or `hang`: a TCP proxy in front
//! of the IdP ([`crate::hold`]) holds every request unanswered, so each refresh call runs into
//! Cloakroom's `oidc.timeout`.
//!
//! What it reports: token-endpoint requests during the outage against the bound
//! `sessions × (⌈outage ÷ cool-off⌉ + 1)`; refreshes, revoked grants and reused refresh tokens
//! over the whole scenario; the valid group's latency before and during the outage; statuses.

use crate::hold::Hold;
use crate::load::{self, Call};
use crate::procs::{self, Cloakroom, Idp, IdpStats, Redis};
use crate::{log, seed, split_url, Args};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The calls of one group in one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    pub calls: u64,
    /// Answers by status (0 = I/O error).
    pub statuses: BTreeMap<u16, u64>,
    /// Latency of the phase's calls, µs, each from when it was due (open loop).
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Phase {
    fn of<'a>(calls: impl Iterator<Item = &'a Call>) -> Self {
        let mut p = Phase::default();
        let mut lat = Vec::new();
        for c in calls {
            p.calls += 1;
            *p.statuses.entry(c.status).or_insert(0) += 1;
            lat.push(c.latency_us);
        }
        [p.p50_us, p.p99_us, p.p999_us, p.max_us] = load::percentiles(lat);
        p
    }

    /// Calls that did not answer 200.
    pub fn failed(&self) -> u64 {
        self.calls - self.statuses.get(&200).copied().unwrap_or(0)
    }
}

/// What (e) measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stall {
    /// How the token endpoint failed: tests/idp outage mode `reset` or `503` on `/token`, or
    /// `hang` (every request to the IdP held unanswered by a proxy).
    pub mode: String,
    pub stall_seconds: u64,
    /// Cloakroom's `session.refresh_cooloff`, s.
    pub cooloff_seconds: u64,
    /// The IdP's access-token lifetime in (e), s.
    pub token_lifetime_seconds: u64,
    pub valid_sessions: usize,
    pub expired_sessions: usize,
    pub calls_per_session_per_second: f64,
    /// Seconds the valid group's tokens had left when the outage began (at least, at most).
    pub valid_left_at_start: [f64; 2],
    /// Requests to the token endpoint during the outage (tests/idp `token_endpoint_hits`; with
    /// `hang`, the token requests the proxy saw, since held ones never reach the IdP).
    pub token_endpoint_hits: u64,
    /// `sessions × (⌈stall ÷ cool-off⌉ + 1)`, both groups' sessions.
    pub bound: u64,
    pub within_bound: bool,
    /// Cloakroom's count of transient refresh failures during the outage.
    pub cloakroom_transient: Option<u64>,
    /// Requests to the token endpoint during the recovery.
    pub recovery_token_endpoint_hits: u64,
    /// With `hang`: token requests held by the proxy and passed on when the outage ended (their
    /// client still waiting), and dropped (their client had given up and closed the connection).
    pub held_released: Option<u64>,
    pub held_dropped: Option<u64>,
    /// Successful refresh grants over the whole scenario (one per session expected).
    pub idp_refreshes: u64,
    /// Cloakroom's count of successful refreshes over the whole scenario.
    pub cloakroom_refreshes: Option<u64>,
    /// `grants_revoked` and `refresh_reuse` deltas over the whole scenario.
    pub grants_revoked: u64,
    pub refresh_reuse: u64,
    /// Failed token requests by OAuth error code (delta; an outage answers none of them).
    pub grant_errors: BTreeMap<String, u64>,
    /// The valid group: baseline, outage, recovery.
    pub valid_before: Phase,
    pub valid_stall: Phase,
    pub valid_recovery: Phase,
    /// The expired group: outage, recovery.
    pub expired_stall: Phase,
    pub expired_recovery: Phase,
    /// Valid-group calls sent when their token might have expired (left out above; 0 by design).
    pub valid_calls_past_expiry: u64,
    /// Sessions (both groups) whose last call did not answer 200.
    pub not_recovered: u64,
    /// Longest time from the end of the outage to an expired-group session's first 200, s
    /// (`null`: one never got one).
    pub expired_recovered_within_s: f64,
}

/// `W`: half the token lifetime in (e), the due window (see the module documentation).
/// The valid group's tokens then last from the outage's start through the outage and the
/// recovery (cool-off + 2 s), with ⌈1 ÷ rate⌉ + 2 s to spare for the logins' spread.
fn window(args: &Args) -> Result<u64, String> {
    let pause = (1.0 / args.stall_rate).ceil() as u64;
    let w = args.stall_seconds + recovery(args) + pause + 4;
    if w > crate::REFRESH_SKEW {
        return Err(format!(
            "(e): --stall-seconds + --stall-cooloff + 2 + 1/--stall-rate + 4 = {w} s must not exceed the refresh skew ({} s)",
            crate::REFRESH_SKEW
        ));
    }
    Ok(w)
}

/// Seconds of calls after the outage: every session's cool-off is over, and its next call
/// refreshes it.
fn recovery(args: &Args) -> u64 {
    args.stall_cooloff + 2
}

/// The processes and the expired group of (e).
/// Dropped in field order: Cloakroom first, its IdP and Redis after it.
pub(crate) struct StallRig {
    pub cloak: Cloakroom,
    hold: Option<Hold>,
    idp: Idp,
    _redis: Redis,
    expired: Arc<Vec<String>>,
    expired_logged_in: Instant,
    window: u64,
}

impl StallRig {
    /// Starts (e)'s Redis, IdP (tokens of `2W` s) and Cloakroom (the run's cool-off), and logs
    /// the expired group in.
    pub(crate) async fn start(
        args: &Args,
        repo: &Path,
        bin: &Path,
        dir: &Path,
        upstream: SocketAddr,
        env: &[(String, String)],
        http: &reqwest::Client,
    ) -> Result<Self, String> {
        if !(args.stall_rate > 0.0 && args.stall_rate.is_finite()) || args.stall_cooloff == 0 {
            return Err("(e): --stall-rate and --stall-cooloff must be positive".into());
        }
        let window = window(args)?;
        let dir = dir.join("stall");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let redis = Redis::start(&dir)?;
        let (port, admin) = (procs::free_port(), procs::free_port());
        let mut config = crate::idp_config(port, 2 * window, &[]);
        let hold = if args.stall_mode == "hang" {
            // The IdP on a port of its own, its issuer (every URL it advertises) the proxy's.
            let idp_port = procs::free_port();
            let hold = Hold::start(([127, 0, 0, 1], idp_port).into()).await?;
            config["port"] = idp_port.into();
            config["issuer"] = format!("http://{}", hold.addr).into();
            Some(hold)
        } else {
            None
        };
        let idp = Idp::start(repo, &dir, &config)?;
        let text = crate::cloakroom_toml(port, admin, &idp.issuer, &redis.url(), upstream).replace(
            "[session]\n",
            &format!("[session]\nrefresh_cooloff = \"{}s\"\n", args.stall_cooloff),
        );
        // Its log is small (thousands of calls, not millions): kept with --keep-dir.
        let cloak = Cloakroom::spawn(bin, &dir, port, admin, &text, env, args.keep_dir)?;
        let expired =
            seed::login_many(http, &cloak.base(), &idp.issuer, args.stall_sessions).await?;
        Ok(Self {
            _redis: redis,
            idp,
            hold,
            cloak,
            expired: Arc::new(expired),
            expired_logged_in: Instant::now(),
            window,
        })
    }

    /// Token requests so far: the IdP's count, or with `hang` the proxy's.
    fn hits(&self, idp: &IdpStats) -> u64 {
        self.hold
            .as_ref()
            .map_or(idp.token_endpoint_hits, Hold::token_requests)
    }

    async fn outage(&self, http: &reqwest::Client, mode: &str) -> Result<(), String> {
        match &self.hold {
            Some(h) => {
                h.set(mode != "none");
                Ok(())
            }
            None if mode == "none" => self.idp.outage(http, "none", "").await,
            None => self.idp.outage(http, mode, "/token").await,
        }
    }

    async fn refreshes(&self, http: &reqwest::Client, outcome: &str) -> Option<f64> {
        self.cloak
            .metric_where(
                http,
                "cloakroom_refreshes_total",
                &format!("outcome=\"{outcome}\""),
            )
            .await
    }

    /// Runs (e) (see the module documentation).
    pub(crate) async fn run(&self, args: &Args, http: &reqwest::Client) -> Result<Stall, String> {
        let w = self.window;
        let ttl = 2 * w;
        let n = args.stall_sessions;
        let period = Duration::from_secs_f64(1.0 / args.stall_rate);
        let conns = args.stall_connections;
        let base = self.cloak.base();
        let (addr, path) = split_url(&format!("{base}/api/stall"))?;

        // The valid group logs in no earlier than W s after the expired one: W + 1 s later,
        // when its tokens are due, the expired group's have expired.
        tokio::time::sleep_until((self.expired_logged_in + Duration::from_secs(w)).into()).await;
        log(format!(
            "(e) {n} more logins (tokens of {ttl} s, due in the last {w} s); the outage starts {} s after them",
            w + 1
        ));
        let v0 = Instant::now();
        let valid = Arc::new(seed::login_many(http, &base, &self.idp.issuer, n).await?);
        let v1 = Instant::now();
        let start = v1 + Duration::from_secs(w + 1);
        // Their tokens expire no earlier than (login start, whole seconds) + lifetime.
        let valid_until = v0 + Duration::from_secs(ttl) - Duration::from_secs(1);
        let spread = (v1 - v0).as_secs_f64();

        // Baseline: the same calls while the tokens are not yet due (they are from v0 + W on).
        let before_secs = (args.duration as f64).min(w as f64 - spread - 2.0);
        if before_secs < 0.5 {
            return Err(format!(
                "(e): the logins took {spread:.1} s, no time is left for the baseline"
            ));
        }
        log(format!(
            "    baseline: {n} sessions × {} calls/s for {before_secs:.1} s, the IdP healthy",
            args.stall_rate
        ));
        let before = load::paced(
            addr,
            &path,
            valid.clone(),
            period,
            conns,
            Instant::now(),
            before_secs,
        )
        .await;

        tokio::time::sleep_until(start.into()).await;
        let s0 = self.idp.stats(http).await?;
        let h0 = self.hits(&s0);
        let (ok0, tr0) = (
            self.refreshes(http, "ok").await,
            self.refreshes(http, "transient").await,
        );
        self.outage(http, &args.stall_mode).await?;
        let t0 = Instant::now();
        let recovery = recovery(args) as f64;
        log(format!(
            "    outage ({}) for {} s, then {recovery:.0} s of recovery: {n} due-but-valid + {n} expired sessions × {} calls/s",
            args.stall_mode, args.stall_seconds, args.stall_rate
        ));
        let total = args.stall_seconds as f64 + recovery;
        let lift = async {
            tokio::time::sleep_until((t0 + Duration::from_secs(args.stall_seconds)).into()).await;
            let s1 = self.idp.stats(http).await;
            let h1 = s1.as_ref().map(|s| self.hits(s)).unwrap_or(0);
            let tr1 = self.refreshes(http, "transient").await;
            let lifted = self.outage(http, "none").await;
            (s1, h1, tr1, lifted, t0.elapsed().as_secs_f64())
        };
        let (vcalls, ecalls, (s1, h1, tr1, lifted, lift_at)) = tokio::join!(
            load::paced(addr, &path, valid.clone(), period, conns, t0, total),
            load::paced(addr, &path, self.expired.clone(), period, conns, t0, total),
            lift
        );
        s1?;
        lifted?;
        let s2 = self.idp.stats(http).await?;
        let h2 = self.hits(&s2);
        let ok2 = self.refreshes(http, "ok").await;

        let stall_end = args.stall_seconds as f64;
        let until = (valid_until - t0).as_secs_f64();
        // Phases by when a call was sent (with `hang`, calls of the expired group can wait for
        // a free connection long after they were due).
        let in_stall = |c: &&Call| c.sent < stall_end;
        let in_recovery = |c: &&Call| c.sent >= lift_at;
        let valid_ok = |c: &&Call| c.sent < until;
        let past_expiry = vcalls.iter().filter(|c| !valid_ok(c)).count() as u64;
        let hits = h1 - h0;
        let whole: IdpStats = s2.since(&s0);
        let sessions = 2 * n as u64;
        let bound = sessions * (args.stall_seconds.div_ceil(args.stall_cooloff) + 1);

        let mut last: BTreeMap<(bool, usize), u16> = BTreeMap::new();
        for c in &vcalls {
            last.insert((true, c.session), c.status);
        }
        for c in &ecalls {
            last.insert((false, c.session), c.status);
        }
        let not_recovered =
            last.values().filter(|s| **s != 200).count() as u64 + (sessions - last.len() as u64);
        let mut first_ok: BTreeMap<usize, f64> = BTreeMap::new();
        for c in ecalls
            .iter()
            .filter(in_recovery)
            .filter(|c| c.status == 200)
        {
            // Due time + latency: when the answer came.
            let t = c.at + f64::from(c.latency_us) / 1e6 - lift_at;
            first_ok
                .entry(c.session)
                .and_modify(|x| *x = x.min(t))
                .or_insert(t);
        }
        let recovered_within = if first_ok.len() == n {
            first_ok.values().copied().fold(0.0, f64::max)
        } else {
            f64::NAN
        };
        let s = Stall {
            mode: args.stall_mode.clone(),
            stall_seconds: args.stall_seconds,
            cooloff_seconds: args.stall_cooloff,
            token_lifetime_seconds: ttl,
            valid_sessions: n,
            expired_sessions: self.expired.len(),
            calls_per_session_per_second: args.stall_rate,
            valid_left_at_start: [
                (valid_until - start).as_secs_f64(),
                (v1 + Duration::from_secs(ttl) - start).as_secs_f64(),
            ],
            token_endpoint_hits: hits,
            bound,
            within_bound: hits <= bound,
            cloakroom_transient: tr1.zip(tr0).map(|(a, b)| (a - b) as u64),
            recovery_token_endpoint_hits: h2 - h1,
            held_released: self.hold.as_ref().map(|h| h.held_requests().0),
            held_dropped: self.hold.as_ref().map(|h| h.held_requests().1),
            idp_refreshes: whole.refreshes,
            cloakroom_refreshes: ok2.zip(ok0).map(|(a, b)| (a - b) as u64),
            grants_revoked: whole.grants_revoked,
            refresh_reuse: whole.refresh_reuse,
            grant_errors: whole.grant_errors,
            valid_before: Phase::of(before.iter()),
            valid_stall: Phase::of(vcalls.iter().filter(in_stall).filter(valid_ok)),
            valid_recovery: Phase::of(vcalls.iter().filter(in_recovery).filter(valid_ok)),
            expired_stall: Phase::of(ecalls.iter().filter(in_stall)),
            expired_recovery: Phase::of(ecalls.iter().filter(in_recovery)),
            valid_calls_past_expiry: past_expiry,
            not_recovered,
            expired_recovered_within_s: recovered_within,
        };
        log(format!(
            "    token endpoint: {} requests during the outage (bound {}: {}), {} during the recovery; {} refreshes; {} grants revoked, {} refresh tokens reused",
            s.token_endpoint_hits,
            s.bound,
            if s.within_bound { "within" } else { "EXCEEDED" },
            s.recovery_token_endpoint_hits,
            s.idp_refreshes,
            s.grants_revoked,
            s.refresh_reuse
        ));
        if let (Some(r), Some(d)) = (s.held_released, s.held_dropped) {
            log(format!(
                "    held token requests: {r} passed on when the outage ended, {d} dropped (their client had given up)"
            ));
        }
        log(format!(
            "    valid tokens: p50/p99 {:.0}/{:.0} µs before, {:.0}/{:.0} µs during the outage ({} of {} failed); expired tokens during the outage: {:?}",
            s.valid_before.p50_us,
            s.valid_before.p99_us,
            s.valid_stall.p50_us,
            s.valid_stall.p99_us,
            s.valid_stall.failed(),
            s.valid_stall.calls,
            s.expired_stall.statuses
        ));
        log(format!(
            "    recovery: {} sessions not recovered; expired sessions answered 200 within {:.1} s of the end of the outage",
            s.not_recovered, s.expired_recovered_within_s
        ));
        Ok(s)
    }
}

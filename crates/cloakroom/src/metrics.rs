//! Metric names and the helpers that record them (the `metrics` facade; the Prometheus exporter
//! is installed by `admin`). Names are documented in README (Operations → Metrics).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// A route's request counter and duration histogram for one status.
type RequestMetrics = (metrics::Counter, metrics::Histogram);

/// A route label by its address and length: labels are `&'static str`s made once per route
/// at router build, so the key is two words to hash (foldhash), never the label's text. (Two
/// copies of one label are two keys for the same metric: harmless.)
type LabelKey = (usize, usize);

fn label_key(label: &'static str) -> LabelKey {
    (label.as_ptr() as usize, label.len())
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

thread_local! {
    /// Handles of the per-request metrics, per thread (per core), resolved on a label's first
    /// request: looking a labelled metric up in the registry hashes its whole key every time;
    /// a handle records directly.
    static REQUESTS: RefCell<FastMap<(LabelKey, u16), RequestMetrics>> =
        RefCell::new(FastMap::default());
    static UPSTREAM: RefCell<FastMap<LabelKey, metrics::Histogram>> =
        RefCell::new(FastMap::default());
}

/// A status code as a label value: the usual ones without an allocation per request.
fn status_label(status: u16) -> metrics::SharedString {
    let s: &'static str = match status {
        101 => "101",
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        303 => "303",
        304 => "304",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        412 => "412",
        413 => "413",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return metrics::SharedString::from(status.to_string()),
    };
    metrics::SharedString::const_str(s)
}

/// A request finished.
pub fn request(route: &'static str, status: u16, elapsed: Duration) {
    REQUESTS.with_borrow_mut(|m| {
        let (count, duration) = m.entry((label_key(route), status)).or_insert_with(|| {
            let label = status_label(status);
            (
                metrics::counter!("cloakroom_requests_total", "route" => route, "status" => label),
                metrics::histogram!("cloakroom_request_duration_seconds", "route" => route),
            )
        });
        count.increment(1);
        duration.record(elapsed.as_secs_f64());
    });
}

/// An upstream answered (headers received).
pub fn upstream(route: &'static str, elapsed: Duration) {
    UPSTREAM.with_borrow_mut(|m| {
        m.entry(label_key(route))
            .or_insert_with(
                || metrics::histogram!("cloakroom_upstream_duration_seconds", "route" => route),
            )
            .record(elapsed.as_secs_f64());
    });
}

/// An upstream response header was dropped (`set-cookie` naming our cookies,
/// `clear-site-data`).
pub fn upstream_header_dropped(route: &'static str, header: &'static str) {
    metrics::counter!("cloakroom_upstream_headers_dropped_total", "route" => route, "header" => header)
        .increment(1);
}

/// A DPoP request was sent again with the nonce `target` (`idp` or `upstream`) asked for
/// (RFC 9449 §8, §9).
pub fn dpop_nonce_retry(target: &'static str) {
    metrics::counter!("cloakroom_dpop_nonce_retries_total", "target" => target).increment(1);
}

/// A login was started.
pub fn login_started() {
    metrics::counter!("cloakroom_logins_started_total").increment(1);
}

/// A login finished with `outcome` (`ok` or an error code).
pub fn login_finished(outcome: &'static str) {
    metrics::counter!("cloakroom_logins_total", "outcome" => outcome).increment(1);
}

/// A user logged out.
pub fn rate_limited() {
    metrics::counter!("cloakroom_rate_limited_total").increment(1);
}

/// A user logged out.
pub fn logout() {
    metrics::counter!("cloakroom_logouts_total").increment(1);
}

/// A session ended whose tokens could not be revoked: the IdP has no revocation endpoint.
pub fn revocation_unavailable() {
    metrics::counter!("cloakroom_revocation_unavailable_total").increment(1);
}

/// A configuration reload, by result (`ok`, `error`).
pub fn config_reload(result: &'static str) {
    metrics::counter!("cloakroom_config_reload_total", "result" => result).increment(1);
}

/// A token revocation at the IdP failed.
pub fn revocation_failed() {
    metrics::counter!("cloakroom_revocation_failures_total").increment(1);
}

/// A store operation failed.
pub fn store_error() {
    metrics::counter!("cloakroom_store_errors_total").increment(1);
}

/// The JWKS was re-fetched because of an unknown key id.
pub fn jwks_refetch() {
    metrics::counter!("cloakroom_jwks_refetches_total").increment(1);
}

/// A token refresh at the IdP finished with `outcome` (`ok`, `fatal`, `transient`).
pub fn refresh(outcome: &'static str) {
    metrics::counter!("cloakroom_refreshes_total", "outcome" => outcome).increment(1);
}

/// A route's own token (`kind`: `resource`, `exchange`, `client`) was asked for, with `outcome`.
pub fn route_token(kind: &'static str, outcome: &'static str) {
    metrics::counter!("cloakroom_route_tokens_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

/// A back-channel logout was handled with `outcome`.
pub fn backchannel_logout(outcome: &'static str) {
    metrics::counter!("cloakroom_backchannel_logouts_total", "outcome" => outcome).increment(1);
}

/// One store operation took `elapsed`.
pub fn store_latency(elapsed: Duration) {
    metrics::histogram!("cloakroom_store_duration_seconds").record(elapsed.as_secs_f64());
}

/// Counts one live upstream connection for as long as it exists.
#[derive(Debug)]
pub struct UpstreamConnGuard(());

impl UpstreamConnGuard {
    /// A connection was opened.
    #[must_use]
    pub fn new() -> Self {
        metrics::counter!("cloakroom_upstream_connections_opened_total").increment(1);
        metrics::gauge!("cloakroom_upstream_connections_active").increment(1.0);
        Self(())
    }
}

impl Default for UpstreamConnGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for UpstreamConnGuard {
    fn drop(&mut self) {
        metrics::gauge!("cloakroom_upstream_connections_active").decrement(1.0);
    }
}

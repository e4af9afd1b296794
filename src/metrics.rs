//! Metric names and the helpers that record them (the `metrics` facade; the Prometheus exporter
//! is installed by `admin`). Names are documented in README (Operations → Metrics).

use std::time::Duration;

/// A request finished.
pub fn request(route: &'static str, status: u16, elapsed: Duration) {
    let status = status.to_string();
    metrics::counter!("cloakroom_requests_total", "route" => route, "status" => status)
        .increment(1);
    metrics::histogram!("cloakroom_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
}

/// An upstream answered (headers received).
pub fn upstream(route: &'static str, elapsed: Duration) {
    metrics::histogram!("cloakroom_upstream_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
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
pub fn logout() {
    metrics::counter!("cloakroom_logouts_total").increment(1);
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

//! Integration tests: one binary, real Redis, the real IdP (npm oidc-provider), an echo
//! upstream, Cloakroom on port 0.

mod support;

#[cfg(feature = "bench")]
mod bench_smoke;
#[cfg(feature = "demo")]
mod browser;
#[cfg(feature = "demo")]
mod demo;
mod hardening;
mod hostile;
mod lifecycle;
mod limits;
mod login_flow;
mod login_state;
mod ops;
mod props;
mod proxying;
mod refresh;
mod session_cache;
mod soak;
mod store;
mod tls;
mod topology;
mod tunnels_end;

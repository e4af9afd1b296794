//! Integration tests: one binary, real Redis, the real IdP (npm oidc-provider), an echo
//! upstream, Cloakroom on port 0.

mod support;

mod demo;
mod hostile;
mod lifecycle;
mod login_flow;
mod ops;
mod proxying;
mod store;
mod tls;
mod topology;

//! Integration tests: one binary, real Redis, the real IdP (npm oidc-provider; and
//! django-oauth-toolkit for `second_idp`), an echo upstream, Cloakroom on port 0.

mod support;

mod audit;
mod browser;
mod client_auth;
mod demo;
mod devices;
mod dpop;
mod fapi;
mod hardening;
mod hostile;
mod lifecycle;
mod limits;
mod login_flow;
mod login_state;
mod matrix;
mod mtls;
mod ops;
mod par;
mod props;
mod providers;
mod proxying;
mod reconstitute;
mod refresh;
mod reload;
mod remembered;
mod route_tokens;
mod second_idp;
mod session_cache;
mod soak;
mod spa_client;
mod step_up;
mod store;
mod tls;
mod topology;
mod traces;
mod tunnels_end;

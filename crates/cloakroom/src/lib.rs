//! Cloakroom: a backend-for-frontend token handler.
//!
//! The browser talks only to Cloakroom, holding an opaque encrypted cookie. Cloakroom runs the
//! OIDC code flow, keeps tokens server-side (sealed) in Redis, attaches `Authorization: Bearer`
//! to the API calls it proxies, and ends sessions at logout. See ARCHITECTURE.md for the code
//! map and invariants; the most important one: **no token ever reaches the browser**.

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod client_tokens;
pub mod clock;
pub mod config;
pub(crate) mod context;
pub mod cookies;
pub mod cores;
pub mod cors;
pub mod crypto;
pub mod end;
pub mod error;
pub(crate) mod loader;
pub(crate) mod logline;
pub mod metrics;
pub mod oidc;
pub mod proxy;
pub(crate) mod query;
pub mod ratelimit;
pub mod reaper;
pub mod refresh;
pub mod routes;
pub mod secret;
pub mod server;
pub mod session;
pub mod stepup;
pub mod telemetry;
pub mod trace;
pub mod tunnels;

pub use app::{App, Listeners, RunningApp};
pub use config::Config;

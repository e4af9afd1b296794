pub mod body;
pub mod config;
pub mod crypto;
pub mod error;
pub mod oidc;
pub mod secret;
pub mod session;

//! Failure classification for token-endpoint calls (SPEC §3).

use crate::error::error_chain;
use openidconnect::core::CoreErrorResponseType;
use openidconnect::RequestTokenError;

/// Why a refresh failed (SPEC §3).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// The grant is dead (`invalid_grant`): end the session.
    #[error("refresh refused: {0}")]
    Fatal(String),
    /// The IdP refused *us* (`invalid_client`, `unauthorized_client`: a client-secret rollover,
    /// a misconfiguration): keep the session, tell the operator loudly.
    #[error("client refused by the IdP: {0}")]
    ClientRejected(String),
    /// The IdP refused what was asked on top of the refresh (`invalid_target`, `invalid_scope`
    /// for a per-resource token): the grant is fine, that token cannot be had.
    #[error("refused: {0}")]
    Denied(String),
    /// Unreachable, timed out, 5xx, unreadable: try again after the cool-off; keep the session.
    #[error("refresh unavailable: {0}")]
    Transient(String),
}

/// What a token-endpoint failure means for the session (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// `invalid_grant`: the grant is dead, end the session.
    Fatal,
    /// `invalid_client`, `unauthorized_client`: our credentials are refused (a secret rollover
    /// at the IdP); the user's grant may be fine. Keep the session.
    ClientRejected,
    /// `invalid_target`, `invalid_scope`: what was asked for cannot be had; the grant is fine.
    Denied,
    /// Network, timeout, 5xx, anything else: try again later.
    Transient,
}

pub(super) fn describe_token_error<RE: std::error::Error + 'static>(
    e: &RequestTokenError<RE, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => format!("IdP answered {}", r.error().as_ref()),
        RequestTokenError::Request(inner) => format!("request failed: {}", error_chain(inner)),
        RequestTokenError::Parse(p, _) => format!("unreadable response: {p}"),
        RequestTokenError::Other(o) => format!("unexpected response: {o}"),
    }
}

/// Classifies a token-endpoint failure (SPEC §3).
#[must_use]
pub fn classify<RE: std::error::Error + 'static>(
    e: &RequestTokenError<RE, openidconnect::StandardErrorResponse<CoreErrorResponseType>>,
) -> FailureKind {
    match e {
        RequestTokenError::ServerResponse(r) => match r.error() {
            CoreErrorResponseType::InvalidGrant => FailureKind::Fatal,
            CoreErrorResponseType::InvalidClient | CoreErrorResponseType::UnauthorizedClient => {
                FailureKind::ClientRejected
            }
            CoreErrorResponseType::InvalidScope => FailureKind::Denied,
            CoreErrorResponseType::Extension(x) if x == "invalid_target" => FailureKind::Denied,
            _ => FailureKind::Transient,
        },
        _ => FailureKind::Transient,
    }
}

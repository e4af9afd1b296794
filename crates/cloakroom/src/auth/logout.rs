//! `POST /auth/logout`: read and delete the session and its index entries in one step, revoke
//! the tokens the deleted record held at the IdP (RFC 7009, after the answer), expire the
//! cookie, return the end_session URL (SPEC §1). Idempotent.

use super::{check_csrf, current_session};
use crate::app::AppState;
use crate::body::Body;
use crate::cookies;
use crate::error::{json_response, Error};
use http::{header, Request, Response, StatusCode};

pub(crate) async fn logout<B>(state: &AppState, req: &Request<B>) -> Result<Response<Body>, Error> {
    check_csrf(state, req.headers(), false)?;
    let end_session_url = match current_session(state, req.headers(), false).await? {
        None => None,
        Some((handle, s)) => {
            // Reads and deletes the record in one step and revokes the tokens it held (a
            // refresh that landed after our read is revoked too), after this answer.
            state.ender.end(&handle, Some(&s), "logout").await?;
            tracing::info!(
                event = "logout",
                session = %crate::session::short(&handle),
                sub = %s.sub,
                "session ended by the user"
            );
            crate::metrics::logout();
            state
                .oidc
                .end_session_url(Some(&s.tokens.id_token))
                .map(|u| u.to_string())
        }
    };
    let mut resp = json_response(
        StatusCode::OK,
        &serde_json::json!({ "end_session_url": end_session_url }),
    );
    resp.headers_mut()
        .append(header::SET_COOKIE, cookies::expire_session(&state.config));
    Ok(resp)
}

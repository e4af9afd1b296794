//! `POST /auth/logout`: read and delete the session and its index entries in one step, revoke
//! the tokens the deleted record held at the IdP (RFC 7009, after the answer), expire the
//! cookie, return the end_session URL (SPEC §1). Idempotent.

use crate::body::Body;
use crate::cookies::Cookies;
use crate::cors::Origins;
use crate::end::Ender;
use crate::error::{json_response, Error};
use crate::loader::SessionLoader;
use crate::oidc::OidcClient;
use http::{header, Request, Response, StatusCode};
use std::sync::Arc;

/// `POST /auth/logout` and what it uses.
#[derive(Debug)]
pub(crate) struct Logout {
    pub(crate) origins: Arc<Origins>,
    pub(crate) loader: SessionLoader,
    pub(crate) ender: Ender,
    pub(crate) oidc: Arc<OidcClient>,
    pub(crate) cookies: Arc<Cookies>,
}

impl Logout {
    pub(crate) async fn handle<B>(&self, req: &Request<B>) -> Result<Response<Body>, Error> {
        let state = self;
        state.origins.check_csrf(req.headers(), false)?;
        let end_session_url = match state.loader.current(req.headers(), false).await? {
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
            .append(header::SET_COOKIE, state.cookies.expire_session());
        Ok(resp)
    }
}

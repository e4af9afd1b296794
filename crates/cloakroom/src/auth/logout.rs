//! `POST /auth/logout`: read and delete the session and its index entries in one step, revoke
//! the tokens the deleted record held at the IdP (RFC 7009, after the answer), expire the
//! cookie, return the end_session URL (SPEC §1). Idempotent.
//!
//! A JSON body `{"scope": "others"}` ends the user's other sessions instead (this one stays),
//! `{"scope": "everywhere"}` all of them; the default is `"this"`.

use crate::body::Body;
use crate::cookies::Cookies;
use crate::cors::Origins;
use crate::end::Ender;
use crate::error::{json_response, Error};
use crate::loader::SessionLoader;
use crate::oidc::Providers;
use crate::session::{short, Index};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;

/// `POST /auth/logout` and what it uses.
#[derive(Debug)]
pub(crate) struct Logout {
    pub(crate) origins: Arc<Origins>,
    pub(crate) loader: SessionLoader,
    pub(crate) ender: Ender,
    /// The identity providers: the session's gives the end_session URL.
    pub(crate) providers: Providers,
    pub(crate) cookies: Arc<Cookies>,
    pub(crate) sessions: crate::session::Sessions,
}

/// Which sessions a logout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    This,
    Others,
    Everywhere,
}

/// The `scope` of the JSON body, if there is one (an empty body is `"this"`).
async fn scope(req: Request<hyper::body::Incoming>) -> Result<Scope, Error> {
    let body = Limited::new(req.into_body(), 1024)
        .collect()
        .await
        .map_err(|_| Error::InvalidRequest("logout body unreadable or too large".into()))?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Scope::This);
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| Error::InvalidRequest("logout body must be JSON".into()))?;
    match v.get("scope").and_then(serde_json::Value::as_str) {
        None | Some("this") => Ok(Scope::This),
        Some("others") => Ok(Scope::Others),
        Some("everywhere") => Ok(Scope::Everywhere),
        Some(_) => Err(Error::InvalidRequest(
            "scope must be this, others or everywhere".into(),
        )),
    }
}

impl Logout {
    pub(crate) async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, Error> {
        let state = self;
        state.origins.check_csrf(req.headers(), false)?;
        let current = state.loader.current(req.headers(), false).await?;
        let scope = scope(req).await?;
        let mut ended = 0;
        if scope != Scope::This {
            if let Some((handle, s)) = &current {
                // The same path as the admin API: every instance's cache is told.
                // The same `sub` at another identity provider is another user: its issuer's
                // index only (and the unscoped one of earlier releases, see `Found`).
                let iss = state.providers.issuer_of(s);
                let iss: Vec<&str> = iss.as_deref().into_iter().collect();
                let mut found = state.sessions.find(Index::Sub, &iss, &s.sub).await?;
                let unreadable = found.unreadable_of(state.providers.len() == 1);
                let others: Vec<(String, Option<crate::session::Session>)> = found
                    .live
                    .into_iter()
                    .filter(|(_, x)| x.provider == s.provider)
                    .map(|(h, x)| (h, Some(x)))
                    .chain(unreadable.into_iter().map(|h| (h, None)))
                    .filter(|(h, _)| h != handle)
                    .collect();
                ended = state.ender.end_all(others, "logout_others").await?;
                tracing::info!(
                    target: "audit", event = "audit",
                    action = if scope == Scope::Others { "logout_others" } else { "logout_everywhere" },
                    sub = %s.sub,
                    session = %short(handle),
                    ended,
                    "the user ended their other sessions"
                );
            }
        }
        if scope == Scope::Others {
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "end_session_url": null, "ended": ended }),
            ));
        }
        let end_session_url = match current {
            None => None,
            Some((handle, s)) => {
                ended += 1;
                // Reads and deletes the record in one step and revokes the tokens it held (a
                // refresh that landed after our read is revoked too), after this answer.
                state.ender.end(&handle, Some(&s), "logout").await?;
                tracing::info!(
                    target: "audit", event = "logout",
                    scope = if scope == Scope::Everywhere { "everywhere" } else { "this" },
                    session = %crate::session::short(&handle),
                    sub = %s.sub,
                    sid = s.sid.as_deref(),
                    "session ended by the user"
                );
                crate::metrics::logout();
                state
                    .providers
                    .bound(s.binding())
                    .and_then(|oidc| oidc.end_session_url(Some(&s.tokens.id_token)))
                    .map(|u| u.to_string())
            }
        };
        let mut resp = json_response(
            StatusCode::OK,
            &serde_json::json!({ "end_session_url": end_session_url, "ended": ended }),
        );
        resp.headers_mut()
            .append(header::SET_COOKIE, state.cookies.expire_session());
        Ok(resp)
    }
}

//! The user's own sessions ("your devices") and the SPA's state beside its session:
//!
//! - `GET /auth/sessions`: the signed-in user's sessions (a short id, created, last seen, IP,
//!   a readable device from the User-Agent, `current`, `remembered`), never tokens;
//! - `DELETE /auth/sessions/{id}`: ends one of them (the same [`Ender`] path as the admin API
//!   and logout: deleted, tokens revoked, every instance's cache told);
//! - `GET` / `PUT /auth/session/state`: a small JSON value (at most [`MAX_STATE`] bytes) the
//!   SPA keeps with its session, sealed at rest.
//!
//! All need the CSRF header and a session; each action is an audit log event
//! (`event = "audit"`).

use crate::body::Body;
use crate::cors::Origins;
use crate::end::Ender;
use crate::error::{json_response, Error};
use crate::loader::SessionLoader;
use crate::session::{short, Index, Session, Sessions};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;

/// Largest state the SPA may store with its session (bytes of JSON).
pub const MAX_STATE: usize = 4096;

/// `/auth/sessions` and `/auth/session/state`, and what they use.
#[derive(Debug)]
pub(crate) struct Devices {
    pub(crate) origins: Arc<Origins>,
    pub(crate) loader: SessionLoader,
    pub(crate) sessions: Sessions,
    pub(crate) ender: Ender,
    pub(crate) cookies: Arc<crate::cookies::Cookies>,
}

/// A readable device from a User-Agent ("Chrome on Linux"), if it says enough.
#[must_use]
pub fn device(user_agent: &str) -> Option<String> {
    let r = woothee::parser::Parser::new().parse(user_agent)?;
    let known = |s: &str| s != woothee::woothee::VALUE_UNKNOWN && !s.is_empty();
    match (known(r.name), known(r.os)) {
        (true, true) => Some(format!("{} on {}", r.name, r.os)),
        (true, false) => Some(r.name.to_string()),
        (false, true) => Some(r.os.to_string()),
        (false, false) => None,
    }
}

fn listed(handle: &str, s: &Session, current: &str) -> serde_json::Value {
    serde_json::json!({
        "id": short(handle),
        "created_at": s.created_at,
        "last_seen": s.last_seen,
        "ip": s.ip,
        "device": s.user_agent.as_deref().and_then(device),
        "current": handle == current,
        "remembered": s.remembered,
    })
}

impl Devices {
    async fn current<B>(&self, req: &Request<B>) -> Result<(String, Session), Error> {
        self.origins.check_csrf(req.headers(), false)?;
        self.loader
            .current(req.headers(), true)
            .await?
            .ok_or(Error::Unauthenticated)
    }

    /// The user's sessions found through their issuer's `sub` index.
    async fn mine(&self, s: &Session) -> Result<crate::session::Found, Error> {
        let iss = self.ender.providers().issuer_of(s);
        let iss: Vec<&str> = iss.as_deref().into_iter().collect();
        Ok(self.sessions.find(Index::Sub, &iss, &s.sub).await?)
    }

    /// `GET /auth/sessions`.
    pub(crate) async fn list<B>(&self, req: &Request<B>) -> Result<Response<Body>, Error> {
        let (handle, s) = self.current(req).await?;
        let found = self.mine(&s).await?;
        // The same `sub` at another identity provider is another user.
        let mut list: Vec<(String, Session)> = found
            .live
            .into_iter()
            .filter(|(_, x)| x.provider == s.provider)
            .collect();
        list.sort_by_key(|(h, x)| (std::cmp::Reverse(*h == handle), -x.last_seen));
        let body: Vec<serde_json::Value> =
            list.iter().map(|(h, x)| listed(h, x, &handle)).collect();
        tracing::info!(target: "audit", event = "audit", action = "list_devices", sub = %s.sub, session = %short(&handle), count = body.len(), "the user listed their sessions");
        Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "sessions": body }),
        ))
    }

    /// `DELETE /auth/sessions/{id}`: `id` as listed. Only the user's own sessions are found.
    pub(crate) async fn end<B>(&self, req: &Request<B>, id: &str) -> Result<Response<Body>, Error> {
        let (handle, s) = self.current(req).await?;
        let found = self.mine(&s).await?;
        let mut hits = found
            .live
            .into_iter()
            .filter(|(h, x)| short(h) == id && x.provider == s.provider);
        let (Some((victim, copy)), None) = (hits.next(), hits.next()) else {
            return Err(Error::NotFound);
        };
        if !self.ender.end(&victim, Some(&copy), "user_device").await? {
            return Err(Error::NotFound);
        }
        tracing::info!(target: "audit", event = "audit", action = "end_device", sub = %s.sub, session = %short(&handle), ended = %short(&victim), current = victim == handle, "the user ended one of their sessions");
        let mut resp = json_response(
            StatusCode::OK,
            &serde_json::json!({ "ended": true, "current": victim == handle }),
        );
        if victim == handle {
            // This browser's own: its cookie goes too, as at logout.
            resp.headers_mut()
                .append(http::header::SET_COOKIE, self.cookies.expire_session());
        }
        Ok(resp)
    }

    /// `GET /auth/session/state`: `{"state": <JSON or null>}`.
    pub(crate) async fn get_state<B>(&self, req: &Request<B>) -> Result<Response<Body>, Error> {
        let (handle, _) = self.current(req).await?;
        let state = match self.sessions.load_state(&handle).await? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Null,
        };
        Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "state": state }),
        ))
    }

    /// `PUT /auth/session/state`: any JSON value of at most [`MAX_STATE`] bytes; 204.
    pub(crate) async fn put_state(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, Error> {
        let (handle, s) = self.current(&req).await?;
        let body = Limited::new(req.into_body(), MAX_STATE)
            .collect()
            .await
            .map_err(|_| Error::StateTooLarge)?
            .to_bytes();
        if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
            return Err(Error::InvalidRequest("the state must be JSON".into()));
        }
        self.sessions.save_state(&handle, &s, &body).await?;
        tracing::info!(target: "audit", event = "audit", action = "save_state", sub = %s.sub, session = %short(&handle), bytes = body.len(), "the SPA saved its state");
        let mut resp = Response::new(crate::body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::device;

    #[test]
    fn devices_read_from_user_agents() {
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
        assert_eq!(device(chrome).as_deref(), Some("Chrome on Linux"));
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
        assert_eq!(device(iphone).as_deref(), Some("Safari on iPhone"));
        assert_eq!(device(""), None);
        assert_eq!(device("-"), None);
    }
}

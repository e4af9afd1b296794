//! `GET /auth/user[?slide=false]`: who is logged in, and until when (SPEC §1). Never a token.

use crate::body::Body;
use crate::cors::Origins;
use crate::error::{json_response, Error};
use crate::loader::SessionLoader;
use crate::query::{query_pairs, query_param};
use http::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// `GET /auth/user` and what it uses.
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) origins: Arc<Origins>,
    pub(crate) loader: SessionLoader,
    pub(crate) idle_timeout: Duration,
    /// The server's clock: `session.now`, so an SPA with a wrong clock still counts down right.
    pub(crate) clock: crate::clock::Clock,
    /// `oidc.name`: the provider of sessions that record none.
    pub(crate) primary_provider: String,
}

impl User {
    pub(crate) async fn handle<B>(&self, req: &Request<B>) -> Result<Response<Body>, Error> {
        self.origins.check_csrf(req.headers(), false)?;
        let pairs = query_pairs(req.uri());
        let slide = !matches!(
            query_param(&pairs, "slide")?.as_deref(),
            Some("false" | "0")
        );
        let (_, s) = self
            .loader
            .current(req.headers(), slide)
            .await?
            .ok_or(Error::Unauthenticated)?;
        let idle = self.idle_timeout;
        let claim = |k: &str| s.claims.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let body = serde_json::json!({
            "sub": s.sub,
            // How the user authenticated (step-up: compare with a route's acr_values/max_age).
            "acr": claim("acr"),
            "amr": claim("amr"),
            "auth_time": claim("auth_time"),
            "claims": s.claims,
            // The identity provider the session logged in with (`oidc.name` or a
            // `[[oidc.providers]]` name).
            "provider": s.provider.as_deref().unwrap_or(&self.primary_provider),
            // "Remember me": a persistent cookie and the session's own lifetimes.
            "remembered": s.remembered,
            // Whether this session took over the state of an earlier one of the same user.
            "reconstituted": s.reconstituted,
            "session": {
                "now": self.clock.unix(),
                "created_at": s.created_at,
                "expires_at": s.expires_at(idle),
                "idle_expires_at": s.idle_expires_at(idle),
                "absolute_expires_at": s.absolute_expires_at,
            }
        });
        Ok(json_response(StatusCode::OK, &body))
    }
}

//! `GET /auth/user[?slide=false]`: who is logged in, and until when (SPEC §1). Never a token.

use super::{check_csrf, current_session, query_pairs, query_param};
use crate::app::AppState;
use crate::body::Body;
use crate::error::{json_response, Error};
use http::{Request, Response, StatusCode};

pub(crate) async fn user<B>(state: &AppState, req: &Request<B>) -> Result<Response<Body>, Error> {
    check_csrf(state, req.headers(), false)?;
    let pairs = query_pairs(req.uri());
    let slide = !matches!(
        query_param(&pairs, "slide")?.as_deref(),
        Some("false" | "0")
    );
    let (_, s) = current_session(state, req.headers(), slide)
        .await?
        .ok_or(Error::Unauthenticated)?;
    let idle = state.sessions.idle_timeout();
    let body = serde_json::json!({
        "sub": s.sub,
        "claims": s.claims,
        "session": {
            "created_at": s.created_at,
            "expires_at": s.expires_at(idle),
            "idle_expires_at": s.idle_expires_at(idle),
            "absolute_expires_at": s.absolute_expires_at,
        }
    });
    Ok(json_response(StatusCode::OK, &body))
}

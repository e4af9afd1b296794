//! `POST /auth/backchannel-logout` (OIDC Back-Channel Logout 1.0): the IdP tells us a user's
//! session ended. Validate the logout token (§2.6), refuse a replayed `jti`, end the sessions
//! with that `sid` (or every session of `sub` when only `sub` is given).

use crate::body::Body;
use crate::crypto;
use crate::end::Ender;
use crate::error::{json_response, Error};
use crate::oidc::Providers;
use crate::oidc::LOGOUT_TOKEN_MAX_AGE;
use crate::session::Index;
use crate::session::Sessions;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::time::Duration;

const MAX_BODY: usize = 64 * 1024;

/// `POST /auth/backchannel-logout` and what it uses.
#[derive(Debug)]
pub(crate) struct Backchannel {
    /// The identity providers: the logout token's `iss` says whose it is.
    pub(crate) providers: Providers,
    pub(crate) sessions: Sessions,
    pub(crate) ender: Ender,
    pub(crate) clock_skew: Duration,
}

impl Backchannel {
    #[allow(clippy::too_many_lines)]
    pub(crate) async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, Error> {
        let state = self;
        let bad = |why: &str| {
            crate::metrics::backchannel_logout("rejected");
            tracing::info!(
                target: "audit", event = "backchannel_logout_rejected",
                reason = why,
                "back-channel logout refused"
            );
            Error::InvalidRequest(why.to_string())
        };
        let form_ok = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form_ok {
            return Err(bad(
                "content type must be application/x-www-form-urlencoded",
            ));
        }
        let body = Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| bad("body unreadable or too large"))?
            .to_bytes();
        let tokens: Vec<String> = url::form_urlencoded::parse(&body)
            .filter(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned())
            .collect();
        let [token] = tokens.as_slice() else {
            return Err(bad("exactly one logout_token is required"));
        };
        let oidc = state
            .providers
            .for_jwt(token)
            .ok_or_else(|| bad("the logout token's issuer is none of the configured providers"))?;
        let claims = oidc
            .validate_logout_token(token)
            .await
            .map_err(|why| bad(&why))?;
        let skew = i64::try_from(state.clock_skew.as_secs()).unwrap_or(60);
        let remember =
            Duration::from_secs(u64::try_from(LOGOUT_TOKEN_MAX_AGE + 2 * skew).unwrap_or(600));
        let jti_key = crypto::hash(&format!("jti:{}:{}", oidc.issuer(), claims.jti));
        let provider = state.providers.record_name(&oidc);
        let store = state.sessions.store();
        // The jti is remembered only once the sessions are ended: a failure on the way answers
        // 503 and the IdP's retry of the same token is accepted.
        if store.remembered(&jti_key).await? {
            return Err(bad("replayed jti"));
        }
        // This issuer's index only (and the unscoped one of earlier releases): the same `sid`
        // or `sub` at another IdP is another user.
        let iss = [oidc.issuer()];
        let mut found = match (&claims.sid, &claims.sub) {
            (Some(sid), _) => state.sessions.find(Index::Sid, &iss, sid).await?,
            (None, Some(sub)) => state.sessions.find(Index::Sub, &iss, sub).await?,
            (None, None) => crate::session::Found::default(),
        };
        // Records this instance cannot open (a key rotation in progress) are ended too when
        // this issuer's index holds them: the IdP said this session is over. Those found only
        // in the unscoped index of an earlier release may be another IdP's user's: left alone
        // unless there is one provider.
        let unreadable = found.unreadable_of(state.providers.len() == 1);
        let mut victims: Vec<(String, Option<crate::session::Session>)> = found
            .live
            .into_iter()
            .filter(|(_, s)| {
                // Only this provider's sessions: a `sid` or `sub` means nothing to another.
                s.provider == provider
                    && (claims.sid.is_none() || claims.sub.as_ref().is_none_or(|sub| &s.sub == sub))
            })
            .map(|(h, s)| (h, Some(s)))
            .collect();
        victims.extend(unreadable.into_iter().map(|h| (h, None)));
        let n = state.ender.end_all(victims, "backchannel_logout").await?;
        // A concurrent delivery of the same token may have remembered it first: both are fine.
        let _ = store.remember_once(&jti_key, remember).await?;
        crate::metrics::backchannel_logout("ok");
        tracing::info!(
            target: "audit", event = "backchannel_logout",
            sub = claims.sub.as_deref().unwrap_or("-"),
            provider = oidc.name(),
            by_sid = claims.sid.is_some(),
            sessions_ended = n,
            "back-channel logout"
        );
        Ok(json_response(StatusCode::OK, &serde_json::json!({})))
    }
}

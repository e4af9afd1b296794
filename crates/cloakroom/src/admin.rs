//! The admin listener (SPEC §5), on its own address, never reachable through the public one.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the store answers and IdP metadata is loaded; else 503 `{"error": "store_unavailable", "reason": …}` |
//! | `GET /metrics` | Prometheus text |
//!
//! With `CLOAKROOM_ADMIN_TOKEN` set, and `Authorization: Bearer <token>` on the request
//! (otherwise 401 `unauthenticated`; without the variable the admin API answers 404):
//!
//! | path | answer |
//! |---|---|
//! | `GET /admin/users/{sub}/sessions[?provider=NAME]` | 200 `{"sub", "sessions": [{handle, provider, created_at, last_seen, expires_at, idle_expires_at, absolute_expires_at, user_agent, ip}]}` — never tokens |
//! | `DELETE /admin/sessions/{handle}` | 200 `{"ended": 1}`, or 404 `not_found` |
//! | `DELETE /admin/users/{sub}/sessions[?except={handle}][&provider=NAME]` | 200 `{"ended": n}` — "log out everywhere" |
//!
//! With several identity providers a `sub` is only unique per provider: `provider=NAME` keeps
//! to that provider's sessions (400 `unknown_provider` for a name that is none); without it,
//! every provider's sessions with that `sub`.
//! Ending a session deletes it and revokes its tokens at the IdP. Every admin action is an
//! audit log event (`event = "admin"`).

use crate::body::{full, Body};
use crate::end::Ender;
use crate::error::{json_response, Error};
use crate::secret::{constant_time_eq, Secret};
use crate::session::{short, Index, Sessions};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often the recorder's upkeep runs: it folds recorded histogram samples into their
/// buckets, so memory stays bounded whether or not anyone scrapes `/metrics`.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the Prometheus recorder once per process (several apps in one test process share
/// it), and starts its upkeep: a thread of its own, so it outlives any one Tokio runtime.
pub(crate) fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .ok()?
                .install_recorder()
                .ok()?;
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the metrics upkeep thread");
            }
            Some(handle)
        })
        .as_ref()
}

/// The admin listener's service and what it uses.
#[derive(Debug)]
pub(crate) struct Admin {
    pub(crate) sessions: Sessions,
    pub(crate) ender: Ender,
    /// `CLOAKROOM_ADMIN_TOKEN` (None: the admin API answers 404); a reload replaces it.
    pub(crate) token: arc_swap::ArcSwapOption<Secret>,
    /// `POST /admin/reload` asks the process (`main.rs`) for a reload through this.
    pub(crate) reload: tokio::sync::mpsc::Sender<ReloadReply>,
}

/// Where a reload's outcome goes: `Err` lists every problem.
pub type ReloadReply = tokio::sync::oneshot::Sender<Result<(), Vec<String>>>;

/// Handles one admin request.
pub(crate) async fn handle(
    state: Arc<Admin>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        (&Method::GET, "/readyz") => match state.sessions.store().ping().await {
            // IdP metadata is loaded at start-up (discovery failing stops the start), so a
            // running instance always has it; the store is the part that comes and goes.
            Ok(()) => json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ready", "store": "ok", "idp_metadata": "loaded"}),
            ),
            Err(e) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "store_unavailable", "reason": e.0}),
            ),
        },
        (&Method::GET, "/metrics") => {
            let text = prometheus()
                .map(PrometheusHandle::render)
                .unwrap_or_default();
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (_, p) if p.starts_with("/admin/") => match admin_api(&state, &req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        },
        _ => Error::NotFound.into_response(),
    };
    Ok(resp)
}

fn authorized(state: &Admin, req: &Request<Incoming>) -> Result<(), Error> {
    let token = state.token.load();
    let Some(expected) = token.as_deref() else {
        return Err(Error::NotFound);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
        Ok(())
    } else {
        tracing::warn!(target: "audit", event = "admin", action = "refused", path = %req.uri().path(), "admin request without a valid token");
        Err(Error::Unauthenticated)
    }
}

/// A percent-encoded path segment, decoded (`+` stays `+`: this is a path, not a form).
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

async fn admin_api(state: &Admin, req: &Request<Incoming>) -> Result<Response<Body>, Error> {
    authorized(state, req)?;
    let path = req.uri().path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let pairs = crate::query::query_pairs(req.uri());
    let except = crate::query::query_param(&pairs, "except")?;
    let providers = state.ender.providers();
    // `Some(recorded)`: only sessions of that provider (`None` recorded: `[oidc]`).
    let filter = match crate::query::query_param(&pairs, "provider")? {
        None => None,
        Some(name) => Some(providers.named(&name).ok_or(Error::UnknownProvider)?),
    };
    let only: Option<Option<String>> = filter.as_ref().map(|p| providers.record_name(p));
    // Whose `sub` index a per-user lookup reads: that provider's, or every provider's (the
    // same `sub` at two IdPs is two users; the admin asked for all of them).
    let scopes: Vec<String> = filter.as_ref().map_or_else(
        || {
            providers
                .all()
                .iter()
                .map(|p| p.issuer().to_string())
                .collect()
        },
        |p| vec![p.issuer().to_string()],
    );
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let primary = providers.primary().name().to_string();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["admin", "users", sub, "sessions"]) => {
            let sub = decode(sub);
            let idle = state.sessions.idle_timeout();
            let found = state.sessions.find(Index::Sub, &scopes, &sub).await?;
            let unreadable = found.unreadable.len() + found.unscoped.len();
            let list: Vec<serde_json::Value> = found
                .live
                .into_iter()
                .filter(|(_, s)| only.as_ref().is_none_or(|p| *p == s.provider))
                .map(|(h, s)| {
                    serde_json::json!({
                        "handle": h,
                        "provider": s.provider.as_deref().unwrap_or(&primary),
                        "created_at": s.created_at,
                        "last_seen": s.last_seen,
                        "expires_at": s.expires_at(idle),
                        "idle_expires_at": s.idle_expires_at(idle),
                        "absolute_expires_at": s.absolute_expires_at,
                        "user_agent": s.user_agent,
                        "ip": s.ip,
                    })
                })
                .collect();
            tracing::info!(target: "audit", event = "admin", action = "list_sessions", sub = %sub, count = list.len(), "admin listed sessions");
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"sub": sub, "sessions": list, "unreadable": unreadable}),
            ))
        }
        (&Method::DELETE, ["admin", "sessions", handle]) => {
            // Ends the record whether or not this instance can open it (a key rotation).
            if !state.ender.end(handle, None, "admin").await? {
                return Err(Error::NotFound);
            }
            let n = 1;
            tracing::info!(target: "audit", event = "admin", action = "end_session", session = %short(handle), "admin ended a session");
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"ended": n}),
            ))
        }
        (&Method::DELETE, ["admin", "users", sub, "sessions"]) => {
            let sub = decode(sub);
            let mut found = state.sessions.find(Index::Sub, &scopes, &sub).await?;
            // Records this instance cannot open say no provider: those of the provider's own
            // index are its; those of the unscoped index of an earlier release are ended only
            // without a filter (or with one provider).
            let unreadable = found.unreadable_of(only.is_none() || providers.len() == 1);
            let victims: Vec<(String, Option<crate::session::Session>)> = found
                .live
                .into_iter()
                .filter(|(_, s)| only.as_ref().is_none_or(|p| *p == s.provider))
                .map(|(h, s)| (h, Some(s)))
                .chain(unreadable.into_iter().map(|h| (h, None)))
                .filter(|(h, _)| except.as_ref() != Some(h))
                .collect();
            let n = state.ender.end_all(victims, "admin").await?;
            tracing::info!(target: "audit", event = "admin", action = "end_user_sessions", sub = %sub, except = except.as_deref().map(short), ended = n, "admin ended a user's sessions");
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"ended": n}),
            ))
        }
        (&Method::POST, ["admin", "reload"]) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let unavailable = || {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"error": "reload_unavailable"}),
                )
            };
            if state.reload.try_send(tx).is_err() {
                return Ok(unavailable());
            }
            match tokio::time::timeout(std::time::Duration::from_secs(30), rx).await {
                Ok(Ok(Ok(()))) => Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"reloaded": true}),
                )),
                Ok(Ok(Err(problems))) => Ok(json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({"error": "config_invalid", "problems": problems}),
                )),
                _ => Ok(unavailable()),
            }
        }
        (_, ["admin", "users", _, "sessions"] | ["admin", "sessions", _] | ["admin", "reload"]) => {
            Err(Error::MethodNotAllowed)
        }
        _ => Err(Error::NotFound),
    }
}

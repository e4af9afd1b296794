//! The admin listener (SPEC §5), on its own address, never reachable through the public one.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the store answers and IdP metadata is loaded; else 503 `{"error": reason}` |
//! | `GET /metrics` | Prometheus text |

use crate::app::AppState;
use crate::body::{full, Body};
use crate::error::{json_response, Error};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process (several apps in one test process share it).
pub(crate) fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Handles one admin request.
pub(crate) async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        (&Method::GET, "/readyz") => match state.sessions.store().ping().await {
            Ok(()) => json_response(StatusCode::OK, &serde_json::json!({"status": "ready"})),
            Err(_) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "store_unavailable"}),
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
        _ => Error::NotFound.into_response(),
    };
    Ok(resp)
}

//! OpenTelemetry traces (`[telemetry]`): the exporter, the W3C trace context in and out, and
//! the helpers the stages call.
//!
//! **Off by default.** Without `telemetry.otlp_endpoint` no OpenTelemetry layer is installed:
//! the spans below are disabled at their call sites (their target, [`TARGET`], is enabled by
//! no layer), [`enabled`] is false and every helper returns at once.
//!
//! **On.** [`crate::telemetry::init`] installs a `tracing-opentelemetry` layer that sees spans
//! only (never log events), of Cloakroom's own targets only: the `request` span
//! (`routes.rs`) and the spans of target [`TARGET`] made with `span!`, each a child of the
//! request it serves. Spans are batched and sent over OTLP (HTTP/protobuf or gRPC) by a
//! thread of the SDK's; the export itself runs on the async runtime (`OnRuntime`).
//! [`shutdown`] exports what is left when the process stops.
//!
//! | span | where | attributes besides the request's |
//! | --- | --- | --- |
//! | `request` (server) | `routes.rs` | `http.request.method`, `url.path`, `http.route`, `http.response.status_code`, `request_id` |
//! | `session.load` | `loader.rs` | `cache` = `hit`, `miss` or `off`, `cloakroom.session` (the short handle) |
//! | `refresh` | `refresh.rs` | `single_flight` = `leader` or `waited`, `blocking` |
//! | `idp.discovery` (its calls: `idp.fetch`, client), `idp.jwks`, `idp.par`, `idp.token`, `idp.userinfo`, `idp.revoke` (client) | `oidc/` | `http.request.method`, `server.address`, `server.port`, `url.path`, `http.response.status_code`, `oauth.grant_type` / `token_type_hint` |
//! | `store.<operation>` (client) | `session/redis.rs` | `db.system.name` = `redis` |
//! | `upstream` (client) | `proxy.rs` | `http.request.method`, `http.route`, `server.address`, `server.port`, `http.response.status_code` |
//!
//! No attribute carries a token, cookie, code, secret or header value: every one is named
//! above. Store calls outside any request (the reaper's sweeps) make no trace of their own.
//!
//! **Trace context.** A browser's `traceparent`/`tracestate` are believed only with
//! `telemetry.trust_incoming_trace = true`; otherwise they are removed from the request
//! before anything reads it (so never forwarded) and the request starts a new trace. With
//! tracing on, every upstream request and every IdP call carries the `traceparent` (and
//! `tracestate`) of its own span. With tracing off Cloakroom starts no trace and sends none
//! to the IdP; a trusted caller's headers then pass through to the upstream unchanged.

use crate::config::{OtlpProtocol, TelemetryConfig};
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The tracing target of Cloakroom's trace-only spans (`span!`): exported with tracing on,
/// never written to the log.
pub const TARGET: &str = "cloakroom::trace";

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A trace-only span: `span!("name", field = value, ...)`, of target [`TARGET`] at INFO; with
/// tracing off ([`enabled`] false) `Span::none()`, made without asking the subscriber (no
/// callsite check, no registry slot, nothing to close: per request, nothing of tracing runs).
macro_rules! span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::trace::enabled() {
            ::tracing::info_span!(target: $crate::trace::TARGET, $name $(, $($fields)*)?)
        } else {
            ::tracing::Span::none()
        }
    };
}
pub(crate) use span;

/// `idp_call!("idp.token", future, fields...)`: the future inside a client span for one IdP
/// call (the call itself, through `oidc::send_bounded`, adds the HTTP attributes and the
/// `traceparent`).
macro_rules! idp_call {
    // Discovery is several calls (metadata, JWKS): an internal span, one `idp.fetch` each.
    ("idp.discovery", $fut:expr) => {
        ::tracing::Instrument::instrument($fut, $crate::trace::span!("idp.discovery"))
    };
    ($name:literal, $fut:expr $(, $($fields:tt)*)?) => {
        ::tracing::Instrument::instrument(
            $fut,
            $crate::trace::span!($name, otel.kind = "client" $(, $($fields)*)?),
        )
    };
}
pub(crate) use idp_call;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// Whether spans are exported (an OpenTelemetry layer is installed).
#[must_use]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A layer of the global subscriber.
pub(crate) type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// The OpenTelemetry layer for `[telemetry]`, or `None` when tracing is off; with the
/// provider to hand to [`installed`] once the subscriber is in place.
///
/// # Errors
/// When the exporter cannot be built, or no async runtime is running.
pub(crate) fn layer<S>(
    config: &TelemetryConfig,
) -> Result<Option<(BoxedLayer<S>, SdkTracerProvider)>, String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let Some(url) = config.export_url() else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "telemetry: the exporter needs the async runtime".to_string())?;
    let exporter = exporter(config, url)?;
    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(OnRuntime {
        inner: Arc::new(exporter),
        runtime,
    })
    .with_batch_config(
        opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_scheduled_delay(config.batch_delay)
            .with_max_queue_size(config.max_queue)
            .with_max_export_batch_size(config.max_queue.min(512))
            .build(),
    )
    .build();
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    for (k, v) in &config.resource_attributes {
        attributes.push(KeyValue::new(k.clone(), v.clone()));
    }
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes(attributes)
        .build();
    let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(config.sample_ratio),
    ));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("cloakroom");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::dynamic_filter_fn(exported))
        .boxed();
    Ok(Some((layer, provider)))
}

/// The spans the OpenTelemetry layer sees: Cloakroom's own, never an event; a store call only
/// within some exported span (not the background sweeps).
fn exported<S>(meta: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    meta.is_span()
        && meta.target().starts_with("cloakroom")
        && (!meta.name().starts_with("store.") || cx.lookup_current().is_some())
}

fn exporter(
    config: &TelemetryConfig,
    url: String,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
    let built = match config.protocol {
        OtlpProtocol::HttpProtobuf => {
            let mut client = reqwest::Client::builder();
            if let Some(pem) = &config.tls_ca {
                let certs = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| format!("telemetry.tls_ca_file: {e}"))?;
                for c in certs {
                    client = client.add_root_certificate(c);
                }
            }
            let client = client
                .timeout(config.export_timeout)
                .connect_timeout(config.export_timeout.min(std::time::Duration::from_secs(5)))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("cloakroom/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("telemetry: the HTTP client: {e}"))?;
            let headers = config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(OtlpHttp(client))
                .with_endpoint(url)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(config.export_timeout)
                .with_headers(headers)
                .build()
        }
        OtlpProtocol::Grpc => {
            let mut headers = HeaderMap::new();
            for (k, v) in &config.headers {
                if let (Ok(k), Ok(mut v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v.expose()),
                ) {
                    v.set_sensitive(true);
                    headers.append(k, v);
                }
            }
            let https = url.starts_with("https:");
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_timeout(config.export_timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers),
                );
            if https {
                let mut tls = opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                    .with_webpki_roots();
                if let Some(pem) = &config.tls_ca {
                    tls = tls.ca_certificate(
                        opentelemetry_otlp::tonic_types::transport::Certificate::from_pem(pem),
                    );
                }
                builder = builder.with_tls_config(tls);
            }
            builder.build()
        }
    };
    built.map_err(|e| format!("telemetry.otlp_endpoint: the exporter: {e}"))
}

/// Keeps the provider for [`shutdown`] and turns the helpers on (the layer is installed).
pub(crate) fn installed(provider: SdkTracerProvider) {
    *PROVIDER.lock().unwrap_or_else(PoisonError::into_inner) = Some(provider);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Exports every span still waiting and stops the exporter (at shutdown; bounded by the
/// export timeout). Nothing to do with tracing off.
pub async fn shutdown() {
    let provider = PROVIDER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(provider) = provider else {
        return;
    };
    ENABLED.store(false, Ordering::Relaxed);
    // Blocking, and the export it waits for runs on this runtime: off the async workers.
    let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "telemetry: the last spans were not all exported");
    }
}

/// The request span: with `trusted`, the browser's trace context becomes its parent; without,
/// the browser's `traceparent`/`tracestate` are removed from the request (whether tracing is
/// on or not) and the request starts a new trace.
pub(crate) fn server<B>(span: &tracing::Span, req: &mut http::Request<B>, trusted: bool) {
    strip_untrusted(req, trusted);
    if !enabled() {
        return;
    }
    span.record("otel.kind", "server");
    if trusted {
        if let Some(cx) = extract_incoming(req.headers(), true) {
            let _ = span.set_parent(cx);
        }
    }
    span.set_attribute("http.request.method", req.method().as_str().to_string());
    span.set_attribute("url.path", first_chars(req.uri().path(), 256).to_string());
}

/// Without `trusted`, the browser's `traceparent`/`tracestate` are removed from the request
/// (whether tracing is on or not).
pub(crate) fn strip_untrusted<B>(req: &mut http::Request<B>, trusted: bool) {
    if !trusted {
        let headers = req.headers_mut();
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
    }
}

/// The request span's outcome: its route label and status (a 5xx is an error).
pub(crate) fn server_done(span: &tracing::Span, route: &'static str, status: u16) {
    if !enabled() {
        return;
    }
    span.set_attribute("http.route", route);
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.set_status(Status::error(""));
    }
}

/// The caller's trace context from `traceparent`/`tracestate`, when `trusted` and valid.
#[must_use]
pub fn extract_incoming(headers: &HeaderMap, trusted: bool) -> Option<opentelemetry::Context> {
    if !trusted || !headers.contains_key(TRACEPARENT) {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Sets `traceparent` (and `tracestate`) for `span`'s context, replacing any there (nothing
/// with tracing off).
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new()
        .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
    // The propagator writes an empty `tracestate` for a trace without one: send none.
    if headers.get(TRACESTATE).is_some_and(HeaderValue::is_empty) {
        headers.remove(TRACESTATE);
    }
}

/// `session.load`: whether the session came from the session cache (`hit`), the store
/// (`miss`) or the store with no cache configured (`off`).
pub(crate) fn cache(outcome: &'static str) {
    if enabled() {
        tracing::Span::current().record("cache", outcome);
    }
}

/// `refresh`: `leader` (this request started the flight) or `waited` (it joined one).
pub(crate) fn single_flight(role: &'static str) {
    if enabled() {
        tracing::Span::current().record("single_flight", role);
    }
}

/// The upstream span's request attributes and the `traceparent` it carries.
pub(crate) fn upstream_request<B>(
    span: &tracing::Span,
    req: &mut http::Request<B>,
    route: &'static str,
) {
    if !enabled() {
        return;
    }
    span.set_attribute("http.request.method", req.method().as_str().to_string());
    span.set_attribute("http.route", route);
    if let Some(host) = req.uri().host() {
        span.set_attribute("server.address", host.to_string());
    }
    if let Some(port) = req.uri().port_u16() {
        span.set_attribute("server.port", i64::from(port));
    }
    inject(span, req.headers_mut());
}

/// A client span's outcome: the status (4xx and 5xx are errors) or the failure's kind.
pub(crate) fn client_done(span: &tracing::Span, status: Result<u16, &'static str>) {
    if !enabled() {
        return;
    }
    match status {
        Ok(s) => {
            span.set_attribute("http.response.status_code", i64::from(s));
            if s >= 400 {
                span.set_status(Status::error(""));
            }
        }
        Err(kind) => {
            span.set_attribute("error.type", kind);
            span.set_status(Status::error(""));
        }
    }
}

/// Sends one IdP request: within an `idp.*` span it gets that span's `traceparent` and the
/// span the request's attributes and the answer's status.
///
/// # Errors
/// As [`reqwest::RequestBuilder::send`].
pub(crate) async fn send_idp(
    builder: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    if !enabled() {
        return builder.send().await;
    }
    let (client, req) = builder.build_split();
    let mut req = req?;
    let mut span = tracing::Span::current();
    let name = span.metadata().map_or("", |m| m.name());
    if name == "idp.discovery" {
        span = span!("idp.fetch", otel.kind = "client");
    }
    let ours = name.starts_with("idp.");
    if ours {
        span.set_attribute("http.request.method", req.method().as_str().to_string());
        if let Some(host) = req.url().host_str() {
            span.set_attribute("server.address", host.to_string());
        }
        if let Some(port) = req.url().port_or_known_default() {
            span.set_attribute("server.port", i64::from(port));
        }
        span.set_attribute("url.path", first_chars(req.url().path(), 256).to_string());
        inject(&span, req.headers_mut());
    }
    let result = tracing::Instrument::instrument(client.execute(req), span.clone()).await;
    if ours {
        client_done(
            &span,
            match &result {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) if e.is_timeout() => Err("timeout"),
                Err(_) => Err("transport"),
            },
        );
    }
    result
}

/// The first `n` characters of `s`.
fn first_chars(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Runs the exporter's calls on the async runtime: the SDK's batch thread has none, and the
/// HTTP client and the gRPC channel need one.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let inner = self.inner.clone();
        match self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(r) => r,
            Err(e) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                e.to_string(),
            )),
        }
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// OTLP/HTTP through reqwest 0.12 (the version the rest of Cloakroom uses).
#[derive(Debug)]
struct OtlpHttp(reqwest::Client);

/// The largest collector answer read.
const MAX_COLLECTOR_RESPONSE: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut resp = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if buf.len() + chunk.len() > MAX_COLLECTOR_RESPONSE {
                return Err("the collector's answer is too large".into());
            }
            buf.extend_from_slice(&chunk);
        }
        let mut out = http::Response::new(bytes::Bytes::from(buf));
        *out.status_mut() = resp.status();
        *out.headers_mut() = std::mem::take(resp.headers_mut());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the spans the subscriber is asked to make.
    #[derive(Clone, Default)]
    struct CountSpans(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl<S: tracing::Subscriber> Layer<S> for CountSpans {
        fn on_new_span(
            &self,
            _: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// With `[telemetry]` off nothing of tracing runs for the trace-only spans of a request,
    /// even under a subscriber that would take every span: none is made.
    #[test]
    fn with_tracing_off_no_trace_span_is_made_whatever_the_subscriber_takes() {
        use tracing_subscriber::layer::SubscriberExt;
        assert!(!enabled(), "no exporter is installed in unit tests");
        let count = CountSpans::default();
        let subscriber = tracing_subscriber::registry().with(count.clone());
        tracing::subscriber::with_default(subscriber, || {
            let a = span!("upstream", otel.kind = "client");
            let b = span!("session.load", cache = tracing::field::Empty);
            assert!(a.is_none() && b.is_none());
            // The same subscriber does make an ordinary span: the count works.
            let _c = tracing::info_span!("request");
        });
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_incoming_context_is_read_only_when_trusted_and_valid() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert!(extract_incoming(&h, false).is_none());
        let cx = extract_incoming(&h, true).expect("trusted");
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-zz-00f067aa0ba902b7-01"),
        );
        assert!(extract_incoming(&h, true).is_none());
    }

    #[test]
    fn untrusted_trace_headers_are_removed_and_nothing_is_added_when_off() {
        let mut req = http::Request::new(());
        req.headers_mut().insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        req.headers_mut()
            .insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let span = tracing::Span::none();
        server(&span, &mut req, true);
        assert!(req.headers().contains_key(TRACEPARENT), "trusted: kept");
        server(&span, &mut req, false);
        assert!(!req.headers().contains_key(TRACEPARENT));
        assert!(!req.headers().contains_key(TRACESTATE));
        let mut h = HeaderMap::new();
        inject(&span, &mut h);
        assert!(h.is_empty(), "tracing off: no traceparent is made up");
    }
}

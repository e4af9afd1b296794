//! JSON log lines on the request path, written by Cloakroom's own formatter: the access line
//! ([`access`]) straight from its fixed fields, and every other event through [`JsonLayer`].
//!
//! **Byte for byte the lines tracing-subscriber's JSON formatter wrote** (`json()`,
//! `flatten_event(true)`, no target, the current span, no span list; the unit tests compare
//! both on the same events): `{"timestamp":"<RFC 3339, µs>","level":"INFO",<the event's fields
//! in their order>,"span":{"request_id":"…","name":"request"}}` and a newline. Values are
//! written by serde_json, as there: strings escaped the same way, a non-finite float `null`,
//! a `Debug` or `Display` value as its string.
//!
//! **What is not done per request** any more: no `request` span is made when nothing needs it
//! ([`fast`]: `log.format = "json"` without `[telemetry]`); the request id travels in a task
//! local instead ([`in_request`], inherited by the tasks a request spawns, [`inherit`]), so
//! there is no span to create, enter, exit and serialise; no `serde_json::Value`; one
//! timestamp per line, formatted once; the line is built in a buffer each thread keeps and
//! handed to the batching writer ([`crate::telemetry::Batched`]).
//!
//! With `[telemetry]` on or `log.format = "pretty"` the request span is made as before (the
//! exporter and the pretty formatter need it) and tracing-subscriber's formatters write the
//! lines; the access line is then an event again.
//!
//! Whether the access line is written follows `log.level` for the target `cloakroom::routes`
//! at INFO, as when it was an event of that module: found out by one probe event sent through
//! the installed filter at start-up and after each reload ([`probe`]).

use crate::telemetry::Batched;
use http::HeaderValue;
use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The name of the probe event's call site (never written).
const PROBE: &str = "cloakroom_access_probe";

/// Whether the fast path is installed ([`fast`]).
static FAST: AtomicBool = AtomicBool::new(false);
/// Whether the access line passes `log.level` ([`probe`]).
static ACCESS_ON: AtomicBool = AtomicBool::new(false);
/// Where the access line goes (the main log's writer).
static WRITER: OnceLock<Batched> = OnceLock::new();

tokio::task_local! {
    /// The id of the request this task serves, or of the request that spawned it (fast path
    /// only).
    static REQUEST_ID: Option<HeaderValue>;
}

thread_local! {
    /// The line being built; kept between lines so that a line costs no allocation.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Whether requests run without a `request` span, their id in a task local, and their log
/// lines are written by this module: set by [`crate::telemetry::init`] for `log.format =
/// "json"` without `[telemetry]`. False when no subscriber was installed by Cloakroom (tests
/// that install their own get the span and the events as before).
#[must_use]
pub(crate) fn fast() -> bool {
    FAST.load(Ordering::Relaxed)
}

/// Installs the fast path's writer (see [`fast`]); the caller then installs [`JsonLayer`] and
/// calls [`probe`].
pub(crate) fn install(writer: Batched) {
    let _ = WRITER.set(writer);
    FAST.store(true, Ordering::Relaxed);
}

/// Finds out whether `log.level` lets the access line through, by sending one event of the
/// access line's target and level through the installed subscriber; [`JsonLayer`] notes it
/// when it arrives and writes nothing. Call it after the subscriber is installed and after
/// each change of its filter.
pub(crate) fn probe() {
    ACCESS_ON.store(false, Ordering::Relaxed);
    tracing::info!(name: "cloakroom_access_probe", target: "cloakroom::routes", "");
}

/// Runs `fut` as the request with id `id`: its log lines (and those of the tasks it spawns
/// through [`inherit`]) carry `"span":{"request_id":…,"name":"request"}`.
pub(crate) async fn in_request<F: std::future::Future>(id: HeaderValue, fut: F) -> F::Output {
    REQUEST_ID.scope(Some(id), fut).await
}

/// `fut` with the current request's id, for a task spawned on the request's behalf (a refresh
/// flight, a revocation): its lines are the request's, as they were as a child of its span.
pub(crate) fn inherit<F: std::future::Future>(
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<Option<HeaderValue>, F> {
    REQUEST_ID.scope(REQUEST_ID.try_with(Clone::clone).ok().flatten(), fut)
}

fn with_request_id<T>(f: impl FnOnce(Option<&HeaderValue>) -> T) -> T {
    match REQUEST_ID.try_with(Clone::clone) {
        Ok(id) => f(id.as_ref()),
        Err(_) => f(None),
    }
}

/// One access line (the fields documented in README, Operations → Logs): the request's
/// method, path (never the query), route label, status and duration, written when the access
/// line passes `log.level` (see the module documentation).
pub(crate) fn access(
    method: &http::Method,
    path: &str,
    route: &str,
    status: u16,
    duration_ms: f64,
    request_id: &HeaderValue,
) {
    if !ACCESS_ON.load(Ordering::Relaxed) {
        return;
    }
    let Some(writer) = WRITER.get() else { return };
    LINE.with_borrow_mut(|line| {
        line.clear();
        write_access(
            line,
            std::time::SystemTime::now(),
            method,
            path,
            route,
            status,
            duration_ms,
            request_id,
        );
        writer.push(line, false);
        shrink(line);
    });
}

/// A buffer that once held a huge line does not stay huge.
fn shrink(line: &mut Vec<u8>) {
    if line.capacity() > 64 * 1024 {
        *line = Vec::with_capacity(512);
    }
}

#[allow(clippy::too_many_arguments)]
fn write_access(
    line: &mut Vec<u8>,
    now: std::time::SystemTime,
    method: &http::Method,
    path: &str,
    route: &str,
    status: u16,
    duration_ms: f64,
    request_id: &HeaderValue,
) {
    head(line, now, &tracing::Level::INFO);
    line.extend_from_slice(b",\"message\":\"request\",\"method\":");
    string(line, method.as_str());
    line.extend_from_slice(b",\"path\":");
    string(line, path);
    line.extend_from_slice(b",\"route\":");
    string(line, route);
    line.extend_from_slice(b",\"status\":");
    let _ = serde_json::to_writer(&mut *line, &status);
    line.extend_from_slice(b",\"duration_ms\":");
    let _ = serde_json::to_writer(&mut *line, &duration_ms);
    span(line, Some(request_id));
    line.extend_from_slice(b"}\n");
}

/// `{"timestamp":"…","level":"…"` (tracing-subscriber's `SystemTime` timer: RFC 3339 in UTC
/// with microseconds).
fn head(line: &mut Vec<u8>, now: std::time::SystemTime, level: &tracing::Level) {
    line.extend_from_slice(b"{\"timestamp\":\"");
    let _ = write!(line, "{}", humantime::format_rfc3339_micros(now));
    line.extend_from_slice(b"\",\"level\":\"");
    line.extend_from_slice(level.as_str().as_bytes());
    line.push(b'"');
}

/// `,"span":{"request_id":"…","name":"request"}` for a line of a request, nothing otherwise.
fn span(line: &mut Vec<u8>, request_id: Option<&HeaderValue>) {
    let Some(id) = request_id else { return };
    line.extend_from_slice(b",\"span\":{\"request_id\":");
    // Request ids are visible ASCII (`context::request_id`); a value that is not text
    // would have been `-` in the span.
    string(line, id.to_str().unwrap_or("-"));
    line.extend_from_slice(b",\"name\":\"request\"}");
}

/// A JSON string, escaped as serde_json escapes it.
fn string(line: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *line, s);
}

/// The layer that writes every log event on the fast path (see the module documentation).
/// Spans are not its business: on the fast path no log span exists (the trace-only spans of
/// [`crate::trace`] never reach the log).
#[derive(Debug)]
pub(crate) struct JsonLayer {
    writer: Batched,
    /// The clock of the timestamps (the tests fix it).
    now: fn() -> std::time::SystemTime,
}

impl JsonLayer {
    /// Writes into `writer`.
    pub(crate) fn new(writer: Batched) -> Self {
        Self {
            writer,
            now: std::time::SystemTime::now,
        }
    }
}

impl<S: Subscriber> Layer<S> for JsonLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.name() == PROBE {
            ACCESS_ON.store(true, Ordering::Relaxed);
            return;
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            head(line, (self.now)(), meta.level());
            event.record(&mut Fields { line });
            with_request_id(|id| span(line, id));
            line.extend_from_slice(b"}\n");
            self.writer
                .push(line, *meta.level() <= tracing::Level::WARN);
            shrink(line);
        });
    }
}

/// An event's fields as `,"name":value` in their order (tracing-serde's map visitor).
struct Fields<'a> {
    line: &'a mut Vec<u8>,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(b',');
        string(self.line, field.name());
        self.line.push(b':');
    }
}

impl Visit for Fields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = serde_json::to_writer(&mut *self.line, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        // Written through the escaping serializer as it is formatted: no String per value.
        let _ = serde_json::to_writer(&mut *self.line, &format_args!("{value:?}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = serde_json::to_writer(&mut *self.line, &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = serde_json::to_writer(&mut *self.line, &value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        let _ = serde_json::to_writer(&mut *self.line, &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        string(self.line, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn take(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    fn fixed() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_678_043_123_456)
    }

    /// What the log wrote before this module: tracing-subscriber's JSON formatter as
    /// `telemetry::init` configured it, inside the request span of `routes::handle`.
    fn old(events: impl FnOnce()) -> String {
        let sink = Sink::default();
        let w = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_timer(Timed)
                .with_writer(move || w.clone())
                .json()
                .flatten_event(true)
                .with_span_list(false),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = %"0a1b2c3d4e5f60718293a4b5",
                otel.kind = tracing::field::Empty
            );
            span.in_scope(events);
        });
        sink.take()
    }

    struct Timed;
    impl tracing_subscriber::fmt::time::FormatTime for Timed {
        fn format_time(
            &self,
            w: &mut tracing_subscriber::fmt::format::Writer<'_>,
        ) -> std::fmt::Result {
            write!(w, "{}", humantime::format_rfc3339_micros(fixed()))
        }
    }

    /// What the fast path writes for the same events, in a request with the same id.
    fn new(events: impl FnOnce()) -> String {
        let sink = Sink::default();
        let batched = Batched::new(Box::new(sink.clone()));
        let layer = JsonLayer {
            writer: batched.clone(),
            now: fixed,
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            rt.block_on(in_request(
                HeaderValue::from_static("0a1b2c3d4e5f60718293a4b5"),
                async { events() },
            ));
        });
        batched.flush_now();
        sink.take()
    }

    #[test]
    fn the_fast_path_writes_what_tracing_subscriber_wrote() {
        let events = || {
            tracing::info!(
                method = %http::Method::GET,
                path = %"/api/orders",
                route = "/api/",
                status = 200u16,
                duration_ms = 0.912_345,
                "request"
            );
            let e = std::io::Error::other("upstream \"said\"\nno\u{1}");
            tracing::warn!(error = %e, code = "upstream_unavailable", "request failed");
            tracing::debug!(ok = true, n = -3i64, big = u64::MAX, nan = f64::NAN, inf = f64::INFINITY, tiny = 1.5e-7, r#type = "x", dbg = ?Some("é"), "with \"quotes\" and é");
            tracing::error!("no fields at all");
            tracing::info!(empty = "", "");
        };
        let old = old(events);
        let new = new(events);
        assert_eq!(new, old);
        assert_eq!(new.lines().count(), 5, "{new}");
    }

    #[test]
    fn the_access_line_is_what_the_access_event_wrote() {
        let cases: [(&str, &str, u16, f64); 4] = [
            ("/api/orders", "/api/", 200, 0.912_345),
            ("/auth/callback", "callback", 302, 12.0),
            ("/weird/\"path\"\\é", "none", 404, 1e-7),
            ("/", "preflight", 204, 123_456.5),
        ];
        for (path, route, status, ms) in cases {
            let method = http::Method::POST;
            let old = old(|| {
                tracing::info!(
                    %method,
                    path = %path,
                    route = route,
                    status = status,
                    duration_ms = ms,
                    "request"
                );
            });
            let mut line = Vec::new();
            write_access(
                &mut line,
                fixed(),
                &method,
                path,
                route,
                status,
                ms,
                &HeaderValue::from_static("0a1b2c3d4e5f60718293a4b5"),
            );
            assert_eq!(String::from_utf8(line).unwrap(), old);
        }
    }

    #[test]
    fn a_line_outside_any_request_has_no_span_and_spawned_tasks_inherit_the_id() {
        let sink = Sink::default();
        let batched = Batched::new(Box::new(sink.clone()));
        let subscriber = tracing_subscriber::registry().with(JsonLayer {
            writer: batched.clone(),
            now: fixed,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::info!("outside");
        rt.block_on(in_request(HeaderValue::from_static("abc"), async {
            let spawned = tokio::spawn(inherit(async {
                tracing::info!("spawned");
            }));
            let _ = spawned.await;
            let stray = tokio::spawn(async {
                tracing::info!("stray");
            });
            let _ = stray.await;
        }));
        batched.flush_now();
        let out = sink.take();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "{\"timestamp\":\"2026-12-07T21:14:03.123456Z\",\"level\":\"INFO\",\"message\":\"outside\"}",
                "{\"timestamp\":\"2026-12-07T21:14:03.123456Z\",\"level\":\"INFO\",\"message\":\"spawned\",\"span\":{\"request_id\":\"abc\",\"name\":\"request\"}}",
                "{\"timestamp\":\"2026-12-07T21:14:03.123456Z\",\"level\":\"INFO\",\"message\":\"stray\"}",
            ]
        );
    }
}

//! Logging setup. Log lines carry methods, paths (never queries), statuses, durations, short
//! session handles and subjects; never a cookie value, token, code or secret.
//!
//! Lines are written to stdout by a thread of their own ([`Batched`]): a worker appends its
//! formatted line to a bounded in-memory batch and goes on; the writer thread writes the batch
//! out every [`FLUSH_EVERY`], at once when it holds [`BATCH`] bytes or a warning or error. So
//! a request costs no `write(2)` of its own, and a worker never waits for stdout: when stdout
//! does not keep up and the batch reaches [`LIMIT`], further lines are dropped and counted
//! (`cloakroom_log_lines_dropped_total`) instead.
//!
//! With `telemetry.otlp_endpoint`, the OpenTelemetry layer of [`crate::trace`] is installed
//! beside the log layers; its trace-only spans ([`crate::trace::TARGET`]) never reach the log.

use crate::config::{LogConfig, LogFormat, TelemetryConfig};
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How long a line waits at most before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this large is written at once.
pub const BATCH: usize = 64 * 1024;
/// A batch this large takes no more lines: they are dropped and counted.
pub const LIMIT: usize = 4 * 1024 * 1024;

/// The tracing target of audit events (login, logout, sessions ended, admin and user
/// actions): with `log.audit_file` they go there, as JSON lines, and not to stdout.
pub const AUDIT: &str = "audit";

/// Installs the global subscriber (once; later calls are ignored): the log, the audit file
/// and, with `telemetry.otlp_endpoint`, the trace exporter (call it within the async runtime
/// then, and [`crate::trace::shutdown`] before the process exits).
///
/// # Errors
/// When `log.audit_file` cannot be opened for appending, or the trace exporter cannot be built.
pub fn init(config: &LogConfig, telemetry: &TelemetryConfig) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // The level a reload may change (`set_level`).
    let (filter, level) = tracing_subscriber::reload::Layer::new(filter);
    let writer = Batched::stdout();
    let audit = match &config.audit_file {
        None => None,
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("log.audit_file: cannot open {}: {e}", path.display()))?;
            Some(Batched::new(Box::new(file)))
        }
    };
    let routed = audit.is_some();
    let (otel, provider) = crate::trace::layer(telemetry)?.unzip();
    // JSON without traces: Cloakroom's own formatter, no request span (`logline`).
    let fast = config.format == LogFormat::Json && otel.is_none();
    // Everything but the audit events when they have a file of their own.
    let main = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer.clone());
    let main = match config.format {
        LogFormat::Json if fast => crate::logline::JsonLayer::new(writer.clone()).boxed(),
        // The request span once, as `span` (not again in a `spans` list: formatting it twice
        // per line was measurable).
        LogFormat::Json => main
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => main.boxed(),
    }
    .with_filter(filter)
    .with_filter(tracing_subscriber::filter::filter_fn(move |m| {
        !(routed && m.target() == AUDIT) && m.target() != crate::trace::TARGET
    }));
    let audit_layer = audit.clone().map(|w| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .with_current_span(false)
            .with_writer(w)
            .with_filter(
                tracing_subscriber::filter::Targets::new().with_target(AUDIT, tracing::Level::INFO),
            )
    });
    let installed = tracing_subscriber::registry()
        .with(main)
        .with(audit_layer)
        .with(otel)
        .try_init();
    if let Some(p) = provider {
        if installed.is_ok() {
            crate::trace::installed(p);
        } else {
            let _ = p.shutdown();
        }
    }
    if installed.is_ok() {
        let _ = LEVEL.set(Box::new(move |directives: &str| {
            let f = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
            level.reload(f).map_err(|e| e.to_string())?;
            crate::logline::probe();
            Ok(())
        }));
        if fast {
            crate::logline::install(writer.clone());
            crate::logline::probe();
        }
        let _ = INSTALLED.set(writer);
        if let Some(a) = audit {
            let _ = AUDIT_WRITER.set(a);
        }
        // A panic's own message goes to stderr; what was logged before it must not be lost.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush();
            previous(info);
        }));
    }
    Ok(())
}

static AUDIT_WRITER: OnceLock<Batched> = OnceLock::new();

/// Swaps the log filter of the installed subscriber.
type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// A reload's `log.level`: the log filter from now on (the audit file takes its events at any
/// level). Nothing when no subscriber was installed here (tests install their own).
///
/// # Errors
/// When `level` is not a valid filter (configuration validation rules that out).
pub fn set_level(level: &str) -> Result<(), String> {
    match LEVEL.get() {
        Some(set) => set(level),
        None => Ok(()),
    }
}

static INSTALLED: OnceLock<Batched> = OnceLock::new();

/// Writes out every line logged so far (at shutdown, before the process exits).
pub fn flush() {
    if let Some(w) = INSTALLED.get() {
        w.flush_now();
    }
    if let Some(w) = AUDIT_WRITER.get() {
        w.flush_now();
    }
}

/// A log writer that batches lines for a writer thread (see the module documentation).
#[derive(Clone)]
pub struct Batched {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Batched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batched").finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct State {
    batch: Vec<u8>,
    /// A warning or an error waits in the batch: write it now.
    urgent: bool,
}

impl Batched {
    /// Writes to stdout, with its writer thread.
    #[must_use]
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }

    /// Writes to `out`, with its writer thread (which ends when every clone is dropped).
    #[must_use]
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            out: Mutex::new(out),
        });
        let weak = Arc::downgrade(&shared);
        let _ = std::thread::Builder::new()
            .name("cloakroom-log".into())
            .spawn(move || {
                let mut spare = Vec::new();
                while let Some(shared) = weak.upgrade() {
                    {
                        let state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
                        let (mut state, _) = shared
                            .wake
                            .wait_timeout_while(state, FLUSH_EVERY, |s| {
                                !s.urgent && s.batch.len() < BATCH
                            })
                            .unwrap_or_else(PoisonError::into_inner);
                        std::mem::swap(&mut state.batch, &mut spare);
                        state.urgent = false;
                    }
                    shared.write_out(&spare);
                    spare.clear();
                    if spare.capacity() > BATCH * 4 {
                        spare = Vec::new();
                    }
                }
            });
        Self { shared }
    }

    /// Writes the batch out on the calling thread.
    pub fn flush_now(&self) {
        let batch = {
            let mut state = self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.urgent = false;
            std::mem::take(&mut state.batch)
        };
        self.shared.write_out(&batch);
    }

    /// Appends one line (or drops and counts it when the batch is full); `urgent`: write it
    /// out now (a warning or an error).
    pub(crate) fn push(&self, line: &[u8], urgent: bool) {
        let notify = {
            let mut state = self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if state.batch.len() + line.len() > LIMIT {
                None
            } else {
                state.batch.extend_from_slice(line);
                state.urgent |= urgent;
                Some(urgent || state.batch.len() >= BATCH)
            }
        };
        match notify {
            None => metrics::counter!("cloakroom_log_lines_dropped_total").increment(1),
            Some(true) => self.shared.wake.notify_one(),
            Some(false) => {}
        }
    }
}

impl Shared {
    fn write_out(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
}

/// One event's writer: what the formatter writes goes into the batch.
#[derive(Debug)]
pub struct Line<'a> {
    to: &'a Batched,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.to.push(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            to: self,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        Line {
            to: self,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink whose every write says it started (`entered`) and then blocks until `open`.
    struct Stuck {
        entered: std::sync::mpsc::Sender<()>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let (open, cv) = &*self.gate;
            let g = open.lock().unwrap();
            let _g = cv.wait_while(g, |o| !*o).unwrap();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(sink: &Sink, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&sink.0.lock().unwrap()).contains(text) {
            assert!(Instant::now() < deadline, "{text:?} never written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn lines_are_written_by_the_writer_thread_and_on_flush() {
        let sink = Sink::default();
        let w = Batched::new(Box::new(sink.clone()));
        w.make_writer().write_all(b"one\n").unwrap();
        wait_for(&sink, "one\n");
        w.make_writer().write_all(b"two\n").unwrap();
        w.flush_now();
        assert_eq!(&*sink.0.lock().unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn a_stuck_stdout_never_blocks_a_worker_and_drops_what_does_not_fit() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (entered, writing) = std::sync::mpsc::channel();
        let w = Batched::new(Box::new(Stuck {
            entered,
            gate: gate.clone(),
        }));
        let line = vec![b'x'; 1024];
        // The writer thread takes a warning's batch and blocks in write(2) ...
        w.push(&line, true);
        writing
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer thread never wrote");
        // ... while a worker goes on: every push returns (a blocking push would never send
        // `done`), and once the batch is full the rest is dropped rather than waited for.
        let (done, finished) = std::sync::mpsc::channel();
        let worker = w.clone();
        std::thread::spawn(move || {
            for _ in 0..(LIMIT / 1024 + 100) {
                worker.make_writer().write_all(&[b'y'; 1024]).unwrap();
            }
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("a push waited for the stuck stdout");
        let held = w.shared.state.lock().unwrap().batch.len();
        assert!(held <= LIMIT, "{held}");
        assert!(held > LIMIT - 2048, "{held}");
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
}

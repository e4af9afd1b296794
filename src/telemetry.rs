//! Logging setup. Log lines carry methods, paths (never queries), statuses, durations, short
//! session handles and subjects; never a cookie value, token, code or secret.
//!
//! Lines are written by a thread of their own (`tracing-appender`'s non-blocking writer): a
//! request never waits on a `write(2)` to stdout. The queue is bounded and lossy — under an
//! overload that stdout cannot absorb, lines are dropped rather than workers blocked — and
//! every dropped line is counted (`cloakroom_log_lines_dropped_total`). The guard that
//! [`init`] returns flushes what is queued when it is dropped, at the end of `main`.

use crate::config::{Config, LogFormat};
use std::sync::OnceLock;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines the log queue may hold before it drops new ones.
pub const LOG_QUEUE_LINES: usize = 64 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber (once; later calls are ignored). Keep the returned guard
/// alive until the process ends: dropping it flushes the queue.
pub fn init(config: &Config) -> WorkerGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("cloakroom-log")
        .finish(std::io::stdout());
    let _ = DROPPED.set(writer.error_counter());
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    guard
}

/// Log lines dropped so far because the queue was full (0 before [`init`]).
#[must_use]
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, ErrorCounter::dropped_lines)
}

//! Logging set-up: text for people, JSON for pipelines, filtered by `log_level`.
//!
//! Secrets cannot reach the log through this module: keys only exist inside `Secret` values
//! (which redact themselves) and in a sensitive upstream header that is never logged.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call (as in tests) is a no-op. Lines are written
/// by a background thread, so a request never waits on stderr (one access line per request
/// made logging the largest cost of a cached answer). Keep the guard until exit: dropping it
/// flushes what is still queued.
pub fn init(format: LogFormat, level: &str) -> WorkerGuard {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

//! Logging set-up: text for people, JSON for pipelines, filtered by `log_level`.
//!
//! Secrets cannot reach the log through this module: keys only exist inside `Secret` values
//! (which redact themselves) and in a sensitive upstream header that is never logged.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

mod access;
mod batch;

pub use access::{access, AccessLine};
pub use batch::FlushGuard;

/// Installs the global subscriber; a second call (as in tests) is a no-op. Lines are written
/// in batches by a background thread, so a request never waits on stderr (see `batch`). Keep
/// the guard until exit: dropping it writes what is still pending.
pub fn init(format: LogFormat, level: &str) -> FlushGuard {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = batch::stderr();
    access::install(writer.clone(), format);
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

//! The administrative subcommands (`check`, `warm`, `cache …`, `lock migrate`, `tokens …`,
//! `usage`): the chores ops
//! teams would otherwise do by hand against the upstream or the cache directory.
//!
//! They live in the library, beside what they drive, so `main.rs` stays a thin dispatcher.
//! Each prints its own report on stdout (progress goes to stderr, and only on a terminal)
//! and returns the process exit status; none ever prints the key pair.
//!
//! Commands that touch the cache directory are safe while proxies use it: they change it
//! only by creating files through the same atomic renames the proxy uses, and by unlinking.

pub mod cache;
pub mod check;
pub mod lock;
pub mod tokens;
pub mod usage;
pub mod warm;

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Exit status of a command that did what it was asked.
pub const EXIT_OK: u8 = 0;
/// Exit status of a command that ran but found or left something wrong (failed downloads,
/// bad archives), and of unexpected errors.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a bad configuration or a missing setting (EX_USAGE in sysexits.h), shared
/// with `serve` (DESIGN.md §3).
pub const EXIT_CONFIG: u8 = 64;

/// Why a command could not run to its verdict.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A setting or argument it needs is missing or wrong: exit status [`EXIT_CONFIG`].
    #[error("{0}")]
    Usage(String),
    /// Anything else (unreadable input, an unusable cache directory): [`EXIT_FAILED`].
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl CommandError {
    pub fn exit_status(&self) -> u8 {
        match self {
            CommandError::Usage(_) => EXIT_CONFIG,
            CommandError::Failed(_) => EXIT_FAILED,
        }
    }
}

/// A progress bar on stderr. indicatif draws nothing when stderr is not a terminal, so logs
/// and CI output get only the final report.
fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{wide_msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

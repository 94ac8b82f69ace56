//! The integration tests' mock of repo.magento.com as a standalone program, for
//! `bench/run.sh`.
//!
//! The benchmark runs the release proxy binary, nginx and Composer as separate processes,
//! so the upstream they talk to must be a process too. Rather than a second mock, this
//! wraps the one in `tests/support/`: the benchmark then measures against exactly the
//! upstream behaviour the tests pin down (v1 providers protocol, key pair checked on
//! every request, per-package files always gzip-compressed).
//!
//! It binds 127.0.0.1:0, prints `listening on http://127.0.0.1:PORT` and, with
//! `--url-file`, writes the URL to that file (written whole, then renamed, so a script
//! polling for the file never reads half of it). It stops on SIGTERM or SIGINT, and in
//! any case after `--max-secs`, so a benchmark that dies without cleaning up cannot leave
//! it running for ever.

// Only the mock and its catalogue: the rest of the test support drives Composer and the
// proxy binary, which an example has no use for. (The mock refers to `super::catalogue`.)
#[allow(dead_code)]
#[path = "../tests/support/catalogue.rs"]
mod catalogue;
#[allow(dead_code)]
#[path = "../tests/support/mock_upstream.rs"]
mod mock_upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use catalogue::Catalogue;
use mock_upstream::{MockOptions, MockUpstream, Protocol};

#[derive(Parser)]
#[command(
    name = "mock_upstream",
    about = "Mock repo.magento.com (v1 providers protocol) on 127.0.0.1, for benchmarks. \
             Accepts only the test key pair (tests/support/mock_upstream.rs)."
)]
struct Args {
    /// Number of `magento/module-mNNN` packages required by
    /// magento/product-community-edition.
    #[arg(long, default_value_t = 100)]
    modules: usize,
    /// Delay before every response, in milliseconds (a slow, far-away upstream).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Adds a package `bench/blob-<BYTES>` (version 1.0.0) whose archive holds this many
    /// incompressible bytes; repeatable.
    #[arg(long = "archive-bytes", value_name = "BYTES")]
    archive_bytes: Vec<usize>,
    /// Write the base URL (`http://127.0.0.1:PORT`, no newline) to this file.
    #[arg(long)]
    url_file: Option<PathBuf>,
    /// Stop by itself after this many seconds.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Package names are derived from the size, so a size given twice would make two
    // packages with one name.
    args.archive_bytes.sort_unstable();
    args.archive_bytes.dedup();

    let catalogue = Arc::new(Catalogue::with_sized_archives(
        args.modules,
        &args.archive_bytes,
    ));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue)).await;
    mock.set_delay(Duration::from_millis(args.delay_ms));
    let url = mock.url();

    // Signal handlers go in before the URL is published: a script that reads the URL
    // and then sends SIGTERM must find the handler in place.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    if let Some(path) = &args.url_file {
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, &url).with_context(|| format!("writing {}", temp.display()))?;
        std::fs::rename(&temp, path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    println!("listening on {url}");

    let reason = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        () = tokio::time::sleep(Duration::from_secs(args.max_secs)) => "--max-secs elapsed",
    };
    eprintln!(
        "mock_upstream: stopping ({reason}) after {} requests",
        mock.requests().len()
    );
    mock.stop().await;
    Ok(())
}

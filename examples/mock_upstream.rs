//! The integration tests' mock upstreams as a standalone program, for `bench/run.sh`:
//! repo.magento.com (the default), a vendor's Private Packagist repository, or packagist.org
//! (optionally with its dists on a mock of GitHub's API).
//!
//! The benchmark runs the release proxy binary, nginx and Composer as separate processes,
//! so the upstreams they talk to must be processes too. Rather than a second mock, this
//! wraps the one in `tests/integration/support/`: the benchmark then measures against exactly the
//! upstream behaviour the tests pin down (v1 providers protocol or p2, keys checked on
//! every request, per-package files always gzip-compressed, minified packagist metadata,
//! dists on a second origin). The options map one to one onto `MockOptions`, and the
//! catalogues are the tests' own (`Catalogue::magento`, `vendor`, `packagist`), so the three
//! upstreams of `tests/integration/support/upstreams.rs` are, as processes:
//!
//! ```text
//! mock_upstream                                   # magento: v1, Marketplace test keys
//! mock_upstream --catalogue vendor --protocol p2 \
//!     --path-prefix /hyva-project --public-key token --private-key <licence>
//! mock_upstream --catalogue packagist --packagist-like --dist-host-url-file F
//! ```
//!
//! With `--github-api` (packagist-like only) it also starts the tests' mock of api.github.com
//! (`tests/integration/support/github.rs`): dists are then published as packagist.org publishes them,
//! `<api>/repos/OWNER/REPO/zipball/REF`, and the API redirects them to the dist host, which
//! plays codeload.github.com; `--github-api-url-file` writes the API's URL like the others.
//!
//! It binds 127.0.0.1:0, prints `listening on <repository URL>` and, with `--url-file`,
//! writes the repository URL (the origin, plus `/<prefix>/` with `--path-prefix`) to that
//! file (written whole, then renamed, so a script polling for the file never reads half of
//! it); `--dist-host-url-file` does the same for the second origin. It stops on SIGTERM or
//! SIGINT, and in any case after `--max-secs`, so a benchmark that dies without cleaning up
//! cannot leave it running for ever.

// Only the mock and its catalogue: the rest of the test support drives Composer and the
// proxy binary, which an example has no use for. (The mock refers to `super::catalogue` and,
// for packagist.org's APIs, `super::advisories`.)
#[allow(dead_code)]
#[path = "../tests/integration/support/advisories.rs"]
mod advisories;
#[allow(dead_code)]
#[path = "../tests/integration/support/catalogue.rs"]
mod catalogue;
#[allow(dead_code)]
#[path = "../tests/integration/support/github.rs"]
mod github;
#[allow(dead_code)]
#[path = "../tests/integration/support/mock_upstream.rs"]
mod mock_upstream;
#[path = "../tests/integration/support/serve.rs"]
mod serve;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};

use catalogue::Catalogue;
use github::GitHubApiMock;
use mock_upstream::{MockOptions, MockUpstream, Protocol, RecordedRequest};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CatalogueChoice {
    /// repo.magento.com's shape: the product metapackage, the framework, `--modules`
    /// modules, an extension in a second listing (`Catalogue::magento`).
    Magento,
    /// A vendor repository (Hyvä's): a theme and its module (`Catalogue::vendor`).
    Vendor,
    /// packagist.org in miniature: psr/log, symfony, laminas, a `magento/` name
    /// (`Catalogue::packagist`).
    Packagist,
    /// packagist.org's share of a dev-tooling install: phpunit/phpunit 11.5 and its
    /// dependency tree, 27 packages (`Catalogue::dev_tooling`).
    DevTooling,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolChoice {
    /// Composer 1 providers, as repo.magento.com serves it.
    V1,
    /// Composer 2 `metadata-url`.
    P2,
}

#[derive(Parser)]
#[command(
    name = "mock_upstream",
    about = "The tests' mock Composer repositories (tests/integration/support/mock_upstream.rs) on \
             127.0.0.1, for benchmarks: repo.magento.com by default, a vendor repository or \
             packagist.org with the options below."
)]
struct Args {
    /// Which fixture catalogue to serve.
    #[arg(long, value_enum, default_value = "magento")]
    catalogue: CatalogueChoice,
    /// Magento catalogue: number of `magento/module-mNNN` packages required by
    /// magento/product-community-edition.
    #[arg(long, default_value_t = 100)]
    modules: usize,
    /// Magento catalogue: adds a package `bench/blob-<BYTES>` (version 1.0.0) whose archive
    /// holds this many incompressible bytes; repeatable.
    #[arg(long = "archive-bytes", value_name = "BYTES")]
    archive_bytes: Vec<usize>,
    /// Repository protocol (ignored with `--packagist-like`, which is p2).
    #[arg(long, value_enum, default_value = "v1")]
    protocol: ProtocolChoice,
    /// Serve every route under this path, e.g. `/hyva-project` (a Private Packagist
    /// customer repository); the repository URL is then `http://127.0.0.1:PORT/hyva-project/`.
    #[arg(long, default_value = "")]
    path_prefix: String,
    /// HTTP Basic user the mock accepts (default: the tests' Marketplace public key).
    #[arg(long, default_value = mock_upstream::TEST_PUBLIC_KEY)]
    public_key: String,
    /// HTTP Basic password the mock accepts (default: the tests' Marketplace private key).
    #[arg(long, default_value = mock_upstream::TEST_PRIVATE_KEY)]
    private_key: String,
    /// packagist.org (`MockOptions::packagist_like`): p2, public (no credentials asked
    /// for), open-ended (no `available-packages`, 404 for names it lacks), minified
    /// metadata, absolute URL templates, dists on a second origin named in the metadata.
    #[arg(long)]
    packagist_like: bool,
    /// With `--packagist-like`: publish dists as GitHub API zipball URLs on a mock of
    /// api.github.com (started here, no token, 60 unauthenticated requests in its lifetime
    /// like the real API's hour) that redirects them to the dist host.
    #[arg(long)]
    github_api: bool,
    /// Delay before every response, in milliseconds, on every origin (a slow, far-away
    /// upstream and, with `--github-api`, a far-away GitHub).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Write the repository URL (no newline) to this file.
    #[arg(long)]
    url_file: Option<PathBuf>,
    /// Write the second origin's URL (the dist host; `--packagist-like` only) to this file.
    #[arg(long)]
    dist_host_url_file: Option<PathBuf>,
    /// Write the GitHub API mock's URL (`--github-api` only) to this file.
    #[arg(long)]
    github_api_url_file: Option<PathBuf>,
    /// Append one line per request received (every origin) to this file:
    /// `<ms since start> <main|dist> <method> <path?query> <credentials ok|none|wrong>
    /// "<user agent>"`, or for the GitHub API mock `<ms> api <path> <credentials none|sent>`.
    /// Written in batches every 50 ms; for counting upstream traffic.
    #[arg(long)]
    request_log: Option<PathBuf>,
    /// Stop by itself after this many seconds.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
}

impl Args {
    fn options(&mut self) -> anyhow::Result<MockOptions> {
        if self.catalogue != CatalogueChoice::Magento && !self.archive_bytes.is_empty() {
            bail!("--archive-bytes needs --catalogue magento");
        }
        if self.dist_host_url_file.is_some() && !self.packagist_like {
            bail!("--dist-host-url-file needs --packagist-like (the only mode with a dist host)");
        }
        if self.github_api && !self.packagist_like {
            bail!("--github-api needs --packagist-like (its dists are what the API redirects)");
        }
        if self.github_api_url_file.is_some() && !self.github_api {
            bail!("--github-api-url-file needs --github-api");
        }
        // Package names are derived from the size, so a size given twice would make two
        // packages with one name.
        self.archive_bytes.sort_unstable();
        self.archive_bytes.dedup();
        let catalogue = Arc::new(match self.catalogue {
            CatalogueChoice::Magento => {
                Catalogue::with_sized_archives(self.modules, &self.archive_bytes)
            }
            CatalogueChoice::Vendor => Catalogue::vendor(),
            CatalogueChoice::Packagist => Catalogue::packagist(),
            CatalogueChoice::DevTooling => Catalogue::dev_tooling(),
        });
        let protocol = match self.protocol {
            ProtocolChoice::V1 => Protocol::V1,
            ProtocolChoice::P2 => Protocol::P2,
        };
        let mut opts = if self.packagist_like {
            MockOptions::packagist_like(catalogue)
        } else {
            let mut opts = MockOptions::new(protocol, catalogue);
            opts.public_key = self.public_key.clone();
            opts.private_key = self.private_key.clone();
            opts
        };
        opts.path_prefix = self.path_prefix.trim_end_matches('/').to_string();
        if !opts.path_prefix.is_empty() && !opts.path_prefix.starts_with('/') {
            bail!("--path-prefix must start with /");
        }
        Ok(opts)
    }
}

/// Writes `contents` to `path` whole: a temporary file, then a rename.
fn publish(path: &Path, contents: &str) -> anyhow::Result<()> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, contents).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn log_line(out: &mut impl std::io::Write, ms: u128, host: &str, r: &RecordedRequest) {
    let credentials = match (&r.authorization, r.credentials_ok) {
        (_, true) => "ok",
        (None, false) => "none",
        (Some(_), false) => "wrong",
    };
    let _ = writeln!(
        out,
        "{ms} {host} {} {} {credentials} {:?}",
        r.method,
        r.raw_path_and_query,
        r.user_agent.as_deref().unwrap_or("")
    );
}

/// Appends the requests recorded since the last call to the request log.
struct RequestLog {
    file: std::io::BufWriter<std::fs::File>,
    started: Instant,
    main_seen: usize,
    dist_seen: usize,
    api_seen: usize,
}

impl RequestLog {
    fn open(path: &Path) -> anyhow::Result<RequestLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(RequestLog {
            file: std::io::BufWriter::new(file),
            started: Instant::now(),
            main_seen: 0,
            dist_seen: 0,
            api_seen: 0,
        })
    }

    fn flush_new(&mut self, mock: &MockUpstream, api: Option<&GitHubApiMock>) {
        let ms = self.started.elapsed().as_millis();
        let main = mock.requests();
        for r in main.iter().skip(self.main_seen) {
            log_line(&mut self.file, ms, "main", r);
        }
        self.main_seen = main.len();
        let dist = mock.archive_host_requests();
        for r in dist.iter().skip(self.dist_seen) {
            log_line(&mut self.file, ms, "dist", r);
        }
        self.dist_seen = dist.len();
        if let Some(api) = api {
            let requests = api.requests();
            for r in requests.iter().skip(self.api_seen) {
                let credentials = if r.authorization.is_some() {
                    "sent"
                } else {
                    "none"
                };
                let _ = writeln!(self.file, "{ms} api GET {} {credentials}", r.path);
            }
            self.api_seen = requests.len();
        }
        let _ = self.file.flush();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let mut opts = args.options()?;
    let delay = Duration::from_millis(args.delay_ms);

    // The API's URL goes into the dists the mock publishes, and the mock's dist host is where
    // the API redirects: the API starts first and learns codeload's address afterwards.
    let api = if args.github_api {
        let api = GitHubApiMock::start(None).await;
        api.set_delay(delay);
        opts.github_api = Some(api.url());
        Some(api)
    } else {
        None
    };
    let mock = MockUpstream::start(opts).await;
    mock.set_delay(delay);
    if let Some(api) = &api {
        api.set_codeload(
            &mock
                .archive_host_url()
                .context("the mock has no dist host for the GitHub API to redirect to")?,
        );
    }
    let url = mock.repo_url();
    let mut request_log = args
        .request_log
        .as_deref()
        .map(RequestLog::open)
        .transpose()?;

    // Signal handlers go in before the URL is published: a script that reads the URL
    // and then sends SIGTERM must find the handler in place.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    if let Some(path) = &args.dist_host_url_file {
        let dist = mock
            .archive_host_url()
            .context("the mock has no dist host")?;
        publish(path, &dist)?;
        println!("dist host on {dist}");
    }
    if let (Some(path), Some(api)) = (&args.github_api_url_file, &api) {
        publish(path, &api.url())?;
        println!("GitHub API on {}", api.url());
    }
    if let Some(path) = &args.url_file {
        publish(path, &url)?;
    }
    println!("listening on {url}");

    let deadline = tokio::time::sleep(Duration::from_secs(args.max_secs));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let reason = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            () = &mut deadline => break "--max-secs elapsed",
            _ = tick.tick(), if request_log.is_some() => {
                if let Some(log) = request_log.as_mut() {
                    log.flush_new(&mock, api.as_ref());
                }
            }
        }
    };
    if let Some(log) = request_log.as_mut() {
        log.flush_new(&mock, api.as_ref());
    }
    eprintln!(
        "mock_upstream: stopping ({reason}) after {} requests ({} on the dist host, {} on the \
         GitHub API)",
        mock.requests().len(),
        mock.archive_host_requests().len(),
        api.as_ref().map_or(0, |api| api.requests().len())
    );
    mock.stop().await;
    Ok(())
}

//! The `composer-proxy` binary: parses arguments, loads configuration, starts logging and
//! hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use composer_proxy::commands::{self, cache, check, lock, tokens, usage, warm, CommandError};
use composer_proxy::config::{Config, Secret, Secrets, Sources, CLIENT_TOKEN_VAR};
use composer_proxy::tokens::TokenState;

/// Exit status for a bad configuration (EX_USAGE in sysexits.h, as DESIGN.md §3 requires).
const EXIT_CONFIG: u8 = commands::EXIT_CONFIG;

#[derive(Parser)]
#[command(
    name = "composer-proxy",
    version,
    about = "Caching, authenticating reverse proxy for Composer repositories such as repo.magento.com",
    long_about = "Caching, authenticating reverse proxy for Composer repositories such as \
repo.magento.com.\n\nWithout a command it serves. Without --config the embedded defaults \
(config/default.toml) apply. Every setting can be overridden by an environment variable \
COMPOSER_PROXY_<SETTING>, e.g. COMPOSER_PROXY_UPSTREAM_URL or COMPOSER_PROXY_PUBLIC_KEY.\n\n\
The other commands print their own report and log nothing unless COMPOSER_PROXY_LOG_LEVEL is \
set. Every command exits with 64 when the configuration is invalid."
)]
struct Cli {
    /// TOML configuration file; settings it leaves out keep their defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Serve,
    /// Check the configuration and whether upstream accepts the key pair.
    #[command(
        long_about = "Check the configuration and whether upstream accepts the key pair.\n\n\
Validates the configuration, then asks the upstream for packages.json with the key pair, \
exactly as the proxy would (and, for a Composer 1 upstream such as repo.magento.com, its \
provider listings, to count the packages the key may see). Every configured key pair, \
fallbacks included, is tried on its own; OK means all were accepted. Prints one verdict line, \
then what to check. The keys are never printed.\n\n\
Exit status:\n  \
0   OK: upstream accepted the key pair\n  \
3   KEYS REJECTED: upstream refused the key pair (HTTP 401 or 403)\n  \
4   UPSTREAM UNREACHABLE: no connection, or no answer in time\n  \
5   TLS PROBLEM: the upstream's certificate is not trusted, expired or for another host\n  \
6   NO KEYS CONFIGURED: no key pair in any key source\n  \
7   UPSTREAM ERROR: an answer, but not a usable Composer repository\n  \
64  the configuration is invalid\n\n\
Several accounts of one repository ([[upstream]] tables with the same url) also get an \
entitlement report: the packages only that account reaches, which is what losing it would \
cost. With a github_token, GitHub is asked whether it accepts it."
    )]
    Check {
        /// Print the verdicts as one JSON document (for monitoring and scripts).
        #[arg(long)]
        json: bool,
    },
    /// Fetch every archive a composer.lock names into the cache.
    #[command(
        long_about = "Fetch every archive a composer.lock names into the cache.\n\n\
Reads `packages` and `packages-dev` of the lock file and stores each package's archive in \
cache_dir exactly as the proxy would (same checks, same layout), several at a time, with a \
progress bar on a terminal. Locks made directly against the upstream and locks made through \
the proxy both work. Safe while a proxy runs on the same cache directory. Ends with a summary: \
fetched, already cached, nothing to fetch (metapackages), skipped (dists on other hosts), and \
failed with the reason for each. Archives beyond archive_cache_max_bytes evict the least \
recently used ones as usual.\n\n\
With --via URL it downloads each archive from a running proxy at that URL instead, as \
Composer would, so that proxy fetches and stores it: the keys and the cache directory stay \
with the proxy, and this command needs only the upstream URLs (to recognise a lock's dist \
URLs) and, when the proxy requires tokens, a client token (COMPOSER_PROXY_CLIENT_TOKEN or \
--token). \"already cached\" then counts what the proxy had stored before.\n\n\
Exit status: 0 when nothing failed, 1 when any package failed (or the proxy could not be \
used), 64 for an invalid configuration."
    )]
    Warm {
        /// The composer.lock whose packages to fetch.
        #[arg(long, value_name = "FILE")]
        lock: PathBuf,
        /// Archives fetched at the same time.
        #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// Download through the running proxy at this URL (as clients reach it) instead of
        /// from the upstreams; no keys needed.
        #[arg(long, value_name = "URL", value_parser = lock::parse_public_url)]
        via: Option<String>,
        /// The client token for --via, when that proxy requires tokens; prefer the
        /// COMPOSER_PROXY_CLIENT_TOKEN variable, which other users cannot see.
        #[arg(long, value_name = "TOKEN", requires = "via")]
        token: Option<String>,
    },
    /// Inspect and maintain the cache directory (safe while a proxy runs).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Work on composer.lock files.
    Lock {
        #[command(subcommand)]
        command: LockCommand,
    },
    /// Issue and revoke client tokens (when require_tokens is on, clients need one).
    #[command(long_about = "Issue and revoke client tokens.\n\n\
With require_tokens on, every Composer request must carry an active token, sent by Composer \
from an ordinary auth.json entry for the proxy's host (http-basic with the token as password, \
or bearer). Tokens are stored as SHA-256 hashes in tokens_file (default: tokens.json in \
cache_dir), or in the bucket when object_store_url is set; the secret is printed once, by `create`. Running proxies see every change \
within a second, without a restart. Health, readiness and metrics need no token.\n\n\
A token created with --view VIEW works only at those [[view]]s' URLs (403 elsewhere); without \
--view it is organisation-wide. `tokens views` changes a token's views.\n\n\
Exit status: 0 done, 1 no such token (or the name is taken), 64 invalid configuration or name.")]
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Report who downloaded which archives: package, version, view, token, count, last time.
    #[command(
        long_about = "Report who downloaded which archives, from the usage record.\n\n\
Every archive a proxy serves to a client (a GET answered 200, 206 or 304) is recorded with its \
time, package, version, the upstream account that served it, the view and the client token's \
name; proxies write it under cache_dir/usage/ within a second or two, and with \
object_store_url also to the bucket, where every replica's record is read from. Rows group the \
downloads of one package version through one view with one token from one account, with \
their count and the last time. `-` stands for none: the merged root or an upstream's own URL \
(no view), no token needed.\n\n\
Example, who installed an extension in the last 30 days:\n\n  \
composer-proxy usage --package vendor/extension --since 30d\n\n\
Exit status: 0 done, 1 the record could not be read, 64 invalid configuration or option."
    )]
    Usage {
        /// Only downloads since then: a duration back from now (30d, 12h, 2w), a UTC date
        /// (2026-11-01) or a time (2026-11-01T09:00:00Z).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only downloads through this [[view]].
        #[arg(long, value_name = "VIEW")]
        view: Option<String>,
        /// Only downloads with this client token (its name).
        #[arg(long, value_name = "NAME")]
        token: Option<String>,
        /// Only this package; `*` matches any run of characters (vendor/*).
        #[arg(long, value_name = "NAME")]
        package: Option<String>,
        /// Print the rows as JSON (a list of {package, version, view, token, upstream, count,
        /// last}).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token and print its secret (the only time it is shown).
    Create {
        /// Who or what receives it (a person, a CI system): shown in logs and `tokens list`.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Bind it to this [[view]] (repeatable): it then works only at those views' URLs.
        /// Without --view it is organisation-wide.
        #[arg(long = "view", value_name = "VIEW")]
        views: Vec<String>,
    },
    /// Change the views a token is bound to: --view (repeatable) binds it to exactly those,
    /// --org-wide unbinds it.
    Views {
        name: String,
        #[arg(
            long = "view",
            value_name = "VIEW",
            required_unless_present = "org_wide"
        )]
        views: Vec<String>,
        /// Make it organisation-wide: usable everywhere, as a token without views.
        #[arg(long, conflicts_with = "views")]
        org_wide: bool,
    },
    /// Show every token's name, state, creation and last use (never a secret).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Refuse a token from now on, keeping it so it can be enabled again.
    Disable { name: String },
    /// Accept a disabled token again.
    Enable { name: String },
    /// Refuse a token for good; clients still sending it are told it was deleted.
    Delete { name: String },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Show the archives (count and size against archive_cache_max_bytes), metadata files and
    /// temporary files in cache_dir.
    Stats,
    /// Remove everything cached, or with PACKAGE only that package's archives.
    #[command(
        long_about = "Remove everything cached, or with PACKAGE only that package's archives.\n\n\
Without PACKAGE: every archive and every metadata file. With PACKAGE (vendor/name): the \
archives of every version of that package, found through the description stored beside each \
archive. Temporary files are left alone (they may be downloads in progress). Only unlinks, so \
it is safe while a proxy runs: removed files are fetched again when next asked for."
    )]
    Purge {
        /// A package name such as magento/framework.
        #[arg(value_parser = cache::parse_package_name)]
        package: Option<String>,
        /// Only what came from this upstream (its name in the configuration): its archives
        /// and, without PACKAGE, its metadata.
        #[arg(long, value_name = "NAME")]
        upstream: Option<String>,
    },
    /// Re-hash every stored archive against the sha1 and length recorded when it was stored.
    #[command(
        long_about = "Re-hash every stored archive against the sha1 and length recorded \
beside it when it was stored, and report the bad ones (damaged on disk, or without a \
description to check against).\n\n\
Exit status: 0 when no bad archive remains (none found, or all removed with --remove), 1 \
otherwise, 64 for an invalid configuration."
    )]
    Verify {
        /// Remove the bad archives, so the next request fetches them again.
        #[arg(long)]
        remove: bool,
        /// Only the archives that came from this upstream (its name in the configuration).
        #[arg(long, value_name = "NAME")]
        upstream: Option<String>,
    },
}

#[derive(Subcommand)]
enum LockCommand {
    /// Point an existing composer.lock's upstream dist URLs at the proxy.
    #[command(
        long_about = "Point an existing composer.lock's upstream dist URLs at the proxy.\n\n\
`composer install` downloads from the URLs stored in the lock, so a lock made directly \
against the upstream bypasses the proxy. This rewrites every dist URL on the upstream's origin \
to the URL the proxy serves that archive at (<public_url>/dists/<vendor>/<name>/<key>.<ext>), \
and upstream notification-url entries to <public_url>/downloads/. Everything else stays byte \
for byte; the file is replaced atomically. Prints how many URLs were rewritten.\n\n\
Only public_url and the upstream URLs are read: no key source is, so no keys are needed."
    )]
    Migrate {
        /// The composer.lock to rewrite in place.
        #[arg(value_name = "LOCK_FILE")]
        lock: PathBuf,
        /// The proxy's URL as clients use it; default: the public_url setting (required when
        /// that is not set).
        #[arg(long, value_name = "URL", value_parser = lock::parse_public_url)]
        public_url: Option<String>,
    },
}

impl Command {
    /// Commands that never send the keys do not read them either, so they run on machines
    /// (CI jobs) that do not hold them.
    fn secrets(&self) -> Secrets {
        match self {
            Command::Lock { .. } | Command::Warm { via: Some(_), .. } | Command::Usage { .. } => {
                Secrets::Ignore
            }
            _ => Secrets::Read,
        }
    }
}

/// jemalloc with background purging returns the memory of a burst to the system within
/// seconds, where glibc's arenas kept it (see the `jemalloc` feature in Cargo.toml).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let secrets = command.secrets();
    let loaded = Sources::from_process(cli.config.as_deref())
        .and_then(|sources| Config::load_with(&sources, secrets).map(|config| (sources, config)));
    let (sources, config) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("composer-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Commands report for themselves; their log would only repeat it, or break the progress bar.
    let log_level = match command {
        Command::Serve => config.log_level.as_str(),
        _ if sources.env.contains_key("COMPOSER_PROXY_LOG_LEVEL") => config.log_level.as_str(),
        _ => "off",
    };
    let _log_guard = composer_proxy::telemetry::init(config.log_format, log_level);
    let result = match command {
        Command::Serve => return serve(config, cli.config),
        Command::Check { json } => block_on(check::run(&config, json)),
        Command::Warm {
            lock,
            concurrency,
            via,
            token,
        } => {
            // Only for --via: warming from the upstreams sends no client token anywhere.
            let token = via.as_ref().and_then(|_| {
                token
                    .or_else(|| sources.env.get(CLIENT_TOKEN_VAR).cloned())
                    .map(Secret::new)
            });
            block_on(warm::run(
                &config,
                &warm::WarmOptions {
                    lock,
                    concurrency: usize::from(concurrency),
                    via,
                    token,
                },
            ))
        }
        Command::Cache { command } => match command {
            CacheCommand::Stats => cache::stats(&config),
            CacheCommand::Purge { package, upstream } => {
                cache::purge(&config, package.as_deref(), upstream.as_deref())
            }
            CacheCommand::Verify { remove, upstream } => {
                cache::verify(&config, remove, upstream.as_deref())
            }
        },
        Command::Lock {
            command: LockCommand::Migrate { lock, public_url },
        } => lock::migrate(&config, &lock::MigrateOptions { lock, public_url }),
        Command::Tokens { command } => match command {
            TokensCommand::Create { name, views } => {
                block_on(tokens::create(&config, &name, &views))
            }
            TokensCommand::Views { name, views, .. } => {
                block_on(tokens::set_views(&config, &name, &views))
            }
            TokensCommand::List { json } => block_on(tokens::list(&config, json)),
            TokensCommand::Disable { name } => {
                block_on(tokens::set_state(&config, &name, TokenState::Disabled))
            }
            TokensCommand::Enable { name } => {
                block_on(tokens::set_state(&config, &name, TokenState::Active))
            }
            TokensCommand::Delete { name } => {
                block_on(tokens::set_state(&config, &name, TokenState::Deleted))
            }
        },
        Command::Usage {
            since,
            view,
            token,
            package,
            json,
        } => block_on(usage::run(
            &config,
            &usage::UsageOptions {
                since,
                view,
                token,
                package,
                json,
            },
        )),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("composer-proxy: {e:#}");
            ExitCode::from(e.exit_status())
        }
    }
}

/// Runs a command that talks to the upstream or the bucket.
fn block_on(
    command: impl std::future::Future<Output = Result<u8, CommandError>>,
) -> Result<u8, CommandError> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(command)
}

fn serve(mut config: Config, config_file: Option<std::path::PathBuf>) -> ExitCode {
    let configured = config.max_connections;
    config.max_connections = match composer_proxy::server::open_files::apply(configured) {
        Ok(serving) => serving,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("composer-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // A reload is held to the same cap, so an unchanged setting is not taken for a change.
    let cap = if config.max_connections < configured {
        config.max_connections
    } else {
        usize::MAX
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("composer-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A reload reads the same sources again: the file given at start and the environment.
    let reload = move || {
        Sources::from_process(config_file.as_deref())
            .and_then(|s| Config::load(&s))
            .map(|mut c| {
                c.max_connections = c.max_connections.min(cap);
                c
            })
    };
    match runtime.block_on(composer_proxy::run(config, reload, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Start-up failures name the setting at fault, so they share the config status.
            eprintln!("composer-proxy: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

//! The `composer-proxy` binary: parses arguments, loads configuration, starts logging and
//! hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use composer_proxy::config::{Config, Sources};

/// Exit status for a bad configuration (EX_USAGE in sysexits.h, as DESIGN.md §3 requires).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "composer-proxy",
    version,
    about = "Caching, authenticating reverse proxy for Composer repositories such as repo.magento.com",
    long_about = "Caching, authenticating reverse proxy for Composer repositories such as \
repo.magento.com.\n\nWithout --config the embedded defaults (config/default.toml) apply. Every \
setting can be overridden by an environment variable COMPOSER_PROXY_<SETTING>, e.g. \
COMPOSER_PROXY_UPSTREAM_URL or COMPOSER_PROXY_PUBLIC_KEY."
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Sources::from_process(cli.config.as_deref()).and_then(|s| Config::load(&s)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("composer-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log_guard = composer_proxy::telemetry::init(config.log_format, &config.log_level);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, cli.config),
    }
}

fn serve(config: Config, config_file: Option<std::path::PathBuf>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("composer-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A reload reads the same sources again: the file given at start and the environment.
    let reload =
        move || Sources::from_process(config_file.as_deref()).and_then(|s| Config::load(&s));
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

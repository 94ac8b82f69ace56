//! The settings as written (one serde struct, every field present because the embedded
//! defaults are merged underneath), and their validation into [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::bucket::parse_bucket_url;
use super::downloads::{downloads, RawDownloads};
use super::github::github;
use super::keys::{check_composer_auth, Secrets};
use super::upstreams::{upstreams, RawUpstream, ROUTE_WORDS};
use super::views::{views, RawView};
use super::{parse_public_url, Config, ConfigError, LogFormat, TlsFiles};

/// The settings as written; every field is present because the embedded defaults are merged
/// underneath whatever the user supplies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: String,
    pub(super) public_url: String,
    pub(super) allow: Vec<String>,
    pub(super) status_allow: Vec<String>,
    pub(super) trusted_proxies: Vec<String>,
    pub(super) require_tokens: bool,
    pub(super) tokens_file: String,
    pub(super) tls_cert: String,
    pub(super) tls_key: String,
    pub(super) shutdown_grace_secs: u64,
    pub(super) max_connections: usize,
    pub(super) client_header_timeout_secs: u64,
    pub(super) client_body_timeout_secs: u64,
    pub(super) client_send_timeout_secs: u64,
    pub(super) upstream_url: String,
    pub(super) public_key: String,
    pub(super) private_key: String,
    pub(super) public_key_file: String,
    pub(super) private_key_file: String,
    pub(super) auth_json: String,
    pub(super) fallback_keys_file: String,
    pub(super) upstream_ca_file: String,
    pub(super) upstream_connect_timeout_secs: u64,
    pub(super) upstream_read_timeout_secs: u64,
    pub(super) upstream_metadata_timeout_secs: u64,
    pub(super) upstream_archive_timeout_secs: u64,
    pub(super) upstream_max_redirects: u8,
    pub(super) upstream_metadata_max_bytes: u64,
    pub(super) upstream_feed_max_bytes: u64,
    pub(super) upstream_api_max_bytes: u64,
    pub(super) cache_dir: String,
    pub(super) object_store_url: String,
    pub(super) metadata_ttl_secs: u64,
    pub(super) metadata_changes_poll_secs: u64,
    pub(super) metadata_cache_max_bytes: u64,
    pub(super) v1_prefetch_concurrency: usize,
    pub(super) negative_ttl_secs: u64,
    pub(super) advisories_ttl_secs: u64,
    pub(super) upstream_retry_secs: u64,
    pub(super) stale_on_key_rejection: bool,
    pub(super) archive_cache_max_bytes: u64,
    pub(super) archive_memory_cache_max_bytes: u64,
    pub(super) cache_min_free_bytes: u64,
    pub(super) cache_sweep_interval_secs: u64,
    pub(super) scrub_interval_secs: u64,
    pub(super) scrub_max_bytes_per_sec: u64,
    pub(super) usage_retention_days: u64,
    pub(super) usage_max_bytes: u64,
    pub(super) usage_replica: String,
    pub(super) github_token: String,
    pub(super) github_token_file: String,
    pub(super) github_api_url: String,
    pub(super) github_codeload_url: String,
    pub(super) log_format: String,
    pub(super) log_level: String,
    /// `[[upstream]]` tables; only in a `--config` file.
    pub(super) upstream: Vec<RawUpstream>,
    /// `[[view]]` tables; only in a `--config` file.
    pub(super) view: Vec<RawView>,
    /// The legacy release-download endpoint.
    pub(super) downloads: RawDownloads,
}

/// Deserializes the merged settings. serde's error for the whole table names no setting, so on
/// failure the value to blame is found by trying each one alone among the defaults (which
/// deserialize, as a unit test checks), and each field of an `[[upstream]]` table alone in a
/// minimal table. Only the error path pays for this, and without a dependency.
pub(super) fn deserialize(
    merged: toml::Table,
    defaults: &toml::Table,
    origin_of: &dyn Fn(&str) -> String,
) -> Result<RawConfig, ConfigError> {
    let error = match RawConfig::deserialize(toml::Value::Table(merged.clone())) {
        Ok(raw) => return Ok(raw),
        Err(e) => e,
    };
    Err(
        blame(&merged, defaults, origin_of).unwrap_or_else(|| ConfigError {
            setting: "configuration".into(),
            origin: "merged settings".into(),
            message: error.message().to_string(),
        }),
    )
}

fn blame(
    merged: &toml::Table,
    defaults: &toml::Table,
    origin_of: &dyn Fn(&str) -> String,
) -> Option<ConfigError> {
    for (key, value) in merged {
        let mut probe = defaults.clone();
        probe.insert(key.clone(), value.clone());
        if let Err(e) = RawConfig::deserialize(toml::Value::Table(probe)) {
            let tables = match key.as_str() {
                "upstream" => value.as_array().map(Vec::as_slice).unwrap_or_default(),
                _ => &[],
            };
            return Some(
                tables
                    .iter()
                    .enumerate()
                    .find_map(|(i, table)| blame_table(i, table, origin_of))
                    .unwrap_or_else(|| ConfigError {
                        setting: key.clone(),
                        origin: origin_of(key),
                        message: message(key, &e),
                    }),
            );
        }
    }
    None
}

/// The field of one `[[upstream]]` table that does not deserialize, named
/// `upstream.<name>.<field>` as validation names them (`upstream #<n>` without a usable name).
fn blame_table(
    index: usize,
    table: &toml::Value,
    origin_of: &dyn Fn(&str) -> String,
) -> Option<ConfigError> {
    let fields = table.as_table()?;
    let name = fields
        .get("name")
        .and_then(toml::Value::as_str)
        .map_or_else(
            || format!("upstream #{}", index + 1),
            |n| format!("upstream.{n}"),
        );
    let error = |field: &str, setting: String, e: toml::de::Error| ConfigError {
        setting,
        origin: origin_of("upstream"),
        message: message(field, &e),
    };
    let minimal: toml::Table = [("name", "x"), ("url", "https://repo.example")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), toml::Value::String(v.to_string())))
        .collect();
    for (field, value) in fields {
        let mut probe = minimal.clone();
        probe.insert(field.clone(), value.clone());
        if let Err(e) = RawUpstream::deserialize(toml::Value::Table(probe)) {
            return Some(error(field, format!("{name}.{field}"), e));
        }
    }
    // Every field is fine alone: one the table lacks (`name`, `url`).
    RawUpstream::deserialize(table.clone())
        .err()
        .map(|e| error("", name, e))
}

/// serde's message quotes the value, which for a key or token is the secret itself.
fn message(field: &str, e: &toml::de::Error) -> String {
    if matches!(field, "public_key" | "private_key" | "github_token") {
        "must be a string".into()
    } else {
        e.message().to_string()
    }
}

pub(super) fn validate(
    raw: RawConfig,
    origin_of: &dyn Fn(&str) -> String,
    env: &BTreeMap<String, String>,
    secrets: Secrets,
) -> Result<Config, ConfigError> {
    let err = |setting: &str, message: String| ConfigError {
        setting: setting.to_string(),
        origin: origin_of(setting),
        message,
    };

    let listen: SocketAddr = raw.listen.parse().map_err(|_| {
        err(
            "listen",
            format!(
                "expected a socket address such as 127.0.0.1:8080, got {:?}",
                raw.listen
            ),
        )
    })?;

    let tls = match (raw.tls_cert.is_empty(), raw.tls_key.is_empty()) {
        (true, true) => None,
        (false, false) => Some(TlsFiles {
            cert: PathBuf::from(&raw.tls_cert),
            key: PathBuf::from(&raw.tls_key),
        }),
        (true, false) => return Err(err("tls_cert", "tls_key is set but tls_cert is not".into())),
        (false, true) => return Err(err("tls_key", "tls_cert is set but tls_key is not".into())),
    };

    let public_url = if raw.public_url.is_empty() {
        None
    } else {
        Some(parse_public_url(&raw.public_url).map_err(|m| err("public_url", m))?)
    };

    let cidrs = |setting: &str, list: &[String]| {
        list.iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| err(setting, format!("{s:?} is not a CIDR such as 10.0.0.0/8")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let allow = cidrs("allow", &raw.allow)?;
    let trusted_proxies = cidrs("trusted_proxies", &raw.trusted_proxies)?;
    let status_allow = cidrs("status_allow", &raw.status_allow)?;

    if secrets == Secrets::Read {
        check_composer_auth(env)?;
    }
    let (upstreams, key_files) = upstreams(&raw, origin_of, env, secrets)?;
    let views = views(&raw.view, &upstreams, ROUTE_WORDS, &origin_of("view"))?;
    let github = github(&raw, origin_of, env, secrets)?;
    let (downloads, download_files) = match secrets {
        Secrets::Read => downloads(&raw, origin_of)?,
        // The endpoint is only ever asked with its MAGEID and token.
        Secrets::Ignore => (None, Vec::new()),
    };

    let positive = |setting: &str, secs: u64| {
        if secs == 0 {
            Err(err(setting, "must be greater than 0".into()))
        } else {
            Ok(Duration::from_secs(secs))
        }
    };

    let log_format = match raw.log_format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(err(
                "log_format",
                format!("expected \"text\" or \"json\", got {other:?}"),
            ))
        }
    };
    tracing_subscriber::EnvFilter::try_new(&raw.log_level)
        .map_err(|e| err("log_level", format!("not a tracing filter: {e}")))?;

    if raw.cache_dir.is_empty() {
        return Err(err("cache_dir", "must not be empty".into()));
    }
    if raw.v1_prefetch_concurrency == 0 {
        return Err(err("v1_prefetch_concurrency", "must be at least 1".into()));
    }
    if raw.metadata_cache_max_bytes < 1024 * 1024 {
        return Err(err(
            "metadata_cache_max_bytes",
            "must be at least 1048576 (1 MiB)".into(),
        ));
    }

    if raw.archive_cache_max_bytes < 1024 * 1024 {
        return Err(err(
            "archive_cache_max_bytes",
            "must be at least 1048576 (1 MiB)".into(),
        ));
    }

    if raw.scrub_max_bytes_per_sec < 1024 * 1024 {
        return Err(err(
            "scrub_max_bytes_per_sec",
            "must be at least 1048576 (1 MiB/s); turn the scrub off with scrub_interval_secs = 0"
                .into(),
        ));
    }

    // Whole days in seconds must fit a Duration anyone can subtract from now.
    if raw.usage_retention_days > 36_500 {
        return Err(err(
            "usage_retention_days",
            "must be at most 36500 (100 years); 0 turns the usage record off".into(),
        ));
    }
    if raw.usage_retention_days > 0 && raw.usage_max_bytes < 1024 * 1024 {
        return Err(err(
            "usage_max_bytes",
            "must be at least 1048576 (1 MiB); turn the usage record off with \
             usage_retention_days = 0"
                .into(),
        ));
    }
    let usage_replica = raw.usage_replica.trim();
    let replica_ok = usage_replica.len() <= 64
        && !usage_replica.starts_with('.')
        && usage_replica
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !replica_ok {
        return Err(err(
            "usage_replica",
            format!(
                "{usage_replica:?} is not a replica name: at most 64 letters, digits, '.', '-' \
                 and '_', not starting with '.'"
            ),
        ));
    }

    if raw.max_connections == 0 {
        return Err(err("max_connections", "must be at least 1".into()));
    }
    // The listener counts connections with a semaphore, which holds no more permits than this.
    if raw.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
        return Err(err(
            "max_connections",
            format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
        ));
    }

    let object_store = if raw.object_store_url.trim().is_empty() {
        None
    } else {
        Some(parse_bucket_url(&raw.object_store_url).map_err(|m| err("object_store_url", m))?)
    };

    let optional_path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let cache_dir = PathBuf::from(&raw.cache_dir);

    Ok(Config {
        listen,
        public_url,
        allow,
        trusted_proxies,
        status_allow,
        require_tokens: raw.require_tokens,
        tokens_file: optional_path(&raw.tokens_file)
            .unwrap_or_else(|| cache_dir.join("tokens.json")),
        tls,
        shutdown_grace: Duration::from_secs(raw.shutdown_grace_secs),
        max_connections: raw.max_connections,
        client_header_timeout: positive(
            "client_header_timeout_secs",
            raw.client_header_timeout_secs,
        )?,
        client_body_timeout: positive("client_body_timeout_secs", raw.client_body_timeout_secs)?,
        client_send_timeout: positive("client_send_timeout_secs", raw.client_send_timeout_secs)?,
        upstreams,
        views,
        cache_dir,
        object_store,
        metadata_ttl: positive("metadata_ttl_secs", raw.metadata_ttl_secs)?,
        metadata_cache_max_bytes: raw.metadata_cache_max_bytes,
        v1_prefetch_concurrency: raw.v1_prefetch_concurrency,
        negative_ttl: positive("negative_ttl_secs", raw.negative_ttl_secs)?,
        advisories_ttl: positive("advisories_ttl_secs", raw.advisories_ttl_secs)?,
        upstream_retry: Duration::from_secs(raw.upstream_retry_secs),
        watched_files: key_files
            .iter()
            .chain(&download_files)
            .chain([&raw.tls_cert, &raw.tls_key, &raw.github_token_file])
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        stale_on_key_rejection: raw.stale_on_key_rejection,
        archive_cache_max_bytes: raw.archive_cache_max_bytes,
        archive_memory_cache_max_bytes: raw.archive_memory_cache_max_bytes,
        cache_min_free_bytes: raw.cache_min_free_bytes,
        cache_sweep_interval: positive("cache_sweep_interval_secs", raw.cache_sweep_interval_secs)?,
        scrub_interval: (raw.scrub_interval_secs > 0)
            .then(|| Duration::from_secs(raw.scrub_interval_secs)),
        scrub_max_bytes_per_sec: raw.scrub_max_bytes_per_sec,
        usage_retention: (raw.usage_retention_days > 0)
            .then(|| Duration::from_secs(raw.usage_retention_days * 86_400)),
        usage_max_bytes: raw.usage_max_bytes,
        usage_replica: (!usage_replica.is_empty()).then(|| usage_replica.to_string()),
        github,
        downloads,
        log_format,
        log_level: raw.log_level,
    })
}

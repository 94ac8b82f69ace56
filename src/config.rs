//! Configuration: the embedded defaults, an optional TOML file and `COMPOSER_PROXY_*`
//! environment variables, merged in that order and validated into [`Config`].
//!
//! Validation happens once, at start-up, and names the setting (and where its value came from)
//! on failure, so a typo stops the program instead of surfacing as odd behaviour later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

mod bucket;
mod downloads;
mod github;
mod keys;
mod limits;
mod raw;
mod upstreams;
mod views;

pub use bucket::{parse_bucket_url, BucketKind, BucketUrl};
pub use downloads::RELEASES_NAME;
pub use github::GitHubConfig;
pub use keys::{Credentials, KeySource, Secret, Secrets};
pub use limits::AnswerLimits;
use raw::{deserialize, validate};
pub use views::{NamePattern, ViewConfig};

/// The built-in defaults; `config/default.toml` is the single source of truth for them.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "COMPOSER_PROXY_";

/// The client token `warm --via` sends to a proxy that requires one: not a setting of the
/// proxy, but allowed beside them, where a CI job keeps its other variables.
pub const CLIENT_TOKEN_VAR: &str = "COMPOSER_PROXY_CLIENT_TOKEN";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One upstream repository.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// `[a-z0-9-]{1,32}`: in its own URL, log fields, metric labels and cache paths.
    pub name: String,
    /// From an `[[upstream]]` table (served at `<public_url>/<name>/`, metadata kept under its
    /// name); `false` for the flat settings, served at `public_url` as before tables existed.
    pub named: bool,
    pub url: Url,
    /// Other origins this repository's documents point to (dist hosts, a CDN): fetched on its
    /// behalf, never with its credentials.
    pub allowed_hosts: Vec<Url>,
    pub credentials: Option<Credentials>,
    /// Further key pairs, tried in order when upstream rejects the one before.
    pub fallback: Vec<Credentials>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub metadata_timeout: Duration,
    pub archive_timeout: Duration,
    pub max_redirects: u8,
    pub metadata_ttl: Duration,
    pub negative_ttl: Duration,
    /// How often the upstream's `metadata-changes-url` feed is polled, where its root offers
    /// one; `None`: never (p2 files are then revalidated per TTL only).
    pub metadata_changes_poll: Option<Duration>,
    /// The most the proxy reads of one upstream answer it holds in memory, by kind.
    pub limits: AnswerLimits,
}

impl UpstreamConfig {
    /// Every configured key pair, in the order they are tried.
    pub fn key_pairs(&self) -> Vec<Credentials> {
        self.credentials
            .iter()
            .chain(self.fallback.iter())
            .cloned()
            .collect()
    }
}

/// The validated configuration the proxy runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// As configured, without a trailing slash; `None` derives it from the bound address
    /// (see [`Config::public_url_for`]).
    pub public_url: Option<String>,
    pub allow: Vec<IpNet>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Clients that may read the status page.
    pub status_allow: Vec<IpNet>,
    pub require_tokens: bool,
    pub tokens_file: PathBuf,
    pub tls: Option<TlsFiles>,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub client_header_timeout: Duration,
    pub client_body_timeout: Duration,
    /// A response body that makes no progress for this long is cut off (stream or connection).
    pub client_send_timeout: Duration,
    /// In priority order; never empty.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[view]]` tables: repositories limited to some upstreams, at `<public_url>/<name>/`.
    pub views: Vec<ViewConfig>,
    pub cache_dir: PathBuf,
    /// The bucket shared state lives in (`object_store_url`); `None`: `cache_dir` alone.
    pub object_store: Option<BucketUrl>,
    pub metadata_ttl: Duration,
    pub metadata_cache_max_bytes: u64,
    pub v1_prefetch_concurrency: usize,
    /// How long an upstream 404 for a package's metadata is remembered.
    pub negative_ttl: Duration,
    /// How long upstream answers on security advisories, filter lists and name lists are used
    /// before upstream is asked again (the last one is kept for when it fails).
    pub advisories_ttl: Duration,
    pub upstream_retry: Duration,
    /// Files whose change triggers a reload (key files, auth.json, fallback keys, TLS).
    pub watched_files: Vec<PathBuf>,
    /// Serve cached metadata when upstream rejects the key pair (401/403) instead of failing.
    pub stale_on_key_rejection: bool,
    pub archive_cache_max_bytes: u64,
    pub archive_memory_cache_max_bytes: u64,
    /// Free space eviction keeps on the cache volume; below it `/readyz` reports degraded.
    pub cache_min_free_bytes: u64,
    /// How often temporary files of dead processes are looked for.
    pub cache_sweep_interval: Duration,
    /// How often the scrub starts a pass over the stored archives; `None`: never.
    pub scrub_interval: Option<Duration>,
    pub scrub_max_bytes_per_sec: u64,
    /// How long the usage record keeps downloads; `None`: the record is off.
    pub usage_retention: Option<Duration>,
    /// Bound of each replica's usage record on disk (and in the bucket).
    pub usage_max_bytes: u64,
    /// This replica's name in the usage record; `None`: the host name and a digest of
    /// `cache_dir` (`usage::replica_name`).
    pub usage_replica: Option<String>,
    /// Dists on GitHub (packagist.org's): where they are fetched and with which token.
    pub github: GitHubConfig,
    /// The legacy release-download endpoint (`[downloads]`), when MAGEID and token are set:
    /// its client's settings, the MAGEID and token as its key pair.
    pub downloads: Option<UpstreamConfig>,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// A setting that is wrong, with where its value came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}` ({origin}): {message}")]
pub struct ConfigError {
    pub setting: String,
    pub origin: String,
    pub message: String,
}

/// Everything configuration is read from, gathered up front so tests can supply it directly.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Contents and path of the `--config` file, if any.
    pub file: Option<(PathBuf, String)>,
    /// The process environment (only `COMPOSER_PROXY_*` and `COMPOSER_AUTH` are read).
    pub env: BTreeMap<String, String>,
}

impl Sources {
    /// Reads the named file (if any) and the process environment.
    pub fn from_process(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    setting: "--config".into(),
                    origin: path.display().to_string(),
                    message: format!("cannot read the file: {e}"),
                })?;
                Some((path.to_path_buf(), text))
            }
            None => None,
        };
        let env = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) || k == "COMPOSER_AUTH")
            .collect();
        Ok(Self { file, env })
    }
}

impl Config {
    /// The URL clients use: as configured, or derived from the address actually bound (which
    /// differs from `listen` when it asks for port 0).
    pub fn public_url_for(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{bound}")
            }
        }
    }

    /// Merges defaults, file and environment, then validates, secrets included.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        Self::load_with(sources, Secrets::Read)
    }

    /// As [`Config::load`]; with [`Secrets::Ignore`] no upstream has a key pair, GitHub no
    /// token and release downloads are off, whatever their settings say.
    pub fn load_with(sources: &Sources, secrets: Secrets) -> Result<Config, ConfigError> {
        let defaults: toml::Table = DEFAULT_TOML.parse().map_err(|e| ConfigError {
            setting: "defaults".into(),
            origin: "embedded config/default.toml".into(),
            message: format!("{e}"),
        })?;
        let mut merged = defaults.clone();
        let mut origins: BTreeMap<String, String> = BTreeMap::new();

        if let Some((path, text)) = &sources.file {
            let origin = format!("in {}", path.display());
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
                setting: "--config".into(),
                origin: origin.clone(),
                message: e.message().to_string(),
            })?;
            for (key, value) in table {
                // `[[upstream]]` tables are an array of tables; anything else under that name
                // is a mistake to name, not a type error deep in deserialization.
                let tables = value
                    .as_array()
                    .is_some_and(|list| list.iter().all(toml::Value::is_table));
                if (key == "upstream" || key == "view") && !tables {
                    return Err(ConfigError {
                        message: format!("must be [[{key}]] tables (see config/default.toml)"),
                        setting: key,
                        origin,
                    });
                }
                if !defaults.contains_key(&key) {
                    return Err(ConfigError {
                        setting: key,
                        origin,
                        message: "unknown setting (see config/default.toml for the list)".into(),
                    });
                }
                if key == downloads::TABLE {
                    downloads::merge_file(&mut merged, value, &origin, &mut origins)?;
                    continue;
                }
                origins.insert(key.clone(), origin.clone());
                merged.insert(key, value);
            }
        }

        for (key, default) in &defaults {
            let var = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
            if let Some(text) = sources.env.get(&var) {
                if key == downloads::TABLE {
                    return Err(ConfigError {
                        setting: key.clone(),
                        origin: format!("from {var}"),
                        message: "set the [downloads] fields one by one, e.g. \
                                  COMPOSER_PROXY_DOWNLOADS_MAGE_ID and \
                                  COMPOSER_PROXY_DOWNLOADS_TOKEN_FILE"
                            .into(),
                    });
                }
                if key == "upstream" || key == "view" {
                    return Err(ConfigError {
                        setting: key.clone(),
                        origin: format!("from {var}"),
                        message: format!(
                            "[[{key}]] tables can only be given in the --config file; \
                             upstreams' secrets can come from COMPOSER_PROXY_UPSTREAM_<NAME>_* \
                             variables"
                        ),
                    });
                }
                let origin = format!("from {var}");
                let value = env_value(default, text).map_err(|message| ConfigError {
                    setting: key.clone(),
                    origin: origin.clone(),
                    message,
                })?;
                origins.insert(key.clone(), origin);
                merged.insert(key.clone(), value);
            }
        }
        downloads::merge_env(&mut merged, &sources.env, &mut origins);
        // An unknown COMPOSER_PROXY_* variable is almost always a typo of a real one.
        for var in sources.env.keys() {
            if let Some(name) = var.strip_prefix(ENV_PREFIX) {
                // Secrets of a named upstream; checked against the tables in validation.
                if upstreams::secret_variable(var).is_some()
                    || downloads::variable(var).is_some()
                    || var == CLIENT_TOKEN_VAR
                {
                    continue;
                }
                if !defaults.contains_key(&name.to_ascii_lowercase()) {
                    return Err(ConfigError {
                        setting: name.to_ascii_lowercase(),
                        origin: format!("from {var}"),
                        message: "unknown setting (see config/default.toml for the list)".into(),
                    });
                }
            }
        }

        let origin_of = |key: &str| {
            origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| "default".to_string())
        };
        let raw = deserialize(merged, &defaults, &origin_of)?;
        validate(raw, &origin_of, &sources.env, secrets)
    }
}

/// Converts an environment string to the type the default has, so `COMPOSER_PROXY_ALLOW=a,b`
/// becomes a list and `..._SECS=5` an integer.
fn env_value(default: &toml::Value, text: &str) -> Result<toml::Value, String> {
    Ok(match default {
        toml::Value::Integer(_) => toml::Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| format!("expected a whole number, got {text:?}"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(match text.trim() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(format!("expected true or false, got {text:?}")),
        }),
        toml::Value::Array(_) => toml::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(text.to_string()),
    })
}

/// The URL clients reach the proxy at, as every served URL is built from it: absolute http(s),
/// no query, fragment or credentials (they would go to every client), no trailing slash. For
/// `public_url` and `lock migrate --public-url` alike.
pub fn parse_public_url(text: &str) -> Result<String, String> {
    let url =
        Url::parse(text).map_err(|e| format!("not a URL ({e}): {:?}", redact_userinfo(text)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an absolute http:// or https:// URL".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// A URL as it may be quoted in an error. Whatever stands before the last `@` may be
/// credentials (people do paste `https://user:key@host`), and a `/` or `#` in a password
/// breaks parsing, so the text is cut at the last `@` without trying to parse it; over-redacting
/// a path with an `@` costs nothing in an error message.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}<redacted>@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

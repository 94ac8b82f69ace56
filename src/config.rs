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
mod raw;
mod upstreams;
mod views;

pub use bucket::{parse_bucket_url, BucketKind, BucketUrl};
pub use downloads::RELEASES_NAME;
pub use github::GitHubConfig;
pub use keys::{Credentials, KeySource, Secret, Secrets};
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

/// Byte limits on upstream answers read whole into memory (archives are streamed to disk and
/// not bounded here). Past one, the read stops and the answer counts as unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerLimits {
    /// Roots, listings, package files, p2 files and release info (raw and decoded each).
    pub metadata: usize,
    /// One answer of a changes feed (`metadata-changes-url`).
    pub feed: usize,
    /// Advisory, malware filter and package name list answers.
    pub api: usize,
}

impl AnswerLimits {
    /// The embedded defaults (config/default.toml), for code that runs without a
    /// configuration: the fuzz targets decode upstream bodies as the proxy does by default.
    pub const DEFAULT: AnswerLimits = AnswerLimits {
        metadata: 128 * 1024 * 1024,
        feed: 16 * 1024 * 1024,
        api: 64 * 1024 * 1024,
    };
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
mod tests {
    use super::raw::RawConfig;
    use super::*;

    pub(super) fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(&Sources {
            file: file.map(|t| (PathBuf::from("test.toml"), t.to_string())),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn urls_quoted_in_errors_lose_their_credentials() {
        assert_eq!(
            redact_userinfo("https://pub:pr/iv@repo.example/x"),
            "https://<redacted>@repo.example/x"
        );
        assert_eq!(redact_userinfo("pub:priv@host"), "<redacted>@host");
        assert_eq!(
            redact_userinfo("https://repo.example"),
            "https://repo.example"
        );
    }

    #[test]
    fn credentials_in_url_settings_are_refused_without_quoting_them() {
        for (var, value) in [
            (
                "COMPOSER_PROXY_UPSTREAM_URL",
                "https://:s3cret@repo.example",
            ),
            (
                "COMPOSER_PROXY_UPSTREAM_URL",
                "https://pub:s3cret@repo.example",
            ),
            (
                "COMPOSER_PROXY_PUBLIC_URL",
                "https://pub:s3cret@proxy.example",
            ),
        ] {
            let sources = Sources {
                file: None,
                env: [(var.to_string(), value.to_string())].into_iter().collect(),
            };
            let e = Config::load(&sources).expect_err(value);
            assert!(e.message.contains("credentials"), "{e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn embedded_defaults_load_and_match_documented_values() {
        let c = load(None, &[]).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.public_url_for(c.listen), "http://127.0.0.1:8080");
        assert_eq!(c.upstreams[0].url.as_str(), "https://repo.magento.com/");
        assert!(c.upstreams[0].credentials.is_none());
        assert_eq!(c.metadata_ttl, Duration::from_secs(300));
        assert_eq!(c.advisories_ttl, Duration::from_secs(600));
        assert_eq!(c.allow.len(), 6);
        assert!(c.tls.is_none());
        assert_eq!(c.upstreams[0].limits, AnswerLimits::DEFAULT);
    }

    #[test]
    fn answer_limits_are_settings_with_a_floor() {
        let c = load(
            None,
            &[("COMPOSER_PROXY_UPSTREAM_FEED_MAX_BYTES", "1048576")],
        )
        .expect("valid");
        assert_eq!(c.upstreams[0].limits.feed, 1024 * 1024);
        let e = load(None, &[("COMPOSER_PROXY_UPSTREAM_API_MAX_BYTES", "1000")])
            .expect_err("below 64 KiB");
        assert_eq!(e.setting, "upstream_api_max_bytes");
    }

    #[test]
    fn every_raw_field_is_in_default_toml_and_nothing_else() {
        // RawConfig has no serde defaults and denies unknown fields, so the defaults file
        // deserializing on its own proves the two list exactly the same settings.
        let table: toml::Table = DEFAULT_TOML.parse().expect("parses");
        let raw: Result<RawConfig, _> = toml::Value::Table(table).try_into();
        assert!(raw.is_ok(), "{raw:?}");
    }

    #[test]
    fn env_overrides_file_and_converts_types() {
        let c = load(
            Some("metadata_ttl_secs = 10\nlisten = \"127.0.0.1:1\""),
            &[
                ("COMPOSER_PROXY_METADATA_TTL_SECS", "20"),
                ("COMPOSER_PROXY_ALLOW", "10.1.0.0/16, 192.168.1.7"),
                (
                    "COMPOSER_PROXY_PUBLIC_URL",
                    "https://proxy.example/magento/",
                ),
            ],
        )
        .expect("valid");
        assert_eq!(c.metadata_ttl, Duration::from_secs(20));
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.allow.len(), 2);
        assert_eq!(
            c.public_url.as_deref(),
            Some("https://proxy.example/magento")
        );
    }

    #[test]
    fn errors_name_the_setting_and_its_origin() {
        let e = load(None, &[("COMPOSER_PROXY_LISTEN", "nope")]).unwrap_err();
        assert_eq!(e.setting, "listen");
        assert!(e.to_string().contains("COMPOSER_PROXY_LISTEN"), "{e}");

        let e = load(Some("upstream_url = \"ftp://x\""), &[]).unwrap_err();
        assert_eq!(e.setting, "upstream_url");
        assert!(e.to_string().contains("test.toml"), "{e}");

        let e = load(Some("no_such_thing = 1"), &[]).unwrap_err();
        assert_eq!(e.setting, "no_such_thing");

        let e = load(None, &[("COMPOSER_PROXY_LISTN", "x")]).unwrap_err();
        assert_eq!(e.setting, "listn");

        let e = load(None, &[("COMPOSER_PROXY_METADATA_TTL_SECS", "soon")]).unwrap_err();
        assert_eq!(e.setting, "metadata_ttl_secs");

        let e = load(None, &[("COMPOSER_PROXY_PUBLIC_KEY", "abc")]).unwrap_err();
        assert_eq!(e.setting, "private_key");
    }

    #[test]
    fn values_of_the_wrong_type_name_their_setting_or_table_and_field() {
        for (file, env, setting) in [
            (Some("max_connections = \"lots\""), None, "max_connections"),
            (None, Some(("COMPOSER_PROXY_MAX_CONNECTIONS", "-1")), "max_connections"),
            (
                None,
                Some(("COMPOSER_PROXY_UPSTREAM_MAX_REDIRECTS", "300")),
                "upstream_max_redirects",
            ),
            (Some("allow = 5"), None, "allow"),
            (
                Some("[[upstream]]\nname = \"a\"\nurl = \"https://a.example\"\n\n[[upstream]]\nname = \"b\"\nurl = \"https://b.example\"\nmetadata_ttl_secs = \"x\""),
                None,
                "upstream.b.metadata_ttl_secs",
            ),
            (
                Some("[[upstream]]\nname = \"a\"\nurl = \"https://a.example\"\nbogus = 1"),
                None,
                "upstream.a.bogus",
            ),
            (Some("[[upstream]]\nname = 7\nurl = \"https://a.example\""), None, "upstream #1.name"),
            (Some("[[upstream]]\nname = \"a\""), None, "upstream.a"),
        ] {
            let e = load(file, env.as_slice()).expect_err(setting);
            assert_eq!(e.setting, setting, "{e}");
            let origin = if file.is_some() { "test.toml" } else { "COMPOSER_PROXY_" };
            assert!(e.origin.contains(origin), "{e}");
        }
    }

    #[test]
    fn keys_of_the_wrong_type_are_not_quoted() {
        let e = load(Some("private_key = 98765432123"), &[]).expect_err("a number");
        assert_eq!(e.setting, "private_key");
        let e2 = load(
            Some(
                "[[upstream]]\nname = \"a\"\nurl = \"https://a.example\"\npublic_key = 98765432123",
            ),
            &[],
        )
        .expect_err("a number");
        assert_eq!(e2.setting, "upstream.a.public_key");
        for e in [e, e2] {
            assert!(!e.to_string().contains("98765432123"), "{e}");
        }
    }

    #[test]
    fn client_limits_load_and_out_of_range_values_name_their_setting() {
        let c = load(
            None,
            &[
                ("COMPOSER_PROXY_MAX_CONNECTIONS", "2"),
                ("COMPOSER_PROXY_CLIENT_HEADER_TIMEOUT_SECS", "1"),
                ("COMPOSER_PROXY_CLIENT_BODY_TIMEOUT_SECS", "3"),
                ("COMPOSER_PROXY_CLIENT_SEND_TIMEOUT_SECS", "4"),
            ],
        )
        .expect("valid");
        assert_eq!(c.max_connections, 2);
        assert_eq!(c.client_header_timeout, Duration::from_secs(1));
        assert_eq!(c.client_body_timeout, Duration::from_secs(3));
        assert_eq!(c.client_send_timeout, Duration::from_secs(4));
        let too_many = (tokio::sync::Semaphore::MAX_PERMITS + 1).to_string();
        for (var, value, setting) in [
            ("COMPOSER_PROXY_MAX_CONNECTIONS", "0", "max_connections"),
            (
                "COMPOSER_PROXY_MAX_CONNECTIONS",
                too_many.as_str(),
                "max_connections",
            ),
            (
                "COMPOSER_PROXY_CLIENT_HEADER_TIMEOUT_SECS",
                "0",
                "client_header_timeout_secs",
            ),
            (
                "COMPOSER_PROXY_CLIENT_BODY_TIMEOUT_SECS",
                "0",
                "client_body_timeout_secs",
            ),
            (
                "COMPOSER_PROXY_CLIENT_SEND_TIMEOUT_SECS",
                "0",
                "client_send_timeout_secs",
            ),
        ] {
            let e = load(None, &[(var, value)]).unwrap_err();
            assert_eq!(e.setting, setting, "{var}={value}");
        }
    }
}

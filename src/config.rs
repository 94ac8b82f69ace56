//! Configuration: the embedded defaults, an optional TOML file and `COMPOSER_PROXY_*`
//! environment variables, merged in that order and validated into [`Config`].
//!
//! Validation happens once, at start-up, and names the setting (and where its value came from)
//! on failure, so a typo stops the program instead of surfacing as odd behaviour later.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

/// The built-in defaults; `config/default.toml` is the single source of truth for them.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "COMPOSER_PROXY_";

/// A value that must never be printed: `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; callers put it only into upstream `Authorization` headers.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the key pair was found; logged at start so ops can tell which source won.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    Settings,
    KeyFiles,
    AuthJson,
    ComposerAuthEnv,
    FallbackFile,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Settings => "public_key/private_key",
            KeySource::KeyFiles => "public_key_file/private_key_file",
            KeySource::AuthJson => "auth_json",
            KeySource::ComposerAuthEnv => "COMPOSER_AUTH",
            KeySource::FallbackFile => "fallback_keys_file",
        }
    }
}

/// The organisation's Marketplace key pair. Both halves are secrets: the public key alone
/// identifies the account, and together they unlock licensed code.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub public_key: Secret,
    pub private_key: Secret,
    pub source: KeySource,
}

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

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub url: Url,
    pub credentials: Option<Credentials>,
    /// Further key pairs, tried in order when upstream rejects the one before.
    pub fallback: Vec<Credentials>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub metadata_timeout: Duration,
    pub archive_timeout: Duration,
    pub max_redirects: u8,
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
    pub upstream: UpstreamConfig,
    pub cache_dir: PathBuf,
    pub metadata_ttl: Duration,
    pub metadata_cache_max_bytes: u64,
    pub v1_prefetch_concurrency: usize,
    /// How long an upstream 404 for a package's metadata is remembered.
    pub negative_ttl: Duration,
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

/// The settings as written; every field is present because the embedded defaults are merged
/// underneath whatever the user supplies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    public_url: String,
    allow: Vec<String>,
    trusted_proxies: Vec<String>,
    require_tokens: bool,
    tokens_file: String,
    tls_cert: String,
    tls_key: String,
    shutdown_grace_secs: u64,
    max_connections: usize,
    client_header_timeout_secs: u64,
    client_body_timeout_secs: u64,
    upstream_url: String,
    public_key: String,
    private_key: String,
    public_key_file: String,
    private_key_file: String,
    auth_json: String,
    fallback_keys_file: String,
    upstream_ca_file: String,
    upstream_connect_timeout_secs: u64,
    upstream_read_timeout_secs: u64,
    upstream_metadata_timeout_secs: u64,
    upstream_archive_timeout_secs: u64,
    upstream_max_redirects: u8,
    cache_dir: String,
    metadata_ttl_secs: u64,
    metadata_cache_max_bytes: u64,
    v1_prefetch_concurrency: usize,
    negative_ttl_secs: u64,
    upstream_retry_secs: u64,
    stale_on_key_rejection: bool,
    archive_cache_max_bytes: u64,
    archive_memory_cache_max_bytes: u64,
    cache_min_free_bytes: u64,
    cache_sweep_interval_secs: u64,
    scrub_interval_secs: u64,
    scrub_max_bytes_per_sec: u64,
    log_format: String,
    log_level: String,
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

    /// Merges defaults, file and environment, then validates.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
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
                if !defaults.contains_key(&key) {
                    return Err(ConfigError {
                        setting: key,
                        origin,
                        message: "unknown setting (see config/default.toml for the list)".into(),
                    });
                }
                origins.insert(key.clone(), origin.clone());
                merged.insert(key, value);
            }
        }

        for (key, default) in &defaults {
            let var = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
            if let Some(text) = sources.env.get(&var) {
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
        // An unknown COMPOSER_PROXY_* variable is almost always a typo of a real one.
        for var in sources.env.keys() {
            if let Some(name) = var.strip_prefix(ENV_PREFIX) {
                if !defaults.contains_key(&name.to_ascii_lowercase()) {
                    return Err(ConfigError {
                        setting: name.to_ascii_lowercase(),
                        origin: format!("from {var}"),
                        message: "unknown setting (see config/default.toml for the list)".into(),
                    });
                }
            }
        }

        let raw: RawConfig =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError {
                    setting: "configuration".into(),
                    origin: "merged settings".into(),
                    message: e.message().to_string(),
                })?;
        let origin_of = |key: &str| {
            origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| "default".to_string())
        };
        validate(raw, &origin_of, &sources.env)
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

fn validate(
    raw: RawConfig,
    origin_of: &dyn Fn(&str) -> String,
    env: &BTreeMap<String, String>,
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
        let url = Url::parse(&raw.public_url).map_err(|e| {
            err(
                "public_url",
                format!("not a URL ({e}): {:?}", redact_userinfo(&raw.public_url)),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(err(
                "public_url",
                "must be an absolute http:// or https:// URL".into(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(err(
                "public_url",
                "must not have a query or fragment".into(),
            ));
        }
        // Every served URL is built from it: credentials here would go to every client.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err("public_url", "must not carry credentials".into()));
        }
        Some(url.as_str().trim_end_matches('/').to_string())
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

    let upstream_url = Url::parse(&raw.upstream_url).map_err(|e| {
        err(
            "upstream_url",
            format!("not a URL ({e}): {:?}", redact_userinfo(&raw.upstream_url)),
        )
    })?;
    if !matches!(upstream_url.scheme(), "http" | "https") || upstream_url.host().is_none() {
        return Err(err(
            "upstream_url",
            "must be an absolute http:// or https:// URL".into(),
        ));
    }
    if upstream_url.query().is_some()
        || !upstream_url.username().is_empty()
        || upstream_url.password().is_some()
    {
        return Err(err(
            "upstream_url",
            "must not carry a query or credentials; set public_key/private_key instead".into(),
        ));
    }

    let credentials = resolve_credentials(&raw, &upstream_url, env, &err)?;
    let fallback = read_fallback_keys(&raw.fallback_keys_file, &err)?;
    if credentials.is_none() && !fallback.is_empty() {
        return Err(err(
            "fallback_keys_file",
            "fallback key pairs need a primary key pair (public_key/private_key or another source)"
                .into(),
        ));
    }

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

    let optional_path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let cache_dir = PathBuf::from(&raw.cache_dir);

    Ok(Config {
        listen,
        public_url,
        allow,
        trusted_proxies,
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
        upstream: UpstreamConfig {
            url: upstream_url,
            credentials,
            fallback,
            ca_file: optional_path(&raw.upstream_ca_file),
            connect_timeout: positive(
                "upstream_connect_timeout_secs",
                raw.upstream_connect_timeout_secs,
            )?,
            read_timeout: positive("upstream_read_timeout_secs", raw.upstream_read_timeout_secs)?,
            metadata_timeout: positive(
                "upstream_metadata_timeout_secs",
                raw.upstream_metadata_timeout_secs,
            )?,
            archive_timeout: positive(
                "upstream_archive_timeout_secs",
                raw.upstream_archive_timeout_secs,
            )?,
            max_redirects: raw.upstream_max_redirects,
        },
        cache_dir,
        metadata_ttl: positive("metadata_ttl_secs", raw.metadata_ttl_secs)?,
        metadata_cache_max_bytes: raw.metadata_cache_max_bytes,
        v1_prefetch_concurrency: raw.v1_prefetch_concurrency,
        negative_ttl: positive("negative_ttl_secs", raw.negative_ttl_secs)?,
        upstream_retry: Duration::from_secs(raw.upstream_retry_secs),
        watched_files: [
            &raw.public_key_file,
            &raw.private_key_file,
            &raw.auth_json,
            &raw.fallback_keys_file,
            &raw.tls_cert,
            &raw.tls_key,
        ]
        .into_iter()
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
        log_format,
        log_level: raw.log_level,
    })
}

/// Finds the key pair: explicit settings, then key files, then auth.json, then COMPOSER_AUTH.
fn resolve_credentials(
    raw: &RawConfig,
    upstream: &Url,
    env: &BTreeMap<String, String>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<Credentials>, ConfigError> {
    let pair = |public: String, private: String, source: KeySource, setting: &str| {
        check_key(&public).map_err(|m| err(setting, format!("public key {m}")))?;
        check_key(&private).map_err(|m| err(setting, format!("private key {m}")))?;
        if public.contains(':') {
            return Err(err(setting, "public key must not contain ':'".into()));
        }
        Ok(Some(Credentials {
            public_key: Secret::new(public),
            private_key: Secret::new(private),
            source,
        }))
    };

    if let Some((public, private)) = both_or_neither(
        ("public_key", &raw.public_key),
        ("private_key", &raw.private_key),
        err,
    )? {
        return pair(
            public.to_string(),
            private.to_string(),
            KeySource::Settings,
            "public_key",
        );
    }

    if let Some((public_path, private_path)) = both_or_neither(
        ("public_key_file", &raw.public_key_file),
        ("private_key_file", &raw.private_key_file),
        err,
    )? {
        let read = |setting: &str, path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| err(setting, format!("cannot read {path}: {e}")))
        };
        let public = read("public_key_file", public_path)?;
        let private = read("private_key_file", private_path)?;
        return pair(public, private, KeySource::KeyFiles, "public_key_file");
    }

    if !raw.auth_json.is_empty() {
        let text = std::fs::read_to_string(&raw.auth_json)
            .map_err(|e| err("auth_json", format!("cannot read {}: {e}", raw.auth_json)))?;
        let (public, private) = http_basic_for(&text, upstream).map_err(|m| err("auth_json", m))?;
        return pair(public, private, KeySource::AuthJson, "auth_json");
    }

    if let Some(text) = env.get("COMPOSER_AUTH") {
        // COMPOSER_AUTH often holds tokens for other hosts only; that is not an error here.
        if let Ok((public, private)) = http_basic_for(text, upstream) {
            return pair(public, private, KeySource::ComposerAuthEnv, "COMPOSER_AUTH");
        }
    }
    Ok(None)
}

/// Reads `public:private` lines (blank lines and `#` comments ignored). Errors name the line,
/// never its content.
fn read_fallback_keys(
    path: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<Credentials>, ConfigError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let setting = "fallback_keys_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(setting, format!("cannot read {path}: {e}")))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |m: String| err(setting, format!("line {}: {m}", n + 1));
        let (public, private) = line
            .split_once(':')
            .ok_or_else(|| bad("expected public_key:private_key".into()))?;
        check_key(public).map_err(|m| bad(format!("public key {m}")))?;
        check_key(private).map_err(|m| bad(format!("private key {m}")))?;
        pairs.push(Credentials {
            public_key: Secret::new(public),
            private_key: Secret::new(private),
            source: KeySource::FallbackFile,
        });
    }
    Ok(pairs)
}

/// Settings that only make sense together: both set, or neither. The error names the one
/// that is missing.
fn both_or_neither<'a>(
    (a_name, a): (&str, &'a str),
    (b_name, b): (&str, &'a str),
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<(&'a str, &'a str)>, ConfigError> {
    match (a.is_empty(), b.is_empty()) {
        (false, false) => Ok(Some((a, b))),
        (true, true) => Ok(None),
        (false, true) => Err(err(b_name, format!("{a_name} is set but {b_name} is not"))),
        (true, false) => Err(err(a_name, format!("{b_name} is set but {a_name} is not"))),
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("is empty".into());
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains whitespace or control characters".into());
    }
    Ok(())
}

/// Reads `http-basic.<host>` (or `<host>:<port>`) from Composer's auth.json format.
fn http_basic_for(text: &str, upstream: &Url) -> Result<(String, String), String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let host = upstream.host_str().unwrap_or_default();
    let candidates = match upstream.port() {
        Some(port) => vec![format!("{host}:{port}"), host.to_string()],
        None => vec![host.to_string()],
    };
    let basic = json
        .get("http-basic")
        .ok_or_else(|| "has no \"http-basic\" section".to_string())?;
    for name in &candidates {
        if let Some(entry) = basic.get(name) {
            let field = |f: &str| {
                entry
                    .get(f)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| format!("http-basic.{name} has no string \"{f}\""))
            };
            return Ok((field("username")?, field("password")?));
        }
    }
    Err(format!("has no http-basic entry for {}", candidates[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
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
        assert_eq!(c.upstream.url.as_str(), "https://repo.magento.com/");
        assert!(c.upstream.credentials.is_none());
        assert_eq!(c.metadata_ttl, Duration::from_secs(300));
        assert_eq!(c.allow.len(), 6);
        assert!(c.tls.is_none());
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
    fn keys_come_from_settings_files_auth_json_and_composer_auth() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = load(
            None,
            &[
                ("COMPOSER_PROXY_PUBLIC_KEY", "pub"),
                ("COMPOSER_PROXY_PRIVATE_KEY", "priv"),
            ],
        )
        .expect("valid");
        let k = c.upstream.credentials.expect("keys");
        assert_eq!(
            (k.public_key.expose(), k.private_key.expose()),
            ("pub", "priv")
        );
        assert_eq!(k.source, KeySource::Settings);

        let (p, q) = (dir.path().join("p"), dir.path().join("q"));
        std::fs::write(&p, "filepub\n").expect("write");
        std::fs::write(&q, "  filepriv\n").expect("write");
        let c = load(
            None,
            &[
                ("COMPOSER_PROXY_PUBLIC_KEY_FILE", p.to_str().expect("utf8")),
                ("COMPOSER_PROXY_PRIVATE_KEY_FILE", q.to_str().expect("utf8")),
            ],
        )
        .expect("valid");
        let k = c.upstream.credentials.expect("keys");
        assert_eq!(
            (k.public_key.expose(), k.private_key.expose()),
            ("filepub", "filepriv")
        );

        let auth = dir.path().join("auth.json");
        std::fs::write(
            &auth,
            r#"{"http-basic":{"repo.magento.com":{"username":"ajpub","password":"ajpriv"}}}"#,
        )
        .expect("write");
        let c = load(
            None,
            &[("COMPOSER_PROXY_AUTH_JSON", auth.to_str().expect("utf8"))],
        )
        .expect("valid");
        assert_eq!(
            c.upstream.credentials.expect("keys").source,
            KeySource::AuthJson
        );

        let c = load(
            None,
            &[
                ("COMPOSER_PROXY_UPSTREAM_URL", "http://127.0.0.1:9999"),
                (
                    "COMPOSER_AUTH",
                    r#"{"http-basic":{"127.0.0.1:9999":{"username":"u","password":"p"}}}"#,
                ),
            ],
        )
        .expect("valid");
        let k = c.upstream.credentials.expect("keys");
        assert_eq!(k.source, KeySource::ComposerAuthEnv);
        assert_eq!(k.public_key.expose(), "u");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let c = load(
            None,
            &[
                ("COMPOSER_PROXY_PUBLIC_KEY", "visiblepublic"),
                ("COMPOSER_PROXY_PRIVATE_KEY", "visibleprivate"),
            ],
        )
        .expect("valid");
        let printed = format!("{c:?}");
        assert!(!printed.contains("visiblepublic") && !printed.contains("visibleprivate"));
    }

    #[test]
    fn client_limits_load_and_out_of_range_values_name_their_setting() {
        let c = load(
            None,
            &[
                ("COMPOSER_PROXY_MAX_CONNECTIONS", "2"),
                ("COMPOSER_PROXY_CLIENT_HEADER_TIMEOUT_SECS", "1"),
                ("COMPOSER_PROXY_CLIENT_BODY_TIMEOUT_SECS", "3"),
            ],
        )
        .expect("valid");
        assert_eq!(c.max_connections, 2);
        assert_eq!(c.client_header_timeout, Duration::from_secs(1));
        assert_eq!(c.client_body_timeout, Duration::from_secs(3));
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
        ] {
            let e = load(None, &[(var, value)]).unwrap_err();
            assert_eq!(e.setting, setting, "{var}={value}");
        }
    }
}

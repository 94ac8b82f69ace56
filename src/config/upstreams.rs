//! The upstream repositories: `[[upstream]]` tables in priority order, or (without any) the
//! flat settings as one upstream served at `public_url`, exactly as before there were tables.
//!
//! Each table's secrets can also come from files (`*_file`, Kubernetes secrets) and from
//! environment variables named after it, `COMPOSER_PROXY_UPSTREAM_<NAME>_<FIELD>` (the name in
//! capitals, `-` as `_`), so nothing secret has to be written into the TOML.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::keys::{read_fallback_keys, resolve_credentials, KeySettings, Secrets};
use super::limits::answer_limits;
use super::raw::RawConfig;
use super::{redact_userinfo, AnswerLimits, ConfigError, UpstreamConfig, ENV_PREFIX};

/// The name of the one upstream the flat settings describe (logs, metrics, `check`).
pub const FLAT_NAME: &str = "default";

/// Top-level path words of the router, now or planned: an upstream of that name would hide
/// them, or they it.
pub(super) const ROUTE_WORDS: &[&str] = &[
    "p",
    "p2",
    "dists",
    "downloads",
    "healthz",
    "readyz",
    "metrics",
    "search",
    "releases",
    "archives",
    "api",
    "list",
    "packages",
    "security-advisories",
    "filter",
    "status",
];

/// The secret fields an environment variable may give for a named upstream, longest first
/// (so `_PUBLIC_KEY_FILE` is not read as `_PUBLIC_KEY`).
const ENV_FIELDS: &[&str] = &[
    "PUBLIC_KEY_FILE",
    "PRIVATE_KEY_FILE",
    "FALLBACK_KEYS_FILE",
    "AUTH_JSON",
    "PUBLIC_KEY",
    "PRIVATE_KEY",
];

/// The flat settings that describe the one upstream of a configuration without tables.
pub(super) const FLAT_SETTINGS: &[&str] = &[
    "upstream_url",
    "public_key",
    "private_key",
    "public_key_file",
    "private_key_file",
    "auth_json",
    "fallback_keys_file",
];

/// One `[[upstream]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: String,
    url: String,
    #[serde(default)]
    public_key: String,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    public_key_file: String,
    #[serde(default)]
    private_key_file: String,
    #[serde(default)]
    auth_json: String,
    #[serde(default)]
    fallback_keys_file: String,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    metadata_ttl_secs: Option<u64>,
    negative_ttl_secs: Option<u64>,
    metadata_changes_poll_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    read_timeout_secs: Option<u64>,
    metadata_timeout_secs: Option<u64>,
    archive_timeout_secs: Option<u64>,
}

impl RawUpstream {
    pub(super) fn auth_json(&self) -> &str {
        &self.auth_json
    }
}

/// `COMPOSER_PROXY_UPSTREAM_<NAME>_<FIELD>` split into the upstream's name as written in
/// capitals and the field (lower case), when the variable has that shape.
pub(super) fn secret_variable(var: &str) -> Option<(&str, String)> {
    let rest = var.strip_prefix(ENV_PREFIX)?.strip_prefix("UPSTREAM_")?;
    ENV_FIELDS.iter().find_map(|field| {
        let name = rest.strip_suffix(field)?.strip_suffix('_')?;
        (!name.is_empty()).then(|| (name, field.to_ascii_lowercase()))
    })
}

fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// A repository URL: absolute http(s), no query or credentials; a path is allowed.
fn repository_url(
    setting: &str,
    text: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| {
        err(
            setting,
            format!("not a URL ({e}): {:?}", redact_userinfo(text)),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(err(
            setting,
            "must be an absolute http:// or https:// URL".into(),
        ));
    }
    if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(err(
            setting,
            "must not carry a query or credentials; set public_key/private_key instead".into(),
        ));
    }
    Ok(url)
}

/// Timeouts, TTLs and the like that every upstream has, with the top-level settings as the
/// defaults of each table.
struct Common {
    ca_file: Option<PathBuf>,
    max_redirects: u8,
    connect_timeout: Duration,
    read_timeout: Duration,
    metadata_timeout: Duration,
    archive_timeout: Duration,
    metadata_ttl: Duration,
    negative_ttl: Duration,
    metadata_changes_poll: Option<Duration>,
    limits: AnswerLimits,
}

/// 0 turns a periodic task off.
fn interval(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn positive(
    setting: &str,
    secs: u64,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    if secs == 0 {
        Err(err(setting, "must be greater than 0".into()))
    } else {
        Ok(Duration::from_secs(secs))
    }
}

fn common(
    raw: &RawConfig,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Common, ConfigError> {
    Ok(Common {
        ca_file: (!raw.upstream_ca_file.is_empty()).then(|| PathBuf::from(&raw.upstream_ca_file)),
        max_redirects: raw.upstream_max_redirects,
        connect_timeout: positive(
            "upstream_connect_timeout_secs",
            raw.upstream_connect_timeout_secs,
            err,
        )?,
        read_timeout: positive(
            "upstream_read_timeout_secs",
            raw.upstream_read_timeout_secs,
            err,
        )?,
        metadata_timeout: positive(
            "upstream_metadata_timeout_secs",
            raw.upstream_metadata_timeout_secs,
            err,
        )?,
        archive_timeout: positive(
            "upstream_archive_timeout_secs",
            raw.upstream_archive_timeout_secs,
            err,
        )?,
        metadata_ttl: positive("metadata_ttl_secs", raw.metadata_ttl_secs, err)?,
        negative_ttl: positive("negative_ttl_secs", raw.negative_ttl_secs, err)?,
        metadata_changes_poll: interval(raw.metadata_changes_poll_secs),
        limits: answer_limits(raw, err)?,
    })
}

/// The upstreams of a configuration, in priority order, and the key files to watch.
pub(super) fn upstreams(
    raw: &RawConfig,
    origin_of: &dyn Fn(&str) -> String,
    env: &BTreeMap<String, String>,
    secrets: Secrets,
) -> Result<(Vec<UpstreamConfig>, Vec<String>), ConfigError> {
    let err = |setting: &str, message: String| ConfigError {
        setting: setting.to_string(),
        origin: origin_of(setting),
        message,
    };
    let common = common(raw, &err)?;
    if raw.upstream.is_empty() {
        if let Some((var, _)) = env.iter().find(|(var, _)| secret_variable(var).is_some()) {
            return Err(ConfigError {
                setting: var.trim_start_matches(ENV_PREFIX).to_ascii_lowercase(),
                origin: format!("from {var}"),
                message: "names an upstream, but the configuration has no [[upstream]] tables"
                    .into(),
            });
        }
        let keys = KeySettings {
            public_key: raw.public_key.clone(),
            private_key: raw.private_key.clone(),
            public_key_file: raw.public_key_file.clone(),
            private_key_file: raw.private_key_file.clone(),
            auth_json: raw.auth_json.clone(),
            fallback_keys_file: raw.fallback_keys_file.clone(),
        };
        let url = repository_url("upstream_url", &raw.upstream_url, &err)?;
        let upstream = build(
            FLAT_NAME,
            url,
            &keys,
            secrets,
            Vec::new(),
            &common,
            false,
            env,
            &err,
        )?;
        let files = keys.files().map(str::to_string).collect();
        return Ok((vec![upstream], files));
    }

    if let Some(flat) = FLAT_SETTINGS.iter().find(|s| origin_of(s) != "default") {
        return Err(ConfigError {
            setting: "upstream".into(),
            origin: origin_of(flat),
            message: format!(
                "[[upstream]] tables and the flat setting `{flat}` ({}) cannot be used together: \
                 move it into the table of the upstream it belongs to",
                origin_of(flat)
            ),
        });
    }
    let mut seen = BTreeSet::new();
    let mut list = Vec::new();
    let mut files = Vec::new();
    for table in &raw.upstream {
        let name = table.name.as_str();
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(err(
                "upstream.name",
                format!("{name:?} must be 1 to 32 characters of a-z, 0-9 and -"),
            ));
        }
        if ROUTE_WORDS.contains(&name) {
            return Err(err(
                "upstream.name",
                format!("{name:?} is a path the proxy serves itself; choose another name"),
            ));
        }
        if !seen.insert(name) {
            return Err(err(
                "upstream.name",
                format!("{name:?} names two [[upstream]] tables"),
            ));
        }
        let setting = |field: &str| format!("upstream.{name}.{field}");
        let err_in = |field: &str, message: String| ConfigError {
            setting: setting(field),
            origin: origin_of("upstream"),
            message,
        };
        // A variable named after the upstream overrides the table, as variables override the
        // file everywhere else.
        let from_env = |field: &str, written: &str| {
            let var = format!(
                "{ENV_PREFIX}UPSTREAM_{}_{}",
                env_name(name),
                field.to_ascii_uppercase()
            );
            env.get(&var)
                .cloned()
                .unwrap_or_else(|| written.to_string())
        };
        let keys = KeySettings {
            public_key: from_env("public_key", &table.public_key),
            private_key: from_env("private_key", &table.private_key),
            public_key_file: from_env("public_key_file", &table.public_key_file),
            private_key_file: from_env("private_key_file", &table.private_key_file),
            auth_json: from_env("auth_json", &table.auth_json),
            fallback_keys_file: from_env("fallback_keys_file", &table.fallback_keys_file),
        };
        let url = repository_url(&setting("url"), &table.url, &err_in)?;
        let allowed_hosts = table
            .allowed_hosts
            .iter()
            .map(|host| {
                let origin = repository_url(&setting("allowed_hosts"), host, &err_in)?;
                if origin.path() != "/" {
                    return Err(err_in(
                        "allowed_hosts",
                        format!("{host:?} must be an origin (scheme://host[:port]) without a path"),
                    ));
                }
                Ok(origin)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let secs = |field: &str, value: Option<u64>, default: Duration| match value {
            Some(secs) => positive(field, secs, &err_in),
            None => Ok(default),
        };
        let overrides = Common {
            ca_file: common.ca_file.clone(),
            max_redirects: common.max_redirects,
            connect_timeout: secs(
                "connect_timeout_secs",
                table.connect_timeout_secs,
                common.connect_timeout,
            )?,
            read_timeout: secs(
                "read_timeout_secs",
                table.read_timeout_secs,
                common.read_timeout,
            )?,
            metadata_timeout: secs(
                "metadata_timeout_secs",
                table.metadata_timeout_secs,
                common.metadata_timeout,
            )?,
            archive_timeout: secs(
                "archive_timeout_secs",
                table.archive_timeout_secs,
                common.archive_timeout,
            )?,
            metadata_ttl: secs(
                "metadata_ttl_secs",
                table.metadata_ttl_secs,
                common.metadata_ttl,
            )?,
            negative_ttl: secs(
                "negative_ttl_secs",
                table.negative_ttl_secs,
                common.negative_ttl,
            )?,
            metadata_changes_poll: table
                .metadata_changes_poll_secs
                .map_or(common.metadata_changes_poll, interval),
            limits: common.limits,
        };
        list.push(build(
            name,
            url,
            &keys,
            secrets,
            allowed_hosts,
            &overrides,
            true,
            env,
            &err_in,
        )?);
        files.extend(keys.files().map(str::to_string));
    }
    // A variable for an upstream that does not exist is a typo (or a leftover) to point out.
    for var in env.keys() {
        if let Some((name, _)) = secret_variable(var) {
            if !raw.upstream.iter().any(|t| env_name(&t.name) == name) {
                return Err(ConfigError {
                    setting: var.trim_start_matches(ENV_PREFIX).to_ascii_lowercase(),
                    origin: format!("from {var}"),
                    message: format!(
                        "no [[upstream]] table is named {:?}",
                        name.to_ascii_lowercase().replace('_', "-")
                    ),
                });
            }
        }
    }
    Ok((list, files))
}

#[allow(clippy::too_many_arguments)]
fn build(
    name: &str,
    url: Url,
    keys: &KeySettings,
    secrets: Secrets,
    allowed_hosts: Vec<Url>,
    common: &Common,
    named: bool,
    env: &BTreeMap<String, String>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<UpstreamConfig, ConfigError> {
    let (credentials, fallback) = match secrets {
        Secrets::Read => (
            resolve_credentials(keys, &url, env, err)?,
            read_fallback_keys(&keys.fallback_keys_file, err)?,
        ),
        Secrets::Ignore => (None, Vec::new()),
    };
    if credentials.is_none() && !fallback.is_empty() {
        return Err(err(
            "fallback_keys_file",
            "fallback key pairs need a primary key pair (public_key/private_key or another source)"
                .into(),
        ));
    }
    Ok(UpstreamConfig {
        name: name.to_string(),
        named,
        url,
        allowed_hosts,
        credentials,
        fallback,
        ca_file: common.ca_file.clone(),
        max_redirects: common.max_redirects,
        connect_timeout: common.connect_timeout,
        read_timeout: common.read_timeout,
        metadata_timeout: common.metadata_timeout,
        archive_timeout: common.archive_timeout,
        metadata_ttl: common.metadata_ttl,
        negative_ttl: common.negative_ttl,
        metadata_changes_poll: common.metadata_changes_poll,
        limits: common.limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_variables_are_split_into_name_and_field() {
        assert_eq!(
            secret_variable("COMPOSER_PROXY_UPSTREAM_HYVA_PRIVATE_KEY"),
            Some(("HYVA", "private_key".into()))
        );
        assert_eq!(
            secret_variable("COMPOSER_PROXY_UPSTREAM_MY_VENDOR_PUBLIC_KEY_FILE"),
            Some(("MY_VENDOR", "public_key_file".into()))
        );
        // Flat settings that happen to start with UPSTREAM_ are not secrets of an upstream.
        assert_eq!(secret_variable("COMPOSER_PROXY_UPSTREAM_URL"), None);
        assert_eq!(secret_variable("COMPOSER_PROXY_UPSTREAM_CA_FILE"), None);
        assert_eq!(secret_variable("COMPOSER_PROXY_UPSTREAM_PUBLIC_KEY"), None);
    }

    use super::super::tests::load;

    const TABLES: &str = r#"
[[upstream]]
name = "magento"
url = "https://repo.magento.com"
public_key = "pub"
private_key = "priv"

[[upstream]]
name = "hyva"
url = "https://hyva-themes.repo.packagist.com/acme/"
public_key = "token"
metadata_ttl_secs = 60
metadata_changes_poll_secs = 0

[[upstream]]
name = "packagist"
url = "https://repo.packagist.org"
allowed_hosts = ["https://codeload.github.com"]
"#;

    #[test]
    fn tables_load_in_priority_order_with_their_own_settings_and_variables() {
        let c = load(
            Some(TABLES),
            &[("COMPOSER_PROXY_UPSTREAM_HYVA_PRIVATE_KEY", "licence")],
        )
        .expect("valid");
        let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["magento", "hyva", "packagist"]);
        assert!(c.upstreams.iter().all(|u| u.named));
        let hyva = &c.upstreams[1];
        let keys = hyva.credentials.clone().expect("keys");
        assert_eq!(
            (keys.public_key.expose(), keys.private_key.expose()),
            ("token", "licence")
        );
        assert_eq!(hyva.url.path(), "/acme/");
        assert_eq!(hyva.metadata_ttl, Duration::from_secs(60));
        assert_eq!(c.upstreams[0].metadata_ttl, c.metadata_ttl);
        assert_eq!(hyva.metadata_changes_poll, None, "0 turns the feed off");
        assert_eq!(
            c.upstreams[0].metadata_changes_poll,
            Some(Duration::from_secs(30))
        );
        assert!(c.upstreams[2].credentials.is_none());
        assert_eq!(
            c.upstreams[2].allowed_hosts[0].as_str(),
            "https://codeload.github.com/"
        );
    }

    #[test]
    fn the_flat_settings_are_one_upstream_at_the_public_url() {
        let c = load(None, &[]).expect("valid");
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].name, FLAT_NAME);
        assert!(!c.upstreams[0].named);
    }

    #[test]
    fn flat_upstream_settings_and_tables_together_are_refused_naming_both() {
        let e = load(
            Some(TABLES),
            &[("COMPOSER_PROXY_UPSTREAM_URL", "https://x.example")],
        )
        .unwrap_err();
        assert_eq!(e.setting, "upstream");
        let text = e.to_string();
        assert!(
            text.contains("upstream_url") && text.contains("COMPOSER_PROXY_UPSTREAM_URL"),
            "{text}"
        );
    }

    #[test]
    fn upstream_names_are_checked() {
        let table =
            |name: &str| format!("[[upstream]]\nname = \"{name}\"\nurl = \"https://a.example\"\n");
        for bad in ["p2", "dists", "Magento", "a_b", "", &"a".repeat(33)] {
            let e = load(Some(&table(bad)), &[]).unwrap_err();
            assert_eq!(e.setting, "upstream.name", "{bad:?}: {e}");
        }
        let twice = format!("{}{}", table("a"), table("a"));
        assert!(load(Some(&twice), &[])
            .unwrap_err()
            .to_string()
            .contains("two"));
        let e = load(
            Some(&table("a")),
            &[("COMPOSER_PROXY_UPSTREAM_B_PUBLIC_KEY", "x")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("no [[upstream]] table"), "{e}");
        let e = load(
            Some(&format!(
                "{}allowed_hosts = [\"https://a.example/path\"]\n",
                table("a")
            )),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.setting, "upstream.a.allowed_hosts");
    }
}

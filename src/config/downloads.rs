//! `[downloads]`: the legacy release-download endpoint (Magento's full release archives, behind
//! HTTP Basic with the account's MAGEID as user and its download access token as password),
//! served under `<public_url>/releases/` when both are configured, and not at all otherwise.
//!
//! The table merges field by field over the defaults (so `url` keeps its default when a file
//! sets only the secrets), and each field can come from `COMPOSER_PROXY_DOWNLOADS_<FIELD>`, so
//! the token never has to be written into the TOML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::keys::{check_key, Credentials, KeySource, Secret};
use super::limits::answer_limits;
use super::raw::RawConfig;
use super::{redact_userinfo, ConfigError, UpstreamConfig, ENV_PREFIX};

/// The table's name in the TOML, and the prefix of its variables.
pub(super) const TABLE: &str = "downloads";

/// The name of the endpoint's client: log fields, metric labels. A route word, so no
/// `[[upstream]]` can have it.
pub const RELEASES_NAME: &str = "releases";

/// The fields of the table, longest first (so `_TOKEN_FILE` is not read as `_TOKEN`).
const FIELDS: &[&str] = &["mage_id_file", "token_file", "mage_id", "token", "url"];

/// The `[downloads]` table as written (over the defaults, so every field is present).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDownloads {
    url: String,
    mage_id: String,
    mage_id_file: String,
    token: String,
    token_file: String,
}

/// The field a `COMPOSER_PROXY_DOWNLOADS_<FIELD>` variable sets, if it is one.
pub(super) fn variable(var: &str) -> Option<&'static str> {
    let field = var
        .strip_prefix(ENV_PREFIX)?
        .strip_prefix("DOWNLOADS_")?
        .to_ascii_lowercase();
    FIELDS.iter().copied().find(|f| *f == field)
}

/// Merges a `[downloads]` table of the `--config` file into the defaults, field by field.
pub(super) fn merge_file(
    merged: &mut toml::Table,
    value: toml::Value,
    origin: &str,
    origins: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let toml::Value::Table(table) = value else {
        return Err(ConfigError {
            setting: TABLE.into(),
            origin: origin.into(),
            message: "must be a [downloads] table (see config/default.toml)".into(),
        });
    };
    let mut target = take(merged);
    for (field, value) in table {
        if !FIELDS.contains(&field.as_str()) {
            return Err(ConfigError {
                setting: format!("{TABLE}.{field}"),
                origin: origin.into(),
                message: format!("unknown setting; [downloads] has {}", FIELDS.join(", ")),
            });
        }
        origins.insert(format!("{TABLE}.{field}"), origin.into());
        target.insert(field, value);
    }
    put_back(merged, target);
    Ok(())
}

/// Applies `COMPOSER_PROXY_DOWNLOADS_<FIELD>` variables over the merged table.
pub(super) fn merge_env(
    merged: &mut toml::Table,
    env: &BTreeMap<String, String>,
    origins: &mut BTreeMap<String, String>,
) {
    let mut table = take(merged);
    for (var, text) in env {
        if let Some(field) = variable(var) {
            origins.insert(format!("{TABLE}.{field}"), format!("from {var}"));
            table.insert(field.into(), toml::Value::String(text.clone()));
        }
    }
    put_back(merged, table);
}

/// Takes the `[downloads]` table out of the merged settings to change it (the defaults always
/// have one), for [`put_back`].
fn take(merged: &mut toml::Table) -> toml::Table {
    match merged.remove(TABLE) {
        Some(toml::Value::Table(table)) => table,
        _ => toml::Table::new(),
    }
}

fn put_back(merged: &mut toml::Table, table: toml::Table) {
    merged.insert(TABLE.into(), toml::Value::Table(table));
}

/// The endpoint's client settings when MAGEID and token are both configured, and the secret
/// files to watch. Runs after the upstreams are validated, so the shared timeouts it borrows
/// are known to be valid.
pub(super) fn downloads(
    raw: &RawConfig,
    origin_of: &dyn Fn(&str) -> String,
) -> Result<(Option<UpstreamConfig>, Vec<String>), ConfigError> {
    let table = &raw.downloads;
    let err = |field: &str, message: String| {
        let setting = format!("{TABLE}.{field}");
        ConfigError {
            origin: origin_of(&setting),
            setting,
            message,
        }
    };
    let half = |name: &str, value: &str, file_field: &str, path: &str| match (
        value.is_empty(),
        path.is_empty(),
    ) {
        (false, false) => Err(err(
            name,
            format!("{name} and {file_field} are both set; keep one"),
        )),
        (false, true) => Ok(Some((value.to_string(), false))),
        (true, false) => std::fs::read_to_string(path)
            .map(|text| Some((text.trim().to_string(), true)))
            .map_err(|e| err(file_field, format!("cannot read {path}: {e}"))),
        (true, true) => Ok(None),
    };
    let mage_id = half(
        "mage_id",
        &table.mage_id,
        "mage_id_file",
        &table.mage_id_file,
    )?;
    let token = half("token", &table.token, "token_file", &table.token_file)?;
    let files = [&table.mage_id_file, &table.token_file]
        .into_iter()
        .filter(|f| !f.is_empty())
        .cloned()
        .collect();
    let ((mage_id, id_from_file), (token, token_from_file)) = match (mage_id, token) {
        (None, None) => return Ok((None, files)),
        (Some(_), None) => {
            return Err(err(
                "token",
                "mage_id is set but the download access token (token or token_file) is not".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "mage_id",
                "the download access token is set but mage_id (or mage_id_file) is not".into(),
            ))
        }
        (Some(mage_id), Some(token)) => (mage_id, token),
    };
    check_key(&mage_id).map_err(|m| err("mage_id", format!("the MAGEID {m}")))?;
    if mage_id.contains(':') {
        return Err(err("mage_id", "the MAGEID must not contain ':'".into()));
    }
    check_key(&token).map_err(|m| err("token", format!("the download access token {m}")))?;
    let url = endpoint_url(&table.url).map_err(|m| err("url", m))?;
    let source = if id_from_file || token_from_file {
        KeySource::KeyFiles
    } else {
        KeySource::Settings
    };
    let secs = Duration::from_secs;
    let upstream = UpstreamConfig {
        name: RELEASES_NAME.into(),
        named: true,
        url,
        allowed_hosts: Vec::new(),
        credentials: Some(Credentials {
            public_key: Secret::new(mage_id),
            private_key: Secret::new(token),
            source,
        }),
        fallback: Vec::new(),
        ca_file: (!raw.upstream_ca_file.is_empty()).then(|| PathBuf::from(&raw.upstream_ca_file)),
        connect_timeout: secs(raw.upstream_connect_timeout_secs),
        read_timeout: secs(raw.upstream_read_timeout_secs),
        metadata_timeout: secs(raw.upstream_metadata_timeout_secs),
        archive_timeout: secs(raw.upstream_archive_timeout_secs),
        max_redirects: raw.upstream_max_redirects,
        metadata_ttl: secs(raw.metadata_ttl_secs),
        negative_ttl: secs(raw.negative_ttl_secs),
        // A Composer repository's feed; the endpoint has none.
        metadata_changes_poll: None,
        limits: answer_limits(raw, &|setting: &str, message| ConfigError {
            origin: origin_of(setting),
            setting: setting.into(),
            message,
        })?,
    };
    Ok((Some(upstream), files))
}

/// The endpoint: absolute http(s), no query or credentials, and a path ending in `/` so that
/// `info/…` and `file/…` are joined below it rather than beside its last segment.
fn endpoint_url(text: &str) -> Result<Url, String> {
    let mut url =
        Url::parse(text).map_err(|e| format!("not a URL ({e}): {:?}", redact_userinfo(text)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an absolute http:// or https:// URL".into());
    }
    if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a query or credentials; set mage_id and token instead".into());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use super::*;

    #[test]
    fn nothing_is_configured_by_default_and_the_endpoint_has_its_default() {
        let c = load(None, &[]).expect("defaults");
        assert!(c.downloads.is_none());
        let c = load(
            Some("[downloads]\nmage_id = \"MAG000000001\"\n"),
            &[("COMPOSER_PROXY_DOWNLOADS_TOKEN", "t0ken")],
        )
        .expect("valid");
        let d = c.downloads.expect("configured");
        assert_eq!(
            d.url.as_str(),
            "https://www.magentocommerce.com/products/downloads/"
        );
        let keys = d.credentials.expect("credentials");
        assert_eq!(
            (keys.public_key.expose(), keys.private_key.expose()),
            ("MAG000000001", "t0ken")
        );
        assert_eq!(d.name, RELEASES_NAME);
    }

    #[test]
    fn the_token_can_come_from_a_watched_file_and_the_url_gets_a_trailing_slash() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").expect("write");
        let path = file.to_str().expect("utf-8");
        let c = load(
            None,
            &[
                ("COMPOSER_PROXY_DOWNLOADS_MAGE_ID", "MAG1"),
                ("COMPOSER_PROXY_DOWNLOADS_TOKEN_FILE", path),
                ("COMPOSER_PROXY_DOWNLOADS_URL", "http://127.0.0.1:9/dl"),
            ],
        )
        .expect("valid");
        let d = c.downloads.expect("configured");
        assert_eq!(d.url.as_str(), "http://127.0.0.1:9/dl/");
        let keys = d.credentials.expect("credentials");
        assert_eq!(keys.private_key.expose(), "from-file");
        assert_eq!(keys.source, KeySource::KeyFiles);
        assert!(c.watched_files.contains(&file));
    }

    #[test]
    fn half_a_configuration_and_bad_fields_name_the_setting_without_the_token() {
        let e = load(None, &[("COMPOSER_PROXY_DOWNLOADS_TOKEN", "s3cret")]).unwrap_err();
        assert_eq!(e.setting, "downloads.mage_id");
        assert!(e.origin.contains("default"), "{e}");
        let e = load(Some("[downloads]\nmage_id = \"MAG1\"\n"), &[]).unwrap_err();
        assert_eq!(e.setting, "downloads.token");
        let e = load(
            None,
            &[
                ("COMPOSER_PROXY_DOWNLOADS_MAGE_ID", "MAG1"),
                ("COMPOSER_PROXY_DOWNLOADS_TOKEN", "two s3cret words"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.setting, "downloads.token");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = load(
            None,
            &[
                ("COMPOSER_PROXY_DOWNLOADS_MAGE_ID", "MAG1"),
                ("COMPOSER_PROXY_DOWNLOADS_TOKEN", "s3cret"),
                (
                    "COMPOSER_PROXY_DOWNLOADS_URL",
                    "https://MAG1:s3cret@example.test/",
                ),
            ],
        )
        .unwrap_err();
        assert_eq!(e.setting, "downloads.url");
        assert!(e.origin.contains("COMPOSER_PROXY_DOWNLOADS_URL"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = load(Some("[downloads]\nmageid = \"MAG1\"\n"), &[]).unwrap_err();
        assert_eq!(e.setting, "downloads.mageid");
        let e = load(Some("downloads = \"x\"\n"), &[]).unwrap_err();
        assert_eq!(e.setting, "downloads");
        let e = load(None, &[("COMPOSER_PROXY_DOWNLOADS", "x")]).unwrap_err();
        assert_eq!(e.setting, "downloads");
        let e = load(None, &[("COMPOSER_PROXY_DOWNLOADS_MAGEID", "x")]).unwrap_err();
        assert_eq!(e.setting, "downloads_mageid");
    }
}

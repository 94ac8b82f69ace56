//! The configuration as a whole: defaults, sources, precedence and the errors that name a
//! setting.

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
    let e =
        load(None, &[("COMPOSER_PROXY_UPSTREAM_API_MAX_BYTES", "1000")]).expect_err("below 64 KiB");
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
        Some("[[upstream]]\nname = \"a\"\nurl = \"https://a.example\"\npublic_key = 98765432123"),
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

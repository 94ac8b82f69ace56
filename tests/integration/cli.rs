//! The start-up contract of the `composer-proxy` binary (DESIGN.md §3): a bad configuration
//! stops it with exit status 64 and a message naming the setting.

use std::process::Command;

fn run_with_env(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_composer-proxy"));
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

#[test]
fn bad_settings_exit_64_naming_the_setting() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("COMPOSER_PROXY_LISTEN", "not-an-address")], "`listen`"),
        (
            &[("COMPOSER_PROXY_UPSTREAM_URL", "ftp://repo")],
            "`upstream_url`",
        ),
        (
            &[("COMPOSER_PROXY_PUBLIC_KEY", "only-half")],
            "`private_key`",
        ),
        (&[("COMPOSER_PROXY_LOG_FORMAT", "xml")], "`log_format`"),
        (&[("COMPOSER_PROXY_CACHE_DIRR", "/tmp")], "`cache_dirr`"),
        (
            &[("COMPOSER_PROXY_TLS_CERT", "/nonexistent.pem")],
            "`tls_key`",
        ),
        (
            &[("COMPOSER_PROXY_MAX_CONNECTIONS", "-1")],
            "`max_connections`",
        ),
        // With a later mistake too, so a COMPOSER_AUTH let through fails here, not by serving.
        (
            &[
                ("COMPOSER_AUTH", "{not json"),
                ("COMPOSER_PROXY_LOG_FORMAT", "xml"),
            ],
            "`COMPOSER_AUTH`",
        ),
    ];
    for (env, setting) in cases {
        let out = run_with_env(env, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{env:?}: {stderr}");
        assert!(stderr.contains(setting), "{env:?}: {stderr}");
    }
}

#[test]
fn unreadable_config_file_and_unknown_keys_exit_64() {
    let out = run_with_env(&[], &["--config", "/nonexistent/composer-proxy.toml"]);
    assert_eq!(out.status.code(), Some(64));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nupstream = \"x\"\n").expect("write");
    let out = run_with_env(&[], &["serve", "--config", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`upstream`"));
}

#[test]
fn values_of_the_wrong_type_in_the_file_name_the_setting_or_table_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    for (toml, setting) in [
        ("max_connections = \"lots\"\n", "`max_connections`"),
        (
            "[[upstream]]\nname = \"agency\"\nurl = \"https://repo.example\"\nread_timeout_secs = \"soon\"\n",
            "`upstream.agency.read_timeout_secs`",
        ),
    ] {
        std::fs::write(&file, toml).expect("write");
        let out = run_with_env(&[], &["serve", "--config", file.to_str().expect("utf8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{toml}: {stderr}");
        assert!(stderr.contains(setting), "{toml}: {stderr}");
        assert!(stderr.contains("c.toml"), "{toml}: {stderr}");
    }
}

#[test]
fn keys_in_a_bad_setting_are_not_echoed() {
    let out = run_with_env(
        &[
            ("COMPOSER_PROXY_PUBLIC_KEY", "pub with space"),
            ("COMPOSER_PROXY_PRIVATE_KEY", "supersecretprivate"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("supersecretprivate") && !stderr.contains("pub with space"),
        "{stderr}"
    );
}

#[test]
fn help_explains_the_environment_overrides() {
    let out = run_with_env(&[], &["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("COMPOSER_PROXY_"));
}

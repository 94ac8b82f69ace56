//! The upstream key pair: where it comes from (settings, key files, auth.json, COMPOSER_AUTH,
//! the fallback file), what a valid key looks like, and [`Secret`], which never prints.

use std::collections::BTreeMap;
use std::fmt;

use url::Url;

use super::ConfigError;

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

/// Whether loading the configuration reads the secrets: key pairs, the GitHub token and the
/// release-download token, from every source they may be given in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// Read and check them: serving, and the commands that talk to the upstreams.
    Read,
    /// Leave their sources unread and unchecked, so commands that only build the proxy's URLs
    /// (`lock migrate`) or talk to a running proxy (`warm --via`) run where the keys are not.
    Ignore,
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

/// Where one upstream's key pair may be given, as written (empty: not set).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct KeySettings {
    pub(super) public_key: String,
    pub(super) private_key: String,
    pub(super) public_key_file: String,
    pub(super) private_key_file: String,
    pub(super) auth_json: String,
    pub(super) fallback_keys_file: String,
}

impl KeySettings {
    /// The files among these settings, watched for changes.
    pub(super) fn files(&self) -> impl Iterator<Item = &str> {
        [
            &self.public_key_file,
            &self.private_key_file,
            &self.auth_json,
            &self.fallback_keys_file,
        ]
        .into_iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
    }
}

/// Finds the key pair: explicit settings, then key files, then auth.json, then COMPOSER_AUTH.
pub(super) fn resolve_credentials(
    raw: &KeySettings,
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

    // Each half from its value or its file: a vendor repository's user name ("token") is no
    // secret and sits in the file, while its licence key comes from a mounted secret.
    let read = |setting: &str, path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| err(setting, format!("cannot read {path}: {e}")))
    };
    let half = |name: &str, value: &str, file_setting: &str, path: &str| match (
        value.is_empty(),
        path.is_empty(),
    ) {
        (false, false) => Err(err(
            name,
            format!("{name} and {file_setting} are both set; keep one"),
        )),
        (false, true) => Ok(Some((value.to_string(), false))),
        (true, false) => read(file_setting, path).map(|v| Some((v, true))),
        (true, true) => Ok(None),
    };
    let public = half(
        "public_key",
        &raw.public_key,
        "public_key_file",
        &raw.public_key_file,
    )?;
    let private = half(
        "private_key",
        &raw.private_key,
        "private_key_file",
        &raw.private_key_file,
    )?;
    match (public, private) {
        (Some((public, public_file)), Some((private, private_file))) => {
            let (source, setting) = match (public_file, private_file) {
                (false, false) => (KeySource::Settings, "public_key"),
                (true, _) => (KeySource::KeyFiles, "public_key_file"),
                (false, true) => (KeySource::KeyFiles, "private_key_file"),
            };
            return pair(public, private, source, setting);
        }
        (Some(_), None) => return Err(err(
            "private_key",
            "public_key (or public_key_file) is set but private_key (or private_key_file) is not"
                .into(),
        )),
        (None, Some(_)) => return Err(err(
            "public_key",
            "private_key (or private_key_file) is set but public_key (or public_key_file) is not"
                .into(),
        )),
        (None, None) => {}
    }

    if !raw.auth_json.is_empty() {
        let text = std::fs::read_to_string(&raw.auth_json)
            .map_err(|e| err("auth_json", format!("cannot read {}: {e}", raw.auth_json)))?;
        let (public, private) = http_basic_for(&text, upstream)
            .and_then(|entry| entry.ok_or_else(|| no_entry_for(upstream)))
            .map_err(|m| err("auth_json", m))?;
        return pair(public, private, KeySource::AuthJson, "auth_json");
    }

    if let Some(text) = env.get("COMPOSER_AUTH") {
        // COMPOSER_AUTH often holds tokens for other hosts only; that is not an error here, but
        // an entry for this host that cannot be used is.
        let entry = http_basic_for(text, upstream).map_err(composer_auth_error)?;
        if let Some((public, private)) = entry {
            return pair(public, private, KeySource::ComposerAuthEnv, "COMPOSER_AUTH");
        }
    }
    Ok(None)
}

/// COMPOSER_AUTH is read for key pairs and for the GitHub token, each looking for its own
/// entry: a value that is not a JSON object is checked here, once, and stops the start as an
/// unreadable `auth_json` does, instead of being taken for one without entries.
pub(super) fn check_composer_auth(env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let Some(text) = env.get("COMPOSER_AUTH") else {
        return Ok(());
    };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(json) if json.is_object() => Ok(()),
        Ok(_) => Err(composer_auth_error(
            "must be a JSON object, as Composer's auth.json is".into(),
        )),
        // serde_json's messages give a position, never the text (which holds secrets).
        Err(e) => Err(composer_auth_error(format!("not valid JSON: {e}"))),
    }
}

fn composer_auth_error(message: String) -> ConfigError {
    ConfigError {
        setting: "COMPOSER_AUTH".into(),
        origin: "from the environment".into(),
        message,
    }
}

/// Reads `public:private` lines (blank lines and `#` comments ignored). Errors name the line,
/// never its content.
pub(super) fn read_fallback_keys(
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

pub(super) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("is empty".into());
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("contains whitespace or control characters".into());
    }
    Ok(())
}

/// `<host>:<port>` then `<host>`, as Composer looks them up.
fn auth_hosts(upstream: &Url) -> Vec<String> {
    let host = upstream.host_str().unwrap_or_default();
    match upstream.port() {
        Some(port) => vec![format!("{host}:{port}"), host.to_string()],
        None => vec![host.to_string()],
    }
}

fn no_entry_for(upstream: &Url) -> String {
    format!("has no http-basic entry for {}", auth_hosts(upstream)[0])
}

/// Reads `http-basic.<host>` (or `<host>:<port>`) from Composer's auth.json format: `None`
/// when there is no entry for the upstream, an error when the text or the entry is unusable.
fn http_basic_for(text: &str, upstream: &Url) -> Result<Option<(String, String)>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(basic) = json.get("http-basic") else {
        return Ok(None);
    };
    for name in &auth_hosts(upstream) {
        if let Some(entry) = basic.get(name) {
            let field = |f: &str| {
                entry
                    .get(f)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| format!("http-basic.{name} has no string \"{f}\""))
            };
            return Ok(Some((field("username")?, field("password")?)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use super::super::*;

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
        let k = c.upstreams[0].credentials.clone().expect("keys");
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
        let k = c.upstreams[0].credentials.clone().expect("keys");
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
            c.upstreams[0].credentials.clone().expect("keys").source,
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
        let k = c.upstreams[0].credentials.clone().expect("keys");
        assert_eq!(k.source, KeySource::ComposerAuthEnv);
        assert_eq!(k.public_key.expose(), "u");
    }

    #[test]
    fn composer_auth_that_is_not_json_stops_the_start_and_one_without_our_entry_does_not() {
        let other_hosts = r#"{"http-basic":{"other.example":{"username":"u","password":"p"}},
                              "github-oauth":{"github.com":"ghp_x"}}"#;
        let c = load(None, &[("COMPOSER_AUTH", other_hosts)]).expect("valid");
        assert!(c.upstreams[0].credentials.is_none());
        let c = load(None, &[("COMPOSER_AUTH", "{}")]).expect("valid");
        assert!(c.upstreams[0].credentials.is_none());

        let broken_entry = r#"{"http-basic":{"repo.magento.com":{"username":"u"}}}"#;
        for bad in [
            "{\"http-basic\": {\"repo.magento.com\": secretvalue",
            "secretvalue",
            "[\"secretvalue\"]",
            broken_entry,
        ] {
            let e = load(None, &[("COMPOSER_AUTH", bad)]).expect_err(bad);
            assert_eq!(e.setting, "COMPOSER_AUTH", "{e}");
            assert!(!e.to_string().contains("secretvalue"), "{e}");
        }
        // Also where COMPOSER_AUTH would only be read for the GitHub token.
        let e = load(
            None,
            &[
                ("COMPOSER_PROXY_PUBLIC_KEY", "pub"),
                ("COMPOSER_PROXY_PRIVATE_KEY", "priv"),
                ("COMPOSER_AUTH", "not json"),
            ],
        )
        .expect_err("not JSON");
        assert_eq!(e.setting, "COMPOSER_AUTH");
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
    fn each_half_of_a_key_pair_comes_from_its_value_or_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let licence = dir.path().join("licence_key");
        std::fs::write(&licence, "LICENCE-123\n").expect("write");
        let c = load(
            None,
            &[
                ("COMPOSER_PROXY_PUBLIC_KEY", "token"),
                (
                    "COMPOSER_PROXY_PRIVATE_KEY_FILE",
                    licence.to_str().expect("utf-8"),
                ),
            ],
        )
        .expect("valid");
        let k = c.upstreams[0].credentials.clone().expect("keys");
        assert_eq!(
            (k.public_key.expose(), k.private_key.expose()),
            ("token", "LICENCE-123")
        );
        assert_eq!(k.source, KeySource::KeyFiles);
        let e = load(
            None,
            &[
                ("COMPOSER_PROXY_PRIVATE_KEY", "x"),
                (
                    "COMPOSER_PROXY_PRIVATE_KEY_FILE",
                    licence.to_str().expect("utf-8"),
                ),
                ("COMPOSER_PROXY_PUBLIC_KEY", "token"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.setting, "private_key");
        assert!(e.to_string().contains("both set"), "{e}");
    }

    #[test]
    fn ignored_secrets_are_neither_read_nor_checked_and_the_rest_still_is() {
        let missing = "/nonexistent/composer-proxy-test/key";
        let env: BTreeMap<String, String> = [
            ("COMPOSER_PROXY_UPSTREAM_URL", "https://repo.example"),
            ("COMPOSER_PROXY_PUBLIC_KEY_FILE", missing),
            ("COMPOSER_PROXY_PRIVATE_KEY", "priv"),
            ("COMPOSER_PROXY_FALLBACK_KEYS_FILE", missing),
            ("COMPOSER_PROXY_GITHUB_TOKEN_FILE", missing),
            ("COMPOSER_PROXY_DOWNLOADS_MAGE_ID", "MAG123"),
            ("COMPOSER_PROXY_DOWNLOADS_TOKEN_FILE", missing),
            ("COMPOSER_AUTH", "not json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let sources = Sources { file: None, env };
        let e = Config::load(&sources).expect_err("unreadable secrets");
        assert_eq!(e.setting, "COMPOSER_AUTH");
        let c = Config::load_with(&sources, Secrets::Ignore).expect("secrets are not read");
        assert_eq!(c.upstreams[0].url.as_str(), "https://repo.example/");
        assert!(c.upstreams[0].key_pairs().is_empty());
        assert!(c.github.token.is_none() && c.downloads.is_none());

        // What is not a secret is checked as ever.
        let mut bad_url = sources.clone();
        bad_url
            .env
            .insert("COMPOSER_PROXY_UPSTREAM_URL".into(), "not a url".into());
        let e = Config::load_with(&bad_url, Secrets::Ignore).expect_err("bad URL");
        assert_eq!(e.setting, "upstream_url");
    }
}

//! GitHub, where packagist.org's dists live: the API and codeload origins, and the token that
//! lifts the API's limit of 60 unauthenticated requests an hour.

use std::collections::BTreeMap;

use url::Url;

use super::keys::{Secret, Secrets};
use super::raw::RawConfig;
use super::ConfigError;

/// Settings for dists at `<api>/repos/OWNER/REPO/zipball/REF`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitHubConfig {
    /// The API origin (and path, for GitHub Enterprise's `/api/v3`): the only place the token
    /// is sent.
    pub api: Url,
    /// Where zipballs really are; fetched directly when there is no token.
    pub codeload: Url,
    pub token: Option<Secret>,
    /// Which setting the token came from, for the start-up log.
    pub token_source: Option<&'static str>,
}

/// The GitHub settings: `github_token`, then `github_token_file`, then a `github-oauth` entry
/// in any configured auth.json, then in COMPOSER_AUTH.
pub(super) fn github(
    raw: &RawConfig,
    origin_of: &dyn Fn(&str) -> String,
    env: &BTreeMap<String, String>,
    secrets: Secrets,
) -> Result<GitHubConfig, ConfigError> {
    let err = |setting: &str, message: String| ConfigError {
        setting: setting.to_string(),
        origin: origin_of(setting),
        message,
    };
    let url = |setting: &str, text: &str| {
        let url = Url::parse(text).map_err(|e| err(setting, format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(err(setting, "must be an absolute http(s) URL".into()));
        }
        if url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(err(setting, "must not carry a query or credentials".into()));
        }
        Ok(url)
    };
    let api = url("github_api_url", &raw.github_api_url)?;
    let codeload = url("github_codeload_url", &raw.github_codeload_url)?;

    let (token, token_source) = if secrets == Secrets::Ignore {
        (None, None)
    } else if !raw.github_token.is_empty() {
        (Some(raw.github_token.clone()), Some("github_token"))
    } else if !raw.github_token_file.is_empty() {
        let text = std::fs::read_to_string(&raw.github_token_file).map_err(|e| {
            err(
                "github_token_file",
                format!("cannot read {}: {e}", raw.github_token_file),
            )
        })?;
        (Some(text.trim().to_string()), Some("github_token_file"))
    } else {
        match from_auth_json(raw, &api) {
            Some(token) => (Some(token), Some("auth_json github-oauth")),
            None => (
                env.get("COMPOSER_AUTH")
                    .and_then(|text| oauth_token(text, &api)),
                Some("COMPOSER_AUTH github-oauth"),
            ),
        }
    };
    let token_source = token.as_ref().and(token_source);
    if let Some(token) = &token {
        // It goes into a header: anything else would be refused there, or split it.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            let setting = token_source.unwrap_or("github_token");
            return Err(err(
                setting,
                "the GitHub token must be one word of printable ASCII".into(),
            ));
        }
    }
    Ok(GitHubConfig {
        api,
        codeload,
        token: token.map(Secret::new),
        token_source,
    })
}

/// A `github-oauth` token in the flat `auth_json` or any upstream's.
fn from_auth_json(raw: &RawConfig, api: &Url) -> Option<String> {
    let files = std::iter::once(raw.auth_json.as_str())
        .chain(raw.upstream.iter().map(|u| u.auth_json()))
        .filter(|f| !f.is_empty());
    for file in files {
        // Unreadable files are reported where their keys are read; here they just hold no token.
        if let Some(token) = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| oauth_token(&text, api))
        {
            return Some(token);
        }
    }
    None
}

/// Composer keys `github-oauth` by the GitHub domain: `github.com` for api.github.com, the
/// host itself for GitHub Enterprise.
fn oauth_token(text: &str, api: &Url) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let entries = json.get("github-oauth")?;
    let host = api.host_str()?;
    let domain = host.strip_prefix("api.").unwrap_or(host);
    [domain, host]
        .iter()
        .find_map(|d| entries.get(*d).and_then(|v| v.as_str()))
        .map(|t| t.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;

    #[test]
    fn the_token_comes_from_the_setting_its_file_or_an_auth_json() {
        let none = load(None, &[]).expect("defaults load");
        assert_eq!(none.github.api.as_str(), "https://api.github.com/");
        assert_eq!(
            none.github.codeload.as_str(),
            "https://codeload.github.com/"
        );
        assert!(none.github.token.is_none());

        let set = load(None, &[("COMPOSER_PROXY_GITHUB_TOKEN", "ghp_direct")]).expect("loads");
        assert_eq!(
            set.github.token.as_ref().map(|t| t.expose()),
            Some("ghp_direct")
        );
        assert_eq!(set.github.token_source, Some("github_token"));

        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "ghp_from_file\n").expect("write");
        let from_file = load(
            None,
            &[(
                "COMPOSER_PROXY_GITHUB_TOKEN_FILE",
                file.to_str().expect("utf-8"),
            )],
        )
        .expect("loads");
        assert_eq!(
            from_file.github.token.as_ref().map(|t| t.expose()),
            Some("ghp_from_file")
        );
        assert!(from_file.watched_files.contains(&file));

        let auth = dir.path().join("auth.json");
        std::fs::write(
            &auth,
            r#"{"http-basic":{"repo.magento.com":{"username":"0123456789abcdef0123456789abcdef","password":"0123456789abcdef0123456789abcdef"}},
               "github-oauth":{"github.com":"ghp_from_auth"}}"#,
        )
        .expect("write");
        let from_auth = load(
            None,
            &[("COMPOSER_PROXY_AUTH_JSON", auth.to_str().expect("utf-8"))],
        )
        .expect("loads");
        assert_eq!(
            from_auth.github.token.as_ref().map(|t| t.expose()),
            Some("ghp_from_auth")
        );

        let composer_auth = load(
            None,
            &[(
                "COMPOSER_AUTH",
                r#"{"github-oauth":{"github.com":"ghp_env"}}"#,
            )],
        )
        .expect("loads");
        assert_eq!(
            composer_auth.github.token_source,
            Some("COMPOSER_AUTH github-oauth")
        );
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_and_not_echoed() {
        let e =
            load(None, &[("COMPOSER_PROXY_GITHUB_TOKEN", "ghp two words")]).expect_err("refused");
        assert_eq!(e.setting, "github_token");
        assert!(!e.to_string().contains("two words"), "{e}");
        let e = load(None, &[("COMPOSER_PROXY_GITHUB_API_URL", "ftp://x")]).expect_err("refused");
        assert_eq!(e.setting, "github_api_url");
    }
}

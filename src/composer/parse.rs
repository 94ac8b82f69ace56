//! Upstream documents, read as Composer reads them: the root (`packages.json`), v1 listings,
//! and URL resolution against the repository URL.

use std::collections::BTreeMap;

use serde_json::Value;
use url::Url;

use super::{is_package_name, parse_json, ProtocolError};

/// One `provider-includes` entry of a v1 root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderInclude {
    /// As written upstream, e.g. `p/provider-ce$%hash%.json`; relative to the repository URL.
    pub template: String,
    pub sha256: String,
}

impl ProviderInclude {
    pub fn path_for(&self, hash: &str) -> String {
        self.template.replace("%hash%", hash)
    }
}

/// What the upstream `packages.json` says, reduced to what the proxy needs.
#[derive(Clone, Debug)]
pub enum UpstreamRoot {
    /// Composer 1 providers, as repo.magento.com serves.
    V1 {
        providers_url: Url,
        includes: Vec<ProviderInclude>,
        notify_batch: Option<Url>,
    },
    /// Composer 2 `metadata-url` (packagist-style private repositories).
    P2 {
        metadata_url: Url,
        available_packages: Option<Vec<String>>,
        available_package_patterns: Option<Vec<String>>,
        notify_batch: Option<Url>,
        /// `metadata-changes-url`: the feed of changed p2 files, where the upstream offers one.
        metadata_changes_url: Option<Url>,
    },
}

impl UpstreamRoot {
    pub fn notify_batch(&self) -> Option<&Url> {
        match self {
            UpstreamRoot::V1 { notify_batch, .. } | UpstreamRoot::P2 { notify_batch, .. } => {
                notify_batch.as_ref()
            }
        }
    }
}

/// Resolves a URL the way Composer does: a leading `/` joins the origin of the repository URL
/// (dropping its path), anything else must already be absolute.
pub fn canonicalize_url(repository: &Url, value: &str) -> Option<Url> {
    if value.starts_with('/') {
        let mut url = repository.clone();
        url.set_query(None);
        url.set_fragment(None);
        // `%` in templates (`%package%`) must survive; set_path would escape nothing relevant.
        url.set_path("");
        Url::parse(&format!("{}{}", url.as_str().trim_end_matches('/'), value)).ok()
    } else {
        Url::parse(value).ok()
    }
}

/// The repository's base URL as Composer computes it: the URL without a trailing `/x.json`.
pub fn repository_base(repository: &Url) -> String {
    let s = repository.as_str().trim_end_matches('/');
    match s.rsplit_once('/') {
        Some((head, tail)) if tail.ends_with(".json") && head.contains("://") && head.len() > 8 => {
            head.to_string()
        }
        _ => s.to_string(),
    }
}

/// The upstream root document's URL.
pub fn root_url(repository: &Url) -> String {
    if repository.path().contains(".json") {
        repository.to_string()
    } else {
        format!("{}/packages.json", repository_base(repository))
    }
}

fn string_list(value: Option<&Value>) -> Option<Vec<String>> {
    let list = value?.as_array()?;
    Some(
        list.iter()
            .filter_map(|v| v.as_str().map(str::to_ascii_lowercase))
            .collect(),
    )
}

pub fn parse_root(bytes: &[u8], repository: &Url) -> Result<UpstreamRoot, ProtocolError> {
    let json = parse_json(bytes, "upstream packages.json")?;
    let obj = json
        .as_object()
        .ok_or_else(|| ProtocolError::Shape("upstream packages.json is not an object".into()))?;
    let url_field = |key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .and_then(|s| canonicalize_url(repository, s))
    };
    let notify_batch = url_field("notify-batch");
    if let Some(metadata_url) = url_field("metadata-url") {
        return Ok(UpstreamRoot::P2 {
            metadata_url,
            available_packages: string_list(obj.get("available-packages")),
            available_package_patterns: string_list(obj.get("available-package-patterns")),
            notify_batch,
            metadata_changes_url: url_field("metadata-changes-url"),
        });
    }
    let providers_url = url_field("providers-url").ok_or_else(|| {
        ProtocolError::Shape(
            "upstream packages.json has neither metadata-url nor providers-url".into(),
        )
    })?;
    let mut includes = Vec::new();
    if let Some(map) = obj.get("provider-includes").and_then(Value::as_object) {
        for (template, meta) in map {
            let sha256 = meta.get("sha256").and_then(Value::as_str).ok_or_else(|| {
                ProtocolError::Shape(format!("provider-includes[{template}] has no sha256"))
            })?;
            if !is_servable_listing_template(template) {
                return Err(ProtocolError::Shape(format!(
                    "provider-includes key {template:?} is not of the form \
                     p/<name>$%hash%.json, the only one the proxy can serve listings under"
                )));
            }
            includes.push(ProviderInclude {
                template: template.clone(),
                sha256: sha256.to_ascii_lowercase(),
            });
        }
    }
    Ok(UpstreamRoot::V1 {
        providers_url,
        includes,
        notify_batch,
    })
}

/// Listing templates become paths the proxy serves (expanded with the rewritten listing's
/// hash), so one is accepted only when the router answers its expansion as a listing: one file
/// under `p/` (as repo.magento.com and Packagist name theirs), ending in `.json`, made of
/// characters that need no percent-encoding. Anything else could climb out of the root, be cut
/// at a `#` or `?`, or be taken for a per-package file, and Composer 1 would get a 404.
fn is_servable_listing_template(t: &str) -> bool {
    let Some(file) = t.strip_prefix("p/") else {
        return false;
    };
    file.contains("%hash%")
        && file.ends_with(".json")
        && file
            .replace("%hash%", "")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'$'))
}

/// Reads a v1 listing: package name → sha256 of its per-package file.
pub fn parse_listing(bytes: &[u8]) -> Result<BTreeMap<String, String>, ProtocolError> {
    let json = parse_json(bytes, "provider listing")?;
    let providers = json
        .get("providers")
        .and_then(Value::as_object)
        .ok_or_else(|| ProtocolError::Shape("provider listing has no providers object".into()))?;
    let mut out = BTreeMap::new();
    for (name, meta) in providers {
        if let Some(hash) = meta.get("sha256").and_then(Value::as_str) {
            if is_package_name(&name.to_ascii_lowercase()) {
                out.insert(name.to_ascii_lowercase(), hash.to_ascii_lowercase());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composer::sha256_hex;

    #[test]
    fn v1_root_and_listing_parse_like_composer() {
        let upstream = Url::parse("https://repo.magento.com").expect("url");
        let root = br#"{"packages":[],"notify-batch":"\/downloads\/","providers-url":"\/p\/%package%$%hash%.json",
            "provider-includes":{"p\/provider-ce$%hash%.json":{"sha256":"AA"}}}"#;
        match parse_root(root, &upstream).expect("parses") {
            UpstreamRoot::V1 {
                providers_url,
                includes,
                notify_batch,
            } => {
                assert_eq!(
                    providers_url.as_str(),
                    "https://repo.magento.com/p/%package%$%hash%.json"
                );
                assert_eq!(includes[0].template, "p/provider-ce$%hash%.json");
                assert_eq!(includes[0].sha256, "aa");
                assert_eq!(includes[0].path_for("bb"), "p/provider-ce$bb.json");
                assert_eq!(
                    notify_batch.expect("notify").as_str(),
                    "https://repo.magento.com/downloads/"
                );
            }
            other => panic!("expected v1, got {other:?}"),
        }
        let listing = parse_listing(
            br#"{"providers":{"Magento\/Framework":{"sha256":"CC"},"bad name":{"sha256":"dd"}}}"#,
        )
        .expect("parses");
        assert_eq!(listing.len(), 1);
        assert_eq!(listing["magento/framework"], "cc");
    }

    #[test]
    fn hostile_listing_templates_are_refused() {
        let upstream = Url::parse("https://repo.magento.com").expect("url");
        for t in [
            "../x$%hash%.json",
            "/abs$%hash%.json",
            "p/..\\x$%hash%.json",
            "p/x.json",
            // Found by fuzzing: accepted, then advertised under paths the router refuses.
            "p/#provider$%hash%.json",
            "p/provider-ce$%hash%.~dev",
            "include/all$%hash%.json",
            "p/provider ce$%hash%.json",
            "p/a%20b$%hash%.json",
            "p/magento/framework$%hash%.json",
        ] {
            let root = serde_json::json!({"providers-url": "/p/%package%$%hash%.json",
                "provider-includes": {t: {"sha256": "aa"}}});
            let bytes = serde_json::to_vec(&root).expect("json");
            assert!(parse_root(&bytes, &upstream).is_err(), "{t}");
        }
    }

    #[test]
    fn accepted_listing_templates_are_served_as_listings() {
        use crate::routes::{parse_route, Route};
        let upstream = Url::parse("https://repo.magento.com").expect("url");
        let hash = sha256_hex(b"listing");
        for t in [
            "p/provider-ce$%hash%.json",
            "p/provider-2013$%hash%.json",
            "p/Provider_EE.v2~x-%hash%.json",
        ] {
            let root = serde_json::json!({"providers-url": "/p/%package%$%hash%.json",
                "provider-includes": {t: {"sha256": "aa"}}});
            let bytes = serde_json::to_vec(&root).expect("json");
            let UpstreamRoot::V1 { includes, .. } = parse_root(&bytes, &upstream).expect(t) else {
                panic!("{t}: not a v1 root");
            };
            let path = includes[0].path_for(&hash);
            assert_eq!(
                parse_route(&format!("/{path}"), ""),
                Ok(Route::V1Listing { path: path.clone() }),
                "{t}"
            );
        }
    }

    #[test]
    fn the_changes_feed_is_read_absolute_or_relative_to_the_origin() {
        let repo = Url::parse("https://repo.example/org/acme").expect("url");
        let feed = |value: &str| {
            let root = serde_json::json!({"metadata-url": "/p2/%package%.json",
                "metadata-changes-url": value});
            let bytes = serde_json::to_vec(&root).expect("json");
            match parse_root(&bytes, &repo).expect("parses") {
                UpstreamRoot::P2 {
                    metadata_changes_url,
                    ..
                } => metadata_changes_url.map(|u| u.to_string()),
                other => panic!("expected p2, got {other:?}"),
            }
        };
        assert_eq!(
            feed("https://packagist.org/metadata/changes.json").as_deref(),
            Some("https://packagist.org/metadata/changes.json")
        );
        assert_eq!(
            feed("/metadata/changes.json").as_deref(),
            Some("https://repo.example/metadata/changes.json")
        );
        assert_eq!(feed(""), None);
    }

    #[test]
    fn url_resolution_drops_the_repository_path_for_absolute_paths() {
        let repo = Url::parse("https://repo.example/org/acme").expect("url");
        assert_eq!(
            canonicalize_url(&repo, "/p2/%package%.json")
                .expect("url")
                .as_str(),
            "https://repo.example/p2/%package%.json"
        );
        assert_eq!(
            root_url(&repo),
            "https://repo.example/org/acme/packages.json"
        );
        assert_eq!(
            repository_base(&Url::parse("https://r.example/x/packages.json").expect("url")),
            "https://r.example/x"
        );
    }
}

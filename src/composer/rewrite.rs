//! Rewriting: every dist of an upstream document pointed at the proxy (and where it really
//! lives recorded), v1 per-package files re-hashed and translated into p2 files, the proxy's
//! own root and listings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};
use url::Url;

use super::apis::{advertise_apis, RootApis};
use super::minify::{Expansion, MINIFIED, UNSET};
use super::{
    canonicalize_url, is_dev_version, is_package_name, parse_json, same_origin, sha256_hex,
    Checksum, DistSource, Dists, Document, ProtocolError,
};

/// The proxy's key for an upstream archive URL: stable for a given URL, so URLs in lock files
/// made through the proxy stay valid, and opaque, so a client cannot name an arbitrary path.
pub fn dist_key(upstream_url: &str) -> String {
    sha256_hex(upstream_url.as_bytes())[..32].to_string()
}

/// File extension served for a dist type; only shapes the router accepts.
fn dist_extension(dist_type: &str) -> &str {
    if !dist_type.is_empty()
        && dist_type.len() <= 8
        && dist_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        dist_type
    } else {
        "bin"
    }
}

/// An upstream archive as the proxy serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedDist {
    /// [`dist_key`] of the upstream URL.
    pub key: String,
    /// The upstream URL, resolved.
    pub upstream_url: String,
    /// `<public_url>/dists/<vendor>/<name>/<key>.<ext>`.
    pub url: String,
}

/// Rewrites metadata for one proxy instance.
#[derive(Clone, Debug)]
pub struct Rewriter {
    /// Where this repository is served, without trailing slash.
    pub public_url: String,
    pub upstream: Url,
    /// Other origins whose dists the proxy fetches on this upstream's behalf.
    pub allowed_hosts: Vec<Url>,
    /// The GitHub API: its zipballs are fetched for every upstream (packagist.org's dists).
    /// `None` where GitHub dists are not the proxy's to serve (`lock migrate` in front of one
    /// flat upstream, which is repo.magento.com, not packagist.org).
    pub github_api: Option<Url>,
}

/// A package's metadata in every form the proxy serves, built once per upstream document.
#[derive(Debug)]
pub struct ProcessedPackage {
    /// Rewritten v1 per-package file (None for p2-native upstreams).
    pub v1: Option<Document>,
    /// p2 `name.json` (stable versions) and `name~dev.json`.
    pub p2: Document,
    pub p2_dev: Document,
    pub dists: Dists,
}

impl ProcessedPackage {
    pub fn weight(&self) -> u32 {
        let docs =
            self.v1.as_ref().map_or(0, Document::weight) + self.p2.weight() + self.p2_dev.weight();
        let dists = self.dists.len() * 256;
        u32::try_from(docs + dists).unwrap_or(u32::MAX)
    }
}

impl Rewriter {
    /// The upstream's own origin, one of its allowed hosts, or a GitHub zipball: the only places
    /// it fetches from.
    fn fetchable(&self, url: &Url) -> bool {
        std::iter::once(&self.upstream)
            .chain(&self.allowed_hosts)
            .any(|origin| same_origin(origin, url))
            || self
                .github_api
                .as_ref()
                .is_some_and(|api| super::github::zipball(api, url).is_some())
    }

    /// Points one version's dist (and notification URL) at the proxy and records where the
    /// archive really lives. Dists on other hosts are left alone: the proxy only fetches from
    /// its upstream. `merged`: the version is a difference Composer merges into the one before
    /// (in a minified file), where `"__unset"` removes a key.
    fn rewrite_version(&self, package: &str, version: &mut Value, merged: bool, dists: &mut Dists) {
        let Some(obj) = version.as_object_mut() else {
            return;
        };
        // The name becomes part of a URL path the router must accept.
        if !is_package_name(package) {
            return;
        }
        // Rewriting an `"__unset"` would give back a notification URL upstream took away.
        let removal = |v: &Value| merged && v.as_str() == Some(UNSET);
        if obj.get("notification-url").is_some_and(|v| !removal(v)) {
            obj.insert(
                "notification-url".into(),
                Value::String(self.notify_batch_url()),
            );
        }
        // Every entry has its own `version`, minified or not (it differs from the one before).
        // One archive named by several versions (a branch and its alias) is recorded under the
        // last of them.
        let version_name = obj
            .get("version")
            .and_then(Value::as_str)
            .map(str::to_string);
        let Some(dist) = obj.get_mut("dist").and_then(Value::as_object_mut) else {
            return;
        };
        let Some(url) = dist.get("url").and_then(Value::as_str) else {
            return;
        };
        let dist_type = dist.get("type").and_then(Value::as_str).unwrap_or("zip");
        let Some(proxied) = self.proxied_dist(package, url, dist_type) else {
            return;
        };
        let shasum = dist
            .get("shasum")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_ascii_lowercase);
        dists.insert(
            (package.to_string(), proxied.key),
            Arc::new(DistSource::new(
                package.to_string(),
                version_name,
                proxied.upstream_url,
                shasum.map(Checksum::Sha1),
                dist_type == "zip",
            )),
        );
        dist.insert("url".into(), Value::String(proxied.url));
        // Mirrors would send clients around the proxy.
        dist.remove("mirrors");
    }

    /// Where the proxy serves the archive of `package` that upstream publishes at `url`:
    /// `None` for a URL off the upstream's origin (the proxy never fetches those) or a name
    /// the router would not accept. Metadata rewriting and `lock migrate` both use this, so
    /// a migrated lock names exactly the URLs the proxy's own metadata would.
    pub fn proxied_dist(&self, package: &str, url: &str, dist_type: &str) -> Option<ProxiedDist> {
        if !is_package_name(package) {
            return None;
        }
        let parsed = self.upstream_url(url)?;
        let key = dist_key(parsed.as_str());
        let ext = dist_extension(dist_type);
        Some(ProxiedDist {
            url: format!("{}/dists/{package}/{key}.{ext}", self.public_url),
            key,
            upstream_url: parsed.to_string(),
        })
    }

    /// `url` resolved as Composer would, if it is on the upstream's origin or an allowed host.
    pub fn upstream_url(&self, url: &str) -> Option<Url> {
        canonicalize_url(&self.upstream, url).filter(|u| self.fetchable(u))
    }

    pub fn notify_batch_url(&self) -> String {
        format!("{}/downloads/", self.public_url)
    }

    /// Processes a verified v1 per-package file for `name`.
    pub fn process_v1_package(
        &self,
        name: &str,
        bytes: &[u8],
        last_modified: SystemTime,
    ) -> Result<ProcessedPackage, ProtocolError> {
        let mut json = parse_json(bytes, &format!("package file of {name}"))?;
        let packages = json
            .get_mut("packages")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                ProtocolError::Shape(format!("package file of {name} has no packages object"))
            })?;
        let mut dists = Dists::new();
        let mut stable = Vec::new();
        let mut dev = Vec::new();
        for (pkg_name, versions) in packages.iter_mut() {
            let pkg_lower = pkg_name.to_ascii_lowercase();
            for version in version_entries(versions) {
                self.rewrite_version(&pkg_lower, version, false, &mut dists);
                if pkg_lower == name {
                    if is_dev_version(version) {
                        dev.push(version.clone());
                    } else {
                        stable.push(version.clone());
                    }
                }
            }
        }
        Ok(ProcessedPackage {
            v1: Some(Document::from_json(&json, last_modified)),
            p2: Document::from_json(&p2_document(name, stable), last_modified),
            p2_dev: Document::from_json(&p2_document(name, dev), last_modified),
            dists,
        })
    }

    /// Processes a p2 file from a p2-native upstream (minified or not). Returns the rewritten
    /// document and the dists it names.
    pub fn process_p2_file(
        &self,
        name: &str,
        bytes: &[u8],
        last_modified: SystemTime,
    ) -> Result<(Document, Dists), ProtocolError> {
        let mut json = parse_json(bytes, &format!("p2 file of {name}"))?;
        let minified = json.get("minified").and_then(Value::as_str) == Some(MINIFIED);
        let mut dists = Dists::new();
        let Some(packages) = json.get_mut("packages").and_then(Value::as_object_mut) else {
            return Err(ProtocolError::Shape(format!(
                "p2 file of {name} has no packages object"
            )));
        };
        for (pkg_name, versions) in packages.iter_mut() {
            let pkg_lower = pkg_name.to_ascii_lowercase();
            // Rewriting each version as it stands is enough, minified or not: expansion is
            // shallow, so a dist is replaced whole or inherited already rewritten. Only which
            // versions are merged differences needs following (see `rewrite_version`).
            let mut expansion = Expansion::default();
            for version in version_entries(versions) {
                let merged = minified && expansion.merges();
                if minified {
                    // Where PHP would throw, Composer gets none of these versions anyway.
                    let _ = expansion.apply(version);
                }
                self.rewrite_version(&pkg_lower, version, merged, &mut dists);
            }
        }
        Ok((Document::from_json(&json, last_modified), dists))
    }

    /// The proxy's own `packages.json`.
    pub fn root_document(&self, root: &ProxyRoot<'_>, last_modified: SystemTime) -> Document {
        let p = &self.public_url;
        let mut out = Map::new();
        out.insert("packages".into(), Value::Array(Vec::new()));
        out.insert(
            "metadata-url".into(),
            Value::String(format!("{p}/p2/%package%.json")),
        );
        if let Some(names) = root.available_packages {
            out.insert(
                "available-packages".into(),
                Value::Array(names.iter().map(|n| Value::String(n.clone())).collect()),
            );
        }
        if let Some(patterns) = root.available_package_patterns {
            out.insert(
                "available-package-patterns".into(),
                Value::Array(patterns.iter().map(|n| Value::String(n.clone())).collect()),
            );
        }
        out.insert(
            "notify-batch".into(),
            Value::String(self.notify_batch_url()),
        );
        if root.search {
            out.insert(
                "search".into(),
                Value::String(format!("{p}/search.json?q=%query%&type=%type%")),
            );
        }
        if let Some(includes) = root.v1_includes {
            out.insert(
                "providers-url".into(),
                Value::String(format!("{p}/p/%package%$%hash%.json")),
            );
            let mut map = Map::new();
            for (template, hash) in includes {
                let mut meta = Map::new();
                meta.insert("sha256".into(), Value::String(hash.clone()));
                map.insert(template.clone(), Value::Object(meta));
            }
            out.insert("provider-includes".into(), Value::Object(map));
        }
        advertise_apis(&mut out, p, &[root.apis]);
        Document::from_json(&Value::Object(out), last_modified)
    }
}

/// What goes into the proxy's `packages.json`.
pub struct ProxyRoot<'a> {
    pub available_packages: Option<&'a [String]>,
    pub available_package_patterns: Option<&'a [String]>,
    /// Whether `search` is answered (from the known names).
    pub search: bool,
    /// Listing template → rewritten listing sha256, once the v1 chain is complete.
    pub v1_includes: Option<&'a [(String, String)]>,
    /// The upstream's APIs (advisories, filter lists, names), offered at the proxy.
    pub apis: &'a RootApis,
}

/// The versions of one package: Composer reads a map of them as the list of its values (and PHP
/// encodes an empty map as []).
fn version_entries(versions: &mut Value) -> Vec<&mut Value> {
    match versions {
        Value::Object(map) => map.values_mut().collect(),
        Value::Array(list) => list.iter_mut().collect(),
        _ => Vec::new(),
    }
}

fn p2_document(name: &str, versions: Vec<Value>) -> Value {
    let mut packages = Map::new();
    packages.insert(name.to_string(), Value::Array(versions));
    let mut out = Map::new();
    out.insert("packages".into(), Value::Object(packages));
    Value::Object(out)
}

/// A rewritten v1 listing naming the rewritten per-package hashes.
pub fn listing_document(entries: &BTreeMap<String, String>, last_modified: SystemTime) -> Document {
    let mut providers = Map::new();
    for (name, hash) in entries {
        let mut meta = Map::new();
        meta.insert("sha256".into(), Value::String(hash.clone()));
        providers.insert(name.clone(), Value::Object(meta));
    }
    let mut out = Map::new();
    out.insert("providers".into(), Value::Object(providers));
    Document::from_json(&Value::Object(out), last_modified)
}

/// repo.magento.com behind a proxy at `public_url`, for the unit tests of every module that
/// rewrites.
#[cfg(test)]
pub(crate) fn test_rewriter(public_url: &str) -> Rewriter {
    Rewriter {
        public_url: public_url.into(),
        upstream: Url::parse("https://repo.magento.com").expect("url"),
        allowed_hosts: Vec::new(),
        github_api: Some(Url::parse("https://api.github.com").expect("url")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composer::decode_body;
    use std::time::UNIX_EPOCH;

    fn rewriter() -> Rewriter {
        test_rewriter("https://proxy.example/magento")
    }

    const PACKAGE_FILE: &str = r#"{"packages":{"magento\/framework":{
        "103.0.7":{"name":"magento\/framework","version":"103.0.7","version_normalized":"103.0.7.0","uid":7,
            "dist":{"type":"zip","url":"https:\/\/repo.magento.com\/archives\/magento\/framework\/magento-framework-103.0.7.0.zip","reference":null,"shasum":"ABCDEF"}},
        "dev-2.4-develop":{"name":"magento\/framework","version":"dev-2.4-develop","version_normalized":"dev-2.4-develop","uid":8,
            "dist":{"type":"zip","url":"https:\/\/elsewhere.example\/x.zip","reference":"abc","shasum":""}},
        "103.0.8-dev":{"name":"magento\/framework","version":"103.0.8-dev","uid":9,"notification-url":"https:\/\/repo.magento.com\/downloads\/"}
    }}}"#;

    #[test]
    fn v1_package_is_split_into_stable_and_dev_p2_files_with_uid_kept() {
        let p = rewriter()
            .process_v1_package("magento/framework", PACKAGE_FILE.as_bytes(), UNIX_EPOCH)
            .expect("processes");
        let stable: Value = serde_json::from_slice(&p.p2.identity).expect("json");
        let dev: Value = serde_json::from_slice(&p.p2_dev.identity).expect("json");
        let stable = stable["packages"]["magento/framework"]
            .as_array()
            .expect("list");
        let dev = dev["packages"]["magento/framework"]
            .as_array()
            .expect("list");
        assert_eq!(stable.len(), 1);
        assert_eq!(stable[0]["version"], "103.0.7");
        assert_eq!(stable[0]["uid"], 7);
        let dev_versions: Vec<_> = dev.iter().map(|v| v["version"].clone()).collect();
        assert_eq!(dev_versions, ["dev-2.4-develop", "103.0.8-dev"]);
    }

    #[test]
    fn upstream_dists_point_at_the_proxy_and_foreign_ones_are_untouched() {
        let p = rewriter()
            .process_v1_package("magento/framework", PACKAGE_FILE.as_bytes(), UNIX_EPOCH)
            .expect("processes");
        let v1: Value = serde_json::from_slice(&p.v1.expect("v1").identity).expect("json");
        let versions = &v1["packages"]["magento/framework"];
        let url = versions["103.0.7"]["dist"]["url"].as_str().expect("url");
        let key = dist_key(
            "https://repo.magento.com/archives/magento/framework/magento-framework-103.0.7.0.zip",
        );
        assert_eq!(
            url,
            format!("https://proxy.example/magento/dists/magento/framework/{key}.zip")
        );
        assert_eq!(
            versions["dev-2.4-develop"]["dist"]["url"],
            "https://elsewhere.example/x.zip"
        );
        assert_eq!(
            versions["103.0.8-dev"]["notification-url"],
            "https://proxy.example/magento/downloads/"
        );
        let proxied = rewriter()
            .proxied_dist(
                "magento/framework",
                "https://repo.magento.com/archives/magento/framework/magento-framework-103.0.7.0.zip",
                "zip",
            )
            .expect("an upstream URL");
        assert_eq!(
            (proxied.key.as_str(), proxied.url.as_str()),
            (key.as_str(), url)
        );
        assert_eq!(
            rewriter().proxied_dist(
                "magento/framework",
                "https://elsewhere.example/x.zip",
                "zip"
            ),
            None
        );
        let source = &p.dists[&("magento/framework".to_string(), key)];
        assert_eq!(source.checksum(), Some(&Checksum::Sha1("abcdef".into())));
        assert_eq!(p.dists.len(), 1);
    }

    #[test]
    fn rewritten_documents_hash_matches_body_and_are_deterministic() {
        let a = rewriter()
            .process_v1_package("magento/framework", PACKAGE_FILE.as_bytes(), UNIX_EPOCH)
            .expect("processes");
        let b = rewriter()
            .process_v1_package("magento/framework", PACKAGE_FILE.as_bytes(), UNIX_EPOCH)
            .expect("processes");
        let (a, b) = (a.v1.expect("v1"), b.v1.expect("v1"));
        assert_eq!(a.sha256, sha256_hex(&a.identity));
        assert_eq!(a.sha256, b.sha256);
        let decoded = decode_body(a.gzip.clone(), Some("gzip"), 1 << 20).expect("gunzip");
        assert_eq!(decoded, a.identity);
    }

    #[test]
    fn an_archive_named_by_two_packages_is_found_under_each() {
        // Found by fuzzing: keyed by URL alone, the second package's entry replaced the
        // first's, and the first package's advertised URL answered 404.
        let body = br#"{"packages":{
            "acme/lib":[{"version":"1.0.0","dist":{"type":"zip","url":"/dl/shared.zip"}}],
            "acme/lib-alias":[{"version":"1.0.0","dist":{"type":"zip","url":"/dl/shared.zip"}}]}}"#;
        let (_, dists) = rewriter()
            .process_p2_file("acme/lib", body, UNIX_EPOCH)
            .expect("processes");
        let key = dist_key("https://repo.magento.com/dl/shared.zip");
        for package in ["acme/lib", "acme/lib-alias"] {
            let source = &dists[&(package.to_string(), key.clone())];
            assert_eq!(source.package, package);
            assert_eq!(source.url(), "https://repo.magento.com/dl/shared.zip");
        }
    }

    #[test]
    fn numbers_come_through_rewriting_unchanged() {
        // Found by fuzzing: parsed without serde_json's float_roundtrip, a float (or an
        // integer too large for 64 bits) came out off in its last digit, and again on every
        // pass through a rewriter.
        let body = br#"{"packages":{"acme/lib":[{"version":"1.0.0","extra":{
            "ratio":1.3333333333333333e+25,"big":13333333333333333333333333,"tenth":0.1}}]}}"#;
        let (doc, _) = rewriter()
            .process_p2_file("acme/lib", body, UNIX_EPOCH)
            .expect("processes");
        let json: Value = serde_json::from_slice(&doc.identity).expect("json");
        let extra = &json["packages"]["acme/lib"][0]["extra"];
        for (field, literal) in [
            ("ratio", "1.3333333333333333e+25"),
            ("big", "13333333333333333333333333"),
            ("tenth", "0.1"),
        ] {
            let exact: f64 = literal.parse().expect("a float literal");
            assert_eq!(extra[field].as_f64(), Some(exact), "{field}");
        }
        let (again, _) = rewriter()
            .process_p2_file("acme/lib", &doc.identity, UNIX_EPOCH)
            .expect("processes again");
        assert_eq!(doc.identity, again.identity);
    }

    #[test]
    fn p2_native_files_are_rewritten_in_place() {
        let body = br#"{"minified":"composer/2.0","packages":{"acme/lib":[
            {"name":"acme/lib","version":"1.0.0","dist":{"type":"zip","url":"https://repo.magento.com/dl/1.zip","shasum":""}},
            {"version":"1.0.1","dist":{"type":"zip","url":"https://repo.magento.com/dl/2.zip","shasum":""}}]}}"#;
        let (doc, dists) = rewriter()
            .process_p2_file("acme/lib", body, UNIX_EPOCH)
            .expect("processes");
        let json: Value = serde_json::from_slice(&doc.identity).expect("json");
        assert_eq!(json["minified"], "composer/2.0");
        assert_eq!(dists.len(), 2);
        assert!(json["packages"]["acme/lib"][1]["dist"]["url"]
            .as_str()
            .expect("url")
            .starts_with("https://proxy.example/magento/dists/acme/lib/"));
    }
}

//! Checks shared by the fuzz targets: what must hold for every document the proxy builds from
//! upstream bytes, whatever those bytes were.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use composer_proxy::composer::{self, is_package_name, Dists, Document, Rewriter};
use composer_proxy::routes::{parse_route, Route};
use serde_json::Value;
use url::Url;

/// The proxy's public URL in every target; it has a path prefix, so prefix handling is covered.
pub const PUBLIC_URL: &str = "https://proxy.example/magento";
/// The package the per-package documents are processed for; the seeds use it too.
pub const PACKAGE: &str = "magento/framework";
/// Fixed time for every built document: the fuzz targets compare bytes, not dates.
pub const EPOCH: SystemTime = UNIX_EPOCH;

/// The rewriter a proxy at [`PUBLIC_URL`] in front of repo.magento.com uses.
pub fn rewriter() -> Rewriter {
    Rewriter {
        public_url: PUBLIC_URL.into(),
        upstream: Url::parse("https://repo.magento.com").expect("a valid URL"),
        // packagist.org's dists on GitHub: rewriting must handle an allowed host too.
        allowed_hosts: vec![Url::parse("https://codeload.github.com").expect("a valid URL")],
        // GitHub zipballs are fetchable for every upstream.
        github_api: Some(Url::parse("https://api.github.com").expect("a valid URL")),
    }
}

/// A built document is valid JSON, its sha256 is over exactly its bytes, and its gzip form
/// decodes to those bytes: Composer checks the hash, and both forms are served.
pub fn check_document(doc: &Document) -> Value {
    assert_eq!(
        doc.sha256,
        composer::sha256_hex(&doc.identity),
        "sha256 of the body"
    );
    assert_eq!(
        doc.etag.to_str().expect("ASCII etag"),
        format!("\"{}\"", &doc.sha256[..32])
    );
    let decoded = composer::decode_body(doc.gzip.clone(), Some("gzip"), METADATA_LIMIT)
        .expect("gzip form decodes");
    assert_eq!(decoded, doc.identity, "gzip form is the same document");
    serde_json::from_slice(&doc.identity).expect("a built document is JSON")
}

/// Every version of every package in `packages` (a map or list of versions per package), with
/// the lower-cased package name it was filed under.
pub fn versions(packages: &Value) -> Vec<(String, &Value)> {
    let Some(map) = packages.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, versions) in map {
        let list: Vec<&Value> = match versions {
            Value::Object(m) => m.values().collect(),
            Value::Array(l) => l.iter().collect(),
            _ => Vec::new(),
        };
        out.extend(list.into_iter().map(|v| (name.to_ascii_lowercase(), v)));
    }
    out
}

/// Dists of a rewritten document against the upstream's: a version of a valid package whose
/// dist is on the upstream now points at the proxy (else Composer would go around it, without
/// credentials), under a URL that routes back to an archive the proxy recorded, for the same
/// package, keyed by the upstream URL; mirrors are gone. Every other dist is left as it was.
/// `upstream` and `rewritten` are `packages` objects of the same shape.
pub fn check_dists(rewriter: &Rewriter, upstream: &Value, rewritten: &Value, dists: &Dists) {
    let prefix = Url::parse(&rewriter.public_url)
        .expect("public URL")
        .path()
        .trim_end_matches('/')
        .to_string();
    let before = versions(upstream);
    let after = versions(rewritten);
    assert_eq!(before.len(), after.len(), "versions kept");
    for ((name, old), (renamed, new)) in before.into_iter().zip(after) {
        assert_eq!(name, renamed);
        let old_dist = old.get("dist");
        let upstream_url = old_dist
            .and_then(|d| d.get("url"))
            .and_then(Value::as_str)
            .filter(|_| old_dist.is_some_and(Value::is_object) && is_package_name(&name))
            .and_then(|url| rewriter.upstream_url(url));
        let Some(upstream_url) = upstream_url else {
            assert_eq!(old_dist, new.get("dist"), "a dist off the upstream is kept");
            continue;
        };
        let new_dist = &new["dist"];
        assert!(new_dist.get("mirrors").is_none(), "mirrors dropped");
        let url = new_dist["url"].as_str().expect("a rewritten dist URL");
        let path = url
            .strip_prefix(&rewriter.public_url)
            .filter(|p| p.starts_with("/dists/"))
            .unwrap_or_else(|| panic!("{upstream_url} became {url}, not under the proxy"));
        let route = parse_route(path, &prefix)
            .unwrap_or_else(|e| panic!("rewritten dist URL {url} does not route: {e:?}"));
        let Route::Dist { package, key } = route else {
            panic!("rewritten dist URL {url} routes to {route:?}");
        };
        assert_eq!(package, name, "{url} is filed under {name}");
        let source = dists
            .get(&(package, key.clone()))
            .unwrap_or_else(|| panic!("no recorded source for {url}"));
        assert_eq!(source.package, name);
        assert_eq!(source.url(), upstream_url.as_str());
        assert_eq!(
            key,
            composer::dist_key(source.url()),
            "key of {}",
            source.url()
        );
    }
    for source in dists.values() {
        if let Some(shasum) = source.checksum().and_then(|c| c.sha1()) {
            assert!(!shasum.is_empty() && *shasum == shasum.to_ascii_lowercase());
        }
    }
}

/// The proxy's default limit on a metadata answer, raw and decoded.
const METADATA_LIMIT: usize = composer_proxy::config::AnswerLimits::DEFAULT.metadata;

/// The bytes as upstream sent them, decoded as the upstream client would (gzip by magic bytes).
pub fn upstream_body(data: &[u8]) -> Option<Bytes> {
    composer::decode_body(Bytes::copy_from_slice(data), None, METADATA_LIMIT).ok()
}

/// Rewriting is idempotent: a document the proxy built, fed through again, comes out the same.
/// A proxy in front of another proxy (or a reprocessed cache entry) must not drift.
pub fn check_idempotent(first: &Document, second: &Document) {
    assert_eq!(
        String::from_utf8_lossy(&first.identity),
        String::from_utf8_lossy(&second.identity),
        "reprocessing a rewritten document changed it"
    );
}

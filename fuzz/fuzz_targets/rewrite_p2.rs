//! p2 metadata from a hostile or broken packagist-style upstream: the root (`metadata-url`,
//! `available-packages`) and a p2 file, minified or not, parsed and rewritten from the same
//! arbitrary bytes (gzip-decoded first when they look gzipped), and the root's advisory,
//! filter and list APIs. Never a panic; whatever is accepted comes out as a consistent,
//! routable, idempotent document.
#![no_main]

use composer_proxy::composer::{self, is_package_name, UpstreamRoot};
use composer_proxy_fuzz::{
    check_dists, check_document, check_idempotent, rewriter, upstream_body, EPOCH, PACKAGE,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some(body) = upstream_body(data) else {
        return;
    };
    let rewriter = rewriter();
    if let Ok(UpstreamRoot::P2 {
        available_packages: Some(names),
        ..
    }) = composer::parse_root(&body, &rewriter.upstream)
    {
        // Names end up in the proxy's own packages.json; they are only ever lower-cased.
        assert!(names
            .iter()
            .all(|n| !n.bytes().any(|b| b.is_ascii_uppercase())));
    }
    // The root's APIs: only what the proxy may fetch is kept, and only its own URLs advertised.
    let (apis, _) = composer::apis::parse_root_apis(&body, &rewriter.upstream)
        .reachable(|u| rewriter.upstream_url(u.as_str()).is_some());
    let filter = apis.filter.as_ref();
    let kept = [
        apis.advisories.as_ref().map(|a| &a.api_url),
        filter.and_then(|f| f.summary_url.as_ref()),
        filter.and_then(|f| f.api_url.as_ref()),
        apis.list.as_ref(),
    ];
    for url in kept.into_iter().flatten() {
        assert!(rewriter.upstream_url(url.as_str()).is_some(), "{url}");
    }
    let mut advertised = serde_json::Map::new();
    composer::apis::advertise_apis(&mut advertised, &rewriter.public_url, &[&apis]);
    let urls = [
        &advertised
            .get("security-advisories")
            .map(|a| a["api-url"].clone()),
        &advertised.get("filter").map(|f| f["api-url"].clone()),
        &advertised.get("filter").map(|f| f["summary-url"].clone()),
        &advertised.get("list").cloned(),
    ];
    for url in urls.into_iter().flatten().filter_map(Value::as_str) {
        assert!(url.starts_with(&rewriter.public_url), "{url}");
    }

    let Ok((doc, dists)) = rewriter.process_p2_file(PACKAGE, &body, EPOCH) else {
        return;
    };
    let upstream: Value = serde_json::from_slice(&body).expect("processed, so JSON");
    let json = check_document(&doc);
    check_dists(&rewriter, &upstream["packages"], &json["packages"], &dists);
    for ((package, key), source) in &dists {
        assert_eq!(*package, source.package, "{key}");
        assert!(is_package_name(package), "{package:?}");
    }
    let (again, _) = rewriter
        .process_p2_file(PACKAGE, &doc.identity, EPOCH)
        .expect("a rewritten p2 file processes again");
    check_idempotent(&doc, &again);
});

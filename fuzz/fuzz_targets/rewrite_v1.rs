//! v1 metadata from a hostile or broken upstream: the root (`packages.json` with
//! `provider-includes`), a provider listing and a per-package file are parsed and rewritten from
//! the same arbitrary bytes (gzip-decoded first when they look gzipped, as upstream bodies are).
//! Never a panic; whatever is accepted comes out as a consistent, routable, idempotent document.
#![no_main]

use composer_proxy::composer::{self, is_dev_version, is_package_name, UpstreamRoot};
use composer_proxy::routes::{parse_route, Route};
use composer_proxy_fuzz::{
    check_dists, check_document, check_idempotent, rewriter, upstream_body, versions, EPOCH,
    PACKAGE,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some(body) = upstream_body(data) else {
        return;
    };
    let rewriter = rewriter();
    if let Ok(UpstreamRoot::V1 { includes, .. }) = composer::parse_root(&body, &rewriter.upstream) {
        // The proxy serves each listing under the upstream's template, expanded with the
        // rewritten listing's sha256: that path must reach the listing route.
        let hash = "0123456789abcdef".repeat(4);
        for include in &includes {
            let path = include.path_for(&hash);
            assert_eq!(
                parse_route(&format!("/{path}"), ""),
                Ok(Route::V1Listing { path: path.clone() }),
                "listing template {:?}",
                include.template
            );
            assert!(include.sha256.bytes().all(|b| !b.is_ascii_uppercase()));
        }
    }

    if let Ok(entries) = composer::parse_listing(&body) {
        for (name, hash) in &entries {
            assert!(is_package_name(name), "{name:?}");
            assert!(!hash.bytes().any(|b| b.is_ascii_uppercase()), "{hash:?}");
        }
        let doc = composer::listing_document(&entries, EPOCH);
        check_document(&doc);
        let reread = composer::parse_listing(&doc.identity).expect("a built listing parses");
        assert_eq!(
            reread, entries,
            "a built listing names what it was built from"
        );
    }

    let Ok(package) = rewriter.process_v1_package(PACKAGE, &body, EPOCH) else {
        return;
    };
    let upstream: Value = serde_json::from_slice(&body).expect("processed, so JSON");
    let v1 = package
        .v1
        .as_ref()
        .expect("a v1 package file gives a v1 document");
    let v1_json = check_document(v1);
    check_dists(
        &rewriter,
        &upstream["packages"],
        &v1_json["packages"],
        &package.dists,
    );
    // The p2 files hold the package's rewritten versions, in order, split by stability.
    let mut split: Vec<Vec<Value>> = Vec::new();
    for doc in [&package.p2, &package.p2_dev] {
        let json = check_document(doc);
        let packages = json["packages"].as_object().expect("p2 packages object");
        assert_eq!(packages.keys().collect::<Vec<_>>(), [PACKAGE]);
        split.push(packages[PACKAGE].as_array().expect("a list").clone());
    }
    let (mut stable, mut dev) = (split[0].iter(), split[1].iter());
    for (name, version) in versions(&v1_json["packages"]) {
        if name == PACKAGE {
            let p2 = if is_dev_version(version) {
                dev.next()
            } else {
                stable.next()
            };
            assert_eq!(p2, Some(version), "p2 files follow the v1 document");
        }
    }
    assert_eq!(
        (stable.next(), dev.next()),
        (None, None),
        "no extra p2 versions"
    );

    let again = rewriter
        .process_v1_package(PACKAGE, &v1.identity, EPOCH)
        .expect("a rewritten package file processes again");
    check_idempotent(v1, again.v1.as_ref().expect("v1 document"));
    check_idempotent(&package.p2, &again.p2);
    check_idempotent(&package.p2_dev, &again.p2_dev);
});

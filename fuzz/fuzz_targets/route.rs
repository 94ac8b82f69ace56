//! Path normalisation and routing over arbitrary input: never a panic, and nothing accepted that
//! could reach the cache directory or the upstream as something other than what it names.
//!
//! Input: `prefix\npath`, or just `path` (empty prefix). The path is tried as given and as the
//! path hyper would hand the router after parsing a request target.
#![no_main]

use composer_proxy::composer::is_package_name;
use composer_proxy::routes::{is_release_file_name, normalize_path, parse_route, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (prefix, path) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let Ok(prefix) = std::str::from_utf8(prefix) else {
        return;
    };
    if let Ok(path) = std::str::from_utf8(path) {
        check(path, prefix);
    }
    // What reaches the router in production: the path of a parsed request target.
    if let Ok(uri) = http::Uri::try_from(path) {
        check(uri.path(), prefix);
    }
});

fn check(raw: &str, prefix: &str) {
    let normalized = normalize_path(raw);
    if let Ok(path) = &normalized {
        check_normalized(path);
        assert!(path.len() <= raw.len(), "decoding only shortens");
        assert_eq!(
            normalize_path(path).as_ref(),
            Ok(path),
            "normalising is idempotent"
        );
    }
    let route = parse_route(raw, prefix);
    match (&route, &normalized) {
        (Ok(route), Ok(_)) => check_route(route),
        // A path that does not normalise is refused as such, whatever the prefix.
        (_, Err(e)) => assert_eq!(route.as_ref(), Err(e), "{raw:?}"),
        (Err(_), Ok(_)) => {}
    }
    // The public URL's path prefix is optional in front of every route (DESIGN §1: Composer
    // drops it for templates starting with `/`), so both spellings must route alike.
    if let (Ok(unprefixed), Ok(path)) = (parse_route(raw, ""), &normalized) {
        let prefixed = format!("/magento{raw}");
        if prefixed.len() <= 1024 && !path.starts_with("/magento/") {
            assert_eq!(
                parse_route(&prefixed, "/magento").as_ref(),
                Ok(&unprefixed),
                "{raw:?} under the prefix"
            );
        }
    }
}

/// What a normalised path may contain: printable ASCII without `%` (nothing left to decode) or
/// `\`, starting with `/`, and no `.`/`..` segment.
fn check_normalized(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    for b in path.bytes() {
        assert!(
            (0x21..=0x7e).contains(&b) && b != b'%' && b != b'\\',
            "byte {b:#04x} in {path:?}"
        );
    }
    assert!(
        path.split('/').all(|s| s != "." && s != ".."),
        "dot segment in {path:?}"
    );
}

/// Every name or path a route carries is one the caches may use as a key or a file name.
fn check_route(route: &Route) {
    let _ = route.kind();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    match route {
        Route::P2 { file } => {
            let name = file.strip_suffix("~dev").unwrap_or(file);
            assert!(is_package_name(name), "{file:?}");
        }
        Route::V1Listing { path } => {
            assert!(
                path.starts_with("p/") && path.ends_with(".json"),
                "{path:?}"
            );
            check_normalized(&format!("/{path}"));
        }
        Route::V1Package { name, hash } => {
            assert!(is_package_name(name), "{name:?}");
            assert!(hex(hash, 64), "{hash:?}");
        }
        Route::Dist { package, key } => {
            assert!(is_package_name(package), "{package:?}");
            assert!(hex(key, 32), "{key:?}");
        }
        Route::ReleaseFile { name } => {
            // A plain file name: joined to the endpoint's `file/`, it must stay there.
            assert!(
                is_release_file_name(name) && !name.contains('/') && !name.contains(".."),
                "{name:?}"
            );
        }
        Route::ReleaseInfo { path } => {
            let segments: Vec<&str> = path.split('/').collect();
            assert!(
                matches!(
                    segments[0],
                    "help" | "files" | "versions" | "json" | "filter"
                ),
                "{path:?}"
            );
            assert!(segments.len() <= 4, "{path:?}");
            for segment in segments {
                assert!(
                    !segment.is_empty()
                        && segment
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric()
                                || matches!(b, b'.' | b'_' | b'-' | b'*'))
                        && segment != "."
                        && segment != "..",
                    "{path:?}"
                );
            }
        }
        Route::Root
        | Route::Notify
        | Route::Search
        | Route::Advisories
        | Route::FilterSummary
        | Route::FilterEntries
        | Route::List
        | Route::Health
        | Route::Ready
        | Route::Metrics
        | Route::Status
        | Route::StatusJson => {}
    }
}

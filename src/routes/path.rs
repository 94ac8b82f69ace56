//! Request paths, normalised and parsed into a [`Route`]: a pure function, tested here and
//! fuzzed (`fuzz/fuzz_targets/route.rs`).

use crate::composer;

/// Longest request path served; Composer's are well under 200 bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// One request kind per route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Root,
    /// `vendor/name` or `vendor/name~dev`.
    P2 {
        file: String,
    },
    /// A rewritten v1 listing, by its path below the root (`p/provider-ce$<hash>.json`).
    V1Listing {
        path: String,
    },
    V1Package {
        name: String,
        hash: String,
    },
    Dist {
        package: String,
        key: String,
    },
    Notify,
    Search,
    /// The security advisory API (POST).
    Advisories,
    /// The malware filter summary.
    FilterSummary,
    /// The malware filter API (POST).
    FilterEntries,
    /// The package name list.
    List,
    Health,
    Ready,
    Metrics,
    /// The status page, HTML.
    Status,
    /// The status page's facts, JSON.
    StatusJson,
    /// `releases/info/<path>` of the release-download endpoint: `help`, `files`, `versions`,
    /// `json`, or `filter/…`.
    ReleaseInfo {
        path: String,
    },
    /// `releases/file/<name>`: a plain file name (see [`is_release_file_name`]).
    ReleaseFile {
        name: String,
    },
}

impl Route {
    /// Fixed label for logs and metrics: never the path itself.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Root => "root",
            Route::P2 { .. } => "p2",
            Route::V1Listing { .. } => "v1_listing",
            Route::V1Package { .. } => "v1_package",
            Route::Dist { .. } => "archive",
            Route::Notify => "notify",
            Route::Search => "search",
            Route::Advisories => "advisories",
            Route::FilterSummary => "filter_summary",
            Route::FilterEntries => "filter",
            Route::List => "list",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Metrics => "metrics",
            Route::Status | Route::StatusJson => "status",
            Route::ReleaseInfo { .. } => "release_info",
            Route::ReleaseFile { .. } => "release_file",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    BadPath(&'static str),
    TooLong,
    NotFound,
}

/// Decodes the only escapes Composer produces (`%24` for `$`, and `%7E` for `~` from some
/// HTTP stacks) and refuses everything that could smuggle a separator or a second decoding.
pub fn normalize_path(raw: &str) -> Result<String, RouteError> {
    if !raw.starts_with('/') {
        return Err(RouteError::BadPath("path must start with /"));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(RouteError::TooLong);
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    // Only the bytes from the first one that needs a look (an escape, a backslash, anything
    // but printable ASCII) are taken one by one: most paths have none, and are copied whole.
    let plain = bytes
        .iter()
        .position(|&b| !matches!(b, 0x21..=0x7e) || b == b'%' || b == b'\\')
        .unwrap_or(bytes.len());
    out.push_str(&raw[..plain]);
    let mut i = plain;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let escape = raw.get(i + 1..i + 3).unwrap_or_default();
                match escape.to_ascii_lowercase().as_str() {
                    "24" => out.push('$'),
                    "7e" => out.push('~'),
                    _ => return Err(RouteError::BadPath("unexpected percent-encoding in path")),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(RouteError::BadPath("backslash in path")),
            0x21..=0x7e => out.push(b as char),
            _ => {
                return Err(RouteError::BadPath(
                    "control, space or non-ASCII byte in path",
                ))
            }
        }
        i += 1;
    }
    for segment in out.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return Err(RouteError::BadPath("dot segment in path"));
        }
    }
    Ok(out)
}

/// Parses a request path (with the public URL's path prefix, if any) into a route.
pub fn parse_route(raw: &str, prefix: &str) -> Result<Route, RouteError> {
    route_of(&below_prefix(normalize_path(raw)?, prefix))
}

/// A route and the upstream whose own repository it is in (`<public_url>/<name>/…`), if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub upstream: Option<String>,
    pub route: Route,
}

/// Parses a request path into a route of the merged repository, or of one upstream's own when
/// its first segment could be an upstream's name (whether one of that name is configured is
/// for the caller to say). The operational endpoints exist only at the top.
pub fn parse_target(raw: &str, prefix: &str) -> Result<Target, RouteError> {
    let path = below_prefix(normalize_path(raw)?, prefix);
    match route_of(&path) {
        Ok(route) => Ok(Target {
            upstream: None,
            route,
        }),
        Err(RouteError::NotFound) => {
            let (name, rest) = path[1..].split_once('/').ok_or(RouteError::NotFound)?;
            let is_name = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !is_name {
                return Err(RouteError::NotFound);
            }
            match route_of(&format!("/{rest}"))? {
                Route::Health
                | Route::Ready
                | Route::Metrics
                | Route::Status
                | Route::StatusJson
                | Route::ReleaseInfo { .. }
                | Route::ReleaseFile { .. } => Err(RouteError::NotFound),
                route => Ok(Target {
                    upstream: Some(name.to_string()),
                    route,
                }),
            }
        }
        Err(e) => Err(e),
    }
}

/// The path with the public URL's path prefix taken off, if it has it.
fn below_prefix(path: String, prefix: &str) -> String {
    match path.strip_prefix(prefix) {
        Some(rest) if !prefix.is_empty() && rest.starts_with('/') => rest.to_string(),
        _ => path,
    }
}

/// `vendor/project`, without going through `fmt` (this runs for every p2 file and archive).
fn package_name(vendor: &str, project: &str) -> String {
    let mut name = String::with_capacity(vendor.len() + 1 + project.len());
    name.push_str(vendor);
    name.push('/');
    name.push_str(project);
    name
}

/// The route of a normalised path below the prefix.
fn route_of(path: &str) -> Result<Route, RouteError> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    if segments.iter().rev().skip(1).any(|s| s.is_empty()) {
        return Err(RouteError::BadPath("empty segment in path"));
    }
    let route = match segments.as_slice() {
        ["packages.json"] => Route::Root,
        ["healthz"] => Route::Health,
        ["readyz"] => Route::Ready,
        ["metrics"] => Route::Metrics,
        ["status"] => Route::Status,
        ["status.json"] => Route::StatusJson,
        ["search.json"] => Route::Search,
        ["downloads"] | ["downloads", ""] => Route::Notify,
        ["api", "security-advisories"] | ["api", "security-advisories", ""] => Route::Advisories,
        ["api", "filter", "summary.json"] => Route::FilterSummary,
        ["api", "filter"] | ["api", "filter", ""] => Route::FilterEntries,
        ["packages", "list.json"] => Route::List,
        ["p2", vendor, file] => {
            let stem = file.strip_suffix(".json").ok_or(RouteError::NotFound)?;
            let (project, dev) = match stem.strip_suffix("~dev") {
                Some(p) => (p, true),
                None => (stem, false),
            };
            let name = package_name(vendor, project);
            if !composer::is_package_name(&name) {
                return Err(RouteError::NotFound);
            }
            Route::P2 {
                file: if dev { format!("{name}~dev") } else { name },
            }
        }
        ["p", vendor, file] if file.contains('$') => {
            let stem = file.strip_suffix(".json").ok_or(RouteError::NotFound)?;
            let (project, hash) = stem.rsplit_once('$').ok_or(RouteError::NotFound)?;
            let name = package_name(vendor, project);
            if composer::is_package_name(&name) && composer::is_hex_digest(hash, 64) {
                Route::V1Package {
                    name,
                    hash: hash.to_string(),
                }
            } else {
                return Err(RouteError::NotFound);
            }
        }
        ["p", ..] if path.ends_with(".json") => Route::V1Listing {
            path: path[1..].to_string(),
        },
        ["dists", vendor, project, file] => {
            let (key, ext) = file.split_once('.').ok_or(RouteError::NotFound)?;
            let name = package_name(vendor, project);
            let ext_ok = !ext.is_empty()
                && ext.len() <= 8
                && ext
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !composer::is_package_name(&name) || !composer::is_hex_digest(key, 32) || !ext_ok {
                return Err(RouteError::NotFound);
            }
            Route::Dist {
                package: name,
                key: key.to_string(),
            }
        }
        ["releases", "info", rest @ ..] => Route::ReleaseInfo {
            path: release_info_path(rest).ok_or(RouteError::NotFound)?,
        },
        ["releases", "file", name] if is_release_file_name(name) => Route::ReleaseFile {
            name: name.to_string(),
        },
        _ => return Err(RouteError::NotFound),
    };
    Ok(route)
}

/// The `info/…` sub-paths the release-download endpoint has: four plain documents, and
/// `filter/` with up to three segments of a conservative charset (versions, `*` wildcards).
fn release_info_path(segments: &[&str]) -> Option<String> {
    let filter_segment = |s: &&str| {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'))
    };
    match segments {
        [doc @ ("help" | "files" | "versions" | "json")] => Some(doc.to_string()),
        ["filter", rest @ ..]
            if (1..=3).contains(&rest.len()) && rest.iter().all(filter_segment) =>
        {
            Some(segments.join("/"))
        }
        _ => None,
    }
}

/// A release file name as the endpoint's are (`Magento-CE-2.4.6.tar.gz`): 1 to 128 letters,
/// digits, `.`, `_`, `-` and `+`, starting with a letter or digit, without `..`. Never a path.
pub fn is_release_file_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composer_paths_route() {
        assert_eq!(parse_route("/packages.json", ""), Ok(Route::Root));
        assert_eq!(
            parse_route("/p2/magento/framework.json", ""),
            Ok(Route::P2 {
                file: "magento/framework".into()
            })
        );
        assert_eq!(
            parse_route("/p2/magento/framework~dev.json", ""),
            Ok(Route::P2 {
                file: "magento/framework~dev".into()
            })
        );
        let hash = "a".repeat(64);
        for sep in ["$", "%24"] {
            assert_eq!(
                parse_route(&format!("/p/magento/framework{sep}{hash}.json"), ""),
                Ok(Route::V1Package {
                    name: "magento/framework".into(),
                    hash: hash.clone()
                })
            );
        }
        assert_eq!(
            parse_route(&format!("/p/provider-ce%24{hash}.json"), ""),
            Ok(Route::V1Listing {
                path: format!("p/provider-ce${hash}.json")
            })
        );
        let key = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_route(&format!("/dists/magento/framework/{key}.zip"), ""),
            Ok(Route::Dist {
                package: "magento/framework".into(),
                key: key.into()
            })
        );
        assert_eq!(parse_route("/downloads/", ""), Ok(Route::Notify));
    }

    #[test]
    fn the_api_urls_the_proxy_advertises_route() {
        use crate::composer::apis::{
            ADVISORIES_PATH, FILTER_API_PATH, FILTER_SUMMARY_PATH, LIST_PATH,
        };
        for (path, route) in [
            (ADVISORIES_PATH, Route::Advisories),
            (FILTER_SUMMARY_PATH, Route::FilterSummary),
            (FILTER_API_PATH, Route::FilterEntries),
            (LIST_PATH, Route::List),
        ] {
            assert_eq!(parse_route(path, ""), Ok(route.clone()), "{path}");
            assert_eq!(
                parse_target(&format!("/proxy/packagist{path}"), "/proxy"),
                Ok(Target {
                    upstream: Some("packagist".into()),
                    route
                }),
                "{path}"
            );
        }
    }

    #[test]
    fn path_prefix_of_the_public_url_is_accepted() {
        assert_eq!(
            parse_route("/magento/packages.json", "/magento"),
            Ok(Route::Root)
        );
        assert_eq!(parse_route("/packages.json", "/magento"), Ok(Route::Root));
    }

    #[test]
    fn traversal_and_odd_encodings_are_bad_requests() {
        for path in [
            "/p2/../etc/passwd.json",
            "/p2/%2e%2e/x.json",
            "/p2/a%2fb.json",
            "/p2/a%252fb.json",
            "/p2/a\\b.json",
            "/p2/a%00.json",
            "/p2/a%5cb.json",
            "/./packages.json",
            "/p2/a/b%2E%2E.json",
            "/p2/a/\u{e9}.json",
            "/p2/a b.json",
            "/p2/a/b.json%",
            "/p2/a/b\u{7f}.json",
            "/p2/a/b\t.json",
            "/p2/a/b.json\u{1f}",
        ] {
            assert!(
                matches!(parse_route(path, ""), Err(RouteError::BadPath(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn overlong_paths_are_too_long_not_just_bad() {
        let long = format!("/p2/magento/{}.json", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(parse_route(&long, ""), Err(RouteError::TooLong));
        let longest = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        assert_eq!(parse_route(&longest, ""), Err(RouteError::NotFound));
    }

    #[test]
    fn unknown_shapes_are_not_found() {
        for path in [
            "/",
            "/p2/Magento/Framework.json",
            "/p2/magento.json",
            "/dists/magento/framework/../x.zip",
            "/dists/magento/framework/nothex.zip",
            "/p/magento/framework$abc.json",
            "/archives/magento/x.zip",
        ] {
            assert!(parse_route(path, "").is_err(), "{path}");
        }
    }

    #[test]
    fn release_paths_route_strictly() {
        for (path, expected) in [
            ("/releases/info/help", "help"),
            ("/releases/info/json", "json"),
            (
                "/releases/info/filter/version/2.4.*",
                "filter/version/2.4.*",
            ),
        ] {
            assert_eq!(
                parse_route(path, ""),
                Ok(Route::ReleaseInfo {
                    path: expected.into()
                }),
                "{path}"
            );
        }
        assert_eq!(
            parse_route("/magento/releases/file/Magento-CE-2.4.6.tar.gz", "/magento"),
            Ok(Route::ReleaseFile {
                name: "Magento-CE-2.4.6.tar.gz".into()
            })
        );
        for path in [
            "/releases/info/",
            "/releases/info/other",
            "/releases/info/help/more",
            "/releases/info/filter",
            "/releases/info/filter/a/b/c/d",
            "/releases/info/filter/a:b",
            "/releases/file/",
            "/releases/file/a/b.zip",
            "/releases/file/.hidden",
            "/releases/file/-flag",
            "/releases/file/a..zip",
            "/releases/file/a$b.zip",
            "/releases/file/a~b.zip",
            "/releases/x",
        ] {
            assert!(parse_route(path, "").is_err(), "{path}");
        }
        assert!(matches!(
            parse_route("/releases/file/..", ""),
            Err(RouteError::BadPath(_))
        ));
        assert!(parse_route(&format!("/releases/file/{}", "a".repeat(129)), "").is_err());
        // Only at the top: not in an upstream's own repository.
        assert_eq!(
            parse_target("/magento/releases/info/help", ""),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn an_upstream_s_own_repository_is_below_its_name() {
        let hash = "b".repeat(64);
        assert_eq!(
            parse_target("/magento/packages.json", ""),
            Ok(Target {
                upstream: Some("magento".into()),
                route: Route::Root
            })
        );
        assert_eq!(
            parse_target(
                &format!("/proxy/hyva-1/p/provider-ce%24{hash}.json"),
                "/proxy"
            ),
            Ok(Target {
                upstream: Some("hyva-1".into()),
                route: Route::V1Listing {
                    path: format!("p/provider-ce${hash}.json")
                }
            })
        );
        assert_eq!(
            parse_target("/p2/magento/framework.json", ""),
            Ok(Target {
                upstream: None,
                route: Route::P2 {
                    file: "magento/framework".into()
                }
            })
        );
        // Operational endpoints only at the top; names follow the upstream name rule.
        assert_eq!(
            parse_target("/magento/healthz", ""),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            parse_target("/Magento/packages.json", ""),
            Err(RouteError::NotFound)
        );
        assert!(parse_target("/magento/../packages.json", "").is_err());
    }
}

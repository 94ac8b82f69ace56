//! The property the proxy's p2 rewriting must have: Composer, expanding a rewritten file by
//! MetadataMinifier's rules, reads exactly the upstream's versions with only the proxy's changes
//! (dists it fetches pointed at it without mirrors, notification URLs its own).

use std::time::UNIX_EPOCH;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use url::Url;

use super::tests::text;
use super::{expand, minify, PhpError, MINIFIED};
use crate::composer::{dist_key, is_package_name, test_rewriter, Dists, Rewriter};

const PROXY: &str = "https://proxy.example/magento";

/// repo.magento.com with packagist.org's dist host allowed.
fn rewriter() -> Rewriter {
    Rewriter {
        allowed_hosts: vec![Url::parse("https://codeload.github.com").expect("url")],
        ..test_rewriter(PROXY)
    }
}

/// Where a generated dist URL is fetched from, if the proxy fetches it (resolved by hand,
/// not by the rewriter under test).
fn fetched_from(url: &str) -> Option<String> {
    if url.starts_with('/') {
        return Some(format!("https://repo.magento.com{url}"));
    }
    ["https://repo.magento.com/", "https://codeload.github.com/"]
        .iter()
        .any(|origin| url.starts_with(origin))
        .then(|| url.to_string())
}

/// An upstream version as the proxy must serve it: a fetched dist at the proxy (recorded in
/// `dists`) without mirrors, any notification URL the proxy's.
fn proxied(version: &Value, package: &str, dists: &Dists) -> Value {
    let mut version = version.clone();
    let Some(obj) = version.as_object_mut().filter(|_| is_package_name(package)) else {
        return version;
    };
    if obj.contains_key("notification-url") {
        obj.insert(
            "notification-url".into(),
            json!(format!("{PROXY}/downloads/")),
        );
    }
    let Some(dist) = obj.get_mut("dist").and_then(Value::as_object_mut) else {
        return version;
    };
    let Some(source) = dist
        .get("url")
        .and_then(Value::as_str)
        .and_then(fetched_from)
    else {
        return version;
    };
    let key = dist_key(&source);
    let recorded = dists.get(&(package.to_string(), key.clone()));
    assert_eq!(recorded.map(|d| d.url()), Some(source.as_str()));
    let ext = if dist["type"] == "tar" { "tar" } else { "zip" };
    dist.insert(
        "url".into(),
        json!(format!("{PROXY}/dists/{package}/{key}.{ext}")),
    );
    dist.shift_remove("mirrors");
    version
}

/// The versions Composer reads from a p2 file: its values in order, expanded if minified.
fn composer_reads(file: &Value, package: &str) -> Result<Vec<Value>, PhpError> {
    let versions: Vec<Value> = match &file["packages"][package] {
        Value::Array(list) => list.clone(),
        Value::Object(map) => map.values().cloned().collect(),
        _ => Vec::new(),
    };
    if file["minified"] == MINIFIED {
        expand(&versions)
    } else {
        Ok(versions)
    }
}

/// How upstream lists the versions of a generated file.
#[derive(Clone, Copy, Debug)]
enum Upstream {
    /// Minified by MetadataMinifier, as packagist.org does.
    Minifies,
    /// Taken as minified as they are, whatever they hold.
    Minified,
    Whole,
}

/// The file's versions come out of the rewriter as Composer would read the upstream's with
/// only what the proxy must change changed.
fn rewriting_keeps_expansion(
    versions: &[Value],
    upstream: Upstream,
    keyed: bool,
    package: &str,
) -> Result<(), TestCaseError> {
    let entries = match upstream {
        Upstream::Minifies => match minify(versions) {
            Ok(minified) => minified,
            // PHP would have thrown: no such file is served.
            Err(_) => return Ok(()),
        },
        Upstream::Minified | Upstream::Whole => versions.to_vec(),
    };
    let listed = if keyed {
        let named = entries.into_iter().enumerate();
        Value::Object(named.map(|(i, v)| (format!("v{i}"), v)).collect())
    } else {
        Value::Array(entries)
    };
    let mut file = json!({ "packages": { package: listed } });
    if !matches!(upstream, Upstream::Whole) {
        file["minified"] = json!(MINIFIED);
    }
    let (doc, dists) = rewriter()
        .process_p2_file(package, file.to_string().as_bytes(), UNIX_EPOCH)
        .expect("a p2 file");
    let rewritten: Value = serde_json::from_slice(&doc.identity).expect("JSON");
    let expected = composer_reads(&file, package).map(|versions| {
        let name = package.to_ascii_lowercase();
        versions.iter().map(|v| proxied(v, &name, &dists)).collect()
    });
    prop_assert_eq!(text(&composer_reads(&rewritten, package)), text(&expected));
    Ok(())
}

/// Each field's values: few, so versions repeat them and the minifier leaves them out.
const FIELDS: &[(&str, &[&str])] = &[
    ("name", &[r#""acme/lib""#]),
    ("version", &[r#""1.0.0""#, r#""2.0.0""#, r#""dev-main""#]),
    (
        "dist",
        &[
            r#"{"type":"zip","url":"https://repo.magento.com/dl/a.zip","shasum":"AB"}"#,
            r#"{"url":"https://repo.magento.com/dl/a.zip","type":"zip","shasum":"AB"}"#,
            r#"{"type":"zip","url":"/dl/b.zip","mirrors":[{"url":"https://mirror.example/%package%.zip","preferred":true}]}"#,
            r#"{"type":"zip","url":"https://codeload.github.com/acme/lib/legacy.zip/abc","reference":"abc"}"#,
            r#"{"type":"tar","url":"https://elsewhere.example/c.tar","mirrors":[]}"#,
            r#"{"type":"zip","url":null}"#,
            "null",
            r#""__unset""#,
        ],
    ),
    (
        "notification-url",
        &[
            r#""https://repo.magento.com/downloads/""#,
            "null",
            r#""__unset""#,
        ],
    ),
    (
        "require",
        &[
            r#"{"php":">=8.1"}"#,
            r#"{"a/b":"^1.0","php":">=8.1"}"#,
            "{}",
            "[]",
        ],
    ),
    (
        "extra",
        &[
            "null",
            "1",
            "1.0",
            r#"{"x":{"y":[1,2]},"z":1}"#,
            r#"{"z":1,"x":{"y":[1,2]}}"#,
        ],
    ),
    (
        "source",
        &[r#"{"type":"git","url":"https://repo.magento.com/acme/lib.git"}"#],
    ),
];

fn version() -> impl Strategy<Value = Value> {
    let fields = prop::collection::vec((0..FIELDS.len(), 0..8usize), 0..10);
    let object = fields.prop_map(|picks| {
        let mut version = Map::new();
        for (field, pick) in picks {
            let (key, values) = FIELDS[field];
            let value = serde_json::from_str(values[pick % values.len()]).expect("JSON");
            version.insert(key.into(), value);
        }
        Value::Object(version)
    });
    let odd = [
        json!(null),
        json!([]),
        json!({}),
        json!(true),
        json!(0),
        json!("s"),
    ];
    prop_oneof![9 => object, 1 => prop::sample::select(odd.to_vec())]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rewritten_p2_files_expand_to_upstreams_versions_with_dists_at_the_proxy(
        versions in prop::collection::vec(version(), 0..10),
        upstream in prop::sample::select(vec![Upstream::Minifies, Upstream::Minified, Upstream::Whole]),
        keyed in any::<bool>(),
        package in prop::sample::select(vec!["acme/lib", "Acme/Lib", "acme"]),
    ) {
        rewriting_keeps_expansion(&versions, upstream, keyed, package)?;
    }
}

#[test]
fn a_notification_url_upstream_removes_stays_removed() -> Result<(), TestCaseError> {
    // Found by the property: the rewriter turned the `"__unset"` into its own URL.
    let versions = [
        json!({ "version": "2.0.0", "notification-url": "https://repo.magento.com/downloads/" }),
        json!({ "version": "1.0.0" }),
    ];
    rewriting_keeps_expansion(&versions, Upstream::Minifies, false, "acme/lib")
}

#[test]
fn versions_listed_as_a_map_are_rewritten() -> Result<(), TestCaseError> {
    // Found by the property: Composer reads such a map's values, the rewriter skipped it.
    let versions = [json!({ "dist": { "type": "zip", "url": "/dl/a.zip" } })];
    rewriting_keeps_expansion(&versions, Upstream::Whole, true, "acme/lib")
}

//! p2 files, minified or not, from a hostile or broken upstream: whatever Composer would read
//! from the upstream's bytes (expanded by MetadataMinifier's rules when the file says
//! `"minified": "composer/2.0"`), it reads from the proxy's rewrite of them with only the proxy's
//! changes: dists it fetches at the proxy (routable, recorded) without mirrors, notification
//! URLs its own. Expansion is shallow and in place rewriting has to respect it.
#![no_main]

use composer_proxy::composer::minify::{expand, PhpError, MINIFIED};
use composer_proxy::composer::{is_package_name, Rewriter};
use composer_proxy_fuzz::{check_dists, check_document, rewriter, upstream_body, EPOCH, PACKAGE};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Some(body) = upstream_body(data) else {
        return;
    };
    let rewriter = rewriter();
    let Ok((doc, dists)) = rewriter.process_p2_file(PACKAGE, &body, EPOCH) else {
        return;
    };
    let upstream: Value = serde_json::from_slice(&body).expect("processed, so JSON");
    let rewritten = check_document(&doc);
    let minified = upstream["minified"] == MINIFIED;
    assert_eq!(minified, rewritten["minified"] == MINIFIED);
    let (Some(before), Some(after)) = (
        upstream["packages"].as_object(),
        rewritten["packages"].as_object(),
    ) else {
        panic!("a processed p2 file has a packages object, and keeps it");
    };
    assert_eq!(before.len(), after.len(), "packages kept");
    for ((name, listed), (renamed, relisted)) in before.iter().zip(after) {
        assert_eq!(name, renamed);
        let package = name.to_ascii_lowercase();
        let read = composer_reads(listed, minified);
        let expected = read.clone().map(|versions| {
            let proxied = versions.iter().map(|v| proxied(&rewriter, &package, v));
            proxied.collect::<Vec<_>>()
        });
        let reread = composer_reads(relisted, minified);
        assert_eq!(text(&reread), text(&expected), "{name}");
        if let (Ok(read), Ok(reread)) = (read, reread) {
            check_dists(
                &rewriter,
                &json!({ name: read }),
                &json!({ name: reread }),
                &dists,
            );
        }
    }
});

/// The versions Composer reads of one package: a list's entries or a map's values, expanded
/// when the file is minified.
fn composer_reads(listed: &Value, minified: bool) -> Result<Vec<Value>, PhpError> {
    let versions: Vec<Value> = match listed {
        Value::Array(list) => list.clone(),
        Value::Object(map) => map.values().cloned().collect(),
        _ => Vec::new(),
    };
    if minified {
        expand(&versions)
    } else {
        Ok(versions)
    }
}

/// What the proxy must serve for a version Composer reads from upstream.
fn proxied(rewriter: &Rewriter, package: &str, version: &Value) -> Value {
    let mut version = version.clone();
    let Some(obj) = version.as_object_mut().filter(|_| is_package_name(package)) else {
        return version;
    };
    if obj.contains_key("notification-url") {
        obj.insert(
            "notification-url".into(),
            json!(rewriter.notify_batch_url()),
        );
    }
    let Some(dist) = obj.get_mut("dist").and_then(Value::as_object_mut) else {
        return version;
    };
    let dist_type = dist.get("type").and_then(Value::as_str).unwrap_or("zip");
    let at_proxy = dist
        .get("url")
        .and_then(Value::as_str)
        .and_then(|url| rewriter.proxied_dist(package, url, dist_type));
    if let Some(at_proxy) = at_proxy {
        dist.insert("url".into(), json!(at_proxy.url));
        dist.shift_remove("mirrors");
    }
    version
}

/// Key order matters to PHP (and `Value`'s `==` ignores it), so results compare as text.
fn text(read: &Result<Vec<Value>, PhpError>) -> String {
    match read {
        Ok(versions) => serde_json::to_string(versions).expect("serialises"),
        Err(e) => e.to_string(),
    }
}

//! packagist.org's APIs beside its metadata, for the packagist-like mock (`MockOptions::apis`):
//! security advisories (a POST of `packages[]=…`, answered from a fixed table for the names
//! asked), malware filter lists (a summary and a POST API) and the package name list. The
//! mock's `packages.json` names them with absolute URLs on its own origin, as packagist.org
//! does, plus a `providers-api` the proxy must not pass on.
//!
//! The table publishes advisories for names the magento upstream owns
//! (`magento/product-community-edition`, `vendorx/extension-a`), as packagist.org does for
//! Magento: a project served by the proxy must still be told about them.

use serde_json::{json, Map, Value};

pub const ADVISORIES_PATH: &str = "/api/security-advisories/";
pub const FILTER_SUMMARY_PATH: &str = "/filter/summary.json";
pub const FILTER_API_PATH: &str = "/api/filter/";
pub const LIST_PATH: &str = "/packages/list.json";

/// (package, advisoryId, affected versions, CVE).
pub const ADVISORIES: &[(&str, &str, &str, &str)] = &[
    (
        "magento/product-community-edition",
        "PKSA-mage-2024-1",
        ">=2.4.0,<2.4.8",
        "CVE-2024-34102",
    ),
    // Affects no version the project installs: Composer leaves it out, direct or not.
    (
        "magento/product-community-edition",
        "PKSA-mage-2019-1",
        "<2.3.0",
        "CVE-2019-8144",
    ),
    (
        "vendorx/extension-a",
        "PKSA-vndx-2024-1",
        ">=1.0.0,<1.2.0",
        "CVE-2024-11111",
    ),
    (
        "psr/log",
        "PKSA-psr-2023-1",
        ">=3.0.0,<3.0.1",
        "CVE-2023-22222",
    ),
    ("nobody/never-installed", "PKSA-none-1", "*", "CVE-2020-1"),
];

/// (list, package, constraint) of the malware filter list.
pub const FILTER: &[(&str, &str, &str)] = &[
    ("malware", "acme/evil", "*"),
    ("malware", "psr/log", "1.1.4"),
];

/// The `packages.json` keys naming the APIs, on the mock's origin `base`.
pub fn root_entries(base: &str) -> Map<String, Value> {
    let root = json!({
        "security-advisories": {"metadata": true, "api-url": format!("{base}{ADVISORIES_PATH}")},
        "filter": {
            "metadata": true,
            "lists": {"malware": {"enabled": true}},
            "summary-url": format!("{base}{FILTER_SUMMARY_PATH}"),
            "api-url": format!("{base}{FILTER_API_PATH}"),
        },
        "list": format!("{base}{LIST_PATH}"),
        "providers-api": format!("{base}/providers/%package%.json"),
    });
    root.as_object().cloned().unwrap_or_default()
}

/// The answer (status, JSON body) to a request of one of the APIs; `None` for any other path.
/// `names` are the names the mock serves, for the list.
pub fn answer(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    names: &[String],
) -> Option<(u16, Value)> {
    let reply = match (method, path) {
        ("POST", ADVISORIES_PATH) => {
            let asked: Vec<String> = url::form_urlencoded::parse(body)
                .filter(|(k, _)| k.starts_with("packages["))
                .map(|(_, v)| v.into_owned())
                .collect();
            let mut advisories = Map::new();
            for (package, id, range, cve) in ADVISORIES {
                if asked.iter().any(|a| a == package) {
                    let list = advisories.entry(package.to_string()).or_insert(json!([]));
                    if let Value::Array(list) = list {
                        list.push(advisory(package, id, range, cve));
                    }
                }
            }
            (200, json!({ "advisories": advisories }))
        }
        ("GET", FILTER_SUMMARY_PATH) => {
            let mut lists: Map<String, Value> = Map::new();
            for (list, package, constraint) in FILTER {
                let entry = lists.entry(list.to_string()).or_insert(json!({}));
                entry[*package] = json!(constraint);
            }
            (200, json!({ "filter": lists }))
        }
        ("POST", FILTER_API_PATH) => {
            let Ok(request) = serde_json::from_slice::<Value>(body) else {
                return Some((400, json!({"warning": "not JSON"})));
            };
            let asked = request["packages"].as_array().cloned().unwrap_or_default();
            let mut lists = Map::new();
            for (list, package, constraint) in FILTER {
                if asked.contains(&json!(format!("pkg://composer/{package}"))) {
                    let entry = json!({"package": package, "constraint": constraint,
                        "reason": "malware", "url": format!("https://example.org/{package}")});
                    let kept = lists.entry(list.to_string()).or_insert(json!([]));
                    if let Value::Array(kept) = kept {
                        kept.push(entry);
                    }
                }
            }
            (200, json!({ "filter": lists }))
        }
        ("GET", LIST_PATH) => {
            let vendor = url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "vendor")
                .map(|(_, v)| format!("{v}/"));
            let listed: Vec<&String> = names
                .iter()
                .filter(|n| vendor.as_ref().is_none_or(|v| n.starts_with(v.as_str())))
                .collect();
            (200, json!({ "packageNames": listed }))
        }
        _ => return None,
    };
    Some(reply)
}

/// One advisory as packagist.org's API writes it.
fn advisory(package: &str, id: &str, range: &str, cve: &str) -> Value {
    json!({
        "advisoryId": id,
        "packageName": package,
        "remoteId": format!("GHSA-{id}"),
        "title": format!("{cve} in {package}"),
        "link": format!("https://github.com/advisories/GHSA-{id}"),
        "cve": cve,
        "affectedVersions": range,
        "source": "GitHub",
        "reportedAt": "2024-06-11 15:00:00",
        "composerRepository": "https://packagist.org",
        "severity": "critical",
        "sources": [{"name": "GitHub", "remoteId": format!("GHSA-{id}")}],
    })
}

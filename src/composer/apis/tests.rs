use super::*;

fn repo() -> Url {
    Url::parse("https://repo.packagist.org").expect("url")
}

const PACKAGIST_ROOT: &str = r#"{"packages":[],"metadata-url":"/p2/%package%.json",
    "list":"https://packagist.org/packages/list.json",
    "providers-api":"https://packagist.org/providers/%package%.json",
    "security-advisories":{"metadata":true,"api-url":"https://packagist.org/api/security-advisories/"},
    "filter":{"metadata":true,"lists":{"malware":{"enabled":true}},
        "summary-url":"/filter/summary.json","api-url":"https://packagist.org/api/filter/"}}"#;

#[test]
fn root_apis_resolve_like_composer_and_unreachable_urls_are_named() {
    let apis = parse_root_apis(PACKAGIST_ROOT.as_bytes(), &repo());
    let advisories = apis.advisories.clone().expect("advisories");
    assert!(advisories.metadata);
    assert_eq!(
        advisories.api_url.as_str(),
        "https://packagist.org/api/security-advisories/"
    );
    let filter = apis.filter.clone().expect("filter");
    assert_eq!(
        filter.summary_url.as_ref().map(Url::as_str),
        Some("https://repo.packagist.org/filter/summary.json")
    );
    assert_eq!(
        apis.list.as_ref().map(Url::as_str),
        Some("https://packagist.org/packages/list.json")
    );

    // Without packagist.org among the allowed hosts only the summary (on the origin) stays.
    let (kept, refused) = apis
        .clone()
        .reachable(|u| u.host_str() == Some("repo.packagist.org"));
    assert!(kept.advisories.is_none() && kept.list.is_none());
    let filter = kept.filter.expect("filter kept");
    assert!(filter.api_url.is_none() && filter.summary_url.is_some());
    let keys: Vec<&str> = refused.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        ["security-advisories.api-url", "filter.api-url", "list"]
    );
    let (all, none) = apis.clone().reachable(|_| true);
    assert_eq!((all, none.len()), (apis, 0));

    // No api-url: nothing the proxy could ask; a root that is not JSON offers nothing.
    let bare = br#"{"security-advisories":{"metadata":true}}"#;
    assert!(parse_root_apis(bare, &repo()).advisories.is_none());
    assert_eq!(parse_root_apis(b"nope", &repo()), RootApis::default());
}

#[test]
fn the_proxy_advertises_its_own_urls_merged_across_upstreams() {
    let packagist = parse_root_apis(PACKAGIST_ROOT.as_bytes(), &repo());
    let vendor_root = r#"{"security-advisories":{"metadata":false,"api-url":"/api/advisories"},
        "filter":{"lists":{"malware":{"enabled":false,"x":1},"vendor-list":{"enabled":false}},
        "api-url":"/api/filter"}}"#;
    let vendor = parse_root_apis(vendor_root.as_bytes(), &repo());
    let mut root = Map::new();
    advertise_apis(
        &mut root,
        "https://proxy.example/composer",
        &[&vendor, &packagist],
    );
    assert_eq!(
        Value::Object(root),
        json!({
            "security-advisories": {"metadata": true,
                "api-url": "https://proxy.example/composer/api/security-advisories/"},
            "filter": {"metadata": true,
                "lists": {"malware": {"enabled": true, "x": 1}, "vendor-list": {"enabled": false}},
                "summary-url": "https://proxy.example/composer/api/filter/summary.json",
                "api-url": "https://proxy.example/composer/api/filter/"},
            "list": "https://proxy.example/composer/packages/list.json",
        })
    );
    let mut root = Map::new();
    advertise_apis(&mut root, "https://p", &[&RootApis::default()]);
    assert!(root.is_empty(), "{root:?}");
}

#[test]
fn advisory_requests_read_php_form_bodies() {
    let body = b"packages%5B0%5D=Magento%2FProduct-Community-Edition&packages%5B1%5D=psr%2Flog\
        &packages[]=psr/log&packages[]=php&packages[x]=a/b&other=c/d";
    assert_eq!(
        advisory_request(body).expect("parses"),
        ["magento/product-community-edition", "psr/log"]
    );
    assert_eq!(advisory_request(b"packages[]=php"), Ok(Vec::new()));
    for bad in [&b""[..], b"q=a/b", b"packages[]=\xff"] {
        assert!(advisory_request(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn filter_requests_take_composer_package_urls() {
    let body = br#"{"packages":["pkg://composer/Acme/Evil","pkg:composer/psr/log","npm/x",7],
        "lists":["malware"]}"#;
    let (names, lists) = filter_request(body).expect("parses");
    assert_eq!(names, ["acme/evil", "psr/log"]);
    assert_eq!(lists, ["malware"]);
    assert!(filter_request(b"packages[]=a/b").is_err());
    assert!(filter_request(br#"{"lists":[]}"#).is_err());
    assert_eq!(
        filter_upstream_request(&names, &lists),
        json!({"packages": ["pkg://composer/acme/evil", "pkg://composer/psr/log"],
            "lists": ["malware"]})
    );
}

fn advisory(id: &str) -> Value {
    json!({"advisoryId": id, "title": id, "affectedVersions": "*"})
}

#[test]
fn advisories_of_several_upstreams_are_concatenated_once_each() {
    let first = advisory_answer(&json!({"advisories": {
        "Magento/Product-Community-Edition": [advisory("PKSA-1")],
        "psr/log": [],
        "odd/shape": {"x": 1},
    }}))
    .expect("parses");
    let second = advisory_answer(&json!({"advisories": {
        "magento/product-community-edition": [advisory("PKSA-1"), advisory("PKSA-2")],
    }}))
    .expect("parses");
    assert_eq!(
        advisory_answer(&json!({"advisories": []})),
        Ok(BTreeMap::new())
    );
    assert!(advisory_answer(&json!({"warning": "x"})).is_err());
    let names: Vec<String> = ["magento/product-community-edition", "psr/log", "a/b"]
        .map(String::from)
        .into();
    assert_eq!(
        merge_advisories(&names, &[first, second]),
        json!({"advisories": {
            "magento/product-community-edition": [advisory("PKSA-1"), advisory("PKSA-2")],
            "psr/log": [],
        }})
    );
}

#[test]
fn filter_summaries_merge_with_either_constraint() {
    let a = filter_summary(&json!({"filter": {"malware": {"Acme/Evil": "*", "x/y": "1.0.0"}}}))
        .expect("parses");
    let b = filter_summary(
        &json!({"filter": {"malware": {"acme/evil": "*", "x/y": "2.0.0"},
        "other": {"p/q": "<1"}}}),
    )
    .expect("parses");
    assert!(filter_summary(&json!({"filter": {"malware": ["acme/evil"]}})).is_err());
    assert_eq!(filter_summary(&json!({"filter": []})), Ok(json!({})));
    assert_eq!(
        merge_filter_summaries(&[a, b]),
        json!({"filter": {
            "malware": {"acme/evil": "*", "x/y": "1.0.0 || 2.0.0"},
            "other": {"p/q": "<1"},
        }})
    );
}

#[test]
fn filter_entries_are_regrouped_by_name_and_merged_per_list() {
    let evil = json!({"package": "acme/evil", "constraint": "*", "reason": "malware"});
    let a = filter_answer(&json!({"filter": {
        "malware": [evil, {"constraint": "*"}],
        "other": [{"package": "psr/log", "constraint": "<1"}],
    }}))
    .expect("parses");
    assert!(a["acme/evil"]["malware"].is_array());
    let from_summary = entries_from_summary(
        &json!({"malware": {"acme/evil": "1.0.0"}}),
        &["acme/evil".to_string(), "psr/log".to_string()],
    );
    let names = ["acme/evil".to_string(), "psr/log".to_string()];
    let merged = merge_filter_entries(&names, &["malware".to_string()], &[a.clone(), from_summary]);
    assert_eq!(
        merged,
        json!({"filter": {"malware": [evil, {"package": "acme/evil", "constraint": "1.0.0"}]}})
    );
    let all = merge_filter_entries(&names, &[], &[a]);
    assert_eq!(all["filter"]["other"][0]["package"], "psr/log");
    assert!(filter_answer(&json!({"advisories": {}})).is_err());
}

#[test]
fn list_queries_are_canonical_and_match_like_composer() {
    let q = ListQuery::parse("vendor=Magento&x=1&filter=magento%2Fmodule-*");
    assert_eq!(q.canonical(), "filter=magento%2Fmodule-*&vendor=magento");
    assert!(q.matches("magento/module-catalog"));
    assert!(!q.matches("magento/framework"));
    assert!(!q.matches("magentox/module-a"));
    let any = ListQuery::parse("");
    assert_eq!(any.canonical(), "");
    assert!(any.matches("a/b"));
    assert!(!ListQuery::parse("type=library").matches("a/b"));
    for (pattern, name, expected) in [
        ("*", "a/b", true),
        ("a/*-b*", "a/x-b-y", true),
        ("*/log", "psr/log", true),
        ("*/log", "psr/logger", false),
        ("psr/log", "psr/log", true),
        ("psr/l*g*r", "psr/logger", true),
        ("a*a", "a", false),
    ] {
        assert_eq!(glob_matches(pattern, name), expected, "{pattern} {name}");
    }
    assert_eq!(
        list_answer(&json!({"packageNames": ["A/B", 3, "c/d"]})),
        Ok(vec!["a/b".to_string(), "c/d".to_string()])
    );
}

//! Security advisories and malware filter lists ("packagist.org through the proxy"): `composer
//! audit` through the proxy reports what it reports going straight to the three
//! mocks, including packagist's advisories for names the magento upstream owns; answers are
//! remembered, served from the last answer while packagist is down, and a 5xx naming it when
//! there is none. Composer here is 2.5.5, which has no filter lists, so those are checked with
//! plain requests, like the name list.

use super::*;
use bytes::Bytes;
use http::Method;
use support::advisories::{self, ADVISORIES_PATH};
use support::proxy::{post_form, request, Reply};

/// (package, advisoryId) of every advisory `composer audit --format=json` reports, and its
/// exit status (the number of affected packages).
fn audited(project: &ComposerProject) -> (BTreeSet<(String, String)>, Option<i32>) {
    let output = blocking(|| project.run(&["audit", "--format=json"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "audit output is not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let mut found = BTreeSet::new();
    for (name, list) in json["advisories"].as_object().into_iter().flatten() {
        // PHP keeps the keys of a filtered list, so it may come as an object.
        let items: Vec<&Value> = match list {
            Value::Array(items) => items.iter().collect(),
            Value::Object(items) => items.values().collect(),
            _ => Vec::new(),
        };
        for item in items {
            let id = item["advisoryId"].as_str().unwrap_or_default();
            found.insert((name.clone(), id.to_string()));
        }
    }
    (found, output.status.code())
}

fn x_cache(reply: &Reply) -> &str {
    reply
        .headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn pair(name: &str, id: &str) -> (String, String) {
    (name.to_string(), id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composer_audit_through_the_proxy_reports_what_going_direct_reports() {
    let up = Upstreams::start(MODULES).await;
    let proxy = up.proxy(HyvaSecrets::InToml, &[]).await;

    // The merged root and packagist's own offer the APIs at the proxy; magento's offers none.
    let root = get(&format!("{}/packages.json", proxy.url)).await.json();
    let advisories = &root["security-advisories"];
    assert_eq!(advisories["metadata"], true, "{root}");
    assert_eq!(
        advisories["api-url"],
        format!("{}{ADVISORIES_PATH}", proxy.url)
    );
    assert_eq!(
        root["filter"]["summary-url"],
        format!("{}/api/filter/summary.json", proxy.url)
    );
    assert_eq!(
        root["filter"]["api-url"],
        format!("{}/api/filter/", proxy.url)
    );
    assert_eq!(root["filter"]["lists"]["malware"]["enabled"], true);
    assert_eq!(root["list"], format!("{}/packages/list.json", proxy.url));
    assert!(root.get("providers-api").is_none(), "{root}");
    let own = get(&format!("{}/packagist/packages.json", proxy.url))
        .await
        .json();
    assert_eq!(
        own["security-advisories"]["api-url"],
        format!("{}/packagist{ADVISORIES_PATH}", proxy.url)
    );
    let magento = get(&format!("{}/magento/packages.json", proxy.url))
        .await
        .json();
    assert!(magento.get("security-advisories").is_none(), "{magento}");

    // Straight to the mocks: packagist answers for every installed name, magento's included.
    let direct = up.direct_project(PROJECT);
    composer(&direct, &["update", "--no-progress"]);
    let (expected, direct_status) = audited(&direct);
    for (name, id) in [
        (PRODUCT, "PKSA-mage-2024-1"),
        (EXTENSION, "PKSA-vndx-2024-1"),
        ("psr/log", "PKSA-psr-2023-1"),
    ] {
        assert!(expected.contains(&pair(name, id)), "{id}: {expected:?}");
    }
    assert!(!expected.contains(&pair(PRODUCT, "PKSA-mage-2019-1")));

    for u in up.all() {
        u.mock.reset_counts();
    }
    let project = ComposerProject::new(&proxy.url, PROJECT);
    composer(&project, &["update", "--no-progress"]);
    let (through_proxy, status) = audited(&project);
    assert_eq!(through_proxy, expected);
    assert_eq!(status, direct_status);
    let direct_calls: Vec<_> = callers(&up).into_iter().filter(|c| c.2).collect();
    assert!(
        direct_calls.is_empty(),
        "Composer called a mock: {direct_calls:?}"
    );
    // The proxy asked packagist about the magento-owned product.
    let asked = up
        .packagist
        .mock
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == ADVISORIES_PATH)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect::<Vec<_>>()
        .join("&");
    assert!(
        asked.contains("magento%2Fproduct-community-edition"),
        "{asked}"
    );

    // Remembered: asking again costs packagist nothing.
    let before = up.packagist.mock.count(ADVISORIES_PATH);
    let url = format!("{}{ADVISORIES_PATH}", proxy.url);
    let again = post_form(&url, "packages%5B0%5D=magento%2Fproduct-community-edition").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(x_cache(&again), "HIT");
    let again = again.json();
    let ids: Vec<&str> = again["advisories"][PRODUCT]
        .as_array()
        .expect("the product's advisories")
        .iter()
        .filter_map(|a| a["advisoryId"].as_str())
        .collect();
    assert_eq!(ids, ["PKSA-mage-2024-1", "PKSA-mage-2019-1"]);
    assert_eq!(up.packagist.mock.count(ADVISORIES_PATH), before);

    let metrics = get(&format!("{}/metrics", proxy.url)).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for sample in [
        r#"composer_proxy_upstream_requests_total{upstream="packagist",kind="advisories",outcome="ok"}"#,
        r#"composer_proxy_requests_total{route="advisories",status="2xx",cache="HIT"}"#,
    ] {
        assert!(text.contains(sample), "no {sample} in\n{text}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_packagist_down_its_last_answers_are_served_and_never_answered_ones_are_5xx() {
    let up = Upstreams::start(MODULES).await;
    // Answers turn stale within a second, so the requests below meet the stopped upstream.
    let proxy = up
        .proxy(
            HyvaSecrets::InToml,
            &[("COMPOSER_PROXY_ADVISORIES_TTL_SECS", "1")],
        )
        .await;
    let advisories_url = format!("{}{ADVISORIES_PATH}", proxy.url);
    let summary_url = format!("{}/api/filter/summary.json", proxy.url);
    let known = "packages[]=magento/product-community-edition&packages[]=psr/log";
    let first = post_form(&advisories_url, known).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.warning());
    assert_eq!(x_cache(&first), "MISS");
    let first = first.json();
    assert!(first["advisories"]["psr/log"].is_array(), "{first}");
    let summary = get(&summary_url).await;
    assert_eq!(summary.status, StatusCode::OK);
    let summary = summary.json();
    assert_eq!(summary["filter"]["malware"]["acme/evil"], "*", "{summary}");

    up.packagist.mock.stop().await;
    let stale = poll("advisories served from the last answer", async || {
        let reply = post_form(&advisories_url, known).await;
        (reply.status == StatusCode::OK && x_cache(&reply) == "STALE")
            .then(|| reply.json())
            .ok_or(format!(
                "HTTP {}, X-Cache {:?}",
                reply.status,
                x_cache(&reply)
            ))
    })
    .await;
    assert_eq!(stale, first);
    let summary_stale = poll("the filter summary served stale", async || {
        let reply = get(&summary_url).await;
        (reply.status == StatusCode::OK && x_cache(&reply) == "STALE")
            .then(|| reply.json())
            .ok_or(format!(
                "HTTP {}, X-Cache {:?}",
                reply.status,
                x_cache(&reply)
            ))
    })
    .await;
    assert_eq!(summary_stale, summary);

    // Never answered for: a 5xx naming packagist, never an empty answer.
    for (what, reply) in [
        (
            "advisories",
            post_form(&advisories_url, "packages[]=nobody/never-installed").await,
        ),
        (
            "the name list",
            get(&format!("{}/packages/list.json?vendor=psr", proxy.url)).await,
        ),
    ] {
        assert!(
            [502, 503, 504].contains(&reply.status.as_u16()),
            "{what}: HTTP {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        assert!(reply.warning().contains("packagist"), "{}", reply.warning());
    }
    // magento offers no advisories: its own repository answers, with none.
    let magento = post_form(
        &format!("{}/magento{ADVISORIES_PATH}", proxy.url),
        "packages[]=nobody/never-installed",
    )
    .await;
    assert_eq!(magento.status, StatusCode::OK);
    assert_eq!(magento.json(), serde_json::json!({"advisories": {}}));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_lists_and_the_name_list_are_merged_and_bad_requests_refused() {
    let up = Upstreams::start(MODULES).await;
    let proxy = up.proxy(HyvaSecrets::InToml, &[]).await;

    let body = serde_json::json!({"packages": ["pkg://composer/acme/evil",
        "pkg://composer/psr/log", "pkg://composer/magento/framework"], "lists": ["malware"]});
    let entries = request(
        Method::POST,
        &format!("{}/api/filter/", proxy.url),
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(entries.status, StatusCode::OK);
    let entries = entries.json();
    let malware = entries["filter"]["malware"].as_array().expect("entries");
    let flagged: BTreeSet<&str> = malware
        .iter()
        .filter_map(|e| e["package"].as_str())
        .collect();
    assert_eq!(
        flagged,
        BTreeSet::from(["acme/evil", "psr/log"]),
        "{entries}"
    );
    assert!(
        malware.iter().all(|e| e["reason"] == "malware"),
        "{entries}"
    );

    // magento's and hyva's names from their listings, packagist's from its list API.
    let names = |reply: Reply| -> BTreeSet<String> {
        let json = reply.json();
        json["packageNames"]
            .as_array()
            .unwrap_or_else(|| panic!("no packageNames: {json}"))
            .iter()
            .filter_map(|n| n.as_str().map(String::from))
            .collect()
    };
    let magento = names(get(&format!("{}/packages/list.json?vendor=magento", proxy.url)).await);
    for name in [
        PRODUCT,
        "magento/framework",
        "magento/magento-composer-installer",
    ] {
        assert!(magento.contains(name), "{name}: {magento:?}");
    }
    assert!(
        magento.iter().all(|n| n.starts_with("magento/")),
        "{magento:?}"
    );
    let all = names(get(&format!("{}/packages/list.json", proxy.url)).await);
    for name in [THEME, "psr/log", PRODUCT] {
        assert!(all.contains(name), "{name}");
    }
    let listed = up.packagist.mock.requests();
    assert!(
        listed
            .iter()
            .any(|r| r.raw_path_and_query == format!("{}?vendor=magento", advisories::LIST_PATH)),
        "packagist's list was not asked with the query"
    );

    let url = format!("{}{ADVISORIES_PATH}", proxy.url);
    let bad = post_form(&url, "q=psr/log").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.warning());
    let wrong_method = get(&url).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers["allow"], "POST");
    proxy.stop().await;
}

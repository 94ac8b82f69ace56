use super::*;

fn answer(items: &[&str], value: &str) -> BTreeMap<String, Value> {
    items
        .iter()
        .map(|i| (i.to_string(), json!([value])))
        .collect()
}

fn down() -> ProxyError {
    ProxyError::Upstream(UpstreamError::Unreachable("refused".into()))
}

fn items(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn fresh_answers_are_not_asked_again_and_only_missing_items_are_asked() {
    let cache = ApiCache::new(Duration::from_secs(600));
    let name: Arc<str> = Arc::from("packagist");
    let first = cache
        .lookup(
            &name,
            Api::Advisories,
            &items(&["a/b"]),
            |asked| async move {
                assert_eq!(asked, ["a/b"]);
                Ok(answer(&["a/b"], "one"))
            },
        )
        .await
        .expect("answered");
    assert_eq!(first.cache, CacheStatus::Miss);
    assert_eq!(first.by_item["a/b"], json!(["one"]));
    let second = cache
        .lookup(
            &name,
            Api::Advisories,
            &items(&["a/b", "c/d"]),
            |asked| async move {
                assert_eq!(asked, ["c/d"], "a/b is fresh");
                Ok(BTreeMap::new())
            },
        )
        .await
        .expect("answered");
    assert_eq!(second.by_item["a/b"], json!(["one"]));
    assert_eq!(
        second.by_item["c/d"],
        Value::Null,
        "left out: remembered as none"
    );
    let hit = cache
        .lookup(&name, Api::Advisories, &items(&["a/b", "c/d"]), |_| async {
            Err::<BTreeMap<String, Value>, _>(down())
        })
        .await
        .expect("all fresh: upstream not asked");
    assert_eq!(hit.cache, CacheStatus::Hit);
    // Per upstream and API: the same item elsewhere is not known.
    let other: Arc<str> = Arc::from("vendor");
    let e = cache
        .lookup(&other, Api::Advisories, &items(&["a/b"]), |_| async {
            Err::<BTreeMap<String, Value>, _>(down())
        })
        .await;
    assert!(e.is_err());
}

#[tokio::test]
async fn a_failing_upstream_is_answered_for_from_its_last_answer_or_is_an_error_naming_it() {
    // Nothing is ever fresh: every lookup asks.
    let cache = ApiCache::new(Duration::ZERO);
    let name: Arc<str> = Arc::from("packagist");
    cache
        .lookup(&name, Api::Advisories, &items(&["a/b"]), |_| async {
            Ok(answer(&["a/b"], "one"))
        })
        .await
        .expect("answered");
    let stale = cache
        .lookup(&name, Api::Advisories, &items(&["a/b"]), |_| async {
            Err::<BTreeMap<String, Value>, _>(down())
        })
        .await
        .expect("the last answer");
    assert_eq!(stale.cache, CacheStatus::Stale);
    assert_eq!(stale.by_item["a/b"], json!(["one"]));

    let never = cache
        .lookup(&name, Api::Advisories, &items(&["a/b", "c/d"]), |_| async {
            Err::<BTreeMap<String, Value>, _>(down())
        })
        .await;
    let Err(e) = never else {
        panic!("c/d was never answered for")
    };
    assert!(e.status().is_server_error(), "{e}");
    assert!(e.to_string().contains("packagist"), "{e}");
    // Not found upstream is still "could not ask", never a 404 to the client.
    let missing = ProxyError::UpstreamNotFound {
        what: Resource::Metadata,
        detail: "x".into(),
    };
    let e = cache
        .lookup(&name, Api::List, &items(&[""]), |_| async { Err(missing) })
        .await
        .err()
        .expect("an error");
    assert_eq!(e.status(), http::StatusCode::BAD_GATEWAY);
}

#[test]
fn merged_answers_are_as_stale_as_their_stalest_part() {
    let part = |cache| {
        Ok(Answers {
            by_item: BTreeMap::new(),
            cache,
            fetched: SystemTime::UNIX_EPOCH,
        })
    };
    let status = |parts| settle(parts).expect("settled").1;
    assert_eq!(status(vec![part(CacheStatus::Hit)]), CacheStatus::Hit);
    assert_eq!(
        status(vec![part(CacheStatus::Hit), part(CacheStatus::Miss)]),
        CacheStatus::Miss
    );
    assert_eq!(
        status(vec![part(CacheStatus::Stale), part(CacheStatus::Miss)]),
        CacheStatus::Stale
    );
    assert!(settle(vec![part(CacheStatus::Hit), Err(down())]).is_err());
}

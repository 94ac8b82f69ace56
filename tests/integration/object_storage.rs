//! Replicas sharing a bucket instead of a volume, against a real S3-compatible server (moto's
//! server mode, started by the tests): warm installs through other replicas cost upstream
//! nothing, a cold storm over three replicas fetches each archive at most once per replica
//! (the lease aims at once in all), a replica killed mid-upload leaves no object behind, and
//! with the bucket gone installs still work while `/readyz` says degraded.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::bucket::{Moto, SlowRelay, SECRET};
use support::catalogue::{Catalogue, FixtureVersion};
use support::composer::{assert_installed_matches, ComposerProject};
use support::mock_upstream::{MockOptions, MockUpstream, Protocol};
use support::process::ProxyProcess;
use support::proxy::{dist_url, get};

const PRODUCT: &str = "magento/product-community-edition";
/// Bound of every poll of state nothing announces.
const WAIT: Duration = Duration::from_secs(30);

/// `n` replicas on one bucket, each with its own empty cache directory.
fn replicas(
    n: usize,
    mock: &MockUpstream,
    endpoint: &str,
) -> (Vec<ProxyProcess>, Vec<tempfile::TempDir>) {
    let caches: Vec<_> = (0..n)
        .map(|_| tempfile::tempdir().expect("cache"))
        .collect();
    let processes = tokio::task::block_in_place(|| {
        caches
            .iter()
            .map(|c| ProxyProcess::start(&support::bucket::replica_env(mock, endpoint, c.path())))
            .collect()
    });
    (processes, caches)
}

fn install(url: &str, version: &str) -> ComposerProject {
    tokio::task::block_in_place(|| {
        let project = ComposerProject::new(url, &[(PRODUCT, version)]);
        project.run_ok(&["install", "--no-progress"]);
        project
    })
}

fn assert_release_installed(project: &ComposerProject, catalogue: &Catalogue, version: &str) {
    let locked = project.locked_versions();
    let product = catalogue.version(PRODUCT, version).expect("product");
    for (name, _) in &product.require {
        assert_installed_matches(project, catalogue, name, &locked[name]);
    }
}

/// Polls (bounded) until `ready` holds.
async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, ready: impl Fn() -> F) {
    let deadline = Instant::now() + WAIT;
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn metrics(url: &str) -> String {
    String::from_utf8_lossy(&get(&format!("{url}/metrics")).await.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_installs_through_other_replicas_make_no_upstream_archive_requests() {
    let catalogue = Arc::new(Catalogue::magento(20));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    let moto = Moto::start();
    let (replicas, _caches) = replicas(3, &mock, &moto.endpoint());

    let cold = install(&replicas[0].url, "2.4.7");
    assert_release_installed(&cold, &catalogue, "2.4.7");
    let fetched = mock.count_prefix("/archives/");
    assert!(fetched > 20, "only {fetched} archives fetched");
    // Uploads run after clients are served: wait for all of them to land.
    wait_until("every archive in the bucket", || async {
        moto.list("archives").await.len() >= fetched
    })
    .await;

    for replica in &replicas[1..] {
        let warm = install(&replica.url, "2.4.7");
        assert_release_installed(&warm, &catalogue, "2.4.7");
        let text = metrics(&replica.url).await;
        let hits = metric(
            &text,
            "composer_proxy_bucket_lookups_total{result=\"hit\"} ",
        );
        assert!(hits >= fetched as u64, "{hits} bucket hits:\n{text}");
    }
    assert_eq!(
        mock.count_prefix("/archives/"),
        fetched,
        "warm installs through the other replicas went upstream for archives"
    );
    let stored = moto.list("archives").await;
    assert_eq!(stored.len(), fetched, "{stored:?}");
    let text = metrics(&replicas[0].url).await;
    let created = metric(
        &text,
        "composer_proxy_bucket_uploads_total{outcome=\"created\"} ",
    );
    assert_eq!(created, fetched as u64, "{text}");
    for replica in &replicas {
        assert!(
            !replica.log_text().contains(SECRET),
            "the bucket's secret key was logged"
        );
    }
}

/// The release of `name` whose archive a test fetches directly.
fn first_release(catalogue: &Catalogue, name: &str) -> FixtureVersion {
    catalogue
        .package(name)
        .expect("in the catalogue")
        .versions
        .iter()
        .find(|v| v.archive.is_some() && !v.is_dev())
        .expect("a release with an archive")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_storm_over_three_replicas_fetches_an_archive_at_most_once_per_replica() {
    const REQUESTS: usize = 50;
    let catalogue = Arc::new(Catalogue::magento(2));
    let mock = MockUpstream::start(MockOptions::new(Protocol::P2, catalogue.clone())).await;
    let moto = Moto::start();
    let (replicas, _caches) = replicas(3, &mock, &moto.endpoint());
    let name = "magento/module-m001";
    let release = first_release(&catalogue, name);
    let expected = release.archive.as_ref().expect("archive").bytes.clone();
    let mut urls = Vec::new();
    for replica in &replicas {
        urls.push(dist_url(&replica.url, name, &release.version).await);
    }
    // Upstream answers slowly, so the requests really overlap.
    mock.set_delay(Duration::from_millis(300));
    mock.reset_counts();

    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let url = urls[i % urls.len()].clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for request in requests {
        let reply = request.await.expect("request task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, expected, "a client got other bytes");
    }
    let fetches = mock.count_prefix("/archives/");
    let mut leases = Vec::new();
    for replica in &replicas {
        let text = metrics(&replica.url).await;
        let outcomes: Vec<String> = ["acquired", "waited", "taken_over", "unavailable"]
            .iter()
            .map(|o| {
                let line = format!("composer_proxy_bucket_leases_total{{outcome=\"{o}\"}} ");
                format!("{o} {}", metric(&text, &line))
            })
            .collect();
        leases.push(outcomes.join(", "));
    }
    eprintln!(
        "object storage: {REQUESTS} concurrent cold requests for one archive over {} replicas made {fetches} upstream fetch(es); leases per replica: {}",
        replicas.len(),
        leases.join(" | ")
    );
    assert!(
        (1..=replicas.len()).contains(&fetches),
        "{fetches} upstream fetches"
    );
    wait_until("the archive in the bucket", || async {
        moto.list("archives").await.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_upload_leaves_no_object_in_the_bucket() {
    const PAYLOAD: usize = 8 * 1024 * 1024;
    let catalogue = Arc::new(Catalogue::magento_with_module_payload(1, PAYLOAD));
    let mock = MockUpstream::start(MockOptions::new(Protocol::P2, catalogue.clone())).await;
    let moto = Moto::start();
    // About 1 MiB/s towards the bucket: the upload takes seconds, the kill comes within one.
    let relay = SlowRelay::start(moto.port, 1024 * 1024);
    let cache = tempfile::tempdir().expect("cache");
    let mut replica = tokio::task::block_in_place(|| {
        ProxyProcess::start(&support::bucket::replica_env(
            &mock,
            &relay.endpoint(),
            cache.path(),
        ))
    });
    let name = "magento/module-m001";
    let release = first_release(&catalogue, name);
    let expected = release.archive.as_ref().expect("archive").bytes.clone();
    assert!(expected.len() > PAYLOAD);

    let url = dist_url(&replica.url, name, &release.version).await;
    let reply = get(&url).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, expected);
    wait_until("an upload under way", || async {
        relay.uploaded() > 512 * 1024
    })
    .await;
    let sent = relay.uploaded();
    assert!(
        sent < expected.len() as u64,
        "the upload finished before the kill"
    );
    replica.kill_9();
    wait_until("the upload's connection closed", || async {
        relay.upload_ended()
    })
    .await;
    let archives = moto.list("archives").await;
    assert!(
        archives.is_empty(),
        "a partial upload is visible: {archives:?}"
    );

    // A replica started afresh finds nothing in the bucket, fetches, and stores it whole.
    let fresh_cache = tempfile::tempdir().expect("cache");
    let fresh = tokio::task::block_in_place(|| {
        ProxyProcess::start(&support::bucket::replica_env(
            &mock,
            &moto.endpoint(),
            fresh_cache.path(),
        ))
    });
    let before = mock.count_prefix("/archives/");
    let url = dist_url(&fresh.url, name, &release.version).await;
    assert_eq!(get(&url).await.body, expected);
    assert_eq!(mock.count_prefix("/archives/"), before + 1);
    wait_until("the whole archive in the bucket", || async {
        moto.list("archives").await.len() == 1
    })
    .await;
    let archives = moto.list("archives").await;
    assert_eq!(archives[0].1, expected.len() as u64, "{archives:?}");
}

async fn readyz(url: &str) -> (StatusCode, serde_json::Value) {
    let reply = get(&format!("{url}/readyz")).await;
    let body = serde_json::from_slice(&reply.body).unwrap_or_default();
    (reply.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_bucket_stopped_installs_succeed_and_readiness_is_degraded_until_it_returns() {
    let catalogue = Arc::new(Catalogue::magento(10));
    let mock = MockUpstream::start(MockOptions::new(Protocol::V1, catalogue.clone())).await;
    let moto = Moto::start();
    let (replicas, _caches) = replicas(2, &mock, &moto.endpoint());
    let (warm, cold) = (&replicas[0], &replicas[1]);
    install(&warm.url, "2.4.7");
    let (status, body) = readyz(&warm.url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("degraded").is_none(), "{body}");

    let port = moto.stop();
    let fetched = mock.count_prefix("/archives/");
    // The replica that served the install before has it all locally.
    let again = install(&warm.url, "2.4.7");
    assert_release_installed(&again, &catalogue, "2.4.7");
    assert_eq!(mock.count_prefix("/archives/"), fetched);
    // The other has nothing: it fetches through from upstream.
    let through = install(&cold.url, "2.4.7");
    assert_release_installed(&through, &catalogue, "2.4.7");
    assert!(mock.count_prefix("/archives/") > fetched);
    // The replica whose requests never needed the bucket learns of it from its next probe.
    for replica in &replicas {
        wait_until("readiness degraded by the bucket", || async {
            let (status, body) = readyz(&replica.url).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["degraded"]
                .as_str()
                .is_some_and(|why| why.contains("bucket"))
        })
        .await;
    }
    let text = metrics(&cold.url).await;
    assert_eq!(metric(&text, "composer_proxy_bucket_up "), 0, "{text}");

    // Back, on the same port (empty): noticed without a restart.
    let _moto = Moto::start_on(port);
    wait_until("readiness without the bucket's degradation", || async {
        let (status, body) = readyz(&cold.url).await;
        status == StatusCode::OK && body.get("degraded").is_none()
    })
    .await;
}

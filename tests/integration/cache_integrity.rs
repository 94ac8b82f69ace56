//! "Nothing wrong in the cache, ever": what the proxy stores, serves and leaves behind when
//! its disk is full, when stored archives are damaged on disk (and `cache verify --remove`
//! removes one under a running proxy), when an archive without a published shasum arrives
//! broken in ways only the zip shows, and when a process is killed mid-download. Ends with
//! the real Composer client installing through a proxy on a full disk.
//!
//! Full-disk tests mount a small tmpfs (support/small_disk.rs), so they must run as root;
//! tests that read the proxy's JSON log, restart or kill it run the real binary
//! (support/process.rs). Waits are on log lines and upstream requests, or bounded polls of
//! state nothing announces (files on disk, a metadata TTL running out).

use crate::support;
use crate::support::blocking;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use support::cache_dir::{files_below, stored_archives};
use support::catalogue::{Catalogue, FixtureVersion};
use support::composer::{assert_installed_matches, ComposerProject};
use support::mock_upstream::{ArchiveFault, MockOptions, MockUpstream, Protocol};
use support::process::ProxyProcess;
use support::proxy::{after_first_chunk, base_env, get, try_get, TestProxy};
use support::small_disk::SmallDisk;

const FRAMEWORK: &str = "magento/framework";
const PRODUCT: &str = "magento/product-community-edition";
/// Modules of the Magento tree Composer installs: small, the disk is 8 MiB.
const MODULES: usize = 10;
/// Size of the small disks: room for that tree's metadata and archives, twice over.
const DISK_SIZE: &str = "8m";
/// `cache_min_free_bytes` there: far below the disk's size, far above a full disk's free space.
const FREE_FLOOR: u64 = 64 * 1024;
/// Archives above this are served from disk, the others through the memory tier.
const MEMORY_OBJECT_MAX: usize = 2 * 1024 * 1024;
const BIG_BLOB: usize = 3 * 1024 * 1024;
/// Bound of every poll of state nothing announces.
const WAIT: Duration = Duration::from_secs(30);

/// One release's archive: where upstream serves it and its exact bytes.
struct Fixture {
    name: String,
    version: String,
    upstream_path: String,
    bytes: Bytes,
    shasum_published: bool,
}

/// The first stable release of `name` with an archive that `pick` accepts.
fn fixture(catalogue: &Catalogue, name: &str, pick: impl Fn(&FixtureVersion) -> bool) -> Fixture {
    let version = catalogue
        .package(name)
        .unwrap_or_else(|| panic!("{name} in the catalogue"))
        .versions
        .iter()
        .find(|v| v.archive.is_some() && !v.is_dev() && pick(v))
        .unwrap_or_else(|| panic!("no release of {name} fits"));
    Fixture {
        name: name.to_string(),
        version: version.version.clone(),
        upstream_path: Catalogue::archive_path(name, &version.version_normalized),
        bytes: version.archive.as_ref().expect("archive").bytes.clone(),
        shasum_published: version.publish_shasum,
    }
}

/// The proxy's dist URL for `archive`, from the p2 file it serves.
async fn dist_url(proxy_url: &str, archive: &Fixture) -> String {
    support::proxy::dist_url(proxy_url, &archive.name, &archive.version).await
}

async fn mock(protocol: Protocol, catalogue: &Arc<Catalogue>) -> MockUpstream {
    MockUpstream::start(MockOptions::new(protocol, catalogue.clone())).await
}

/// Files in `tmp/` and their lengths.
fn temp_files(cache_dir: &Path) -> Vec<(PathBuf, u64)> {
    files_below(&cache_dir.join("tmp"))
        .into_iter()
        .filter_map(|p| Some((p.clone(), std::fs::metadata(&p).ok()?.len())))
        .collect()
}

/// The stored body of the archive fetched from `upstream_path`, found by its description.
fn stored_archive(cache_dir: &Path, upstream_path: &str) -> Option<PathBuf> {
    files_below(&cache_dir.join("archives"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .find(|p| {
            std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|d| {
                    d["url"]
                        .as_str()
                        .is_some_and(|u| u.ends_with(upstream_path))
                })
        })
        .map(|p| p.with_extension("bin"))
}

/// Polls `step` every 100 ms until it is `Ok`, for at most `WAIT`: for state nothing
/// announces (files on disk, a TTL running out, sampled gauges). The last `Err` says why not.
async fn poll(what: &str, mut step: impl AsyncFnMut() -> Result<(), String>) {
    let deadline = Instant::now() + WAIT;
    while let Err(why) = step().await {
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for {what}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    poll(what, async || done().then_some(()).ok_or_else(String::new)).await;
}

/// Waits until the archive is stored whole: its `.bin` holds exactly `archive.bytes`.
async fn wait_until_stored_whole(cache_dir: &Path, archive: &Fixture) {
    wait_until(
        &format!("{} {} stored whole", archive.name, archive.version),
        || {
            stored_archive(cache_dir, &archive.upstream_path)
                .and_then(|bin| std::fs::read(bin).ok())
                .is_some_and(|stored| stored == archive.bytes)
        },
    )
    .await;
}

/// Settings for the real binary: the mock, its keys, `cache_dir`, then `extra`.
fn process_env(
    mock: &MockUpstream,
    cache_dir: &Path,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = base_env(&mock.url());
    env.retain(|(k, _)| k != "COMPOSER_PROXY_LISTEN");
    env.push((
        "COMPOSER_PROXY_CACHE_DIR".into(),
        cache_dir.to_str().expect("utf-8 path").into(),
    ));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The real binary on a small disk, with a free-space floor the empty disk is well above.
fn start_on_small_disk(
    mock: &MockUpstream,
    cache_dir: &Path,
    extra: &[(&str, &str)],
) -> ProxyProcess {
    let floor = FREE_FLOOR.to_string();
    let mut settings = vec![("COMPOSER_PROXY_CACHE_MIN_FREE_BYTES", floor.as_str())];
    settings.extend_from_slice(extra);
    blocking(|| ProxyProcess::start(&process_env(mock, cache_dir, &settings)))
}

/// Waits for a JSON log line with this `event`.
fn wait_for_event(proxy: &ProxyProcess, event: &str) -> Value {
    blocking(|| proxy.wait_for_log(|v| v["event"] == event))
        .unwrap_or_else(|| panic!("no {event:?} log line:\n{}", proxy.log_text()))
}

fn write_failed(line: &Value) -> bool {
    line["event"] == "cache_write_failed" && line["cache"] == "metadata"
}

/// After upstream published a new root that the full disk could not take: the failure is
/// logged and metadata/root.json still holds `before`, its previous bytes.
fn assert_root_write_failed_cleanly(proxy: &ProxyProcess, root_json: &Path, before: &[u8]) {
    let logged = blocking(|| proxy.wait_for_log(write_failed));
    let after = std::fs::read(root_json).unwrap_or_default();
    assert!(
        after == before,
        "metadata/root.json changed from {} bytes of JSON to {} bytes: {:?}",
        before.len(),
        after.len(),
        String::from_utf8_lossy(&after)
    );
    assert!(
        logged.is_some(),
        "no cache_write_failed line (metadata):\n{}",
        proxy.log_text()
    );
}

async fn metrics(proxy_url: &str) -> String {
    let reply = get(&format!("{proxy_url}/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK, "/metrics");
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The value of the sample `name` (labels included, exactly as exposed).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Asks the proxy for packages.json until it fetched it from upstream again. Its copy goes
/// stale after `metadata_ttl_secs` (1 s) and only time does that, so this polls. Every answer
/// must be a 200: a failed cache write is the proxy's problem, not the client's.
async fn refetch_root(proxy_url: &str, mock: &MockUpstream) {
    let before = mock.count("/packages.json");
    poll("packages.json fetched again", async || {
        let reply = get(&format!("{proxy_url}/packages.json")).await;
        let body = String::from_utf8_lossy(&reply.body);
        assert_eq!(reply.status, StatusCode::OK, "packages.json: {body}");
        (mock.count("/packages.json") > before)
            .then_some(())
            .ok_or_else(String::new)
    })
    .await;
}

/// Polls `/readyz` and `/metrics` until both report the full disk (either may sample the disk
/// only every few seconds). `/readyz` must answer 200 "ready" throughout: a full cache disk
/// degrades the proxy, it does not take it out of service.
async fn wait_for_full_disk_reported(proxy_url: &str) {
    poll("the full disk reported", async || {
        let ready = get(&format!("{proxy_url}/readyz")).await;
        let body = String::from_utf8_lossy(&ready.body).into_owned();
        assert_eq!(ready.status, StatusCode::OK, "/readyz, disk full: {body}");
        assert_eq!(ready.json()["status"], "ready", "{body}");
        let degraded = ready.json()["degraded"].as_str().unwrap_or("").to_string();
        let text = metrics(proxy_url).await;
        let free = sample(&text, "composer_proxy_cache_free_bytes");
        let writable = sample(&text, "composer_proxy_cache_writable");
        let reported = degraded.contains("free space")
            && degraded.to_lowercase().contains("cache")
            && free.is_some_and(|f| f < FREE_FLOOR as f64)
            && writable == Some(0.0);
        reported.then_some(()).ok_or_else(|| {
            format!(
                "/readyz {body}, composer_proxy_cache_free_bytes {free:?}, \
                 composer_proxy_cache_writable {writable:?}"
            )
        })
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_write_on_a_full_disk_fails_cleanly_and_keeps_the_previous_file() {
    let disk = SmallDisk::mount(DISK_SIZE);
    let cache = disk.cache_dir();
    let catalogue = Arc::new(Catalogue::magento(4));
    // p2: the proxy then writes metadata only when asked (a v1 upstream makes it build the
    // Composer 1 chain in the background), so filling the disk races no write.
    let mock = mock(Protocol::P2, &catalogue).await;
    let proxy = start_on_small_disk(&mock, &cache, &[("COMPOSER_PROXY_METADATA_TTL_SECS", "1")]);
    assert_eq!(
        get(&format!("{}/packages.json", proxy.url)).await.status,
        StatusCode::OK
    );
    let root_json = cache.join("metadata").join("root.json");
    wait_until("metadata/root.json written", || {
        std::fs::read(&root_json).is_ok_and(|b| serde_json::from_slice::<Value>(&b).is_ok())
    })
    .await;
    let before = std::fs::read(&root_json).expect("root.json");

    disk.fill();
    // Upstream publishes a new packages.json: the proxy must try to save it, and cannot.
    mock.change_root();
    refetch_root(&proxy.url, &mock).await;
    assert_root_write_failed_cleanly(&proxy, &root_json, &before);

    // Logged once per failed write: never more lines than the counter counts.
    let logged = blocking(|| proxy.wait_for_logs(1, write_failed)).map_or(0, |l| l.len()) as f64;
    let errors = r#"composer_proxy_cache_write_errors_total{cache="metadata"}"#;
    let counted = sample(&metrics(&proxy.url).await, errors);
    assert!(
        counted.is_some_and(|n| n >= 1.0 && n >= logged),
        "{errors} is {counted:?} for {logged} logged failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_an_archive_is_served_whole_but_not_stored_and_readyz_says_degraded() {
    let disk = SmallDisk::mount(DISK_SIZE);
    let cache = disk.cache_dir();
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = mock(Protocol::P2, &catalogue).await;
    let proxy = start_on_small_disk(&mock, &cache, &[]);
    let archive = fixture(&catalogue, FRAMEWORK, |v| v.publish_shasum);
    let url = dist_url(&proxy.url, &archive).await;
    let ready = get(&format!("{}/readyz", proxy.url)).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(
        ready.json().get("degraded").is_none(),
        "an empty disk is not degraded: {}",
        String::from_utf8_lossy(&ready.body)
    );

    disk.fill();
    let (status, _, body) = try_get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let body = body.unwrap_or_else(|e| panic!("the transfer broke: {e}"));
    assert!(
        body == archive.bytes,
        "{} bytes, not the archive",
        body.len()
    );
    wait_for_event(&proxy, "archive_not_stored");
    let stored = stored_archives(&cache);
    assert!(stored.is_empty(), "stored {stored:?}");
    wait_for_full_disk_reported(&proxy.url).await;
}

// ---------------------------------------------------------------------------------------------
// Archives damaged on disk
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The file cut to half its length.
    Truncate,
    /// Four bytes in the middle inverted; the length stays.
    Overwrite,
}

fn damage(path: &Path, how: Damage) {
    let mut bytes = std::fs::read(path).expect("read the stored archive");
    let middle = bytes.len() / 2;
    match how {
        Damage::Truncate => bytes.truncate(middle),
        Damage::Overwrite => bytes[middle..middle + 4].iter_mut().for_each(|b| *b = !*b),
    }
    std::fs::write(path, bytes).expect("damage the stored archive");
}

#[derive(Debug, Clone, Copy)]
enum Size {
    /// Over 2 MiB: served from disk.
    Big,
    /// Up to 2 MiB: served through the memory tier.
    Small,
}

/// Stores an archive of `size`, damages the stored copy `how` while no proxy runs, then asks
/// a fresh proxy on that cache (nothing in memory) for it.
async fn damaged_on_disk(size: Size, how: Damage) {
    let catalogue = Arc::new(Catalogue::with_sized_archives(4, &[BIG_BLOB]));
    let big = fixture(&catalogue, &format!("bench/blob-{BIG_BLOB}"), |_| true);
    // The same `publish_shasum` as the big one, so only the size differs.
    let archive = match size {
        Size::Big => big,
        Size::Small => fixture(&catalogue, FRAMEWORK, |v| {
            v.publish_shasum == big.shasum_published
        }),
    };
    let is_big = archive.bytes.len() > MEMORY_OBJECT_MAX;
    assert_eq!(is_big, matches!(size, Size::Big), "{size:?}");
    let mock = mock(Protocol::V1, &catalogue).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let proxy = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
    let first = get(&dist_url(&proxy.url, &archive).await).await;
    assert!(first.status == StatusCode::OK && first.body == archive.bytes);
    wait_until_stored_whole(cache.path(), &archive).await;
    proxy.stop().await;

    damage(
        &stored_archive(cache.path(), &archive.upstream_path).expect("stored"),
        how,
    );
    let proxy = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
    let url = dist_url(&proxy.url, &archive).await;
    let (status, headers, body) = try_get(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let fetches = mock.count(&archive.upstream_path);
    match (how, body) {
        // The length is checked before the headers: the short copy goes, the archive is
        // fetched again and served whole.
        (Damage::Truncate, body) => {
            let body = body.unwrap_or_else(|e| panic!("the transfer broke: {e}"));
            assert!(
                body == archive.bytes,
                "a complete 200 with {} bytes, not the archive's {}",
                body.len(),
                archive.bytes.len()
            );
            assert_eq!(fetches, 2, "fetched again");
            assert_eq!(headers.get("x-cache").expect("x-cache"), "MISS");
        }
        // Same length, other bytes: caught before the headers (fetched again) or while
        // sending (the transfer breaks), never a complete 200 with the altered bytes.
        (Damage::Overwrite, Ok(body)) => {
            assert!(body == archive.bytes, "a complete 200 with altered bytes");
            assert_eq!(fetches, 2, "fetched again");
        }
        // Caught at the end of the transfer: the damaged copy is gone all the same.
        (Damage::Overwrite, Err(_)) => {
            let again = get(&url).await;
            assert_eq!(again.status, StatusCode::OK);
            assert!(
                again.body == archive.bytes,
                "the next client gets the archive"
            );
        }
    }
    wait_until_stored_whole(cache.path(), &archive).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_big_archive_truncated_on_disk_is_fetched_again() {
    damaged_on_disk(Size::Big, Damage::Truncate).await;
}

#[tokio::test]
async fn a_small_archive_truncated_on_disk_is_fetched_again() {
    damaged_on_disk(Size::Small, Damage::Truncate).await;
}

#[tokio::test]
async fn a_big_archive_altered_on_disk_is_never_served_as_complete() {
    damaged_on_disk(Size::Big, Damage::Overwrite).await;
}

#[tokio::test]
async fn a_small_archive_altered_on_disk_is_never_served_as_complete() {
    damaged_on_disk(Size::Small, Damage::Overwrite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_removed_by_cache_verify_is_not_served_from_memory() {
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = mock(Protocol::V1, &catalogue).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let proxy = TestProxy::start_with(base_env(&mock.url()), Some(cache.path())).await;
    let archive = fixture(&catalogue, FRAMEWORK, |v| v.publish_shasum);
    assert!(archive.bytes.len() <= MEMORY_OBJECT_MAX);
    let url = dist_url(&proxy.url, &archive).await;
    // Twice: whenever the memory tier takes an archive, it holds this one now.
    for _ in 0..2 {
        let reply = get(&url).await;
        assert!(reply.status == StatusCode::OK && reply.body == archive.bytes);
    }
    assert_eq!(mock.count(&archive.upstream_path), 1);
    wait_until_stored_whole(cache.path(), &archive).await;

    let bin = stored_archive(cache.path(), &archive.upstream_path).expect("stored");
    damage(&bin, Damage::Overwrite);
    let verify = tokio::process::Command::new(env!("CARGO_BIN_EXE_composer-proxy"))
        .args(["cache", "verify", "--remove"])
        .env_clear()
        .envs(process_env(&mock, cache.path(), &[]))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "cache verify --remove: {}\n{stdout}\n{}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("BAD ") && l.contains("removed")),
        "{stdout}"
    );
    assert!(!bin.exists(), "verify removed the damaged archive");

    let reply = get(&url).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body == archive.bytes);
    let x_cache = reply.headers.get("x-cache").expect("x-cache");
    assert_eq!(
        x_cache, "MISS",
        "a removed archive is not served from memory"
    );
    assert_eq!(mock.count(&archive.upstream_path), 2, "fetched again");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Broken archives without a published shasum
// ---------------------------------------------------------------------------------------------

/// With `fault`, an archive whose metadata publishes no shasum never reaches the client as a
/// complete 200 and is not stored; once upstream is healthy again, it is fetched whole.
async fn an_unverifiable_broken_archive_is_refused(fault: ArchiveFault) {
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = mock(Protocol::V1, &catalogue).await;
    let proxy = TestProxy::start(&mock.url()).await;
    let archive = fixture(&catalogue, FRAMEWORK, |v| !v.publish_shasum);
    let url = dist_url(&proxy.url, &archive).await;

    mock.set_archive_fault(Some(fault));
    let (status, _, body) = try_get(&url, &[]).await;
    if let (StatusCode::OK, Ok(body)) = (status, &body) {
        panic!(
            "{fault:?}: a complete 200 with {} bytes (the archive has {})",
            body.len(),
            archive.bytes.len()
        );
    }
    let attempts = mock.count(&archive.upstream_path);
    assert!(attempts >= 1, "{fault:?}: upstream was asked");
    let stored = files_below(&proxy.cache_dir.join("archives"));
    assert!(stored.is_empty(), "{fault:?}: stored {stored:?}");

    mock.set_archive_fault(None);
    let reply = get(&url).await;
    assert_eq!(reply.status, StatusCode::OK, "{fault:?}");
    assert!(
        reply.body == archive.bytes,
        "{fault:?}: the archive's exact bytes"
    );
    assert_eq!(
        mock.count(&archive.upstream_path),
        attempts + 1,
        "{fault:?}: fetched again"
    );
    wait_until_stored_whole(&proxy.cache_dir, &archive).await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_archive_of_garbage_without_shasum_is_never_stored_or_served_complete() {
    an_unverifiable_broken_archive_is_refused(ArchiveFault::Garbage).await;
}

#[tokio::test]
async fn an_archive_with_a_flipped_byte_without_shasum_is_never_stored_or_served_complete() {
    an_unverifiable_broken_archive_is_refused(ArchiveFault::FlipByte).await;
}

#[tokio::test]
async fn half_an_archive_with_a_matching_length_without_shasum_is_never_stored_or_served_complete()
{
    an_unverifiable_broken_archive_is_refused(ArchiveFault::LyingLength).await;
}

#[tokio::test]
async fn a_close_delimited_archive_cut_short_without_shasum_is_never_stored_or_served_complete() {
    an_unverifiable_broken_archive_is_refused(ArchiveFault::CloseDelimitedCut).await;
}

// ---------------------------------------------------------------------------------------------
// Temporary files of a killed process
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_files_left_by_kill_9_are_swept_while_running() {
    let catalogue = Arc::new(Catalogue::magento(4));
    let mock = mock(Protocol::V1, &catalogue).await;
    let cache = tempfile::tempdir().expect("cache dir");
    let mut killed = blocking(|| ProxyProcess::start(&process_env(&mock, cache.path(), &[])));
    let sweeper = blocking(|| {
        ProxyProcess::start(&process_env(
            &mock,
            cache.path(),
            &[("COMPOSER_PROXY_CACHE_SWEEP_INTERVAL_SECS", "1")],
        ))
    });
    let archive = fixture(&catalogue, FRAMEWORK, |v| v.publish_shasum);
    let url = dist_url(&killed.url, &archive).await;

    // Upstream sends half the archive, then hangs: a first chunk at the client means the
    // partial download is in tmp/ when the process dies.
    mock.set_stall_archives(true);
    // Held open until the end, as a client would be while the process dies.
    let _transfer = after_first_chunk(&url).await;
    blocking(|| killed.kill_9());
    let partial: Vec<(PathBuf, u64)> = temp_files(cache.path())
        .into_iter()
        .filter(|(_, len)| *len > 0 && *len < archive.bytes.len() as u64)
        .collect();
    assert!(
        !partial.is_empty(),
        "no partial file in tmp/ after kill -9 (swept while its download was alive?)"
    );

    // Nothing restarts: the running replica finds the orphan and removes it.
    let swept = blocking(|| {
        sweeper.wait_for_log(|v| {
            v["event"] == "temp_files_swept" && v["files"].as_u64().is_some_and(|n| n >= 1)
        })
    })
    .unwrap_or_else(|| panic!("no temp_files_swept line:\n{}", sweeper.log_text()));
    let partial_bytes: u64 = partial.iter().map(|(_, len)| len).sum();
    assert!(
        swept["bytes"].as_u64().is_some_and(|b| b >= partial_bytes),
        "{swept} for {partial_bytes} partial bytes"
    );
    let left = temp_files(cache.path());
    for (path, len) in &partial {
        assert!(
            !path.exists() && left.iter().all(|(_, l)| l != len),
            "{} ({len} bytes) is still in tmp/: {left:?}",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The real Composer client and a full disk
// ---------------------------------------------------------------------------------------------

fn composer(project: &ComposerProject, args: &[&str]) -> String {
    blocking(|| project.run_ok(args))
}

/// Every package of a product release installed, each equal to its archive.
fn assert_release_installed(project: &ComposerProject, catalogue: &Catalogue, release: &str) {
    let product = catalogue
        .version(PRODUCT, release)
        .expect("product version");
    let locked = project.locked_versions();
    for (name, _) in &product.require {
        let version = locked
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in composer.lock"));
        assert_installed_matches(project, catalogue, name, version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composer_installs_from_the_cache_after_a_metadata_write_failed_on_a_full_disk() {
    let disk = SmallDisk::mount(DISK_SIZE);
    let cache = disk.cache_dir();
    let catalogue = Arc::new(Catalogue::magento(MODULES));
    let mock = mock(Protocol::V1, &catalogue).await;
    let settings = [("COMPOSER_PROXY_METADATA_TTL_SECS", "1")];
    let mut proxy = start_on_small_disk(&mock, &cache, &settings);
    let project = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]);
    composer(&project, &["install", "--no-progress"]);
    assert_release_installed(&project, &catalogue, "2.4.6");
    let root_json = cache.join("metadata").join("root.json");
    let before = std::fs::read(&root_json).expect("root.json written");

    disk.fill();
    mock.change_root();
    refetch_root(&proxy.url, &mock).await;
    assert_root_write_failed_cleanly(&proxy, &root_json, &before);

    // Upstream gone, the proxy restarted on the same (still full) disk: the cache is all there is.
    mock.stop().await;
    proxy.signal("TERM");
    blocking(|| proxy.wait());
    let restarted = start_on_small_disk(&mock, &cache, &settings);
    let offline = ComposerProject::new(&restarted.url, &[(PRODUCT, "2.4.6")]);
    composer(&offline, &["install", "--no-progress"]);
    assert_release_installed(&offline, &catalogue, "2.4.6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composer_installs_through_a_proxy_whose_disk_is_full() {
    let disk = SmallDisk::mount(DISK_SIZE);
    let cache = disk.cache_dir();
    let catalogue = Arc::new(Catalogue::magento(MODULES));
    let mock = mock(Protocol::V1, &catalogue).await;
    let proxy = start_on_small_disk(&mock, &cache, &[]);
    disk.fill();

    let project = ComposerProject::new(&proxy.url, &[(PRODUCT, "2.4.6")]);
    composer(&project, &["install", "--no-progress"]);
    assert_release_installed(&project, &catalogue, "2.4.6");
    let stored = stored_archives(&cache);
    assert!(stored.is_empty(), "stored {stored:?}");
    assert!(
        mock.count_prefix("/archives/") > MODULES,
        "archives came from upstream"
    );
    wait_for_full_disk_reported(&proxy.url).await;
}

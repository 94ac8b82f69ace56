//! Test support shared by the integration tests: a fixture catalogue shaped like
//! repo.magento.com's, an in-process mock of that upstream (and of vendor repositories,
//! packagist.org with its advisory, filter and list APIs, and Magento's legacy release
//! downloads), a harness that runs the real Composer client, a small disk to fill up, and the
//! three upstreams of a Magento project. The benchmark's mock (`examples/mock_upstream.rs`)
//! includes some of these files too; what only it uses is marked where it stands.

pub mod accounts;
pub mod advisories;
pub mod bucket;
pub mod cache_dir;
pub mod catalogue;
pub mod composer;
pub mod downloads;
pub mod github;
pub mod mock_upstream;
pub mod process;
pub mod proxy;
pub mod serve;
pub mod small_disk;
pub mod upstreams;

/// Runs blocking work (the Composer client, a child process's log) on a multi-threaded test
/// runtime without stalling the mock upstreams it talks to.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

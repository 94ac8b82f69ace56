//! The integration tests: one crate, one module per area, so the support code (mock upstreams,
//! fixture catalogue, Composer harness) and the dependencies are compiled and linked once
//! rather than once per area. Run one area with `cargo test --test integration <module>::`.

mod support;

mod access_control;
mod accounts;
mod bounded_answers;
mod cache_integrity;
mod caching;
mod cli;
mod commands;
mod deploy_manifests;
mod docs;
mod e2e_composer;
mod hostile_input;
mod key_hygiene;
mod mock_upstream_selftest;
mod multi_upstream;
mod object_storage;
mod object_storage_tokens;
mod operations;
mod packagist;
mod protocol;
mod replicas;
mod status;
mod tls;
mod usage;
mod views;

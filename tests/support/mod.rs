//! Test support shared by the integration tests: a fixture catalogue shaped like
//! repo.magento.com's, an in-process mock of that upstream, a harness that runs the
//! real Composer client, and a small disk to fill up. Each test file includes this with
//! `mod support;` and uses only part of it, hence the one crate-wide `dead_code` allowance.
#![allow(dead_code)]

pub mod catalogue;
pub mod composer;
pub mod mock_upstream;
pub mod process;
pub mod proxy;
pub mod small_disk;

//! Three upstreams a Magento project needs, mocked, for the tests of several upstreams behind
//! one proxy URL (issue 11; DESIGN.md §3 "Several upstreams"), in priority order:
//! - `magento`: repo.magento.com (v1, Marketplace keys), `Catalogue::magento`;
//! - `hyva`: a vendor's Private Packagist repository under `/hyva-project/`, HTTP Basic
//!   `token` + licence key, `Catalogue::vendor`;
//! - `packagist`: packagist.org (open-ended, public, minified, dists on a second origin that
//!   the proxy knows as an `allowed_hosts` entry), `Catalogue::packagist`.
//!
//! It also writes the proxy's `[[upstream]]` configuration for them and the project that lists
//! them directly, with credentials, which is what Composer does without the proxy.

use std::sync::Arc;

use super::catalogue::Catalogue;
use super::composer::ComposerProject;
use super::mock_upstream::{
    MockOptions, MockUpstream, Protocol, TEST_PRIVATE_KEY, TEST_PUBLIC_KEY,
};
use super::proxy::{listen_env, TestProxy};

/// The path the vendor repository lives under.
pub const HYVA_PREFIX: &str = "/hyva-project";
/// The vendor repository's password (its user is `token`).
pub const HYVA_LICENCE: &str = "hyva-licence-0123456789abcdef";
/// The upstreams' names, in priority order.
pub const NAMES: [&str; 3] = ["magento", "hyva", "packagist"];

pub struct Upstream {
    pub name: &'static str,
    pub catalogue: Arc<Catalogue>,
    pub mock: MockUpstream,
}

pub struct Upstreams {
    pub magento: Upstream,
    pub hyva: Upstream,
    pub packagist: Upstream,
}

/// Where the `hyva` key pair is configured: in the TOML table, or in environment variables
/// named after the upstream (the Kubernetes-secret form).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HyvaSecrets {
    InToml,
    InEnv,
}

impl Upstreams {
    /// The three mocks, with `Catalogue::magento(modules)` behind `magento`.
    pub async fn start(modules: usize) -> Upstreams {
        let magento = Arc::new(Catalogue::magento(modules));
        let vendor = Arc::new(Catalogue::vendor());
        let packagist = Arc::new(Catalogue::packagist());
        let vendor_opts = MockOptions::vendor_repository(vendor.clone(), HYVA_PREFIX, HYVA_LICENCE);
        Upstreams {
            magento: Upstream {
                name: "magento",
                mock: MockUpstream::start(MockOptions::new(Protocol::V1, magento.clone())).await,
                catalogue: magento,
            },
            hyva: Upstream {
                name: "hyva",
                mock: MockUpstream::start(vendor_opts).await,
                catalogue: vendor,
            },
            packagist: Upstream {
                name: "packagist",
                mock: MockUpstream::start(MockOptions::packagist_like(packagist.clone())).await,
                catalogue: packagist,
            },
        }
    }

    pub fn all(&self) -> [&Upstream; 3] {
        [&self.magento, &self.hyva, &self.packagist]
    }

    /// Composer's canonical rule: the first upstream, in order, that has the name.
    pub fn owner(&self, name: &str) -> &Upstream {
        self.all()
            .into_iter()
            .find(|u| u.catalogue.package(name).is_some())
            .unwrap_or_else(|| panic!("no fixture upstream has {name}"))
    }

    /// The origin packagist's dists live on.
    pub fn dist_host(&self) -> String {
        self.packagist
            .mock
            .archive_host_url()
            .expect("packagist's dist host")
    }

    /// The `--config` file: three `[[upstream]]` tables in priority order.
    pub fn toml(&self, secrets: HyvaSecrets) -> String {
        let hyva_keys = match secrets {
            HyvaSecrets::InToml => {
                format!("public_key = \"token\"\nprivate_key = \"{HYVA_LICENCE}\"\n")
            }
            HyvaSecrets::InEnv => String::new(),
        };
        format!(
            "[[upstream]]\nname = \"magento\"\nurl = \"{}\"\npublic_key = \"{TEST_PUBLIC_KEY}\"\nprivate_key = \"{TEST_PRIVATE_KEY}\"\n\n\
             [[upstream]]\nname = \"hyva\"\nurl = \"{}\"\n{hyva_keys}\n\
             [[upstream]]\nname = \"packagist\"\nurl = \"{}\"\nallowed_hosts = [\"{}\"]\n",
            self.magento.mock.url(),
            self.hyva.mock.repo_url(),
            self.packagist.mock.url(),
            self.dist_host(),
        )
    }

    /// Environment for the file-configured proxy, `extra` last.
    pub fn env(&self, secrets: HyvaSecrets, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = listen_env();
        if secrets == HyvaSecrets::InEnv {
            env.push((
                "COMPOSER_PROXY_UPSTREAM_HYVA_PUBLIC_KEY".into(),
                "token".into(),
            ));
            env.push((
                "COMPOSER_PROXY_UPSTREAM_HYVA_PRIVATE_KEY".into(),
                HYVA_LICENCE.into(),
            ));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// An in-process proxy in front of the three, configured by `toml(secrets)`.
    pub async fn proxy(&self, secrets: HyvaSecrets, extra: &[(&str, &str)]) -> TestProxy {
        TestProxy::start_with_file(&self.toml(secrets), self.env(secrets, extra), None).await
    }

    /// A project listing the three mocks themselves, in order, with their credentials in
    /// auth.json: Composer merging the repositories on its own (the benchmark's baseline).
    pub fn direct_project(&self, require: &[(&str, &str)]) -> ComposerProject {
        let repos = self.all().map(|u| u.mock.repo_url());
        let repos: Vec<&str> = repos.iter().map(String::as_str).collect();
        ComposerProject::with_repositories(&repos, require)
            .with_http_basic(
                &self.magento.mock.addr().to_string(),
                TEST_PUBLIC_KEY,
                TEST_PRIVATE_KEY,
            )
            .with_http_basic(&self.hyva.mock.addr().to_string(), "token", HYVA_LICENCE)
    }
}

//! The configured upstream repositories, in priority order, each with its own client (key
//! pairs, health, key verdict) and metadata cache, and the one rule that merges them: Composer's
//! canonical rule, applied on the server. The first upstream that lists a package name owns
//! every version of it; lower ones are never asked for it. A name is answered "not found" only
//! when every upstream said it lacks it: an upstream that could not be asked makes the answer
//! an error that names it, because a wrong 404 sends Composer to the next repository on the
//! client's list (dependency confusion).

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::json;

use crate::cache::metadata::{CacheStatus, MetadataCache, MetadataSettings, View};
use crate::cache::CacheDir;
use crate::composer::apis::{advertise_apis, RootApis};
use crate::composer::Document;
use crate::config::Config;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::upstream::{GitHub, KeyVerdict, UpstreamClient};

mod apis;
mod in_view;
mod owner;

pub use apis::{Among, Merged};
pub use in_view::{member_names, repositories, MemberNames, NameList};

/// One upstream repository.
pub struct Upstream {
    pub name: Arc<str>,
    /// From an `[[upstream]]` table: served under `<public_url>/<name>/`.
    pub named: bool,
    pub client: Arc<UpstreamClient>,
    pub metadata: Arc<MetadataCache>,
    /// Whether the warning that this rejected account's names cannot be told apart was given
    /// since it last answered.
    unseen_warned: AtomicBool,
}

/// What one upstream says about a package name.
#[derive(Debug)]
pub enum Listed {
    Yes,
    No,
    /// It could not be asked (unreachable, erroring, rejecting the keys, no metadata yet).
    Unknown(ProxyError),
}

/// Each upstream's root view, where it has one.
type Views = Vec<Option<Arc<View>>>;

pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
    /// The repositories in priority order (where their first table stands), each the indexes
    /// of its accounts: tables with the same URL.
    repositories: Vec<Vec<usize>>,
    /// Shared by every upstream's client: dists on GitHub, and the token for its API.
    github: Arc<GitHub>,
    /// Where the merged repository is served, without trailing slash.
    public_url: String,
    /// The merged `packages.json`, and the views it was built from (held, so a newer view can
    /// never be taken for one of them): rebuilt only when an upstream's root changed or was
    /// revalidated.
    merged_root: Mutex<Option<(Views, Document)>>,
    /// Upstream answers on advisories, filter lists and names.
    apis: apis::ApiCache,
}

impl Upstreams {
    /// Clients and metadata caches for every configured upstream. Each is served at
    /// `<public_url>/<name>` when named, else at `public_url` itself.
    pub fn new(
        config: &Config,
        public_url: &str,
        disk: &Arc<CacheDir>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut list = Vec::with_capacity(config.upstreams.len());
        let github = Arc::new(GitHub::new(&config.github));
        for cfg in &config.upstreams {
            let client = Arc::new(UpstreamClient::new(cfg, github.clone(), metrics.clone())?);
            let base = if cfg.named {
                format!("{public_url}/{}", cfg.name)
            } else {
                public_url.to_string()
            };
            let metadata = MetadataCache::new(
                client.clone(),
                disk.clone(),
                base,
                cfg.named.then(|| cfg.name.clone()),
                &MetadataSettings::for_upstream(config, cfg),
            );
            list.push(Arc::new(Upstream {
                name: client.name().clone(),
                named: cfg.named,
                client,
                metadata,
                unseen_warned: AtomicBool::new(false),
            }));
        }
        let bases: Vec<&url::Url> = list.iter().map(|u| u.client.base()).collect();
        let repositories = in_view::repositories(&bases);
        Ok(Self {
            list,
            repositories,
            github,
            public_url: public_url.to_string(),
            merged_root: Mutex::new(None),
            apis: apis::ApiCache::new(config.advisories_ttl),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The upstream of that name, served at its own prefix.
    /// Every upstream's metadata cache figures, added up (`/metrics`, the status page).
    pub async fn metadata_stats(&self) -> crate::cache::metadata::MetadataStats {
        let mut stats = crate::cache::metadata::MetadataStats::default();
        for upstream in &self.list {
            stats.add(upstream.metadata.stats().await);
        }
        stats
    }

    pub fn named(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.list.iter().find(|u| u.named && &*u.name == name)
    }

    /// The one upstream, when there is exactly one: the merged repository is then simply that
    /// one (Composer 1 included).
    pub fn only(&self) -> Option<&Arc<Upstream>> {
        match self.list.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Applies reloaded key pairs, upstream by upstream (matched by name), and the GitHub
    /// token.
    pub fn set_key_pairs(&self, config: &Config) {
        self.github.set_token(&config.github);
        for cfg in &config.upstreams {
            if let Some(upstream) = self.list.iter().find(|u| *u.name == cfg.name) {
                upstream.client.set_key_pairs(&cfg.key_pairs());
            }
        }
    }

    /// The merged repository's `packages.json` (with several upstreams; one upstream's own
    /// root serves for just one). Composer 2 only: `metadata-url`, and `available-packages` when
    /// every upstream is finite, so Composer asks for no other name; install notifications,
    /// search, and the upstreams' security advisories, malware filter lists and name lists, all
    /// at the proxy (an upstream's own URLs would be out of reach on a closed network).
    pub async fn merged_root(&self) -> Result<(Document, CacheStatus), ProxyError> {
        let mut views = Vec::with_capacity(self.list.len());
        let mut status = CacheStatus::Hit;
        let mut first_error = None;
        // All at once: an upstream without a cached root may take its whole timeout.
        let answers =
            futures_util::future::join_all(self.list.iter().map(|u| u.metadata.view())).await;
        for answer in answers {
            match answer {
                Ok((view, cache)) => {
                    if cache == CacheStatus::Stale {
                        status = CacheStatus::Stale;
                    }
                    views.push(Some(view));
                }
                Err(e) => {
                    status = CacheStatus::Stale;
                    views.push(None);
                    first_error.get_or_insert(e);
                }
            }
        }
        // A rejected account's last listing still says what it had: its names stay in
        // `available-packages` (they answer 502, naming it), and the merged repository stays
        // finite, so Composer asks for no name outside it.
        for (view, upstream) in views.iter_mut().zip(&self.list) {
            if view.is_none() && upstream.client.key_verdict() == KeyVerdict::Rejected {
                *view = upstream.metadata.last_view();
            }
        }
        if views.iter().all(Option::is_none) {
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        let same = |a: &Option<Arc<View>>, b: &Option<Arc<View>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let mut cached = self.merged_root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_from, doc)) = cached.as_ref() {
            if built_from.len() == views.len()
                && built_from.iter().zip(&views).all(|(a, b)| same(a, b))
            {
                return Ok((doc.clone(), status));
            }
        }
        let available = views
            .iter()
            .map(|v| v.as_ref().and_then(|v| v.finite_names()))
            .collect::<Option<Vec<&[String]>>>()
            .map(|lists| {
                let mut names: Vec<&String> = lists.into_iter().flatten().collect();
                names.sort();
                names.dedup();
                names
            });
        let doc = root_document(&self.public_url, &views, available, SystemTime::UNIX_EPOCH);
        *cached = Some((views, doc.clone()));
        Ok((doc, status))
    }
}

impl Upstreams {
    /// The other accounts of the repository at `index`, in priority order: upstreams with the
    /// same URL (and so the same packages and dists), each with its own key pair and
    /// entitlements. Earlier ones too: a lock file may name a later account's dist URL.
    fn other_accounts(&self, index: usize) -> impl Iterator<Item = &Arc<Upstream>> {
        let url = self.list[index].client.base();
        self.list
            .iter()
            .enumerate()
            .filter(move |(i, u)| *i != index && u.client.base() == url)
            .map(|(_, u)| u)
    }

    /// Runs `fetch` with `owner` (the owner of `name`) and, when its account is refused (key
    /// pair rejected, entitlement missing), with each other account of the same repository
    /// that lists `name`, until one serves. Returns what was fetched and the account that
    /// served it. When none can, the owner's refusal is the answer, naming it.
    /// `allowed` says which accounts may stand in: a view's or a bound token's own only.
    pub async fn with_accounts<T, F, Fut>(
        &self,
        owner: Arc<Upstream>,
        name: &str,
        allowed: impl Fn(&Upstream) -> bool,
        fetch: F,
    ) -> Result<(T, Arc<Upstream>), ProxyError>
    where
        F: Fn(Arc<Upstream>) -> Fut,
        Fut: Future<Output = Result<T, ProxyError>>,
    {
        let refused = match fetch(owner.clone()).await {
            Ok(found) => return Ok((found, owner)),
            Err(e) if e.is_account_refusal() => e,
            Err(e) => return Err(self.naming(&owner, e)),
        };
        let Some(index) = self.list.iter().position(|u| Arc::ptr_eq(u, &owner)) else {
            return Err(self.naming(&owner, refused));
        };
        for account in self.other_accounts(index) {
            if !allowed(account) || !matches!(account.metadata.lists(name).await, Listed::Yes) {
                continue;
            }
            match fetch(account.clone()).await {
                Ok(found) => {
                    tracing::info!(
                        event = "account_fallback",
                        upstream = %owner.name,
                        served_by = %account.name,
                        package = name,
                        reason = %refused,
                        "another account of the same repository served the package"
                    );
                    return Ok((found, account.clone()));
                }
                Err(e) if e.is_account_refusal() => {}
                Err(e) => return Err(self.naming(account, e)),
            }
        }
        Err(self.naming(&owner, refused))
    }

    /// With several upstreams, an error names the one it came from: which account's key or
    /// entitlement is at fault is what ops need to know.
    fn naming(&self, upstream: &Upstream, error: ProxyError) -> ProxyError {
        if self.list.len() > 1 {
            ProxyError::Via {
                upstream: upstream.name.to_string(),
                source: Box::new(error),
            }
        } else {
            error
        }
    }
}

/// A merged root at `public_url` from upstreams' views (`None`: that upstream's root is not at
/// hand), with `available-packages` when the caller could tell every name; never older than
/// `not_before`. Pure.
fn root_document(
    public_url: &str,
    views: &[Option<Arc<View>>],
    available: Option<Vec<&String>>,
    not_before: SystemTime,
) -> Document {
    let mut root = serde_json::Map::new();
    root.insert("packages".into(), json!([]));
    root.insert(
        "metadata-url".into(),
        json!(format!("{public_url}/p2/%package%.json")),
    );
    if let Some(names) = available {
        root.insert("available-packages".into(), json!(names));
    }
    root.insert(
        "notify-batch".into(),
        json!(format!("{public_url}/downloads/")),
    );
    root.insert(
        "search".into(),
        json!(format!("{public_url}/search.json?q=%query%&type=%type%")),
    );
    let apis: Vec<&RootApis> = views.iter().flatten().map(|v| v.apis()).collect();
    advertise_apis(&mut root, public_url, &apis);
    let last_modified = views
        .iter()
        .flatten()
        .map(|v| v.root.last_modified)
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .max(not_before);
    Document::from_json(&serde_json::Value::Object(root), last_modified)
}

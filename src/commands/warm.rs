//! `composer-proxy warm --lock composer.lock`: fills the cache with every archive a lock file
//! names, before the first CI run needs them.
//!
//! It opens the cache directory exactly as the proxy does (the same metadata cache and archive
//! store, with their single flight, verification and atomic commits), so it is safe beside a
//! running proxy and what it stores is what the proxy would have stored. Each locked package's
//! dist URL gives the archive's key: an upstream URL through the same function that rewrites
//! metadata, a proxy URL by its last path segment. The upstream's metadata then says where
//! that archive lives and which sha1 it must have.
//!
//! With `--via URL` it downloads each archive from a running proxy instead, as Composer would
//! (`via`), so that proxy fetches and stores it: no keys and no cache directory needed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use indicatif::HumanBytes;
use serde_json::Value;

use crate::cache::archives::{Archive, ArchiveStore, StoreSettings};
use crate::cache::CacheDir;
use crate::commands::{lock, progress_bar, CommandError, EXIT_FAILED, EXIT_OK};
use crate::composer::Rewriter;
use crate::config::{Config, Secret};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::upstreams::Upstreams;

mod via;

pub struct WarmOptions {
    pub lock: PathBuf,
    pub concurrency: usize,
    /// A running proxy (its URL as clients use it) to download through, instead of from the
    /// upstreams into `cache_dir`.
    pub via: Option<String>,
    /// The client token for `via`, when that proxy requires tokens.
    pub token: Option<Secret>,
}

/// One package of a lock file, as far as warming needs it.
#[derive(Debug, PartialEq, Eq)]
struct Locked {
    name: String,
    version: String,
    package_type: String,
    /// `dist.url` and `dist.type`, when the package has a dist.
    dist: Option<(String, String)>,
}

/// What to do for one locked package.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Fetch the archive with this key (see [`crate::composer::dist_key`]) and extension (of
    /// the proxy's URL for it), from the upstream the dist URL names (by its position in the
    /// list) or else from the package's owner.
    Fetch {
        key: String,
        ext: String,
        upstream: ServedBy,
    },
    /// A metapackage, or a package without a dist: nothing to download.
    Nothing,
    /// The dist is not one this proxy serves (another repository's host).
    Skip(String),
}

#[derive(Debug)]
enum Outcome {
    Fetched(u64),
    Cached,
    Nothing,
    Skipped(String),
    Failed(String),
}

/// Reads `packages` and `packages-dev` of a lock file.
fn read_lock(bytes: &[u8]) -> Result<Vec<Locked>, String> {
    let lock: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if !lock.is_object() || lock.get("packages").is_none() {
        return Err("not a composer.lock (no `packages`)".into());
    }
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let mut locked = Vec::new();
    for section in ["packages", "packages-dev"] {
        let Some(list) = lock.get(section).and_then(Value::as_array) else {
            continue;
        };
        for package in list {
            let Some(name) = text(package, "name") else {
                return Err(format!("a package in `{section}` has no name"));
            };
            let dist = package.get("dist").and_then(|d| {
                let url = text(d, "url").filter(|u| !u.is_empty())?;
                Some((url, text(d, "type").unwrap_or_else(|| "zip".into())))
            });
            locked.push(Locked {
                name: name.to_ascii_lowercase(),
                version: text(package, "version").unwrap_or_default(),
                package_type: text(package, "type").unwrap_or_default(),
                dist,
            });
        }
    }
    Ok(locked)
}

/// Which upstream serves a planned archive.
#[derive(Debug, PartialEq, Eq)]
enum ServedBy {
    /// The upstream at this position, whose origin (or allowed host) the dist URL is on.
    Upstream(usize),
    /// The upstream a proxy dist URL names by its prefix (`…/<name>/dists/…`), if any is
    /// configured under that name; else the package's owner.
    Named(Option<String>),
}

/// Which archive a locked package needs, from its dist URL alone: on an upstream's origin or
/// allowed host (in priority order), or a URL some composer-proxy wrote.
fn plan(rewriters: &[Rewriter], package: &Locked) -> Plan {
    let Some((url, dist_type)) = &package.dist else {
        return Plan::Nothing;
    };
    if package.package_type == "metapackage" {
        return Plan::Nothing;
    }
    for (i, rewriter) in rewriters.iter().enumerate() {
        if let Some(proxied) = rewriter.proxied_dist(&package.name, url, dist_type) {
            let ext = proxied.url.rsplit_once('.').map(|(_, ext)| ext);
            return Plan::Fetch {
                ext: ext.unwrap_or_default().to_string(),
                key: proxied.key,
                upstream: ServedBy::Upstream(i),
            };
        }
    }
    match proxy_dist_key(&package.name, url) {
        Some((named, key, ext)) => Plan::Fetch {
            key,
            ext,
            upstream: ServedBy::Named(named),
        },
        None => Plan::Skip(format!(
            "its dist is on no configured upstream or allowed host ({url})"
        )),
    }
}

/// The key and extension in a dist URL some proxy wrote (`…/dists/<vendor>/<name>/<key>.<ext>`),
/// whatever its host and path prefix, with the path segment before `dists` (an upstream's
/// name, when the URL is of an `[[upstream]]`): a lock made through this proxy under another
/// public URL still names the same archives, since the key depends only on the upstream URL.
fn proxy_dist_key(name: &str, url: &str) -> Option<(Option<String>, String, String)> {
    let path = url::Url::parse(url).ok()?.path().to_string();
    let (dir, file) = path.rsplit_once('/')?;
    let prefix = dir.strip_suffix(&format!("/dists/{name}"))?;
    let (key, ext) = file.split_once('.')?;
    let is_key = crate::composer::is_hex_digest(key, 32);
    let named = prefix.rsplit('/').next().filter(|s| !s.is_empty());
    is_key.then(|| (named.map(str::to_string), key.to_string(), ext.to_string()))
}

/// The upstreams' metadata caches and the archive store on `cache_dir`, opened as the proxy
/// opens them.
async fn open_caches(config: &Config) -> Result<(Upstreams, ArchiveStore), CommandError> {
    let disk = Arc::new(CacheDir::open(&config.cache_dir).await.map_err(|e| {
        CommandError::Usage(format!(
            "invalid setting `cache_dir`: cannot use {}: {e}",
            config.cache_dir.display()
        ))
    })?);
    // Metrics are only exported by a serving proxy; these go nowhere. The public URL only
    // shapes rewritten documents, which warm never serves.
    let public_url = config.public_url_for(config.listen);
    let upstreams = Upstreams::new(config, &public_url, &disk, &Arc::new(Metrics::default()))
        .map_err(|e| CommandError::Usage(format!("{e:#}")))?;
    for upstream in upstreams.iter() {
        upstream.metadata.skip_v1_chain();
    }
    // No memory tier: nothing is served from this process.
    let settings = StoreSettings {
        memory_bytes: 0,
        ..StoreSettings::from(config)
    };
    let archives = ArchiveStore::open(disk, settings, None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the archive store in `cache_dir`: {e}"))?;
    Ok((upstreams, archives))
}

/// Fetches (or finds) one package's archive; a download is read to its verified end.
async fn warm_one(
    upstreams: &Upstreams,
    archives: &ArchiveStore,
    package: &Locked,
    plan: Plan,
) -> Outcome {
    let (key, via) = match plan {
        Plan::Fetch { key, upstream, .. } => (key, upstream),
        Plan::Nothing => return Outcome::Nothing,
        Plan::Skip(why) => return Outcome::Skipped(why),
    };
    let upstream = match via {
        ServedBy::Upstream(i) => upstreams.iter().nth(i).cloned(),
        ServedBy::Named(Some(name)) if upstreams.named(&name).is_some() => {
            upstreams.named(&name).cloned()
        }
        ServedBy::Named(_) => match upstreams.owner(&package.name).await {
            Ok(owner) => owner,
            Err(e) => return Outcome::Failed(e.to_string()),
        },
    };
    let Some(upstream) = upstream else {
        return Outcome::Skipped("no configured upstream has this package".into());
    };
    let source = match upstream.metadata.dist_source(&package.name, &key).await {
        Ok(source) => source,
        Err(e) => return Outcome::Failed(format!("{}: {e}", upstream.name)),
    };
    match archives
        .get(&upstream.client, &source, source.store_key())
        .await
    {
        Err(e) => Outcome::Failed(failure_reason(&e)),
        // Stored already: by an earlier run, a proxy, or another process while this one waited.
        Ok((Archive::Memory(_) | Archive::File(_), _)) => Outcome::Cached,
        Ok((Archive::Streaming { mut reader, .. }, _)) => {
            // The store only ends a download's stream once the archive is verified and
            // stored, so reading to the end is waiting for exactly that.
            let mut received = 0;
            while let Some(chunk) = reader.next_chunk().await {
                match chunk {
                    Ok(bytes) => received += bytes.len() as u64,
                    Err(e) => return Outcome::Failed(e.to_string()),
                }
            }
            Outcome::Fetched(received)
        }
    }
}

/// A failed download in the words ops need: the two upstream answers that are about the
/// account get its explanation, the rest their technical description.
fn failure_reason(e: &ProxyError) -> String {
    if e.is_not_found() {
        "upstream has no archive for it for this key pair (HTTP 404): the Marketplace account \
         may lack the entitlement, or its access (licence, subscription, invoice) has lapsed"
            .into()
    } else if e.is_key_rejection() {
        format!("{e}: check the key pair with `composer-proxy check`")
    } else {
        e.to_string()
    }
}

pub async fn run(config: &Config, options: &WarmOptions) -> Result<u8, CommandError> {
    let lock_name = options.lock.display().to_string();
    let bytes = std::fs::read(&options.lock)
        .map_err(|e| anyhow::anyhow!("cannot read {lock_name}: {e}"))?;
    let locked = read_lock(&bytes).map_err(|e| anyhow::anyhow!("{lock_name}: {e}"))?;
    // As `lock migrate` decides which dist URLs are the proxy's and what they become; only the
    // keys matter here, so the public URL is whichever the URLs are built for.
    let base = options
        .via
        .clone()
        .unwrap_or_else(|| config.public_url_for(config.listen));
    let rewriters = lock::rewriters(config, &base);
    let plans: Vec<Plan> = locked.iter().map(|p| plan(&rewriters, p)).collect();
    let concurrency = options.concurrency;

    let (outcomes, target) = match &options.via {
        Some(url) => {
            let proxy = via::Proxy::new(config, url, options.token.as_ref())?;
            proxy.check().await?;
            let proxy = &proxy;
            let outcomes = fan_out(&locked, plans, concurrency, move |package, plan| {
                proxy.warm(package, plan)
            })
            .await;
            (outcomes, format!("via {url}"))
        }
        None => {
            let (upstreams, archives) = open_caches(config).await?;
            // Every upstream's `packages.json` before fanning out, so a rejected key or a down
            // upstream is one clear message rather than a failure per package.
            for upstream in upstreams.iter() {
                upstream.metadata.view().await.map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read the metadata of upstream {:?}: {e}",
                        upstream.name
                    )
                })?;
            }
            let (upstreams, archives) = (&upstreams, &archives);
            let outcomes = fan_out(&locked, plans, concurrency, move |package, plan| {
                warm_one(upstreams, archives, package, plan)
            })
            .await;
            (outcomes, format!("cache {}", config.cache_dir.display()))
        }
    };

    let report = Report::new(locked.iter().zip(outcomes.iter()));
    print!("{}", report.render(&lock_name, &target));
    Ok(if report.failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

/// Runs `warm` on every locked package, `concurrency` at a time, with a progress bar; the
/// outcomes in lock order.
async fn fan_out<'a, F, Fut>(
    locked: &'a [Locked],
    plans: Vec<Plan>,
    concurrency: usize,
    warm: F,
) -> Vec<Outcome>
where
    F: Fn(&'a Locked, Plan) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let bar = progress_bar(locked.len() as u64, "warming");
    let bar_ref = &bar;
    let mut outcomes: Vec<(usize, Outcome)> =
        futures_util::stream::iter(locked.iter().zip(plans).enumerate())
            .map(|(i, (package, plan))| {
                let warming = warm(package, plan);
                async move {
                    let outcome = warming.await;
                    bar_ref.set_message(package.name.clone());
                    bar_ref.inc(1);
                    (i, outcome)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    bar.finish_and_clear();
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, outcome)| outcome).collect()
}

/// The summary, in lock order.
#[derive(Default)]
struct Report {
    total: usize,
    fetched: usize,
    fetched_bytes: u64,
    cached: usize,
    nothing: usize,
    skipped: Vec<String>,
    failed: Vec<String>,
}

impl Report {
    fn new<'a>(results: impl Iterator<Item = (&'a Locked, &'a Outcome)>) -> Report {
        let mut report = Report::default();
        for (package, outcome) in results {
            report.total += 1;
            let who = format!("{} {}", package.name, package.version);
            match outcome {
                Outcome::Fetched(bytes) => {
                    report.fetched += 1;
                    report.fetched_bytes += bytes;
                }
                Outcome::Cached => report.cached += 1,
                Outcome::Nothing => report.nothing += 1,
                Outcome::Skipped(why) => report.skipped.push(format!("{who}: {why}")),
                Outcome::Failed(why) => report.failed.push(format!("{who}: {why}")),
            }
        }
        report
    }

    /// `target` is where the archives went: `cache <dir>` or `via <url>`.
    fn render(&self, lock: &str, target: &str) -> String {
        let mut out = format!("{lock}: {} packages, {target}\n", self.total);
        out += &format!(
            "fetched: {} ({})\n",
            self.fetched,
            HumanBytes(self.fetched_bytes)
        );
        out += &format!("already cached: {}\n", self.cached);
        out += &format!("nothing to fetch: {} (metapackages)\n", self.nothing);
        out += &format!(
            "skipped: {} (not from a configured upstream)\n",
            self.skipped.len()
        );
        for line in &self.skipped {
            out += &format!("  {line}\n");
        }
        out += &format!("failed: {}\n", self.failed.len());
        for line in &self.failed {
            out += &format!("  {line}\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewriter() -> Rewriter {
        crate::composer::test_rewriter("http://proxy.internal:8080")
    }

    #[test]
    fn both_lock_sections_are_read() {
        let lock = br#"{"packages":[
            {"name":"magento/framework","version":"103.0.7","type":"magento2-library",
             "dist":{"type":"zip","url":"https:\/\/repo.magento.com\/archives\/f.zip","shasum":""}},
            {"name":"magento/product-community-edition","version":"2.4.7","type":"metapackage"}],
          "packages-dev":[{"name":"Vendor/Tool","version":"1.0.0","dist":{"url":"https://github.com/x.zip"}}]}"#;
        let locked = read_lock(lock).expect("reads");
        assert_eq!(locked.len(), 3);
        assert_eq!(
            locked[0].dist,
            Some((
                "https://repo.magento.com/archives/f.zip".to_string(),
                "zip".to_string()
            ))
        );
        assert_eq!(locked[1].dist, None);
        assert_eq!(locked[2].name, "vendor/tool");
        assert!(read_lock(b"{\"name\":\"x\"}").is_err());
        assert!(read_lock(b"not json").is_err());
    }

    #[test]
    fn upstream_and_proxy_dist_urls_name_the_same_archive() {
        let r = rewriter();
        let upstream_url = "https://repo.magento.com/archives/magento/framework/f-103.0.7.0.zip";
        let proxied = r
            .proxied_dist("magento/framework", upstream_url, "zip")
            .expect("upstream url");
        let locked = |url: &str| Locked {
            name: "magento/framework".into(),
            version: "103.0.7".into(),
            package_type: "magento2-library".into(),
            dist: Some((url.into(), "zip".into())),
        };
        let r = [r];
        assert_eq!(
            plan(&r, &locked(upstream_url)),
            Plan::Fetch {
                key: proxied.key.clone(),
                ext: "zip".into(),
                upstream: ServedBy::Upstream(0)
            }
        );
        // A lock made through the proxy at another public URL, and through an upstream's own
        // prefix: its name comes along.
        let elsewhere = format!(
            "https://composer.example/dists/magento/framework/{}.zip",
            proxied.key
        );
        assert_eq!(
            plan(&r, &locked(&elsewhere)),
            Plan::Fetch {
                key: proxied.key.clone(),
                ext: "zip".into(),
                upstream: ServedBy::Named(None)
            }
        );
        let prefixed = format!(
            "https://composer.example/magento/dists/magento/framework/{}.zip",
            proxied.key
        );
        assert_eq!(
            plan(&r, &locked(&prefixed)),
            Plan::Fetch {
                key: proxied.key,
                ext: "zip".into(),
                upstream: ServedBy::Named(Some("magento".into()))
            }
        );
        assert!(matches!(
            plan(&r, &locked("https://github.com/magento/framework.zip")),
            Plan::Skip(_)
        ));
        // Another package's proxy URL is not this package's archive.
        assert!(matches!(
            plan(
                &r,
                &locked(&format!(
                    "https://composer.example/dists/magento/other/{}.zip",
                    "a".repeat(32)
                ))
            ),
            Plan::Skip(_)
        ));
    }

    #[test]
    fn metapackages_have_nothing_to_fetch() {
        let meta = Locked {
            name: "magento/product-community-edition".into(),
            version: "2.4.7".into(),
            package_type: "metapackage".into(),
            dist: None,
        };
        assert_eq!(plan(&[rewriter()], &meta), Plan::Nothing);
    }
}

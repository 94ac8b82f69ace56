//! `composer-proxy lock migrate composer.lock`: moves a lock file made directly against the
//! upstream onto the proxy.
//!
//! `composer install` downloads from the dist URLs stored in the lock and never asks the
//! repository, so such locks bypass the proxy (and need the key pair on every machine) until
//! their URLs change. Each upstream dist URL becomes the URL the proxy's own metadata names
//! for that archive (built by the same [`Rewriter`] code), and upstream `notification-url`s
//! become the proxy's. Nothing else changes, byte for byte: the lock is parsed only to find
//! where those strings are, and exactly those spans of the original text are replaced, in the
//! escaping style they were written in. The new file replaces the old one atomically.

use std::fs;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::commands::{CommandError, EXIT_OK};
use crate::composer::Rewriter;
use crate::config::Config;

pub struct MigrateOptions {
    pub lock: PathBuf,
    /// Overrides the configured `public_url`.
    pub public_url: Option<String>,
}

/// For clap: the proxy's URL as clients use it, without a trailing slash.
pub use crate::config::parse_public_url;

#[derive(Deserialize)]
struct RawLock<'a> {
    #[serde(borrow, default)]
    packages: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default, rename = "packages-dev")]
    packages_dev: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct RawPackage<'a> {
    name: String,
    #[serde(borrow, default)]
    dist: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "notification-url")]
    notification_url: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawDist<'a> {
    #[serde(default, rename = "type")]
    dist_type: Option<String>,
    #[serde(borrow, default)]
    url: Option<&'a RawValue>,
}

/// What a migration changed and left.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migration {
    pub text: String,
    pub dist_urls: usize,
    pub notification_urls: usize,
    /// Dist URLs on another host (another repository, GitHub …): the proxy cannot serve them.
    pub foreign_dists: usize,
}

/// Rewrites `text` (a composer.lock) for the proxy `rewriter` describes.
///
/// `rewriters` are the upstreams' in priority order, all building URLs of the merged
/// repository: the proxy resolves those by the package's owner, so the lock stays right
/// whichever of several accounts serves a package.
pub fn migrate_text(text: &str, rewriters: &[Rewriter]) -> Result<Migration, String> {
    let lock: RawLock = serde_json::from_str(text).map_err(|e| format!("not a lock file: {e}"))?;
    let packages = lock.packages.ok_or("not a lock file: no `packages`")?;
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut migration = Migration::default();
    for raw in packages.iter().chain(lock.packages_dev.iter().flatten()) {
        let package: RawPackage = serde_json::from_str(raw.get())
            .map_err(|e| format!("a package entry is not usable: {e}"))?;
        let name = package.name.to_ascii_lowercase();
        if let Some(url) = package.notification_url {
            let value: Option<String> = serde_json::from_str(url.get()).ok();
            let from_upstream = |v: &String| rewriters.iter().any(|r| r.upstream_url(v).is_some());
            if let (Some(rewriter), true) =
                (rewriters.first(), value.is_some_and(|v| from_upstream(&v)))
            {
                edits.push(replacement(text, url, &rewriter.notify_batch_url())?);
                migration.notification_urls += 1;
            }
        }
        let Some(dist) = package.dist else { continue };
        let dist: RawDist =
            serde_json::from_str(dist.get()).map_err(|e| format!("dist of {name}: {e}"))?;
        let Some(url) = dist.url else { continue };
        let Ok(value) = serde_json::from_str::<String>(url.get()) else {
            continue;
        };
        let dist_type = dist.dist_type.as_deref().unwrap_or("zip");
        let proxied = rewriters
            .iter()
            .find_map(|r| r.proxied_dist(&name, &value, dist_type));
        let at_proxy = rewriters.first().is_some_and(|r| {
            value.starts_with(&format!("{}/", r.public_url)) && value.contains("/dists/")
        });
        match proxied {
            Some(proxied) => {
                edits.push(replacement(text, url, &proxied.url)?);
                migration.dist_urls += 1;
            }
            None if at_proxy => {}
            None => migration.foreign_dists += 1,
        }
    }
    edits.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(text.len() + edits.len() * 32);
    let mut at = 0;
    for (span, new) in edits {
        out.push_str(&text[at..span.start]);
        out.push_str(&new);
        at = span.end;
    }
    out.push_str(&text[at..]);
    migration.text = out;
    Ok(migration)
}

/// The span of `raw` (a JSON string borrowed from `text`) and `value` encoded the way it
/// was: Composer writes `/` unescaped, PHP's default `json_encode` as `\/`.
fn replacement(text: &str, raw: &RawValue, value: &str) -> Result<(Range<usize>, String), String> {
    // `raw` is a slice of `text` (serde_json borrows it), so its offset is the difference of
    // the two addresses; checked rather than trusted.
    let span = (raw.get().as_ptr() as usize)
        .checked_sub(text.as_ptr() as usize)
        .map(|start| start..start + raw.get().len())
        .filter(|span| text.get(span.clone()) == Some(raw.get()))
        .ok_or("internal error: a URL could not be located in the lock file")?;
    let mut encoded = serde_json::to_string(value).map_err(|e| e.to_string())?;
    if raw.get().contains("\\/") {
        encoded = encoded.replace('/', "\\/");
    }
    Ok((span, encoded))
}

/// Replaces `path` with `bytes` atomically: a temporary file beside it, synced, then renamed
/// over it, keeping its permissions. A crash leaves either the old or the new lock.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().map_or_else(
        || "composer.lock".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let temp = dir.join(format!(".{name}.composer-proxy-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.set_permissions(fs::metadata(path)?.permissions())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// The upstreams' rewriters in priority order, each building URLs of the merged repository at
/// `public_url`: what a lock's dist URLs become, and which archive each names.
pub(super) fn rewriters(config: &Config, public_url: &str) -> Vec<Rewriter> {
    // With [[upstream]] tables, GitHub dists (packagist.org's) go to the merged URL, where the
    // package's owner serves them; one flat upstream is repo.magento.com, and a project's GitHub
    // dists then come from packagist.org directly, so they are left as they are.
    let github_api = config
        .upstreams
        .iter()
        .any(|u| u.named)
        .then(|| config.github.api.clone());
    config
        .upstreams
        .iter()
        .map(|u| Rewriter {
            public_url: public_url.to_string(),
            upstream: u.url.clone(),
            allowed_hosts: u.allowed_hosts.clone(),
            github_api: github_api.clone(),
        })
        .collect()
}

pub fn migrate(config: &Config, options: &MigrateOptions) -> Result<u8, CommandError> {
    let public_url = options
        .public_url
        .clone()
        .or_else(|| config.public_url.clone())
        .ok_or_else(|| {
            CommandError::Usage(
                "lock migrate needs the URL clients reach the proxy at: pass --public-url or set \
                 public_url (COMPOSER_PROXY_PUBLIC_URL)"
                    .into(),
            )
        })?;
    let rewriters = rewriters(config, &public_url);
    let name = options.lock.display().to_string();
    let text = fs::read_to_string(&options.lock)
        .map_err(|e| anyhow::anyhow!("cannot read {name}: {e}"))?;
    let migration = migrate_text(&text, &rewriters).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let changed = migration.dist_urls + migration.notification_urls;
    if changed > 0 {
        replace_file(&options.lock, migration.text.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {name}: {e}"))?;
    }
    println!(
        "rewrote {} dist URLs and {} notification URLs in {name} to {public_url}",
        migration.dist_urls, migration.notification_urls
    );
    if migration.foreign_dists > 0 {
        println!(
            "left {} dist URLs on other hosts as they are (not from a configured upstream or \
             allowed host)",
            migration.foreign_dists
        );
    }
    if changed == 0 {
        println!("nothing to rewrite: {name} is unchanged");
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In front of one flat upstream: GitHub dists are not the proxy's.
    fn rewriter() -> Rewriter {
        Rewriter {
            github_api: None,
            ..crate::composer::test_rewriter("http://proxy.internal:8080")
        }
    }

    const LOCK: &str = r#"{
    "_readme": ["This file locks the dependencies of your project to a known state"],
    "content-hash": "abc",
    "packages": [
        {
            "name": "magento/framework",
            "version": "103.0.7",
            "dist": {
                "type": "zip",
                "url": "https://repo.magento.com/archives/magento/framework/magento-framework-103.0.7.0.zip",
                "shasum": "1234"
            },
            "type": "magento2-library",
            "notification-url": "https://repo.magento.com/downloads/",
            "description": "see https://repo.magento.com/archives/magento/framework/magento-framework-103.0.7.0.zip"
        },
        {
            "name": "symfony/console",
            "version": "v6.0.0",
            "dist": {"type": "zip", "url": "https://api.github.com/repos/symfony/console/zipball/abc"},
            "notification-url": "https://packagist.org/downloads/"
        }
    ],
    "packages-dev": [
        {
            "name": "vendorx/tool",
            "version": "1.0.0",
            "dist": {"type": "tar", "url": "https:\/\/repo.magento.com\/archives\/vendorx\/tool\/tool-1.0.0.0.tar"},
            "notification-url": "https:\/\/repo.magento.com\/downloads\/"
        }
    ],
    "aliases": []
}
"#;

    #[test]
    fn only_upstream_urls_change_and_in_their_own_escaping() {
        let r = rewriter();
        let m = migrate_text(LOCK, std::slice::from_ref(&r)).expect("migrates");
        assert_eq!(
            (m.dist_urls, m.notification_urls, m.foreign_dists),
            (2, 2, 1)
        );
        let framework = r
            .proxied_dist(
                "magento/framework",
                "https://repo.magento.com/archives/magento/framework/magento-framework-103.0.7.0.zip",
                "zip",
            )
            .expect("proxied");
        let tool = r
            .proxied_dist(
                "vendorx/tool",
                "https://repo.magento.com/archives/vendorx/tool/tool-1.0.0.0.tar",
                "tar",
            )
            .expect("proxied");
        let expected = LOCK
            .replacen(
                "\"https://repo.magento.com/archives/magento/framework/magento-framework-103.0.7.0.zip\"",
                &format!("\"{}\"", framework.url),
                1,
            )
            .replace(
                "\"https://repo.magento.com/downloads/\"",
                "\"http://proxy.internal:8080/downloads/\"",
            )
            .replace(
                "\"https:\\/\\/repo.magento.com\\/archives\\/vendorx\\/tool\\/tool-1.0.0.0.tar\"",
                &format!("\"{}\"", tool.url.replace('/', "\\/")),
            )
            .replace(
                "\"https:\\/\\/repo.magento.com\\/downloads\\/\"",
                "\"http:\\/\\/proxy.internal:8080\\/downloads\\/\"",
            );
        assert_eq!(m.text, expected);
        // The same URL inside a description is not a dist URL and stays.
        assert!(m
            .text
            .contains("\"see https://repo.magento.com/archives/magento/framework/"));
    }

    #[test]
    fn a_migrated_lock_migrates_to_itself() {
        let r = rewriter();
        let once = migrate_text(LOCK, std::slice::from_ref(&r)).expect("migrates");
        let twice = migrate_text(&once.text, std::slice::from_ref(&r)).expect("migrates");
        assert_eq!(twice.text, once.text);
        assert_eq!((twice.dist_urls, twice.notification_urls), (0, 0));
    }

    #[test]
    fn with_upstream_tables_github_dists_go_to_the_merged_url() {
        let r = crate::composer::test_rewriter("http://proxy.internal:8080");
        let m = migrate_text(LOCK, std::slice::from_ref(&r)).expect("migrates");
        assert_eq!((m.dist_urls, m.foreign_dists), (3, 0));
        let console = r
            .proxied_dist(
                "symfony/console",
                "https://api.github.com/repos/symfony/console/zipball/abc",
                "zip",
            )
            .expect("a GitHub dist is proxied");
        assert!(console
            .url
            .starts_with("http://proxy.internal:8080/dists/symfony/console/"));
        assert!(m.text.contains(&console.url));
    }

    #[test]
    fn other_json_is_refused() {
        assert!(migrate_text("{\"name\": \"x\"}", &[rewriter()]).is_err());
        assert!(migrate_text("[1", &[rewriter()]).is_err());
    }

    #[test]
    fn public_urls_are_checked() {
        assert_eq!(
            parse_public_url("https://proxy.example/magento/").as_deref(),
            Ok("https://proxy.example/magento")
        );
        assert!(parse_public_url("proxy.example").is_err());
        assert!(parse_public_url("ftp://proxy.example").is_err());
        assert!(parse_public_url("https://proxy.example/?a=b").is_err());
    }
}

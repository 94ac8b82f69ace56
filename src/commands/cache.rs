//! `composer-proxy cache stats | purge [PACKAGE] | verify [--remove]`: the cache directory's
//! chores, without hand-edits.
//!
//! They work on the files alone (no upstream, no running proxy needed) and are safe while
//! proxies use the directory: they read, and they unlink. An unlinked archive that a proxy is
//! sending stays readable through its open descriptor, and the next request fetches it again.
//! Temporary files are never touched: they may be downloads in progress.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use indicatif::HumanBytes;

use crate::cache::archives::integrity::check_stored;
use crate::cache::archives::{read_description, scan, StoredArchive};
use crate::cache::CacheDir;
use crate::commands::{progress_bar, CommandError, EXIT_FAILED, EXIT_OK};
use crate::composer::{is_package_name, same_origin};
use crate::config::Config;

/// For clap: a package name as Composer writes it (`vendor/name`).
pub fn parse_package_name(value: &str) -> Result<String, String> {
    let name = value.to_ascii_lowercase();
    if is_package_name(&name) {
        Ok(name)
    } else {
        Err(format!("{value:?} is not a package name (vendor/name)"))
    }
}

/// The cache directory, or `None` (after saying so) when there is none yet.
fn existing(config: &Config) -> Option<CacheDir> {
    if config.cache_dir.is_dir() {
        Some(CacheDir::at(&config.cache_dir))
    } else {
        println!(
            "cache directory {} does not exist: nothing is cached",
            config.cache_dir.display()
        );
        None
    }
}

/// Counts the files below `dir` (recursively) that `take` accepts, and their total size; a
/// missing directory is empty. Files come and go while proxies run: one that vanished, or that
/// `take` could not handle, is simply not counted.
fn walk_files(dir: &Path, take: &mut impl FnMut(&Path) -> bool) -> (u64, u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut files, mut bytes) = (0, 0);
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (f, b) = walk_files(&entry.path(), take);
            files += f;
            bytes += b;
        } else if take(&entry.path()) {
            files += 1;
            bytes += meta.len();
        }
    }
    (files, bytes)
}

/// Files below `dir` and their total size.
fn tally(dir: &Path) -> (u64, u64) {
    walk_files(dir, &mut |_| true)
}

/// The stored archives as `(key, bytes)`, sorted by key so reports are stable.
fn archives(disk: &CacheDir) -> Result<Vec<(String, u64)>, CommandError> {
    let mut found: Vec<(String, u64)> = scan(&disk.archives_root())
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", disk.archives_root().display()))?
        .into_iter()
        .map(|(key, len, _)| (key, len))
        .collect();
    found.sort();
    Ok(found)
}

/// The configured upstream an archive came from: the first whose origin or allowed hosts its
/// URL is on. Several Marketplace accounts share an origin, and their archives one store: such
/// an archive counts for the first of them.
fn upstream_of<'a>(config: &'a Config, url: &str) -> Option<&'a str> {
    let url = url::Url::parse(url).ok()?;
    config
        .upstreams
        .iter()
        .find(|u| {
            std::iter::once(&u.url)
                .chain(&u.allowed_hosts)
                .any(|origin| same_origin(origin, &url))
        })
        .map(|u| u.name.as_str())
}

/// Checks an `--upstream` argument against the configuration.
fn known_upstream<'a>(
    config: &Config,
    name: Option<&'a str>,
) -> Result<Option<&'a str>, CommandError> {
    match name {
        Some(name) if !config.upstreams.iter().any(|u| u.name == name) => {
            let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
            Err(CommandError::Usage(format!(
                "no upstream named {name:?} (configured: {})",
                names.join(", ")
            )))
        }
        other => Ok(other),
    }
}

/// Whether the archive under `key` belongs to `upstream` (any, when `None`).
fn of_upstream(config: &Config, disk: &CacheDir, key: &str, upstream: Option<&str>) -> bool {
    match upstream {
        None => true,
        Some(name) => {
            description(disk, key).is_some_and(|d| upstream_of(config, &d.url) == Some(name))
        }
    }
}

fn description(disk: &CacheDir, key: &str) -> Option<StoredArchive> {
    read_description(&disk.archive_meta_path(key)?)
}

/// Unlinks an archive with its description and lock file, in the order the store relies on
/// (never an archive without its description). `false` if it was already gone.
fn remove_archive(disk: &CacheDir, key: &str) -> io::Result<bool> {
    let Some(path) = disk.archive_path(key) else {
        return Ok(false);
    };
    let removed = match fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    for extra in [disk.archive_meta_path(key), disk.archive_lock_path(key)]
        .into_iter()
        .flatten()
    {
        // Already gone is fine: eviction in a proxy may have raced us.
        let _ = fs::remove_file(extra);
    }
    Ok(removed)
}

pub fn stats(config: &Config) -> Result<u8, CommandError> {
    let Some(disk) = existing(config) else {
        return Ok(EXIT_OK);
    };
    let archives = archives(&disk)?;
    let bytes: u64 = archives.iter().map(|(_, len)| len).sum();
    let bound = config.archive_cache_max_bytes;
    let (metadata_files, metadata_bytes) = tally(&disk.metadata_root());
    let (temp_files, temp_bytes) = tally(&disk.temp_root());
    println!("cache directory: {}", config.cache_dir.display());
    println!(
        "archives: {} files, {} of {} (archive_cache_max_bytes, {:.1}% used)",
        archives.len(),
        HumanBytes(bytes),
        HumanBytes(bound),
        if bound == 0 {
            100.0
        } else {
            bytes as f64 * 100.0 / bound as f64
        }
    );
    if config.upstreams.len() > 1 {
        let mut per: Vec<(&str, u64, u64)> = config
            .upstreams
            .iter()
            .map(|u| (u.name.as_str(), 0, 0))
            .collect();
        let (mut other, mut other_bytes) = (0, 0);
        for (key, len) in &archives {
            let owner = description(&disk, key).and_then(|d| upstream_of(config, &d.url));
            match per.iter_mut().find(|(name, _, _)| Some(*name) == owner) {
                Some((_, n, b)) => {
                    *n += 1;
                    *b += len;
                }
                None => {
                    other += 1;
                    other_bytes += len;
                }
            }
        }
        for (name, n, b) in per {
            println!("  upstream {name}: {n} archives, {}", HumanBytes(b));
        }
        if other > 0 {
            println!(
                "  from no configured upstream (or undescribed): {other} archives, {}",
                HumanBytes(other_bytes)
            );
        }
    }
    println!(
        "metadata: {metadata_files} files, {}",
        HumanBytes(metadata_bytes)
    );
    for upstream in config.upstreams.iter().filter(|u| u.named) {
        let (files, bytes) = tally(&disk.metadata_root().join("upstreams").join(&upstream.name));
        println!(
            "  upstream {}: {files} files, {}",
            upstream.name,
            HumanBytes(bytes)
        );
    }
    println!(
        "temporary files: {temp_files}, {} (downloads and writes in progress; leftovers of a \
         killed process are removed by a running proxy within cache_sweep_interval_secs)",
        HumanBytes(temp_bytes)
    );
    Ok(EXIT_OK)
}

/// Removes everything, one package's archives, or (with `upstream`) what came from one upstream:
/// its archives and its metadata.
pub fn purge(
    config: &Config,
    package: Option<&str>,
    upstream: Option<&str>,
) -> Result<u8, CommandError> {
    let upstream = known_upstream(config, upstream)?;
    let Some(disk) = existing(config) else {
        return Ok(EXIT_OK);
    };
    let (mut removed, mut removed_bytes, mut undescribed) = (0, 0, 0);
    for (key, len) in archives(&disk)? {
        if !of_upstream(config, &disk, &key, upstream) {
            continue;
        }
        if let Some(package) = package {
            match description(&disk, &key) {
                Some(d) if d.package == package => {}
                Some(_) => continue,
                None => {
                    undescribed += 1;
                    continue;
                }
            }
        }
        if remove_archive(&disk, &key).map_err(|e| anyhow::anyhow!("cannot remove {key}: {e}"))? {
            removed += 1;
            removed_bytes += len;
        }
    }
    match package {
        Some(package) => {
            println!(
                "removed {removed} archives of {package} ({})",
                HumanBytes(removed_bytes)
            );
            if undescribed > 0 {
                println!(
                    "{undescribed} archives have no description, so their package is unknown; \
                     `cache purge` without a package removes them"
                );
            }
        }
        None => {
            let stray = purge_stray_descriptions(&disk.archives_root());
            // One named upstream's metadata is its own directory; the flat upstream's is all.
            let metadata =
                match upstream.and_then(|n| config.upstreams.iter().find(|u| u.name == n)) {
                    Some(u) if u.named => disk.metadata_root().join("upstreams").join(&u.name),
                    _ => disk.metadata_root(),
                };
            let (files, bytes) = purge_files(&metadata);
            println!(
                "removed {removed} archives ({}) and {files} metadata files ({})",
                HumanBytes(removed_bytes),
                HumanBytes(bytes)
            );
            if stray > 0 {
                println!("removed {stray} descriptions left without their archive");
            }
        }
    }
    println!(
        "a running proxy fetches removed archives again when clients ask (its copies of small \
         archives in memory go with the files); metadata it holds in memory stays until it is \
         restarted or the entries expire"
    );
    Ok(EXIT_OK)
}

/// Descriptions whose archive is gone (a crash between the two writes, or a race with
/// eviction); harmless, but purge leaves nothing behind.
fn purge_stray_descriptions(root: &Path) -> u64 {
    let mut removed = 0;
    let shards = fs::read_dir(root).into_iter().flatten().flatten();
    for file in shards.flat_map(|s| fs::read_dir(s.path()).into_iter().flatten().flatten()) {
        let path = file.path();
        let is_stray =
            path.extension().is_some_and(|e| e == "json") && !path.with_extension("bin").exists();
        if is_stray && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Unlinks every file below `dir`, keeping the directories; returns what was removed.
fn purge_files(dir: &Path) -> (u64, u64) {
    walk_files(dir, &mut |path| fs::remove_file(path).is_ok())
}

/// Why a stored archive is bad: length, recorded digest and (without a published sha1) zip
/// structure, as the proxy's scrub checks them.
fn check_archive(disk: &CacheDir, key: &str) -> io::Result<Option<(String, String, u64)>> {
    let Some(path) = disk.archive_path(key) else {
        return Ok(None);
    };
    let Some(stored) = description(disk, key) else {
        let why = "no readable description, so it cannot be checked".to_string();
        return Ok(Some(("(unknown package)".into(), why, file_id(&path)?)));
    };
    let mut file = fs::File::open(&path)?;
    let id = file.metadata()?.ino();
    let checked = check_stored(&mut file, &stored)?;
    Ok(checked.problem.map(|why| (stored.package, why, id)))
}

fn file_id(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// Checks every stored archive, or (with `upstream`) those that came from one upstream.
pub fn verify(config: &Config, remove: bool, upstream: Option<&str>) -> Result<u8, CommandError> {
    let upstream = known_upstream(config, upstream)?;
    let Some(disk) = existing(config) else {
        return Ok(EXIT_OK);
    };
    let mut archives = archives(&disk)?;
    archives.retain(|(key, _)| of_upstream(config, &disk, key, upstream));
    let bar = progress_bar(archives.len() as u64, "verifying");
    let (mut checked, mut checked_bytes, mut bad_left, mut removed) = (0, 0, 0, 0);
    let mut report = Vec::new();
    for (key, len) in &archives {
        bar.inc(1);
        let bad = match check_archive(&disk, key) {
            Ok(bad) => bad,
            // Evicted or purged by a proxy since the listing: nothing left to check.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                bar.finish_and_clear();
                return Err(anyhow::anyhow!("cannot read archive {key}: {e}").into());
            }
        };
        checked += 1;
        checked_bytes += len;
        let Some((package, why, id)) = bad else {
            continue;
        };
        let mut line = format!("BAD {package} (archive {key}): {why}");
        if remove {
            // Only the file that was checked: a proxy may have stored a fresh copy since. The
            // window between this test and the unlink costs at worst one refetch.
            let same = disk
                .archive_path(key)
                .is_some_and(|p| file_id(&p).is_ok_and(|now| now == id));
            if !same {
                line += "; a proxy replaced it meanwhile, the new copy was kept";
            } else if let Err(e) = remove_archive(&disk, key) {
                line += &format!("; cannot remove it: {e}");
                bad_left += 1;
            } else {
                line += "; removed";
                removed += 1;
            }
        } else {
            bad_left += 1;
        }
        report.push(line);
    }
    bar.finish_and_clear();
    for line in &report {
        println!("{line}");
    }
    println!(
        "verified {checked} archives ({}): {} good, {} bad{}",
        HumanBytes(checked_bytes),
        checked - report.len(),
        report.len(),
        if remove {
            format!(", {removed} removed")
        } else {
            String::new()
        }
    );
    if bad_left > 0 && !remove {
        println!("run `composer-proxy cache verify --remove` to remove them; they are fetched again when next asked for");
    }
    Ok(if bad_left == 0 { EXIT_OK } else { EXIT_FAILED })
}

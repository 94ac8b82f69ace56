//! This process's view of the stored archives, and eviction of the least recently used.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use super::{lock, Inner, LOW_WATER_PERCENT, RESCAN_INTERVAL};

/// This process's view of the stored archives.
pub(super) struct Index {
    pub(super) entries: HashMap<String, IndexEntry>,
    pub(super) total: u64,
    pub(super) scanned_at: Instant,
}

pub(super) struct IndexEntry {
    pub(super) len: u64,
    /// Last use, by this process or (through the file's mtime) another one.
    pub(super) used: SystemTime,
    /// When the file's mtime was last set to record a use.
    pub(super) touched: SystemTime,
}

impl Index {
    pub(super) fn replace(&mut self, scanned: Vec<(String, u64, SystemTime)>) {
        let mut entries = HashMap::with_capacity(scanned.len());
        let mut total = 0;
        for (key, len, mtime) in scanned {
            let used = match self.entries.get(&key) {
                Some(known) => known.used.max(mtime),
                None => mtime,
            };
            total += len;
            entries.insert(
                key,
                IndexEntry {
                    len,
                    used,
                    touched: mtime,
                },
            );
        }
        self.entries = entries;
        self.total = total;
        self.scanned_at = Instant::now();
    }

    pub(super) fn insert(&mut self, key: &str, len: u64, now: SystemTime) {
        if let Some(old) = self.entries.insert(
            key.to_string(),
            IndexEntry {
                len,
                used: now,
                touched: now,
            },
        ) {
            self.total -= old.len;
        }
        self.total += len;
    }
}

/// Lists `archives/<aa>/<key>.bin` with sizes and modification times.
pub(crate) fn scan(root: &Path) -> io::Result<Vec<(String, u64, SystemTime)>> {
    let mut found = Vec::new();
    for shard in std::fs::read_dir(root)? {
        let Ok(shard) = shard else { continue };
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".bin")) else {
                continue;
            };
            // A file removed by another process between listing and stat is simply gone.
            let Ok(meta) = file.metadata() else { continue };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((key.to_string(), meta.len(), mtime));
        }
    }
    Ok(found)
}

/// How many bytes eviction should free, or 0. Two limits: the configured bound, counting
/// temporary files too (downloads in progress, and leftovers until they are swept), brought
/// down to its low-water mark; and the volume's free-space floor, plus a tenth of it, so
/// eviction does not run again after every download. Pure.
pub(super) fn bytes_to_free(
    stored_bytes: u64,
    temp_bytes: u64,
    max_bytes: u64,
    available_bytes: Option<u64>,
    min_free_bytes: u64,
) -> u64 {
    let used = stored_bytes + temp_bytes;
    let over_bound = if used > max_bytes {
        used - max_bytes / 100 * LOW_WATER_PERCENT
    } else {
        0
    };
    let short_of_space = match available_bytes {
        Some(available) if available < min_free_bytes => {
            min_free_bytes - available + min_free_bytes / 10
        }
        _ => 0,
    };
    over_bound.max(short_of_space).min(stored_bytes)
}

/// Why eviction runs, which decides whether the free-space floor counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EvictionTrigger {
    /// At start: a bound lowered since the last run takes effect at once.
    Start,
    /// Periodically, after the temporary files were swept.
    Sweep,
    /// An archive was just stored.
    Stored,
}

impl Inner {
    /// Removes least recently used archives while the store is over its bound, and, when an
    /// archive was just stored, while the volume is short of its free-space floor. The floor
    /// is not enforced at start or in the background: when the volume is full of something
    /// else, throwing away the cache buys nothing until a download needs the room, and with
    /// upstream down it is all that still installs. Blocking.
    pub(super) fn evict_if_needed(&self, trigger: EvictionTrigger) {
        let (space, min_free) = if trigger == EvictionTrigger::Stored {
            let space = self.disk.disk_space().ok().map(|s| s.available_bytes);
            (space, self.min_free_bytes)
        } else {
            (None, 0)
        };
        // Measured now: the last sweep's figure still counts downloads committed since.
        let temp = self.disk.measure_temp();
        {
            let index = lock(&self.index);
            let needed = bytes_to_free(index.total, temp, self.max_bytes, space, min_free);
            let stale = index.scanned_at.elapsed() >= RESCAN_INTERVAL;
            if needed == 0 && !stale && trigger != EvictionTrigger::Start {
                return;
            }
        }
        self.evict(|total| bytes_to_free(total, temp, self.max_bytes, space, min_free));
    }

    /// After a write failed for want of space: frees room for `needed_bytes` more beyond the
    /// free-space floor. Blocking.
    pub(super) fn evict_for_space(&self, needed_bytes: u64) {
        let space = self.disk.disk_space().ok().map(|s| s.available_bytes);
        let floor = self.min_free_bytes.saturating_add(needed_bytes);
        self.evict(|total| bytes_to_free(total, 0, u64::MAX, space, floor));
    }

    /// Rescans the store and removes least recently used archives until `to_free(total)`
    /// bytes are gone. One eviction at a time; a concurrent call returns at once.
    fn evict(&self, to_free: impl Fn(u64) -> u64) {
        if self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let root = self.disk.archives_root();
        let victims = match scan(&root) {
            Ok(scanned) => {
                let mut index = lock(&self.index);
                index.replace(scanned);
                let mut remaining = to_free(index.total);
                let mut victims = Vec::new();
                if remaining > 0 {
                    let mut by_age: Vec<(SystemTime, String)> = index
                        .entries
                        .iter()
                        .map(|(k, e)| (e.used, k.clone()))
                        .collect();
                    by_age.sort();
                    for (_, key) in by_age {
                        if remaining == 0 {
                            break;
                        }
                        if let Some(entry) = index.entries.remove(&key) {
                            index.total -= entry.len;
                            remaining = remaining.saturating_sub(entry.len);
                            victims.push((key, entry.len));
                        }
                    }
                }
                victims
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the archive store for eviction");
                Vec::new()
            }
        };
        for (key, len) in victims {
            if self.remove_entry(&key, None) {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(key = %key, bytes = len, "archive evicted");
            }
        }
        self.evicting.store(false, Ordering::Release);
    }

    /// Unlinks an archive with its description and lock file and forgets it in memory; with
    /// `only_inode`, only if the file there is still that one (a replica may have stored a
    /// fresh copy since it was judged). `false` if it was not there (another replica removed
    /// it first). Blocking.
    pub(super) fn remove_entry(&self, key: &str, only_inode: Option<u64>) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.memory.invalidate(key);
        self.descriptions.invalidate(key);
        let Some(path) = self.disk.archive_path(key) else {
            return false;
        };
        if let Some(ino) = only_inode {
            if std::fs::metadata(&path).map(|m| m.ino()).ok() != Some(ino) {
                return false;
            }
        }
        let removed = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "cannot remove archive");
                false
            }
        };
        // Judged by inode and gone already: whatever description is there now may belong to
        // a fresh copy another process is committing.
        if only_inode.is_some() && !removed {
            return false;
        }
        {
            let mut index = lock(&self.index);
            if let Some(entry) = index.entries.remove(key) {
                index.total -= entry.len;
            }
        }
        for extra in [
            self.disk.archive_lock_path(key),
            self.disk.archive_meta_path(key),
        ]
        .into_iter()
        .flatten()
        {
            let _ = std::fs::remove_file(extra);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn index_replace_keeps_the_newer_use() {
        let mut index = Index {
            entries: HashMap::new(),
            total: 0,
            scanned_at: Instant::now(),
        };
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let new = SystemTime::UNIX_EPOCH + Duration::from_secs(200);
        index.insert("a", 10, new);
        index.replace(vec![("a".into(), 10, old), ("b".into(), 5, old)]);
        assert_eq!(index.total, 15);
        assert_eq!(index.entries["a"].used, new);
        assert_eq!(index.entries["b"].used, old);
    }

    #[test]
    fn eviction_frees_down_to_low_water_or_up_to_the_free_space_floor() {
        const MB: u64 = 1_000_000;
        // Within bound, plenty of space.
        assert_eq!(
            bytes_to_free(50 * MB, 0, 100 * MB, Some(500 * MB), 10 * MB),
            0
        );
        // Over the bound (temporary files count): down to 90 %.
        assert_eq!(
            bytes_to_free(95 * MB, 10 * MB, 100 * MB, Some(500 * MB), 10 * MB),
            15 * MB
        );
        // Within bound, but the volume is short of its floor: the shortfall plus a tenth.
        assert_eq!(
            bytes_to_free(50 * MB, 0, 100 * MB, Some(4 * MB), 10 * MB),
            7 * MB
        );
        // Never more than is stored.
        assert_eq!(bytes_to_free(2 * MB, 0, 100 * MB, Some(0), 10 * MB), 2 * MB);
        // Free space unknown: only the bound counts.
        assert_eq!(bytes_to_free(50 * MB, 0, 100 * MB, None, 10 * MB), 0);
    }
}

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

impl Inner {
    /// Removes least recently used archives while the store is over its bound. Blocking.
    pub(super) fn evict_if_needed(&self, force_scan: bool) {
        {
            let index = lock(&self.index);
            let over = index.total > self.max_bytes;
            let stale = index.scanned_at.elapsed() >= RESCAN_INTERVAL;
            if !over && !stale && !force_scan {
                return;
            }
        }
        if self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let root = self.disk.archives_root();
        let victims = match scan(&root) {
            Ok(scanned) => {
                let mut index = lock(&self.index);
                index.replace(scanned);
                let low_water = self.max_bytes / 100 * LOW_WATER_PERCENT;
                let mut victims = Vec::new();
                if index.total > self.max_bytes {
                    let mut by_age: Vec<(SystemTime, String)> = index
                        .entries
                        .iter()
                        .map(|(k, e)| (e.used, k.clone()))
                        .collect();
                    by_age.sort();
                    for (_, key) in by_age {
                        if index.total <= low_water {
                            break;
                        }
                        if let Some(entry) = index.entries.remove(&key) {
                            index.total -= entry.len;
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
            self.memory.invalidate(&key);
            if let Some(path) = self.disk.archive_path(&key) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(key = %key, bytes = len, "archive evicted");
                    }
                    // Another replica evicted it first.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(key = %key, error = %e, "cannot evict archive"),
                }
            }
            for extra in [
                self.disk.archive_lock_path(&key),
                self.disk.archive_meta_path(&key),
            ]
            .into_iter()
            .flatten()
            {
                let _ = std::fs::remove_file(extra);
            }
        }
        self.evicting.store(false, Ordering::Release);
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
}

//! The background scrub: every stored archive read back now and then, at a bounded rate,
//! against the sha256 recorded at download (older descriptions: sha1) and, for zips without a
//! published checksum, their structure. Damaged ones are removed, here and from the memory
//! tier of every proxy sharing the directory (see `stored.rs`). Descriptions written by older
//! versions get sha256 and CRC-32 added once their bytes check out against the sha1 they have.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::integrity::{check_stored, StoredArchive};
use super::stored::{read_description, FoundBy};
use super::{scan, Inner};

/// When and how fast the scrub reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubSettings {
    /// From the start of one pass to the start of the next.
    pub interval: Duration,
    pub max_bytes_per_sec: u64,
}

/// What one finished pass found, for the status page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubPass {
    pub finished: SystemTime,
    pub took: Duration,
    pub checked: u64,
    pub bytes: u64,
    pub damaged: u64,
}

/// What happened to one archive.
enum Scrubbed {
    Sound(u64),
    Damaged(u64),
    /// Evicted or purged since the listing.
    Gone,
}

impl Inner {
    /// Reads every stored archive once, pacing itself to `max_bytes_per_sec`.
    pub(super) async fn scrub_pass(self: &Arc<Self>, max_bytes_per_sec: u64) {
        let started = Instant::now();
        let root = self.disk.archives_root();
        let listed = match tokio::task::spawn_blocking(move || scan(&root)).await {
            Ok(Ok(listed)) => listed,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "scrub cannot list the archive store");
                return;
            }
            Err(_) => return,
        };
        let (mut checked, mut bytes, mut damaged) = (0u64, 0u64, 0u64);
        for (key, _, _) in listed {
            let inner = self.clone();
            let outcome = tokio::task::spawn_blocking(move || inner.scrub_one(&key))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
            let read = match outcome {
                Ok(Scrubbed::Sound(len)) => len,
                Ok(Scrubbed::Damaged(len)) => {
                    damaged += 1;
                    len
                }
                Ok(Scrubbed::Gone) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "scrub cannot read an archive");
                    continue;
                }
            };
            checked += 1;
            bytes += read;
            self.scrubbed_archives.fetch_add(1, Ordering::Relaxed);
            self.scrubbed_bytes.fetch_add(read, Ordering::Relaxed);
            // Reads go at full speed, then the pass waits long enough to keep its average.
            if max_bytes_per_sec > 0 {
                tokio::time::sleep(Duration::from_secs_f64(
                    read as f64 / max_bytes_per_sec as f64,
                ))
                .await;
            }
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        *self.last_scrub.lock().unwrap_or_else(|p| p.into_inner()) = Some(ScrubPass {
            finished: SystemTime::now(),
            took: started.elapsed(),
            checked,
            bytes,
            damaged,
        });
        if damaged > 0 {
            tracing::warn!(
                event = "scrub_pass_finished",
                checked,
                bytes,
                damaged,
                elapsed_ms,
                "scrub pass found damaged archives"
            );
        } else {
            tracing::debug!(
                event = "scrub_pass_finished",
                checked,
                bytes,
                damaged,
                elapsed_ms,
                "scrub pass found nothing wrong"
            );
        }
    }

    /// Checks one archive. Blocking.
    fn scrub_one(&self, key: &str) -> io::Result<Scrubbed> {
        let (Some(path), Some(meta_path)) = (
            self.disk.archive_path(key),
            self.disk.archive_meta_path(key),
        ) else {
            return Ok(Scrubbed::Gone);
        };
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scrubbed::Gone),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let (ino, len) = (meta.ino(), meta.len());
        let Some(stored) = read_description(&meta_path) else {
            // Written description-first, so a missing one means it is being removed, unless
            // the archive itself is still there after that moment.
            if path.exists() {
                let why = "it has no readable description, so it cannot be checked";
                self.discard_damaged(key, ino, why, FoundBy::Scrub);
                return Ok(Scrubbed::Damaged(len));
            }
            return Ok(Scrubbed::Gone);
        };
        let checked = check_stored(&mut file, &stored)?;
        if let Some(why) = checked.problem {
            self.discard_damaged(key, ino, &why, FoundBy::Scrub);
            return Ok(Scrubbed::Damaged(len));
        }
        let verified_by_sha1 = stored.sha1.is_some() || stored.shasum.is_some();
        if stored.sha256.is_none() && verified_by_sha1 {
            let upgraded = StoredArchive {
                sha256: Some(checked.sha256),
                crc32: Some(checked.crc32),
                ..stored
            };
            let bytes = serde_json::to_vec(&upgraded).map_err(io::Error::other)?;
            self.disk.write_atomic_blocking(&meta_path, &bytes)?;
            self.descriptions.invalidate(key);
        }
        Ok(Scrubbed::Sound(len))
    }
}

//! How well the cache directory is doing: failed writes, free space on its volume, temporary
//! files. Counted here, where the writes happen; read by `/readyz` and `/metrics`.
//!
//! A failed write is logged at `warn` when it starts a run of failures and at `debug` while the
//! run lasts, so a full disk under load says so once rather than once per request; the first
//! success after a run says that writes work again.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a write was for: the label of `composer_proxy_cache_write_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    Metadata,
    Archives,
}

impl WriteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::Metadata => "metadata",
            WriteKind::Archives => "archives",
        }
    }
}

/// Free space on the cache volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still use.
    pub available_bytes: u64,
    pub total_bytes: u64,
}

impl DiskSpace {
    /// One statvfs call on `path`. Blocking.
    pub fn of(path: &Path) -> io::Result<DiskSpace> {
        let stat = rustix::fs::statvfs(path).map_err(io::Error::from)?;
        Ok(DiskSpace {
            available_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
            total_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
        })
    }
}

/// Whether `path` is on a network filesystem, where a stat may wait on a server: NFS, SMB/CIFS,
/// FUSE (sshfs, object-store mounts), Ceph, AFS, 9p, Lustre. Local filesystems answer a stat
/// of a file just used from the inode cache. Blocking (one statfs call); `false` if unknown.
pub fn is_network_filesystem(path: &Path) -> bool {
    const NETWORK: [u32; 12] = [
        0x6969,      // NFS
        0x517B,      // SMB
        0xFF53_4D42, // CIFS
        0xFE53_4D42, // SMB2
        0x6573_5546, // FUSE
        0x00C3_6400, // Ceph
        0x5346_414F, // AFS
        0x7375_7245, // Coda
        0x0102_1997, // 9p
        0x0116_1970, // GFS2
        0x7461_636F, // OCFS2
        0x0BD0_0BD0, // Lustre
    ];
    rustix::fs::statfs(path).is_ok_and(|s| NETWORK.contains(&(s.f_type as u64 as u32)))
}

/// How long a failed write keeps the cache reported as degraded after the last failure, when
/// no write has succeeded since.
const WRITE_FAILURE_REPORTED_FOR: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub struct CacheHealth {
    metadata_write_errors: AtomicU64,
    archive_write_errors: AtomicU64,
    /// A run of failures is in progress, per kind (logged at `warn` only when it starts).
    metadata_failing: AtomicBool,
    archives_failing: AtomicBool,
    last_failure: Mutex<Option<(Instant, String)>>,
    temp_bytes: AtomicU64,
    temp_swept: AtomicU64,
}

impl CacheHealth {
    /// Logs (once per run of failures) and counts a write that failed; nothing was committed.
    fn failing(&self, kind: WriteKind) -> &AtomicBool {
        match kind {
            WriteKind::Metadata => &self.metadata_failing,
            WriteKind::Archives => &self.archives_failing,
        }
    }

    pub fn write_failed(&self, kind: WriteKind, what: &str, error: &io::Error) {
        let counter = match kind {
            WriteKind::Metadata => &self.metadata_write_errors,
            WriteKind::Archives => &self.archive_write_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let reason = format!("{what}: {error}");
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), reason));
        if self.failing(kind).swap(true, Ordering::AcqRel) {
            tracing::debug!(event = "cache_write_failed", cache = kind.as_str(), what, error = %error, "cache write failed again; the previous copy stays");
        } else {
            tracing::warn!(event = "cache_write_failed", cache = kind.as_str(), what, error = %error, "cache write failed; nothing was committed and the previous copy stays (further failures are logged at debug until a write succeeds)");
        }
    }

    pub fn write_succeeded(&self, kind: WriteKind) {
        if self.failing(kind).swap(false, Ordering::AcqRel) {
            let errors =
                self.write_errors(WriteKind::Metadata) + self.write_errors(WriteKind::Archives);
            tracing::info!(
                event = "cache_write_recovered",
                cache = kind.as_str(),
                write_errors_total = errors,
                "cache writes succeed again"
            );
        }
    }

    pub fn write_errors(&self, kind: WriteKind) -> u64 {
        match kind {
            WriteKind::Metadata => self.metadata_write_errors.load(Ordering::Relaxed),
            WriteKind::Archives => self.archive_write_errors.load(Ordering::Relaxed),
        }
    }

    /// The last failed write, while no write has succeeded since and it is recent.
    pub fn recent_failure(&self) -> Option<String> {
        let failing = [WriteKind::Metadata, WriteKind::Archives]
            .iter()
            .any(|k| self.failing(*k).load(Ordering::Acquire));
        if !failing {
            return None;
        }
        let last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < WRITE_FAILURE_REPORTED_FOR)
            .map(|(at, why)| format!("{why} ({} s ago)", at.elapsed().as_secs()))
    }

    pub(super) fn set_temp_bytes(&self, bytes: u64) {
        self.temp_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(super) fn add_swept(&self, files: u64) {
        self.temp_swept.fetch_add(files, Ordering::Relaxed);
    }

    /// Bytes in temporary files at the last sweep (downloads in progress and leftovers); they
    /// count against the archive store's bound.
    pub fn temp_bytes(&self) -> u64 {
        self.temp_bytes.load(Ordering::Relaxed)
    }

    /// Temporary files of dead processes removed so far.
    pub fn temp_swept(&self) -> u64 {
        self.temp_swept.load(Ordering::Relaxed)
    }
}

/// The cache directory as the last probe found it.
#[derive(Clone, Debug)]
pub struct CacheProbe {
    pub readable: Result<(), String>,
    pub writable: Result<(), String>,
    pub space: Option<DiskSpace>,
}

/// What `/readyz` says about the cache, from the probes' results: `Err` when nothing can be
/// served from it, else the reasons it is degraded (empty when healthy). Pure.
pub fn cache_verdict(
    readable: &Result<(), String>,
    writable: &Result<(), String>,
    space: Option<DiskSpace>,
    min_free_bytes: u64,
    recent_failure: Option<String>,
) -> Result<Vec<String>, String> {
    if let Err(e) = readable {
        return Err(format!("the cache directory cannot be read: {e}"));
    }
    let mut degraded = Vec::new();
    if let Err(e) = writable {
        degraded.push(format!(
            "the cache directory takes no writes ({e}); archives are streamed through without being stored"
        ));
    } else if let Some(why) = recent_failure {
        degraded.push(format!("a cache write failed: {why}"));
    }
    if let Some(space) = space {
        if space.available_bytes < min_free_bytes {
            degraded.push(format!(
                "free space on the cache volume is {} bytes, below cache_min_free_bytes ({min_free_bytes}); each archive stored evicts least recently used ones to make room",
                space.available_bytes
            ));
        }
    }
    Ok(degraded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn space(available_bytes: u64) -> Option<DiskSpace> {
        Some(DiskSpace {
            available_bytes,
            total_bytes: 10 * GIB,
        })
    }

    #[test]
    fn an_unreadable_cache_is_not_ready() {
        let verdict = cache_verdict(
            &Err("Permission denied".into()),
            &Ok(()),
            space(GIB),
            GIB,
            None,
        );
        assert!(verdict.is_err());
    }

    #[test]
    fn a_cache_that_takes_no_writes_or_is_nearly_full_is_degraded_not_unready() {
        let full = cache_verdict(&Ok(()), &Err("No space left".into()), space(0), GIB, None)
            .expect("still serving");
        assert_eq!(full.len(), 2, "{full:?}");
        assert!(full[0].contains("takes no writes"));
        assert!(full[1].contains("free space"));
        let low = cache_verdict(&Ok(()), &Ok(()), space(GIB - 1), GIB, None).expect("serving");
        assert_eq!(low.len(), 1);
        let fine = cache_verdict(&Ok(()), &Ok(()), space(GIB), GIB, None).expect("serving");
        assert!(fine.is_empty());
    }

    #[test]
    fn a_recent_failed_write_is_reported_until_a_write_succeeds() {
        let health = CacheHealth::default();
        let full = io::Error::other("No space left on device");
        health.write_failed(WriteKind::Metadata, "packages.json", &full);
        health.write_failed(WriteKind::Archives, "archive", &full);
        assert_eq!(health.write_errors(WriteKind::Metadata), 1);
        assert_eq!(health.write_errors(WriteKind::Archives), 1);
        let why = health.recent_failure().expect("reported");
        assert!(why.starts_with("archive: No space left"), "{why}");
        let verdict = cache_verdict(&Ok(()), &Ok(()), None, 0, health.recent_failure());
        assert_eq!(verdict.expect("serving").len(), 1);
        health.write_succeeded(WriteKind::Archives);
        assert!(
            health.recent_failure().is_some(),
            "a metadata failure is not cleared by an archive write"
        );
        health.write_succeeded(WriteKind::Metadata);
        assert_eq!(health.recent_failure(), None);
    }

    #[test]
    fn disk_space_is_read_from_the_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let space = DiskSpace::of(dir.path()).expect("statvfs");
        assert!(space.total_bytes > 0 && space.available_bytes <= space.total_bytes);
    }
}

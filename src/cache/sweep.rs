//! Temporary files of processes that died (a `kill -9` mid-download, an OOM kill) are found and
//! removed while the proxy runs, not only at its next start.
//!
//! Ownership is an advisory lock: every temporary file is locked by the process writing it
//! (see [`super::create_temp`]) for as long as it has it open, and the kernel drops the lock
//! when that process dies. A file nobody has locked, and that has not changed for
//! [`TEMP_GRACE`] (the moment between creating and locking a file), is a leftover. This
//! instance's own files are recognised by their name and never swept here: on filesystems that
//! emulate these locks per process (NFS), its own lock would not show.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How long an unlocked temporary file must have been left untouched before it is removed.
pub const TEMP_GRACE: Duration = Duration::from_secs(2);

/// Where locks do not work at all, only this age marks a file as left over.
const UNLOCKABLE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub removed_files: u64,
    pub removed_bytes: u64,
    /// Bytes in the temporary files that stay (downloads and writes in progress).
    pub remaining_bytes: u64,
}

impl SweepReport {
    pub fn log(&self) {
        if self.removed_files > 0 {
            tracing::info!(
                event = "temp_files_swept",
                files = self.removed_files,
                bytes = self.removed_bytes,
                "removed temporary files that no running process owns (downloads cut off by a crash or kill)"
            );
        }
    }
}

/// Is `file` still owned: locked by some process? `None` when the filesystem cannot tell.
fn is_locked(file: &fs::File) -> Option<bool> {
    match file.try_lock() {
        Ok(()) => {
            // Only probing: let go at once, so an owner that locks late is not blocked.
            let _ = file.unlock();
            Some(false)
        }
        Err(fs::TryLockError::WouldBlock) => Some(true),
        Err(fs::TryLockError::Error(_)) => None,
    }
}

/// Sweeps `dir`, keeping files whose name starts with `own_prefix`. Blocking.
pub fn sweep(dir: &Path, own_prefix: &str) -> SweepReport {
    let mut report = SweepReport::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return report;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let path = entry.path();
        // Read-write: NFS emulates these locks with fcntl locks, which need it for an
        // exclusive one.
        let Ok(file) = fs::OpenOptions::new().read(true).write(true).open(&path) else {
            // Renamed into place or removed by its owner since the listing.
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        let age = meta
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        let own = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(own_prefix));
        // Young files are not even probed: a probe between an owner's create and lock would
        // make the owner's lock wait.
        let leftover = !own
            && age >= TEMP_GRACE
            && match is_locked(&file) {
                Some(locked) => !locked,
                None => age >= UNLOCKABLE_TEMP_AGE,
            };
        if leftover && fs::remove_file(&path).is_ok() {
            report.removed_files += 1;
            report.removed_bytes += meta.len();
        } else {
            report.remaining_bytes += meta.len();
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let file = fs::File::options().write(true).open(path).expect("open");
        file.set_modified(SystemTime::now() - by)
            .expect("set mtime");
    }

    #[test]
    fn only_unlocked_files_of_others_untouched_for_the_grace_period_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |name: &str| dir.path().join(name);
        // A dead process's download: unlocked and old.
        fs::write(p("111-1-0.part"), vec![0; 1000]).expect("write");
        age(&p("111-1-0.part"), Duration::from_secs(30));
        // A live process's download: locked (the handle stays open while the test runs).
        let owned = super::super::create_temp(&p("222-1-0.part")).expect("create");
        fs::write(p("222-1-0.part"), vec![0; 10]).expect("write");
        age(&p("222-1-0.part"), Duration::from_secs(30));
        // Just created, not locked yet.
        fs::write(p("333-1-0.part"), vec![0; 20]).expect("write");
        // This instance's own, whatever its lock.
        fs::write(p("444-1-0.part"), vec![0; 40]).expect("write");
        age(&p("444-1-0.part"), Duration::from_secs(30));

        let report = sweep(dir.path(), "444-1-");
        assert_eq!(
            report,
            SweepReport {
                removed_files: 1,
                removed_bytes: 1000,
                remaining_bytes: 70,
            }
        );
        assert!(!p("111-1-0.part").exists());
        assert!(p("222-1-0.part").exists() && p("333-1-0.part").exists());
        drop(owned);
        // Its owner gone, the second file is a leftover too; the probe did not keep it locked.
        assert_eq!(sweep(dir.path(), "444-1-").removed_files, 1);
    }
}

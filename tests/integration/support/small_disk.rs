//! A small filesystem of its own (a tmpfs) for tests that need the cache's disk to fill up.
//!
//! Filling the real disk of a developer's machine or a CI runner is not an option, and a
//! full disk cannot be faked from inside the proxy's process: it must be the kernel that
//! answers ENOSPC. Mounting needs root; run as anyone else, a test panics with the command
//! to use instead, so it never passes (or skips) without having run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

const RUN_AS_ROOT: &str =
    "sudo -E env \"PATH=$PATH\" cargo test --test integration cache_integrity::";

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop.
pub struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. "8m").
    pub fn mount(size: &str) -> SmallDisk {
        let uid = Command::new("id").arg("-u").output().expect("id(1) runs");
        let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
        assert!(
            uid == "0",
            "this test mounts a tmpfs to fill a disk and must run as root (uid {uid} now): \
             {RUN_AS_ROOT}"
        );
        let dir = tempfile::Builder::new()
            .prefix("small-disk-")
            .tempdir()
            .expect("a mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount(8) runs");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} tmpfs {}: {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A directory on the small disk for the proxy's cache (`cache_dir`).
    pub fn cache_dir(&self) -> PathBuf {
        let dir = self.path().join("cache");
        std::fs::create_dir_all(&dir).expect("creating the cache directory");
        dir
    }

    /// Writes a filler file beside the cache directory, 64 KiB at a time, until a write
    /// fails (ENOSPC): afterwards the disk has no free block left. Returns the bytes written.
    pub fn fill(&self) -> u64 {
        let mut file =
            std::fs::File::create(self.path().join("filler")).expect("creating the filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        // Bounded by the disk's size: every round writes at least one byte or stops.
        while let Ok(n @ 1..) = file.write(&chunk) {
            written += n as u64;
        }
        assert!(
            self.free_bytes() < 64 * 1024,
            "the disk is still not full after {written} bytes: {} bytes free",
            self.free_bytes()
        );
        written
    }

    /// Bytes available on the disk, as df(1) reports them.
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(self.path())
            .output()
            .expect("df(1) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df output: {text}"))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a proxy process still holding files open must not keep the mount alive
        // (nor fail the test); the TempDir then removes the empty mount point.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

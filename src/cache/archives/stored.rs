//! Serving a stored archive, checked before and while it is sent.
//!
//! Before headers: the file's length against its description (a mismatch removes the entry,
//! and the request fetches it again). While sending: the CRC-32 of the bytes read, checked
//! before the last chunk goes out, so a file altered on disk ends as a broken transfer, never
//! as a complete response, and is removed. Small archives are checked whole when they are
//! loaded into memory, and a copy in memory is only served while the file it was read from is
//! still the one in the store: `cache verify --remove`, `cache purge` and another replica's
//! eviction or scrub take it out of every running proxy.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::integrity::{ServeCheck, ServeHasher, StoredArchive};
use super::{Archive, Inner, MemoryEntry, MEMORY_OBJECT_SMALL};
use crate::error::ProxyError;

/// What is found under a key on disk.
enum Opened {
    Missing,
    Damaged { ino: u64, why: String },
    Memory(Bytes),
    File(Arc<std::fs::File>, u64, u64, ServeCheck),
}

/// Who found an archive damaged: the label of `composer_proxy_archives_damaged_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoundBy {
    Serve,
    Scrub,
}

impl FoundBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FoundBy::Serve => "serve",
            FoundBy::Scrub => "scrub",
        }
    }
}

impl Inner {
    /// A stored archive, or `None` when it must be fetched.
    pub(super) async fn lookup(self: &Arc<Self>, key: &str) -> Result<Option<Archive>, ProxyError> {
        let Some(path) = self.disk.archive_path(key) else {
            return Err(ProxyError::Cache(io::Error::other("bad archive key")));
        };
        if let Some(entry) = self.memory.get(key) {
            // A local disk answers this stat of a file just used from its inode cache, in less
            // time than a hop through the blocking pool takes; on a network filesystem it can
            // stall, and must not stall the runtime with it.
            let len = entry.bytes.len() as u64;
            let same = |m: std::fs::Metadata| m.ino() == entry.ino && m.len() == len;
            let same = if self.disk.is_on_network_filesystem() {
                tokio::fs::symlink_metadata(&path).await.is_ok_and(same)
            } else {
                std::fs::symlink_metadata(&path).is_ok_and(same)
            };
            if same {
                self.mark_used(key, len);
                return Ok(Some(Archive::Memory(entry.bytes)));
            }
            self.memory.invalidate(key);
        }
        let inner = self.clone();
        let owned = key.to_string();
        let opened = tokio::task::spawn_blocking(move || inner.open_stored(&owned, &path))
            .await
            .map_err(io::Error::other)??;
        match opened {
            Opened::Missing => Ok(None),
            Opened::Damaged { ino, why } => {
                let inner = self.clone();
                let owned = key.to_string();
                tokio::task::spawn_blocking(move || {
                    inner.discard_damaged(&owned, ino, &why, FoundBy::Serve)
                })
                .await
                .map_err(io::Error::other)?;
                Ok(None)
            }
            Opened::Memory(bytes) => {
                self.mark_used(key, bytes.len() as u64);
                Ok(Some(Archive::Memory(bytes)))
            }
            Opened::File(file, ino, len, check) => {
                self.mark_used(key, len);
                Ok(Some(Archive::File(StoredReader {
                    inner: self.clone(),
                    key: key.to_string(),
                    file,
                    ino,
                    len,
                    pos: 0,
                    hasher: Some(ServeHasher::new(&check)),
                })))
            }
        }
    }

    /// Opens the file under `key` and checks what can be checked before sending. Blocking.
    fn open_stored(&self, key: &str, path: &Path) -> io::Result<Opened> {
        let mut file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let (ino, len) = (meta.ino(), meta.len());
        let Some(stored) = self.description(key, ino, len) else {
            // Removal takes the archive first, then its description: a file that is gone (or
            // replaced) by now was being removed, not damaged.
            let still_there = std::fs::metadata(path).is_ok_and(|m| m.ino() == ino);
            if !still_there {
                return Ok(Opened::Missing);
            }
            let why = "it has no readable description, so it cannot be checked".into();
            return Ok(Opened::Damaged { ino, why });
        };
        if len != stored.len {
            let why = format!("{len} bytes on disk, {} when it was stored", stored.len);
            return Ok(Opened::Damaged { ino, why });
        }
        let check = stored.serve_check();
        if len <= self.memory_object_max && self.memory.policy().max_capacity() != Some(0) {
            // A large archive is read whole only within the response-buffer budget; while
            // that is spent it is streamed from the file instead, so a burst of first requests
            // for many large archives cannot hold them all in memory at once.
            let _held = if len > MEMORY_OBJECT_SMALL {
                match self.read_budget.try_hold(len) {
                    Some(held) => Some(held),
                    None => return Ok(Opened::File(Arc::new(file), ino, len, check)),
                }
            } else {
                None
            };
            let mut buf = Vec::with_capacity(usize::try_from(len).map_err(io::Error::other)?);
            file.read_to_end(&mut buf)?;
            if buf.len() as u64 != len || !ServeHasher::check(&check, &buf) {
                let why = "its bytes do not match the checksum recorded when it was stored".into();
                return Ok(Opened::Damaged { ino, why });
            }
            let bytes = Bytes::from(buf);
            let entry = MemoryEntry {
                bytes: bytes.clone(),
                ino,
            };
            self.memory.insert(key.to_string(), entry);
            return Ok(Opened::Memory(bytes));
        }
        Ok(Opened::File(Arc::new(file), ino, len, check))
    }

    /// The description of the file under `key`, read once per file (known by inode and
    /// length, since inode numbers are reused). Blocking.
    fn description(&self, key: &str, ino: u64, len: u64) -> Option<Arc<StoredArchive>> {
        if let Some((known, stored)) = self.descriptions.get(key) {
            if known == (ino, len) {
                return Some(stored);
            }
        }
        let stored = Arc::new(read_description(&self.disk.archive_meta_path(key)?)?);
        self.descriptions
            .insert(key.to_string(), ((ino, len), stored.clone()));
        Some(stored)
    }

    /// Removes a damaged archive (only the file that was judged), says so and counts it; the
    /// next request fetches it again. Blocking.
    pub(super) fn discard_damaged(&self, key: &str, ino: u64, why: &str, found_by: FoundBy) {
        // Only what this call removed counts: another process (eviction, a replica's scrub)
        // may have taken the file away first, which is no damage.
        if !self.remove_entry(key, Some(ino)) {
            return;
        }
        let counter = match found_by {
            FoundBy::Serve => &self.damaged_on_serve,
            FoundBy::Scrub => &self.damaged_by_scrub,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            event = "archive_damaged",
            key = %key,
            found_by = found_by.as_str(),
            reason = %why,
            "stored archive is damaged; removed, it is fetched again when next asked for"
        );
    }
}

/// A description file, or `None` when it is missing or unreadable. Blocking.
pub fn read_description(path: &Path) -> Option<StoredArchive> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A stored archive being sent: read in large chunks, checked as it goes.
pub struct StoredReader {
    inner: Arc<Inner>,
    key: String,
    file: Arc<std::fs::File>,
    ino: u64,
    len: u64,
    pos: u64,
    hasher: Option<ServeHasher>,
}

impl StoredReader {
    pub fn byte_len(&self) -> u64 {
        self.len
    }

    /// The next chunk, `None` at the verified end, or an error when the file turns out to be
    /// damaged (then the client's transfer breaks off before its last chunk).
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if self.pos >= self.len {
            return None;
        }
        let read = self
            .inner
            .read_budget
            .read_at(self.file.clone(), self.pos, self.len - self.pos)
            .await;
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Some(Err(self
                    .damaged("the file got shorter while it was sent")
                    .await));
            }
            Err(e) => return Some(Err(e)),
        };
        self.pos += bytes.len() as u64;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&bytes);
        }
        if self.pos == self.len && !self.hasher.take().is_none_or(ServeHasher::matches) {
            let why = "its bytes do not match the checksum recorded when it was stored";
            return Some(Err(self.damaged(why).await));
        }
        Some(Ok(bytes))
    }

    async fn damaged(&self, why: &'static str) -> io::Error {
        let (inner, key, ino) = (self.inner.clone(), self.key.clone(), self.ino);
        let _ = tokio::task::spawn_blocking(move || {
            inner.discard_damaged(&key, ino, why, FoundBy::Serve)
        })
        .await;
        io::Error::other(format!("stored archive is damaged: {why}"))
    }
}

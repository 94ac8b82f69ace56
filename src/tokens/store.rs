//! The token file and the last-use file on disk: read, changed under an exclusive lock and
//! replaced atomically, with the owner of their directory.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FILE_VERSION;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Active,
    Disabled,
    /// Kept as a record so a client still sending it is told it was deleted, not just that
    /// it is wrong.
    Deleted,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Disabled => "disabled",
            TokenState::Deleted => "deleted",
        }
    }
}

/// One token as stored: never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    pub state: TokenState,
    /// RFC 3339, UTC.
    pub created: String,
    /// When the state last changed (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<String>,
    /// The `[[view]]`s the token may use; empty: organisation-wide. Files written before views
    /// existed have none, so their tokens stay organisation-wide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a composer-proxy token file: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// The bucket holding the token file failed; the text names no credential.
    #[error("{location}: {source}")]
    Bucket {
        location: String,
        source: crate::bucket::BucketError,
    },
    #[error("{location} kept changing during {attempts} attempts to change it; try again")]
    Contended { location: String, attempts: usize },
}

/// Reads the token file; a missing file means no tokens yet.
pub fn read(path: &Path) -> Result<Vec<TokenRecord>, TokenFileError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TokenFileError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse(&text, path)
}

/// The records in a token file's bytes; `path` says where they came from, for errors.
pub(super) fn parse(text: &[u8], path: &Path) -> Result<Vec<TokenRecord>, TokenFileError> {
    let file: TokenFile = serde_json::from_slice(text).map_err(|e| TokenFileError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if file.version != FILE_VERSION {
        return Err(TokenFileError::Invalid {
            path: path.to_path_buf(),
            message: format!("unsupported version {}", file.version),
        });
    }
    Ok(file.tokens)
}

/// A token file's bytes for `tokens`.
pub(super) fn serialize(tokens: Vec<TokenRecord>) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec_pretty(&TokenFile {
        version: FILE_VERSION,
        tokens,
    })
}

/// Changes the token file under an exclusive lock (so two administrators cannot lose each
/// other's change) and replaces it atomically (so a proxy never reads half a file).
pub fn modify<T>(
    path: &Path,
    change: impl FnOnce(&mut Vec<TokenRecord>) -> T,
) -> Result<T, TokenFileError> {
    let write_err = |source| TokenFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(write_err)?;
    }
    let lock = open_lock(&sibling(path, ".lock")).map_err(write_err)?;
    lock.lock().map_err(write_err)?;
    let mut tokens = read(path)?;
    let result = change(&mut tokens);
    let json = serialize(tokens).map_err(|e| write_err(io::Error::other(e)))?;
    write_atomically(path, &json).map_err(write_err)?;
    Ok(result)
}

/// `tokens.json` → `tokens.json<suffix>`, in the same directory (so a rename stays atomic).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Where the proxies record last use, beside the token file.
pub fn last_use_path(tokens_file: &Path) -> PathBuf {
    sibling(tokens_file, ".last-used")
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = sibling(path, &format!(".{}.tmp", hex::encode(nonce)));
    let result = (|| {
        // create_new: never write through a file (or symlink) someone else put there.
        let mut file = fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        take_directory_owner(&tmp);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Opens (creating) a lock file beside the data it guards.
fn open_lock(path: &Path) -> io::Result<fs::File> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    take_directory_owner(path);
    Ok(lock)
}

/// An administrator running the commands as root (`kubectl exec`, `sudo`) must not leave
/// files the proxy's own user cannot read: new files get the owner of their directory. For
/// anyone but root the change is refused by the kernel, harmlessly, and files stay theirs.
fn take_directory_owner(path: &Path) {
    let Some(owner) = path.parent().and_then(|dir| {
        fs::metadata(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .ok()
    }) else {
        return;
    };
    let Ok(meta) = fs::metadata(path) else { return };
    if (meta.uid(), meta.gid()) != (owner.uid(), owner.gid()) {
        let _ = std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()));
    }
}

/// Last use per token hash, in seconds since the epoch; empty when nothing was recorded.
pub fn read_last_use(tokens_file: &Path) -> HashMap<String, u64> {
    fs::read(last_use_path(tokens_file))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Merges newer last-use times into the file. Replicas sharing the file each merge theirs; the
/// lock keeps one replica's write from undoing another's.
pub(super) fn merge_last_use(tokens_file: &Path, seen: &HashMap<String, u64>) -> io::Result<()> {
    let path = last_use_path(tokens_file);
    let lock = open_lock(&sibling(&path, ".lock"))?;
    lock.lock()?;
    let mut all = read_last_use(tokens_file);
    for (hash, at) in seen {
        let entry = all.entry(hash.clone()).or_default();
        *entry = (*entry).max(*at);
    }
    write_atomically(&path, &serde_json::to_vec(&all).map_err(io::Error::other)?)
}

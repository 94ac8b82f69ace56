//! Client tokens: who among the allowed networks may use the proxy.
//!
//! A token is 32 random bytes, shown once when it is created (`cpt_` + base64url, so secret
//! scanners and people can tell what it is). Only its SHA-256 is stored: the secret carries 256
//! bits of entropy, so a fast hash is enough (a slow password hash protects guessable
//! passwords, which these are not).
//!
//! The token file belongs to the `composer-proxy tokens …` commands, which change it under an
//! exclusive lock with an atomic rename. Running proxies only read it: a blocking task looks
//! at its inode, size and timestamps every 250 ms and rereads it when they change, so a change
//! applies within a second, and requests check against the snapshot without touching the disk.
//! When each token was last used is kept in a second file written by the proxies, so a proxy
//! can never overwrite an administrator's change with an older copy.
//!
//! With `object_store_url` set, both live in the bucket instead (see [`in_bucket`]): changed by
//! conditional writes, and followed by the proxies with a conditional read every 500 ms.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::header::{self, HeaderMap};
use sha2::{Digest, Sha256};

use crate::bucket::Bucket;
use crate::config::Secret;
use object_store::UpdateVersion;

pub mod in_bucket;
mod refusals;
mod store;

pub use refusals::RefusalLog;

use store::merge_last_use;
pub use store::{
    last_use_path, modify, read, read_last_use, TokenFileError, TokenRecord, TokenState,
};

/// Marks a string as a composer-proxy token.
pub const TOKEN_PREFIX: &str = "cpt_";
/// How often the proxy looks at the token file: a revocation applies within this long.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);
/// The file is read again at least this often even when its metadata looks unchanged: file
/// systems with coarse timestamps plus inode reuse could hide a change from the fingerprint.
const FULL_READ_INTERVAL: Duration = Duration::from_secs(1);
/// A snapshot older than this means the refresher is stuck (a hung network file system):
/// tokens are refused rather than checked against a list that may miss a revocation.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(5);
/// Current layout of the token file.
const FILE_VERSION: u32 = 1;
/// Last use is recorded to the minute: enough to see who still uses a token, and it keeps a
/// busy proxy from rewriting the file on every request.
const LAST_USE_GRANULARITY_SECS: u64 = 60;

/// A fresh token: the secret (shown once) and its stored hash.
pub fn generate() -> io::Result<(Secret, String)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    let secret = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex::encode(digest(&secret));
    Ok((Secret::new(secret), hash))
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Names are what logs and `tokens list` show: short, printable, no separators that would make
/// a log line ambiguous.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a usable token name: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
        ))
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// What a request's credentials amount to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No `Authorization` header (or one of another scheme).
    Absent,
    Valid(Arc<str>),
    /// Not a token this proxy issued.
    Unknown,
    Disabled(Arc<str>),
    Deleted(Arc<str>),
    /// The token file cannot be read (or has not been for too long): every token is refused
    /// until it can, since a revocation might be in it.
    Unavailable,
}

impl Verdict {
    /// Why a request is refused, for logs; `None` when it is not.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            Verdict::Valid(_) => None,
            Verdict::Absent => Some("missing"),
            Verdict::Unknown => Some("unknown"),
            Verdict::Disabled(_) => Some("disabled"),
            Verdict::Deleted(_) => Some("deleted"),
            Verdict::Unavailable => Some("token_file_unavailable"),
        }
    }

    pub fn name(&self) -> Option<&Arc<str>> {
        match self {
            Verdict::Valid(n) | Verdict::Disabled(n) | Verdict::Deleted(n) => Some(n),
            Verdict::Absent | Verdict::Unknown | Verdict::Unavailable => None,
        }
    }
}

/// Identity of one version of the token file: a rename gives a new inode, an edit in place a
/// new size or timestamp.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(PartialEq, Eq)]
struct Entry {
    name: Arc<str>,
    hash: String,
    state: TokenState,
    views: Bound,
}

/// The views a token is bound to; empty: organisation-wide.
pub type Bound = Arc<[Arc<str>]>;

/// The tokens as last read, which requests check against without touching the disk.
struct Snapshot {
    /// `None` while the file cannot be used.
    by_digest: Option<HashMap<[u8; 32], Entry>>,
}

/// What the refresher remembers between looks.
#[derive(Default)]
struct Watch {
    /// `None` while the file does not exist.
    fingerprint: Option<Fingerprint>,
    read_at: Option<Instant>,
    /// Whether the last look failed (reported once per failure, not per look).
    failing: bool,
}

/// The running proxy's view of the token file. [`Tokens::refresh`] reads the file (blocking;
/// the proxy calls it from a blocking task every [`REFRESH_INTERVAL`]); [`Tokens::check`] only
/// reads the snapshot, so requests never wait on the disk.
pub struct Tokens {
    source: Source,
    snapshot: RwLock<Arc<Snapshot>>,
    /// When the refresher last looked at the file.
    checked: Mutex<Instant>,
    watch: Mutex<Watch>,
    /// Last use (minute precision) per token hash, not yet written out.
    pending_use: Mutex<HashMap<String, u64>>,
    recorded_use: Mutex<HashMap<String, u64>>,
    /// Rate limit of the `token_refused` warnings.
    pub refusals: RefusalLog,
}

/// Where the token file is.
enum Source {
    File(PathBuf),
    Bucket {
        bucket: Arc<Bucket>,
        location: String,
        /// The version of the object in the snapshot, to ask only for a newer one.
        seen: Mutex<Option<UpdateVersion>>,
        failing: Mutex<bool>,
    },
}

impl Tokens {
    /// Reads the file once, so the proxy starts with the tokens as they are.
    pub fn open(path: PathBuf) -> Self {
        let tokens = Self::with_source(Source::File(path));
        tokens.refresh();
        tokens
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            snapshot: RwLock::new(Arc::new(Snapshot { by_digest: None })),
            checked: Mutex::new(Instant::now()),
            watch: Mutex::default(),
            pending_use: Mutex::default(),
            recorded_use: Mutex::default(),
            refusals: RefusalLog::default(),
        }
    }

    /// The token file on disk; `None` when it is in the bucket.
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::File(path) => Some(path),
            Source::Bucket { .. } => None,
        }
    }

    /// Where the token file is, for logs.
    pub fn location(&self) -> String {
        match &self.source {
            Source::File(path) => path.display().to_string(),
            Source::Bucket { location, .. } => location.clone(),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the file as last looked at could be used (a missing file can: it holds no
    /// tokens yet).
    pub fn usable(&self) -> bool {
        self.snapshot().by_digest.is_some()
    }

    /// Active tokens in the file as last read.
    pub fn active(&self) -> usize {
        self.snapshot().by_digest.as_ref().map_or(0, |tokens| {
            tokens
                .values()
                .filter(|e| e.state == TokenState::Active)
                .count()
        })
    }

    /// Looks at the file and rereads it if it changed (or was last read over
    /// [`FULL_READ_INTERVAL`] ago). Blocking.
    pub fn refresh(&self) {
        let Source::File(path) = &self.source else {
            return;
        };
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot();
        let meta = match fs::metadata(path) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TokenFileError::Read {
                path: path.clone(),
                source: e,
            }),
        };
        let loaded = meta.and_then(|meta| {
            let fingerprint = meta.as_ref().map(Fingerprint::of);
            let fresh = watch
                .read_at
                .is_some_and(|at| at.elapsed() < FULL_READ_INTERVAL);
            if watch.fingerprint == fingerprint && fresh && current.by_digest.is_some() {
                return Ok(None);
            }
            watch.fingerprint = fingerprint;
            watch.read_at = Some(Instant::now());
            let records = match fingerprint {
                None => Vec::new(),
                Some(_) => read(path)?,
            };
            Ok(Some(self.index(records)))
        });
        match loaded {
            // Unchanged: only the time of the look moves on.
            Ok(None) => self.touch(),
            Ok(Some(tokens)) => self.publish(&mut watch.failing, Ok(tokens)),
            Err(e) => {
                watch.read_at = None;
                self.publish(&mut watch.failing, Err(e));
            }
        }
    }

    /// Makes freshly read tokens (or the failure to read them: no token is accepted then) the
    /// snapshot requests check against.
    fn publish(
        &self,
        failing: &mut bool,
        loaded: Result<HashMap<[u8; 32], Entry>, TokenFileError>,
    ) {
        let current = self.snapshot();
        let by_digest = match loaded {
            Ok(tokens) => {
                if current.by_digest.as_ref() != Some(&tokens) {
                    let active = tokens
                        .values()
                        .filter(|e| e.state == TokenState::Active)
                        .count();
                    tracing::info!(event = "tokens_loaded", path = %self.location(), active, "token file read");
                }
                *failing = false;
                Some(tokens)
            }
            Err(e) => {
                if !*failing {
                    tracing::error!(error = %e, "token file unusable: every request with a token is answered 503 until it is fixed");
                }
                *failing = true;
                None
            }
        };
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Snapshot { by_digest });
        self.touch();
    }

    /// Notes that the refresher looked (and is not stuck).
    fn touch(&self) {
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Records by hash. A record with a name the commands would not have made (a hand edit)
    /// is left out: its name could forge log lines.
    fn index(&self, records: Vec<TokenRecord>) -> HashMap<[u8; 32], Entry> {
        records
            .into_iter()
            .filter_map(|r| {
                if let Err(e) = validate_name(&r.name) {
                    tracing::error!(path = %self.location(), error = %e, "token record ignored");
                    return None;
                }
                let mut digest = [0u8; 32];
                hex::decode_to_slice(&r.sha256, &mut digest).ok()?;
                Some((
                    digest,
                    Entry {
                        name: r.name.into(),
                        hash: r.sha256,
                        state: r.state,
                        views: r.views.iter().map(|v| Arc::from(v.as_str())).collect(),
                    },
                ))
            })
            .collect()
    }

    /// Checks the token a request presents: the password (or, failing that, the user name) of
    /// HTTP Basic credentials, or a Bearer token, as Composer sends them from auth.json.
    pub fn check(&self, headers: &HeaderMap) -> Verdict {
        self.check_bound(headers).0
    }

    /// As [`Tokens::check`], with the views a valid token is bound to (empty:
    /// organisation-wide).
    pub fn check_bound(&self, headers: &HeaderMap) -> (Verdict, Bound) {
        let unbound = || Bound::from([]);
        let candidates = presented(headers);
        if candidates.is_empty() {
            return (Verdict::Absent, unbound());
        }
        let checked = *self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.snapshot();
        let Some(tokens) = snapshot
            .by_digest
            .as_ref()
            .filter(|_| checked.elapsed() < SNAPSHOT_MAX_AGE)
        else {
            return (Verdict::Unavailable, unbound());
        };
        let Some(entry) = candidates.iter().find_map(|c| tokens.get(&digest(c))) else {
            return (Verdict::Unknown, unbound());
        };
        let verdict = match entry.state {
            TokenState::Active => {
                self.note_use(&entry.hash);
                Verdict::Valid(entry.name.clone())
            }
            TokenState::Disabled => Verdict::Disabled(entry.name.clone()),
            TokenState::Deleted => Verdict::Deleted(entry.name.clone()),
        };
        (verdict, entry.views.clone())
    }

    fn note_use(&self, hash: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let minute = now - now % LAST_USE_GRANULARITY_SECS;
        let recorded = self.recorded_use.lock().unwrap_or_else(|p| p.into_inner());
        if recorded.get(hash).is_some_and(|at| *at >= minute) {
            return;
        }
        drop(recorded);
        self.pending_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_string(), minute);
    }

    /// Last-use times noted since the last call.
    fn take_pending_use(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.pending_use.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Last-use times being written out: noted as recorded first, so a reader of
    /// [`Tokens::listing`] finds them in memory until the file has them.
    fn recorded(&self, written: &HashMap<String, u64>) {
        self.recorded_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(written.iter().map(|(hash, at)| (hash.clone(), *at)));
    }

    /// Last-use times that could not be written, kept for the next try.
    fn requeue(&self, failed: HashMap<String, u64>) {
        let mut waiting = self.pending_use.lock().unwrap_or_else(|p| p.into_inner());
        for (hash, at) in failed {
            let entry = waiting.entry(hash).or_default();
            *entry = (*entry).max(at);
        }
    }

    /// Every token as stored, never a secret, with when each was last used (Unix seconds, by
    /// hash; this process's uses not yet written out included): what `tokens list` shows.
    pub async fn listing(
        &self,
    ) -> Result<(Vec<TokenRecord>, HashMap<String, u64>), TokenFileError> {
        let (records, mut used) = match &self.source {
            Source::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    read(&path).map(|records| (records, read_last_use(&path)))
                })
                .await
                .map_err(|e| TokenFileError::Read {
                    path: PathBuf::new(),
                    source: io::Error::other(e),
                })??
            }
            Source::Bucket { bucket, .. } => (
                in_bucket::read(bucket).await?,
                in_bucket::read_last_use(bucket).await,
            ),
        };
        for noted in [&self.pending_use, &self.recorded_use] {
            for (hash, at) in noted.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let last = used.entry(hash.clone()).or_default();
                *last = (*last).max(*at);
            }
        }
        Ok((records, used))
    }

    /// Writes last-use times noted since the last call to the file beside the token file; a
    /// no-op when there are none or the tokens are in the bucket. Blocking.
    pub fn flush_last_use(&self) {
        let Source::File(path) = &self.source else {
            return;
        };
        let pending = self.take_pending_use();
        if pending.is_empty() {
            return;
        }
        self.recorded(&pending);
        if let Err(e) = merge_last_use(path, &pending) {
            tracing::warn!(path = %last_use_path(path).display(), error = %e, "cannot record when tokens were last used");
            self.requeue(pending);
        }
    }
}

/// The secrets a request may carry: Basic's password then user name (Composer's http-basic
/// needs both, and people put the token in either), or a Bearer token.
fn presented(headers: &HeaderMap) -> Vec<String> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Vec::new();
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return vec![rest.to_string()];
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Vec::new();
    }
    let Some(decoded) = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        // Present but unreadable: a wrong credential, not a missing one.
        return vec![String::new()];
    };
    let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
    vec![password.to_string(), user.to_string()]
}

#[cfg(test)]
mod tests;

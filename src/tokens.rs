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

use crate::config::Secret;

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
}

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
    path: PathBuf,
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

impl Tokens {
    /// Reads the file once, so the proxy starts with the tokens as they are.
    pub fn open(path: PathBuf) -> Self {
        let tokens = Self {
            path,
            snapshot: RwLock::new(Arc::new(Snapshot { by_digest: None })),
            checked: Mutex::new(Instant::now()),
            watch: Mutex::default(),
            pending_use: Mutex::default(),
            recorded_use: Mutex::default(),
            refusals: RefusalLog::default(),
        };
        tokens.refresh();
        tokens
    }

    pub fn path(&self) -> &Path {
        &self.path
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
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot();
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TokenFileError::Read {
                path: self.path.clone(),
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
                Some(_) => read(&self.path)?,
            };
            Ok(Some(self.index(records)))
        });
        let by_digest = match loaded {
            // Unchanged: only the time of the look moves on.
            Ok(None) => {
                *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                return;
            }
            Ok(Some(tokens)) => {
                if current.by_digest.as_ref() != Some(&tokens) {
                    let active = tokens
                        .values()
                        .filter(|e| e.state == TokenState::Active)
                        .count();
                    tracing::info!(event = "tokens_loaded", path = %self.path.display(), active, "token file read");
                }
                watch.failing = false;
                Some(tokens)
            }
            Err(e) => {
                if !watch.failing {
                    tracing::error!(error = %e, "token file unusable: every request with a token is answered 503 until it is fixed");
                }
                watch.failing = true;
                watch.read_at = None;
                None
            }
        };
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Snapshot { by_digest });
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Records by hash. A record with a name the commands would not have made (a hand edit)
    /// is left out: its name could forge log lines.
    fn index(&self, records: Vec<TokenRecord>) -> HashMap<[u8; 32], Entry> {
        records
            .into_iter()
            .filter_map(|r| {
                if let Err(e) = validate_name(&r.name) {
                    tracing::error!(path = %self.path.display(), error = %e, "token record ignored");
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
                    },
                ))
            })
            .collect()
    }

    /// Checks the token a request presents: the password (or, failing that, the user name) of
    /// HTTP Basic credentials, or a Bearer token, as Composer sends them from auth.json.
    pub fn check(&self, headers: &HeaderMap) -> Verdict {
        let candidates = presented(headers);
        if candidates.is_empty() {
            return Verdict::Absent;
        }
        let checked = *self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.snapshot();
        let Some(tokens) = snapshot
            .by_digest
            .as_ref()
            .filter(|_| checked.elapsed() < SNAPSHOT_MAX_AGE)
        else {
            return Verdict::Unavailable;
        };
        let Some(entry) = candidates.iter().find_map(|c| tokens.get(&digest(c))) else {
            return Verdict::Unknown;
        };
        match entry.state {
            TokenState::Active => {
                self.note_use(&entry.hash);
                Verdict::Valid(entry.name.clone())
            }
            TokenState::Disabled => Verdict::Disabled(entry.name.clone()),
            TokenState::Deleted => Verdict::Deleted(entry.name.clone()),
        }
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

    /// Writes last-use times noted since the last call; a no-op when there are none. Blocking.
    pub fn flush_last_use(&self) {
        let pending =
            std::mem::take(&mut *self.pending_use.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return;
        }
        match merge_last_use(&self.path, &pending) {
            Ok(()) => self
                .recorded_use
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(pending),
            Err(e) => {
                tracing::warn!(path = %last_use_path(&self.path).display(), error = %e, "cannot record when tokens were last used");
            }
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
mod tests {
    use super::*;
    use http::HeaderValue;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {value}")).expect("header"),
        );
        h
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        h
    }

    fn create(path: &Path, name: &str) -> Secret {
        let (secret, hash) = generate().expect("random");
        modify(path, |tokens| {
            tokens.push(TokenRecord {
                name: name.into(),
                sha256: hash,
                state: TokenState::Active,
                created: now_rfc3339(),
                changed: None,
            })
        })
        .expect("write");
        secret
    }

    fn set_state(path: &Path, name: &str, state: TokenState) {
        modify(path, |tokens| {
            for t in tokens.iter_mut().filter(|t| t.name == name) {
                t.state = state;
            }
        })
        .expect("write");
    }

    #[test]
    fn secrets_are_random_prefixed_and_stored_only_as_hashes() {
        let (a, hash_a) = generate().expect("random");
        let (b, _) = generate().expect("random");
        assert_ne!(a, b);
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(hash_a, hex::encode(Sha256::digest(a.expose().as_bytes())));
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("ci-runner_1@team.example").is_ok());
        for bad in ["", "a b", "x/y", "é", &"n".repeat(65), "a\"b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_checked_in_basic_and_bearer_and_changes_apply_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        let tokens = Tokens::open(path.clone());
        assert_eq!(tokens.check(&HeaderMap::new()), Verdict::Absent);
        assert_eq!(tokens.check(&bearer("cpt_nope")), Verdict::Unknown);

        let secret = create(&path, "ci");
        tokens.refresh();
        let ci: Arc<str> = "ci".into();
        assert_eq!(
            tokens.check(&bearer(secret.expose())),
            Verdict::Valid(ci.clone())
        );
        assert_eq!(
            tokens.check(&basic("ci", secret.expose())),
            Verdict::Valid(ci.clone())
        );
        assert_eq!(
            tokens.check(&basic(secret.expose(), "")),
            Verdict::Valid(ci.clone())
        );
        assert_eq!(tokens.check(&basic("ci", "wrong")), Verdict::Unknown);

        set_state(&path, "ci", TokenState::Disabled);
        tokens.refresh();
        assert_eq!(
            tokens.check(&bearer(secret.expose())),
            Verdict::Disabled(ci.clone())
        );
        set_state(&path, "ci", TokenState::Active);
        tokens.refresh();
        assert_eq!(
            tokens.check(&bearer(secret.expose())),
            Verdict::Valid(ci.clone())
        );
        set_state(&path, "ci", TokenState::Deleted);
        tokens.refresh();
        assert_eq!(tokens.check(&bearer(secret.expose())), Verdict::Deleted(ci));
    }

    #[test]
    fn an_unusable_token_file_refuses_every_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        let secret = create(&path, "ci");
        let tokens = Tokens::open(path.clone());
        assert!(tokens.usable());
        assert!(matches!(
            tokens.check(&bearer(secret.expose())),
            Verdict::Valid(_)
        ));
        fs::write(&path, b"{not json").expect("write");
        tokens.refresh();
        assert_eq!(tokens.check(&bearer(secret.expose())), Verdict::Unavailable);
        assert_eq!(tokens.active(), 0);
        assert!(!tokens.usable());
        // Fixed: accepted again.
        fs::remove_file(&path).expect("remove");
        let again = create(&path, "ci");
        tokens.refresh();
        assert!(matches!(
            tokens.check(&bearer(again.expose())),
            Verdict::Valid(_)
        ));
    }

    #[test]
    fn hand_edited_records_with_unsafe_names_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        let secret = create(&path, "ci");
        modify(&path, |tokens| {
            tokens[0].name = "ci\nforged log line".into()
        })
        .expect("write");
        let tokens = Tokens::open(path);
        assert_eq!(tokens.check(&bearer(secret.expose())), Verdict::Unknown);
    }

    #[test]
    fn last_use_is_merged_into_its_own_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        let secret = create(&path, "ci");
        let hash = read(&path).expect("read")[0].sha256.clone();
        let tokens = Tokens::open(path.clone());
        tokens.flush_last_use();
        assert!(read_last_use(&path).is_empty());
        assert!(matches!(
            tokens.check(&bearer(secret.expose())),
            Verdict::Valid(_)
        ));
        tokens.flush_last_use();
        let used = read_last_use(&path);
        assert!(used.get(&hash).is_some_and(|at| *at > 0), "{used:?}");
        // The token file itself is left to the administrator's commands.
        assert_eq!(read(&path).expect("read").len(), 1);
        // A second use within the minute writes nothing new.
        assert!(matches!(
            tokens.check(&bearer(secret.expose())),
            Verdict::Valid(_)
        ));
        assert!(tokens.pending_use.lock().expect("lock").is_empty());
    }
}

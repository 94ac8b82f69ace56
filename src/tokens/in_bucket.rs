//! The token file and last use in the bucket (`object_store_url`), so replicas without a shared
//! volume share them. Both are small JSON objects under `tokens/` changed only by conditional
//! writes: a writer reads the object and its version, applies its change, and writes it back
//! only if the object is still at that version (or, the first time, only if there is none); on
//! a conflict it reads again and reapplies the change. Two `tokens` commands, or two replicas
//! recording last use, therefore never lose each other's change, without a lock service.
//!
//! Last use is one object merged by the replicas (newest time per token wins) rather than one
//! per replica: it is written only when a token is used in a minute not yet recorded, so
//! conflicts are rare and cheap, `tokens list` reads one object, and replicas that come and go
//! (pods with random names) leave nothing behind.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bucket::{Area, Bucket, Created, Fetched, Updated};

use super::store::{parse, serialize};
use super::{Source, TokenFileError, TokenRecord, Tokens};

/// How often a proxy asks the bucket whether the token file changed: a conditional GET that
/// carries no body unless it did, so a change applies everywhere within about this long
/// without a bucket request per client request.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(500);
/// How often a proxy writes last use to the bucket (only when a token was used in a minute
/// not yet recorded).
const LAST_USE_FLUSH: Duration = Duration::from_secs(5);
/// A bucket request the refresher gives up on: the copy it has stays in force meanwhile.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The token file's name in the tokens area.
pub const TOKEN_OBJECT: &str = "tokens.json";
const LAST_USE_OBJECT: &str = "last-used.json";
/// A change still conflicting after this many attempts is given up, said, and left to a retry:
/// only a writer in a tight loop could cause that.
const MAX_ATTEMPTS: usize = 20;

/// Where the token file is, for messages: `s3://bucket/prefix/tokens/tokens.json`.
pub fn location(bucket: &Bucket) -> String {
    object_location(bucket, TOKEN_OBJECT)
}

fn object_location(bucket: &Bucket, name: &str) -> String {
    format!("{}/tokens/{name}", bucket.describe().trim_end_matches('/'))
}

fn failed(bucket: &Bucket, name: &str) -> impl Fn(crate::bucket::BucketError) -> TokenFileError {
    let location = object_location(bucket, name);
    move |source| TokenFileError::Bucket {
        location: location.clone(),
        source,
    }
}

/// The tokens in the bucket; none when there is no token file yet.
pub async fn read(bucket: &Bucket) -> Result<Vec<TokenRecord>, TokenFileError> {
    let path = bucket.path(Area::Tokens, TOKEN_OBJECT);
    match bucket
        .get(&path)
        .await
        .map_err(failed(bucket, TOKEN_OBJECT))?
    {
        Some(object) => parse(&object.bytes, &PathBuf::from(location(bucket))),
        None => Ok(Vec::new()),
    }
}

/// Changes the token file in the bucket by conditional writes, reapplying `change` to the
/// newest copy until the write applies.
pub async fn modify<T>(
    bucket: &Bucket,
    mut change: impl FnMut(&mut Vec<TokenRecord>) -> T,
) -> Result<T, TokenFileError> {
    let shown = PathBuf::from(location(bucket));
    update(bucket, TOKEN_OBJECT, |current| {
        let mut tokens = match current {
            Some(bytes) => parse(bytes, &shown)?,
            None => Vec::new(),
        };
        let result = change(&mut tokens);
        let bytes = serialize(tokens).map_err(|e| TokenFileError::Invalid {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Ok((bytes, result))
    })
    .await
}

/// Last use per token hash (seconds since the epoch), newest across replicas; empty when
/// nothing was recorded or the bucket cannot say.
pub async fn read_last_use(bucket: &Bucket) -> HashMap<String, u64> {
    let path = bucket.path(Area::Tokens, LAST_USE_OBJECT);
    match bucket.get(&path).await {
        Ok(Some(object)) => serde_json::from_slice(&object.bytes).unwrap_or_default(),
        Ok(None) | Err(_) => HashMap::new(),
    }
}

/// Merges newer last-use times into the shared object.
pub(super) async fn merge_last_use(
    bucket: &Bucket,
    seen: &HashMap<String, u64>,
) -> Result<(), TokenFileError> {
    update(bucket, LAST_USE_OBJECT, |current| {
        // An unreadable object is replaced: last use is informational, and a broken copy
        // would otherwise stop every replica from recording any.
        let mut all: HashMap<String, u64> = current
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .unwrap_or_default();
        for (hash, at) in seen {
            let entry = all.entry(hash.clone()).or_default();
            *entry = (*entry).max(*at);
        }
        let bytes = serde_json::to_vec(&all).map_err(|e| TokenFileError::Invalid {
            path: PathBuf::from(object_location(bucket, LAST_USE_OBJECT)),
            message: e.to_string(),
        })?;
        Ok((bytes, ()))
    })
    .await
}

/// Read, change, write back only if unchanged since the read; again on a conflict.
async fn update<T>(
    bucket: &Bucket,
    name: &str,
    mut change: impl FnMut(Option<&[u8]>) -> Result<(Vec<u8>, T), TokenFileError>,
) -> Result<T, TokenFileError> {
    let path = bucket.path(Area::Tokens, name);
    let failed = failed(bucket, name);
    for _ in 0..MAX_ATTEMPTS {
        let current = bucket.get(&path).await.map_err(&failed)?;
        let (bytes, result) = change(current.as_ref().map(|o| &o.bytes[..]))?;
        let applied = match current {
            None => matches!(
                bucket.create(&path, bytes.into()).await.map_err(&failed)?,
                Created::New(_)
            ),
            Some(object) => matches!(
                bucket
                    .update(&path, bytes.into(), object.version)
                    .await
                    .map_err(&failed)?,
                Updated::Done(_)
            ),
        };
        if applied {
            return Ok(result);
        }
    }
    Err(TokenFileError::Contended {
        location: object_location(bucket, name),
        attempts: MAX_ATTEMPTS,
    })
}

impl Tokens {
    /// Reads the token file from the bucket once, so the proxy starts with the tokens as they
    /// are (or, with the bucket unreachable, refuses tokens until it can read them).
    pub async fn open_in_bucket(bucket: Arc<Bucket>) -> Tokens {
        let tokens = Tokens::with_source(Source::Bucket {
            location: location(&bucket),
            bucket,
            seen: Mutex::default(),
            failing: Mutex::default(),
        });
        tokens.refresh_from_bucket().await;
        tokens
    }

    pub fn in_bucket(&self) -> bool {
        matches!(self.source, Source::Bucket { .. })
    }

    /// Asks the bucket for the token file unless it is still the version in the snapshot.
    /// While the bucket fails, the last copy read stays in force: no change can be made to
    /// the file meanwhile either, since the commands need the bucket too.
    pub async fn refresh_from_bucket(&self) {
        let Source::Bucket {
            bucket,
            location,
            seen,
            failing,
        } = &self.source
        else {
            return;
        };
        if !bucket.usable() {
            self.touch();
            return;
        }
        let known = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let path = bucket.path(Area::Tokens, TOKEN_OBJECT);
        let fetched = tokio::time::timeout(
            REQUEST_TIMEOUT,
            bucket.get_if_changed(&path, known.as_ref()),
        )
        .await;
        let mut failing = failing.lock().unwrap_or_else(|p| p.into_inner());
        let (version, loaded) = match fetched {
            Ok(Ok(Fetched::Unchanged)) => return self.touch(),
            Ok(Ok(Fetched::Missing)) => (None, Ok(Vec::new())),
            Ok(Ok(Fetched::Changed(object))) => (
                Some(object.version),
                parse(&object.bytes, &PathBuf::from(location)),
            ),
            Ok(Err(e)) => {
                self.keep_copy(&mut failing, &e.to_string());
                return;
            }
            Err(_) => {
                self.keep_copy(&mut failing, "no answer within 2 s");
                return;
            }
        };
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = version;
        self.publish(&mut failing, loaded.map(|records| self.index(records)));
    }

    /// After a failed read: the snapshot stays as it is (none until a first read succeeds).
    fn keep_copy(&self, failing: &mut bool, error: &str) {
        if !self.usable() && !*failing {
            tracing::error!(path = %self.location(), error, "cannot read the token file from the bucket: every request with a token is answered 503 until it can");
            *failing = true;
        }
        self.touch();
    }

    /// Merges last-use times noted since the last call into the bucket's object; kept for the
    /// next call when the bucket does not take them.
    pub async fn flush_last_use_to_bucket(&self) {
        let Source::Bucket { bucket, .. } = &self.source else {
            return;
        };
        if !bucket.usable() {
            return;
        }
        let pending = self.take_pending_use();
        if pending.is_empty() {
            return;
        }
        self.recorded(&pending);
        let error =
            match tokio::time::timeout(REQUEST_TIMEOUT * 2, merge_last_use(bucket, &pending)).await
            {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 4 s".to_string(),
            };
        tracing::warn!(path = %object_location(bucket, LAST_USE_OBJECT), error, "cannot record when tokens were last used");
        self.requeue(pending);
    }

    /// Keeps the token snapshot fresh from the bucket and writes last use to it, until the
    /// task running it is aborted.
    pub async fn follow_bucket(self: Arc<Tokens>) {
        let refresh = async {
            let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                self.refresh_from_bucket().await;
            }
        };
        let flush = async {
            let mut ticker = tokio::time::interval(LAST_USE_FLUSH);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                self.flush_last_use_to_bucket().await;
            }
        };
        tokio::join!(refresh, flush);
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;
    use crate::tokens::{generate, now_rfc3339, TokenState, Verdict};

    fn bucket() -> Arc<Bucket> {
        Bucket::in_memory("proxy")
    }

    fn record(name: &str) -> (crate::config::Secret, TokenRecord) {
        let (secret, sha256) = generate().expect("random");
        let record = TokenRecord {
            name: name.into(),
            sha256,
            state: TokenState::Active,
            created: now_rfc3339(),
            changed: None,
            views: Vec::new(),
        };
        (secret, record)
    }

    fn names(records: &[TokenRecord]) -> Vec<&str> {
        let mut names: Vec<_> = records.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// Another `tokens` command's change lands between this one's read and its write, both
    /// when the file is created and when it is updated: both changes survive.
    #[tokio::test]
    async fn interleaved_changes_both_survive() {
        for existing in [false, true] {
            let bucket = bucket();
            if existing {
                modify(&bucket, |list| list.push(record("old").1))
                    .await
                    .expect("first write");
            }
            let mut attempts = 0;
            let (_, mine) = record("mine");
            let other = bucket.clone();
            modify(&bucket, |list| {
                attempts += 1;
                if attempts == 1 {
                    let other = other.clone();
                    // The other command runs to completion on its own runtime while this one
                    // holds a copy read before it.
                    std::thread::spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .build()
                            .expect("runtime");
                        runtime.block_on(modify(&other, |list| list.push(record("theirs").1)))
                    })
                    .join()
                    .expect("thread")
                    .expect("the other change applies");
                }
                list.push(mine.clone());
            })
            .await
            .expect("the change applies after a conflict");
            assert_eq!(attempts, 2, "the conflict made it read again");
            let stored = read(&bucket).await.expect("read");
            let want = if existing {
                vec!["mine", "old", "theirs"]
            } else {
                vec!["mine", "theirs"]
            };
            assert_eq!(names(&stored), want);
        }
    }

    #[tokio::test]
    async fn proxies_follow_the_file_and_merge_last_use() {
        let bucket = bucket();
        let tokens = Tokens::open_in_bucket(bucket.clone()).await;
        assert!(tokens.usable(), "no file yet is no tokens yet");
        let (secret, ci) = record("ci");
        let hash = ci.sha256.clone();
        modify(&bucket, |list| list.push(ci.clone()))
            .await
            .expect("write");
        let mut headers = http::HeaderMap::new();
        let bearer = format!("Bearer {}", secret.expose());
        headers.insert(http::header::AUTHORIZATION, bearer.parse().expect("header"));
        assert_eq!(tokens.check(&headers), Verdict::Unknown, "not read yet");
        tokens.refresh_from_bucket().await;
        assert_eq!(tokens.check(&headers), Verdict::Valid("ci".into()));

        // Last use reaches the shared object, merged with another replica's newer time.
        tokens.flush_last_use_to_bucket().await;
        let mine = read_last_use(&bucket).await[&hash];
        assert!(mine > 0);
        let later = HashMap::from([(hash.clone(), mine + 60)]);
        merge_last_use(&bucket, &later).await.expect("merge");
        merge_last_use(&bucket, &HashMap::from([(hash.clone(), mine)]))
            .await
            .expect("an older time merges without going back");
        assert_eq!(read_last_use(&bucket).await[&hash], mine + 60);

        modify(&bucket, |list| list[0].state = TokenState::Disabled)
            .await
            .expect("write");
        tokens.refresh_from_bucket().await;
        assert_eq!(tokens.check(&headers), Verdict::Disabled("ci".into()));

        // A file made unreadable refuses every token, as on disk.
        let path = bucket.path(Area::Tokens, TOKEN_OBJECT);
        bucket
            .store()
            .put(&path, "{not json".into())
            .await
            .expect("put");
        tokens.refresh_from_bucket().await;
        assert_eq!(tokens.check(&headers), Verdict::Unavailable);
    }
}

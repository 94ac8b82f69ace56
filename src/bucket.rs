//! The shared bucket (`object_store_url`): one `ObjectStore` (S3 and compatibles, GCS, Azure)
//! under a key prefix, with the few operations shared state needs: reads, a create that never
//! overwrites, an update conditional on the version read, and whether the bucket answers.
//!
//! Reachability is one state logged once per change (`bucket_down` / `bucket_up`) and a
//! metric. While the bucket is down, callers skip it (serving from local tiers) except for
//! one attempt per [`RETRY_DOWN`], so recovery is noticed without a restart; `/readyz` also
//! probes it through [`Bucket::check`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::{Path, PathPart};
use object_store::{
    Attributes, GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, UpdateVersion,
};

use crate::config::BucketUrl;
use crate::metrics::{BucketOp, Metrics};

pub use object_store::Error as StoreError;

mod cloud;

/// While the bucket is down, how often one caller still tries it.
pub const RETRY_DOWN: Duration = Duration::from_secs(3);
/// How long a probe's answer is trusted by [`Bucket::check`].
const PROBE_TTL: Duration = Duration::from_secs(5);
/// A probe that takes longer counts as a failure: readiness must answer promptly.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The kinds of shared state, each under its own folder of the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    Archives,
    Leases,
    Metadata,
    Tokens,
    Usage,
    /// Each replica's sign of life, for the status page.
    Replicas,
}

impl Area {
    fn folder(self) -> &'static str {
        match self {
            Area::Archives => "archives",
            Area::Leases => "leases",
            Area::Metadata => "metadata",
            Area::Tokens => "tokens",
            Area::Usage => "usage",
            Area::Replicas => "replicas",
        }
    }
}

/// An object read whole, with the version a conditional update must name.
#[derive(Clone, Debug)]
pub struct Object {
    pub bytes: Bytes,
    pub version: UpdateVersion,
}

/// An object being read: its description, its attributes (user metadata) and its body, where
/// a failure partway through reaches the reader as an error in the stream.
pub struct Reading {
    pub meta: ObjectMeta,
    pub attributes: Attributes,
    pub body: BoxStream<'static, Result<Bytes, StoreError>>,
}

/// The answer to [`Bucket::get_if_changed`].
#[derive(Clone, Debug)]
pub enum Fetched {
    Changed(Object),
    Unchanged,
    Missing,
}

/// The answer to a conditional create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// Written; its version for a later conditional update.
    New(UpdateVersion),
    /// Something was there already and was left alone.
    Exists,
}

/// The answer to a conditional update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Updated {
    Done(UpdateVersion),
    /// The object changed (or vanished) since it was read: read it again and redo the change.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("invalid setting `object_store_url`: {0}")]
    Config(String),
    /// The bucket failed or could not be reached; the text names no credential.
    #[error("bucket {op}: {source}")]
    Store {
        op: &'static str,
        #[source]
        source: StoreError,
    },
}

pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// `s3://bucket/prefix`, for logs.
    describe: String,
    metrics: Arc<Metrics>,
    /// Since when requests have been failing, and when one was last let through meanwhile.
    down: Mutex<Option<Down>>,
    /// When [`Bucket::check`] last asked.
    probed: Mutex<Option<Instant>>,
}

#[derive(Clone, Copy)]
struct Down {
    since: Instant,
    last_try: Instant,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("url", &self.describe)
            .finish()
    }
}

impl Bucket {
    /// Builds the provider's client from `url` and the standard environment (credentials,
    /// region, endpoint, workload identity). Makes no request: an unreachable bucket is a
    /// degradation at run time, not a reason not to start.
    pub fn open(url: &BucketUrl, metrics: Arc<Metrics>) -> Result<Arc<Bucket>, BucketError> {
        let store = cloud::store(url)?;
        Ok(Self::with_store(
            store,
            &url.prefix,
            url.to_string(),
            metrics,
        ))
    }

    /// An in-memory bucket under `prefix`, for unit tests.
    #[cfg(test)]
    pub fn in_memory(prefix: &str) -> Arc<Bucket> {
        Self::with_store(
            Arc::new(object_store::memory::InMemory::new()),
            prefix,
            format!("memory://{prefix}"),
            Arc::new(Metrics::default()),
        )
    }

    /// Over any store (tests use `object_store::memory::InMemory`).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        describe: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Bucket> {
        Arc::new(Bucket {
            store,
            prefix: prefix
                .split('/')
                .filter(|p| !p.is_empty())
                .map(PathPart::from)
                .collect(),
            describe,
            metrics,
            down: Mutex::new(None),
            probed: Mutex::new(None),
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store itself, for what the helpers here do not cover (listing, multipart).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// `PREFIX/<area>/<name>`; `/` in `name` makes folders, and each segment is escaped by
    /// the crate, so no name reaches outside its area.
    pub fn path(&self, area: Area, name: &str) -> Path {
        let base = self.prefix.clone().join(area.folder());
        name.split('/')
            .filter(|p| !p.is_empty())
            .fold(base, |path, part| path.join(part))
    }

    /// The whole object, or `None` when there is none.
    pub async fn get(&self, path: &Path) -> Result<Option<Object>, BucketError> {
        let result = async {
            let got = self.store.get_opts(path, GetOptions::default()).await?;
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            Ok::<_, StoreError>(Object {
                bytes: got.bytes().await?,
                version,
            })
        }
        .await;
        match self.answered(BucketOp::Get, "get", result)? {
            Answer::Value(object) => Ok(Some(object)),
            Answer::Missing | Answer::Exists | Answer::Changed => Ok(None),
        }
    }

    /// The whole object unless it is still at `known` (`If-None-Match` on its ETag), so a
    /// reader polling a small object pays a body only when it changed.
    pub async fn get_if_changed(
        &self,
        path: &Path,
        known: Option<&UpdateVersion>,
    ) -> Result<Fetched, BucketError> {
        let options = GetOptions {
            if_none_match: known.and_then(|v| v.e_tag.clone()),
            ..GetOptions::default()
        };
        let result = async {
            let got = self.store.get_opts(path, options).await?;
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            Ok::<_, StoreError>(Object {
                bytes: got.bytes().await?,
                version,
            })
        }
        .await;
        Ok(match self.answered(BucketOp::Get, "get", result)? {
            Answer::Value(object) => Fetched::Changed(object),
            Answer::Missing => Fetched::Missing,
            Answer::Exists | Answer::Changed => Fetched::Unchanged,
        })
    }

    /// The object as a stream, or `None` when there is none.
    pub async fn get_stream(&self, path: &Path) -> Result<Option<Reading>, BucketError> {
        let result = self.store.get_opts(path, GetOptions::default()).await;
        match self.answered(BucketOp::Get, "get", result)? {
            Answer::Value(got) => Ok(Some(Reading {
                meta: got.meta.clone(),
                attributes: got.attributes.clone(),
                body: got.into_stream().boxed(),
            })),
            Answer::Missing | Answer::Exists | Answer::Changed => Ok(None),
        }
    }

    /// Whether an object is at `path` (a HEAD).
    pub async fn exists(&self, path: &Path) -> Result<bool, BucketError> {
        let result = self.store.head(path).await;
        Ok(matches!(
            self.answered(BucketOp::Get, "head", result)?,
            Answer::Value(_)
        ))
    }

    /// Writes `payload` only if nothing is at `path` (S3 `If-None-Match: *`): replicas never
    /// overwrite each other, and the object appears whole or not at all.
    pub async fn create(&self, path: &Path, payload: PutPayload) -> Result<Created, BucketError> {
        self.create_with(path, payload, Attributes::new()).await
    }

    /// [`Bucket::create`] with attributes (user metadata such as a digest).
    pub async fn create_with(
        &self,
        path: &Path,
        payload: PutPayload,
        attributes: Attributes,
    ) -> Result<Created, BucketError> {
        let options = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        let result = self.store.put_opts(path, payload, options).await;
        match self.answered(BucketOp::Put, "create", result)? {
            Answer::Value(put) => Ok(Created::New(put.into())),
            Answer::Exists | Answer::Changed => Ok(Created::Exists),
            // A create has nothing to miss; a store saying so has failed.
            Answer::Missing => Ok(Created::Exists),
        }
    }

    /// Replaces the object only if it is still at `version` (S3 `If-Match`).
    pub async fn update(
        &self,
        path: &Path,
        payload: PutPayload,
        version: UpdateVersion,
    ) -> Result<Updated, BucketError> {
        let result = self
            .store
            .put_opts(path, payload, PutOptions::from(PutMode::Update(version)))
            .await;
        match self.answered(BucketOp::Put, "update", result)? {
            Answer::Value(put) => Ok(Updated::Done(put.into())),
            Answer::Missing | Answer::Exists | Answer::Changed => Ok(Updated::Conflict),
        }
    }

    /// Writes `payload` whatever is there (the newer copy wins), for objects that are not
    /// single-write, such as persisted metadata.
    pub async fn put(&self, path: &Path, payload: PutPayload) -> Result<(), BucketError> {
        let result = self
            .store
            .put_opts(path, payload, PutOptions::default())
            .await;
        self.answered(BucketOp::Put, "put", result).map(|_| ())
    }

    /// The objects under `PREFIX/<area>/<under>`, each as its name below the area (`a/b`) and
    /// its size.
    pub async fn list(&self, area: Area, under: &str) -> Result<Vec<(String, u64)>, BucketError> {
        let base = self.path(area, "");
        let result: Result<Vec<ObjectMeta>, StoreError> = self
            .store
            .list(Some(&self.path(area, under)))
            .try_collect()
            .await;
        let listed = match self.answered(BucketOp::List, "list", result)? {
            Answer::Value(listed) => listed,
            Answer::Missing | Answer::Exists | Answer::Changed => Vec::new(),
        };
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let parts: Vec<String> = meta
                    .location
                    .prefix_match(&base)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                Some((parts.join("/"), meta.size))
            })
            .collect())
    }

    /// Removes the object; one already gone is fine.
    pub async fn delete(&self, path: &Path) -> Result<(), BucketError> {
        let result = self.store.delete(path).await;
        self.answered(BucketOp::Delete, "delete", result)
            .map(|_| ())
    }

    /// Whether callers should use the bucket now: yes while it answers; while it fails, only
    /// one caller per [`RETRY_DOWN`], whose answer decides for the others.
    pub fn usable(&self) -> bool {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match down.as_mut() {
            None => true,
            Some(d) if d.last_try.elapsed() >= RETRY_DOWN => {
                d.last_try = Instant::now();
                true
            }
            Some(_) => false,
        }
    }

    /// `None` while the bucket answers, else for how long it has been failing.
    pub fn down_for(&self) -> Option<Duration> {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|d| d.since.elapsed())
    }

    /// Asks the bucket (a HEAD of a key that need not exist) unless it was asked in the last
    /// few seconds; `true` when it answers. For `/readyz`, which must notice both an outage
    /// nobody's request has hit yet and a recovery.
    pub async fn check(&self) -> bool {
        if let Some(at) = *self.probed.lock().unwrap_or_else(|p| p.into_inner()) {
            // Requests since the probe may have learnt better; the state has what they learnt.
            if at.elapsed() < PROBE_TTL {
                return self.down_for().is_none();
            }
        }
        let path = self.prefix.clone().join("probe");
        let result = match tokio::time::timeout(PROBE_TIMEOUT, self.store.head(&path)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Generic {
                store: "bucket",
                source: "no answer within 5 s".into(),
            }),
        };
        let up = self.answered(BucketOp::Probe, "probe", result).is_ok();
        *self.probed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        up
    }

    /// Sorts a store answer into a value, an expected refusal, or a failure; a failure marks
    /// the bucket down, anything else (a refusal too: the bucket answered) marks it up.
    fn answered<T>(
        &self,
        op: BucketOp,
        name: &'static str,
        result: Result<T, StoreError>,
    ) -> Result<Answer<T>, BucketError> {
        let answer = match result {
            Ok(value) => Answer::Value(value),
            Err(StoreError::NotFound { .. }) => Answer::Missing,
            Err(StoreError::AlreadyExists { .. }) => Answer::Exists,
            Err(StoreError::Precondition { .. } | StoreError::NotModified { .. }) => {
                Answer::Changed
            }
            Err(source) => {
                self.metrics.bucket.record_error(op);
                self.note(false, &source.to_string());
                return Err(BucketError::Store { op: name, source });
            }
        };
        self.note(true, "");
        Ok(answer)
    }

    fn note(&self, up: bool, detail: &str) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match (up, *down) {
            (false, None) => {
                let now = Instant::now();
                *down = Some(Down {
                    since: now,
                    last_try: now,
                });
                tracing::warn!(event = "bucket_down", bucket = %self.describe, detail, "the bucket is failing; serving from local tiers and upstream without storing in it");
            }
            (true, Some(d)) => {
                *down = None;
                tracing::info!(
                    event = "bucket_up",
                    bucket = %self.describe,
                    down_secs = d.since.elapsed().as_secs(),
                    "the bucket answers again"
                );
            }
            _ => {}
        }
    }
}

enum Answer<T> {
    Value(T),
    Missing,
    Exists,
    Changed,
}

#[cfg(test)]
mod tests {

    use super::*;

    fn bucket() -> Arc<Bucket> {
        Bucket::in_memory("/team/proxy/")
    }

    #[test]
    fn paths_stay_inside_their_area() {
        let b = bucket();
        assert_eq!(
            b.path(Area::Archives, "ab/cdef").as_ref(),
            "team/proxy/archives/ab/cdef"
        );
        assert_eq!(
            b.path(Area::Tokens, "tokens.json").as_ref(),
            "team/proxy/tokens/tokens.json"
        );
        let escaped = b.path(Area::Metadata, "../../x");
        assert!(
            escaped.as_ref().starts_with("team/proxy/metadata/"),
            "{escaped}"
        );
        assert_eq!(escaped.parts().count(), 6, "{escaped}");
    }

    #[tokio::test]
    async fn create_never_overwrites_and_update_needs_the_current_version() {
        let b = bucket();
        let path = b.path(Area::Tokens, "t");
        assert!(b.get(&path).await.expect("answers").is_none());
        let Created::New(first) = b.create(&path, "one".into()).await.expect("create") else {
            panic!("the first create writes");
        };
        assert_eq!(
            b.create(&path, "two".into()).await.expect("answers"),
            Created::Exists
        );
        let read = b.get(&path).await.expect("answers").expect("present");
        assert_eq!(&read.bytes[..], b"one");
        let Updated::Done(second) = b
            .update(&path, "three".into(), read.version.clone())
            .await
            .expect("update")
        else {
            panic!("an update at the current version applies");
        };
        assert_ne!(first, second);
        // The version read before that update is stale now: the change is refused, not lost.
        assert_eq!(
            b.update(&path, "lost".into(), read.version)
                .await
                .expect("answers"),
            Updated::Conflict
        );
        let read = b.get(&path).await.expect("answers").expect("present");
        assert_eq!(&read.bytes[..], b"three");
        b.delete(&path).await.expect("delete");
        b.delete(&path).await.expect("deleting twice is fine");
        assert!(b.get(&path).await.expect("answers").is_none());
        assert!(b.check().await);
        assert!(b.usable() && b.down_for().is_none());
    }

    #[test]
    fn a_failing_bucket_is_tried_once_per_interval_and_recovers_on_an_answer() {
        let b = bucket();
        b.note(false, "refused");
        assert!(b.down_for().is_some());
        assert!(!b.usable(), "just failed: callers skip it");
        b.down
            .lock()
            .expect("lock")
            .as_mut()
            .expect("down")
            .last_try = Instant::now().checked_sub(RETRY_DOWN).expect("up for 3 s");
        assert!(b.usable(), "one caller tries again");
        assert!(!b.usable(), "and only one");
        b.note(true, "");
        assert!(b.usable() && b.down_for().is_none());
    }
}

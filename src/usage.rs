//! The usage record: who took which archive. Every archive a client gets (a GET answered 200,
//! 206 or 304: the archive delivered, or the client's copy confirmed current, which is a
//! download from the client's side too; never a HEAD or a refusal) becomes one JSON line with
//! the time, package, version, upstream account, view and client token.
//!
//! The request path only pushes a small value onto a bounded queue ([`UsageRecord::record`]):
//! when the queue is full the download is counted in `composer_proxy_usage_dropped_total`
//! and not recorded, so a stuck disk never slows a download. One background thread
//! ([`Writer`]) appends what arrives to hourly segment files under
//! `<cache_dir>/usage/<replica>/` within [`GATHER`] (so `composer-proxy usage` beside a live
//! proxy sees a download at once), and keeps them within `usage_retention_days` and
//! `usage_max_bytes`, oldest first (`segments`). With a bucket, a task uploads each segment of
//! this replica while it changes (`in_bucket`). `report` reads every replica's segments back
//! for the command.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bucket::Bucket;
use crate::config::Config;
use crate::metrics::Metrics;

pub mod in_bucket;
pub mod report;
pub mod segments;

use segments::SegmentName;

/// Downloads waiting for the writer at most; beyond, new ones are dropped and counted. At a
/// couple of hundred bytes each, a few seconds of a very busy proxy's downloads in 16 MiB:
/// the writer empties it many times a second, so it fills only while the disk is stuck.
const MAX_PENDING: usize = 65_536;
/// How long the writer lets downloads gather after the first arrives, so a busy proxy makes
/// a few writes a second rather than one per download.
const GATHER: Duration = Duration::from_millis(50);
/// How long an idle writer sleeps before it looks at the age bound again.
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How often segments past their age are looked for (size is checked as it grows).
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);
/// At shutdown, how long the last downloads may take to reach the disk and the bucket.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The folder of `cache_dir` that holds every replica's segments.
pub const USAGE_DIR: &str = "usage";

/// One archive served, as the request path hands it over: nothing is formatted there.
#[derive(Clone, Debug)]
pub struct Download {
    pub at: SystemTime,
    pub package: String,
    pub version: Option<String>,
    /// The `[[upstream]]` table (account) that served it, or `releases`.
    pub upstream: Arc<str>,
    /// `None` on the merged root and an upstream's own URL without a bound token.
    pub view: Option<Arc<str>>,
    /// The valid client token presented; `None` when none was needed.
    pub token: Option<Arc<str>>,
}

/// One line of a segment file. The field names are the record's stable format: the command
/// and other replicas read what older versions wrote.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Line {
    /// UTC, RFC 3339 with milliseconds (`2026-11-01T09:30:00.123Z`).
    pub time: String,
    pub package: String,
    pub version: Option<String>,
    pub upstream: String,
    pub view: Option<String>,
    pub token: Option<String>,
}

/// A [`Line`] as the writer serializes it, borrowed from the download: no copies per line.
#[derive(Serialize)]
struct LineOut<'a> {
    time: &'a str,
    package: &'a str,
    version: Option<&'a str>,
    upstream: &'a str,
    view: Option<&'a str>,
    token: Option<&'a str>,
}

/// Whether an answer to a GET for an archive is a download to record.
pub fn delivered(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
    )
}

/// The record's settings, from the configuration.
#[derive(Clone, Debug)]
pub struct UsageSettings {
    /// `<cache_dir>/usage`.
    pub dir: PathBuf,
    /// This process's folder name there and in the bucket.
    pub replica: String,
    pub retention: Duration,
    pub max_bytes: u64,
}

impl UsageSettings {
    /// `None` when the record is off (`usage_retention_days = 0`).
    pub fn from_config(config: &Config) -> Option<UsageSettings> {
        let retention = config.usage_retention?;
        Some(UsageSettings {
            dir: config.cache_dir.join(USAGE_DIR),
            replica: replica_name(config),
            retention,
            max_bytes: config.usage_max_bytes,
        })
    }

    fn own_dir(&self) -> PathBuf {
        self.dir.join(&self.replica)
    }
}

/// `usage_replica`, or the host name and a digest of the cache directory's path: stable
/// across restarts on one volume, and different for two processes on one host with their own
/// cache directories (which would otherwise overwrite each other's objects in the bucket).
/// Processes sharing a cache directory on one host share a name and its files, appending
/// whole lines to them.
pub fn replica_name(config: &Config) -> String {
    if let Some(name) = &config.usage_replica {
        return name.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let dir = std::fs::canonicalize(&config.cache_dir)
        .or_else(|_| std::path::absolute(&config.cache_dir))
        .unwrap_or_else(|_| config.cache_dir.clone());
    let digest = hex::encode(Sha256::digest(dir.to_string_lossy().as_bytes()));
    let host = if host.is_empty() { "host" } else { &host };
    format!("{host}-{}", &digest[..8])
}

/// Downloads waiting for the writer, and whether it should finish.
#[derive(Default)]
struct Pending {
    downloads: Vec<Download>,
    finish: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when a download arrives at an empty queue, and to finish.
    arrived: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The record as the proxy holds it: the queue requests put downloads in, and the writer
/// until [`UsageRecord::start`] takes it.
///
/// The queue is a vector under a lock held for a push, and the writer is a thread of its
/// own: waking a task or a thread for every download (a futex wake, two context switches)
/// costs more than the rest of recording it; here only a download that finds the queue empty
/// wakes the writer, which then lets more gather for [`GATHER`] and writes them with one
/// `write(2)`, blocking only itself.
pub struct UsageRecord {
    /// Kept beside the writer's copy, for readers of the record (the status page).
    settings: Option<UsageSettings>,
    shared: Option<Arc<Shared>>,
    writer: Mutex<Option<Writer>>,
    bucket: Option<Arc<Bucket>>,
    metrics: Arc<Metrics>,
}

/// The writer thread and the uploader task, while they run.
pub struct Running {
    thread: std::thread::JoinHandle<()>,
    uploader: Option<(in_bucket::Uploader, tokio::task::JoinHandle<()>)>,
}

impl UsageRecord {
    /// `settings: None`: the record is off and [`UsageRecord::record`] does nothing.
    pub fn new(
        settings: Option<UsageSettings>,
        bucket: Option<Arc<Bucket>>,
        metrics: Arc<Metrics>,
    ) -> UsageRecord {
        let shared = settings.as_ref().map(|_| Arc::new(Shared::default()));
        let writer = settings
            .clone()
            .zip(shared.clone())
            .map(|(settings, shared)| Writer {
                settings,
                bucket: bucket.clone(),
                shared,
                open: None,
                own_bytes: 0,
                failing: false,
            });
        UsageRecord {
            settings,
            shared,
            writer: Mutex::new(writer),
            bucket,
            metrics,
        }
    }

    /// Whether downloads are recorded (`usage_retention_days` is not 0), so a caller can skip
    /// building one for nothing.
    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// Where the record is and how long it is kept; `None` when it is off.
    pub fn settings(&self) -> Option<&UsageSettings> {
        self.settings.as_ref()
    }

    /// The bucket replicas share the record through, if any.
    pub fn bucket(&self) -> Option<&Bucket> {
        self.bucket.as_deref()
    }

    /// Hands a download to the writer; never waits for it. A full queue drops it, counted.
    pub fn record(&self, download: Download) {
        let Some(shared) = &self.shared else { return };
        let mut pending = shared.lock();
        if pending.downloads.len() >= MAX_PENDING {
            drop(pending);
            self.metrics.record_usage_dropped();
            return;
        }
        let was_empty = pending.downloads.is_empty();
        pending.downloads.push(download);
        drop(pending);
        if was_empty {
            shared.arrived.notify_one();
        }
    }

    /// Starts the writer thread (and the uploader, with a bucket); `None` when the record is
    /// off or started already. Within a Tokio runtime.
    pub fn start(&self) -> Option<Running> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let uploader = self.bucket.clone().map(|bucket| {
            let uploader = in_bucket::Uploader::new(bucket, writer.settings.clone());
            let handle = tokio::spawn(uploader.clone().run());
            (uploader, handle)
        });
        let runtime = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("usage-record".into())
            .spawn(move || writer.run(&runtime));
        match thread {
            Ok(thread) => Some(Running { thread, uploader }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the usage record's writer; downloads are not recorded");
                None
            }
        }
    }

    /// Writes what is waiting and uploads it, within a bound: at shutdown, after the last
    /// responses.
    pub async fn finish(&self, running: Option<Running>) {
        let (Some(running), Some(shared)) = (running, &self.shared) else {
            return;
        };
        shared.lock().finish = true;
        shared.arrived.notify_one();
        let Running { thread, uploader } = running;
        let written = async {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            if let Some((uploader, task)) = uploader {
                task.abort();
                uploader.upload_changed().await;
            }
        };
        if tokio::time::timeout(FINISH_TIMEOUT, written).await.is_err() {
            tracing::warn!("the usage record was not written out within 10 s of shutdown");
        }
    }
}

/// The segment being appended to.
struct Open {
    name: SegmentName,
    file: std::fs::File,
}

/// Empties the queue into segment files and keeps them within their bounds, on its own
/// thread: its writes block nothing else.
struct Writer {
    settings: UsageSettings,
    bucket: Option<Arc<Bucket>>,
    shared: Arc<Shared>,
    open: Option<Open>,
    /// Bytes in this replica's folder, as last counted plus what was written since.
    own_bytes: u64,
    /// Whether the last write failed: a failing disk is logged once, not once per batch.
    failing: bool,
}

impl Writer {
    fn run(mut self, runtime: &tokio::runtime::Handle) {
        self.keep_within_bounds();
        let mut bounded_at = Instant::now();
        let mut batch = Vec::new();
        loop {
            let finish = {
                let mut pending = self.shared.lock();
                if pending.downloads.is_empty() && !pending.finish {
                    pending = self
                        .shared
                        .arrived
                        .wait_timeout(pending, IDLE_WAKE)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if !pending.downloads.is_empty() && !pending.finish {
                    drop(pending);
                    std::thread::sleep(GATHER);
                    pending = self.shared.lock();
                }
                // The two vectors take turns, so neither is allocated again.
                std::mem::swap(&mut pending.downloads, &mut batch);
                pending.finish
            };
            if !batch.is_empty() {
                self.write(&batch, runtime);
                batch.clear();
            }
            if finish {
                break;
            }
            if bounded_at.elapsed() >= RETENTION_INTERVAL {
                self.keep_within_bounds();
                bounded_at = Instant::now();
            }
        }
        if let Some(open) = self.open.take() {
            let _ = open.file.sync_all();
        }
    }

    /// Appends the downloads as lines, each to the segment of its hour.
    fn write(&mut self, downloads: &[Download], runtime: &tokio::runtime::Handle) {
        use std::fmt::Write as _;
        let mut start = 0;
        let mut time = String::with_capacity(24);
        while start < downloads.len() {
            let name = SegmentName::of(downloads[start].at);
            let end = downloads[start..]
                .iter()
                .position(|d| SegmentName::of(d.at) != name)
                .map_or(downloads.len(), |n| start + n);
            let mut bytes = Vec::with_capacity((end - start) * 192);
            for d in &downloads[start..end] {
                time.clear();
                let _ = write!(time, "{}", humantime::format_rfc3339_millis(d.at));
                let line = LineOut {
                    time: &time,
                    package: &d.package,
                    version: d.version.as_deref(),
                    upstream: &d.upstream,
                    view: d.view.as_deref(),
                    token: d.token.as_deref(),
                };
                // Strings only: serializing cannot fail.
                if serde_json::to_writer(&mut bytes, &line).is_ok() {
                    bytes.push(b'\n');
                }
            }
            self.append(name, &bytes, runtime);
            start = end;
        }
        if self.own_bytes > self.settings.max_bytes {
            self.keep_within_bounds();
        }
    }

    fn append(&mut self, name: SegmentName, bytes: &[u8], runtime: &tokio::runtime::Handle) {
        let written = self.try_append(name, bytes, runtime);
        match (written, self.failing) {
            (Ok(()), true) => {
                self.failing = false;
                tracing::info!(dir = %self.settings.own_dir().display(), "the usage record is written again");
            }
            (Err(e), false) => {
                self.failing = true;
                self.open = None;
                tracing::warn!(error = %e, dir = %self.settings.own_dir().display(), "cannot write the usage record; downloads are not recorded until it can be");
            }
            (Err(_), true) => self.open = None,
            (Ok(()), false) => {}
        }
    }

    fn try_append(
        &mut self,
        name: SegmentName,
        bytes: &[u8],
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<()> {
        use std::io::Write as _;
        let open = match self.open.take() {
            Some(open) if open.name == name => open,
            _ => self.open_segment(name, runtime)?,
        };
        let open = self.open.insert(open);
        // One write of whole lines (the file is opened to append): another process appending
        // to the same file (a shared cache directory) cannot land in the middle of a line.
        open.file.write_all(bytes)?;
        self.own_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Opens `name` for appending. A segment this replica has in the bucket but not on disk
    /// (a new, empty cache directory under the same replica name) is first copied down, so
    /// the next upload does not replace it with only what follows.
    fn open_segment(
        &self,
        name: SegmentName,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<Open> {
        use std::io::Write as _;
        let dir = self.settings.own_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name.file_name());
        if path.exists() {
            let file = std::fs::OpenOptions::new().append(true).open(&path)?;
            return Ok(Open { name, file });
        }
        let earlier = match &self.bucket {
            Some(bucket) => {
                runtime.block_on(in_bucket::segment(bucket, &self.settings.replica, name))
            }
            None => None,
        };
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)?;
        if let Some(bytes) = earlier {
            file.write_all(&bytes)?;
        }
        Ok(Open { name, file })
    }

    /// Removes segments past `usage_retention_days` (of every replica sharing the cache
    /// directory: they are past it for all), then this replica's oldest beyond
    /// `usage_max_bytes`.
    fn keep_within_bounds(&mut self) {
        let settings = &self.settings;
        match segments::enforce(
            &settings.dir,
            &settings.replica,
            settings,
            SystemTime::now(),
        ) {
            Ok(kept) => {
                self.own_bytes = kept.bytes;
                if self
                    .open
                    .as_ref()
                    .is_some_and(|o| kept.removed.contains(&o.name))
                {
                    // Appending to a removed file would write to nothing anyone can read.
                    self.open = None;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot apply the usage record's bounds"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn download(at: SystemTime, package: &str) -> Download {
        Download {
            at,
            package: package.into(),
            version: Some("1.0.0".into()),
            upstream: "agency".into(),
            view: Some("acme".into()),
            token: None,
        }
    }

    #[tokio::test]
    async fn downloads_reach_their_hour_and_a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().expect("dir");
        let settings = UsageSettings {
            dir: dir.path().join(USAGE_DIR),
            replica: "r1".into(),
            retention: Duration::from_secs(86_400),
            max_bytes: 1 << 30,
        };
        let metrics = Arc::new(Metrics::default());
        let record = UsageRecord::new(Some(settings), None, metrics.clone());
        let now = SystemTime::now();
        let hour_ago = now - Duration::from_secs(3600);
        // Nothing drains the queue yet: one more than it holds is dropped, not waited for.
        for i in 0..MAX_PENDING {
            let at = if i == 0 { hour_ago } else { now };
            record.record(download(at, "vendor/a"));
        }
        record.record(download(now, "vendor/lost"));
        let text = metrics.render(&crate::metrics::Gauges::default());
        assert!(
            text.contains("composer_proxy_usage_dropped_total 1\n"),
            "{text}"
        );
        let writer = record.start();
        record.finish(writer).await;
        let own = dir.path().join(USAGE_DIR).join("r1");
        let lines = |at: SystemTime| -> Vec<Line> {
            let text = std::fs::read_to_string(own.join(SegmentName::of(at).file_name()))
                .expect("segment");
            text.lines()
                .map(|l| serde_json::from_str(l).expect("a record"))
                .collect()
        };
        assert_eq!(lines(hour_ago).len(), 1);
        let recent = lines(now);
        assert_eq!(recent.len(), MAX_PENDING - 1);
        assert_eq!(recent[0].view.as_deref(), Some("acme"));
        assert!(recent[0].time.ends_with('Z'), "{}", recent[0].time);
        // Off: nothing is queued or counted.
        let off = UsageRecord::new(None, None, metrics.clone());
        off.record(download(now, "vendor/a"));
        assert!(off.start().is_none());
    }
}

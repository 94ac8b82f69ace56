//! The usage record: who took which archive. Every archive a client gets (a GET answered 200,
//! 206 or 304: the archive delivered, or the client's copy confirmed current, which is a
//! download from the client's side too; never a HEAD or a refusal) becomes one JSON line with
//! the time, package, version, upstream account, view and client token.
//!
//! The request path only puts a small value in a bounded channel ([`UsageRecord::record`]):
//! when the channel is full the download is counted in `composer_proxy_usage_dropped_total`
//! and not recorded, so a stuck disk never slows a download. One background task ([`Writer`])
//! appends what arrives to hourly segment files under `<cache_dir>/usage/<replica>/` at once
//! (so `composer-proxy usage` beside a live proxy sees a download within a second or two),
//! and keeps them within `usage_retention_days` and `usage_max_bytes`, oldest first
//! (`segments`). With a bucket, a second task uploads each segment of this replica while it
//! changes (`in_bucket`). `report` reads every replica's segments back for the command.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};

use crate::bucket::Bucket;
use crate::config::Config;
use crate::metrics::Metrics;

pub mod in_bucket;
pub mod report;
pub mod segments;

use segments::SegmentName;

/// Downloads waiting for the writer. At a few hundred bytes each this bounds the memory to a
/// few MiB; the writer empties it in batches, so it only fills while the disk is stuck.
const CHANNEL_CAPACITY: usize = 8192;
/// Downloads written with one `write`.
const BATCH: usize = 1024;
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
    /// `None` on the merged root and an upstream's own URL.
    pub view: Option<Arc<str>>,
    /// The valid client token presented; `None` when none was needed.
    pub token: Option<Arc<str>>,
}

/// One line of a segment file. The field names are the record's stable format: the command
/// and other replicas read what older versions wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// UTC, RFC 3339 with milliseconds (`2026-11-01T09:30:00.123Z`).
    pub time: String,
    pub package: String,
    pub version: Option<String>,
    pub upstream: String,
    pub view: Option<String>,
    pub token: Option<String>,
}

impl From<&Download> for Line {
    fn from(d: &Download) -> Line {
        Line {
            time: humantime::format_rfc3339_millis(d.at).to_string(),
            package: d.package.clone(),
            version: d.version.clone(),
            upstream: d.upstream.to_string(),
            view: d.view.as_deref().map(str::to_string),
            token: d.token.as_deref().map(str::to_string),
        }
    }
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

/// The record as the proxy holds it: the sending side of the channel, and the writer until
/// [`UsageRecord::start`] takes it.
pub struct UsageRecord {
    sender: Option<mpsc::Sender<Download>>,
    writer: Mutex<Option<Writer>>,
    stop: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl UsageRecord {
    /// `settings: None`: the record is off and [`UsageRecord::record`] does nothing.
    pub fn new(
        settings: Option<UsageSettings>,
        bucket: Option<Arc<Bucket>>,
        metrics: Arc<Metrics>,
    ) -> UsageRecord {
        let stop = Arc::new(Notify::new());
        let (sender, writer) = match settings {
            Some(settings) => {
                let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
                let writer = Writer {
                    settings,
                    bucket,
                    receiver,
                    open: None,
                    own_bytes: 0,
                };
                (Some(sender), Some(writer))
            }
            None => (None, None),
        };
        UsageRecord {
            sender,
            writer: Mutex::new(writer),
            stop,
            metrics,
        }
    }

    /// Hands a download to the writer; never waits. A full channel drops it, counted.
    pub fn record(&self, download: Download) {
        let Some(sender) = &self.sender else { return };
        if sender.try_send(download).is_err() {
            self.metrics.record_usage_dropped();
        }
    }

    /// Starts the writer (and the uploader, with a bucket); the handle ends once
    /// [`UsageRecord::finish`] has written what was recorded before it.
    pub fn start(&self) -> Option<tokio::task::JoinHandle<()>> {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        let stop = self.stop.clone();
        Some(tokio::spawn(writer.run(stop)))
    }

    /// Writes what is waiting and uploads it, within a bound: at shutdown.
    pub async fn finish(&self, running: Option<tokio::task::JoinHandle<()>>) {
        let Some(running) = running else { return };
        self.stop.notify_one();
        if tokio::time::timeout(FINISH_TIMEOUT, running).await.is_err() {
            tracing::warn!("the usage record was not written out within 10 s of shutdown");
        }
    }
}

/// The segment being appended to.
struct Open {
    name: SegmentName,
    file: tokio::fs::File,
}

/// Drains the channel into segment files and keeps them within their bounds.
struct Writer {
    settings: UsageSettings,
    bucket: Option<Arc<Bucket>>,
    receiver: mpsc::Receiver<Download>,
    open: Option<Open>,
    /// Bytes in this replica's folder, as last counted plus what was written since.
    own_bytes: u64,
}

impl Writer {
    async fn run(mut self, stop: Arc<Notify>) {
        let uploader = self.bucket.clone().map(|bucket| {
            let uploader = in_bucket::Uploader::new(bucket, self.settings.clone());
            let handle = tokio::spawn(uploader.clone().run());
            (uploader, handle)
        });
        let mut retention = tokio::time::interval(RETENTION_INTERVAL);
        retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                received = self.receiver.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    self.write(&batch).await;
                    batch.clear();
                }
                _ = retention.tick() => self.keep_within_bounds().await,
                () = stop.notified() => {
                    self.receiver.close();
                    while self.receiver.recv_many(&mut batch, BATCH).await > 0 {
                        self.write(&batch).await;
                        batch.clear();
                    }
                    break;
                }
            }
        }
        if let Some(open) = self.open.take() {
            let _ = open.file.sync_all().await;
        }
        if let Some((uploader, handle)) = uploader {
            handle.abort();
            uploader.upload_changed().await;
        }
    }

    /// Appends the downloads as lines, each to the segment of its hour.
    async fn write(&mut self, downloads: &[Download]) {
        let mut start = 0;
        while start < downloads.len() {
            let name = SegmentName::of(downloads[start].at);
            let end = downloads[start..]
                .iter()
                .position(|d| SegmentName::of(d.at) != name)
                .map_or(downloads.len(), |n| start + n);
            let mut bytes = Vec::with_capacity((end - start) * 192);
            for download in &downloads[start..end] {
                // A Line is strings only: serializing it cannot fail.
                if serde_json::to_writer(&mut bytes, &Line::from(download)).is_ok() {
                    bytes.push(b'\n');
                }
            }
            self.append(name, &bytes).await;
            start = end;
        }
        if self.own_bytes > self.settings.max_bytes {
            self.keep_within_bounds().await;
        }
    }

    async fn append(&mut self, name: SegmentName, bytes: &[u8]) {
        if self.open.as_ref().is_none_or(|o| o.name != name) {
            self.open = None;
            match self.open_segment(name).await {
                Ok(open) => self.open = Some(open),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %self.settings.own_dir().display(), "cannot open the usage record; these downloads are not recorded");
                    return;
                }
            }
        }
        let Some(open) = self.open.as_mut() else {
            return;
        };
        // One write of whole lines: another process appending to the same file (a shared
        // cache directory) cannot land in the middle of a line.
        if let Err(e) = open
            .file
            .write_all(bytes)
            .await
            .and(open.file.flush().await)
        {
            tracing::warn!(error = %e, segment = %open.name, "cannot write the usage record");
            self.open = None;
            return;
        }
        self.own_bytes += bytes.len() as u64;
    }

    /// Opens `name` for appending. A segment this replica has in the bucket but not on disk
    /// (a new, empty cache directory under the same replica name) is first copied down, so
    /// the next upload does not replace it with only what follows.
    async fn open_segment(&self, name: SegmentName) -> std::io::Result<Open> {
        let dir = self.settings.own_dir();
        tokio::fs::create_dir_all(&dir).await?;
        let path = dir.join(name.file_name());
        if tokio::fs::try_exists(&path).await? {
            let file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .await?;
            return Ok(Open { name, file });
        }
        let earlier = match &self.bucket {
            Some(bucket) => in_bucket::segment(bucket, &self.settings.replica, name).await,
            None => None,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .await?;
        if let Some(bytes) = earlier {
            file.write_all(&bytes).await?;
        }
        Ok(Open { name, file })
    }

    /// Removes segments past `usage_retention_days` (of every replica sharing the cache
    /// directory: they are past it for all), then this replica's oldest beyond
    /// `usage_max_bytes`.
    async fn keep_within_bounds(&mut self) {
        let now = SystemTime::now();
        let (settings, open) = (self.settings.clone(), self.open.as_ref().map(|o| o.name));
        let removed = tokio::task::spawn_blocking(move || {
            segments::enforce(&settings.dir, &settings.replica, &settings, now)
        })
        .await;
        match removed {
            Ok(Ok(kept)) => {
                self.own_bytes = kept.bytes;
                if open.is_some_and(|name| kept.removed.contains(&name)) {
                    // Appending to a removed file would write to nothing anyone can read.
                    self.open = None;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot apply the usage record's bounds"),
            Err(_) => {}
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
        for i in 0..CHANNEL_CAPACITY {
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
        assert_eq!(recent.len(), CHANNEL_CAPACITY - 1);
        assert_eq!(recent[0].view.as_deref(), Some("acme"));
        assert!(recent[0].time.ends_with('Z'), "{}", recent[0].time);
        // Off: nothing is queued or counted.
        let off = UsageRecord::new(None, None, metrics.clone());
        off.record(download(now, "vendor/a"));
        assert!(off.start().is_none());
    }
}

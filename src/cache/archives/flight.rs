//! A download in progress ("flight") and the clients following it.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::READ_CHUNK;
use crate::error::ProxyError;

/// What a flight has done so far; readers watch it.
#[derive(Clone, Default)]
pub(super) struct Progress {
    /// The temporary file, once upstream answered; shared by the writer and every reader.
    pub(super) file: Option<Arc<std::fs::File>>,
    pub(super) len: Option<u64>,
    pub(super) written: u64,
    /// `Some(Ok)`: verified and stored. Without a file, another process stored it.
    pub(super) outcome: Option<Result<(), Arc<ProxyError>>>,
}

/// A client following a download: reads the shared temporary file up to what is written.
pub struct FlightReader {
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) pos: u64,
}

impl FlightReader {
    /// The next chunk, `None` at the verified end, or an error if the download failed.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let (file, limit, complete) = {
                let p = self.progress.borrow_and_update();
                if let Some(Err(e)) = &p.outcome {
                    return Some(Err(io::Error::other(e.to_string())));
                }
                let complete = matches!(p.outcome, Some(Ok(())));
                // Hold the last byte back until the archive is verified: a client must not
                // see a complete response for bytes that may turn out to be wrong.
                let limit = if complete {
                    p.written
                } else {
                    p.written.saturating_sub(1)
                };
                (p.file.clone(), limit, complete)
            };
            if self.pos < limit {
                let file = file?;
                let pos = self.pos;
                let n = (limit - pos).min(READ_CHUNK);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; n as usize];
                    file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
                if read.is_ok() {
                    self.pos += n;
                }
                return Some(read);
            }
            if complete {
                return None;
            }
            if self.progress.changed().await.is_err() {
                return Some(Err(io::Error::other("archive download stopped")));
            }
        }
    }
}

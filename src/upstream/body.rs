//! Reading an upstream answer whole: within the byte limit of its kind, as sent and decoded,
//! with the read timeout on every chunk.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Answer, StreamingResponse, UpstreamClient, UpstreamError};
use crate::composer;

impl UpstreamClient {
    /// Reads and decodes (gzip) a whole answer of `kind`, within its byte limit both as sent
    /// and decoded. Past the limit the read stops (an announced length past it is not read at
    /// all) and a warning names the upstream, the URL and the setting to raise.
    pub async fn read_answer(
        &self,
        kind: Answer,
        url: &str,
        response: StreamingResponse,
    ) -> Result<Bytes, UpstreamError> {
        let (limit, setting) = match kind {
            Answer::Metadata => (self.limits.metadata, "upstream_metadata_max_bytes"),
            Answer::Feed => (self.limits.feed, "upstream_feed_max_bytes"),
            Answer::Api => (self.limits.api, "upstream_api_max_bytes"),
        };
        let header = |name| {
            response
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let declared = header(header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
        let gzip = header(header::CONTENT_ENCODING).map(str::to_string);
        let too_large = || {
            tracing::warn!(
                event = "upstream_answer_too_large",
                upstream = %self.name,
                url,
                limit,
                setting,
                "upstream's answer is larger than {setting} ({limit} bytes); it is not used and \
                 what is cached keeps being served; raise {setting} if the answer is genuine"
            );
            UpstreamError::TooLarge { limit, setting }
        };
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let raw = match self.read_body(response.body, limit, declared).await {
            Err(UpstreamError::TooLarge { .. }) => return Err(too_large()),
            other => other?,
        };
        composer::decode_body(raw, gzip.as_deref(), limit).map_err(|e| match e {
            composer::ProtocolError::TooLarge(_) => too_large(),
            e => UpstreamError::Invalid(e.to_string()),
        })
    }

    /// Reads a whole body of at most `max` bytes, with the read timeout applied to every
    /// chunk; `declared` (Content-Length) sizes the buffer once instead of regrowing it.
    pub async fn read_body(
        &self,
        mut body: Incoming,
        max: usize,
        declared: Option<u64>,
    ) -> Result<Bytes, UpstreamError> {
        let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(max).min(max));
        let mut buf = BytesMut::with_capacity(capacity);
        loop {
            let frame = tokio::time::timeout(self.read_timeout, body.frame())
                .await
                .map_err(|_| UpstreamError::Timeout("reading the response body"))?;
            match frame {
                None => return Ok(buf.freeze()),
                Some(Err(e)) => {
                    return Err(UpstreamError::Unreachable(format!(
                        "response body broke off: {e}"
                    )))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if buf.len() + data.len() > max {
                            return Err(UpstreamError::TooLarge {
                                limit: max,
                                setting: "",
                            });
                        }
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

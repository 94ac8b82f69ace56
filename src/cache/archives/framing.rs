//! Pure rules over an archive response's headers: how its end is known, which validator a
//! resumed request must match, and what a resumed request asks for.

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;

/// How the end of a response body is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`: a short body is detected.
    Length,
    /// Chunked transfer coding or HTTP/2 frames: the body ends with an explicit marker.
    Delimited,
    /// HTTP/1 without either: the body ends when the connection closes, so a connection cut
    /// mid-way looks exactly like the end.
    Close,
}

pub fn framing(version: Version, headers: &HeaderMap) -> Framing {
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Framing::Length;
    }
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked || version >= Version::HTTP_2 {
        Framing::Delimited
    } else {
        Framing::Close
    }
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The first byte position of a `Content-Range: bytes first-last/total` header.
pub fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// A validator that names exactly these bytes: a strong `ETag`, else `Last-Modified`.
pub fn strong_validator(headers: &HeaderMap) -> Option<HeaderValue> {
    let etag = headers
        .get(header::ETAG)
        .filter(|v| v.to_str().is_ok_and(|s| s.starts_with('"')));
    etag.or_else(|| headers.get(header::LAST_MODIFIED)).cloned()
}

/// The headers of a request that resumes after `received` bytes, or `None` to ask for the
/// whole archive again (its first `received` bytes are then re-read and compared).
///
/// With a published checksum any resume is safe: the whole is checked in the end. Without one,
/// nothing but the validator ties the rest to the part already received, so a resume is
/// asked for only with a strong validator, under `If-Range`.
pub fn resume_headers(
    received: u64,
    has_checksum: bool,
    validator: Option<&HeaderValue>,
) -> Option<HeaderMap> {
    if received == 0 || (!has_checksum && validator.is_none()) {
        return None;
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::RANGE,
        HeaderValue::from_str(&format!("bytes={received}-")).ok()?,
    );
    if let Some(validator) = validator {
        headers.insert(header::IF_RANGE, validator.clone());
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn only_http1_bodies_without_length_or_chunking_are_close_delimited() {
        let none = HeaderMap::new();
        assert_eq!(framing(Version::HTTP_11, &none), Framing::Close);
        assert_eq!(framing(Version::HTTP_10, &none), Framing::Close);
        assert_eq!(framing(Version::HTTP_2, &none), Framing::Delimited);
        let chunked = headers(&[(header::TRANSFER_ENCODING, "gzip, Chunked")]);
        assert_eq!(framing(Version::HTTP_11, &chunked), Framing::Delimited);
        let length = headers(&[(header::CONTENT_LENGTH, "10")]);
        assert_eq!(framing(Version::HTTP_11, &length), Framing::Length);
    }

    #[test]
    fn content_range_start_is_parsed() {
        let h = headers(&[(header::CONTENT_RANGE, "bytes 100-199/200")]);
        assert_eq!(content_range_start(&h), Some(100));
        let h = headers(&[(header::CONTENT_RANGE, "items 1-2/3")]);
        assert_eq!(content_range_start(&h), None);
    }

    #[test]
    fn weak_etags_are_not_validators_for_a_resume() {
        let weak = headers(&[(header::ETAG, "W/\"a\"")]);
        assert_eq!(strong_validator(&weak), None);
        let weak_and_date = headers(&[
            (header::ETAG, "W/\"a\""),
            (header::LAST_MODIFIED, "Sun, 29 Nov 2026 03:00:00 GMT"),
        ]);
        assert_eq!(
            strong_validator(&weak_and_date).expect("date"),
            "Sun, 29 Nov 2026 03:00:00 GMT"
        );
        let strong = headers(&[(header::ETAG, "\"abc\"")]);
        assert_eq!(strong_validator(&strong).expect("etag"), "\"abc\"");
    }

    #[test]
    fn archives_without_shasum_resume_only_under_a_strong_validator() {
        assert_eq!(resume_headers(0, true, None), None);
        let with_sha1 = resume_headers(100, true, None).expect("resume");
        assert_eq!(with_sha1[header::RANGE], "bytes=100-");
        assert!(!with_sha1.contains_key(header::IF_RANGE));
        assert_eq!(
            resume_headers(100, false, None),
            None,
            "re-read from the start"
        );
        let etag = HeaderValue::from_static("\"abc\"");
        let guarded = resume_headers(100, false, Some(&etag)).expect("resume");
        assert_eq!(guarded[header::RANGE], "bytes=100-");
        assert_eq!(guarded[header::IF_RANGE], "\"abc\"");
    }
}

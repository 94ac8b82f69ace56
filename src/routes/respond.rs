//! Response building: documents with `ETag`/`Last-Modified`, 304 and precomputed gzip.

use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::{empty, full, ResponseBody};
use crate::cache::metadata::CacheStatus;
use crate::composer::Document;
use crate::views::ClientView;

pub(super) fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

pub(super) fn not_modified_since(headers: &HeaderMap, modified: SystemTime) -> bool {
    let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    // HTTP dates have whole seconds; compare at that precision.
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    };
    secs(modified) <= secs(since)
}

pub(super) fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        })
}

/// `X-Cache`, and for a stale answer the `Warning` that says so.
pub(super) fn set_cache_status(headers: &mut HeaderMap, cache: CacheStatus) {
    set(
        headers,
        header::HeaderName::from_static("x-cache"),
        cache.as_str(),
    );
    if cache == CacheStatus::Stale {
        set(
            headers,
            header::WARNING,
            "110 composer-proxy \"Response is Stale\"",
        );
    }
}

/// A header whose value is a constant of the code: no validation or copy per response.
pub(super) fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &'static str) {
    headers.insert(name, HeaderValue::from_static(value));
}

pub(super) fn set_length(headers: &mut HeaderMap, len: u64) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// A metadata document with validators, 304 and precomputed gzip.
pub(super) fn document(
    headers: &HeaderMap,
    doc: &Document,
    cache: CacheStatus,
    head: bool,
) -> Response<ResponseBody> {
    respond(
        headers,
        doc,
        cache,
        head,
        &doc.etag,
        doc.last_modified,
        &doc.last_modified_header,
    )
}

/// A document as served in a view: its validators are the view's own (an `ETag` no other view
/// or repository gives, a `Last-Modified` never older than the view's definition), so a client
/// switching views never revalidates into a 304 for another view's answer.
pub(super) fn view_document(
    headers: &HeaderMap,
    doc: &Document,
    cache: CacheStatus,
    head: bool,
    view: &ClientView,
) -> Response<ResponseBody> {
    let etag = view.etag(&doc.etag);
    if doc.last_modified >= view.since {
        return respond(
            headers,
            doc,
            cache,
            head,
            &etag,
            doc.last_modified,
            &doc.last_modified_header,
        );
    }
    respond(
        headers,
        doc,
        cache,
        head,
        &etag,
        view.since,
        &view.since_header,
    )
}

fn respond(
    headers: &HeaderMap,
    doc: &Document,
    cache: CacheStatus,
    head: bool,
    etag: &HeaderValue,
    last_modified: SystemTime,
    last_modified_header: &HeaderValue,
) -> Response<ResponseBody> {
    let not_modified = if headers.contains_key(header::IF_NONE_MATCH) {
        etag_matches(headers, etag.to_str().unwrap_or_default())
    } else {
        not_modified_since(headers, last_modified)
    };
    let gzip = accepts_gzip(headers);
    let mut response = Response::new(empty());
    let h = response.headers_mut();
    set(h, header::CONTENT_TYPE, "application/json");
    h.insert(header::LAST_MODIFIED, last_modified_header.clone());
    h.insert(header::ETAG, etag.clone());
    set(h, header::VARY, "Accept-Encoding");
    set_cache_status(h, cache);
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    let body = if gzip {
        set(h, header::CONTENT_ENCODING, "gzip");
        doc.gzip.clone()
    } else {
        doc.identity.clone()
    };
    set_length(h, body.len() as u64);
    if !head {
        *response.body_mut() = full(body);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation_respects_q_zero() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("deflate, gzip"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, br"),
        );
        assert!(!accepts_gzip(&h));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn if_modified_since_compares_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_500);
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_str(&httpdate::fmt_http_date(t)).expect("header"),
        );
        assert!(not_modified_since(&h, t));
        assert!(!not_modified_since(
            &h,
            t + std::time::Duration::from_secs(2)
        ));
    }
}

//! The Composer repository protocol: parsing upstream metadata, rewriting it to point at the
//! proxy, recomputing the v1 hash chain and translating v1 provider files into p2 files.
//!
//! Everything here is pure (bytes in, bytes out) so it runs once per fetched document, never
//! per request, and is tested without sockets. Rewritten URLs come from the configured public
//! URL only, never from a request, so no client can poison what others are served.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub mod advisories_match;
pub mod apis;
pub mod constraint;
mod dist;
pub mod github;
pub mod minify;
mod parse;
mod rewrite;

pub use dist::{Checksum, DistSource, Dists};
pub use parse::{
    canonicalize_url, parse_listing, parse_root, repository_base, root_url, ProviderInclude,
    UpstreamRoot,
};
#[cfg(test)]
pub(crate) use rewrite::test_rewriter;
pub use rewrite::{dist_key, listing_document, ProcessedPackage, ProxiedDist, ProxyRoot, Rewriter};

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{what} is not valid JSON: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Shape(String),
    #[error("{what} does not match its sha256 (expected {expected}, got {actual})")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("gzip body could not be decoded: {0}")]
    Gzip(std::io::Error),
    #[error("decoded body exceeds {0} bytes")]
    TooLarge(usize),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Decodes a metadata body. repo.magento.com gzips per-package files whether or not it was
/// asked to, sometimes without saying so, hence the magic-byte check.
/// The decoded body is bounded by `max`, so a gzip bomb or a runaway answer cannot exhaust
/// memory.
pub fn decode_body(
    raw: Bytes,
    content_encoding: Option<&str>,
    max: usize,
) -> Result<Bytes, ProtocolError> {
    let declared = content_encoding.is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
    if declared || raw.starts_with(&[0x1f, 0x8b]) {
        // Bounded guess: metadata compresses about 10:1, but a hostile ratio must not reserve.
        let mut out = Vec::with_capacity((raw.len() * 8).min(16 * 1024 * 1024));
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take((max as u64).saturating_add(1))
            .read_to_end(&mut out)
            .map_err(ProtocolError::Gzip)?;
        if out.len() > max {
            return Err(ProtocolError::TooLarge(max));
        }
        Ok(Bytes::from(out))
    } else {
        Ok(raw)
    }
}

fn gzip(bytes: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// A JSON document as the proxy serves it: the bytes, their gzip form and their sha256, all
/// computed once when the document is built. Cloned for every answer, so its parts are behind
/// one `Arc`: a clone is one counter, not five shared buffers' counters and a string copy.
#[derive(Clone, Debug)]
pub struct Document(Arc<DocumentParts>);

#[derive(Debug)]
pub struct DocumentParts {
    pub identity: Bytes,
    pub gzip: Bytes,
    pub sha256: String,
    pub last_modified: SystemTime,
    /// The `ETag` and `Last-Modified` values, formatted once rather than on every answer.
    pub etag: http::HeaderValue,
    pub last_modified_header: http::HeaderValue,
}

impl std::ops::Deref for Document {
    type Target = DocumentParts;

    fn deref(&self) -> &DocumentParts {
        &self.0
    }
}

impl Document {
    pub fn new(identity: Bytes, last_modified: SystemTime) -> Self {
        let sha256 = sha256_hex(&identity);
        // Hex and an HTTP date are always valid header values.
        let header = |text: String| {
            http::HeaderValue::from_str(&text).unwrap_or(http::HeaderValue::from_static(""))
        };
        Self(Arc::new(DocumentParts {
            gzip: gzip(&identity),
            etag: header(format!("\"{}\"", &sha256[..32])),
            last_modified_header: header(httpdate::fmt_http_date(last_modified)),
            sha256,
            identity,
            last_modified,
        }))
    }

    pub fn from_json(value: &Value, last_modified: SystemTime) -> Self {
        // Serializing a Value cannot fail: its keys are strings.
        Self::new(
            Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
            last_modified,
        )
    }

    /// Bytes held in memory, for cache weighing.
    pub fn weight(&self) -> usize {
        self.identity.len() + self.gzip.len() + 64
    }
}

fn parse_json(bytes: &[u8], what: &str) -> Result<Value, ProtocolError> {
    serde_json::from_slice(bytes).map_err(|source| ProtocolError::Json {
        what: what.to_string(),
        source,
    })
}

/// Checks a document against the sha256 its parent names.
pub fn verify_sha256(bytes: &[u8], expected: &str, what: &str) -> Result<(), ProtocolError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ProtocolError::HashMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

/// Whether `s` is a lower-case hex digest of `len` digits: the one shape of every hash the proxy
/// puts into a path or a file name.
pub fn is_hex_digest(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `url` is on `origin`'s scheme, host and port: the one test of "same origin" for
/// credentials, allowed hosts and rewriting.
pub fn same_origin(origin: &url::Url, url: &url::Url) -> bool {
    url.scheme() == origin.scheme()
        && url.host() == origin.host()
        && url.port_or_known_default() == origin.port_or_known_default()
}

/// Composer's package name rule (`vendor/name`, lower case), which also keeps names safe to
/// use in paths and URL templates.
pub fn is_package_name(name: &str) -> bool {
    let Some((vendor, project)) = name.split_once('/') else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && p.as_bytes()[0].is_ascii_alphanumeric()
            && p.as_bytes()[p.len() - 1].is_ascii_alphanumeric()
    };
    part_ok(vendor) && part_ok(project) && !name.contains("..")
}

/// Composer's dev versions: branches (`dev-*`, `*-dev`) go to `~dev.json`.
pub fn is_dev_version(version: &Value) -> bool {
    let v = version
        .get("version_normalized")
        .or_else(|| version.get("version"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    v.starts_with("dev-") || v.ends_with("-dev")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn gzip_is_detected_by_header_or_magic_bytes() {
        let doc = Document::new(Bytes::from_static(b"{\"a\":1}"), UNIX_EPOCH);
        assert_eq!(
            decode_body(doc.gzip.clone(), None, 1 << 20).expect("magic"),
            doc.identity
        );
        assert_eq!(
            decode_body(doc.identity.clone(), None, 1 << 20).expect("plain"),
            doc.identity
        );
        assert!(decode_body(Bytes::from_static(b"nope"), Some("gzip"), 1 << 20).is_err());
    }

    #[test]
    fn package_names_follow_composer_rules() {
        for ok in ["magento/framework", "a/b", "vendor-x/name.y_z"] {
            assert!(is_package_name(ok), "{ok}");
        }
        for bad in [
            "magento", "../x", "a/../b", "A/b", "a/b/c", "a/-b", "a/b-", "/b", "a/",
        ] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }
}

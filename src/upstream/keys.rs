//! An upstream's key pairs as `Authorization` values.

use std::sync::atomic::AtomicUsize;

use base64::Engine;
use http::header::HeaderValue;

use crate::config::Credentials;

/// The configured key pairs as `Authorization` values, in order of preference, and which one
/// is in use. A reload swaps the whole ring; requests in flight keep the one they started with.
pub(super) struct KeyRing {
    pub(super) headers: Vec<HeaderValue>,
    pub(super) active: AtomicUsize,
}

impl KeyRing {
    pub(super) fn new(credentials: &[Credentials]) -> Self {
        let headers = credentials
            .iter()
            .map(|c| {
                let token = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    c.public_key.expose(),
                    c.private_key.expose()
                ));
                // Validated at start-up to contain no control characters, so this cannot fail.
                let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                    .unwrap_or(HeaderValue::from_static(""));
                value.set_sensitive(true);
                value
            })
            .collect();
        Self {
            headers,
            active: AtomicUsize::new(0),
        }
    }
}

/// What a rejected key pair of a Composer repository usually means, for the log.
pub(super) const MARKETPLACE_ADVICE: &str =
    "check that it is enabled in the Commerce Marketplace account (My Profile > Access Keys)";

//! Byte limits on the upstream answers the proxy reads whole (`upstream_*_max_bytes`).

use super::raw::RawConfig;
use super::ConfigError;

/// Byte limits on upstream answers read whole into memory (archives are streamed to disk and
/// not bounded here). Past one, the read stops and the answer counts as unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerLimits {
    /// Roots, listings, package files, p2 files and release info (raw and decoded each).
    pub metadata: usize,
    /// One answer of a changes feed (`metadata-changes-url`).
    pub feed: usize,
    /// Advisory, malware filter and package name list answers.
    pub api: usize,
}

impl AnswerLimits {
    /// The embedded defaults (config/default.toml), for code that runs without a
    /// configuration: the fuzz targets decode upstream bodies as the proxy does by default.
    pub const DEFAULT: AnswerLimits = AnswerLimits {
        metadata: 128 * 1024 * 1024,
        feed: 16 * 1024 * 1024,
        api: 64 * 1024 * 1024,
    };
}

/// The least an answer limit may be: every real answer of its kind is larger than a typo.
const MIN_ANSWER_LIMIT: u64 = 64 * 1024;

pub(super) fn answer_limits(
    raw: &RawConfig,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<AnswerLimits, ConfigError> {
    let limit = |setting: &str, bytes: u64| {
        if bytes < MIN_ANSWER_LIMIT {
            return Err(err(
                setting,
                format!("must be at least {MIN_ANSWER_LIMIT} (64 KiB)"),
            ));
        }
        // Past the address space nothing could be read anyway.
        Ok(usize::try_from(bytes).unwrap_or(usize::MAX))
    };
    Ok(AnswerLimits {
        metadata: limit(
            "upstream_metadata_max_bytes",
            raw.upstream_metadata_max_bytes,
        )?,
        feed: limit("upstream_feed_max_bytes", raw.upstream_feed_max_bytes)?,
        api: limit("upstream_api_max_bytes", raw.upstream_api_max_bytes)?,
    })
}

//! Where an archive the proxy serves really comes from, and the key it is stored under.

use std::collections::HashMap;
use std::sync::Arc;

use super::sha256_hex;

/// Where an archive the proxy serves really comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistSource {
    /// What it is, for logs and the stored description: a package name, or `releases/<file>`.
    pub package: String,
    /// The version whose dist this is (the metadata's `version`), for the usage record; `None`
    /// for a release file, or a version entry without one.
    pub version: Option<String>,
    /// Private, as `checksum` is: the store key is derived from both.
    url: String,
    checksum: Option<Checksum>,
    /// The dist type is `zip` (Composer's default), so its structure can be checked.
    pub is_zip: bool,
    /// See [`DistSource::store_key`].
    store_key: String,
}

impl DistSource {
    pub fn new(
        package: String,
        version: Option<String>,
        url: String,
        checksum: Option<Checksum>,
        is_zip: bool,
    ) -> Self {
        let promised = match &checksum {
            None => String::new(),
            Some(Checksum::Sha1(sha1)) => sha1.clone(),
            Some(Checksum::Md5(md5)) => format!("md5:{md5}"),
        };
        let store_key = sha256_hex(format!("{url}\n{promised}").as_bytes());
        Self {
            package,
            version,
            url,
            checksum,
            is_zip,
            store_key,
        }
    }

    /// Where the archive is stored: the sha256 of the upstream URL plus the promised checksum.
    /// A sha1 (or none) is written bare, as before md5s existed, so archives stored by earlier
    /// versions keep their keys. Computed once, as the metadata is read, not per download.
    pub fn store_key(&self) -> &str {
        &self.store_key
    }

    /// The upstream URL it is downloaded from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The digest its publisher promises, when it promises one.
    pub fn checksum(&self) -> Option<&Checksum> {
        self.checksum.as_ref()
    }
}

/// A published digest of an archive, lower-case hex: Composer metadata's `shasum` (sha1), or
/// the md5 the legacy release-download endpoint lists in `info/json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksum {
    Sha1(String),
    Md5(String),
}

impl Checksum {
    /// The published sha1, if that is what this is.
    pub fn sha1(&self) -> Option<&str> {
        match self {
            Checksum::Sha1(sha1) => Some(sha1),
            Checksum::Md5(_) => None,
        }
    }

    /// The published md5, if that is what this is.
    pub fn md5(&self) -> Option<&str> {
        match self {
            Checksum::Md5(md5) => Some(md5),
            Checksum::Sha1(_) => None,
        }
    }
}

/// The archives one document names, by package and [`dist_key`]. The package is part of the
/// key because one upstream archive can be named by several packages of one document, and each
/// must find it under its own URL. Shared, not copied, by every download that looks one up.
pub type Dists = HashMap<(String, String), Arc<DistSource>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keys_of_sha1_promises_are_unchanged_and_md5_promises_differ() {
        let source = |checksum| {
            DistSource::new(
                "a/b".into(),
                None,
                "https://repo.example/a.zip".into(),
                checksum,
                true,
            )
        };
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        // The key earlier versions computed: `url\nshasum`, or `url\n` without one.
        assert_eq!(
            source(Some(Checksum::Sha1(sha1.into()))).store_key(),
            sha256_hex(format!("https://repo.example/a.zip\n{sha1}").as_bytes())
        );
        assert_eq!(
            source(None).store_key(),
            sha256_hex(b"https://repo.example/a.zip\n")
        );
        let md5 = source(Some(Checksum::Md5(sha1[..32].into())));
        let bare = source(Some(Checksum::Sha1(sha1[..32].into())));
        assert_ne!(md5.store_key(), bare.store_key());
    }
}

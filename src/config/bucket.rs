//! `object_store_url`: the bucket replicas share instead of a shared volume. Only where the
//! bucket is comes from the setting; credentials and the endpoint come from the providers'
//! standard environment (see `crate::bucket`), so no secret is ever part of it.

use url::Url;

/// Which provider's API the bucket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketKind {
    /// Amazon S3 or anything S3-compatible (MinIO, Ceph, R2, moto).
    S3,
    Gcs,
    Azure,
}

/// A validated `object_store_url`: provider, bucket (an Azure container) and key prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketUrl {
    pub kind: BucketKind,
    pub bucket: String,
    /// Without leading or trailing slashes; empty for the bucket's root.
    pub prefix: String,
}

impl BucketUrl {
    /// `scheme://bucket`, as the providers' builders take it (they ignore any path).
    pub fn root(&self) -> String {
        let scheme = match self.kind {
            BucketKind::S3 => "s3",
            BucketKind::Gcs => "gs",
            BucketKind::Azure => "az",
        };
        format!("{scheme}://{}", self.bucket)
    }
}

impl std::fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "{}", self.root())
        } else {
            write!(f, "{}/{}", self.root(), self.prefix)
        }
    }
}

/// Parses `s3://BUCKET/PREFIX`, `gs://…` or `az://CONTAINER/…`. Credentials, queries and
/// fragments are refused: keys belong in the environment, where they are never logged, and a
/// query would be silently ignored by the builders.
pub fn parse_bucket_url(text: &str) -> Result<BucketUrl, String> {
    let url = Url::parse(text.trim()).map_err(|e| {
        format!("not a URL ({e}); expected s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX")
    })?;
    let kind = match url.scheme() {
        "s3" | "s3a" => BucketKind::S3,
        "gs" => BucketKind::Gcs,
        "az" | "azure" | "abfs" | "abfss" => BucketKind::Azure,
        other => {
            return Err(format!(
                "unsupported scheme {other:?}; expected s3://, gs:// or az://"
            ))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry credentials (they come from the environment, e.g. AWS_ACCESS_KEY_ID)"
                .into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    let bucket = url.host_str().unwrap_or_default().to_string();
    if bucket.is_empty() {
        return Err("names no bucket; expected s3://BUCKET/PREFIX".into());
    }
    let prefix = url.path().trim_matches('/').to_string();
    // The URL parser resolves dot segments, so the text as written is what to look at: a
    // prefix that reads differently from the one used would surprise whoever set it.
    let dotted = text
        .split(['/', '?', '#'])
        .any(|part| matches!(part, "." | ".."));
    if dotted || prefix.contains("//") {
        return Err("the prefix must not contain empty, `.` or `..` segments".into());
    }
    Ok(BucketUrl {
        kind,
        bucket,
        prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_buckets_and_prefixes_are_read() {
        let u = parse_bucket_url("s3://artifacts/composer/prod/").expect("valid");
        assert_eq!(u.kind, BucketKind::S3);
        assert_eq!(u.bucket, "artifacts");
        assert_eq!(u.prefix, "composer/prod");
        assert_eq!(u.root(), "s3://artifacts");
        assert_eq!(u.to_string(), "s3://artifacts/composer/prod");
        let u = parse_bucket_url("gs://b").expect("valid");
        assert_eq!((u.kind, u.prefix.as_str()), (BucketKind::Gcs, ""));
        assert_eq!(u.to_string(), "gs://b");
        let u = parse_bucket_url("az://container/p").expect("valid");
        assert_eq!(
            (u.kind, u.bucket.as_str()),
            (BucketKind::Azure, "container")
        );
    }

    #[test]
    fn the_setting_is_optional_and_its_errors_name_it() {
        let c = crate::config::tests::load(None, &[]).expect("defaults");
        assert!(c.object_store.is_none());
        let c = crate::config::tests::load(Some("object_store_url = \"s3://b/p\""), &[])
            .expect("valid");
        assert_eq!(
            c.object_store.map(|u| u.to_string()).as_deref(),
            Some("s3://b/p")
        );
        let e =
            crate::config::tests::load(None, &[("COMPOSER_PROXY_OBJECT_STORE_URL", "ftp://b/p")])
                .expect_err("bad scheme");
        assert_eq!(e.setting, "object_store_url");
        assert!(e.origin.contains("COMPOSER_PROXY_OBJECT_STORE_URL"), "{e}");
    }

    #[test]
    fn wrong_urls_are_refused_without_quoting_credentials() {
        for bad in [
            "https://bucket/x",
            "s3://",
            "s3:///prefix",
            "s3://b/x?versionId=1",
            "s3://b/a/../c",
            "bucket/prefix",
        ] {
            assert!(parse_bucket_url(bad).is_err(), "{bad}");
        }
        let e = parse_bucket_url("s3://AKIA:s3cret@bucket/x").expect_err("credentials");
        assert!(e.contains("credentials") && !e.contains("s3cret"), "{e}");
    }
}

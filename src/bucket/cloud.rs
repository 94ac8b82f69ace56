//! The provider clients behind `object_store_url`: S3, GCS and Azure with the `cloud-buckets`
//! feature (the default); without it (the fuzz targets' build) a bucket URL cannot be opened.

use std::sync::Arc;

use object_store::ObjectStore;

use super::BucketError;
use crate::config::BucketUrl;

/// The provider's client for `url`.
#[cfg(feature = "cloud-buckets")]
pub(super) fn store(url: &BucketUrl) -> Result<Arc<dyn ObjectStore>, BucketError> {
    use std::time::Duration;

    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    use object_store::{ClientConfigKey, RetryConfig};

    use crate::config::BucketKind;

    // Retries are few and short: a caller waiting on a failing bucket is a client waiting
    // for an archive it could get from upstream instead.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..RetryConfig::default()
    };
    let (connect, timeout) = (ClientConfigKey::ConnectTimeout, ClientConfigKey::Timeout);
    let built = match url.kind {
        BucketKind::S3 => AmazonS3Builder::from_env()
            .with_url(url.root())
            // Compare-and-swap on the ETag (If-Match / If-None-Match), which S3, MinIO
            // and R2 honour; the crate's default today, stated so no upgrade changes it.
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_config(AmazonS3ConfigKey::Client(connect), "5s")
            .with_config(AmazonS3ConfigKey::Client(timeout), "300s")
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
        BucketKind::Gcs => GoogleCloudStorageBuilder::from_env()
            .with_url(url.root())
            .with_config(GoogleConfigKey::Client(connect), "5s")
            .with_config(GoogleConfigKey::Client(timeout), "300s")
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
        BucketKind::Azure => MicrosoftAzureBuilder::from_env()
            .with_url(url.root())
            .with_config(AzureConfigKey::Client(connect), "5s")
            .with_config(AzureConfigKey::Client(timeout), "300s")
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
    };
    built.map_err(|e| BucketError::Config(format!("{url}: {e}")))
}

/// A build without the cloud clients.
#[cfg(not(feature = "cloud-buckets"))]
pub(super) fn store(url: &BucketUrl) -> Result<Arc<dyn ObjectStore>, BucketError> {
    Err(BucketError::Config(format!(
        "{url}: this composer-proxy was built without the cloud-buckets feature"
    )))
}

//! `composer-proxy usage`: who took which archive, from the usage record every replica keeps
//! under `<cache_dir>/usage/` and, with `object_store_url`, in the bucket. Safe beside running
//! proxies: it only reads.

use std::sync::Arc;
use std::time::SystemTime;

use crate::bucket::Bucket;
use crate::commands::{CommandError, EXIT_OK};
use crate::config::{Config, NamePattern};
use crate::metrics::Metrics;
use crate::usage::report::{self, Filter};
use crate::usage::USAGE_DIR;

/// What to report, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct UsageOptions {
    pub since: Option<String>,
    pub view: Option<String>,
    pub token: Option<String>,
    pub package: Option<String>,
    pub json: bool,
}

/// Builds the filter; a bad `--since` or `--package` is a usage error.
fn filter(options: &UsageOptions, now: SystemTime) -> Result<Filter, CommandError> {
    let since = options
        .since
        .as_deref()
        .map(|s| report::parse_since(s, now))
        .transpose()
        .map_err(CommandError::Usage)?;
    let package = options
        .package
        .as_deref()
        .map(|p| NamePattern::parse(&p.to_ascii_lowercase()))
        .transpose()
        .map_err(|m| CommandError::Usage(format!("--package: {m}")))?;
    Ok(Filter {
        since,
        view: options.view.clone(),
        token: options.token.clone(),
        package,
    })
}

pub async fn run(config: &Config, options: &UsageOptions) -> Result<u8, CommandError> {
    let filter = filter(options, SystemTime::now())?;
    let bucket = config
        .object_store
        .as_ref()
        .map(|url| Bucket::open(url, Arc::new(Metrics::default())))
        .transpose()
        .map_err(|e| CommandError::Failed(e.into()))?;
    let dir = config.cache_dir.join(USAGE_DIR);
    let gathered = report::gather(&dir, bucket.as_deref(), &filter)
        .await
        .map_err(|e| CommandError::Failed(e.into()))?;
    let rows = report::group(&gathered.lines, &filter);
    if gathered.unreadable > 0 {
        eprintln!(
            "composer-proxy: {} lines of the usage record are not records and were skipped",
            gathered.unreadable
        );
    }
    if options.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| CommandError::Failed(anyhow::anyhow!("{e}")))?;
        println!("{text}");
        return Ok(EXIT_OK);
    }
    let downloads: u64 = rows.iter().map(|r| r.count).sum();
    let since = filter
        .since
        .map(|t| format!(" since {}", humantime::format_rfc3339_seconds(t)))
        .unwrap_or_default();
    let place = match &config.object_store {
        Some(url) => format!("{} and {url}/usage", dir.display()),
        None => dir.display().to_string(),
    };
    if rows.is_empty() {
        println!("No downloads{since} in the usage record ({place}).");
    } else {
        print!("{}", report::table(&rows));
        println!(
            "\n{downloads} downloads{since}, from {} replicas' records ({place}).",
            gathered.replicas
        );
    }
    if config.usage_retention.is_none() {
        println!(
            "Note: usage_retention_days is 0, so proxies with this configuration record nothing."
        );
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_since_and_package_are_usage_errors() {
        let now = SystemTime::now();
        let bad = |options: UsageOptions| match filter(&options, now) {
            Err(CommandError::Usage(message)) => message,
            other => panic!("{other:?}"),
        };
        assert!(bad(UsageOptions {
            since: Some("yesterday".into()),
            ..UsageOptions::default()
        })
        .contains("--since"));
        assert!(bad(UsageOptions {
            package: Some("vendor/[x]".into()),
            ..UsageOptions::default()
        })
        .contains("--package"));
        let ok = filter(
            &UsageOptions {
                package: Some("VendorX/*".into()),
                since: Some("30d".into()),
                ..UsageOptions::default()
            },
            now,
        )
        .expect("valid");
        assert!(ok.package.is_some_and(|p| p.matches("vendorx/extension-a")));
    }
}

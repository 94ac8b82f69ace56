//! `composer-proxy tokens …`: issue, list, disable, enable and delete client tokens, the way
//! Marketplace access keys are managed. Changes are written to the token file (in the bucket
//! when `object_store_url` is set), which running proxies look at every 250 ms (500 ms in the
//! bucket), so they apply within a second without a restart.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::bucket::Bucket;
use crate::commands::{CommandError, EXIT_FAILED, EXIT_OK};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::tokens::{self, TokenRecord, TokenState};

fn failed(e: impl std::fmt::Display) -> CommandError {
    CommandError::Failed(anyhow::anyhow!("{e}"))
}

/// The bucket holding the token file, when `object_store_url` is set.
fn bucket(config: &Config) -> Result<Option<Arc<Bucket>>, CommandError> {
    config
        .object_store
        .as_ref()
        .map(|url| Bucket::open(url, Arc::new(Metrics::default())))
        .transpose()
        .map_err(failed)
}

/// Applies `change` to the token file: in the bucket by conditional writes (reapplied to the
/// newest copy after a conflict), else on disk under the lock.
async fn modify<T>(
    config: &Config,
    change: impl FnMut(&mut Vec<TokenRecord>) -> T,
) -> Result<T, CommandError> {
    match bucket(config)? {
        Some(bucket) => tokens::in_bucket::modify(&bucket, change).await,
        None => tokens::modify(&config.tokens_file, change),
    }
    .map_err(failed)
}

/// Where the token file is, for messages.
fn location(config: &Config) -> String {
    match &config.object_store {
        Some(url) => format!("{}/tokens/{}", url, tokens::in_bucket::TOKEN_OBJECT),
        None => config.tokens_file.display().to_string(),
    }
}

/// The host (and port, unless the scheme's default) Composer files credentials under in
/// auth.json for this proxy.
fn auth_host(config: &Config) -> String {
    let url = config.public_url_for(config.listen);
    url::Url::parse(&url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or(url)
}

/// Every name in `views` is a configured `[[view]]`, without repeats.
fn check_views(config: &Config, views: &[String]) -> Result<Vec<String>, CommandError> {
    let mut checked: Vec<String> = Vec::with_capacity(views.len());
    for view in views {
        if !config.views.iter().any(|v| &v.name == view) {
            let known: Vec<&str> = config.views.iter().map(|v| v.name.as_str()).collect();
            return Err(CommandError::Usage(format!(
                "{view:?} is not a [[view]] of this configuration (there are: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        if !checked.contains(view) {
            checked.push(view.clone());
        }
    }
    Ok(checked)
}

/// The repository URLs of `views`, for messages.
fn view_urls(config: &Config, views: &[String]) -> String {
    let public_url = config.public_url_for(config.listen);
    views
        .iter()
        .map(|v| format!("  {public_url}/{v}/"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates a token and prints its secret, the only time it is ever shown.
pub async fn create(config: &Config, name: &str, views: &[String]) -> Result<u8, CommandError> {
    tokens::validate_name(name).map_err(CommandError::Usage)?;
    let views = check_views(config, views)?;
    let (secret, hash) = tokens::generate().map_err(failed)?;
    let created = modify(config, |list| {
        if list
            .iter()
            .any(|t| t.name == name && t.state != TokenState::Deleted)
        {
            return false;
        }
        list.push(TokenRecord {
            name: name.to_string(),
            sha256: hash.clone(),
            state: TokenState::Active,
            created: tokens::now_rfc3339(),
            changed: None,
            views: views.clone(),
        });
        true
    })
    .await?;
    if !created {
        eprintln!(
            "composer-proxy: a token named {name:?} already exists; delete it first or choose another name"
        );
        return Ok(EXIT_FAILED);
    }
    let host = auth_host(config);
    let secret = secret.expose();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Created client token {name:?}. Its secret is shown this once only; composer-proxy \
         keeps just a hash of it:\n\n  {secret}\n"
    );
    let _ = writeln!(
        out,
        "Give it to {name} for the auth.json of the machine or CI job, for example:\n\n  \
         composer config --global http-basic.{host} {name} {secret}\n\n\
         or in auth.json:\n\n  {{\"http-basic\": {{\"{host}\": {{\"username\": \"{name}\", \"password\": \"{secret}\"}}}}}}\n\n\
         (a \"bearer\" entry for {host} works too)."
    );
    if !views.is_empty() {
        let _ = writeln!(
            out,
            "It works only at the URLs of its views (as the repository URL in composer.json):\n\n{}",
            view_urls(config, &views)
        );
    }
    if !config.require_tokens {
        let _ = writeln!(
            out,
            "\nNote: require_tokens is off, so the proxy does not ask for tokens yet; turn it on \
             once every client has one."
        );
    }
    print!("{out}");
    Ok(EXIT_OK)
}

fn format_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Lists tokens: name, state, creation, last use. Never a secret, nor its hash.
pub async fn list(config: &Config, json: bool) -> Result<u8, CommandError> {
    let (records, used) = match bucket(config)? {
        Some(bucket) => (
            tokens::in_bucket::read(&bucket).await.map_err(failed)?,
            tokens::in_bucket::read_last_use(&bucket).await,
        ),
        None => (
            tokens::read(&config.tokens_file).map_err(failed)?,
            tokens::read_last_use(&config.tokens_file),
        ),
    };
    let last_use = |t: &TokenRecord| used.get(&t.sha256).map(|s| format_time(*s));
    if json {
        let list: Vec<_> = records
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "state": t.state.as_str(),
                    "created": t.created,
                    "changed": t.changed,
                    "last_used": last_use(t),
                    "views": t.views,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).map_err(|e| failed(e.to_string()))?
        );
        return Ok(EXIT_OK);
    }
    if records.is_empty() {
        println!(
            "No client tokens in {}. Create one with: composer-proxy tokens create --name NAME",
            location(config)
        );
        return Ok(EXIT_OK);
    }
    let width = records
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<width$}  {:<8}  {:<20}  {:<20}  {}\n",
        "NAME", "STATE", "CREATED", "LAST USED", "VIEWS"
    );
    for t in &records {
        let views = if t.views.is_empty() {
            "(organisation-wide)".to_string()
        } else {
            t.views.join(",")
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<8}  {:<20}  {:<20}  {views}",
            t.name,
            t.state.as_str(),
            t.created,
            last_use(t).unwrap_or_else(|| "never".into()),
        );
    }
    let active = records
        .iter()
        .filter(|t| t.state == TokenState::Active)
        .count();
    let _ = write!(
        out,
        "\n{active} active; tokens are {}required (setting require_tokens).\n",
        if config.require_tokens { "" } else { "not " }
    );
    print!("{out}");
    Ok(EXIT_OK)
}

/// Sets the state of the named token, saying what that means for clients using it.
pub async fn set_state(config: &Config, name: &str, state: TokenState) -> Result<u8, CommandError> {
    let outcome = modify(config, |list| {
        let token = list
            .iter_mut()
            .find(|t| t.name == name && t.state != TokenState::Deleted)?;
        let before = token.state;
        if before != state {
            token.state = state;
            token.changed = Some(tokens::now_rfc3339());
        }
        Some(before)
    })
    .await?;
    let Some(before) = outcome else {
        eprintln!(
            "composer-proxy: no token named {name:?} (see composer-proxy tokens list); deleted \
             tokens cannot be changed"
        );
        return Ok(EXIT_FAILED);
    };
    let effect = match (before == state, state) {
        (true, _) => format!("Token {name:?} was already {}.", state.as_str()),
        (false, TokenState::Disabled) => format!(
            "Disabled token {name:?}: running proxies refuse it within a second (HTTP \
             403, saying it is disabled). `composer-proxy tokens enable {name}` restores it."
        ),
        (false, TokenState::Active) => {
            format!("Enabled token {name:?}: running proxies accept it again within a second.")
        }
        (false, TokenState::Deleted) => format!(
            "Deleted token {name:?}: running proxies refuse it within a second (HTTP \
             403, saying it was deleted). This cannot be undone; its name can be used for a new \
             token."
        ),
    };
    println!("{effect}");
    Ok(EXIT_OK)
}

/// Binds the named token to exactly `views` (none: organisation-wide), saying what that means.
pub async fn set_views(config: &Config, name: &str, views: &[String]) -> Result<u8, CommandError> {
    let views = check_views(config, views)?;
    let outcome = modify(config, |list| {
        let token = list
            .iter_mut()
            .find(|t| t.name == name && t.state != TokenState::Deleted)?;
        let before = std::mem::replace(&mut token.views, views.clone());
        if before != views {
            token.changed = Some(tokens::now_rfc3339());
        }
        Some(before)
    })
    .await?;
    let Some(before) = outcome else {
        eprintln!(
            "composer-proxy: no token named {name:?} (see composer-proxy tokens list); deleted \
             tokens cannot be changed"
        );
        return Ok(EXIT_FAILED);
    };
    let effect = if before == views {
        format!("Token {name:?} was already bound to exactly these views.")
    } else if views.is_empty() {
        format!(
            "Token {name:?} is organisation-wide now: running proxies accept it everywhere \
             within a second."
        )
    } else {
        format!(
            "Token {name:?} is bound to {} now: within a second running proxies accept it only \
             at\n{}",
            views.join(", "),
            view_urls(config, &views)
        )
    };
    println!("{effect}");
    Ok(EXIT_OK)
}

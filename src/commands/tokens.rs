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

/// Creates a token and prints its secret, the only time it is ever shown.
pub async fn create(config: &Config, name: &str) -> Result<u8, CommandError> {
    tokens::validate_name(name).map_err(CommandError::Usage)?;
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
        "{:<width$}  {:<8}  {:<20}  {}\n",
        "NAME", "STATE", "CREATED", "LAST USED"
    );
    for t in &records {
        let _ = writeln!(
            out,
            "{:<width$}  {:<8}  {:<20}  {}",
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

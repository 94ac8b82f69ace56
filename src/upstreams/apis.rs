//! The upstreams' security advisory, malware filter list and package name list APIs, asked on
//! the clients' behalf and merged.
//!
//! Answers are remembered per upstream and item (a package name, a name list query, the one
//! filter summary) for `advisories_ttl`, so a CI fleet auditing the same lock file costs one
//! upstream request per TTL. The last answer is kept beyond that and served (with a warning
//! in the log) while the upstream cannot be asked. A question about an item an offering
//! upstream never answered, while it fails, is a 5xx naming it: a missing answer must never
//! look like "no advisories".

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use serde_json::{json, Value};
use url::Url;

use super::{Upstream, Upstreams};
use crate::cache::metadata::{CacheStatus, View};
use crate::composer::apis::{self as protocol, ListQuery};
use crate::composer::ProtocolError;
use crate::error::{ProxyError, Resource};
use crate::upstream::{Answer, RequestKind, UpstreamError};
use crate::views::ClientView;

/// Composer waits 10 seconds for these APIs; the proxy gives up on an upstream sooner, so it
/// can still answer from what it knows.
const API_TIMEOUT: Duration = Duration::from_secs(8);
/// Names per upstream request of the advisory and filter APIs. PHP reads at most
/// `max_input_vars` (1000 by default) fields of a form, so packagist.org-like upstreams take
/// no more names than that in one request; a lock file's few hundred names fit in one.
const NAMES_PER_REQUEST: usize = 1000;
/// Batches of one client request asked of an upstream at once.
const BATCHES_AT_ONCE: usize = 4;
/// Memory for remembered answers, all upstreams together.
const CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What is asked of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Api {
    Advisories,
    FilterSummary,
    FilterEntries,
    List,
}

impl Api {
    /// For the warning a client gets when the upstream could not be asked.
    fn what(self) -> &'static str {
        match self {
            Api::Advisories => "security advisories",
            Api::FilterSummary => "its malware filter summary",
            Api::FilterEntries => "malware filter entries",
            Api::List => "its package names",
        }
    }

    fn request_kind(self) -> RequestKind {
        match self {
            Api::Advisories => RequestKind::Advisories,
            Api::FilterSummary | Api::FilterEntries => RequestKind::Filter,
            Api::List => RequestKind::List,
        }
    }
}

/// One upstream's answer about one item.
struct Remembered {
    value: Value,
    at: Instant,
    /// When it was had, for the Last-Modified of documents built from it.
    fetched: SystemTime,
}

/// Remembered answers by (upstream, API, item).
pub struct ApiCache {
    ttl: Duration,
    entries: moka::sync::Cache<(Arc<str>, Api, String), Arc<Remembered>>,
}

impl ApiCache {
    pub fn new(ttl: Duration) -> Self {
        let weigh = |key: &(Arc<str>, Api, String), r: &Arc<Remembered>| {
            let bytes = key.2.len() + serde_json::to_vec(&r.value).map_or(0, |v| v.len()) + 64;
            u32::try_from(bytes).unwrap_or(u32::MAX)
        };
        Self {
            ttl,
            entries: moka::sync::Cache::builder()
                .max_capacity(CACHE_MAX_BYTES)
                .weigher(weigh)
                .build(),
        }
    }

    /// One upstream's answers about `items`: remembered ones while fresh, the others asked
    /// with one `fetch`; when that fails, the last answers, or the failure if an item has
    /// none. An item the upstream's answer leaves out is remembered as `null`.
    async fn lookup<F, Fut>(
        &self,
        upstream: &Arc<str>,
        api: Api,
        items: &[String],
        fetch: F,
    ) -> Result<Answers, ProxyError>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<BTreeMap<String, Value>, ProxyError>>,
    {
        let key = |item: &str| (upstream.clone(), api, item.to_string());
        let mut answers = Answers {
            by_item: BTreeMap::new(),
            cache: CacheStatus::Hit,
            fetched: SystemTime::UNIX_EPOCH,
        };
        let mut due = Vec::new();
        for item in items {
            match self.entries.get(&key(item)) {
                Some(known) if known.at.elapsed() < self.ttl => answers.take(item, &known),
                known => due.push((item.clone(), known)),
            }
        }
        if due.is_empty() {
            return Ok(answers);
        }
        let asked = due.iter().map(|(item, _)| item.clone()).collect();
        match fetch(asked).await {
            Ok(mut fetched) => {
                answers.cache = CacheStatus::Miss;
                for (item, _) in due {
                    let value = fetched.remove(&item).unwrap_or(Value::Null);
                    let known = Arc::new(Remembered {
                        value,
                        at: Instant::now(),
                        fetched: SystemTime::now(),
                    });
                    answers.take(&item, &known);
                    self.entries.insert(key(&item), known);
                }
                Ok(answers)
            }
            Err(error) if due.iter().all(|(_, known)| known.is_some()) => {
                tracing::warn!(event = "upstream_api_stale", upstream = %upstream, api = api.what(), error = %error, "upstream could not be asked; serving its last answer");
                answers.cache = CacheStatus::Stale;
                for (item, known) in due {
                    if let Some(known) = known {
                        answers.take(&item, &known);
                    }
                }
                Ok(answers)
            }
            Err(error) => Err(ProxyError::ApiUnavailable {
                upstream: upstream.to_string(),
                what: api.what(),
                source: Box::new(error),
            }),
        }
    }
}

/// Answers by item.
type ByItem = BTreeMap<String, Value>;

/// One upstream's answers about some items.
struct Answers {
    by_item: ByItem,
    cache: CacheStatus,
    fetched: SystemTime,
}

impl Answers {
    fn take(&mut self, item: &str, known: &Remembered) {
        self.fetched = self.fetched.max(known.fetched);
        self.by_item.insert(item.to_string(), known.value.clone());
    }
}

/// A merged answer: the document, how it was had, and when its newest part was fetched.
pub type Merged = (Value, CacheStatus, SystemTime);

/// The answers of several upstreams (in priority order): each one's, or the first failure.
fn settle(
    answers: Vec<Result<Answers, ProxyError>>,
) -> Result<(Vec<ByItem>, CacheStatus, SystemTime), ProxyError> {
    let mut out = Vec::with_capacity(answers.len());
    let mut cache = CacheStatus::Hit;
    let mut fetched = SystemTime::UNIX_EPOCH;
    for answer in answers {
        let answer = answer?;
        cache = match (cache, answer.cache) {
            (CacheStatus::Stale, _) | (_, CacheStatus::Stale) => CacheStatus::Stale,
            (CacheStatus::Miss, _) | (_, CacheStatus::Miss) => CacheStatus::Miss,
            _ => cache,
        };
        fetched = fetched.max(answer.fetched);
        out.push(answer.by_item);
    }
    Ok((out, cache, fetched))
}

/// Which upstreams an API request is answered by.
pub enum Among {
    /// Every upstream: the merged repository.
    All,
    /// One upstream's own repository.
    One(Arc<Upstream>),
    /// A view's upstreams.
    View(Arc<ClientView>),
}

impl Upstreams {
    /// The upstreams a request of these APIs stands for, with their roots: one alone, a view's,
    /// or all in priority order. With several, an upstream whose root cannot be had is left out
    /// (its APIs are unknown; the others' answers are still worth having).
    async fn with_views(
        &self,
        among: &Among,
    ) -> Result<Vec<(Arc<Upstream>, Arc<View>)>, ProxyError> {
        let list = match among {
            Among::One(upstream) => vec![upstream.clone()],
            Among::View(view) => view.members.clone(),
            Among::All => self.list.clone(),
        };
        let single = matches!(among, Among::One(_));
        let views = join_all(list.iter().map(|u| u.metadata.view())).await;
        let mut out = Vec::with_capacity(list.len());
        for (upstream, view) in list.into_iter().zip(views) {
            match view {
                Ok((view, _)) => out.push((upstream, view)),
                Err(e) if single => return Err(e),
                Err(e) => {
                    tracing::warn!(upstream = %upstream.name, error = %e, "upstream root unavailable; its advisory, filter and list APIs are left out")
                }
            }
        }
        Ok(out)
    }

    /// `{"advisories": {name: [ … ]}}` for `names`, from every upstream that offers advisories.
    pub async fn advisories(&self, among: Among, names: &[String]) -> Result<Merged, ProxyError> {
        let sources = self.with_views(&among).await?;
        let asks = sources.iter().filter_map(|(upstream, view)| {
            let url = view.apis().advisories.as_ref()?.api_url.clone();
            Some(async move {
                let url = &url;
                let fetch = |missing: Vec<String>| {
                    in_batches(missing, move |batch| async move {
                        let form: String = url::form_urlencoded::Serializer::new(String::new())
                            .extend_pairs(batch.iter().map(|n| ("packages[]", n)))
                            .finish();
                        let form = ("application/x-www-form-urlencoded", Bytes::from(form));
                        let json =
                            ask(upstream, Api::Advisories, Method::POST, url, Some(form)).await?;
                        protocol::advisory_answer(&json).map_err(shape)
                    })
                };
                self.apis
                    .lookup(&upstream.name, Api::Advisories, names, fetch)
                    .await
            })
        });
        let (answers, cache, fetched) = settle(join_all(asks).await)?;
        Ok((protocol::merge_advisories(names, &answers), cache, fetched))
    }

    /// The merged filter summary, `{"filter": {list: {name: constraint}}}`.
    pub async fn filter_summary(&self, among: Among) -> Result<Merged, ProxyError> {
        let sources = self.with_views(&among).await?;
        let asks = sources.iter().filter_map(|(upstream, view)| {
            let url = view.apis().filter.as_ref()?.summary_url.clone()?;
            Some(async move { self.summary_of(upstream, &url).await })
        });
        let (answers, cache, fetched) = settle(join_all(asks).await)?;
        let summaries: Vec<Value> = answers.into_iter().flat_map(|a| a.into_values()).collect();
        Ok((protocol::merge_filter_summaries(&summaries), cache, fetched))
    }

    /// `{"filter": {list: [entries]}}` for `names` in `lists`: from each upstream's filter
    /// API, or, for one that only publishes a summary, the entries its summary implies.
    pub async fn filter_entries(
        &self,
        among: Among,
        names: &[String],
        lists: &[String],
    ) -> Result<Merged, ProxyError> {
        let sources = self.with_views(&among).await?;
        let asks = sources.iter().filter_map(|(upstream, view)| {
            let filter = view.apis().filter.as_ref()?;
            let source = match (&filter.api_url, &filter.summary_url) {
                // Every list the upstream has, whatever this client wants: one remembered
                // answer then serves every client.
                (Some(api), _) => {
                    FilterSource::Api(api.clone(), filter.lists.keys().cloned().collect())
                }
                (None, Some(summary)) => FilterSource::Summary(summary.clone()),
                (None, None) => return None,
            };
            Some(async move {
                match source {
                    FilterSource::Api(url, all_lists) => {
                        let (url, all_lists) = (&url, &all_lists);
                        let fetch = |missing: Vec<String>| {
                            in_batches(missing, move |batch| async move {
                                let body = protocol::filter_upstream_request(&batch, all_lists);
                                let body =
                                    Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                                let body = Some(("application/json", body));
                                let json =
                                    ask(upstream, Api::FilterEntries, Method::POST, url, body)
                                        .await?;
                                protocol::filter_answer(&json).map_err(shape)
                            })
                        };
                        self.apis
                            .lookup(&upstream.name, Api::FilterEntries, names, fetch)
                            .await
                    }
                    FilterSource::Summary(url) => {
                        let mut answers = self.summary_of(upstream, &url).await?;
                        let summary = answers.by_item.pop_first().map(|(_, s)| s);
                        answers.by_item = summary
                            .map(|s| protocol::entries_from_summary(&s, names))
                            .unwrap_or_default();
                        Ok(answers)
                    }
                }
            })
        });
        let (answers, cache, fetched) = settle(join_all(asks).await)?;
        Ok((
            protocol::merge_filter_entries(names, lists, &answers),
            cache,
            fetched,
        ))
    }

    /// One upstream's filter summary (as [`protocol::filter_summary`]), under the item "".
    async fn summary_of(&self, upstream: &Upstream, url: &Url) -> Result<Answers, ProxyError> {
        let fetch = |_| async move {
            let json = ask(upstream, Api::FilterSummary, Method::GET, url, None).await?;
            let summary = protocol::filter_summary(&json).map_err(shape)?;
            Ok(BTreeMap::from([(String::new(), summary)]))
        };
        self.apis
            .lookup(&upstream.name, Api::FilterSummary, &[String::new()], fetch)
            .await
    }

    /// `{"packageNames": [ … ]}` matching `query`: from each upstream's `list`, and the names of
    /// every upstream that lists all its names in its root.
    pub async fn package_names(
        &self,
        among: Among,
        query: &ListQuery,
    ) -> Result<Merged, ProxyError> {
        let sources = self.with_views(&among).await?;
        let canonical = query.canonical();
        let asks = sources.iter().filter_map(|(upstream, view)| {
            let mut url = view.apis().list.clone()?;
            url.set_query(
                Some(&canonical)
                    .filter(|q| !q.is_empty())
                    .map(String::as_str),
            );
            let item = [canonical.clone()];
            Some(async move {
                let fetch = |asked: Vec<String>| async move {
                    let json = ask(upstream, Api::List, Method::GET, &url, None).await?;
                    let names = protocol::list_answer(&json).map_err(shape)?;
                    Ok(asked.into_iter().map(|q| (q, json!(names))).collect())
                };
                self.apis
                    .lookup(&upstream.name, Api::List, &item, fetch)
                    .await
            })
        });
        let (answers, cache, fetched) = settle(join_all(asks).await)?;
        let mut names = BTreeSet::new();
        for value in answers.iter().flat_map(|a| a.values()) {
            names.extend(
                value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            );
        }
        for (_, view) in &sources {
            let finite = view.finite_names().unwrap_or_default();
            names.extend(
                finite
                    .iter()
                    .map(String::as_str)
                    .filter(|n| query.matches(n)),
            );
        }
        // A view's list holds only names its patterns admit.
        if let Among::View(view) = &among {
            names.retain(|n| view.config.admits(n));
        }
        Ok((json!({ "packageNames": names }), cache, fetched))
    }
}

/// Asks about `names` in batches of at most [`NAMES_PER_REQUEST`], a few at once, and merges
/// the answers; one failed batch fails the whole (a missing answer must never look like "no
/// advisories").
async fn in_batches<F, Fut>(names: Vec<String>, ask: F) -> Result<ByItem, ProxyError>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<ByItem, ProxyError>>,
{
    let mut merged = ByItem::new();
    for round in names.chunks(NAMES_PER_REQUEST * BATCHES_AT_ONCE) {
        let batches = round.chunks(NAMES_PER_REQUEST).map(|b| ask(b.to_vec()));
        for answer in join_all(batches).await {
            merged.extend(answer?);
        }
    }
    Ok(merged)
}

/// Where an upstream's filter entries come from.
enum FilterSource {
    /// Its filter API, asked for these lists.
    Api(Url, Vec<String>),
    /// Only its summary.
    Summary(Url),
}

fn shape(why: String) -> ProxyError {
    ProxyError::Protocol(ProtocolError::Shape(why))
}

/// Asks one upstream API and reads its JSON answer, within [`API_TIMEOUT`] (or the upstream's
/// metadata timeout, if shorter). The upstream client sends credentials to its own origin only.
async fn ask(
    upstream: &Upstream,
    api: Api,
    method: Method,
    url: &Url,
    body: Option<(&'static str, Bytes)>,
) -> Result<Value, ProxyError> {
    let client = &upstream.client;
    let work = async {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let body = match body {
            Some((content_type, bytes)) => {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                bytes
            }
            None => Bytes::new(),
        };
        let response = client
            .send(api.request_kind(), method, url.as_str(), headers, body)
            .await?;
        if !response.status.is_success() {
            return Err(ProxyError::from_upstream_status(
                response.status,
                Resource::Metadata,
                client.has_credentials(),
                url.path(),
            ));
        }
        let bytes = client
            .read_answer(Answer::Api, url.as_str(), response)
            .await?;
        serde_json::from_slice(&bytes).map_err(|source| {
            ProxyError::Protocol(ProtocolError::Json {
                what: format!("the answer of {url}"),
                source,
            })
        })
    };
    tokio::time::timeout(API_TIMEOUT.min(client.metadata_timeout), work)
        .await
        .map_err(|_| ProxyError::Upstream(UpstreamError::Timeout("answering an API request")))?
}

#[cfg(test)]
mod tests;

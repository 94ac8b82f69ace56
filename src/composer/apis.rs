//! The APIs a repository root offers beside its metadata: security advisories (`composer
//! audit`, and `update` since Composer 2.9), malware filter lists (Composer 2.10's `filter`)
//! and the list of package names (`list`). Pure: reading them from an upstream root,
//! advertising the proxy's own in the roots it serves, reading client requests and upstream
//! answers, and merging the answers of several upstreams into one.
//!
//! `providers-api` is not offered: it only feeds Composer's "did you mean" suggestions for a
//! missing package, and its upstream URL would send clients around the proxy.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};
use url::Url;

use super::{canonicalize_url, is_package_name};

/// Where the proxy serves each API, below a repository's public URL.
pub const ADVISORIES_PATH: &str = "/api/security-advisories/";
pub const FILTER_SUMMARY_PATH: &str = "/api/filter/summary.json";
pub const FILTER_API_PATH: &str = "/api/filter/";
pub const LIST_PATH: &str = "/packages/list.json";

/// What Composer puts before a name in a filter API request (a package URL).
const PURL_PREFIXES: [&str; 2] = ["pkg://composer/", "pkg:composer/"];

/// An upstream's `security-advisories`, when it has an API the proxy can ask. Without
/// `api-url` the advisories are only in its p2 files, which the proxy passes on unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct AdvisoryApi {
    /// Its p2 files carry a `security-advisories` key worth reading first.
    pub metadata: bool,
    pub api_url: Url,
}

/// An upstream's `filter` (malware lists).
#[derive(Clone, Debug, PartialEq)]
pub struct FilterApi {
    /// Its p2 files carry a `filter` key.
    pub metadata: bool,
    /// List name → its settings (`enabled`, descriptions …), as the upstream wrote them.
    pub lists: Map<String, Value>,
    pub summary_url: Option<Url>,
    pub api_url: Option<Url>,
}

/// The APIs of one upstream root, each URL resolved as Composer resolves it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RootApis {
    pub advisories: Option<AdvisoryApi>,
    pub filter: Option<FilterApi>,
    pub list: Option<Url>,
}

/// Reads the APIs of an upstream root. A root that is no JSON object offers none (it is
/// refused for its metadata anyway).
pub fn parse_root_apis(bytes: &[u8], repository: &Url) -> RootApis {
    let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(bytes) else {
        return RootApis::default();
    };
    let url = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .and_then(|s| canonicalize_url(repository, s))
    };
    let flag = |v: &Value| v.get("metadata").and_then(Value::as_bool).unwrap_or(false);
    let advisories = root.get("security-advisories").and_then(|a| {
        Some(AdvisoryApi {
            metadata: flag(a),
            api_url: url(a.get("api-url"))?,
        })
    });
    let filter = root
        .get("filter")
        .filter(|f| f.is_object())
        .map(|f| FilterApi {
            metadata: flag(f),
            lists: f
                .get("lists")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            summary_url: url(f.get("summary-url")),
            api_url: url(f.get("api-url")),
        });
    RootApis {
        advisories,
        filter,
        list: url(root.get("list")),
    }
}

impl RootApis {
    /// These APIs without the URLs `fetchable` refuses, and those URLs with the key that
    /// named them: the proxy asks only the upstream's own origin and its allowed hosts.
    pub fn reachable(
        mut self,
        fetchable: impl Fn(&Url) -> bool,
    ) -> (Self, Vec<(&'static str, Url)>) {
        let mut refused = Vec::new();
        let mut keep = |key: &'static str, url: Option<Url>| match url {
            Some(u) if !fetchable(&u) => {
                refused.push((key, u));
                None
            }
            other => other,
        };
        self.advisories = self.advisories.and_then(|a| {
            let api_url = keep("security-advisories.api-url", Some(a.api_url))?;
            Some(AdvisoryApi { api_url, ..a })
        });
        if let Some(f) = &mut self.filter {
            f.summary_url = keep("filter.summary-url", f.summary_url.take());
            f.api_url = keep("filter.api-url", f.api_url.take());
        }
        self.list = keep("list", self.list.take());
        (self, refused)
    }
}

/// Writes the proxy's `security-advisories`, `filter` and `list` into a root served at
/// `public_url` that stands for the upstreams whose APIs are given: each is offered when one
/// of them offers it, `metadata` when one of them says so, and `lists` merged.
pub fn advertise_apis(root: &mut Map<String, Value>, public_url: &str, apis: &[&RootApis]) {
    let advisories: Vec<&AdvisoryApi> = apis.iter().filter_map(|a| a.advisories.as_ref()).collect();
    if !advisories.is_empty() {
        root.insert(
            "security-advisories".into(),
            json!({
                "metadata": advisories.iter().any(|a| a.metadata),
                "api-url": format!("{public_url}{ADVISORIES_PATH}"),
            }),
        );
    }
    let filters: Vec<&FilterApi> = apis.iter().filter_map(|a| a.filter.as_ref()).collect();
    if !filters.is_empty() {
        let mut filter = Map::new();
        filter.insert("metadata".into(), json!(filters.iter().any(|f| f.metadata)));
        filter.insert("lists".into(), Value::Object(merge_lists(&filters)));
        if filters.iter().any(|f| f.summary_url.is_some()) {
            let url = format!("{public_url}{FILTER_SUMMARY_PATH}");
            filter.insert("summary-url".into(), json!(url));
        }
        if filters
            .iter()
            .any(|f| f.api_url.is_some() || f.summary_url.is_some())
        {
            filter.insert(
                "api-url".into(),
                json!(format!("{public_url}{FILTER_API_PATH}")),
            );
        }
        root.insert("filter".into(), Value::Object(filter));
    }
    if apis.iter().any(|a| a.list.is_some()) {
        root.insert("list".into(), json!(format!("{public_url}{LIST_PATH}")));
    }
}

/// Every upstream's lists; a list two upstreams name keeps the first one's settings, and is
/// enabled when either enables it.
fn merge_lists(filters: &[&FilterApi]) -> Map<String, Value> {
    let mut lists = Map::new();
    for filter in filters {
        for (name, settings) in &filter.lists {
            let enabled = |s: &Value| s.get("enabled").and_then(Value::as_bool) == Some(true);
            match lists.get_mut(name) {
                None => {
                    lists.insert(name.clone(), settings.clone());
                }
                Some(Value::Object(kept)) if enabled(settings) => {
                    kept.insert("enabled".into(), json!(true));
                }
                Some(_) => {}
            }
        }
    }
    lists
}

/// The names of an advisory request (`application/x-www-form-urlencoded`, `packages[]=a/b`,
/// or `packages[0]=a/b` as PHP's `http_build_query` writes it), lower-cased and each once.
/// Names that are no package name (Composer sends none) are left out rather than refused, so
/// one odd name does not cost a whole audit.
pub fn advisory_request(body: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the form body is not UTF-8".to_string())?;
    let mut asked = false;
    let mut names = Vec::new();
    for (key, value) in url::form_urlencoded::parse(text.as_bytes()) {
        let Some(index) = key.strip_prefix("packages") else {
            continue;
        };
        let index_ok = index.is_empty()
            || index
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()));
        if index_ok {
            asked = true;
            names.push(value.to_ascii_lowercase());
        }
    }
    if !asked {
        return Err("the form body names no packages[]".into());
    }
    Ok(valid_names(names))
}

/// The names and lists of a filter API request: JSON `{"packages": ["pkg://composer/a/b",
/// …], "lists": ["malware", …]}`. Names as in [`advisory_request`].
pub fn filter_request(body: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let packages = json
        .get("packages")
        .and_then(Value::as_array)
        .ok_or("no \"packages\" list in the request")?;
    let names = packages
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|p| PURL_PREFIXES.iter().find_map(|pre| p.strip_prefix(pre)))
        .map(str::to_ascii_lowercase)
        .collect();
    let lists = json
        .get("lists")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    Ok((valid_names(names), lists))
}

fn valid_names(mut names: Vec<String>) -> Vec<String> {
    names.retain(|n| is_package_name(n));
    names.sort();
    names.dedup();
    names
}

/// The body of a filter API request to an upstream.
pub fn filter_upstream_request(names: &[String], lists: &[String]) -> Value {
    let purls: Vec<String> = names
        .iter()
        .map(|n| format!("{}{n}", PURL_PREFIXES[0]))
        .collect();
    json!({ "packages": purls, "lists": lists })
}

/// An advisory API answer, `{"advisories": {"a/b": [ … ]}}`, by lower-cased name. PHP writes
/// an empty map as `[]`.
pub fn advisory_answer(json: &Value) -> Result<BTreeMap<String, Value>, String> {
    match json.get("advisories") {
        Some(Value::Object(map)) => Ok(map
            .iter()
            .filter(|(_, list)| list.is_array())
            .map(|(name, list)| (name.to_ascii_lowercase(), list.clone()))
            .collect()),
        Some(Value::Array(list)) if list.is_empty() => Ok(BTreeMap::new()),
        _ => Err("no \"advisories\" object in the answer".into()),
    }
}

/// A filter API answer, `{"filter": {"malware": [{"package": "a/b", "constraint": "*", …}]}}`,
/// regrouped by lower-cased package name: name → list → entries. Entries without a package
/// are dropped, as Composer drops them.
pub fn filter_answer(json: &Value) -> Result<BTreeMap<String, Value>, String> {
    let lists = filter_object(json)?;
    let mut by_name: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (list, entries) in lists {
        for entry in entries.as_array().into_iter().flatten() {
            let Some(name) = entry.get("package").and_then(Value::as_str) else {
                continue;
            };
            let slot = by_name.entry(name.to_ascii_lowercase()).or_default();
            if let Value::Array(kept) = slot.entry(list.clone()).or_insert(json!([])) {
                kept.push(entry.clone());
            }
        }
    }
    Ok(by_name
        .into_iter()
        .map(|(name, lists)| (name, Value::Object(lists)))
        .collect())
}

/// A filter summary, `{"filter": {"malware": {"a/b": "<constraint>"}}}`: its `filter`
/// object with only string constraints and lower-cased names.
pub fn filter_summary(json: &Value) -> Result<Value, String> {
    let mut out = Map::new();
    for (list, packages) in filter_object(json)? {
        let packages = packages
            .as_object()
            .ok_or("a summary list is not an object")?;
        let kept: Map<String, Value> = packages
            .iter()
            .filter_map(|(n, c)| Some((n.to_ascii_lowercase(), json!(c.as_str()?))))
            .collect();
        out.insert(list.clone(), Value::Object(kept));
    }
    Ok(Value::Object(out))
}

/// The `filter` object of an answer; PHP writes an empty one as `[]`.
fn filter_object(json: &Value) -> Result<impl Iterator<Item = (&String, &Value)>, String> {
    match json.get("filter") {
        Some(Value::Object(map)) => Ok(Some(map).into_iter().flatten()),
        Some(Value::Array(list)) if list.is_empty() => Ok(None.into_iter().flatten()),
        _ => Err("no \"filter\" object in the answer".into()),
    }
}

/// A `list` answer, `{"packageNames": [ … ]}`.
pub fn list_answer(json: &Value) -> Result<Vec<String>, String> {
    let names = json
        .get("packageNames")
        .and_then(Value::as_array)
        .ok_or("no \"packageNames\" list in the answer")?;
    Ok(names
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_ascii_lowercase)
        .collect())
}

/// The advisories of several upstreams for `names`, in priority order: each name's lists
/// concatenated, an advisory another upstream already gave (same `advisoryId`) once. A name
/// is in the answer when one upstream answered for it.
pub fn merge_advisories(names: &[String], answers: &[BTreeMap<String, Value>]) -> Value {
    let mut out = Map::new();
    for name in names {
        let mut seen = HashSet::new();
        let mut merged = None;
        for list in answers.iter().filter_map(|a| a.get(name)?.as_array()) {
            let merged = merged.get_or_insert_with(Vec::new);
            for advisory in list {
                let id = advisory.get("advisoryId").and_then(Value::as_str);
                if id.is_none_or(|id| seen.insert(id.to_string())) {
                    merged.push(advisory.clone());
                }
            }
        }
        if let Some(list) = merged {
            out.insert(name.clone(), Value::Array(list));
        }
    }
    json!({ "advisories": out })
}

/// Several filter summaries (each a [`filter_summary`]) as one: list → package → constraint,
/// two upstreams' constraints for one package joined with ` || ` (either matches).
pub fn merge_filter_summaries(summaries: &[Value]) -> Value {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for summary in summaries.iter().filter_map(Value::as_object) {
        for (list, packages) in summary {
            let merged = out.entry(list.clone()).or_default();
            for (name, constraint) in packages.as_object().into_iter().flatten() {
                let Some(constraint) = constraint.as_str() else {
                    continue;
                };
                let kept = merged.entry(name.clone()).or_default();
                if !kept.iter().any(|c| c == constraint) {
                    kept.push(constraint.to_string());
                }
            }
        }
    }
    let filter: Map<String, Value> = out
        .into_iter()
        .map(|(list, packages)| {
            let packages: Map<String, Value> = packages
                .into_iter()
                .map(|(name, constraints)| (name, json!(constraints.join(" || "))))
                .collect();
            (list, Value::Object(packages))
        })
        .collect();
    json!({ "filter": filter })
}

/// The filter entries (each upstream's as from [`filter_answer`], by name) of `names` in the
/// lists asked for (all when none is named), concatenated per list in priority order.
pub fn merge_filter_entries(
    names: &[String],
    lists: &[String],
    answers: &[BTreeMap<String, Value>],
) -> Value {
    let mut out = Map::new();
    for answer in answers {
        for by_list in names.iter().filter_map(|n| answer.get(n)?.as_object()) {
            for (list, entries) in by_list {
                if !lists.is_empty() && !lists.contains(list) {
                    continue;
                }
                if let Value::Array(kept) = out.entry(list.clone()).or_insert(json!([])) {
                    kept.extend(entries.as_array().into_iter().flatten().cloned());
                }
            }
        }
    }
    json!({ "filter": out })
}

/// The filter entries a summary implies for `names` (an upstream that publishes a summary but
/// no API): `{"package", "constraint"}` each, by name as from [`filter_answer`].
pub fn entries_from_summary(summary: &Value, names: &[String]) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (list, packages) in summary.as_object().into_iter().flatten() {
        for name in names {
            if let Some(constraint) = packages.get(name).and_then(Value::as_str) {
                let entry = json!({ "package": name, "constraint": constraint });
                out.entry(name.clone())
                    .or_default()
                    .insert(list.clone(), json!([entry]));
            }
        }
    }
    out.into_iter()
        .map(|(n, l)| (n, Value::Object(l)))
        .collect()
}

/// A `list` query: Composer's `?filter=` (a name pattern, `*` any text), `?vendor=` and
/// `?type=`; anything else is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    filter: Option<String>,
    vendor: Option<String>,
    package_type: Option<String>,
}

impl ListQuery {
    pub fn parse(query: &str) -> Self {
        let mut q = ListQuery::default();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let value = Some(value.to_ascii_lowercase()).filter(|v| !v.is_empty());
            match &*key {
                "filter" => q.filter = value,
                "vendor" => q.vendor = value,
                "type" => q.package_type = value,
                _ => {}
            }
        }
        q
    }

    /// The query in one canonical form: the cache key, and what upstreams are asked.
    pub fn canonical(&self) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("filter", &self.filter),
            ("vendor", &self.vendor),
            ("type", &self.package_type),
        ] {
            if let Some(v) = value {
                out.append_pair(key, v);
            }
        }
        out.finish()
    }

    /// Whether a name from a list of names alone matches. With `type` nothing does: a name
    /// alone does not tell its type.
    pub fn matches(&self, name: &str) -> bool {
        self.package_type.is_none()
            && self.vendor.as_ref().is_none_or(|v| {
                name.strip_prefix(v.as_str())
                    .is_some_and(|r| r.starts_with('/'))
            })
            && self.filter.as_ref().is_none_or(|f| glob_matches(f, name))
    }
}

/// Composer's name patterns (`BasePackage::packageNameToRegexp`): `*` is any text, the rest
/// literal, the whole name matched.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests;

//! Views: what each client is entitled to. A `[[view]]` is a Composer repository at
//! `<public_url>/<name>/` over some of the upstreams (accounts included), optionally narrowed
//! by package-name patterns; client tokens bound to views work only there.
//!
//! Ownership stays global: a name belongs to the repository that owns it among all upstreams,
//! and a view serves it only when that repository is in the view and one of the view's own
//! accounts lists it. So a lower upstream inside a view never fills a name that a repository
//! outside it owns (dependency confusion, per view), and an agency's client never installs
//! what only another client's account bought.
//!
//! The definitions are swapped whole on a configuration reload; requests in flight keep the
//! set they started with.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http::HeaderValue;

use crate::cache::metadata::View;
use crate::composer::Document;
use crate::config::ViewConfig;
use crate::upstreams::{Upstream, Upstreams};

/// A view's `packages.json` and every upstream root it was built from.
pub(crate) type BuiltRoot = (Vec<Option<Arc<View>>>, Document);

/// One view, resolved against the running upstreams.
pub struct ClientView {
    pub name: Arc<str>,
    pub config: ViewConfig,
    /// Where it is served, without trailing slash.
    pub url: String,
    /// Its upstreams, in the global priority order.
    pub members: Vec<Arc<Upstream>>,
    /// When this definition took effect: a view's documents are never older, so a client
    /// revalidating after the view changed gets the new answer.
    pub since: SystemTime,
    /// `since` as a `Last-Modified` value, formatted once rather than per answer.
    pub since_header: HeaderValue,
    /// Suffix of every `ETag` in this view: validators are per view.
    pub etag_suffix: String,
    /// The view's `packages.json`, and the upstream roots it was built from (held, so a newer
    /// root can never be taken for one of them).
    pub(crate) root: Mutex<Option<BuiltRoot>>,
}

impl ClientView {
    /// Whether `upstream` is one of the view's.
    pub fn includes(&self, upstream: &Upstream) -> bool {
        self.members
            .iter()
            .any(|m| std::ptr::eq(m.as_ref(), upstream))
    }

    /// The view's `ETag` for a document whose own is `etag`: another view's validators never
    /// match, so a client switching views never gets a 304 for what it may not have.
    pub fn etag(&self, etag: &HeaderValue) -> HeaderValue {
        let own = etag.to_str().unwrap_or_default().trim_end_matches('"');
        HeaderValue::from_str(&format!("{own}-{}\"", self.etag_suffix))
            .unwrap_or_else(|_| etag.clone())
    }
}

/// The configured views.
#[derive(Default)]
pub struct Views {
    list: Vec<Arc<ClientView>>,
}

impl Views {
    /// Resolves `configs` against the running upstreams. An upstream name the running proxy
    /// does not have (added to the file since start: upstreams change only on a restart) is an
    /// error, so a reload that needs a restart keeps the views that work.
    pub fn new(
        configs: &[ViewConfig],
        upstreams: &Upstreams,
        public_url: &str,
    ) -> Result<Self, String> {
        let since = SystemTime::now();
        let stamp = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let since_header = HeaderValue::from_str(&httpdate::fmt_http_date(since))
            .map_err(|e| format!("cannot state when the views took effect: {e}"))?;
        let mut list = Vec::with_capacity(configs.len());
        for config in configs {
            if upstreams.named(&config.name).is_some() {
                return Err(format!(
                    "view {:?} has the name of a running upstream",
                    config.name
                ));
            }
            let mut members = Vec::with_capacity(config.upstreams.len());
            for upstream in upstreams.iter() {
                if config.upstreams.iter().any(|n| n == &*upstream.name) {
                    members.push(upstream.clone());
                }
            }
            if let Some(missing) = config
                .upstreams
                .iter()
                .find(|n| upstreams.named(n).is_none())
            {
                return Err(format!(
                    "view {:?} names upstream {missing:?}, which the running proxy does not have \
                     (a new [[upstream]] table needs a restart)",
                    config.name
                ));
            }
            list.push(Arc::new(ClientView {
                name: config.name.as_str().into(),
                url: format!("{public_url}/{}", config.name),
                members,
                since,
                since_header: since_header.clone(),
                etag_suffix: format!("{}-{stamp}", config.name),
                config: config.clone(),
                root: Mutex::new(None),
            }));
        }
        Ok(Self { list })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ClientView>> {
        self.list.iter().find(|v| &*v.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ClientView>> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Where a request is answered: which repository it asked.
#[derive(Clone)]
pub enum Scope {
    /// `public_url` itself: every upstream.
    Merged,
    /// `<public_url>/<upstream>/`: that upstream alone.
    Upstream(Arc<Upstream>),
    /// `<public_url>/<view>/`.
    View(Arc<ClientView>),
}

impl Scope {
    /// The view's name, for logs and metrics.
    pub fn view(&self) -> Option<&Arc<str>> {
        match self {
            Scope::View(view) => Some(&view.name),
            Scope::Merged | Scope::Upstream(_) => None,
        }
    }
}

/// What a token bound to views may reach; `None` (organisation-wide, or no token) reaches
/// everything the allowlist lets in.
#[derive(Clone)]
pub struct Binding {
    pub token: Arc<str>,
    /// The token's views that exist (a view removed from the configuration is gone from here).
    pub views: Vec<Arc<ClientView>>,
    /// The view names the token carries, existing or not, for its refusals.
    pub names: Vec<Arc<str>>,
}

impl Binding {
    /// Whether the token may ask `scope` at all. Package routes under an upstream's own URL are
    /// checked further, name by name ([`Binding::admits_package`]).
    pub fn may_enter(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Merged => false,
            Scope::View(view) => self.views.iter().any(|v| Arc::ptr_eq(v, view)),
            Scope::Upstream(upstream) => self.views.iter().any(|v| v.includes(upstream)),
        }
    }

    /// Whether one of the token's views that includes `upstream` admits package `name`: what
    /// a bound token may fetch under that upstream's own URL (lock files carry those dist URLs).
    pub fn admits_package(&self, upstream: &Upstream, name: &str) -> bool {
        self.view_admitting(upstream, name).is_some()
    }

    /// The first of the token's views that includes `upstream` and admits package `name`: the
    /// view a download under that upstream's own URL (where views point dists) was made in.
    pub fn view_admitting(&self, upstream: &Upstream, name: &str) -> Option<&Arc<ClientView>> {
        self.views
            .iter()
            .find(|v| v.includes(upstream) && v.config.admits(name))
    }

    /// Whether `upstream` may serve this token (an account standing in for another must be
    /// one of the token's views' own).
    pub fn allows_account(&self, upstream: &Upstream) -> bool {
        self.views.iter().any(|v| v.includes(upstream))
    }

    /// The views named with their URLs, for the refusal's warning.
    pub fn described(&self) -> Vec<(String, Option<String>)> {
        self.names
            .iter()
            .map(|name| {
                let url = self
                    .views
                    .iter()
                    .find(|v| &v.name == name)
                    .map(|v| format!("{}/", v.url));
                (name.to_string(), url)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_views_etag_differs_from_the_documents_and_from_other_views() {
        let view = |name: &str| ClientView {
            name: name.into(),
            config: ViewConfig {
                name: name.into(),
                upstreams: Vec::new(),
                include: Vec::new(),
                exclude: Vec::new(),
            },
            url: String::new(),
            members: Vec::new(),
            since: SystemTime::UNIX_EPOCH,
            since_header: HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
            etag_suffix: format!("{name}-1"),
            root: Mutex::new(None),
        };
        let etag = HeaderValue::from_static("\"abc\"");
        let a = view("a").etag(&etag);
        let b = view("b").etag(&etag);
        assert_eq!(a, HeaderValue::from_static("\"abc-a-1\""));
        assert_ne!(a, b);
        assert_ne!(a, etag);
    }
}

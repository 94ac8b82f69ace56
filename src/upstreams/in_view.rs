//! The upstreams as one view sees them: which of its accounts serves a name, and its
//! `packages.json`. Ownership is decided among all upstreams first; the view only narrows it.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::future::join_all;

use super::owner::{account_answer, AccountAnswer};
use super::{root_document, Upstream, Upstreams};
use crate::cache::metadata::{CacheStatus, View};
use crate::composer::Document;
use crate::error::ProxyError;
use crate::upstream::KeyVerdict;
use crate::views::ClientView;

impl Upstreams {
    /// The repository (index into `repositories`) an upstream is an account of.
    fn repository_of(&self, upstream: &Upstream) -> Option<usize> {
        let index = self
            .list
            .iter()
            .position(|u| std::ptr::eq(u.as_ref(), upstream))?;
        self.repositories.iter().position(|r| r.contains(&index))
    }

    /// The account of `view` that serves `name`, or `None` when the name is not in the view:
    /// the view's patterns leave it out, no upstream has it, the repository that owns it among
    /// all upstreams is not in the view, or none of the view's accounts lists it.
    pub async fn account_in_view(
        &self,
        view: &ClientView,
        name: &str,
    ) -> Result<Option<Arc<Upstream>>, ProxyError> {
        if !view.config.admits(name) {
            return Ok(None);
        }
        let Some(owner) = self.owner(name).await? else {
            return Ok(None);
        };
        if view.includes(&owner) {
            return Ok(Some(owner));
        }
        let repository = self.repository_of(&owner);
        for account in &view.members {
            if self.repository_of(account) != repository {
                continue;
            }
            match account_answer(account, name).await {
                AccountAnswer::Lists => return Ok(Some(account.clone())),
                AccountAnswer::RejectedListing(e) => {
                    return Err(ProxyError::AccountRejected {
                        upstream: account.name.to_string(),
                        source: Box::new(e),
                    })
                }
                AccountAnswer::Lacks
                | AccountAnswer::RejectedUnseen(_)
                | AccountAnswer::Unknown(_) => {}
            }
        }
        Ok(None)
    }

    /// The view's `packages.json`: as the merged one, over the view's upstreams, at the view's
    /// URL, with `available-packages` limited to the names in the view when that can be told
    /// without asking upstream for each name.
    pub async fn view_root(
        &self,
        view: &ClientView,
    ) -> Result<(Document, CacheStatus), ProxyError> {
        // Every upstream's root: ownership is global, so names the view's accounts list may
        // belong to a repository outside it.
        let answers = join_all(self.list.iter().map(|u| u.metadata.view())).await;
        let mut views = Vec::with_capacity(answers.len());
        let mut status = CacheStatus::Hit;
        let mut first_error = None;
        for (answer, upstream) in answers.into_iter().zip(&self.list) {
            match answer {
                Ok((root, cache)) => {
                    if cache == CacheStatus::Stale {
                        status = CacheStatus::Stale;
                    }
                    views.push(Some(root));
                }
                Err(e) => {
                    // A rejected account's last listing still says what it had.
                    let last = (upstream.client.key_verdict() == KeyVerdict::Rejected)
                        .then(|| upstream.metadata.last_view())
                        .flatten();
                    if view.includes(upstream) {
                        status = CacheStatus::Stale;
                        first_error.get_or_insert(e);
                    }
                    views.push(last);
                }
            }
        }
        let members: Vec<Option<Arc<View>>> = self
            .list
            .iter()
            .zip(&views)
            .filter(|(u, _)| view.includes(u))
            .map(|(_, v)| v.clone())
            .collect();
        if members.iter().all(Option::is_none) {
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        let mut cached = view.root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_from, doc)) = cached.as_ref() {
            let same = |a: &Option<Arc<View>>, b: &Option<Arc<View>>| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if built_from.len() == views.len()
                && built_from.iter().zip(&views).all(|(a, b)| same(a, b))
            {
                return Ok((doc.clone(), status));
            }
        }
        let available = self.names_in_view(view, &views);
        let available: Option<Vec<&String>> = available.as_ref().map(|n| n.iter().collect());
        let doc = root_document(&view.url, &members, available, view.since);
        *cached = Some((views, doc.clone()));
        Ok((doc, status))
    }

    /// Every name in the view, when each of its upstreams lists all its names and the owner of
    /// each can be told from the roots at hand; `None` otherwise (the view is then open-ended:
    /// Composer asks for each name, and each is decided on its own).
    fn names_in_view(
        &self,
        view: &ClientView,
        views: &[Option<Arc<View>>],
    ) -> Option<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        for (i, upstream) in self.list.iter().enumerate() {
            if !view.includes(upstream) {
                continue;
            }
            let listed = views[i].as_ref()?.finite_names()?;
            let repository = self.repository_of(upstream);
            for name in listed {
                if !view.config.admits(name) || names.contains(name) {
                    continue;
                }
                if self.owning_repository(name, views)? == repository {
                    names.insert(name.clone());
                }
            }
        }
        Some(names)
    }

    /// The repository that owns `name` by the roots at hand: `Some(None)` when none lists it,
    /// `None` when that cannot be told (a root missing, or an open-ended one asked first).
    fn owning_repository(&self, name: &str, views: &[Option<Arc<View>>]) -> Option<Option<usize>> {
        for (r, accounts) in self.repositories.iter().enumerate() {
            for &i in accounts {
                if views[i].as_ref()?.knows(name)? {
                    return Some(Some(r));
                }
            }
        }
        Some(None)
    }
}

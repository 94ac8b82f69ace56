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
        let available: Option<Vec<&String>> = self
            .names_in_view(view, &views)
            .map(|n| n.into_iter().collect());
        let doc = root_document(&view.url, &members, available, view.since);
        *cached = Some((views, doc.clone()));
        Ok((doc, status))
    }

    /// What each of the view's upstreams brings into it by the view's rule over the last
    /// listings seen (nothing is asked upstream): how many names, or `None` when open-ended.
    pub fn view_counts(&self, view: &ClientView) -> Vec<(String, Option<usize>)> {
        let roots: Vec<Option<Arc<View>>> =
            self.list.iter().map(|u| u.metadata.last_view()).collect();
        let members = member_names(
            &self.repositories,
            &roots,
            |i| view.includes(&self.list[i]),
            |name| view.config.admits(name),
        );
        self.list
            .iter()
            .zip(members)
            .filter_map(|(upstream, member)| {
                let count = match member? {
                    MemberNames::Listed(names) => Some(names.len()),
                    MemberNames::Unlisted | MemberNames::OwnerUnknown => None,
                };
                Some((upstream.name.to_string(), count))
            })
            .collect()
    }

    /// Every name in the view, when each of its upstreams lists all its names and the owner of
    /// each can be told from the roots at hand; `None` otherwise (the view is then open-ended:
    /// Composer asks for each name, and each is decided on its own).
    fn names_in_view<'a>(
        &self,
        view: &ClientView,
        views: &'a [Option<Arc<View>>],
    ) -> Option<BTreeSet<&'a String>> {
        let members = member_names(
            &self.repositories,
            views,
            |i| view.includes(&self.list[i]),
            |name| view.config.admits(name),
        );
        let mut names = BTreeSet::new();
        for member in members.into_iter().flatten() {
            match member {
                MemberNames::Listed(listed) => names.extend(listed),
                MemberNames::Unlisted | MemberNames::OwnerUnknown => return None,
            }
        }
        Some(names)
    }
}

/// What ownership needs of an upstream's root: whether it has a name, and all its names when
/// that list is complete. Implemented by the running proxy's roots and by `check`'s listings,
/// so both decide what a view holds by the same rule.
pub trait NameList {
    /// Whether it has `name`: `None` when it does not say (open-ended).
    fn has(&self, name: &str) -> Option<bool>;
    /// Every name it has, when the list is complete.
    fn complete_list(&self) -> Option<impl Iterator<Item = &String>>;
}

impl NameList for View {
    fn has(&self, name: &str) -> Option<bool> {
        View::knows(self, name)
    }

    fn complete_list(&self) -> Option<impl Iterator<Item = &String>> {
        View::finite_names(self).map(<[String]>::iter)
    }
}

impl NameList for BTreeSet<String> {
    fn has(&self, name: &str) -> Option<bool> {
        Some(self.contains(name))
    }

    fn complete_list(&self) -> Option<impl Iterator<Item = &String>> {
        Some(self.iter())
    }
}

impl<T: NameList> NameList for Arc<T> {
    fn has(&self, name: &str) -> Option<bool> {
        T::has(self, name)
    }

    fn complete_list(&self) -> Option<impl Iterator<Item = &String>> {
        T::complete_list(self)
    }
}

impl<T: NameList> NameList for &T {
    fn has(&self, name: &str) -> Option<bool> {
        T::has(self, name)
    }

    fn complete_list(&self) -> Option<impl Iterator<Item = &String>> {
        T::complete_list(self)
    }
}

/// What one of a view's upstreams brings into it.
#[derive(Debug, PartialEq, Eq)]
pub enum MemberNames<'a> {
    /// The names of its listing that are in the view: their owner among all upstreams is its
    /// repository, and the view's patterns admit them.
    Listed(BTreeSet<&'a String>),
    /// It has no complete list (open-ended, or no root at hand): it brings any name it serves
    /// that no higher repository owns, decided name by name.
    Unlisted,
    /// Some name it lists may be owned by a higher repository whose root does not say
    /// (open-ended, or missing).
    OwnerUnknown,
}

/// The view's rule over roots at hand, pure: for each upstream (by index into `roots`) that
/// `member` says is in the view, what it brings; `None` for the others. `repositories` are the
/// upstreams grouped by repository in priority order ([`repositories`]). A listed name is in
/// the view when `admits` lets it in and the repository that owns it among all upstreams is
/// the member's own: a lower upstream never fills a name a higher one owns, in the view or not.
pub fn member_names<'a, L: NameList>(
    repositories: &[Vec<usize>],
    roots: &'a [Option<L>],
    member: impl Fn(usize) -> bool,
    admits: impl Fn(&str) -> bool,
) -> Vec<Option<MemberNames<'a>>> {
    let owner_of = |name: &str| -> Option<Option<usize>> {
        for (r, accounts) in repositories.iter().enumerate() {
            for &i in accounts {
                if roots[i].as_ref()?.has(name)? {
                    return Some(Some(r));
                }
            }
        }
        Some(None)
    };
    (0..roots.len())
        .map(|i| {
            if !member(i) {
                return None;
            }
            let Some(listed) = roots[i].as_ref().and_then(NameList::complete_list) else {
                return Some(MemberNames::Unlisted);
            };
            let own = repositories.iter().position(|r| r.contains(&i));
            let mut names = BTreeSet::new();
            for name in listed.filter(|n| admits(n)) {
                match owner_of(name) {
                    Some(owner) if owner == own => {
                        names.insert(name);
                    }
                    Some(_) => {}
                    None => return Some(MemberNames::OwnerUnknown),
                }
            }
            Some(MemberNames::Listed(names))
        })
        .collect()
}

/// Upstreams grouped into repositories (the same `url`: accounts of one repository), in
/// priority order (where each repository's first upstream stands): indexes into `urls`.
pub fn repositories<T: PartialEq>(urls: &[T]) -> Vec<Vec<usize>> {
    let mut repositories: Vec<Vec<usize>> = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        match repositories.iter_mut().find(|r| urls[r[0]] == *url) {
            Some(repository) => repository.push(i),
            None => repositories.push(vec![i]),
        }
    }
    repositories
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Option<BTreeSet<String>> {
        Some(names.iter().map(|n| n.to_string()).collect())
    }

    fn listed<'a>(m: &Option<MemberNames<'a>>) -> Vec<&'a str> {
        match m {
            Some(MemberNames::Listed(names)) => names.iter().map(|n| n.as_str()).collect(),
            other => panic!("not a listed member: {other:?}"),
        }
    }

    #[test]
    fn accounts_of_one_url_form_one_repository_in_priority_order() {
        let urls = ["m", "v", "m", "p"];
        assert_eq!(repositories(&urls), vec![vec![0, 2], vec![1], vec![3]]);
    }

    #[test]
    fn a_lower_member_never_brings_a_name_a_higher_repository_owns() {
        // Two accounts of one repository (0, 2), a vendor repository (1) that also lists the
        // first account's extension, an open-ended one last (3).
        let roots = vec![
            list(&["m/shared", "x/extension"]),
            list(&["x/extension", "v/theme"]),
            list(&["m/shared", "m/client"]),
            None,
        ];
        let repos = repositories(&["m", "v", "m", "p"]);
        let in_view = [false, true, true, true];
        let brought = member_names(&repos, &roots, |i| in_view[i], |_| true);
        assert!(brought[0].is_none());
        assert_eq!(listed(&brought[1]), vec!["v/theme"]);
        assert_eq!(listed(&brought[2]), vec!["m/client", "m/shared"]);
        assert_eq!(brought[3], Some(MemberNames::Unlisted));

        // The view's patterns narrow what its members bring.
        let brought = member_names(&repos, &roots, |i| in_view[i], |n| n != "m/shared");
        assert_eq!(listed(&brought[2]), vec!["m/client"]);
    }

    #[test]
    fn an_owner_that_cannot_be_told_makes_the_member_unknown() {
        // The open-ended repository first: any name might be its.
        let roots = vec![None, list(&["v/theme"])];
        let repos = repositories(&["p", "v"]);
        let brought = member_names(&repos, &roots, |_| true, |_| true);
        assert_eq!(brought[0], Some(MemberNames::Unlisted));
        assert_eq!(brought[1], Some(MemberNames::OwnerUnknown));
        // A name the view's patterns leave out is never asked about.
        let brought = member_names(&repos, &roots, |_| true, |n| n != "v/theme");
        assert_eq!(listed(&brought[1]), Vec::<&str>::new());
    }
}

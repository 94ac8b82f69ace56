//! Who owns a package name: Composer's canonical rule across repositories, with the accounts of
//! one repository (tables with the same URL) answering together.
//!
//! A repository has a name when any of its accounts lists it. An account whose key pair is
//! rejected cannot be asked, but its last listing (kept on disk, and in the bucket when there is
//! one) still says what it had: a name only that listing has is refused with a 502 naming the
//! account, never a 404 and never a lower repository's package; every other name is decided as
//! if the account were absent. With no listing of it at all (an empty cache), the names only it
//! would own cannot be told apart: they fall to lower repositories, except under a vendor prefix
//! another account of the repository lists. Without this, one disabled key stopped every install
//! (every lookup asked the rejected account first and gave up).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Listed, Upstream, Upstreams};
use crate::cache::metadata::View;
use crate::error::ProxyError;

/// What one account of a repository says about a name, its rejection accounted for.
#[derive(Debug)]
pub enum AccountAnswer {
    Lists,
    Lacks,
    /// Its key pair is rejected, and its last listing names the package.
    RejectedListing(ProxyError),
    /// Its key pair is rejected, and no listing of it was ever seen.
    RejectedUnseen(ProxyError),
    /// It could not be asked for another reason (unreachable with nothing cached, erroring).
    Unknown(ProxyError),
}

/// What a repository, all its accounts together, says about a name. Indexes are positions
/// among the repository's accounts.
#[derive(Debug)]
pub enum RepositoryAnswer {
    /// That account lists it and serves it.
    Owns(usize),
    Lacks,
    /// Only the last listing of that rejected account has it.
    OnlyRejected(usize, ProxyError),
    /// That account could not be asked, and it might have it.
    Unknown(usize, ProxyError),
    /// The accounts that answered lack it; that rejected account, whose listing was never
    /// seen, might have it.
    Unseen(usize, ProxyError),
}

/// A repository's answer from its accounts' answers in priority order. Pure: the answers are
/// produced lazily, so accounts after the first that lists the name are never asked.
///
/// Precedence when none lists it: a rejected account known to list it (its refusal is the
/// truth), then an account that could not be asked (it may list it), then a rejected account
/// never seen, which counts only when another account did answer: a repository none of whose
/// accounts could say anything stays "could not be asked", as it always was.
pub fn repository_answer(answers: impl IntoIterator<Item = AccountAnswer>) -> RepositoryAnswer {
    let mut only_rejected = None;
    let mut unknown = None;
    let mut unseen = None;
    let mut answered = false;
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            AccountAnswer::Lists => return RepositoryAnswer::Owns(i),
            AccountAnswer::Lacks => answered = true,
            AccountAnswer::RejectedListing(e) => {
                only_rejected.get_or_insert((i, e));
            }
            AccountAnswer::RejectedUnseen(e) => {
                unseen.get_or_insert((i, e));
            }
            AccountAnswer::Unknown(e) => {
                unknown.get_or_insert((i, e));
            }
        }
    }
    if let Some((i, e)) = only_rejected {
        return RepositoryAnswer::OnlyRejected(i, e);
    }
    if let Some((i, e)) = unknown {
        return RepositoryAnswer::Unknown(i, e);
    }
    match unseen {
        Some((i, e)) if answered => RepositoryAnswer::Unseen(i, e),
        Some((i, e)) => RepositoryAnswer::Unknown(i, e),
        None => RepositoryAnswer::Lacks,
    }
}

/// `vendor/` of a package name.
fn vendor_prefix(name: &str) -> Option<&str> {
    name.find('/').map(|slash| &name[..=slash])
}

impl Upstreams {
    /// The upstream that owns `name` (a package name, without `~dev`), or `None` when every
    /// repository said it has no such package.
    pub async fn owner(&self, name: &str) -> Result<Option<Arc<Upstream>>, ProxyError> {
        for repository in &self.repositories {
            let accounts: Vec<&Arc<Upstream>> = repository.iter().map(|&i| &self.list[i]).collect();
            let mut answers = Vec::with_capacity(accounts.len());
            for account in &accounts {
                let answer = account_answer(account, name).await;
                let settled = matches!(answer, AccountAnswer::Lists);
                answers.push(answer);
                if settled {
                    break;
                }
            }
            match repository_answer(answers) {
                RepositoryAnswer::Owns(i) => return Ok(Some(accounts[i].clone())),
                RepositoryAnswer::Lacks => {}
                RepositoryAnswer::OnlyRejected(i, error) => {
                    return Err(ProxyError::AccountRejected {
                        upstream: accounts[i].name.to_string(),
                        source: Box::new(error),
                    })
                }
                RepositoryAnswer::Unknown(i, error) => {
                    return Err(ProxyError::OwnerUnknown {
                        upstream: accounts[i].name.to_string(),
                        source: Box::new(error),
                    })
                }
                RepositoryAnswer::Unseen(i, error) => {
                    // What a rejected account never showed may still be its own: a lower
                    // repository may not take a name under a vendor the repository has.
                    let vendor = vendor_prefix(name).unwrap_or(name);
                    if accounts.iter().any(|a| a.metadata.lists_vendor(vendor)) {
                        return Err(ProxyError::OwnerUnknown {
                            upstream: accounts[i].name.to_string(),
                            source: Box::new(error),
                        });
                    }
                    warn_unseen(accounts[i]);
                }
            }
        }
        Ok(None)
    }

    /// The other accounts of `upstream`'s repository (tables with the same URL).
    fn accounts_beside<'a>(
        &'a self,
        upstream: &'a Upstream,
    ) -> impl Iterator<Item = &'a Arc<Upstream>> {
        self.list
            .iter()
            .filter(move |u| !std::ptr::eq(u.as_ref(), upstream))
            .filter(move |u| u.client.base() == upstream.client.base())
    }

    /// The names `upstream`'s last listing has and no other account of its repository lists:
    /// what losing its key pair costs. `None` when its listing was never seen.
    pub fn only_listed_by(&self, upstream: &Upstream) -> Option<Vec<String>> {
        let view = upstream.metadata.last_view()?;
        let others: Vec<Arc<View>> = self
            .accounts_beside(upstream)
            .filter_map(|o| o.metadata.last_view())
            .collect();
        Some(
            view.names()
                .iter()
                .filter(|name| !others.iter().any(|v| v.knows(name) == Some(true)))
                .cloned()
                .collect(),
        )
    }

    /// What losing `upstream` costs while its key pair is rejected, for `/readyz`: the
    /// packages only its last listing has, or that it was never seen.
    pub fn rejected_account_cost(&self, upstream: &Upstream) -> String {
        let Some(only) = self.only_listed_by(upstream) else {
            return if self.accounts_beside(upstream).next().is_none() {
                "its listing was never seen, so its repository cannot be asked".into()
            } else {
                "its listing was never seen (empty cache), so the packages only it would own \
                 cannot be told apart: they go to lower repositories unless another account lists their \
                 vendor"
                    .into()
            };
        };
        let examples: Vec<&str> = only.iter().take(5).map(String::as_str).collect();
        let more = if only.len() > examples.len() {
            ", …"
        } else {
            ""
        };
        format!(
            "its last listing is kept: the {} package(s) only it lists answer 502 ({}{more}); \
             every other package is served as if it were absent",
            only.len(),
            examples.join(", ")
        )
    }
}

/// One account's answer: a rejected one answers from its last listing.
pub(super) async fn account_answer(account: &Upstream, name: &str) -> AccountAnswer {
    match account.metadata.lists(name).await {
        Listed::Yes => {
            account.unseen_warned.store(false, Ordering::Relaxed);
            AccountAnswer::Lists
        }
        Listed::No => {
            account.unseen_warned.store(false, Ordering::Relaxed);
            AccountAnswer::Lacks
        }
        Listed::Unknown(e) if e.is_key_rejection() => match account.metadata.last_listed(name) {
            Some(true) => AccountAnswer::RejectedListing(e),
            Some(false) => AccountAnswer::Lacks,
            None => AccountAnswer::RejectedUnseen(e),
        },
        Listed::Unknown(e) => AccountAnswer::Unknown(e),
    }
}

/// Once per rejection: names only the account would own now fall to lower repositories.
fn warn_unseen(account: &Upstream) {
    if !account.unseen_warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            event = "rejected_account_unseen",
            upstream = %account.name,
            "the key pair of upstream account {:?} is rejected and composer-proxy never saw its \
             listing, so the packages only it would own cannot be told apart: they are looked \
             up in lower repositories, except under a vendor another account of the repository \
             lists. Restore or replace the key pair.",
            &*account.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountAnswer::{Lacks, Lists, RejectedListing, RejectedUnseen, Unknown};

    fn rejected() -> ProxyError {
        ProxyError::KeysRejected {
            status: 401,
            keys_configured: true,
        }
    }

    fn unreachable() -> ProxyError {
        ProxyError::Upstream(crate::upstream::UpstreamError::Unreachable("down".into()))
    }

    #[test]
    fn the_first_account_that_lists_a_name_owns_it() {
        assert!(matches!(
            repository_answer([Lacks, Lists, Lists]),
            RepositoryAnswer::Owns(1)
        ));
        assert!(matches!(
            repository_answer([RejectedListing(rejected()), Lists]),
            RepositoryAnswer::Owns(1)
        ));
        assert!(matches!(
            repository_answer([Unknown(unreachable()), Lists]),
            RepositoryAnswer::Owns(1)
        ));
        assert!(matches!(
            repository_answer([Lacks, Lacks]),
            RepositoryAnswer::Lacks
        ));
        assert!(matches!(
            repository_answer(Vec::new()),
            RepositoryAnswer::Lacks
        ));
    }

    #[test]
    fn a_name_only_a_rejected_accounts_listing_has_is_refused_not_missing() {
        assert!(matches!(
            repository_answer([RejectedListing(rejected()), Lacks]),
            RepositoryAnswer::OnlyRejected(0, _)
        ));
        assert!(matches!(
            repository_answer([Lacks, RejectedListing(rejected())]),
            RepositoryAnswer::OnlyRejected(1, _)
        ));
        // Its refusal is the truth even when another account could not be asked.
        assert!(matches!(
            repository_answer([Unknown(unreachable()), RejectedListing(rejected())]),
            RepositoryAnswer::OnlyRejected(1, _)
        ));
    }

    #[test]
    fn an_account_that_could_not_be_asked_leaves_the_owner_unknown() {
        assert!(matches!(
            repository_answer([Lacks, Unknown(unreachable())]),
            RepositoryAnswer::Unknown(1, _)
        ));
        assert!(matches!(
            repository_answer([RejectedUnseen(rejected()), Unknown(unreachable())]),
            RepositoryAnswer::Unknown(1, _)
        ));
    }

    #[test]
    fn a_rejected_account_never_seen_counts_only_beside_one_that_answered() {
        assert!(matches!(
            repository_answer([RejectedUnseen(rejected()), Lacks]),
            RepositoryAnswer::Unseen(0, _)
        ));
        // Nothing of the repository is known: "could not be asked", as for one account.
        assert!(matches!(
            repository_answer([RejectedUnseen(rejected())]),
            RepositoryAnswer::Unknown(0, _)
        ));
        assert!(matches!(
            repository_answer([RejectedUnseen(rejected()), RejectedUnseen(rejected())]),
            RepositoryAnswer::Unknown(0, _)
        ));
    }

    #[test]
    fn the_vendor_prefix_keeps_its_slash() {
        assert_eq!(vendor_prefix("magento/framework"), Some("magento/"));
        assert_eq!(vendor_prefix("nameless"), None);
    }
}

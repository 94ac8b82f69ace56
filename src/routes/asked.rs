//! Who asks and what they may reach: the client token checked against the scope asked, the
//! views a token is bound to, and the usage record of what a request downloaded.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap};
use http::StatusCode;

use crate::access::Access;
use crate::error::ProxyError;
use crate::tokens::Verdict;
use crate::upstreams::Upstream;
use crate::views::{Binding, Scope, Views};
use crate::AppState;

use super::Outcome;

/// What a request asked of whom: its scope, the views its token is bound to, and whether it is
/// a HEAD.
pub(super) struct Asked {
    pub(super) scope: Scope,
    /// `None`: no token, or an organisation-wide one.
    pub(super) binding: Option<Binding>,
    /// The valid token presented, for the usage record; `None` when none was needed.
    pub(super) token: Option<Arc<str>>,
    pub(super) head: bool,
}

impl Asked {
    /// Puts an archive answer in the usage record when it delivered one (not for a HEAD).
    /// `upstream`: the account that served it, by name, and itself unless it is the release
    /// endpoint.
    pub(super) fn record_download(
        &self,
        state: &AppState,
        status: StatusCode,
        source: (&str, Option<String>),
        upstream: (Arc<str>, Option<&Upstream>),
    ) {
        if self.head || !state.usage.is_on() || !crate::usage::delivered(status) {
            return;
        }
        let (package, version) = source;
        let (name, account) = upstream;
        // Views point dists at the upstream's own URL: a bound token's download there was
        // made in the view of the token's that admits the package.
        let view = match (&self.scope, &self.binding, account) {
            (Scope::View(view), _, _) => Some(view.name.clone()),
            (Scope::Upstream(_), Some(binding), Some(account)) => binding
                .view_admitting(account, package)
                .map(|v| v.name.clone()),
            _ => None,
        };
        state.usage.record(crate::usage::Download {
            at: std::time::SystemTime::now(),
            package: package.to_string(),
            version,
            upstream: name,
            view,
            token: self.token.clone(),
        });
    }

    /// A bound token under an upstream's own URL may fetch only packages one of its views
    /// admits (a lock file names those dist URLs); anything listing the upstream's names it may
    /// not see.
    pub(super) fn check_package(
        &self,
        upstream: &Upstream,
        name: Option<&str>,
    ) -> Result<(), ProxyError> {
        match (&self.binding, name) {
            (None, _) => Ok(()),
            (Some(binding), Some(name)) if binding.admits_package(upstream, name) => Ok(()),
            (Some(binding), _) => Err(outside_views(binding)),
        }
    }

    /// Whether `account` may serve this request when another is refused: one of the view's, or
    /// of the bound token's views.
    pub(super) fn allows_account(&self, account: &Upstream) -> bool {
        match (&self.scope, &self.binding) {
            (Scope::View(view), _) => view.includes(account),
            (_, Some(binding)) => binding.allows_account(account),
            (_, None) => true,
        }
    }
}

fn outside_views(binding: &Binding) -> ProxyError {
    ProxyError::OutsideViews {
        token: binding.token.clone(),
        views: binding.described(),
    }
}

/// Checks the client token: when tokens are required, and always for a view, whose URL needs a
/// token that may use it. When they are not required, a presented token still names the client
/// in the access log, and a bad one is logged (so a rollout can be watched before
/// `require_tokens` is turned on) but not refused. Returns the views a valid token is bound
/// to (`None` for an organisation-wide one, or none) and its name.
pub(super) fn check_token(
    state: &AppState,
    access: &Access,
    headers: &HeaderMap,
    client: IpAddr,
    scope: &Scope,
    views: &Views,
    outcome: &mut Outcome,
) -> Result<(Option<Binding>, Option<Arc<str>>), ProxyError> {
    let required = access.require_tokens || matches!(scope, Scope::View(_));
    if !required && !headers.contains_key(header::AUTHORIZATION) {
        return Ok((None, None));
    }
    let (verdict, bound) = state.tokens.check_bound(headers);
    outcome.token = verdict.name().cloned();
    let view = scope.view().map(|v| &**v);
    // Logged at most once a minute per client, token and reason (`unlogged` says how many were
    // not).
    let log = |reason: &'static str| {
        state
            .tokens
            .refusals
            .admit(client, verdict.name(), reason, std::time::Instant::now())
    };
    let Some(reason) = verdict.refusal() else {
        let name = verdict.name().cloned();
        if bound.is_empty() {
            return Ok((None, name));
        }
        let binding = Binding {
            token: verdict.name().cloned().unwrap_or_else(|| "".into()),
            views: bound.iter().filter_map(|n| views.get(n).cloned()).collect(),
            names: bound.to_vec(),
        };
        if binding.may_enter(scope) {
            return Ok((Some(binding), name));
        }
        if let Some(unlogged) = log("outside_views") {
            tracing::warn!(event = "token_refused", reason = "outside_views", token = verdict.name().map(|n| &**n), view, %client, unlogged, "client token refused outside its views");
        }
        return Err(outside_views(&binding));
    };
    if !required {
        if reason != "missing" {
            if let Some(unlogged) = log(reason) {
                tracing::warn!(event = "token_refused", reason, token = verdict.name().map(|n| &**n), %client, unlogged, enforced = false, "client token would be refused (require_tokens is off)");
            }
        }
        return Ok((None, None));
    }
    if let Some(unlogged) = log(reason) {
        tracing::warn!(event = "token_refused", reason, token = verdict.name().map(|n| &**n), view, %client, unlogged, "client token refused");
    }
    Err(match verdict {
        Verdict::Disabled(name) => ProxyError::TokenDisabled(name),
        Verdict::Deleted(name) => ProxyError::TokenDeleted(name),
        Verdict::Unknown => ProxyError::TokenUnknown,
        Verdict::Unavailable => ProxyError::TokenStoreUnavailable,
        Verdict::Absent | Verdict::Valid(_) => ProxyError::TokenMissing,
    })
}

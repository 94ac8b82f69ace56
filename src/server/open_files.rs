//! The open-file limit, checked at start: "Too many open files" must never turn into a storm
//! of 500s, so the proxy serves no more connections than it has descriptors for.
//!
//! The soft limit is raised to the hard one (the default soft limit of 1024 is far below what
//! `max_connections` asks for). When even the hard limit cannot cover `max_connections`, the
//! proxy serves fewer and says so; when it cannot cover a useful minimum, it refuses to start.

use rustix::process::{getrlimit, setrlimit, Resource};

/// Descriptors kept for everything but client connections: listeners, the upstream
/// connection pools, downloads being written, the store's files, logs, the blocking pool.
pub const RESERVED: u64 = 256;
/// Per client connection: its socket, and the file of the archive being sent.
pub const PER_CONNECTION: u64 = 2;
/// Fewer connections than this is no proxy for a CI fleet: the start is refused instead.
pub const MIN_CONNECTIONS: usize = 16;

/// What `max_connections` the open-file limit allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    Enough,
    /// Only this many fit.
    Lowered(usize),
    /// Not even [`MIN_CONNECTIONS`] fit.
    TooFew,
}

/// `limit` is the soft limit in force (`None`: unlimited).
pub fn fit(limit: Option<u64>, max_connections: usize) -> Fit {
    let Some(limit) = limit else {
        return Fit::Enough;
    };
    let fits = limit.saturating_sub(RESERVED) / PER_CONNECTION;
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    if fits >= max_connections {
        Fit::Enough
    } else if fits >= MIN_CONNECTIONS {
        Fit::Lowered(fits)
    } else {
        Fit::TooFew
    }
}

/// Raises the soft open-file limit to the hard limit; the soft limit now in force.
pub fn raise() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return limit.current;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(e) => {
            tracing::warn!(error = %e, soft = ?limit.current, hard = ?limit.maximum, "cannot raise the open-file limit to its hard limit");
            limit.current
        }
    }
}

/// Raises the limit and fits `max_connections` to it: the number to serve, or why the proxy
/// cannot start.
pub fn apply(max_connections: usize) -> Result<usize, String> {
    let limit = raise();
    match fit(limit, max_connections) {
        Fit::Enough => Ok(max_connections),
        Fit::Lowered(fits) => {
            tracing::warn!(
                open_file_limit = limit,
                max_connections,
                serving = fits,
                "the open-file limit (ulimit -n) cannot cover max_connections; serving fewer connections (raise the limit, e.g. LimitNOFILE, or lower max_connections)"
            );
            Ok(fits)
        }
        Fit::TooFew => Err(format!(
            "the open-file limit ({}) leaves room for fewer than {MIN_CONNECTIONS} client connections ({RESERVED} are kept for upstreams and the cache, {PER_CONNECTION} per connection); raise it (ulimit -n, LimitNOFILE)",
            limit.unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_fits_the_descriptors_left_after_the_reserve() {
        assert_eq!(fit(None, 4096), Fit::Enough);
        assert_eq!(fit(Some(1_048_576), 4096), Fit::Enough);
        assert_eq!(fit(Some(256 + 2 * 4096), 4096), Fit::Enough);
        assert_eq!(fit(Some(256 + 2 * 4096 - 1), 4096), Fit::Lowered(4095));
        assert_eq!(fit(Some(1024), 4096), Fit::Lowered(384));
        assert_eq!(fit(Some(256 + 2 * 16), 4096), Fit::Lowered(16));
        assert_eq!(fit(Some(256 + 2 * 16 - 1), 4096), Fit::TooFew);
        assert_eq!(fit(Some(10), 1), Fit::TooFew);
        assert_eq!(fit(Some(300), 10), Fit::Enough);
    }
}

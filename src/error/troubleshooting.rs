//! docs/troubleshooting.md quotes every warning a client can be sent, with what it means and
//! what to do. The warnings are rendered here from one example of each, their changing parts
//! (names, numbers) written as `{placeholders}`, and looked up in the chapter.

use std::sync::Arc;
use std::time::Duration;

use super::*;

/// How many different warnings `status_and_warning` writes: the numbers `warning` gives out.
const WARNINGS: usize = 37;

/// Which warning an error is sent with: the arms of `status_and_warning` once more, without a
/// wildcard, so that a new variant does not compile until it is numbered here. A new warning
/// takes the next number (and `WARNINGS` grows by one), and `examples` gets an example of it,
/// which the test then looks for in docs/troubleshooting.md.
fn warning(error: &ProxyError) -> usize {
    match error {
        ProxyError::Shared(inner) => warning(inner),
        ProxyError::Via { .. } => 0,
        ProxyError::OwnerUnknown { .. } => 1,
        ProxyError::AccountRejected { .. } => 2,
        ProxyError::ApiUnavailable { .. } => 3,
        ProxyError::BadRequest(_) => 4,
        ProxyError::NotFound(_) => 5,
        ProxyError::MethodNotAllowed { .. } => 6,
        ProxyError::Forbidden(_) => 7,
        ProxyError::BadForwardedFor => 8,
        ProxyError::TokenMissing => 9,
        ProxyError::TokenUnknown => 10,
        ProxyError::TokenDisabled(_) => 11,
        ProxyError::OutsideViews { .. } => 12,
        ProxyError::TokenStoreUnavailable => 13,
        ProxyError::TokenDeleted(_) => 14,
        ProxyError::UriTooLong { .. } => 15,
        ProxyError::BodyTooLarge { .. } => 16,
        ProxyError::UnsupportedMediaType => 17,
        ProxyError::BodyTimeout(_) => 18,
        ProxyError::KeysRejected {
            keys_configured: true,
            ..
        } => 19,
        ProxyError::KeysRejected {
            keys_configured: false,
            ..
        } => 20,
        ProxyError::DownloadTokenRejected { .. } => 21,
        ProxyError::UpstreamForbidden {
            what: Resource::Archive,
        } => 22,
        ProxyError::UpstreamForbidden {
            what: Resource::Metadata,
        } => 23,
        ProxyError::UpstreamNotFound {
            what: Resource::Archive,
            ..
        } => 24,
        ProxyError::UpstreamNotFound {
            what: Resource::Metadata,
            ..
        } => 25,
        ProxyError::UpstreamStatus(_) => 26,
        ProxyError::Upstream(UpstreamError::Timeout(_)) => 27,
        ProxyError::Upstream(UpstreamError::Unreachable(_)) => 28,
        ProxyError::Upstream(UpstreamError::Tls(_)) => 29,
        ProxyError::Upstream(UpstreamError::TooManyRedirects(_)) => 30,
        ProxyError::Upstream(UpstreamError::RateLimited {
            has_token: false, ..
        }) => 31,
        ProxyError::Upstream(UpstreamError::RateLimited {
            has_token: true, ..
        }) => 32,
        // One warning for metadata the proxy cannot use, however it is unusable.
        ProxyError::Upstream(UpstreamError::Invalid(_) | UpstreamError::TooLarge { .. })
        | ProxyError::Protocol(_) => 33,
        ProxyError::ArchiveMismatch(_) => 34,
        ProxyError::Cache(_) => 35,
        ProxyError::StatusForbidden(_) => 36,
    }
}

/// An error whose warning quotes another's: `{warning}` stands for the inner one.
fn wrapping(make: impl Fn(Box<ProxyError>) -> ProxyError) -> (ProxyError, Vec<(String, String)>) {
    let inner = ProxyError::UpstreamStatus(500);
    let inner_warning = inner.status_and_warning().1;
    (
        make(Box::new(inner)),
        vec![
            (inner_warning, "{warning}".into()),
            ("up-1".into(), "{upstream}".into()),
        ],
    )
}

/// One error of each warning, with the parts of its warning that change from one error to the
/// next and the placeholders docs/troubleshooting.md writes for them.
fn examples() -> Vec<(ProxyError, Vec<(String, String)>)> {
    let replace = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(value, placeholder)| (value.to_string(), placeholder.to_string()))
            .collect()
    };
    let plain = |error: ProxyError| (error, Vec::new());
    let token: Arc<str> = Arc::from("tok-1");
    vec![
        wrapping(|source| ProxyError::Via {
            upstream: "up-1".into(),
            source,
        }),
        wrapping(|source| ProxyError::OwnerUnknown {
            upstream: "up-1".into(),
            source,
        }),
        wrapping(|source| ProxyError::AccountRejected {
            upstream: "up-1".into(),
            source,
        }),
        {
            let (error, mut pairs) = wrapping(|source| ProxyError::ApiUnavailable {
                upstream: "up-1".into(),
                what: "security advisories",
                source,
            });
            pairs.push(("security advisories".into(), "{what}".into()));
            (error, pairs)
        },
        (
            ProxyError::BadRequest("why-1".into()),
            replace(&[("why-1", "{why}")]),
        ),
        (
            ProxyError::NotFound("what-1".into()),
            replace(&[("what-1", "{what}")]),
        ),
        plain(ProxyError::MethodNotAllowed { allow: "GET, HEAD" }),
        (
            ProxyError::Forbidden([192, 0, 2, 1].into()),
            replace(&[("192.0.2.1", "{address}")]),
        ),
        (
            ProxyError::StatusForbidden([192, 0, 2, 1].into()),
            replace(&[("192.0.2.1", "{address}")]),
        ),
        plain(ProxyError::BadForwardedFor),
        plain(ProxyError::TokenMissing),
        plain(ProxyError::TokenUnknown),
        (
            ProxyError::TokenDisabled(token.clone()),
            replace(&[("tok-1", "{token}")]),
        ),
        (
            ProxyError::OutsideViews {
                token: token.clone(),
                views: vec![("view-1".into(), Some("https://proxy.example/view-1".into()))],
            },
            replace(&[
                ("https://proxy.example/view-1 (view view-1)", "{views}"),
                ("tok-1", "{token}"),
            ]),
        ),
        plain(ProxyError::TokenStoreUnavailable),
        (
            ProxyError::TokenDeleted(token),
            replace(&[("tok-1", "{token}")]),
        ),
        (
            ProxyError::UriTooLong { limit: 1024 },
            replace(&[("1024", "{limit}")]),
        ),
        (
            ProxyError::BodyTooLarge { limit: 65536 },
            replace(&[("65536", "{limit}")]),
        ),
        plain(ProxyError::UnsupportedMediaType),
        (
            ProxyError::BodyTimeout(Duration::from_secs(30)),
            replace(&[("30", "{seconds}")]),
        ),
        (
            ProxyError::KeysRejected {
                status: 401,
                keys_configured: true,
            },
            replace(&[("401", "{status}")]),
        ),
        (
            ProxyError::KeysRejected {
                status: 401,
                keys_configured: false,
            },
            replace(&[("401", "{status}")]),
        ),
        (
            ProxyError::DownloadTokenRejected { status: 401 },
            replace(&[("401", "{status}")]),
        ),
        plain(ProxyError::UpstreamForbidden {
            what: Resource::Archive,
        }),
        plain(ProxyError::UpstreamForbidden {
            what: Resource::Metadata,
        }),
        plain(ProxyError::UpstreamNotFound {
            what: Resource::Archive,
            detail: String::new(),
        }),
        (
            ProxyError::UpstreamNotFound {
                what: Resource::Metadata,
                detail: "detail-1".into(),
            },
            replace(&[("detail-1", "{detail}")]),
        ),
        (
            ProxyError::UpstreamStatus(500),
            replace(&[("500", "{status}")]),
        ),
        (
            ProxyError::Upstream(UpstreamError::Timeout("waiting for response headers")),
            replace(&[("waiting for response headers", "{during}")]),
        ),
        plain(ProxyError::Upstream(UpstreamError::Unreachable(
            "refused".into(),
        ))),
        plain(ProxyError::Upstream(UpstreamError::Tls("expired".into()))),
        (
            ProxyError::Upstream(UpstreamError::TooManyRedirects(5)),
            replace(&[("5", "{redirects}")]),
        ),
        (
            ProxyError::Upstream(UpstreamError::RateLimited {
                retry_after: Duration::from_secs(1234),
                has_token: false,
            }),
            replace(&[("1234", "{seconds}")]),
        ),
        (
            ProxyError::Upstream(UpstreamError::RateLimited {
                retry_after: Duration::from_secs(1234),
                has_token: true,
            }),
            replace(&[("1234", "{seconds}")]),
        ),
        plain(ProxyError::Upstream(UpstreamError::Invalid("bad".into()))),
        plain(ProxyError::ArchiveMismatch("sha1".into())),
        plain(ProxyError::Cache(std::io::Error::other("disk"))),
    ]
}

/// Runs of whitespace as one space, and blockquote markers gone: the chapter wraps and quotes
/// warnings that are one line each.
fn flat(text: &str) -> String {
    text.lines()
        .map(|line| line.trim_start().trim_start_matches('>'))
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_warning_has_an_example() {
    let mut numbers: Vec<usize> = examples().iter().map(|(e, _)| warning(e)).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..WARNINGS).collect::<Vec<_>>(),
        "each warning `warning` numbers needs one example in `examples`"
    );
}

#[test]
fn troubleshooting_quotes_every_warning_a_client_can_be_sent() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/troubleshooting.md");
    let chapter = flat(&std::fs::read_to_string(path).expect("docs/troubleshooting.md"));
    let missing: Vec<String> = examples()
        .into_iter()
        .map(|(error, pairs)| {
            let (status, mut text) = error.status_and_warning();
            for (value, placeholder) in pairs {
                assert!(text.contains(&value), "{value:?} is not in {text:?}");
                text = text.replace(&value, &placeholder);
            }
            (status, flat(&text))
        })
        .filter(|(_, text)| !chapter.contains(text.as_str()))
        .map(|(status, text)| format!("{}: {text}", status.as_u16()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md lacks these warnings:\n{}",
        missing.join("\n")
    );
}

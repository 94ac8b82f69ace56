//! GitHub zipball URLs, as packagist.org writes its dists, and where their bytes really are.

use url::Url;

/// `<api>/repos/OWNER/REPO/zipball/REF`, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct Zipball<'a> {
    pub owner: &'a str,
    pub repo: &'a str,
    pub reference: &'a str,
}

/// The zipball `url` names, when it is one on the GitHub API at `api` (which may carry a path,
/// as GitHub Enterprise's `/api/v3` does). Only characters GitHub allows in names and refs are
/// accepted: the parts become a codeload path.
pub fn zipball<'a>(api: &Url, url: &'a Url) -> Option<Zipball<'a>> {
    if !super::same_origin(api, url) || url.query().is_some() || url.fragment().is_some() {
        return None;
    }
    let rest = url
        .path()
        .strip_prefix(api.path().trim_end_matches('/'))?
        .strip_prefix("/repos/")?;
    let mut parts = rest.splitn(4, '/');
    let (owner, repo, zipball, reference) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let name = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    // Branch names may hold slashes; no segment may climb out of the path.
    let reference_ok =
        !reference.is_empty() && reference.len() <= 255 && reference.split('/').all(name);
    (zipball == "zipball" && name(owner) && name(repo) && reference_ok).then_some(Zipball {
        owner,
        repo,
        reference,
    })
}

/// The codeload URL the API redirects a zipball to: the same bytes, with no rate limit for
/// unauthenticated clients.
pub fn codeload_url(codeload: &Url, zipball: &Zipball<'_>) -> Option<Url> {
    let base = codeload.as_str().trim_end_matches('/');
    Url::parse(&format!(
        "{base}/{}/{}/legacy.zip/{}",
        zipball.owner, zipball.repo, zipball.reference
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    #[test]
    fn zipballs_on_the_api_are_recognised_and_mapped_to_codeload() {
        let api = url("https://api.github.com");
        let dist = url("https://api.github.com/repos/sebastianbergmann/phpunit/zipball/0123abc");
        let z = zipball(&api, &dist).expect("a zipball");
        assert_eq!(
            z,
            Zipball {
                owner: "sebastianbergmann",
                repo: "phpunit",
                reference: "0123abc"
            }
        );
        assert_eq!(
            codeload_url(&url("https://codeload.github.com"), &z)
                .expect("codeload")
                .as_str(),
            "https://codeload.github.com/sebastianbergmann/phpunit/legacy.zip/0123abc"
        );
        let branch = url("https://api.github.com/repos/a/b/zipball/feature/x");
        assert_eq!(
            zipball(&api, &branch).map(|z| z.reference),
            Some("feature/x")
        );
    }

    #[test]
    fn anything_else_is_not_a_zipball() {
        let api = url("https://api.github.com");
        for other in [
            "https://api.github.com/repos/a/b/tarball/1",
            "https://api.github.com/repos/a/b/zipball/",
            "https://api.github.com/repos/a/b/zipball/1?x=y",
            "https://api.github.com/repos/a/b/zipball/../../x",
            "https://api.github.com/repos/a/b/zipball/x/%2e%2e",
            "https://api.github.com/repos/a/b/zipball/a%20b",
            "https://api.github.com/users/a",
            "https://evil.example/repos/a/b/zipball/1",
            "http://api.github.com/repos/a/b/zipball/1",
        ] {
            assert_eq!(zipball(&api, &url(other)), None, "{other}");
        }
        let enterprise = url("https://ghe.example/api/v3");
        assert!(zipball(
            &enterprise,
            &url("https://ghe.example/api/v3/repos/a/b/zipball/1")
        )
        .is_some());
        assert!(zipball(&enterprise, &url("https://ghe.example/repos/a/b/zipball/1")).is_none());
    }
}

//! Which security advisories cover a package version the proxy served, from an advisory API
//! answer (`{"advisories": {"vendor/name": [{"advisoryId": …, "affectedVersions": …}]}}`, as
//! packagist.org and [`super::apis::merge_advisories`] write it).
//!
//! Matching uses Composer's constraint semantics ([`super::constraint`]), so the status page
//! flags exactly what `composer audit` would flag for the same version. An advisory whose
//! `affectedVersions` cannot be read is reported as such instead of being dropped: silently
//! treating it as "covers nothing" would hide a possible exposure.

use serde_json::Value;

use super::constraint::Constraint;

/// An advisory that covers the version asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoveringAdvisory {
    /// `PKSA-…` on packagist.org.
    pub advisory_id: String,
    pub title: String,
    pub cve: Option<String>,
    pub link: Option<String>,
    /// `low`, `medium`, `high` or `critical`, when the source rates it.
    pub severity: Option<String>,
    /// The constraint that matched, as the upstream wrote it.
    pub affected_versions: String,
}

/// An advisory for the package that could not be evaluated, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadableAdvisory {
    /// Empty when the entry has none.
    pub advisory_id: String,
    pub affected_versions: String,
    pub reason: String,
}

/// The verdict for one package version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdvisoryCoverage {
    pub covering: Vec<CoveringAdvisory>,
    pub unreadable: Vec<UnreadableAdvisory>,
}

/// The advisories in `answer` that cover `version` (pretty, like `2.4.7-p1`, or normalized,
/// like `2.4.7.0-patch1`) of `package` (matched without regard to case, as package names are).
pub fn advisories_covering(answer: &Value, package: &str, version: &str) -> AdvisoryCoverage {
    let mut coverage = AdvisoryCoverage::default();
    let entries = answer
        .get("advisories")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(name, _)| name.eq_ignore_ascii_case(package))
        .filter_map(|(_, list)| list.as_array())
        .flatten();
    for entry in entries {
        let text = |key: &str| entry.get(key).and_then(Value::as_str);
        let (Some(advisory_id), Some(affected_versions)) =
            (text("advisoryId"), text("affectedVersions"))
        else {
            coverage.unreadable.push(UnreadableAdvisory {
                advisory_id: text("advisoryId").unwrap_or_default().to_string(),
                affected_versions: text("affectedVersions").unwrap_or_default().to_string(),
                reason: "the entry has no advisoryId or no affectedVersions".to_string(),
            });
            continue;
        };
        match Constraint::parse(affected_versions) {
            Ok(constraint) if constraint.matches(version) => {
                let optional = |key: &str| text(key).filter(|s| !s.is_empty()).map(str::to_string);
                coverage.covering.push(CoveringAdvisory {
                    advisory_id: advisory_id.to_string(),
                    title: text("title").unwrap_or_default().to_string(),
                    cve: optional("cve"),
                    link: optional("link"),
                    severity: optional("severity"),
                    affected_versions: affected_versions.to_string(),
                });
            }
            Ok(_) => {}
            Err(e) => coverage.unreadable.push(UnreadableAdvisory {
                advisory_id: advisory_id.to_string(),
                affected_versions: affected_versions.to_string(),
                reason: e.to_string(),
            }),
        }
    }
    coverage
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Shaped like packagist.org's answer to
    /// `/api/security-advisories/?packages[]=magento/product-community-edition&…`.
    fn packagist_answer() -> Value {
        json!({
            "advisories": {
                "magento/product-community-edition": [
                    {
                        "advisoryId": "PKSA-2b5k-7yh9-tn3x",
                        "packageName": "magento/product-community-edition",
                        "remoteId": "GHSA-3f6h-jqm4-j3qr",
                        "title": "Magento Open Source XML injection (CosmicSting)",
                        "link": "https://helpx.adobe.com/security/products/magento/apsb24-40.html",
                        "cve": "CVE-2024-34102",
                        "affectedVersions": ">=2.4.7-beta1,<2.4.7-p1|>=2.4.6-beta1,<2.4.6-p6|>=2.4.5-beta1,<2.4.5-p8|<2.4.4-p9",
                        "source": "GitHub",
                        "reportedAt": "2024-06-13 16:15:00",
                        "composerRepository": "https://packagist.org",
                        "severity": "critical",
                        "sources": [{"name": "GitHub", "remoteId": "GHSA-3f6h-jqm4-j3qr"}]
                    },
                    {
                        "advisoryId": "PKSA-x1pc-6qzd-vr4m",
                        "packageName": "magento/product-community-edition",
                        "remoteId": "magento/product-community-edition/2024-08-13-1.yaml",
                        "title": "Stored XSS in admin product grid",
                        "link": "https://helpx.adobe.com/security/products/magento/apsb24-61.html",
                        "cve": null,
                        "affectedVersions": ">=2.4.7,<2.4.7-p1",
                        "source": "FriendsOfPHP/security-advisories",
                        "reportedAt": "2024-08-13 00:00:00",
                        "composerRepository": "https://packagist.org",
                        "severity": null,
                        "sources": [{"name": "FriendsOfPHP/security-advisories", "remoteId": "magento/product-community-edition/2024-08-13-1.yaml"}]
                    }
                ],
                "magento/module-catalog": [
                    {
                        "advisoryId": "PKSA-h7wq-9c2n-ke5d",
                        "packageName": "magento/module-catalog",
                        "title": "Improper authorization in catalog REST API",
                        "link": "https://helpx.adobe.com/security/products/magento/apsb24-73.html",
                        "cve": "CVE-2024-45115",
                        "affectedVersions": ">=104.0.0,<104.0.7-p3 || >=103.0.0 <103.0.7-p6",
                        "reportedAt": "2024-10-08 00:00:00",
                        "composerRepository": "https://packagist.org",
                        "severity": "high",
                        "sources": []
                    }
                ]
            }
        })
    }

    fn ids(coverage: &AdvisoryCoverage) -> Vec<&str> {
        coverage
            .covering
            .iter()
            .map(|a| a.advisory_id.as_str())
            .collect()
    }

    #[test]
    fn release_before_its_patch_is_covered() {
        let coverage = advisories_covering(
            &packagist_answer(),
            "magento/product-community-edition",
            "2.4.7",
        );
        assert_eq!(
            ids(&coverage),
            ["PKSA-2b5k-7yh9-tn3x", "PKSA-x1pc-6qzd-vr4m"]
        );
        assert!(coverage.unreadable.is_empty());
        let xss = &coverage.covering[1];
        assert_eq!(xss.title, "Stored XSS in admin product grid");
        assert_eq!((xss.cve.as_deref(), xss.severity.as_deref()), (None, None));
        assert_eq!(xss.affected_versions, ">=2.4.7,<2.4.7-p1");
        let cosmic = &coverage.covering[0];
        assert_eq!(cosmic.cve.as_deref(), Some("CVE-2024-34102"));
        assert_eq!(cosmic.severity.as_deref(), Some("critical"));
        assert_eq!(
            cosmic.link.as_deref(),
            Some("https://helpx.adobe.com/security/products/magento/apsb24-40.html")
        );
    }

    #[test]
    fn patch_release_that_fixes_it_is_not_covered() {
        let answer = packagist_answer();
        for version in [
            "2.4.7-p1",
            "2.4.7.0-patch1",
            "2.4.6-p6",
            "2.4.4-p9",
            "2.4.8",
        ] {
            let coverage =
                advisories_covering(&answer, "magento/product-community-edition", version);
            assert_eq!(ids(&coverage), Vec::<&str>::new(), "{version}");
        }
    }

    #[test]
    fn older_patch_lines_are_covered_by_their_own_range() {
        let answer = packagist_answer();
        for version in [
            "2.4.6-p5",
            "2.4.6.0-patch5",
            "2.4.5",
            "2.4.4-p8",
            "2.3.7-p4",
        ] {
            let coverage =
                advisories_covering(&answer, "magento/product-community-edition", version);
            assert_eq!(ids(&coverage), ["PKSA-2b5k-7yh9-tn3x"], "{version}");
        }
    }

    #[test]
    fn lower_bound_takes_in_its_own_pre_releases_as_composer_does() {
        // Composer reads `>=2.4.7` as `>= 2.4.7.0-dev`, so 2.4.7's betas are inside it.
        let coverage = advisories_covering(
            &packagist_answer(),
            "magento/product-community-edition",
            "2.4.7-beta3",
        );
        assert_eq!(
            ids(&coverage),
            ["PKSA-2b5k-7yh9-tn3x", "PKSA-x1pc-6qzd-vr4m"]
        );
    }

    #[test]
    fn module_versions_match_in_pretty_and_normalized_form() {
        let answer = packagist_answer();
        for (version, covered) in [
            ("103.0.7", true),
            ("103.0.7.0", true),
            ("103.0.7-p5", true),
            ("103.0.7-p6", false),
            ("104.0.7-p2", true),
            ("104.0.7-p3", false),
            ("102.9.9", false),
        ] {
            let coverage = advisories_covering(&answer, "magento/module-catalog", version);
            assert_eq!(!coverage.covering.is_empty(), covered, "{version}");
        }
    }

    #[test]
    fn dev_branches_and_unknown_packages_are_not_covered() {
        let answer = packagist_answer();
        let branch = advisories_covering(&answer, "magento/product-community-edition", "dev-main");
        assert_eq!(branch, AdvisoryCoverage::default());
        let other = advisories_covering(&answer, "monolog/monolog", "1.0.0");
        assert_eq!(other, AdvisoryCoverage::default());
        let none = advisories_covering(&json!({"advisories": []}), "monolog/monolog", "1.0.0");
        assert_eq!(none, AdvisoryCoverage::default());
    }

    #[test]
    fn package_names_match_without_regard_to_case() {
        let coverage =
            advisories_covering(&packagist_answer(), "Magento/Module-Catalog", "103.0.1");
        assert_eq!(ids(&coverage), ["PKSA-h7wq-9c2n-ke5d"]);
    }

    #[test]
    fn unreadable_advisories_are_reported_not_dropped() {
        let answer = json!({"advisories": {"acme/widget": [
            {"advisoryId": "PKSA-bad", "title": "t", "affectedVersions": ">=1.0,<1.0.0-SNAPSHOT"},
            {"title": "no id", "affectedVersions": "<2.0"},
            {"advisoryId": "PKSA-good", "title": "t", "affectedVersions": "<2.0"},
        ]}});
        let coverage = advisories_covering(&answer, "acme/widget", "1.5.0");
        assert_eq!(ids(&coverage), ["PKSA-good"]);
        let unreadable: Vec<(&str, &str)> = coverage
            .unreadable
            .iter()
            .map(|u| (u.advisory_id.as_str(), u.affected_versions.as_str()))
            .collect();
        assert_eq!(
            unreadable,
            [("PKSA-bad", ">=1.0,<1.0.0-SNAPSHOT"), ("", "<2.0")]
        );
        assert!(
            coverage.unreadable[0].reason.contains("1.0.0-SNAPSHOT"),
            "{}",
            coverage.unreadable[0].reason
        );
    }
}

//! Matching versions against constraints and comparing them, ported from composer/semver's
//! tests/Constraint/ConstraintTest.php, tests/SemverTest.php and tests/ComparatorTest.php.

use super::*;

fn satisfies(version: &str, constraint: &str) -> bool {
    match Constraint::parse(constraint) {
        Ok(parsed) => parsed.matches(version),
        Err(e) => panic!("{constraint:?}: {e}"),
    }
}

/// SemverTest::satisfiesProviderPositive: (version, constraint).
const SATISFIED: &[(&str, &str)] = &[
    ("1.2.3", "1.0.0 - 2.0.0"),
    ("1.2.3", "^1.2.3+build"),
    ("1.3.0", "^1.2.3+build"),
    ("2.4.3-alpha", "1.2.3+asdf - 2.4.3+asdf"),
    ("1.3.0-beta", ">1.2"),
    ("1.2.3-beta", "<=1.2.3"),
    ("1.2.3-beta", "^1.2.3"),
    ("1.2.3", "1.2.3+asdf - 2.4.3+asdf"),
    ("1.0.0", "1.0.0"),
    ("1.2.3", "*"),
    ("v1.2.3", "*"),
    ("1.0.0", ">=1.0.0"),
    ("1.0.1", ">=1.0.0"),
    ("1.1.0", ">=1.0.0"),
    ("1.0.1", ">1.0.0"),
    ("1.1.0", ">1.0.0"),
    ("2.0.0", "<=2.0.0"),
    ("1.9999.9999", "<=2.0.0"),
    ("0.2.9", "<=2.0.0"),
    ("1.9999.9999", "<2.0.0"),
    ("0.2.9", "<2.0.0"),
    ("1.0.0", ">= 1.0.0"),
    ("1.0.1", ">=  1.0.0"),
    ("1.1.0", ">=   1.0.0"),
    ("1.0.1", "> 1.0.0"),
    ("1.1.0", ">  1.0.0"),
    ("2.0.0", "<=   2.0.0"),
    ("1.9999.9999", "<= 2.0.0"),
    ("0.2.9", "<=  2.0.0"),
    ("1.9999.9999", "<    2.0.0"),
    ("0.2.9", "<\t2.0.0"),
    ("v0.1.97", ">=0.1.97"),
    ("0.1.97", ">=0.1.97"),
    ("1.2.4", "0.1.20 || 1.2.4"),
    ("0.0.0", ">=0.2.3 || <0.0.1"),
    ("0.2.3", ">=0.2.3 || <0.0.1"),
    ("0.2.4", ">=0.2.3 || <0.0.1"),
    ("2.1.3", "2.x.x"),
    ("1.2.3", "1.2.x"),
    ("2.1.3", "1.2.x || 2.x"),
    ("1.2.3", "1.2.x || 2.x"),
    ("1.2.3", "x"),
    ("2.1.3", "2.*.*"),
    ("1.2.3", "1.2.*"),
    ("2.1.3", "1.2.* || 2.*"),
    ("1.2.3", "1.2.* || 2.*"),
    ("2.9.0", "~2.4"),
    ("2.4.5", "~2.4"),
    ("1.2.3", "~1"),
    ("1.4.7", "~1.0"),
    ("1.0.0", ">=1"),
    ("1.0.0", ">= 1"),
    ("1.2.8", ">1.2"),
    ("1.1.1", "<1.2"),
    ("1.1.1", "< 1.2"),
    ("1.2.3", "~1.2.1 >=1.2.3"),
    ("1.2.3", "~1.2.1 =1.2.3"),
    ("1.2.3", "~1.2.1 1.2.3"),
    ("1.2.3", "~1.2.1 >=1.2.3 1.2.3"),
    ("1.2.3", "~1.2.1 1.2.3 >=1.2.3"),
    ("1.2.3", ">=1.2.1 1.2.3"),
    ("1.2.3", "1.2.3 >=1.2.1"),
    ("1.2.3", ">=1.2.3 >=1.2.1"),
    ("1.2.3", ">=1.2.1 >=1.2.3"),
    ("1.2.8", ">=1.2"),
    ("1.8.1", "^1.2.3"),
    ("0.1.2", "^0.1.2"),
    ("0.1.2", "^0.1"),
    ("1.4.2", "^1.2"),
    ("1.4.2", "^1.2 ^1"),
    ("0.0.1-beta", "^0.0.1-alpha"),
];

/// SemverTest::satisfiesProviderNegative: (version, constraint).
const NOT_SATISFIED: &[(&str, &str)] = &[
    ("2.2.3", "1.0.0 - 2.0.0"),
    ("2.0.0", "^1.2.3+build"),
    ("1.2.0", "^1.2.3+build"),
    ("1.0.0beta", "1"),
    ("1.0.0beta", "<1"),
    ("1.0.0beta", "< 1"),
    ("1.0.1", "1.0.0"),
    ("0.0.0", ">=1.0.0"),
    ("0.0.1", ">=1.0.0"),
    ("0.1.0", ">=1.0.0"),
    ("0.0.1", ">1.0.0"),
    ("0.1.0", ">1.0.0"),
    ("3.0.0", "<=2.0.0"),
    ("2.9999.9999", "<=2.0.0"),
    ("2.2.9", "<=2.0.0"),
    ("2.9999.9999", "<2.0.0"),
    ("2.2.9", "<2.0.0"),
    ("v0.1.93", ">=0.1.97"),
    ("0.1.93", ">=0.1.97"),
    ("1.2.3", "0.1.20 || 1.2.4"),
    ("0.0.3", ">=0.2.3 || <0.0.1"),
    ("0.2.2", ">=0.2.3 || <0.0.1"),
    ("1.1.3", "2.x.x"),
    ("3.1.3", "2.x.x"),
    ("1.3.3", "1.2.x"),
    ("3.1.3", "1.2.x || 2.x"),
    ("1.1.3", "1.2.x || 2.x"),
    ("1.1.3", "2.*.*"),
    ("3.1.3", "2.*.*"),
    ("1.3.3", "1.2.*"),
    ("3.1.3", "1.2.* || 2.*"),
    ("1.1.3", "1.2.* || 2.*"),
    ("1.1.2", "2"),
    ("2.4.1", "2.3"),
    ("3.0.0", "~2.4"),
    ("2.3.9", "~2.4"),
    ("0.2.3", "~1"),
    ("1.0.0", "<1"),
    ("1.1.1", ">=1.2"),
    ("2.0.0beta", "1"),
    ("0.5.4-alpha", "~v0.5.4-beta"),
    ("1.2.3-beta", "<1.2.3"),
    ("2.0.0-alpha", "^1.2.3"),
    ("1.2.2", "^1.2.3"),
    ("1.1.9", "^1.2"),
];

#[test]
fn satisfies_agrees_with_composer() {
    for (version, constraint) in SATISFIED {
        assert!(satisfies(version, constraint), "{version} !~ {constraint}");
    }
    for (version, constraint) in NOT_SATISFIED {
        assert!(!satisfies(version, constraint), "{version} ~ {constraint}");
    }
}

#[test]
fn satisfied_by_agrees_with_composer() {
    // SemverTest::satisfiedByProvider.
    for (constraint, versions, expected) in [
        (
            "~1.0",
            &["1.0", "1.2", "1.9999.9999", "2.0", "2.1", "0.9999.9999"][..],
            &["1.0", "1.2", "1.9999.9999"][..],
        ),
        (
            ">1.0 <3.0 || >=4.0",
            &[
                "1.0",
                "1.1",
                "2.9999.9999",
                "3.0",
                "3.1",
                "3.9999.9999",
                "4.0",
                "4.1",
            ],
            &["1.1", "2.9999.9999", "4.0", "4.1"],
        ),
        (
            "^0.2.0",
            &["0.1.1", "0.1.9999", "0.2.0", "0.2.1", "0.3.0"],
            &["0.2.0", "0.2.1"],
        ),
    ] {
        let parsed = Constraint::parse(constraint).unwrap();
        let kept: Vec<&str> = versions
            .iter()
            .copied()
            .filter(|v| parsed.matches(v))
            .collect();
        assert_eq!(kept, expected, "{constraint}");
    }
}

#[test]
fn complex_conjunctive_excludes_the_named_version() {
    // VersionParserTest::testComplexConjunctive.
    assert!(!satisfies("1.0.1", "~0.1 || ~1.0 !=1.0.1"));
    assert!(satisfies("1.0.2", "~0.1 || ~1.0 !=1.0.1"));
}

/// ConstraintTest::successfulVersionMatches and failingVersionMatches, the pairs where one
/// side is `==` (a single version, which is what `matches` is asked about; Composer asserts
/// each pair both ways round): (operator, version, other side's `==` version, matches).
const POINT_MATCHES: &[(&str, &str, &str, bool)] = &[
    ("==", "2", "2", true),
    ("<", "3", "2", true),
    ("<=", "2", "2", true),
    ("<=", "3", "2", true),
    (">=", "1", "2", true),
    (">=", "2", "2", true),
    (">", "1", "2", true),
    ("!=", "1", "2", true),
    ("!=", "3", "2", true),
    ("<", "2", "1", true),
    ("<=", "2", "1", true),
    (">=", "2", "3", true),
    (">", "2", "3", true),
    ("!=", "dev-foo-xyz", "dev-foo-bar", true),
    ("==", "dev-foo-bar", "dev-foo-bar", true),
    ("==", "dev-events+issue-17", "dev-events+issue-17", true),
    ("!=", "dev-foo", "0.12", true),
    ("!=", "0.12", "dev-foo", true),
    ("==", "2", "1", false),
    ("==", "2", "3", false),
    ("<", "1", "2", false),
    ("<", "2", "2", false),
    ("<=", "1", "2", false),
    (">=", "3", "2", false),
    (">", "2", "2", false),
    (">", "3", "2", false),
    ("!=", "2", "2", false),
    ("<", "2", "3", false),
    ("<=", "2", "3", false),
    (">=", "2", "1", false),
    (">", "2", "1", false),
    ("==", "2.0-beta2", "2.0-b2", true),
    ("<", "2.0-beta2", "2.0-b2", false),
    ("==", "dev-foo-zist", "dev-foo-dist", false),
    ("==", "dev-foo-xyz", "dev-foo-bar", false),
    ("<", "dev-foo-xyz", "dev-foo-bar", false),
    ("<=", "dev-foo-xyz", "dev-foo-bar", false),
    (">=", "dev-foo-xyz", "dev-foo-bar", false),
    (">", "dev-foo-xyz", "dev-foo-bar", false),
    ("<", "dev-foo-bar", "dev-foo-bar", false),
    ("<=", "dev-foo-bar", "dev-foo-bar", false),
    (">=", "dev-foo-bar", "dev-foo-bar", false),
    (">", "dev-foo-bar", "dev-foo-bar", false),
    ("!=", "dev-foo-bar", "dev-foo-bar", false),
    ("==", "dev-foo", "0.12", false),
    ("<", "dev-foo", "0.12", false),
    ("<=", "dev-foo", "0.12", false),
    (">=", "dev-foo", "0.12", false),
    (">", "dev-foo", "0.12", false),
    ("==", "0.12", "dev-foo", false),
    ("<", "0.12", "dev-foo", false),
    ("<=", "0.12", "dev-foo", false),
    (">=", "0.12", "dev-foo", false),
    (">", "0.12", "dev-foo", false),
];

#[test]
fn single_operators_match_like_composer_constraints() {
    for (op, bound, version, expected) in POINT_MATCHES {
        let constraint = format!("{op}{bound}");
        assert_eq!(
            satisfies(version, &constraint),
            *expected,
            "{version} vs {constraint}"
        );
    }
}

#[test]
fn dev_branches_match_only_themselves_and_any() {
    assert!(satisfies("dev-main", "dev-main"));
    assert!(satisfies("dev-main", "==dev-main"));
    assert!(satisfies("dev-main", "*"));
    assert!(!satisfies("dev-main", "v*"));
    assert!(!satisfies("dev-main", ">=1.0"));
    assert!(!satisfies("dev-main", "<99"));
    assert!(!satisfies("dev-main", "dev-master"));
    // A numeric branch is a version like any other: 1.0.x-dev sorts after 1.0.9999998.
    assert!(satisfies("1.0.x-dev", ">=1.0,<1.1"));
    assert!(satisfies("1.0.9999999.9999999-dev", "~1.0.0"));
    assert!(!satisfies("1.0.x-dev", "<1.0.5"));
}

/// ComparatorTest::compareProvider (the cases without branches), on normalized versions.
#[test]
fn versions_compare_like_composer() {
    for (a, op, b, expected) in [
        ("1.25.0", ">", "1.24.0", true),
        ("1.25.0", ">", "1.25.0", false),
        ("1.25.0", ">", "1.26.0", false),
        ("1.25.0", ">=", "1.24.0", true),
        ("1.25.0", ">=", "1.25.0", true),
        ("1.25.0", ">=", "1.26.0", false),
        ("1.25.0", "<", "1.24.0", false),
        ("1.25.0", "<", "1.25.0", false),
        ("1.25.0", "<", "1.26.0", true),
        ("1.25.0-beta2.1", "<", "1.25.0-b.3", true),
        ("1.25.0-b2.1", "<", "1.25.0beta.3", true),
        ("1.25.0-b-2.1", "<", "1.25.0-rc", true),
        ("1.25.0", "<=", "1.24.0", false),
        ("1.25.0", "<=", "1.25.0", true),
        ("1.25.0", "<=", "1.26.0", true),
        ("1.25.0", "==", "1.24.0", false),
        ("1.25.0", "==", "1.25.0", true),
        ("1.25.0", "==", "1.26.0", false),
        ("1.25.0-beta2.1", "==", "1.25.0-b.2.1", true),
        ("1.25.0beta2.1", "==", "1.25.0-b2.1", true),
        ("1.25.0", "!=", "1.24.0", true),
        ("1.25.0", "!=", "1.25.0", false),
        ("1.25.0", "<>", "1.26.0", true),
        ("1.0.0", "<", "1.2-dev", true),
    ] {
        let (a, b) = (normalize(a).unwrap(), normalize(b).unwrap());
        let ordering = php_version_compare(&a, &b);
        let holds = match op {
            ">" => ordering.is_gt(),
            ">=" => ordering.is_ge(),
            "<" => ordering.is_lt(),
            "<=" => ordering.is_le(),
            "==" => ordering.is_eq(),
            _ => ordering.is_ne(),
        };
        assert_eq!(holds, expected, "{a} {op} {b}");
    }
}

#[test]
fn stabilities_order_dev_alpha_beta_rc_stable_patch() {
    let ladder = [
        "2.4.7-dev",
        "2.4.7-alpha1",
        "2.4.7-beta1",
        "2.4.7-beta2",
        "2.4.7-RC1",
        "2.4.7",
        "2.4.7-p1",
        "2.4.7-patch2",
        "2.4.8-beta1",
    ];
    for pair in ladder.windows(2) {
        let (a, b) = (normalize(pair[0]).unwrap(), normalize(pair[1]).unwrap());
        assert_eq!(php_version_compare(&a, &b), Ordering::Less, "{a} < {b}");
    }
}

#[test]
fn pretty_and_normalized_versions_match_alike() {
    let constraint = Constraint::parse(">=2.4.7,<2.4.7-p1|>=103.0.0,<103.0.7").unwrap();
    for version in ["2.4.7", "v2.4.7", "2.4.7.0", "103.0.6", "103.0.6.0"] {
        assert!(constraint.matches(version), "{version}");
    }
    for version in [
        "2.4.7-p1",
        "2.4.7.0-patch1",
        "103.0.7",
        "103.0.7.0",
        "not a version",
    ] {
        assert!(!constraint.matches(version), "{version}");
    }
}

#[test]
fn long_junk_is_refused_quickly() {
    let digits = "1".repeat(100_000);
    assert!(normalize(&digits).is_err());
    let dates = "2010-01-02".repeat(10_000);
    assert!(normalize(&dates).is_err());
    let spaced = format!(">=1.0{}", " ,".repeat(50_000));
    assert!(Constraint::parse(&spaced).is_err());
    let many = vec![">=1.0,<1.1"; 10_000].join(" || ");
    assert!(Constraint::parse(&many).unwrap().matches("1.0.5"));
}

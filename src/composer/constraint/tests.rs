//! Most cases here are ported from composer/semver's own test suite (tests/VersionParserTest.php,
//! tests/Constraint/ConstraintTest.php, tests/SemverTest.php, tests/ComparatorTest.php), so the
//! port is held to Composer's behaviour, not to our reading of it. Each table names its source.

use super::*;

/// VersionParserTest::successfulNormalizedVersions.
const NORMALIZED: &[(&str, &str)] = &[
    ("1.0.0", "1.0.0.0"),
    ("1.2.3.4", "1.2.3.4"),
    ("1.0.0RC1dev", "1.0.0.0-RC1-dev"),
    ("1.0.0-rC15-dev", "1.0.0.0-RC15-dev"),
    ("1.0.0.RC.15-dev", "1.0.0.0-RC15-dev"),
    ("1.0.0-rc1", "1.0.0.0-RC1"),
    ("1.0.0.pl3-dev", "1.0.0.0-patch3-dev"),
    ("1.0-dev", "1.0.0.0-dev"),
    ("0", "0.0.0.0"),
    ("99999", "99999.0.0.0"),
    ("10.4.13-beta", "10.4.13.0-beta"),
    ("10.4.13beta2", "10.4.13.0-beta2"),
    ("10.4.13beta.2", "10.4.13.0-beta2"),
    ("v1.13.11-beta.0", "1.13.11.0-beta0"),
    ("1.13.11.0-beta0", "1.13.11.0-beta0"),
    ("10.4.13-b", "10.4.13.0-beta"),
    ("10.4.13-b5", "10.4.13.0-beta5"),
    ("v1.0.0", "1.0.0.0"),
    ("2010.01", "2010.01.0.0"),
    ("2010.01.02", "2010.01.02.0"),
    ("2010.1.555", "2010.1.555.0"),
    ("2010.10.200", "2010.10.200.0"),
    ("20230131.0.0", "20230131.0.0"),
    ("202301310000.0.0", "202301310000.0.0"),
    ("v20100102", "20100102"),
    ("20100102", "20100102"),
    ("20100102.0", "20100102.0"),
    ("20100102.1.0", "20100102.1.0"),
    ("20100102.0.3", "20100102.0.3"),
    ("100000", "100000"),
    ("2010-01-02-10-20-30.0.3", "2010.01.02.10.20.30.0.3"),
    ("2010-01-02-10-20-30.5", "2010.01.02.10.20.30.5"),
    ("2010-01-02", "2010.01.02"),
    ("2012.06.07", "2012.06.07.0"),
    ("2010-01-02.5", "2010.01.02.5"),
    ("20100102-203040", "20100102.203040"),
    ("20100102.x-dev", "20100102.9999999.9999999.9999999-dev"),
    (
        "20100102.203040.x-dev",
        "20100102.203040.9999999.9999999-dev",
    ),
    ("20100102203040-10", "20100102203040.10"),
    ("20100102-203040-p1", "20100102.203040-patch1"),
    ("201903.0", "201903.0"),
    ("201903.x-dev", "201903.9999999.9999999.9999999-dev"),
    ("201903.0-p2", "201903.0-patch2"),
    ("dev-master", "dev-master"),
    ("master", "dev-master"),
    ("dev-trunk", "dev-trunk"),
    ("1.x-dev", "1.9999999.9999999.9999999-dev"),
    ("dev-feature-foo", "dev-feature-foo"),
    ("DEV-FOOBAR", "dev-FOOBAR"),
    ("dev-feature/foo", "dev-feature/foo"),
    ("dev-feature+issue-1", "dev-feature+issue-1"),
    ("dev-master as 1.0.0", "dev-master"),
    (
        "dev-load-varnish-only-when-used as ^2.0",
        "dev-load-varnish-only-when-used",
    ),
    (
        "dev-load-varnish-only-when-used@dev as ^2.0@dev",
        "dev-load-varnish-only-when-used",
    ),
    ("1.0.0+foo@dev", "1.0.0.0"),
    (
        "dev-load-varnish-only-when-used@stable",
        "dev-load-varnish-only-when-used",
    ),
    ("1.0.0-beta.5+foo", "1.0.0.0-beta5"),
    ("1.0.0+foo", "1.0.0.0"),
    ("1.0.0-alpha.3.1+foo", "1.0.0.0-alpha3.1"),
    ("1.0.0-alpha2.1+foo", "1.0.0.0-alpha2.1"),
    ("1.0.0-alpha-2.1-3+foo", "1.0.0.0-alpha2.1-3"),
    ("1.0.0+foo as 2.0", "1.0.0.0"),
    ("00.01.03.04", "00.01.03.04"),
    ("000.001.003.004", "000.001.003.004"),
    ("0.000.103.204", "0.000.103.204"),
    ("0700", "0700.0.0.0"),
    ("041.x-dev", "041.9999999.9999999.9999999-dev"),
    ("dev-041.003", "dev-041.003"),
    ("dev-1.0.0-dev<1.0.5-dev", "dev-1.0.0-dev<1.0.5-dev"),
    ("dev-foo bar", "dev-foo bar"),
    (" 1.0.0", "1.0.0.0"),
    ("1.0.0 ", "1.0.0.0"),
];

/// VersionParserTest::failingNormalizedVersions.
const NOT_VERSIONS: &[&str] = &[
    "",
    "a",
    "1.0.0-meh",
    "1.0.0.0.0",
    "feature-foo",
    "1.0.0+foo bar",
    "1.0.1-SNAPSHOT",
    "1.0.0<1.0.5-dev",
    "1.0.0-dev<1.0.5-dev",
    "foo bar-dev",
    "1.0 .2",
    " as ",
    " as 1.2",
    "^",
    "^8 || ^",
    "~",
    "~1 ~",
    "~1",
    "^1",
    "1.*",
    "20100102.0.3.4",
    "100000.0.0.0",
    "2023013.0.0",
    "202301311.0.0",
    "20230131000.0.0",
    "2023013100000.0.0",
];

#[test]
fn normalize_agrees_with_composer() {
    for (input, expected) in NORMALIZED {
        assert_eq!(normalize(input).as_deref(), Ok(*expected), "{input:?}");
    }
}

#[test]
fn normalize_refuses_what_composer_refuses() {
    for input in NOT_VERSIONS {
        assert!(normalize(input).is_err(), "{input:?} normalized");
    }
    // VersionParserTest::isValidVersions.
    for (input, valid) in [
        ("0.x-dev", true),
        ("dev-develop", true),
        ("1.0.2", true),
        ("1.0.2.5", true),
        ("1.0.2.5.5", false),
        ("foo", false),
    ] {
        assert_eq!(normalize(input).is_ok(), valid, "{input:?}");
    }
}

#[test]
fn normalize_error_names_the_version() {
    let error = normalize("1.0.1-SNAPSHOT").unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid version string \"1.0.1-SNAPSHOT\""
    );
}

#[test]
fn branch_names_normalize_like_composer() {
    // VersionParserTest::successfulNormalizedBranches.
    for (input, expected) in [
        ("v1.x", "1.9999999.9999999.9999999-dev"),
        ("v1.*", "1.9999999.9999999.9999999-dev"),
        ("v1.0", "1.0.9999999.9999999-dev"),
        ("2.0", "2.0.9999999.9999999-dev"),
        ("v1.0.x", "1.0.9999999.9999999-dev"),
        ("v1.0.3.*", "1.0.3.9999999-dev"),
        ("v2.4.0", "2.4.0.9999999-dev"),
        ("2.4.4", "2.4.4.9999999-dev"),
        ("master", "dev-master"),
        ("trunk", "dev-trunk"),
        ("feature-a", "dev-feature-a"),
        ("FOOBAR", "dev-FOOBAR"),
        ("feature+issue-1", "dev-feature+issue-1"),
    ] {
        assert_eq!(version::normalize_branch(input), expected, "{input:?}");
    }
}

#[test]
fn stability_is_read_like_composer() {
    use Stability::*;
    // VersionParserTest::stabilityProvider.
    for (expected, version) in [
        (Stable, "1"),
        (Stable, "1.0"),
        (Stable, "3.2.1"),
        (Stable, "v3.2.1"),
        (Dev, "v2.0.x-dev"),
        (Dev, "v2.0.x-dev#abc123"),
        (Dev, "v2.0.x-dev#trunk/@123"),
        (Rc, "3.0-RC2"),
        (Dev, "dev-master"),
        (Dev, "3.1.2-dev"),
        (Dev, "dev-feature+issue-1"),
        (Stable, "3.1.2-p1"),
        (Stable, "3.1.2-pl2"),
        (Stable, "3.1.2-patch"),
        (Alpha, "3.1.2-alpha5"),
        (Beta, "3.1.2-beta"),
        (Beta, "2.0B1"),
        (Alpha, "1.2.0a1"),
        (Alpha, "1.2_a1"),
        (Rc, "2.0.0rc1"),
        (Alpha, "1.0.0-alpha11+cs-1.1.0"),
        (Dev, "1-2_dev"),
    ] {
        assert_eq!(parse_stability(version), expected, "{version:?}");
    }
}

fn parsed(input: &str) -> String {
    match Constraint::parse(input) {
        Ok(constraint) => constraint.to_string(),
        Err(e) => panic!("{input:?}: {e}"),
    }
}

/// VersionParserTest::simpleConstraints, testParseConstraintsIgnoresStabilityFlag and
/// testParseConstraintsIgnoresReferenceOnDevVersion, as Composer prints the result.
const SIMPLE: &[(&str, &str)] = &[
    ("*", "*"),
    ("v*", ">= 0.0.0.0-dev"),
    ("*.*", ">= 0.0.0.0-dev"),
    ("v*.*", ">= 0.0.0.0-dev"),
    ("*.x.*", ">= 0.0.0.0-dev"),
    ("x.X.x.*", ">= 0.0.0.0-dev"),
    ("<>1.0.0", "!= 1.0.0.0"),
    ("!=1.0.0", "!= 1.0.0.0"),
    (">1.0.0", "> 1.0.0.0"),
    ("<1.2.3.4", "< 1.2.3.4-dev"),
    ("<=1.2.3", "<= 1.2.3.0"),
    (">=1.2.3", ">= 1.2.3.0-dev"),
    ("=1.2.3", "== 1.2.3.0"),
    ("==1.2.3", "== 1.2.3.0"),
    ("1.2.3", "== 1.2.3.0"),
    ("=1.0", "== 1.0.0.0"),
    ("1.2.3b5", "== 1.2.3.0-beta5"),
    ("1.2.3a1", "== 1.2.3.0-alpha1"),
    ("1.2.3p1234", "== 1.2.3.0-patch1234"),
    ("1.2.3pl1234", "== 1.2.3.0-patch1234"),
    (">= 1.2.3", ">= 1.2.3.0-dev"),
    ("< 1.2.3", "< 1.2.3.0-dev"),
    ("> 1.2.3", "> 1.2.3.0"),
    (">=dev-master", ">= dev-master"),
    ("dev-master", "== dev-master"),
    ("dev-feature-a", "== dev-feature-a"),
    ("dev-some-fix", "== dev-some-fix"),
    ("dev-CAPS", "== dev-CAPS"),
    ("dev-master as 1.0.0", "== dev-master"),
    ("<1.2.3.4-stable", "< 1.2.3.4"),
    (">=1.2.3.4-stable", ">= 1.2.3.4"),
    ("1.0@dev", "== 1.0.0.0"),
    (">=1.0@beta", ">= 1.0.0.0-beta"),
    (
        "dev-load-varnish-only-when-used as ^2.0@dev",
        "== dev-load-varnish-only-when-used",
    ),
    (
        "dev-load-varnish-only-when-used@dev as ^2.0@dev",
        "== dev-load-varnish-only-when-used",
    ),
    ("1.0.x-dev#abcd123", "== 1.0.9999999.9999999-dev"),
    ("1.0.x-dev#trunk/@123", "== 1.0.9999999.9999999-dev"),
];

/// VersionParserTest::wildcardConstraints, tildeConstraints, caretConstraints and
/// hyphenConstraints: (input, lower bound or "", upper bound).
const RANGES: &[(&str, &str, &str)] = &[
    ("v2.*", ">= 2.0.0.0-dev", "< 3.0.0.0-dev"),
    ("2.*.*", ">= 2.0.0.0-dev", "< 3.0.0.0-dev"),
    ("20.*", ">= 20.0.0.0-dev", "< 21.0.0.0-dev"),
    ("20.*.*", ">= 20.0.0.0-dev", "< 21.0.0.0-dev"),
    ("2.0.*", ">= 2.0.0.0-dev", "< 2.1.0.0-dev"),
    ("2.x", ">= 2.0.0.0-dev", "< 3.0.0.0-dev"),
    ("2.x.x", ">= 2.0.0.0-dev", "< 3.0.0.0-dev"),
    ("2.2.x", ">= 2.2.0.0-dev", "< 2.3.0.0-dev"),
    ("2.10.X", ">= 2.10.0.0-dev", "< 2.11.0.0-dev"),
    ("2.1.3.*", ">= 2.1.3.0-dev", "< 2.1.4.0-dev"),
    ("0.*", "", "< 1.0.0.0-dev"),
    ("0.*.*", "", "< 1.0.0.0-dev"),
    ("0.x", "", "< 1.0.0.0-dev"),
    ("0.x.x", "", "< 1.0.0.0-dev"),
    // Tilde.
    ("~v1", ">= 1.0.0.0-dev", "< 2.0.0.0-dev"),
    ("~1.0", ">= 1.0.0.0-dev", "< 2.0.0.0-dev"),
    ("~1.0.0", ">= 1.0.0.0-dev", "< 1.1.0.0-dev"),
    ("~1.2", ">= 1.2.0.0-dev", "< 2.0.0.0-dev"),
    ("~1.2.3", ">= 1.2.3.0-dev", "< 1.3.0.0-dev"),
    ("~1.2.3.4", ">= 1.2.3.4-dev", "< 1.2.4.0-dev"),
    ("~1.2-beta", ">= 1.2.0.0-beta", "< 2.0.0.0-dev"),
    ("~1.2-b2", ">= 1.2.0.0-beta2", "< 2.0.0.0-dev"),
    ("~1.2-BETA2", ">= 1.2.0.0-beta2", "< 2.0.0.0-dev"),
    ("~1.2.2-dev", ">= 1.2.2.0-dev", "< 1.3.0.0-dev"),
    ("~1.2.2-stable", ">= 1.2.2.0", "< 1.3.0.0-dev"),
    ("~201903.0", ">= 201903.0-dev", "< 201904.0.0.0-dev"),
    ("~201903.0-beta", ">= 201903.0-beta", "< 201904.0.0.0-dev"),
    ("~201903.0-stable", ">= 201903.0", "< 201904.0.0.0-dev"),
    (
        "~201903.205830.1-stable",
        ">= 201903.205830.1",
        "< 201903.205831.0.0-dev",
    ),
    (
        "~2.x-dev",
        ">= 2.9999999.9999999.9999999-dev",
        "< 3.0.0.0-dev",
    ),
    ("~2.0.x-dev", ">= 2.0.9999999.9999999-dev", "< 2.1.0.0-dev"),
    ("~2.0.3.x-dev", ">= 2.0.3.9999999-dev", "< 2.0.4.0-dev"),
    (
        "~0.x-dev",
        ">= 0.9999999.9999999.9999999-dev",
        "< 1.0.0.0-dev",
    ),
    // Caret.
    ("^v1", ">= 1.0.0.0-dev", "< 2.0.0.0-dev"),
    ("^0", ">= 0.0.0.0-dev", "< 1.0.0.0-dev"),
    ("^0.0", ">= 0.0.0.0-dev", "< 0.1.0.0-dev"),
    ("^1.2", ">= 1.2.0.0-dev", "< 2.0.0.0-dev"),
    ("^1.2.3-beta.2", ">= 1.2.3.0-beta2", "< 2.0.0.0-dev"),
    ("^1.2.3.4", ">= 1.2.3.4-dev", "< 2.0.0.0-dev"),
    ("^1.2.3", ">= 1.2.3.0-dev", "< 2.0.0.0-dev"),
    ("^0.2.3", ">= 0.2.3.0-dev", "< 0.3.0.0-dev"),
    ("^0.2", ">= 0.2.0.0-dev", "< 0.3.0.0-dev"),
    ("^0.2.0", ">= 0.2.0.0-dev", "< 0.3.0.0-dev"),
    ("^0.0.3", ">= 0.0.3.0-dev", "< 0.0.4.0-dev"),
    ("^0.0.3-alpha", ">= 0.0.3.0-alpha", "< 0.0.4.0-dev"),
    ("^0.0.3-dev", ">= 0.0.3.0-dev", "< 0.0.4.0-dev"),
    ("^0.0.3-stable", ">= 0.0.3.0", "< 0.0.4.0-dev"),
    ("^201903.0", ">= 201903.0-dev", "< 201904.0.0.0-dev"),
    ("^201903.0-beta", ">= 201903.0-beta", "< 201904.0.0.0-dev"),
    (
        "^201903.205830.1-stable",
        ">= 201903.205830.1",
        "< 201904.0.0.0-dev",
    ),
    (
        "^2.x-dev",
        ">= 2.9999999.9999999.9999999-dev",
        "< 3.0.0.0-dev",
    ),
    ("^2.0.*-dev", ">= 2.0.9999999.9999999-dev", "< 3.0.0.0-dev"),
    ("^2.0.x-dev", ">= 2.0.9999999.9999999-dev", "< 3.0.0.0-dev"),
    ("^2.0.3.x-dev", ">= 2.0.3.9999999-dev", "< 3.0.0.0-dev"),
    (
        "^0.x-dev",
        ">= 0.9999999.9999999.9999999-dev",
        "< 1.0.0.0-dev",
    ),
    // Hyphen.
    ("v1 - v2", ">= 1.0.0.0-dev", "< 3.0.0.0-dev"),
    ("1.2.3 - 2.3.4.5", ">= 1.2.3.0-dev", "<= 2.3.4.5"),
    ("1.2-beta - 2.3", ">= 1.2.0.0-beta", "< 2.4.0.0-dev"),
    ("1.2-beta - 2.3-dev", ">= 1.2.0.0-beta", "<= 2.3.0.0-dev"),
    ("1.2-RC - 2.3.1", ">= 1.2.0.0-RC", "<= 2.3.1.0"),
    ("1.2.3-alpha - 2.3-RC", ">= 1.2.3.0-alpha", "<= 2.3.0.0-RC"),
    ("1 - 2.0", ">= 1.0.0.0-dev", "< 2.1.0.0-dev"),
    ("1 - 2.1", ">= 1.0.0.0-dev", "< 2.2.0.0-dev"),
    ("1.2 - 2.1.0", ">= 1.2.0.0-dev", "<= 2.1.0.0"),
    ("1.3 - 2.1.3", ">= 1.3.0.0-dev", "<= 2.1.3.0"),
    (
        "2.0.3.x-dev - 3.0.3.x-dev",
        ">= 2.0.3.9999999-dev",
        "<= 3.0.3.9999999-dev",
    ),
    (
        "2.0.x-dev - 3.0.x-dev",
        ">= 2.0.9999999.9999999-dev",
        "<= 3.0.9999999.9999999-dev",
    ),
    (
        "2.x-dev - 3.x-dev",
        ">= 2.9999999.9999999.9999999-dev",
        "<= 3.9999999.9999999.9999999-dev",
    ),
    (
        "0.x-dev - 1.x-dev",
        ">= 0.9999999.9999999.9999999-dev",
        "<= 1.9999999.9999999.9999999-dev",
    ),
];

/// VersionParserTest::constraintProvider, the multi-constraint tests and
/// testParseConstraintsMultiWithStabilit*.
const COMPOUND: &[(&str, &str)] = &[
    ("3.x-dev", "== 3.9999999.9999999.9999999-dev"),
    ("3-dev", "== 3.0.0.0-dev"),
    ("dev-3.x", "== dev-3.x"),
    ("xsd2php-dev", "== dev-xsd2php"),
    ("3.next-dev", "== dev-3.next"),
    ("foobar-dev", "== dev-foobar"),
    ("dev-xsd2php", "== dev-xsd2php"),
    ("dev-3.next", "== dev-3.next"),
    ("dev-foobar", "== dev-foobar"),
    ("dev-1.0.0-dev<1.0.5-dev", "== dev-1.0.0-dev<1.0.5-dev"),
    ("dev-1.0.0-dev<1.0.5", "== dev-1.0.0-dev<1.0.5"),
    ("foobar-dev as 2.1.0", "== dev-foobar"),
    (
        "foobar-dev as 2.1.0 || 3.5",
        "[== dev-foobar || == 3.5.0.0]",
    ),
    (
        "foobar-dev as 2.1.0 || 3.5 as 1.5",
        "[== dev-foobar || == 3.5.0.0]",
    ),
    ("2.1.0 - 2.3-dev", "[>= 2.1.0.0-dev <= 2.3.0.0-dev]"),
    (
        "1.0 - 2.0.x-dev",
        "[>= 1.0.0.0-dev <= 2.0.9999999.9999999-dev]",
    ),
    ("^1.", "[>= 1.0.0.0-dev < 2.0.0.0-dev]"),
    ("~1.", "[>= 1.0.0.0-dev < 2.0.0.0-dev]"),
    ("1.2.", "== 1.2.0.0"),
    ("1.2..dev", "== 1.2.0.0-dev"),
    ("1.2-.dev", "== 1.2.0.0-dev"),
    ("1.2_-dev", "== 1.2.0.0-dev"),
    (
        "~2.5.9|~2.6,>=2.6.2",
        "[[>= 2.5.9.0-dev < 2.6.0.0-dev] || [>= 2.6.0.0-dev < 3.0.0.0-dev >= 2.6.2.0-dev]]",
    ),
    (">2.0,<=3.0", "[> 2.0.0.0 <= 3.0.0.0]"),
    (">2.0 <=3.0", "[> 2.0.0.0 <= 3.0.0.0]"),
    (">2.0  <=3.0", "[> 2.0.0.0 <= 3.0.0.0]"),
    (">2.0, <=3.0", "[> 2.0.0.0 <= 3.0.0.0]"),
    (">2.0 ,<=3.0", "[> 2.0.0.0 <= 3.0.0.0]"),
    (">2.0 , <=3.0", "[> 2.0.0.0 <= 3.0.0.0]"),
    (">2.0   , <=3.0", "[> 2.0.0.0 <= 3.0.0.0]"),
    ("> 2.0   <=  3.0", "[> 2.0.0.0 <= 3.0.0.0]"),
    ("> 2.0  ,  <=  3.0", "[> 2.0.0.0 <= 3.0.0.0]"),
    ("  > 2.0  ,  <=  3.0 ", "[> 2.0.0.0 <= 3.0.0.0]"),
    (
        ">=1.1.0-alpha4,<1.2.x-dev",
        "[>= 1.1.0.0-alpha4 < 1.2.9999999.9999999-dev]",
    ),
    (
        ">=1.1.0-alpha4,<1.2-beta2",
        "[>= 1.1.0.0-alpha4 < 1.2.0.0-beta2]",
    ),
    (
        ">2.0,<2.0.5 | >2.0.6",
        "[[> 2.0.0.0 < 2.0.5.0-dev] || > 2.0.6.0]",
    ),
    (
        ">2.0,<2.0.5 || >2.0.6",
        "[[> 2.0.0.0 < 2.0.5.0-dev] || > 2.0.6.0]",
    ),
    (
        "> 2.0 , <2.0.5 | >  2.0.6",
        "[[> 2.0.0.0 < 2.0.5.0-dev] || > 2.0.6.0]",
    ),
    (">2.0@stable,<=3.0@dev", "[> 2.0.0.0 <= 3.0.0.0-dev]"),
    (">2.0@stable,@dev", "[> 2.0.0.0 *]"),
    (">2.0@stable || 0@dev", "[> 2.0.0.0 || == 0.0.0.0]"),
    // MultiConstraintTest::multiConstraintOptimizations: ranges that meet are joined.
    ("^2.5 || ^3.0", "[>= 2.5.0.0-dev < 4.0.0.0-dev]"),
    ("^2.5 || ^3.0 || ^4.0", "[>= 2.5.0.0-dev < 5.0.0.0-dev]"),
    (
        "~2.5.9 || ~2.6, >=2.6.2",
        "[[>= 2.5.9.0-dev < 2.6.0.0-dev] || [>= 2.6.0.0-dev < 3.0.0.0-dev >= 2.6.2.0-dev]]",
    ),
    (
        "^1.0 || ^2.0 !=2.0.1 || ^3.0 || ^4.0",
        "[[>= 1.0.0.0-dev < 2.0.0.0-dev] || [>= 2.0.0.0-dev < 3.0.0.0-dev != 2.0.1.0] \
         || [>= 3.0.0.0-dev < 5.0.0.0-dev]]",
    ),
    (
        "^1.0 != 1.0.1 || ^2.0 !=2.0.1 || ^3.0 || ^4.0 != 4.0.1",
        "[[>= 1.0.0.0-dev < 2.0.0.0-dev != 1.0.1.0] || [>= 2.0.0.0-dev < 3.0.0.0-dev != 2.0.1.0] \
         || [>= 3.0.0.0-dev < 4.0.0.0-dev] || [>= 4.0.0.0-dev < 5.0.0.0-dev != 4.0.1.0]]",
    ),
];

/// VersionParserTest::failingConstraints and testParseConstraintsFailsOnBadReference.
const NOT_CONSTRAINTS: &[&str] = &[
    "",
    "1.0.0-meh",
    ">2.0,,<=3.0",
    ">2.0 ,, <=3.0",
    ">2.0 ||| <=3.0",
    ",^1@dev || ^4@dev",
    ",^1@dev",
    "|| ^1@dev",
    "^1@dev ||",
    "^1@dev ,",
    "^2.0.*",
    "^2.0.x",
    "^2.0.x-beta",
    "^2.*",
    "^2.x",
    "^2.x-beta",
    "^2.1.2.*",
    "^2.1.2.x",
    "^2.1.2.x-beta",
    "~2.0.*",
    "~2.0.x",
    "~2.0.x-beta",
    "~2.*",
    "~2.x",
    "~2.x-beta",
    "~2.1.2.*",
    "~2.1.2.x",
    "~2.1.2.x-beta",
    "1.x - 2.*",
    "2.x.x.x-dev - 3.x.x.x-dev",
    "^1.*-beta-dev",
    "^1. *-dev",
    "~1.*-beta-dev",
    "1.0.0-dev<1.0.5-dev",
    "*-dev",
    "^",
    "^8 || ^",
    "~",
    "~1 ~",
    "1.0#abcd123",
    "1.0#trunk/@123",
];

#[test]
fn constraints_parse_like_composer() {
    for (input, expected) in SIMPLE.iter().chain(COMPOUND) {
        assert_eq!(parsed(input), *expected, "{input:?}");
    }
    for (input, low, high) in RANGES {
        let expected = if low.is_empty() {
            high.to_string()
        } else {
            format!("[{low} {high}]")
        };
        assert_eq!(parsed(input), expected, "{input:?}");
    }
}

#[test]
fn bad_constraints_are_refused_like_composer() {
    for input in NOT_CONSTRAINTS {
        assert!(Constraint::parse(input).is_err(), "{input:?} parsed");
    }
}

#[test]
fn ruby_style_tilde_gets_a_hint() {
    // VersionParserTest::testParseConstraintsNudgesRubyDevsTowardsThePathOfRighteousness.
    let error = Constraint::parse("~>1.2").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("invalid operator \"~>\", you probably meant to use the \"~\" operator"),
        "{error}"
    );
}

/// Matching versions against constraints, and comparing versions.
mod matching;

//! Composer version constraints: normalizing versions and deciding whether a version satisfies
//! a constraint string such as `>=2.0.0,<2.0.11|>=2.1.0,<2.1.5`, the way Composer itself does.
//!
//! The status page asks whether a version the proxy served is covered by a security advisory,
//! and advisories state what they cover as a Composer constraint (`affectedVersions`). An
//! approximation would flag or miss versions that Composer's own `audit` treats differently, so
//! this is a port of the semantics of the `composer/semver` library (`VersionParser::normalize`,
//! `parseConstraints`, `Constraint`, `MultiConstraint`, `Semver::satisfies`) and of PHP's
//! `version_compare`, written as plain string scanning instead of PHP's regular expressions.
//! It is pure and allocation-light; nothing here does I/O.
//!
//! Deliberately left out: alias hints in error messages (`1.0 as ^2.0`: aliases are stripped
//! as Composer strips them, but the error does not explain the alias rule), and version
//! numbers past `u64` when a bound is incremented (PHP turns them into floats; here the
//! constraint is refused).

use std::cmp::Ordering;
use std::fmt;

mod version;

pub use version::normalize;
use version::{
    is_php_space, is_separator, leading_digits, match_version, numeric_parts, parse_modifier,
    parse_stability, php_trim, php_version_compare, split_stability_flag, strip_alias,
    strip_prefix_ci, strip_suffix_ci, Stability,
};

/// Why a version or constraint string could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("invalid version string \"{0}\"")]
    InvalidVersion(String),
    #[error("could not parse version constraint \"{constraint}\": {reason}")]
    InvalidConstraint { constraint: String, reason: String },
}

impl ConstraintError {
    fn constraint(constraint: &str, reason: impl fmt::Display) -> Self {
        Self::InvalidConstraint {
            constraint: constraint.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A parsed constraint: any of several alternatives (`|`, `||`), each a list of terms that
/// must all hold (`,` or space).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    alternatives: Vec<Vec<Term>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    /// `*`: every version, dev branches included.
    Any,
    /// An operator and a normalized version.
    Compare { op: Op, version: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Lt => ordering == Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
            Op::Gt => ordering == Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
        }
    }
}

impl Constraint {
    /// Parses a constraint string as Composer's `VersionParser::parseConstraints` does.
    pub fn parse(input: &str) -> Result<Constraint, ConstraintError> {
        let mut alternatives = Vec::new();
        for alternative in split_or(php_trim(input)) {
            let mut terms = Vec::new();
            for piece in split_and(alternative) {
                terms.extend(parse_single(piece)?);
            }
            alternatives.push(terms);
        }
        Ok(Constraint {
            alternatives: join_adjacent_ranges(alternatives),
        })
    }

    /// Whether `version` (as Composer metadata writes it, `version` or `version_normalized`)
    /// satisfies the constraint, as `Semver::satisfies` decides. A dev branch (`dev-main`)
    /// only satisfies `*`, `dev-main` itself and `!=` other versions; a string that is not a
    /// version satisfies nothing.
    pub fn matches(&self, version: &str) -> bool {
        let Ok(version) = normalize(version) else {
            return false;
        };
        self.alternatives
            .iter()
            .any(|terms| terms.iter().all(|term| term.admits(&version)))
    }
}

impl Term {
    fn admits(&self, version: &str) -> bool {
        let Term::Compare { op, version: bound } = self else {
            return true;
        };
        let (branch, bound_branch) = (version.starts_with("dev-"), bound.starts_with("dev-"));
        match op {
            // Branches are names, not points on a line: only equality means anything.
            Op::Ne if branch || bound_branch => version != bound,
            Op::Eq if branch && bound_branch => version == bound,
            _ if branch || bound_branch => false,
            op => op.holds(php_version_compare(version, bound)),
        }
    }
}

/// Composer's string form of a parsed constraint (`[>= 1.0.0.0-dev < 2.0.0.0-dev]`), which
/// its tests compare against.
impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn terms(f: &mut fmt::Formatter<'_>, terms: &[Term]) -> fmt::Result {
            if let [term] = terms {
                return write!(f, "{term}");
            }
            f.write_str("[")?;
            for (i, term) in terms.iter().enumerate() {
                write!(f, "{}{term}", if i == 0 { "" } else { " " })?;
            }
            f.write_str("]")
        }
        if let [only] = self.alternatives.as_slice() {
            return terms(f, only);
        }
        f.write_str("[")?;
        for (i, alternative) in self.alternatives.iter().enumerate() {
            f.write_str(if i == 0 { "" } else { " || " })?;
            terms(f, alternative)?;
        }
        f.write_str("]")
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Any => f.write_str("*"),
            Term::Compare { op, version } => write!(f, "{} {version}", op.as_str()),
        }
    }
}

/// Composer's `parseConstraint`: one term of an AND list, which may yield two bounds.
fn parse_single(input: &str) -> Result<Vec<Term>, ConstraintError> {
    let fail = |reason: &dyn fmt::Display| ConstraintError::constraint(input, reason);
    let mut constraint = strip_alias(input);
    let mut stability_flag = None;
    if let Some((head, flag)) = split_stability_flag(constraint) {
        if !head.contains(is_separator) {
            constraint = if head.is_empty() { "*" } else { head };
            stability_flag = (flag != "stable").then_some(flag);
        }
    }
    if let Some(head) = strip_reference(constraint) {
        constraint = head;
    }

    let (v_prefix, body) = match constraint.strip_prefix(['v', 'V']) {
        Some(body) => (true, body),
        None => (false, constraint),
    };
    let wildcards: Vec<&str> = body.split('.').collect();
    if wildcards.iter().all(|w| matches!(*w, "x" | "X" | "*")) {
        return Ok(if v_prefix || wildcards.len() > 1 {
            vec![compare(Op::Ge, "0.0.0.0-dev")]
        } else {
            vec![Term::Any]
        });
    }

    if let Some(rest) = constraint.strip_prefix('~') {
        if rest.strip_prefix('>').and_then(match_version).is_some() {
            return Err(fail(
                &"invalid operator \"~>\", you probably meant to use the \"~\" operator",
            ));
        }
        if let Some(m) = match_version(rest) {
            let present = m.numbers.iter().take_while(|n| n.is_some()).count();
            let position = present + usize::from(m.wildcard_dev);
            let suffix = if m.unstated_stability() { "-dev" } else { "" };
            let low = normalize(&format!("{rest}{suffix}")).map_err(|e| fail(&e))?;
            let high =
                bump(&m.numbers, position.saturating_sub(1).max(1), 1).map_err(|e| fail(&e))?;
            return Ok(vec![compare(Op::Ge, &low), compare(Op::Lt, &high)]);
        }
    }

    if let Some(rest) = constraint.strip_prefix('^') {
        if let Some(m) = match_version(rest) {
            let [major, minor, patch, _] = m.numbers;
            let position = if major != Some("0") || minor.is_none() {
                1
            } else if minor != Some("0") || patch.is_none() {
                2
            } else {
                3
            };
            let suffix = if m.unstated_stability() { "-dev" } else { "" };
            let low = normalize(&format!("{rest}{suffix}")).map_err(|e| fail(&e))?;
            let high = bump(&m.numbers, position, 1).map_err(|e| fail(&e))?;
            return Ok(vec![compare(Op::Ge, &low), compare(Op::Lt, &high)]);
        }
    }

    if let Some(numbers) = match_x_range(constraint) {
        let position = numbers.iter().take_while(|n| n.is_some()).count();
        let low = bump(&numbers, position, 0).map_err(|e| fail(&e))?;
        let high = bump(&numbers, position, 1).map_err(|e| fail(&e))?;
        return Ok(if low == "0.0.0.0-dev" {
            vec![compare(Op::Lt, &high)]
        } else {
            vec![compare(Op::Ge, &low), compare(Op::Lt, &high)]
        });
    }

    if let Some((from, to)) = split_hyphen_range(constraint) {
        if let (Some(low_match), Some(high_match)) = (match_version(from), match_version(to)) {
            let suffix = if low_match.unstated_stability() {
                "-dev"
            } else {
                ""
            };
            let low = normalize(from).map_err(|e| fail(&e))? + suffix;
            let [_, minor, patch, _] = high_match.numbers;
            let high = normalize(to).map_err(|e| fail(&e))?;
            let upper = if (minor.is_some() && patch.is_some()) || !high_match.unstated_stability()
            {
                compare(Op::Le, &high)
            } else {
                let position = if minor.is_none() { 1 } else { 2 };
                compare(
                    Op::Lt,
                    &bump(&high_match.numbers, position, 1).map_err(|e| fail(&e))?,
                )
            };
            return Ok(vec![compare(Op::Ge, &low), upper]);
        }
    }

    // A plain comparison: `>=1.2`, `!= 2.0`, `1.0.0`, `dev-main`.
    let (op_text, rest) = ["<>", "!=", ">=", ">", "<=", "<", "==", "="]
        .iter()
        .find_map(|op| Some((*op, constraint.strip_prefix(op)?)))
        .unwrap_or(("", constraint));
    let rest = rest.trim_start_matches(is_php_space);
    let mut version = match normalize(rest) {
        Ok(version) => version,
        // `foobar-dev` is a branch that should have been written `dev-foobar`.
        Err(e) => match rest.strip_suffix("-dev") {
            Some(name)
                if rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-./".contains(c)) =>
            {
                normalize(&format!("dev-{name}")).map_err(|e| fail(&e))?
            }
            _ => return Err(fail(&e)),
        },
    };
    let op = match op_text {
        "<>" | "!=" => Op::Ne,
        ">=" => Op::Ge,
        ">" => Op::Gt,
        "<=" => Op::Le,
        "<" => Op::Lt,
        _ => Op::Eq,
    };
    match stability_flag {
        Some(flag) if op != Op::Eq && parse_stability(&version) == Stability::Stable => {
            version = format!("{version}-{flag}");
        }
        // `<2.0` and `>=2.0` leave 2.0's own pre-releases out and in, as Composer's do.
        _ if matches!(op, Op::Lt | Op::Ge)
            && !has_modifier_suffix(rest)
            && !rest.starts_with("dev-") =>
        {
            version.push_str("-dev");
        }
        _ => {}
    }
    Ok(vec![compare(op, &version)])
}

fn compare(op: Op, version: &str) -> Term {
    Term::Compare {
        op,
        version: version.to_string(),
    }
}

/// Whether the lower-cased `s` ends in `-` and a modifier (`-beta2`, `-p1`, `-dev`). Composer
/// matches this case-sensitively against its mixed-case word list, so `-rc1` does not count.
fn has_modifier_suffix(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    lower
        .match_indices('-')
        .any(|(i, _)| parse_modifier(&lower[i + 1..], false).is_some())
}

/// `1.2.x`, `v2.*.*`, `2.1.3.*`: up to three numbers, then one or more wildcards.
fn match_x_range(constraint: &str) -> Option<[Option<&str>; 4]> {
    let body = constraint.strip_prefix('v').unwrap_or(constraint);
    if leading_digits(body) == 0 {
        return None;
    }
    let (numbers, rest) = numeric_parts(body, 3);
    let wildcards = rest.strip_prefix('.')?.split('.');
    wildcards
        .into_iter()
        .all(|w| matches!(w, "x" | "X" | "*"))
        .then_some(numbers)
}

/// `1.0 - 2.0`: the two versions of a hyphen range.
fn split_hyphen_range(constraint: &str) -> Option<(&str, &str)> {
    let (from, rest) = constraint.split_once(' ')?;
    let rest = rest.trim_start_matches(' ').strip_prefix('-')?;
    let to = rest.trim_start_matches(' ');
    (to.len() < rest.len()).then_some((from, to))
}

/// Composer's `manipulateVersionString`: keeps the numbers before `position` (1-based), adds
/// `increment` at it, zeroes the rest, and appends `-dev`.
fn bump(numbers: &[Option<&str>; 4], position: usize, increment: u64) -> Result<String, String> {
    let mut parts = Vec::with_capacity(4);
    for (i, number) in numbers.iter().enumerate() {
        let number = number.unwrap_or("");
        parts.push(match (i + 1).cmp(&position) {
            Ordering::Greater => "0".to_string(),
            Ordering::Equal if increment > 0 => {
                let value: u64 = if number.is_empty() {
                    0
                } else {
                    number
                        .parse()
                        .map_err(|_| format!("version number {number} is too large"))?
                };
                value
                    .checked_add(increment)
                    .ok_or_else(|| format!("version number {number} is too large"))?
                    .to_string()
            }
            _ => number.to_string(),
        });
    }
    Ok(parts.join(".") + "-dev")
}

/// Splits on `|` or `||` and the whitespace around them.
fn split_or(s: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(bar) = rest.find('|') {
        pieces.push(rest[..bar].trim_end_matches(is_php_space));
        let after = &rest[bar + 1..];
        rest = after.strip_prefix('|').unwrap_or(after);
        rest = rest.trim_start_matches(is_php_space);
    }
    pieces.push(rest);
    pieces
}

/// Splits an AND list on `,` or spaces, as Composer's split pattern
/// `(?<!^|as|[=>< ,]) *(?<!-)[, ](?!-) *(?!,|as|$)` does: never after an operator (`>= 1.0`
/// stays whole), never around the `-` of a hyphen range, never around an alias's `as`.
fn split_and(s: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut piece_start = 0;
    let mut from = 0;
    while let Some((start, end)) = (from..s.len()).find_map(|i| Some((i, separator_at(s, i)?))) {
        pieces.push(&s[piece_start..start]);
        piece_start = end;
        from = end;
    }
    pieces.push(&s[piece_start..]);
    pieces
}

/// The end of an AND separator starting at byte `start`, if one does.
fn separator_at(s: &str, start: usize) -> Option<usize> {
    let b = s.as_bytes();
    if start == 0 || b[..start].ends_with(b"as") || b"=>< ,".contains(&b[start - 1]) {
        return None;
    }
    let spaces = b[start..].iter().take_while(|&&c| c == b' ').count();
    (0..=spaces).rev().find_map(|k| {
        let at = start + k;
        let ok = matches!(b.get(at), Some(b',' | b' '))
            && b[at - 1] != b'-'
            && b.get(at + 1) != Some(&b'-');
        if !ok {
            return None;
        }
        let trailing = b[at + 1..].iter().take_while(|&&c| c == b' ').count();
        (0..=trailing).rev().map(|m| at + 1 + m).find(|&end| {
            let next = &b[end..];
            !(next.is_empty() || next[0] == b',' || next.starts_with(b"as"))
        })
    })
}

/// Composer's `MultiConstraint::create` joins `[>= a < b] || [>= b < c]` into `[>= a < c]`.
fn join_adjacent_ranges(alternatives: Vec<Vec<Term>>) -> Vec<Vec<Term>> {
    let mut joined: Vec<Vec<Term>> = Vec::with_capacity(alternatives.len());
    for right in alternatives {
        if let Some(left) = joined.last_mut() {
            if let (
                [low @ Term::Compare { op: Op::Ge, .. }, Term::Compare {
                    op: Op::Lt,
                    version: middle,
                }],
                [Term::Compare {
                    op: Op::Ge,
                    version: start,
                }, high @ Term::Compare {
                    op: Op::Lt | Op::Le,
                    ..
                }],
            ) = (left.as_slice(), right.as_slice())
            {
                if middle == start {
                    *left = vec![low.clone(), high.clone()];
                    continue;
                }
            }
        }
        joined.push(right);
    }
    joined
}

/// `dev-main#abc123`, `1.0.x-dev#abc123`: the constraint without the commit reference.
fn strip_reference(constraint: &str) -> Option<&str> {
    for (i, _) in constraint.match_indices('#') {
        let head = &constraint[..i];
        if i + 1 >= constraint.len() || head.contains(|c| c == '@' || is_separator(c)) {
            return None;
        }
        let branch = head.len() > 4 && strip_prefix_ci(head, "dev-").is_some();
        let numeric_branch = head.len() > 6 && strip_suffix_ci(head, ".x-dev").is_some();
        if branch || numeric_branch {
            return Some(head);
        }
    }
    None
}

#[cfg(test)]
mod tests;

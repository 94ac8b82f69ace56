//! Versions as Composer reads them: `VersionParser::normalize` and its helpers, the shape of a
//! version inside a constraint, stabilities, and PHP's `version_compare`, which Composer's
//! `Constraint` uses to order two normalized versions.

use std::cmp::Ordering;

use super::ConstraintError;

/// Normalizes a version as Composer's `VersionParser::normalize` does: `v1.2` → `1.2.0.0`,
/// `2.4.7-p1` → `2.4.7.0-patch1`, `1.0.x-dev` → `1.0.9999999.9999999-dev`, `dev-main` stays.
pub fn normalize(version: &str) -> Result<String, ConstraintError> {
    let original = php_trim(version);
    let mut version = strip_alias(original);
    if let Some((head, _)) = split_stability_flag(version) {
        version = head;
    }
    if matches!(version, "master" | "trunk" | "default") {
        return Ok(format!("dev-{version}"));
    }
    if let Some(name) = strip_prefix_ci(version, "dev-") {
        return Ok(format!("dev-{name}"));
    }
    if let Some((head, build)) = version.split_once('+') {
        let head_ok = !head.is_empty() && !head.contains(is_separator);
        if head_ok && !build.is_empty() && !build.contains(is_php_space) {
            version = head;
        }
    }
    if let Some(normalized) = normalize_classical(version).or_else(|| normalize_date(version)) {
        return Ok(normalized);
    }
    // A numeric branch: `1.x-dev`, `2.0.*-dev`.
    if let Some(head) = strip_suffix_ci(version, "dev") {
        let head = head.strip_suffix(['.', '-']).unwrap_or(head);
        let branch = normalize_branch(head);
        if !branch.contains("dev-") {
            return Ok(branch);
        }
    }
    Err(ConstraintError::InvalidVersion(original.to_string()))
}

/// `1.2.3`, `v1.2`, `1.0.0-beta.2`: up to four numbers, the first at most five digits long.
fn normalize_classical(version: &str) -> Option<String> {
    let body = strip_v(version, true);
    let major = leading_digits(body);
    if major == 0 || major > 5 {
        return None;
    }
    let (numbers, rest) = numeric_parts(body, 4);
    let modifier = parse_modifier(rest, true)?;
    let mut out = String::new();
    for (i, number) in numbers.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(number.unwrap_or("0"));
    }
    Some(with_modifier(out, &modifier))
}

/// Dates and date-times: `20100102`, `2010-01-02-10-20-30.5`, `201903.0-p2`.
fn normalize_date(version: &str) -> Option<String> {
    let body = strip_v(version, true);
    let run = body
        .bytes()
        .take_while(|b| b.is_ascii_digit() || matches!(b, b'.' | b':' | b'-'))
        .count();
    // The date part ends on a digit that is followed by a non-digit; try the longest first. It
    // is at most 30 bytes long (4 + 6 × 3 + 2 × 4), which also bounds the work on junk input.
    (1..=run.min(30)).rev().find_map(|end| {
        let bytes = body.as_bytes();
        let ends_on_number =
            bytes[end - 1].is_ascii_digit() && !bytes.get(end).is_some_and(u8::is_ascii_digit);
        if !ends_on_number || !is_date(&bytes[..end]) {
            return None;
        }
        let modifier = parse_modifier(&body[end..], true)?;
        let date: String = body[..end]
            .chars()
            .map(|c| if c.is_ascii_digit() { c } else { '.' })
            .collect();
        Some(with_modifier(date, &modifier))
    })
}

/// `\d{4}(?:[.:-]?\d{2}){1,6}(?:[.:-]?\d{1,3}){0,2}`, matched in full.
fn is_date(date: &[u8]) -> bool {
    fn rest(s: &[u8], pairs: usize, tails: usize) -> bool {
        if s.is_empty() {
            return pairs >= 1;
        }
        let s = match s[0] {
            b'.' | b':' | b'-' => &s[1..],
            _ => s,
        };
        let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let pair = tails == 0 && pairs < 6 && digits >= 2 && rest(&s[2..], pairs + 1, 0);
        pair || (pairs >= 1
            && tails < 2
            && (1..=digits.min(3)).any(|n| rest(&s[n..], pairs, tails + 1)))
    }
    date.len() >= 4 && date[..4].iter().all(u8::is_ascii_digit) && rest(&date[4..], 0, 0)
}

/// Composer's `normalizeBranch`: `1.0.x` → `1.0.9999999.9999999-dev`, `feature` → `dev-feature`.
pub(super) fn normalize_branch(name: &str) -> String {
    let name = php_trim(name);
    let body = strip_v(name, true);
    let major = leading_digits(body);
    let mut parts = vec![&body[..major]];
    let mut rest = &body[major..];
    while parts.len() < 4 && major > 0 {
        let Some(after) = rest.strip_prefix('.') else {
            break;
        };
        let len = match leading_digits(after) {
            0 if after.starts_with(['x', 'X', '*']) => 1,
            n => n,
        };
        if len == 0 {
            break;
        }
        parts.push(&after[..len]);
        rest = &after[len..];
    }
    if major == 0 || !rest.is_empty() {
        return format!("dev-{name}");
    }
    let mut version = String::new();
    for i in 0..4 {
        if i > 0 {
            version.push('.');
        }
        match parts.get(i) {
            Some(part) if !part.starts_with(['x', 'X', '*']) => version.push_str(part),
            _ => version.push_str("9999999"),
        }
    }
    version + "-dev"
}

/// The pre-release or patch part after the numbers: `-beta.2`, `RC1-dev`, `-p1`, `.dev`.
#[derive(Debug, Default)]
pub(super) struct Modifier<'a> {
    /// As written (`b`, `RC`, `patch`); Composer expands it.
    pub(super) stability: Option<&'a str>,
    /// The number after it, separators included (`.2`).
    pub(super) number: &'a str,
    pub(super) dev: bool,
}

/// In the order Composer's pattern tries them, longer words before their prefixes.
const STABILITY_WORDS: [&str; 9] = [
    "stable", "beta", "b", "RC", "alpha", "a", "patch", "pl", "p",
];

/// Matches all of `s` against `[._-]?(?:(word)((?:[.-]?\d+)*))?([.-]?dev)?`.
pub(super) fn parse_modifier(s: &str, ignore_case: bool) -> Option<Modifier<'_>> {
    let skips: &[usize] = if s.starts_with(['.', '_', '-']) {
        &[1, 0]
    } else {
        &[0]
    };
    for &skip in skips {
        let rest = &s[skip..];
        for word in STABILITY_WORDS {
            let Some(after) = strip_prefix_case(rest, word, ignore_case) else {
                continue;
            };
            let number_len = numbers_len(after);
            if let Some(dev) = dev_suffix(&after[number_len..], ignore_case) {
                return Some(Modifier {
                    stability: Some(&rest[..word.len()]),
                    number: &after[..number_len],
                    dev,
                });
            }
        }
        if let Some(dev) = dev_suffix(rest, ignore_case) {
            return Some(Modifier {
                dev,
                ..Modifier::default()
            });
        }
    }
    None
}

/// Length of `(?:[.-]?\d+)*` at the start of `s`.
fn numbers_len(s: &str) -> usize {
    let mut len = 0;
    loop {
        let sep = usize::from(s[len..].starts_with(['.', '-']));
        let digits = leading_digits(&s[len + sep..]);
        if digits == 0 {
            return len;
        }
        len += sep + digits;
    }
}

/// `Some(true)` for `dev`, `.dev`, `-dev`; `Some(false)` for nothing; `None` otherwise.
fn dev_suffix(s: &str, ignore_case: bool) -> Option<bool> {
    if s.is_empty() {
        return Some(false);
    }
    let s = s.strip_prefix(['.', '-']).unwrap_or(s);
    (strip_prefix_case(s, "dev", ignore_case) == Some("")).then_some(true)
}

fn with_modifier(mut version: String, modifier: &Modifier<'_>) -> String {
    if let Some(word) = modifier.stability {
        if word == "stable" {
            return version;
        }
        version.push('-');
        version.push_str(match word.to_ascii_lowercase().as_str() {
            "a" | "alpha" => "alpha",
            "b" | "beta" => "beta",
            "p" | "pl" | "patch" => "patch",
            "rc" => "RC",
            _ => "stable",
        });
        version.push_str(modifier.number.trim_start_matches(['.', '-']));
    }
    if modifier.dev {
        version.push_str("-dev");
    }
    version
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stability {
    Dev,
    Alpha,
    Beta,
    Rc,
    Stable,
}

/// Composer's `VersionParser::parseStability`.
pub(super) fn parse_stability(version: &str) -> Stability {
    let version = match version.find('#') {
        Some(i) if i + 1 < version.len() => &version[..i],
        _ => version,
    };
    if version.starts_with("dev-") || version.ends_with("-dev") {
        return Stability::Dev;
    }
    let lower = version.to_ascii_lowercase();
    let modifier = (0..=lower.len())
        .filter(|&i| lower.is_char_boundary(i))
        .find_map(|i| parse_modifier(lower[i..].split('+').next().unwrap_or(""), true));
    match modifier {
        Some(Modifier { dev: true, .. }) => Stability::Dev,
        Some(Modifier {
            stability: Some(word),
            ..
        }) => match word {
            "beta" | "b" => Stability::Beta,
            "alpha" | "a" => Stability::Alpha,
            "rc" => Stability::Rc,
            _ => Stability::Stable,
        },
        _ => Stability::Stable,
    }
}

/// A version as it appears inside a constraint (Composer's `$versionRegex`).
pub(super) struct VersionMatch<'a> {
    pub(super) numbers: [Option<&'a str>; 4],
    pub(super) modifier: Modifier<'a>,
    /// Ends in `.x-dev` (or `.*-dev`).
    pub(super) wildcard_dev: bool,
}

impl VersionMatch<'_> {
    /// Whether Composer adds `-dev` to the lower bound: nothing says which stability.
    pub(super) fn unstated_stability(&self) -> bool {
        self.modifier.stability.is_none() && !self.modifier.dev && !self.wildcard_dev
    }
}

pub(super) fn match_version(s: &str) -> Option<VersionMatch<'_>> {
    let body = strip_v(s, true);
    if leading_digits(body) == 0 {
        return None;
    }
    let (numbers, rest) = numeric_parts(body, 4);
    let rest = match rest.split_once('+') {
        Some((_, build)) if build.is_empty() || build.contains(is_php_space) => return None,
        Some((rest, _)) => rest,
        None => rest,
    };
    if let Some(modifier) = parse_modifier(rest, true) {
        return Some(VersionMatch {
            numbers,
            modifier,
            wildcard_dev: false,
        });
    }
    let wildcard = rest.strip_prefix(['.'])?.strip_prefix(['x', 'X', '*'])?;
    (dev_suffix(wildcard, true) == Some(true)).then_some(VersionMatch {
        numbers,
        modifier: Modifier::default(),
        wildcard_dev: true,
    })
}

/// `dev-main as 1.0.x-dev` → `dev-main` (an inline alias in a requirement).
pub(super) fn strip_alias(s: &str) -> &str {
    let token = |t: &str| !t.is_empty() && !t.contains(is_separator);
    let Some((head, rest)) = s.split_once(' ') else {
        return s;
    };
    let Some(tail) = rest.trim_start_matches(' ').strip_prefix("as ") else {
        return s;
    };
    if token(head) && token(tail.trim_start_matches(' ')) {
        head
    } else {
        s
    }
}

/// `1.0@dev` → (`1.0`, `dev`).
pub(super) fn split_stability_flag(s: &str) -> Option<(&str, &str)> {
    let (head, flag) = s.rsplit_once('@')?;
    ["stable", "RC", "beta", "alpha", "dev"]
        .iter()
        .any(|known| known.eq_ignore_ascii_case(flag))
        .then_some((head, flag))
}

/// Up to `max` dot-separated numbers at the start of `body` (which starts with a digit).
pub(super) fn numeric_parts(body: &str, max: usize) -> ([Option<&str>; 4], &str) {
    let mut numbers = [None; 4];
    let first = leading_digits(body);
    numbers[0] = Some(&body[..first]);
    let mut rest = &body[first..];
    for slot in numbers.iter_mut().take(max).skip(1) {
        let Some(after) = rest.strip_prefix('.') else {
            break;
        };
        let len = leading_digits(after);
        if len == 0 {
            break;
        }
        *slot = Some(&after[..len]);
        rest = &after[len..];
    }
    (numbers, rest)
}

/// PHP's `version_compare` on two normalized versions: numbers compare as numbers, and
/// `dev` < `alpha` < `beta` < `RC` < a number < `patch`.
pub(super) fn php_version_compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (canonicalize(a), canonicalize(b));
    let mut a_parts = a.split(|&c| c == b'.').filter(|p| !p.is_empty());
    let mut b_parts = b.split(|&c| c == b'.').filter(|p| !p.is_empty());
    loop {
        let ordering = match (a_parts.next(), b_parts.next()) {
            (None, None) => return Ordering::Equal,
            (Some(a), Some(b)) => compare_parts(a, b),
            // The longer one decides by its next part: a number or `patch` makes it greater.
            (Some(a), None) => compare_to_number(a),
            (None, Some(b)) => compare_to_number(b).reverse(),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
}

fn starts_with_digit(part: &[u8]) -> bool {
    part.first().is_some_and(u8::is_ascii_digit)
}

/// A part against "some number" (PHP's `#N#`), where the other version has none left.
fn compare_to_number(part: &[u8]) -> Ordering {
    if starts_with_digit(part) {
        Ordering::Greater
    } else {
        special_form_rank(part).cmp(&special_form_rank(b"#"))
    }
}

fn compare_parts(a: &[u8], b: &[u8]) -> Ordering {
    match (starts_with_digit(a), starts_with_digit(b)) {
        (true, true) => {
            let trim =
                |p: &[u8]| -> Vec<u8> { p.iter().copied().skip_while(|&c| c == b'0').collect() };
            let (a, b) = (trim(a), trim(b));
            a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
        }
        (true, false) => compare_to_number(b).reverse(),
        (false, true) => compare_to_number(a),
        (false, false) => special_form_rank(a).cmp(&special_form_rank(b)),
    }
}

/// PHP matches these as prefixes, in this order; anything else ranks below `dev`.
fn special_form_rank(part: &[u8]) -> i8 {
    const FORMS: [(&[u8], i8); 10] = [
        (b"dev", 0),
        (b"alpha", 1),
        (b"a", 1),
        (b"beta", 2),
        (b"b", 2),
        (b"RC", 3),
        (b"rc", 3),
        (b"#", 4),
        (b"pl", 5),
        (b"p", 5),
    ];
    FORMS
        .iter()
        .find(|(form, _)| part.starts_with(form))
        .map_or(-1, |(_, rank)| *rank)
}

/// PHP's `php_canonicalize_version`: `-`, `_`, `+` and other punctuation become `.`, and a
/// `.` goes between digits and letters (`1.0.0.0-RC1` → `1.0.0.0.RC.1`).
pub(super) fn canonicalize(version: &str) -> Vec<u8> {
    let bytes = version.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 2);
    let Some((&first, rest)) = bytes.split_first() else {
        return out;
    };
    out.push(first);
    let mut last = first;
    let non_digit = |c: u8| !c.is_ascii_digit() && c != b'.';
    for &c in rest {
        let dot_needed = out.last() != Some(&b'.');
        let switch =
            (non_digit(last) && c.is_ascii_digit()) || (last.is_ascii_digit() && non_digit(c));
        if switch && !matches!(c, b'-' | b'_' | b'+') {
            if dot_needed {
                out.push(b'.');
            }
            out.push(c);
        } else if !c.is_ascii_alphanumeric() {
            if dot_needed {
                out.push(b'.');
            }
        } else {
            out.push(c);
        }
        last = c;
    }
    out
}

pub(super) fn leading_digits(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

fn strip_v(s: &str, ignore_case: bool) -> &str {
    match s.strip_prefix('v') {
        Some(rest) => rest,
        None if ignore_case => s.strip_prefix('V').unwrap_or(s),
        None => s,
    }
}

fn strip_prefix_case<'a>(s: &'a str, prefix: &str, ignore_case: bool) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    let same = if ignore_case {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same.then(|| &s[prefix.len()..])
}

pub(super) fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    strip_prefix_case(s, prefix, true)
}

pub(super) fn strip_suffix_ci<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let split = s.len().checked_sub(suffix.len())?;
    let tail = s.get(split..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| &s[..split])
}

/// PCRE's `\s`.
pub(super) fn is_php_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// What ends a token in Composer's patterns (`[^,\s]`).
pub(super) fn is_separator(c: char) -> bool {
    c == ',' || is_php_space(c)
}

/// PHP's `trim`.
pub(super) fn php_trim(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r', '\0', '\x0b'])
}

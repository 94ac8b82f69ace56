//! Composer's metadata minification (`Composer\MetadataMinifier\MetadataMinifier` from
//! composer/metadata-minifier), as PHP runs it on `json_decode($body, true)`.
//!
//! A minified p2 file (`"minified": "composer/2.0"`) lists the first version whole and each
//! later one as the top-level keys that changed from the previous *expanded* version, a key
//! that disappeared as `"__unset"`. The PHP quirks are part of the format, so they are kept:
//!
//! - JSON lists and objects are both PHP arrays (a list's indices are its keys, and `"0"` is
//!   the same key as index 0). Versions come out as `json_encode` would write them: a list when
//!   the keys are 0, 1, … in order (so an empty version is `[]`), an object otherwise.
//! - "No version yet" is PHP falsiness (`!$expandedVersion`): null, false, 0, "", "0" and an
//!   empty array. A version whose every key was unset starts the chain again, taken whole.
//! - `"__unset"` only means "remove" in a version merged into an earlier one; in one taken whole
//!   it is a plain string.
//! - A version that is not an array is skipped by `foreach` with a warning, so expanding repeats
//!   the previous version, and minifying treats it as having no keys.
//! - `isset()` is false for null values, so the minifier repeats keys whose value is null and
//!   then marks them `"__unset"`; values are compared with `===` (key order and int/float
//!   matter).
//!
//! Where PHP throws (keys merged into a version that is `true` or a number) or would index
//! into a string version byte by byte, these functions return [`PhpError`]: Composer gets no
//! versions from such a list either way.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

/// The `minified` value of a file Composer expands.
pub const MINIFIED: &str = "composer/2.0";
/// A key's value in a merged version that removes the key.
pub const UNSET: &str = "__unset";

/// A version list PHP's MetadataMinifier does not turn into versions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("version {index}: {reason}")]
pub struct PhpError {
    /// Position of the version in the list.
    pub index: usize,
    pub reason: &'static str,
}

const SCALAR_AS_ARRAY: &str = "Cannot use a scalar value as an array";
const UNSET_ON_SCALAR: &str = "Cannot unset offset in a non-array variable";
const STRING_OFFSETS: &str = "offsets into a string version (PHP throws or overwrites bytes)";

/// A version as PHP holds it after `json_decode($json, true)`: an array (from a JSON list or
/// object alike, its keys as strings) or anything else.
#[derive(Debug)]
enum Php {
    Scalar(Value),
    Array(Map<String, Value>),
}

impl Default for Php {
    fn default() -> Self {
        Php::Scalar(Value::Null)
    }
}

impl Php {
    fn of(value: &Value) -> Php {
        match pairs(value) {
            Some(pairs) => Php::Array(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.clone()))
                    .collect(),
            ),
            None => Php::Scalar(value.clone()),
        }
    }

    /// `(bool) $value`.
    fn truthy(&self) -> bool {
        match self {
            Php::Array(map) => !map.is_empty(),
            Php::Scalar(Value::Bool(b)) => *b,
            Php::Scalar(Value::Number(n)) => match php_number(n) {
                PhpNumber::Int(i) => i != 0,
                PhpNumber::Float(f) => f != 0.0,
            },
            Php::Scalar(Value::String(s)) => !s.is_empty() && s != "0",
            Php::Scalar(_) => false,
        }
    }

    /// `json_encode($value)` for the top level of a version.
    fn to_json(&self) -> Value {
        match self {
            Php::Scalar(v) => v.clone(),
            Php::Array(map) if map.keys().enumerate().all(|(i, k)| *k == i.to_string()) => {
                Value::Array(map.values().cloned().collect())
            }
            Php::Array(map) => Value::Object(map.clone()),
        }
    }
}

/// The key/value pairs `foreach` visits, or `None` for what it refuses (anything not an array).
fn pairs(value: &Value) -> Option<Vec<(Cow<'_, str>, &Value)>> {
    match value {
        Value::Array(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, v)| (Cow::Owned(i.to_string()), v))
                .collect(),
        ),
        Value::Object(map) => Some(
            map.iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), v))
                .collect(),
        ),
        _ => None,
    }
}

/// A JSON number as PHP decodes it: an integer that fits 64 bits is an int, the rest floats.
/// (serde_json reads `-0` as the float -0.0, PHP as the int 0: the one number told apart wrongly.)
#[derive(Clone, Copy, Debug, PartialEq)]
enum PhpNumber {
    Int(i64),
    Float(f64),
}

fn php_number(n: &Number) -> PhpNumber {
    match n.as_i64() {
        Some(i) => PhpNumber::Int(i),
        None => PhpNumber::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// `$a === $b`: same type; arrays with the same keys in the same order and identical values.
fn identical(a: &Value, b: &Value) -> bool {
    match (pairs(a), pairs(b)) {
        (Some(x), Some(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(&y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && identical(vx, vy))
        }
        (None, None) => match (a, b) {
            (Value::Number(x), Value::Number(y)) => php_number(x) == php_number(y),
            _ => a == b,
        },
        _ => false,
    }
}

/// `isset($version[$key])` for a version that is an array.
fn isset(version: &Value, key: &str) -> bool {
    let value = match version {
        Value::Object(map) => map.get(key),
        Value::Array(list) => key
            .parse::<usize>()
            .ok()
            .filter(|i| i.to_string() == key)
            .and_then(|i| list.get(i)),
        _ => None,
    };
    value.is_some_and(|v| !v.is_null())
}

/// MetadataMinifier::expand, one version at a time. The rewriter walks a minified list with it
/// to know which versions are merged into earlier ones.
#[derive(Debug, Default)]
pub(crate) struct Expansion {
    expanded: Php,
}

impl Expansion {
    /// Whether the next version is merged into the expanded one (and `"__unset"` in it removes
    /// a key) rather than taken whole.
    pub(crate) fn merges(&self) -> bool {
        self.expanded.truthy()
    }

    pub(crate) fn apply(&mut self, version: &Value) -> Result<(), &'static str> {
        if !self.merges() {
            self.expanded = Php::of(version);
            return Ok(());
        }
        let Some(changes) = pairs(version) else {
            return Ok(());
        };
        match &mut self.expanded {
            Php::Array(map) => {
                for (key, value) in changes {
                    if value.as_str() == Some(UNSET) {
                        map.shift_remove(key.as_ref());
                    } else {
                        map.insert(key.into_owned(), value.clone());
                    }
                }
                Ok(())
            }
            Php::Scalar(scalar) => match changes.first() {
                None => Ok(()),
                Some(_) if scalar.is_string() => Err(STRING_OFFSETS),
                Some((_, value)) if value.as_str() == Some(UNSET) => Err(UNSET_ON_SCALAR),
                Some(_) => Err(SCALAR_AS_ARRAY),
            },
        }
    }
}

/// MetadataMinifier::expand: every version of a minified list, whole.
pub fn expand(versions: &[Value]) -> Result<Vec<Value>, PhpError> {
    let mut expansion = Expansion::default();
    versions
        .iter()
        .enumerate()
        .map(|(index, version)| {
            expansion
                .apply(version)
                .map_err(|reason| PhpError { index, reason })?;
            Ok(expansion.expanded.to_json())
        })
        .collect()
}

/// MetadataMinifier::minify: the first version whole, each later one as its differences from
/// the previous one, as packagist.org serves them.
pub fn minify(versions: &[Value]) -> Result<Vec<Value>, PhpError> {
    let mut minified = Vec::with_capacity(versions.len());
    let mut last_known = Php::default();
    for (index, version) in versions.iter().enumerate() {
        let error = |reason| PhpError { index, reason };
        if !last_known.truthy() {
            last_known = Php::of(version);
            minified.push(last_known.to_json());
            continue;
        }
        let changes = pairs(version).unwrap_or_default();
        let last = match &mut last_known {
            // Both loops skip a scalar with a warning: an empty difference.
            Php::Scalar(_) if changes.is_empty() => {
                minified.push(Value::Array(Vec::new()));
                continue;
            }
            Php::Scalar(Value::String(_)) => return Err(error(STRING_OFFSETS)),
            Php::Scalar(_) => return Err(error(SCALAR_AS_ARRAY)),
            // `isset($version[$key])` would index into the string.
            Php::Array(_) if version.is_string() => return Err(error(STRING_OFFSETS)),
            Php::Array(last) => last,
        };
        let mut diff = Map::new();
        for (key, value) in changes {
            let known = last
                .get(key.as_ref())
                .is_some_and(|l| !l.is_null() && identical(l, value));
            if !known {
                diff.insert(key.to_string(), value.clone());
                last.insert(key.into_owned(), value.clone());
            }
        }
        let gone: Vec<String> = last
            .keys()
            .filter(|key| !isset(version, key))
            .cloned()
            .collect();
        for key in gone {
            last.shift_remove(&key);
            diff.insert(key, Value::String(UNSET.into()));
        }
        minified.push(Php::Array(diff).to_json());
    }
    Ok(minified)
}

#[cfg(test)]
mod property;

#[cfg(test)]
mod tests {
    use super::*;

    fn list(json: &str) -> Vec<Value> {
        serde_json::from_str(json).expect("a JSON list")
    }

    /// Key order matters to PHP (and `Value`'s `==` ignores it), so results compare as text.
    pub(super) fn text(result: &Result<Vec<Value>, PhpError>) -> String {
        match result {
            Ok(versions) => serde_json::to_string(versions).expect("serialises"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn composers_own_example_minifies_and_expands() {
        // MetadataMinifierTest::testMinifyExpand in composer/metadata-minifier.
        let source = list(
            r#"[{"name":"foo/bar","version":"2.0.0","version_normalized":"2.0.0.0","type":"library","scripts":{"foo":["bar"]},"license":["MIT"]},
            {"name":"foo/bar","version":"1.2.0","version_normalized":"1.2.0.0","type":"library","license":["GPL"],"homepage":"https://example.org"},
            {"name":"foo/bar","version":"1.0.0","version_normalized":"1.0.0.0","type":"library","license":["GPL"]}]"#,
        );
        let minified = list(
            r#"[{"name":"foo/bar","version":"2.0.0","version_normalized":"2.0.0.0","type":"library","scripts":{"foo":["bar"]},"license":["MIT"]},
            {"version":"1.2.0","version_normalized":"1.2.0.0","license":["GPL"],"homepage":"https://example.org","scripts":"__unset"},
            {"version":"1.0.0","version_normalized":"1.0.0.0","homepage":"__unset"}]"#,
        );
        assert_eq!(text(&minify(&source)), text(&Ok(minified.clone())));
        assert_eq!(text(&expand(&minified)), text(&Ok(source)));
    }

    #[test]
    fn expand_keeps_phps_quirks() {
        // Each expected list is what PHP 8.2 printed (json_encode) for composer/metadata-minifier
        // 1.0.0's expand; `Err` where it threw.
        for (minified, expected) in [
            (
                r#"[{"a":1},5,null,"s",{"b":2}]"#,
                Ok(r#"[{"a":1},{"a":1},{"a":1},{"a":1},{"a":1,"b":2}]"#),
            ),
            (
                r#"[null,0,"0","",[],{},{"a":"__unset"}]"#,
                Ok(r#"[null,0,"0","",[],[],{"a":"__unset"}]"#),
            ),
            (
                r#"[{"a":1},{"a":"__unset"},{"b":2},{"c":3}]"#,
                Ok(r#"[{"a":1},[],{"b":2},{"b":2,"c":3}]"#),
            ),
            (
                r#"[{"a":1},{"a":"__unset"},5,{}]"#,
                Ok(r#"[{"a":1},[],5,5]"#),
            ),
            (
                r#"[{"a":1},{"b":"__unset"},{"a":null}]"#,
                Ok(r#"[{"a":1},{"a":1},{"a":null}]"#),
            ),
            (
                r#"[[1,2],{"a":1},{"0":"x"}]"#,
                Ok(r#"[[1,2],{"0":1,"1":2,"a":1},{"0":"x","1":2,"a":1}]"#),
            ),
            (r#"[[1,2],{"0":"x"}]"#, Ok(r#"[[1,2],["x",2]]"#)),
            (r#"[{"a":1},[7,8]]"#, Ok(r#"[{"a":1},{"a":1,"0":7,"1":8}]"#)),
            (
                r#"[{"1":1,"0":0},{"2":2}]"#,
                Ok(r#"[{"1":1,"0":0},{"1":1,"0":0,"2":2}]"#),
            ),
            (r#"["abc",{},[],5]"#, Ok(r#"["abc","abc","abc","abc"]"#)),
            (
                r#"[1,{"a":1}]"#,
                Err("version 1: Cannot use a scalar value as an array"),
            ),
            (
                r#"[true,{"a":"__unset"}]"#,
                Err("version 1: Cannot unset offset in a non-array variable"),
            ),
            (
                r#"["0.0",{"a":1}]"#,
                Err("version 1: offsets into a string version (PHP throws or overwrites bytes)"),
            ),
        ] {
            let expected = match expected {
                Ok(versions) => versions.to_string(),
                Err(reason) => reason.to_string(),
            };
            assert_eq!(text(&expand(&list(minified))), expected, "{minified}");
        }
    }

    #[test]
    fn minify_keeps_phps_quirks() {
        // As `expand_keeps_phps_quirks`, for minify.
        for (versions, expected) in [
            // isset() is false for null: the key is repeated, then unset.
            (
                r#"[{"a":null,"b":1},{"a":null,"b":1}]"#,
                Ok(r#"[{"a":null,"b":1},{"a":"__unset"}]"#),
            ),
            // === sees key order and int against float; a version that is not an array has no keys.
            (
                r#"[{"a":{"x":1,"y":2},"b":1},{"a":{"y":2,"x":1},"b":1.0},null,{"c":1}]"#,
                Ok(
                    r#"[{"a":{"x":1,"y":2},"b":1},{"a":{"y":2,"x":1},"b":1.0},{"a":"__unset","b":"__unset"},{"c":1}]"#,
                ),
            ),
            (
                r#"[{"a":[1]},{"a":{"0":1}},{"a":1},{"a":1}]"#,
                Ok(r#"[{"a":[1]},[],{"a":1},[]]"#),
            ),
            (
                r#"[[1,2],[1,3],{"0":1}]"#,
                Ok(r#"[[1,2],{"1":3},{"1":"__unset"}]"#),
            ),
            (r#"[5,7,[]]"#, Ok(r#"[5,[],[]]"#)),
            (
                r#"[5,{"a":1}]"#,
                Err("version 1: Cannot use a scalar value as an array"),
            ),
        ] {
            let expected = match expected {
                Ok(versions) => versions.to_string(),
                Err(reason) => reason.to_string(),
            };
            assert_eq!(text(&minify(&list(versions))), expected, "{versions}");
        }
    }
}

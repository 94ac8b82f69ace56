//! docs/reference.md against the parser and the embedded defaults: every setting and table
//! field the parser accepts has a row, every row is a setting, and each row's type, default and
//! environment variable are the ones that apply. The field lists come from serde itself (its
//! "unknown field, expected one of" error), so a field added to a `Raw*` struct cannot be
//! forgotten here either.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::downloads::{self, RawDownloads};
use super::raw::RawConfig;
use super::tests::load;
use super::upstreams::{secret_variable, RawUpstream};
use super::views::RawView;
use super::{UpstreamConfig, DEFAULT_TOML, ENV_PREFIX};

/// One row of a settings table: setting, type, default, variable (`None` for "—").
#[derive(Debug)]
struct Row {
    name: String,
    kind: String,
    default: String,
    variable: Option<String>,
}

/// The rows of docs/reference.md by section: `top` (every section not named after a table),
/// `upstream`, `view`, `downloads`.
fn reference() -> BTreeMap<&'static str, Vec<Row>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md");
    let text = std::fs::read_to_string(path).expect("docs/reference.md");
    let mut sections: BTreeMap<&'static str, Vec<Row>> = BTreeMap::new();
    let mut section = "top";
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = match heading {
                "`[[upstream]]` tables" => "upstream",
                "`[[view]]` tables" => "view",
                "`[downloads]`" => "downloads",
                "Other variables" => "other",
                _ => "top",
            };
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| a | b | c | d | e |` splits into seven, the outer two empty; the header row and
        // the separator have no code span in the first cell.
        if cells.len() != 7 || section == "other" || !cells[1].starts_with('`') {
            continue;
        }
        let variable = match cells[4] {
            "—" => None,
            v => Some(code(v).unwrap_or_else(|| panic!("{line}: variable not in code font"))),
        };
        sections.entry(section).or_default().push(Row {
            name: code(cells[1]).unwrap_or_else(|| panic!("{line}: setting not in code font")),
            kind: cells[2].to_string(),
            default: cells[3].to_string(),
            variable,
        });
    }
    sections
}

/// The text of the first code span in `cell`.
fn code(cell: &str) -> Option<String> {
    let start = cell.find('`')? + 1;
    let end = start + cell[start..].find('`')?;
    Some(cell[start..end].to_string())
}

/// The fields a `deny_unknown_fields` struct accepts, as serde lists them when it meets one it
/// does not know.
fn fields<T: for<'de> Deserialize<'de> + std::fmt::Debug>(mut table: toml::Table) -> Vec<String> {
    table.insert("\u{1}unknown".into(), toml::Value::Boolean(true));
    let error = T::deserialize(toml::Value::Table(table)).expect_err("an unknown field");
    let message = error.message().to_string();
    let (_, list) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("serde's message changed: {message}"));
    let fields: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    assert!(fields.len() > 1, "no fields read from {message:?}");
    fields
}

fn defaults() -> toml::Table {
    DEFAULT_TOML.parse().expect("config/default.toml")
}

/// The reference's words for a TOML value's type.
fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "string",
        toml::Value::Integer(_) => "integer",
        toml::Value::Boolean(_) => "boolean",
        toml::Value::Array(_) => "list of strings",
        other => panic!("no setting has a value like {other:?}"),
    }
}

fn names(rows: &[Row]) -> BTreeSet<String> {
    rows.iter().map(|r| r.name.clone()).collect()
}

fn set(list: Vec<String>) -> BTreeSet<String> {
    list.into_iter().collect()
}

/// Fails naming what one side has and the other lacks.
fn same(documented: &BTreeSet<String>, accepted: &BTreeSet<String>, what: &str) {
    let missing: Vec<_> = accepted.difference(documented).collect();
    let extra: Vec<_> = documented.difference(accepted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: not in docs/reference.md: {missing:?}; in it but not accepted: {extra:?}"
    );
}

#[test]
fn the_reference_lists_every_setting_with_its_default_and_variable() {
    let defaults = defaults();
    let sections = reference();
    let top = &sections["top"];

    // The parser and the embedded defaults agree, and the reference has a row for each but
    // the `[downloads]` table, which has a section of its own.
    let parsed = set(fields::<RawConfig>(defaults.clone()));
    let keys: BTreeSet<String> = defaults.keys().cloned().collect();
    same(
        &keys,
        &parsed,
        "RawConfig's fields against config/default.toml's settings",
    );
    let mut documented = names(top);
    documented.insert(downloads::TABLE.into());
    same(&documented, &keys, "settings");
    assert_eq!(top.len(), keys.len() - 1, "a setting has two rows");

    for row in top {
        let default = &defaults[&row.name];
        let tables = matches!(row.name.as_str(), "upstream" | "view");
        let expected_kind = if tables {
            "list of tables"
        } else {
            kind(default)
        };
        assert_eq!(row.kind, expected_kind, "type of {}", row.name);
        assert_eq!(
            code(&row.default).as_deref(),
            Some(default.to_string().as_str()),
            "default of {}",
            row.name
        );
        let variable = format!("{ENV_PREFIX}{}", row.name.to_ascii_uppercase());
        match &row.variable {
            Some(v) => assert_eq!(v, &variable, "variable of {}", row.name),
            // Said to have none: the variable is refused.
            None => assert!(
                load(None, &[(&variable, "x")]).is_err(),
                "{variable} is accepted, so {} has a variable",
                row.name
            ),
        }
    }
}

#[test]
fn the_reference_lists_every_downloads_field() {
    let defaults = defaults();
    let table = defaults[downloads::TABLE]
        .as_table()
        .expect("[downloads]")
        .clone();
    let rows = &reference()["downloads"];
    let keys: BTreeSet<String> = table.keys().cloned().collect();
    same(
        &keys,
        &set(fields::<RawDownloads>(table.clone())),
        "RawDownloads's fields against config/default.toml's [downloads]",
    );
    same(&names(rows), &keys, "[downloads] fields");
    for row in rows {
        assert_eq!(row.kind, kind(&table[&row.name]), "type of {}", row.name);
        assert_eq!(
            code(&row.default).as_deref(),
            Some(table[&row.name].to_string().as_str()),
            "default of downloads.{}",
            row.name
        );
        let variable = row.variable.as_deref().expect("every field has a variable");
        assert_eq!(downloads::variable(variable), Some(row.name.as_str()));
    }
}

/// A table of the given fields, each with a value of the type the row names.
fn table_of(rows: &[Row], leave_out: &str) -> toml::Table {
    rows.iter()
        .filter(|r| r.name != leave_out)
        .map(|r| {
            let value = match r.kind.as_str() {
                "string" if r.name == "url" => toml::Value::String("https://repo.example".into()),
                "string" => toml::Value::String("x".into()),
                "integer" => toml::Value::Integer(1),
                "list of strings" => toml::Value::Array(Vec::new()),
                other => panic!("type {other:?} of {}", r.name),
            };
            (r.name.clone(), value)
        })
        .collect()
}

/// A field is required exactly when the reference says so, and each optional one deserializes
/// without being given.
fn check_required<T: for<'de> Deserialize<'de> + std::fmt::Debug>(rows: &[Row]) {
    for row in rows {
        let without = T::deserialize(toml::Value::Table(table_of(rows, &row.name)));
        assert_eq!(
            row.default == "required",
            without.is_err(),
            "{}: required in docs/reference.md, not for the parser, or the other way round",
            row.name
        );
    }
}

/// The rows of a table's section are the fields the parser accepts (`minimal`: a table of
/// the required ones), required where the parser requires them.
fn table_fields<T: for<'de> Deserialize<'de> + std::fmt::Debug>(
    rows: &[Row],
    minimal: &str,
    what: &str,
) {
    let minimal: toml::Table = minimal.parse().expect("a table");
    same(
        &names(rows),
        &set(fields::<T>(minimal)),
        &format!("{what} fields"),
    );
    check_required::<T>(rows);
}

/// What an `[[upstream]]` table without the field ends up with, as the top-level setting's
/// unit (seconds).
fn upstream_value(upstream: &UpstreamConfig, field: &str) -> u64 {
    let secs = match field {
        "metadata_ttl_secs" => upstream.metadata_ttl,
        "negative_ttl_secs" => upstream.negative_ttl,
        "metadata_changes_poll_secs" => upstream.metadata_changes_poll.unwrap_or_default(),
        "connect_timeout_secs" => upstream.connect_timeout,
        "read_timeout_secs" => upstream.read_timeout,
        "metadata_timeout_secs" => upstream.metadata_timeout,
        "archive_timeout_secs" => upstream.archive_timeout,
        other => panic!("{other}: which UpstreamConfig field does it set?"),
    };
    secs.as_secs()
}

#[test]
fn the_reference_lists_every_upstream_and_view_field() {
    let sections = reference();
    let upstream = &sections["upstream"];
    table_fields::<RawUpstream>(
        upstream,
        "name = \"x\"\nurl = \"https://repo.example\"",
        "[[upstream]]",
    );
    let view = &sections["view"];
    table_fields::<RawView>(view, "name = \"x\"\nupstreams = [\"x\"]", "[[view]]");
    for row in view {
        assert!(
            row.variable.is_none(),
            "{}: views have no variables",
            row.name
        );
    }

    let defaults = defaults();
    for row in upstream {
        // Secrets, and only they, may come from a variable.
        let variable = format!("{ENV_PREFIX}UPSTREAM_X_{}", row.name.to_ascii_uppercase());
        let secret = secret_variable(&variable).is_some();
        let documented = format!(
            "{ENV_PREFIX}UPSTREAM_<NAME>_{}",
            row.name.to_ascii_uppercase()
        );
        assert_eq!(
            row.variable.as_deref(),
            secret.then_some(documented.as_str()),
            "variable of upstream.{}",
            row.name
        );
        if row.default == "required" {
            continue;
        }
        let Some(setting) = code(&row.default) else {
            panic!("upstream.{}: default {:?}", row.name, row.default)
        };
        if matches!(setting.as_str(), "\"\"" | "[]") {
            continue;
        }
        // The named top-level setting applies: given a value of its own, a table without the
        // field has it.
        assert_eq!(
            row.kind,
            kind(&defaults[&setting]),
            "type of upstream.{}",
            row.name
        );
        let variable = format!("{ENV_PREFIX}{}", setting.to_ascii_uppercase());
        let file = "[[upstream]]\nname = \"x\"\nurl = \"https://repo.example\"\n";
        let config = load(Some(file), &[(&variable, "4321")])
            .unwrap_or_else(|e| panic!("{variable}=4321: {e}"));
        assert_eq!(
            upstream_value(&config.upstreams[0], &row.name),
            4321,
            "upstream.{} does not default to {setting}",
            row.name
        );
    }
}

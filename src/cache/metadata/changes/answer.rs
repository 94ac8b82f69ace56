//! The feed's answers, read, and the rules applied to them: pure, so they are tested without
//! a socket.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::composer;

/// packagist.org's unit of feed time: 10000ths of a second.
const UNITS_PER_SEC: u64 = 10_000;

/// A feed answer, as the work it asks for: each file announced once, with its latest change.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    /// File → the cause and time of the latest change announced for it.
    pub announced: BTreeMap<String, (Cause, u64)>,
    /// The position asked for is too old: changes were lost.
    pub resync: bool,
    /// The position of the next poll.
    pub timestamp: u64,
}

/// Why a cached file is refetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    Update,
    Delete,
    /// An earlier announced change upstream did not serve yet.
    Retry,
}

impl Cause {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Cause::Update => "update",
            Cause::Delete => "delete",
            Cause::Retry => "retry",
        }
    }
}

fn number(value: Option<&Value>) -> Option<u64> {
    let value = value?;
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// A p2 file name from the feed (`vendor/name` or `vendor/name~dev`), lower-cased, when it
/// names a package the proxy could serve.
fn p2_file_name(package: &str) -> Option<String> {
    let file = package.to_ascii_lowercase();
    let valid = composer::is_package_name(file.strip_suffix("~dev").unwrap_or(&file));
    valid.then_some(file)
}

/// The answer's fields the proxy reads.
#[derive(Deserialize)]
struct Answer {
    timestamp: Option<Value>,
    actions: Option<Announced>,
}

/// The `actions` list, read one action at a time straight into the work it asks for: an
/// answer of many actions is never held as a list (let alone a JSON tree) besides that.
#[derive(Default)]
struct Announced {
    files: BTreeMap<String, (Cause, u64)>,
    resync: bool,
}

impl<'de> Deserialize<'de> for Announced {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Actions;
        impl<'de> Visitor<'de> for Actions {
            type Value = Announced;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of actions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Announced, A::Error> {
                let mut announced = Announced::default();
                // One action's JSON at a time, dropped once read.
                while let Some(action) = seq.next_element::<Value>()? {
                    announced.take(&action);
                }
                Ok(announced)
            }
        }
        deserializer.deserialize_seq(Actions)
    }
}

impl Announced {
    /// Takes one action; those it cannot use (unknown types, bad names) are skipped. A file
    /// announced again keeps its latest change.
    fn take(&mut self, action: &Value) {
        let file = || {
            action
                .get("package")
                .and_then(Value::as_str)
                .and_then(p2_file_name)
        };
        let time = || number(action.get("time"));
        let (file, cause, time) = match action.get("type").and_then(Value::as_str) {
            Some("resync") => {
                self.resync = true;
                return;
            }
            Some("update") => (file(), Cause::Update, time()),
            Some("delete") => (file(), Cause::Delete, time()),
            _ => return,
        };
        let (Some(file), Some(time)) = (file, time) else {
            return;
        };
        let slot = self.files.entry(file).or_insert((cause, time));
        if time >= slot.1 {
            *slot = (cause, time);
        }
    }
}

/// Reads a feed answer.
pub(super) fn parse_changes(body: &[u8]) -> Result<Changes, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("unusable: {e}"))?;
    let timestamp = number(answer.timestamp.as_ref()).ok_or("no timestamp")?;
    let actions = answer.actions.ok_or("no actions list")?;
    Ok(Changes {
        announced: actions.files,
        resync: actions.resync,
        timestamp,
    })
}

/// The timestamp of the feed's answer to a request without `since`.
pub(super) fn parse_timestamp(body: &[u8]) -> Option<u64> {
    let json: Value = serde_json::from_slice(body).ok()?;
    number(json.get("timestamp"))
}

/// Whether a file upstream dates `last_modified` can hold a change the feed dates `event`.
/// HTTP dates count whole seconds and the feed finer, so a file of the event's second does.
/// Without a date there is nothing to tell a lagging file by: it is taken.
pub(super) fn reflects(last_modified: Option<&str>, event: u64) -> bool {
    let Some(modified) = last_modified.and_then(|s| httpdate::parse_http_date(s).ok()) else {
        return true;
    };
    let secs = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    secs >= event / UNITS_PER_SEC
}

/// The files to refetch: those announced, then the changes still awaited (`pending`: file →
/// the change's time) that were not announced again.
pub(super) fn plan(
    mut announced: BTreeMap<String, (Cause, u64)>,
    pending: impl IntoIterator<Item = (String, u64)>,
) -> BTreeMap<String, (Cause, u64)> {
    for (file, time) in pending {
        announced.entry(file).or_insert((Cause::Retry, time));
    }
    announced
}

/// Whether a cached file upstream dates `last_modified` is newer than a change the feed dates
/// `event`, to the second: then the change is already in it and asking again is needless (a
/// feed that announces old changes again costs nothing). Same-second files are asked again.
pub(super) fn postdates(last_modified: Option<&str>, event: u64) -> bool {
    last_modified
        .and_then(|s| httpdate::parse_http_date(s).ok())
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .is_some_and(|m| m.as_secs() > event / UNITS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_answer_is_read_as_packagist_writes_it() {
        let body = br#"{"actions":[
            {"type":"update","package":"Psr/Log","time":17000000001234},
            {"type":"update","package":"psr/log~dev","time":17000000005678},
            {"type":"delete","package":"gone/pkg","time":1.7000000009e13},
            {"type":"update","package":"../etc","time":1},
            {"type":"update","package":"no/time"},
            {"type":"rename","package":"a/b","time":1},
            "not an action",
            {"type":"update","package":"psr/log","time":17000000000001}
        ],"timestamp":17000000010000}"#;
        let changes = parse_changes(body).expect("parses");
        assert_eq!(changes.timestamp, 17_000_000_010_000);
        assert!(!changes.resync);
        assert_eq!(
            changes.announced,
            BTreeMap::from([
                ("psr/log".to_string(), (Cause::Update, 17_000_000_001_234),),
                (
                    "psr/log~dev".to_string(),
                    (Cause::Update, 17_000_000_005_678),
                ),
                ("gone/pkg".to_string(), (Cause::Delete, 17_000_000_009_000),),
            ]),
            "the older change announced later does not win"
        );
        let resync = parse_changes(
            br#"{"actions":[{"type":"resync","time":5,"package":"*"}],"timestamp":9}"#,
        )
        .expect("parses");
        assert!(resync.resync);
        assert!(resync.announced.is_empty());
        assert!(parse_changes(br#"{"actions":[]}"#).is_err(), "no timestamp");
        assert!(parse_changes(br#"{"timestamp":1}"#).is_err(), "no actions");
        assert!(parse_changes(br#"{"actions":{},"timestamp":1}"#).is_err());
        assert!(parse_changes(b"<html>").is_err());
    }

    #[test]
    fn the_start_position_comes_from_the_answer_without_since() {
        let body = br#"{"error":"Invalid or missing \"since\" query parameter, make sure you store the timestamp at the initial point you started mirroring, then send it back to the current endpoint to get changes since then.","timestamp":17000000000000}"#;
        assert_eq!(parse_timestamp(body), Some(17_000_000_000_000));
        assert_eq!(parse_timestamp(br#"{"error":"x"}"#), None);
    }

    #[test]
    fn a_file_older_than_the_announced_change_is_lagging_to_the_second() {
        // 2023-11-14 22:13:20 UTC is 1700000000 s; the event is 0.1234 s later.
        let event = 1_700_000_000 * UNITS_PER_SEC + 1234;
        assert!(reflects(Some("Tue, 14 Nov 2023 22:13:20 GMT"), event));
        assert!(reflects(Some("Tue, 14 Nov 2023 22:13:21 GMT"), event));
        assert!(!reflects(Some("Tue, 14 Nov 2023 22:13:19 GMT"), event));
        assert!(reflects(None, event), "nothing to tell it by");
        assert!(reflects(Some("yesterday"), event));
    }

    #[test]
    fn each_file_is_refetched_once_for_its_latest_change_and_awaited_ones_again() {
        let body = br#"{"actions":[
            {"type":"update","package":"a/b","time":5},
            {"type":"delete","package":"a/b","time":7},
            {"type":"update","package":"c/d","time":3},
            {"type":"resync","package":"*","time":1}
        ],"timestamp":9}"#;
        let changes = parse_changes(body).expect("parses");
        let work = plan(
            changes.announced,
            [("c/d".to_string(), 1), ("e/f".to_string(), 2)],
        );
        assert_eq!(work.len(), 3);
        assert_eq!(work["a/b"], (Cause::Delete, 7));
        assert_eq!(work["c/d"], (Cause::Update, 3), "the new change wins");
        assert_eq!(work["e/f"], (Cause::Retry, 2));
    }

    #[test]
    fn only_a_file_newer_than_the_change_by_a_second_is_left_alone() {
        let event = 1_700_000_000 * UNITS_PER_SEC + 1234;
        assert!(postdates(Some("Tue, 14 Nov 2023 22:13:21 GMT"), event));
        assert!(!postdates(Some("Tue, 14 Nov 2023 22:13:20 GMT"), event));
        assert!(!postdates(None, event), "nothing to tell it by: asked");
        assert!(!postdates(Some("yesterday"), event));
    }
}

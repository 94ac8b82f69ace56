//! The feed's answers, read, and the rules applied to them: pure, so they are tested without
//! a socket.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use serde_json::Value;

use crate::composer;

/// packagist.org's unit of feed time: 10000ths of a second.
const UNITS_PER_SEC: u64 = 10_000;

/// One entry of the feed's `actions`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    Update {
        file: String,
        time: u64,
    },
    Delete {
        file: String,
        time: u64,
    },
    /// The position asked for is too old: changes were lost.
    Resync,
}

/// A feed answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Changes {
    pub actions: Vec<Action>,
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

/// Reads a feed answer; actions it cannot use (unknown types, bad names) are skipped.
pub(super) fn parse_changes(body: &[u8]) -> Result<Changes, String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let timestamp = number(json.get("timestamp")).ok_or("no timestamp")?;
    let list = json
        .get("actions")
        .and_then(Value::as_array)
        .ok_or("no actions list")?;
    let actions = list
        .iter()
        .filter_map(|a| {
            let file = || {
                a.get("package")
                    .and_then(Value::as_str)
                    .and_then(p2_file_name)
            };
            let time = || number(a.get("time"));
            match a.get("type").and_then(Value::as_str)? {
                "resync" => Some(Action::Resync),
                "update" => Some(Action::Update {
                    file: file()?,
                    time: time()?,
                }),
                "delete" => Some(Action::Delete {
                    file: file()?,
                    time: time()?,
                }),
                _ => None,
            }
        })
        .collect();
    Ok(Changes { actions, timestamp })
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

/// The files to refetch: the latest change announced for each, then the changes still awaited
/// (`pending`: file → the change's time).
pub(super) fn plan(
    actions: Vec<Action>,
    pending: impl IntoIterator<Item = (String, u64)>,
) -> BTreeMap<String, (Cause, u64)> {
    let mut work = BTreeMap::new();
    for action in actions {
        let (file, cause, time) = match action {
            Action::Update { file, time } => (file, Cause::Update, time),
            Action::Delete { file, time } => (file, Cause::Delete, time),
            Action::Resync => continue,
        };
        let slot = work.entry(file).or_insert((cause, time));
        if time >= slot.1 {
            *slot = (cause, time);
        }
    }
    for (file, time) in pending {
        work.entry(file).or_insert((Cause::Retry, time));
    }
    work
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
            {"type":"rename","package":"a/b","time":1}
        ],"timestamp":17000000010000}"#;
        let changes = parse_changes(body).expect("parses");
        assert_eq!(changes.timestamp, 17_000_000_010_000);
        assert_eq!(
            changes.actions,
            [
                Action::Update {
                    file: "psr/log".into(),
                    time: 17_000_000_001_234
                },
                Action::Update {
                    file: "psr/log~dev".into(),
                    time: 17_000_000_005_678
                },
                Action::Delete {
                    file: "gone/pkg".into(),
                    time: 17_000_000_009_000
                },
            ]
        );
        let resync = parse_changes(
            br#"{"actions":[{"type":"resync","time":5,"package":"*"}],"timestamp":9}"#,
        )
        .expect("parses");
        assert_eq!(resync.actions, [Action::Resync]);
        assert!(parse_changes(br#"{"actions":[]}"#).is_err(), "no timestamp");
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
        let work = plan(
            vec![
                Action::Update {
                    file: "a/b".into(),
                    time: 5,
                },
                Action::Delete {
                    file: "a/b".into(),
                    time: 7,
                },
                Action::Update {
                    file: "c/d".into(),
                    time: 3,
                },
                Action::Resync,
            ],
            [("c/d".to_string(), 1), ("e/f".to_string(), 2)],
        );
        assert_eq!(work.len(), 3);
        assert_eq!(work["a/b"], (Cause::Delete, 7));
        assert_eq!(work["c/d"], (Cause::Update, 3), "the new change wins");
        assert_eq!(work["e/f"], (Cause::Retry, 2));
    }
}

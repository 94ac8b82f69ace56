//! The access log's line, formatted straight into the log's batch buffer.
//!
//! One line per request went through tracing's event machinery: a callsite, a visitor per
//! field, a `String` per value, and for JSON a map serialized by serde. Measured, that halved
//! the requests per second of a cached answer at `log_level = info`. Here the line is written
//! field by field into a buffer kept per thread and appended to the batch under its short
//! lock, in exactly the form the subscriber would have written: the same fields in the same
//! order, the same quoting, JSON or text (with the same ANSI styling). tracing still decides
//! whether the line is wanted (`log_level`, `RUST_LOG`-style filters on
//! `composer_proxy::access`), and still writes it where the formatter is not installed (the
//! in-process proxies of the tests, which set no global subscriber).

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use super::batch::BatchedStderr;
use crate::config::LogFormat;

/// Where access lines go, once the subscriber is installed: the process has one log, as it
/// has one tracing subscriber, so this is set once by [`super::init`].
static SINK: OnceLock<(BatchedStderr, LogFormat)> = OnceLock::new();

pub(super) fn install(writer: BatchedStderr, format: LogFormat) {
    let _ = SINK.set((writer, format));
}

/// What one access-log line says.
#[derive(Debug)]
pub struct AccessLine<'a> {
    pub client: IpAddr,
    /// The peer, when a trusted proxy named another client.
    pub peer: Option<IpAddr>,
    pub token: Option<&'a str>,
    pub view: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub version: http::Version,
    pub status: u16,
    pub bytes: u64,
    pub duration_ms: u64,
    pub cache: &'a str,
    pub route: &'a str,
    pub upstream: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub upstream_ms: Option<u64>,
    pub upstream_requests: usize,
    pub complete: bool,
}

/// How tracing's formatters write a value: `%` fields and numbers bare, `&str` fields quoted
/// in text, numbers and booleans bare in JSON.
enum Value<'a> {
    /// Text: as is. JSON: a string.
    Plain(&'a str),
    /// An address, as `Plain`; its text never needs escaping.
    Ip(IpAddr),
    /// Text: quoted like Rust's `Debug`. JSON: a string.
    Str(&'a str),
    /// As is in both.
    Number(u64),
    Bool(bool),
}

thread_local! {
    /// Kept per thread, so a line costs no allocation once warm.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The last second this thread wrote, as text: a busy proxy writes thousands of lines in
    /// each, and formatting the date for every one was the largest part of a line's cost.
    static SECOND: RefCell<(Option<u64>, Vec<u8>)> = const { RefCell::new((None, Vec::new())) };
}

/// `at` as the subscriber writes it: RFC 3339, UTC, to the microsecond. A clock before 1970
/// shows as 1970.
fn timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != Some(secs) {
            text.clear();
            second_text(text, secs);
            *second = Some(secs);
        }
        out.extend_from_slice(text);
    });
    out.push(b'.');
    padded(out, since.subsec_micros().into(), 6);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` for `secs` since 1970 in UTC, in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`). Whole numbers only, so no year makes it fail; humantime,
/// which it replaces here, gives up after 9999.
fn second_text(out: &mut Vec<u8>, secs: u64) {
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    // Days since 0000-03-01, so that a leap day is the last day of its year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    padded(out, year, 4);
    for (separator, n) in [
        (b'-', month),
        (b'-', day),
        (b'T', of_day / 3_600),
        (b':', of_day / 60 % 60),
        (b':', of_day % 60),
    ] {
        out.push(separator);
        padded(out, n, 2);
    }
}

/// `n` in decimal, with zeros in front up to `width` digits.
fn padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits.as_bytes());
}

/// An address as `Display` writes it; IPv4 (the usual client) without going through `fmt`.
fn address(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                number(out, octet.into());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Logs one access line, when `composer_proxy::access` is enabled at INFO.
pub fn access(line: &AccessLine<'_>) {
    if !tracing::enabled!(target: "composer_proxy::access", tracing::Level::INFO) {
        return;
    }
    let Some((writer, format)) = SINK.get() else {
        return via_tracing(line);
    };
    BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        format_line(buffer, *format, SystemTime::now(), line);
        // One line, one append: the batch never holds half of it.
        let _ = writer.append(buffer);
    });
}

fn via_tracing(line: &AccessLine<'_>) {
    tracing::info!(
        target: "composer_proxy::access",
        client = %line.client,
        peer = line.peer.map(tracing::field::display),
        token = line.token,
        view = line.view,
        method = %line.method,
        path = %line.path,
        version = ?line.version,
        status = line.status,
        bytes = line.bytes,
        duration_ms = line.duration_ms,
        cache = line.cache,
        route = line.route,
        upstream = line.upstream,
        upstream_status = line.upstream_status,
        upstream_ms = line.upstream_ms,
        upstream_requests = line.upstream_requests,
        complete = line.complete,
        "request"
    );
}

/// The line as the subscriber would write it at `at`, newline included.
fn format_line(out: &mut Vec<u8>, format: LogFormat, at: SystemTime, line: &AccessLine<'_>) {
    let fields: [(&str, Option<Value<'_>>); 17] = [
        ("client", Some(Value::Ip(line.client))),
        ("peer", line.peer.map(Value::Ip)),
        ("token", line.token.map(Value::Str)),
        ("view", line.view.map(Value::Str)),
        ("method", Some(Value::Plain(line.method))),
        ("path", Some(Value::Plain(line.path))),
        ("version", Some(Value::Plain(version_text(line.version)))),
        ("status", Some(Value::Number(line.status.into()))),
        ("bytes", Some(Value::Number(line.bytes))),
        ("duration_ms", Some(Value::Number(line.duration_ms))),
        ("cache", Some(Value::Str(line.cache))),
        ("route", Some(Value::Str(line.route))),
        ("upstream", line.upstream.map(Value::Str)),
        (
            "upstream_status",
            line.upstream_status.map(|s| Value::Number(s.into())),
        ),
        ("upstream_ms", line.upstream_ms.map(Value::Number)),
        (
            "upstream_requests",
            Some(Value::Number(line.upstream_requests as u64)),
        ),
        ("complete", Some(Value::Bool(line.complete))),
    ];
    match format {
        LogFormat::Json => {
            out.extend_from_slice(br#"{"timestamp":""#);
            timestamp(out, at);
            out.extend_from_slice(br#"","level":"INFO","message":"request""#);
            // Constant parts are copied and numbers written with itoa, not through
            // `fmt::write`: this runs once per request.
            for (name, value) in fields {
                let Some(value) = value else { continue };
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                match value {
                    Value::Plain(text) | Value::Str(text) => json_string(out, text),
                    Value::Ip(ip) => {
                        out.push(b'"');
                        address(out, ip);
                        out.push(b'"');
                    }
                    Value::Number(n) => number(out, n),
                    Value::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
                }
            }
            out.extend_from_slice(b",\"target\":\"composer_proxy::access\"}\n");
        }
        LogFormat::Text => {
            // tracing-subscriber's default: dimmed time, green level, dimmed target, italic
            // field names.
            out.extend_from_slice(b"\x1b[2m");
            timestamp(out, at);
            out.extend_from_slice(
                b"\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mcomposer_proxy::access\x1b[0m\x1b[2m:\x1b[0m request",
            );
            for (name, value) in fields {
                let Some(value) = value else { continue };
                out.extend_from_slice(b" \x1b[3m");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\x1b[0m\x1b[2m=\x1b[0m");
                match value {
                    Value::Plain(text) => out.extend_from_slice(text.as_bytes()),
                    Value::Ip(ip) => address(out, ip),
                    Value::Str(text) => {
                        let _ = write!(out, "{text:?}");
                    }
                    Value::Number(n) => number(out, n),
                    Value::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
                }
            }
            out.push(b'\n');
        }
    }
}

/// `HTTP/1.1`, `HTTP/2.0`: the version as `?version` shows it.
fn version_text(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn json_string(out: &mut Vec<u8>, text: &str) {
    // Most values (methods, paths, routes) need no escaping, and are copied as they are.
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json's escaping: quotes, backslashes and control characters, as the subscriber's.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::fmt::MakeWriter;

    /// What tracing's own formatter writes for `line`, in `format`.
    fn by_tracing(format: LogFormat, line: &AccessLine<'_>) -> String {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Captured {
            type Writer = Captured;
            fn make_writer(&'a self) -> Captured {
                self.clone()
            }
        }
        let captured = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(true);
        let dispatch: tracing::Dispatch = match format {
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish()
                .into(),
            LogFormat::Text => builder.finish().into(),
        };
        tracing::dispatcher::with_default(&dispatch, || via_tracing(line));
        let bytes = captured.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes).unwrap_or_default()
    }

    /// The timestamp is the one part that differs: each formatter reads the clock itself.
    fn without_time(line: &str, format: LogFormat) -> String {
        let start = match format {
            LogFormat::Json => line.find(r#""level""#),
            LogFormat::Text => line.find(" \x1b[32m"),
        };
        line[start.unwrap_or(0)..].to_string()
    }

    #[test]
    fn lines_are_what_tracing_would_have_written() {
        let full = AccessLine {
            client: "10.1.2.3".parse().expect("ip"),
            peer: Some("127.0.0.1".parse().expect("ip")),
            token: Some("ci \"runner\"\\1"),
            view: Some("acme"),
            method: "GET",
            path: "/p2/vendor/pack%24age.json",
            version: http::Version::HTTP_2,
            status: 200,
            bytes: 5_242_880,
            duration_ms: 12,
            cache: "HIT",
            route: "p2",
            upstream: Some("magento"),
            upstream_status: Some(304),
            upstream_ms: Some(40),
            upstream_requests: 2,
            complete: false,
        };
        let bare = AccessLine {
            peer: None,
            token: None,
            view: None,
            upstream: None,
            upstream_status: None,
            upstream_ms: None,
            upstream_requests: 0,
            complete: true,
            version: http::Version::HTTP_11,
            ..full
        };
        let v6 = AccessLine {
            client: "2001:db8::1".parse().expect("ip"),
            peer: Some("::1".parse().expect("ip")),
            ..bare
        };
        // Each character that needs escaping on its own, and two that do not.
        let escapes = ["a\"b", "a\\b", "a\tb", "\u{1f}", "\u{7f}\u{e9}"].map(|text| AccessLine {
            token: Some(text),
            view: Some(text),
            ..bare
        });
        for format in [LogFormat::Json, LogFormat::Text] {
            for line in [&full, &bare, &v6].into_iter().chain(&escapes) {
                let mut ours = Vec::new();
                format_line(&mut ours, format, SystemTime::now(), line);
                let ours = String::from_utf8(ours).expect("utf-8");
                assert_eq!(
                    without_time(&ours, format),
                    without_time(&by_tracing(format, line), format),
                    "{format:?}"
                );
            }
        }
    }

    #[test]
    fn the_time_is_utc_to_the_microsecond_as_the_subscriber_writes_it() {
        let line = AccessLine {
            client: "127.0.0.1".parse().expect("ip"),
            peer: None,
            token: None,
            view: None,
            method: "GET",
            path: "/",
            version: http::Version::HTTP_11,
            status: 200,
            bytes: 0,
            duration_ms: 0,
            cache: "BYPASS",
            route: "root",
            upstream: None,
            upstream_status: None,
            upstream_ms: None,
            upstream_requests: 0,
            complete: true,
        };
        // The second's text is kept per thread: within one second, into the next, and back
        // to an earlier one (a clock stepped back), each line has its own time.
        for (micros, expected) in [
            (1_800_000_000_123_456, "2027-01-15T08:00:00.123456Z"),
            (1_800_000_000_000_042, "2027-01-15T08:00:00.000042Z"),
            (1_800_000_001_999_999, "2027-01-15T08:00:01.999999Z"),
            (1_800_000_000_500_000, "2027-01-15T08:00:00.500000Z"),
            (0, "1970-01-01T00:00:00.000000Z"),
        ] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
            for format in [LogFormat::Json, LogFormat::Text] {
                let mut out = Vec::new();
                format_line(&mut out, format, at, &line);
                let text = String::from_utf8(out).expect("utf-8");
                if format == LogFormat::Json {
                    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                    assert_eq!(json["timestamp"], expected);
                    assert_eq!(json["status"], 200);
                    assert_eq!(json["complete"], true);
                } else {
                    assert!(
                        text.starts_with(&format!("\x1b[2m{expected}\x1b[0m ")),
                        "{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn dates_match_the_calendar() {
        // Against humantime, which formats the same thing another way: every day of some
        // years around leap rules (1972, 2000, 2100) and seconds across the range it covers.
        let mut seconds: Vec<u64> = Vec::new();
        for year_start in [63_072_000u64, 946_684_800, 4_102_444_800] {
            seconds.extend((0..366 * 2).map(|d| year_start + d * 86_400 + d * 3_599 % 86_400));
        }
        seconds.extend((0..2_000u64).map(|i| i * 126_701_153 + i % 86_400));
        seconds.extend([0, 59, 60, 3_599, 3_600, 86_399, 86_400, 253_402_300_799]);
        for secs in seconds {
            let mut ours = Vec::new();
            second_text(&mut ours, secs);
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let theirs = humantime::format_rfc3339_seconds(at).to_string();
            assert_eq!(
                format!("{}Z", String::from_utf8(ours).expect("ascii")),
                theirs,
                "{secs}"
            );
        }
        // Past 9999, where humantime stops, the year just has more digits; nothing fails.
        let mut ours = Vec::new();
        second_text(&mut ours, 253_402_300_800);
        assert_eq!(ours, b"10000-01-01T00:00:00");
        ours.clear();
        second_text(&mut ours, u64::MAX);
        assert!(ours.len() > 19);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.20.3",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut out = Vec::new();
            address(&mut out, ip);
            assert_eq!(String::from_utf8(out).expect("utf-8"), ip.to_string());
        }
    }
}

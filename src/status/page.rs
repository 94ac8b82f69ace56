//! The status page as HTML: maud templates, checked when the crate compiles and escaping every
//! value they insert, so a package name, description or upstream error text is always shown as
//! text. Inline CSS, no script and no outside resource, so it reads the same in a browser on a
//! closed network with scripts off; the response's Content-Security-Policy forbids the rest.

use std::time::{Duration, SystemTime};

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::chart::chart;
use super::downloads::{Count, Group};
use super::{Event, Status, Time};

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:75rem;padding:0 1rem;color:#1d2329;background:#fff}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:2rem 0 .5rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;width:100%;margin:.3rem 0 1rem}th,td{text-align:left;vertical-align:top;padding:.3rem .5rem;border-bottom:1px solid #e6e9ec}
th{background:#f4f6f8;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font:13px ui-monospace,monospace;background:#f4f6f8;padding:.05rem .25rem;border-radius:3px;word-break:break-all}
.ok{color:#1a7f37;font-weight:600}.degraded{color:#9a6700;font-weight:600}.down,.bad{color:#cf222e;font-weight:600}
.muted{color:#59636e}.banner{padding:.6rem .8rem;border-radius:6px;margin:.8rem 0}
.banner.ok{background:#dafbe1}.banner.degraded{background:#fff8c5}.banner.down{background:#ffebe9}
.chart .plot{fill:#f6f8fa}.chart .other{fill:#afb8c1}.chart .hit{fill:#4ac26b}.chart .miss{fill:#fd8c73}.chart .bytes{stroke:#0969da;stroke-width:1.5}
.chart .axis{font-size:11px;fill:#59636e}.traffic{display:flex;gap:2rem;flex-wrap:wrap;align-items:flex-start}
.key span{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
";

/// `2026-12-07 15:30:00 UTC (5 min ago)`, in a `<time>` element.
fn time(at: Time, now: SystemTime) -> Markup {
    let text = humantime::format_rfc3339_seconds(at.0).to_string();
    // Minutes are enough to read at a glance; the attribute keeps the seconds.
    let shown = format!("{} UTC", text.get(..16).unwrap_or(&text).replace('T', " "));
    html! { time datetime=(text) { (shown) " " span.muted { "(" (ago(now, at.0)) ")" } } }
}

fn maybe_time(at: Option<Time>, now: SystemTime, none: &str) -> Markup {
    match at {
        Some(at) => time(at, now),
        None => html! { span.muted { (none) } },
    }
}

/// "just now", "12 min ago", "3 h ago", "5 d ago"; "in the future" for a clock ahead.
pub fn ago(now: SystemTime, then: SystemTime) -> String {
    let Ok(d) = now.duration_since(then) else {
        return "in the future".into();
    };
    let secs = d.as_secs();
    match secs {
        0..60 => "just now".into(),
        60..7_200 => format!("{} min ago", secs / 60),
        7_200..172_800 => format!("{} h ago", secs / 3_600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn text_time(text: &str, now: SystemTime) -> Markup {
    match humantime::parse_rfc3339_weak(text.trim_end_matches('Z')) {
        Ok(at) => time(Time(at), now),
        Err(_) => html! { (text) },
    }
}

/// 1536 → "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn event(e: &Option<Event>, now: SystemTime) -> Markup {
    match e {
        Some(e) => html! { span.bad { (e.text) } br; (time(e.at, now)) },
        None => html! { span.muted { "none" } },
    }
}

/// Only web links: an advisory's `link` comes from upstream, and a `javascript:` one must
/// never become clickable.
fn web_link(link: &str) -> Option<&str> {
    let parsed = url::Url::parse(link).ok()?;
    matches!(parsed.scheme(), "http" | "https").then_some(link)
}

fn windows(names: &[&str]) -> Markup {
    html! { @for name in names { th.n { "Last " (name) } } }
}

fn counts(names: &[&str], list: &[Count]) -> Markup {
    html! {
        table {
            thead { tr { th { "Package" } th { "Version" } (windows(names)) } }
            tbody {
                @for c in list {
                    tr {
                        td { code { (c.package) } } td { (c.version.as_deref().unwrap_or("")) }
                        @for n in c.counts { td.n { (n) } }
                    }
                }
            }
        }
    }
}

fn groups(caption: &str, none: &str, names: &[&str], list: &[Group]) -> Markup {
    html! {
        table {
            thead { tr { th { (caption) } (windows(names)) th { "Most downloaded" } } }
            tbody {
                @for g in list {
                    tr {
                        td { @match &g.name { Some(name) => code { (name) }, None => span.muted { (none) } } }
                        @for n in g.totals { td.n { (n) } }
                        td {
                            @for (i, c) in g.top.iter().enumerate() {
                                @if i > 0 { ", " }
                                code { (c.package) } " " (c.version.as_deref().unwrap_or(""))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn readiness(s: &Status) -> Markup {
    let state = s.readiness["status"].as_str().unwrap_or("unknown");
    let degraded = s.readiness["degraded"].as_str();
    let reason = s.readiness["reason"].as_str();
    let class = match (s.readiness_status, degraded) {
        (200, None) => "ok",
        (200, Some(_)) => "degraded",
        _ => "down",
    };
    html! {
        div.banner.(class) id="readiness" {
            strong { "Readiness: " (state) } " (HTTP " (s.readiness_status) ", as " code { "/readyz" } " says)"
            @if let Some(reason) = reason { br; (reason) }
            @if let Some(degraded) = degraded { br; "Degraded: " (degraded) }
        }
    }
}

fn upstreams(s: &Status, now: SystemTime) -> Markup {
    html! {
        section id="upstreams" {
            h2 { "Upstreams and accounts" }
            table {
                thead { tr {
                    th { "Upstream" } th { "Health" } th { "Credentials" } th { "Last refresh" }
                    th { "Last error" } th.n { "Packages" } th { "Only this account reaches" } th { "Changes feed" }
                } }
                tbody {
                    @for u in &s.upstreams {
                        tr id={"upstream-" (u.name)} {
                            td { strong { (u.name) } br; code { (u.url) } }
                            td { span class=(u.health) { (u.health) } @if let Some(r) = &u.reason { br; (r) } }
                            td {
                                span class=(match u.credentials { "accepted" => "ok", "rejected" => "bad", _ => "muted" }) { (u.credentials) }
                                @if let (Some(since), true) = (u.credentials_since, u.credentials != "none") { br; "since " (time(since, now)) }
                            }
                            td {
                                (maybe_time(u.last_refresh, now, "not in this run"))
                                @if let Some(failed) = &u.last_refresh_error { br; "failed " (time(failed.at, now)) }
                            }
                            td { (event(&u.last_error, now)) }
                            td.n { @match (u.packages, u.listed) { (Some(n), true) => (n), (Some(_), false) => span.muted { "open-ended" }, (None, _) => span.muted { "never seen" } } }
                            td {
                                @match (&u.only_here, u.listed) {
                                    (Some(only), _) => {
                                        (only.count) " package(s)"
                                        @if !only.names.is_empty() {
                                            ": "
                                            @for (i, name) in only.names.iter().enumerate() { @if i > 0 { ", " } code { (name) } }
                                            @if only.count > only.names.len() { ", …" }
                                        }
                                    },
                                    (None, false) => span.muted { "open-ended (no listing)" },
                                    (None, true) => span.muted { "unknown" },
                                }
                            }
                            td {
                                @match &u.feed {
                                    Some(f) => {
                                        @if f.vouching { span.ok { "following" } } @else { span.degraded { "not vouching" } }
                                        @if let Some(p) = f.position { br; "position " code { (p) } }
                                        @if let Some(lag) = f.lag_secs { br; "answered " (ago(now, now - Duration::from_secs(lag))) }
                                        @if f.awaited > 0 { br; (f.awaited) " change(s) awaited" }
                                    },
                                    None => span.muted { "none" },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn views(s: &Status, now: SystemTime) -> Markup {
    html! {
        section id="views" {
            h2 { "Views" }
            @if s.views.is_empty() { p.muted { "No [[view]] is configured: every client sees the merged repository." } }
            @for v in &s.views {
                h3 id={"view-" (v.name)} { "View " code { (v.name) } }
                p { "URL: " code { (v.url) } br; "Use it: " code { (v.composer_config) } }
                table {
                    thead { tr { th { "Upstream" } th.n { "Packages in the view" } } }
                    tbody { @for m in &v.upstreams { tr {
                        td { (m.name) }
                        td.n { @match m.packages { Some(n) => (n), None => span.muted { "open-ended" } } }
                    } } }
                }
                table {
                    thead { tr { th { "Token" } th { "State" } th { "Created" } th { "Last used" } } }
                    tbody {
                        @for t in s.tokens.list.iter().filter(|t| v.tokens.contains(&t.name)) {
                            tr { td { code { (t.name) } } td { (t.state) } td { (text_time(&t.created, now)) } td { (maybe_time(t.last_used, now, "never")) } }
                        }
                        @if v.tokens.is_empty() { tr { td colspan="4" { span.muted { "No token is bound to this view." } } } }
                    }
                }
            }
            h3 { "All client tokens" }
            p.muted { "Kept in " code { (s.tokens.location) } "; tokens are " @if !s.tokens.require_tokens { "not " } "required (setting " code { "require_tokens" } "). Never a secret here." }
            @if let Some(e) = &s.tokens.error { p.bad { (e) } }
            table id="tokens" {
                thead { tr { th { "Token" } th { "State" } th { "Views" } th { "Created" } th { "Last used" } } }
                tbody { @for t in &s.tokens.list { tr {
                    td { code { (t.name) } } td { (t.state) }
                    td { @if t.views.is_empty() { span.muted { "organisation-wide" } } @else { (t.views.join(", ")) } }
                    td { (text_time(&t.created, now)) } td { (maybe_time(t.last_used, now, "never")) }
                } } }
            }
        }
    }
}

fn downloads(s: &Status) -> Markup {
    let d = &s.downloads;
    html! {
        section id="downloads" {
            h2 { "Downloads" }
            @match d.retention_days {
                None => p.muted { "The usage record is off (usage_retention_days = 0)." },
                Some(days) => p.muted { "From the usage record (kept " (days) " days, " (d.replicas) " replica(s)); " code { "composer-proxy usage" } " lists every row." },
            }
            @if let Some(e) = &d.error { p.bad { (e) } }
            @let sum = &d.summary;
            @if sum.totals[2] == 0 {
                p.muted { "No archive was downloaded in the last 30 days." }
            } @else {
                h3 { "Most downloaded versions" }
                (counts(&sum.windows, &sum.top))
                h3 { "Per view" }
                (groups("View", "outside any view", &sum.windows, &sum.by_view))
                h3 { "Per token" }
                (groups("Token", "no token", &sum.windows, &sum.by_token))
            }
        }
    }
}

fn advisories(s: &Status, now: SystemTime) -> Markup {
    let a = &s.advisories;
    html! {
        section id="advisories" {
            h2 { "Advisories affecting served versions" }
            p.muted {
                (a.versions) " served version(s) checked " (time(a.checked, now)) " against the advisory APIs of "
                @if a.sources.is_empty() { "no upstream (none offers one)" } @else { (a.sources.join(", ")) }
                ", matched as Composer's audit does."
            }
            @if let Some(e) = &a.error { p.bad { "The advisories could not be had: " (e) } }
            @if a.affected.is_empty() {
                p.ok { "No served version is covered by a known advisory." }
            } @else {
                table {
                    thead { tr {
                        th { "Package" } th { "Version" } th { "Advisory" } th { "Severity" } th { "CVE" }
                        th { "Affected versions" } th { "Views" } th { "Tokens" } th.n { "Downloads" } th { "Last" }
                    } }
                    tbody { @for x in &a.affected { tr {
                        td { code { (x.package) } } td { (x.version) }
                        td {
                            @match x.link.as_deref().and_then(web_link) {
                                Some(link) => a href=(link) rel="noreferrer" { (x.advisory_id) },
                                None => (x.advisory_id),
                            }
                            @if !x.title.is_empty() { br; (x.title) }
                        }
                        td { @match &x.severity { Some(sev) => span class=(if sev == "high" || sev == "critical" { "bad" } else { "degraded" }) { (sev) }, None => span.muted { "unrated" } } }
                        td { (x.cve.as_deref().unwrap_or("")) }
                        td { code { (x.affected_versions) } }
                        td { (x.views.join(", ")) } td { (x.tokens.join(", ")) }
                        td.n { (x.downloads) } td { (text_time(&x.last, now)) }
                    } } }
                }
            }
            @if !a.unreadable.is_empty() {
                p.degraded { "Advisories whose affected versions could not be read (not taken as harmless):" }
                ul { @for u in &a.unreadable { li { code { (u.package) } " " (u.version) ": " (u.advisory_id) " " code { (u.affected_versions) } " — " (u.reason) } } }
            }
        }
    }
}

fn storage(s: &Status, now: SystemTime) -> Markup {
    let st = &s.storage;
    html! {
        section id="storage" {
            h2 { "Storage" }
            table {
                thead { tr { th { "Tier" } th.n { "In use" } th.n { "Bound" } th { "Notes" } } }
                tbody {
                    tr { td { "Disk: archives" } td.n { (bytes(st.archive_bytes)) } td.n { (bytes(st.archive_max_bytes)) }
                        td { (st.archive_entries) " archive(s) in " code { (st.cache_dir) } @if !st.writable { br; span.bad { "the directory takes no writes" } } } }
                    tr { td { "Disk: metadata" } td.n { (bytes(st.metadata_bytes)) } td.n { (bytes(st.metadata_max_bytes)) } td {} }
                    tr { td { "Disk: free space" } td.n { @match st.free_bytes { Some(b) => (bytes(b)), None => "unknown" } }
                        td.n { @if let Some(t) = st.total_bytes { "of " (bytes(t)) } }
                        td { "kept above " (bytes(st.min_free_bytes)) " (min_free_bytes)" } }
                    tr { td { "Memory: small archives" } td.n { (bytes(st.memory_bytes)) } td.n { (bytes(st.memory_max_bytes)) } td { (st.memory_entries) " archive(s)" } }
                    tr { td { "Memory: response buffers" } td.n { (bytes(st.response_buffer_bytes)) } td.n {} td { "chunks read for clients, not yet sent" } }
                }
            }
            @match &st.bucket {
                None => p.muted { "No bucket (object_store_url) is configured." },
                Some(b) => {
                    p { "Bucket " code { (b.url) } ": "
                        @if b.reachable { span.ok { "reachable" } } @else { span.bad { "unreachable" } " since " (maybe_time(b.failing_since, now, "?")) } }
                    table {
                        thead { tr { th { "Replica" } th { "Version" } th { "Started" } th { "Last seen" } } }
                        tbody { @for r in &b.replicas { tr { td { code { (r.replica) } } td { (r.version) } td { (text_time(&r.started, now)) } td { (text_time(&r.seen, now)) } } } }
                    }
                },
            }
            p {
                "Scrub: "
                @match (st.scrub.interval_secs, &st.scrub.last) {
                    (None, _) => span.muted { "off (scrub_interval_secs = 0)" },
                    (Some(_), None) => span.muted { "no pass has finished in this run yet" },
                    (Some(_), Some(p)) => {
                        "last pass finished " (time(p.finished, now)) " after " (p.took_secs) " s: "
                        (p.checked) " archive(s), " (bytes(p.bytes)) " read, "
                        @if p.damaged > 0 { span.bad { (p.damaged) " damaged and removed" } } @else { span.ok { "nothing damaged" } }
                    },
                }
            }
        }
    }
}

fn traffic(s: &Status) -> Markup {
    let slots = &s.traffic.slots;
    let sum = |f: fn(&crate::metrics::Slot) -> u64| slots.iter().map(f).sum::<u64>();
    let busiest = slots.iter().max_by_key(|s| s.requests);
    html! {
        section id="traffic" {
            h2 { "Traffic, last 24 hours" }
            div.traffic {
                (chart(slots))
                table style="width:auto" {
                    tbody {
                        tr { th { "Requests" } td.n { (sum(|s| s.requests)) } }
                        tr { th { span.key { span style="background:#4ac26b" {} } "From cache" } td.n { (sum(|s| s.hits)) } }
                        tr { th { span.key { span style="background:#fd8c73" {} } "From upstream" } td.n { (sum(|s| s.misses)) } }
                        tr { th { span.key { span style="background:#0969da;height:2px" {} } "Bytes sent" } td.n { (bytes(sum(|s| s.bytes))) } }
                        @if let Some(b) = busiest.filter(|b| b.requests > 0) {
                            tr { th { "Busiest 15 min" } td.n { (b.requests) " requests" } }
                        }
                    }
                }
            }
            p.muted { "Since this process started; " code { "/metrics" } " has the counters for long-term monitoring." }
        }
    }
}

/// The whole page.
pub fn render(s: &Status) -> String {
    let now = s.generated.0;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "composer-proxy status" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "composer-proxy status" }
                    p.muted { "At " (time(s.generated, now)) " · version " (s.version) " · " code { (s.public_url) } " · read-only; actions are in the CLI · " a href="status.json" { "status.json" } }
                }
                (readiness(s))
                (upstreams(s, now))
                (views(s, now))
                (downloads(s))
                (advisories(s, now))
                (storage(s, now))
                (traffic(s))
            }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests;

//! The page's escaping, links and formats.
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::metrics::Slot;
use crate::status::advisories::{Affected, Found};
use crate::status::downloads::Summary;
use crate::status::{
    Downloads, OnlyHere, Scrub, Storage, TokenStatus, Tokens, Traffic, UpstreamStatus, ViewMember,
    ViewStatus,
};

const HOSTILE: &str = r#"<script>alert("x")</script><img src=x onerror=alert(1)>"#;

/// A page where every text from upstream or clients is `HOSTILE`.
fn hostile() -> Status {
    let now = SystemTime::now();
    let event = Some(Event {
        at: Time(now),
        text: HOSTILE.into(),
    });
    let count = Count {
        package: HOSTILE.into(),
        version: Some(HOSTILE.into()),
        counts: [1, 1, 1],
    };
    Status {
        generated: Time(now),
        version: "test",
        public_url: HOSTILE.into(),
        readiness_status: 200,
        readiness: json!({"status": "ready", "degraded": HOSTILE}),
        upstreams: vec![UpstreamStatus {
            name: HOSTILE.into(),
            url: HOSTILE.into(),
            health: HOSTILE.into(),
            reason: Some(HOSTILE.into()),
            credentials: "rejected",
            credentials_since: Some(Time(now)),
            last_refresh: None,
            last_refresh_error: event.clone(),
            last_error: event,
            failing_since: None,
            misbehaving_since: None,
            packages: Some(1),
            listed: true,
            only_here: Some(OnlyHere {
                count: 1,
                names: vec![HOSTILE.into()],
            }),
            feed: None,
        }],
        views: vec![ViewStatus {
            name: HOSTILE.into(),
            url: HOSTILE.into(),
            composer_config: HOSTILE.into(),
            upstreams: vec![ViewMember {
                name: HOSTILE.into(),
                packages: None,
            }],
            tokens: vec![HOSTILE.into()],
        }],
        tokens: Tokens {
            location: HOSTILE.into(),
            require_tokens: true,
            error: Some(HOSTILE.into()),
            list: vec![TokenStatus {
                name: HOSTILE.into(),
                state: "active",
                created: HOSTILE.into(),
                last_used: None,
                views: vec![HOSTILE.into()],
            }],
        },
        downloads: Downloads {
            retention_days: Some(90),
            replicas: 1,
            error: Some(HOSTILE.into()),
            summary: Summary {
                windows: vec!["24h", "7d", "30d"],
                totals: [1, 1, 1],
                top: vec![count.clone()],
                by_view: vec![Group {
                    name: Some(HOSTILE.into()),
                    totals: [1, 1, 1],
                    top: vec![count],
                }],
                by_token: Vec::new(),
            },
        },
        advisories: Arc::new(Found {
            checked: Time(now),
            versions: 1,
            sources: vec![HOSTILE.into()],
            affected: vec![Affected {
                package: HOSTILE.into(),
                version: HOSTILE.into(),
                advisory_id: HOSTILE.into(),
                title: HOSTILE.into(),
                severity: Some(HOSTILE.into()),
                cve: Some(HOSTILE.into()),
                link: Some("javascript:alert(1)".into()),
                affected_versions: HOSTILE.into(),
                views: vec![HOSTILE.into()],
                tokens: vec![HOSTILE.into()],
                downloads: 1,
                last: HOSTILE.into(),
            }],
            unreadable: Vec::new(),
            error: Some(HOSTILE.into()),
        }),
        storage: Storage {
            cache_dir: HOSTILE.into(),
            archive_bytes: 0,
            archive_max_bytes: 0,
            archive_entries: 0,
            metadata_bytes: 0,
            metadata_max_bytes: 0,
            free_bytes: None,
            total_bytes: None,
            min_free_bytes: 0,
            writable: true,
            memory_bytes: 0,
            memory_max_bytes: 0,
            memory_entries: 0,
            response_buffer_bytes: 0,
            bucket: None,
            scrub: Scrub {
                interval_secs: None,
                last: None,
            },
        },
        traffic: Traffic {
            slot_secs: 900,
            slots: vec![Slot::default(); 96],
        },
    }
}

#[test]
fn text_from_upstream_and_clients_is_shown_as_text() {
    let page = render(&hostile());
    assert!(!page.contains("<script"), "a script element");
    assert!(!page.contains("<img"), "an element from upstream text");
    assert!(!page.contains("javascript:"), "a script link");
    // Each hostile text is there, escaped, as many times as it was put in.
    let escaped =
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;";
    assert!(page.matches(escaped).count() >= 30, "{page}");
}

#[test]
fn only_web_links_become_links() {
    assert_eq!(
        web_link("https://github.com/advisories/GHSA-1"),
        Some("https://github.com/advisories/GHSA-1")
    );
    assert_eq!(web_link("javascript:alert(1)"), None);
    assert_eq!(web_link("data:text/html,<b>"), None);
    assert_eq!(web_link("not a url"), None);
}

#[test]
fn times_read_at_a_glance() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    assert_eq!(ago(now, now), "just now");
    assert_eq!(ago(now, now - Duration::from_secs(600)), "10 min ago");
    assert_eq!(ago(now, now - Duration::from_secs(3 * 3600)), "3 h ago");
    assert_eq!(ago(now, now - Duration::from_secs(5 * 86_400)), "5 d ago");
    assert_eq!(ago(now, now + Duration::from_secs(5)), "in the future");
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
}

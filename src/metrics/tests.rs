//! The exposition: every family rendered, labels as recorded.

use super::*;

#[test]
fn families_render_with_fixed_labels() {
    let m = Metrics::default();
    m.record_request("p2", 200, "HIT", 10, Duration::from_millis(2), None);
    m.record_request("p2", 204, "HIT", 5, Duration::from_millis(2), None);
    m.record_request("archive", 502, "NONE", 0, Duration::from_millis(20), None);
    m.record_request("root", 200, "STALE", 7, Duration::from_millis(1), None);
    let magento: Arc<str> = Arc::from("magento");
    m.record_upstream(
        &magento,
        "archive",
        UpstreamOutcome::Timeout,
        Duration::from_secs(3),
    );
    m.record_key_rejection(&magento, 0);
    let text = m.render(&Gauges {
        key_accepted: vec![(magento.clone(), Some(false)), (Arc::from("hyva"), None)],
        archive_bytes: 42,
        ..Gauges::default()
    });
    for expected in [
        "composer_proxy_requests_total{route=\"p2\",status=\"2xx\",cache=\"HIT\"} 2",
        "composer_proxy_requests_total{route=\"archive\",status=\"5xx\",cache=\"NONE\"} 1",
        "composer_proxy_served_bytes_total{route=\"p2\"} 15",
        "composer_proxy_request_duration_seconds_bucket{route=\"p2\",le=\"0.005\"} 2",
        "composer_proxy_request_duration_seconds_bucket{route=\"p2\",le=\"0.001\"} 0",
        "composer_proxy_request_duration_seconds_count{route=\"archive\"} 1",
        "composer_proxy_stale_responses_total{route=\"root\"} 1",
        "composer_proxy_upstream_requests_total{upstream=\"magento\",kind=\"archive\",outcome=\"timeout\"} 1",
        "composer_proxy_upstream_request_duration_seconds_bucket{upstream=\"magento\",kind=\"archive\",le=\"2.5\"} 0",
        "composer_proxy_upstream_request_duration_seconds_bucket{upstream=\"magento\",kind=\"archive\",le=\"5\"} 1",
        "composer_proxy_upstream_key_accepted{upstream=\"magento\"} 0",
        "composer_proxy_upstream_key_rejections_total{upstream=\"magento\",key=\"0\"} 1",
        "composer_proxy_cache_bytes{cache=\"archives\"} 42",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert!(
        !text.contains("key_accepted{upstream=\"hyva\"}"),
        "no sample before an upstream has answered"
    );
}

#[test]
fn connection_gauge_follows_opens_and_closes_and_refusals_count() {
    let m = Metrics::default();
    m.connection_opened();
    m.connection_opened();
    m.connection_closed();
    m.record_connection_refused();
    m.record_connection_outside_allowlist();
    m.record_connection_outside_allowlist();
    let text = m.render(&Gauges::default());
    for expected in [
        "# TYPE composer_proxy_connections_open gauge",
        "composer_proxy_connections_open 1\n",
        "# TYPE composer_proxy_connections_refused_total counter",
        "composer_proxy_connections_refused_total{reason=\"max_connections\"} 1\n",
        "composer_proxy_connections_refused_total{reason=\"allowlist\"} 2\n",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
}

//! Prometheus counters with fixed label sets: route kind, status class and cache status are
//! enums, never the path or the Host header, so the series count is bounded.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    bytes_served: Mutex<BTreeMap<&'static str, u64>>,
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    pub fn record_request(
        &self,
        route: &'static str,
        status: u16,
        cache: &'static str,
        bytes: u64,
    ) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status_class(status), cache)).or_default() += 1;
        }
        if let Ok(mut m) = self.bytes_served.lock() {
            *m.entry(route).or_default() += bytes;
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP composer_proxy_requests_total Requests answered, by route kind, status class and cache status.\n");
        out.push_str("# TYPE composer_proxy_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, class, cache), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "composer_proxy_requests_total{{route=\"{route}\",status=\"{class}\",cache=\"{cache}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP composer_proxy_served_bytes_total Response body bytes announced to clients, by route kind.\n");
        out.push_str("# TYPE composer_proxy_served_bytes_total counter\n");
        if let Ok(m) = self.bytes_served.lock() {
            for (route, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "composer_proxy_served_bytes_total{{route=\"{route}\"}} {n}"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_fixed_labels() {
        let m = Metrics::default();
        m.record_request("p2", 200, "HIT", 10);
        m.record_request("p2", 204, "HIT", 5);
        m.record_request("archive", 502, "none", 0);
        let text = m.render();
        assert!(
            text.contains(
                "composer_proxy_requests_total{route=\"p2\",status=\"2xx\",cache=\"HIT\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains(
            "composer_proxy_requests_total{route=\"archive\",status=\"5xx\",cache=\"none\"} 1"
        ));
        assert!(text.contains("composer_proxy_served_bytes_total{route=\"p2\"} 15"));
    }
}

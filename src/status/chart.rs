//! The traffic chart: the last 24 hours in 15-minute slots as an inline SVG (no script, no
//! outside resource), requests as bars split into cache hits, misses and other answers, bytes
//! sent as a line. The numbers are shown beside it as text by the page.

use maud::{html, Markup};

use crate::metrics::Slot;

const WIDTH: u64 = 480;
const HEIGHT: u64 = 120;

/// The SVG for `slots`, oldest first.
pub fn chart(slots: &[Slot]) -> Markup {
    let bar = WIDTH / slots.len().max(1) as u64;
    let most = slots.iter().map(|s| s.requests).max().unwrap_or(0).max(1);
    let most_bytes = slots.iter().map(|s| s.bytes).max().unwrap_or(0).max(1);
    let height = |n: u64, of: u64| n * HEIGHT / of;
    let line: Vec<String> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let x = i as u64 * bar + bar / 2;
            format!("{x},{}", HEIGHT - height(s.bytes, most_bytes))
        })
        .collect();
    html! {
        svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img"
            width=(WIDTH) height=(HEIGHT + 16) viewBox={"0 0 " (WIDTH) " " (HEIGHT + 16)} {
            title { "Requests and bytes sent per 15 minutes over the last 24 hours" }
            rect x="0" y="0" width=(WIDTH) height=(HEIGHT) class="plot" {}
            @for (i, s) in slots.iter().enumerate() {
                @let x = i as u64 * bar;
                @let hits = height(s.hits, most);
                @let misses = height(s.misses, most);
                @let all = height(s.requests, most);
                @if all > 0 {
                    rect class="other" x=(x) y=(HEIGHT - all) width=(bar.saturating_sub(1).max(1)) height=(all) {}
                    rect class="hit" x=(x) y=(HEIGHT - hits) width=(bar.saturating_sub(1).max(1)) height=(hits) {}
                    rect class="miss" x=(x) y=(HEIGHT - hits - misses) width=(bar.saturating_sub(1).max(1)) height=(misses) {}
                }
            }
            polyline class="bytes" fill="none" points=(line.join(" ")) {}
            text x="0" y=(HEIGHT + 13) class="axis" { "24 h ago" }
            text x=(WIDTH / 2) y=(HEIGHT + 13) class="axis" text-anchor="middle" { "12 h ago" }
            text x=(WIDTH) y=(HEIGHT + 13) class="axis" text-anchor="end" { "now" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_busiest_slot() {
        let mut slots = vec![Slot::default(); 96];
        slots[95] = Slot {
            start: 0,
            requests: 10,
            hits: 6,
            misses: 4,
            bytes: 1000,
        };
        slots[94].requests = 5;
        let svg = chart(&slots).into_string();
        // The busiest slot is the full height; the other half of it; empty slots draw nothing.
        assert!(
            svg.contains(r#"class="other" x="475" y="0" width="4" height="120""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"class="other" x="470" y="60" width="4" height="60""#),
            "{svg}"
        );
        assert_eq!(svg.matches(r#"class="hit""#).count(), 2);
        assert!(!svg.contains("<script"));
    }
}

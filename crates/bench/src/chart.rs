//! The latency chart: one horizontal box plot per scenario on a logarithmic millisecond axis,
//! written as SVG text by hand.
//!
//! ```text
//!   label            |----[  |  ]-------|        whiskers p1–p99, box p25–p75, bar p50
//!                  0.01   0.1    1     10   100 ms
//! ```
//!
//! Colours tell Nimbus, baselines and peers apart. Scenarios without latency samples are left
//! out.

use std::fmt::Write as _;

use crate::report::{Group, Outcome};

const WIDTH: f64 = 1120.0;
const LABEL_WIDTH: f64 = 430.0;
const RIGHT_MARGIN: f64 = 30.0;
const ROW_HEIGHT: f64 = 22.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 56.0;

/// Draws the chart; `title` goes on top.
pub fn svg(title: &str, outcomes: &[Outcome]) -> String {
    let rows: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.latency_quantiles_ms.len() == 101)
        .collect();
    let height = TOP + ROW_HEIGHT * rows.len().max(1) as f64 + BOTTOM;
    let (lo, hi) = axis_range(&rows);
    let x = |ms: f64| {
        let span = hi.log10() - lo.log10();
        LABEL_WIDTH
            + (ms.max(lo).log10() - lo.log10()) / span * (WIDTH - LABEL_WIDTH - RIGHT_MARGIN)
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        10,
        escape(title)
    );
    let _ = writeln!(
        out,
        r##"<text x="10" y="36" fill="#555">whiskers p1–p99, box p25–p75, bar p50; logarithmic axis. Blue: Nimbus, grey: baseline, orange: peer</text>"##
    );

    // Grid lines at every power of ten within the range.
    let axis_y = TOP + ROW_HEIGHT * rows.len().max(1) as f64;
    let mut decade = lo.log10().floor() as i32;
    while 10f64.powi(decade) <= hi * 1.0001 {
        let ms = 10f64.powi(decade);
        if ms >= lo * 0.9999 {
            let gx = x(ms);
            let _ = writeln!(
                out,
                r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{axis_y}" stroke="#ddd"/>"##
            );
            let _ = writeln!(
                out,
                r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                axis_y + 16.0,
                tick_label(ms)
            );
        }
        decade += 1;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency (ms)</text>"#,
        (LABEL_WIDTH + WIDTH - RIGHT_MARGIN) / 2.0,
        axis_y + 36.0
    );

    for (i, outcome) in rows.iter().enumerate() {
        let q = &outcome.latency_quantiles_ms;
        let cy = TOP + ROW_HEIGHT * i as f64 + ROW_HEIGHT / 2.0;
        let colour = match outcome.group {
            Group::Nimbus => "#2b6cb0",
            Group::Baseline => "#718096",
            Group::Peer => "#dd6b20",
        };
        let (p1, p25, p50, p75, p99) = (x(q[1]), x(q[25]), x(q[50]), x(q[75]), x(q[99]));
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL_WIDTH - 8.0,
            cy + 4.0,
            escape(&outcome.title)
        );
        let _ = writeln!(
            out,
            r#"<line x1="{p1:.1}" y1="{cy:.1}" x2="{p99:.1}" y2="{cy:.1}" stroke="{colour}"/>"#
        );
        for end in [p1, p99] {
            let _ = writeln!(
                out,
                r#"<line x1="{end:.1}" y1="{:.1}" x2="{end:.1}" y2="{:.1}" stroke="{colour}"/>"#,
                cy - 4.0,
                cy + 4.0
            );
        }
        let _ = writeln!(
            out,
            r#"<rect x="{p25:.1}" y="{:.1}" width="{:.1}" height="12" fill="{colour}" fill-opacity="0.35" stroke="{colour}"/>"#,
            cy - 6.0,
            (p75 - p25).max(1.0)
        );
        let _ = writeln!(
            out,
            r#"<line x1="{p50:.1}" y1="{:.1}" x2="{p50:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2.5"/>"#,
            cy - 8.0,
            cy + 8.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Powers of ten enclosing every p1 and p99; `(0.01, 100)` when there is nothing to draw.
fn axis_range(rows: &[&Outcome]) -> (f64, f64) {
    let values = rows
        .iter()
        .flat_map(|o| [o.latency_quantiles_ms[1], o.latency_quantiles_ms[99]]);
    let (min, max) = values
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !min.is_finite() {
        return (0.01, 100.0);
    }
    let lo = 10f64.powf(min.log10().floor());
    let hi = 10f64.powf(max.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

fn tick_label(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms}")
    }
}

/// Escapes text for SVG/XML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(title: &str, group: Group, scale: f64) -> Outcome {
        let samples: Vec<f64> = (1..=1000).map(|i| f64::from(i) * scale).collect();
        Outcome::new(title, title, group).with_latencies(&[samples])
    }

    #[test]
    fn draws_one_row_per_scenario_with_latencies() {
        let outcomes = vec![
            outcome("warm <Python> & co", Group::Nimbus, 0.001),
            outcome("bare", Group::Baseline, 0.0001),
            Outcome::new("pss", "pss only", Group::Nimbus).with_pss(&[vec![1.0]]),
        ];
        let text = svg("Nimbus", &outcomes);
        assert!(text.starts_with("<svg ") && text.trim_end().ends_with("</svg>"));
        assert!(text.contains("warm &lt;Python&gt; &amp; co"));
        assert!(!text.contains("pss only"));
        assert_eq!(text.matches("<rect x=").count(), 2);
        assert!(text.contains("#2b6cb0") && text.contains("#718096"));
    }

    #[test]
    fn axis_spans_whole_decades() {
        let a = outcome("a", Group::Nimbus, 0.002);
        let b = outcome("b", Group::Nimbus, 0.05);
        let (lo, hi) = axis_range(&[&a, &b]);
        assert!(
            (lo - 0.01).abs() < 1e-12 && (hi - 100.0).abs() < 1e-9,
            "{lo} {hi}"
        );
        assert_eq!(axis_range(&[]), (0.01, 100.0));
    }

    #[test]
    fn empty_chart_is_still_valid() {
        let text = svg("none", &[]);
        assert!(text.starts_with("<svg ") && text.contains("</svg>"));
    }
}

//! Hand-written SVG: one panel per scenario, latency percentiles (log scale) against the
//! offered open-loop rate, with the SLO line and the sustainable rate marked.

use super::{ms_short, Report};
use crate::plan::{ScenarioRun, Verdict};
use std::fmt::Write as _;

const PANEL_W: f64 = 480.0;
const PANEL_H: f64 = 320.0;
const HEADER_H: f64 = 56.0;
const COLUMNS: usize = 2;
/// Plot area inside a panel.
const LEFT: f64 = 62.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;

/// (label, colour) of the drawn percentiles, in `Summary::percentiles` order.
const SERIES: [(&str, &str); 4] = [
    ("p50", "#1b9e77"),
    ("p90", "#7570b3"),
    ("p99", "#d95f02"),
    ("p99.9", "#a6761d"),
];

pub fn svg(r: &Report) -> String {
    let panels = r.runs.len().max(1);
    let rows = panels.div_ceil(COLUMNS);
    let width = PANEL_W * COLUMNS.min(panels) as f64;
    let height = HEADER_H + PANEL_H * rows as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r##"<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="12" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(&format!(
            "opr-proxy latency vs offered rate ({} proxy core(s), {})",
            r.cores, r.machine.date
        ))
    );
    // Legend.
    let mut x = 12.0;
    for (label, colour) in SERIES {
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="38" x2="{}" y2="38" stroke="{colour}" stroke-width="2"/><text x="{}" y="42">{label}</text>"#,
            x + 18.0,
            x + 22.0
        );
        x += 70.0;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{x}" y1="38" x2="{}" y2="38" stroke="#e41a1c" stroke-dasharray="5,3"/><text x="{}" y="42">{}</text>"##,
        x + 18.0,
        x + 22.0,
        esc(&format!("SLO p99 {} ms", ms_short(r.slo_p99_us)))
    );
    x += 120.0;
    let _ = writeln!(
        out,
        r##"<line x1="{x}" y1="38" x2="{}" y2="38" stroke="#555555" stroke-dasharray="2,2"/><text x="{}" y="42">sustainable rate</text>"##,
        x + 18.0,
        x + 22.0
    );
    if r.runs.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="20" y="{}">no scenario ran</text>"#,
            HEADER_H + 30.0
        );
    }
    for (i, run) in r.runs.iter().enumerate() {
        let px = PANEL_W * (i % COLUMNS) as f64;
        let py = HEADER_H + PANEL_H * (i / COLUMNS) as f64;
        panel(&mut out, run, px, py, r.slo_p99_us);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, run: &ScenarioRun, px: f64, py: f64, slo_us: u64) {
    let (x0, x1) = (px + LEFT, px + PANEL_W - RIGHT);
    let (y0, y1) = (py + TOP, py + PANEL_H - BOTTOM);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        px + LEFT,
        py + 20.0,
        esc(&format!(
            "{} × {} connections",
            run.scenario, run.connections
        ))
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#999999"/>"##,
        x1 - x0,
        y1 - y0
    );
    let mut steps: Vec<_> = run
        .steps
        .iter()
        .filter_map(|s| Some((s.offered?, s)))
        .filter(|(_, s)| s.latency.count > 0)
        .collect();
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    if steps.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">no open-loop step completed</text>"#,
            x0 + 10.0,
            (y0 + y1) / 2.0
        );
        return;
    }

    // Axes: x linear from 0, y log10 over whole decades (ms).
    let x_max = steps.iter().map(|(r, _)| *r).fold(1.0, f64::max) * 1.05;
    let x_step = nice_step(x_max / 5.0);
    let values_ms = steps
        .iter()
        .flat_map(|(_, s)| s.latency.percentiles().map(|(_, us)| us as f64 / 1000.0))
        .chain(std::iter::once(slo_us as f64 / 1000.0));
    let (lo, hi) = values_ms.fold((f64::MAX, f64::MIN), |(lo, hi), v| {
        (lo.min(v.max(0.001)), hi.max(v.max(0.001)))
    });
    let (d_lo, mut d_hi) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    if d_hi <= d_lo {
        d_hi = d_lo + 1;
    }
    let sx = |rate: f64| x0 + (x1 - x0) * rate / x_max;
    let sy = |ms: f64| {
        let v = ms.max(0.001).log10();
        y1 - (y1 - y0) * (v - f64::from(d_lo)) / f64::from(d_hi - d_lo)
    };

    // Grid and labels.
    for d in d_lo..=d_hi {
        let y = sy(10f64.powi(d));
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{} ms</text>"##,
            x0 - 6.0,
            y + 4.0,
            esc(&decade_label(d))
        );
    }
    let mut t = 0.0;
    while t <= x_max {
        let x = sx(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{}" stroke="#999999"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y1 + 4.0,
            y1 + 16.0,
            rate_label(t)
        );
        t += x_step;
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">offered rate (requests/s, open loop)</text>"#,
        (x0 + x1) / 2.0,
        y1 + 32.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{:.1}" text-anchor="middle" transform="rotate(-90 {} {:.1})">latency</text>"#,
        px + 14.0,
        (y0 + y1) / 2.0,
        px + 14.0,
        (y0 + y1) / 2.0
    );

    // SLO and sustainable rate.
    let ys = sy(slo_us as f64 / 1000.0);
    let _ = writeln!(
        out,
        r##"<line x1="{x0}" y1="{ys:.1}" x2="{x1}" y2="{ys:.1}" stroke="#e41a1c" stroke-dasharray="5,3"/>"##
    );
    if let Some(best) = run.sustainable().and_then(|s| s.offered) {
        let x = sx(best);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#555555" stroke-dasharray="2,2"/><text x="{:.1}" y="{}" fill="#555555">{}</text>"##,
            x + 3.0,
            y0 + 12.0,
            rate_label(best)
        );
    }

    // Series: a polyline per percentile; failed steps get hollow markers.
    for (i, (label, colour)) in SERIES.iter().enumerate() {
        let points: Vec<String> = steps
            .iter()
            .map(|(rate, s)| {
                let us = s.latency.percentiles()[i].1;
                format!("{:.1},{:.1}", sx(*rate), sy(us as f64 / 1000.0))
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"><title>{label}</title></polyline>"#,
            points.join(" ")
        );
        for (rate, s) in &steps {
            let us = s.latency.percentiles()[i].1;
            let fill = if s.verdict == Verdict::Pass {
                colour
            } else {
                "#ffffff"
            };
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{fill}" stroke="{colour}"><title>{}</title></circle>"#,
                sx(*rate),
                sy(us as f64 / 1000.0),
                esc(&format!(
                    "{label} {} ms at {rate:.0} req/s ({})",
                    super::ms(us),
                    s.verdict.label()
                ))
            );
        }
    }
}

/// 1, 2 or 5 × 10^k, the smallest not below `raw`.
pub(crate) fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

fn decade_label(d: i32) -> String {
    if d >= 0 {
        format!("{}", 10u64.pow(d.unsigned_abs()))
    } else {
        format!("{:.*}", d.unsigned_abs() as usize, 10f64.powi(d))
    }
}

fn rate_label(r: f64) -> String {
    if r >= 1000.0 {
        let k = r / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else {
        format!("{r:.0}")
    }
}

/// XML text escaping.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn svg_is_well_formed_xml_with_every_series() {
        let report = sample_report();
        let text = svg(&report);
        let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let polylines = root
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        // The first run has 4 steps, the second 1: a polyline per series per panel.
        assert_eq!(polylines, SERIES.len() * 2);
        for n in root.descendants() {
            for a in n.attributes() {
                assert!(
                    !a.value().contains("NaN") && !a.value().contains("inf"),
                    "{a:?}"
                );
            }
        }
        assert!(text.contains("&lt;CPU&gt;") || !text.contains("<CPU>"));
    }

    #[test]
    fn empty_reports_still_render() {
        let mut report = sample_report();
        report.runs.clear();
        let text = svg(&report);
        roxmltree::Document::parse(&text).expect("well-formed SVG");
        report.runs = sample_report().runs;
        report.runs[0].steps.clear();
        roxmltree::Document::parse(&svg(&report)).expect("well-formed SVG");
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(nice_step(0.9), 1.0);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(1.1), 2.0);
        assert_eq!(nice_step(3_100.0), 5_000.0);
        assert_eq!(nice_step(7_000.0), 10_000.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(0), "1");
        assert_eq!(decade_label(2), "100");
        assert_eq!(rate_label(25_000.0), "25k");
        assert_eq!(rate_label(2_500.0), "2.5k");
        assert_eq!(rate_label(125.0), "125");
        assert_eq!(esc("a<b&\"c\">"), "a&lt;b&amp;&quot;c&quot;&gt;");
    }
}

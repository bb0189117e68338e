//! `chart.svg`: the ingress / HAProxy and ingress / nginx ratios of the
//! report's figures as bars on a log scale (below 1 = ingress lower).

use std::fmt::Write as _;

/// Chart bars: a label and the two ratios.
pub type Chart = Vec<(String, [Option<f64>; 2])>;

pub fn svg(chart: &Chart) -> String {
    // Log scale from 1/1000 to 10; a line at 1 (parity).
    let (w, h, left, top, bottom) = (900.0, 420.0, 70.0, 40.0, 70.0);
    let plot_h = h - top - bottom;
    let y = |v: f64| {
        let l = v.clamp(1e-3, 10.0).log10();
        top + plot_h * (1.0 - (l + 3.0) / 4.0)
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"15\">ingress / HAProxy and ingress / nginx (log scale; below 1 = ingress lower)</text>\n"
    );
    for t in [0.001, 0.01, 0.1, 1.0, 10.0] {
        let yy = y(t);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"{}\" stroke-width=\"{}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text>",
            w - 20.0,
            if t == 1.0 { "#333" } else { "#ddd" },
            if t == 1.0 { 1.5 } else { 1.0 },
            left - 6.0,
            yy + 4.0
        );
    }
    let n = chart.len().max(1) as f64;
    let group = (w - left - 30.0) / n;
    let bar = group * 0.32;
    for (i, (label, ratios)) in chart.iter().enumerate() {
        let gx = left + group * i as f64 + group * 0.15;
        for (j, (r, color)) in ratios.iter().zip(["#d9822b", "#2b7bd9"]).enumerate() {
            let x = gx + j as f64 * (bar + 4.0);
            match r {
                Some(v) => {
                    let (y1, y0) = (y(*v), y(1.0));
                    let (yt, hh) = if y1 < y0 { (y1, y0 - y1) } else { (y0, y1 - y0) };
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x:.1}\" y=\"{yt:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.2}</text>",
                        hh.max(1.0),
                        x + bar / 2.0,
                        if y1 < y0 { yt - 3.0 } else { yt + hh + 11.0 }
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">n/a</text>",
                        x + bar / 2.0,
                        y(1.0) - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            gx + bar,
            h - bottom + 20.0
        );
    }
    let ly = h - 22.0;
    let _ = writeln!(
        s,
        "<rect x=\"{left}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#d9822b\"/><text x=\"{}\" y=\"{ly}\">ingress / HAProxy</text><rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#2b7bd9\"/><text x=\"{}\" y=\"{ly}\">ingress / nginx</text>\n</svg>",
        ly - 10.0,
        left + 16.0,
        left + 160.0,
        ly - 10.0,
        left + 176.0
    );
    s
}

//! A small SVG line chart (no plotting dependency): series of y values over shared x labels.

pub struct Series<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
}

const COLOURS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];

pub fn line_chart(title: &str, x_labels: &[String], y_label: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 360.0, 70.0, 20.0, 40.0, 60.0);
    let finite = series.iter().flat_map(|s| s.values.iter().copied()).filter(|v| v.is_finite());
    let max = finite.fold(0.0f64, f64::max).max(1e-12) * 1.05;
    let n = x_labels.len().max(2);
    let x = |i: usize| left + (w - left - right) * i as f64 / (n - 1) as f64;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / max);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"##,
        w / 2.0
    );
    svg += &format!(
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#444"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#444"/>"##,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        svg += &format!(
            r##"<text x="{}" y="{}" text-anchor="end">{v:.3}</text><line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/>"##,
            left - 6.0,
            y(v) + 4.0,
            y(v),
            w - right,
            y(v)
        );
    }
    for (i, label) in x_labels.iter().enumerate() {
        svg += &format!(r##"<text x="{}" y="{}" text-anchor="middle">{label}</text>"##, x(i), h - bottom + 16.0);
    }
    svg += &format!(r##"<text x="{}" y="{}" text-anchor="middle">timestep band (noisier to the right)</text>"##, w / 2.0, h - 18.0);
    svg += &format!(r##"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{y_label}</text>"##, h / 2.0, h / 2.0);
    for (k, s) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let points: Vec<String> = s.values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
        svg += &format!(r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##, points.join(" "));
        svg += &format!(r##"<text x="{}" y="{}" fill="{colour}">{}</text>"##, left + 10.0, top + 14.0 + 16.0 * k as f64, s.name);
    }
    svg + "</svg>"
}

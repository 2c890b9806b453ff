//! Plots as SVG, drawn as plain text: line charts (log x when asked) and grouped bar
//! charts, each point a median with a p10–p90 whisker, dashed reference lines (targets,
//! "no program") and a legend. Deterministic output, no dependency, readable on GitHub.

use std::fmt::Write as _;

use zonewall_testbed::report::{Panel, Plot, PlotKind, Point};

/// Okabe–Ito: distinguishable with the common colour-vision deficiencies.
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#7F7F7F", "#000000",
];
const FONT: &str = "font-family=\"Helvetica, Arial, sans-serif\"";
/// Approximate width of one character at 12 px.
const CHAR_WIDTH: f64 = 6.6;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const PLOT_HEIGHT: f64 = 300.0;
const PANEL_GAP: f64 = 64.0;

/// Renders `plot` as a standalone SVG document.
pub fn render(plot: &Plot) -> String {
    let panel_widths: Vec<f64> = plot
        .panels
        .iter()
        .map(|panel| panel_width(plot.kind, panel))
        .collect();
    let plots_width: f64 = panel_widths.iter().sum::<f64>()
        + PANEL_GAP * (panel_widths.len().saturating_sub(1)) as f64;
    let width = (LEFT + plots_width + RIGHT).max(title_width(&plot.title) + 40.0);
    let has_panel_titles = plot.panels.iter().any(|panel| !panel.title.is_empty());
    let plot_top = TOP + if has_panel_titles { 22.0 } else { 6.0 };
    let label_lines = plot
        .panels
        .iter()
        .map(|panel| category_lines(plot.kind, panel, &panel_widths))
        .max()
        .unwrap_or(1);
    let has_x_labels = plot.panels.iter().any(|panel| !panel.x_label.is_empty());
    let axis_bottom = plot_top + PLOT_HEIGHT;
    let legend_top =
        axis_bottom + 10.0 + 15.0 * label_lines as f64 + if has_x_labels { 22.0 } else { 6.0 };
    let legend = legend_items(plot);
    let legend_rows = legend_layout(&legend, width - LEFT - RIGHT);
    let height = legend_top + 20.0 * legend_rows.len() as f64 + 14.0;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" {FONT} font-size=\"12\">"
    );
    let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"24\" font-size=\"15\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>",
        width / 2.0,
        escape(&plot.title)
    );
    // y label, rotated, left of the first panel.
    let _ = writeln!(
        svg,
        "<text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        plot_top + PLOT_HEIGHT / 2.0,
        escape(&plot.y_label)
    );

    let shared = (plot.kind == PlotKind::Line).then(|| y_range(plot, plot.panels.iter()));
    let mut left = LEFT;
    for (panel, panel_w) in plot.panels.iter().zip(&panel_widths) {
        let range = shared.unwrap_or_else(|| y_range(plot, std::iter::once(panel)));
        let frame = Frame {
            left,
            top: plot_top,
            width: *panel_w,
            height: PLOT_HEIGHT,
            y_min: range.0,
            y_max: range.1,
            step: range.2,
        };
        draw_panel(&mut svg, plot, panel, &frame);
        left += panel_w + PANEL_GAP;
    }

    // Legend.
    for (row_index, row) in legend_rows.iter().enumerate() {
        let y = legend_top + 20.0 * row_index as f64;
        let mut x = LEFT;
        for &item in row {
            let (label, color, dashed) = &legend[item];
            if *dashed {
                let _ = writeln!(
                    svg,
                    "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-width=\"1.5\" stroke-dasharray=\"5 3\"/>",
                    x + 18.0
                );
            } else {
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"18\" height=\"10\" fill=\"{color}\"/>",
                    y - 5.0
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x + 24.0,
                y + 4.0,
                escape(label)
            );
            x += legend_item_width(label);
        }
    }
    svg.push_str("</svg>\n");
    svg
}

struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    y_min: f64,
    y_max: f64,
    step: f64,
}

impl Frame {
    fn y(&self, value: f64) -> f64 {
        let fraction = (value - self.y_min) / (self.y_max - self.y_min);
        self.top + self.height * (1.0 - fraction.clamp(-0.02, 1.02))
    }

    fn bottom(&self) -> f64 {
        self.top + self.height
    }

    fn right(&self) -> f64 {
        self.left + self.width
    }
}

fn panel_width(kind: PlotKind, panel: &Panel) -> f64 {
    match kind {
        PlotKind::Line => 330.0,
        PlotKind::Bar => {
            let series = panel.series.len().max(1) as f64;
            let per_category = (series * 20.0 + 28.0).max(96.0);
            (panel.categories.len().max(1) as f64 * per_category).max(220.0)
        }
    }
}

fn title_width(title: &str) -> f64 {
    title.chars().count() as f64 * CHAR_WIDTH * 1.25
}

/// How many lines the longest category label of a bar panel needs.
fn category_lines(kind: PlotKind, panel: &Panel, _widths: &[f64]) -> usize {
    if kind != PlotKind::Bar {
        return 1;
    }
    let slot = panel_width(kind, panel) / panel.categories.len().max(1) as f64;
    panel
        .categories
        .iter()
        .map(|category| wrap(category, slot).len())
        .max()
        .unwrap_or(1)
}

/// Splits `text` at spaces into lines that fit `width` pixels.
fn wrap(text: &str, width: f64) -> Vec<String> {
    let limit = ((width - 6.0) / CHAR_WIDTH).max(6.0) as usize;
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= limit => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// (min, max, tick step) over the points of `panels` and the reference lines.
fn y_range<'a>(plot: &Plot, panels: impl Iterator<Item = &'a Panel>) -> (f64, f64, f64) {
    let mut low = f64::INFINITY;
    let mut high = f64::NEG_INFINITY;
    for point in panels.flat_map(|panel| panel.series.iter().flat_map(|series| &series.points)) {
        low = low.min(point.low).min(point.y);
        high = high.max(point.high).max(point.y);
    }
    for (value, _) in &plot.references {
        low = low.min(*value);
        high = high.max(*value);
    }
    if !low.is_finite() || !high.is_finite() {
        return (0.0, 1.0, 0.2);
    }
    if plot.y_from_zero || plot.kind == PlotKind::Bar {
        low = low.min(0.0);
    }
    if (high - low).abs() < f64::EPSILON {
        high = low + 1.0;
    }
    let step = nice_step((high - low) * 1.05, 5);
    let min = (low / step).floor() * step;
    let max = ((high + (high - low) * 0.04) / step).ceil() * step;
    (min, max, step)
}

/// 1, 2 or 5 times a power of ten, giving about `ticks` intervals over `range`.
fn nice_step(range: f64, ticks: usize) -> f64 {
    let raw = range / ticks as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let normalised = raw / magnitude;
    let nice = if normalised < 1.5 {
        1.0
    } else if normalised < 3.0 {
        2.0
    } else if normalised < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A tick label: short, with k/M for large values.
fn short(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = if (scaled - scaled.round()).abs() < 1e-9 {
        format!("{scaled:.0}")
    } else if (scaled * 10.0 - (scaled * 10.0).round()).abs() < 1e-6 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    format!("{text}{suffix}")
}

fn draw_panel(svg: &mut String, plot: &Plot, panel: &Panel, frame: &Frame) {
    // Panel title and grid.
    if !panel.title.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"middle\">{}</text>",
            frame.left + frame.width / 2.0,
            frame.top - 8.0,
            escape(&panel.title)
        );
    }
    let mut tick = frame.y_min;
    while tick <= frame.y_max + frame.step * 1e-6 {
        let y = frame.y(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>",
            frame.left,
            frame.right()
        );
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{}</text>",
            frame.left - 6.0,
            y + 4.0,
            short(tick)
        );
        tick += frame.step;
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#888\"/>",
        frame.left, frame.top, frame.width, frame.height
    );

    match plot.kind {
        PlotKind::Line => draw_lines(svg, panel, frame),
        PlotKind::Bar => draw_bars(svg, panel, frame),
    }

    for (value, label) in &plot.references {
        let y = frame.y(*value);
        let _ = writeln!(
            svg,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#c00\" stroke-width=\"1.2\" stroke-dasharray=\"6 4\"/>",
            frame.left,
            frame.right()
        );
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#c00\">{}</text>",
            frame.right() - 4.0,
            y - 4.0,
            escape(label)
        );
    }
    if !panel.x_label.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            frame.left + frame.width / 2.0,
            frame.bottom() + 38.0,
            escape(&panel.x_label)
        );
    }
}

fn draw_lines(svg: &mut String, panel: &Panel, frame: &Frame) {
    let xs: Vec<f64> = panel
        .series
        .iter()
        .flat_map(|series| series.points.iter().map(|point| point.x))
        .filter(|x| !panel.log_x || *x > 0.0)
        .collect();
    let transform = |x: f64| if panel.log_x { x.log10() } else { x };
    let (mut low, mut high) = xs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), x| {
            (low.min(transform(*x)), high.max(transform(*x)))
        });
    if !low.is_finite() {
        (low, high) = (0.0, 1.0);
    }
    let pad = ((high - low) * 0.08).max(0.2);
    let (low, high) = (low - pad, high + pad);
    let x_of = |x: f64| frame.left + (transform(x) - low) / (high - low) * frame.width;
    // x ticks: decades on a log axis, the points' own x otherwise.
    let ticks: Vec<f64> = if panel.log_x {
        ((low.ceil() as i32)..=(high.floor() as i32))
            .map(|power| 10f64.powi(power))
            .collect()
    } else {
        let mut unique = xs.clone();
        unique.sort_by(f64::total_cmp);
        unique.dedup();
        unique
    };
    for tick in ticks {
        let x = x_of(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>",
            frame.bottom(),
            frame.bottom() + 5.0
        );
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
            frame.bottom() + 18.0,
            short(tick)
        );
    }
    let count = panel.series.len() as f64;
    for (index, series) in panel.series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        // Spread overlapping whiskers a little.
        let offset = (index as f64 - (count - 1.0) / 2.0) * 3.0;
        let points: Vec<(f64, &Point)> = series
            .points
            .iter()
            .map(|point| (x_of(point.x) + offset, point))
            .collect();
        let path: Vec<String> = points
            .iter()
            .map(|(x, point)| format!("{x:.1},{:.1}", frame.y(point.y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for (x, point) in points {
            whisker(svg, x, point, frame, color);
            let _ = writeln!(
                svg,
                "<circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"><title>{}: {}</title></circle>",
                frame.y(point.y),
                escape(&series.label),
                short(point.y)
            );
        }
    }
}

fn draw_bars(svg: &mut String, panel: &Panel, frame: &Frame) {
    let categories = panel.categories.len().max(1);
    let slot = frame.width / categories as f64;
    let count = panel.series.len().max(1);
    let bar = ((slot - 20.0) / count as f64).clamp(4.0, 26.0);
    for (index, category) in panel.categories.iter().enumerate() {
        let center = frame.left + slot * (index as f64 + 0.5);
        for (line_index, line) in wrap(category, slot).iter().enumerate() {
            let _ = writeln!(
                svg,
                "<text x=\"{center:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#222\">{}</text>",
                frame.bottom() + 16.0 + 15.0 * line_index as f64,
                escape(line)
            );
        }
    }
    let zero = frame.y(0.0_f64.max(frame.y_min));
    for (category, _) in panel.categories.iter().enumerate() {
        // The series with a point in this category, centred together.
        let present: Vec<(usize, &Point)> = panel
            .series
            .iter()
            .enumerate()
            .filter_map(|(index, series)| {
                series
                    .points
                    .iter()
                    .find(|point| point.x.round() as usize == category)
                    .map(|point| (index, point))
            })
            .collect();
        let center = frame.left + slot * (category as f64 + 0.5);
        for (position, (series_index, point)) in present.iter().enumerate() {
            let color = PALETTE[series_index % PALETTE.len()];
            let x = center - bar * present.len() as f64 / 2.0 + bar * position as f64;
            let top = frame.y(point.y);
            let (y, height) = if top < zero {
                (top, zero - top)
            } else {
                (zero, top - zero)
            };
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"{color}\"><title>{}: {}</title></rect>",
                (bar - 2.0).max(1.0),
                escape(&panel.series[*series_index].label),
                short(point.y)
            );
            whisker(svg, x + (bar - 2.0).max(1.0) / 2.0, point, frame, "#222");
        }
    }
}

/// A vertical p10–p90 line with caps.
fn whisker(svg: &mut String, x: f64, point: &Point, frame: &Frame, color: &str) {
    let (low, high) = (frame.y(point.low), frame.y(point.high));
    if (low - high).abs() < 0.5 {
        return;
    }
    let _ = writeln!(
        svg,
        "<path d=\"M{x:.1} {low:.1}V{high:.1}M{:.1} {low:.1}h6M{:.1} {high:.1}h6\" stroke=\"{color}\" stroke-width=\"1.2\" fill=\"none\"/>",
        x - 3.0,
        x - 3.0
    );
}

/// (label, colour, dashed) of every legend entry: the series (by position, as they are
/// coloured) and the reference lines.
fn legend_items(plot: &Plot) -> Vec<(String, &'static str, bool)> {
    let mut items: Vec<(String, &'static str, bool)> = Vec::new();
    for panel in &plot.panels {
        for (index, series) in panel.series.iter().enumerate() {
            if !items.iter().any(|(label, _, _)| *label == series.label) {
                items.push((series.label.clone(), PALETTE[index % PALETTE.len()], false));
            }
        }
    }
    if !plot.references.is_empty() {
        items.push(("dashed: reference or target".into(), "#c00", true));
    }
    items.push(("whiskers: p10–p90".into(), "#222", true));
    items
}

fn legend_item_width(label: &str) -> f64 {
    24.0 + label.chars().count() as f64 * CHAR_WIDTH + 22.0
}

/// Legend entries per row so that no row is wider than `width`.
fn legend_layout(items: &[(String, &'static str, bool)], width: f64) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0.0;
    for (index, (label, _, _)) in items.iter().enumerate() {
        let item = legend_item_width(label);
        if used + item > width && !rows.last().is_some_and(Vec::is_empty) {
            rows.push(Vec::new());
            used = 0.0;
        }
        rows.last_mut().expect("at least one row").push(index);
        used += item;
    }
    rows
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use zonewall_testbed::report::Series;

    #[test]
    fn steps_and_labels_are_round() {
        assert_eq!(nice_step(100.0, 5), 20.0);
        assert_eq!(nice_step(7.0, 5), 1.0);
        assert_eq!(short(1_500_000.0), "1.5M");
        assert_eq!(short(20_000.0), "20k");
        assert_eq!(short(0.25), "0.25");
    }

    #[test]
    fn renders_a_well_formed_document() {
        let plot = Plot {
            file: "x.svg".into(),
            title: "A <title> & more".into(),
            kind: PlotKind::Bar,
            y_label: "ratio".into(),
            panels: vec![Panel {
                title: String::new(),
                x_label: String::new(),
                log_x: false,
                categories: vec!["TCP, 1 stream".into(), "new TCP connections".into()],
                series: vec![Series {
                    label: "zonewall".into(),
                    points: vec![
                        Point {
                            x: 0.0,
                            y: 0.97,
                            low: 0.9,
                            high: 1.0,
                        },
                        Point {
                            x: 1.0,
                            y: 0.8,
                            low: 0.7,
                            high: 0.9,
                        },
                    ],
                }],
            }],
            references: vec![(1.0, "no program".into())],
            y_from_zero: true,
        };
        let svg = render(&plot);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("A &lt;title&gt; &amp; more"));
        assert_eq!(
            svg.matches("<rect x=").count(),
            1 + 2 + 1,
            "frame, two bars, legend swatch"
        );
    }
}

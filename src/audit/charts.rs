//! SVG charts for the report, drawn with plotters' SVG backend: line charts with optional
//! spread bands, stacked fractions over steps, and horizontal bar pairs. Text is left to the
//! browser's fonts, so no font file is needed here.

use plotters::coord::CoordTranslate;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width and height of every chart, in CSS pixels.
const SIZE: (u32, u32) = (640, 250);

pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line: `(x, y)` points and an optional band `(x, low, high)` drawn under it.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    pub fn line(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, band: Vec::new() }
    }
}

fn failed<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e:?}")
}

/// The legend every chart here draws, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(chart: &mut ChartContext<'a, DB, CT>, position: SeriesLabelPosition) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(failed)
}

fn span(values: impl Iterator<Item = f64>, floor_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if floor_zero && lo > 0.0 {
        lo = 0.0;
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.05;
    (if floor_zero && lo == 0.0 { 0.0 } else { lo - pad }, hi + pad)
}

/// Lines over steps; `unit_range` fixes y to [0, 1] (rates and fractions).
pub fn lines(title: &str, y_label: &str, series: &[Series], unit_range: bool) -> anyhow::Result<String> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = span(xs, false);
    let (y0, y1) = if unit_range {
        (0.0, 1.0)
    } else {
        span(series.iter().flat_map(|s| s.points.iter().map(|p| p.1).chain(s.band.iter().flat_map(|b| [b.1, b.2]))), true)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(failed)?;
        for (i, s) in series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            if !s.band.is_empty() {
                let mut outline: Vec<(f64, f64)> = s.band.iter().map(|b| (b.0, b.2)).collect();
                outline.extend(s.band.iter().rev().map(|b| (b.0, b.1)));
                chart.draw_series(std::iter::once(Polygon::new(outline, colour.mix(0.18).filled()))).map_err(failed)?;
            }
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))
                .map_err(failed)?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
            if s.points.len() <= 60 {
                chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 2, colour.filled()))).map_err(failed)?;
            }
        }
        if series.len() > 1 || series.iter().any(|s| !s.band.is_empty()) {
            legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// Layers stacked to 1 at each step (e.g. the verdict mix): `layers[i].1[j]` is layer i's
/// fraction at `steps[j]`.
pub fn stacked(title: &str, steps: &[f64], layers: &[(String, Vec<f64>)]) -> anyhow::Result<String> {
    let (x0, x1) = span(steps.iter().copied(), false);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .right_y_label_area_size(0)
            .build_cartesian_2d(x0..x1, 0.0..1.0)
            .map_err(failed)?;
        chart.configure_mesh()
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13)).x_desc("step").x_label_formatter(&|x| format!("{x:.0}")).y_desc("fraction").light_line_style(RGBColor(235, 235, 235)).draw().map_err(failed)?;
        let mut below = vec![0.0; steps.len()];
        for (i, (name, values)) in layers.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let above: Vec<f64> = below.iter().zip(values).map(|(b, v)| b + v).collect();
            let mut outline: Vec<(f64, f64)> = steps.iter().copied().zip(above.iter().copied()).collect();
            outline.extend(steps.iter().copied().zip(below.iter().copied()).rev());
            chart
                .draw_series(std::iter::once(Polygon::new(outline, colour.mix(0.75).filled())))
                .map_err(failed)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.mix(0.75).filled()));
            below = above;
        }
        legend(&mut chart, SeriesLabelPosition::LowerLeft)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// Horizontal bars in [0, 1], two per group (e.g. pass rate in the first and second half of
/// the run), labelled by group.
pub fn paired_bars(title: &str, pair_names: (&str, &str), groups: &[(String, f64, f64)]) -> anyhow::Result<String> {
    let height = (70 + 34 * groups.len() as u32).max(160);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, height)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let n = groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..1.0, 0.0..n)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("pass rate")
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(failed)?;
        // Group names left of their bars, placed in pixels (the mesh labels numbers only).
        let style = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, g) in groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(0.0, n - i as f64 - 0.5));
            let label: String = if g.0.chars().count() > 24 { g.0.chars().take(23).collect::<String>() + "…" } else { g.0.clone() };
            root.draw(&Text::new(label, (x - 6, y), style.clone())).map_err(failed)?;
        }
        for (which, name) in [pair_names.0, pair_names.1].into_iter().enumerate() {
            let colour = PALETTE[which];
            chart
                .draw_series(groups.iter().enumerate().map(|(i, g)| {
                    let top = n - i as f64 - 0.12 - 0.38 * which as f64;
                    let value = if which == 0 { g.1 } else { g.2 };
                    Rectangle::new([(0.0, top - 0.36), (value.clamp(0.0, 1.0), top)], colour.filled())
                }))
                .map_err(failed)?
                .label(name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plotters writes a text element's content on its own line.
    fn has_text(svg: &str, text: &str) -> bool {
        svg.contains(&format!(">\n{text}\n</text>")) || svg.contains(&format!(">{text}</text>"))
    }

    #[test]
    fn charts_are_svg_with_their_titles_and_data() {
        let s = lines(
            "reward",
            "reward",
            &[Series { name: "mean".into(), points: vec![(0.0, 0.2), (1.0, 0.5), (2.0, 0.4)], band: vec![(0.0, 0.1, 0.3), (1.0, 0.3, 0.7), (2.0, 0.2, 0.6)] }],
            true,
        )
        .unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"), "{}", &s[..100.min(s.len())]);
        assert!(has_text(&s, "reward") && s.contains("<polyline") && s.contains("<polygon"), "line, band and title: {s}");
        let st = stacked("verdicts", &[0.0, 1.0], &[("passed".into(), vec![0.5, 0.7]), ("wrong_answer".into(), vec![0.5, 0.3])]).unwrap();
        assert!(has_text(&st, "passed") && st.matches("<polygon").count() >= 2);
        let b = paired_bars("by source", ("first half", "second half"), &[("mbpp".into(), 0.25, 0.5)]).unwrap();
        std::fs::write(std::env::temp_dir().join("bars.svg"), &b).unwrap();
        assert!(has_text(&b, "mbpp") && has_text(&b, "second half") && b.contains("<rect"));
        // An empty run still draws (axes only) rather than failing.
        assert!(lines("empty", "x", &[], false).unwrap().contains("<svg"));
    }
}

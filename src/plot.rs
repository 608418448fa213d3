//! The sweep's plot (SVG, plotters): weight bytes against perplexity and against KL divergence,
//! two panels side by side, log-scaled quality axes.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One configuration on the plot.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    /// Weight bytes, in MiB.
    pub mib: f64,
    pub ppl: f64,
    pub kl: f64,
}

/// What the plot shows: lines for the uniform views and the plans, points for the baselines
/// and the base.
#[derive(Debug, Clone, Default)]
pub struct PlotData {
    pub title: String,
    pub uniform: Vec<Point>,
    /// The legend of `uniform`'s line.
    pub uniform_label: String,
    /// Other checkpoints' uniform views: a legend label and a line each.
    pub compare: Vec<(String, Vec<Point>)>,
    pub plans: Vec<Point>,
    pub baselines: Vec<Point>,
    pub base: Option<Point>,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Write the two-panel plot to `path` (SVG), drawn in memory, then written through a temporary
/// file renamed into place.
pub fn write_svg(path: &Path, d: &PlotData) -> Result<()> {
    let mut svg = String::new();
    draw(&mut svg, d).map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
    edge_pack::writable::write_atomic(path, svg.as_bytes())
}

fn draw(svg: &mut String, d: &PlotData) -> DrawResult {
    let root = SVGBackend::with_string(svg, (1400, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&d.title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(700);
    panel(&left, d, |p| p.ppl, "perplexity (log scale)", "Perplexity vs weight bytes")?;
    panel(&right, d, |p| p.kl, "KL(base || config), nats/token (log scale)", "KL divergence from the base vs weight bytes")?;
    root.present()?;
    Ok(())
}

/// A log-axis tick: `0.01`, `2.5`, `300`, `1e5`.
fn tick(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-3) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn panel(area: &Area<'_>, d: &PlotData, y: fn(&Point) -> f64, y_desc: &str, caption: &str) -> DrawResult {
    let all: Vec<&Point> = d
        .uniform
        .iter()
        .chain(d.compare.iter().flat_map(|(_, pts)| pts))
        .chain(&d.plans)
        .chain(&d.baselines)
        .chain(d.base.as_ref())
        .collect();
    // Log axes: only positive, finite values are drawn (the base's KL is 0 and is left out).
    let shown = |p: &Point| y(p).is_finite() && y(p) > 0.0 && p.mib.is_finite();
    let xs: Vec<f64> = all.iter().filter(|p| shown(p)).map(|p| p.mib).collect();
    let ys: Vec<f64> = all.iter().filter(|p| shown(p)).map(|p| y(p)).collect();
    if xs.is_empty() {
        return Ok(());
    }
    let (x0, x1) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let (y0, y1) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let pad = ((x1 - x0) * 0.08).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), (y0 / 1.5..y1 * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("weight bytes (MiB)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;

    let font = ("sans-serif", 12).into_font();
    let line = |pts: &[Point]| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = pts.iter().filter(|p| shown(p)).map(|p| (p.mib, y(p))).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    let green = RGBColor(44, 160, 44);

    if !d.uniform.is_empty() {
        chart
            .draw_series(LineSeries::new(line(&d.uniform), blue.stroke_width(2)))?
            .label(d.uniform_label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
        chart.draw_series(d.uniform.iter().filter(|p| shown(p)).map(|p| {
            EmptyElement::at((p.mib, y(p)))
                + Circle::new((0, 0), 4, blue.filled())
                + Text::new(p.label.clone(), (6, -14), font.clone())
        }))?;
    }
    // Compared checkpoints: a line each, in a colour of its own.
    const COMPARE: [RGBColor; 4] = [RGBColor(255, 127, 14), RGBColor(148, 103, 189), RGBColor(140, 86, 75), RGBColor(23, 190, 207)];
    for (k, (label, pts)) in d.compare.iter().enumerate() {
        let c = COMPARE[k % COMPARE.len()];
        chart
            .draw_series(LineSeries::new(line(pts), c.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().filter(|p| shown(p)).map(|p| {
            EmptyElement::at((p.mib, y(p))) + Circle::new((0, 0), 4, c.filled()) + Text::new(p.label.clone(), (6, 4), font.clone())
        }))?;
    }
    if !d.plans.is_empty() {
        chart
            .draw_series(LineSeries::new(line(&d.plans), red.stroke_width(2)))?
            .label("profile plans (avg bits/weight)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
        chart.draw_series(d.plans.iter().filter(|p| shown(p)).map(|p| {
            EmptyElement::at((p.mib, y(p)))
                + Rectangle::new([(-3, -3), (3, 3)], red.filled())
                + Text::new(p.label.clone(), (6, 4), font.clone())
        }))?;
    }
    if !d.baselines.is_empty() {
        chart
            .draw_series(d.baselines.iter().filter(|p| shown(p)).map(|p| {
                EmptyElement::at((p.mib, y(p)))
                    + TriangleMarker::new((0, 0), 6, green.filled())
                    + Text::new(p.label.clone(), (7, 2), font.clone())
            }))?
            .label("baselines")
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, green.filled()));
    }
    if let Some(b) = d.base.as_ref().filter(|p| shown(p)) {
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((b.mib, y(b)))
                    + Cross::new((0, 0), 6, BLACK.stroke_width(2))
                    + Text::new(b.label.clone(), (8, -14), font.clone()),
            ))?
            .label("base")
            .legend(|(x, y)| Cross::new((x + 10, y), 6, BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(10000000.0), "1e7");
        assert_eq!(tick(300.0), "300");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.01), "0.01");
        assert_eq!(tick(0.0001), "1e-4");
    }
}

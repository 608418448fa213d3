//! `bench --energy`'s plot (SVG, plotters): decode speed against joules per token, one point per
//! view and KV format, labelled with the view, the cache and the predicted KL.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One configuration on the plot.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    pub tokens_per_second: f64,
    pub joules_per_token: f64,
}

/// Write the plot to `path` (SVG), drawn in memory, then written through a temporary file
/// renamed into place.
pub fn write_svg(path: &Path, title: &str, points: &[Point]) -> Result<()> {
    let mut svg = String::new();
    draw(&mut svg, title, points).map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))?;
    edge_pack::writable::write_atomic(path, svg.as_bytes())
}

fn draw(svg: &mut String, title: &str, points: &[Point]) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (900, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let shown: Vec<&Point> = points.iter().filter(|p| p.tokens_per_second.is_finite() && p.joules_per_token.is_finite()).collect();
    let (x1, y1) = shown.iter().fold((1e-9f64, 1e-9f64), |(a, b), p| (a.max(p.tokens_per_second), b.max(p.joules_per_token)));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x1 * 1.15, 0f64..y1 * 1.15)?;
    chart.configure_mesh().x_desc("decode tokens/s").y_desc("joules per token").draw()?;
    let blue = RGBColor(31, 119, 180);
    let font = ("sans-serif", 12).into_font();
    chart.draw_series(shown.iter().map(|p| {
        EmptyElement::at((p.tokens_per_second, p.joules_per_token))
            + Circle::new((0, 0), 4, blue.filled())
            + Text::new(p.label.clone(), (6, -14), font.clone())
    }))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_label() {
        let dir = std::env::temp_dir().join(format!("edge-energy-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("energy.svg");
        let pts = vec![
            Point { label: "8-bit, f16".into(), tokens_per_second: 200.0, joules_per_token: 0.05 },
            Point { label: "4-bit, int8".into(), tokens_per_second: 400.0, joules_per_token: 0.02 },
        ];
        write_svg(&path, "energy", &pts).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("8-bit, f16") && svg.contains("4-bit, int8") && svg.contains("joules per token"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

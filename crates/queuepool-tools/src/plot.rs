//! `bench --plot FILE.svg`: throughput and p99 latency against concurrency, one line
//! per mode, both on log scales (pooled and unpooled differ by orders of magnitude).

use std::path::Path;

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;

use crate::error::ToolsError;

/// One line of a chart: `(concurrency, value)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points, in increasing concurrency.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn bounds(series: &[Series], pick: impl Fn(&(f64, f64)) -> f64) -> (f64, f64) {
    let values = series.iter().flat_map(|s| s.points.iter().map(&pick));
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (1.0, 10.0)
    } else {
        ((lo / 2.0).max(1e-3), (hi * 2.0).max(lo * 4.0).max(1e-2))
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), String> {
    let (x_lo, x_hi) = bounds(series, |p| p.0);
    let (y_lo, y_hi) = bounds(series, |p| p.1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x_lo.max(0.5)..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("concurrency")
        .y_desc(y_label)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if *v >= 1000.0 {
                format!("{:.0}k", v / 1000.0)
            } else if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes a two-panel SVG: throughput (queries/s) and p99 latency (ms) against
/// concurrency. Written to a temporary file in the same directory, then renamed.
pub fn write_svg(
    path: &Path,
    title: &str,
    throughput: &[Series],
    p99: &[Series],
) -> Result<(), ToolsError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 480)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| ToolsError::Plot(e.to_string()))?;
        let root = root
            .titled(title, ("sans-serif", 16))
            .map_err(|e| ToolsError::Plot(e.to_string()))?;
        let (left, right) = root.split_horizontally(550);
        draw_panel(&left, "throughput", "queries/s", throughput).map_err(ToolsError::Plot)?;
        draw_panel(&right, "p99 latency", "ms", p99).map_err(ToolsError::Plot)?;
        root.present()
            .map_err(|e| ToolsError::Plot(e.to_string()))?;
    }
    crate::write_atomic(path, svg.as_bytes())
}

//! Line plot drawing for [`crate::lines`]: each series is its points joined in x order, with a
//! small marker per point, one colour per series, and a legend.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{FONT, PALETTE, Series, axis_range, finite_bounds, style_mesh};

pub(crate) fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), String> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let points = || series.iter().flat_map(|s| s.points.iter().filter(finite));
    let (x0, x1) = axis_range(finite_bounds(points().map(|p| p.0)), 0.02);
    let (y0, y1) = axis_range(finite_bounds(points().map(|p| p.1)), 0.05);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    style_mesh(&mut chart, x_label, y_label, None)?;
    let mut any_label = false;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut pts: Vec<(f64, f64)> = s.points.iter().filter(finite).copied().collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 2, color.filled())))
            .map_err(|e| e.to_string())?;
        // The line is drawn last so the legend entry attaches to it.
        let anno = chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if !s.label.is_empty() {
            any_label = true;
            anno.label(s.label).legend(move |(x, y)| {
                PathElement::new([(x - 5, y), (x + 15, y)], color.stroke_width(3))
            });
        }
    }
    if any_label {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

//! Scatter plot drawing for [`crate::scatter`]: one marker colour per series, optional dashed
//! y = x reference line, legend.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{FONT, PALETTE, Series, axis_range, finite_bounds, style_mesh};

/// Marker radius in pixels: small enough that a few thousand pairs stay distinguishable.
const MARKER: i32 = 3;

pub(crate) fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    diagonal: bool,
) -> Result<(), String> {
    let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
    let points = || series.iter().flat_map(|s| s.points.iter().filter(finite));
    let x_bounds = finite_bounds(points().map(|p| p.0));
    let y_bounds = finite_bounds(points().map(|p| p.1));

    let ((x0, x1), (y0, y1)) = if diagonal {
        // One shared range so the diagonal is the true y = x line from corner to corner.
        let shared = match (x_bounds, y_bounds) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            _ => None,
        };
        let r = axis_range(shared, 0.05);
        (r, r)
    } else {
        (axis_range(x_bounds, 0.05), axis_range(y_bounds, 0.05))
    };

    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    style_mesh(&mut chart, x_label, y_label, None)?;

    // Drawn first so the markers sit on top of the reference line.
    if diagonal {
        let style = BLACK.mix(0.55).stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new([(x0, x0), (x1, x1)], 10, 6, style))
            .map_err(|e| e.to_string())?
            .label("y = x")
            .legend(move |(x, y)| PathElement::new([(x - 5, y), (x + 15, y)], style));
    }

    let mut any_label = diagonal;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let anno = chart
            .draw_series(
                s.points
                    .iter()
                    .filter(finite)
                    .map(|&(x, y)| Circle::new((x, y), MARKER, color.mix(0.6).filled())),
            )
            .map_err(|e| e.to_string())?;
        if !s.label.is_empty() {
            any_label = true;
            anno.label(s.label)
                .legend(move |(x, y)| Circle::new((x + 5, y), 5, color.filled()));
        }
    }

    if any_label {
        // Upper left: with chosen on x and rejected on y, correctly ranked pairs fill the
        // lower right, so this corner is usually the emptiest.
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

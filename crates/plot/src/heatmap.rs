//! Heatmap drawing for [`crate::heatmaps`]: a row of square panels, each a matrix drawn cell by
//! cell on a blue–white–red scale centred on the panel's own range, values printed in the cells,
//! and an optional marker on chosen cells (e.g. the correct response of each prompt).

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{FONT, Panel};

/// White at the middle of `[lo, hi]`, blue below, red above.
fn colour(v: f64, lo: f64, hi: f64) -> RGBColor {
    let t = if hi > lo {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.5
    };
    let mix = |a: u8, b: u8, w: f64| (a as f64 + (b as f64 - a as f64) * w).round() as u8;
    if t < 0.5 {
        let w = t / 0.5;
        RGBColor(mix(49, 255, w), mix(104, 255, w), mix(176, 255, w))
    } else {
        let w = (t - 0.5) / 0.5;
        RGBColor(mix(255, 198, w), mix(255, 40, w), mix(255, 48, w))
    }
}

pub(crate) fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    panels: &[Panel],
) -> Result<(), String> {
    let root = root.titled(title, (FONT, 24)).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, p) in areas.iter().zip(panels) {
        let rows = p.values.len();
        let cols = p.values.first().map_or(0, Vec::len);
        let finite = p.values.iter().flatten().copied().filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let mut chart = ChartBuilder::on(area)
            .caption(p.title, (FONT, 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(30)
            .build_cartesian_2d(0..cols as i32, 0..rows as i32)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(p.x_label)
            .y_desc(p.y_label)
            .x_labels(cols)
            .y_labels(rows)
            // Row 0 is drawn at the top, so the axis counts down; each label sits at the lower
            // edge of its cell (the x labels likewise at the left edge).
            .y_label_formatter(&|y| {
                if *y < rows as i32 {
                    format!("{}", rows as i32 - 1 - y)
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|x| {
                if *x < cols as i32 {
                    format!("{x}")
                } else {
                    String::new()
                }
            })
            .label_style((FONT, 11))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (r, row) in p.values.iter().enumerate() {
            // Row 0 at the top, as matrices are read.
            let y = (rows - 1 - r) as i32;
            for (c, &v) in row.iter().enumerate() {
                let x = c as i32;
                let fill = if v.is_finite() {
                    colour(v, lo, hi)
                } else {
                    RGBColor(200, 200, 200)
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x, y), (x + 1, y + 1)],
                        fill.filled(),
                    )))
                    .map_err(|e| e.to_string())?;
                if p.marked.get(r).copied().flatten() == Some(c) {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(x, y), (x + 1, y + 1)],
                            BLACK.stroke_width(2),
                        )))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
    }
    Ok(())
}

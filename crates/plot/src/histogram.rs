//! Overlaid histogram drawing for [`crate::histogram`]: shared bins, semi-transparent bars
//! plus an opaque step outline per sample (so overlapping samples stay readable), legend.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{FONT, Hist, PALETTE, YTicks, axis_range, finite_bounds, style_mesh};

/// Counts of the finite `values` in `bins` equal-width bins over `lo..=hi`.
///
/// The maximum lands in the last bin (closed upper edge) instead of one past the end; values
/// outside the range are clamped into the edge bins, which only happens when the range was
/// clamped to avoid overflow.
pub(crate) fn bin_counts(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<u64> {
    let mut counts = vec![0u64; bins];
    let width = (hi - lo) / bins as f64;
    for v in values.iter().copied().filter(|v| v.is_finite()) {
        // Float-to-int `as` saturates (negative → 0), so this cannot index out of bounds.
        let idx = (((v - lo) / width).floor() as usize).min(bins - 1);
        counts[idx] += 1;
    }
    counts
}

pub(crate) fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    hists: &[Hist],
    bins: usize,
) -> Result<(), String> {
    let bounds = finite_bounds(hists.iter().flat_map(|h| h.values.iter().copied()));
    // No margin: the bins span exactly min..max; this only pads a degenerate range.
    let (mut lo, mut hi) = axis_range(bounds, 0.0);
    // (No let-chain: the workspace MSRV is 1.85.)
    if let Some((v, _)) = bounds.filter(|(min, max)| min == max) {
        // All values equal: shift the padded range so they sit in the middle of a bin rather
        // than on a bin edge (which, with an even bin count, is where the centre falls).
        let width = (hi - lo) / bins as f64;
        lo = v - (bins / 2) as f64 * width - width / 2.0;
        hi = lo + bins as f64 * width;
    }
    let edge = |i: usize| {
        let t = i as f64 / bins as f64;
        lo * (1.0 - t) + hi * t
    };
    let counts: Vec<Vec<u64>> = hists
        .iter()
        .map(|h| bin_counts(h.values, lo, hi, bins))
        .collect();
    let max_count = counts.iter().flatten().copied().max().unwrap_or(0).max(1);

    let (x0, x1) = axis_range(Some((lo, hi)), 0.02);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(x0..x1, 0.0..max_count as f64 * 1.1)
        .map_err(|e| e.to_string())?;
    // Counts are integers: label only whole numbers, and ask for no more ticks than there
    // are distinct counts so small histograms do not get fractional (duplicate) labels.
    let format = |v: &f64| {
        if (v - v.round()).abs() < 1e-9 {
            format!("{v:.0}")
        } else {
            String::new()
        }
    };
    let ticks = YTicks {
        count: usize::try_from(max_count + 1).map_or(10, |n| n.min(10)),
        format: &format,
    };
    style_mesh(&mut chart, x_label, "count", Some(ticks))?;

    let mut any_label = false;
    for (i, (h, counts)) in hists.iter().zip(&counts).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let fill = color.mix(0.3).filled();
        chart
            .draw_series(
                counts
                    .iter()
                    .enumerate()
                    .filter(|&(_, &c)| c > 0)
                    .map(|(b, &c)| Rectangle::new([(edge(b), 0.0), (edge(b + 1), c as f64)], fill)),
            )
            .map_err(|e| e.to_string())?;
        // Step outline along the bar tops: keeps each sample's shape visible where the
        // translucent fills of several samples overlap. Trimmed to the occupied bins so a
        // narrow sample does not trail a baseline across the whole shared range.
        let occupied = counts
            .iter()
            .position(|&c| c > 0)
            .zip(counts.iter().rposition(|&c| c > 0));
        let mut step = Vec::new();
        if let Some((first, last)) = occupied {
            step.push((edge(first), 0.0));
            for (b, &c) in counts.iter().enumerate().take(last + 1).skip(first) {
                step.push((edge(b), c as f64));
                step.push((edge(b + 1), c as f64));
            }
            step.push((edge(last + 1), 0.0));
        }
        let anno = chart
            .draw_series(LineSeries::new(step, color.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if !h.label.is_empty() {
            any_label = true;
            anno.label(h.label).legend(move |(x, y)| {
                Rectangle::new([(x - 2, y - 6), (x + 16, y + 6)], color.mix(0.5).filled())
            });
        }
    }

    if any_label {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bin_counts;

    #[test]
    fn max_lands_in_last_bin_and_nan_is_skipped() {
        let counts = bin_counts(&[0.0, 0.5, 1.0, f64::NAN, f64::INFINITY], 0.0, 1.0, 2);
        assert_eq!(counts, vec![1, 2]);
    }

    #[test]
    fn out_of_range_values_clamp_into_edge_bins() {
        let counts = bin_counts(&[-5.0, 5.0], 0.0, 1.0, 4);
        assert_eq!(counts, vec![1, 0, 0, 1]);
    }
}

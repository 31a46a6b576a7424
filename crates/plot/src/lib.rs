//! PNG plots for rrlhf reports: reward-model evaluation and PPO runs.
//!
//! Works on plain `f64` data (no torch) and renders text with an embedded DejaVu Sans font
//! through plotters' `ab_glyph` backend, so plots come out legible on machines that have no
//! system fonts and no fontconfig (CI). Every plot is written atomically: drawn to a hidden
//! temporary file next to the target, then renamed over it, so a report never links to a
//! half-written image.
//!
//! Non-finite values (NaN, ±inf) are skipped rather than rejected, because evaluation data
//! from a diverged run should still produce a (sparser) plot instead of no report at all.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

mod heatmap;
mod histogram;
mod lines;
mod scatter;

/// Image size in pixels; large enough for ~10 tick labels per axis at readable font sizes.
const SIZE: (u32, u32) = (900, 650);

/// Family name the embedded font is registered under; plotters looks fonts up by this name.
const FONT: &str = "sans-serif";

/// Distinguishable colours (matplotlib's "tab10") for successive series.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Errors from rendering a plot; each names the output file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// A histogram needs at least one bin.
    #[error("{}: histogram needs at least one bin (got 0)", .path.display())]
    ZeroBins { path: PathBuf },
    /// The output path has no file name component (e.g. `/` or `..`).
    #[error("{}: output path has no file name", .path.display())]
    InvalidPath { path: PathBuf },
    /// The embedded font could not be parsed (should never happen with the bundled DejaVu).
    #[error("{}: could not load the embedded font", .path.display())]
    Font { path: PathBuf },
    /// plotters failed while drawing or encoding the image.
    #[error("{}: drawing failed: {message}", .path.display())]
    Draw { path: PathBuf, message: String },
    /// Moving the finished temporary file into place failed.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One labelled set of `(x, y)` points for [`scatter`].
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// Legend text; an empty label keeps the series out of the legend.
    pub label: &'a str,
    pub points: &'a [(f64, f64)],
}

/// Scatter of one or more series, with a dashed y = x diagonal when `diagonal` is true (used
/// for chosen-vs-rejected reward plots: points below the diagonal are pairs ranked correctly).
///
/// With `diagonal`, both axes share one range so the diagonal runs corner to corner and
/// distances above/below it are visually comparable. Points with a non-finite coordinate are
/// skipped. The output is always PNG, whatever the extension of `path`.
pub fn scatter(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    diagonal: bool,
) -> Result<(), PlotError> {
    render_atomic(path, |root| {
        scatter::draw(root, title, x_label, y_label, series, diagonal)
    })
}

/// Line plot of one or more series (e.g. a metric per training step), each joined in x order.
/// Points with a non-finite coordinate are skipped. The output is always PNG.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), PlotError> {
    render_atomic(path, |root| {
        lines::draw(root, title, x_label, y_label, series)
    })
}

/// One matrix panel of [`heatmaps`]; `values[row][col]`.
#[derive(Debug, Clone, Copy)]
pub struct Panel<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub values: &'a [Vec<f64>],
    /// Per row, a column to outline (e.g. the best response of each prompt).
    pub marked: &'a [Option<usize>],
}

/// Heatmaps side by side, one colour scale per panel (blue low, white middle, red high).
/// The output is always PNG.
pub fn heatmaps(path: &Path, title: &str, panels: &[Panel]) -> Result<(), PlotError> {
    let size = (320 * panels.len().max(1) as u32, 380);
    render_sized(path, size, |root| heatmap::draw(root, title, panels))
}

/// One labelled sample for [`histogram`].
#[derive(Debug, Clone, Copy)]
pub struct Hist<'a> {
    /// Legend text; an empty label keeps the histogram out of the legend.
    pub label: &'a str,
    pub values: &'a [f64],
}

/// Overlaid histograms (semi-transparent bars with step outlines) over common bins, with a
/// legend; `bins` bins spanning the min..max of all finite values.
///
/// Non-finite values are skipped. If all values are equal the range is padded so there is
/// still a visible bin. The output is always PNG, whatever the extension of `path`.
pub fn histogram(
    path: &Path,
    title: &str,
    x_label: &str,
    hists: &[Hist],
    bins: usize,
) -> Result<(), PlotError> {
    // Checked before touching the filesystem so a bad call leaves nothing behind.
    if bins == 0 {
        return Err(PlotError::ZeroBins {
            path: path.to_path_buf(),
        });
    }
    render_atomic(path, |root| {
        histogram::draw(root, title, x_label, hists, bins)
    })
}

/// Registers the embedded font with plotters exactly once per process.
///
/// plotters' `ab_glyph` backend has no fonts of its own: any text drawn before registration
/// fails with `FontUnavailable`. The outcome is cached so a (theoretical) parse failure is
/// reported on every call instead of only the first.
fn ensure_font() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let regular =
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .is_ok();
        // Bold is optional: plotters falls back to Normal for unregistered styles.
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
        regular
    })
}

/// Hidden temporary path next to `path`, ending in `.png` because the bitmap backend picks
/// the encoder from the extension. Same directory so the final rename is atomic; PID plus a
/// per-process counter so concurrent writers (processes or threads) never share a temp file.
fn temp_path(path: &Path) -> Result<PathBuf, PlotError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| PlotError::InvalidPath {
        path: path.to_path_buf(),
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(
        ".{}.tmp-{}-{n}.png",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(path.with_file_name(tmp_name))
}

/// Draws via `draw` onto a white canvas saved to a temp file, then renames it over `path`.
fn render_atomic(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    render_sized(path, SIZE, draw)
}

/// [`render_atomic`] on a canvas of `size` pixels.
fn render_sized(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    if !ensure_font() {
        return Err(PlotError::Font {
            path: path.to_path_buf(),
        });
    }
    let tmp = temp_path(path)?;
    let drawn = {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(|e| e.to_string()))
        // `root` drops here; on error its Drop still saves a partial image, removed below.
    };
    if let Err(message) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(PlotError::Draw {
            path: path.to_path_buf(),
            message,
        });
    }
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        PlotError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Finite min and max of `values`, or `None` when there are no finite values.
fn finite_bounds(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Axis range for finite bounds: never empty, never zero-width, never overflowing.
///
/// A zero-width range would make plotters divide by zero when mapping coordinates, so equal
/// bounds are widened by 5% of their magnitude (at least 0.5). `margin` adds that fraction
/// of the span on both sides so markers are not clipped by the plot frame.
fn axis_range(bounds: Option<(f64, f64)>, margin: f64) -> (f64, f64) {
    let Some((lo, hi)) = bounds else {
        return (0.0, 1.0);
    };
    let (lo, hi) = if hi - lo <= 0.0 {
        let pad = (lo.abs() * 0.05).max(0.5);
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    };
    // Halving before subtracting keeps the span of extreme values (±f64::MAX) finite.
    let pad = (hi / 2.0 - lo / 2.0) * 2.0 * margin;
    let (lo, hi) = (lo - pad, hi + pad);
    // Clamped so `hi - lo` is finite: plotters and the histogram binning divide by it.
    // Points beyond the clamp are merely clipped (or binned into the edge bins).
    (lo.max(-f64::MAX / 2.0), hi.min(f64::MAX / 2.0))
}

/// Plot area with f64 coordinates on both axes, as every plot here uses.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// How the y axis is ticked: at most `count` labels, each formatted by `format`.
struct YTicks<'f> {
    count: usize,
    format: &'f dyn Fn(&f64) -> String,
}

/// Common mesh styling: light grid, axis descriptions and tick labels in the embedded font.
/// `y_ticks` overrides plotters' default y labelling (histograms want integer counts).
fn style_mesh<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    x_label: &str,
    y_label: &str,
    y_ticks: Option<YTicks<'_>>,
) -> Result<(), String> {
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .x_labels(10)
        .y_labels(10)
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 14))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04));
    if let Some(ticks) = y_ticks {
        mesh.y_labels(ticks.count).y_label_formatter(ticks.format);
    }
    mesh.draw().map_err(|e| e.to_string())
}

//! Renders a sample scatter and histogram for eyeballing text and layout:
//! `cargo run -p rrlhf-plot --example sample [OUT_DIR]` writes `plot-sample.png` and
//! `hist-sample.png` into OUT_DIR (default: the system temp dir).

use std::path::PathBuf;

use rrlhf_plot::{Hist, Series, histogram, scatter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(std::env::temp_dir, PathBuf::from);
    // Deterministic wobbly data (no RNG dependency): chosen rewards mostly above rejected.
    let pairs: Vec<(f64, f64)> = (0..300)
        .map(|i| {
            let t = f64::from(i);
            let chosen = (t * 0.37).sin() * 1.5 + (t * 0.011).cos() + 0.6;
            let rejected = (t * 0.23).cos() * 1.2 + (t * 0.017).sin() * 0.8 - 0.4;
            (chosen, rejected)
        })
        .collect();
    let held_out: Vec<(f64, f64)> = pairs
        .iter()
        .step_by(7)
        .map(|&(c, r)| (r + 0.3, c - 0.2))
        .collect();
    let series = [
        Series {
            label: "train pairs",
            points: &pairs,
        },
        Series {
            label: "held-out pairs",
            points: &held_out,
        },
    ];
    let scatter_path = out.join("plot-sample.png");
    scatter(
        &scatter_path,
        "Chosen vs rejected reward (acc 78.3%)",
        "reward(chosen)",
        "reward(rejected)",
        &series,
        true,
    )?;

    let chosen: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let rejected: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let margin: Vec<f64> = pairs.iter().map(|p| p.0 - p.1).collect();
    let hist_path = out.join("hist-sample.png");
    histogram(
        &hist_path,
        "Reward distributions — μ/σ report",
        "reward",
        &[
            Hist {
                label: "chosen",
                values: &chosen,
            },
            Hist {
                label: "rejected",
                values: &rejected,
            },
            Hist {
                label: "margin (chosen − rejected)",
                values: &margin,
            },
        ],
        30,
    )?;
    println!("{}\n{}", scatter_path.display(), hist_path.display());
    Ok(())
}

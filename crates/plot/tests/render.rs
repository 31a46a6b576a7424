//! End-to-end rendering tests: real PNG files in a tempdir, plus edge cases and error paths
//! (empty data, degenerate ranges, non-finite values, zero bins, atomic-write leftovers).

use std::path::Path;

use rrlhf_plot::{Hist, PlotError, Series, histogram, scatter};

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Asserts `path` is a PNG of plausible size: a blank 900x650 canvas compresses to a few KB,
/// so text, grid and markers push a real plot well past this.
fn assert_png(path: &Path, min_bytes: usize) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(PNG_MAGIC),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() > min_bytes,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
}

/// No `.name.tmp-*` files may survive a write, successful or not.
fn assert_no_temp_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(!name.contains(".tmp-"), "leftover temp file {name}");
    }
}

/// Deterministic pseudo-random rewards without pulling in a RNG crate.
fn rewards(n: usize, seed: u64, shift: f64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            // Sum of uniforms ≈ normal; good enough for a bell-shaped test histogram.
            (0..6)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 11) as f64 / (1u64 << 53) as f64
                })
                .sum::<f64>()
                - 3.0
                + shift
        })
        .collect()
}

#[test]
fn scatter_writes_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scatter.png");
    let chosen = rewards(200, 1, 0.8);
    let rejected = rewards(200, 2, 0.0);
    let pairs: Vec<(f64, f64)> = chosen
        .iter()
        .copied()
        .zip(rejected.iter().copied())
        .collect();
    let series = [Series {
        label: "eval pairs",
        points: &pairs,
    }];
    scatter(
        &path,
        "Chosen vs rejected",
        "chosen reward",
        "rejected reward",
        &series,
        true,
    )
    .unwrap();
    assert_png(&path, 10_000);
    assert_no_temp_files(dir.path());
}

#[test]
fn histogram_writes_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hist.png");
    let a = rewards(500, 3, 0.8);
    let b = rewards(500, 4, 0.0);
    let hists = [
        Hist {
            label: "chosen",
            values: &a,
        },
        Hist {
            label: "rejected",
            values: &b,
        },
    ];
    histogram(&path, "Reward distribution", "reward", &hists, 30).unwrap();
    assert_png(&path, 10_000);
    assert_no_temp_files(dir.path());
}

#[test]
fn overwrites_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    std::fs::write(&path, b"stale").unwrap();
    histogram(
        &path,
        "t",
        "x",
        &[Hist {
            label: "a",
            values: &[1.0, 2.0],
        }],
        4,
    )
    .unwrap();
    assert_png(&path, 1_000);
}

#[test]
fn edge_cases_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let nonfinite = [
        (f64::NAN, 1.0),
        (1.0, f64::INFINITY),
        (f64::NEG_INFINITY, f64::NAN),
    ];
    let extreme = [(f64::MAX, -f64::MAX), (-f64::MAX, f64::MAX), (0.0, 0.0)];

    scatter(&p("s_none.png"), "none", "x", "y", &[], true).unwrap();
    scatter(
        &p("s_empty.png"),
        "empty",
        "x",
        "y",
        &[Series {
            label: "e",
            points: &[],
        }],
        false,
    )
    .unwrap();
    scatter(
        &p("s_one.png"),
        "one",
        "x",
        "y",
        &[Series {
            label: "",
            points: &[(2.0, 2.0)],
        }],
        true,
    )
    .unwrap();
    scatter(
        &p("s_nan.png"),
        "nan",
        "x",
        "y",
        &[Series {
            label: "n",
            points: &nonfinite,
        }],
        true,
    )
    .unwrap();
    scatter(
        &p("s_ext.png"),
        "ext",
        "x",
        "y",
        &[Series {
            label: "x",
            points: &extreme,
        }],
        false,
    )
    .unwrap();

    histogram(&p("h_none.png"), "none", "x", &[], 10).unwrap();
    histogram(
        &p("h_empty.png"),
        "empty",
        "x",
        &[Hist {
            label: "e",
            values: &[],
        }],
        10,
    )
    .unwrap();
    histogram(
        &p("h_equal.png"),
        "equal",
        "x",
        &[Hist {
            label: "c",
            values: &[3.0; 50],
        }],
        10,
    )
    .unwrap();
    let mixed = [f64::NAN, f64::INFINITY, 1.0, 2.0, f64::NEG_INFINITY];
    histogram(
        &p("h_nan.png"),
        "nan",
        "x",
        &[Hist {
            label: "m",
            values: &mixed,
        }],
        1,
    )
    .unwrap();
    let ext = [f64::MAX, -f64::MAX, 0.0];
    histogram(
        &p("h_ext.png"),
        "ext",
        "x",
        &[Hist {
            label: "x",
            values: &ext,
        }],
        7,
    )
    .unwrap();

    for entry in std::fs::read_dir(dir.path()).unwrap() {
        assert_png(&entry.unwrap().path(), 1_000);
    }
}

#[test]
fn zero_bins_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero.png");
    let err = histogram(
        &path,
        "t",
        "x",
        &[Hist {
            label: "a",
            values: &[1.0],
        }],
        0,
    )
    .unwrap_err();
    assert!(matches!(err, PlotError::ZeroBins { .. }), "{err:?}");
    assert!(err.to_string().contains("zero.png"), "{err}");
    assert!(!path.exists());
    assert_no_temp_files(dir.path());
}

#[test]
fn missing_directory_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/plot.png");
    let err = scatter(&path, "t", "x", "y", &[], false).unwrap_err();
    assert!(matches!(err, PlotError::Draw { .. }), "{err:?}");
    assert!(err.to_string().contains("plot.png"), "{err}");
    assert_no_temp_files(dir.path());
}

#[test]
fn path_without_file_name_is_an_error() {
    let err = scatter(Path::new("/"), "t", "x", "y", &[], false).unwrap_err();
    assert!(matches!(err, PlotError::InvalidPath { .. }), "{err:?}");
}

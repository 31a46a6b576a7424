//! From per-step curves of every (condition, seed) run to the paper's tables, with seed spread
//! and paired tests: Table 3 (gold improvement at an early and a late step per λ), Table 4 (min
//! vs max), Fig. 4b (constant vs random vs random_min), and plots of gold and proxy over steps.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use rrlhf_plot::{Series, lines};
use rrlhf_robust::stats::{mean_se, sign_test};
use serde::{Deserialize, Serialize};

/// One step of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub step: usize,
    /// Mean gold reward of the step's rollouts (before that step's update).
    pub gold: f32,
    /// Mean nominal proxy reward (the BRME's most confident head).
    pub proxy: f32,
    /// Mean reward PPO was trained on (the condition's aggregation).
    pub aggregated: f32,
    pub kl: f32,
    pub length: f32,
    /// Std over heads of the proxy's rewards, averaged over the step's samples.
    #[serde(default)]
    pub disagreement: f32,
    /// Wall time of the step and of its scoring tail (scoring after the last rollout).
    #[serde(default)]
    pub step_secs: f64,
    #[serde(default)]
    pub score_tail_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub condition: String,
    pub seed: u64,
    pub points: Vec<Point>,
}

impl Curve {
    pub(crate) fn at(&self, step: usize) -> Option<&Point> {
        self.points.iter().find(|p| p.step == step)
    }

    /// Gold at `step` minus gold at the first step.
    fn gold_gain(&self, step: usize) -> Option<f64> {
        Some((self.at(step)?.gold - self.points.first()?.gold) as f64)
    }
}

/// A condition's value at one step across seeds, and its paired difference to a baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub mean: f64,
    pub se: f64,
    pub seeds: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    pub against: String,
    /// Mean of (this − baseline) over seeds, with its standard error.
    pub diff_mean: f64,
    pub diff_se: f64,
    pub wins: usize,
    pub losses: usize,
    pub sign_test_p: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub condition: String,
    pub early: Cell,
    pub late: Cell,
    pub late_kl: Cell,
    pub late_proxy_gain: Cell,
    pub paired_late: Option<Paired>,
}

/// A head-to-head comparison of two conditions at the late step, seed by seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    pub condition: String,
    pub gold: Paired,
    /// Late KL of `condition` minus that of the other (negative: closer to the SFT policy).
    pub kl_diff_mean: f64,
    pub kl_diff_se: f64,
}

/// The pairs the paper's claims are about: under- vs over-scoring, pessimism vs plain
/// ensembling, and the robust objective in the stochastic case.
pub const CONTRASTS: [(&str, &str); 5] = [
    ("min", "max"),
    ("tradeoff:0.4", "mean"),
    ("tradeoff:0.6", "mean"),
    ("random_min", "random"),
    ("constant", "random"),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    pub early_step: usize,
    pub late_step: usize,
    pub contrasts: Vec<Contrast>,
    /// Step at which standard RLHF's mean gold peaked, and the gold lost from there to the end.
    pub standard_peak_step: Option<usize>,
    pub standard_drop_after_peak: Option<f64>,
    pub rows: Vec<Row>,
}

pub(crate) fn by_condition(curves: &[Curve]) -> BTreeMap<&str, Vec<&Curve>> {
    let mut m: BTreeMap<&str, Vec<&Curve>> = BTreeMap::new();
    for c in curves {
        m.entry(c.condition.as_str()).or_default().push(c);
    }
    m
}

/// The runs of condition `name` by seed (empty when there are none).
pub(crate) fn seeds_of<'a>(
    groups: &BTreeMap<&str, Vec<&'a Curve>>,
    name: &str,
) -> BTreeMap<u64, &'a Curve> {
    groups
        .get(name)
        .map(|v| v.iter().map(|c| (c.seed, *c)).collect())
        .unwrap_or_default()
}

pub(crate) fn cell(values: Vec<f64>) -> Cell {
    let (mean, se) = mean_se(&values);
    Cell {
        mean,
        se,
        seeds: values.len(),
    }
}

/// Mean over seeds of a quantity per step, for the conditions' curves.
pub(crate) fn mean_curve(runs: &[&Curve], f: fn(&Point) -> f32) -> Vec<(f64, f64)> {
    mean_xy(runs, &|p| p.step as f64, &|p| f(p) as f64)
}

/// Per step of the first run: the mean over runs of `x` and of `y` at that step.
pub(crate) fn mean_xy(
    runs: &[&Curve],
    x: &dyn Fn(&Point) -> f64,
    y: &dyn Fn(&Point) -> f64,
) -> Vec<(f64, f64)> {
    let steps: Vec<usize> = runs
        .first()
        .map_or(vec![], |r| r.points.iter().map(|p| p.step).collect());
    steps
        .into_iter()
        .map(|s| {
            let at: Vec<&Point> = runs.iter().filter_map(|r| r.at(s)).collect();
            let n = at.len().max(1) as f64;
            let mean = |f: &dyn Fn(&Point) -> f64| at.iter().map(|p| f(p)).sum::<f64>() / n;
            (mean(x), mean(y))
        })
        .collect()
}

/// One line per (label, points) in a PNG at `path`.
pub(crate) fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    data: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let series: Vec<Series> = data
        .iter()
        .map(|(n, p)| Series {
            label: n,
            points: p,
        })
        .collect();
    Ok(lines(path, title, x_label, y_label, &series)?)
}

/// Seed-by-seed difference of `measure` between `runs` and `against`.
pub(crate) fn paired(
    runs: &[&Curve],
    against: &BTreeMap<u64, &Curve>,
    against_name: &str,
    measure: &dyn Fn(&Curve) -> Option<f64>,
) -> Paired {
    let diffs: Vec<f64> = runs
        .iter()
        .filter_map(|c| Some(measure(c)? - measure(against.get(&c.seed)?)?))
        .collect();
    let (diff_mean, diff_se) = mean_se(&diffs);
    let wins = diffs.iter().filter(|d| **d > 0.0).count();
    let losses = diffs.iter().filter(|d| **d < 0.0).count();
    Paired {
        against: against_name.to_owned(),
        diff_mean,
        diff_se,
        wins,
        losses,
        sign_test_p: sign_test(wins, losses),
    }
}

/// Condition `a` against `b` seed by seed at `step`: gold gain and KL differences; `None`
/// when either has no runs.
pub fn contrast(curves: &[Curve], a: &str, b: &str, step: usize) -> Option<Contrast> {
    let groups = by_condition(curves);
    let runs = groups.get(a)?;
    let other: BTreeMap<u64, &Curve> = groups.get(b)?.iter().map(|c| (c.seed, *c)).collect();
    let kl = paired(runs, &other, b, &|c| Some(c.at(step)?.kl as f64));
    Some(Contrast {
        condition: a.to_owned(),
        gold: paired(runs, &other, b, &|c| c.gold_gain(step)),
        kl_diff_mean: kl.diff_mean,
        kl_diff_se: kl.diff_se,
    })
}

/// Builds every row; `baseline` (standard RLHF) is what the paired columns compare with.
pub fn build(curves: &[Curve], early_step: usize, late_step: usize, baseline: &str) -> Tables {
    let groups = by_condition(curves);
    let base = seeds_of(&groups, baseline);
    let rows = groups
        .iter()
        .map(|(name, runs)| {
            let gains = |s: usize| cell(runs.iter().filter_map(|c| c.gold_gain(s)).collect());
            let paired_late = (*name != baseline && !base.is_empty())
                .then(|| paired(runs, &base, baseline, &|c| c.gold_gain(late_step)));
            Row {
                condition: (*name).to_owned(),
                early: gains(early_step),
                late: gains(late_step),
                late_kl: cell(
                    runs.iter()
                        .filter_map(|c| c.at(late_step))
                        .map(|p| p.kl as f64)
                        .collect(),
                ),
                late_proxy_gain: cell(
                    runs.iter()
                        .filter_map(|c| {
                            Some((c.at(late_step)?.proxy - c.points.first()?.proxy) as f64)
                        })
                        .collect(),
                ),
                paired_late,
            }
        })
        .collect();
    let (peak_step, drop) = match groups.get(baseline) {
        Some(runs) => {
            let g = mean_curve(runs, |p| p.gold);
            let peak = g.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
            let last = g.last().copied();
            match (peak, last) {
                (Some(p), Some(l)) => (Some(p.0 as usize), Some(p.1 - l.1)),
                _ => (None, None),
            }
        }
        None => (None, None),
    };
    let contrasts = CONTRASTS
        .iter()
        .filter_map(|(a, b)| contrast(curves, a, b, late_step))
        .collect();
    Tables {
        early_step,
        late_step,
        contrasts,
        standard_peak_step: peak_step,
        standard_drop_after_peak: drop,
        rows,
    }
}

fn fmt_cell(c: &Cell) -> String {
    format!("{:+.3} ± {:.3}", c.mean, c.se)
}

/// A paired comparison as a table cell: mean difference ± s.e. (wins:losses, sign test p).
pub(crate) fn fmt_paired(p: Option<&Paired>) -> String {
    p.map_or("—".to_owned(), |p| {
        format!(
            "{:+.3} ± {:.3} ({}:{}, p = {:.3})",
            p.diff_mean, p.diff_se, p.wins, p.losses, p.sign_test_p
        )
    })
}

/// The Markdown tables: the λ sweep (Table 3), min vs max (Table 4), the stochastic case (4b).
pub fn markdown(t: &Tables) -> String {
    let mut md = String::new();
    let row_line = |md: &mut String, r: &Row| {
        let paired = fmt_paired(r.paired_late.as_ref());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2} | {} | {} |",
            r.condition,
            fmt_cell(&r.early),
            fmt_cell(&r.late),
            fmt_cell(&r.late_proxy_gain),
            r.late_kl.mean,
            r.late.seeds,
            paired
        );
    };
    let header = format!(
        "| condition | gold gain @ step {} | gold gain @ step {} | proxy gain @ step {} | KL @ {} | seeds | late gold vs standard (paired) |\n|---|---|---|---|---|---|---|",
        t.early_step, t.late_step, t.late_step, t.late_step
    );
    let section = |md: &mut String, title: &str, pick: &dyn Fn(&str) -> bool| {
        let _ = writeln!(md, "\n### {title}\n\n{header}");
        for r in t.rows.iter().filter(|r| pick(&r.condition)) {
            row_line(md, r);
        }
    };
    // Conditions may name their proxy (`diverse/tradeoff:0.4`): sections go by the strategy.
    let strategy = |c: &str| c.rsplit('/').next().unwrap_or(c).to_owned();
    section(&mut md, "Table 3 shape: the λ sweep", &|c| {
        let s = strategy(c);
        s.starts_with("tradeoff") || s == "nominal"
    });
    section(
        &mut md,
        "Table 4 shape: under- vs over-scoring, and ensemble baselines",
        &|c| {
            ["min", "max", "mean", "nominal"].contains(&strategy(c).as_str())
                || strategy(c).starts_with("uwo")
        },
    );
    section(&mut md, "Fig. 4b shape: the stochastic case", &|c| {
        ["constant", "random", "random_min"].contains(&strategy(c).as_str())
    });
    if !t.contrasts.is_empty() {
        let _ = writeln!(
            md,
            "\n### Head to head at step {}\n\n| condition | against | gold gain difference | wins : losses | sign test p | KL difference |\n|---|---|---|---|---|---|",
            t.late_step
        );
        for c in &t.contrasts {
            let g = &c.gold;
            let _ = writeln!(
                md,
                "| {} | {} | {:+.3} ± {:.3} | {}:{} | {:.3} | {:+.2} ± {:.2} |",
                c.condition,
                g.against,
                g.diff_mean,
                g.diff_se,
                g.wins,
                g.losses,
                g.sign_test_p,
                c.kl_diff_mean,
                c.kl_diff_se
            );
        }
    }
    if let (Some(p), Some(d)) = (t.standard_peak_step, t.standard_drop_after_peak) {
        let _ = writeln!(
            md,
            "\nStandard RLHF (nominal): mean gold peaks at step {p} and loses {d:.3} from there to step {}.",
            t.late_step
        );
    }
    md
}

/// Plots of mean gold, proxy and KL per step, one line per condition.
pub fn plots(dir: &Path, curves: &[Curve]) -> anyhow::Result<()> {
    let groups = by_condition(curves);
    for (file, title, y, f) in [
        (
            "gold.png",
            "Gold reward per step (mean over seeds)",
            "gold reward",
            (|p: &Point| p.gold) as fn(&Point) -> f32,
        ),
        (
            "proxy.png",
            "Proxy (nominal BRME) reward per step",
            "proxy reward",
            |p: &Point| p.proxy,
        ),
        (
            "kl.png",
            "KL to the SFT policy per step",
            "nats per sequence",
            |p: &Point| p.kl,
        ),
    ] {
        let data: Vec<(String, Vec<(f64, f64)>)> = groups
            .iter()
            .map(|(n, runs)| ((*n).to_owned(), mean_curve(runs, f)))
            .collect();
        draw(&dir.join(file), title, "step", y, &data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(condition: &str, seed: u64, gold: &[f32]) -> Curve {
        Curve {
            condition: condition.into(),
            seed,
            points: gold
                .iter()
                .enumerate()
                .map(|(i, &g)| Point {
                    step: i + 1,
                    gold: g,
                    proxy: i as f32,
                    aggregated: 0.0,
                    kl: i as f32,
                    length: 5.0,
                    ..Point::default()
                })
                .collect(),
        }
    }

    #[test]
    fn gains_pairing_and_the_peak() {
        let curves = vec![
            curve("nominal", 0, &[0.0, 1.0, 0.5]),
            curve("nominal", 1, &[0.0, 1.2, 0.3]),
            curve("tradeoff:0.4", 0, &[0.0, 0.8, 0.9]),
            curve("tradeoff:0.4", 1, &[0.0, 0.9, 0.7]),
        ];
        let t = build(&curves, 2, 3, "nominal");
        let nominal = t.rows.iter().find(|r| r.condition == "nominal").unwrap();
        assert!((nominal.late.mean - 0.4).abs() < 1e-6);
        assert!(nominal.paired_late.is_none());
        let robust = t
            .rows
            .iter()
            .find(|r| r.condition == "tradeoff:0.4")
            .unwrap();
        let p = robust.paired_late.as_ref().unwrap();
        assert_eq!((p.wins, p.losses), (2, 0));
        assert!((p.diff_mean - 0.4).abs() < 1e-6);
        assert_eq!(t.standard_peak_step, Some(2));
        assert!((t.standard_drop_after_peak.unwrap() - 0.7).abs() < 1e-6);
        let md = markdown(&t);
        assert!(md.contains("Table 3 shape") && md.contains("tradeoff:0.4"));
        // No `mean` runs here, so no contrast of tradeoff:0.4 against it.
        assert!(t.contrasts.is_empty());

        let mut more = curves.clone();
        more.push(curve("min", 0, &[0.0, 0.5, 0.6]));
        more.push(curve("max", 0, &[0.0, 0.9, -0.2]));
        let t = build(&more, 2, 3, "nominal");
        assert_eq!(t.contrasts.len(), 1);
        let c = &t.contrasts[0];
        assert_eq!(
            (c.condition.as_str(), c.gold.against.as_str()),
            ("min", "max")
        );
        assert!((c.gold.diff_mean - 0.8).abs() < 1e-6 && c.gold.wins == 1);
        assert!(markdown(&t).contains("Head to head"));
    }
}

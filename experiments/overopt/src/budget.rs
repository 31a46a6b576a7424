//! Comparisons at a shared KL budget, so that "less over-optimisation" is not just "moved less
//! from the SFT policy": for each seed the budget is the smallest KL that every compared run
//! reaches, and each run's gold gain is read where its own KL first reaches that budget
//! (linear interpolation between steps, on gold smoothed over 3 steps since one step's batch is
//! small). Also the over-optimisation plot of Gao et al. (2023): gold and proxy against √KL.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::tables::{
    Cell, Curve, Paired, Point, by_condition, cell, draw, mean_xy, paired, seeds_of,
};

/// Gold gain (over the run's first step) where the run's KL first reaches `budget`.
pub fn gold_at_kl(curve: &Curve, budget: f64) -> Option<f64> {
    let p = &curve.points;
    let first = smoothed_gold(p, 0)?;
    for i in 0..p.len() {
        let kl = p[i].kl as f64;
        if kl >= budget {
            if i == 0 {
                return Some(0.0);
            }
            let (k0, g0) = (p[i - 1].kl as f64, smoothed_gold(p, i - 1)?);
            let g1 = smoothed_gold(p, i)?;
            let t = if kl > k0 {
                (budget - k0) / (kl - k0)
            } else {
                1.0
            };
            return Some(g0 + t.clamp(0.0, 1.0) * (g1 - g0) - first);
        }
    }
    None
}

/// Mean gold over steps i−1..=i+1 (what exists of them).
fn smoothed_gold(p: &[crate::tables::Point], i: usize) -> Option<f64> {
    let lo = i.saturating_sub(1);
    let hi = (i + 1).min(p.len().checked_sub(1)?);
    let v: Vec<f64> = p[lo..=hi].iter().map(|x| x.gold as f64).collect();
    Some(v.iter().sum::<f64>() / v.len() as f64)
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetRow {
    pub condition: String,
    pub gold_at_budget: Cell,
    pub paired: Option<Paired>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    /// Per seed: the KL budget (nats per sequence).
    pub per_seed: BTreeMap<u64, f64>,
    pub baseline: String,
    pub rows: Vec<BudgetRow>,
}

/// Gold at each seed's shared KL budget for every condition, paired against `baseline`.
pub fn matched(curves: &[Curve], baseline: &str) -> Budget {
    let mut per_seed: BTreeMap<u64, f64> = BTreeMap::new();
    for c in curves {
        let reached = c.points.iter().map(|p| p.kl as f64).fold(0.0, f64::max);
        let slot = per_seed.entry(c.seed).or_insert(f64::INFINITY);
        *slot = slot.min(reached);
    }
    let budgets = per_seed.clone();
    let at_budget = move |c: &Curve| gold_at_kl(c, *budgets.get(&c.seed)?);
    let groups = by_condition(curves);
    let base = seeds_of(&groups, baseline);
    let rows = groups
        .iter()
        .map(|(name, runs)| {
            let values: Vec<f64> = runs.iter().filter_map(|c| at_budget(c)).collect();
            let paired = (*name != baseline && !base.is_empty())
                .then(|| paired(runs, &base, baseline, &at_budget));
            BudgetRow {
                condition: (*name).to_owned(),
                gold_at_budget: cell(values),
                paired,
            }
        })
        .collect();
    Budget {
        per_seed,
        baseline: baseline.to_owned(),
        rows,
    }
}

/// The matched-KL table in Markdown.
pub fn markdown(b: &Budget) -> String {
    let mut md = String::new();
    let budgets: Vec<f64> = b.per_seed.values().copied().collect();
    let (lo, hi) = budgets
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
    let _ = writeln!(
        md,
        "\n### Gold at a shared KL budget (per seed: the smallest final KL of its runs, {lo:.2}–{hi:.2} nats)\n\n| condition | gold gain at the budget | vs {} (paired) |\n|---|---|---|",
        b.baseline
    );
    for r in &b.rows {
        let paired = crate::tables::fmt_paired(r.paired.as_ref());
        let _ = writeln!(
            md,
            "| {} | {:+.3} ± {:.3} ({} seeds) | {} |",
            r.condition, r.gold_at_budget.mean, r.gold_at_budget.se, r.gold_at_budget.seeds, paired
        );
    }
    md
}

/// Gold and proxy against √KL (mean over seeds at each step), one line per condition.
pub fn sqrt_kl_plots(dir: &Path, curves: &[Curve]) -> anyhow::Result<()> {
    let groups = by_condition(curves);
    for (file, title, y, proxy) in [
        (
            "gold-sqrt-kl.png",
            "Gold reward against √KL",
            "gold reward",
            false,
        ),
        (
            "proxy-sqrt-kl.png",
            "Proxy (nominal) reward against √KL",
            "proxy reward",
            true,
        ),
    ] {
        let sqrt_kl = |p: &Point| (p.kl.max(0.0) as f64).sqrt();
        let reward = move |p: &Point| if proxy { p.proxy } else { p.gold } as f64;
        let data: Vec<(String, Vec<(f64, f64)>)> = groups
            .iter()
            .map(|(name, runs)| ((*name).to_owned(), mean_xy(runs, &sqrt_kl, &reward)))
            .collect();
        draw(
            &dir.join(file),
            title,
            "√KL (nats^½ per sequence)",
            y,
            &data,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(name: &str, seed: u64, gold: &[f32], kl: &[f32]) -> Curve {
        Curve {
            condition: name.into(),
            seed,
            points: gold
                .iter()
                .zip(kl)
                .enumerate()
                .map(|(i, (&g, &k))| Point {
                    step: i + 1,
                    gold: g,
                    kl: k,
                    ..Point::default()
                })
                .collect(),
        }
    }

    #[test]
    fn gold_is_read_where_each_run_reaches_the_shared_budget() {
        // Flat gold: interpolation returns the level, minus the start.
        let flat = curve("a", 0, &[1.0; 5], &[0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(gold_at_kl(&flat, 2.5), Some(0.0));
        assert_eq!(gold_at_kl(&flat, 9.0), None);
        let rising = curve(
            "b",
            0,
            &[0.0, 0.0, 3.0, 3.0, 3.0],
            &[0.0, 1.0, 2.0, 3.0, 4.0],
        );
        let g = gold_at_kl(&rising, 2.0).unwrap();
        assert!((g - 2.0).abs() < 1e-9, "{g}");

        // Seed 0's budget is 2 (b stops there); a fast mover is compared where it had KL 2.
        let curves = vec![
            curve("std", 0, &[0.0, 1.0, 1.0, -2.0], &[0.0, 2.0, 4.0, 8.0]),
            curve("robust", 0, &[0.0, 0.5, 1.0, 1.0], &[0.0, 0.5, 1.0, 2.0]),
        ];
        let b = matched(&curves, "std");
        assert_eq!(b.per_seed[&0], 2.0);
        let robust = b.rows.iter().find(|r| r.condition == "robust").unwrap();
        let p = robust.paired.as_ref().unwrap();
        assert_eq!(p.wins + p.losses, 1);
        assert!(markdown(&b).contains("shared KL budget"));
    }
}

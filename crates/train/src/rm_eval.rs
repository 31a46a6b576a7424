//! Reward-model evaluation (the paper's Table 5, Fig. 6 and Fig. 7) and calibration.
//!
//! On held-out preference pairs: the accuracy of the BRME's nominal head, of every head, of the
//! head mean, min, max, median and the λ = 0.5 trade-off, and of the stage-1 Bradley–Terry RM;
//! the same per category; reward coverage (range and std of chosen and rejected rewards); the
//! normalised reward margin; how often each head is the nominal one; and PNG plots.
//!
//! Normalised margin (the paper does not define it): `(r⁺ − r⁻) / std(r)` where `std(r)` is the
//! standard deviation of all rewards (chosen and rejected) that the reward source gave on the
//! set, so sources with different scales can be compared.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rrlhf_data::preference::PreferencePair;
use rrlhf_model::reward_model::{REWARD_KEY, RewardCalibration, RewardKind, RewardModel};
use rrlhf_model::scoring::{Overlong, RewardScorer};
use rrlhf_model::{ModelConfig, Placement, TextTokenizer};
use rrlhf_robust::fusion::Calibration;
use rrlhf_robust::{HeadOutputs, Strategy, UncertaintySet, aggregate};
use serde::Serialize;

use crate::error::{Result, TrainError};

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub batch_size: usize,
    pub max_len: usize,
    /// Where to write the PNG plots; none when `None`.
    pub plots_dir: Option<PathBuf>,
    /// Stage-1 RM to compare with; defaults to the BRME's recorded parent.
    pub baseline: Option<PathBuf>,
}

/// Range and spread of one reward source's rewards on chosen or rejected responses.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub min: f64,
    pub max: f64,
    pub range: f64,
    pub mean: f64,
    pub std: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Coverage {
    pub chosen: Spread,
    pub rejected: Spread,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Margin {
    pub mean: f64,
    pub median: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CategoryReport {
    pub pairs: usize,
    pub accuracy: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub kind: RewardKind,
    pub heads: i64,
    pub pairs: usize,
    pub baseline: Option<String>,
    /// Accuracy (ties ½) per reward source: `nominal`, `mean`, `min`, `max`, `median`,
    /// `tradeoff:0.5`, `head_i`, and `stage1` when a baseline is available.
    pub accuracy: BTreeMap<String, f64>,
    pub per_category: BTreeMap<String, CategoryReport>,
    pub coverage: BTreeMap<String, Coverage>,
    pub normalized_margin: BTreeMap<String, Margin>,
    /// Share of responses (chosen and rejected) for which head i has the smallest σ.
    pub nominal_head_frequency: Vec<f64>,
    pub mean_sigma_per_head: Vec<f64>,
    /// Whether the heads disagree where the nominal head is wrong (K ≥ 2).
    pub disagreement: Option<crate::disagreement::Disagreement>,
    pub plots: BTreeMap<String, String>,
}

/// The reward sources compared in a report (strategies over the BRME heads).
fn strategies() -> [Strategy; 6] {
    let half = rrlhf_robust::Lambda::new(0.5).expect("0.5 is in [0, 1]");
    [
        Strategy::Nominal,
        Strategy::Mean,
        Strategy::Min,
        Strategy::Max,
        Strategy::Median,
        Strategy::Tradeoff { lambda: half },
    ]
}

fn scorer(dir: &Path, placement: Placement, opts: &EvalOptions) -> Result<RewardScorer> {
    let model = RewardModel::from_dir(dir, placement)?;
    let tokenizer = TextTokenizer::load(dir)?;
    if tokenizer.vocab_size() as i64 > model.cfg.vocab_size {
        return Err(TrainError::Invalid(format!(
            "the tokenizer in {} does not match its model's vocabulary",
            dir.display()
        )));
    }
    Ok(RewardScorer {
        model,
        tokenizer,
        max_len: opts.max_len,
        batch_size: opts.batch_size,
        overlong: Overlong::Truncate,
    })
}

/// Head outputs for (chosen, rejected) of every pair.
fn score_pairs(
    s: &RewardScorer,
    pairs: &[PreferencePair],
) -> Result<(Vec<HeadOutputs>, Vec<HeadOutputs>)> {
    let chosen: Vec<(String, String)> = pairs
        .iter()
        .map(|p| (p.prompt.clone(), p.chosen.clone()))
        .collect();
    let rejected: Vec<(String, String)> = pairs
        .iter()
        .map(|p| (p.prompt.clone(), p.rejected.clone()))
        .collect();
    Ok((
        s.heads_of_ids(&s.encode(&chosen)?)?,
        s.heads_of_ids(&s.encode(&rejected)?)?,
    ))
}

fn rewards(heads: &[HeadOutputs], strategy: Strategy) -> Result<Vec<f64>> {
    let agg = aggregate(heads, strategy, UncertaintySet::Mean, 0)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    Ok(agg.iter().map(|a| a.reward as f64).collect())
}

fn accuracy(chosen: &[f64], rejected: &[f64], keep: &[bool]) -> f64 {
    let (mut score, mut n) = (0.0, 0.0);
    for ((c, r), &k) in chosen.iter().zip(rejected).zip(keep) {
        if k {
            score += if c > r {
                1.0
            } else if c == r {
                0.5
            } else {
                0.0
            };
            n += 1.0;
        }
    }
    if n > 0.0 { score / n } else { f64::NAN }
}

fn spread(xs: &[f64]) -> Spread {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let min = xs.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    Spread {
        min,
        max,
        range: max - min,
        mean,
        std,
    }
}

/// Normalised margins `(r⁺ − r⁻) / std(all rewards)`.
fn normalized_margins(chosen: &[f64], rejected: &[f64]) -> Vec<f64> {
    let all: Vec<f64> = chosen.iter().chain(rejected).copied().collect();
    let std = spread(&all).std.max(1e-12);
    chosen
        .iter()
        .zip(rejected)
        .map(|(c, r)| (c - r) / std)
        .collect()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Evaluates the reward model in `dir` on `pairs`.
pub fn evaluate(
    dir: &Path,
    pairs: &[PreferencePair],
    opts: &EvalOptions,
    placement: Placement,
) -> Result<EvalReport> {
    if pairs.is_empty() {
        return Err(TrainError::Invalid("no pairs to evaluate on".into()));
    }
    let s = scorer(dir, placement, opts)?;
    let meta = s.model.meta.clone();
    let (hc, hr) = score_pairs(&s, pairs)?;
    drop(s);
    let disagreement = crate::disagreement::measure(&hc, &hr)?;

    // Reward sources by name → (chosen rewards, rejected rewards).
    let mut sources: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for st in strategies() {
        sources.insert(st.to_string(), (rewards(&hc, st)?, rewards(&hr, st)?));
    }
    for h in 0..meta.heads as usize {
        let pick = |hs: &[HeadOutputs]| hs.iter().map(|x| x.mu[h] as f64).collect::<Vec<_>>();
        sources.insert(format!("head_{h}"), (pick(&hc), pick(&hr)));
    }
    let baseline = match (&opts.baseline, meta.kind, &meta.parent) {
        (Some(b), _, _) => Some(b.clone()),
        (None, RewardKind::Brme | RewardKind::Ensemble, Some(parent))
            if Path::new(parent).join("config.json").exists() =>
        {
            Some(PathBuf::from(parent))
        }
        (None, RewardKind::BradleyTerry, _) => Some(dir.to_path_buf()),
        _ => None,
    };
    if let Some(b) = &baseline {
        let bs = scorer(b, placement, opts)?;
        if bs.model.meta.kind != RewardKind::BradleyTerry {
            return Err(TrainError::Invalid(format!(
                "baseline {} is not a Bradley–Terry reward model",
                b.display()
            )));
        }
        let (bc, br) = score_pairs(&bs, pairs)?;
        sources.insert(
            "stage1".into(),
            (
                rewards(&bc, Strategy::Nominal)?,
                rewards(&br, Strategy::Nominal)?,
            ),
        );
    }

    let all = vec![true; pairs.len()];
    let accuracy_map =
        |keep: &[bool], names: &mut dyn Iterator<Item = &String>| -> BTreeMap<String, f64> {
            names
                .map(|n| (n.clone(), accuracy(&sources[n].0, &sources[n].1, keep)))
                .collect()
        };
    let overall = accuracy_map(&all, &mut sources.keys());
    let mut per_category = BTreeMap::new();
    let mut categories: Vec<&str> = pairs.iter().filter_map(|p| p.category.as_deref()).collect();
    categories.sort();
    categories.dedup();
    for cat in categories {
        let keep: Vec<bool> = pairs
            .iter()
            .map(|p| p.category.as_deref() == Some(cat))
            .collect();
        let n = keep.iter().filter(|&&k| k).count();
        let names = ["nominal", "mean", "min", "stage1"].map(String::from);
        let accuracy = accuracy_map(
            &keep,
            &mut names.iter().filter(|n| sources.contains_key(*n)),
        );
        per_category.insert(cat.to_string(), CategoryReport { pairs: n, accuracy });
    }

    let reported = ["stage1", "nominal", "mean", "tradeoff:0.5", "min"];
    let mut coverage = BTreeMap::new();
    let mut margins = BTreeMap::new();
    for name in reported.iter().filter(|n| sources.contains_key(**n)) {
        let (c, r) = &sources[*name];
        coverage.insert(
            name.to_string(),
            Coverage {
                chosen: spread(c),
                rejected: spread(r),
            },
        );
        let m = normalized_margins(c, r);
        margins.insert(
            name.to_string(),
            Margin {
                mean: m.iter().sum::<f64>() / m.len() as f64,
                median: median(&m),
            },
        );
    }

    let k = meta.heads as usize;
    let mut freq = vec![0.0; k];
    let mut sigma = vec![0.0; k];
    for h in hc.iter().chain(&hr) {
        let nominal = aggregate(
            std::slice::from_ref(h),
            Strategy::Nominal,
            UncertaintySet::Mean,
            0,
        )
        .map_err(|e| TrainError::Invalid(e.to_string()))?[0]
            .summary
            .nominal_head;
        freq[nominal] += 1.0;
        for (acc, s) in sigma.iter_mut().zip(&h.sigma) {
            *acc += *s as f64;
        }
    }
    let total = (hc.len() + hr.len()) as f64;
    let plots = match &opts.plots_dir {
        Some(d) => draw_plots(d, &sources)?,
        None => BTreeMap::new(),
    };
    Ok(EvalReport {
        model: dir.display().to_string(),
        kind: meta.kind,
        heads: meta.heads,
        pairs: pairs.len(),
        baseline: baseline.map(|b| b.display().to_string()),
        accuracy: overall,
        per_category,
        coverage,
        normalized_margin: margins,
        nominal_head_frequency: freq.iter().map(|f| f / total).collect(),
        mean_sigma_per_head: sigma.iter().map(|s| s / total).collect(),
        disagreement,
        plots,
    })
}

fn draw_plots(
    dir: &Path,
    sources: &BTreeMap<String, (Vec<f64>, Vec<f64>)>,
) -> Result<BTreeMap<String, String>> {
    std::fs::create_dir_all(dir).map_err(|err| TrainError::Io {
        path: dir.to_path_buf(),
        err,
    })?;
    let points = |name: &str| -> Vec<(f64, f64)> {
        sources[name]
            .0
            .iter()
            .copied()
            .zip(sources[name].1.iter().copied())
            .collect()
    };
    let plot_err = |e: rrlhf_plot::PlotError| TrainError::Invalid(e.to_string());
    let mut out = BTreeMap::new();
    let mut scatter = |file: &str, title: &str, names: &[(&str, &str)]| -> Result<()> {
        let pts: Vec<(String, Vec<(f64, f64)>)> = names
            .iter()
            .filter(|(n, _)| sources.contains_key(*n))
            .map(|(n, l)| (l.to_string(), points(n)))
            .collect();
        if pts.is_empty() {
            return Ok(());
        }
        let series: Vec<rrlhf_plot::Series> = pts
            .iter()
            .map(|(l, p)| rrlhf_plot::Series {
                label: l,
                points: p,
            })
            .collect();
        let path = dir.join(file);
        rrlhf_plot::scatter(
            &path,
            title,
            "reward of chosen response",
            "reward of rejected response",
            &series,
            true,
        )
        .map_err(plot_err)?;
        out.insert(
            file.trim_end_matches(".png").to_string(),
            path.display().to_string(),
        );
        Ok(())
    };
    scatter(
        "scatter_stage1.png",
        "Stage-1 Bradley–Terry RM: chosen vs rejected",
        &[("stage1", "stage-1 RM")],
    )?;
    scatter(
        "scatter_brme.png",
        "BRME: chosen vs rejected",
        &[
            ("mean", "BRME mean integration"),
            ("tradeoff:0.5", "BRME trade-off λ = 0.5"),
        ],
    )?;
    let margins: Vec<(String, Vec<f64>)> = [
        ("stage1", "stage-1 RM"),
        ("nominal", "BRME nominal"),
        ("mean", "BRME mean"),
    ]
    .iter()
    .filter(|(n, _)| sources.contains_key(*n))
    .map(|(n, l)| {
        (
            l.to_string(),
            normalized_margins(&sources[*n].0, &sources[*n].1),
        )
    })
    .collect();
    let hists: Vec<rrlhf_plot::Hist> = margins
        .iter()
        .map(|(l, v)| rrlhf_plot::Hist {
            label: l,
            values: v,
        })
        .collect();
    let path = dir.join("margin_hist.png");
    rrlhf_plot::histogram(
        &path,
        "Normalised reward margin (r⁺ − r⁻) / std(r)",
        "normalised margin",
        &hists,
        40,
    )
    .map_err(plot_err)?;
    out.insert("margin_hist".into(), path.display().to_string());
    Ok(out)
}

/// Measures the nominal reward's mean and std over every chosen and rejected response of
/// `pairs` and records them in `DIR/config.json` (heterologous fusion, appendix F).
/// Mean and std of the nominal reward of every chosen and rejected response of `pairs`,
/// without recording them (what [`calibrate`] writes).
pub fn measure_calibration(
    dir: &Path,
    pairs: &[PreferencePair],
    opts: &EvalOptions,
    placement: Placement,
) -> Result<Calibration> {
    let s = scorer(dir, placement, opts)?;
    let (hc, hr) = score_pairs(&s, pairs)?;
    let all: Vec<HeadOutputs> = hc.into_iter().chain(hr).collect();
    let rewards: Vec<f32> = rewards(&all, Strategy::Nominal)?
        .iter()
        .map(|&r| r as f32)
        .collect();
    Calibration::measure(&rewards).map_err(|e| TrainError::Invalid(e.to_string()))
}

pub fn calibrate(
    dir: &Path,
    pairs: &[PreferencePair],
    reference: &str,
    opts: &EvalOptions,
    placement: Placement,
) -> Result<RewardCalibration> {
    let cal = measure_calibration(dir, pairs, opts, placement)?;
    let record = RewardCalibration {
        mean: cal.mean,
        std: cal.std,
        count: cal.count,
        reference: Some(reference.to_string()),
    };
    let mut cfg = ModelConfig::from_dir(dir)?;
    let mut meta = RewardModel::meta_of(&cfg, dir)?;
    meta.calibration = Some(record.clone());
    cfg.raw.insert(
        REWARD_KEY.into(),
        serde_json::to_value(&meta).expect("serialisable"),
    );
    cfg.write(dir)?;
    Ok(record)
}

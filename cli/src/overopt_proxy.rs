//! The testbed's proxies, built fresh for every seed (`runs/overopt/proxy/s{seed}/`): a new
//! annotation sample (other prompts, other SFT samples, other annotator noise), then every
//! reward model the conditions need, trained on those labels —
//! - `single`: the stage-1 Bradley–Terry RM alone (K = 1; also the critic's start);
//! - `brme`: the paper's BRME, K heads on the shared backbone, a partition of the pairs;
//! - `diverse`: the BRME with each head on its own tower, per-head noise on the towers and
//!   bootstrap resamples;
//! - `ensemble`: a deep ensemble of K stage-1 RMs from different seeds (member 0 is `single`);
//! - `fused`: the diverse BRME and the deep ensemble as two reward services, each normalised
//!   with its calibration on the held-out responses and fused before aggregation (appendix F).
//!
//! Each proxy is also evaluated on held-out pairs labelled by *gold* (not by the noisy
//! annotator): accuracy, head disagreement and how well disagreement flags the nominal head's
//! mistakes, and scoring time — `eval.json`. Every step is skipped when its output exists, so an
//! interrupted testbed resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use rrlhf_data::PreferencePair;
use rrlhf_model::TextTokenizer;
use rrlhf_orchestrator::sources::CalibrationSetting;
use rrlhf_overopt::{annotator, gold};
use rrlhf_train::rm::HeadData;
use rrlhf_train::rm_eval::{EvalOptions, evaluate, measure_calibration};
use serde_json::json;

use crate::cmd_experiment::OveroptArgs;
use crate::cmd_model::{SamplingArgs, load_with_tokenizer, sample};
use crate::cmd_rm::{StageArg, TrainArgs};
use crate::cmd_sft::write_json;

/// Which reward model a condition optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProxyKind {
    Single,
    Brme,
    Diverse,
    Ensemble,
    Fused,
}

impl ProxyKind {
    pub const ALL: [Self; 5] = [
        Self::Single,
        Self::Brme,
        Self::Diverse,
        Self::Ensemble,
        Self::Fused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Brme => "brme",
            Self::Diverse => "diverse",
            Self::Ensemble => "ensemble",
            Self::Fused => "fused",
        }
    }
}

impl std::str::FromStr for ProxyKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown proxy `{s}` (single, brme, diverse, ensemble or fused)")
            })
    }
}

/// A seed's reward models (directories), built as needed.
pub struct Proxy {
    pub dir: PathBuf,
    pub stage1: PathBuf,
}

impl Proxy {
    pub fn model(&self, kind: ProxyKind) -> PathBuf {
        match kind {
            ProxyKind::Single => self.stage1.clone(),
            ProxyKind::Brme => self.dir.join("rm-brme"),
            // The fused proxy's main source; the ensemble is its second.
            ProxyKind::Diverse | ProxyKind::Fused => self.dir.join("rm-diverse"),
            ProxyKind::Ensemble => self.dir.join("rm-ensemble"),
        }
    }

    /// The fused proxy's two sources with their calibrations on the held-out responses:
    /// (diverse BRME, deep ensemble).
    pub fn fusion(&self) -> Result<[CalibrationSetting; 2]> {
        let text = std::fs::read_to_string(self.dir.join(FUSION_FILE))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Where a seed's fusion calibrations are kept.
const FUSION_FILE: &str = "fusion.json";

fn exists(model: &Path) -> bool {
    model.join("config.json").exists()
        && (model.join("model.safetensors").exists()
            || model.join("model.safetensors.index.json").exists())
}

/// Builds (or reuses) seed `seed`'s annotation sample and the proxies in `kinds`.
pub fn build(a: &OveroptArgs, seed: u64, kinds: &[ProxyKind]) -> Result<Proxy> {
    // The fused proxy is made of the diverse BRME and the ensemble.
    let mut kinds = kinds.to_vec();
    if kinds.contains(&ProxyKind::Fused) {
        kinds.extend([ProxyKind::Diverse, ProxyKind::Ensemble]);
    }
    kinds.sort();
    kinds.dedup();
    let kinds = kinds.as_slice();
    let dir = a.proxy_dir(seed);
    std::fs::create_dir_all(&dir)?;
    let proxy = Proxy {
        stage1: dir.join("rm-stage1"),
        dir: dir.clone(),
    };
    let prefs = dir.join("prefs.jsonl");
    let gold_pairs = dir.join("gold-heldout.jsonl");
    if !prefs.exists() || !gold_pairs.exists() {
        annotate(a, seed, &dir)?;
    }
    let train = |stage, base: &Path, out: &Path, rm_seed: u64| TrainArgs {
        steps: Some(a.rm_steps),
        max_len: a.max_len,
        eval_every: 0,
        heads: a.heads,
        seed: rm_seed,
        ..TrainArgs::defaults(stage, base, &prefs, out, a.runtime.clone())
    };
    let ensure = |out: &Path, args: TrainArgs| -> Result<()> {
        if exists(out) {
            eprintln!("[proxy] reusing {}", out.display());
        } else {
            crate::cmd_rm::train(&args, false)?;
        }
        Ok(())
    };
    ensure(
        &proxy.stage1,
        train(StageArg::One, &a.sft, &proxy.stage1, seed),
    )?;
    for &kind in kinds {
        let out = proxy.model(kind);
        match kind {
            ProxyKind::Single | ProxyKind::Fused => {}
            ProxyKind::Brme => ensure(&out, train(StageArg::Two, &proxy.stage1, &out, seed))?,
            ProxyKind::Diverse => ensure(
                &out,
                TrainArgs {
                    head_data: HeadData::Bootstrap,
                    tower_layers: a.tower_layers,
                    tower_init_noise: a.tower_init_noise,
                    ..train(StageArg::Two, &proxy.stage1, &out, seed)
                },
            )?,
            ProxyKind::Ensemble => {
                if exists(&out) {
                    eprintln!("[proxy] reusing {}", out.display());
                    continue;
                }
                let mut members = vec![proxy.stage1.clone()];
                for k in 1..a.heads as u64 {
                    let member = dir.join(format!("rm-member{k}"));
                    // Other seeds: other initialisation of the head, data order and split.
                    let member_seed = 1000 * (k + 1) + seed;
                    ensure(&member, train(StageArg::One, &a.sft, &member, member_seed))?;
                    members.push(member);
                }
                crate::cmd_rm::ensemble(&crate::cmd_rm::EnsembleArgs {
                    members,
                    out: out.clone(),
                    runtime: a.runtime.clone(),
                })?;
            }
        }
    }
    evaluate_proxies(a, &proxy, kinds)?;
    if kinds.contains(&ProxyKind::Fused) && !proxy.dir.join(FUSION_FILE).exists() {
        calibrate_fusion(a, &proxy)?;
    }
    Ok(proxy)
}

/// Samples two responses to fresh prompts, labels `a.pairs` of them with the noisy annotator
/// (the proxy's training data) and the next `a.heldout` by gold (for evaluation).
fn annotate(a: &OveroptArgs, seed: u64, dir: &Path) -> Result<()> {
    let data = rrlhf_data::sft::load(&a.data)?;
    let mut prompts: Vec<String> = data
        .examples
        .into_iter()
        .map(|e| e.prompt)
        .filter(|p| !p.is_empty() && p.len() <= 400)
        .collect();
    // A seeded shuffle: each seed annotates its own sample of prompts.
    let mut rng = rrlhf_robust::rng::Rng::new(rrlhf_robust::rng::stream_seed(seed, 0xA770));
    for i in (1..prompts.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        prompts.swap(i, j);
    }
    prompts.truncate(a.pairs + a.heldout);
    eprintln!(
        "[proxy s{seed}] sampling 2 responses to each of {} prompts",
        prompts.len()
    );
    let (lm, tok): (rrlhf_model::CausalLm, TextTokenizer) =
        load_with_tokenizer(&a.sft, a.runtime.placement()?)?;
    let sampling = SamplingArgs {
        min_new_tokens: 0,
        max_new_tokens: a.max_new_tokens as usize,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: Some(7 + 7919 * seed),
    };
    let mut samples = Vec::new();
    for chunk in prompts.chunks(128) {
        samples.extend(sample(&lm, &tok, chunk, 2, &sampling)?);
    }
    drop(lm);
    // Consecutive samples share their prompt: (prompt, response) twice per pair.
    type Sampled = (String, String);
    let pairs: Vec<(&Sampled, &Sampled)> = samples.chunks(2).map(|c| (&c[0], &c[1])).collect();
    let golds: Vec<(f32, f32)> = pairs
        .iter()
        .map(|(x, y)| (gold::gold(&x.1), gold::gold(&y.1)))
        .collect();
    let split = a.pairs.min(pairs.len());
    let (labels, tau, realised) = annotator::label(&golds[..split], a.agreement, 11 + seed)?;
    let line = |prompt: &str, chosen: &str, rejected: &str| {
        serde_json::to_string(&json!({"prompt": prompt, "chosen": chosen, "rejected": rejected}))
            .map(|s| s + "\n")
    };
    let mut train = String::new();
    for ((x, y), l) in pairs[..split].iter().zip(&labels) {
        let Some(l) = l else { continue };
        let (c, r) = if l.first_preferred { (x, y) } else { (y, x) };
        train.push_str(&line(&x.0, &c.1, &r.1)?);
    }
    let mut held = String::new();
    for ((x, y), (gx, gy)) in pairs[split..].iter().zip(&golds[split..]) {
        if gx == gy {
            continue; // gold cannot order them
        }
        let (c, r) = if gx > gy { (x, y) } else { (y, x) };
        held.push_str(&line(&x.0, &c.1, &r.1)?);
    }
    let labelled = labels.iter().flatten().count();
    write_json(
        &dir.join("annotation.json"),
        &json!({ "seed": seed, "pairs": split, "labelled": labelled, "tau": tau,
                 "agreement": realised, "gold_heldout": held.lines().count() }),
    )?;
    rrlhf_model::fsio::write_atomic(&dir.join("gold-heldout.jsonl"), held.as_bytes())?;
    // Written last: its presence marks the annotation complete.
    rrlhf_model::fsio::write_atomic(&dir.join("prefs.jsonl"), train.as_bytes())?;
    eprintln!(
        "[proxy s{seed}] {labelled} labelled pairs (τ = {tau:.3}, agreement with gold {:.1}%)",
        realised * 100.0
    );
    Ok(())
}

/// Accuracy against gold, head disagreement and its AUROC for the nominal head's mistakes, and
/// scoring time, of every proxy on the seed's gold-labelled held-out pairs (`eval.json`).
fn evaluate_proxies(a: &OveroptArgs, proxy: &Proxy, kinds: &[ProxyKind]) -> Result<()> {
    let path = proxy.dir.join("eval.json");
    let mut report: BTreeMap<String, serde_json::Value> = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)?,
        Err(_) => BTreeMap::new(),
    };
    let pairs = held_out(proxy)?;
    let mut all = vec![ProxyKind::Single];
    all.extend(kinds.iter().copied().filter(|k| *k != ProxyKind::Single));
    for kind in all {
        // The fused proxy has no model of its own: its sources are evaluated.
        if kind == ProxyKind::Fused || report.contains_key(kind.as_str()) {
            continue;
        }
        let opts = eval_options(a);
        let r = evaluate(&proxy.model(kind), &pairs, &opts, a.runtime.placement()?)?;
        let secs = scoring_secs(&proxy.model(kind), &pairs, a)?;
        report.insert(
            kind.as_str().into(),
            json!({
                "heads": r.heads, "pairs": r.pairs,
                "accuracy_nominal": r.accuracy.get("nominal"),
                "accuracy_mean": r.accuracy.get("mean"),
                "disagreement": r.disagreement,
                // Scoring the chosen responses, batches of 32, same process and inputs for
                // every proxy: the cost of K heads, towers or members.
                "score_secs": secs,
            }),
        );
    }
    write_json(&path, &report)?;
    Ok(())
}

/// Seconds to score the chosen response of every pair with the model at `dir` (after one
/// warm-up batch).
fn scoring_secs(dir: &Path, pairs: &[PreferencePair], a: &OveroptArgs) -> Result<f64> {
    use rrlhf_model::scoring::{Overlong, RewardScorer};
    let scorer = RewardScorer {
        model: rrlhf_model::RewardModel::from_dir(dir, a.runtime.placement()?)?,
        tokenizer: TextTokenizer::load(dir)?,
        max_len: a.max_len,
        batch_size: 32,
        overlong: Overlong::Truncate,
    };
    let texts: Vec<(String, String)> = pairs
        .iter()
        .map(|p| (p.prompt.clone(), p.chosen.clone()))
        .collect();
    let ids = scorer.encode(&texts)?;
    let _guard = tch::no_grad_guard();
    scorer.heads_of_ids(&ids[..ids.len().min(32)])?;
    let start = std::time::Instant::now();
    scorer.heads_of_ids(&ids)?;
    Ok(start.elapsed().as_secs_f64())
}

/// The nominal rewards' mean and std of the diverse BRME and the ensemble on the held-out
/// responses (chosen and rejected), which the fused proxy normalises each source with.
fn calibrate_fusion(a: &OveroptArgs, proxy: &Proxy) -> Result<()> {
    let pairs = held_out(proxy)?;
    let opts = eval_options(a);
    let mut out = Vec::new();
    for kind in [ProxyKind::Diverse, ProxyKind::Ensemble] {
        let c = measure_calibration(&proxy.model(kind), &pairs, &opts, a.runtime.placement()?)?;
        out.push(CalibrationSetting {
            mean: c.mean,
            std: c.std,
        });
    }
    write_json(&proxy.dir.join(FUSION_FILE), &out)?;
    Ok(())
}

/// Scoring settings of the held-out evaluations and calibrations.
fn eval_options(a: &OveroptArgs) -> EvalOptions {
    EvalOptions {
        batch_size: 32,
        max_len: a.max_len,
        plots_dir: None,
        baseline: None,
    }
}

/// The seed's gold-labelled held-out pairs.
fn held_out(proxy: &Proxy) -> Result<Vec<PreferencePair>> {
    let path = proxy.dir.join("gold-heldout.jsonl");
    Ok(rrlhf_data::preference::load_pairs(&path, &Default::default())?.pairs)
}

//! Reward models: the backbone plus a reward head read at the last token of each sequence.
//!
//! - Stage 1, Bradley–Terry: a scalar head `score.weight` (no bias). The directory is a Hugging
//!   Face `*ForSequenceClassification` checkpoint with `num_labels = 1`, so transformers opens it.
//! - Stage 2, BRME: K Gaussian heads `brme.mu` and `brme.sigma` (σ = softplus); optionally
//!   each head on its own tower, a private copy of the top decoder layers
//!   (`brme.towers.{h}.*`, [`crate::tower`]), so heads share only the lower trunk.
//! - Deep ensemble: K independent stage-1 models in one directory (member 0 at the usual
//!   names, member h at `ensemble.{h}.*`), served as one K-head model whose σ is 1 for every
//!   member: the nominal head is member 0 ([`crate::ensemble`]).
//!
//! What kind of head a directory holds, and its K, α, stage-1 parent and calibration, are
//! recorded in `config.json` under [`REWARD_KEY`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tch::{Tensor, nn};

use crate::batch::Batch;
use crate::checkpoint::{self, LoadRules};
use crate::config::ModelConfig;
use crate::device::{Placement, dtype_name};
use crate::error::{ModelError, Result};
use crate::heads::{BrmeHead, ValueHead};
use crate::llama::{Backbone, ParamInit};
use crate::lora::{self, LoraConfig, PeftTask};
use crate::tower::Tower;

/// The `config.json` key holding [`RewardMeta`].
pub const REWARD_KEY: &str = "rrlhf_reward";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    BradleyTerry,
    Brme,
    /// K independently trained Bradley–Terry models served as K heads.
    Ensemble,
}

/// Calibration of a reward source on a reference set (for heterologous fusion).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardCalibration {
    pub mean: f32,
    pub std: f32,
    pub count: usize,
    /// The reference data it was measured on.
    #[serde(default)]
    pub reference: Option<String>,
}

/// What a reward-model directory holds, as written to `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardMeta {
    pub kind: RewardKind,
    /// K (1 for Bradley–Terry).
    pub heads: i64,
    /// Scale α of the stage-2 targets `α(p̂ − ½)` (BRME only).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// The model this one was initialised from (SFT model for stage 1, stage-1 RM for BRME).
    #[serde(default)]
    pub parent: Option<String>,
    /// Human-readable tensor layout of the head.
    pub head_layout: String,
    #[serde(default)]
    pub calibration: Option<RewardCalibration>,
    /// The train/validation split it was trained with, so evaluation can use the held-out part.
    #[serde(default)]
    pub split: Option<TrainingSplit>,
    /// BRME: decoder layers each head owns on top of the shared trunk (0: heads share all).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tower_layers: usize,
    /// Deep ensemble: the member models it was assembled from, in head order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How training pairs were split: `rrlhf_data::split::train_test(pairs, seed, eval_fraction)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSplit {
    pub data: String,
    pub seed: u64,
    pub eval_fraction: f64,
}

impl RewardMeta {
    pub fn bradley_terry(parent: Option<String>) -> Self {
        Self {
            kind: RewardKind::BradleyTerry,
            heads: 1,
            alpha: None,
            parent,
            head_layout: "score.weight [1, hidden]: scalar reward at the last token".into(),
            calibration: None,
            split: None,
            tower_layers: 0,
            members: Vec::new(),
        }
    }

    pub fn brme(heads: i64, alpha: f64, parent: Option<String>) -> Result<Self> {
        if heads < 1 {
            return Err(ModelError::InvalidInput(format!(
                "the BRME needs K ≥ 1 heads, got {heads}"
            )));
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(ModelError::InvalidInput(format!(
                "α must be a positive number, got {alpha}"
            )));
        }
        Ok(Self {
            kind: RewardKind::Brme,
            heads,
            alpha: Some(alpha),
            parent,
            head_layout: format!(
                "brme.mu.{{weight [{heads}, hidden], bias [{heads}]}}: μ of head i = row i; \
                 brme.sigma.{{weight, bias}} likewise, σ = softplus(row i)"
            ),
            calibration: None,
            split: None,
            tower_layers: 0,
            members: Vec::new(),
        })
    }

    /// The BRME with each head on its own copy of the top `layers` decoder layers.
    pub fn with_towers(mut self, layers: usize) -> Self {
        self.tower_layers = layers;
        if layers > 0 {
            self.head_layout.push_str(&format!(
                "; head i reads its own tower brme.towers.i.{{layers.0..{layers}, norm}}: a copy \
                 of the top {layers} decoder layers and the final norm over the shared trunk"
            ));
        }
        self
    }

    /// A deep ensemble of the stage-1 models `members` (member 0 is the nominal head).
    pub fn ensemble(members: Vec<String>) -> Result<Self> {
        let heads = members.len() as i64;
        if heads < 2 {
            return Err(ModelError::InvalidInput(format!(
                "a deep ensemble needs at least 2 member models, got {heads}"
            )));
        }
        Ok(Self {
            kind: RewardKind::Ensemble,
            heads,
            alpha: None,
            parent: members.first().cloned(),
            head_layout: format!(
                "member 0: model.* and score.weight; member h in 1..{heads}: ensemble.h.model.* \
                 and ensemble.h.score.weight; σ = 1 for every member (nominal = member 0)"
            ),
            calibration: None,
            split: None,
            tower_layers: 0,
            members,
        })
    }
}

#[derive(Debug)]
pub enum RewardHead {
    Scalar(ValueHead),
    Brme(BrmeHead),
    /// Member 0's scalar head (on the model's backbone) and members 1.. with their own.
    Ensemble {
        first: ValueHead,
        others: Vec<(Backbone, ValueHead)>,
    },
}

/// Per-sequence head outputs, `[B, K]` f32 each (σ is 0 for a Bradley–Terry model).
#[derive(Debug)]
pub struct RewardOutput {
    pub mu: Tensor,
    pub sigma: Tensor,
}

#[derive(Debug)]
pub struct RewardModel {
    pub vs: nn::VarStore,
    pub cfg: ModelConfig,
    pub backbone: Backbone,
    pub head: RewardHead,
    /// BRME with per-head towers: head h's copy of the top decoder layers.
    pub towers: Vec<Tower>,
    pub meta: RewardMeta,
}

fn is_head_tensor(name: &str) -> bool {
    name == "lm_head.weight"
        || name.starts_with("score.")
        || name.starts_with("brme.")
        || name.starts_with("ensemble.")
}

impl RewardModel {
    fn build(cfg: ModelConfig, meta: RewardMeta, placement: Placement, fill: ParamInit) -> Self {
        let vs = placement.var_store(fill);
        let root = vs.root();
        let backbone = Backbone::new(&root / "model", &cfg, fill);
        let head = match meta.kind {
            RewardKind::BradleyTerry => {
                RewardHead::Scalar(ValueHead::new(&root / "score", cfg.hidden_size, fill))
            }
            RewardKind::Brme => RewardHead::Brme(BrmeHead::new(
                &root / "brme",
                cfg.hidden_size,
                meta.heads,
                fill,
            )),
            RewardKind::Ensemble => RewardHead::Ensemble {
                first: ValueHead::new(&root / "score", cfg.hidden_size, fill),
                others: (1..meta.heads)
                    .map(|h| {
                        let member = &root / "ensemble" / h;
                        (
                            Backbone::new(&member / "model", &cfg, fill),
                            ValueHead::new(&member / "score", cfg.hidden_size, fill),
                        )
                    })
                    .collect(),
            },
        };
        let towers = if meta_has_towers(&meta) {
            (0..meta.heads)
                .map(|h| Tower::new(&root / "brme" / "towers" / h, &cfg, meta.tower_layers, fill))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            vs: placement.finish_var_store(vs),
            cfg,
            backbone,
            head,
            towers,
            meta,
        }
    }

    /// A model of this layout whose tensors are allocated but not filled: the caller copies
    /// every one of them in (as [`crate::ensemble::assemble`] does).
    pub fn blank(cfg: ModelConfig, meta: RewardMeta, placement: Placement) -> Self {
        Self::build(cfg, meta, placement, ParamInit::Unfilled)
    }

    /// A new reward model whose backbone comes from `base` (an SFT model or another reward
    /// model: its LM/reward head is ignored) and whose head is freshly initialised.
    pub fn from_base(base: &Path, meta: RewardMeta, placement: Placement) -> Result<Self> {
        let mut cfg = ModelConfig::from_dir(base)?;
        cfg.raw.remove(REWARD_KEY);
        let layers = cfg.num_hidden_layers as usize;
        if meta.tower_layers > layers {
            return Err(ModelError::InvalidInput(format!(
                "per-head towers of {} layers, but {} has only {layers} decoder layers",
                meta.tower_layers,
                base.display()
            )));
        }
        // Everything drawn at random (the backbone is then overwritten): drawing the head after
        // a full random backbone keeps a seed's head exactly what it has always been.
        let model = Self::build(cfg, meta, placement, ParamInit::Random);
        let is_new_head = |name: &str| name.starts_with("score.") || name.starts_with("brme.");
        checkpoint::load_into(
            &model.vs,
            base,
            &LoadRules {
                ignore_unexpected: Some(&is_head_tensor),
                allow_missing: Some(&is_new_head),
            },
        )?;
        if meta_has_towers(&model.meta) {
            // Every tower starts as the backbone's own top layers: the heads begin where the
            // stage-1 model ended and diverge through their data and initialisation.
            crate::ensemble::copy_within(&model.vs, |name| {
                crate::tower::source_of(name, layers - model.meta.tower_layers)
            })?;
        }
        Ok(model)
    }

    /// Loads a saved reward model strictly.
    pub fn from_dir(dir: &Path, placement: Placement) -> Result<Self> {
        let cfg = ModelConfig::from_dir(dir)?;
        let meta = Self::meta_of(&cfg, dir)?;
        let model = Self::build(cfg, meta, placement, ParamInit::Unfilled);
        checkpoint::load_strict(&model.vs, dir, model.cfg.tie_word_embeddings)?;
        Ok(model)
    }

    /// The reward metadata recorded in a config, or an error saying this is no reward model.
    pub fn meta_of(cfg: &ModelConfig, dir: &Path) -> Result<RewardMeta> {
        let value = cfg.raw.get(REWARD_KEY).ok_or_else(|| ModelError::Config {
            path: dir.join("config.json"),
            message: format!(
                "not a reward model: no `{REWARD_KEY}` entry (train one with `rrlhf rm train`)"
            ),
        })?;
        serde_json::from_value(value.clone()).map_err(|e| ModelError::Config {
            path: dir.join("config.json"),
            message: format!("bad `{REWARD_KEY}` entry: {e}"),
        })
    }

    /// Writes config (with the reward metadata) and weights to `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut cfg = self.cfg.clone();
        let arch = cfg.arch;
        let kind = self.backbone.embed_tokens.ws.kind();
        cfg.raw
            .insert("torch_dtype".into(), dtype_name(kind).into());
        cfg.raw.insert("dtype".into(), dtype_name(kind).into());
        cfg.raw.insert(
            REWARD_KEY.into(),
            serde_json::to_value(&self.meta).expect("serialisable"),
        );
        match self.meta.kind {
            RewardKind::BradleyTerry => {
                let class = arch.hf_sequence_classification_class();
                cfg.raw.insert("architectures".into(), json!([class]));
                cfg.raw.insert("num_labels".into(), json!(1));
                cfg.raw.insert("id2label".into(), json!({"0": "LABEL_0"}));
                cfg.raw.insert("label2id".into(), json!({"LABEL_0": 0}));
            }
            RewardKind::Brme => {
                cfg.raw.insert(
                    "architectures".into(),
                    Value::from(vec!["RrlhfBrmeRewardModel"]),
                );
            }
            RewardKind::Ensemble => {
                cfg.raw.insert(
                    "architectures".into(),
                    Value::from(vec!["RrlhfEnsembleRewardModel"]),
                );
            }
        }
        checkpoint::save(&self.vs, &[], dir)?;
        cfg.write(dir)
    }

    /// Adds LoRA adapters to the backbone and freezes it; the scalar head keeps training (PEFT's
    /// `modules_to_save = ["score"]`): a LoRA critic. Only single-head models take adapters.
    pub fn add_lora(&mut self, cfg: &LoraConfig) -> Result<()> {
        if !matches!(self.head, RewardHead::Scalar(_)) || self.meta.kind != RewardKind::BradleyTerry
        {
            return Err(ModelError::InvalidInput(
                "LoRA adapters are for single-head (critic) reward models".into(),
            ));
        }
        let root = self.vs.root();
        self.backbone.add_lora(&root / "model", cfg)?;
        for (name, var) in self.vs.variables() {
            if !PeftTask::SeqCls.saves(&name) {
                let _ = var.set_requires_grad(false);
            }
        }
        Ok(())
    }

    /// Writes what training changes into `dir`: the whole model, or with LoRA the adapters and
    /// the head as a PEFT sequence-classification adapter over `base`.
    pub fn save_trainable(&self, dir: &Path, base: &str) -> Result<()> {
        match self.backbone.lora() {
            Some((cfg, _)) => lora::save_adapter(&self.vs, cfg, base, PeftTask::SeqCls, dir),
            None => self.save(dir),
        }
    }

    /// Loads what [`Self::save_trainable`] wrote, validating all of it before copying any.
    pub fn load_trainable(&self, dir: &Path) -> Result<()> {
        match self.backbone.lora() {
            Some(_) => lora::load_adapter_weights(&self.vs, PeftTask::SeqCls, dir),
            None => checkpoint::load_strict(&self.vs, dir, self.cfg.tie_word_embeddings),
        }
    }

    pub fn heads(&self) -> i64 {
        self.meta.heads
    }

    /// Scalar-head outputs at every position, `[B, T]` f32 (a critic's per-token values).
    /// Only for single-head (Bradley–Terry layout) models.
    pub fn token_values(&self, batch: &Batch) -> Result<Tensor> {
        let RewardHead::Scalar(head) = &self.head else {
            return Err(ModelError::InvalidInput(
                "per-token values need a single scalar head (a stage-1 model)".into(),
            ));
        };
        let hidden =
            self.backbone
                .forward(&batch.ids, batch.attention_mask(), &batch.positions, None);
        Ok(head.forward(&hidden))
    }

    /// Head outputs at the last real token of each row of a right-padded batch.
    pub fn forward(&self, batch: &Batch) -> Result<RewardOutput> {
        if !self.towers.is_empty() {
            return self.forward_towers(batch);
        }
        let hidden =
            self.backbone
                .forward(&batch.ids, batch.attention_mask(), &batch.positions, None);
        let pooled = last_token(&hidden, batch)?;
        Ok(match &self.head {
            RewardHead::Scalar(h) => {
                let mu = h.forward(&pooled).unsqueeze(-1);
                let sigma = mu.zeros_like();
                RewardOutput { mu, sigma }
            }
            RewardHead::Brme(h) => {
                let (mu, sigma) = h.forward(&pooled);
                RewardOutput { mu, sigma }
            }
            RewardHead::Ensemble { first, others } => {
                let mut scores = vec![first.forward(&pooled)];
                for (backbone, head) in others {
                    let hidden = backbone.forward(
                        &batch.ids,
                        batch.attention_mask(),
                        &batch.positions,
                        None,
                    );
                    scores.push(head.forward(&last_token(&hidden, batch)?));
                }
                let mu = Tensor::stack(&scores, 1);
                // Members carry no uncertainty of their own: equal σ, so the nominal head is
                // member 0 (the lowest index wins ties) and σ-free strategies see K rewards.
                let sigma = mu.ones_like();
                RewardOutput { mu, sigma }
            }
        })
    }

    /// BRME heads on their own towers: the trunk runs once, then each tower and its head row.
    fn forward_towers(&self, batch: &Batch) -> Result<RewardOutput> {
        let RewardHead::Brme(head) = &self.head else {
            return Err(ModelError::InvalidInput(
                "towers belong to BRME heads".into(),
            ));
        };
        let shared = self.backbone.num_layers() - self.meta.tower_layers;
        let trunk = self.backbone.forward_trunk(
            &batch.ids,
            batch.attention_mask(),
            &batch.positions,
            shared,
        );
        let (mut mus, mut sigmas) = (Vec::new(), Vec::new());
        for (h, tower) in self.towers.iter().enumerate() {
            let pooled = last_token(&tower.forward(&trunk), batch)?;
            let (mu, sigma) = head.forward_one(&pooled, h as i64);
            mus.push(mu);
            sigmas.push(sigma);
        }
        Ok(RewardOutput {
            mu: Tensor::stack(&mus, 1),
            sigma: Tensor::stack(&sigmas, 1),
        })
    }
}

fn meta_has_towers(meta: &RewardMeta) -> bool {
    meta.kind == RewardKind::Brme && meta.tower_layers > 0
}

/// Hidden states `[B, T, H]` at the last real token of each row: `[B, H]`.
fn last_token(hidden: &Tensor, batch: &Batch) -> Result<Tensor> {
    let last: Vec<i64> = batch.lengths.iter().map(|&l| l as i64 - 1).collect();
    let index = Tensor::from_slice(&last)
        .to_device(hidden.device())
        .view([-1, 1, 1])
        .expand([-1, 1, hidden.size()[2]], false);
    Ok(hidden.f_gather(1, &index, false)?.squeeze_dim(1))
}

//! Tiny models for tests, built once per test binary: a byte-level BPE tokenizer of 300 tokens,
//! a tiny Llama policy, a stage-1 Bradley–Terry reward model and a 3-head BRME on the same
//! backbone. They live in a temporary directory that lasts as long as the process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rrlhf_model::reward_model::{RewardMeta, RewardModel};
use rrlhf_model::tokenizer::train_bpe;
use rrlhf_model::{Arch, CausalLm, ModelConfig, Placement, SizePreset};

/// The shared models' directories (each with the tokenizer, so each serves on its own).
#[derive(Debug)]
pub struct Models {
    _root: tempfile::TempDir,
    /// The SFT-like policy: the actor's start and the frozen reference.
    pub policy: PathBuf,
    /// A stage-1 reward model: the critic's start.
    pub stage1: PathBuf,
    /// A 3-head BRME whose heads disagree (their weights are drawn with std 0.5).
    pub brme: PathBuf,
}

/// Texts the tokenizer is trained on: the synthetic PPO prompts and HH-style dialogue turns.
fn corpus() -> impl Iterator<Item = String> {
    let prompts = rrlhf_orchestrator::prompts::synthetic()
        .into_iter()
        .map(|p| format!("{p} Here is a short answer about it."));
    let dialogue =
        (0..200).map(|i| format!("Human: question number {i}?\n\nAssistant: a reply, number {i}."));
    prompts.chain(dialogue)
}

/// The models, built on first use.
pub fn models() -> &'static Models {
    static M: OnceLock<Models> = OnceLock::new();
    M.get_or_init(|| {
        tch::set_num_threads(1);
        let root = tempfile::tempdir().expect("a temporary directory");
        let policy = root.path().join("policy");
        let tok = train_bpe(corpus(), 300, &policy).expect("train the tokenizer");
        let cfg = tiny_config(Arch::Llama, tok.vocab_size() as i64, tok.eos_id, tok.pad_id);
        CausalLm::new(cfg, Placement::default())
            .and_then(|m| m.save(&policy))
            .expect("save the policy");
        let reward_model = |meta: RewardMeta, name: &str, spread: bool| -> PathBuf {
            let rm = RewardModel::from_base(&policy, meta, Placement::default())
                .expect("a reward model on the policy's backbone");
            if spread {
                spread_brme_heads(&rm);
            }
            let dir = root.path().join(name);
            rm.save(&dir).expect("save the reward model");
            tok.save_to(&dir).expect("save the tokenizer");
            dir
        };
        let stage1 = reward_model(RewardMeta::bradley_terry(None), "rm-stage1", false);
        let brme = reward_model(
            RewardMeta::brme(3, 2.0, None).expect("3 heads"),
            "brme",
            true,
        );
        Models {
            _root: root,
            policy,
            stage1,
            brme,
        }
    })
}

/// A tiny random model config with a context of 512 tokens.
fn tiny_config(arch: Arch, vocab: i64, eos: i64, pad: i64) -> ModelConfig {
    let preset = SizePreset::by_name("tiny").expect("the tiny preset");
    ModelConfig::new_random(arch, &preset, vocab, None, eos, Some(pad), 512)
}

/// Freshly initialised BRME heads all but agree; tests of the robust objective need heads that
/// disagree, so their weights are redrawn with std 0.5.
fn spread_brme_heads(rm: &RewardModel) {
    let _guard = tch::no_grad_guard();
    for (name, mut var) in rm.vs.variables() {
        if name.starts_with("brme.") {
            let kind = (tch::Kind::Float, var.device());
            var.copy_(&(tch::Tensor::randn(var.size(), kind) * 0.5));
        }
    }
}

/// A random tiny causal LM of `arch` with `vocab` tokens (EOS 1, pad 0) saved in `dir`, without
/// a tokenizer: for tests that need another architecture or vocabulary than the shared policy.
pub fn causal_lm(dir: &Path, arch: Arch, vocab: i64) -> CausalLm {
    let model =
        CausalLm::new(tiny_config(arch, vocab, 1, 0), Placement::default()).expect("a tiny model");
    model.save(dir).expect("save the model");
    model
}

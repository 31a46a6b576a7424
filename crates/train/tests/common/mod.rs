//! What the reward-model test binaries share: a small preference set and a tiny random Llama
//! with a tokenizer trained on it.

use std::path::Path;

use rrlhf_data::PreferencePair;
use rrlhf_model::tokenizer::train_bpe;
use rrlhf_model::{Arch, CausalLm, ModelConfig, Placement, SizePreset, TextTokenizer};
use tch::Tensor;

pub fn pairs() -> Vec<PreferencePair> {
    (0..24)
        .map(|i| PreferencePair {
            prompt: format!("Human: question {i}?\n\nAssistant:"),
            chosen: format!(" a helpful answer {}", "with detail ".repeat(i % 4)),
            rejected: format!(" no{}", " never".repeat(i % 3)),
            category: None,
        })
        .collect()
}

/// A tokenizer trained on [`pairs`] and a tiny random Llama (seed 1), saved together in `base`.
pub fn tiny_base(base: &Path) -> TextTokenizer {
    let texts = pairs()
        .into_iter()
        .flat_map(|p| [p.prompt.clone() + &p.chosen, p.prompt + &p.rejected]);
    let tok = train_bpe(texts, 300, base).unwrap();
    let preset = SizePreset::by_name("tiny").unwrap();
    let cfg = ModelConfig::new_random_for(Arch::Llama, &preset, &tok, 128);
    tch::manual_seed(1);
    CausalLm::new(cfg, Placement::default())
        .unwrap()
        .save(base)
        .unwrap();
    tok
}

/// A saved model's tensors, sorted by name.
pub fn tensors(dir: &Path) -> Vec<(String, Tensor)> {
    let mut w = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

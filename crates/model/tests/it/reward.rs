//! Reward models: batch-independent scoring, input validation, and a stage-1 checkpoint that
//! transformers opens as `LlamaForSequenceClassification` with the same scores.

use rrlhf_model::reward_model::{RewardMeta, RewardModel};
use rrlhf_model::scoring::{Overlong, RewardScorer};
use rrlhf_model::tokenizer::train_bpe;
use rrlhf_model::{Arch, Batch, LoraConfig, PadSide, Placement, TextTokenizer};
use rrlhf_robust::{Strategy, UncertaintySet};
use tch::Tensor;

use crate::common::{hashed_noise, init, run_python, tiny_model};

/// A tokenizer and a perturbed tiny Llama saved together in `dir`.
fn base_model(dir: &std::path::Path) -> TextTokenizer {
    base_model_of(Arch::Llama, dir)
}

fn base_model_of(arch: Arch, dir: &std::path::Path) -> TextTokenizer {
    let texts =
        (0..100).map(|i| format!("Human: question number {i}?\n\nAssistant: a reply, number {i}."));
    let tok = train_bpe(texts, 300, dir).unwrap();
    tiny_model(arch, true, tok.vocab_size() as i64, 21)
        .save(dir)
        .unwrap();
    tok
}

/// A stage-1 reward model on `arch`'s tiny base in `dir`, with perturbed heads, saved to
/// `dir/rm`: the tokenizer and that directory.
fn saved_stage1(arch: Arch, dir: &std::path::Path) -> (TextTokenizer, std::path::PathBuf) {
    let tok = base_model_of(arch, dir);
    let model =
        RewardModel::from_base(dir, RewardMeta::bradley_terry(None), Placement::default()).unwrap();
    perturb_heads(&model);
    let out = dir.join("rm");
    model.save(&out).unwrap();
    (tok, out)
}

fn perturb_heads(model: &RewardModel) {
    let _guard = tch::no_grad_guard();
    for (i, (name, mut var)) in model.vs.variables().into_iter().enumerate() {
        if name.starts_with("brme.") || name.starts_with("score.") {
            var.copy_(&(hashed_noise(&var.size(), 77 + i as i64) * 0.8));
        }
    }
}

fn samples() -> Vec<(String, String)> {
    (0..7)
        .map(|i| {
            (
                format!("Human: question number {i}?\n\nAssistant:"),
                " a reply".repeat(1 + i % 4),
            )
        })
        .collect()
}

#[test]
fn scores_do_not_depend_on_batch_composition() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let tok = base_model(dir.path());
    let meta = RewardMeta::brme(3, 2.0, None).unwrap();
    let model = RewardModel::from_base(dir.path(), meta, Placement::default()).unwrap();
    perturb_heads(&model);
    let mut scorer = RewardScorer {
        model,
        tokenizer: tok,
        max_len: 64,
        batch_size: 3,
        overlong: Overlong::Reject,
    };
    let batched = scorer
        .score(
            &samples(),
            Strategy::Tradeoff {
                lambda: rrlhf_robust::Lambda::new(0.4).unwrap(),
            },
            UncertaintySet::Mean,
            0,
        )
        .unwrap();
    scorer.batch_size = 1;
    let alone = scorer
        .score(
            &samples(),
            Strategy::Tradeoff {
                lambda: rrlhf_robust::Lambda::new(0.4).unwrap(),
            },
            UncertaintySet::Mean,
            0,
        )
        .unwrap();
    for (a, b) in batched.iter().zip(&alone) {
        for (x, y) in a
            .heads
            .mu
            .iter()
            .chain(&a.heads.sigma)
            .zip(b.heads.mu.iter().chain(&b.heads.sigma))
        {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        assert_eq!(
            a.aggregated.summary.nominal_head,
            b.aggregated.summary.nominal_head
        );
        assert!(a.heads.sigma.iter().all(|&s| s > 0.0));
        let s = a.aggregated.summary;
        assert!((a.aggregated.reward - (0.4 * s.nominal + 0.6 * s.min)).abs() < 1e-6);
    }
    // Samples differ, so the ensemble gives them different rewards.
    assert_ne!(batched[0].heads.mu, batched[3].heads.mu);

    // Bad input is an error naming the sample, never a panic.
    let mut bad = samples();
    bad[2].1 = "  ".into();
    let err = scorer
        .score(&bad, Strategy::Min, UncertaintySet::Mean, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sample 2") && err.contains("empty"), "{err}");
    let long = vec![("Human: hi\n\nAssistant:".to_string(), " word".repeat(200))];
    let err = scorer
        .score(&long, Strategy::Min, UncertaintySet::Mean, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceed the maximum length 64"), "{err}");
    scorer.overlong = Overlong::Truncate;
    assert_eq!(
        scorer
            .score(&long, Strategy::Min, UncertaintySet::Mean, 0)
            .unwrap()
            .len(),
        1
    );
    let err = scorer
        .heads_of_ids(&[vec![1, 2], vec![5, 99_999]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("sample 1") && err.contains("99999"), "{err}");
}

/// Every architecture's stage-1 reward model opens in transformers as its
/// `*ForSequenceClassification` class and scores as rrlhf does.
#[test]
fn stage1_checkpoint_scores_like_transformers_sequence_classification() {
    init();
    for arch in Arch::ALL {
        let dir = tempfile::tempdir().unwrap();
        let (tok, out) = saved_stage1(arch, dir.path());
        let back = RewardModel::from_dir(&out, Placement::default()).unwrap();
        let seqs: Vec<Vec<i64>> = samples()
            .iter()
            .map(|(p, r)| tok.encode_pair(p, r, 64).unwrap().0)
            .collect();
        let batch = Batch::pad(&seqs, tok.pad_id, PadSide::Right, tch::Device::Cpu).unwrap();
        eprintln!("{arch:?}:");
        assert_transformers_scores_like(&back, &batch, &out, None, dir.path());
    }
}

/// Writes `model`'s rewards on `batch` under `scratch` and has transformers score the same ids
/// with `model_dir` (and `adapter` applied by `peft`); hf_parity.py fails beyond 1e-4.
fn assert_transformers_scores_like(
    model: &RewardModel,
    batch: &Batch,
    model_dir: &std::path::Path,
    adapter: Option<&std::path::Path>,
    scratch: &std::path::Path,
) {
    let rewards = tch::no_grad(|| model.forward(batch).unwrap().mu.select(1, 0));
    let inputs = scratch.join("rm_inputs.safetensors");
    Tensor::write_safetensors(
        &[
            ("ids", &batch.ids),
            ("mask", &batch.mask),
            ("rewards", &rewards),
        ],
        &inputs,
    )
    .unwrap();
    let mut args = vec![
        "check-rm".to_owned(),
        "--model".into(),
        model_dir.display().to_string(),
        "--inputs".into(),
        inputs.display().to_string(),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter".into(), a.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = run_python("parity/hf_parity.py", &args);
    eprintln!("{report}");
    assert!(report.contains("reward model: max"), "{report}");
}

/// A LoRA critic's checkpoint (adapters + the value head, PEFT `SEQ_CLS`) applied by `peft` to
/// the stage-1 model scores like rrlhf's adapted model.
#[test]
fn a_lora_critic_adapter_scores_like_peft_sequence_classification() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (tok, rm) = saved_stage1(Arch::Llama, dir.path());
    let mut critic = RewardModel::from_dir(&rm, Placement::default()).unwrap();
    critic
        .add_lora(&LoraConfig::new(4, 8.0, &["q_proj", "o_proj", "gate_proj"]))
        .unwrap();
    {
        let _guard = tch::no_grad_guard();
        for (i, (name, mut var)) in critic.vs.variables().into_iter().enumerate() {
            if name.contains(".lora_B.") || name.starts_with("score.") {
                var.copy_(&(hashed_noise(&var.size(), 300 + i as i64) * 0.3));
            }
        }
    }
    let adapter = dir.path().join("adapter");
    critic
        .save_trainable(&adapter, rm.to_str().unwrap())
        .unwrap();
    let seqs: Vec<Vec<i64>> = samples()
        .iter()
        .map(|(p, r)| tok.encode_pair(p, r, 64).unwrap().0)
        .collect();
    let batch = Batch::pad(&seqs, tok.pad_id, PadSide::Right, tch::Device::Cpu).unwrap();
    assert_transformers_scores_like(&critic, &batch, &rm, Some(&adapter), dir.path());
}

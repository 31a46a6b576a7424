//! Gradient accumulation in both reward-model stages: micro-batches of 1, 2 and 4 pairs inside
//! batches of 4 give the same updates as none (within 1e-5). One test in its own binary, since
//! the stages seed libtorch's global generator and tests in one process would share it.

mod common;

use std::path::Path;

use common::{pairs, tensors, tiny_base};
use rrlhf_data::PreferencePair;
use rrlhf_model::Placement;
use rrlhf_train::rm::{RmConfig, train_stage1, train_stage2};
use tch::Tensor;

/// `train_stage1` or `train_stage2`.
type Stage = fn(
    &Path,
    &rrlhf_model::TextTokenizer,
    &Path,
    Vec<PreferencePair>,
    &RmConfig,
    Placement,
    &Path,
) -> rrlhf_train::Result<rrlhf_train::rm::RmOutcome>;

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((_, x), (_, y))| {
            (x.to_kind(tch::Kind::Float) - y.to_kind(tch::Kind::Float))
                .abs()
                .max()
                .double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn micro_batches_give_the_same_updates_in_both_stages() {
    tch::set_num_threads(1);
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    let tok = tiny_base(&base);
    let data = root.path().join("pairs.jsonl");
    let rm = |micro: usize| RmConfig {
        steps: Some(3),
        batch_size: 4,
        micro_batch_size: micro,
        lr: 1e-3,
        eval_fraction: 0.25,
        eval_every: 0,
        heads: 3,
        show_progress: false,
        ..RmConfig::default()
    };
    let stage = |micro: usize, two: bool| {
        let out = root
            .path()
            .join(format!("stage{}-{micro}", if two { 2 } else { 1 }));
        // Stage 2 starts from the stage-1 model trained without accumulation.
        let (train, from) = if two {
            (train_stage2 as Stage, root.path().join("stage1-0"))
        } else {
            (train_stage1 as Stage, base.clone())
        };
        let placement = Placement::default();
        train(&from, &tok, &data, pairs(), &rm(micro), placement, &out).unwrap();
        tensors(&out)
    };
    for two in [false, true] {
        let reference = stage(0, two);
        for micro in [1, 2, 4] {
            let diff = max_diff(&stage(micro, two), &reference);
            let which = if two { 2 } else { 1 };
            assert!(
                diff < 1e-5,
                "stage {which}, micro-batches of {micro}: weights differ by {diff}"
            );
        }
    }
}

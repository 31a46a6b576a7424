//! Activation checkpointing changes memory, not maths: a training forward and backward through
//! the recomputed layers gives the loss and every parameter gradient of the plain graph.

use rrlhf_model::{Arch, Batch, CausalLm, PadSide};
use tch::Kind;

use crate::common::{init, tiny_model};

/// Mean token NLL of a right-padded batch and the gradients it leaves, by parameter name.
fn loss_and_grads(model: &CausalLm, batch: &Batch) -> (f64, Vec<(String, tch::Tensor)>) {
    for var in model.vs.trainable_variables() {
        let _ = var.grad().f_zero_();
    }
    let logp = model.token_logprobs(batch);
    let mask = batch.attention_mask().unwrap().narrow(1, 1, logp.size()[1]);
    let loss = -(logp * &mask).sum(Kind::Float) / mask.sum(Kind::Float);
    loss.backward();
    let mut grads: Vec<(String, tch::Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(name, var)| (name, var.grad().copy()))
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    (loss.double_value(&[]), grads)
}

#[test]
fn checkpointed_layers_give_the_same_loss_and_gradients() {
    init();
    for (arch, tied) in [(Arch::Llama, false), (Arch::Qwen2, true)] {
        let mut model = tiny_model(arch, tied, 64, 7);
        let seqs = vec![
            vec![3i64, 9, 27, 4, 11, 5],
            vec![8, 2, 19],
            vec![1, 44, 6, 30],
        ];
        let batch = Batch::pad(&seqs, 0, PadSide::Right, model.device()).unwrap();
        let (plain_loss, plain) = loss_and_grads(&model, &batch);
        model.backbone.activation_checkpointing = true;
        let (loss, grads) = loss_and_grads(&model, &batch);
        assert!((loss - plain_loss).abs() < 1e-5, "{loss} vs {plain_loss}");
        assert_eq!(grads.len(), plain.len());
        for ((name, got), (_, want)) in grads.iter().zip(&plain) {
            let diff = (got - want).abs().max().double_value(&[]);
            assert!(
                diff < 1e-5,
                "{arch:?}: gradient of {name} differs by {diff}"
            );
            assert!(
                want.abs().max().double_value(&[]) > 0.0,
                "{name} got no gradient"
            );
        }
    }
}

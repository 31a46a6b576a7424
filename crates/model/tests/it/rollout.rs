//! The continuous-batching engine: with fewer slots than prompts (so finished rows hand their
//! slots to waiting prompts and the rest are compacted), every prompt gets the tokens and
//! log-probs it gets when generated alone, greedy and sampled with its own seed.

use rrlhf_model::generate::prompt_seed;
use rrlhf_model::rollout::{RolloutOptions, generate_seeded};
use rrlhf_model::{Arch, CausalLm, FinishReason, Generation, SamplingParams};

use crate::common::{init, tiny_model};

/// Prompts of lengths 1–13, more of them than the engine's slots.
fn prompts() -> Vec<Vec<i64>> {
    (0..9i64)
        .map(|i| {
            (0..1 + (i * 5) % 13)
                .map(|t| (t * 11 + 3 * i + 1) % 96)
                .collect()
        })
        .collect()
}

/// The engine with at most `slots` rows decoding at once.
fn slots(slots: usize) -> RolloutOptions {
    RolloutOptions {
        max_slots: slots,
        prefill_tokens: 24,
        ..Default::default()
    }
}

/// Generates, checking that each sample is streamed once.
fn run(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    seeds: &[u64],
    p: &SamplingParams,
    opts: &RolloutOptions,
) -> Vec<Generation> {
    let mut streamed = vec![];
    let out = generate_seeded(model, prompts, seeds, 0, p, opts, |g| {
        streamed.push(g.index)
    })
    .unwrap();
    streamed.sort();
    assert_eq!(
        streamed,
        (0..prompts.len()).collect::<Vec<_>>(),
        "each sample streamed once"
    );
    out
}

#[test]
fn continuous_batching_equals_generating_each_prompt_alone() {
    init();
    let model = tiny_model(Arch::Llama, false, 96, 11);
    let seeds: Vec<u64> = (0..prompts().len()).map(|i| prompt_seed(7, i)).collect();
    // A stop token that some greedy rows emit early, so rows finish at different steps.
    let probe = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 10,
        ..Default::default()
    };
    let free = run(&model, &prompts(), &seeds, &probe, &slots(9));
    let stop = free[2].tokens[3];
    for (temperature, top_k, top_p) in [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.9, 20, 0.95)] {
        let params = SamplingParams {
            temperature,
            top_k,
            top_p,
            stop_ids: vec![stop],
            max_new_tokens: 10,
            ..Default::default()
        };
        let together = run(&model, &prompts(), &seeds, &params, &slots(3));
        assert!(
            together.iter().any(|g| g.finish == FinishReason::Stop)
                && together.iter().any(|g| g.finish == FinishReason::Length),
            "rows end at different steps (t = {temperature})"
        );
        for (i, prompt) in prompts().iter().enumerate() {
            let alone = run(
                &model,
                std::slice::from_ref(prompt),
                &seeds[i..=i],
                &params,
                &slots(1),
            );
            let (a, b) = (&together[i], &alone[0]);
            assert_eq!(a.index, i);
            assert_eq!(a.tokens, b.tokens, "prompt {i}, t = {temperature}");
            assert_eq!(a.finish, b.finish, "prompt {i}, t = {temperature}");
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!(
                    (x - y).abs() < 1e-5,
                    "prompt {i}, t = {temperature}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn the_cache_budget_limits_the_slots_and_bad_requests_are_named() {
    init();
    let model = tiny_model(Arch::Qwen2, true, 96, 12);
    let seeds: Vec<u64> = (0..prompts().len()).map(|i| prompt_seed(3, i)).collect();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 6,
        ..Default::default()
    };
    let wide = run(&model, &prompts(), &seeds, &params, &slots(256));
    // A budget of one slot's cache: the prompts run one at a time, with the same results.
    let one = rrlhf_model::kv_cache::KvCache::bytes(&model.cfg, 1, 13 + 6, model.kind());
    let opts = RolloutOptions {
        kv_cache_bytes: one,
        ..Default::default()
    };
    let narrow = run(&model, &prompts(), &seeds, &params, &opts);
    for (a, b) in wide.iter().zip(&narrow) {
        assert_eq!(a.tokens, b.tokens);
    }
    let err =
        generate_seeded(&model, &prompts(), &seeds[..2], 0, &params, &opts, |_| {}).unwrap_err();
    assert!(err.to_string().contains("2 seeds for 9 prompts"), "{err}");
    let err = generate_seeded(
        &model,
        &[vec![1], vec![]],
        &[1, 2],
        0,
        &params,
        &opts,
        |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("prompt 1 is empty"), "{err}");
}

/// What the engine reports as the policy's log-prob of each drawn token is what a training
/// forward pass over the finished sequence computes, however the sampler reshaped the
/// distribution (temperature, top-k/top-p, the early-stop mask): PPO can take it as the
/// behaviour log-prob without a second pass.
#[test]
fn policy_logprobs_are_the_training_forwards() {
    init();
    let model = tiny_model(Arch::Llama, false, 96, 13);
    let seeds: Vec<u64> = (0..prompts().len()).map(|i| prompt_seed(5, i)).collect();
    for (temperature, top_k, top_p, min_new) in [
        (1.0, 0, 1.0, 0),
        (0.7, 20, 0.9, 0),
        (1.0, 0, 1.0, 6),
        (0.0, 0, 1.0, 0),
    ] {
        let params = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_new_tokens: min_new,
            stop_ids: vec![5, 17],
            max_new_tokens: 8,
            ..Default::default()
        };
        let out = run(&model, &prompts(), &seeds, &params, &slots(4));
        let pairs: Vec<(Vec<i64>, Vec<i64>)> = prompts()
            .into_iter()
            .zip(&out)
            .map(|(p, g)| (p, g.tokens.clone()))
            .collect();
        let forward = model.response_logprobs(&pairs).unwrap();
        for (g, want) in out.iter().zip(&forward) {
            assert_eq!(g.policy_logprobs.len(), g.tokens.len());
            for (x, y) in g.policy_logprobs.iter().zip(want) {
                assert!(
                    (x - y).abs() < 1e-4,
                    "prompt {}, t = {temperature}, k = {top_k}, p = {top_p}, min {min_new}: \
                     {x} vs {y}",
                    g.index
                );
            }
            if !params.reshapes() {
                assert_eq!(g.policy_logprobs, g.logprobs, "plain sampling draws from π");
            }
        }
    }
}

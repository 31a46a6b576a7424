//! KV-cache sampling: greedy decoding equals full recomputation; stop ids and length limits hold.

use rrlhf_model::generate::sample_next;
use rrlhf_model::{Arch, CausalLm, FinishReason, SamplingParams, generate};
use tch::{Kind, Tensor};

use crate::common::{init, tiny_model};

/// Greedy continuation by recomputing the whole sequence at every step (no cache, no padding).
fn greedy_full_recompute(model: &CausalLm, prompt: &[i64], steps: usize) -> Vec<i64> {
    let _guard = tch::no_grad_guard();
    let mut seq = prompt.to_vec();
    for _ in 0..steps {
        let n = seq.len() as i64;
        let ids = Tensor::from_slice(&seq).view([1, n]);
        let pos = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).view([1, n]);
        let logits = model.logits(&ids, None, &pos, None);
        seq.push(logits.get(0).get(n - 1).argmax(-1, false).int64_value(&[]));
    }
    seq[prompt.len()..].to_vec()
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![5, 17, 33, 2, 8, 61, 40],
        vec![9],
        vec![12, 44, 3, 50],
        vec![7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
    ]
}

#[test]
fn greedy_with_cache_equals_full_recomputation() {
    init();
    for (arch, tied) in [(Arch::Llama, false), (Arch::Qwen2, true)] {
        let model = tiny_model(arch, tied, 96, 5);
        let params = SamplingParams {
            temperature: 0.0,
            max_new_tokens: 12,
            ..Default::default()
        };
        let mut streamed = vec![];
        let out = generate(&model, &prompts(), 0, &params, |g| streamed.push(g.index)).unwrap();
        for (i, prompt) in prompts().iter().enumerate() {
            assert_eq!(
                out[i].tokens,
                greedy_full_recompute(&model, prompt, 12),
                "{arch:?} prompt {i}"
            );
            assert_eq!(out[i].finish, FinishReason::Length);
            assert_eq!(out[i].logprobs.len(), 12);
            assert!(
                out[i]
                    .logprobs
                    .iter()
                    .all(|&lp| lp <= 0.0 && lp.is_finite())
            );
        }
        streamed.sort();
        assert_eq!(streamed, vec![0, 1, 2, 3], "every sample streamed once");
    }
}

/// A tiny model, 10 greedy tokens per prompt without stop ids, and a stop token: the third
/// token row 0 emits (rows that never emit it run to the limit).
fn greedy_rows_and_a_stop() -> (
    CausalLm,
    SamplingParams,
    Vec<rrlhf_model::generate::Generation>,
    i64,
) {
    init();
    let model = tiny_model(Arch::Llama, true, 96, 6);
    let greedy = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 10,
        ..Default::default()
    };
    let free = generate(&model, &prompts(), 0, &greedy, |_| {}).unwrap();
    let stop = free[0].tokens[2];
    (model, greedy, free, stop)
}

#[test]
fn stop_ids_end_rows_early_and_the_rest_continue() {
    let (model, greedy, free, stop) = greedy_rows_and_a_stop();
    let params = SamplingParams {
        stop_ids: vec![stop],
        ..greedy.clone()
    };
    let mut order = vec![];
    let out = generate(&model, &prompts(), 0, &params, |g| order.push(g.index)).unwrap();
    for (row, full) in out.iter().zip(&free) {
        match full.tokens.iter().position(|&t| t == stop) {
            Some(at) => {
                assert_eq!(row.tokens, full.tokens[..=at], "row {}", row.index);
                assert_eq!(row.finish, FinishReason::Stop);
            }
            None => {
                assert_eq!(row.tokens, full.tokens);
                assert_eq!(row.finish, FinishReason::Length);
            }
        }
    }
    assert_eq!(
        order[0], 0,
        "the row that stopped first is streamed first: {order:?}"
    );
}

/// `min_new_tokens` keeps the stop tokens out until a row has that many tokens: a greedy row
/// that would stop at its third token runs on, and never emits a stop token before the bound;
/// sampled rows too. A bound above `max_new_tokens` is refused.
#[test]
fn min_new_tokens_masks_the_stop_tokens_until_the_bound() {
    let (model, greedy, free, stop) = greedy_rows_and_a_stop();
    for (temperature, seed) in [(0.0, None), (1.0, Some(3))] {
        let params = SamplingParams {
            temperature,
            seed,
            stop_ids: vec![stop],
            min_new_tokens: 6,
            ..greedy.clone()
        };
        let out = generate(&model, &prompts(), 0, &params, |_| {}).unwrap();
        for row in &out {
            assert!(row.tokens.len() >= 6, "row {} ended early", row.index);
            assert!(
                !row.tokens[..5].contains(&stop),
                "row {}: a stop token before the bound: {:?}",
                row.index,
                row.tokens
            );
            assert!(row.logprobs.iter().all(|lp| lp.is_finite()));
        }
        if temperature == 0.0 {
            // Row 0 would have stopped at token 3; now it continues with the next best token.
            assert_ne!(out[0].tokens[2], stop);
            assert_eq!(out[0].tokens[..2], free[0].tokens[..2]);
        }
    }
    let too_many = SamplingParams {
        min_new_tokens: 11,
        ..greedy
    };
    let err = generate(&model, &prompts(), 0, &too_many, |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("min_new_tokens (11) exceeds max_new_tokens (10)"),
        "{err}"
    );
}

#[test]
fn seeded_sampling_is_reproducible_and_filters_hold() {
    init();
    let model = tiny_model(Arch::Qwen2, false, 96, 7);
    let params = SamplingParams {
        temperature: 1.3,
        top_k: 20,
        top_p: 0.9,
        max_new_tokens: 8,
        seed: Some(42),
        ..Default::default()
    };
    let a = generate(&model, &prompts(), 0, &params, |_| {}).unwrap();
    let b = generate(&model, &prompts(), 0, &params, |_| {}).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.tokens, y.tokens);
    }
    let c = generate(
        &model,
        &prompts(),
        0,
        &SamplingParams {
            seed: Some(43),
            ..params.clone()
        },
        |_| {},
    )
    .unwrap();
    assert!(
        a.iter().zip(&c).any(|(x, y)| x.tokens != y.tokens),
        "another seed, other samples"
    );
    // Sampling follows the distribution: two tokens with probabilities ¼ and ¾.
    let two = Tensor::from_slice(&[0.25f32.ln(), 0.75f32.ln()])
        .view([1, 2])
        .repeat([4000, 1]);
    let mut rng = rrlhf_robust::rng::Rng::new(5);
    let mut draws = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.uniform()).collect() };
    let (drawn, _) = sample_next(&two, &SamplingParams::default(), &draws(4000)).unwrap();
    let share = drawn
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!((share - 0.75).abs() < 0.03, "share of token 1: {share}");
    // top_k = 1 is greedy whatever the temperature.
    let logits = Tensor::randn([3, 50], (Kind::Float, tch::Device::Cpu));
    let k1 = SamplingParams {
        temperature: 2.0,
        top_k: 1,
        ..Default::default()
    };
    let (tok, lp) = sample_next(&logits, &k1, &draws(3)).unwrap();
    assert!(tok.equal(&logits.argmax(-1, false)));
    assert!(
        lp.abs().max().double_value(&[]) < 1e-6,
        "a single candidate has probability 1"
    );
    // A tiny top_p keeps only the most likely token too.
    let p = SamplingParams {
        top_p: 1e-6,
        ..Default::default()
    };
    assert!(
        sample_next(&logits, &p, &draws(3))
            .unwrap()
            .0
            .equal(&logits.argmax(-1, false))
    );
    // Bad parameters are errors, not panics.
    let bad = SamplingParams {
        top_p: 0.0,
        ..Default::default()
    };
    assert!(
        generate(&model, &prompts(), 0, &bad, |_| {})
            .unwrap_err()
            .to_string()
            .contains("top_p")
    );
    let err = generate(&model, &[vec![1000]], 0, &SamplingParams::default(), |_| {}).unwrap_err();
    assert!(err.to_string().contains("1000"), "{err}");
}

/// Many sequences scored in one call run in length-sorted passes under a token budget; every
/// sequence gets what it gets alone, within 1e-5, in the call's order.
#[test]
fn log_probs_in_length_buckets_equal_one_sequence_at_a_time() {
    init();
    let model = tiny_model(Arch::Llama, false, 96, 8);
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = (0..12)
        .map(|i: i64| {
            let prompt = (0..1 + (i * 5) % 7).map(|t| (t * 13 + i) % 96).collect();
            let response = (0..1 + (i * 3) % 5).map(|t| (t * 7 + 2 * i) % 96).collect();
            (prompt, response)
        })
        .collect();
    let _guard = tch::no_grad_guard();
    // A 20-token budget splits the 12 sequences (2–12 tokens) into several passes.
    let passes = rrlhf_model::batch::length_buckets(
        &pairs
            .iter()
            .map(|(p, r)| p.len() + r.len())
            .collect::<Vec<_>>(),
        20,
    );
    assert!(passes.len() > 3, "{passes:?}");
    let together = model.response_logprobs_in_passes(&pairs, 20).unwrap();
    for (i, pair) in pairs.iter().enumerate() {
        let alone = model.response_logprobs(std::slice::from_ref(pair)).unwrap();
        assert_eq!(together[i].len(), pair.1.len(), "sequence {i}");
        for (a, b) in together[i].iter().zip(&alone[0]) {
            assert!((a - b).abs() < 1e-5, "sequence {i}: {a} vs {b}");
        }
        // The scorer applies the LM head from the prompt's end only; every position's is the
        // same as in the full-sequence log-probs.
        let seq: Vec<i64> = pair.0.iter().chain(&pair.1).copied().collect();
        let batch =
            rrlhf_model::Batch::pad(&[seq], 0, rrlhf_model::PadSide::Right, tch::Device::Cpu)
                .unwrap();
        let full = rrlhf_model::batch::rows_f32(&model.token_logprobs(&batch)).unwrap();
        let start = pair.0.len() - 1;
        for (a, b) in together[i].iter().zip(&full[0][start..]) {
            assert!(
                (a - b).abs() < 1e-5,
                "sequence {i}, full forward: {a} vs {b}"
            );
        }
    }
}

//! End-to-end tests of the actor service on 127.0.0.1:0 with a real tiny model and tokenizer:
//! streamed generation, log-probabilities, PPO training, save → load, back to the start
//! weights, bad input.

mod fuzz;

use std::sync::atomic::Ordering;

use rrlhf_actor_service::{ActorServer, ActorServiceConfig};
use rrlhf_model::TextTokenizer;
use rrlhf_proto::actor::v1::actor_service_client::ActorServiceClient;
use rrlhf_proto::actor::v1::{
    GenerateRequest, GeneratedSample, InfoRequest, Prompt, SamplingParams, TrainRequest,
    TrainSample,
};
use rrlhf_proto::common::v1::{
    LoadCheckpointRequest, LogProbsRequest, LogProbsResponse, SaveCheckpointRequest, Sequence,
};
use rrlhf_testkit::models::models;
use rrlhf_testkit::serve::spawn;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

fn prompt(id: &str, ids: &[i64]) -> Prompt {
    Prompt {
        id: id.into(),
        prompt_ids: ids.to_vec(),
        text: String::new(),
    }
}

fn greedy(max_new: u32, stop: Vec<i64>) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: max_new,
        stop_ids: stop,
        seed: Some(1),
        min_new_tokens: 0,
    }
}

async fn collect(
    c: &mut ActorServiceClient<Channel>,
    req: GenerateRequest,
) -> Vec<GeneratedSample> {
    let mut stream = c.generate(req).await.unwrap().into_inner();
    let mut out = vec![];
    while let Some(s) = stream.message().await.unwrap() {
        out.push(s);
    }
    out
}

async fn logprobs(c: &mut ActorServiceClient<Channel>, seqs: &[Sequence]) -> Vec<Vec<f32>> {
    rows(
        c.log_probs(LogProbsRequest {
            sequences: seqs.to_vec(),
        })
        .await
        .unwrap()
        .into_inner(),
    )
}

/// Each sequence's row of log-probabilities, in request order.
fn rows(response: LogProbsResponse) -> Vec<Vec<f32>> {
    response.results.into_iter().map(|r| r.logprobs).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_streams_scores_trains_and_checkpoints() {
    let policy = &models().policy;
    let root = tempfile::tempdir().unwrap();
    let tok = TextTokenizer::load(policy).unwrap();
    let served = spawn::<ActorServer>(ActorServiceConfig {
        model: policy.clone(),
        max_length: 512,
        ..Default::default()
    })
    .await;
    let running = &served.running;
    let mut c = ActorServiceClient::connect(served.url()).await.unwrap();
    assert_eq!(
        served.health("rrlhf.actor.v1.ActorService").await,
        ServingStatus::Serving,
        "SERVING once loaded and warm"
    );

    // Pick a stop token that ends prompt "short" at its 2nd token but never appears in "long".
    let prompts = vec![
        prompt("short", &[5, 17, 33]),
        prompt("long", &[9, 40, 41, 42]),
    ];
    let free = collect(
        &mut c,
        GenerateRequest {
            prompts: prompts.clone(),
            sampling: Some(greedy(300, vec![9999 % 300])),
            samples_per_prompt: 1,
        },
    )
    .await;
    let short = free.iter().find(|s| s.id == "short").unwrap();
    let long = free.iter().find(|s| s.id == "long").unwrap();
    let stop = short.token_ids[1];
    assert!(
        !long.token_ids.contains(&stop)
            || long.token_ids.iter().position(|&t| t == stop).unwrap() > 100,
        "fixture: pick another stop"
    );
    let limit = long
        .token_ids
        .iter()
        .position(|&t| t == stop)
        .map_or(300, |p| p as u32);

    // The short sample arrives while the batch is still generating the long one.
    let batches_before = running.engine.stats.batches.load(Ordering::SeqCst);
    let mut stream = c
        .generate(GenerateRequest {
            prompts: prompts.clone(),
            sampling: Some(greedy(limit.max(50), vec![stop])),
            samples_per_prompt: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let stops_at = short.token_ids.iter().position(|&t| t == stop).unwrap() + 1;
    assert_eq!(
        (
            first.id.as_str(),
            first.finish_reason.as_str(),
            first.token_ids.len()
        ),
        ("short", "stop", stops_at)
    );
    assert_eq!(
        running.engine.stats.batches.load(Ordering::SeqCst),
        batches_before,
        "the generate batch had not finished when the first sample was streamed"
    );
    let second = stream.message().await.unwrap().unwrap();
    assert_eq!(second.id, "long");
    assert!(second.token_ids.len() > 10, "{}", second.token_ids.len());
    assert!(stream.message().await.unwrap().is_none());

    // Sampled at temperature 1 without filtering, the reported logprobs are the policy's.
    let sampled = collect(
        &mut c,
        GenerateRequest {
            prompts: prompts.clone(),
            sampling: Some(SamplingParams {
                temperature: 1.0,
                max_new_tokens: 12,
                seed: Some(3),
                ..Default::default()
            }),
            samples_per_prompt: 2,
        },
    )
    .await;
    assert_eq!(sampled.len(), 4);
    for s in &sampled {
        assert_eq!(s.prompt_ids, prompts[s.prompt_index as usize].prompt_ids);
    }

    // A text prompt goes through the actor's tokenizer; the sample says which ids it used.
    let from_text = collect(
        &mut c,
        GenerateRequest {
            prompts: vec![Prompt {
                id: "text".into(),
                prompt_ids: vec![],
                text: "Human: hello there\n\nAssistant:".into(),
            }],
            sampling: Some(greedy(3, vec![])),
            samples_per_prompt: 1,
        },
    )
    .await;
    assert_eq!(
        from_text[0].prompt_ids,
        tok.encode("Human: hello there\n\nAssistant:").unwrap()
    );
    let seqs: Vec<Sequence> = sampled
        .iter()
        .map(|s| Sequence {
            id: s.id.clone(),
            prompt_ids: prompts[s.prompt_index as usize].prompt_ids.clone(),
            response_ids: s.token_ids.clone(),
        })
        .collect();
    let lp = logprobs(&mut c, &seqs).await;
    for (s, l) in sampled.iter().zip(&lp) {
        for (a, b) in s.logprobs.iter().zip(l) {
            assert!((a - b).abs() < 1e-4, "generate {a} vs LogProbs {b}");
        }
    }

    // PPO: positive advantages on one response raise its log-probabilities.
    let target = seqs[0].clone();
    let old = lp[0].clone();
    let at_the_start = logprobs(&mut c, std::slice::from_ref(&target)).await;
    let req = TrainRequest {
        samples: vec![TrainSample {
            sequence: Some(target.clone()),
            old_logprobs: old.clone(),
            advantages: vec![1.0; old.len()],
        }],
        minibatch_size: 1,
        epochs: 8,
        lr: 1e-3,
        clip_eps: 0.2,
        entropy_coef: 0.0,
        max_grad_norm: 1.0,
        seed: 0,
        micro_batch_size: 0,
    };
    let stats = c.train(req.clone()).await.unwrap().into_inner();
    assert_eq!(stats.updates, 8);
    assert!(
        stats.policy_loss_last < stats.policy_loss_first,
        "{stats:?}"
    );
    assert!(
        (stats.policy_loss_first + 1.0).abs() < 1e-4,
        "ratio 1 at the first step: loss = −mean(A)"
    );
    let after = logprobs(&mut c, std::slice::from_ref(&target)).await;
    assert!(after[0].iter().sum::<f32>() > old.iter().sum::<f32>());

    // Save → train → load restores the saved policy exactly.
    let ckpt = root.path().join("actor-ckpt");
    c.save_checkpoint(SaveCheckpointRequest {
        path: ckpt.display().to_string(),
    })
    .await
    .unwrap();
    assert!(ckpt.join("tokenizer.json").exists());
    c.train(req.clone()).await.unwrap();
    let trained_after_save = logprobs(&mut c, std::slice::from_ref(&target)).await;
    assert_ne!(trained_after_save, after);
    c.load_checkpoint(LoadCheckpointRequest {
        path: ckpt.display().to_string(),
        start_weights: false,
    })
    .await
    .unwrap();
    assert_eq!(logprobs(&mut c, std::slice::from_ref(&target)).await, after);
    // AdamW's moments came back with the weights: the same update lands on the same policy.
    c.train(req.clone()).await.unwrap();
    assert_eq!(
        logprobs(&mut c, std::slice::from_ref(&target)).await,
        trained_after_save
    );

    // What a new run starts from: the start weights, with fresh AdamW moments, so the first
    // update again lands where it did on the fresh service. `Info` says which the service holds.
    let at_start = async |c: &mut ActorServiceClient<Channel>| {
        let info = c.info(InfoRequest {}).await.unwrap().into_inner();
        info.rank.unwrap().start_weights
    };
    assert!(!at_start(&mut c).await, "trained");
    let with_path = c
        .load_checkpoint(LoadCheckpointRequest {
            path: ckpt.display().to_string(),
            start_weights: true,
        })
        .await
        .unwrap_err();
    assert_eq!(with_path.code(), Code::InvalidArgument);
    assert!(with_path.message().starts_with("path:"), "{with_path:?}");
    c.load_checkpoint(LoadCheckpointRequest {
        path: String::new(),
        start_weights: true,
    })
    .await
    .unwrap();
    assert!(at_start(&mut c).await, "reset");
    assert_eq!(
        logprobs(&mut c, std::slice::from_ref(&target)).await,
        at_the_start
    );
    c.train(req.clone()).await.unwrap();
    assert_eq!(logprobs(&mut c, std::slice::from_ref(&target)).await, after);
    assert!(!at_start(&mut c).await);

    // Bad input is INVALID_ARGUMENT naming the field.
    let bad_gen = [
        (
            GenerateRequest {
                prompts: vec![],
                sampling: Some(greedy(4, vec![])),
                samples_per_prompt: 1,
            },
            "prompts",
        ),
        (
            GenerateRequest {
                prompts: vec![prompt("x", &[])],
                sampling: Some(greedy(4, vec![])),
                samples_per_prompt: 1,
            },
            "prompts[0]",
        ),
        (
            GenerateRequest {
                prompts: vec![prompt("x", &[1])],
                sampling: Some(greedy(0, vec![])),
                samples_per_prompt: 1,
            },
            "sampling.max_new_tokens",
        ),
        (
            GenerateRequest {
                prompts: vec![prompt("x", &[1])],
                sampling: Some(SamplingParams {
                    top_p: 2.0,
                    max_new_tokens: 3,
                    ..Default::default()
                }),
                samples_per_prompt: 1,
            },
            "sampling.top_p",
        ),
        (
            GenerateRequest {
                prompts: vec![prompt("x", &[1])],
                sampling: Some(SamplingParams {
                    min_new_tokens: 4,
                    ..greedy(3, vec![])
                }),
                samples_per_prompt: 1,
            },
            "sampling.min_new_tokens",
        ),
        (
            GenerateRequest {
                prompts: vec![prompt("x", &[1])],
                sampling: Some(greedy(600, vec![])),
                samples_per_prompt: 1,
            },
            "prompts[0]",
        ),
    ];
    for (req, field) in bad_gen {
        let err = c.generate(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(field),
            "`{}` should name {field}",
            err.message()
        );
    }
    let mut bad = req.clone();
    bad.samples[0].advantages.pop();
    let err = c.train(bad).await.unwrap_err();
    assert!(
        err.message().starts_with("samples[0].advantages"),
        "{}",
        err.message()
    );
    let mut bad = req;
    bad.clip_eps = 0.0;
    assert!(
        c.train(bad)
            .await
            .unwrap_err()
            .message()
            .starts_with("clip_eps")
    );

    served.stop().await;
}

/// A bf16 actor whose checkpoint is loaded by a fresh service continues bit-identically: the
/// checkpoint carries the fp32 master weights and moments, so the restarted optimizer does not
/// start from the rounded bf16 weights. At lr 1e-5 most updates are below bf16's resolution,
/// which is exactly where a master taken from the bf16 weights would differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bf16_checkpoint_resumes_bit_identically_on_a_fresh_service() {
    let root = tempfile::tempdir().unwrap();
    let bf16 = |model: &std::path::Path| {
        let mut cfg = ActorServiceConfig {
            model: model.to_path_buf(),
            max_length: 128,
            ..Default::default()
        };
        cfg.engine.dtype = "bf16".into();
        cfg
    };
    let target = Sequence {
        id: "t".into(),
        prompt_ids: vec![5, 17, 33, 8],
        response_ids: vec![40, 41, 42, 9, 12, 7],
    };
    let first = spawn::<ActorServer>(bf16(&models().policy)).await;
    let mut c = ActorServiceClient::connect(first.url()).await.unwrap();
    let old = logprobs(&mut c, std::slice::from_ref(&target)).await[0].clone();
    let req = TrainRequest {
        samples: vec![TrainSample {
            sequence: Some(target.clone()),
            advantages: (0..old.len())
                .map(|t| if t % 2 == 0 { 1.0 } else { -0.5 })
                .collect(),
            old_logprobs: old,
        }],
        minibatch_size: 1,
        epochs: 4,
        lr: 1e-5,
        clip_eps: 0.2,
        entropy_coef: 0.0,
        max_grad_norm: 1.0,
        seed: 0,
        micro_batch_size: 0,
    };
    c.train(req.clone()).await.unwrap();
    let ckpt = root.path().join("bf16-ckpt");
    c.save_checkpoint(SaveCheckpointRequest {
        path: ckpt.display().to_string(),
    })
    .await
    .unwrap();
    c.train(req.clone()).await.unwrap();
    let continued = logprobs(&mut c, std::slice::from_ref(&target)).await;
    first.stop().await;

    let second = spawn::<ActorServer>(bf16(&ckpt)).await;
    let mut c = ActorServiceClient::connect(second.url()).await.unwrap();
    c.load_checkpoint(LoadCheckpointRequest {
        path: ckpt.display().to_string(),
        start_weights: false,
    })
    .await
    .unwrap();
    c.train(req).await.unwrap();
    assert_eq!(
        logprobs(&mut c, std::slice::from_ref(&target)).await,
        continued,
        "the resumed bf16 run must continue exactly"
    );
    second.stop().await;
}

/// With LoRA, `BaseLogProbs` is the reference: the actor's frozen base gives the log-probs a
/// separate reference service on the same SFT model gives, after PPO has moved the adapters
/// (and so `LogProbs`). Back at its start weights it trains as a fresh one. An actor without
/// adapters refuses `BaseLogProbs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_actor_serves_its_base_as_the_reference() {
    use rrlhf_proto::reference::v1::reference_service_client::ReferenceServiceClient;
    use rrlhf_reference_service::{ReferenceServer, ReferenceServiceConfig};

    let policy = &models().policy;
    let mut cfg = ActorServiceConfig {
        model: policy.clone(),
        max_length: 128,
        ..Default::default()
    };
    cfg.service.lora = Some(rrlhf_model::LoraConfig::new(
        4,
        16.0,
        &["q_proj", "v_proj", "up_proj"],
    ));
    let actor = spawn::<ActorServer>(cfg).await;
    let reference = spawn::<ReferenceServer>(ReferenceServiceConfig {
        model: policy.clone(),
        max_length: 128,
        ..Default::default()
    })
    .await;
    let mut a = ActorServiceClient::connect(actor.url()).await.unwrap();
    let mut r = ReferenceServiceClient::connect(reference.url())
        .await
        .unwrap();
    let seqs = vec![
        Sequence {
            id: "a".into(),
            prompt_ids: vec![5, 17, 33],
            response_ids: vec![40, 41, 42, 9],
        },
        Sequence {
            id: "b".into(),
            prompt_ids: vec![8, 2],
            response_ids: vec![19, 6, 30, 11, 3],
        },
    ];
    let old = logprobs(&mut a, &seqs).await;
    let ppo = TrainRequest {
        samples: seqs
            .iter()
            .zip(&old)
            .map(|(s, lp)| TrainSample {
                sequence: Some(s.clone()),
                old_logprobs: lp.clone(),
                advantages: vec![1.0; lp.len()],
            })
            .collect(),
        minibatch_size: 0,
        epochs: 4,
        lr: 1e-2,
        clip_eps: 0.2,
        entropy_coef: 0.0,
        max_grad_norm: 1.0,
        seed: 0,
        micro_batch_size: 0,
    };
    a.train(ppo.clone()).await.unwrap();
    let trained = logprobs(&mut a, &seqs).await;
    assert_ne!(trained, old, "PPO moved the adapters");
    let request = || LogProbsRequest {
        sequences: seqs.clone(),
    };
    let base = rows(a.base_log_probs(request()).await.unwrap().into_inner());
    let refs = rows(r.log_probs(request()).await.unwrap().into_inner());
    let lengths = |x: &[Vec<f32>]| x.iter().map(Vec::len).collect::<Vec<_>>();
    assert_eq!(lengths(&base), lengths(&refs));
    for (b, r) in base.iter().flatten().zip(refs.iter().flatten()) {
        assert!((b - r).abs() < 1e-5, "base {b} vs reference {r}");
    }
    assert_eq!(logprobs(&mut a, &seqs).await, trained, "adapters back on");
    // The start weights of a LoRA actor are its adapters as first drawn (kept, not drawn
    // again): the same update from them lands where the first one did.
    a.load_checkpoint(LoadCheckpointRequest {
        path: String::new(),
        start_weights: true,
    })
    .await
    .unwrap();
    assert_eq!(logprobs(&mut a, &seqs).await, old, "back at the start");
    a.train(ppo).await.unwrap();
    assert_eq!(logprobs(&mut a, &seqs).await, trained);
    actor.stop().await;
    reference.stop().await;

    let full = spawn::<ActorServer>(ActorServiceConfig {
        model: policy.clone(),
        max_length: 128,
        ..Default::default()
    })
    .await;
    let mut f = ActorServiceClient::connect(full.url()).await.unwrap();
    let err = f.base_log_probs(request()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    full.stop().await;
}

/// A client that drops its `Generate` stream mid-way stops the generation at the engine's next
/// decoding step (it used to run to the end, holding the model for samples nobody read); the
/// abandoned batch is counted, and the next call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_nobody_reads_stops_early() {
    let served = spawn::<ActorServer>(ActorServiceConfig {
        model: models().policy.clone(),
        max_length: 512,
        ..Default::default()
    })
    .await;
    let mut c = ActorServiceClient::connect(served.url()).await.unwrap();
    let long = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 480,
        min_new_tokens: 480,
        seed: Some(3),
        ..greedy(480, vec![])
    };
    let request = |n: usize| GenerateRequest {
        prompts: (0..n)
            .map(|i| prompt(&format!("p{i}"), &[5, 6, 7]))
            .collect(),
        sampling: Some(long.clone()),
        samples_per_prompt: 1,
    };
    // How long the whole generation takes when someone waits for it.
    let started = std::time::Instant::now();
    assert_eq!(collect(&mut c, request(16)).await.len(), 16);
    let whole = started.elapsed();

    let stream = c.generate(request(16)).await.unwrap().into_inner();
    tokio::time::sleep(whole / 10).await;
    drop(stream);
    let engine = &served.running.engine;
    let started = std::time::Instant::now();
    while engine.stats.abandoned.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < whole / 2,
            "the abandoned generation ran on ({whole:?} for the whole)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(collect(&mut c, request(1)).await.len(), 1);
}

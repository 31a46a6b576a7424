//! Seeded random requests to every actor RPC: `Generate` with hostile prompts and sampling
//! settings in and out of range, `LogProbs` and `BaseLogProbs` over hostile sequences, `Train`
//! with rows of the wrong length or not finite and settings in and out of range, checkpoint
//! saves and loads at paths that are not checkpoints. Each is answered or refused as the
//! client's fault with a message; the service still generates afterwards.

use rrlhf_actor_service::{ActorServer, ActorServiceConfig};
use rrlhf_proto::actor::v1::actor_service_client::ActorServiceClient;
use rrlhf_proto::actor::v1::{
    GenerateRequest, InfoRequest, Prompt, SamplingParams, TrainRequest, TrainSample,
};
use rrlhf_proto::common::v1::{LogProbsRequest, SaveCheckpointRequest};
use rrlhf_testkit::fuzz::{CheckpointRpc, Fuzz, Tally, assert_nothing_replaced, checkpoint_round};
use rrlhf_testkit::models::models;
use rrlhf_testkit::serve::spawn;
use tonic::Status;
use tonic::transport::Channel;

const MAX_LENGTH: u64 = 48;

fn generate_request(fuzz: &mut Fuzz, vocab: i64) -> GenerateRequest {
    let prompts = (0..fuzz.below(3) + u64::from(!fuzz.one_in(6)))
        .map(|i| Prompt {
            id: format!("p{i}"),
            prompt_ids: if fuzz.one_in(4) {
                Vec::new()
            } else {
                fuzz.ids(vocab, MAX_LENGTH / 2)
            },
            text: fuzz.text(),
        })
        .collect();
    let sampling = SamplingParams {
        temperature: fuzz.or_hostile(0.7),
        top_k: fuzz.count(&[0, 5], 1 << 20),
        top_p: fuzz.or_hostile(0.9),
        max_new_tokens: fuzz.count(&[1, 4, 8], MAX_LENGTH as u32),
        stop_ids: fuzz.ids(vocab, 3),
        seed: (!fuzz.one_in(3)).then(|| fuzz.below(u64::MAX)),
        min_new_tokens: fuzz.count(&[0, 2], 8),
    };
    GenerateRequest {
        prompts,
        sampling: (!fuzz.one_in(8)).then_some(sampling),
        samples_per_prompt: fuzz.count(&[1, 2], 10_000),
    }
}

fn train_request(fuzz: &mut Fuzz, vocab: i64) -> TrainRequest {
    let samples = fuzz
        .sequences(vocab, MAX_LENGTH)
        .into_iter()
        .map(|s| {
            let n = s.response_ids.len();
            TrainSample {
                old_logprobs: fuzz.row(n).iter().map(|x| -x.abs()).collect(),
                advantages: fuzz.row(n),
                sequence: (!fuzz.one_in(8)).then_some(s),
            }
        })
        .collect();
    TrainRequest {
        samples,
        minibatch_size: fuzz.count(&[0, 1, 2, 3], 1000),
        micro_batch_size: fuzz.count(&[0, 1, 2], 1000),
        epochs: fuzz.count(&[1, 2], 100),
        lr: fuzz.or_hostile(1e-4),
        clip_eps: fuzz.or_hostile(0.2),
        entropy_coef: fuzz.or_hostile(0.0),
        max_grad_norm: fuzz.or_hostile(1.0),
        seed: fuzz.below(u64::MAX),
    }
}

/// Every sample of a `Generate` stream, or the status that ended it.
async fn generate(
    c: &mut ActorServiceClient<Channel>,
    req: GenerateRequest,
) -> Result<usize, Status> {
    let mut stream = c.generate(req).await?.into_inner();
    let mut n = 0;
    while stream.message().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_to_every_rpc_are_answered_or_refused_never_internal() {
    let scratch = tempfile::tempdir().unwrap();
    let served = spawn::<ActorServer>(ActorServiceConfig {
        model: models().policy.clone(),
        max_length: MAX_LENGTH as usize,
        ..Default::default()
    })
    .await;
    let mut c = ActorServiceClient::connect(served.url()).await.unwrap();
    let vocab = c
        .info(InfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .vocab_size as i64;
    let (mut fuzz, mut tally) = (Fuzz::new(19), Tally::default());
    for round in 0..150 {
        match fuzz.below(6) {
            0 | 1 => {
                let req = generate_request(&mut fuzz, vocab);
                let what = format!("round {round}: {req:?}");
                let per_prompt = req.samples_per_prompt.max(1) as usize;
                let prompts = req.prompts.len();
                if let Some(n) = tally.count("Generate", &what, generate(&mut c, req).await) {
                    assert_eq!(n, prompts * per_prompt, "{what}");
                }
            }
            2 => {
                let req = LogProbsRequest {
                    sequences: fuzz.sequences(vocab, MAX_LENGTH),
                };
                let what = format!("round {round}: {req:?}");
                // Without adapters, BaseLogProbs is always FAILED_PRECONDITION.
                let (kind, r) = if fuzz.one_in(2) {
                    ("LogProbs", c.log_probs(req.clone()).await)
                } else {
                    ("BaseLogProbs", c.base_log_probs(req.clone()).await)
                };
                if let Some(r) = tally.count(kind, &what, r) {
                    assert_eq!(r.into_inner().results.len(), req.sequences.len(), "{what}");
                }
            }
            3 => {
                let req = train_request(&mut fuzz, vocab);
                let what = format!("round {round}: {req:?}");
                if let Some(r) = tally.count("Train", &what, c.train(req).await) {
                    assert!(r.into_inner().param_checksum.is_finite(), "{what}");
                }
            }
            _ => {
                let call = async |rpc, path| match rpc {
                    CheckpointRpc::Save => {
                        let r = c.save_checkpoint(SaveCheckpointRequest { path }).await;
                        r.map(drop)
                    }
                    load => c.load_checkpoint(load.load_request(path)).await.map(drop),
                };
                checkpoint_round(&mut fuzz, &mut tally, scratch.path(), round, call).await;
            }
        }
    }
    tally.assert_mixed(&["Generate", "LogProbs", "Train", "SaveCheckpoint"]);
    assert_nothing_replaced(scratch.path());
    let plain = GenerateRequest {
        prompts: vec![Prompt {
            id: "plain".into(),
            prompt_ids: vec![5, 6, 7],
            text: String::new(),
        }],
        sampling: Some(SamplingParams {
            max_new_tokens: 4,
            ..SamplingParams::default()
        }),
        samples_per_prompt: 1,
    };
    assert_eq!(generate(&mut c, plain).await.unwrap(), 1);
}

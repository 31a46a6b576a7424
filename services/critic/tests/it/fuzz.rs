//! Seeded random requests to every critic RPC: `Values` over hostile sequences, `Train` with
//! rows of the wrong length or not finite and every setting in and out of range, checkpoint
//! saves and loads at paths that are not checkpoints. Each is answered or refused as the
//! client's fault with a message; no save replaces what is not a checkpoint; the service
//! still answers afterwards.

use rrlhf_critic_service::{CriticServer, CriticServiceConfig};
use rrlhf_proto::common::v1::SaveCheckpointRequest;
use rrlhf_proto::critic::v1::critic_service_client::CriticServiceClient;
use rrlhf_proto::critic::v1::{InfoRequest, TrainRequest, TrainSample, ValuesRequest};
use rrlhf_testkit::fuzz::{
    CheckpointRpc, Fuzz, Tally, assert_nothing_replaced, checkpoint_round, plain_sequence,
};
use rrlhf_testkit::models::models;
use rrlhf_testkit::serve::spawn;

fn train_request(fuzz: &mut Fuzz, vocab: i64) -> TrainRequest {
    let samples = fuzz
        .sequences(vocab, 32)
        .into_iter()
        .map(|s| {
            let n = s.response_ids.len();
            TrainSample {
                old_values: fuzz.row(n),
                returns: fuzz.row(n),
                sequence: (!fuzz.one_in(8)).then_some(s),
            }
        })
        .collect();
    TrainRequest {
        samples,
        minibatch_size: fuzz.count(&[0, 1, 2, 3], 1000),
        micro_batch_size: fuzz.count(&[0, 1, 2], 1000),
        epochs: fuzz.count(&[1, 2], 100),
        lr: fuzz.or_hostile(1e-3),
        value_clip: fuzz.or_hostile(0.2),
        max_grad_norm: fuzz.or_hostile(1.0),
        seed: fuzz.below(u64::MAX),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_to_every_rpc_are_answered_or_refused_never_internal() {
    let scratch = tempfile::tempdir().unwrap();
    let served = spawn::<CriticServer>(CriticServiceConfig {
        model: models().stage1.clone(),
        max_length: 32,
        ..Default::default()
    })
    .await;
    let mut c = CriticServiceClient::connect(served.url()).await.unwrap();
    let vocab = c
        .info(InfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .vocab_size as i64;
    let (mut fuzz, mut tally) = (Fuzz::new(18), Tally::default());
    for round in 0..160 {
        match fuzz.below(5) {
            0 => {
                let req = ValuesRequest {
                    sequences: fuzz.sequences(vocab, 32),
                };
                let what = format!("round {round}: {req:?}");
                if let Some(r) = tally.count("Values", &what, c.values(req.clone()).await) {
                    assert_eq!(r.into_inner().results.len(), req.sequences.len(), "{what}");
                }
            }
            1 | 2 => {
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
    tally.assert_mixed(&["Values", "Train", "SaveCheckpoint"]);
    assert_nothing_replaced(scratch.path());
    let plain = ValuesRequest {
        sequences: vec![plain_sequence()],
    };
    let values = c.values(plain).await.unwrap().into_inner().results;
    assert!(values[0].values.iter().all(|v| v.is_finite()));
}

//! End-to-end tests of the critic service on 127.0.0.1:0 with a real tiny stage-1 checkpoint:
//! values, training lowers the value loss, save → load restores identical outputs, bad input.

mod fuzz;

use rrlhf_critic_service::{CriticServer, CriticServiceConfig};
use rrlhf_model::TextTokenizer;
use rrlhf_proto::common::v1::{LoadCheckpointRequest, SaveCheckpointRequest, Sequence};
use rrlhf_proto::critic::v1::critic_service_client::CriticServiceClient;
use rrlhf_proto::critic::v1::{InfoRequest, TrainRequest, TrainSample, ValuesRequest};
use rrlhf_testkit::models::models;
use rrlhf_testkit::serve::spawn;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn seq(id: &str, prompt: &[i64], response: &[i64]) -> Sequence {
    Sequence {
        id: id.into(),
        prompt_ids: prompt.to_vec(),
        response_ids: response.to_vec(),
    }
}

fn sequences() -> Vec<Sequence> {
    vec![
        seq("a", &[5, 6, 7], &[8, 9, 10]),
        seq("b", &[3], &[4, 5]),
        seq("c", &[11, 12, 13, 14], &[15, 16, 17, 18]),
        seq("d", &[20, 21], &[22]),
    ]
}

fn train_request(epochs: u32) -> TrainRequest {
    let samples = sequences()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let n = s.response_ids.len();
            TrainSample {
                old_values: vec![0.0; n],
                returns: (0..n)
                    .map(|t| (i as f32 - 1.5) * 0.5 + 0.1 * t as f32)
                    .collect(),
                sequence: Some(s),
            }
        })
        .collect();
    TrainRequest {
        samples,
        minibatch_size: 2,
        epochs,
        lr: 3e-3,
        value_clip: 0.0,
        max_grad_norm: 1.0,
        seed: 1,
        micro_batch_size: 0,
    }
}

async fn values(c: &mut CriticServiceClient<tonic::transport::Channel>) -> Vec<Vec<f32>> {
    c.values(ValuesRequest {
        sequences: sequences(),
    })
    .await
    .unwrap()
    .into_inner()
    .results
    .into_iter()
    .map(|r| r.values)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critic_values_train_save_and_load() {
    let m = models();
    let root = tempfile::tempdir().unwrap();
    let served = spawn::<CriticServer>(CriticServiceConfig {
        model: m.stage1.clone(),
        max_length: 32,
        ..Default::default()
    })
    .await;
    let mut c = CriticServiceClient::connect(served.url()).await.unwrap();
    assert_eq!(
        served.health("rrlhf.critic.v1.CriticService").await,
        ServingStatus::Serving,
        "SERVING once loaded and warm"
    );
    let vocab = TextTokenizer::load(&m.stage1).unwrap().vocab_size() as i64;
    let info = c.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.vocab_size as i64, info.max_length), (vocab, 32));

    let before = values(&mut c).await;
    for (v, s) in before.iter().zip(sequences()) {
        assert_eq!(
            v.len(),
            s.response_ids.len(),
            "one value per response token"
        );
    }
    let alone = c
        .values(ValuesRequest {
            sequences: vec![sequences()[2].clone()],
        })
        .await
        .unwrap()
        .into_inner();
    for (x, y) in alone.results[0].values.iter().zip(&before[2]) {
        assert!((x - y).abs() < 1e-5, "batching must not change values");
    }

    // Training on a fixed batch lowers the value loss.
    let stats = c.train(train_request(15)).await.unwrap().into_inner();
    assert_eq!(stats.updates, 30, "2 mini-batches × 15 epochs");
    assert!(
        stats.loss_last < 0.5 * stats.loss_first,
        "value loss {} → {}",
        stats.loss_first,
        stats.loss_last
    );

    // Save → train more → load: outputs are back to the saved ones exactly.
    let ckpt = root.path().join("critic-ckpt");
    c.save_checkpoint(SaveCheckpointRequest {
        path: ckpt.display().to_string(),
    })
    .await
    .unwrap();
    let saved = values(&mut c).await;
    c.train(train_request(3)).await.unwrap();
    assert_ne!(values(&mut c).await, saved, "training moved the values");
    c.load_checkpoint(LoadCheckpointRequest {
        path: ckpt.display().to_string(),
        start_weights: false,
    })
    .await
    .unwrap();
    assert_eq!(
        values(&mut c).await,
        saved,
        "load restores the saved weights exactly"
    );

    // Bad input is named; the service keeps serving.
    let mut bad_len = train_request(1);
    bad_len.samples[1].returns.push(1.0);
    let mut no_lr = train_request(1);
    no_lr.lr = 0.0;
    let mut nan = train_request(1);
    nan.samples[0].old_values[0] = f32::NAN;
    for (result, field) in [
        (c.train(bad_len).await, "samples[1].returns"),
        (c.train(no_lr).await, "lr"),
        (c.train(nan).await, "samples[0].old_values"),
        (
            c.train(TrainRequest {
                lr: 1e-3,
                ..Default::default()
            })
            .await,
            "samples",
        ),
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(field),
            "`{}` should name {field}",
            err.message()
        );
    }
    let err = c
        .values(ValuesRequest {
            sequences: vec![seq("x", &[1], &[vocab])],
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("sequences[0].response_ids"),
        "{}",
        err.message()
    );
    let err = c
        .load_checkpoint(LoadCheckpointRequest {
            path: "/nonexistent".into(),
            start_weights: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A checkpoint of another layout (the policy: an LM head, no score head) is refused
    // without harming the live model.
    let err = c
        .load_checkpoint(LoadCheckpointRequest {
            path: m.policy.display().to_string(),
            start_weights: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(values(&mut c).await, saved);

    served.stop().await;
}

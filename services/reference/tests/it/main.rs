//! End-to-end tests of the reference service on 127.0.0.1:0 with a real tiny checkpoint.

mod fuzz;

use rrlhf_model::Arch;
use rrlhf_proto::common::v1::{LogProbsRequest, Sequence};
use rrlhf_proto::reference::v1::InfoRequest;
use rrlhf_proto::reference::v1::reference_service_client::ReferenceServiceClient;
use rrlhf_reference_service::{ReferenceServer, ReferenceServiceConfig};
use rrlhf_testkit::models::causal_lm;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_probs_match_the_model_and_bad_input_is_named() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let model = causal_lm(dir.path(), Arch::Qwen2, 97);
    let served = spawn::<ReferenceServer>(ReferenceServiceConfig {
        model: dir.path().to_path_buf(),
        max_length: 32,
        ..Default::default()
    })
    .await;
    assert_eq!(
        served.health("rrlhf.reference.v1.ReferenceService").await,
        ServingStatus::Serving
    );
    let url = served.url();

    let mut c = ReferenceServiceClient::connect(url).await.unwrap();
    let info = c.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.vocab_size, info.max_length), (97, 32));

    let sequences = vec![
        seq("a", &[5, 6, 7], &[8, 9]),
        seq("b", &[3], &[4, 5, 6, 7, 8]),
        seq("c", &[10, 11, 12, 13], &[14]),
    ];
    let got = c
        .log_probs(LogProbsRequest {
            sequences: sequences.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = sequences
        .iter()
        .map(|s| (s.prompt_ids.clone(), s.response_ids.clone()))
        .collect();
    let want = {
        let _guard = tch::no_grad_guard();
        model.response_logprobs(&pairs).unwrap()
    };
    for ((s, r), w) in sequences.iter().zip(&got.results).zip(&want) {
        assert_eq!(s.id, r.id);
        assert_eq!(r.logprobs.len(), s.response_ids.len());
        for (x, y) in r.logprobs.iter().zip(w) {
            assert!((x - y).abs() < 1e-5, "{}: {x} vs {y}", s.id);
        }
    }
    // The same sequence alone gives the same numbers (batching does not leak).
    let alone = c
        .log_probs(LogProbsRequest {
            sequences: vec![sequences[1].clone()],
        })
        .await
        .unwrap()
        .into_inner();
    for (x, y) in alone.results[0]
        .logprobs
        .iter()
        .zip(&got.results[1].logprobs)
    {
        assert!((x - y).abs() < 1e-5);
    }

    for (req, field) in [
        (LogProbsRequest { sequences: vec![] }, "sequences"),
        (
            LogProbsRequest {
                sequences: vec![seq("x", &[], &[1])],
            },
            "sequences[0].prompt_ids",
        ),
        (
            LogProbsRequest {
                sequences: vec![seq("x", &[1], &[])],
            },
            "sequences[0].response_ids",
        ),
        (
            LogProbsRequest {
                sequences: vec![seq("x", &[1], &[2]), seq("y", &[1], &[97])],
            },
            "sequences[1].response_ids",
        ),
        (
            LogProbsRequest {
                sequences: vec![seq("x", &[1; 20], &[2; 20])],
            },
            "sequences[0]",
        ),
    ] {
        let err = c.log_probs(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(field),
            "`{}` should name {field}",
            err.message()
        );
    }
    assert_eq!(
        c.log_probs(LogProbsRequest {
            sequences: vec![sequences[0].clone()]
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .len(),
        1
    );

    served.stop().await;
}

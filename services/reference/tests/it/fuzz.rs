//! Seeded random `LogProbs` requests (ids in and out of the vocabulary, empty and overlong
//! sequences, missing ids): each is answered, one row per sequence, or refused as the client's
//! fault with a message; the service still answers a plain request afterwards.

use rrlhf_model::Arch;
use rrlhf_proto::common::v1::LogProbsRequest;
use rrlhf_proto::reference::v1::reference_service_client::ReferenceServiceClient;
use rrlhf_reference_service::{ReferenceServer, ReferenceServiceConfig};
use rrlhf_testkit::fuzz::{Fuzz, Tally, plain_sequence};
use rrlhf_testkit::models::causal_lm;
use rrlhf_testkit::serve::spawn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_log_probs_requests_are_answered_or_refused_never_internal() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    causal_lm(dir.path(), Arch::Qwen2, 97);
    let served = spawn::<ReferenceServer>(ReferenceServiceConfig {
        model: dir.path().to_path_buf(),
        max_length: 32,
        ..Default::default()
    })
    .await;
    let mut c = ReferenceServiceClient::connect(served.url()).await.unwrap();
    let (mut fuzz, mut tally) = (Fuzz::new(17), Tally::default());
    for round in 0..150 {
        let req = LogProbsRequest {
            sequences: fuzz.sequences(97, 32),
        };
        let what = format!("round {round}: {req:?}");
        if let Some(r) = tally.count("LogProbs", &what, c.log_probs(req.clone()).await) {
            let rows = r.into_inner().results;
            assert_eq!(rows.len(), req.sequences.len(), "{what}");
            for (row, s) in rows.iter().zip(&req.sequences) {
                assert_eq!(row.logprobs.len(), s.response_ids.len(), "{what}");
                assert!(row.logprobs.iter().all(|x| x.is_finite() && *x <= 0.0));
            }
        }
    }
    tally.assert_mixed(&["LogProbs"]);
    let plain = LogProbsRequest {
        sequences: vec![plain_sequence()],
    };
    assert_eq!(
        c.log_probs(plain).await.unwrap().into_inner().results.len(),
        1
    );
}

//! Health, reflection, Info, Score, validation and graceful shutdown.

use rrlhf_proto::reward::v1::{InfoRequest, Sample, ScoreRequest, UncertaintySet};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::fixture::{client, config, request, sample, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_reflection_info_and_scores() {
    let (running, stop) = start(config()).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "rrlhf.reward.v1.RewardService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        ServingStatus::Serving as i32,
        "SERVING once the model is loaded and warm"
    );

    // Reflection lists the service, as grpcurl's `list` does.
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"rrlhf.reward.v1.RewardService".to_string()),
        "{names:?}"
    );

    let mut c = client(&running).await;
    let info = c.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (info.kind.as_str(), info.heads, info.max_length),
        ("brme", 3, 64)
    );
    assert_eq!(info.default_strategy, "tradeoff:0.4");

    let samples: Vec<Sample> = (0..5).map(sample).collect();
    let scored = c
        .score(request(samples.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scored.scores.len(), 5);
    assert_eq!(scored.strategy, "tradeoff:0.4");
    for (s, sc) in samples.iter().zip(&scored.scores) {
        assert_eq!(s.id, sc.id);
        assert_eq!(sc.heads.len(), 3);
        let nominal = &sc.heads[sc.nominal_head as usize];
        assert!(
            sc.heads
                .iter()
                .all(|h| h.sigma >= nominal.sigma && h.sigma > 0.0)
        );
        assert_eq!(sc.nominal, nominal.mu);
        let min = sc.heads.iter().map(|h| h.mu).fold(f32::INFINITY, f32::min);
        assert_eq!(sc.min, min);
        assert!((sc.reward - (0.4 * sc.nominal + 0.6 * sc.min)).abs() < 1e-6);
    }
    // Strategy and λ from the request; token ids instead of text give the same heads.
    let mut req = request(samples[..1].to_vec());
    req.strategy = "tradeoff".into();
    req.lambda = Some(1.0);
    let one = c.score(req).await.unwrap().into_inner();
    assert_eq!(one.scores[0].reward, one.scores[0].nominal);
    let n = one.scores[0].num_tokens as usize;
    let tok = rrlhf_model::TextTokenizer::load(&rrlhf_testkit::models::models().brme).unwrap();
    let ids = tok
        .encode_pair(&samples[0].prompt, &samples[0].response, 64)
        .unwrap()
        .0;
    assert_eq!(ids.len(), n);
    let by_ids = c
        .score(request(vec![Sample {
            token_ids: ids,
            ..Default::default()
        }]))
        .await
        .unwrap()
        .into_inner();
    for (a, b) in by_ids.scores[0].heads.iter().zip(&scored.scores[0].heads) {
        assert!(
            (a.mu - b.mu).abs() < 1e-5 && (a.sigma - b.sigma).abs() < 1e-5,
            "{a:?} vs {b:?}"
        );
    }
    let mut sampled = request(samples[..2].to_vec());
    sampled.strategy = "mean".into();
    sampled.uncertainty_set = UncertaintySet::Sampled as i32;
    sampled.seed = 7;
    let a = c.score(sampled.clone()).await.unwrap().into_inner();
    let b = c.score(sampled).await.unwrap().into_inner();
    assert_eq!(
        a.scores[0].reward, b.scores[0].reward,
        "seeded sampled uncertainty set is reproducible"
    );

    // Graceful shutdown: the serving task ends once told to.
    stop.send(()).unwrap();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_naming_the_field_and_the_service_survives() {
    let (running, _stop) = start(config()).await;
    let mut c = client(&running).await;
    let long = Sample {
        response: " word".repeat(200),
        ..sample(0)
    };
    let cases: Vec<(ScoreRequest, &str)> = vec![
        (request(vec![]), "samples"),
        (
            request(vec![Sample {
                response: String::new(),
                ..sample(0)
            }]),
            "samples[0].response",
        ),
        (request(vec![sample(0), long]), "samples[1]"),
        (
            ScoreRequest {
                lambda: Some(1.5),
                ..request(vec![sample(0)])
            },
            "lambda",
        ),
        (
            ScoreRequest {
                lambda: Some(f32::NAN),
                ..request(vec![sample(0)])
            },
            "lambda",
        ),
        (
            ScoreRequest {
                strategy: "best".into(),
                ..request(vec![sample(0)])
            },
            "strategy",
        ),
        (
            ScoreRequest {
                strategy: "min".into(),
                lambda: Some(0.5),
                ..request(vec![sample(0)])
            },
            "lambda",
        ),
        (
            ScoreRequest {
                uwo_c: Some(-1.0),
                ..request(vec![sample(0)])
            },
            "uwo_c",
        ),
        (
            ScoreRequest {
                uncertainty_set: 9,
                ..request(vec![sample(0)])
            },
            "uncertainty_set",
        ),
        (
            request(vec![Sample {
                token_ids: vec![1, 99_999],
                ..Default::default()
            }]),
            "samples[0].token_ids",
        ),
    ];
    for (req, field) in cases {
        let err = c.score(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "`{}` should name {field}",
            err.message()
        );
    }
    // Still serving.
    assert_eq!(
        c.score(request(vec![sample(1)]))
            .await
            .unwrap()
            .into_inner()
            .scores
            .len(),
        1
    );

    // Truncation instead of rejection when configured.
    let mut cfg = config();
    cfg.service.overlong = rrlhf_reward_service::Overlong::Truncate;
    let (running, _stop2) = start(cfg).await;
    let mut c = client(&running).await;
    let long = Sample {
        response: " word".repeat(200),
        ..sample(0)
    };
    let scored = c.score(request(vec![long])).await.unwrap().into_inner();
    assert_eq!(scored.scores[0].num_tokens, 64);
}

//! Bearer auth (health stays open), TLS with a certificate made in the test, and the
//! concurrency limit answering RESOURCE_EXHAUSTED.

use rrlhf_proto::reward::v1::reward_service_client::RewardServiceClient;
use rrlhf_proto::reward::v1::{InfoRequest, ScoreRequest};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::fixture::{client, config, request, sample, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_except_for_health() {
    let mut cfg = config();
    cfg.server.auth_token = Some("s3cret".into());
    let (running, _stop) = start(cfg).await;
    let mut c = client(&running).await;
    let err = c.info(InfoRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(InfoRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        c.info(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(request(vec![sample(0)]));
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert_eq!(c.score(right).await.unwrap().into_inner().scores.len(), 1);
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "health needs no token: {health:?}");

    // Without a configured token, calls need none.
    let (open, _stop2) = start(config()).await;
    assert!(client(&open).await.info(InfoRequest {}).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut cfg = config();
    cfg.server.tls_cert = Some(cert.clone());
    cfg.server.tls_key = Some(key);
    let (running, _stop) = start(cfg).await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&cert).unwrap()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", running.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let scored = RewardServiceClient::new(channel)
        .score(request(vec![sample(3)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scored.scores[0].heads.len(), 3);
    // A plaintext client cannot talk to it.
    let plain = Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            RewardServiceClient::new(ch)
                .info(InfoRequest {})
                .await
                .is_err()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_calls_get_resource_exhausted() {
    let mut cfg = config();
    cfg.server.max_concurrent_requests = 1;
    let (running, _stop) = start(cfg).await;
    let mut holder = client(&running).await;
    // An open stream holds the only slot until it ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<ScoreRequest>(1);
    let mut stream = holder
        .score_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(request(vec![sample(0)])).await.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    let err = client(&running)
        .await
        .score(request(vec![sample(1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_concurrent_requests"));
    drop(tx);
    while stream.message().await.unwrap().is_some() {}
    drop(stream);
    // The slot is free again once the stream has finished (the body is released just after).
    let mut c = client(&running).await;
    let mut ok = false;
    for _ in 0..200 {
        match c.score(request(vec![sample(1)])).await {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted => tokio::task::yield_now().await,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(ok, "the slot was never released");
}

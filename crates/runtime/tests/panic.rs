//! Panic isolation seen from a gRPC caller: a service whose engine panics answers that call
//! INTERNAL with the panic's message; then a read-only engine keeps serving, while a training
//! engine stops and the server's health turns NOT_SERVING (later calls: UNAVAILABLE).
//!
//! The service is the reference API over an engine whose batches panic on an injected input
//! (a request whose first sequence has id "panic"), served by [`server::launch`] exactly as the
//! real services are.

use std::time::Duration;

use rrlhf_proto::common::v1::{LogProbsRequest, LogProbsResponse, Sequence, TokenLogProbs};
use rrlhf_proto::reference::v1::reference_service_client::ReferenceServiceClient;
use rrlhf_proto::reference::v1::reference_service_server::{
    ReferenceService, ReferenceServiceServer,
};
use rrlhf_proto::reference::v1::{InfoRequest, InfoResponse};
use rrlhf_runtime::ServerConfig;
use rrlhf_runtime::engine::{BatchConfig, Engine, LoadError, PanicPolicy, Stoppable};
use rrlhf_runtime::server;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A reference service whose "model" returns each sequence's length as its one log-prob and
/// panics on a sequence named "panic".
#[derive(Clone)]
struct Faulty {
    engine: Engine<String, usize>,
}

#[tonic::async_trait]
impl ReferenceService for Faulty {
    async fn log_probs(
        &self,
        request: Request<LogProbsRequest>,
    ) -> Result<Response<LogProbsResponse>, Status> {
        let ids: Vec<String> = request
            .into_inner()
            .sequences
            .into_iter()
            .map(|s| s.id)
            .collect();
        let lengths = self.engine.submit(ids.clone()).await?;
        let results = ids
            .into_iter()
            .zip(lengths)
            .map(|(id, n)| TokenLogProbs {
                id,
                logprobs: vec![n as f32],
            })
            .collect();
        Ok(Response::new(LogProbsResponse { results }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse::default()))
    }
}

async fn serve(policy: PanicPolicy) -> (String, tokio::sync::oneshot::Sender<()>) {
    let batch = BatchConfig {
        max_items: 8,
        max_cost: 1 << 20,
        max_wait: Duration::from_millis(1),
        queue_capacity: 8,
        max_queued_cost: usize::MAX,
        max_queue_wait: Duration::from_secs(600),
        on_panic: policy,
        merge_requests: true,
    };
    let (engine, ()) = Engine::<String, usize>::spawn(
        "faulty-engine",
        batch,
        || Ok::<_, LoadError>(((), ())),
        |_, ids: &[String]| {
            assert!(!ids.iter().any(|id| id == "panic"), "injected fault");
            Ok(ids.iter().map(String::len).collect())
        },
        |_| 1,
    )
    .unwrap();
    let cfg = ServerConfig {
        addr: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    let stopped = engine.stopped();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let launched = server::launch(
        &cfg,
        ReferenceServiceServer::new(Faulty { engine }),
        stopped,
        async {
            let _ = rx.await;
        },
    )
    .await
    .unwrap();
    (format!("http://{}", launched.addr), stop)
}

fn request(id: &str) -> LogProbsRequest {
    LogProbsRequest {
        sequences: vec![Sequence {
            id: id.into(),
            ..Default::default()
        }],
    }
}

async fn health(channel: Channel) -> ServingStatus {
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "rrlhf.reference.v1.ReferenceService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_engine_answers_internal_then_keeps_serving() {
    let (url, _stop) = serve(PanicPolicy::KeepServing).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut c = ReferenceServiceClient::new(channel.clone());
    let err = c.log_probs(request("panic")).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(
        err.message().contains("panicked: injected fault"),
        "{err:?}"
    );
    let ok = c.log_probs(request("fine")).await.unwrap().into_inner();
    assert_eq!(ok.results[0].logprobs, vec![4.0]);
    assert_eq!(health(channel).await, ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_engine_answers_internal_then_goes_not_serving() {
    let (url, _stop) = serve(PanicPolicy::Stop).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut c = ReferenceServiceClient::new(channel.clone());
    assert_eq!(health(channel.clone()).await, ServingStatus::Serving);
    let err = c.log_probs(request("panic")).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("injected fault"), "{err:?}");
    let mut status = health(channel.clone()).await;
    for _ in 0..250 {
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = health(channel.clone()).await;
    }
    assert_eq!(status, ServingStatus::NotServing);
    let err = c.log_probs(request("fine")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

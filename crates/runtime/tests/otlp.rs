//! End to end through a real OTLP/gRPC hop: an in-process collector (a tonic `TraceService`)
//! receives what the exporter of `telemetry::otlp_provider` sends, so the tests check the
//! wire result — trace id, parent span id, span name and status — not our own bookkeeping.
//!
//! The subscriber is `telemetry::subscriber` (what `init` installs) set as the test thread's
//! default, not the global one, so these tests neither depend on nor disturb global state.
//! Everything that must reach the subscriber runs on the test's own thread: the
//! multi-threaded runtime's `block_on` drives the test body there, while the collector and the
//! exporter's connection run on worker threads.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rrlhf_runtime::ServerConfig;
use rrlhf_runtime::telemetry::{otlp_provider, subscriber};
use rrlhf_runtime::trace_context::{self, TraceContextLayer};
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tower::{Layer as _, Service as _, ServiceExt as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const PARENT_SPAN_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

/// A collector that forwards every export request to the test.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves a [`Collector`] on a free port; returns its endpoint URL and the stream of exports.
async fn start_collector() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rx)
}

fn provider(endpoint: &str) -> SdkTracerProvider {
    let resource = Resource::builder_empty()
        .with_service_name("rrlhf-test")
        .build();
    otlp_provider(endpoint, resource).unwrap()
}

/// Flushes `provider` (off the async threads: it blocks until the export is answered) and
/// waits until the collector has received a span of each of `names`; returns them in order.
async fn flush_and_receive(
    provider: &SdkTracerProvider,
    rx: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    names: &[&str],
) -> Vec<Span> {
    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .unwrap()
        .expect("force_flush");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got: Vec<Span> = Vec::new();
    loop {
        if let Some(found) = names
            .iter()
            .map(|n| got.iter().find(|s| s.name == *n).cloned())
            .collect::<Option<Vec<_>>>()
        {
            return found;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(req)) = tokio::time::timeout(left, rx.recv()).await else {
            let seen: Vec<_> = got.iter().map(|s| &s.name).collect();
            panic!("collector did not get spans {names:?} in time; got {seen:?}");
        };
        got.extend(
            req.resource_spans
                .into_iter()
                .flat_map(|rs| rs.scope_spans)
                .flat_map(|ss| ss.spans),
        );
    }
}

fn shutdown(provider: SdkTracerProvider) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || provider.shutdown().expect("shutdown"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_under_an_extracted_traceparent_reaches_the_collector_as_its_child() {
    trace_context::set_global_propagator();
    let (endpoint, mut rx) = start_collector().await;
    let provider = provider(&endpoint);
    {
        let _default =
            tracing::subscriber::set_default(subscriber(&ServerConfig::default(), Some(&provider)));
        let mut metadata = MetadataMap::new();
        metadata.insert("traceparent", TRACEPARENT.parse().unwrap());
        let span = tracing::info_span!("score_batch");
        span.set_parent(trace_context::extract(&metadata))
            .expect("the OTel layer is installed and the span enabled");
        span.in_scope(|| tracing::info!("inside"));
    }
    let [span] =
        <[Span; 1]>::try_from(flush_and_receive(&provider, &mut rx, &["score_batch"]).await)
            .unwrap();
    assert_eq!(span.trace_id, TRACE_ID);
    assert_eq!(span.parent_span_id, PARENT_SPAN_ID);
    assert_ne!(span.span_id, PARENT_SPAN_ID);
    shutdown(provider).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_layer_makes_each_rpc_a_child_span_and_clients_pass_it_on() {
    trace_context::set_global_propagator();
    let (endpoint, mut rx) = start_collector().await;
    let provider = provider(&endpoint);
    let (sent_on_tx, mut sent_on) = mpsc::unbounded_channel::<MetadataMap>();
    {
        let _default =
            tracing::subscriber::set_default(subscriber(&ServerConfig::default(), Some(&provider)));
        // The handler plays a service that calls another one: what it would send downstream
        // must continue the RPC's span.
        let handler = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let mut downstream = MetadataMap::new();
            trace_context::inject(&mut downstream);
            let _ = sent_on_tx.send(downstream);
            let status = match req.uri().path() {
                "/rrlhf.test.v1.Test/Fail" => tonic::Status::not_found("no such thing"),
                _ => tonic::Status::ok(""),
            };
            async move { Ok::<_, Infallible>(status.into_http::<tonic::body::Body>()) }
        });
        let mut svc = TraceContextLayer.layer(handler);
        for path in ["/rrlhf.test.v1.Test/Echo", "/rrlhf.test.v1.Test/Fail"] {
            let req = http::Request::builder()
                .uri(format!("http://localhost{path}"))
                .header("traceparent", TRACEPARENT)
                .body(tonic::body::Body::empty())
                .unwrap();
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            // The span lasts as long as the body; reading it to the end closes the span.
            res.into_body().collect().await.unwrap();
        }
        // Probes are not traced: no span, so nothing is injected downstream.
        let req = http::Request::builder()
            .uri("http://localhost/grpc.health.v1.Health/Check")
            .header("traceparent", TRACEPARENT)
            .body(tonic::body::Body::empty())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }

    let [echo, fail] = <[Span; 2]>::try_from(
        flush_and_receive(
            &provider,
            &mut rx,
            &["/rrlhf.test.v1.Test/Echo", "/rrlhf.test.v1.Test/Fail"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(echo.trace_id, TRACE_ID);
    assert_eq!(echo.parent_span_id, PARENT_SPAN_ID);
    assert_eq!(echo.kind, SpanKind::Server as i32);
    assert_ne!(
        echo.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(fail.trace_id, TRACE_ID);
    assert_eq!(
        fail.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    let grpc_code = fail
        .attributes
        .iter()
        .find(|kv| kv.key == "rpc.grpc.status_code")
        .and_then(|kv| kv.value.as_ref())
        .map(|v| format!("{v:?}"));
    assert!(
        grpc_code
            .as_deref()
            .is_some_and(|v| v.contains("IntValue(5)")),
        "{grpc_code:?}"
    );

    // What the Echo handler would have sent downstream: same trace, the RPC span as parent.
    let echo_downstream = sent_on.recv().await.unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        echo_downstream
            .get("traceparent")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("00-{}-{}-01", hex(&TRACE_ID), hex(&echo.span_id))
    );
    let _fail_downstream = sent_on.recv().await.unwrap();
    let probe_downstream = sent_on.recv().await.unwrap();
    assert!(probe_downstream.get("traceparent").is_none());
    shutdown(provider).await.unwrap();
}

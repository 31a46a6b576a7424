//! W3C trace context (`traceparent`/`tracestate`) carried in gRPC metadata, so a trace started
//! by a caller (the orchestrator, a Python client) continues through every service it calls
//! instead of each server starting a disconnected trace of its own.
//!
//! - Server side, [`TraceContextLayer`] (installed by [`crate::server::serve`] around every
//!   service) opens one `tracing` span per RPC, named by its gRPC path, whose parent is the
//!   context the caller sent. Health and reflection calls get none: probes every few seconds
//!   would drown real traffic in a trace backend.
//! - Client side, [`inject`] writes the current span's context into outgoing metadata, and
//!   [`TraceContextInterceptor`] does it for every call of a tonic client.
//!
//! Both go through OpenTelemetry's global propagator, which [`crate::telemetry::init`] sets to
//! W3C trace context ([`set_global_propagator`]); without it they carry nothing. Without an
//! OpenTelemetry layer (no `server.otlp_endpoint`) spans still exist for logs and carry the
//! caller's `trace_id`, so log lines can be matched to the caller's trace.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::body::Body;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes OpenTelemetry's global propagator W3C trace context. Idempotent.
pub fn set_global_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

/// Reads `traceparent`/`tracestate` from HTTP headers (gRPC metadata is HTTP/2 headers). A
/// missing or malformed header yields a context without a valid span.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // W3C keys and values are ASCII by spec; anything else is dropped rather than sent
        // half-valid.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The OpenTelemetry context a caller sent in `metadata`.
pub fn extract(metadata: &MetadataMap) -> opentelemetry::Context {
    extract_headers(metadata.as_ref())
}

/// [`extract`] for raw HTTP headers, as a tower layer sees them.
pub fn extract_headers(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes `cx`'s span context into `metadata` as `traceparent` (and `tracestate`).
pub fn inject_context(cx: &opentelemetry::Context, metadata: &mut MetadataMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut MetadataInjector(metadata))
    });
}

/// Writes the current `tracing` span's context into `metadata`, so the server's span for this
/// call becomes its child. Writes nothing when there is no OpenTelemetry span to continue.
pub fn inject(metadata: &mut MetadataMap) {
    inject_context(&tracing::Span::current().context(), metadata);
}

/// A tonic interceptor that [`inject`]s the caller's current span into every request:
/// `FooClient::with_interceptor(channel, TraceContextInterceptor)`. Interceptors run when the
/// call is made, inside the caller's span, which is the span to continue.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject(request.metadata_mut());
        Ok(request)
    }
}

/// Wraps a gRPC server's services in [`TraceContextService`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextLayer;

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner }
    }
}

/// One span per RPC, child of the caller's `traceparent`; it lasts until the response body
/// (a whole stream, for streaming RPCs) is finished and records the call's gRPC status.
#[derive(Clone, Debug)]
pub struct TraceContextService<S> {
    inner: S,
}

fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// The span for one call of `path` (`/package.Service/Method`), parented on `headers`'
/// trace context when it has a valid one.
fn rpc_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    // `otel.name` and `otel.kind` are read by tracing-opentelemetry as the OTel span's name
    // and kind; `rpc.*` follow OpenTelemetry's RPC semantic conventions.
    let span = tracing::info_span!(
        "grpc",
        otel.name = path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = extract_headers(headers);
    let remote = parent.span().span_context().clone();
    if remote.is_valid() {
        span.record("trace_id", tracing::field::display(remote.trace_id()));
        // Fails only when the span is disabled or no OpenTelemetry layer is installed; the
        // span then simply has no OTel side to parent.
        let _ = span.set_parent(parent);
    }
    span
}

/// Records a `grpc-status` header or trailer on `span`; anything but OK marks it an error.
fn record_status(span: &tracing::Span, headers: &http::HeaderMap) {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
    else {
        return;
    };
    span.record("rpc.grpc.status_code", code);
    if code != 0 {
        span.record("otel.status_code", "ERROR");
    }
}

impl<S, B> Service<http::Request<B>> for TraceContextService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_probe(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        let span = rpc_span(req.uri().path(), req.headers());
        // Entered for the synchronous part of the call too: interceptors (auth) run there.
        let fut = span.in_scope(|| self.inner.call(req));
        let body_span = span.clone();
        Box::pin(
            async move {
                let res = fut.await?;
                // A failing unary call is "trailers-only": its status is in the headers.
                // Otherwise it arrives in the trailers, which `TracedBody` reads.
                record_status(&body_span, res.headers());
                Ok(res.map(|inner| {
                    Body::new(TracedBody {
                        inner,
                        span: body_span,
                    })
                }))
            }
            .instrument(span),
        )
    }
}

/// A response body that keeps its RPC's span open until the body ends and records the
/// `grpc-status` trailer on it.
struct TracedBody {
    inner: Body,
    span: tracing::Span,
}

impl HttpBody for TracedBody {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(trailers) = frame.trailers_ref()
        {
            record_status(&self.span, trailers);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn inject_then_extract_round_trips_the_span_context() {
        set_global_propagator();
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let sent = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("rrlhf", "1")]).unwrap(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sent);
        let mut metadata = MetadataMap::new();
        inject_context(&cx, &mut metadata);
        assert_eq!(
            metadata.get("traceparent").unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );

        let got = extract(&metadata);
        let got = got.span().span_context().clone();
        assert!(got.is_valid() && got.is_remote());
        assert_eq!(got.trace_id(), trace_id);
        assert_eq!(got.span_id(), span_id);
        assert!(got.is_sampled());
        assert_eq!(got.trace_state().get("rrlhf"), Some("1"));
    }

    #[test]
    fn missing_or_malformed_traceparent_extracts_no_parent() {
        set_global_propagator();
        assert!(!extract(&MetadataMap::new()).has_active_span());
        let mut metadata = MetadataMap::new();
        metadata.insert("traceparent", MetadataValue::from_static("00-zz-00-01"));
        assert!(!extract(&metadata).span().span_context().is_valid());
    }

    #[test]
    fn without_a_span_inject_writes_nothing() {
        set_global_propagator();
        let mut metadata = MetadataMap::new();
        inject(&mut metadata);
        assert!(metadata.get("traceparent").is_none());
    }
}

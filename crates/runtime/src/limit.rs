//! A concurrency limit that fails fast: beyond `max` calls in flight, a new call is answered at
//! once with RESOURCE_EXHAUSTED (so clients back off or go elsewhere) instead of queueing behind
//! a saturated model. A call holds its slot until its response body — a whole stream, for
//! streaming RPCs — is finished. Health and reflection are exempt so probes keep working.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

#[derive(Clone, Debug)]
pub struct ConcurrencyGateLayer {
    slots: Arc<Semaphore>,
    max: usize,
}

impl ConcurrencyGateLayer {
    pub fn new(max: usize) -> Self {
        crate::metrics::handle();
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl<S> Layer<S> for ConcurrencyGateLayer {
    type Service = ConcurrencyGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyGate {
            inner,
            slots: self.slots.clone(),
            max: self.max,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConcurrencyGate<S> {
    inner: S,
    slots: Arc<Semaphore>,
    max: usize,
}

fn is_exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl<S, B> Service<http::Request<B>> for ConcurrencyGate<S>
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
        let path = req.uri().path();
        // Only our own methods become label values, so unknown paths cannot blow up the series.
        if path.starts_with("/rrlhf.") {
            metrics::counter!("rrlhf_grpc_requests_total", "method" => path.to_string())
                .increment(1);
        }
        let permit = if is_exempt(path) {
            None
        } else {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    metrics::counter!("rrlhf_grpc_rejected_total").increment(1);
                    let status = Status::resource_exhausted(format!(
                        "server busy: {} requests in flight (server.max_concurrent_requests)",
                        self.max
                    ));
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(match permit {
                Some(permit) => res.map(|body| {
                    Body::new(PermitBody {
                        inner: body,
                        _permit: permit,
                    })
                }),
                None => res,
            })
        })
    }
}

/// A response body that keeps its concurrency slot until it is dropped.
struct PermitBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for PermitBody {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

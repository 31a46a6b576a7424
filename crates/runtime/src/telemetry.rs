//! Logging and tracing: one `init` for every binary. Text or JSON lines on stderr; `log_filter`
//! takes `EnvFilter` directives and `RUST_LOG` overrides it. HTTP/2 and tower internals are
//! quieted to `warn` because at `info` they log every connection.
//!
//! With `server.otlp_endpoint` set, the same `tracing` spans are also exported to an
//! OpenTelemetry collector with OTLP over gRPC, so one trace follows a request from the
//! orchestrator through every service it calls (the `traceparent` hop is
//! [`crate::trace_context`]). Spans leave through a batch processor on its own thread: a slow or
//! absent collector costs dropped spans, never a blocked RPC. Without an endpoint nothing
//! OpenTelemetry-related runs, so logging behaves exactly as before.
//!
//! The provider, layer and subscriber are built by functions that return them
//! ([`otlp_provider`], [`otel_layer`], [`subscriber`]) rather than only by [`init`], because the
//! global subscriber can be set once per process: tests use them under
//! `tracing::subscriber::with_default` instead.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::ServerConfig;

/// The instrumentation scope spans are reported under.
const TRACER_NAME: &str = "rrlhf";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("config: `server.otlp_endpoint` {0}")]
    Exporter(String),
    /// tonic's lazily connecting channel spawns its connection task on the current runtime.
    #[error(
        "telemetry: the OTLP exporter must be built inside a Tokio runtime (call init from within one)"
    )]
    NoRuntime,
    #[error("telemetry: flushing spans at shutdown failed: {0}")]
    Flush(String),
}

/// Keeps span export running; dropping it (or [`Telemetry::shutdown`]) flushes the spans still
/// queued and stops the exporter. Hold it until the server has returned, and drop it while the
/// Tokio runtime the exporter was built in is still alive: the export travels over that
/// runtime's connection.
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops span export at once"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported (an endpoint was configured and this call installed
    /// the global subscriber).
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes queued spans and stops the exporter; what `drop` does, with the error returned.
    pub fn shutdown(mut self) -> Result<(), TelemetryError> {
        self.shutdown_provider()
    }

    fn shutdown_provider(&mut self) -> Result<(), TelemetryError> {
        match self.provider.take() {
            Some(p) => p
                .shutdown()
                .map_err(|e| TelemetryError::Flush(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // The subscriber may already be writing to a closed stderr at exit; a plain eprintln is
        // the last channel left, and a failed final flush must not turn into a panic.
        if let Err(e) = self.shutdown_provider() {
            eprintln!("{e}");
        }
    }
}

/// Installs the global subscriber (fmt layer, plus the OpenTelemetry layer when
/// `cfg.otlp_endpoint` is set) and the W3C trace-context propagator. `default_service_name`
/// (e.g. `rrlhf-reward`) names exported spans unless `cfg.service_name` or
/// `OTEL_SERVICE_NAME` does.
///
/// Idempotent: when a global subscriber is already set (tests start many servers) the call
/// changes nothing and returns an inert guard. With an endpoint it must run inside a Tokio
/// runtime.
pub fn init(cfg: &ServerConfig, default_service_name: &str) -> Result<Telemetry, TelemetryError> {
    crate::trace_context::set_global_propagator();
    if tracing::dispatcher::has_been_set() {
        return Ok(Telemetry::default());
    }
    let provider = match &cfg.otlp_endpoint {
        Some(endpoint) => Some(otlp_provider(
            endpoint,
            resource(cfg, default_service_name),
        )?),
        None => None,
    };
    match subscriber(cfg, provider.as_ref()).try_init() {
        Ok(()) => Ok(Telemetry { provider }),
        // Lost a race with another init: that one's subscriber stays, ours (and its exporter,
        // shut down by the guard's drop) goes.
        Err(_) => Ok(Telemetry::default()),
    }
}

/// What [`init`] installs, without installing it: `cfg`'s filter and text/JSON fmt layer, plus
/// the OpenTelemetry layer of `provider` when given.
pub fn subscriber(
    cfg: &ServerConfig,
    provider: Option<&SdkTracerProvider>,
) -> impl Subscriber + Send + Sync + 'static {
    let directives = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| format!("{},h2=warn,tower=warn,hyper=warn", cfg.log_filter));
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    filtered(filter, cfg.log_json, provider)
}

/// The subscriber stack under an explicit `filter`.
fn filtered(
    filter: EnvFilter,
    json: bool,
    provider: Option<&SdkTracerProvider>,
) -> impl Subscriber + Send + Sync + 'static {
    type Filtered = Layered<EnvFilter, Registry>;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // A Vec of boxed layers lets the JSON/text choice and the optional OTel layer share one
    // type. The filter must stay outside the Vec: a Vec takes the most permissive of its
    // layers' interests, so a filter inside it would let everything through.
    let mut layers: Vec<Box<dyn Layer<Filtered> + Send + Sync>> = vec![if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    }];
    if let Some(p) = provider {
        layers.push(otel_layer(p).boxed());
    }
    tracing_subscriber::registry().with(filter).with(layers)
}

/// `service.name` (config, else `OTEL_SERVICE_NAME`, else `default_service_name`), plus the
/// data-parallel rank when there are several, so replicas' spans can be told apart.
fn resource(cfg: &ServerConfig, default_service_name: &str) -> Resource {
    // `Resource::builder` already reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    let mut builder = Resource::builder();
    let from_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty());
    match &cfg.service_name {
        Some(name) => builder = builder.with_service_name(name.clone()),
        None if !from_env => builder = builder.with_service_name(default_service_name.to_owned()),
        None => {}
    }
    if cfg.world_size > 1 {
        builder = builder.with_attribute(KeyValue::new("rrlhf.rank", i64::from(cfg.rank)));
    }
    builder.build()
}

/// A tracer provider exporting spans with OTLP/gRPC to `endpoint` (e.g.
/// `http://127.0.0.1:4317`) through a batch processor. Must be called inside a Tokio runtime,
/// which must outlive the provider: the channel connects lazily on that runtime, while the
/// batch processor's own thread drives each export.
pub fn otlp_provider(
    endpoint: &str,
    resource: Resource,
) -> Result<SdkTracerProvider, TelemetryError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter(format!("{endpoint:?}: {e}")))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn otel_layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(TRACER_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_applies_to_every_layer() {
        for json in [false, true] {
            let sub = filtered(EnvFilter::new("info,noisy=warn"), json, None);
            tracing::subscriber::with_default(sub, || {
                assert!(!tracing::info_span!("kept").is_disabled());
                assert!(tracing::debug_span!("dropped").is_disabled());
                assert!(tracing::info_span!(target: "noisy", "dropped").is_disabled());
                assert!(!tracing::warn_span!(target: "noisy", "kept").is_disabled());
            });
        }
    }

    #[test]
    fn initout_an_endpoint_exports_nothing() {
        // Whether or not another test installed the global subscriber first, no endpoint
        // means no exporter.
        let t = init(&ServerConfig::default(), "rrlhf-test").unwrap();
        assert!(!t.is_exporting());
        t.shutdown().unwrap();
    }

    #[test]
    fn an_endpoint_outside_a_runtime_is_an_error_not_a_panic() {
        let e =
            otlp_provider("http://127.0.0.1:4317", Resource::builder_empty().build()).unwrap_err();
        assert!(matches!(e, TelemetryError::NoRuntime), "{e}");
    }
}

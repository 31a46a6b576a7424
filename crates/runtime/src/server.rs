//! Runs a gRPC service the way every rrlhf service runs: health, reflection, TLS, auth, limits
//! and graceful shutdown, from one [`ServerConfig`]. Every call gets a tracing span continuing
//! the caller's W3C trace context ([`crate::trace_context`]).
//!
//! Health starts NOT_SERVING; the service flips it with [`HealthReporter`] once its weights are
//! loaded and a warm-up pass ran. On shutdown (SIGTERM/SIGINT, or the caller's signal) health
//! turns NOT_SERVING first, then the listener closes, in-flight calls get
//! `shutdown_grace_secs` to finish, and the function returns.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::ServerConfig;
use crate::limit::ConcurrencyGateLayer;
use crate::trace_context::TraceContextLayer;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {err}")]
    Bind { addr: String, err: std::io::Error },
    #[error("TLS: cannot read {path}: {err}")]
    Tls { path: String, err: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// The health service and its reporter; every service starts NOT_SERVING.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Binds `cfg.addr` (port 0 picks a free port; read it from the returned listener).
pub async fn bind(cfg: &ServerConfig) -> Result<TcpListener, ServeError> {
    TcpListener::bind(&cfg.addr)
        .await
        .map_err(|err| ServeError::Bind {
            addr: cfg.addr.clone(),
            err,
        })
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Serves `routes` (already wrapped in auth by the caller) plus health and reflection on
/// `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    cfg: &ServerConfig,
    listener: TcpListener,
    routes: Routes,
    health_reporter: HealthReporter,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    service_names: &[&str],
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // v1 and the older v1alpha: grpcurl and other tools still ask for either.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rrlhf_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let mut builder = Server::builder();
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|err| ServeError::Tls {
                path: p.display().to_string(),
                err,
            })
        };
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &cfg.tls_client_ca {
            // Mutual TLS: a client without a certificate from this CA is turned away in the
            // handshake, before any RPC.
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(tls)?;
    }
    let routes = routes
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha);
    let local: Option<SocketAddr> = listener.local_addr().ok();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Tracing outermost, so calls the concurrency gate turns away still get a span (with
    // their RESOURCE_EXHAUSTED status) in the caller's trace.
    let server = builder
        .layer(TraceContextLayer)
        .layer(ConcurrencyGateLayer::new(cfg.max_concurrent_requests))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tracing::info!(addr = ?local, "serving");
    tokio::select! {
        res = &mut server => return res.map_err(ServeError::from),
        _ = shutdown => {}
    }
    tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
    set_not_serving(&health_reporter, service_names).await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(
        Duration::from_secs_f64(cfg.shutdown_grace_secs),
        &mut server,
    )
    .await
    {
        Ok(res) => res.map_err(ServeError::from),
        Err(_) => {
            tracing::warn!(
                grace_secs = cfg.shutdown_grace_secs,
                "in-flight calls did not finish in time; closing"
            );
            Ok(())
        }
    }
}

/// Marks `service_names` and the server as SERVING.
pub async fn set_serving(reporter: &HealthReporter, service_names: &[&str]) {
    set_status(reporter, service_names, ServingStatus::Serving).await;
}

/// Marks `service_names` and the server as NOT_SERVING.
pub async fn set_not_serving(reporter: &HealthReporter, service_names: &[&str]) {
    set_status(reporter, service_names, ServingStatus::NotServing).await;
}

async fn set_status(reporter: &HealthReporter, service_names: &[&str], status: ServingStatus) {
    for name in service_names {
        reporter.set_service_status(*name, status).await;
    }
    reporter.set_service_status("", status).await;
}

/// A service being served: where, and the task that ends when the server has shut down.
#[derive(Debug)]
pub struct Launched {
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, when `server.metrics_addr` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// Binds `cfg.addr`, wraps `service` (a generated `*Server`, with the model already loaded and
/// warm) in bearer auth, marks it SERVING and serves it until `shutdown` resolves. When
/// `engine_stopped` resolves first, health turns NOT_SERVING: calls would only get UNAVAILABLE.
pub async fn launch<S>(
    cfg: &ServerConfig,
    service: S,
    engine_stopped: impl Future<Output = ()> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Launched, ServeError>
where
    S: tonic::server::NamedService
        + tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let token = cfg.token()?;
    let listener = bind(cfg).await?;
    let addr = listener.local_addr().map_err(|err| ServeError::Bind {
        addr: cfg.addr.clone(),
        err,
    })?;
    let (reporter, health_service) = health();
    let api = tonic::service::interceptor::InterceptedService::new(
        service,
        crate::auth::BearerAuth::new(token.as_deref()),
    );
    let routes = Routes::new(api);
    set_serving(&reporter, &[S::NAME]).await;
    let engine_reporter = reporter.clone();
    tokio::spawn(async move {
        engine_stopped.await;
        tracing::warn!(
            service = S::NAME,
            "the model engine has stopped: health is NOT_SERVING"
        );
        set_not_serving(&engine_reporter, &[S::NAME]).await;
    });
    // The metrics endpoint stops with the gRPC server.
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_addr = match &cfg.metrics_addr {
        Some(m) => Some(
            crate::metrics::serve(m, async {
                let _ = metrics_stopped.await;
            })
            .await
            .map_err(|err| ServeError::Bind {
                addr: m.clone(),
                err,
            })?,
        ),
        None => None,
    };
    let cfg = cfg.clone();
    let task = tokio::spawn(async move {
        let result = serve(
            &cfg,
            listener,
            routes,
            reporter,
            health_service,
            &[S::NAME],
            shutdown,
        )
        .await;
        let _ = metrics_stop.send(());
        result
    });
    Ok(Launched {
        addr,
        metrics_addr,
        task,
    })
}

/// A running service: where it listens, its model engine, and the task serving it.
#[derive(Debug)]
pub struct Running<E> {
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, when `server.metrics_addr` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub engine: E,
    pub task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

//! One service under test: started on `127.0.0.1:0` with one libtorch thread, serving once its
//! health says SERVING, stopped when dropped or by [`Served::stop`].

use rrlhf_runtime::server::Running;
use rrlhf_runtime::service::{self, Config, ModelService};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A running service and its stop signal.
#[derive(Debug)]
pub struct Served<S: ModelService> {
    pub running: Running<S::Engine>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl<S: ModelService> Served<S> {
    pub fn url(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// A channel to the service.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("a valid URL")
            .connect()
            .await
            .expect("connect to the service")
    }

    /// The health status of the service (by its gRPC name).
    pub async fn health(&self, grpc_service: &str) -> ServingStatus {
        let status = HealthClient::new(self.channel().await)
            .check(HealthCheckRequest {
                service: grpc_service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status;
        ServingStatus::try_from(status).expect("a known status")
    }

    /// The running service and the sender that stops it (dropping the sender stops it too).
    pub fn into_parts(self) -> (Running<S::Engine>, tokio::sync::oneshot::Sender<()>) {
        (self.running, self.stop)
    }

    /// Graceful shutdown; resolves when the server has exited.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.running.task.await;
    }
}

/// `cfg` on a free loopback port with one libtorch thread (tests run in parallel).
pub fn on_free_port<X: rrlhf_runtime::ServiceSettings>(
    mut cfg: rrlhf_runtime::ModelServiceConfig<X>,
) -> rrlhf_runtime::ModelServiceConfig<X> {
    cfg.server.addr = "127.0.0.1:0".into();
    cfg.engine.threads = 1;
    cfg
}

/// Starts `S` with `cfg` (moved to a free port, one thread); panics with the reason if it does
/// not start. Returns once the model is loaded and health says SERVING.
pub async fn spawn<S: ModelService>(cfg: Config<S>) -> Served<S> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = service::start::<S>(on_free_port(cfg), async {
        let _ = stopped.await;
    })
    .await
    .unwrap_or_else(|e| panic!("the {} service did not start: {e}", S::NAME));
    Served { running, stop }
}

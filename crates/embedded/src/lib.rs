//! `rrlhf-embedded`: the four model services started in this process, each on its own
//! `127.0.0.1:0` port with real gRPC — the same code as the distributed deployment, only
//! co-located. `rrlhf run` drives them with the orchestrator; end-to-end tests use them too.

use std::path::{Path, PathBuf};

use rrlhf_actor_service::ActorServiceConfig;
use rrlhf_critic_service::CriticServiceConfig;
use rrlhf_orchestrator::config::Endpoints;
use rrlhf_reference_service::ReferenceServiceConfig;
use rrlhf_reward_service::RewardServiceConfig;
use rrlhf_runtime::server::ServeError;
use rrlhf_runtime::{EngineConfig, ServerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The models behind the services.
#[derive(Debug, Clone)]
pub struct ModelDirs {
    /// The SFT policy: the actor's start and the frozen reference.
    pub policy: PathBuf,
    /// The critic's start: a stage-1 (Bradley–Terry) reward model.
    pub critic: PathBuf,
    /// The BRME reward model.
    pub reward: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub max_length: usize,
    pub device: String,
    pub auth_token: Option<String>,
    /// How long a stopping service lets in-flight calls finish.
    pub shutdown_grace_secs: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_length: 512,
            device: "cpu".into(),
            auth_token: None,
            shutdown_grace_secs: 5.0,
        }
    }
}

fn server(addr: &str, o: &Options) -> ServerConfig {
    ServerConfig {
        addr: addr.into(),
        auth_token: o.auth_token.clone(),
        shutdown_grace_secs: o.shutdown_grace_secs,
        ..ServerConfig::default()
    }
}

fn engine(o: &Options) -> EngineConfig {
    EngineConfig {
        device: o.device.clone(),
        ..EngineConfig::default()
    }
}

/// The reward service's config at `addr` (public so a test can restart it on the same port).
pub fn reward_config(model: &Path, addr: &str, o: &Options) -> RewardServiceConfig {
    RewardServiceConfig {
        server: server(addr, o),
        engine: engine(o),
        model: model.to_path_buf(),
        max_length: o.max_length,
        // A rollout is never refused for its length: its end is scored instead.
        overlong: "truncate".into(),
        ..RewardServiceConfig::default()
    }
}

type Served = JoinHandle<Result<(), ServeError>>;

/// One running service: its address, its stop signal and its serving task.
#[derive(Debug)]
pub struct Service {
    pub addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: Served,
}

impl Service {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown; resolves when the server has exited.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

type StartError = Box<dyn std::error::Error + Send + Sync>;

async fn started<F, Fut>(name: &str, start: F) -> anyhow::Result<Service>
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(std::net::SocketAddr, Served), StartError>>,
{
    let (stop, rx) = oneshot::channel::<()>();
    let signal = Box::pin(async move {
        let _ = rx.await;
    });
    let (addr, task) = start(signal)
        .await
        .map_err(|e| anyhow::anyhow!("starting the {name} service: {e}"))?;
    Ok(Service { addr, stop, task })
}

/// Starts the reward service at `addr`.
pub async fn start_reward(cfg: RewardServiceConfig) -> anyhow::Result<Service> {
    started("reward", |s| async move {
        rrlhf_reward_service::start(cfg, s)
            .await
            .map(|r| (r.addr, r.task))
    })
    .await
}

/// The four services.
#[derive(Debug)]
pub struct Cluster {
    pub actor: Service,
    pub critic: Service,
    pub reference: Service,
    pub reward: Service,
}

impl Cluster {
    /// Loads every model and serves it; resolves once all four answer health SERVING.
    pub async fn start(dirs: &ModelDirs, o: &Options) -> anyhow::Result<Self> {
        let any = "127.0.0.1:0";
        let actor_cfg = ActorServiceConfig {
            server: server(any, o),
            engine: engine(o),
            model: dirs.policy.clone(),
            max_length: o.max_length,
            ..ActorServiceConfig::default()
        };
        let critic_cfg = CriticServiceConfig {
            server: server(any, o),
            engine: engine(o),
            model: dirs.critic.clone(),
            max_length: o.max_length,
            ..CriticServiceConfig::default()
        };
        let reference_cfg = ReferenceServiceConfig {
            server: server(any, o),
            engine: engine(o),
            model: dirs.policy.clone(),
            max_length: o.max_length,
        };
        let actor = started("actor", |s| async move {
            rrlhf_actor_service::start(actor_cfg, s)
                .await
                .map(|r| (r.addr, r.task))
        })
        .await?;
        let critic = started("critic", |s| async move {
            rrlhf_critic_service::start(critic_cfg, s)
                .await
                .map(|r| (r.addr, r.task))
        })
        .await?;
        let reference = started("reference", |s| async move {
            rrlhf_reference_service::start(reference_cfg, s)
                .await
                .map(|r| (r.addr, r.task))
        })
        .await?;
        let reward = start_reward(reward_config(&dirs.reward, any, o)).await?;
        Ok(Self {
            actor,
            critic,
            reference,
            reward,
        })
    }

    pub fn endpoints(&self, auth_token: Option<String>) -> Endpoints {
        Endpoints {
            actor: vec![self.actor.url()],
            critic: vec![self.critic.url()],
            reference: vec![self.reference.url()],
            reward: vec![self.reward.url()],
            auth_token,
        }
    }

    pub async fn stop(self) {
        self.actor.stop().await;
        self.critic.stop().await;
        self.reference.stop().await;
        self.reward.stop().await;
    }
}

//! `rrlhf-embedded`: the four model services started in this process, each on its own
//! `127.0.0.1:0` port with real gRPC — the same code as the distributed deployment, only
//! co-located. `rrlhf run` drives them with the orchestrator; end-to-end tests use them too.

use std::path::{Path, PathBuf};

use rrlhf_actor_service::{ActorServer, ActorServiceConfig};
use rrlhf_critic_service::{CriticServer, CriticServiceConfig};
use rrlhf_orchestrator::config::Endpoints;
use rrlhf_reference_service::ReferenceServer;
use rrlhf_reward_service::{RewardServer, RewardServiceConfig};
use rrlhf_runtime::server::ServeError;
use rrlhf_runtime::service::{self as model_service, Config, ModelService};
use rrlhf_runtime::{EngineConfig, ModelServiceConfig, ServerConfig, ServiceSettings};
use rrlhf_util::lora::LoraConfig;
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
    /// Parameter dtype of every service's model (`f32` or `bf16`).
    pub dtype: String,
    pub auth_token: Option<String>,
    /// How long a stopping service lets in-flight calls finish.
    pub shutdown_grace_secs: f64,
    /// Whether the services merge concurrent requests into shared batches (`engine.merge_requests`).
    pub merge_requests: bool,
    /// LoRA adapters for the actor; its frozen base then serves the reference log-probs and no
    /// reference service is started.
    pub actor_lora: Option<LoraConfig>,
    /// libtorch intra-op threads of every engine (0: libtorch's default, one per core). Each
    /// engine leads its own OpenMP team; `bench/thread_budget.sh` measures the choice.
    pub threads: usize,
    /// ZeRO stage of the actor and critic groups (`server.zero_stage`; it matters with more
    /// than one rank).
    pub zero_stage: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_length: 512,
            device: "cpu".into(),
            dtype: "f32".into(),
            auth_token: None,
            shutdown_grace_secs: 5.0,
            merge_requests: true,
            actor_lora: None,
            threads: 0,
            zero_stage: 0,
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
        dtype: o.dtype.clone(),
        merge_requests: o.merge_requests,
        threads: o.threads,
        ..EngineConfig::default()
    }
}

/// A service's config: `model` served at `server`, the options' engine and length limit, and
/// the service's default settings.
fn config<X: ServiceSettings>(
    model: &Path,
    server: ServerConfig,
    o: &Options,
) -> ModelServiceConfig<X> {
    ModelServiceConfig {
        server,
        engine: engine(o),
        model: model.to_path_buf(),
        max_length: o.max_length,
        service: X::default(),
    }
}

/// The reward service's config at `addr` (public so a test can restart it on the same port).
pub fn reward_config(model: &Path, addr: &str, o: &Options) -> RewardServiceConfig {
    let mut cfg: RewardServiceConfig = config(model, server(addr, o), o);
    // A rollout is never refused for its length: its end is scored instead.
    cfg.service.overlong = rrlhf_reward_service::Overlong::Truncate;
    cfg
}

fn actor_cfg(model: &Path, server: ServerConfig, o: &Options) -> ActorServiceConfig {
    let mut cfg: ActorServiceConfig = config(model, server, o);
    cfg.service.lora = o.actor_lora.clone();
    cfg
}

/// A lone actor's config at `addr` (public so a test can restart it on the same port).
pub fn actor_config(model: &Path, addr: &str, o: &Options) -> ActorServiceConfig {
    actor_cfg(model, server(addr, o), o)
}

/// A lone critic's config at `addr` (public so a test can restart it on the same port).
pub fn critic_config(model: &Path, addr: &str, o: &Options) -> CriticServiceConfig {
    config(model, server(addr, o), o)
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

/// Starts service `S` with `cfg`; resolves once it serves (health SERVING).
pub async fn start<S: ModelService>(cfg: Config<S>) -> anyhow::Result<Service> {
    let (stop, rx) = oneshot::channel::<()>();
    let running = model_service::start::<S>(cfg, async move {
        let _ = rx.await;
    })
    .await
    .map_err(|e| anyhow::anyhow!("starting the {} service: {e}", S::NAME))?;
    Ok(Service {
        addr: running.addr,
        stop,
        task: running.task,
    })
}

/// Starts the reward service at `addr`.
pub async fn start_reward(cfg: RewardServiceConfig) -> anyhow::Result<Service> {
    start::<RewardServer>(cfg).await
}

/// The four services; several of each when started with replicas (actor and critic ranks get
/// shards of every batch, reference and reward replicas share the scoring).
#[derive(Debug)]
pub struct Cluster {
    pub actor: Service,
    pub critic: Service,
    /// None with a LoRA actor, whose base serves the reference.
    pub reference: Option<Service>,
    pub reward: Service,
    /// Further instances of each service, beyond the first.
    pub extra: Vec<Service>,
    extra_urls: ExtraUrls,
    dirs: ModelDirs,
    options: Options,
}

#[derive(Debug, Default)]
struct ExtraUrls {
    actor: Vec<String>,
    critic: Vec<String>,
    reference: Vec<String>,
    reward: Vec<String>,
}

/// A training rank's place in its data-parallel group (actor and critic ranks).
#[derive(Debug, Clone, Default)]
struct Rank {
    rank: u32,
    world_size: u32,
    /// The group's TCPStore, hosted by rank 0 (none for a single rank).
    store: Option<String>,
}

impl Rank {
    fn server(&self, o: &Options) -> ServerConfig {
        ServerConfig {
            rank: self.rank,
            world_size: self.world_size.max(1),
            store_addr: self.store.clone(),
            zero_stage: o.zero_stage,
            ..server("127.0.0.1:0", o)
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Trained {
    Actor,
    Critic,
}

/// Starts `n` ranks of the actor or critic at once (their group's rendezvous needs them all),
/// in rank order.
async fn start_ranks(
    which: Trained,
    dirs: &ModelDirs,
    o: &Options,
    n: usize,
) -> anyhow::Result<Vec<Service>> {
    let store = if n > 1 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Some(format!("127.0.0.1:{port}"))
    } else {
        None
    };
    let mut tasks = tokio::task::JoinSet::new();
    for rank in 0..n {
        let (dirs, o) = (dirs.clone(), o.clone());
        let place = Rank {
            rank: rank as u32,
            world_size: n as u32,
            store: store.clone(),
        };
        tasks.spawn(async move {
            let server = place.server(&o);
            let started = match which {
                Trained::Actor => start::<ActorServer>(actor_cfg(&dirs.policy, server, &o)).await,
                Trained::Critic => start::<CriticServer>(config(&dirs.critic, server, &o)).await,
            };
            (rank, started)
        });
    }
    let mut ranks: Vec<(usize, Service)> = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        let (rank, started) = joined?;
        ranks.push((rank, started?));
    }
    ranks.sort_by_key(|(rank, _)| *rank);
    Ok(ranks.into_iter().map(|(_, s)| s).collect())
}

async fn start_reference(dirs: &ModelDirs, o: &Options) -> anyhow::Result<Service> {
    start::<ReferenceServer>(config(&dirs.policy, server("127.0.0.1:0", o), o)).await
}

impl Cluster {
    /// Loads every model and serves it; resolves once all four answer health SERVING.
    pub async fn start(dirs: &ModelDirs, o: &Options) -> anyhow::Result<Self> {
        Self::with_replicas(dirs, o, 1).await
    }

    /// `n` instances of every service (n ≥ 1), each on its own port: `n` data-parallel actor
    /// ranks and `n` critic ranks (each group on its own loopback TCPStore), and `n` reference
    /// and reward replicas.
    pub async fn with_replicas(dirs: &ModelDirs, o: &Options, n: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(n >= 1, "replicas: at least one of each service");
        let reward_cfg = || reward_config(&dirs.reward, "127.0.0.1:0", o);
        let (actors, critics) = tokio::try_join!(
            start_ranks(Trained::Actor, dirs, o, n),
            start_ranks(Trained::Critic, dirs, o, n),
        )?;
        let (mut actors, mut critics) = (actors.into_iter(), critics.into_iter());
        let mut cluster = Self {
            actor: actors.next().expect("n ≥ 1 actor ranks"),
            critic: critics.next().expect("n ≥ 1 critic ranks"),
            reference: match o.actor_lora {
                Some(_) => None,
                None => Some(start_reference(dirs, o).await?),
            },
            reward: start_reward(reward_cfg()).await?,
            extra: Vec::new(),
            extra_urls: ExtraUrls::default(),
            dirs: dirs.clone(),
            options: o.clone(),
        };
        for (a, c) in actors.zip(critics) {
            cluster.extra_urls.actor.push(a.url());
            cluster.extra_urls.critic.push(c.url());
            cluster.extra.extend([a, c]);
        }
        for _ in 1..n {
            if cluster.reference.is_some() {
                let r = start_reference(dirs, o).await?;
                cluster.extra_urls.reference.push(r.url());
                cluster.extra.push(r);
            }
            let w = start_reward(reward_cfg()).await?;
            cluster.extra_urls.reward.push(w.url());
            cluster.extra.push(w);
        }
        Ok(cluster)
    }

    pub fn endpoints(&self, auth_token: Option<String>) -> Endpoints {
        let with = |first: &Service, more: &[String]| {
            std::iter::once(first.url())
                .chain(more.iter().cloned())
                .collect()
        };
        let x = &self.extra_urls;
        Endpoints {
            actor: with(&self.actor, &x.actor),
            critic: with(&self.critic, &x.critic),
            reference: match &self.reference {
                Some(r) => with(r, &x.reference),
                None => Vec::new(),
            },
            reward: with(&self.reward, &x.reward),
            reference_from_actor_base: self.reference.is_none(),
            auth_token,
            auth_token_file: None,
            tls: Default::default(),
            reward_name: None,
            reward_calibration: None,
            extra_rewards: Vec::new(),
        }
    }

    /// Stops the actor, keeps it away for `down`, and starts a fresh one at the same address:
    /// what a crashed and restarted process looks like from outside (start weights, a new
    /// instance id). A lone actor only: a rank of a group cannot rejoin its group alone.
    pub async fn restart_actor(self, down: std::time::Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            self.extra_urls.actor.is_empty(),
            "restart: the actor is a group"
        );
        let addr = self.actor.addr.to_string();
        self.actor.stop().await;
        tokio::time::sleep(down).await;
        let cfg = actor_config(&self.dirs.policy, &addr, &self.options);
        let actor = start::<ActorServer>(cfg).await?;
        Ok(Self { actor, ..self })
    }

    /// [`Cluster::restart_actor`] for the critic.
    pub async fn restart_critic(self, down: std::time::Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            self.extra_urls.critic.is_empty(),
            "restart: the critic is a group"
        );
        let addr = self.critic.addr.to_string();
        self.critic.stop().await;
        tokio::time::sleep(down).await;
        let cfg = critic_config(&self.dirs.critic, &addr, &self.options);
        let critic = start::<CriticServer>(cfg).await?;
        Ok(Self { critic, ..self })
    }

    pub async fn stop(self) {
        for s in [self.actor, self.critic, self.reward]
            .into_iter()
            .chain(self.reference)
            .chain(self.extra)
        {
            s.stop().await;
        }
    }
}

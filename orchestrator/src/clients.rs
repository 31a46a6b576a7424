//! gRPC clients of the four services. Channels connect lazily and reconnect by themselves, so a
//! service that restarts at the same address is picked up again; every call goes through
//! [`retry`], which waits out UNAVAILABLE (and other transient codes) with exponential backoff.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rrlhf_proto::actor::v1::actor_service_client::ActorServiceClient;
use rrlhf_proto::critic::v1::critic_service_client::CriticServiceClient;
use rrlhf_proto::reference::v1::reference_service_client::ReferenceServiceClient;
use rrlhf_proto::reward::v1::reward_service_client::RewardServiceClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::config::{Endpoints, RetrySettings};
use crate::error::{OrchestratorError, Result, is_transient_code};

/// Adds the bearer token (when configured) and the W3C trace context of the calling span to
/// every call, so a service's spans join the orchestrator's trace of the step.
#[derive(Clone, Debug)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        rrlhf_runtime::trace_context::inject(request.metadata_mut());
        Ok(request)
    }
}

pub type Svc = InterceptedService<Channel, Auth>;

/// Clients of one service: one per endpoint, handed out round-robin.
#[derive(Clone, Debug)]
pub struct Pool<C> {
    clients: Arc<Vec<C>>,
    next: Arc<AtomicUsize>,
}

impl<C: Clone> Pool<C> {
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The next replica (round-robin).
    pub fn any(&self) -> C {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    /// Rank `i`'s client.
    pub fn rank(&self, i: usize) -> C {
        self.clients[i].clone()
    }
}

/// Clients of every service.
#[derive(Clone, Debug)]
pub struct Services {
    pub actor: Pool<ActorServiceClient<Svc>>,
    pub critic: Pool<CriticServiceClient<Svc>>,
    pub reference: Pool<ReferenceServiceClient<Svc>>,
    pub reward: RewardPool,
    /// The further reward sources (`endpoints.extra_rewards`), in config order.
    pub extra_rewards: Vec<NamedRewardPool>,
    /// Reference log-probs come from the actor's `BaseLogProbs` (`endpoints.reference_from_actor_base`).
    pub reference_from_actor_base: bool,
}

pub type RewardPool = Pool<RewardServiceClient<Svc>>;

/// The clients of one extra reward source.
#[derive(Clone, Debug)]
pub struct NamedRewardPool {
    pub name: String,
    pub pool: RewardPool,
}

/// Messages up to 256 MiB: a batch of 128 long sequences with per-token floats is large.
const MAX_MESSAGE: usize = 256 << 20;

impl Services {
    pub fn connect(e: &Endpoints) -> Result<Self> {
        let token = rrlhf_runtime::secrets::token(
            "endpoints.auth_token",
            e.auth_token.as_deref(),
            e.auth_token_file.as_deref(),
        )?;
        let tls = e.tls.config("endpoints.tls")?;
        let auth = Auth(
            token
                .as_ref()
                .map(|t| {
                    format!("Bearer {t}").parse().map_err(|_| {
                        OrchestratorError::invalid("endpoints.auth_token", "not valid header text")
                    })
                })
                .transpose()?,
        );
        let pool = |name: &str, urls: &[String]| -> Result<Vec<Channel>> {
            urls.iter()
                .map(|u| {
                    let bad = |e: &dyn std::fmt::Display| {
                        OrchestratorError::invalid(
                            format!("endpoints.{name}"),
                            format!("`{u}`: {e}"),
                        )
                    };
                    let mut endpoint = Endpoint::from_shared(u.clone())
                        .map_err(|e| bad(&e))?
                        .connect_timeout(Duration::from_secs(5))
                        .tcp_nodelay(true);
                    if u.starts_with("https://") {
                        let tls = tls.clone().ok_or_else(|| {
                            OrchestratorError::invalid(
                                "endpoints.tls.ca",
                                format!("is needed for `{u}`"),
                            )
                        })?;
                        endpoint = endpoint.tls_config(tls).map_err(|e| bad(&e))?;
                    }
                    Ok(endpoint.connect_lazy())
                })
                .collect()
        };
        fn clients<C>(channels: Vec<Channel>, auth: &Auth, make: impl Fn(Svc) -> C) -> Pool<C> {
            let clients = channels
                .into_iter()
                .map(|ch| make(InterceptedService::new(ch, auth.clone())))
                .collect();
            Pool {
                clients: Arc::new(clients),
                next: Arc::new(AtomicUsize::new(0)),
            }
        }
        Ok(Self {
            actor: clients(pool("actor", &e.actor)?, &auth, |s| {
                ActorServiceClient::new(s)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE)
            }),
            critic: clients(pool("critic", &e.critic)?, &auth, |s| {
                CriticServiceClient::new(s)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE)
            }),
            reference: clients(pool("reference", &e.reference)?, &auth, |s| {
                ReferenceServiceClient::new(s)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE)
            }),
            reward: clients(pool("reward", &e.reward)?, &auth, reward_client),
            extra_rewards: e
                .extra_rewards
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let channels = pool(&format!("extra_rewards[{i}].urls"), &s.urls)?;
                    Ok(NamedRewardPool {
                        name: s.name.clone(),
                        pool: clients(channels, &auth, reward_client),
                    })
                })
                .collect::<Result<_>>()?,
            reference_from_actor_base: e.reference_from_actor_base,
        })
    }
}

fn reward_client(s: Svc) -> RewardServiceClient<Svc> {
    RewardServiceClient::new(s)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Whether a failed call may succeed when repeated (see [`is_transient_code`]).
pub fn is_transient(s: &Status) -> bool {
    is_transient_code(s.code())
}

/// Backoff state for one operation.
#[derive(Debug)]
pub struct Backoff<'a> {
    settings: &'a RetrySettings,
    delay: Duration,
    started: Instant,
    pub attempts: u32,
}

impl<'a> Backoff<'a> {
    pub fn new(settings: &'a RetrySettings) -> Self {
        Self {
            settings,
            delay: Duration::from_millis(settings.initial_ms),
            started: Instant::now(),
            attempts: 0,
        }
    }

    /// Sleeps before the next attempt, or returns the error when the time is up (with the
    /// code of the last failure, so the caller still sees what kind it was).
    pub async fn wait(&mut self, what: &str, err: Status) -> Result<()> {
        if self.started.elapsed() > Duration::from_secs(self.settings.give_up_secs) {
            let message = format!(
                "gave up after {} attempts in {}s: {}",
                self.attempts + 1,
                self.settings.give_up_secs,
                err.message()
            );
            return Err(OrchestratorError::rpc(
                what,
                Status::new(err.code(), message),
            ));
        }
        self.attempts += 1;
        tracing::warn!(%what, code = ?err.code(), message = err.message(), attempt = self.attempts,
            delay_ms = self.delay.as_millis() as u64, "service call failed; retrying");
        metrics::counter!("rrlhf_orchestrator_retries_total").increment(1);
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_millis(self.settings.max_ms));
        Ok(())
    }
}

/// Runs `call` until it succeeds, retrying transient failures with backoff.
/// `message` as a request the server abandons after `secs` (sent as `grpc-timeout`).
pub fn with_deadline<T>(message: T, secs: f64) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(Duration::from_secs_f64(secs));
    request
}

pub async fn retry<T, F, Fut>(settings: &RetrySettings, what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Status>>,
{
    let mut backoff = Backoff::new(settings);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) => backoff.wait(what, e).await?,
            Err(e) => return Err(OrchestratorError::rpc(what, e)),
        }
    }
}

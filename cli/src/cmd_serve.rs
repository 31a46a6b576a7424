//! `rrlhf serve reward|reference|critic|actor` and `rrlhf score` (a client of the reward service).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rrlhf_actor_service::ActorServer;
use rrlhf_critic_service::CriticServer;
use rrlhf_proto::reward::v1::reward_service_client::RewardServiceClient;
use rrlhf_proto::reward::v1::{Sample, ScoreRequest};
use rrlhf_reference_service::ReferenceServer;
use rrlhf_reward_service::RewardServer;
use rrlhf_runtime::ModelService;
use rrlhf_runtime::secrets::ClientTls;
use rrlhf_runtime::service::{self, Config};
use serde_json::{Map, Value, json};
use tonic::transport::Channel;

#[derive(Subcommand, Debug)]
pub enum ServeCommand {
    /// The reward service (BRME scoring): `rrlhf.reward.v1.RewardService`.
    Reward(ServeArgs),
    /// The reference service (frozen SFT policy log-probabilities): `rrlhf.reference.v1.ReferenceService`.
    Reference(ServeArgs),
    /// The critic service (PPO value model, from a stage-1 RM): `rrlhf.critic.v1.CriticService`.
    Critic(ServeArgs),
    /// The actor service (the policy: streamed generation, log-probs, PPO): `rrlhf.actor.v1.ActorService`.
    Actor(ServeArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file (`[server]`, `[engine]`, `model`, `max_length` and the service's own
    /// settings; flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model directory (a reward model for `reward`, the SFT model for `reference`, a stage-1
    /// reward model or saved critic for `critic`, the SFT model or a saved actor for `actor`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Listen address HOST:PORT.
    #[arg(long)]
    addr: Option<String>,
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    dtype: Option<String>,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    max_length: Option<usize>,
    /// Require `authorization: Bearer TOKEN` on every call but health, TOKEN being this
    /// file's contents (or set `RRLHF__SERVER__AUTH_TOKEN`; a token is never an argument,
    /// which anyone on the machine can read in the process list).
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
}

impl ServeArgs {
    /// Only the flags given, nested like the config, so they override file and environment.
    fn overrides(&self) -> Value {
        let mut root = Map::new();
        let mut server = Map::new();
        let put = |map: &mut Map<String, Value>, key: &str, v: Option<Value>| {
            if let Some(v) = v {
                map.insert(key.into(), v);
            }
        };
        put(&mut root, "model", self.model.as_ref().map(|m| json!(m)));
        let mut engine = Map::new();
        put(&mut engine, "device", self.device.clone().map(Value::from));
        put(&mut engine, "dtype", self.dtype.clone().map(Value::from));
        put(&mut engine, "threads", self.threads.map(Value::from));
        if !engine.is_empty() {
            root.insert("engine".into(), Value::Object(engine));
        }
        put(&mut root, "max_length", self.max_length.map(Value::from));
        put(&mut server, "addr", self.addr.clone().map(Value::from));
        put(
            &mut server,
            "auth_token_file",
            self.auth_token_file.as_ref().map(|p| json!(p)),
        );
        if !server.is_empty() {
            root.insert("server".into(), Value::Object(server));
        }
        Value::Object(root)
    }
}

/// Loads service `S`'s config (file → env → flags), validates it, and serves until
/// SIGTERM/SIGINT.
fn serve<S: ModelService>(a: &ServeArgs) -> Result<()> {
    let cfg = Config::<S>::load(a.config.as_deref(), &a.overrides())?;
    cfg.validate()?;
    let rt = tokio::runtime::Runtime::new()?;
    // Inside the runtime: the OTLP exporter's channel lives on it. Declared after `rt`, the
    // guard drops first, flushing queued spans while the runtime can still send them.
    let _telemetry = {
        let _rt = rt.enter();
        rrlhf_runtime::telemetry::init(&cfg.server, &format!("rrlhf-{}", S::NAME))?
    };
    rt.block_on(async {
        let running = service::start::<S>(cfg, rrlhf_runtime::server::termination_signal())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!("{} service listening on {}", S::NAME, running.addr);
        running.task.await?.map_err(|e| anyhow::anyhow!("{e}"))
    })
}

pub fn run(cmd: ServeCommand) -> Result<()> {
    match cmd {
        ServeCommand::Reward(a) => serve::<RewardServer>(&a),
        ServeCommand::Reference(a) => serve::<ReferenceServer>(&a),
        ServeCommand::Actor(a) => serve::<ActorServer>(&a),
        ServeCommand::Critic(a) => serve::<CriticServer>(&a),
    }
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Reward service address: HOST:PORT or a URL.
    #[arg(long)]
    addr: String,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    response: String,
    /// Aggregation strategy (empty: the server's default).
    #[arg(long, default_value = "")]
    strategy: String,
    #[arg(long)]
    lambda: Option<f32>,
    /// A file holding the bearer token, when the service requires one (or set `RRLHF_TOKEN`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM CA certificate: connect with TLS and trust this CA.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// PEM client certificate and key, for a service that requires them (mutual TLS).
    #[arg(long, requires = "key", requires = "ca")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Server name to verify with TLS (default: the host of --addr).
    #[arg(long)]
    domain: Option<String>,
    /// Print the full score as JSON.
    #[arg(long)]
    json: bool,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let tls = a.ca.is_some();
        let url = if a.addr.contains("://") { a.addr.clone() } else { format!("{}://{}", if tls { "https" } else { "http" }, a.addr) };
        let mut endpoint = Channel::from_shared(url.clone()).with_context(|| format!("bad address {url}"))?;
        let tls = ClientTls { ca: a.ca.clone(), cert: a.cert.clone(), key: a.key.clone(), domain: a.domain.clone() };
        if let Some(tls_cfg) = tls.config("--ca/--cert/--key")? {
            endpoint = endpoint.tls_config(tls_cfg)?;
        }
        let env_token = std::env::var("RRLHF_TOKEN").ok().filter(|t| !t.is_empty());
        let token = rrlhf_runtime::secrets::token("--token-file", env_token.as_deref().filter(|_| a.token_file.is_none()), a.token_file.as_deref())?;
        let channel = endpoint.connect().await.with_context(|| format!("connecting to {url}"))?;
        let mut client = RewardServiceClient::new(channel);
        let mut request = tonic::Request::new(ScoreRequest {
            samples: vec![Sample { id: "0".into(), prompt: a.prompt.clone(), response: a.response.clone(), token_ids: vec![] }],
            strategy: a.strategy.clone(),
            lambda: a.lambda,
            ..Default::default()
        });
        if let Some(t) = &token {
            request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().context("token is not valid metadata")?);
        }
        let response = client.score(request).await.map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?.into_inner();
        let Some(s) = response.scores.first() else { bail!("the service returned no score") };
        if a.json {
            let heads: Vec<Value> = s.heads.iter().map(|h| json!({"mu": h.mu, "sigma": h.sigma})).collect();
            println!("{}", json!({
                "strategy": response.strategy, "reward": s.reward, "nominal": s.nominal, "nominal_head": s.nominal_head,
                "min": s.min, "max": s.max, "mean": s.mean, "median": s.median, "variance": s.variance, "heads": heads,
                "num_tokens": s.num_tokens,
            }));
        } else {
            println!("{} = {:+.4}  (nominal {:+.4} from head {}, min {:+.4}, max {:+.4}, mean {:+.4})", response.strategy, s.reward, s.nominal, s.nominal_head, s.min, s.max, s.mean);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Loads `deploy/k8s/base/config/NAME.toml` with service `S`'s own config type (not
    /// validated: its model paths exist only in the cluster's volumes).
    fn shipped<S: ModelService>(name: &str) -> Config<S> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/k8s/base/config")
            .join(format!("{name}.toml"));
        Config::<S>::load(Some(&path), &serde_json::json!({}))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The manifests' service configs load (unknown keys are errors, so a renamed setting cannot
    /// silently drop out) and train in bf16 with activation checkpointing, as the GPU arithmetic
    /// in docs/deployment.md assumes.
    #[test]
    fn shipped_service_configs_load_with_the_settings_the_arithmetic_needs() {
        let actor = shipped::<ActorServer>("actor");
        let critic = shipped::<CriticServer>("critic");
        for (name, engine, checkpointing) in [
            (
                "actor",
                &actor.engine,
                actor.service.activation_checkpointing,
            ),
            (
                "critic",
                &critic.engine,
                critic.service.activation_checkpointing,
            ),
        ] {
            assert_eq!(engine.dtype, "bf16", "{name}");
            assert!(checkpointing, "{name}: activation_checkpointing");
        }
        assert_eq!(shipped::<ReferenceServer>("reference").engine.dtype, "bf16");
        assert_eq!(shipped::<RewardServer>("reward").engine.dtype, "bf16");
    }
}

//! The skeleton of every model service (actor, critic, reference, reward): one config shape,
//! one way to load, start and serve, so that `rrlhf serve` and the embedded cluster treat the
//! four alike.
//!
//! - [`ModelServiceConfig`]: `[server]`, `[engine]`, `model`, `max_length` — what every model
//!   service has — plus the service's own [`ServiceSettings`] at the top level beside them
//!   (e.g. the actor's `weight_decay`, the reward service's `overlong`).
//! - [`ModelService`]: what a service implements — its name, its settings, how it loads its
//!   model onto an engine thread, what happens when that engine panics, and its tonic server.
//! - [`start`]: validate, load off the async runtime, serve with health/auth/limits, and turn
//!   health NOT_SERVING if the engine stops (see [`crate::engine::PanicPolicy`]).

use std::fmt::Debug;
use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use rrlhf_proto::common::v1::RankInfo;
use rrlhf_util::lora::LoraConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, EngineConfig, ServerConfig, load_config};
use crate::engine::{LoadError, PanicPolicy, Stoppable};
use crate::server::{self, Running};

/// A service's own settings, read from the top level of its config beside the shared ones.
pub trait ServiceSettings:
    Debug + Clone + PartialEq + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The port the service listens on unless told otherwise.
    const DEFAULT_PORT: u16;
    /// The longest sample, in tokens, unless told otherwise.
    const DEFAULT_MAX_LENGTH: usize = 2048;

    /// Checks the settings; the error names the field.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// A service's default port, as a type: the settings types below take it as a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Port<const N: u16>;

/// What [`Port`] says.
pub trait DefaultPort: Debug + Clone + PartialEq + Default + Send + Sync + 'static {
    const PORT: u16;
}

impl<const N: u16> DefaultPort for Port<N> {
    const PORT: u16 = N;
}

/// The settings of a training service (actor, critic) listening on port `P` by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(serialize = "", deserialize = "P: DefaultPort"))]
pub struct TrainerSettings<P> {
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Keep only each decoder layer's input during a `Train` forward and recompute the layer
    /// in backward: activation memory of one layer instead of all, for one more forward pass.
    pub activation_checkpointing: bool,
    /// Train LoRA adapters on a frozen base instead of every weight (`[lora]`: `rank`,
    /// `alpha`, optional `dropout` and `target_modules`); checkpoints then hold the adapters.
    pub lora: Option<LoraConfig>,
    #[serde(skip)]
    pub port: PhantomData<P>,
}

impl<P> Default for TrainerSettings<P> {
    fn default() -> Self {
        Self {
            weight_decay: 0.0,
            activation_checkpointing: false,
            lora: None,
            port: PhantomData,
        }
    }
}

impl<P: DefaultPort> ServiceSettings for TrainerSettings<P> {
    const DEFAULT_PORT: u16 = P::PORT;

    fn validate(&self) -> Result<(), ConfigError> {
        let wd = self.weight_decay;
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(invalid_setting(
                "weight_decay",
                format!("must be ≥ 0, got {wd}"),
            ));
        }
        if let Some(lora) = &self.lora {
            lora.validate_for(self.activation_checkpointing)
                .map_err(|e| invalid_setting("lora", e))?;
        }
        Ok(())
    }
}

/// The settings of a service that has none of its own, listening on port `P` by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "", deserialize = "P: DefaultPort"))]
pub struct NoSettings<P> {
    #[serde(skip)]
    pub port: PhantomData<P>,
}

impl<P> Default for NoSettings<P> {
    fn default() -> Self {
        Self { port: PhantomData }
    }
}

impl<P: DefaultPort> ServiceSettings for NoSettings<P> {
    const DEFAULT_PORT: u16 = P::PORT;
}

/// The config of a model service: the shared sections and fields, and the service's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, bound(deserialize = "X: ServiceSettings"))]
pub struct ModelServiceConfig<X> {
    pub server: ServerConfig,
    pub engine: EngineConfig,
    /// The model directory the service loads (Hugging Face layout, with its tokenizer).
    pub model: PathBuf,
    /// Longest prompt + response, in tokens.
    pub max_length: usize,
    /// The service's own settings (flattened: they sit at the top level of the file).
    #[serde(flatten)]
    pub service: X,
}

impl<X: ServiceSettings> Default for ModelServiceConfig<X> {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                addr: format!("127.0.0.1:{}", X::DEFAULT_PORT),
                ..ServerConfig::default()
            },
            engine: EngineConfig::default(),
            model: PathBuf::new(),
            max_length: X::DEFAULT_MAX_LENGTH,
            service: X::default(),
        }
    }
}

impl<X: ServiceSettings> ModelServiceConfig<X> {
    /// Defaults → TOML `file` → `RRLHF__…` environment → `flags` (see [`load_config`]).
    pub fn load(file: Option<&Path>, flags: &impl Serialize) -> Result<Self, ConfigError> {
        load_config(file, flags)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.engine.validate()?;
        let bad = |field: &str, message: String| {
            Err(ConfigError::Invalid {
                field: field.into(),
                message,
            })
        };
        if self.model.as_os_str().is_empty() {
            return bad("model", "is required (a model directory)".into());
        }
        if !self.model.join("config.json").exists() {
            return bad(
                "model",
                format!(
                    "{} is not a model directory (no config.json)",
                    self.model.display()
                ),
            );
        }
        if self.max_length < 2 {
            return bad(
                "max_length",
                format!("must be ≥ 2, got {}", self.max_length),
            );
        }
        self.service.validate()
    }

    /// Whether this process is one rank of a data-parallel group of several.
    pub fn is_grouped(&self) -> bool {
        self.server.world_size > 1
    }

    /// Where this process runs, for `Info` answers.
    pub fn rank_info(&self) -> RankInfo {
        RankInfo {
            rank: self.server.rank,
            world_size: self.server.world_size,
            device: self.engine.device.clone(),
            instance_id: self.server.instance_id.clone(),
            // A frozen service always holds its start weights; a training service overrides
            // this with its `StartWeightsFlag`.
            start_weights: true,
        }
    }
}

/// A validation error for a service's own setting `field`.
pub fn invalid_setting(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A model service: what [`start`], `rrlhf serve` and the embedded cluster need to know.
pub trait ModelService: Clone + Send + Sync + Sized + 'static {
    /// `actor`, `critic`, `reference` or `reward` (the `rrlhf serve` subcommand).
    const NAME: &'static str;
    /// What the engine does after a batch panicked: read-only models keep serving, training
    /// ones stop (their weights may be half-updated).
    const ON_PANIC: PanicPolicy;
    type Settings: ServiceSettings;
    /// The engine handle kept by [`Running`] (tests read its batching statistics).
    type Engine: Stoppable + Debug + Clone + Send + Sync + 'static;
    /// The generated tonic server wrapping the service.
    type Api: tonic::server::NamedService
        + tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static;

    /// Loads the model on its engine thread and runs a warm-up pass (blocking).
    fn load(cfg: ModelServiceConfig<Self::Settings>) -> Result<Self, LoadError>;
    fn engine(&self) -> Self::Engine;
    /// The tonic server, with `max_message_bytes` as its message-size limit both ways.
    fn api(self, max_message_bytes: usize) -> Self::Api;
}

/// The config type of service `S`.
pub type Config<S> = ModelServiceConfig<<S as ModelService>::Settings>;

/// Why a service did not start.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Validates `cfg`, loads the model off the async runtime (it blocks for seconds and runs a
/// warm-up pass), binds `cfg.server.addr` and serves until `shutdown` resolves. Health turns
/// SERVING once the model is warm, and NOT_SERVING if the engine stops.
pub async fn start<S: ModelService>(
    mut cfg: Config<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running<S::Engine>, StartError> {
    cfg.validate()?;
    cfg.server.instance_id = fresh_instance_id();
    let server_cfg = cfg.server.clone();
    let svc = tokio::task::spawn_blocking(move || S::load(cfg)).await??;
    let engine = svc.engine();
    let stopped = engine.stopped();
    let launched = server::launch(
        &server_cfg,
        svc.api(server_cfg.max_message_bytes),
        stopped,
        shutdown,
    )
    .await?;
    Ok(Running {
        addr: launched.addr,
        metrics_addr: launched.metrics_addr,
        engine,
        task: launched.task,
    })
}

/// A new instance id: 64 random bits (std's per-process random hash keys, mixed with the clock
/// and a counter so two starts in one process differ too), as 16 hex digits.
fn fresh_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map_or(0, |d| d.as_nanos()));
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Trainer = TrainerSettings<Port<50091>>;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn a_service_config_reads_its_own_settings_beside_the_shared_ones() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "actor.toml",
                "model = \"m\"\nmax_length = 64\nweight_decay = 0.1\n[engine]\ndtype = \"bf16\"\n",
            )?;
            let none = serde_json::json!({});
            let c =
                ModelServiceConfig::<Trainer>::load(Some(Path::new("actor.toml")), &none).unwrap();
            assert_eq!(c.service.weight_decay, 0.1);
            assert_eq!((c.max_length, c.engine.dtype.as_str()), (64, "bf16"));
            assert_eq!(
                c.server.addr, "127.0.0.1:50091",
                "the service's default port"
            );

            jail.create_file("typo.toml", "model = \"m\"\nweight_decy = 0.1\n")?;
            let e = ModelServiceConfig::<Trainer>::load(Some(Path::new("typo.toml")), &none)
                .unwrap_err()
                .to_string();
            assert!(e.contains("`weight_decy` is an unknown field"), "{e}");
            assert!(
                e.contains("weight_decay"),
                "the known fields are listed: {e}"
            );

            jail.create_file("nested.toml", "[engine]\ndevise = \"cpu\"\n")?;
            let e = ModelServiceConfig::<NoSettings<Port<1>>>::load(
                Some(Path::new("nested.toml")),
                &none,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("devise"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn validation_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let ok = ModelServiceConfig::<Trainer> {
            model: dir.path().to_path_buf(),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for (cfg, field) in [
            (
                ModelServiceConfig::<Trainer> {
                    model: PathBuf::new(),
                    ..ok.clone()
                },
                "`model`",
            ),
            (
                ModelServiceConfig {
                    model: dir.path().join("missing"),
                    ..ok.clone()
                },
                "`model`",
            ),
            (
                ModelServiceConfig {
                    max_length: 1,
                    ..ok.clone()
                },
                "`max_length`",
            ),
            (
                ModelServiceConfig {
                    service: TrainerSettings {
                        weight_decay: -1.0,
                        ..TrainerSettings::default()
                    },
                    ..ok.clone()
                },
                "`weight_decay`",
            ),
        ] {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}

//! Orchestrator configuration: where the services are, the run, the prompts, sampling, the
//! robust objective and PPO. Loaded like every rrlhf config (defaults → TOML → `RRLHF__…` env →
//! flags, see `rrlhf_runtime::load_config`); the REST API accepts the same shape as JSON.

use std::path::PathBuf;

use rrlhf_ppo::{KlController, KlEstimator};
use rrlhf_robust::{Lambda, Strategy, UncertaintySet};
use rrlhf_runtime::ConfigError;
use serde::{Deserialize, Serialize};

use crate::error::OrchestratorError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorConfig {
    pub endpoints: Endpoints,
    pub run: RunSettings,
    pub prompts: PromptSettings,
    pub sampling: Sampling,
    pub objective: Objective,
    pub ppo: PpoSettings,
    pub retry: RetrySettings,
    pub rest: RestSettings,
    pub telemetry: TelemetrySettings,
}

/// Logging and tracing of the orchestrator process (the services have theirs in `[server]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_json: bool,
    pub log_filter: String,
    /// OTLP/gRPC collector for spans (one trace per PPO step, joined by the services' spans).
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_json: false,
            log_filter: "info".into(),
            otlp_endpoint: None,
            service_name: None,
        }
    }
}

impl TelemetrySettings {
    /// The settings in the shape `rrlhf_runtime::telemetry::init` takes; errors name
    /// `telemetry.*`.
    pub fn as_server_config(&self) -> Result<rrlhf_runtime::ServerConfig, ConfigError> {
        let cfg = rrlhf_runtime::ServerConfig {
            log_json: self.log_json,
            log_filter: self.log_filter.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            service_name: self.service_name.clone(),
            ..rrlhf_runtime::ServerConfig::default()
        };
        cfg.validate().map_err(|e| match e {
            ConfigError::Invalid { field, message } => ConfigError::Invalid {
                field: field.replacen("server.", "telemetry.", 1),
                message,
            },
            other => other,
        })?;
        Ok(cfg)
    }
}

/// gRPC endpoints (`http://host:port`) of every service; several per service are ranks
/// (actor, critic: each gets a shard of the batch) or replicas (reference, reward).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoints {
    pub actor: Vec<String>,
    pub critic: Vec<String>,
    pub reference: Vec<String>,
    pub reward: Vec<String>,
    /// Name of the `reward` source in fused runs' metrics and errors (default `reward`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_name: Option<String>,
    /// Calibration of `reward` for fusion, overriding what its service reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_calibration: Option<crate::sources::CalibrationSetting>,
    /// Further reward sources whose normalised heads join `reward`'s in one uncertainty set
    /// (heterologous fusion, [`crate::sources`]); empty: `reward` alone, unnormalised.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_rewards: Vec<crate::sources::RewardSource>,
    /// Take the reference log-probs from the actor's `BaseLogProbs` (a LoRA actor's frozen
    /// base, which is the SFT policy) instead of a reference service; `reference` may then be
    /// empty.
    pub reference_from_actor_base: bool,
    /// Sent as `authorization: Bearer …` to every service (better from
    /// `RRLHF__ENDPOINTS__AUTH_TOKEN` or `auth_token_file`).
    pub auth_token: Option<String>,
    /// A file holding that token (e.g. a mounted Secret); not with `auth_token`.
    pub auth_token_file: Option<std::path::PathBuf>,
    /// TLS for `https://` endpoints: the CA of the services' certificates, and the client
    /// certificate for services that require one (`[endpoints.tls]`).
    pub tls: rrlhf_runtime::secrets::ClientTls,
}

impl Default for Endpoints {
    fn default() -> Self {
        let one = |port: u16| vec![format!("http://127.0.0.1:{port}")];
        Self {
            // The services' own default ports.
            actor: one(50091),
            critic: one(50081),
            reference: one(50071),
            reward: one(50061),
            reward_name: None,
            reward_calibration: None,
            extra_rewards: Vec::new(),
            reference_from_actor_base: false,
            auth_token: None,
            auth_token_file: None,
            tls: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSettings {
    /// Run id; `runs/<id>/` holds its files. Empty: derived from the start time.
    pub id: String,
    /// Parent directory of run directories.
    pub out_dir: PathBuf,
    /// PPO steps (one experience batch each).
    pub steps: usize,
    /// Samples per experience batch (the paper's 128).
    pub batch_size: usize,
    pub seed: u64,
    /// Checkpoint every N steps (0: only at the end and on demand).
    pub checkpoint_every: usize,
    /// Checkpoints kept; older ones are deleted once a newer one is complete.
    pub keep_checkpoints: usize,
    /// Sequences per reference `LogProbs`, critic `Values` and reward `ScoreStream` request:
    /// consecutive prompts' samples travel together once all are generated, as one model
    /// batch each. 1 (the default): a call per sample as it arrives, so scoring overlaps
    /// generation most when lengths vary (a chunk waits for its slowest sample); when samples
    /// finish together (fixed lengths) 32 measured 0.96 s of scoring after generation against
    /// 1.76 s for 1 (`bench/README.md`, same-work PPO step).
    pub sequences_per_call: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            id: String::new(),
            out_dir: "runs".into(),
            steps: 20,
            batch_size: 128,
            seed: 0,
            checkpoint_every: 10,
            keep_checkpoints: 3,
            sequences_per_call: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptSource {
    /// HH-RLHF JSONL(.gz): the dialogue up to the last `Assistant:` of `chosen`.
    Hh,
    /// Generic JSONL with a `prompt` field.
    Jsonl,
    /// Built-in templated questions (no file needed).
    Synthetic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptSettings {
    pub source: PromptSource,
    /// Data file for `hh` and `jsonl`.
    pub path: Option<PathBuf>,
    /// Prompts longer than this many characters are skipped (0: no limit).
    pub max_chars: usize,
}

impl Default for PromptSettings {
    fn default() -> Self {
        Self {
            source: PromptSource::Synthetic,
            path: None,
            max_chars: 0,
        }
    }
}

/// Sampling of the rollouts. PPO wants samples from π itself: temperature 1, no top-k/top-p.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub max_new_tokens: u32,
    /// No EOS before this many tokens (the EOS logit is masked out): fixed-length work for
    /// benchmarks. 0: off.
    pub min_new_tokens: u32,
    /// Recompute the behaviour log-probs with the actor's training forward pass (one more
    /// actor `LogProbs` per sample), as OpenRLHF and veRL do when generation and training
    /// numerics differ (bf16, another inference engine). Off: PPO takes the policy log-probs
    /// that the actor reports with each sample (the raw model distribution, whatever the
    /// sampling settings), and recomputes only for an actor that reports none.
    pub recompute_logprobs: bool,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 48,
            min_new_tokens: 0,
            recompute_logprobs: false,
        }
    }
}

impl Sampling {
    /// Whether the generation logprobs are the policy's own (so no recomputation is needed):
    /// not after temperature, top-k, top-p or a masked EOS reshaped the distribution.
    pub fn is_plain(&self) -> bool {
        self.temperature == 1.0
            && self.top_k == 0
            && (self.top_p == 0.0 || self.top_p >= 1.0)
            && self.min_new_tokens == 0
    }
}

/// The robust objective: how the K head rewards of a sample become its PPO reward. Both are
/// written as text (`strategy = "tradeoff:0.4"`, `uncertainty_set = "mean"`) and checked as they
/// are read, so a run never meets a bad one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Objective {
    /// `nominal`, `min`, `max`, `mean`, `median`, `tradeoff:λ`, `batch_worst_head:λ`, `uwo:c`,
    /// `random`, `random_min`, `constant`.
    pub strategy: Strategy,
    /// `mean` (head μ) or `sampled` (μ + ε·σ).
    pub uncertainty_set: UncertaintySet,
}

impl Default for Objective {
    fn default() -> Self {
        Self {
            strategy: Strategy::Tradeoff {
                lambda: Lambda::new(0.4).expect("0.4 is in [0, 1]"),
            },
            uncertainty_set: UncertaintySet::Mean,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoSettings {
    pub kl: KlController,
    pub kl_estimator: KlEstimator,
    pub gamma: f64,
    pub lambda_gae: f64,
    pub whiten_advantages: bool,
    /// Clip the aggregated sequence reward into ±this (after normalisation, if any).
    pub reward_clip: Option<f32>,
    /// Normalise sequence rewards with running statistics over every batch so far.
    pub normalize_reward: bool,
    pub actor: TrainSettings,
    pub critic: TrainSettings,
}

impl Default for PpoSettings {
    fn default() -> Self {
        Self {
            kl: KlController::Fixed { beta: 0.05 },
            kl_estimator: KlEstimator::K1,
            gamma: 1.0,
            lambda_gae: 0.95,
            whiten_advantages: true,
            reward_clip: None,
            normalize_reward: false,
            actor: TrainSettings {
                lr: 1e-5,
                ..TrainSettings::default()
            },
            critic: TrainSettings {
                lr: 1e-5,
                ..TrainSettings::default()
            },
        }
    }
}

/// The update one service runs on its shard of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    pub lr: f32,
    pub epochs: u32,
    pub minibatch_size: u32,
    /// Samples per forward/backward pass inside a mini-batch (0: the whole mini-batch); the
    /// service accumulates their gradients into the same update. Bounds activation memory.
    /// The mini-batch's samples are sorted by length before they are cut, so each pass pads
    /// little; the update sums the same samples' losses either way.
    pub micro_batch_size: u32,
    /// PPO ratio clip ε (actor) or value clip (critic).
    pub clip: f32,
    pub entropy_coef: f32,
    pub max_grad_norm: f32,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            epochs: 1,
            minibatch_size: 32,
            micro_batch_size: 0,
            clip: 0.2,
            entropy_coef: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

/// Backoff for a service that is UNAVAILABLE: the step waits and continues when it returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// Give up (the run fails with the reason) after this long without success.
    pub give_up_secs: u64,
    /// How long each kind of call may take before the orchestrator gives up on it.
    pub deadlines: Deadlines,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            initial_ms: 100,
            max_ms: 5_000,
            give_up_secs: 600,
            deadlines: Deadlines::default(),
        }
    }
}

/// Deadlines per kind of call, in seconds (each in (0, 86400]). A call sends its deadline as
/// `grpc-timeout`; when it passes the call ends with DEADLINE_EXCEEDED (retried like any
/// transient failure, within `give_up_secs`), and the service drops the work it had queued for
/// it. Streams (`Generate`, the reward `ScoreStream`, which lives as long as generation) have
/// one deadline for the whole stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Deadlines {
    pub generate_secs: f64,
    pub score_secs: f64,
    pub log_probs_secs: f64,
    pub values_secs: f64,
    pub train_secs: f64,
    pub checkpoint_secs: f64,
    pub info_secs: f64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            generate_secs: 1800.0,
            score_secs: 1800.0,
            log_probs_secs: 600.0,
            values_secs: 600.0,
            train_secs: 3600.0,
            checkpoint_secs: 1800.0,
            info_secs: 30.0,
        }
    }
}

impl Deadlines {
    fn check(&self) -> Result<(), OrchestratorError> {
        let d = self;
        for (name, secs) in [
            ("generate_secs", d.generate_secs),
            ("score_secs", d.score_secs),
            ("log_probs_secs", d.log_probs_secs),
            ("values_secs", d.values_secs),
            ("train_secs", d.train_secs),
            ("checkpoint_secs", d.checkpoint_secs),
            ("info_secs", d.info_secs),
        ] {
            if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
                return Err(OrchestratorError::invalid(
                    format!("retry.deadlines.{name}"),
                    format!("must be in (0, 86400] seconds, got {secs}"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestSettings {
    /// Where the REST control API listens (`rrlhf orchestrate`); none: no API.
    pub addr: Option<String>,
    /// Require `authorization: Bearer …` on every route but /healthz and /readyz.
    pub auth_token: Option<String>,
    /// A file holding that token; not with `auth_token`.
    pub auth_token_file: Option<std::path::PathBuf>,
    /// PEM certificate chain and key: the API is served over HTTPS only.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// Scored samples each run keeps per step for `GET /v1/runs/{id}/samples` and the
    /// dashboard (the first of the step's batch), in [0, 256].
    pub samples_per_step: usize,
    /// Steps whose samples are kept (the latest ones), in [1, 10000].
    pub sample_steps: usize,
    /// At start, `rrlhf orchestrate` lists the runs recorded under `run.out_dir`; those a
    /// previous orchestrator was driving when it died (recorded running) are resumed from
    /// their latest checkpoint when this is set, else listed as `interrupted`.
    pub resume_interrupted: bool,
}

impl Default for RestSettings {
    fn default() -> Self {
        Self {
            addr: Some("127.0.0.1:8080".into()),
            auth_token: None,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            samples_per_step: 8,
            sample_steps: 20,
            resume_interrupted: true,
        }
    }
}

fn invalid(field: &str, message: impl ToString) -> OrchestratorError {
    OrchestratorError::invalid(field, message)
}

/// Upper bounds of the numeric controls (docs/operations.md lists every range): far beyond
/// any sensible setting, they stop values that would overflow or exhaust memory.
const MAX_TEMPERATURE: f32 = 10.0;
const MAX_BATCH: usize = 1 << 16;
const MAX_NEW_TOKENS: u32 = 1 << 15;

impl OrchestratorConfig {
    /// Checks every value a run depends on; the error names the field. (The objective needs no
    /// check here: it cannot be read in invalid.)
    pub fn validate(&self) -> Result<(), OrchestratorError> {
        let extra = self.endpoints.extra_rewards.iter().enumerate();
        let extra = extra.map(|(i, s)| (format!("endpoints.extra_rewards[{i}].urls"), &s.urls));
        for (name, list) in [
            ("endpoints.actor", &self.endpoints.actor),
            ("endpoints.critic", &self.endpoints.critic),
            ("endpoints.reference", &self.endpoints.reference),
            ("endpoints.reward", &self.endpoints.reward),
        ]
        .map(|(n, l)| (n.to_string(), l))
        .into_iter()
        .chain(extra)
        {
            let name = name.as_str();
            let optional =
                name == "endpoints.reference" && self.endpoints.reference_from_actor_base;
            if list.is_empty() && !optional {
                return Err(invalid(name, "at least one endpoint is required"));
            }
            if let Some(bad) = list
                .iter()
                .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
            {
                return Err(invalid(name, format!("`{bad}` is not an http(s):// URL")));
            }
            if let Some(tls) = list.iter().find(|e| e.starts_with("https://"))
                && self.endpoints.tls.ca.is_none()
            {
                return Err(invalid(
                    "endpoints.tls.ca",
                    format!(
                        "is needed for `{tls}` (the CA that signed the services' certificates)"
                    ),
                ));
            }
        }
        self.endpoints.tls.validate("endpoints.tls")?;
        crate::sources::validate(&self.endpoints)?;
        for (field, value, file) in [
            (
                "endpoints.auth_token",
                &self.endpoints.auth_token,
                &self.endpoints.auth_token_file,
            ),
            (
                "rest.auth_token",
                &self.rest.auth_token,
                &self.rest.auth_token_file,
            ),
        ] {
            if value.is_some() && file.is_some() {
                return Err(invalid(
                    field,
                    format!("and {field}_file are both set; give one"),
                ));
            }
        }
        if self.rest.samples_per_step > 256 {
            return Err(invalid(
                "rest.samples_per_step",
                format!("must be in [0, 256], got {}", self.rest.samples_per_step),
            ));
        }
        if !(1..=10_000).contains(&self.rest.sample_steps) {
            return Err(invalid(
                "rest.sample_steps",
                format!("must be in [1, 10000], got {}", self.rest.sample_steps),
            ));
        }
        if self.rest.tls_cert.is_some() != self.rest.tls_key.is_some() {
            return Err(invalid(
                "rest.tls_cert",
                "and rest.tls_key must be set together",
            ));
        }
        if self.run.steps == 0 {
            return Err(invalid("run.steps", "must be ≥ 1"));
        }
        if self.run.sequences_per_call == 0 {
            return Err(invalid("run.sequences_per_call", "must be ≥ 1"));
        }
        if self.run.batch_size == 0 {
            return Err(invalid("run.batch_size", "must be ≥ 1"));
        }
        if self.run.keep_checkpoints == 0 {
            return Err(invalid("run.keep_checkpoints", "must be ≥ 1"));
        }
        if !self
            .run
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.run.id.starts_with('.')
        {
            return Err(invalid(
                "run.id",
                "only letters, digits, `-`, `_` and `.` (not leading)",
            ));
        }
        if self.prompts.source != PromptSource::Synthetic && self.prompts.path.is_none() {
            return Err(invalid("prompts.path", "required for hh and jsonl prompts"));
        }
        if !(self.sampling.temperature.is_finite()
            && self.sampling.temperature > 0.0
            && self.sampling.temperature <= MAX_TEMPERATURE)
        {
            return Err(invalid(
                "sampling.temperature",
                format!(
                    "must be in (0, {MAX_TEMPERATURE}] for PPO rollouts, got {}",
                    self.sampling.temperature
                ),
            ));
        }
        if self.run.batch_size > MAX_BATCH || self.sampling.max_new_tokens > MAX_NEW_TOKENS {
            return Err(if self.run.batch_size > MAX_BATCH {
                invalid(
                    "run.batch_size",
                    format!("must be ≤ {MAX_BATCH}, got {}", self.run.batch_size),
                )
            } else {
                invalid(
                    "sampling.max_new_tokens",
                    format!(
                        "must be ≤ {MAX_NEW_TOKENS}, got {}",
                        self.sampling.max_new_tokens
                    ),
                )
            });
        }
        if !(0.0..=1.0).contains(&self.sampling.top_p) {
            return Err(invalid("sampling.top_p", "must be in [0, 1]"));
        }
        if self.sampling.max_new_tokens == 0 {
            return Err(invalid("sampling.max_new_tokens", "must be ≥ 1"));
        }
        if self.sampling.min_new_tokens > self.sampling.max_new_tokens {
            return Err(invalid(
                "sampling.min_new_tokens",
                format!(
                    "must be ≤ sampling.max_new_tokens ({}), got {}",
                    self.sampling.max_new_tokens, self.sampling.min_new_tokens
                ),
            ));
        }
        self.ppo.kl.validate().map_err(|e| invalid("ppo.kl", e))?;
        for (name, v) in [
            ("ppo.gamma", self.ppo.gamma),
            ("ppo.lambda_gae", self.ppo.lambda_gae),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(invalid(name, format!("must be in [0, 1], got {v}")));
            }
        }
        if let Some(c) = self.ppo.reward_clip
            && !(c.is_finite() && c > 0.0)
        {
            return Err(invalid("ppo.reward_clip", format!("must be > 0, got {c}")));
        }
        for (name, t) in [
            ("ppo.actor", &self.ppo.actor),
            ("ppo.critic", &self.ppo.critic),
        ] {
            // (field, value, lowest, highest, whether the lowest is allowed). The critic's
            // value clip may be 0 (off); the actor's ratio clip may not.
            for (field, v, lo, hi, lo_ok) in [
                ("lr", t.lr, 0.0, 1.0, false),
                ("clip", t.clip, 0.0, 10.0, name == "ppo.critic"),
                ("entropy_coef", t.entropy_coef, 0.0, 1.0, true),
                ("max_grad_norm", t.max_grad_norm, 0.0, 1e6, true),
            ] {
                let above_lo = if lo_ok { v >= lo } else { v > lo };
                if !(v.is_finite() && above_lo && v <= hi) {
                    let open = if lo_ok { '[' } else { '(' };
                    return Err(invalid(
                        &format!("{name}.{field}"),
                        format!("must be in {open}{lo}, {hi}], got {v}"),
                    ));
                }
            }
            if t.epochs == 0 || t.epochs > 100 {
                return Err(invalid(
                    &format!("{name}.epochs"),
                    format!("must be in [1, 100], got {}", t.epochs),
                ));
            }
        }
        if self.retry.initial_ms == 0 || self.retry.max_ms < self.retry.initial_ms {
            return Err(invalid("retry", "need 0 < initial_ms ≤ max_ms"));
        }
        self.retry.deadlines.check()?;
        self.telemetry.as_server_config()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<OrchestratorConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.toml");
        std::fs::write(&path, toml).unwrap();
        rrlhf_runtime::load_config(Some(&path), &serde_json::json!({}))
    }

    #[test]
    fn every_numeric_control_has_a_range_and_the_error_names_it() {
        type Edit = fn(&mut OrchestratorConfig);
        let cases: [(&str, Edit); 9] = [
            ("ppo.actor.lr", |c| c.ppo.actor.lr = 2.0),
            ("ppo.critic.lr", |c| c.ppo.critic.lr = 0.0),
            ("ppo.actor.clip", |c| c.ppo.actor.clip = f32::INFINITY),
            ("ppo.actor.entropy_coef", |c| {
                c.ppo.actor.entropy_coef = -0.1
            }),
            ("ppo.critic.max_grad_norm", |c| {
                c.ppo.critic.max_grad_norm = f32::NAN
            }),
            ("ppo.actor.epochs", |c| c.ppo.actor.epochs = 1000),
            ("sampling.temperature", |c| c.sampling.temperature = 50.0),
            ("run.batch_size", |c| c.run.batch_size = 1 << 20),
            ("ppo.kl", |c| {
                c.ppo.kl = rrlhf_ppo::KlController::Fixed { beta: 1e308 }
            }),
        ];
        for (field, edit) in cases {
            let mut cfg = OrchestratorConfig::default();
            edit(&mut cfg);
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.starts_with(field), "{field}: {err}");
        }
        OrchestratorConfig::default().validate().unwrap();
    }

    #[test]
    fn deadlines_are_bounded_and_named() {
        let mut cfg = OrchestratorConfig::default();
        cfg.validate().unwrap();
        for bad in [0.0, -1.0, f64::NAN, 1e9] {
            cfg.retry.deadlines.train_secs = bad;
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains("retry.deadlines.train_secs"), "{bad}: {e}");
        }
    }

    #[test]
    fn min_new_tokens_is_bounded_and_makes_the_sampling_not_plain() {
        let mut cfg = OrchestratorConfig::default();
        cfg.sampling.max_new_tokens = 4;
        cfg.sampling.min_new_tokens = 4;
        assert!(!cfg.sampling.is_plain(), "a masked EOS reshapes π");
        cfg.validate().unwrap();
        cfg.sampling.min_new_tokens = 5;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("sampling.min_new_tokens") && err.contains("got 5"),
            "{err}"
        );
    }

    #[test]
    fn the_objective_is_read_as_text_and_checked_on_the_way_in() {
        let cfg = load(
            "[objective]\nstrategy = \"batch_worst_head:0.6\"\nuncertainty_set = \"sampled\"\n",
        )
        .unwrap();
        assert_eq!(cfg.objective.strategy.to_string(), "batch_worst_head:0.6");
        assert_eq!(cfg.objective.uncertainty_set, UncertaintySet::Sampled);
        // It is written back in the same form (config.json, state.json, the REST API).
        let json = serde_json::to_value(&cfg.objective).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"strategy": "batch_worst_head:0.6", "uncertainty_set": "sampled"})
        );
        for (toml, needle) in [
            (
                "[objective]\nstrategy = \"tradeoff:1.5\"\n",
                "λ must be in [0, 1]",
            ),
            ("[objective]\nstrategy = \"bogus\"\n", "unknown strategy"),
            ("[objective]\nuncertainty_set = \"worst\"\n", "worst"),
        ] {
            let err = load(toml).unwrap_err().to_string();
            assert!(err.contains("objective."), "{toml}: {err}");
            assert!(err.contains(needle), "{toml}: {err}");
        }
        assert_eq!(
            OrchestratorConfig::default().objective.strategy.to_string(),
            "tradeoff:0.4"
        );
    }

    #[test]
    fn validation_errors_name_the_field() {
        let mut cfg = OrchestratorConfig::default();
        cfg.run.steps = 0;
        let err = cfg.validate().unwrap_err();
        assert!(
            matches!(&err, OrchestratorError::Invalid { field, .. } if field == "run.steps"),
            "{err}"
        );
        // Without a reference service the actor's base must serve as the reference.
        let mut cfg = OrchestratorConfig::default();
        cfg.endpoints.reference.clear();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .starts_with("endpoints.reference")
        );
        cfg.endpoints.reference_from_actor_base = true;
        cfg.validate().unwrap();
        let mut cfg = OrchestratorConfig::default();
        cfg.telemetry.otlp_endpoint = Some("nowhere".into());
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .starts_with("telemetry.otlp_endpoint")
        );
    }
}

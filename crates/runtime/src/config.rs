//! Layered configuration with figment: compiled defaults → TOML file → environment
//! (`RRLHF__SERVER__ADDR=…`, sections split on `__`) → command-line flags. Unknown keys are
//! errors, so a typo does not silently fall back to a default.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(String),
    #[error("config: `{field}` {message}")]
    Invalid { field: String, message: String },
}

/// (rank, world size, rendezvous store, backend, collective timeout, ZeRO stage) of a
/// data-parallel rank.
pub type GroupPlace<'a> = (
    u32,
    u32,
    Option<&'a str>,
    Option<&'a str>,
    std::time::Duration,
    u32,
);

/// The `[server]` section shared by every gRPC service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address; port 0 picks a free port.
    pub addr: String,
    /// Largest accepted or sent gRPC message.
    pub max_message_bytes: usize,
    /// Requests served at once; beyond it calls fail fast with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: f64,
    /// When set, every call except health must carry `authorization: Bearer <token>`. Better
    /// given as `RRLHF__SERVER__AUTH_TOKEN` or in `auth_token_file` than in a config file.
    pub auth_token: Option<String>,
    /// A file holding the token (e.g. a mounted Kubernetes Secret); not with `auth_token`.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain and key; when set the server speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): when set (with TLS), every client must present a certificate
    /// signed by one of them (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// When set, Prometheus metrics are served at `http://<metrics_addr>/metrics`.
    pub metrics_addr: Option<String>,
    /// Log lines as JSON instead of text.
    pub log_json: bool,
    /// `EnvFilter` directives, e.g. `info` or `rrlhf=debug`.
    pub log_filter: String,
    /// When set, spans are also exported with OTLP over gRPC to this collector, e.g.
    /// `http://127.0.0.1:4317` (`https://` uses TLS with the system's roots).
    pub otlp_endpoint: Option<String>,
    /// OpenTelemetry `service.name` of exported spans; unset: `OTEL_SERVICE_NAME`, else
    /// `rrlhf-<service>` (e.g. `rrlhf-reward`).
    pub service_name: Option<String>,
    /// Data-parallel placement: this process's rank, the group size, the rendezvous store.
    /// Actor and critic ranks (world_size > 1) train as one c10d group whose TCPStore rank 0
    /// hosts at `store_addr` (`HOST:PORT`); reference and reward replicas ignore the store.
    pub rank: u32,
    pub world_size: u32,
    pub store_addr: Option<String>,
    /// `gloo` or `nccl`; unset: NCCL on CUDA devices, Gloo otherwise (as torch.distributed).
    pub dist_backend: Option<String>,
    /// How long the group's rendezvous and each collective wait for the slowest rank.
    pub dist_timeout_secs: f64,
    /// ZeRO stage of an actor or critic group: 0 replicates the AdamW state on every rank;
    /// 1 shards the fp32 master weights and moments over the ranks (each updates its 1/N and
    /// the weights are all-gathered); 2 also frees each gradient once it is reduced into its
    /// owner's shard. Every rank of a group must use the same stage; other services ignore it.
    pub zero_stage: u32,
    /// Set by [`crate::service::start`] for each start: reported in `Info` so that a client can
    /// tell a restarted service (whose in-memory state is gone) from the one it knew.
    #[serde(skip)]
    pub instance_id: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:50051".into(),
            max_message_bytes: 64 << 20,
            max_concurrent_requests: 256,
            shutdown_grace_secs: 10.0,
            auth_token: None,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            metrics_addr: None,
            log_json: false,
            log_filter: "info".into(),
            otlp_endpoint: None,
            service_name: None,
            rank: 0,
            world_size: 1,
            store_addr: None,
            dist_backend: None,
            dist_timeout_secs: 600.0,
            zero_stage: 0,
            instance_id: String::new(),
        }
    }
}

impl ServerConfig {
    /// The bearer token in force: `auth_token`, or the contents of `auth_token_file`.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        crate::secrets::token(
            "server.auth_token",
            self.auth_token.as_deref(),
            self.auth_token_file.as_deref(),
        )
    }

    pub fn dist_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.dist_timeout_secs)
    }

    /// This process's place in its data-parallel group, as
    /// `rrlhf_train::data_parallel::DataParallel::for_service` takes it.
    pub fn group(&self) -> GroupPlace<'_> {
        (
            self.rank,
            self.world_size,
            self.store_addr.as_deref(),
            self.dist_backend.as_deref(),
            self.dist_timeout(),
            self.zero_stage,
        )
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, message: String| {
            Err(ConfigError::Invalid {
                field: format!("server.{field}"),
                message,
            })
        };
        if self.addr.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "addr",
                format!("must be HOST:PORT with an IP host, got {:?}", self.addr),
            );
        }
        if self.max_message_bytes < 1024 {
            return bad(
                "max_message_bytes",
                format!("must be ≥ 1024, got {}", self.max_message_bytes),
            );
        }
        if self.max_concurrent_requests == 0 {
            return bad("max_concurrent_requests", "must be ≥ 1".into());
        }
        if !(self.shutdown_grace_secs.is_finite() && self.shutdown_grace_secs >= 0.0) {
            return bad(
                "shutdown_grace_secs",
                format!("must be ≥ 0, got {}", self.shutdown_grace_secs),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert", "and server.tls_key must be set together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return bad(
                "tls_client_ca",
                "needs server.tls_cert and server.tls_key (mutual TLS runs over TLS)".into(),
            );
        }
        if self.auth_token.is_some() && self.auth_token_file.is_some() {
            return bad(
                "auth_token",
                "and server.auth_token_file are both set; give one".into(),
            );
        }
        if let Some(m) = &self.metrics_addr
            && m.parse::<std::net::SocketAddr>().is_err()
        {
            return bad(
                "metrics_addr",
                format!("must be HOST:PORT with an IP host, got {m:?}"),
            );
        }
        if self.auth_token.as_deref() == Some("") {
            return bad(
                "auth_token",
                "must not be empty (leave it unset to disable auth)".into(),
            );
        }
        if let Some(e) = &self.otlp_endpoint
            && !is_http_url(e)
        {
            return bad(
                "otlp_endpoint",
                format!(
                    "must be an http:// or https:// URL such as http://127.0.0.1:4317, got {e:?}"
                ),
            );
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return bad(
                "service_name",
                "must not be empty (leave it unset for the default)".into(),
            );
        }
        if let Some(b) = &self.dist_backend
            && !matches!(b.as_str(), "gloo" | "nccl")
        {
            return bad(
                "dist_backend",
                format!("must be \"gloo\" or \"nccl\", got {b:?}"),
            );
        }
        if !(self.dist_timeout_secs.is_finite() && self.dist_timeout_secs > 0.0) {
            return bad(
                "dist_timeout_secs",
                format!("must be > 0, got {}", self.dist_timeout_secs),
            );
        }
        if self.zero_stage > 2 {
            return bad(
                "zero_stage",
                format!(
                    "must be 0 (replicated), 1 (sharded optimizer state) or 2 (and sharded \
                     gradients), got {}",
                    self.zero_stage
                ),
            );
        }
        if self.world_size == 0 || self.rank >= self.world_size {
            return bad(
                "rank",
                format!(
                    "must be < world_size ({}), got {}",
                    self.world_size, self.rank
                ),
            );
        }
        Ok(())
    }
}

/// An absolute `http`/`https` URL with a host, which is what tonic needs to dial a collector.
fn is_http_url(s: &str) -> bool {
    s.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    })
}

/// The `[engine]` section: where the model runs and how requests are merged into batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// `f32` or `bf16`.
    pub dtype: String,
    /// libtorch intra-op threads (0: one per core).
    pub threads: usize,
    /// At most this many sequences per model batch…
    pub batch_max_sequences: usize,
    /// …or this many padded tokens…
    pub batch_max_tokens: usize,
    /// …gathered for at most this long after the first request arrives.
    pub batch_wait_ms: u64,
    /// Requests waiting for the engine; beyond it calls get RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Tokens of work waiting for the engine (each sequence counted up to `batch_max_tokens`,
    /// a call that never merges — Generate, Train — as one full batch); a call that would go
    /// beyond it gets RESOURCE_EXHAUSTED at once, with a `retry-after-ms` hint (unless the
    /// queue is empty).
    pub queue_max_tokens: usize,
    /// A call that waited this long for its batch gets RESOURCE_EXHAUSTED instead of running
    /// late.
    pub queue_max_wait_ms: u64,
    /// Merge concurrent requests into shared batches (throughput). `false` runs every request
    /// as its own batch, so its results never depend on what arrived with it: bit-reproducible
    /// runs, at the cost of throughput.
    pub merge_requests: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            dtype: "f32".into(),
            threads: 0,
            batch_max_sequences: 32,
            batch_max_tokens: 16_384,
            batch_wait_ms: 2,
            queue_capacity: 1024,
            queue_max_tokens: 1 << 20,
            queue_max_wait_ms: 600_000,
            merge_requests: true,
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, message: &str| {
            Err(ConfigError::Invalid {
                field: format!("engine.{field}"),
                message: message.into(),
            })
        };
        if !matches!(
            self.dtype.as_str(),
            "f32" | "float32" | "fp32" | "bf16" | "bfloat16"
        ) {
            return bad("dtype", "must be f32 or bf16");
        }
        if self.device != "cpu" && self.device != "cuda" && !self.device.starts_with("cuda:") {
            return bad("device", "must be cpu, cuda or cuda:N");
        }
        if self.batch_max_sequences == 0 {
            return bad("batch_max_sequences", "must be ≥ 1");
        }
        if self.batch_max_tokens == 0 {
            return bad("batch_max_tokens", "must be ≥ 1");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be ≥ 1");
        }
        if self.queue_max_tokens == 0 {
            return bad("queue_max_tokens", "must be ≥ 1");
        }
        if self.queue_max_wait_ms == 0 {
            return bad("queue_max_wait_ms", "must be ≥ 1");
        }
        Ok(())
    }

    /// The batching of this section, with what the engine does after a panic.
    pub fn batch(&self, on_panic: crate::engine::PanicPolicy) -> crate::engine::BatchConfig {
        crate::engine::BatchConfig {
            max_items: self.batch_max_sequences,
            max_cost: self.batch_max_tokens,
            max_wait: std::time::Duration::from_millis(self.batch_wait_ms),
            queue_capacity: self.queue_capacity,
            max_queued_cost: self.queue_max_tokens,
            max_queue_wait: std::time::Duration::from_millis(self.queue_max_wait_ms),
            on_panic,
            merge_requests: self.merge_requests,
        }
    }
}

/// Loads `T` from its defaults, then `file` (TOML), then `RRLHF__…` variables, then `flags`
/// (a serialisable struct whose `None` fields are skipped, so only given flags override).
pub fn load_config<T, F>(file: Option<&Path>, flags: &F) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
    F: Serialize,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Load(format!(
                "file {} not found",
                path.display()
            )));
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(Env::prefixed("RRLHF__").split("__").lowercase(true));
    fig = fig.merge(Serialized::defaults(flags));
    let cfg: T = fig.extract().map_err(figment_error)?;
    reject_unknown_keys(&fig, &cfg)?;
    Ok(cfg)
}

fn figment_error(e: figment::Error) -> ConfigError {
    let field = e.path.join(".");
    if field.is_empty() {
        ConfigError::Load(e.to_string())
    } else {
        ConfigError::Invalid {
            field,
            message: e.kind.to_string(),
        }
    }
}

/// A top-level key that `cfg` did not take. Sections reject unknown keys themselves
/// (`deny_unknown_fields`), but serde cannot do so for a struct that flattens another one —
/// the shape of every model service's config — so the top level is checked here: whatever
/// was given must come back when the loaded value is written out again.
fn reject_unknown_keys<T: Serialize>(given: &Figment, cfg: &T) -> Result<(), ConfigError> {
    let given: figment::value::Dict = given.extract().map_err(figment_error)?;
    let known: figment::value::Dict = Figment::from(Serialized::defaults(cfg))
        .extract()
        .map_err(figment_error)?;
    match given.keys().find(|k| !known.contains_key(*k)) {
        None => Ok(()),
        Some(key) => Err(ConfigError::Invalid {
            field: key.clone(),
            message: format!(
                "is an unknown field; expected one of {}",
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Svc {
        server: ServerConfig,
        model: String,
    }

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn layers_apply_in_order_and_errors_name_the_field() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("svc.toml", "model = \"from-file\"\n[server]\naddr = \"127.0.0.1:7000\"\nrank = 1\nworld_size = 2\n")?;
            let none = Flags { model: None };
            let c: Svc = load_config(Some(Path::new("svc.toml")), &none).unwrap();
            assert_eq!(
                (c.model.as_str(), c.server.addr.as_str(), c.server.rank),
                ("from-file", "127.0.0.1:7000", 1)
            );
            assert_eq!(
                c.server.max_concurrent_requests, 256,
                "defaults fill the rest"
            );

            jail.set_env("RRLHF__SERVER__ADDR", "127.0.0.1:7001");
            jail.set_env("RRLHF__MODEL", "from-env");
            let c: Svc = load_config(Some(Path::new("svc.toml")), &none).unwrap();
            assert_eq!(
                (c.model.as_str(), c.server.addr.as_str()),
                ("from-env", "127.0.0.1:7001")
            );

            let c: Svc = load_config(
                Some(Path::new("svc.toml")),
                &Flags {
                    model: Some("from-flag".into()),
                },
            )
            .unwrap();
            assert_eq!(c.model, "from-flag");

            jail.set_env("RRLHF__SERVER__MAX_CONCURRENT_REQUESTS", "lots");
            let e = load_config::<Svc, _>(None, &none).unwrap_err().to_string();
            assert!(e.contains("server.max_concurrent_requests"), "{e}");
            jail.clear_env();

            jail.create_file("typo.toml", "[server]\nadress = \"x\"\n")?;
            let e = load_config::<Svc, _>(Some(Path::new("typo.toml")), &none)
                .unwrap_err()
                .to_string();
            assert!(e.contains("adress"), "{e}");
            assert!(
                load_config::<Svc, _>(Some(Path::new("missing.toml")), &none)
                    .unwrap_err()
                    .to_string()
                    .contains("missing.toml")
            );
            Ok(())
        });
    }

    #[test]
    fn validation_names_the_field() {
        let bad = ServerConfig {
            addr: "localhost".into(),
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("server.addr")
        );
        let bad = ServerConfig {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("tls_key"));
        let bad = ServerConfig {
            rank: 2,
            world_size: 2,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("server.rank")
        );
        for endpoint in [
            "127.0.0.1:4317",
            "grpc://collector:4317",
            "http://",
            "not a url",
        ] {
            let bad = ServerConfig {
                otlp_endpoint: Some(endpoint.into()),
                ..Default::default()
            };
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("server.otlp_endpoint"), "{endpoint}: {e}");
        }
        for endpoint in ["http://127.0.0.1:4317", "https://otel.example.com"] {
            let ok = ServerConfig {
                otlp_endpoint: Some(endpoint.into()),
                ..Default::default()
            };
            assert!(ok.validate().is_ok(), "{endpoint}");
        }
        let bad = ServerConfig {
            service_name: Some(" ".into()),
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("server.service_name")
        );
        assert!(ServerConfig::default().validate().is_ok());
    }
}

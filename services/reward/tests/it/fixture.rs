//! A tiny BRME checkpoint built once, and helpers to start servers and connect clients.

use std::path::PathBuf;
use std::sync::OnceLock;

use rrlhf_model::reward_model::{RewardMeta, RewardModel};
use rrlhf_model::tokenizer::train_bpe;
use rrlhf_model::{Arch, CausalLm, ModelConfig, Placement, SizePreset};
use rrlhf_proto::reward::v1::reward_service_client::RewardServiceClient;
use rrlhf_proto::reward::v1::{Sample, ScoreRequest};
use rrlhf_reward_service::RewardServiceConfig;
use rrlhf_reward_service::service::Running;
use tonic::transport::Channel;

pub struct Model {
    _root: tempfile::TempDir,
    pub dir: PathBuf,
}

/// Tokenizer + tiny Llama → 3-head BRME with non-trivial heads, saved once.
pub fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        tch::set_num_threads(1);
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("base");
        let texts = (0..200)
            .map(|i| format!("Human: question number {i}?\n\nAssistant: a reply, number {i}."));
        let tok = train_bpe(texts, 300, &base).unwrap();
        let preset = SizePreset::by_name("tiny").unwrap();
        let cfg = ModelConfig::new_random(
            Arch::Llama,
            &preset,
            tok.vocab_size() as i64,
            None,
            tok.eos_id,
            Some(tok.pad_id),
            512,
        );
        CausalLm::new(cfg, Placement::default())
            .unwrap()
            .save(&base)
            .unwrap();
        let rm = RewardModel::from_base(
            &base,
            RewardMeta::brme(3, 2.0, None).unwrap(),
            Placement::default(),
        )
        .unwrap();
        {
            let _guard = tch::no_grad_guard();
            for (name, mut var) in rm.vs.variables() {
                if name.starts_with("brme.") {
                    var.copy_(
                        &(tch::Tensor::randn(var.size(), (tch::Kind::Float, tch::Device::Cpu))
                            * 0.5),
                    );
                }
            }
        }
        let dir = root.path().join("brme");
        rm.save(&dir).unwrap();
        tok.save_to(&dir).unwrap();
        Model { _root: root, dir }
    })
}

pub fn config() -> RewardServiceConfig {
    let mut cfg = RewardServiceConfig {
        model: model().dir.clone(),
        max_length: 64,
        ..Default::default()
    };
    cfg.engine.threads = 1;
    cfg.server.addr = "127.0.0.1:0".into();
    cfg
}

/// Starts a server; the returned sender shuts it down.
pub async fn start(cfg: RewardServiceConfig) -> (Running, tokio::sync::oneshot::Sender<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = rrlhf_reward_service::start(cfg, async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    (running, tx)
}

pub async fn client(running: &Running) -> RewardServiceClient<Channel> {
    RewardServiceClient::connect(format!("http://{}", running.addr))
        .await
        .unwrap()
}

pub fn sample(i: usize) -> Sample {
    Sample {
        id: format!("s{i}"),
        prompt: format!("Human: question number {i}?\n\nAssistant:"),
        response: " a reply".repeat(1 + i % 5),
        token_ids: vec![],
    }
}

pub fn request(samples: Vec<Sample>) -> ScoreRequest {
    ScoreRequest {
        samples,
        ..Default::default()
    }
}

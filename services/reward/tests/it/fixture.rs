//! The reward service's tests on the test kit's 3-head BRME, and helpers to start servers and
//! connect clients.

use rrlhf_proto::reward::v1::reward_service_client::RewardServiceClient;
use rrlhf_proto::reward::v1::{Sample, ScoreRequest};
use rrlhf_reward_service::service::Running;
use rrlhf_reward_service::{RewardServer, RewardServiceConfig};
use rrlhf_testkit::models::models;
use rrlhf_testkit::serve::spawn;
use tonic::transport::Channel;

pub fn config() -> RewardServiceConfig {
    RewardServiceConfig {
        model: models().brme.clone(),
        max_length: 64,
        ..Default::default()
    }
}

/// Starts a server on a free port; the returned sender shuts it down.
pub async fn start(cfg: RewardServiceConfig) -> (Running, tokio::sync::oneshot::Sender<()>) {
    spawn::<RewardServer>(cfg).await.into_parts()
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
